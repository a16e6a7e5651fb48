//! Solution of exercise 10_shm_limits (lesson 10): fit under the
//! namespace's shmmax.
//!
//! Why it is right: `kernel.shmmax` belongs to the IPC namespace, and
//! /proc/sys/kernel/shmmax shows the value of the reader's own namespace, so
//! the program sees the limit that its shmget will be held to (a container's,
//! not the host's). Asking for min(wanted, shmmax) never gets EINVAL for the
//! size; the kernel records the size asked for in shm_segsz.
//!
//! A container's IPC namespace has limits of its own (lesson 10, part 4):
//! `kernel.shmmax`, the largest System V segment, may be much smaller than
//! on your laptop. Your program wants a WANT_PAGES-page segment for a
//! buffer, but can live with less. The checker runs it twice, each time in
//! an IPC namespace of its own: once with a generous shmmax, once with a
//! small one. Each run must make the biggest segment it is allowed (up to
//! WANT_PAGES pages), report its size as the kernel records it (IPC_STAT),
//! and remove it.
//!
//! Edit the TODO, then: `cargo run -p exercises -- check 10_shm_limits`

use nix::unistd::{SysconfVar, sysconf};

const WANT_PAGES: usize = 8;

fn main() {
    let page = sysconf(SysconfVar::PAGE_SIZE).unwrap().unwrap() as usize;
    let shmmax: usize = std::fs::read_to_string("/proc/sys/kernel/shmmax")
        .expect("read /proc/sys/kernel/shmmax")
        .trim()
        .parse()
        .expect("a number");
    let size = (WANT_PAGES * page).min(shmmax);

    // SAFETY: shmget takes plain integers.
    let shmid = unsafe { libc::shmget(kit::key(), size, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
    assert!(shmid >= 0, "shmget: {}", std::io::Error::last_os_error());

    // SAFETY: `ds` is a properly sized buffer that IPC_STAT fills in.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) };
    assert_eq!(
        r,
        0,
        "shmctl(IPC_STAT): {}",
        std::io::Error::last_os_error()
    );
    kit::report_u64(ds.shm_segsz as u64);

    // SAFETY: IPC_RMID takes no buffer.
    unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) };
}
