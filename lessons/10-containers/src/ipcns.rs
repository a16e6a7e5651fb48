//! Part 1. IPC namespaces: System V segments belong to one, POSIX objects
//! don't.
//!
//! The lesson makes a segment (key K) and a POSIX object on the host. A
//! keeper child unshares an IPC namespace and stays there. A visitor joins
//! it with `setns`: `ipcs -m` is empty, `shmget(K)` fails with ENOENT, yet
//! the POSIX object opens, because `/dev/shm` belongs to the mount
//! namespace, which the visitor still shares with the host. It makes its own
//! segment with the same key K and exits without removing it. A second
//! visitor still finds that segment: it lives as long as the namespace. When
//! the keeper, the namespace's last process, exits, the namespace and every
//! segment in it are destroyed (ipc_namespaces(7)).

use std::os::fd::AsRawFd;

use anyhow::bail;
use common::args::{Hold, hold_point};
use common::narrate::{evidence, explain, fact, section, step, subsection};
use common::{cleanup, inspect, names, ns, shm, sysv};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::Mode;
use nix::unistd::{Pid, ftruncate, getpid};

use crate::kept;

/// What the host's object holds, for the visitor to read back.
const GREETING: &str = "written on the host";

pub fn run(hold: Hold) -> anyhow::Result<()> {
    section("Part 1. IPC namespaces: System V segments belong to one, POSIX objects don't");
    let key = names::unique_key(10);
    let name = names::unique_name(10, "host");
    let page = inspect::page_size();

    // ANCHOR: host
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | 0o600;
    let s = step(format!(
        "shmget({}, {page}, {})",
        sysv::key_string(key),
        sysv::shmflg_string(flags)
    ));
    let shmid = s.check(sysv::shmget(key, page, flags))?;
    let segment = cleanup::sysv_segment(shmid); // removed on every path
    s.ok(format!("shmid {shmid}"));
    let (fd, object) = shm::create(&name)?;
    let s = step(format!("ftruncate({}, {page})", fd.as_raw_fd()));
    s.check(ftruncate(&fd, page as libc::off_t))?;
    s.ok(0);
    let s = step(format!(
        "pwrite({}, {GREETING:?}, {}, 0)",
        fd.as_raw_fd(),
        GREETING.len()
    ));
    let written = s.check(nix::sys::uio::pwrite(&fd, GREETING.as_bytes(), 0))?;
    s.ok(written);
    evidence("ipcs -m   # on the host", inspect::ipcs_rows(shmid));
    let host_ipc = ns::identity(None, "ipc").unwrap_or_default();
    fact("readlink /proc/self/ns/ipc", &host_ipc);
    // ANCHOR_END: host

    // ANCHOR: keeper
    subsection("A new IPC namespace, kept alive by one process");
    let keeper = kept::start("keep", &[])?;
    let k = keeper.pid;
    let inner_ipc = ns::identity(Some(k), "ipc").unwrap_or_default();
    fact(&format!("readlink /proc/{k}/ns/ipc"), &inner_ipc);
    fact(
        &format!("readlink /proc/{k}/ns/mnt"),
        ns::identity(Some(k), "mnt").unwrap_or_default(),
    );
    fact(
        "readlink /proc/self/ns/mnt",
        ns::identity(None, "mnt").unwrap_or_default(),
    );
    if inner_ipc == host_ipc || inner_ipc.is_empty() {
        bail!("the keeper's IPC namespace is the host's ({inner_ipc})");
    }
    explain(
        "Different IPC namespace (another inode number), same mount namespace: the keeper \
         sees the host's /dev/shm but none of its System V objects.",
    );
    let args = [k.to_string(), key.to_string(), name.clone()];
    let visitor = kept::run("visit", &args)?;
    // ANCHOR_END: keeper

    // ANCHOR: outside
    subsection("Back on the host");
    let same_key: Vec<_> = inspect::sysv_segments()
        .into_iter()
        .filter(|s| s.key == key)
        .collect();
    evidence(
        &format!(
            "grep {key} /proc/sysvipc/shm   # key {} on the host",
            names::key_hex(key)
        ),
        same_key.iter().map(|s| s.line.clone()),
    );
    match same_key.as_slice() {
        [only] if only.shmid == shmid => explain(format!(
            "One segment with key {} here: ours, shmid {shmid}. The visitor's segment with the \
             same key lives in the other namespace, where the host cannot see it.",
            names::key_hex(key)
        )),
        other => bail!("expected only our segment {shmid} with this key, saw {other:?}"),
    }
    let _ = kept::run(
        "look",
        &[k.to_string(), key.to_string(), visitor.to_string()],
    )?;
    hold_point(
        hold,
        "sleep(50)",
        &[
            format!("lsns -t ipc   # the keeper {k} in its own namespace {inner_ipc}"),
            format!("nsenter -t {k} -U -i --preserve-credentials ipcs -m   # as a user"),
            format!("sudo nsenter -t {k} -i ipcs -m   # as root"),
            "ipcs -m   # the host's: without the keeper's segment".to_string(),
        ],
    );
    keeper.release()?;
    // ANCHOR_END: outside

    // ANCHOR: gone
    subsection("The keeper, the namespace's last process, has exited");
    let members: Vec<i32> = inspect::pids()
        .into_iter()
        .filter(|&p| ns::identity(Some(Pid::from_raw(p)), "ipc").as_deref() == Some(&inner_ipc))
        .collect();
    fact(
        &format!("processes in {inner_ipc}"),
        format!("{members:?} (from /proc/*/ns/ipc)"),
    );
    if !members.is_empty() {
        bail!("processes are still in the keeper's namespace: {members:?}");
    }
    explain(format!(
        "No process is left in {inner_ipc}. ipc_namespaces(7): when the last process of an \
         IPC namespace ends, the namespace and all its IPC objects are destroyed. So the \
         visitor's segment, which nobody removed, is gone too: a container's segments die \
         with the container. (A bind mount or an open descriptor of /proc/PID/ns/ipc would \
         keep the namespace, and its segments, alive.)"
    ));
    // ANCHOR_END: gone

    drop(fd);
    remove(shmid, segment, &name, object)?;
    fact(
        "result 1",
        format!(
            "host ipc {host_ipc}, keeper ipc {inner_ipc}; inside, shmget(key) = ENOENT and the \
             POSIX object opened; the namespace's segment died with it"
        ),
    );
    Ok(())
}

