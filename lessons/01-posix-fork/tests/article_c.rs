//! The article's own program, `c/article.c`: it builds without `-lrt` on
//! glibc 2.34 and later, prints the article's line, leaves nothing behind,
//! and (the one change for a shared machine) refuses a name that exists.

use std::path::{Path, PathBuf};
use std::process::Command;

use common::testkit;
use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::Mode;

/// `c/article.c` built with plain `cc`, or `None` (skipped).
fn build() -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/article.c");
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lesson1-article");
    testkit::cc_without_lrt(&src, &exe, true)
}

#[test]
fn the_articles_program_builds_without_lrt_and_prints_its_line() {
    let Some(exe) = build() else { return };
    let name = testkit::unique_name("article-c");
    let out = Command::new(&exe).arg(&name).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "child wrote 0xdeadbeef\n"
    );
    assert!(!testkit::shm_exists(&name), "{name} left behind");

    // O_EXCL: an object that exists (someone else's) is refused with the
    // article's error_out, and left alone.
    let name = testkit::unique_name("article-c-taken");
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    let fd = shm_open(name.as_str(), flags, Mode::from_bits_truncate(0o600)).unwrap();
    let out = Command::new(&exe).arg(&name).output().unwrap();
    let taken = testkit::shm_exists(&name);
    if taken {
        shm_unlink(name.as_str()).unwrap();
    }
    drop(fd);
    assert!(taken, "the C program removed an object it did not create");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "shm_open: File exists\n"
    );
    assert!(out.stdout.is_empty());
}
