//! Part 1. POSIX: `shm_unlink` while the object is mapped.
//!
//! `shm_unlink` removes the *name*. The memory stays as long as a mapping or
//! a descriptor refers to it: the mapping keeps working, `/proc/self/maps`
//! shows the path with `(deleted)`, a new `shm_open` of the name fails with
//! ENOENT, and the `Shmem:` line of `/proc/meminfo` falls only at `munmap`.

use std::num::NonZeroUsize;

use anyhow::{Context, bail};
use common::args::{Hold, hold_point};
use common::narrate::{compare, evidence, explain, fact, section, warn};
use common::{attempt, call, inspect, names, shm};
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
    call!(ftruncate(&fd, SIZE as libc::off_t))?; // sparse: allocates nothing yet
    call!(posix_fallocate(&fd, 0, SIZE as libc::off_t))
        .context("this part needs 64 MiB free in /dev/shm")?; // every page, now
    let filled = show_shmem("after allocating 64 MiB", start)?;

    let len = NonZeroUsize::new(SIZE).context("size 0")?;
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY: a fresh mapping at a kernel-chosen address overlaps no Rust
    // object; only this process uses it, through raw pointers.
    let ptr = unsafe { call!(mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0)) }?;
    call!(close(fd))?; // the mapping keeps its own reference
    // ANCHOR_END: create

    // ANCHOR: unlink
    call!(shm_unlink(name.as_str()))?;
    object.disarm(); // the name is gone; the memory goes with the mapping
    evidence(
        &format!("ls -l /dev/shm/{file}"),
        inspect::dev_shm_ls(&name),
    );
    let maps = inspect::maps_line_for(ptr.as_ptr() as usize).unwrap_or_default();
    evidence(&format!("grep {file} /proc/{pid}/maps"), [maps.as_str()]);
    if !maps.ends_with(&format!("/dev/shm/{file} (deleted)")) {
        bail!("expected the mapping of /dev/shm/{file} to show (deleted), saw {maps:?}");
    }

    let word = ptr.as_ptr().cast::<u64>();
    // SAFETY: word is the page-aligned start of our live, writable mapping;
    // no other process maps it.
    let back = unsafe {
        word.write_volatile(MAGIC);
        word.read_volatile()
    };
    fact(
        &format!("*(u64 *){word:p} = {MAGIC:#x}, read back"),
        format!("{back:#x}: the mapping still works"),
    );
    if back != MAGIC {
        bail!("read back {back:#x} instead of {MAGIC:#x}");
    }

    match attempt!(shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty())) {
        Err(Errno::ENOENT) => explain("shm_open looks up the name, and there is none."),
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
    // SAFETY: exactly the mapping made above; no pointer into it is used
    // afterwards.
    unsafe { call!(munmap(ptr, SIZE)) }?; // the last reference
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