/// `shmctl(IPC_RMID)` and `shm_unlink`: the run removes what it made.
pub fn remove(
    shmid: i32,
    segment: cleanup::Guard,
    name: &str,
    object: cleanup::Guard,
) -> anyhow::Result<()> {
    let s = step(format!("shmctl({shmid}, IPC_RMID, NULL)"));
    s.check(sysv::shmctl_rmid(shmid))?;
    segment.disarm();
    s.ok(0);
    let s = step(format!("shm_unlink({name:?})"));
    s.check(shm_unlink(name))?;
    object.disarm();
    s.ok(0);
    Ok(())
}

/// The keeper: in a new IPC namespace, waits until the lesson releases it.
pub fn keeper() -> anyhow::Result<()> {
    fact(
        "readlink /proc/self/ns/ipc",
        ns::identity(None, "ipc").unwrap_or_default(),
    );
    kept::ready("");
    Ok(())
}

// ANCHOR: visit
/// The visitor, in the keeper's IPC namespace: `KEY NAME`.
pub fn visit(args: &[String]) -> anyhow::Result<()> {
    let (key, name) = key_and(args)?;
    evidence("ipcs -m   # inside", crate::host::segments_listing().1);
    let segments = inspect::sysv_segments().len();
    fact("segments in /proc/sysvipc/shm", segments);
    let s = step(format!("shmget({}, 0, 0)", names::key_hex(key)));
    match s.outcome(sysv::shmget(key, 0, 0), |id| format!("shmid {id}")) {
        Err(Errno::ENOENT) => fact("result inside", "shmget(host key) = ENOENT"),
        other => bail!("expected ENOENT for the host's key inside, got {other:?}"),
    }
    let s = step(format!("shm_open({name:?}, O_RDONLY, 0)"));
    let fd = s.check(shm_open(name.as_str(), OFlag::O_RDONLY, Mode::empty()))?;
    s.ok(format!("fd {}", fd.as_raw_fd()));
    let mut buf = [0u8; GREETING.len()];
    let s = step(format!("pread({}, buf, {}, 0)", fd.as_raw_fd(), buf.len()));
    let n = s.check(nix::sys::uio::pread(&fd, &mut buf, 0))?;
    s.ok(format!("{n}: {:?}", String::from_utf8_lossy(&buf[..n])));
    fact("result inside", "the host's POSIX object opened");

    let page = inspect::page_size();
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | 0o600;
    let s = step(format!(
        "shmget({}, {page}, {})",
        names::key_hex(key),
        sysv::shmflg_string(flags)
    ));
    let shmid = s.check(sysv::shmget(key, page, flags))?;
    s.ok(format!("shmid {shmid}"));
    evidence("ipcs -m   # inside", inspect::ipcs_rows(shmid));
    explain(format!(
        "The same key, a new segment: keys are per IPC namespace. pid {} exits now without \
         IPC_RMID.",
        getpid()
    ));
    Ok(())
}
// ANCHOR_END: visit

/// The second visitor: `KEY VISITOR_PID`. The visitor's segment is still
/// there, attached by nobody, its creator gone.
pub fn look(args: &[String]) -> anyhow::Result<()> {
    let (key, creator) = key_and(args)?;
    let rows: Vec<_> = inspect::sysv_segments()
        .into_iter()
        .filter(|s| s.key == key)
        .collect();
    evidence(
        &format!("grep {key} /proc/sysvipc/shm   # inside, later"),
        rows.iter().map(|s| s.line.clone()),
    );
    match rows.as_slice() {
        [s] if s.cpid.to_string() == creator && s.nattch == 0 => fact(
            "result later",
            format!(
                "the segment of pid {creator} (exited) is still here, nattch 0: it lives as \
                 long as its namespace"
            ),
        ),
        other => bail!("expected the visitor's segment, unattached, saw {other:?}"),
    }
    Ok(())
}

fn key_and(args: &[String]) -> anyhow::Result<(i32, String)> {
    match args {
        [key, other, ..] => Ok((key.parse()?, other.clone())),
        _ => bail!("expected KEY and another argument"),
    }
}
