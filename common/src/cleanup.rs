//! Cleanup on every path.
//!
//! Every object a lesson creates gets a [`Guard`] right after the call that
//! created it succeeded (never before: with `O_EXCL`, a failed create means the
//! name belongs to someone else). The guard removes the object when it is
//! dropped: on an early `?` return, on a panic, and, through a signal thread,
//! on Ctrl-C (SIGINT), SIGTERM or SIGHUP, after which the lesson exits with
//! 128 + the signal number. When the lesson removes the object itself, with
//! the call it teaches, it [`Guard::disarm`]s the guard.
//!
//! Guards act only in the process that made them: a forked child that somehow
//! unwound would not remove its parent's objects.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{Pid, getpid};

type Action = Box<dyn FnMut() + Send>;

struct Entry {
    id: u64,
    what: String,
    action: Action,
}

static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static INSTALLED: AtomicBool = AtomicBool::new(false);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static PARKED: AtomicBool = AtomicBool::new(false);
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);

/// True once a stop signal arrived and the signal thread began cleaning up.
/// The main thread must then not exit on its own (it would race the
/// cleanup): [`crate::run`] parks instead, and the signal thread exits.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// If a stop signal arrived, never return: the signal thread is cleaning up
/// and will end the process with 128 + signal. The main thread calls this
/// where it would otherwise go on (after the lesson body, during a hold), so
/// it neither exits first nor carries on with objects already removed.
pub fn park_if_interrupted() {
    if !interrupted() {
        return;
    }
    PARKED.store(true, Ordering::SeqCst);
    loop {
        std::thread::park();
    }
}

fn registry() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes one thing this run created, unless disarmed first.
#[must_use = "a guard removes its object when dropped: bind it to a variable"]
pub struct Guard {
    id: u64,
    owner: Pid,
}

impl Guard {
    /// Register `action` to undo something; `what` names it for the student.
    ///
    /// If the cleanup after a stop signal has already begun (the object was
    /// created just as Ctrl-C arrived, before its guard existed), the action
    /// runs at once instead: nothing created is ever left for a cleanup that
    /// has already passed.
    pub fn new(what: impl Into<String>, mut action: impl FnMut() + Send + 'static) -> Guard {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let what = what.into();
        {
            let mut reg = registry();
            if !interrupted() {
                reg.push(Entry {
                    id,
                    what,
                    action: Box::new(action),
                });
                return Guard {
                    id,
                    owner: getpid(),
                };
            }
            IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        }
        action();
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        tell(&format!("cleanup: {what}"));
        Guard {
            id,
            owner: getpid(),
        }
    }

    /// The lesson removed the object itself: nothing is left to undo.
    pub fn disarm(self) {
        registry().retain(|e| e.id != self.id);
        std::mem::forget(self);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if getpid() != self.owner {
            return;
        }
        let entry = {
            let mut reg = registry();
            reg.iter()
                .position(|e| e.id == self.id)
                .map(|i| reg.remove(i))
        };
        if let Some(mut e) = entry {
            (e.action)();
            tell(&format!("cleanup: {}", e.what));
        }
    }
}

