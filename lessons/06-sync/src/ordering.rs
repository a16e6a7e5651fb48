//! Part 6, continued: visible is not the same as ordered. A flag and a
//! payload (Release/Acquire), then a reordering the hardware really makes.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::bail;
use common::children::die_with_parent;
use common::narrate::{explain, fact, subsection};
use common::{call, cleanup};
use nix::unistd::{ForkResult, fork};

use crate::shared::{OnlyAtomics, Shared, WORKER_DEADLINE, reap};

/// Messages passed flag-and-payload.
const MESSAGES: u64 = 2000;
/// Rounds of the store-buffer test.
const SB_ROUNDS: u64 = 100_000;

/// A flag and its payload.
#[repr(C)]
struct Message {
    ack: AtomicU64,
    flag: AtomicU64,
    payload: [AtomicU64; 8],
}
// SAFETY: every field is an atomic.
unsafe impl OnlyAtomics for Message {}

pub fn message_passing(shared: &Shared) -> anyhow::Result<()> {
    subsection("order is the memory model's job: a flag and a payload");
    explain(format!(
        "Visible is not the same as ordered. The child sends {MESSAGES} messages: it fills 8 \
         payload words, then sets the flag with a Release store; the parent waits for the flag \
         with an Acquire load, then reads the payload."
    ));
    // ANCHOR: ordering
    let msg: &Message = shared.area(3, 0);
    // SAFETY: the child does atomic loads/stores, prctl, sched_yield and
    // _exit (the fork contract in shared.rs).
    let child = match unsafe { call!(fork()) }? {
        ForkResult::Child => {
            die_with_parent();
            for m in 1..=MESSAGES {
                while msg.ack.load(Ordering::Acquire) != m - 1 {
                    std::thread::yield_now(); // the parent has not read the last one yet
                }
                for (i, w) in msg.payload.iter().enumerate() {
                    w.store(m * 100 + i as u64, Ordering::Relaxed);
                }
                msg.flag.store(m, Ordering::Release); // publish the payload
            }
            // SAFETY: _exit skips atexit handlers and the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => child,
    };
    let guard = cleanup::child(child);
    let (deadline, mut torn) = (Instant::now() + WORKER_DEADLINE, 0);
    for m in 1..=MESSAGES {
        while msg.flag.load(Ordering::Acquire) != m && Instant::now() < deadline {
            std::thread::yield_now(); // not published yet
        }
        let payload = msg.payload.iter().map(|w| w.load(Ordering::Relaxed));
        torn += u64::from(!payload.enumerate().all(|(i, w)| w == m * 100 + i as u64));
        msg.ack.store(m, Ordering::Release); // the slot may be reused
    }
    reap(child, guard, WORKER_DEADLINE)?;
    // ANCHOR_END: ordering
    fact(
        "messages received",
        format!("{MESSAGES}; with a torn or stale payload: {torn}"),
    );
    if torn != 0 {
        bail!("{torn} messages arrived with a stale payload despite Release/Acquire");
    }
    explain(if cfg!(target_arch = "x86_64") {
        "This machine is x86-64, whose hardware keeps stores in order: here the exchange would \
         succeed with Relaxed too, so it shows that the protocol delivers, not that Release and \
         Acquire are needed. They are needed all the same: the compiler may reorder Relaxed \
         stores, and arm64 hardware does. msync orders nothing."
    } else {
        "This machine's hardware may reorder plain stores and loads; the Release store and \
         the Acquire load are what kept every payload whole here. msync orders nothing."
    });
    Ok(())
}

/// One atomic on a cache line of its own.
#[repr(C, align(64))]
struct Line<T>(T);

/// The store-buffer test: each process stores 1 to its own word, then loads
/// the other's.
#[repr(C)]
struct StoreBuffer {
    x: Line<AtomicU32>,
    y: Line<AtomicU32>,
    /// The round the parent has started, and the last one the child finished.
    go: Line<AtomicU64>,
    done: Line<AtomicU64>,
    /// What the child's load of x returned in the round it finished.
    child_saw: Line<AtomicU32>,
}
// SAFETY: every field is an atomic (in a cache-line-aligned wrapper).
unsafe impl OnlyAtomics for StoreBuffer {}

/// A few nanoseconds of busy work, different each round, so that the two
/// processes' stores meet at every possible distance.
fn jitter(seed: &mut u32) {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 17;
    *seed ^= *seed << 5;
    for i in 0..*seed % 32 {
        std::hint::black_box(i);
    }
}

/// Wait until `word` holds `want`, yielding the CPU now and then.
fn spin_until(word: &AtomicU64, want: u64) {
    let mut spins = 0u32;
    while word.load(Ordering::Acquire) != want {
        spins += 1;
        if spins % 1000 == 0 {
            std::thread::yield_now(); // sched_yield: one CPU may be all we have
        }
    }
}

// ANCHOR: store_buffer
/// `SB_ROUNDS` rounds of: the parent stores x = 1 then loads y, the child
/// stores y = 1 then loads x. Returns how many rounds let both loads read 0.
fn store_buffer_rounds(sb: &StoreBuffer, store: Ordering, load: Ordering) -> anyhow::Result<u64> {
    sb.go.0.store(0, Ordering::SeqCst);
    sb.done.0.store(0, Ordering::SeqCst);
    // SAFETY: the child does atomic loads/stores, prctl, sched_yield and
    // _exit (the fork contract in shared.rs).
    let child = match unsafe { call!(fork()) }? {
        ForkResult::Child => {
            die_with_parent();
            let mut seed = 0x9e37_79b9;
            for round in 1..=SB_ROUNDS {
                spin_until(&sb.go.0, round);
                jitter(&mut seed);
                sb.y.0.store(1, store); // my store...
                sb.child_saw.0.store(sb.x.0.load(load), Ordering::Relaxed); // ...your word
                sb.done.0.store(round, Ordering::Release);
            }
            // SAFETY: _exit skips atexit handlers and the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => child,
    };
    let guard = cleanup::child(child);
    let (mut both_zero, mut seed) = (0, 0x85eb_ca6b);
    for round in 1..=SB_ROUNDS {
        sb.x.0.store(0, Ordering::Relaxed);
        sb.y.0.store(0, Ordering::Relaxed);
        sb.go.0.store(round, Ordering::Release); // the child may start
        jitter(&mut seed);
        sb.x.0.store(1, store); // my store...
        let y = sb.y.0.load(load); // ...your word
        spin_until(&sb.done.0, round);
        both_zero += u64::from(y == 0 && sb.child_saw.0.load(Ordering::Relaxed) == 0);
    }
    reap(child, guard, WORKER_DEADLINE)?;
    Ok(both_zero)
}
// ANCHOR_END: store_buffer

pub fn store_buffer(shared: &Shared) -> anyhow::Result<()> {
    subsection("a reordering this machine makes: store, then load the other's word");
    explain(format!(
        "Two words x and y, both 0. In each of {SB_ROUNDS} rounds the parent stores x = 1 and \
         then loads y, while the child stores y = 1 and then loads x. If every store took \
         effect before the next instruction, at least one of the two loads would see 1."
    ));
    let sb: &StoreBuffer = shared.area(3, 1024);
    let weak = store_buffer_rounds(sb, Ordering::Release, Ordering::Acquire)?;
    fact(
        "Release store, Acquire load",
        format!("both loads read 0 in {weak} of {SB_ROUNDS} rounds"),
    );
    let strong = store_buffer_rounds(sb, Ordering::SeqCst, Ordering::SeqCst)?;
    fact(
        "SeqCst store and load",
        format!("both loads read 0 in {strong} of {SB_ROUNDS} rounds"),
    );
    if strong != 0 {
        bail!("SeqCst let both loads read 0 in {strong} rounds: that outcome is forbidden");
    }
    explain(if weak > 0 {
        format!(
            "In {weak} rounds both processes read 0: each one's store was still waiting in its \
             CPU's store buffer, invisible to the other CPU, while its next load went ahead. \
             Release and Acquire allow that; SeqCst forbids it (the store waits for the buffer \
             to drain), and it never happened. The kernel is not involved, and msync cannot \
             change it."
        )
    } else {
        "In no round did both loads read 0 with Release and Acquire this time: the window is a \
         few nanoseconds wide, and it never opens when both processes run on one CPU (a CPU's \
         loads always see its own earlier stores). Release and Acquire still allow it; SeqCst \
         forbids it."
            .to_string()
    });
    Ok(())
}
