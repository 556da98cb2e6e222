//! Read what the daemon stored, on either database.

use std::collections::BTreeMap;

use sqlx::{PgPool, Row, SqlitePool};

/// A query parameter.
pub enum Arg {
    Int(i64),
    Text(String),
}

impl From<i64> for Arg {
    fn from(i: i64) -> Self {
        Arg::Int(i)
    }
}

impl From<&str> for Arg {
    fn from(s: &str) -> Self {
        Arg::Text(s.to_owned())
    }
}

pub enum Db {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

macro_rules! on {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            Db::Sqlite($p) => $body,
            Db::Pg($p) => $body,
        }
    };
}

impl Db {
    pub async fn open(url: &str) -> Db {
        if url.starts_with("sqlite:") {
            let opts = url
                .parse::<sqlx::sqlite::SqliteConnectOptions>()
                .expect("sqlite url")
                .create_if_missing(true);
            Db::Sqlite(SqlitePool::connect_with(opts).await.expect("open sqlite"))
        } else {
            Db::Pg(PgPool::connect(url).await.expect("open postgres"))
        }
    }

    /// One integer; `sql` may use `$1` for `arg`.
    pub async fn int(&self, sql: &str, arg: Option<&str>) -> i64 {
        on!(self, p => {
            let mut q = sqlx::query_scalar::<_, i64>(sql);
            if let Some(a) = arg {
                q = q.bind(a);
            }
            q.fetch_one(p).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
        })
    }

    /// Text columns of one row, by name (the query must select text only;
    /// cast elsewhere: `CAST(x AS TEXT)`).
    pub async fn row(
        &self,
        sql: &str,
        arg: impl Into<Arg>,
    ) -> Option<BTreeMap<String, Option<String>>> {
        let arg = arg.into();
        on!(self, p => {
            let q = sqlx::query(sql);
            let q = match &arg {
                Arg::Int(i) => q.bind(*i),
                Arg::Text(t) => q.bind(t.clone()),
            };
            let row = q.fetch_optional(p).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            row.map(|r| {
                use sqlx::Column;
                r.columns()
                    .iter()
                    .map(|c| (c.name().to_owned(), r.try_get::<Option<String>, _>(c.ordinal()).unwrap_or_else(|e| panic!("{}: {e}", c.name()))))
                    .collect()
            })
        })
    }

    /// One text column of every row.
    pub async fn texts(&self, sql: &str) -> Vec<Option<String>> {
        on!(self, p => sqlx::query_scalar::<_, Option<String>>(sql).fetch_all(p).await.unwrap_or_else(|e| panic!("{sql}: {e}")))
    }

    pub async fn exec(&self, sql: &str) {
        on!(self, p => { sqlx::query(sql).execute(p).await.unwrap_or_else(|e| panic!("{sql}: {e}")); })
    }

    pub async fn close(&self) {
        on!(self, p => p.close().await)
    }
}
