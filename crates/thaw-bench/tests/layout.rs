//! The benchmark stays out of the product: no product crate depends on this crate or
//! on `plotters`. (That its modules import one another one way only is checked for
//! every crate by `crates/thaw/tests/acyclic.rs`.)

use std::path::{Path, PathBuf};

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn no_product_crate_depends_on_the_benchmark_or_plotters() {
    for krate in ["qmp", "thaw", "thaw-cli", "thaw-daemon", "thaw-store"] {
        let manifest = crates_dir().join(krate).join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        let deps: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['=', '.', ' ']).next())
            .collect();
        for banned in ["plotters", "thaw-bench"] {
            assert!(
                !deps.contains(&banned),
                "{} depends on {banned}",
                manifest.display()
            );
        }
    }
}
