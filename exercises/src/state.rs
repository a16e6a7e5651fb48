//! What the checker remembers for you: how many hints of each exercise you
//! have seen, and which exercises passed their last check. Kept outside the
//! repository, in `$XDG_STATE_HOME/shm-lessons-exercises/` or, without it,
//! in the exercises' target directory.

use std::path::PathBuf;

use crate::catalog::Exercise;

fn dir() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("shm-lessons-exercises"),
        _ => crate::target_dir().join("state"),
    }
}

fn file(e: &Exercise, what: &str) -> PathBuf {
    dir().join(format!("{}.{what}", e.id))
}

pub fn hints_seen(e: &Exercise) -> usize {
    std::fs::read_to_string(file(e, "hints"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

pub fn set_hints_seen(e: &Exercise, n: usize) {
    let _ = std::fs::create_dir_all(dir());
    let _ = std::fs::write(file(e, "hints"), format!("{n}\n"));
}

pub fn passed(e: &Exercise) -> bool {
    file(e, "passed").exists()
}

pub fn set_passed(e: &Exercise, yes: bool) {
    let _ = std::fs::create_dir_all(dir());
    if yes {
        let _ = std::fs::write(file(e, "passed"), "");
    } else {
        let _ = std::fs::remove_file(file(e, "passed"));
    }
}
