//! Lesson 1: the article's POSIX shared memory program, step by step.
//!
//! The article's "Source code 1" creates `/mymem` with `shm_open`, sizes it
//! with `ftruncate`, maps it with `mmap(MAP_SHARED)`, forks, lets the child
//! write `0xdeadbeef`, and has the parent print what the child wrote. This is
//! the same program, in the same order, with every call narrated and checked,
//! and with evidence from the running kernel after each step.
//!
//! Run it: `cargo run -p lesson-1` (add `--hold 30` to inspect from another
//! terminal).

use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use anyhow::{Context, bail};
use common::args::{Cli, hold_point};
use common::narrate::{self, compare, evidence, explain, note, section, step};
use common::{cleanup, inspect, names};
use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, SysconfVar, close, fork, ftruncate, getpid, sysconf};

/// What the child writes, as in the article (`u_long` is 64 bits here).
const MAGIC: libc::c_ulong = 0xdeadbeef;

const ABOUT: &str = "Lesson 1: the article's POSIX shared memory fork demo. A parent creates \
    an object with shm_open, sizes it with ftruncate, maps it with mmap(MAP_SHARED) and forks; \
    the child writes 0xdeadbeef and the parent reads it back.";

fn main() -> ExitCode {
    common::run(lesson)
}

fn lesson() -> anyhow::Result<()> {
    let args = Cli::new("lesson-1", ABOUT)
        .hold()
        .name("/shm-lessons-1-<pid>")
        .parse();
    let memname = args.name().unwrap_or_else(|| names::unique_name(1, ""));
    let file = names::file_name(&memname).to_string();
    let pid = getpid();

    narrate::title(
        "lesson-1",
        "the article's POSIX program",
        "shm_open, ftruncate, mmap, fork: the child writes 0xdeadbeef into shared memory and the \
         parent reads it. Every call is shown with its real arguments and result.",
    );

    // ANCHOR: page_size
    section("1. The size of the region: one page");
    let s = step("sysconf(_SC_PAGE_SIZE)");
    let region_size = s
        .check(sysconf(SysconfVar::PAGE_SIZE))?
        .context("sysconf(_SC_PAGE_SIZE) has no value")? as usize;
    s.ok(region_size);
    explain("Memory is mapped in whole pages, so the article makes its object exactly one page.");
    // ANCHOR_END: page_size

    // ANCHOR: shm_open
    section("2. Create the object: shm_open");
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    let mode = Mode::from_bits_truncate(0o600);
    let s = step(format!(
        "shm_open({memname:?}, {}, {})",
        narrate::flags(flags),
        narrate::mode(mode.bits())
    ));
    let fd = s.check(shm_open(memname.as_str(), flags, mode))?;
    let object = cleanup::posix_object(&memname); // removed on every path from here on
    s.ok(format!("fd {}", fd.as_raw_fd()));
    compare(
        "shm_open(\"/mymem\", O_CREAT|O_TRUNC|O_RDWR, 0666)",
        &format!("shm_open({memname:?}, O_CREAT|O_EXCL|O_RDWR, 0600)"),
        "O_TRUNC would silently empty another run's object with the same name (on a shared \
         server, another student's); O_EXCL fails with EEXIST instead. 0666 would let every \
         user on the machine read and write our memory; 0600 keeps it to us. The name is \
         unique to this run (pass --name /mymem for the article's).",
    );
    evidence(
        &format!("ls -l /dev/shm/{file}"),
        inspect::dev_shm_ls(&memname),
    );
    explain(
        "The object is a file on the tmpfs mounted at /dev/shm. It is new, so its size is 0: \
         nothing can be stored in it yet.",
    );
    // ANCHOR_END: shm_open

    // ANCHOR: ftruncate
    section("3. Give it a size: ftruncate");
    let s = step(format!("ftruncate({}, {region_size})", fd.as_raw_fd()));
    s.check(ftruncate(&fd, region_size as libc::off_t))?;
    s.ok(0);
    evidence(
        &format!("ls -l /dev/shm/{file}"),
        inspect::dev_shm_ls(&memname),
    );
    explain(
        "Without this call the object stays 0 bytes long, and touching the mapping would raise \
         SIGBUS (lesson-3 shows it).",
    );
    // ANCHOR_END: ftruncate

    // ANCHOR: mmap
    section("4. Map it: mmap(MAP_SHARED), then close the descriptor");
    let len = NonZeroUsize::new(region_size).context("the page size is 0")?;
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let s = step(format!(
        "mmap(NULL, {region_size}, {}, MAP_SHARED, {}, 0)",
        narrate::flags(prot),
        fd.as_raw_fd()
    ));
    // SAFETY: a fresh mapping chosen by the kernel (addr NULL) cannot overlap
    // any Rust object; we only touch it through raw volatile accesses.
    let ptr = s.check(unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0) })?;
    s.ok(format!("{:p}", ptr.as_ptr()));

    let raw_fd = fd.as_raw_fd();
    let s = step(format!("close({raw_fd})"));
    s.check(close(fd))?;
    s.ok(0);
    explain(
        "The mapping keeps its own reference to the object, so closing the descriptor does not \
         unmap anything: the article closes it at once, and so do we.",
    );
    evidence(
        &format!("grep {file} /proc/{pid}/maps"),
        inspect::maps_line_for(ptr.as_ptr() as usize),
    );
    explain(
        "rw-s: readable, writable, and s for shared (a MAP_PRIVATE mapping shows p). The path is \
         the object's file in /dev/shm.",
    );
    // ANCHOR_END: mmap

    // ANCHOR: fork
    section("5. fork: the child writes, the parent waits and reads");
    let s = step("fork()");
    // SAFETY: the child performs only a volatile store into the shared page
    // and _exit(2), both async-signal-safe; it touches no lock or allocator.
    match s.check(unsafe { fork() })? {
        ForkResult::Child => {
            let d = ptr.as_ptr().cast::<libc::c_ulong>();
            // SAFETY: d points to the start of a live, writable, page-aligned
            // MAP_SHARED page; the parent does not read it until we exit.
            unsafe { d.write_volatile(MAGIC) };
            // SAFETY: _exit ends the child at once: no atexit handlers, no
            // flush of stdio buffers copied from the parent, no destructors
            // (which would remove the parent's object).
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            let child_guard = cleanup::child(child);
            s.ok(format!("{child} (in the parent; 0 in the child)"));
            explain(
                "The child inherits the MAP_SHARED mapping at the same address. It stores \
                 0xdeadbeef there and leaves with _exit, not exit: exit would run atexit \
                 handlers and flush stdio buffers copied from the parent, printing them twice.",
            );

            let s = step(format!("waitpid({child}, &status, 0)"));
            let status = s.check(waitpid(child, None))?;
            child_guard.disarm(); // reaped: the pid is no longer ours to signal
            match status {
                WaitStatus::Exited(_, 0) => s.ok("child exited with status 0"),
                other => {
                    s.ok(format!("{other:?}"));
                    bail!("the child did not exit cleanly: {other:?}");
                }
            }
        }
    }

    // SAFETY: the only writer (the child) has exited; the page is still mapped.
    let value = unsafe { ptr.as_ptr().cast::<libc::c_ulong>().read_volatile() };
    println!("child wrote {value:#x}");
    if value != MAGIC {
        bail!("expected {MAGIC:#x} in the shared page, read {value:#x}");
    }
    compare(
        "Child wrote 0xdeadbeef",
        &format!("child wrote {value:#x}"),
        "the child's store went to the same physical page the parent maps: shared memory. \
         waitpid is the only synchronisation, as in the article (lesson-6 shows why more is \
         usually needed).",
    );
    // ANCHOR_END: fork

    // ANCHOR: hold
    section("6. The article's sleep(50): look from another terminal");
    hold_point(
        args.hold(),
        "sleep(50)",
        &[
            format!("ls -l /dev/shm/{file}"),
            format!("od -A x -t x8 -N 8 /dev/shm/{file}   # the child's 0xdeadbeef"),
            format!("grep {file} /proc/{pid}/maps"),
        ],
    );
    // ANCHOR_END: hold

    // ANCHOR: cleanup
    section("7. Unmap and unlink");
    let s = step(format!("munmap({:p}, {region_size})", ptr.as_ptr()));
    // SAFETY: ptr/region_size are exactly the mapping made above, and no
    // reference into it outlives this call.
    s.check(unsafe { munmap(ptr, region_size) })?;
    s.ok(0);

    let s = step(format!("shm_unlink({memname:?})"));
    s.check(shm_unlink(memname.as_str()))?;
    object.disarm(); // removed by the lesson itself
    s.ok(0);
    evidence(
        &format!("ls -l /dev/shm/{file}"),
        inspect::dev_shm_ls(&memname),
    );
    explain(
        "The name is gone, and with no mapping or descriptor left, so is the memory. The \
         article reports a failing shm_unlink through error_out, as we do with the errno name.",
    );
    // ANCHOR_END: cleanup

    section("Notes");
    let libc_version = inspect::libc_version().unwrap_or_else(|| "not glibc".into());
    note(format!(
        "the article links with -lrt. Since glibc 2.34, shm_open and shm_unlink live in libc \
         itself and -lrt is an empty compatibility stub; this machine's libc is {libc_version}. \
         The man pages still say \"Link with -lrt\"."
    ));
    narrate::conclude(
        "lesson-1 done: the child's write reached the parent through shared memory, and nothing is left behind.",
    );
    Ok(())
}
