//! Lesson 1: the article's POSIX shared memory program, step by step.
//!
//! The article's "Source code 1" creates `/mymem` with `shm_open`, sizes it
//! with `ftruncate`, maps it with `mmap(MAP_SHARED)`, forks, lets the child
//! write `0xdeadbeef`, and has the parent print what the child wrote. This is
//! the same program, in the same order (`c/article.c` is the C original),
//! every call narrated by `call!` and checked, with evidence from the running
//! kernel after the steps that change what it shows.
//!
//! Run it: `cargo run -p lesson-1` (add `--hold 30` to inspect from another
//! terminal).

use std::num::NonZeroUsize;
use std::process::ExitCode;

use anyhow::{Context, bail};
use common::args::{Cli, hold_point};
use common::inspect::{self, show_dev_shm, show_maps};
use common::narrate::{self, compare, explain, note, section};
use common::{call, cleanup, names};
use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, SysconfVar, close, fork, ftruncate, sysconf};

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

    narrate::title(
        "lesson-1",
        "the article's POSIX program",
        "shm_open, ftruncate, mmap, fork: the child writes 0xdeadbeef into shared memory and the \
         parent reads it. Every call is shown with its real arguments and result.",
    );

    // ANCHOR: page_size
    section("1. The size of the region: one page");
    let region_size = call!(sysconf(SysconfVar::PAGE_SIZE))?.context("no page size")? as usize;
    explain("Memory is mapped in whole pages, so the article makes its object one page long.");
    // ANCHOR_END: page_size

    // ANCHOR: shm_open
    section("2. Create the object: shm_open");
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR; // article: O_CREAT|O_TRUNC|O_RDWR
    let mode = Mode::from_bits_truncate(0o600); // article: 0666
    let fd = call!(shm_open(memname.as_str(), flags, mode))?;
    let object = cleanup::posix_object(&memname); // removed on every path from here on
    compare(
        "shm_open(\"/mymem\", O_CREAT|O_TRUNC|O_RDWR, 0666)",
        "the call above: O_EXCL, 0600, and a name unique to this run (--name /mymem gives the \
         article's)",
        "O_TRUNC would empty another run's object of the same name, where O_EXCL fails with \
         EEXIST; 0666 would let every user on the machine read and write it.",
    );
    show_dev_shm(&memname);
    // ANCHOR_END: shm_open

    // ANCHOR: ftruncate
    section("3. Give it a size: ftruncate");
    call!(ftruncate(&fd, region_size as libc::off_t))?;
    show_dev_shm(&memname);
    explain("A new object is 0 bytes long; touching a mapping past its end raises SIGBUS.");
    // ANCHOR_END: ftruncate

    // ANCHOR: mmap
    section("4. Map it: mmap(MAP_SHARED), then close the descriptor");
    let len = NonZeroUsize::new(region_size).context("the page size is 0")?;
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY: a fresh mapping chosen by the kernel (addr NULL) cannot overlap
    // any Rust object; we only touch it through raw volatile accesses.
    let ptr = unsafe { call!(mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0)) }?;
    call!(close(fd))?; // the mapping keeps its own reference to the object
    show_maps(&file, ptr.as_ptr());
    explain("rw-s: the s is MAP_SHARED (a private mapping shows p).");
    // ANCHOR_END: mmap

    // ANCHOR: fork
    section("5. fork: the child writes, the parent waits and reads");
    // SAFETY: the child performs only a volatile store into the shared page
    // and _exit(2), both async-signal-safe; it touches no lock or allocator.
    match unsafe { call!(fork()) }? {
        ForkResult::Child => {
            // SAFETY: ptr is the start of a live, writable, page-aligned
            // MAP_SHARED page; the parent does not read it until we exit.
            unsafe { ptr.as_ptr().cast::<libc::c_ulong>().write_volatile(MAGIC) };
            // SAFETY: _exit ends the child at once: no atexit handlers, no
            // flush of stdio buffers copied from the parent, no destructors
            // (which would remove the parent's object).
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            let child_guard = cleanup::child(child);
            let status = call!(waitpid(child, None))?;
            child_guard.disarm(); // reaped: the pid is no longer ours to signal
            if status != WaitStatus::Exited(child, 0) {
                bail!("the child did not exit cleanly: {status:?}");
            }
        }
    }
    // SAFETY: the only writer (the child) has exited, and waitpid ordered its
    // store before this load; the page is still mapped.
    let value = unsafe { ptr.as_ptr().cast::<libc::c_ulong>().read_volatile() };
    println!("child wrote {value:#x}");
    if value != MAGIC {
        bail!("expected {MAGIC:#x} in the shared page, read {value:#x}");
    }
    explain(
        "The child's store reached the parent's page. waitpid is the only synchronisation, as \
         in the article; lesson-6 shows why more is usually needed.",
    );
    // ANCHOR_END: fork

    section("6. The article's sleep(50): look from another terminal");
    hold_point(
        args.hold(),
        "sleep(50)",
        &[
            format!("ls -l /dev/shm/{file}"),
            format!("od -A x -t x8 -N 8 /dev/shm/{file}   # the child's 0xdeadbeef"),
            format!("grep {file} /proc/{}/maps", std::process::id()),
        ],
    );

    // ANCHOR: cleanup
    section("7. Unmap and unlink");
    // SAFETY: ptr/region_size are exactly the mapping made above, and no
    // reference into it outlives this call.
    unsafe { call!(munmap(ptr, region_size)) }?;
    call!(shm_unlink(memname.as_str()))?;
    object.disarm(); // removed by the lesson itself
    show_dev_shm(&memname);
    explain("No name, no mapping, no descriptor: the memory is freed.");
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
