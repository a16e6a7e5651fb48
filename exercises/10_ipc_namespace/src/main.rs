//! Exercise 10_ipc_namespace (lesson 10): a segment the host cannot see.
//!
//! A container runs in an IPC namespace of its own: its System V segments
//! live there, and the host's `ipcs -m` does not list them (lesson 10,
//! part 1). Your program makes a segment under its key, reports that it is
//! ready, and holds it until the checker has looked (SIGUSR1) or 5 s pass.
//! The checker, in the host's namespace, must not find the key.
//!
//! Edit the TODO, then: `cargo run -p exercises -- check 10_ipc_namespace`

use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{SysconfVar, sysconf};

fn main() {
    // TODO: before anything else (while the process has one thread), move
    // this process into a new IPC namespace: nix::sched::unshare with
    // CLONE_NEWIPC; a user who is not root needs CLONE_NEWUSER too.

    let mut usr1 = SigSet::empty();
    usr1.add(Signal::SIGUSR1);
    usr1.thread_block().expect("sigprocmask"); // kept pending until we wait

    let page = sysconf(SysconfVar::PAGE_SIZE).unwrap().unwrap() as usize;
    // SAFETY: shmget takes plain integers.
    let shmid = unsafe { libc::shmget(kit::key(), page, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
    assert!(shmid >= 0, "shmget: {}", std::io::Error::last_os_error());
    kit::report_u64(shmid as u64); // "ready: look now"

    let timeout = libc::timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    // SAFETY: a valid signal set; the info pointer may be null.
    unsafe { libc::sigtimedwait(usr1.as_ref(), std::ptr::null_mut(), &timeout) };

    // SAFETY: IPC_RMID takes no buffer.
    unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) };
}
