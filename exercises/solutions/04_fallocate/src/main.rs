//! Solution of exercise 04_fallocate (lesson 4): catch ENOSPC before the
//! SIGBUS.
//!
//! Why it is right: posix_fallocate makes the tmpfs allocate every page of
//! the range now, so a shortage shows up as an errno (ENOSPC) at one call we
//! can handle, instead of a SIGBUS at whichever store first touches a page
//! that does not fit. After it succeeds, no store into the object can fault
//! for lack of space.
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
//! Check it: `cargo run -p exercises -- check 04_fallocate --solution`

use std::num::NonZeroUsize;

use nix::fcntl::{OFlag, posix_fallocate};
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

    if let Err(errno) = posix_fallocate(&fd, 0, size as libc::off_t) {
        eprintln!("posix_fallocate: {errno}");
        shm_unlink(name.as_str()).expect("shm_unlink");
        std::process::exit(errno as i32); // ENOSPC is 28
    }

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
