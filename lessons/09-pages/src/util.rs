//! Plumbing the parts share: a pipe for a child's report, a word in a page,
//! and waiting for a child. None of it is what the lesson teaches.

use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::bail;
use common::children::{Waited, wait_deadline};
use common::cleanup::Guard;
use common::fault;
use common::report::CallResult;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

/// The 8-byte word at `base + offset`, as an atomic: every word this lesson
/// shares between processes is read and written only through this.
///
/// # Safety
/// `base + offset` must lie in a live mapping of ours, 8-byte aligned, for as
/// long as the reference is used (the callers unmap only at the end).
pub unsafe fn word<'a>(base: NonNull<libc::c_void>, offset: usize) -> &'a AtomicU64 {
    // SAFETY: the caller guarantees a live, aligned word; AtomicU64 has the
    // size and alignment of u64, and any bit pattern is a valid u64.
    unsafe { &*(base.as_ptr().cast::<u8>().add(offset).cast::<AtomicU64>()) }
}

/// A pipe a forked child reports numbers through: the report is not itself
/// shared memory, so it cannot blur what the lesson measures.
pub struct Report {
    read: OwnedFd,
    write: OwnedFd,
}

impl Report {
    pub fn new() -> anyhow::Result<Report> {
        let (read, write) = nix::unistd::pipe().call("pipe(fds)")?;
        Ok(Report { read, write })
    }

    /// In the child: send `values` with one `write(2)` (async-signal-safe).
    pub fn send(&self, values: &[i64]) {
        // SAFETY: write(2) reads values.len() * 8 initialised bytes; it is
        // async-signal-safe, so a forked child may call it.
        unsafe {
            libc::write(
                self.write.as_raw_fd(),
                values.as_ptr().cast(),
                std::mem::size_of_val(values),
            );
        }
    }

    /// In the parent, after the fork: receive `n` numbers (blocks until the
    /// child sends them; an error if it ends first). Our own write end is
    /// closed first, so a child that dies gives end-of-file, not a hang.
    pub fn receive(self, n: usize) -> anyhow::Result<Vec<i64>> {
        drop(self.write);
        let mut buf = vec![0u8; n * 8];
        let mut got = 0;
        while got < n * 8 {
            let r = nix::unistd::read(&self.read, &mut buf[got..]).call("read(pipe)")?;
            if r == 0 {
                bail!("the child ended before it reported");
            }
            got += r;
        }
        Ok(buf
            .chunks_exact(8)
            .map(|c| i64::from_ne_bytes(c.try_into().unwrap()))
            .collect())
    }
}

/// In the child: block until the parent says go (one byte) or goes away
/// (end of file). `read(2)` is async-signal-safe.
pub fn wait_for_go(go: &OwnedFd) {
    let mut b = [0u8; 1];
    // SAFETY: read(2) into a local byte; async-signal-safe.
    unsafe {
        libc::read(go.as_raw_fd(), b.as_mut_ptr().cast(), 1);
    }
}

/// Wait for a child the lesson forked (at most 60 s), disarm its guard, and
/// hand back how it ended.
pub fn reap(pid: Pid, guard: Guard) -> anyhow::Result<WaitStatus> {
    let waited = wait_deadline(pid, Duration::from_secs(60)).call(format!("waitpid({pid})"))?;
    guard.disarm(); // reaped: the pid is no longer ours to signal
    match waited {
        Waited::Ended(s) => Ok(s),
        Waited::TimedOut(s) => bail!("child {pid} hung and was killed: {}", fault::describe(s)),
    }
}

/// `reap`, and the child must have exited with status 0.
pub fn reap_ok(pid: Pid, guard: Guard) -> anyhow::Result<()> {
    match reap(pid, guard)? {
        WaitStatus::Exited(_, 0) => Ok(()),
        other => bail!("child {pid} {}", fault::describe(other)),
    }
}
