//! `lesson-1 | head`: the reader of the lesson's output goes away.
//!
//! These checks live in a test binary of their own, with one test: a pipe's
//! read end is inherited by any child that another test thread of the same
//! process forks at that moment (until its exec), and a live reader elsewhere
//! would keep our lesson's writes from failing. Here nothing else spawns.

use std::path::Path;
use std::process::Command;

use common::testkit;

fn lesson() -> Command {
    let mut c = Command::new(Path::new(env!("CARGO_BIN_EXE_lesson-1")));
    c.env("NO_COLOR", "1");
    c
}

#[test]
fn a_closed_output_pipe_ends_the_lesson_quietly_and_it_still_cleans_up() {
    a_closed_pipe_ends_the_lesson_quietly_and_cleans_up();
    closed_stdout_and_stderr_still_clean_up();
}

fn a_closed_pipe_ends_the_lesson_quietly_and_cleans_up() {
    // `lesson-1 | head -3`: the reader goes away before the lesson is done.
    let name = testkit::unique_name("pipe");
    let mut child = lesson()
        .args(["--name", &name])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // close the only reader
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!testkit::shm_exists(&name), "{name} left behind");
}

fn closed_stdout_and_stderr_still_clean_up() {
    // `lesson-1 --pause 2>&1 | head`: the reader goes away while the object
    // exists, so even the cleanup's own messages have nowhere to go. A panic
    // while unwinding would abort and leak the object.
    use std::io::{BufRead, BufReader, Write};
    let name = testkit::unique_name("pipes");
    let mut child = lesson()
        .args(["--pause", "--name", &name])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("press Enter") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "no pause prompt");
    }
    assert!(
        testkit::shm_exists(&name),
        "the object exists during the pause"
    );
    drop(out);
    drop(child.stderr.take());
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(141), "{status:?}");
    assert!(!testkit::shm_exists(&name), "{name} left behind");
}
