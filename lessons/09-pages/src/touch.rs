//! Part 4: the price of first touch.

use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::call;
use common::cleanup::Guard;
use common::narrate::{self, block, explain, fact, section, step, subsection, warn};
use common::pages::minor_faults;
use common::{names, shm};
use nix::fcntl::posix_fallocate;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_unlink};
use nix::sys::statvfs::statvfs;
use nix::unistd::{close, ftruncate};

use crate::util::word;

/// What something cost: wall time and this process's minor faults.
#[derive(Clone, Copy, Default)]
pub struct Cost {
    pub time: Duration,
    pub faults: i64,
}

/// Run `f` and measure it.
fn cost<T>(f: impl FnOnce() -> T) -> (T, Cost) {
    let (t, before) = (Instant::now(), minor_faults());
    let v = f();
    let faults = minor_faults() - before;
    (
        v,
        Cost {
            time: t.elapsed(),
            faults,
        },
    )
}

/// Write one word in every page of `len` bytes at `p`.
fn touch(p: NonNull<libc::c_void>, len: usize, page: usize) -> Cost {
    cost(|| {
        for off in (0..len).step_by(page) {
            // SAFETY: off < len: inside a live mapping of ours, aligned; no
            // other process maps it.
            unsafe { word(p, off).store(1, Ordering::Relaxed) };
        }
    })
    .1
}

/// A fresh object of `len` bytes (shm_open and ftruncate).
fn object(what: &str, len: usize) -> anyhow::Result<(String, OwnedFd, Guard)> {
    let name = names::unique_name(9, what);
    let (fd, guard) = shm::create(&name)?;
    call!(ftruncate(&fd, len as libc::off_t))?;
    Ok((name, fd, guard))
}

/// `mmap`, narrated with the step API rather than `call!`: the cost measured
/// is the system call's alone, not the narration's printing.
fn map(fd: &OwnedFd, len: usize, flags: MapFlags) -> anyhow::Result<(NonNull<libc::c_void>, Cost)> {
    let s = step(format!(
        "mmap(NULL, {len}, PROT_READ|PROT_WRITE, {}, {}, 0)",
        narrate::flags(flags),
        fd.as_raw_fd()
    ));
    let length = NonZeroUsize::new(len).context("length 0")?;
    let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY: a new mapping at an address the kernel picks overlaps nothing
    // of Rust's; it is only accessed through util::word.
    let (r, c) = cost(|| unsafe { mmap(None, length, rw, flags, fd, 0) });
    let p = s.check(r)?;
    s.ok(format!(
        "{:p} ({} faults, {:.1} ms)",
        p.as_ptr(),
        c.faults,
        ms(c.time)
    ));
    Ok((p, c))
}

