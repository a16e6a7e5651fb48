//! Part 4. The kernel's limits, made small inside an IPC namespace of the
//! lesson's own.
//!
//! `kernel.shmmax`, `shmall`, `shmmni` and `shm_rmid_forced` belong to an
//! IPC namespace (proc(5), ipc_namespaces(7)): a child that unshared one may
//! set them (as root in its user namespace, for a normal user) and the host's
//! stay as they were. shmget(2) names the errors: EINVAL for a size above
//! SHMMAX, ENOSPC when SHMMNI segments exist or SHMALL pages are in use.

use anyhow::bail;
use common::narrate::{self, evidence, explain, fact, section, subsection};
use common::{attempt, call, cleanup, inspect, ns, sysv};
use nix::errno::Errno;

use crate::host::{self, Snapshot};
use crate::kept;

pub fn run(before: &Snapshot) -> anyhow::Result<()> {
    section("Part 4. Kernel limits, made small in an IPC namespace of our own");
    let outside = host::ipcs_limits();
    evidence("ipcs -l -m   # on the host", &outside);
    let host_ipc = ns::identity(None, "ipc").unwrap_or_default();
    kept::run("limits", &[host_ipc])?;
    subsection("Back on the host");
    let after = host::ipcs_limits();
    evidence("ipcs -l -m   # on the host, after", &after);
    for name in ["shmmax", "shmall", "shmmni", "shm_rmid_forced"] {
        let now = host::sysctl(name);
        if now != before.sysctl(name) {
            bail!("the host's kernel.{name} changed to {now}");
        }
    }
    if after != outside {
        bail!("the host's ipcs -l changed");
    }
    fact("result host limits", "unchanged");
    Ok(())
}

// ANCHOR: set
/// `echo VALUE > /proc/sys/kernel/NAME`, only in an IPC namespace that is
/// not the host's (`host_ipc`): the host's limits are never touched.
fn set(name: &str, value: &str, host_ipc: &str) -> anyhow::Result<()> {
    if ns::identity(None, "ipc").as_deref() == Some(host_ipc) {
        bail!("refusing to write kernel.{name}: this is the host's IPC namespace");
    }
    let path = format!("/proc/sys/kernel/{name}");
    call!(std::fs::write(&path, value))?;
    Ok(())
}
// ANCHOR_END: set

/// Write `kernel.shmmni`'s own value back (a change of nothing, in our own
/// IPC namespace only): the errno when the kernel refuses us the write.
/// Kernels whose ipc/ipc_sysctl.c has no ipc_permissions() let only real
/// root write these files, whatever namespace they belong to.
fn refused(host_ipc: &str) -> anyhow::Result<Option<Errno>> {
    if ns::identity(None, "ipc").as_deref() == Some(host_ipc) {
        bail!("refusing to write kernel.shmmni: this is the host's IPC namespace");
    }
    let now = host::sysctl("shmmni");
    Ok(attempt!(std::fs::write("/proc/sys/kernel/shmmni", now)).err())
}

/// `shmget(IPC_PRIVATE, size, IPC_CREAT|0600)`, narrated; the segment is
/// guarded. `Err` is the errno, as a result to show.
fn segment(size: usize) -> Result<(i32, cleanup::Guard), Errno> {
    let flags = libc::IPC_CREAT | 0o600;
    attempt!(sysv::shmget(libc::IPC_PRIVATE => call::ipc_key, size, flags => call::ipc_flags))
        .map(|id| (id, cleanup::sysv_segment(id)))
}

/// `result LIMIT: ERRNO WHAT`, the line the tests read.
fn result(limit: &str, e: Option<Errno>, what: &str) {
    fact(&format!("result {limit}"), format!("{} {what}", name(e)));
}

fn name(e: Option<Errno>) -> String {
    e.map_or("no error".into(), common::report::errno_name)
}

