//! Solution of exercise 03_ftruncate (lesson 3): the missing call that ends
//! in SIGBUS.
//!
//! Why it is right: a new object is 0 bytes long. mmap accepts a longer
//! length, but a page of the mapping that holds no byte of the object cannot
//! be backed, and touching it raises SIGBUS. ftruncate(fd, page) gives the
//! object one page before the store touches it.
//!
//! The program creates an object, maps one page of it, stores a number at
//! the start of the page and reads it back through the descriptor with
//! pread, to prove the number reached the object. It dies with SIGBUS at the
//! store. One call is missing.
//!
//! Check it: `cargo run -p exercises -- check 03_ftruncate --solution`
//! (run it by hand: `cargo run -p ex03_ftruncate; echo $?`).

use std::num::NonZeroUsize;

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::stat::Mode;
use nix::sys::uio::pread;
use nix::unistd::{SysconfVar, ftruncate, sysconf};

const VALUE: u64 = 0x5eb0_5eb0;

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
    // SAFETY: the start of a live, writable, page-aligned mapping, ours alone.
    unsafe { ptr.as_ptr().cast::<u64>().write_volatile(VALUE) };

    let mut back = [0u8; 8];
    let n = pread(&fd, &mut back, 0).expect("pread");
    assert_eq!(n, 8, "pread read {n} bytes of the object");
    kit::report_u64(u64::from_ne_bytes(back));

    // SAFETY: exactly the mapping made above, not used afterwards.
    unsafe { munmap(ptr, page) }.expect("munmap");
    shm_unlink(name.as_str()).expect("shm_unlink");
}
