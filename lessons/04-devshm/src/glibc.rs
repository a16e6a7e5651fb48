//! Old glibc's search for a tmpfs. Up to 2.33, `shm_open` used `/dev/shm/`
//! only if `statfs` said tmpfs or ramfs; otherwise it took the first tmpfs
//! of the mount table (`where_is_shmfs`). 2.34 dropped the search (commit
//! e9fed2438a). Scenario 3 replays it; on a glibc that still searches,
//! scenarios 2 and 3 replay it instead of calling `shm_open`, which could
//! create the object in one of the host's tmpfs mounts.

use common::narrate::{explain, fact, note};
use common::{attempt, inspect};
use nix::sys::statfs::{Statfs, statfs};

use crate::show::{RAMFS_MAGIC, TMPFS_MAGIC, magic, result};

/// Set (by the tests only) to a glibc version such as `2.33` to make the
/// lesson behave as it does on that glibc. It says so wherever it matters.
pub const SIMULATE_GLIBC: &str = "SHM_LESSONS_SIMULATE_GLIBC";

// ANCHOR: where_is_shmfs
/// glibc 2.33's `where_is_shmfs()` (sysdeps/unix/sysv/linux/shm-directory.c):
/// `/dev/shm/` if statfs says tmpfs or ramfs, else the first `tmpfs` or `shm`
/// entry of `/proc/mounts` (or `/etc/fstab`) that statfs confirms.
pub fn where_is_shmfs_2_33() -> Option<String> {
    let is_shmfs = |st: &Statfs| [TMPFS_MAGIC, RAMFS_MAGIC].contains(&magic(st));
    let shown = |st: &Statfs| format!("0 (f_type {:#x})", magic(st));
    if attempt!(statfs("/dev/shm/") => shown).is_ok_and(|st| is_shmfs(&st)) {
        return Some("/dev/shm/".into());
    }
    explain("not a tmpfs: \"OK, do it the hard way\": the first tmpfs (or shm) in /proc/mounts.");
    let table = std::fs::read_to_string("/proc/mounts")
        .or_else(|_| std::fs::read_to_string("/etc/fstab"))
        .unwrap_or_default();
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dir), Some(&("tmpfs" | "shm"))) = (f.get(1), f.get(2)) else {
            continue;
        };
        let dir = inspect::unescape_octal(dir);
        if dir.starts_with('/')
            && attempt!(statfs(dir.as_str()) => shown).is_ok_and(|st| is_shmfs(&st))
        {
            return Some(if dir.ends_with('/') { dir } else { dir + "/" });
        }
    }
    None
}
// ANCHOR_END: where_is_shmfs

/// This machine's C library, as far as `shm_open` goes.
pub struct Libc {
    /// `gnu_get_libc_version()`, or what [`SIMULATE_GLIBC`] says.
    version: Option<String>,
    /// glibc before 2.34: `shm_open` searches the mount table for a tmpfs
    /// when /dev/shm is not one, instead of simply using /dev/shm.
    pub searches: bool,
    simulated: bool,
}

pub fn this_libc() -> Libc {
    let (version, simulated) = match std::env::var(SIMULATE_GLIBC) {
        Ok(v) => (Some(v), true),
        Err(_) => (inspect::libc_version(), false),
    };
    let searches = version
        .as_deref()
        .and_then(|v| inspect::version_at_least(v, 2, 34))
        == Some(false);
    Libc {
        version,
        searches,
        simulated,
    }
}

impl std::fmt::Display for Libc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.version {
            Some(v) if self.simulated => write!(f, "glibc {v} (simulated)"),
            Some(v) => write!(f, "glibc {v}"),
            None => write!(f, "a C library that is not glibc"),
        }
    }
}

impl Libc {
    pub fn show(&self) {
        let v = self.version.as_deref().unwrap_or("(not glibc)");
        fact("gnu_get_libc_version()", v);
        if self.simulated {
            note(format!(
                "simulated: {SIMULATE_GLIBC}={v} (a switch for the tests) makes the lesson act \
                 as on that glibc; this machine's is {}",
                inspect::libc_version().unwrap_or_else(|| "not glibc".into())
            ));
        }
    }
}

/// Scenario 2 on a glibc that searches: its shm_open would reject the disk
/// /dev/shm and use the first tmpfs of the mount table, one of the host's.
/// So only the search is replayed (statfs only), and the result says so.
pub fn would_leave_the_staging(libc: &Libc, n: usize, what: &str) -> anyhow::Result<()> {
    explain(format!(
        "{libc} is older than 2.34: its shm_open would reject this /dev/shm (not a tmpfs) and \
         create the object in the first tmpfs of /proc/mounts, which in this namespace is one \
         of the host's. So the lesson does not call it, and replays the search instead:"
    ));
    let dir = where_is_shmfs_2_33();
    let dir = dir.as_deref().unwrap_or("nothing (ENOSYS)");
    result(
        n,
        what,
        &format!("shm_open not called: {libc} would use {dir}"),
    );
    Ok(())
}
