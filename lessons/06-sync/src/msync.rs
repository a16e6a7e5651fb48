//! Part 6: the msync myth. A store is visible to the other process at once;
//! msync(MS_SYNC) is about getting a file's pages onto storage; order between
//! processes comes from the memory model.

use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::children::{die_with_parent, state, wait_until};
use common::narrate::{compare, evidence, explain, fact, note, section, step, subsection, warn};
use common::{call, cleanup, inspect, names, pages};
use nix::fcntl::{OFlag, open};
use nix::sys::mman::{MapFlags, MsFlags, ProtFlags, mmap, msync, munmap};
use nix::sys::stat::Mode;
use nix::sys::uio::pread;
use nix::unistd::{ForkResult, fork, ftruncate, unlink};

use crate::ordering;
use crate::shared::{OnlyAtomics, Shared, reap};

/// What the child stores.
const MAGIC: u64 = 0xdead_beef;

/// A value written without msync.
#[repr(C)]
struct Posted {
    value: AtomicU64,
    ack: AtomicU64,
}
// SAFETY: every field is an atomic.
unsafe impl OnlyAtomics for Posted {}

pub fn run(shared: &Shared) -> anyhow::Result<()> {
    section("6. The msync myth");
    compare(
        "msync \"writes the cached data back to the physical memory so that other processes \
         can listen for these changes\"",
        "see below: a store is visible to the other process at once, without msync",
        "a MAP_SHARED mapping is the same physical page in every process (mmap(2): \"updates \
         to the mapping are visible to other processes mapping the same region\"). There is no \
         cache to write back between processes; CPU caches are kept coherent by the hardware.",
    );
    visible(shared)?;
    ms_sync(shared)?;
    ordering::message_passing(shared)?;
    ordering::store_buffer(shared)
}

/// A child stores, the parent sees it at once; nobody calls msync.
fn visible(shared: &Shared) -> anyhow::Result<()> {
    subsection("a child stores, the parent sees it; nobody calls msync");
    // ANCHOR: visible
    let posted: &Posted = shared.area(3, 512);
    // SAFETY: the child does atomic stores/loads, prctl, nanosleep and _exit
    // (the fork contract in shared.rs).
    let child = match unsafe { call!(fork()) }? {
        ForkResult::Child => {
            die_with_parent();
            posted.value.store(MAGIC, Ordering::Relaxed); // a plain store; no msync
            while posted.ack.load(Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(1)); // nanosleep: stay alive
            }
            // SAFETY: _exit skips atexit handlers and the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => child,
    };
    let guard = cleanup::child(child);
    let seen = wait_until(Duration::from_secs(10), || {
        posted.value.load(Ordering::Relaxed) == MAGIC
    });
    let alive = state(child).map_or("gone".to_string(), |c| c.to_string());
    let value = posted.value.load(Ordering::SeqCst);
    posted.ack.store(1, Ordering::SeqCst); // now the child may exit
    reap(child, guard, Duration::from_secs(10))?;
    // ANCHOR_END: visible
    if !seen {
        bail!("the child's store did not become visible within 10 s (read {value:#x})");
    }
    fact(
        "the parent read",
        format!(
            "{value:#x} while the child was still running (state {alive}); msync was never called"
        ),
    );
    Ok(())
}

/// What MS_ASYNC and MS_SYNC do to the dirty pages of a disk file and of
/// the tmpfs object, from the kernel's own figures.
fn ms_sync(shared: &Shared) -> anyhow::Result<()> {
    subsection("what MS_ASYNC and MS_SYNC do: a file on disk against tmpfs");
    note(format!(
        "this kernel is {}. Since Linux 2.6.19, msync(MS_ASYNC) does nothing at all: the kernel \
         already tracks dirty pages of shared file mappings and writes them back on its own \
         (msync(2)).",
        inspect::kernel_release()
    ));
    let Some((dir, fstype)) = inspect::disk_dir() else {
        warn(
            "no disk-backed directory found (/var/tmp and the temporary directory are tmpfs \
             here), so MS_SYNC cannot be compared with a disk. Skipping that comparison.",
        );
        return Ok(());
    };
    let path = dir.join(format!("{}6-{}-msync", names::PREFIX, std::process::id()));
    fact(
        "a disk-backed directory",
        format!("{} ({})", dir.display(), fstype.name),
    );
    let page = shared.page;
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let mode = Mode::from_bits_truncate(0o600);
    // ANCHOR: ms_sync
    let fd = call!(open(
        path.as_path(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
        mode
    ))?;
    let file_guard = cleanup::path(&path);
    call!(ftruncate(&fd, page as libc::off_t))?;
    let len = NonZeroUsize::new(page).context("zero page size")?;
    // SAFETY: a fresh mapping at a kernel-chosen address, of a file only this
    // process has open; reached only through raw pointers.
    let file_page = unsafe { call!(mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0)) }?;
    let tmpfs_page = NonNull::new(shared.at(4, 0).cast::<libc::c_void>()).context("null")?;
    let mut rows = Vec::new();
    for (label, target) in [("tmpfs object", tmpfs_page), ("disk file", file_page)] {
        // SAFETY: target is the start of a live, writable page of ours; no
        // other process maps it now, so there is nothing to order. Volatile
        // only makes sure the store is made.
        unsafe { target.as_ptr().cast::<u64>().write_volatile(MAGIC) };
        let stored = dirty_kib(target);
        // SAFETY (both msync calls): target/page lie inside a live mapping.
        unsafe { call!(msync(target, page, MsFlags::MS_ASYNC)) }?;
        let after_async = dirty_kib(target);
        let s = step(format!("msync({:p}, {page}, MS_SYNC)", target.as_ptr())); // timed:
        let t = Instant::now();
        let synced = unsafe { msync(target, page, MsFlags::MS_SYNC) };
        let took = t.elapsed(); // the system call only, not the narration
        s.check(synced)?;
        s.ok(0);
        rows.push((label, [stored, after_async, dirty_kib(target)], took));
    }
    // ANCHOR_END: ms_sync
    let mut buf = [0u8; 8];
    call!(pread(fd.as_fd(), &mut buf[..], 0))?;
    fact(
        "the bytes read(2) returns",
        format!("{:#x}", u64::from_ne_bytes(buf)),
    );
    explain(
        "read(2) sees the stores made through the mapping, msync or not: both use the same page \
         in the page cache.",
    );
    show_rows(&rows, fstype.name);
    // SAFETY: exactly the file mapping made above; nothing refers into it.
    unsafe { call!(munmap(file_page, page)) }?;
    drop(fd);
    call!(unlink(path.as_path()))?;
    file_guard.disarm();
    Ok(())
}

