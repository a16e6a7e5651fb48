//! Solution of exercise 01_child_string (lesson 1): the child writes a
//! string, the parent reads it.
//!
//! Why it is right: the child inherits the MAP_SHARED mapping at the same
//! address, so its stores land in the page the parent maps. It stores the
//! bytes one by one with write_volatile (never a `&mut [u8]`: the memory is
//! shared with another process), then the 0 the parent's loop stops at.
//! waitpid orders the child's stores before the parent's reads.
//!
//! Lesson 1's child stores one number, 0xdeadbeef. Here the child must store
//! the text `hello from the child`, followed by one 0 byte, at the start of
//! the shared page; the parent reads bytes up to the 0 and reports them.
//!
//! Check it: `cargo run -p exercises -- check 01_child_string --solution`
//! (run it by hand: `cargo run -p ex01_child_string`).

use std::num::NonZeroUsize;

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, SysconfVar, fork, ftruncate, sysconf};

const MESSAGE: &[u8] = b"hello from the child";

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

    // SAFETY: the child only stores into the page and calls _exit, both
    // async-signal-safe (no allocation, no println!).
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let p = ptr.as_ptr().cast::<u8>();
            for (i, &b) in MESSAGE.iter().enumerate() {
                // SAFETY: i < MESSAGE.len() < page: inside the mapping; the
                // parent reads only after waitpid.
                unsafe { p.add(i).write_volatile(b) };
            }
            // SAFETY: MESSAGE.len() < page: still inside the mapping.
            unsafe { p.add(MESSAGE.len()).write_volatile(0) };
            // SAFETY: _exit ends the child without running the parent's
            // destructors or flushing its copied stdio buffers.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            waitpid(child, None).expect("waitpid");
        }
    }

    // The child has exited (waitpid): nothing writes the page any more.
    let p = ptr.as_ptr().cast::<u8>();
    let mut got = Vec::new();
    for i in 0..page {
        // SAFETY: i < page, inside the mapping; the writer is gone.
        let b = unsafe { p.add(i).read_volatile() };
        if b == 0 {
            break;
        }
        got.push(b);
    }
    kit::report(&got);

    // SAFETY: exactly the mapping made above; p is not used afterwards.
    unsafe { munmap(ptr, page) }.expect("munmap");
    shm_unlink(name.as_str()).expect("shm_unlink");
}
