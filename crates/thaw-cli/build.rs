//! The commit `thaw --version` reports (`THAW_COMMIT` at compile time): `$THAW_COMMIT`
//! when the builder sets it, else what git says about the checkout this is built
//! from, else the commit cargo recorded in a packaged source (`.cargo_vcs_info.json`),
//! else `unknown` (e.g. a source tarball without .git).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=THAW_COMMIT");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&dir);
    let commit = std::env::var("THAW_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .map(|c| c.trim().to_owned())
        .or_else(|| from_git(dir))
        .or_else(|| from_vcs_info(dir))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=THAW_COMMIT={commit}");
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

/// The checkout's HEAD (12 hex digits), rebuilt when HEAD moves: a commit, a checkout or
/// a branch switch changes HEAD or the ref it names (worktrees included).
fn from_git(dir: &Path) -> Option<String> {
    let commit = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    let abs = |p: String| {
        let p = Path::new(&p);
        match p.is_absolute() {
            true => p.to_owned(),
            false => dir.join(p),
        }
    };
    // Only files that exist: cargo runs the script again on every build for a
    // missing one.
    let watch = |p: &Path| {
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    };
    if let Some(git_dir) = git(dir, &["rev-parse", "--git-dir"]).map(abs) {
        watch(&git_dir.join("HEAD"));
    }
    if let Some(common) = git(dir, &["rev-parse", "--git-common-dir"]).map(abs) {
        watch(&common.join("packed-refs"));
        if let Some(head_ref) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
            watch(&common.join(head_ref));
        }
    }
    Some(commit)
}

/// `cargo package` writes `{"git": {"sha1": "..."}}` next to Cargo.toml.
fn from_vcs_info(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(".cargo_vcs_info.json")).ok()?;
    let start = text.find("\"sha1\"")?;
    let rest = &text[start + 6..];
    let sha: String = rest
        .trim_start_matches([' ', ':', '"'])
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    (sha.len() >= 12).then(|| sha[..12].to_owned())
}
