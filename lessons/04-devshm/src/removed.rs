//! Scenario 3: `/dev/shm` removed. A 2010 machine is staged in a new root:
//! a ramfs holding a udev tmpfs on `/dev` (without `shm`) and `/proc`. Today's
//! glibc fails with ENOENT; glibc 2.33's search, replayed, picks `/dev/`: the
//! article's `/dev/mymem`.

use std::path::Path;

use anyhow::bail;
use common::args::Hold;
use common::narrate::{compare, evidence, explain, fact, section};
use common::report::errno_name;
use common::{attempt, call, cleanup, inspect, names};
use nix::fcntl::{OFlag, open};
use nix::mount::{MsFlags, mount};
use nix::sys::mman::shm_open;
use nix::sys::stat::Mode;
use nix::unistd::{chdir, chroot, mkdir, unlink};

use crate::glibc::{Libc, this_libc, where_is_shmfs_2_33};
use crate::show::{look, remove, result};

// ANCHOR: removed
pub fn run(name: &str, scratch: &Path, hold: Hold) -> anyhow::Result<()> {
    stage_2010_root(scratch)?;
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    let libc = this_libc();
    let outcome = shm_open_here(name, flags, &libc)?;
    look(
        hold,
        &[
            "cat /proc/PID/mounts",
            "ls -l /proc/PID/root/dev/   # no shm",
        ],
    );
    libc.show();
    section("What glibc 2.33 would have done: where_is_shmfs(), in Rust");
    let dir = where_is_shmfs_2_33();
    let used = dir.as_deref().unwrap_or("nothing (ENOSYS)");
    fact("glibc 2.33 would use", used);
    if let Some(d) = &dir {
        open_by_hand(d, name, flags)?;
    }
    let on = if libc.searches {
        String::new()
    } else {
        format!(" on {libc}")
    };
    compare(
        "after rmdir /dev/shm, \"the shared memory file is created in the /dev/ directory\"",
        &format!("{outcome}{on}; glibc 2.33's search would have picked {used}"),
        "glibc up to 2.33 took the first tmpfs of /proc/mounts when /dev/shm was not one: in \
         2010, udev's /dev. Since 2.34 glibc always uses /dev/shm, and ENOENT without it.",
    );
    let glibc_2_33 = format!("glibc 2.33's where_is_shmfs would have used {used}");
    result(3, "removed", &format!("{outcome}; {glibc_2_33}"));
    Ok(())
}
// ANCHOR_END: removed

// ANCHOR: shm_open
/// This libc's shm_open without /dev/shm: ENOENT since glibc 2.34 (and on
/// musl). A glibc that still searches is not called: its search is replayed.
fn shm_open_here(name: &str, flags: OFlag, libc: &Libc) -> anyhow::Result<String> {
    if libc.searches {
        explain(format!(
            "{libc} is older than 2.34: not called, its search is replayed below."
        ));
        return Ok(format!("shm_open not called on {libc}"));
    }
    match attempt!(shm_open(name, flags, Mode::from_bits_truncate(0o600))) {
        Ok(fd) => {
            remove(name, fd, cleanup::posix_object(name))?;
            bail!("shm_open worked without /dev/shm: this libc does not act like glibc 2.34+");
        }
        Err(errno) => Ok(format!("shm_open failed with {}", errno_name(errno))),
    }
}
// ANCHOR_END: shm_open

// ANCHOR: stage
/// A new root with a 2010 mount table: a ramfs (nothing reaches the disk), a
/// udev tmpfs on its /dev with no shm directory, and /proc. After chroot,
/// /proc/mounts lists them in this order, followed by whatever the host has
/// mounted under /proc (the recursive bind brings those too).
fn stage_2010_root(root: &Path) -> anyhow::Result<()> {
    explain("A 2010 machine without /dev/shm, in a root of our own: a ramfs, udev's /dev, /proc.");
    let none = None::<&str>;
    call!(mount(
        Some("rootfs"),
        root,
        Some("ramfs"),
        MsFlags::empty(),
        none
    ))?;
    let (dev, proc) = (root.join("dev"), root.join("proc"));
    call!(mkdir(dev.as_path(), Mode::from_bits_truncate(0o755)))?;
    call!(mkdir(proc.as_path(), Mode::from_bits_truncate(0o755)))?;
    let udev = Some("mode=0755");
    call!(mount(
        Some("udev"),
        dev.as_path(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        udev
    ))?;
    let recursive = MsFlags::MS_BIND | MsFlags::MS_REC;
    call!(mount(Some("/proc"), proc.as_path(), none, recursive, none))?;
    call!(chroot(root))?;
    call!(chdir("/"))?;
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    evidence("cat /proc/mounts", mounts.lines());
    Ok(())
}
// ANCHOR_END: stage

// ANCHOR: by_hand
/// glibc 2.33's shm_open, after its search: `open(DIR + NAME)` with its
/// flags. Done by hand in the staged /dev, shown, and removed.
fn open_by_hand(dir: &str, name: &str, flags: OFlag) -> anyhow::Result<()> {
    let path = format!("{dir}{}", names::file_name(name));
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = call!(open(path.as_str(), flags, Mode::from_bits_truncate(0o600)))?;
    let file = cleanup::path(&path); // removed on every path
    let listing = inspect::shm_entries_in(Path::new(dir));
    evidence(
        &format!("ls -l {dir}"),
        listing.iter().map(inspect::ShmEntry::ls_line),
    );
    drop(fd);
    call!(unlink(path.as_str()))?;
    file.disarm();
    Ok(())
}
// ANCHOR_END: by_hand
