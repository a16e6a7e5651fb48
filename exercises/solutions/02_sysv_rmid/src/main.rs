//! Solution of exercise 02_sysv_rmid (lesson 2): the segment that outlives
//! everyone.
//!
//! Why it is right: a System V segment is not counted by names or open
//! descriptors, only by attachments, and it is destroyed only once it is
//! marked with shmctl(IPC_RMID) *and* nattch is 0. shmdt brings nattch to 0;
//! IPC_RMID marks it, so the kernel frees it at once (had another process
//! still been attached, it would go when that one detached).
//!
//! Lesson 2's program with System V calls: shmget, shmat, fork, the child
//! writes 0xdeadbeef, the parent reads it, shmdt. Every process is gone at
//! the end, yet `ipcs -m` still lists the segment: it stays until someone
//! removes it (or the machine reboots).
//!
//! Check it: `cargo run -p exercises -- check 02_sysv_rmid --solution`
//! (run it by hand: `cargo run -p ex02_sysv_rmid; ipcs -m`).

use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, SysconfVar, fork, sysconf};

const MAGIC: u64 = 0xdead_beef;

fn main() {
    let key = kit::key();
    let page = sysconf(SysconfVar::PAGE_SIZE).unwrap().unwrap() as usize;

    // SAFETY: shmget takes plain integers.
    let shmid = unsafe { libc::shmget(key, page, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
    assert!(shmid >= 0, "shmget: {}", std::io::Error::last_os_error());
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

    // SAFETY: addr came from shmat and is not used afterwards.
    let r = unsafe { libc::shmdt(addr) };
    assert_eq!(r, 0, "shmdt: {}", std::io::Error::last_os_error());
    // SAFETY: IPC_RMID takes no buffer: a null pointer, as the man page says.
    let r = unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) };
    assert_eq!(
        r,
        0,
        "shmctl(IPC_RMID): {}",
        std::io::Error::last_os_error()
    );
}
