//! Solution of exercise 10_ipc_namespace (lesson 10): a segment the host
//! cannot see.
//!
//! Why it is right: System V segments belong to an IPC namespace. After
//! unshare(CLONE_NEWIPC) this process has a new, empty one: its shmget
//! creates the segment there, so the host's /proc/sysvipc/shm (and ipcs -m)
//! never lists it, and the segment dies with the namespace when its last
//! process exits. Creating an IPC namespace needs CAP_SYS_ADMIN; a user
//! without it first makes a user namespace, in which it has that capability
//! (over namespaces it owns only). unshare must come first: a user
//! namespace cannot be entered by a process with more than one thread.
//!
//! A container runs in an IPC namespace of its own: its System V segments
//! live there, and the host's `ipcs -m` does not list them (lesson 10,
//! part 1). Your program makes a segment under its key, reports that it is
//! ready, and holds it until the checker has looked (SIGUSR1) or 5 s pass.
//! The checker, in the host's namespace, must not find the key.
//!
//! Edit the TODO, then: `cargo run -p exercises -- check 10_ipc_namespace`

use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{SysconfVar, sysconf};

fn main() {
    if unshare(CloneFlags::CLONE_NEWIPC).is_err() {
        unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWIPC).expect("unshare");
    }

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
