//! Part 5: a lock holder that dies. A plain process-shared mutex stays
//! locked forever; a robust one tells the next locker `EOWNERDEAD`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use common::children::{die_with_parent, wait_until};
use common::narrate::{explain, fact, section, subsection};
use common::report::CallResult;
use common::{attempt, call, cleanup};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork};

use crate::posix::*;
use crate::shared::{OnlyAtomics, Shared, WORKER_DEADLINE, hold_here};

/// How long the next locker waits for a dead holder's mutex.
const LOCK_TIMEOUT: Duration = Duration::from_secs(1);
/// The two mutexes lie side by side at the start of page 2: the dead plain
/// one is never touched again, the robust one is fresh storage.
const MUTEX_SLOT: usize = 64;
const _: () = assert!(size_of::<libc::pthread_mutex_t>() <= MUTEX_SLOT);
/// Where the guarded data lies in page 2.
const GUARDED_OFFSET: usize = 128;

/// What the mutex protects. `count` and `copy` must always be equal when
/// the lock is free: an update changes both.
#[repr(C)]
struct Guarded {
    count: AtomicU64,
    copy: AtomicU64,
    holding: AtomicU32,
}
// SAFETY: every field is an atomic.
unsafe impl OnlyAtomics for Guarded {}

pub fn run(shared: &Shared, n: u64, hold: Option<Duration>, memname: &str) -> anyhow::Result<()> {
    section("5. A lock holder that dies: plain and robust process-shared mutexes");
    explain(format!(
        "A pthread mutex in the shared page protects two numbers, count and copy, that every \
         update changes together. A victim process makes {n} updates, then locks once more, \
         changes count, and is killed with SIGKILL before it changes copy or unlocks."
    ));
    let data: &Guarded = shared.area(2, GUARDED_OFFSET);
    for robust in [false, true] {
        subsection(if robust {
            "a robust mutex"
        } else {
            "a plain process-shared mutex"
        });
        // Each case gets fresh storage: re-initialising the plain mutex,
        // still locked by its dead holder, would be undefined (POSIX).
        let offset = if robust { MUTEX_SLOT } else { 0 };
        let mutex = shared.at(2, offset).cast::<libc::pthread_mutex_t>();
        data.count.store(0, Ordering::SeqCst);
        data.copy.store(0, Ordering::SeqCst);
        data.holding.store(0, Ordering::SeqCst);
        init_mutex(mutex, robust)?;
        let victim = victim(mutex, data, n)?;
        let guard = cleanup::child(victim);
        if !wait_until(WORKER_DEADLINE, || data.holding.load(Ordering::SeqCst) == 1) {
            drop(guard);
            bail!("the victim did not take the lock within {WORKER_DEADLINE:?}");
        }
        fact(
            "the victim holds the lock, half-way through an update",
            format!("count = {}, copy = {}", load(&data.count), load(&data.copy)),
        );
        fact("the mutex, alive", mutex_words(mutex, victim));
        hold_here(
            hold,
            &format!("victim {victim} holds the lock"),
            &[
                format!("grep State /proc/{victim}/status"),
                format!(
                    "od -A d -t x4 -N 12 -j {} /dev/shm{memname}   # __lock __count __owner",
                    2 * shared.page + offset
                ),
            ],
        );
        // ANCHOR: robust_death
        call!(kill(victim, Signal::SIGKILL))?;
        call!(waitpid(victim, None))?;
        guard.disarm(); // reaped: no longer ours to signal
        fact("the mutex, its holder dead", mutex_words(mutex, victim));
        let mut at = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut at) };
        at.tv_sec += LOCK_TIMEOUT.as_secs() as libc::time_t;
        // SAFETY: the mutex is initialised and mapped; `at` is an absolute
        // CLOCK_REALTIME time.
        let locked =
            unsafe { attempt!(pthread_mutex_timedlock(mutex, &at => |_| "now + 1 s".to_string())) };
        // ANCHOR_END: robust_death
        explain(if robust {
            "The kernel changed the lock word as the victim died: it found this mutex on the \
             victim's robust list (registered with set_robust_list by glibc), saw the victim's \
             id in the word and replaced it with FUTEX_OWNER_DIED."
        } else {
            "Nothing changed when the victim died: the word still says locked, and glibc's \
             __owner still names a thread that no longer exists. The kernel keeps no record of \
             this mutex: only robust mutexes are registered with it."
        });
        let (count, copy) = (load(&data.count), load(&data.copy));
        if robust {
            if locked != Err(Errno::EOWNERDEAD) {
                bail!("a robust mutex whose holder died gave {locked:?}, not EOWNERDEAD");
            }
            recover(mutex, data, n)?;
            continue;
        }
        if locked != Err(Errno::ETIMEDOUT) {
            bail!("a plain mutex whose holder died gave {locked:?}, not ETIMEDOUT");
        }
        fact(
            "the data",
            format!("count = {count}, copy = {copy}: stuck half-updated"),
        );
        explain(
            "The owner is dead, but nothing tells the mutex: every later locker waits forever \
             (pthread_mutex_lock would hang; only the timeout saved us), and the half-done \
             update can never be repaired under the lock. This mutex is abandoned as it is: \
             POSIX leaves re-initialising or destroying a locked mutex undefined, so the next \
             case initialises a new mutex in fresh storage next to it.",
        );
    }
    Ok(())
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::SeqCst)
}

