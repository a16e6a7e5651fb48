//! Scenario 2: `/dev/shm` on a disk filesystem: a scratch directory on ext4
//! (or whatever the disk uses) bind-mounted over `/dev/shm`. The object is an
//! ordinary file, and what is written to it is written back to the disk: the
//! kernel's own figures show it.

use std::os::fd::OwnedFd;
use std::path::Path;

use common::args::Hold;
use common::narrate::{self, evidence, explain, fact, note};
use common::{call, inspect, shm};
use nix::mount::{MsFlags, mount};
use nix::sys::uio::pwrite;
use nix::unistd::{fsync, ftruncate, getpid};

use crate::full::BIG;
use crate::glibc::{self, this_libc};
use crate::show::{locate, look, remove, result};

// ANCHOR: on_disk
pub fn run(name: &str, scratch: &Path, hold: Hold) -> anyhow::Result<()> {
    let none = None::<&str>;
    call!(mount(
        Some(scratch),
        "/dev/shm",
        none,
        MsFlags::MS_BIND,
        none
    ))?;
    let libc = this_libc();
    if libc.searches {
        return glibc::would_leave_the_staging(&libc, 2, "on disk");
    }
    let (fd, object) = shm::create(name)?;
    let page = inspect::page_size();
    call!(ftruncate(&fd, page as libc::off_t))?;
    call!(pwrite(&fd, b"hello".as_slice(), 0))?;
    let fs = locate(name)?;
    let dir = scratch.display();
    evidence(
        &format!("ls -l {dir}   # the same file, by its path on disk"),
        inspect::shm_entries_in(scratch)
            .iter()
            .map(inspect::ShmEntry::ls_line),
    );
    look(hold, &[&format!("ls -l {dir}"), "findmnt -N PID /dev/shm"]);
    write_back(&fd, page)?;
    remove(name, fd, object)?;
    explain(
        "An ordinary file on the disk: its pages go to the device (fsync above), and had we \
         not unlinked it, it would still be there after a reboot, unlike anything on tmpfs.",
    );
    result(2, "on disk", &format!("shm_open worked; {fs}"));
    Ok(())
}
// ANCHOR_END: on_disk

// ANCHOR: write_back
/// The kernel's own figures around a 4 MiB `pwrite` and an `fsync`: this
/// process's `write_bytes` (`/proc/self/io`: bytes it made dirty for the
/// storage layer) and the machine's `Dirty` and `Writeback` (`/proc/meminfo`).
fn write_back(fd: &OwnedFd, at: usize) -> anyhow::Result<()> {
    narrate::subsection("writeback, in the kernel's own figures");
    sysctl("dirty_writeback_centisecs");
    sysctl("dirty_expire_centisecs");
    let before = Figures::now("before the write");
    call!(pwrite(fd, vec![0x5a_u8; BIG].as_slice(), at as libc::off_t))?;
    let dirtied = Figures::now("after the write");
    call!(fsync(fd))?;
    let synced = Figures::now("after fsync");
    let (Some(b), Some(d)) = (before.write_bytes, dirtied.write_bytes) else {
        note("/proc/self/io is missing (no task I/O accounting in this kernel): not shown.");
        return Ok(());
    };
    let grew = d.saturating_sub(b);
    fact("this process's write_bytes", format!("+{grew} bytes"));
    if grew < BIG as u64 {
        explain("write_bytes did not grow by our 4 MiB: a memory filesystem, with no disk.");
        return Ok(());
    }
    explain(format!(
        "The kernel counted our {BIG} bytes as dirtied for the disk. Dirty (everyone's) went \
         {} kB, then {} kB at fsync; without it a flusher thread writes them once too old.",
        change(&before, &dirtied),
        change(&dirtied, &synced),
    ));
    Ok(())
}
// ANCHOR_END: write_back

/// A vm sysctl, read from /proc/sys/vm, with what it means.
fn sysctl(knob: &str) {
    let what = match knob {
        "dirty_writeback_centisecs" => "the flusher threads wake up this often",
        _ => "dirty data this old is written at their next wake-up",
    };
    let v = std::fs::read_to_string(format!("/proc/sys/vm/{knob}"));
    let v = v.map_or_else(|_| "unreadable".into(), |v| v.trim().to_string());
    fact(&format!("vm.{knob}"), format!("{v} ({what}; in 1/100 s)"));
}

/// `write_bytes` of `/proc/self/io`, and `Dirty` of `/proc/meminfo` (kB),
/// shown as evidence (with `Writeback`) when read.
struct Figures {
    write_bytes: Option<u64>,
    dirty: Option<u64>,
}

impl Figures {
    fn now(when: &str) -> Figures {
        let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
        let write_bytes = io
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))
            .and_then(|v| v.trim().parse().ok());
        let dirty = inspect::meminfo_kib("Dirty");
        let writeback = inspect::meminfo_kib("Writeback");
        let show = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
        evidence(
            &format!(
                "grep -E '^(Dirty|Writeback):' /proc/meminfo; grep ^write_bytes \
                 /proc/{}/io   # {when}",
                getpid()
            ),
            [
                format!("Dirty: {} kB", show(dirty)),
                format!("Writeback: {} kB", show(writeback)),
                format!("write_bytes: {}", show(write_bytes)),
            ],
        );
        Figures { write_bytes, dirty }
    }
}

/// How `Dirty` moved from one reading to the next, in kB (`+4100`).
fn change(from: &Figures, to: &Figures) -> String {
    match (from.dirty, to.dirty) {
        (Some(a), Some(b)) => format!("{:+}", b as i64 - a as i64),
        _ => "?".into(),
    }
}
