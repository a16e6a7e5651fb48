//! Solution of exercise 08_ring (lesson 8): send through a ring in shared
//! memory, not a pipe.
//!
//! Why it is right: only the producer writes head and only the consumer
//! writes tail, so neither needs a read-modify-write. The producer fills the
//! slot *before* its Release store of head; the consumer's Acquire load of
//! head therefore sees the slot's value. Symmetrically, the consumer reads
//! the slot before its Release store of tail, and the producer's Acquire
//! load of tail won't let it overwrite a slot not yet read. head - tail is
//! never above SLOTS (full: wait) nor below 0 (empty: wait). No system call
//! is made per message: the data never leaves shared memory.
//!
//! A producer (the parent) sends the numbers 1..=COUNT to a consumer (a
//! forked child), which adds them up. It works, through a pipe: two system
//! calls and two copies per message. Replace the pipe by a single-producer,
//! single-consumer ring in the checker's object (its name is `kit::name()`):
//!
//! - offset 0: `head` (u64), the number of messages pushed so far,
//!   written only by the producer;
//! - offset 64: `tail` (u64), the number of messages popped so far,
//!   written only by the consumer (another cache line);
//! - offset 128: SLOTS slots of u64; message i goes to slot i % SLOTS.
//!
//! The checker reads `head` afterwards: every message must have gone
//! through the ring. The consumer leaves its sum at offset SUM_OFFSET
//! and the parent reports it after waitpid.
//!
//! Check it: `cargo run -p exercises -- check 08_ring --solution`

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, shm_open};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, SysconfVar, fork, sysconf};

const COUNT: u64 = 20_000;
const SLOTS: u64 = 32;
const HEAD_OFFSET: usize = 0;
const TAIL_OFFSET: usize = 64;
const SLOTS_OFFSET: usize = 128;
const SUM_OFFSET: usize = 512;

/// The shared page, seen as the ring's fields (all atomics: two processes
/// use them at once).
struct Ring {
    base: *mut u8,
}

impl Ring {
    fn word(&self, off: usize) -> &AtomicU64 {
        // SAFETY: every offset used is 8-byte aligned and below 1024, inside
        // the page, which stays mapped until the process exits.
        unsafe { &*self.base.add(off).cast::<AtomicU64>() }
    }
    fn head(&self) -> &AtomicU64 {
        self.word(HEAD_OFFSET)
    }
    fn tail(&self) -> &AtomicU64 {
        self.word(TAIL_OFFSET)
    }
    fn slot(&self, i: u64) -> &AtomicU64 {
        self.word(SLOTS_OFFSET + 8 * (i % SLOTS) as usize)
    }

    /// Producer: wait while the ring is full, then store the value in the
    /// next slot and publish it by advancing head.
    fn push(&self, value: u64) {
        let head = self.head().load(Ordering::Relaxed); // only we write it
        while head - self.tail().load(Ordering::Acquire) == SLOTS {
            std::thread::yield_now(); // full: let the consumer run
        }
        self.slot(head).store(value, Ordering::Relaxed);
        self.head().store(head + 1, Ordering::Release); // publishes the slot
    }

    /// Consumer: wait while the ring is empty, then take the oldest value
    /// and free its slot by advancing tail.
    fn pop(&self) -> u64 {
        let tail = self.tail().load(Ordering::Relaxed); // only we write it
        while self.head().load(Ordering::Acquire) == tail {
            std::thread::yield_now(); // empty: let the producer run
        }
        let value = self.slot(tail).load(Ordering::Relaxed);
        self.tail().store(tail + 1, Ordering::Release); // frees the slot
        value
    }
}

fn main() {
    let name = kit::name();
    let page = sysconf(SysconfVar::PAGE_SIZE).unwrap().unwrap() as usize;
    let fd = shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty()).expect("shm_open");
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let len = NonZeroUsize::new(page).unwrap();
    // SAFETY: a fresh mapping chosen by the kernel; used only through the
    // atomics of Ring.
    let ptr = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0) }.expect("mmap");
    let ring = Ring {
        base: ptr.as_ptr().cast(),
    };
    // SAFETY: the child only pops, adds and stores the
    // sum (atomics), then _exit: no allocation, no stdio.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let mut sum = 0u64;
            for _ in 0..COUNT {
                sum += ring.pop();
            }
            ring.word(SUM_OFFSET).store(sum, Ordering::Release);
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            for i in 1..=COUNT {
                ring.push(i);
            }
            let status = waitpid(child, None).expect("waitpid");
            assert_eq!(status, WaitStatus::Exited(child, 0), "the consumer failed");
        }
    }
    kit::report_u64(ring.word(SUM_OFFSET).load(Ordering::Acquire));
}
