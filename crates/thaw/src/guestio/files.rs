//! Files copied to and from a guest through its agent, 1 MiB per request, with their
//! mode: nothing bigger than one chunk is held in memory.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::exec::fill;
use super::{close, flush, open, read, sh, write};
use crate::agent::{Agent, AgentError};
use crate::home::{Home, VmName};
use crate::vm::{VmError, VmState};

const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("no such file in the guest: {0}")]
    NotFound(String),
    #[error("{0} is a directory in the guest")]
    IsDir(String),
    #[error("no directory {0} in the guest to copy into")]
    NoParent(String),
    #[error("the guest's disk is full writing {0}")]
    DiskFull(String),
    #[error("the guest refused {path}: {desc}")]
    Refused { path: String, desc: String },
    #[error("the guest path {0:?} is not absolute")]
    NotAbsolute(String),
    #[error("could not read what is to be copied")]
    Source(#[source] std::io::Error),
    #[error("could not write the copy")]
    Sink(#[source] std::io::Error),
}

/// What a copy moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Copied {
    pub bytes: u64,
    pub mode: u32,
}

/// The agent of VM `name`, running.
pub async fn connect(home: &Home, name: &VmName) -> Result<Agent, CopyError> {
    let state = VmState::load_running(home, name)?;
    Ok(Agent::connect(&state.paths(home).agent(), Duration::from_secs(10)).await?)
}

/// The mode and size of a regular file in the guest.
pub async fn stat(agent: &mut Agent, path: &str) -> Result<(u32, u64), CopyError> {
    absolute(path)?;
    let script = r#"[ -d "$1" ] && exit 4; [ -e "$1" ] || exit 3; stat -c '%a %s' "$1""#;
    let (code, out, err) = sh(agent, script, &[path]).await?;
    let text = String::from_utf8_lossy(&out);
    match code {
        0 => match text.split_whitespace().collect::<Vec<_>>()[..] {
            [mode, size] => match (u32::from_str_radix(mode, 8), size.parse()) {
                (Ok(m), Ok(s)) => Ok((m, s)),
                _ => Err(stat_refused(path, &text)),
            },
            _ => Err(stat_refused(path, &text)),
        },
        3 => Err(CopyError::NotFound(path.to_owned())),
        4 => Err(CopyError::IsDir(path.to_owned())),
        _ => Err(CopyError::Refused {
            path: path.to_owned(),
            desc: String::from_utf8_lossy(&err).trim().to_owned(),
        }),
    }
}

fn stat_refused(path: &str, text: &str) -> CopyError {
    CopyError::Refused {
        path: path.to_owned(),
        desc: format!("stat printed {text:?}"),
    }
}

/// Copies guest file `path` to `dst`; returns its size and mode.
pub async fn download(
    agent: &mut Agent,
    path: &str,
    dst: &mut (dyn AsyncWrite + Unpin + Send),
) -> Result<Copied, CopyError> {
    let (mode, _) = stat(agent, path).await?;
    let bytes = read_into(agent, path, dst).await?;
    Ok(Copied { bytes, mode })
}

/// Copies guest file `path` to `dst`, 1 MiB at a time; returns the bytes copied.
pub async fn read_into(
    agent: &mut Agent,
    path: &str,
    dst: &mut (dyn AsyncWrite + Unpin + Send),
) -> Result<u64, CopyError> {
    let h = open(agent, path, "r").await.map_err(|e| refused(path, e))?;
    let mut bytes = 0u64;
    let result = async {
        loop {
            let Some((chunk, eof)) = read(agent, &h, CHUNK).await? else {
                continue;
            };
            bytes += chunk.len() as u64;
            dst.write_all(&chunk).await.map_err(CopyError::Sink)?;
            if eof || chunk.is_empty() {
                break;
            }
        }
        dst.flush().await.map_err(CopyError::Sink)
    }
    .await;
    let _ = close(agent, h).await;
    result?;
    Ok(bytes)
}

/// Where a copy into the guest goes: `dest`, or `dest/name` when `dest` is a directory.
pub async fn target(agent: &mut Agent, dest: &str, name: &str) -> Result<String, CopyError> {
    absolute(dest)?;
    let script = r#"[ -d "$1" ] && exit 4; [ -d "$(dirname "$1")" ] || exit 3; exit 0"#;
    let (code, _, _) = sh(agent, script, &[dest]).await?;
    match code {
        0 => Ok(dest.to_owned()),
        4 if !name.is_empty() => Ok(format!("{}/{name}", dest.trim_end_matches('/'))),
        4 => Err(CopyError::IsDir(dest.to_owned())),
        _ => Err(CopyError::NoParent(
            dest.rsplit_once('/')
                .map(|(p, _)| p)
                .unwrap_or("/")
                .to_owned(),
        )),
    }
}

/// Copies `src` into guest file `path` (created or replaced) and gives it `mode`.
/// A copy that fails leaves no partial file behind.
pub async fn upload(
    agent: &mut Agent,
    src: &mut (dyn AsyncRead + Unpin + Send),
    path: &str,
    mode: u32,
) -> Result<Copied, CopyError> {
    absolute(path)?;
    let h = open(agent, path, "w").await.map_err(|e| refused(path, e))?;
    let mut bytes = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let result = async {
        loop {
            let n = fill(src, &mut buf).await.map_err(CopyError::Source)?;
            if n == 0 {
                break;
            }
            write(agent, &h, &buf[..n])
                .await
                .map_err(|e| refused(path, e))?;
            bytes += n as u64;
        }
        flush(agent, &h).await.map_err(|e| refused(path, e))
    }
    .await;
    let closed = close(agent, h).await.map_err(|e| refused(path, e));
    if let Err(e) = result.and(closed) {
        let _ = sh(agent, r#"rm -f "$1""#, &[path]).await;
        return Err(e);
    }
    let (code, _, err) = sh(agent, r#"chmod "$1" "$2""#, &[&format!("{mode:o}"), path]).await?;
    if code != 0 {
        return Err(CopyError::Refused {
            path: path.to_owned(),
            desc: String::from_utf8_lossy(&err).trim().to_owned(),
        });
    }
    Ok(Copied { bytes, mode })
}

fn absolute(path: &str) -> Result<(), CopyError> {
    match path.starts_with('/') {
        true => Ok(()),
        false => Err(CopyError::NotAbsolute(path.to_owned())),
    }
}

/// qemu-ga's refusal of a file operation, made specific where it can be.
fn refused(path: &str, e: AgentError) -> CopyError {
    let AgentError::Command { desc, .. } = &e else {
        return CopyError::Agent(e);
    };
    let path = path.to_owned();
    if desc.contains("No space left") || desc.contains("Disk quota") {
        CopyError::DiskFull(path)
    } else if desc.contains("No such file") {
        CopyError::NotFound(path)
    } else if desc.contains("Is a directory") {
        CopyError::IsDir(path)
    } else {
        CopyError::Refused {
            path,
            desc: desc.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_refusals_become_clear_errors() {
        let cmd = |desc: &str| AgentError::Command {
            command: "guest-file-write".into(),
            desc: desc.into(),
        };
        assert!(matches!(
            refused("/x", cmd("failed to write to file: No space left on device")),
            CopyError::DiskFull(p) if p == "/x"
        ));
        assert!(matches!(
            refused(
                "/x",
                cmd("failed to open file '/x' (mode: 'r'): No such file or directory")
            ),
            CopyError::NotFound(_)
        ));
        assert_eq!(
            CopyError::DiskFull("/x".into()).to_string(),
            "the guest's disk is full writing /x"
        );
    }
}