/// Say on stderr what was cleaned up, after the fact, never panicking and
/// never waiting long: this runs while a panic unwinds (a second panic would
/// abort), when stderr is a pipe whose reader is gone (`lesson-2 2>&1 |
/// head`), and from the signal thread while the main thread may be blocked in
/// a `write` to a full pipe. So it skips std's stderr lock and writes with
/// write(2) itself, and only once poll(2) says the fd has room (waiting at
/// most 100 ms): a full pipe nobody reads costs the message, not the exit.
fn tell(msg: &str) {
    let text = format!("{msg}\n");
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        let mut pfd = libc::pollfd {
            fd: libc::STDERR_FILENO,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, and its count, 1.
        let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
        if ready != 1 || pfd.revents & libc::POLLOUT == 0 {
            return;
        }
        // SAFETY: `rest` is a live byte slice; write(2) only reads it.
        let n = unsafe { libc::write(libc::STDERR_FILENO, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// Unlink a POSIX shared memory object on every path.
pub fn posix_object(name: &str) -> Guard {
    let owned = name.to_string();
    Guard::new(format!("shm_unlink({name:?})"), move || {
        let _ = nix::sys::mman::shm_unlink(owned.as_str());
    })
}

/// Remove a System V segment (`shmctl(IPC_RMID)`) on every path.
pub fn sysv_segment(shmid: i32) -> Guard {
    Guard::new(format!("shmctl({shmid}, IPC_RMID, NULL)"), move || {
        // SAFETY: IPC_RMID takes no buffer; a null pointer is what the man
        // page documents, and a stale id only yields EINVAL.
        unsafe {
            libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut());
        }
    })
}

/// Remove a scratch file or directory tree on every path.
pub fn path(path: impl Into<std::path::PathBuf>) -> Guard {
    let p = path.into();
    Guard::new(format!("rm -rf {}", p.display()), move || {
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    })
}

/// Stop and reap a child this run started, by its pid, on every path.
/// Disarm it once the lesson has reaped the child itself (the pid may then be
/// reused by someone else's process).
pub fn child(pid: Pid) -> Guard {
    Guard::new(format!("kill({pid}, SIGKILL); waitpid({pid})"), move || {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
    })
}

/// Stop and reap, on every path, a child that runs a program of ours (this
/// one again, [`crate::ns::spawn_self`]), which installed its own cleanup:
/// SIGTERM first, so that its guards run (it removes what it made and stops
/// and reaps its own children), then SIGKILL if it has not ended within
/// `grace`. The action never parks: it also runs in the signal thread.
/// Disarm it once the lesson has reaped the child itself.
pub fn program(pid: Pid, grace: std::time::Duration) -> Guard {
    Guard::new(format!("kill({pid}, SIGTERM); waitpid({pid})"), move || {
        use nix::sys::wait::{WaitPidFlag, WaitStatus};
        let _ = kill(pid, Signal::SIGTERM);
        let end = std::time::Instant::now() + grace;
        while let Ok(WaitStatus::StillAlive) = waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            if std::time::Instant::now() >= end {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    })
}

/// Run every registered cleanup now, newest first. Used by the signal thread.
pub fn run_all() {
    run_entries(std::mem::take(&mut *registry()));
}

fn run_entries(entries: Vec<Entry>) {
    for what in run_quietly(entries) {
        tell(&format!("cleanup: {what}"));
    }
}

/// Run the actions, newest first, writing nothing; what each undid.
fn run_quietly(entries: Vec<Entry>) -> Vec<String> {
    let mut done = Vec::new();
    for mut e in entries.into_iter().rev() {
        (e.action)();
        done.push(e.what);
    }
    done
}

/// The signals that end a lesson early but still clean up.
pub fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set
}

/// Block SIGINT/SIGTERM/SIGHUP in every thread and wait for them in a thread
/// of our own, which runs the cleanups and exits with 128 + signal.
///
/// Children inherit the blocked mask, and `exec` keeps it: forked children,
/// and also programs started with `std::process::Command`, which since Rust
/// 1.66 no longer resets the mask before `exec` (library/std/src/sys/process/
/// unix/unix.rs: "Inherit the signal mask from the parent rather than
/// resetting it"). So a Ctrl-C sent to the whole foreground process group
/// does not kill them half-way; the parent's cleanup stops them by pid
/// ([`child`], SIGKILL). A lesson started again as one of its own roles runs
/// [`crate::run`], whose signal thread takes these signals; an internal role
/// dispatched before it (`ns::spawn_self`) ignores Ctrl-C and SIGTERM, and
/// dies by its parent's SIGKILL or PDEATHSIG. A program that must react to
/// Ctrl-C itself (a tool, a student's exercise) is started with
/// [`default_signals_on_exec`].
pub fn install_signal_cleanup() {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    let set = stop_signals();
    if set.thread_block().is_err() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("cleanup-on-signal".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                // Under the registry's lock, so that a guard is either taken
                // here or, made from now on, runs at once (Guard::new).
                let entries = {
                    let mut reg = registry();
                    INTERRUPTED.store(true, Ordering::SeqCst);
                    std::mem::take(&mut *reg)
                };
                // The guards run first, and nothing here touches stdout: the
                // main thread may be blocked in write(2) to a full pipe
                // holding std's stdout lock (`lesson --hold | slow-reader`).
                let done = run_quietly(entries);
                // The main thread may be between creating something (a
                // child, an object) and making its guard. Give it a moment
                // to get there (its guard then runs at once) or to park.
                let grace = std::time::Instant::now() + std::time::Duration::from_secs(1);
                while std::time::Instant::now() < grace
                    && (!PARKED.load(Ordering::SeqCst) || IN_FLIGHT.load(Ordering::SeqCst) > 0)
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                while IN_FLIGHT.load(Ordering::SeqCst) > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                tell(&format!(
                    "\ninterrupted by {}: removed what this run created",
                    sig.as_str()
                ));
                for what in done {
                    tell(&format!("cleanup: {what}"));
                }
                // std's exit flushes stdout only if its lock is free
                // (try_lock): it never waits for a blocked main thread.
                std::process::exit(128 + sig as i32);
            }
        });
    if spawned.is_err() {
        let _ = set.thread_unblock();
    }
}

/// Start the program of `cmd` as a shell starts a foreground job: no signal
/// blocked, and SIGINT, SIGQUIT, SIGTERM and SIGHUP at their default actions.
/// Without it the program inherits the mask [`install_signal_cleanup`] set
/// (`exec` keeps it, and `Command` no longer clears it), so Ctrl-C and
/// SIGTERM would not stop it (`SigBlk: 0000000000004003` in its
/// `/proc/PID/status`).
pub fn default_signals_on_exec(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the forked child before exec; sigemptyset, sigprocmask
    // and signal are async-signal-safe and touch only the local set.
    unsafe {
        cmd.pre_exec(|| {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        })
    }
}

/// `rmdir(2)`, which nix lacks, under its C name so that `call!` narrates it
/// as C writes it (lessons 4 and 9 remove their scratch mount points with it,
/// lesson-7's cleanup the ones a killed run left).
pub fn rmdir(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::remove_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `SigBlk` mask of a child `cat` started with `cmd`'s settings.
    fn child_sigblk(reset: bool) -> u64 {
        let mut cmd = std::process::Command::new("cat");
        cmd.arg("/proc/self/status");
        if reset {
            default_signals_on_exec(&mut cmd);
        }
        let out = cmd.output().expect("cat");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.starts_with("SigBlk:"))
            .expect("a SigBlk line");
        u64::from_str_radix(line["SigBlk:".len()..].trim(), 16).unwrap()
    }

    #[test]
    fn a_command_inherits_the_blocked_stop_signals_unless_reset() {
        // In a thread of our own, so the test harness's threads keep their mask.
        std::thread::spawn(|| {
            stop_signals().thread_block().unwrap();
            let bits = (1u64 << (libc::SIGINT - 1))
                | (1u64 << (libc::SIGTERM - 1))
                | (1u64 << (libc::SIGHUP - 1));
            assert_eq!(
                child_sigblk(false) & bits,
                bits,
                "std::process::Command passed the blocked mask on through exec"
            );
            assert_eq!(child_sigblk(true), 0, "nothing blocked after the reset");
        })
        .join()
        .unwrap();
    }
}
