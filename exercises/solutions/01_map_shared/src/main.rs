//! Solution of exercise 01_map_shared (lesson 1): the parent never sees the
//! child's write.
//!
//! Why it is right: MAP_PRIVATE gives each process a copy-on-write view, so
//! the child's store made the child a private copy of the page and the
//! parent kept reading the object's zeros. MAP_SHARED makes both map the
//! object's own page (`rw-s` in /proc/<pid>/maps instead of `rw-p`).
//!
//! This is lesson 1's program without the narration: the child stores
//! 0xdeadbeef into the mapped page and the parent reads it after waitpid.
//! But the parent reads 0. One argument is wrong; find it and fix it.
//!
//! Check it: `cargo run -p exercises -- check 01_map_shared --solution`
//! (run it by hand: `cargo run -p ex01_map_shared`).

use std::num::NonZeroUsize;

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, SysconfVar, fork, ftruncate, sysconf};

const MAGIC: u64 = 0xdead_beef;

fn main() {
    let name = kit::name();
    let page = sysconf(SysconfVar::PAGE_SIZE).unwrap().unwrap() as usize;

    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    let fd = shm_open(name.as_str(), flags, Mode::from_bits_truncate(0o600)).expect("shm_open");
    ftruncate(&fd, page as libc::off_t).expect("ftruncate");
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let len = NonZeroUsize::new(page).unwrap();
    // SAFETY: a fresh mapping chosen by the kernel; only raw volatile accesses.
    let ptr = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0) }.expect("mmap");
    drop(fd); // the mapping keeps the object

    // SAFETY: the child only stores into the page and calls _exit.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            // SAFETY: the start of a live, writable, page-aligned mapping.
            unsafe { ptr.as_ptr().cast::<u64>().write_volatile(MAGIC) };
            // SAFETY: _exit runs no destructors of the parent's objects.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            waitpid(child, None).expect("waitpid");
        }
    }

    // SAFETY: the child has exited (waitpid); the page is still mapped.
    let value = unsafe { ptr.as_ptr().cast::<u64>().read_volatile() };
    kit::report_u64(value);

    // SAFETY: exactly the mapping made above, not used afterwards.
    unsafe { munmap(ptr, page) }.expect("munmap");
    shm_unlink(name.as_str()).expect("shm_unlink");
}
