//! What every part uses: the shared mapping, the two-worker contest, the
//! fork contract, and waiting for children.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use common::children::{Waited, die_with_parent, now_ns, wait_deadline, wait_until};
use common::fault::describe;
use common::narrate::{self, explain, fact, note, step};
use common::{call, cleanup};
use nix::sys::mman::munmap;
use nix::sys::wait::WaitStatus;
use nix::unistd::{ForkResult, Pid, fork};

/// Pages in the shared object: one for each group of parts.
pub const PAGES: usize = 5;
/// How long a worker may run before the lesson kills it (never hang).
pub const WORKER_DEADLINE: Duration = Duration::from_secs(60);

/// Structs laid out in the shared page. Implementors hold only atomics, for
/// which all-zero bytes are a valid value.
///
/// # Safety
/// Every field must be an atomic (or an array of atomics, or an atomic in a
/// `#[repr(C, align)]` wrapper), `#[repr(C)]`.
pub unsafe trait OnlyAtomics {}

/// The shared object's mapping, owned: every reference `area` hands out
/// borrows it, so the compiler rejects `unmap` while one is still alive.
pub struct Shared {
    pub base: NonNull<libc::c_void>,
    pub len: usize,
    pub page: usize,
}

impl Shared {
    /// `munmap` the whole mapping. Taking `self` ends every borrow.
    pub fn unmap(self) -> anyhow::Result<()> {
        // SAFETY: base/len are exactly the mapping this value owns; `self` is
        // moved in, so no reference from `area` outlives this call (the
        // borrow checker enforces it) and nothing maps it again.
        unsafe { call!(munmap(self.base, self.len)) }
    }

    /// A raw pointer into page `page` (for C structs: sem_t,
    /// pthread_mutex_t).
    pub fn at(&self, page: usize, offset: usize) -> *mut u8 {
        assert!(page < PAGES && offset < self.page);
        self.base
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(page * self.page + offset)
    }

    /// A shared reference to an atomics-only struct in the mapping: shared
    /// with other processes, which is exactly what atomics allow. It borrows
    /// `self`, so it cannot outlive the mapping.
    pub fn area<T: OnlyAtomics>(&self, page: usize, offset: usize) -> &T {
        let p = self.at(page, offset);
        assert!(offset + size_of::<T>() <= self.page && p.align_offset(align_of::<T>()) == 0);
        // SAFETY: p is aligned and inside the mapping, which stays mapped as
        // long as the returned reference: only `unmap(self)` removes it, and
        // it cannot run while this borrow of self lives. T holds only
        // atomics, valid for any bytes another process stores through them;
        // we never form &mut here.
        unsafe { &*p.cast::<T>() }
    }
}

// The fork contract (what a forked child may call). The parent is
// multithreaded at every fork (common::cleanup's signal thread), so POSIX
// allows the child only async-signal-safe functions until it execs or exits
// (signal-safety(7)). The children here use atomics, `_exit`, and single
// system calls through thin wrappers that take no lock of the C library:
// futex (`syscall`), sched_yield, nanosleep, clock_gettime, prctl and pause.
// Parts 3 and 5 also call sem_wait, pthread_mutex_lock and
// pthread_mutex_unlock, which that list does not name (sem_post is on it).
// For those we rely on glibc, not on POSIX: for a process-shared semaphore
// and a default or robust process-shared mutex they are atomic instructions
// on the object's own words, futex system calls and the calling thread's own
// robust list; they take no lock of glibc's and allocate nothing (glibc
// nptl/sem_waitcommon.c, nptl/sem_post.c, nptl/pthread_mutex_lock.c,
// nptl/pthread_mutex_unlock.c, nptl/lowlevellock.c), and glibc's fork gives
// the child an empty robust list of its own (sysdeps/nptl/_Fork.c). Another
// C library may differ.

/// Wait for a worker with a deadline; it must exit with status 0.
pub fn reap(pid: Pid, guard: cleanup::Guard, deadline: Duration) -> anyhow::Result<()> {
    let s = step(format!("waitpid({pid}, &status, 0)"));
    let waited = s.check(wait_deadline(pid, deadline))?;
    guard.disarm(); // reaped: the pid is no longer ours to signal
    match waited {
        Waited::Ended(WaitStatus::Exited(_, 0)) => {
            s.ok(format!("{pid} (exited with status 0)"));
            Ok(())
        }
        Waited::Ended(other) => {
            s.ok(describe(other));
            bail!("child {pid} {}", describe(other))
        }
        Waited::TimedOut(other) => {
            s.ok(format!(
                "still running after {deadline:?}: {}",
                describe(other)
            ));
            bail!("child {pid} did not finish within {deadline:?}; the lesson killed it")
        }
    }
}

