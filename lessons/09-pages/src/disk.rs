//! Part 3: a disk file mapped `MAP_SHARED` against a shm object.

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::call;
use common::narrate::{evidence, explain, fact, section, subsection, warn};
use common::pages;
use common::{cleanup, inspect, names, shm};
use nix::fcntl::{OFlag, open, posix_fallocate};
use nix::sys::mman::{MapFlags, MsFlags, ProtFlags, mmap, msync, munmap, shm_unlink};
use nix::sys::stat::Mode;
use nix::sys::statvfs::statvfs;
use nix::unistd::{ForkResult, fork, fsync, ftruncate, getpid, unlink};

use crate::util::{self, Report, word};

/// How much each of the two is: enough to stand out in `/proc/meminfo`.
pub const SIZE: usize = 16 << 20;

/// The `/proc/meminfo` lines that tell the two apart.
const MEMINFO: [&str; 4] = ["Dirty", "Writeback", "Cached", "Shmem"];

fn meminfo() -> Vec<u64> {
    MEMINFO
        .iter()
        .map(|f| inspect::meminfo_kib(f).unwrap_or(0))
        .collect()
}

/// `before → after (+delta)` for every meminfo line.
fn show_meminfo(when: &str, before: &[u64], after: &[u64]) {
    let lines = MEMINFO
        .iter()
        .zip(before.iter().zip(after))
        .map(|(f, (b, a))| {
            format!(
                "{f:<10} {b:>9} kB -> {a:>9} kB ({:+} kB)",
                *a as i64 - *b as i64
            )
        });
    evidence(
        &format!("grep -E '^(Dirty|Writeback|Cached|Shmem):' /proc/meminfo   # {when}"),
        lines,
    );
}

/// The dirty kB of the mapping at `addr`, from our own smaps.
fn dirty_kib(addr: NonNull<libc::c_void>) -> (u64, u64) {
    let sm = pages::smaps_of("self", addr.as_ptr() as usize);
    let get = |f: &str| sm.as_ref().and_then(|s| s.kib(f)).unwrap_or(0);
    (get("Shared_Dirty") + get("Private_Dirty"), get("Rss"))
}

fn show_dirty(label: &str, addr: NonNull<libc::c_void>) -> u64 {
    let (dirty, rss) = dirty_kib(addr);
    fact(
        &format!("smaps of the {label} mapping"),
        format!("Rss {rss} kB, dirty (Shared_Dirty + Private_Dirty) {dirty} kB"),
    );
    dirty
}

/// Time one call; `f` narrates and checks it.
fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Duration)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed()))
}

