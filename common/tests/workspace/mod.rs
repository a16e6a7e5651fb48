//! The workspace as the guard tests see it: its root and its lessons.
//! (`tests/workspace/mod.rs`, so cargo does not build it as a test of its own.)

use std::fs;
use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `(folder name, package name)` of every lesson.
pub fn lessons() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in fs::read_dir(root().join("lessons")).unwrap() {
        let dir = e.unwrap().path();
        let manifest = fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let package = manifest
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .map(|l| l.trim_end_matches('"').to_string())
            .expect("a package name");
        out.push((
            dir.file_name().unwrap().to_string_lossy().into_owned(),
            package,
        ));
    }
    out.sort();
    out
}
