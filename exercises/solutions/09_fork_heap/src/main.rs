//! Solution of exercise 09_fork_heap (lesson 9): what fork copies.
//!
//! Why it is right: fork gives the child a copy-on-write view of every
//! private page (heap, stack, MAP_PRIVATE mappings): its first store makes
//! it a copy the parent never sees. A MAP_SHARED mapping is not copied: both
//! processes map the same physical page, and MAP_ANONYMOUS makes one without
//! a file or a name, so nothing is left to remove when both have exited.
//!
//! The parent keeps a counter in an ordinary heap allocation (a Box), forks
//! a child, and the child adds COUNT to it. After waitpid the parent reads
//! the counter and reports it: 0. The child did write; it wrote its own copy.
//! Put the counter where the child's write reaches the parent.
//!
//! Edit the TODO, then: `cargo run -p exercises -- check 09_fork_heap`

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, SysconfVar, fork, sysconf};

const COUNT: u64 = 1000;

fn main() {
    let page = sysconf(SysconfVar::PAGE_SIZE).unwrap().unwrap() as usize;
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY: a fresh anonymous shared mapping chosen by the kernel, zeroed.
    let ptr = unsafe {
        mmap_anonymous(
            None,
            NonZeroUsize::new(page).unwrap(),
            prot,
            MapFlags::MAP_SHARED,
        )
    }
    .expect("mmap");
    // SAFETY: page-aligned, mapped until the process exits; both processes
    // use it only as an atomic.
    let counter = unsafe { &*ptr.as_ptr().cast::<AtomicU64>() };

    // SAFETY: the child only adds to the counter (atomics) and calls _exit.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            for _ in 0..COUNT {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            // SAFETY: _exit runs none of the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            waitpid(child, None).expect("waitpid");
        }
    }
    kit::report_u64(counter.load(Ordering::Relaxed));
}