pub fn part3(page: usize) -> anyhow::Result<()> {
    section("3. A disk file mapped MAP_SHARED, against a shm object");
    let Some((dir, fstype)) = inspect::disk_dir() else {
        warn(
            "no directory on a disk filesystem here (/var/tmp and the temporary directory are \
             in memory), so there is no write-back to show. Skipping part 3.",
        );
        return Ok(());
    };
    // The shm object's pages are written one by one, not allocated first: on
    // a /dev/shm with less free space the first page beyond it would kill the
    // lesson with SIGBUS (lesson 3) before any cleanup could run.
    let free = statvfs("/dev/shm").map_or(0, |s| s.blocks_available() * s.fragment_size());
    if free < SIZE as u64 {
        warn(format!(
            "/dev/shm has only {} KiB free, and this part writes {} MiB there: the first page \
             beyond the free space would raise SIGBUS. Skipping part 3.",
            free >> 10,
            SIZE >> 20
        ));
        return Ok(());
    }
    // ANCHOR: open_both
    let path = dir.join(format!("{}9-{}-disk", names::PREFIX, getpid()));
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    let file = call!(open(path.as_path(), flags, Mode::from_bits_truncate(0o600)))?;
    let file_guard = cleanup::path(&path); // removed on every path
    fact("it is on", fstype);
    let name = names::unique_name(9, "mem");
    let (obj, object) = shm::create(&name)?;
    for fd in [&file, &obj] {
        call!(ftruncate(fd, SIZE as libc::off_t))?;
    }
    // The file's blocks, reserved now: a full disk is ENOSPC here, not
    // SIGBUS at a store into the mapping.
    call!(posix_fallocate(&file, 0, SIZE as libc::off_t))?;
    let (len, rw) = (
        NonZeroUsize::new(SIZE).context("size 0")?,
        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
    );
    // SAFETY: new mappings at addresses the kernel picks overlap nothing of
    // Rust's; they are only accessed through util::word.
    let on_disk = unsafe { call!(mmap(None, len, rw, MapFlags::MAP_SHARED, &file, 0)) }?;
    // SAFETY: as above.
    let in_mem = unsafe { call!(mmap(None, len, rw, MapFlags::MAP_SHARED, &obj, 0)) }?;
    // ANCHOR_END: open_both

    subsection(format!(
        "write every page of both ({} MiB each), then a child reads them",
        SIZE >> 20
    ));
    let before = meminfo();
    for off in (0..SIZE).step_by(page) {
        // SAFETY: off < SIZE: inside both live mappings, 8-byte aligned.
        unsafe {
            word(on_disk, off).store(off as u64 + 1, Ordering::Relaxed);
            word(in_mem, off).store(off as u64 + 1, Ordering::Relaxed);
        }
    }
    let after = meminfo();
    show_meminfo("before -> after the writes", &before, &after);
    let last = SIZE - page;
    let report = Report::new()?;
    // SAFETY: the child does atomic loads, write(2) and _exit.
    let child = match unsafe { call!(fork()) }? {
        ForkResult::Child => {
            // SAFETY: inside both live mappings, inherited across fork.
            let seen = unsafe {
                [
                    word(on_disk, last).load(Ordering::SeqCst),
                    word(in_mem, last).load(Ordering::SeqCst),
                ]
            };
            report.send(&seen.map(|v| v as i64));
            // SAFETY: _exit runs no destructor of the parent's objects.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => child,
    };
    let guard = cleanup::child(child);
    let seen = report.receive(2)?;
    util::reap_ok(child, guard)?;
    fact(
        "the child reads the last page's first word",
        format!(
            "file {:#x}, shm {:#x} (we wrote {:#x})",
            seen[0],
            seen[1],
            last + 1
        ),
    );
    explain_meminfo(&before, &after);
    let file_dirty = show_dirty("file", on_disk);
    let shm_dirty = show_dirty("shm", in_mem);

    // ANCHOR: msync
    subsection("msync(MS_SYNC) on each, timed");
    let before = meminfo();
    let mut took = Vec::new();
    for (p, what) in [(on_disk, "the file"), (in_mem, "the shm object")] {
        // SAFETY: p and SIZE are exactly a live mapping made above.
        let ((), t) = timed(|| unsafe { call!(msync(p, SIZE, MsFlags::MS_SYNC)) })?;
        fact(
            &format!("msync of {what} took"),
            format!("{:.3} ms", t.as_secs_f64() * 1e3),
        );
        took.push(t);
    }
    show_meminfo("before -> after msync", &before, &meminfo());
    let file_clean = show_dirty("file", on_disk);
    let shm_still = show_dirty("shm", in_mem);
    // ANCHOR_END: msync

    subsection("write the file's pages again, then fsync instead of msync");
    for off in (0..SIZE).step_by(page) {
        // SAFETY: inside the live file mapping; no other process maps it now.
        unsafe { word(on_disk, off).store(off as u64 + 2, Ordering::Relaxed) };
    }
    let redirtied = show_dirty("file", on_disk);
    let ((), fsync_took) = timed(|| call!(fsync(&file)))?;
    fact(
        "fsync took",
        format!("{:.3} ms", fsync_took.as_secs_f64() * 1e3),
    );
    let after_fsync = show_dirty("file", on_disk);
    conclude(
        [
            file_dirty,
            shm_dirty,
            file_clean,
            shm_still,
            redirtied,
            after_fsync,
        ],
        took[0],
        took[1],
        fsync_took,
    );

    for p in [on_disk, in_mem] {
        // SAFETY: exactly a mapping made above; nothing points into it later.
        unsafe { call!(munmap(p, SIZE)) }?;
    }
    drop(file);
    call!(unlink(path.as_path()))?;
    file_guard.disarm(); // removed by the lesson itself
    drop(obj);
    call!(shm_unlink(name.as_str()))?;
    object.disarm();
    Ok(())
}

/// What the meminfo deltas say (they are machine-wide: others move them too).
fn explain_meminfo(before: &[u64], after: &[u64]) {
    let delta = |i: usize| after[i] as i64 - before[i] as i64;
    let (dirty, shmem, size) = (delta(0), delta(3), (SIZE >> 10) as i64);
    explain(
        "Both kinds of mapping share pages between processes: the child read what we wrote \
         in each. In /proc/meminfo (Documentation/filesystems/proc.rst), Dirty counts file \
         pages waiting to be written to disk, Shmem counts tmpfs and shared anonymous pages, \
         and Cached counts both.",
    );
    if dirty >= size / 2 && dirty < size * 3 / 2 && shmem >= size / 2 {
        explain(format!(
            "Here Dirty rose by {dirty} kB and Shmem by {shmem} kB, for {size} kB of each: \
             Dirty by one object's worth, not two. The file's pages wait for the disk; the shm \
             object's have no disk to wait for."
        ));
    } else {
        warn(format!(
            "Dirty moved by {dirty:+} kB and Shmem by {shmem:+} kB, not about {size} kB each: \
             other programs (or the kernel's own write-back) changed these machine-wide \
             counters meanwhile. The smaps lines below count our two mappings alone."
        ));
    }
}

/// What the numbers say about write-back and msync.
fn conclude(kib: [u64; 6], file_msync: Duration, shm_msync: Duration, fsync_took: Duration) {
    let [
        file_dirty,
        shm_dirty,
        file_clean,
        shm_still,
        redirtied,
        after_fsync,
    ] = kib;
    let size_kib = (SIZE >> 10) as u64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if file_dirty == size_kib && file_clean == 0 && after_fsync == 0 && redirtied == size_kib {
        explain(format!(
            "msync(MS_SYNC) took {:.3} ms on the file and wrote its {size_kib} kB of dirty \
             pages to the disk: smaps says {file_dirty} kB dirty before, {file_clean} kB after. \
             fsync did the same work after the pages were written again ({:.3} ms, {redirtied} \
             kB dirty before, {after_fsync} kB after): for a file mapping the two are the same \
             write-back.",
            ms(file_msync),
            ms(fsync_took)
        ));
    } else {
        warn(format!(
            "unexpected dirty counts for the file: {file_dirty} kB, after msync {file_clean} \
             kB, again {redirtied} kB, after fsync {after_fsync} kB (of {size_kib} kB)"
        ));
    }
    if shm_dirty == size_kib && shm_still == size_kib {
        explain(format!(
            "On the shm object msync took {:.3} ms (the file: {:.3} ms) and changed \
             nothing: its {shm_still} kB are still dirty, because there is no disk to write \
             them to. Neither call made anything visible to another process: the child read \
             our writes before any msync. msync is for durability of a file (that the \
             data survives a crash), not for sharing.",
            ms(shm_msync),
            ms(file_msync)
        ));
    } else {
        warn(format!(
            "unexpected dirty counts for the shm object: {shm_dirty} kB, after msync \
             {shm_still} kB (of {size_kib} kB)"
        ));
    }
}
