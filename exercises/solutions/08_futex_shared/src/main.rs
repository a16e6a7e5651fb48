//! Solution of exercise 08_futex_shared (lesson 8): wake the consumer across
//! processes.
//!
//! Why it is right: the kernel finds a futex's sleepers by a key. With
//! FUTEX_PRIVATE_FLAG the key is (this address space, virtual address), so
//! the producer's wake looked in its own address space and never found the
//! consumer sleeping in another one. Without the flag the key is the page
//! itself (shared memory: its inode and offset), the same for both
//! processes, so the wake reaches the sleeper.
//!
//! Lesson 8's "spin+futex" ring: when the ring is empty, the consumer (a
//! forked child) sleeps in FUTEX_WAIT on the `head` word instead of
//! spinning, and the producer (the parent) calls FUTEX_WAKE after each push.
//! The producer pauses now and then, so the consumer does fall asleep. The
//! program hangs: the checker kills it after a few seconds.
//!
//! Check it: `cargo run -p exercises -- check 08_futex_shared --solution`

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, shm_open};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, SysconfVar, fork, sysconf};

const COUNT: u32 = 2_000;
const SLOTS: u32 = 16;
const HEAD_OFFSET: usize = 0; // u32: messages pushed; also the futex word
const TAIL_OFFSET: usize = 64; // u32: messages popped
const SLOTS_OFFSET: usize = 128; // SLOTS x u64
const SUM_OFFSET: usize = 512; // u64: the consumer's sum

// Shared futexes: no FUTEX_PRIVATE_FLAG, since two processes use the word.
const WAIT: libc::c_int = libc::FUTEX_WAIT;
const WAKE: libc::c_int = libc::FUTEX_WAKE;

struct Ring {
    base: *mut u8,
}

impl Ring {
    fn word32(&self, off: usize) -> &AtomicU32 {
        // SAFETY: 4-byte aligned, below 1024: inside the mapped page.
        unsafe { &*self.base.add(off).cast::<AtomicU32>() }
    }
    fn word64(&self, off: usize) -> &AtomicU64 {
        // SAFETY: 8-byte aligned, below 1024: inside the mapped page.
        unsafe { &*self.base.add(off).cast::<AtomicU64>() }
    }

    fn push(&self, value: u64) {
        let (head, tail) = (self.word32(HEAD_OFFSET), self.word32(TAIL_OFFSET));
        let h = head.load(Ordering::Relaxed);
        while h.wrapping_sub(tail.load(Ordering::Acquire)) == SLOTS {
            std::thread::yield_now(); // full
        }
        self.word64(SLOTS_OFFSET + 8 * (h % SLOTS) as usize)
            .store(value, Ordering::Relaxed);
        head.store(h.wrapping_add(1), Ordering::Release);
        // SAFETY: FUTEX_WAKE on a live, aligned u32; no other memory is touched.
        unsafe { libc::syscall(libc::SYS_futex, head.as_ptr(), WAKE, 1, 0, 0, 0) };
    }

    fn pop(&self) -> u64 {
        let (head, tail) = (self.word32(HEAD_OFFSET), self.word32(TAIL_OFFSET));
        let t = tail.load(Ordering::Relaxed);
        loop {
            let h = head.load(Ordering::Acquire);
            if h != t {
                break;
            }
            // Empty: sleep until head changes. The kernel checks head == h
            // atomically, so a push between our load and the call is not lost.
            // SAFETY: FUTEX_WAIT on a live, aligned u32, no timeout.
            unsafe { libc::syscall(libc::SYS_futex, head.as_ptr(), WAIT, h, 0, 0, 0) };
        }
        let v = self
            .word64(SLOTS_OFFSET + 8 * (t % SLOTS) as usize)
            .load(Ordering::Relaxed);
        tail.store(t.wrapping_add(1), Ordering::Release);
        v
    }
}

fn main() {
    let name = kit::name();
    let page = sysconf(SysconfVar::PAGE_SIZE).unwrap().unwrap() as usize;
    let fd = shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty()).expect("shm_open");
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let len = NonZeroUsize::new(page).unwrap();
    // SAFETY: a fresh mapping chosen by the kernel; used only through atomics.
    let ptr = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0) }.expect("mmap");
    let ring = Ring {
        base: ptr.as_ptr().cast(),
    };
    // SAFETY: the child only pops (atomics and futex calls), stores its sum
    // and calls _exit.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let sum: u64 = (0..COUNT).map(|_| ring.pop()).sum();
            ring.word64(SUM_OFFSET).store(sum, Ordering::Release);
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            for i in 1..=u64::from(COUNT) {
                ring.push(i);
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(1)); // the consumer falls asleep
                }
            }
            let status = waitpid(child, None).expect("waitpid");
            assert_eq!(status, WaitStatus::Exited(child, 0), "the consumer failed");
        }
    }
    kit::report_u64(ring.word64(SUM_OFFSET).load(Ordering::Acquire));
}
