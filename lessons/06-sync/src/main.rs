//! Lesson 6: the kernel does not synchronise shared memory.
//!
//! The article says "the kernel does not synchronize access to the shared
//! memory" and uses `wait` as its only synchronisation. It also says `msync`
//! "writes the cached data back to the physical memory so that other processes
//! can listen for these changes". This lesson forks workers over one
//! `MAP_SHARED` object and measures, on the running kernel:
//!
//! 1. the race: two processes lose updates to a shared counter;
//! 2. fix A: `fetch_add` (an atomic read-modify-write) gives exactly 2N;
//! 3. fix B: a process-shared POSIX semaphore guards the same increment;
//! 4. fix C: a lock on one futex word (`FUTEX_WAIT`/`FUTEX_WAKE`) sleeps
//!    instead of spinning; and `FUTEX_PRIVATE_FLAG` never wakes another process;
//! 5. a lock holder killed with SIGKILL: a plain process-shared mutex is lost
//!    forever, a robust one reports `EOWNERDEAD`;
//! 6. the msync myth: visibility needs no `msync`; `MS_SYNC` is about disks.
//!
//! Run it: `cargo run -p lesson-6` (`--part N` runs one part, `--hold 30`
//! keeps the futex sleeper and the lock-holding victims alive to inspect).

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd};
use std::process::ExitCode;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::args::{Cli, parse_secs};
use common::children::{Waited, die_with_parent, state, wait_deadline, wait_until};
use common::fault::describe;
use common::narrate::{
    self, block, compare, evidence, explain, fact, note, section, step, subsection, warn,
};
use common::report::CallResult;
use common::{cleanup, futex, inspect, names, pages, shm};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{CpuSet, sched_getaffinity};
use nix::sys::mman::{MapFlags, MsFlags, ProtFlags, mmap, msync, munmap, shm_unlink};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::sys::uio::pread;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, close, fork, ftruncate, unlink};

const ABOUT: &str = "Lesson 6: the kernel does not synchronise shared memory. Forked processes \
    race on a shared counter and lose updates; atomics, a process-shared semaphore, futexes and \
    a robust mutex fix or explain it; and msync turns out to have nothing to do with \
    visibility.";

/// Increments per worker process in parts 1-5.
const DEFAULT_ITERATIONS: u64 = 1_000_000;
/// Pages in the shared object: one for each group of parts.
const PAGES: usize = 5;
/// How long a worker may run before the lesson kills it (never hang).
const WORKER_DEADLINE: Duration = Duration::from_secs(60);
/// The bounded wait of the child that nobody will wake (private futex).
const PRIVATE_WAIT: Duration = Duration::from_secs(1);
/// The bounded wait of the child that will be woken (shared futex).
const SHARED_WAIT: Duration = Duration::from_secs(10);
/// How long the next locker waits for a dead holder's mutex.
const LOCK_TIMEOUT: Duration = Duration::from_secs(1);
/// What the child stores in part 6.
const MAGIC: u64 = 0xdead_beef;
/// Messages passed flag-and-payload in part 6.
const MESSAGES: u64 = 2000;

fn main() -> ExitCode {
    common::run(lesson)
}

fn parse_part(s: &str) -> Result<u8, String> {
    match s.parse::<u8>() {
        Ok(v @ 1..=6) => Ok(v),
        _ => Err("the parts are numbered 1 to 6".into()),
    }
}

fn parse_iterations(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(v @ 1..=50_000_000) => Ok(v),
        _ => Err("a whole number from 1 to 50000000".into()),
    }
}

/// Structs laid out in the shared page. Implementors hold only atomics, for
/// which all-zero bytes are a valid value.
///
/// # Safety
/// Every field must be an atomic (or an array of atomics), `#[repr(C)]`.
unsafe trait OnlyAtomics {}

/// Parts 1-3: the counter two workers increment, and their start line.
#[repr(C)]
struct Contest {
    counter: AtomicU64,
    ready: AtomicU32,
    go: AtomicU32,
    running: AtomicU32,
    start_ns: [AtomicU64; 2],
    end_ns: [AtomicU64; 2],
}
// SAFETY: every field is an atomic.
unsafe impl OnlyAtomics for Contest {}

/// Part 4: the futex word and what the sleeping child reports.
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

/// Part 4: a lock built on one futex word, and how often each worker asked
/// the kernel to sleep or to wake the other.
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

/// Part 5: what the mutex protects. `count` and `copy` must always be equal
/// when the lock is free: an update changes both.
#[repr(C)]
struct Guarded {
    count: AtomicU64,
    copy: AtomicU64,
    holding: AtomicU32,
}
// SAFETY: every field is an atomic.
unsafe impl OnlyAtomics for Guarded {}

/// Part 6: a value written without msync, and a flag-and-payload pair.
#[repr(C)]
struct Message {
    value: AtomicU64,
    ack: AtomicU64,
    flag: AtomicU64,
    payload: [AtomicU64; 8],
}
// SAFETY: every field is an atomic.
unsafe impl OnlyAtomics for Message {}

/// Offsets inside the pages (a sem_t and a pthread_mutex_t are plain C
/// structs, reached only through raw pointers).
const SEM_OFFSET: usize = 512;
const FUTEX_LOCK_OFFSET: usize = 256;
const GUARDED_OFFSET: usize = 128;
/// Part 5's two mutexes, side by side at the start of page 2: the dead
/// plain one is never touched again, the robust one is fresh storage.
const MUTEX_SLOT: usize = 64;
const _: () = assert!(size_of::<libc::pthread_mutex_t>() <= MUTEX_SLOT);

/// The shared object's mapping, owned: every reference `area` hands out
/// borrows it, so the compiler rejects `unmap` while one is still alive.
struct Shared {
    base: NonNull<libc::c_void>,
    len: usize,
    page: usize,
}

impl Shared {
    /// `munmap` the whole mapping. Taking `self` ends every borrow.
    fn unmap(self) -> nix::Result<()> {
        // SAFETY: base/len are exactly the mapping this value owns; `self` is
        // moved in, so no reference from `area` outlives this call (the
        // borrow checker enforces it) and nothing maps it again.
        unsafe { munmap(self.base, self.len) }
    }

    fn at(&self, page: usize, offset: usize) -> *mut u8 {
        assert!(page < PAGES && offset < self.page);
        self.base
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(page * self.page + offset)
    }

