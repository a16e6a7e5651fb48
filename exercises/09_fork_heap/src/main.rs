//! Exercise 09_fork_heap (lesson 9): what fork copies.
//!
//! The parent keeps a counter in an ordinary heap allocation (a Box), forks
//! a child, and the child adds COUNT to it. After waitpid the parent reads
//! the counter and reports it: 0. The child did write; it wrote its own copy.
//! Put the counter where the child's write reaches the parent.
//!
//! Edit the TODO, then: `cargo run -p exercises -- check 09_fork_heap`

use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork};

const COUNT: u64 = 1000;

fn main() {
    // TODO: after fork, the heap (like the stack and every MAP_PRIVATE
    // page) is copy-on-write: the child's first store copies the page. Use
    // memory that fork shares instead: an mmap with MAP_SHARED|MAP_ANONYMOUS
    // (no file, no name).
    let counter: &AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));

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
