//! Part 4: fix C, a lock made of one futex word, then the wake-up itself:
//! a shared futex wakes another process, a private one never does.

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use common::children::{die_with_parent, state, wait_until};
use common::narrate::{self, evidence, explain, fact, section, step, subsection, warn};
use common::{call, cleanup, futex};
use nix::errno::Errno;
use nix::unistd::{ForkResult, fork};

use crate::shared::{
    Contest, OnlyAtomics, Shared, WORKER_DEADLINE, contest, exact, hold_here, reap,
};

/// The bounded wait of the child that nobody will wake (private futex).
const PRIVATE_WAIT: Duration = Duration::from_secs(1);
/// The bounded wait of the child that will be woken (shared futex).
const SHARED_WAIT: Duration = Duration::from_secs(10);
/// Where the lock lies in page 1 (the wake-up demo uses its start).
const FUTEX_LOCK_OFFSET: usize = 256;

/// A lock built on one futex word, and how often each worker asked the
/// kernel to sleep or to wake the other.
#[repr(C)]
struct FutexLock {
    /// 0 = free, 1 = held, 2 = held and someone may be asleep.
    word: AtomicU32,
    /// The worker that took the lock last (written only while holding it).
    last: AtomicU32,
    /// How often the lock passed from one worker to the other.
    handoffs: AtomicU64,
    waits: [AtomicU64; 2],
    wakes: [AtomicU64; 2],
}
// SAFETY: every field is an atomic.
unsafe impl OnlyAtomics for FutexLock {}

// ANCHOR: futex_lock
/// Take the lock: the third mutex ("mutex3") of Ulrich Drepper's paper
/// "Futexes Are Tricky" (https://www.akkadia.org/drepper/futex.pdf). Only a
/// worker that finds it taken makes a system call: FUTEX_WAIT(&word, 2).
fn futex_lock(lock: &FutexLock, worker: usize) {
    let Err(mut c) = lock
        .word
        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
    else {
        return; // it was free: taken without the kernel
    };
    if c != 2 {
        c = lock.word.swap(2, Ordering::Acquire); // held: say someone waits
    }
    while c != 0 {
        lock.waits[worker].fetch_add(1, Ordering::Relaxed);
        // EAGAIN (the word was no longer 2), a wake-up or a timeout: look again.
        let _ = futex::wait(&lock.word, 2, WORKER_DEADLINE, false);
        c = lock.word.swap(2, Ordering::Acquire);
    }
}

/// Release the lock; wake one sleeper only if someone may be asleep.
fn futex_unlock(lock: &FutexLock, worker: usize) {
    if lock.word.fetch_sub(1, Ordering::Release) != 1 {
        lock.word.store(0, Ordering::Release);
        lock.wakes[worker].fetch_add(1, Ordering::Relaxed);
        let _ = futex::wake(&lock.word, 1, false);
    }
}
// ANCHOR_END: futex_lock

/// The futex word of the wake-up demo and what the sleeping child reports.
#[repr(C)]
struct FutexArea {
    word: AtomicU32,
    ready: AtomicU32,
    /// 0 = woken, otherwise the errno of FUTEX_WAIT; -1 = not back yet.
    result: AtomicI32,
    /// The futex word as the child saw it when FUTEX_WAIT returned.
    seen: AtomicU32,
}
// SAFETY: every field is an atomic.
unsafe impl OnlyAtomics for FutexArea {}

/// Returns the cost per increment in nanoseconds.
pub fn run(shared: &Shared, n: u64, hold: Option<Duration>) -> anyhow::Result<f64> {
    section("4. Fix C: sleep on a futex instead of spinning");
    explain(
        "FUTEX_WAIT(&word, expected) checks once that the 32-bit word still holds expected (if \
         not, it returns EAGAIN at once), then sleeps until a FUTEX_WAKE(&word, n), a timeout or \
         a signal. The kernel never watches the word: whoever changes it must also call \
         FUTEX_WAKE (futex(2)).",
    );
    subsection("a lock made of one futex word guards the racy increment");
    // ANCHOR: futex_contest
    let lock: &FutexLock = shared.area(1, FUTEX_LOCK_OFFSET); // all zero: free
    let area: &Contest = shared.area(0, 0);
    let timing = contest(area, n, |worker, n| {
        for _ in 0..n {
            futex_lock(lock, worker);
            if lock.last.swap(worker as u32, Ordering::Relaxed) != worker as u32 {
                lock.handoffs.fetch_add(1, Ordering::Relaxed); // from the other worker
            }
            let v = area.counter.load(Ordering::Relaxed); // part 1's racy update...
            area.counter.store(v + 1, Ordering::Relaxed); // ...now alone
            futex_unlock(lock, worker);
        }
    })?;
    let counted = area.counter.load(Ordering::SeqCst);
    // ANCHOR_END: futex_contest
    let total = 2 * n;
    let ns = exact("the futex lock", counted, n, &timing)?;
    let sum = |a: &[AtomicU64; 2]| a.iter().map(|c| c.load(Ordering::SeqCst)).sum::<u64>();
    fact(
        "system calls",
        format!(
            "{} FUTEX_WAIT (a worker asked to sleep), {} FUTEX_WAKE, for {total} locks",
            sum(&lock.waits),
            sum(&lock.wakes)
        ),
    );
    fact(
        "the lock changed hands",
        format!(
            "{} times in {total} locks",
            lock.handoffs.load(Ordering::SeqCst)
        ),
    );
    for private in [false, true] {
        wake_demo(shared, private, hold)?;
    }
    Ok(ns)
}

