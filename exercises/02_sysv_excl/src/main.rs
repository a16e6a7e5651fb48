//! Exercise 02_sysv_excl (lesson 2): don't write into someone else's segment.
//!
//! The article calls `shmget(12345678, size, IPC_CREAT | 0666)`. If another
//! program (another student's run) already made a segment with that key,
//! this call quietly returns *that* segment, and our program then overwrites
//! its data and removes it. The checker plays the other program: on the
//! first run it already holds a segment under your key, on the second it
//! does not.
//!
//! Your program must create its own segment or fail with EEXIST (then exit
//! with status 1 without touching anything), and keep it to its own user.
//!
//! Edit the TODO, then: `cargo run -p exercises -- check 02_sysv_excl`

use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, SysconfVar, fork, sysconf};

const MAGIC: u64 = 0xdead_beef;

fn main() {
    let key = kit::key();
    let page = sysconf(SysconfVar::PAGE_SIZE).unwrap().unwrap() as usize;

    // TODO: with these flags shmget hands us an existing segment under this
    // key, whoever made it, and 0o666 lets every user read and write ours.
    let flags = libc::IPC_CREAT | 0o666;
    // SAFETY: shmget takes plain integers.
    let shmid = unsafe { libc::shmget(key, page, flags) };
    if shmid < 0 {
        eprintln!("shmget: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    // SAFETY: a null address lets the kernel choose an unused range.
    let addr = unsafe { libc::shmat(shmid, std::ptr::null(), 0) };
    assert!(
        addr as isize != -1,
        "shmat: {}",
        std::io::Error::last_os_error()
    );

    // SAFETY: the child only stores into the segment and calls _exit.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            // SAFETY: the start of the attached, page-aligned segment.
            unsafe { addr.cast::<u64>().write_volatile(MAGIC) };
            // SAFETY: _exit runs none of the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            waitpid(child, None).expect("waitpid");
        }
    }
    // SAFETY: the child has exited (waitpid); the segment is still attached.
    let value = unsafe { addr.cast::<u64>().read_volatile() };
    kit::report_u64(value);

    // SAFETY: addr came from shmat and is not used afterwards; IPC_RMID
    // takes no buffer.
    unsafe {
        libc::shmdt(addr);
        libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut());
    }
}
