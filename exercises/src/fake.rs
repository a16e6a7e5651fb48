//! A stand-in for a student's program that misbehaves on purpose, so the
//! tests can show that a check cleans up whatever the program did:
//! `check ID --fake panic|hang|kill` runs the checker's own executable with
//! `SHM_EX_FAKE` set, and it lands here instead of in `main`.
//!
//! It creates what a real exercise would (a POSIX object under the check's
//! name, a System V segment under its key, a forked child that keeps both
//! mapped), then panics, hangs, or kills itself with SIGKILL.

use std::num::NonZeroUsize;

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, shm_open};
use nix::sys::signal::{Signal, raise};
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, fork, ftruncate};

pub const ENV: &str = "SHM_EX_FAKE";

pub fn misbehave(mode: &str) -> ! {
    let name = kit::name();
    let fd = shm_open(
        name.as_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
        Mode::from_bits_truncate(0o600),
    )
    .expect("shm_open");
    ftruncate(&fd, 4096).expect("ftruncate");
    // SAFETY: a fresh shared mapping of our own object; never dereferenced.
    let _map = unsafe {
        mmap(
            None,
            NonZeroUsize::new(4096).unwrap(),
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            &fd,
            0,
        )
    }
    .expect("mmap");
    let id = common::sysv::shmget(kit::key(), 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o600)
        .expect("shmget");
    let _at = common::sysv::shmat(id, 0).expect("shmat");
    // SAFETY: the child only calls pause() in a loop: async-signal-safe.
    if let ForkResult::Child = unsafe { fork() }.expect("fork") {
        loop {
            // SAFETY: pause takes no arguments.
            unsafe { libc::pause() };
        }
    }
    match mode {
        "panic" => panic!("a student's program that panics"),
        "kill" => {
            let _ = raise(Signal::SIGKILL);
            unreachable!("SIGKILL cannot be caught")
        }
        _ => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
    }
}
