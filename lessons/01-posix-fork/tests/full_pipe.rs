//! `lesson-1 --pause 2>&1 | a-reader-that-stopped-reading`, then Ctrl-C.
//!
//! The main thread is blocked in write(2) on the full pipe, holding std's
//! stdout lock; the cleanup after SIGINT must still remove the object and end
//! the process: it runs the guards before it writes anything, and never
//! waits on stdout or on a full stderr.
//!
//! A test binary of its own, with one test, for the reason given in
//! closed_pipe.rs: another test thread's fork would inherit the pipe.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::children::poll_until;
use common::testkit;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Bytes waiting in the pipe (FIONREAD).
fn unread(fd: &impl AsRawFd) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD stores one int through the pointer we pass.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "ioctl(FIONREAD)");
    n
}

#[test]
fn ctrl_c_cleans_up_while_the_main_thread_is_blocked_on_a_full_pipe() {
    let name = testkit::unique_name("fullpipe");
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    let mut child = Command::new(Path::new(env!("CARGO_BIN_EXE_lesson-1")))
        .args(["--pause", "--name", &name])
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(w.try_clone().unwrap())
        .stderr(w.try_clone().unwrap()) // 2>&1: the same pipe
        .spawn()
        .unwrap();
    let pid = child.id() as i32;

    // Read up to the pause prompt: then the lesson waits on stdin, with the
    // object created and nothing more to write.
    let mut out = BufReader::new(File::from(r));
    let mut line = String::new();
    while !line.contains("press Enter") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "no pause prompt");
    }
    assert_eq!(
        unread(out.get_ref()),
        0,
        "the lesson wrote after its prompt"
    );
    assert!(
        testkit::shm_exists(&name),
        "the object exists during the pause"
    );

    // Nobody reads from now on: fill the pipe to its capacity with our own
    // copy of the write end, then let the lesson go on.
    let capacity = fcntl(w.as_fd(), FcntlArg::F_GETPIPE_SZ).unwrap() as usize;
    File::from(w).write_all(&vec![b'x'; capacity]).unwrap();
    child.stdin.take().unwrap().write_all(b"\n").unwrap();

    // Its main thread is now blocked in write(2) on fd 1 (std's stdout lock
    // held), and the object still exists.
    let blocked = format!("{} 0x1 ", libc::SYS_write);
    let in_write = poll_until(Duration::from_secs(20), || {
        let now = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
        now.starts_with(&blocked).then_some(())
    });
    assert!(
        in_write.is_some(),
        "lesson-1 never blocked in write(1, ...)"
    );
    assert!(
        testkit::shm_exists(&name),
        "the object exists while blocked"
    );

    kill(Pid::from_raw(pid), Signal::SIGINT).unwrap();
    let ended = poll_until(Duration::from_secs(20), || child.try_wait().unwrap());
    let left = testkit::shm_exists(&name);
    if ended.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        let _ = nix::sys::mman::shm_unlink(name.as_str());
    }
    assert!(!left, "{name} left behind by the cleanup after SIGINT");
    let status = ended.expect("lesson-1 hung after SIGINT: the cleanup never finished");
    assert_eq!(status.code(), Some(130), "{status:?}");

    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("panicked"), "{rest}");
}
