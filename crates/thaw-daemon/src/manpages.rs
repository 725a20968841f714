//! Man pages of a clap command and its subcommands (clap_mangen), for `thaw man DIR`
//! and `thawd man DIR` (what scripts/package.sh installs).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use thaw::fsutil::IoError;

/// Writing the man pages failed.
#[derive(Debug, thiserror::Error)]
pub enum ManPagesError {
    #[error("could not render the man page {page}")]
    Render {
        page: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not write the man pages into {}", dir.display())]
    Write {
        dir: PathBuf,
        #[source]
        source: IoError,
    },
    #[error("could not create {}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Renders `cmd`'s page (NAME.1) and one per visible subcommand, recursively
/// (NAME-SUB.1, NAME-SUB-SUB.1), in memory: (file name, roff).
pub fn render(cmd: clap::Command) -> Result<Vec<(String, Vec<u8>)>, ManPagesError> {
    fn walk(cmd: clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> Result<(), ManPagesError> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, pages)?;
        }
        let man = clap_mangen::Man::new(cmd);
        let page = man.get_filename();
        let mut roff = Vec::new();
        man.render(&mut roff)
            .map_err(|source| ManPagesError::Render {
                page: page.clone(),
                source,
            })?;
        pages.push((page, roff));
        Ok(())
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    walk(cmd, &mut pages)?;
    pages.sort();
    Ok(pages)
}

/// Writes [`render`]'s pages into `dir` (created if missing), each atomically and
/// world-readable (0644: a man page is no secret, whatever the umask); returns their
/// paths. Nothing is written when rendering fails.
pub fn write(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, ManPagesError> {
    let pages = render(cmd)?;
    std::fs::create_dir_all(dir).map_err(|source| ManPagesError::CreateDir {
        dir: dir.to_owned(),
        source,
    })?;
    let mut written = Vec::new();
    for (name, roff) in pages {
        let path = dir.join(name);
        let write = |source| ManPagesError::Write {
            dir: dir.to_owned(),
            source,
        };
        thaw::fsutil::write_atomic(&path, &roff).map_err(write)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| write(IoError::new("chmod", &path, e)))?;
        written.push(path);
    }
    Ok(written)
}
