//! Solution of exercise 07_sigint_writer (lesson 7): a writer that survives
//! Ctrl-C without a leak.
//!
//! Why it is right: with SIGINT blocked, Ctrl-C no longer kills the process;
//! the signal stays pending until sigtimedwait takes it, which ends the hold
//! early. The cleanup then runs as it would after a full hold, so the name
//! is removed on both paths, and the program exits with 130 (128 + SIGINT),
//! as a shell expects from a program stopped by Ctrl-C. Blocking it before
//! the object exists also closes the window where a Ctrl-C would leak it.
//!
//! The program creates an object, writes into it, and holds it for 30
//! seconds for a reader, then removes it. The checker presses Ctrl-C (sends
//! SIGINT to the program's process group) during the hold. SIGINT's default
//! action ends the process at once, and the object stays in /dev/shm for
//! good. After Ctrl-C the program must still remove the object, then exit.
//!
//! Check it: `cargo run -p exercises -- check 07_sigint_writer --solution`
//! (by hand: `cargo run -p ex07_sigint_writer`, Ctrl-C, `ls /dev/shm`).

use std::num::NonZeroUsize;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{SysconfVar, ftruncate, sysconf};

const HOLD: Duration = Duration::from_secs(30);

fn main() {
    let name = kit::name();
    // Block SIGINT first: from now on Ctrl-C waits for us to take it.
    let mut sigint = SigSet::empty();
    sigint.add(Signal::SIGINT);
    sigint.thread_block().expect("sigprocmask");
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

    let timeout = libc::timespec {
        tv_sec: HOLD.as_secs() as libc::time_t,
        tv_nsec: 0,
    };
    // SAFETY: `sigint` is a valid signal set; the info pointer may be null.
    let got = unsafe { libc::sigtimedwait(sigint.as_ref(), std::ptr::null_mut(), &timeout) };
    let interrupted = got == libc::SIGINT;

    // SAFETY: exactly the mapping made above, not used afterwards.
    unsafe { munmap(ptr, page) }.expect("munmap");
    shm_unlink(name.as_str()).expect("shm_unlink");
    if interrupted {
        std::process::exit(130); // 128 + SIGINT, after the cleanup
    }
}