    /// A shared reference to an atomics-only struct in the mapping: shared
    /// with other processes, which is exactly what atomics allow. It borrows
    /// `self`, so it cannot outlive the mapping.
    fn area<T: OnlyAtomics>(&self, page: usize, offset: usize) -> &T {
        let p = self.at(page, offset);
        assert!(offset + size_of::<T>() <= self.page && p.align_offset(align_of::<T>()) == 0);
        // SAFETY: p is aligned and inside the mapping, which stays mapped as
        // long as the returned reference: only `unmap(self)` removes it, and
        // it cannot run while this borrow of self lives. T holds only atomics, valid for any bytes
        // another process stores through them; we never form &mut here.
        unsafe { &*p.cast::<T>() }
    }
}

/// Nanoseconds on the monotonic clock. Async-signal-safe: usable in a child.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; it is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A `pthread_*` return value (0 or an error number) as a Result.
fn pthread(rc: libc::c_int) -> Result<(), Errno> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw(rc))
    }
}

/// A `-1`/`errno` return value as a Result.
fn posix(rc: libc::c_int) -> Result<(), Errno> {
    if rc == -1 { Err(Errno::last()) } else { Ok(()) }
}

/// Nanoseconds per operation, for the cost comparison.
fn per_op(d: Duration, ops: u64) -> f64 {
    d.as_nanos() as f64 / ops.max(1) as f64
}

// The fork contract (what a forked child may call). The parent is
// multithreaded at every fork (common::cleanup's signal thread), so POSIX
// allows the child only
// async-signal-safe functions until it execs or exits (signal-safety(7)).
// The children here use atomics, `_exit`, and single system calls through
// thin wrappers that take no lock of the C library: futex (`syscall`),
// sched_yield, nanosleep, clock_gettime, prctl and pause. Parts 3 and 5 also
// call sem_wait, pthread_mutex_lock and pthread_mutex_unlock, which that
// list does not name (sem_post is on it). For those we rely on glibc, not on
// POSIX: for a process-shared semaphore and a default or robust
// process-shared mutex they are atomic instructions on the object's own
// words, futex system calls and the calling thread's own robust list; they
// take no lock of glibc's and allocate nothing (glibc nptl/sem_waitcommon.c,
// nptl/sem_post.c, nptl/pthread_mutex_lock.c, nptl/pthread_mutex_unlock.c,
// nptl/lowlevellock.c), and glibc's fork gives the child an empty robust
// list of its own (sysdeps/nptl/_Fork.c). Another C library may differ.

