//! Solution of exercise 06_atomic_counter (lesson 6): two processes count
//! to 40000.
//!
//! Why it is right: fetch_add is one atomic read-modify-write (`lock xadd`
//! on x86-64): no other store to the counter can fall between its read and
//! its write, so no increment is lost, whatever the scheduler does. Relaxed
//! is enough: the counter orders nothing else, and waitpid orders the final
//! value before the checker reads it.
//!
//! The checker creates a one-page object (its name is `kit::name()`) and
//! reads the counter at its start after your program ends. Your program maps
//! it, forks two workers, and each adds 1 to the counter PER_WORKER times.
//! The total should be exactly 2 * PER_WORKER, but increments get lost.
//!
//! Check it: `cargo run -p exercises -- check 06_atomic_counter --solution`
//! (by hand, create the object first: the program does not create it).

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, SysconfVar, fork, sysconf};

const PER_WORKER: u64 = 20_000;

/// Where the workers meet before they start (another cache line).
const START_OFFSET: usize = 128;

fn work(counter: &AtomicU64, start: &AtomicU64) {
    // Start together: each worker checks in, then waits for the other, so
    // that the two really run at the same time even on a busy machine.
    start.fetch_add(1, Ordering::SeqCst);
    while start.load(Ordering::SeqCst) < 2 {
        std::thread::yield_now();
    }
    for _ in 0..PER_WORKER {
        counter.fetch_add(1, Ordering::Relaxed);
        std::thread::yield_now(); // the same scheduling as the exercise
    }
}

fn main() {
    let name = kit::name();
    let page = sysconf(SysconfVar::PAGE_SIZE).unwrap().unwrap() as usize;
    let fd = shm_open_existing(&name);
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let len = NonZeroUsize::new(page).unwrap();
    // SAFETY: a fresh mapping chosen by the kernel; used only through the
    // AtomicU64 below.
    let ptr = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0) }.expect("mmap");
    // SAFETY: the page is mapped until the process ends, page-aligned (so
    // 8-byte aligned), and every process touches it only through atomics.
    let counter = unsafe { &*ptr.as_ptr().cast::<AtomicU64>() };
    // SAFETY: as above, START_OFFSET + 8 <= the page, 8-byte aligned.
    let start = unsafe {
        &*ptr
            .as_ptr()
            .cast::<u8>()
            .add(START_OFFSET)
            .cast::<AtomicU64>()
    };

    let mut workers = Vec::new();
    for _ in 0..2 {
        // SAFETY: the child only runs `work` (atomics and sched_yield) and
        // _exit: async-signal-safe.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                work(counter, start);
                // SAFETY: leave without running the parent's destructors.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => workers.push(child),
        }
    }
    for w in workers {
        let status = waitpid(w, None).expect("waitpid");
        assert_eq!(status, WaitStatus::Exited(w, 0), "a worker failed");
    }
}

/// Open the checker's object (it exists already: no O_CREAT).
fn shm_open_existing(name: &str) -> std::os::fd::OwnedFd {
    nix::sys::mman::shm_open(name, OFlag::O_RDWR, Mode::empty()).expect("shm_open")
}
