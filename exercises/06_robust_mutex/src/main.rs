//! Exercise 06_robust_mutex (lesson 6): recover a robust mutex after
//! EOWNERDEAD.
//!
//! A process-shared, robust pthread mutex lives at the start of the
//! checker's page; a counter it protects lives at COUNTER_OFFSET. A child
//! locks it, adds 1 to the counter and dies without unlocking. The parent's
//! pthread_mutex_lock then returns EOWNERDEAD: it owns the mutex, and the
//! data may be half-updated. After your program, the checker locks the
//! mutex itself: it must work, and the counter must be 2.
//!
//! Edit the TODO, then: `cargo run -p exercises -- check 06_robust_mutex`

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, shm_open};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, SysconfVar, fork, sysconf};

const COUNTER_OFFSET: usize = 64;

fn main() {
    let name = kit::name();
    let page = sysconf(SysconfVar::PAGE_SIZE).unwrap().unwrap() as usize;
    let fd = shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty()).expect("shm_open");
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let len = NonZeroUsize::new(page).unwrap();
    // SAFETY: a fresh mapping chosen by the kernel; used only through the
    // mutex's own functions and the atomic counter.
    let ptr = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0) }.expect("mmap");
    let base = ptr.as_ptr().cast::<u8>();
    let mutex = base.cast::<libc::pthread_mutex_t>();
    // SAFETY: COUNTER_OFFSET is 8-byte aligned and past the 40-byte mutex.
    let counter = unsafe { &*base.add(COUNTER_OFFSET).cast::<AtomicU64>() };

    // A process-shared, robust mutex, made before the fork.
    // SAFETY: attr is initialised by pthread_mutexattr_init before use; the
    // mutex memory is the start of the shared page, which nobody uses yet.
    unsafe {
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        libc::pthread_mutexattr_init(&mut attr);
        libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
        libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
        assert_eq!(
            libc::pthread_mutex_init(mutex, &attr),
            0,
            "pthread_mutex_init"
        );
        libc::pthread_mutexattr_destroy(&mut attr);
    }

    // SAFETY: the child locks the mutex (a futex operation), adds to the
    // counter and _exits while holding the lock: no allocation, no stdio.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            // SAFETY: the mutex was initialised before the fork.
            unsafe { libc::pthread_mutex_lock(mutex) };
            counter.fetch_add(1, Ordering::Relaxed);
            // SAFETY: _exit, still holding the lock: the kernel marks the
            // robust mutex's owner as dead.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            waitpid(child, None).expect("waitpid");
        }
    }

    // SAFETY: the mutex is initialised and mapped.
    let r = unsafe { libc::pthread_mutex_lock(mutex) };
    match r {
        0 => {}
        libc::EOWNERDEAD => {
            // We own the lock now, but the data it protects may be
            // inconsistent (the owner died half-way).
            // TODO: repair the data if needed (here it is fine), then tell
            // the mutex so, or the next unlock makes it unusable forever.
        }
        e => panic!(
            "pthread_mutex_lock: {}",
            std::io::Error::from_raw_os_error(e)
        ),
    }
    counter.fetch_add(1, Ordering::Relaxed);
    // SAFETY: we hold the lock.
    unsafe { libc::pthread_mutex_unlock(mutex) };
}