fn remove(
    name: &str,
    fd: OwnedFd,
    guard: Guard,
    p: NonNull<libc::c_void>,
    len: usize,
) -> anyhow::Result<()> {
    // SAFETY: exactly a mapping made above; nothing points into it later.
    unsafe { call!(munmap(p, len)) }?;
    call!(close(fd))?;
    call!(shm_unlink(name))?;
    guard.disarm(); // removed by the lesson itself
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The MiB this part may use: `--mib`, or less when /dev/shm has less free;
/// 0 when not even 2 MiB are free (a touch beyond the free space is a SIGBUS).
fn usable_mib(mib: usize) -> usize {
    let free = statvfs("/dev/shm").map(|s| s.blocks_available() * s.fragment_size());
    match free {
        Ok(free) if (free >> 20) < mib as u64 * 2 => {
            let fit = ((free >> 20) / 2) as usize;
            warn(format!(
                "/dev/shm has only {} KiB free: touching {fit} MiB, not {mib}",
                free >> 10
            ));
            fit
        }
        _ => mib,
    }
}

/// One row of the table.
pub struct Row {
    pub how: &'static str,
    pub prepare: Cost,
    pub touch: Cost,
}

pub fn part4(page: usize, mib: usize) -> anyhow::Result<()> {
    section("4. The price of first touch");
    let mib = usable_mib(mib);
    if mib == 0 {
        warn("the first page beyond the free space would raise SIGBUS. Skipping part 4.");
        return Ok(());
    }
    let len = mib << 20;
    fact(
        "size",
        format!("{mib} MiB = {} pages of {page} bytes", len / page),
    );

    // ANCHOR: rows
    subsection("a fresh mapping, touched, then touched a second time");
    let (name, fd, guard) = object("touch", len)?;
    let (p, mapped) = map(&fd, len, MapFlags::MAP_SHARED)?;
    let first = touch(p, len, page);
    let again = touch(p, len, page);
    remove(&name, fd, guard, p, len)?;

    subsection("MAP_POPULATE: mmap faults the pages in itself");
    let (name, fd, guard) = object("populate", len)?;
    let (p, populated) = map(&fd, len, MapFlags::MAP_SHARED | MapFlags::MAP_POPULATE)?;
    let after_populate = touch(p, len, page);
    remove(&name, fd, guard, p, len)?;

    subsection("posix_fallocate: allocate the pages before mapping them");
    let (name, fd, guard) = object("fallocate", len)?;
    let s = step(format!("posix_fallocate({}, 0, {len})", fd.as_raw_fd()));
    let (r, allocated) = cost(|| posix_fallocate(&fd, 0, len as libc::off_t));
    s.check(r)?;
    s.ok(format!("0 ({:.1} ms)", ms(allocated.time)));
    let (p, _) = map(&fd, len, MapFlags::MAP_SHARED)?;
    let after_fallocate = touch(p, len, page);
    remove(&name, fd, guard, p, len)?;
    // ANCHOR_END: rows

    let rows = [
        Row {
            how: "fresh mapping",
            prepare: mapped,
            touch: first,
        },
        Row {
            how: "MAP_POPULATE",
            prepare: populated,
            touch: after_populate,
        },
        Row {
            how: "posix_fallocate",
            prepare: allocated,
            touch: after_fallocate,
        },
        Row {
            how: "a second time",
            prepare: Cost::default(),
            touch: again,
        },
    ];
    table(&rows, mib);
    conclude(&rows, mib, page);
    Ok(())
}

fn table(rows: &[Row], mib: usize) {
    let mut out = format!(
        "{:<16} {:>11} {:>8} {:>10} {:>8} {:>11}\n",
        "", "prepare ms", "faults", "touch ms", "faults", "faults/MiB"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<16} {:>11.1} {:>8} {:>10.1} {:>8} {:>11}\n",
            r.how,
            ms(r.prepare.time),
            r.prepare.faults,
            ms(r.touch.time),
            r.touch.faults,
            r.touch.faults / mib as i64
        ));
    }
    explain(format!(
        "Touching {mib} MiB, one word a page (times in ms, faults from ru_minflt):"
    ));
    block(out);
}

/// What the table says, computed from its numbers: each sentence is said
/// only where this run's counts bear it out.
fn conclude(rows: &[Row], mib: usize, page: usize) {
    let [fresh, populate, fallocate, second] = rows else {
        return;
    };
    let pages = (mib << 20) / page;
    let per_fault = |c: Cost| ms(c.time) * 1e3 / c.faults.max(1) as f64;
    let (first, mapped) = (fresh.touch.faults, fallocate.touch.faults);
    if first == pages as i64 {
        explain(format!(
            "First touch of a fresh mapping: {first} faults for {pages} pages ({} per MiB), \
             {:.1} ms, {:.2} µs a fault: the kernel allocates a page, zeroes it and maps it, \
             one page at a time.",
            first / mib as i64,
            ms(fresh.touch.time),
            per_fault(fresh.touch)
        ));
    } else {
        warn(format!(
            "First touch of a fresh mapping: {first} faults for {pages} pages, not one a page: \
             some faults mapped more than one page (huge pages on /dev/shm? see part 5), or \
             something else faulted meanwhile."
        ));
    }
    if populate.prepare.faults > 0 && populate.touch.faults == 0 {
        explain(format!(
            "MAP_POPULATE moved that work into mmap ({} faults, {:.1} ms), and the touch after \
             it took 0 faults: the cost is paid up front, not avoided.",
            populate.prepare.faults,
            ms(populate.prepare.time)
        ));
    } else {
        warn(format!(
            "MAP_POPULATE: {} faults inside mmap, {} in the touch after it",
            populate.prepare.faults, populate.touch.faults
        ));
    }
    let (cheap, dear) = (per_fault(fallocate.touch), per_fault(fresh.touch));
    explain(format!(
        "posix_fallocate allocated the pages first ({:.1} ms, {} faults). The touch still \
         took {mapped} faults{}. Each cost {cheap:.2} µs against {dear:.2} on the fresh \
         mapping: {}.",
        ms(fallocate.prepare.time),
        fallocate.prepare.faults,
        if mapped == first {
            ", as many as on the fresh mapping: a page that exists is not yet mapped"
        } else {
            ""
        },
        if cheap < dear {
            "cheaper, because the page was already allocated"
        } else {
            "no cheaper in this run (times are noisy; the counts are not)"
        }
    ));
    if second.touch.faults == 0 {
        explain(format!(
            "A second touch: 0 faults, {:.1} ms. Once mapped, a page costs nothing more to \
             reach: only the first touch pays.",
            ms(second.touch.time)
        ));
    } else {
        warn(format!(
            "A second touch took {} faults: something unmapped pages meanwhile (memory \
             pressure?)",
            second.touch.faults
        ));
    }
}
