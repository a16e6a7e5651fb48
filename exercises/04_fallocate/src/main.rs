//! Exercise 04_fallocate (lesson 4): catch ENOSPC before the SIGBUS.
//!
//! ftruncate makes an object sparse: it promises SIZE bytes but takes no
//! memory from the tmpfs until a page is first touched. When /dev/shm is
//! full (a small tmpfs, or other users' leftovers), the store that touches
//! the first page that does not fit gets SIGBUS, half-way through.
//!
//! The checker runs your program twice, each time in a private mount
//! namespace with a small tmpfs of its own on /dev/shm: once where SIZE
//! fits, once where it does not. Your program must fill the object when it
//! fits (exit status 0), and exit with status 28 (ENOSPC) *without* a SIGBUS
//! when it does not. Either way it removes the object.
//!
//! Edit the TODO, then: `cargo run -p exercises -- check 04_fallocate`

use std::num::NonZeroUsize;

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::stat::Mode;
use nix::unistd::{SysconfVar, ftruncate, sysconf};

/// The object's size, in pages.
const PAGES: usize = 32;

fn main() {
    let name = kit::name();
    let page = sysconf(SysconfVar::PAGE_SIZE).unwrap().unwrap() as usize;
    let size = PAGES * page;

    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    let fd = shm_open(name.as_str(), flags, Mode::from_bits_truncate(0o600)).expect("shm_open");
    ftruncate(&fd, size as libc::off_t).expect("ftruncate");

    // TODO: ftruncate reserved nothing. Ask the tmpfs for every page now
    // (nix::fcntl::posix_fallocate), and when it answers ENOSPC, remove the
    // object and exit with status 28 instead of going on.

    let len = NonZeroUsize::new(size).unwrap();
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY: a fresh mapping chosen by the kernel, ours alone.
    let ptr = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0) }.expect("mmap");
    for i in 0..PAGES {
        // SAFETY: i * page < size, inside the mapping.
        unsafe { ptr.as_ptr().cast::<u8>().add(i * page).write_volatile(1) };
    }
    // SAFETY: exactly the mapping made above, not used afterwards.
    unsafe { munmap(ptr, size) }.expect("munmap");
    shm_unlink(name.as_str()).expect("shm_unlink");
}