/// A child sleeps in FUTEX_WAIT on a word of the shared page; the parent
/// changes the word and calls FUTEX_WAKE, with or without the PRIVATE flag.
fn wake_demo(shared: &Shared, private: bool, hold: Option<Duration>) -> anyhow::Result<()> {
    let wait_op = futex::op_name("FUTEX_WAIT", private);
    let wake_op = futex::op_name("FUTEX_WAKE", private);
    let timeout = if private {
        PRIVATE_WAIT
    } else {
        SHARED_WAIT + hold.unwrap_or_default() // never woken during the hold
    };
    subsection(if private {
        "the same code with FUTEX_PRIVATE_FLAG"
    } else {
        "a shared futex (no PRIVATE flag)"
    });
    // ANCHOR: futex
    let area: &FutexArea = shared.area(1, 0);
    area.word.store(0, Ordering::SeqCst);
    area.ready.store(0, Ordering::SeqCst);
    area.result.store(-1, Ordering::SeqCst);
    let word = area.word.as_ptr();
    let secs = timeout.as_secs();
    explain(format!(
        "The child calls futex({word:p}, {wait_op}, 0, {{{secs}, 0}})."
    ));
    // SAFETY: the child makes prctl and futex system calls, atomic stores and
    // _exit (the fork contract in shared.rs).
    let child = match unsafe { call!(fork()) }? {
        ForkResult::Child => {
            die_with_parent();
            area.ready.store(1, Ordering::SeqCst);
            let r = futex::wait(&area.word, 0, timeout, private); // sleep if still 0
            area.seen
                .store(area.word.load(Ordering::SeqCst), Ordering::SeqCst);
            area.result
                .store(r.err().map_or(0, |e| e as i32), Ordering::SeqCst);
            // SAFETY: _exit skips atexit handlers and the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => child,
    };
    let guard = cleanup::child(child);
    wait_until(Duration::from_secs(10), || {
        area.ready.load(Ordering::SeqCst) == 1 && state(child) == Some('S')
    }); // asleep in FUTEX_WAIT
    // ANCHOR_END: futex
    evidence(
        &format!("grep State /proc/{child}/status"),
        std::fs::read_to_string(format!("/proc/{child}/status"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("State:"))
            .map(str::to_string)
            .collect::<Vec<_>>(),
    );
    if state(child) != Some('S') {
        warn("the child did not go to sleep within 10 s (a very busy machine?)");
    }
    if !private {
        hold_here(
            hold,
            &format!("child {child} sleeps in FUTEX_WAIT"),
            &[
                format!("grep State /proc/{child}/status"),
                format!("cat /proc/{child}/wchan; echo"),
            ],
        );
    }
    // ANCHOR: futex_wake
    area.word.store(1, Ordering::SeqCst); // change the word: this wakes nobody...
    let s = step(format!("futex({word:p}, {wake_op}, 1)")); // ...FUTEX_WAKE does
    let woken = s.check(futex::wake(&area.word, 1, private))?;
    s.ok(format!("{woken} (waiters woken)"));
    reap(child, guard, timeout + Duration::from_secs(10))?;
    let result = area.result.load(Ordering::SeqCst);
    // ANCHOR_END: futex_wake
    let seen = area.seen.load(Ordering::SeqCst);
    let returned = if result == 0 {
        "0 (woken)".to_string()
    } else {
        format!("-1 {}", narrate::errno_result(Errno::from_raw(result)))
    };
    fact(
        &format!("the child's {wait_op} returned"),
        format!("{returned}; the word was {seen}"),
    );
    if !private {
        if woken != 1 || result != 0 {
            bail!(
                "the shared FUTEX_WAKE did not wake the child: woke {woken}, the child got {returned}"
            );
        }
        explain(
            "One wake-up crossed from the parent to the child: without the PRIVATE flag, on a \
             page of a file or of shmem (our /dev/shm object), the kernel keys the sleepers by \
             the object and the offset in it, which both processes map.",
        );
    } else if woken != 0 {
        bail!("a private FUTEX_WAKE woke {woken} waiter(s) in another process");
    } else if result == Errno::ETIMEDOUT as i32 {
        explain(format!(
            "Nobody woke the child: it slept until its {} s timeout, although the word it waits \
             on was already 1. That is the proof that the kernel does not watch the word: \
             FUTEX_WAIT checked it once, found 0, and from then on only a matching FUTEX_WAKE \
             could end the sleep. None matched: a private futex is keyed by (address space, \
             virtual address), and the parent and the child have different address spaces. \
             Between processes, never use FUTEX_PRIVATE_FLAG (Rust's std and glibc's \
             process-private locks do).",
            timeout.as_secs()
        ));
    } else {
        warn(format!(
            "the child's wait ended with {returned}, not ETIMEDOUT: it had not gone to sleep \
             before the word changed. Run again."
        ));
    }
    Ok(())
}
