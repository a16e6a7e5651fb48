//! Part 1. POSIX: `shm_unlink` while the object is mapped.
//!
//! `shm_unlink` removes the *name*. The memory stays as long as a mapping or
//! a descriptor refers to it: the mapping keeps working, `/proc/self/maps`
//! shows the path with `(deleted)`, a new `shm_open` of the name fails with
//! ENOENT, and the `Shmem:` line of `/proc/meminfo` falls only at `munmap`.

use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;

use anyhow::{Context, bail};
use common::args::{Hold, hold_point};
use common::narrate::{self, compare, evidence, explain, fact, section, step, warn};
use common::{inspect, names, shm};
use nix::errno::Errno;
use nix::fcntl::{OFlag, posix_fallocate};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::stat::Mode;
use nix::unistd::{close, ftruncate, getpid};

/// Big enough to stand out in `/proc/meminfo` (64 MiB).
const SIZE: usize = 64 << 20;
const SIZE_KIB: i64 = (SIZE >> 10) as i64;
/// What we store and read back after the name is gone.
const MAGIC: u64 = 0xdeadbeef;

pub(crate) fn shmem() -> anyhow::Result<i64> {
    let v = inspect::meminfo_kib("Shmem").context("/proc/meminfo has no Shmem: line")?;
    Ok(v as i64)
}

/// Print the `Shmem:` line and how far it moved since `since`.
pub(crate) fn show_shmem(when: &str, since: i64) -> anyhow::Result<i64> {
    let now = shmem()?;
    fact(
        &format!("Shmem {when}"),
        format!("{now} kB ({:+} kB)", now - since),
    );
    Ok(now)
}

pub fn run(hold: Hold) -> anyhow::Result<()> {
    section("Part 1. POSIX: shm_unlink while the object is mapped");
    let name = names::unique_name(7, "unlink");
    let file = names::file_name(&name).to_string();
    let pid = getpid();

    // ANCHOR: create
    let start = shmem()?;
    evidence("grep Shmem: /proc/meminfo", [format!("Shmem: {start} kB")]);
    let (fd, object) = shm::create(&name)?; // removed on every path from here on

    let s = step(format!("ftruncate({}, {SIZE})", fd.as_raw_fd()));
    s.check(ftruncate(&fd, SIZE as libc::off_t))?;
    s.ok(0);

    let s = step(format!("posix_fallocate({}, 0, {SIZE})", fd.as_raw_fd()));
    s.check(posix_fallocate(&fd, 0, SIZE as libc::off_t))
        .context("this part needs 64 MiB free in /dev/shm")?;
    s.ok("0: every page of the object now exists in memory");
    let filled = show_shmem("after allocating 64 MiB", start)?;
    explain(
        "tmpfs pages are counted as Shmem in /proc/meminfo. ftruncate alone allocates \
         nothing (the file is sparse); posix_fallocate allocates every page now, so a full \
         /dev/shm fails here with ENOSPC instead of a SIGBUS at the first touch.",
    );

    let len = NonZeroUsize::new(SIZE).context("size 0")?;
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let s = step(format!(
        "mmap(NULL, {SIZE}, {}, MAP_SHARED, {}, 0)",
        narrate::flags(prot),
        fd.as_raw_fd()
    ));
    // SAFETY: a fresh mapping at a kernel-chosen address overlaps no Rust
    // object; only this process uses it, through raw pointers.
    let ptr = s.check(unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0) })?;
    s.ok(format!("{:p}", ptr.as_ptr()));

    let raw = fd.as_raw_fd();
    let s = step(format!("close({raw})"));
    s.check(close(fd))?;
    s.ok(0);
    // ANCHOR_END: create

    // ANCHOR: unlink
    let s = step(format!("shm_unlink({name:?})"));
    s.check(shm_unlink(name.as_str()))?;
    object.disarm(); // the name is gone; the memory goes with the mapping
    s.ok(0);
    evidence(
        &format!("ls -l /dev/shm/{file}"),
        inspect::dev_shm_ls(&name),
    );
    let maps = inspect::maps_line_for(ptr.as_ptr() as usize).unwrap_or_default();
    evidence(&format!("grep {file} /proc/{pid}/maps"), [maps.as_str()]);
    if !maps.ends_with(&format!("/dev/shm/{file} (deleted)")) {
        bail!("expected the mapping of /dev/shm/{file} to show (deleted), saw {maps:?}");
    }
    explain(
        "The directory entry is gone, but the mapping still refers to the file: the kernel \
         marks it (deleted), exactly like an unlinked file that a process still holds open.",
    );

    let word = ptr.as_ptr().cast::<u64>();
    let s = step(format!("*(u64 *){word:p} = {MAGIC:#x}; read it back"));
    // SAFETY: word is the page-aligned start of our live, writable mapping;
    // no other process maps it.
    let back = unsafe {
        word.write_volatile(MAGIC);
        word.read_volatile()
    };
    s.ok(format!("{back:#x}: the mapping still works"));
    if back != MAGIC {
        bail!("read back {back:#x} instead of {MAGIC:#x}");
    }

    let s = step(format!("shm_open({name:?}, O_RDWR, 0)"));
    match s.outcome(
        shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty()),
        |fd| format!("fd {}", fd.as_raw_fd()),
    ) {
        Err(Errno::ENOENT) => explain(
            "A process that starts now can't find the object: the name is what shm_open \
             looks up, and there is none.",
        ),
        other => bail!("expected ENOENT from shm_open after shm_unlink, got {other:?}"),
    }
    let unlinked = show_shmem("after shm_unlink", filled)?;
    // ANCHOR_END: unlink

    hold_point(
        hold,
        "sleep(50)",
        &[
            format!("grep {file} /proc/{pid}/maps   # ... (deleted)"),
            format!("ls -l /proc/{pid}/map_files/ | grep {file}"),
            "grep Shmem: /proc/meminfo".to_string(),
        ],
    );

    // ANCHOR: munmap
    let s = step(format!("munmap({:p}, {SIZE})", ptr.as_ptr()));
    // SAFETY: exactly the mapping made above; no pointer into it is used
    // afterwards.
    s.check(unsafe { munmap(ptr, SIZE) })?;
    s.ok("0: the last reference is gone, and so is the memory");
    let end = show_shmem("after munmap", unlinked)?;
    // ANCHOR_END: munmap

    let rose = filled - start;
    let fell = unlinked - end;
    if rose >= SIZE_KIB * 3 / 4 && fell >= SIZE_KIB * 3 / 4 {
        compare(
            "shm_unlink removes the name; the memory is freed once no process uses it",
            &format!(
                "Shmem rose by {rose} kB when we filled the 64 MiB ({SIZE_KIB} kB) object, stayed \
                 after shm_unlink ({:+} kB), and fell by {fell} kB at munmap",
                unlinked - filled
            ),
            "the kernel counts references: the name, each descriptor and each mapping. \
             shm_unlink drops only the first.",
        );
    } else {
        warn(format!(
            "Shmem moved by {rose:+} kB when we filled the object and by {:+} kB at munmap: \
             other processes on this machine changed Shmem at the same time. The facts above \
             (the (deleted) mapping, ENOENT) do not depend on it.",
            -fell
        ));
    }
    Ok(())
}