/// The mapping's dirty memory in KiB (`Shared_Dirty` + `Private_Dirty` of
/// its block in /proc/self/smaps).
fn dirty_kib(target: NonNull<libc::c_void>) -> u64 {
    let smaps = pages::smaps_of("self", target.as_ptr() as usize);
    let kib = |f| smaps.as_ref().and_then(|m| m.kib(f)).unwrap_or(0);
    kib("Shared_Dirty") + kib("Private_Dirty")
}

type Row = (&'static str, [u64; 3], Duration);

/// The dirty figures as a table, and what they show.
fn show_rows(rows: &[Row], fstype: &str) {
    evidence(
        &format!(
            "grep -E '^[0-9a-f]|_Dirty' /proc/{}/smaps   # dirty KiB of each mapping",
            std::process::id()
        ),
        std::iter::once(format!(
            "{:<28} {:>12} {:>14} {:>13} {:>14}",
            "", "after store", "after MS_ASYNC", "after MS_SYNC", "MS_SYNC took"
        ))
        .chain(rows.iter().map(|(label, kib, took)| {
            let label = if *label == "disk file" {
                format!("disk file ({fstype})")
            } else {
                label.to_string()
            };
            format!(
                "{label:<28} {:>9} kB {:>11} kB {:>10} kB {:>11.1} us",
                kib[0],
                kib[1],
                kib[2],
                took.as_nanos() as f64 / 1000.0
            )
        })),
    );
    let [(_, tmpfs, tmpfs_took), (_, disk, disk_took)] = rows else {
        return;
    };
    explain(verdict(*tmpfs, *disk, *tmpfs_took, *disk_took));
}

/// What this run's dirty figures (KiB after the store, after MS_ASYNC, after
/// MS_SYNC) and MS_SYNC timings show, in words.
fn verdict(tmpfs: [u64; 3], disk: [u64; 3], tmpfs_took: Duration, disk_took: Duration) -> String {
    let mut said = Vec::new();
    if disk[1] == disk[0] && tmpfs[1] == tmpfs[0] {
        said.push(
            "MS_ASYNC changed nothing: every dirty page stayed dirty, so it started no write \
             (since Linux 2.6.19 it does nothing at all, msync(2))."
                .to_string(),
        );
    } else {
        said.push(format!(
            "The dirty figures changed across MS_ASYNC (disk {} -> {} kB, tmpfs {} -> {} kB): \
             the kernel's own write-back ran in between; MS_ASYNC itself starts nothing since \
             Linux 2.6.19 (msync(2)).",
            disk[0], disk[1], tmpfs[0], tmpfs[1]
        ));
    }
    if disk[0] > 0 && disk[2] == 0 {
        said.push(format!(
            "MS_SYNC wrote the disk file's dirty page to the device and waited for it: the page \
             is clean now, and the call took {:.1} us.",
            disk_took.as_nanos() as f64 / 1000.0
        ));
    } else {
        said.push(format!(
            "The disk file had {} kB dirty before MS_SYNC and {} kB after it.",
            disk[0], disk[2]
        ));
    }
    if tmpfs[2] == tmpfs[0] && tmpfs[0] > 0 {
        said.push(
            "On the tmpfs object MS_SYNC left every page dirty: tmpfs has no storage to write \
             them to (its fsync does nothing)."
                .to_string(),
        );
    }
    let ratio = disk_took.as_secs_f64() / tmpfs_took.as_secs_f64().max(1e-9);
    let wrote = disk[0] > 0 && disk[2] == 0;
    said.push(if ratio >= 2.0 {
        format!("Here MS_SYNC took {ratio:.0}x as long on the disk file as on tmpfs.")
    } else if ratio >= 0.5 && wrote {
        "Here MS_SYNC took about as long on the disk file as on tmpfs: the device took the \
         write quickly."
            .to_string()
    } else {
        format!(
            "Here MS_SYNC took {:.1} us on the disk file and {:.1} us on tmpfs.",
            disk_took.as_nanos() as f64 / 1000.0,
            tmpfs_took.as_nanos() as f64 / 1000.0
        )
    });
    said.push(
        "So msync is about getting a file-backed mapping onto storage (like fsync, for crash \
         safety), never about other processes."
            .to_string(),
    );
    said.join(" ")
}
