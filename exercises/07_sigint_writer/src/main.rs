//! Exercise 07_sigint_writer (lesson 7): a writer that survives Ctrl-C
//! without a leak.
//!
//! The program creates an object, writes into it, and holds it for 30
//! seconds for a reader, then removes it. The checker presses Ctrl-C (sends
//! SIGINT to the program's process group) during the hold. SIGINT's default
//! action ends the process at once, and the object stays in /dev/shm for
//! good. After Ctrl-C the program must still remove the object, then exit.
//!
//! Edit the TODO, then: `cargo run -p exercises -- check 07_sigint_writer`
//! (by hand: `cargo run -p ex07_sigint_writer`, Ctrl-C, `ls /dev/shm`).

use std::num::NonZeroUsize;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::stat::Mode;
use nix::unistd::{SysconfVar, ftruncate, sysconf};

const HOLD: Duration = Duration::from_secs(30);

fn main() {
    let name = kit::name();
    let page = sysconf(SysconfVar::PAGE_SIZE).unwrap().unwrap() as usize;

    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    let fd = shm_open(name.as_str(), flags, Mode::from_bits_truncate(0o600)).expect("shm_open");
    ftruncate(&fd, page as libc::off_t).expect("ftruncate");
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let len = NonZeroUsize::new(page).unwrap();
    // SAFETY: a fresh mapping chosen by the kernel, ours alone.
    let ptr = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0) }.expect("mmap");
    // SAFETY: the start of the page-aligned mapping.
    unsafe { ptr.as_ptr().cast::<u64>().write_volatile(0x1234) };

    // TODO: Ctrl-C during this hold kills the process before the cleanup
    // below. Make Ctrl-C *end the hold* instead: for example block SIGINT
    // (nix::sys::signal::SigSet, thread_block) and wait for it with a
    // timeout (libc::sigtimedwait) instead of sleeping.
    std::thread::sleep(HOLD);

    // SAFETY: exactly the mapping made above, not used afterwards.
    unsafe { munmap(ptr, page) }.expect("munmap");
    shm_unlink(name.as_str()).expect("shm_unlink");
}
