//! Part 3: fix B, a process-shared POSIX semaphore around the racy increment.

use std::sync::atomic::Ordering;

use common::call;
use common::narrate::{explain, section};
use nix::errno::Errno;

use crate::posix::{sem_destroy, sem_init};
use crate::shared::{Contest, Shared, contest, exact};

/// Where the sem_t lies in page 0 (after the contest's counters).
const SEM_OFFSET: usize = 512;

/// Returns the cost per increment in nanoseconds.
pub fn run(shared: &Shared, n: u64) -> anyhow::Result<f64> {
    section("3. Fix B: a process-shared POSIX semaphore");
    // ANCHOR: semaphore
    let area: &Contest = shared.area(0, 0);
    let sem = shared.at(0, SEM_OFFSET).cast::<libc::sem_t>();
    // SAFETY: sem points into the live shared page, aligned, unused by
    // anything else; pshared = 1 because it lives in MAP_SHARED memory.
    unsafe { call!(sem_init(sem, 1, 1)) }?; // shared between processes; value 1: a lock
    let timing = contest(area, n, |_worker, n| {
        for _ in 0..n {
            // SAFETY: sem was initialised before fork and stays mapped;
            // glibc's sem_wait is lock-free here (the fork contract).
            while unsafe { libc::sem_wait(sem) } == -1 && Errno::last() == Errno::EINTR {}
            let v = area.counter.load(Ordering::Relaxed); // part 1's racy update...
            area.counter.store(v + 1, Ordering::Relaxed); // ...now alone
            // SAFETY: as above; sem_post is async-signal-safe.
            unsafe { libc::sem_post(sem) };
        }
    })?;
    let counted = area.counter.load(Ordering::SeqCst);
    // SAFETY: no process uses the semaphore any more (both workers exited).
    unsafe { call!(sem_destroy(sem)) }?;
    // ANCHOR_END: semaphore
    let ns = exact("the semaphore", counted, n, &timing)?;
    explain(
        "Exact, but each increment now costs two atomic operations on the semaphore's word and, \
         when the other worker holds it, a FUTEX_WAIT system call to sleep (part 4).",
    );
    Ok(ns)
}
