//! Part 2: fix A, one atomic read-modify-write per increment.

use std::sync::atomic::Ordering;

use common::narrate::{explain, section};

use crate::shared::{Contest, Shared, contest, exact};

/// Returns the cost per increment in nanoseconds.
pub fn run(shared: &Shared, n: u64) -> anyhow::Result<f64> {
    section("2. Fix A: one atomic read-modify-write (fetch_add)");
    explain(
        "The same two workers, but each increment is one indivisible instruction (lock xadd on \
         x86-64, ldadd or an ll/sc loop on arm64).",
    );
    // ANCHOR: atomics
    let area: &Contest = shared.area(0, 0);
    let timing = contest(area, n, |_worker, n| {
        for _ in 0..n {
            area.counter.fetch_add(1, Ordering::Relaxed); // load, add, store: one instruction
        }
    })?;
    let counted = area.counter.load(Ordering::SeqCst);
    // ANCHOR_END: atomics
    exact("fetch_add", counted, n, &timing)
}
