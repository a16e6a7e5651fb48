//! Part 1: the race. Two processes load a shared counter, add one and store
//! it back; updates get lost.

use std::sync::atomic::Ordering;

use common::call;
use common::narrate::{explain, fact, section, warn};
use nix::sched::{CpuSet, sched_getaffinity};
use nix::unistd::Pid;

use crate::shared::{Contest, Shared, contest};

/// The CPUs in a mask, as `taskset -c` lists them: `[0, 1]`.
fn cpu_list(mask: &CpuSet) -> Vec<usize> {
    (0..CpuSet::count())
        .filter(|&c| mask.is_set(c).unwrap_or(false))
        .collect()
}

pub fn run(shared: &Shared, n: u64) -> anyhow::Result<()> {
    section("1. The race: load, add one, store");
    explain(format!(
        "Two worker processes each run this loop {n} times on one counter in the shared page: \
         load, add one, store. Atomic loads and stores (Ordering::Relaxed), never a &mut: with \
         a &mut the compiler may keep the counter in a register, and another process writing it \
         would be undefined behaviour. The spin-loop hint between load and store stands in for \
         real work: it widens the window, it does not create it."
    ));
    let mask = call!(sched_getaffinity(Pid::from_raw(0)))?; // the workers inherit it
    let cpus = cpu_list(&mask).len();
    // ANCHOR: race
    let area: &Contest = shared.area(0, 0);
    let timing = contest(area, n, |_worker, n| {
        for _ in 0..n {
            let v = area.counter.load(Ordering::Relaxed); // load...
            std::hint::spin_loop(); // ...a moment of "work" (widens the window)...
            area.counter.store(v + 1, Ordering::Relaxed); // ...then store
        }
    })?;
    let counted = area.counter.load(Ordering::SeqCst); // read back from the shared page
    // ANCHOR_END: race
    let total = 2 * n;
    let lost = total - counted;
    fact(
        "the workers ran",
        format!(
            "{:.1} ms from the first start to the last finish, both at once for {:.1} ms",
            timing.elapsed.as_secs_f64() * 1e3,
            timing.overlap.as_secs_f64() * 1e3
        ),
    );
    fact("expected", format!("2 x {n} = {total}"));
    fact(
        "final counter",
        format!("{counted} of {total}; lost updates: {lost}"),
    );
    if cpus < 2 {
        explain(format!(
            "Only one CPU is usable here, so the two workers never ran at the same instant: \
             they took turns on it. Updates are lost only when the scheduler preempts a worker \
             between its load and its store: when it runs again, its store wipes out every \
             increment the other made meanwhile. Lost here: {lost}. With two CPUs, any two \
             increments that overlap can collide."
        ));
    } else if lost > 0 {
        explain(format!(
            "{lost} updates were lost: both processes loaded the same value, both added one, and \
             the second store overwrote the first. The kernel did nothing to stop it, as the \
             article says: it does not synchronise access to shared memory."
        ));
    } else {
        warn(format!(
            "no update was lost this time: the two workers barely ran at the same moment (\"both \
             at once\" above; on a busy machine the scheduler may run them one after the other). \
             The race is still there. Run again, or raise --iterations (now {n})."
        ));
    }
    Ok(())
}
