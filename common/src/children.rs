//! Waiting for forked children without ever hanging the lesson.
//!
//! A lesson that forks must still finish when a child misbehaves (a futex
//! that never wakes, a lock that is never released). [`wait_deadline`] polls
//! `waitpid(WNOHANG)` until a deadline, then kills the child it started (by
//! its pid) and reports that it had to.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// How a wait with a deadline ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// The child ended on its own before the deadline.
    Ended(WaitStatus),
    /// The deadline passed: the child was killed with SIGKILL and reaped.
    TimedOut(WaitStatus),
}

impl Waited {
    pub fn status(self) -> WaitStatus {
        match self {
            Waited::Ended(s) | Waited::TimedOut(s) => s,
        }
    }
}

/// Wait for `pid` (a child of ours) for at most `timeout`. On timeout, kill it
/// with SIGKILL and reap it, so no zombie or orphan is left.
pub fn wait_deadline(pid: Pid, timeout: Duration) -> nix::Result<Waited> {
    let end = Instant::now() + timeout;
    let mut nap = Duration::from_micros(200);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG))? {
            WaitStatus::StillAlive => {}
            status => return Ok(Waited::Ended(status)),
        }
        if Instant::now() >= end {
            let _ = kill(pid, Signal::SIGKILL);
            return Ok(Waited::TimedOut(waitpid(pid, None)?));
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

/// Poll `cond` until it is true or `timeout` passes; true if it became true.
/// For "wait until the child is blocked / the file exists" without a fixed
/// sleep.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The scheduler state letter of a process (`R`, `S`, `D`, `Z`, ...) from
/// `/proc/PID/stat`, or `None` if it is gone.
pub fn state(pid: Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// In a forked child: ask the kernel to SIGKILL us if the parent dies, so a
/// crashed lesson never leaves a child spinning. Async-signal-safe (one
/// prctl), so it may be called right after `fork`.
pub fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no
    // memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::{ForkResult, fork};

    #[test]
    fn a_child_that_never_ends_is_killed_at_the_deadline() {
        // SAFETY: the child only calls pause() and _exit, both
        // async-signal-safe.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => unsafe {
                libc::pause();
                libc::_exit(0)
            },
            ForkResult::Parent { child } => {
                let w = wait_deadline(child, Duration::from_millis(100)).unwrap();
                assert_eq!(
                    w,
                    Waited::TimedOut(WaitStatus::Signaled(child, Signal::SIGKILL, false))
                );
            }
        }
    }

    #[test]
    fn a_child_that_ends_is_reported_as_ended() {
        // SAFETY: the child only calls _exit.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => unsafe { libc::_exit(7) },
            ForkResult::Parent { child } => {
                let w = wait_deadline(child, Duration::from_secs(10)).unwrap();
                assert_eq!(w, Waited::Ended(WaitStatus::Exited(child, 7)));
            }
        }
    }
}
