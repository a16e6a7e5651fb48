//! Waiting for other processes without ever hanging the lesson.
//!
//! A lesson that forks must still finish when a child misbehaves (a futex
//! that never wakes, a lock that is never released). [`wait_deadline`] polls
//! `waitpid(WNOHANG)` until a deadline, then kills the child it started (by
//! its pid) and reports that it had to.

use std::sync::Once;
use std::sync::atomic::{AtomicI32, Ordering};
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
        // Ctrl-C: the cleanup stops the child; stay out of its way.
        crate::cleanup::park_if_interrupted();
        if Instant::now() >= end {
            let _ = kill(pid, Signal::SIGKILL);
            return Ok(Waited::TimedOut(waitpid(pid, None)?));
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

/// Poll `probe` until it returns `Some`, or `timeout` passes (`None`). For
/// waits on processes that are not our children (a writer and a reader in
/// two terminals) or on things the kernel sends no notice of (a file that
/// appears, a child that blocks), without a fixed sleep. The pause between
/// tries grows from 1 ms to 25 ms, so a wait that ends at once costs nothing
/// and a long one costs little.
pub fn poll_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        crate::cleanup::park_if_interrupted();
        let now = Instant::now();
        if now >= end {
            return None;
        }
        std::thread::sleep(nap.min(end - now));
        nap = (nap * 2).min(Duration::from_millis(25));
    }
}

/// Poll `cond` until it is true (then `true`) or `timeout` passes (`false`):
/// [`poll_until`] for a yes/no condition.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    poll_until(timeout, || cond().then_some(())).is_some()
}

/// The scheduler state letter of a process (`R`, `S`, `D`, `Z`, ...) from
/// `/proc/PID/stat`, or `None` if it is gone.
pub fn state(pid: Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// The pid of the process that last called `fork`, as it was at that moment:
/// stored by a `pthread_atfork` prepare handler (which runs in the parent just
/// before the fork), so a child reads its parent's pid from its copy of this
/// memory even if the parent is already gone. 0 until [`record_forks`].
static FORKED_BY: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember_forking_process() {
    // SAFETY: getpid has no preconditions and cannot fail.
    FORKED_BY.store(unsafe { libc::getpid() }, Ordering::SeqCst);
}

/// Register the `pthread_atfork` handler [`die_with_parent`] relies on, once
/// per process. [`crate::run`] calls it before the lesson's body.
pub fn record_forks() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handler is a plain function that lives as long as the
        // program and only stores getpid() in an atomic; the child and parent
        // handlers are null, as pthread_atfork(3) allows.
        unsafe {
            libc::pthread_atfork(Some(remember_forking_process), None, None);
        }
    });
}

/// In a forked child: ask the kernel to SIGKILL us if the parent dies, so a
/// crashed lesson never leaves a child spinning. It may be called right after
/// `fork`: getppid, getpid and kill are async-signal-safe (signal-safety(7)),
/// prctl is Linux's own and not on that list but is one system call in
/// glibc, and the rest is an atomic load.
///
/// `PR_SET_PDEATHSIG` acts only on a death that happens after it: a parent
/// that died between `fork` and this call has already left us with a new
/// parent (init or a subreaper). So, as `ns::spawn_self` does, it then
/// compares `getppid()` with the pid of the process that forked us (recorded
/// by [`record_forks`]) and, if they differ, kills itself with the same
/// SIGKILL the kernel would have sent.
pub fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no
    // memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    }
    let parent = FORKED_BY.load(Ordering::SeqCst);
    // SAFETY: getppid, getpid and kill take and return plain integers; all
    // three are async-signal-safe (signal-safety(7)).
    unsafe {
        if parent != 0 && libc::getppid() != parent {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Nanoseconds on `CLOCK_MONOTONIC`: one system call, async-signal-safe, so a
/// forked child may time itself with it (lessons 6 and 8).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; it is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
    fn poll_until_returns_the_value_or_none_at_the_deadline() {
        let mut n = 0;
        assert_eq!(
            poll_until(Duration::from_secs(5), || {
                n += 1;
                (n == 3).then_some(n)
            }),
            Some(3)
        );
        assert_eq!(poll_until(Duration::from_millis(10), || None::<()>), None);
    }

    #[test]
    fn a_child_whose_parent_died_before_die_with_parent_is_killed() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        record_forks();
        let (r, w) = nix::unistd::pipe().unwrap();
        // SAFETY: the middle process only forks and calls _exit; the
        // grandchild only calls getppid, poll, die_with_parent (prctl,
        // getppid, getpid, kill), write and _exit: all async-signal-safe.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => unsafe {
                let middle = libc::getpid();
                if libc::fork() == 0 {
                    // The grandchild: wait until its parent is gone (it has
                    // been re-parented), and only then ask to die with it.
                    while libc::getppid() == middle {
                        libc::poll(std::ptr::null_mut(), 0, 1);
                    }
                    die_with_parent();
                    libc::write(w.as_raw_fd(), b"alive".as_ptr().cast(), 5);
                }
                libc::_exit(0)
            },
            ForkResult::Parent { child } => {
                drop(w);
                let w = wait_deadline(child, Duration::from_secs(10)).unwrap();
                assert_eq!(w, Waited::Ended(WaitStatus::Exited(child, 0)));
                // EOF once the grandchild is dead (and any sibling test's
                // forked child that inherited the write end has ended).
                let mut seen = String::new();
                std::fs::File::from(r).read_to_string(&mut seen).unwrap();
                assert_eq!(
                    seen, "",
                    "the grandchild outlived its parent after die_with_parent"
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
