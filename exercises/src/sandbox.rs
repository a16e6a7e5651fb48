//! Sandboxes for the checks that need a machine set up differently, without
//! touching the machine's own mounts or limits.
//!
//! Each is the checker's own executable started again with a first argument
//! that lands here, while it is still single-threaded (namespaces refuse a
//! multi-threaded process). It enters namespaces of its own, sets them up,
//! and `exec`s the program; everything it set up disappears with the
//! namespaces when the program's process group ends. When the kernel
//! refuses, it exits 77 and the check says SKIP.
//!
//! - `exercises __tmpfs-sandbox PAGES PROGRAM ARGS...`: a private mount
//!   namespace (as lesson-4 does, through `common::ns`; a user namespace too
//!   when not root) with a fresh tmpfs of PAGES pages on `/dev/shm`
//!   (lesson 4's full `/dev/shm`).
//! - `exercises __ipc-sandbox SHMMAX PROGRAM ARGS...`: a new IPC namespace
//!   (with a user namespace when not root) whose `kernel.shmmax` is SHMMAX
//!   bytes (lesson 10's limits).

use std::ffi::CString;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{getegid, geteuid};

pub const TMPFS: &str = "__tmpfs-sandbox";
pub const IPC: &str = "__ipc-sandbox";

/// Exit status: the check cannot run here.
pub const SKIPPED: i32 = 77;

fn skip(why: String) -> ! {
    eprintln!("exercises: {why}, so this check is skipped");
    std::process::exit(SKIPPED);
}

fn exec(program: &str, rest: &[String]) -> ! {
    let argv: Vec<CString> = std::iter::once(program)
        .chain(rest.iter().map(String::as_str))
        .map(|a| CString::new(a).expect("no NUL in arguments"))
        .collect();
    let err = nix::unistd::execv(&argv[0], &argv).unwrap_err();
    eprintln!("exercises: exec {program}: {err}");
    std::process::exit(126);
}

pub fn tmpfs_and_exec(args: &[String]) -> ! {
    let [pages, program, rest @ ..] = args else {
        eprintln!("usage: exercises {TMPFS} PAGES PROGRAM [ARGS...]");
        std::process::exit(2);
    };
    let pages: usize = pages.parse().unwrap_or(16);
    if let Err(refused) = common::ns::enter_private_mount_namespace() {
        skip(format!(
            "no private mount namespace here ({}: {})",
            refused.call,
            common::report::errno_name(refused.errno)
        ));
    }
    let size = format!("size={},mode=1777", pages * common::inspect::page_size());
    if let Err(e) = mount(
        Some("tmpfs"),
        "/dev/shm",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(size.as_str()),
    ) {
        skip(format!("mount tmpfs on /dev/shm ({size}) failed: {e}"));
    }
    exec(program, rest)
}

pub fn ipc_and_exec(args: &[String]) -> ! {
    let [shmmax, program, rest @ ..] = args else {
        eprintln!("usage: exercises {IPC} SHMMAX PROGRAM [ARGS...]");
        std::process::exit(2);
    };
    let (uid, gid) = (geteuid().as_raw(), getegid().as_raw());
    if unshare(CloneFlags::CLONE_NEWIPC).is_err() {
        if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWIPC) {
            skip(format!("no new IPC namespace here (unshare: {e})"));
        }
        // Root in the user namespace, mapped to us outside: the owner of
        // the new IPC namespace, allowed to set its limits.
        for (path, text) in [
            ("/proc/self/setgroups", "deny".to_string()),
            ("/proc/self/uid_map", format!("0 {uid} 1")),
            ("/proc/self/gid_map", format!("0 {gid} 1")),
        ] {
            if let Err(e) = std::fs::write(path, &text) {
                skip(format!("write {path} {text:?}: {e}"));
            }
        }
    }
    // In our own IPC namespace: this is its limit, not the host's.
    if let Err(e) = std::fs::write("/proc/sys/kernel/shmmax", shmmax) {
        skip(format!(
            "write /proc/sys/kernel/shmmax in a new IPC namespace: {e}"
        ));
    }
    exec(program, rest)
}
