//! Where thaw keeps its state, and the typed names of VMs and snapshots.
//!
//! Layout of `$THAW_HOME` (default `~/.local/share/thaw`):
//!
//! ```text
//! vms/<name>/          one directory per VM: vm.json, qmp.sock, qga.sock,
//!                      console.log, qemu.log, and (booted VMs) the RAM file
//! snapshots/<tag>/     one directory per snapshot (see `snapshot`)
//! snapshots/.tmp-*     snapshots being written; never read as snapshots
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A bad VM name or snapshot tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {name:?}: {why}")]
pub struct NameError {
    pub kind: &'static str,
    pub name: String,
    pub why: &'static str,
}

fn check_name(kind: &'static str, name: &str) -> Result<(), NameError> {
    let err = |why| {
        Err(NameError {
            kind,
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() {
        return err("it is empty");
    }
    if name.len() > 64 {
        return err("it is longer than 64 characters");
    }
    if name.contains('/') {
        return err("it contains '/'");
    }
    if name.contains("..") {
        return err("it contains '..'");
    }
    if name.starts_with(['.', '-']) {
        return err("it starts with '.' or '-'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return err("use only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// The schema of a name: what [`check_name`] lets through, as far as a pattern can say
/// (a name with `..` matches it and is still refused).
#[cfg(feature = "openapi")]
fn name_schema(kind: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(64))
        .pattern(Some("^[A-Za-z0-9_][A-Za-z0-9._-]*$"))
        .description(Some(format!(
            "A {kind}: letters, digits, '.', '_' and '-', at most 64; no '/', no '..', \
             not starting with '.' or '-'."
        )))
        .into()
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                check_name($kind, s)?;
                Ok($ty(s.to_owned()))
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                check_name($kind, &s)?;
                Ok($ty(s))
            }
        }

        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                name_schema($kind)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $ty {}

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }
    };
}

name_type!(
    /// The name of a VM: letters, digits, `.`, `_`, `-`; no `/`, no `..`.
    VmName,
    "VM name"
);
name_type!(
    /// The tag of a snapshot; same rules as [`VmName`].
    SnapshotTag,
    "snapshot tag"
);

/// The root of thaw's state.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// `$THAW_HOME`, else `$XDG_DATA_HOME/thaw`, else `~/.local/share/thaw`.
    pub fn from_env() -> Home {
        if let Some(h) = std::env::var_os("THAW_HOME").filter(|h| !h.is_empty()) {
            return Home::new(h);
        }
        if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
            return Home::new(PathBuf::from(d).join("thaw"));
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        Home::new(PathBuf::from(home).join(".local/share/thaw"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn vms_dir(&self) -> PathBuf {
        self.root.join("vms")
    }

    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub fn vm_dir(&self, name: &VmName) -> PathBuf {
        self.vms_dir().join(name.as_str())
    }

    pub fn snapshot_dir(&self, tag: &SnapshotTag) -> PathBuf {
        self.snapshots_dir().join(tag.as_str())
    }

    /// Creates the top-level directories.
    pub fn ensure(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.vms_dir())?;
        std::fs::create_dir_all(self.snapshots_dir())
    }
}

/// The snapshot a snapshot was taken on top of (a snapshot of a restored clone).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParentRef {
    pub tag: SnapshotTag,
    /// BLAKE3 of the parent's manifest.json when the child was taken.
    pub manifest_blake3: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["web", "a-1", "tag_2.0", "X"] {
            assert!(good.parse::<VmName>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "a/b",
            "..",
            "a..b",
            ".hidden",
            "-x",
            "sp ace",
            "ü",
            &"x".repeat(65),
        ] {
            let err = bad.parse::<SnapshotTag>().unwrap_err();
            assert_eq!(err.kind, "snapshot tag");
        }
        let e = "a/b".parse::<VmName>().unwrap_err();
        assert_eq!(e.to_string(), "invalid VM name \"a/b\": it contains '/'");
    }

    #[test]
    fn names_round_trip_through_serde_and_are_validated() {
        let n: VmName = "web".parse().unwrap();
        let j = serde_json::to_string(&n).unwrap();
        assert_eq!(j, "\"web\"");
        assert_eq!(serde_json::from_str::<VmName>(&j).unwrap(), n);
        assert!(serde_json::from_str::<VmName>("\"../etc\"").is_err());
    }
}