// ANCHOR: robust_init
/// A process-shared mutex in the shared page, robust or not.
fn init_mutex(mutex: *mut libc::pthread_mutex_t, robust: bool) -> anyhow::Result<()> {
    let (rname, rval) = if robust {
        ("PTHREAD_MUTEX_ROBUST", libc::PTHREAD_MUTEX_ROBUST)
    } else {
        ("PTHREAD_MUTEX_STALLED", libc::PTHREAD_MUTEX_STALLED)
    };
    let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    let a = attr.as_mut_ptr();
    let shared = libc::PTHREAD_PROCESS_SHARED;
    // SAFETY: a points to storage for one attribute object, initialised by
    // the first call; mutex points to aligned storage in the shared page that
    // no mutex has used yet in this run.
    unsafe {
        call!(pthread_mutexattr_init(a))?;
        call!(pthread_mutexattr_setpshared(a, shared => named("PTHREAD_PROCESS_SHARED")))?;
        call!(pthread_mutexattr_setrobust(a, rval => named(rname)))?;
        call!(pthread_mutex_init(mutex, a))?;
        call!(pthread_mutexattr_destroy(a))?;
    }
    Ok(())
}
// ANCHOR_END: robust_init

// ANCHOR: robust_victim
/// Fork a victim: it makes `n` updates under the lock, then takes it once
/// more, changes `count` only, and waits to be killed.
fn victim(mutex: *mut libc::pthread_mutex_t, data: &Guarded, n: u64) -> anyhow::Result<Pid> {
    // SAFETY: the child locks and unlocks a process-shared mutex initialised
    // before fork (glibc does that with atomics and futex calls, taking no
    // lock of its own: the fork contract in shared.rs), does atomic stores,
    // and ends in pause() until it is killed.
    match unsafe { call!(fork()) }? {
        ForkResult::Child => {
            die_with_parent();
            for _ in 0..n {
                // SAFETY: the mutex is initialised and mapped; we hold it
                // between the two calls.
                let _ = unsafe { pthread_mutex_lock(mutex) };
                data.count.fetch_add(1, Ordering::Relaxed);
                data.copy.fetch_add(1, Ordering::Relaxed);
                let _ = unsafe { pthread_mutex_unlock(mutex) };
            }
            // SAFETY: as above.
            let _ = unsafe { pthread_mutex_lock(mutex) };
            data.count.fetch_add(1, Ordering::Relaxed); // half an update...
            data.holding.store(1, Ordering::SeqCst);
            loop {
                // SAFETY: pause() only sleeps; SIGKILL ends us here.
                unsafe { libc::pause() };
            }
        }
        ForkResult::Parent { child } => Ok(child),
    }
}
// ANCHOR_END: robust_victim

