//! The article's own program, `c/article.c`: it builds with plain `cc` (no
//! `-lrt`: System V calls were always in libc), prints the article's line,
//! removes its segment, and (the one change for a shared machine) refuses a
//! key that is taken.

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{sysv, testkit};

/// `c/article.c` built with plain `cc`, or `None` (skipped).
fn build() -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/article.c");
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lesson2-article");
    testkit::cc_without_lrt(&src, &exe, false)
}

#[test]
fn the_articles_program_builds_without_lrt_and_prints_its_line() {
    let Some(exe) = build() else { return };
    let key = testkit::unique_key();
    let hex = format!("{:#x}", key as u32);
    let out = Command::new(&exe).arg(&hex).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "child wrote 0xdeadbeef\n"
    );
    assert!(
        testkit::segments_with_key(key).is_empty(),
        "{hex} left behind"
    );

    // IPC_EXCL: a segment that exists under the key (someone else's) is
    // refused with the article's error_out, and left alone.
    let key = testkit::unique_key();
    let hex = format!("{:#x}", key as u32);
    let page = common::inspect::page_size();
    let id = sysv::shmget(key, page, libc::IPC_CREAT | libc::IPC_EXCL | 0o600).unwrap();
    let out = Command::new(&exe).arg(&hex).output().unwrap();
    let still = sysv::shmctl_stat(id).is_ok();
    sysv::shmctl_rmid(id).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "shmget: File exists\n"
    );
    assert!(out.stdout.is_empty());
    assert!(still, "the C program removed a segment it did not create");
}
