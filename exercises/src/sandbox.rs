//! A small tmpfs on `/dev/shm`, for the exercises about a full `/dev/shm`
//! (lesson 4), without touching the machine's own mounts.
//!
//! `exercises __tmpfs-sandbox PAGES PROGRAM ARGS...` is the checker's own
//! executable started again: while it is still single-threaded it enters a
//! private mount namespace (as lesson-4 does, through `common::ns`: a user
//! namespace too when not root), mounts a fresh tmpfs of PAGES pages on
//! `/dev/shm` there, and `exec`s the program. The tmpfs disappears with the
//! namespace when the program's process group ends. When the kernel refuses
//! namespaces, it exits 77 and the check is skipped.

use std::ffi::CString;

use nix::mount::{MsFlags, mount};

pub const ARG: &str = "__tmpfs-sandbox";

/// Exit status: the check cannot run here.
pub const SKIPPED: i32 = 77;

pub fn enter_and_exec(args: &[String]) -> ! {
    let [pages, program, rest @ ..] = args else {
        eprintln!("usage: exercises {ARG} PAGES PROGRAM [ARGS...]");
        std::process::exit(2);
    };
    let pages: usize = pages.parse().unwrap_or(16);
    if let Err(refused) = common::ns::enter_private_mount_namespace() {
        eprintln!(
            "exercises: no private mount namespace here ({}: {}), so this check is skipped",
            refused.call,
            common::report::errno_name(refused.errno)
        );
        std::process::exit(SKIPPED);
    }
    let size = format!("size={},mode=1777", pages * common::inspect::page_size());
    if let Err(e) = mount(
        Some("tmpfs"),
        "/dev/shm",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(size.as_str()),
    ) {
        eprintln!("exercises: mount tmpfs on /dev/shm ({size}) failed: {e}; check skipped");
        std::process::exit(SKIPPED);
    }
    let argv: Vec<CString> = std::iter::once(program)
        .chain(rest)
        .map(|a| CString::new(a.as_str()).expect("no NUL in arguments"))
        .collect();
    let err = nix::unistd::execv(&argv[0], &argv).unwrap_err();
    eprintln!("exercises: exec {program}: {err}");
    std::process::exit(126);
}