/// Make segments of `size` until one fails, then remove those that worked;
/// returns the errno and how many worked.
fn fill(size: usize, at_most: usize) -> anyhow::Result<(Errno, usize)> {
    let mut made = Vec::new();
    let errno = loop {
        match segment(size) {
            Ok(g) => made.push(g),
            Err(e) => break e,
        }
        if made.len() > at_most {
            bail!("{} segments and no error", made.len());
        }
    };
    let n = made.len();
    for (shmid, guard) in made {
        call!(sysv::shmctl_rmid(shmid))?;
        guard.disarm();
    }
    Ok((errno, n))
}

/// In a new IPC namespace: `HOST_IPC` (the identity not to write into).
pub fn inside(args: &[String]) -> anyhow::Result<()> {
    let host_ipc = args.first().map(String::as_str).unwrap_or("");
    let page = inspect::page_size();
    evidence(
        "ipcs -l -m   # inside, as the namespace starts",
        host::ipcs_limits(),
    );

    if let Some(errno) = refused(host_ipc)? {
        narrate::warn(if errno == Errno::EROFS {
            "/proc/sys is mounted read-only here (as in a container): not even the limits of \
             an IPC namespace of our own can be written. Run the lesson on the host or a VM \
             to see the limits at work."
                .to_string()
        } else {
            format!(
                "the kernel refuses ({}) the root of our user namespace a write to the limits \
                 of an IPC namespace of our own: here only real root may set them. Run the \
                 lesson as root (sudo) to see the limits at work.",
                common::report::errno_name(errno)
            )
        });
        fact("result limits", format!("refused ({})", name(Some(errno))));
        return Ok(());
    }

    subsection("kernel.shmmax, shmall and shmmni: size, total pages, count");
    // ANCHOR: limits
    // kernel.shmmax: the largest segment, in bytes
    set("shmmax", &page.to_string(), host_ipc)?;
    let e = segment(2 * page).err();
    result("shmmax", e, &format!("for {} bytes", 2 * page));

    // kernel.shmall: the pages of all segments together
    let default_shmall = host::sysctl("shmall");
    set("shmall", "2", host_ipc)?;
    let (e, made) = fill(page, 2)?;
    let what = format!("after {made} one-page segments");
    result("shmall", Some(e), &what);
    set("shmall", &default_shmall, host_ipc)?;

    // kernel.shmmni: how many segments
    set("shmmni", "2", host_ipc)?;
    let (e, made) = fill(page, 2)?;
    result("shmmni", Some(e), &format!("after {made} segments"));
    // ANCHOR_END: limits
    rmid_forced(page, host_ipc)?;
    evidence("ipcs -l -m   # inside, now", host::ipcs_limits());
    explain(
        "shmget(2): EINVAL when the size exceeds SHMMAX, ENOSPC when SHMMNI segments exist or \
         the size would exceed SHMALL pages in all. These limits are per IPC namespace, so a \
         container can have its own, and changing them here leaves the host's alone.",
    );
    Ok(())
}

// ANCHOR: rmid_forced
/// `kernel.shm_rmid_forced`: 0, a segment outlives its last `shmdt`; 1, it
/// is destroyed then, even without IPC_RMID.
fn rmid_forced(page: usize, host_ipc: &str) -> anyhow::Result<()> {
    subsection("kernel.shm_rmid_forced: destroyed at the last shmdt");
    for forced in ["0", "1"] {
        set("shm_rmid_forced", forced, host_ipc)?;
        let (shmid, guard) = segment(page).map_err(anyhow::Error::new)?;
        let at = call!(sysv::shmat(shmid, 0))?;
        // SAFETY: `at` came from shmat and is not used after this.
        unsafe { call!(sysv::shmdt(at)) }?;
        let stat = attempt!(sysv::shmctl_stat(shmid));
        let alive = stat.is_ok() && inspect::sysv_segment(shmid).is_some();
        fact(
            &format!("result shm_rmid_forced={forced}"),
            if alive {
                "still there after the last shmdt".to_string()
            } else {
                format!("gone at the last shmdt (IPC_STAT: {})", name(stat.err()))
            },
        );
        if alive {
            call!(sysv::shmctl_rmid(shmid))?;
        }
        guard.disarm();
    }
    Ok(())
}
// ANCHOR_END: rmid_forced