// ANCHOR: robust_recover
/// After EOWNERDEAD: we hold the lock. Repair the data, mark the mutex
/// consistent, unlock, and make our own `n` updates under it.
fn recover(mutex: *mut libc::pthread_mutex_t, data: &Guarded, n: u64) -> anyhow::Result<()> {
    let copy = data.copy.load(Ordering::SeqCst);
    fact(
        "repair",
        format!(
            "count = {}, copy = {copy}: roll back the half-done update",
            data.count.load(Ordering::SeqCst)
        ),
    );
    data.count.store(copy, Ordering::Relaxed); // the repair
    // SAFETY: we hold the mutex (EOWNERDEAD gave it to us).
    unsafe { call!(pthread_mutex_consistent(mutex)) }?;
    // SAFETY: we hold it.
    unsafe { call!(pthread_mutex_unlock(mutex)) }?;
    for _ in 0..n {
        // SAFETY: the mutex is consistent again and mapped; we hold it
        // between the two calls.
        unsafe { pthread_mutex_lock(mutex) }.call(format!("pthread_mutex_lock({mutex:p})"))?;
        data.count.fetch_add(1, Ordering::Relaxed);
        data.copy.fetch_add(1, Ordering::Relaxed);
        let _ = unsafe { pthread_mutex_unlock(mutex) };
    }
    let (count, copy) = (load(&data.count), load(&data.copy));
    let total = 2 * n;
    fact(
        "final counter",
        format!("{count} of {total}; copy = {copy}"),
    );
    if count != total || copy != total {
        bail!("the robust mutex lost updates: count {count}, copy {copy}, expected {total}");
    }
    // SAFETY: the mutex is unlocked and nobody waits on it.
    unsafe { call!(pthread_mutex_destroy(mutex)) }?;
    Ok(())
}
// ANCHOR_END: robust_recover

// ANCHOR: mutex_words
/// The first words of glibc's `pthread_mutex_t` (x86-64 and arm64): `int
/// __lock; unsigned __count; int __owner`. A plain mutex's `__lock` is 0
/// (free), 1 (held) or 2 (held, with waiters); a robust one's holds the
/// owner's thread id, which the kernel reads when that thread dies.
fn mutex_words(mutex: *mut libc::pthread_mutex_t, victim: Pid) -> String {
    let words = mutex.cast::<u32>();
    // SAFETY: the mutex lies in our live shared mapping, aligned. These plain
    // reads race with nothing, and volatile would not make a race defined:
    // what orders them after the victim's writes is the SeqCst load of
    // `holding`, which the victim stored after pthread_mutex_lock returned
    // (it then only sleeps in pause), or, once it is dead, waitpid (the
    // kernel marks a robust mutex FUTEX_OWNER_DIED before the victim
    // becomes a zombie).
    let (lock, owner) = unsafe { (words.read(), words.add(2).read()) };
    let mut meaning = Vec::new();
    if lock & libc::FUTEX_OWNER_DIED != 0 {
        meaning.push("FUTEX_OWNER_DIED".to_string());
    }
    if lock & libc::FUTEX_WAITERS != 0 {
        meaning.push("FUTEX_WAITERS".to_string());
    }
    let tid = lock & libc::FUTEX_TID_MASK;
    if tid == victim.as_raw() as u32 {
        meaning.push(format!("the victim's thread id {tid}"));
    } else if lock != 0 && meaning.is_empty() && lock <= 2 {
        meaning.push("locked".to_string());
    }
    let meaning = if meaning.is_empty() {
        String::new()
    } else {
        format!(" ({})", meaning.join(" | "))
    };
    format!("__lock = {lock:#x}{meaning}, __owner = {owner}")
}
// ANCHOR_END: mutex_words
