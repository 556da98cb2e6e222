use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::Deserialize;

/// A credential. Its `Debug` and `Display` never show the value, so a secret
/// cannot leak through a log line or an error message by accident.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

static BASE_DIR: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Relative `*_file` paths are taken relative to this folder (the
/// configuration folder), not to the daemon's working directory.
pub fn set_secret_base_dir(dir: &Path) {
    *BASE_DIR.write().unwrap_or_else(|e| e.into_inner()) = Some(dir.to_owned());
}

/// A path from a channel file, relative to the configuration folder.
pub fn resolve_config_path(path: &Path) -> PathBuf {
    resolve_path(path)
}

fn resolve_path(path: &Path) -> PathBuf {
    match &*BASE_DIR.read().unwrap_or_else(|e| e.into_inner()) {
        Some(base) if path.is_relative() => base.join(path),
        _ => path.to_owned(),
    }
}

/// A secret file holds a key or a password, never megabytes. Reading stops
/// past this, so a path naming a device (`/dev/zero`) or a wrong, huge file
/// is refused instead of filling memory.
const MAX_SECRET_FILE: u64 = 64 * 1024;

pub fn read_secret_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    let read = std::fs::File::open(path)?
        .take(MAX_SECRET_FILE + 1)
        .read_to_string(&mut text)?;
    if read as u64 > MAX_SECRET_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_SECRET_FILE} bytes, not a secret"),
        ));
    }
    Ok(text)
}

/// Where a channel file may take a secret from: inline (`api_key`), a file
/// (`api_key_file`, trailing newline trimmed) or an environment variable
/// (`api_key_env`). At most one may be set.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct SecretSource {
    pub value: Option<Secret>,
    pub file: Option<PathBuf>,
    pub env: Option<String>,
}

impl SecretSource {
    /// Resolve to the secret, or `None` when no source is set. The error
    /// names the field (`api_key_file`, …) and never the secret.
    pub fn resolve(&self, field: &str) -> Result<Option<Secret>, String> {
        let set = [
            self.value.is_some(),
            self.file.is_some(),
            self.env.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if set > 1 {
            return Err(format!(
                "set only one of `{field}`, `{field}_file` and `{field}_env`"
            ));
        }
        if let Some(v) = &self.value {
            return Ok(Some(v.clone()));
        }
        if let Some(path) = &self.file {
            let path = resolve_path(path);
            let text = read_secret_file(&path)
                .map_err(|e| format!("`{field}_file`: cannot read {}: {e}", path.display()))?;
            let trimmed = text.trim_end_matches(['\r', '\n']);
            if trimmed.is_empty() {
                return Err(format!("`{field}_file`: {} is empty", path.display()));
            }
            return Ok(Some(Secret::new(trimmed)));
        }
        if let Some(var) = &self.env {
            return match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(Secret::new(v))),
                _ => Err(format!(
                    "`{field}_env`: environment variable {var} is not set"
                )),
            };
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_read_boundedly() {
        let dir = std::env::temp_dir().join(format!("leadgate-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, "s3cret\n").unwrap();
        let from = |file: &Path| SecretSource {
            file: Some(file.to_owned()),
            ..SecretSource::default()
        };
        assert_eq!(
            from(&key).resolve("api_key").unwrap().unwrap().expose(),
            "s3cret"
        );
        let huge = dir.join("huge");
        std::fs::write(&huge, vec![b'k'; MAX_SECRET_FILE as usize + 1]).unwrap();
        let err = from(&huge).resolve("api_key").unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        // An endless device is refused as promptly.
        let err = from(Path::new("/dev/zero")).resolve("api_key").unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