/// Parts 1-4: the counter two workers increment, and their start line.
#[repr(C)]
pub struct Contest {
    pub counter: AtomicU64,
    ready: AtomicU32,
    go: AtomicU32,
    running: AtomicU32,
    start_ns: [AtomicU64; 2],
    end_ns: [AtomicU64; 2],
}
// SAFETY: every field is an atomic.
unsafe impl OnlyAtomics for Contest {}

/// How long a contest took, and how long both workers ran at once.
pub struct Timing {
    pub elapsed: Duration,
    pub overlap: Duration,
}

/// Fork two workers (0 and 1) that each run `work(worker, n)` from the same
/// starting line (so that they really run at the same time on two CPUs);
/// return the time from the first start to the last finish, as the workers
/// measured it themselves (fork and waitpid are not counted).
pub fn contest(area: &Contest, n: u64, work: impl Fn(usize, u64)) -> anyhow::Result<Timing> {
    area.counter.store(0, Ordering::SeqCst);
    area.ready.store(0, Ordering::SeqCst);
    area.go.store(0, Ordering::SeqCst);
    area.running.store(0, Ordering::SeqCst);
    let mut workers = Vec::new();
    for w in 0..2 {
        // SAFETY: the child keeps to the fork contract above: atomics,
        // sched_yield, clock_gettime, `work` (which parts 3 and 4 make call
        // sem_wait/sem_post or futex) and _exit.
        match unsafe { call!(fork()) }? {
            ForkResult::Child => {
                die_with_parent();
                area.ready.fetch_add(1, Ordering::SeqCst);
                while area.go.load(Ordering::Acquire) == 0 {
                    std::thread::yield_now(); // sched_yield: let the other worker start
                }
                area.running.fetch_add(1, Ordering::SeqCst);
                while area.running.load(Ordering::SeqCst) < 2 {
                    std::hint::spin_loop(); // both on a CPU now: start together
                }
                area.start_ns[w].store(now_ns(), Ordering::Relaxed);
                work(w, n);
                area.end_ns[w].store(now_ns(), Ordering::Relaxed);
                // SAFETY: _exit skips atexit handlers and the parent's destructors.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => workers.push((child, cleanup::child(child))),
        }
    }
    if !wait_until(Duration::from_secs(30), || {
        area.ready.load(Ordering::SeqCst) == 2
    }) {
        bail!("the workers did not start within 30 s");
    }
    area.go.store(1, Ordering::Release); // both are at the line: go
    for (pid, guard) in workers {
        reap(pid, guard, WORKER_DEADLINE)?;
    }
    let start = area.start_ns.each_ref().map(|a| a.load(Ordering::SeqCst));
    let end = area.end_ns.each_ref().map(|a| a.load(Ordering::SeqCst));
    let span = |from: u64, to: u64| Duration::from_nanos(to.saturating_sub(from));
    Ok(Timing {
        elapsed: span(start[0].min(start[1]), end[0].max(end[1])),
        overlap: span(start[0].max(start[1]), end[0].min(end[1])),
    })
}

/// Report a fix's final counter (it must be exactly 2n, or the lesson stops
/// naming `fix`) and its cost; returns nanoseconds per increment.
pub fn exact(fix: &str, counted: u64, n: u64, timing: &Timing) -> anyhow::Result<f64> {
    let total = 2 * n;
    fact(
        "final counter",
        format!("{counted} of {total}; lost updates: {}", total - counted),
    );
    if counted != total {
        bail!("{fix} let updates get lost: {counted} of {total}");
    }
    let ns = timing.elapsed.as_nanos() as f64 / total as f64;
    fact("cost", format!("{ns:.1} ns per increment"));
    Ok(ns)
}

/// With `--hold SECS`, keep a scene alive so the student can look at it from
/// a second terminal; without it, say how.
pub fn hold_here(hold: Option<Duration>, what: &str, commands: &[String]) {
    let Some(d) = hold else {
        note(format!(
            "{what}. Run with --hold 30 to keep it so, and try in a second terminal:"
        ));
        narrate::commands(commands);
        return;
    };
    explain(format!(
        "holding for {} s: {what}. In a second terminal, try:",
        d.as_secs()
    ));
    narrate::commands(commands);
    explain("(Ctrl-C ends the hold early; everything is still removed)");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::thread::sleep(d);
}
