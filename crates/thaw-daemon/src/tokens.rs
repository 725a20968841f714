//! Bearer tokens for the TCP listener: a tokens file of `NAME:SHA256HEX` lines (the hex
//! SHA-256 of each token's text; `#` comments and blank lines allowed), readable by its
//! owner only. The daemon keeps the hashes, never a token; a presented token is hashed
//! and compared with every entry in constant time. The file is read again when it
//! changes (its modification time or size), so tokens are added or revoked without a
//! restart.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The largest tokens file read (a line per token: many thousands).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// A tokens file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the tokens file {0} can be read by others (mode {1:o}): make it 0600")]
    Mode(PathBuf, u32),
    #[error("the tokens file {0} is larger than 1 MiB")]
    TooLarge(PathBuf),
    #[error("{path}:{line}: expected NAME:SHA256HEX (64 hex digits)")]
    Line { path: PathBuf, line: usize },
    #[error("{0}: a token name is 1-64 letters, digits, '-', '_' or '.'")]
    Name(String),
    #[error("a token named {0} is already in the file")]
    Exists(String),
    #[error("cannot write the tokens file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One entry: a name and the SHA-256 of the token.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    hash: [u8; 32],
}

/// The tokens file as last read, and what it was read at.
#[derive(Debug)]
struct Loaded {
    stamp: (i64, i64, u64),
    entries: Vec<Entry>,
}

/// The daemon's tokens: checked on every request over TCP.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl Tokens {
    /// Reads the tokens file; it must be readable by its owner only.
    ///
    /// # Errors
    /// The file cannot be read, is readable by others, too large, or has a bad line.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let loaded = read(path)?;
        Ok(Tokens {
            path: path.to_owned(),
            loaded: Mutex::new(loaded),
        })
    }

    /// The name of the token `presented`, if the file (read again when it changed)
    /// has it. A file that became unreadable or bad keeps what was read before, and
    /// says so in the log.
    pub fn check(&self, presented: &str) -> Option<String> {
        let mut loaded = self.loaded.lock().expect("tokens lock");
        if let Ok(stamp) = stamp(&self.path) {
            if stamp != loaded.stamp {
                match read(&self.path) {
                    Ok(fresh) => {
                        tracing::info!(tokens = fresh.entries.len(), "tokens file read again");
                        *loaded = fresh;
                    }
                    Err(e) => tracing::error!("tokens file not read again: {e}"),
                }
            }
        }
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every entry is compared, in constant time, whatever matched.
        let mut found = None;
        for e in &loaded.entries {
            if bool::from(e.hash.ct_eq(&hash)) {
                found = Some(e.name.clone());
            }
        }
        found
    }
}

fn stamp(path: &Path) -> std::io::Result<(i64, i64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.mtime(), m.mtime_nsec(), m.size()))
}

fn read(path: &Path) -> Result<Loaded, TokensError> {
    let err = |source| TokensError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokensError::Mode(path.to_owned(), mode));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(TokensError::TooLarge(path.to_owned()));
    }
    let text = std::fs::read_to_string(path).map_err(err)?;
    let entries = parse(path, &text)?;
    Ok(Loaded {
        stamp: (meta.mtime(), meta.mtime_nsec(), meta.size()),
        entries,
    })
}

fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, TokensError> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || TokensError::Line {
            path: path.to_owned(),
            line: i + 1,
        };
        let (name, hex) = line.split_once(':').ok_or_else(bad)?;
        check_name(name).map_err(|_| bad())?;
        let hash = decode_hex(hex.trim()).ok_or_else(bad)?;
        entries.push(Entry {
            name: name.to_owned(),
            hash,
        });
    }
    Ok(entries)
}

fn check_name(name: &str) -> Result<(), TokensError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(TokensError::Name(name.to_owned()))
    }
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes a new random token named `name`, appends `NAME:SHA256HEX` to the tokens file
/// (created 0600 if missing) and returns the token: the only time it is shown.
///
/// # Errors
/// A bad name, a name already in the file, or the file cannot be read or written.
pub fn new_token(path: &Path, name: &str) -> Result<String, TokensError> {
    use std::io::Write;
    check_name(name)?;
    let existing = match read(path) {
        Ok(l) => l.entries,
        Err(TokensError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    if existing.iter().any(|e| e.name == name) {
        return Err(TokensError::Exists(name.to_owned()));
    }
    let mut secret = [0u8; 32];
    let urandom = std::fs::File::open("/dev/urandom").and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut secret)
    });
    urandom.map_err(|source| TokensError::Write {
        path: path.to_owned(),
        source,
    })?;
    let token = format!("thaw_{}", encode_hex(&secret));
    let line = format!("{name}:{}\n", encode_hex(&Sha256::digest(token.as_bytes())));
    let write_err = |source| TokensError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(write_err)?;
    f.write_all(line.as_bytes()).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_kept_hashed_and_checked_by_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let ci = new_token(&path, "ci").unwrap();
        let ops = new_token(&path, "ops").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&ci) && !text.contains(&ops), "{text}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let tokens = Tokens::load(&path).unwrap();
        assert_eq!(tokens.check(&ci).as_deref(), Some("ci"));
        assert_eq!(tokens.check(&ops).as_deref(), Some("ops"));
        assert_eq!(tokens.check("thaw_wrong"), None);
        assert_eq!(tokens.check(""), None);
        assert!(matches!(
            new_token(&path, "ci"),
            Err(TokensError::Exists(_))
        ));
        assert!(matches!(new_token(&path, "a b"), Err(TokensError::Name(_))));
    }

    #[test]
    fn a_changed_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let first = new_token(&path, "first").unwrap();
        let tokens = Tokens::load(&path).unwrap();
        let second = new_token(&path, "second").unwrap();
        assert_eq!(tokens.check(&second).as_deref(), Some("second"));
        // Revoked: the line removed.
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: String = text
            .lines()
            .filter(|l| !l.starts_with("first:"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, kept).unwrap();
        assert_eq!(tokens.check(&first), None);
        assert_eq!(tokens.check(&second).as_deref(), Some("second"));
    }

    #[test]
    fn bad_files_are_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "ci:abc\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            Tokens::load(&path).unwrap_err().to_string(),
            format!(
                "{}:1: expected NAME:SHA256HEX (64 hex digits)",
                path.display()
            )
        );
        std::fs::write(&path, format!("# comment\n\nci:{}\n", "a".repeat(64))).unwrap();
        Tokens::load(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Tokens::load(&path),
            Err(TokensError::Mode(_, 0o644))
        ));
        assert!(matches!(
            Tokens::load(&dir.path().join("missing")),
            Err(TokensError::Read { .. })
        ));
    }
}
