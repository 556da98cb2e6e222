//! The schema migrations, compiled into the binary.
//!
//! sqlx's `migrate!` macro would embed them too, but it needs sqlx's
//! `macros` feature, which builds sqlx with both database drivers and a
//! second copy of SQLite's C code for the compiler's host: minutes of
//! every clean build. The files are listed here instead, read the way
//! sqlx reads a migrations folder (`<version>_<description>.sql`, the
//! description's `_` as spaces, the checksum over the file's text), so a
//! database migrated by either way is accepted by the other. A test
//! checks that the list matches the folders.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// One migration file: its name and its text.
type File = (&'static str, &'static str);

/// Both folders hold the same migrations (one schema, docs/schema.md), so
/// one list of names gives both.
macro_rules! migrations {
    ($($name:literal),+ $(,)?) => {
        const SQLITE: &[File] =
            &[$(($name, include_str!(concat!("../../migrations/sqlite/", $name)))),+];
        const POSTGRES: &[File] =
            &[$(($name, include_str!(concat!("../../migrations/postgres/", $name)))),+];
    };
}

migrations!(
    "0001_initial.sql",
    "0002_calls.sql",
    "0003_leases.sql",
    "0004_assignment_timers.sql",
    "0005_timer_targets.sql",
    "0006_notifications.sql",
);

pub(super) async fn sqlite() -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Embedded(SQLITE)).await
}

pub(super) async fn postgres() -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Embedded(POSTGRES)).await
}

#[derive(Debug)]
struct Embedded(&'static [File]);

impl MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        Box::pin(async move {
            let mut migrations = self
                .0
                .iter()
                .map(|(name, sql)| migration(name, sql))
                .collect::<Result<Vec<_>, _>>()?;
            migrations.sort_by_key(|m| m.version);
            Ok(migrations)
        })
    }
}

fn migration(name: &str, sql: &'static str) -> Result<Migration, BoxDynError> {
    let (version, rest) = name
        .split_once('_')
        .filter(|(_, rest)| rest.ends_with(".sql"))
        .ok_or_else(|| format!("migration {name}: not named <version>_<description>.sql"))?;
    let version: i64 = version
        .parse()
        .map_err(|_| format!("migration {name}: the version is not a number"))?;
    let kind = MigrationType::from_filename(rest);
    let description = rest.trim_end_matches(kind.suffix()).replace('_', " ");
    let no_tx = sql.starts_with("-- no-transaction");
    Ok(Migration::new(
        version,
        Cow::Owned(description),
        kind,
        Cow::Borrowed(sql),
        no_tx,
    ))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// What sqlx itself reads from a folder: version, description, type,
    /// checksum per migration, in version order.
    async fn from_folder(dir: &str) -> Vec<(i64, String, String, Vec<u8>)> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(dir);
        let mut found = Migrator::new(path.as_path())
            .await
            .unwrap()
            .iter()
            .map(summary)
            .collect::<Vec<_>>();
        found.sort();
        found
    }

    fn summary(m: &Migration) -> (i64, String, String, Vec<u8>) {
        (
            m.version,
            m.description.to_string(),
            format!("{:?}", m.migration_type),
            m.checksum.to_vec(),
        )
    }

    #[tokio::test]
    async fn the_embedded_migrations_are_the_folders_as_sqlx_reads_them() {
        for (dir, embedded) in [("sqlite", sqlite().await), ("postgres", postgres().await)] {
            let embedded = embedded.unwrap().iter().map(summary).collect::<Vec<_>>();
            let folder = from_folder(dir).await;
            assert!(!folder.is_empty(), "{dir}: no migrations found");
            assert_eq!(
                embedded, folder,
                "migrations/{dir} and the list in src/store/migrations.rs differ"
            );
        }
    }
}
