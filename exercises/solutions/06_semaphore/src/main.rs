//! Solution of exercise 06_semaphore (lesson 6): protect the counter with a
//! process-shared semaphore.
//!
//! Why it is right: sem_init(sem, 1, 1) makes a free semaphore that may be
//! used by any process mapping it (pshared = 1: its futex is a shared one,
//! keyed by the page, not by our address space). sem_wait/sem_post around
//! the load and the store let one worker at a time in, so no update is
//! lost; sem_wait has acquire and sem_post release semantics, which order
//! the counter's accesses. Both are async-signal-safe (sem_post is by POSIX,
//! sem_wait in glibc is a futex loop), so the forked workers may call them.
//!
//! Like 06_atomic_counter, two workers add 1 to a counter in the checker's
//! object PER_WORKER times each, with a load and a store. This time keep
//! the load and the store as they are, and make them a critical section: a
//! POSIX semaphore (sem_t) *inside the shared page*, at offset SEM_OFFSET,
//! that both processes use. The checker reads the counter and the
//! semaphore's value afterwards.
//!
//! Check it: `cargo run -p exercises -- check 06_semaphore --solution`

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, shm_open};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, SysconfVar, fork, sysconf};

const PER_WORKER: u64 = 5_000;
/// Where the semaphore lives in the page (the counter is at 0).
const SEM_OFFSET: usize = 64;

fn work(counter: &AtomicU64, sem: *mut libc::sem_t) {
    for _ in 0..PER_WORKER {
        // SAFETY: sem was initialised by sem_init(pshared = 1) before the
        // fork and stays mapped until this process exits.
        while unsafe { libc::sem_wait(sem) } != 0 {} // retried on EINTR
        let v = counter.load(Ordering::Relaxed);
        std::thread::yield_now(); // makes the race easy to see
        counter.store(v + 1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { libc::sem_post(sem) };
    }
}

fn main() {
    let name = kit::name();
    let page = sysconf(SysconfVar::PAGE_SIZE).unwrap().unwrap() as usize;
    let fd = shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty()).expect("shm_open");
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let len = NonZeroUsize::new(page).unwrap();
    // SAFETY: a fresh mapping chosen by the kernel; used only through the
    // atomic counter and the semaphore's own functions.
    let ptr = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0) }.expect("mmap");
    let base = ptr.as_ptr().cast::<u8>();
    // SAFETY: offset 0 is 8-byte aligned and inside the page; shared, so atomic.
    let counter = unsafe { &*base.cast::<AtomicU64>() };
    // SAFETY: SEM_OFFSET + size_of::<sem_t>() (32) fits in the page, and 64
    // is aligned for sem_t.
    let sem = unsafe { base.add(SEM_OFFSET) }.cast::<libc::sem_t>();

    // SAFETY: sem points to 32 aligned bytes of the shared page that no one
    // uses yet; pshared = 1 because two processes will use it.
    let r = unsafe { libc::sem_init(sem, 1, 1) };
    assert_eq!(r, 0, "sem_init: {}", std::io::Error::last_os_error());

    let mut workers = Vec::new();
    for _ in 0..2 {
        // SAFETY: the child runs `work` (atomics, sem_wait/sem_post and
        // sched_yield, all async-signal-safe) and _exit.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                work(counter, sem);
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