/// Wait for a worker with a deadline; it must exit with status 0.
fn reap(pid: Pid, guard: cleanup::Guard, deadline: Duration) -> anyhow::Result<()> {
    let s = step(format!("waitpid({pid}, &status, 0)"));
    let waited = s.check(wait_deadline(pid, deadline))?;
    guard.disarm(); // reaped: the pid is no longer ours to signal
    match waited {
        Waited::Ended(WaitStatus::Exited(_, 0)) => {
            s.ok("exited with status 0");
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

// ANCHOR: contest
/// Fork two workers (0 and 1) that each run `work(worker, n)` from the same
/// starting line, and
/// return the time from the first start to the last finish.
fn contest(area: &Contest, n: u64, work: impl Fn(usize, u64)) -> anyhow::Result<Timing> {
    area.counter.store(0, Ordering::SeqCst);
    area.ready.store(0, Ordering::SeqCst);
    area.go.store(0, Ordering::SeqCst);
    area.running.store(0, Ordering::SeqCst);
    let mut workers = Vec::new();
    for w in 0..2 {
        let s = step("fork()");
        // SAFETY: the child keeps to the fork contract above: atomics,
        // sched_yield, clock_gettime, `work` (which parts 3 and 4 make call
        // sem_wait/sem_post or futex) and _exit.
        match s.check(unsafe { fork() })? {
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
            ForkResult::Parent { child } => {
                workers.push((child, cleanup::child(child)));
                s.ok(format!("{child} (worker {})", w + 1));
            }
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

/// How long a contest took, and how long both workers ran at once.
struct Timing {
    elapsed: Duration,
    overlap: Duration,
}
// ANCHOR_END: contest

fn lesson() -> anyhow::Result<()> {
    let args = Cli::new("lesson-6", ABOUT)
        .option_with("--part", "N", "run only part N (1-6)", parse_part)
        .option_with(
            "--iterations",
            "N",
            format!("increments per worker process in parts 1 to 5 (default {DEFAULT_ITERATIONS})"),
            parse_iterations,
        )
        .option_with(
            "--hold",
            "SECS",
            "keep the sleeping futex child (part 4) and each victim holding the lock (part 5) \
             alive SECS seconds, to look at them from another terminal",
            |s| parse_secs(s, 3600),
        )
        .parse();
    let only = args.get::<u8>("--part");
    let wants = |p: u8| only.is_none_or(|o| o == p);
    let n = args
        .get::<u64>("--iterations")
        .unwrap_or(DEFAULT_ITERATIONS);
    let hold = args.get::<u64>("--hold").map(Duration::from_secs);
    let memname = names::unique_name(6, "");

    narrate::title(
        "lesson-6",
        "the kernel does not synchronise shared memory",
        "Two processes, one MAP_SHARED page: watch updates get lost, fix it three ways and \
         compare the costs, see a lock die with its holder, and find out what msync is really \
         for.",
    );

    // ANCHOR: setup
    section("0. One shared object for every part");
    let page = inspect::page_size();
    let len = PAGES * page;
    let (fd, object) = shm::create(&memname)?; // removed on every path from here on
    let s = step(format!("ftruncate({}, {len})", fd.as_raw_fd()));
    s.check(ftruncate(&fd, len as libc::off_t))?;
    s.ok(0);
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let s = step(format!(
        "mmap(NULL, {len}, {}, MAP_SHARED, {}, 0)",
        narrate::flags(prot),
        fd.as_raw_fd()
    ));
    let nz = NonZeroUsize::new(len).context("zero length")?;
    // SAFETY: a fresh mapping at a kernel-chosen address overlaps no Rust
    // object; it is reached only through atomics and raw pointers.
    let base = s.check(unsafe { mmap(None, nz, prot, MapFlags::MAP_SHARED, &fd, 0) })?;
    s.ok(format!("{:p}", base.as_ptr()));
    let s = step(format!("close({})", fd.as_raw_fd()));
    s.check(close(fd))?;
    s.ok(0);
    let shared = Shared { base, len, page };
    explain(format!(
        "{PAGES} pages, zero-filled, shared by the parent and every child it forks. Each part \
         uses its own page."
    ));
    // ANCHOR_END: setup

    let mut costs: Vec<(&str, f64)> = Vec::new();
    let total = 2 * n;

    if wants(1) {
        // ANCHOR: race
        section("1. The race: load, add one, store");
        let area: &Contest = shared.area(0, 0);
        explain(format!(
            "Two worker processes each run this loop {n} times on one counter in the shared \
             page: load the counter, add one, store it back. Atomic loads and stores with \
             Ordering::Relaxed, never a &mut: a &mut promises the compiler that nobody else \
             touches the memory, so it may keep the counter in a register and store it once at \
             the end. Another process does touch it: with a &mut that is undefined behaviour. \
             Between the load and the store sits a spin-loop hint (one PAUSE instruction), \
             standing in for the work a real update does: it widens the window, it does not \
             create it."
        ));
        let s = step("sched_getaffinity(0, sizeof(cpu_set_t), &mask)");
        let mask = s.check(sched_getaffinity(Pid::from_raw(0)))?;
        let cpus: Vec<usize> = (0..CpuSet::count())
            .filter(|&c| mask.is_set(c).unwrap_or(false))
            .collect();
        s.ok(format!("0, CPUs {cpus:?} (the workers inherit this mask)"));
        let timing = contest(area, n, |_worker, n| {
            for _ in 0..n {
                let v = area.counter.load(Ordering::Relaxed); // load...
                std::hint::spin_loop(); // ...a moment of "work" (widens the window)...
                area.counter.store(v + 1, Ordering::Relaxed); // ...then store
            }
        })?;
        let counted = area.counter.load(Ordering::SeqCst); // read from the shared page
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
        if cpus.len() < 2 {
            explain(format!(
                "Only one CPU is usable here, so the two workers never ran at the same instant: \
                 they took turns on it. Updates are lost only when the scheduler preempts a \
                 worker between its load and its store: when it runs again, its store wipes \
                 out every increment the other made meanwhile. Lost here: {lost}. With two \
                 CPUs, any two increments that overlap can collide."
            ));
        } else if lost > 0 {
            explain(format!(
                "{lost} updates were lost: both processes loaded the same value, both added \
                 one, and the second store overwrote the first. The kernel did nothing to stop \
                 it, as the article says: it does not synchronise access to shared memory."
            ));
        } else {
            warn(format!(
                "no update was lost this time: the two workers barely ran at the same moment \
                 (\"both at once\" above; on a busy machine the scheduler may run them one \
                 after the other). The race is still there. Run again, or raise --iterations \
                 (now {n})."
            ));
        }
        // ANCHOR_END: race
    }

    if wants(2) {
        // ANCHOR: atomics
        section("2. Fix A: one atomic read-modify-write (fetch_add)");
        let area: &Contest = shared.area(0, 0);
        explain(
            "The same two workers, but each increment is one indivisible instruction \
             (lock xadd on x86-64, ldadd or an ll/sc loop on arm64): nothing can come between \
             the load and the store.",
        );
        let timing = contest(area, n, |_worker, n| {
            for _ in 0..n {
                area.counter.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        let counted = area.counter.load(Ordering::SeqCst);
        fact(
            "final counter",
            format!("{counted} of {total}; lost updates: {}", total - counted),
        );
        if counted != total {
            bail!("fetch_add lost updates: {counted} of {total}");
        }
        let ns = per_op(timing.elapsed, total);
        fact("cost", format!("{ns:.1} ns per increment"));
        costs.push(("atomic fetch_add", ns));
        // ANCHOR_END: atomics
    }

    if wants(3) {
        // ANCHOR: semaphore
        section("3. Fix B: a process-shared POSIX semaphore");
        let area: &Contest = shared.area(0, 0);
        let sem = shared.at(0, SEM_OFFSET).cast::<libc::sem_t>();
        let s = step(format!("sem_init({sem:p}, 1, 1)"));
        // SAFETY: sem points into the live shared page, aligned, unused by
        // anything else; pshared = 1 because it lives in MAP_SHARED memory.
        s.check(posix(unsafe { libc::sem_init(sem, 1, 1) }))?;
        s.ok(0);
        explain(
            "pshared = 1: the semaphore is used by several processes, so it must live in shared \
             memory (it does: in our page). Initial value 1: a lock. Each worker now does \
             sem_wait; the same racy load + store as part 1; sem_post.",
        );
        let timing = contest(area, n, |_worker, n| {
            for _ in 0..n {
                // SAFETY: sem was initialised before fork and stays mapped;
                // glibc's sem_wait is lock-free here (the fork contract).
                while unsafe { libc::sem_wait(sem) } == -1 && Errno::last() == Errno::EINTR {}
                let v = area.counter.load(Ordering::Relaxed);
                area.counter.store(v + 1, Ordering::Relaxed);
                // SAFETY: as above; sem_post is async-signal-safe.
                unsafe { libc::sem_post(sem) };
            }
        })?;
        let counted = area.counter.load(Ordering::SeqCst);
        fact(
            "final counter",
            format!("{counted} of {total}; lost updates: {}", total - counted),
        );
        let s = step(format!("sem_destroy({sem:p})"));
        // SAFETY: no process uses the semaphore any more (both workers exited).
        s.check(posix(unsafe { libc::sem_destroy(sem) }))?;
        s.ok(0);
        if counted != total {
            bail!("the semaphore let updates get lost: {counted} of {total}");
        }
        let ns = per_op(timing.elapsed, total);
        fact("cost", format!("{ns:.1} ns per increment"));
        costs.push(("sem_wait + increment + sem_post", ns));
        explain(
            "sem_wait and sem_post are atomic operations on the semaphore's word; when a worker \
             must wait, glibc puts it to sleep with FUTEX_WAIT (part 4). Exact, but each \
             increment now costs two atomic operations and, under contention, system calls.",
        );
        // ANCHOR_END: semaphore
    }

    if wants(4) {
        // ANCHOR: futex_contest
        section("4. Fix C: sleep on a futex instead of spinning");
        explain(
            "A lock makes one worker wait for the other. Waiting by spinning burns a CPU the \
             lock holder may need. A futex lets a process sleep until another one wakes it: \
             FUTEX_WAIT(&word, expected) checks once that the 32-bit word still holds expected \
             (if not, it returns EAGAIN at once), then sleeps until a FUTEX_WAKE(&word, n), a \
             timeout or a signal. The kernel never watches the word: whoever changes it must \
             also call FUTEX_WAKE (futex(2)). The word is in our shared page.",
        );

        subsection("a lock made of one futex word guards the racy increment");
        let lock: &FutexLock = shared.area(1, FUTEX_LOCK_OFFSET);
        lock.word.store(0, Ordering::SeqCst);
        lock.last.store(0, Ordering::SeqCst);
        lock.handoffs.store(0, Ordering::SeqCst);
        for w in 0..2 {
            lock.waits[w].store(0, Ordering::SeqCst);
            lock.wakes[w].store(0, Ordering::SeqCst);
        }
        explain(format!(
            "The lock word at {:p} is 0 (free), 1 (held) or 2 (held, and someone may be \
             asleep). Locking is one compare-and-swap 0 -> 1; only when that fails does the \
             worker set 2 and call FUTEX_WAIT(&word, 2) to sleep. Unlocking sets 0 and calls \
             FUTEX_WAKE(&word, 1) only if the word was 2. No PRIVATE flag: the two workers are \
             different processes. Inside the lock: part 1's racy load + store.",
            lock.word.as_ptr()
        ));
        let contest_area: &Contest = shared.area(0, 0);
        let timing = contest(contest_area, n, |worker, n| {
            for _ in 0..n {
                futex_lock(lock, worker);
                if lock.last.swap(worker as u32, Ordering::Relaxed) != worker as u32 {
                    lock.handoffs.fetch_add(1, Ordering::Relaxed); // from the other worker
                }
                let v = contest_area.counter.load(Ordering::Relaxed);
                contest_area.counter.store(v + 1, Ordering::Relaxed);
                futex_unlock(lock, worker);
            }
        })?;
        let counted = contest_area.counter.load(Ordering::SeqCst);
        fact(
            "final counter",
            format!("{counted} of {total}; lost updates: {}", total - counted),
        );
        if counted != total {
            bail!("the futex lock let updates get lost: {counted} of {total}");
        }
        let sum = |a: &[AtomicU64; 2]| a.iter().map(|c| c.load(Ordering::SeqCst)).sum::<u64>();
        let (waits, wakes) = (sum(&lock.waits), sum(&lock.wakes));
        fact(
            "system calls",
            format!(
                "{waits} FUTEX_WAIT (a worker asked to sleep), {wakes} FUTEX_WAKE, for \
                 {total} locks"
            ),
        );
        fact(
            "the lock changed hands",
            format!(
                "{} times in {total} locks",
                lock.handoffs.load(Ordering::SeqCst)
            ),
        );
        let ns = per_op(timing.elapsed, total);
        fact("cost", format!("{ns:.1} ns per increment"));
        costs.push(("futex lock + increment + unlock", ns));
        explain(
            "Exact, and a worker that finds the lock taken sleeps in the kernel instead of \
             burning its CPU. Most locks never enter the kernel: the counts above are all the \
             kernel was asked to do. This is how glibc builds sem_wait and pthread_mutex_lock. \
             A lock that rarely changes hands is cheap: its holder re-takes it again and again \
             while the other worker sleeps, and the counter stays in one CPU's cache; \
             fetch_add, in contrast, makes the two CPUs fight for every single increment.",
        );

        // ANCHOR_END: futex_contest
        // ANCHOR: futex
        let area: &FutexArea = shared.area(1, 0);
        for private in [false, true] {
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
            area.word.store(0, Ordering::SeqCst);
            area.ready.store(0, Ordering::SeqCst);
            area.result.store(-1, Ordering::SeqCst);
            area.seen.store(0, Ordering::SeqCst);
            let word = area.word.as_ptr();
            let s = step("fork()");
            // SAFETY: the child makes prctl and futex system calls, atomic
            // stores and _exit (the fork contract above).
            let child = match s.check(unsafe { fork() })? {
                ForkResult::Child => {
                    die_with_parent();
                    area.ready.store(1, Ordering::SeqCst);
                    let r = futex::wait(&area.word, 0, timeout, private);
                    area.seen
                        .store(area.word.load(Ordering::SeqCst), Ordering::SeqCst);
                    area.result
                        .store(r.err().map_or(0, |e| e as i32), Ordering::SeqCst);
                    // SAFETY: see above.
                    unsafe { libc::_exit(0) }
                }
                ForkResult::Parent { child } => child,
            };
            let guard = cleanup::child(child);
            s.ok(child);
            explain(format!(
                "The child calls futex({word:p}, {wait_op}, 0, {{{}, 0}}): if the word is \
                 still 0, sleep until a FUTEX_WAKE on it, for at most {} s.",
                timeout.as_secs(),
                timeout.as_secs()
            ));
            let asleep = wait_until(Duration::from_secs(10), || {
                area.ready.load(Ordering::SeqCst) == 1 && state(child) == Some('S')
            });
            evidence(
                &format!("grep State /proc/{child}/status"),
                std::fs::read_to_string(format!("/proc/{child}/status"))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.starts_with("State:"))
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            );
            if !asleep {
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
            area.word.store(1, Ordering::SeqCst); // change the word, then wake
            let s = step(format!("futex({word:p}, {wake_op}, 1)"));
            let woken = s.check(futex::wake(&area.word, 1, private))?;
            s.ok(format!("{woken} (waiters woken)"));
            reap(child, guard, timeout + Duration::from_secs(10))?;
            let result = area.result.load(Ordering::SeqCst);
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
                    "One wake-up crossed from the parent to the child: without the PRIVATE flag, \
                     on a page of a file or of shmem (our /dev/shm object), the kernel keys the \
                     sleepers by the object and the offset in it, which both processes map.",
                );
            } else {
                if woken != 0 {
                    bail!("a private FUTEX_WAKE woke {woken} waiter(s) in another process");
                }
                if result == Errno::ETIMEDOUT as i32 {
                    explain(format!(
                        "Nobody woke the child: it slept until its {} s timeout, although the \
                         word it waits on was already 1. That is the proof that the kernel \
                         does not watch the word: FUTEX_WAIT checked it once, found 0, and from \
                         then on only a matching FUTEX_WAKE could end the sleep. None matched: a \
                         private futex is keyed by (address space, virtual address); the parent \
                         and the child have different address spaces, so the parent's wake-up \
                         found no sleeper. Between processes, never use FUTEX_PRIVATE_FLAG \
                         (Rust's std and glibc's process-private locks do).",
                        timeout.as_secs()
                    ));
                } else {
                    warn(format!(
                        "the child's wait ended with {returned}, not ETIMEDOUT: it had not gone \
                         to sleep before the word changed. Run again."
                    ));
                }
            }
        }
        // ANCHOR_END: futex
    }

    if costs.len() > 1 {
        subsection("Cost per increment, two processes on this machine");
        let rows: Vec<String> = costs
            .iter()
            .map(|(what, ns)| format!("{what:<36} {ns:>10.1} ns"))
            .collect();
        block(rows.join("\n"));
        note(
            "a debug build (cargo run) is several times slower than cargo run --release; the \
             figures vary from run to run and with the machine's load.",
        );
    }

    if wants(5) {
        // ANCHOR: robust
        section("5. A lock holder that dies: plain and robust process-shared mutexes");
        let data: &Guarded = shared.area(2, GUARDED_OFFSET);
        explain(format!(
            "A pthread mutex in the shared page protects two numbers, count and copy, that every \
             update changes together. A victim process makes {n} updates, then locks once more, \
             changes count, and is killed with SIGKILL before it changes copy or unlocks."
        ));
        for robust in [false, true] {
            let (rname, rval) = if robust {
                ("PTHREAD_MUTEX_ROBUST", libc::PTHREAD_MUTEX_ROBUST)
            } else {
                ("PTHREAD_MUTEX_STALLED", libc::PTHREAD_MUTEX_STALLED)
            };
            subsection(if robust {
                "a robust mutex"
            } else {
                "a plain process-shared mutex"
            });
            // Each case gets fresh storage: re-initialising the plain mutex,
            // still locked by its dead holder, would be undefined (POSIX).
            let offset = if robust { MUTEX_SLOT } else { 0 };
            let mutex = shared.at(2, offset).cast::<libc::pthread_mutex_t>();
            let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
            let a = attr.as_mut_ptr();
            let s = step("pthread_mutexattr_init(&attr)");
            // SAFETY: a points to storage for one attribute object.
            s.check(pthread(unsafe { libc::pthread_mutexattr_init(a) }))?;
            s.ok(0);
            let s = step("pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED)");
            // SAFETY: a was initialised above.
            s.check(pthread(unsafe {
                libc::pthread_mutexattr_setpshared(a, libc::PTHREAD_PROCESS_SHARED)
            }))?;
            s.ok(0);
            let s = step(format!("pthread_mutexattr_setrobust(&attr, {rname})"));
            // SAFETY: a was initialised above.
            s.check(pthread(unsafe {
                libc::pthread_mutexattr_setrobust(a, rval)
            }))?;
            s.ok(0);
            let s = step(format!("pthread_mutex_init({mutex:p}, &attr)"));
            // SAFETY: mutex points to aligned storage in the shared page that
            // no mutex has used yet in this run, and a is initialised.
            s.check(pthread(unsafe { libc::pthread_mutex_init(mutex, a) }))?;
            s.ok(0);
            // SAFETY: a was initialised and is not used after this.
            unsafe { libc::pthread_mutexattr_destroy(a) };
            data.count.store(0, Ordering::SeqCst);
            data.copy.store(0, Ordering::SeqCst);
            data.holding.store(0, Ordering::SeqCst);

            let s = step("fork()");
            // SAFETY: the child locks and unlocks a process-shared mutex
            // initialised before fork (glibc does that with atomics and futex
            // calls, taking no lock of its own: the fork contract above),
            // does atomic stores, and ends in pause() until it is killed.
            let victim = match s.check(unsafe { fork() })? {
                ForkResult::Child => {
                    die_with_parent();
                    for _ in 0..n {
                        // SAFETY: the mutex is initialised and mapped.
                        unsafe { libc::pthread_mutex_lock(mutex) };
                        data.count.fetch_add(1, Ordering::Relaxed);
                        data.copy.fetch_add(1, Ordering::Relaxed);
                        // SAFETY: we hold it.
                        unsafe { libc::pthread_mutex_unlock(mutex) };
                    }
                    // SAFETY: as above.
                    unsafe { libc::pthread_mutex_lock(mutex) };
                    data.count.fetch_add(1, Ordering::Relaxed); // half an update...
                    data.holding.store(1, Ordering::SeqCst);
                    loop {
                        // SAFETY: pause() only sleeps; SIGKILL ends us here.
                        unsafe { libc::pause() };
                    }
                }
                ForkResult::Parent { child } => child,
            };
            let guard = cleanup::child(victim);
            s.ok(format!("{victim} (the victim)"));
            if !wait_until(WORKER_DEADLINE, || data.holding.load(Ordering::SeqCst) == 1) {
                drop(guard);
                bail!("the victim did not take the lock within {WORKER_DEADLINE:?}");
            }
            fact(
                "the victim holds the lock, half-way through an update",
                format!(
                    "count = {}, copy = {}",
                    data.count.load(Ordering::SeqCst),
                    data.copy.load(Ordering::SeqCst)
                ),
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
            let s = step(format!("kill({victim}, SIGKILL)"));
            s.check(kill(victim, Signal::SIGKILL))?;
            s.ok(0);
            let s = step(format!("waitpid({victim}, &status, 0)"));
            let status = s.check(waitpid(victim, None))?;
            guard.disarm();
            s.ok(describe(status));
            fact("the mutex, its holder dead", mutex_words(mutex, victim));
            explain(if robust {
                "The kernel changed the lock word as the victim died: it found this mutex on the \
                 victim's robust list (registered with set_robust_list by glibc), saw the \
                 victim's id in the word and replaced it with FUTEX_OWNER_DIED."
            } else {
                "Nothing changed when the victim died: the word still says locked, and glibc's \
                 __owner still names a thread that no longer exists. The kernel keeps no record \
                 of this mutex: only robust mutexes are registered with it."
            });

            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes one timespec we own.
            unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
            ts.tv_sec += LOCK_TIMEOUT.as_secs() as libc::time_t;
            let s = step(format!(
                "pthread_mutex_timedlock({mutex:p}, now + {} s)",
                LOCK_TIMEOUT.as_secs()
            ));
            // SAFETY: the mutex is initialised and mapped; ts is a valid
            // absolute CLOCK_REALTIME time.
            let rc = unsafe { libc::pthread_mutex_timedlock(mutex, &ts) };
            let locked = s.outcome(pthread(rc), |_| "0".into());
            let (count, copy) = (
                data.count.load(Ordering::SeqCst),
                data.copy.load(Ordering::SeqCst),
            );
            if !robust {
                if locked != Err(Errno::ETIMEDOUT) {
                    bail!("a plain mutex whose holder died gave {locked:?}, not ETIMEDOUT");
                }
                fact(
                    "the data",
                    format!("count = {count}, copy = {copy}: stuck half-updated"),
                );
                explain(
                    "The owner is dead, but nothing tells the mutex: it still says locked by \
                     the dead thread, and every later locker waits forever (pthread_mutex_lock \
                     would hang; only the timeout saved us). The half-done update can never be \
                     repaired under the lock. This mutex is abandoned as it is: POSIX leaves \
                     re-initialising or destroying a locked mutex undefined, so the next case \
                     initialises a new mutex in fresh storage next to it.",
                );
                continue;
            }
            if locked != Err(Errno::EOWNERDEAD) {
                bail!("a robust mutex whose holder died gave {locked:?}, not EOWNERDEAD");
            }
            explain(
                "EOWNERDEAD: we now hold the lock, and glibc tells us its last owner died holding \
                 it: it found FUTEX_OWNER_DIED in the word, where the kernel put it.",
            );
            fact(
                "repair",
                format!("count = {count}, copy = {copy}: roll back the half-done update"),
            );
            data.count.store(copy, Ordering::Relaxed); // the repair
            let s = step(format!("pthread_mutex_consistent({mutex:p})"));
            // SAFETY: we hold the mutex (EOWNERDEAD gave it to us).
            s.check(pthread(unsafe { libc::pthread_mutex_consistent(mutex) }))?;
            s.ok(0);
            let s = step(format!("pthread_mutex_unlock({mutex:p})"));
            // SAFETY: we hold it.
            s.check(pthread(unsafe { libc::pthread_mutex_unlock(mutex) }))?;
            s.ok(0);
            explain(format!(
                "Without pthread_mutex_consistent, unlocking would make the mutex permanently \
                 unusable (ENOTRECOVERABLE). Now this process makes its own {n} updates under \
                 the same lock."
            ));
            for _ in 0..n {
                // SAFETY: the mutex is consistent again and mapped.
                pthread(unsafe { libc::pthread_mutex_lock(mutex) })
                    .call(format!("pthread_mutex_lock({mutex:p})"))?;
                data.count.fetch_add(1, Ordering::Relaxed);
                data.copy.fetch_add(1, Ordering::Relaxed);
                // SAFETY: we hold it.
                unsafe { libc::pthread_mutex_unlock(mutex) };
            }
            let (count, copy) = (
                data.count.load(Ordering::SeqCst),
                data.copy.load(Ordering::SeqCst),
            );
            fact(
                "final counter",
                format!("{count} of {total}; copy = {copy}"),
            );
            if count != total || copy != total {
                bail!(
                    "the robust mutex lost updates: count {count}, copy {copy}, expected {total}"
                );
            }
            let s = step(format!("pthread_mutex_destroy({mutex:p})"));
            // SAFETY: the mutex is unlocked and nobody waits on it.
            s.check(pthread(unsafe { libc::pthread_mutex_destroy(mutex) }))?;
            s.ok(0);
        }
        // ANCHOR_END: robust
    }

    if wants(6) {
        msync_myth(&shared)?;
    }

    // ANCHOR: cleanup
    section("Unmap and unlink");
    let s = step(format!("munmap({:p}, {len})", base.as_ptr()));
    s.check(shared.unmap())?; // every child has been reaped
    s.ok(0);
    let s = step(format!("shm_unlink({memname:?})"));
    s.check(shm_unlink(memname.as_str()))?;
    object.disarm(); // removed by the lesson itself
    s.ok(0);
    // ANCHOR_END: cleanup

    narrate::conclude(
        "lesson-6 done: the kernel shares the memory but not the discipline. Atomics, \
         semaphores, futexes and robust mutexes give exact results; msync has nothing to do \
         with it.",
    );
    Ok(())
}

/// With `--hold SECS`, keep a scene alive so the student can look at it from
/// a second terminal; without it, say how.
fn hold_here(hold: Option<Duration>, what: &str, commands: &[String]) {
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

/// A directory on a real disk (not tmpfs) for the MS_SYNC comparison.
fn disk_dir() -> Option<(std::path::PathBuf, inspect::FsType)> {
    [std::path::PathBuf::from("/var/tmp"), std::env::temp_dir()]
        .into_iter()
        .find_map(|d| {
            let t = inspect::fs_type(&d).ok()?;
            (t.name != "tmpfs" && t.name != "ramfs").then_some((d, t))
        })
}

/// What this run's dirty figures (KiB after the store, after MS_ASYNC, after
/// MS_SYNC) and MS_SYNC timings show, in words.
fn msync_verdict(
    tmpfs: [u64; 3],
    disk: [u64; 3],
    tmpfs_took: Duration,
    disk_took: Duration,
) -> String {
    let mut said = Vec::new();
    if disk[1] == disk[0] && tmpfs[1] == tmpfs[0] {
        said.push(
            "MS_ASYNC changed nothing: every dirty page stayed dirty, so it started no write \
             (since Linux 2.6.19 it does nothing at all, msync(2))."
                .to_string(),
        );
    } else {
        said.push(format!(
            "The dirty figures changed across MS_ASYNC (disk {} -> {} kB, tmpfs {} -> {} kB): \
             the kernel's own write-back ran in between; MS_ASYNC itself starts nothing since \
             Linux 2.6.19 (msync(2)).",
            disk[0], disk[1], tmpfs[0], tmpfs[1]
        ));
    }
    if disk[0] > 0 && disk[2] == 0 {
        said.push(format!(
            "MS_SYNC wrote the disk file's dirty page to the device and waited for it: the \
             page is clean now, and the call took {:.1} us.",
            disk_took.as_nanos() as f64 / 1000.0
        ));
    } else {
        said.push(format!(
            "The disk file had {} kB dirty before MS_SYNC and {} kB after it.",
            disk[0], disk[2]
        ));
    }
    if tmpfs[2] == tmpfs[0] && tmpfs[0] > 0 {
        said.push(
            "On the tmpfs object MS_SYNC left every page dirty: tmpfs has no storage to write \
             them to (its fsync does nothing)."
                .to_string(),
        );
    }
    let ratio = disk_took.as_secs_f64() / tmpfs_took.as_secs_f64().max(1e-9);
    said.push(if ratio >= 2.0 {
        format!("Here MS_SYNC took {ratio:.0}x as long on the disk file as on tmpfs.")
    } else {
        "Here MS_SYNC took about as long on the disk file as on tmpfs: the device took the \
         write quickly."
            .to_string()
    });
    said.push(
        "So msync is about getting a file-backed mapping onto storage (like fsync, for crash \
         safety), never about other processes."
            .to_string(),
    );
    said.join(" ")
}

/// Part 6: what msync is, and is not, for.
fn msync_myth(shared: &Shared) -> anyhow::Result<()> {
    // ANCHOR: visible
    section("6. The msync myth");
    compare(
        "msync \"writes the cached data back to the physical memory so that other processes \
         can listen for these changes\"",
        "see below: a store is visible to the other process at once, without msync",
        "a MAP_SHARED mapping is the same physical page in every process (mmap(2): \"updates \
         to the mapping are visible to other processes mapping the same region\"). There is no \
         cache to write back between processes; CPU caches are kept coherent by the hardware.",
    );
    subsection("a child stores, the parent sees it; nobody calls msync");
    let msg: &Message = shared.area(3, 0);
    msg.value.store(0, Ordering::SeqCst);
    msg.ack.store(0, Ordering::SeqCst);
    let s = step("fork()");
    // SAFETY: the child does atomic stores/loads, prctl, nanosleep and _exit
    // (the fork contract above).
    let child = match s.check(unsafe { fork() })? {
        ForkResult::Child => {
            die_with_parent();
            msg.value.store(MAGIC, Ordering::Relaxed); // a plain store; no msync
            while msg.ack.load(Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(1)); // nanosleep
            }
            // SAFETY: _exit skips atexit handlers and the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => child,
    };
    let guard = cleanup::child(child);
    s.ok(child);
    let seen = wait_until(Duration::from_secs(10), || {
        msg.value.load(Ordering::Relaxed) == MAGIC
    });
    let child_state = state(child).map_or("gone".to_string(), |c| c.to_string());
    let value = msg.value.load(Ordering::SeqCst);
    msg.ack.store(1, Ordering::SeqCst); // let the child exit
    reap(child, guard, Duration::from_secs(10))?;
    if !seen {
        bail!("the child's store did not become visible within 10 s (read {value:#x})");
    }
    fact(
        "the parent read",
        format!(
            "{value:#x} while the child was still running (state {child_state}); msync was \
             never called"
        ),
    );
    explain(
        "Unlike the article's program, the parent did not wait for the child to exit: it \
         saw the store while the child was alive, because they share the page.",
    );
    // ANCHOR_END: visible

    // ANCHOR: ms_sync
    subsection("what MS_ASYNC and MS_SYNC do: a file on disk against tmpfs");
    note(format!(
        "this kernel is {}. Since Linux 2.6.19, msync(MS_ASYNC) does nothing at all: the kernel \
         already tracks dirty pages of shared file mappings and writes them back on its own \
         (mm/msync.c).",
        inspect::kernel_release()
    ));
    let Some((dir, fstype)) = disk_dir() else {
        warn(
            "no disk-backed directory found (/var/tmp and the temporary directory are tmpfs \
             here), so MS_SYNC cannot be compared with a disk. Skipping that comparison.",
        );
        return ordering(shared);
    };
    let path = dir.join(format!(
        "{}6-{}-msync",
        names::PREFIX,
        nix::unistd::getpid()
    ));
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    let s = step(format!(
        "open({:?}, {}, 0600)",
        path.display(),
        narrate::flags(flags)
    ));
    let fd = s.check(nix::fcntl::open(
        &path,
        flags,
        Mode::from_bits_truncate(0o600),
    ))?;
    let file_guard = cleanup::path(&path);
    s.ok(format!("fd {} (on {fstype})", fd.as_raw_fd()));
    let page = shared.page;
    let s = step(format!("ftruncate({}, {page})", fd.as_raw_fd()));
    s.check(ftruncate(&fd, page as libc::off_t))?;
    s.ok(0);
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let s = step(format!(
        "mmap(NULL, {page}, {}, MAP_SHARED, {}, 0)",
        narrate::flags(prot),
        fd.as_raw_fd()
    ));
    let nz = NonZeroUsize::new(page).context("zero page size")?;
    // SAFETY: a fresh mapping at a kernel-chosen address, of a file only
    // this process has open; reached only through raw pointers.
    let file_map = s.check(unsafe { mmap(None, nz, prot, MapFlags::MAP_SHARED, fd.as_fd(), 0) })?;
    s.ok(format!("{:p}", file_map.as_ptr()));
    let file_word = file_map.as_ptr().cast::<u64>();
    // SAFETY: file_word is the start of our live, writable, private-to-us
    // (no other process maps this file) page.
    unsafe { file_word.write_volatile(MAGIC) };
    let mut buf = [0u8; 8];
    let s = step(format!("pread({}, buf, 8, 0)", fd.as_raw_fd()));
    let got = s.check(pread(fd.as_fd(), &mut buf, 0))?;
    let read_back = u64::from_ne_bytes(buf);
    s.ok(format!("{got} (bytes: {read_back:#x})"));
    if read_back != MAGIC {
        bail!("read(2) did not see the store through the mapping: {read_back:#x}");
    }
    explain(
        "We stored through the mapping and read with pread(2), no msync in between: read(2) \
         and the mapping use the same page in the page cache.",
    );

    let tmpfs_page = NonNull::new(shared.at(4, 0).cast::<libc::c_void>()).context("null page")?;
    let mut rows = Vec::new();
    for (label, target) in [
        ("tmpfs object".to_string(), tmpfs_page),
        (format!("disk file ({})", fstype.name), file_map),
    ] {
        // SAFETY: target is the start of a live, writable page of ours; no
        // other process maps it now (every child has been reaped), so there
        // is nothing to order. Volatile only makes sure the store is made.
        unsafe { target.as_ptr().cast::<u64>().write_volatile(MAGIC) };
        let dirty = || {
            let smaps = pages::smaps_of("self", target.as_ptr() as usize);
            let kib = |f| smaps.as_ref().and_then(|m| m.kib(f)).unwrap_or(0);
            kib("Shared_Dirty") + kib("Private_Dirty")
        };
        let stored = dirty();
        let s = step(format!("msync({:p}, {page}, MS_ASYNC)", target.as_ptr()));
        // SAFETY: target/page lie inside a live mapping of ours.
        s.check(unsafe { msync(target, page, MsFlags::MS_ASYNC) })?;
        s.ok(format!("0   ({label})"));
        let after_async = dirty();
        let s = step(format!("msync({:p}, {page}, MS_SYNC)", target.as_ptr()));
        let t = Instant::now();
        // SAFETY: as above.
        s.check(unsafe { msync(target, page, MsFlags::MS_SYNC) })?;
        let took = t.elapsed();
        s.ok(format!("0   ({label})"));
        rows.push((label, [stored, after_async, dirty()], took));
    }
    evidence(
        &format!(
            "grep -E '^[0-9a-f]|_Dirty' /proc/{}/smaps   # dirty KiB of each mapping",
            nix::unistd::getpid()
        ),
        std::iter::once(format!(
            "{:<28} {:>12} {:>14} {:>13} {:>14}",
            "", "after store", "after MS_ASYNC", "after MS_SYNC", "MS_SYNC took"
        ))
        .chain(rows.iter().map(|(label, kib, took)| {
            format!(
                "{label:<28} {:>9} kB {:>11} kB {:>10} kB {:>11.1} us",
                kib[0],
                kib[1],
                kib[2],
                took.as_nanos() as f64 / 1000.0
            )
        })),
    );
    let [(_, tmpfs, tmpfs_took), (_, disk, disk_took)] = &rows[..] else {
        unreachable!("two rows")
    };
    explain(msync_verdict(*tmpfs, *disk, *tmpfs_took, *disk_took));
    let s = step(format!("munmap({:p}, {page})", file_map.as_ptr()));
    // SAFETY: exactly the file mapping made above; nothing refers into it.
    s.check(unsafe { munmap(file_map, page) })?;
    s.ok(0);
    drop(fd);
    let s = step(format!("unlink({:?})", path.display()));
    s.check(unlink(&path))?;
    file_guard.disarm();
    s.ok(0);
    // ANCHOR_END: ms_sync
    ordering(shared)
}

/// Part 6, last: order between processes comes from the memory model.
fn ordering(shared: &Shared) -> anyhow::Result<()> {
    // ANCHOR: ordering
    subsection("order is the memory model's job: a flag and a payload");
    let msg: &Message = shared.area(3, 0);
    msg.flag.store(0, Ordering::SeqCst);
    msg.ack.store(0, Ordering::SeqCst);
    explain(format!(
        "Visible is not the same as ordered. The child sends {MESSAGES} messages: it fills 8 \
         payload words, then sets the flag with a Release store; the parent waits for the flag \
         with an Acquire load, then reads the payload. Release/Acquire guarantees that a reader \
         who sees the flag also sees every payload store made before it."
    ));
    let s = step("fork()");
    // SAFETY: the child does atomic loads/stores, prctl, sched_yield and
    // _exit (the fork contract above).
    let child = match s.check(unsafe { fork() })? {
        ForkResult::Child => {
            die_with_parent();
            for m in 1..=MESSAGES {
                while msg.ack.load(Ordering::Acquire) != m - 1 {
                    std::thread::yield_now();
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
    s.ok(child);
    let deadline = Instant::now() + WORKER_DEADLINE;
    let mut torn = 0u64;
    for m in 1..=MESSAGES {
        while msg.flag.load(Ordering::Acquire) != m {
            if Instant::now() > deadline {
                drop(guard);
                bail!("the child stopped sending after {} messages", m - 1);
            }
            std::thread::yield_now();
        }
        let whole = msg
            .payload
            .iter()
            .enumerate()
            .all(|(i, w)| w.load(Ordering::Relaxed) == m * 100 + i as u64);
        if !whole {
            torn += 1;
        }
        msg.ack.store(m, Ordering::Release); // the slot may be reused
    }
    reap(child, guard, Duration::from_secs(10))?;
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
         stores, and arm64 hardware does. msync orders nothing: the ordering comes from the \
         Release store and the Acquire load."
    } else {
        "This machine's hardware may reorder plain stores and loads; the Release store and \
         the Acquire load are what kept every payload whole here. msync orders nothing."
    });
    // ANCHOR_END: ordering
    store_buffer(shared)
}

/// Rounds of the store-buffer test in part 6.
const SB_ROUNDS: u64 = 100_000;

/// One atomic on a cache line of its own.
#[repr(C, align(64))]
struct Line<T>(T);

/// Part 6: the store-buffer test. Each process stores 1 to its own word,
/// then loads the other's.
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

/// Part 6, last: a reordering this machine really makes. Returns how many
/// rounds let both loads read 0, with `store`/`load` orderings.
fn store_buffer_rounds(sb: &StoreBuffer, store: Ordering, load: Ordering) -> anyhow::Result<u64> {
    sb.go.0.store(0, Ordering::SeqCst);
    sb.done.0.store(0, Ordering::SeqCst);
    let s = step("fork()");
    // SAFETY: the child does atomic loads/stores, prctl, sched_yield and
    // _exit (the fork contract above).
    let child = match s.check(unsafe { fork() })? {
        ForkResult::Child => {
            die_with_parent();
            let mut seed = 0x9e37_79b9;
            for round in 1..=SB_ROUNDS {
                spin_until(&sb.go.0, round);
                jitter(&mut seed);
                sb.y.0.store(1, store); // my store...
                let x = sb.x.0.load(load); // ...then your word
                sb.child_saw.0.store(x, Ordering::Relaxed);
                sb.done.0.store(round, Ordering::Release);
            }
            // SAFETY: _exit skips atexit handlers and the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => child,
    };
    let guard = cleanup::child(child);
    s.ok(child);
    let mut both_zero = 0;
    let mut seed = 0x85eb_ca6b;
    for round in 1..=SB_ROUNDS {
        sb.x.0.store(0, Ordering::Relaxed);
        sb.y.0.store(0, Ordering::Relaxed);
        sb.go.0.store(round, Ordering::Release); // the child may start
        jitter(&mut seed);
        sb.x.0.store(1, store); // my store...
        let y = sb.y.0.load(load); // ...then your word
        spin_until(&sb.done.0, round);
        if y == 0 && sb.child_saw.0.load(Ordering::Relaxed) == 0 {
            both_zero += 1;
        }
    }
    reap(child, guard, WORKER_DEADLINE)?;
    Ok(both_zero)
}

/// Part 6, last: visible is not the same as ordered.
fn store_buffer(shared: &Shared) -> anyhow::Result<()> {
    // ANCHOR: store_buffer
    subsection("a reordering this machine makes: store, then load the other's word");
    let sb: &StoreBuffer = shared.area(3, 1024);
    explain(format!(
        "Two words x and y, both 0. In each of {SB_ROUNDS} rounds the parent stores x = 1 and \
         then loads y, while the child stores y = 1 and then loads x. If every store took \
         effect before the next instruction, at least one of the two loads would see 1."
    ));
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
        "In no round did both loads read 0 with Release and Acquire this time: the window \
         is a few nanoseconds wide, and it never opens when both processes run on one CPU (a \
         CPU's loads always see its own earlier stores). Release and Acquire still allow it; \
         SeqCst forbids it."
            .to_string()
    });
    // ANCHOR_END: store_buffer
    Ok(())
}
