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

use anyhow::bail;
use common::args::{Hold, hold_point};
use common::narrate::{evidence, explain, fact, section, subsection};
use common::{attempt, call, cleanup, inspect, names, ns, shm, sysv};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::Mode;
use nix::sys::uio::{pread, pwrite};
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
    let shmid = call!(sysv::shmget(key => call::ipc_key, page, flags => call::ipc_flags))?;
    let segment = cleanup::sysv_segment(shmid); // removed on every path
    let (fd, object) = shm::create(&name)?;
    call!(ftruncate(&fd, page as libc::off_t))?;
    call!(pwrite(&fd, GREETING.as_bytes(), 0))?;
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
    // Only our own children: once the namespace is gone, the kernel may give
    // its inode number to a new one (another run's), so a scan of every
    // process would find strangers.
    let me = getpid().as_raw();
    let ours: Vec<i32> = inspect::pids()
        .into_iter()
        .filter(|&p| parent_of(p) == Some(me))
        .filter(|&p| ns::identity(Some(Pid::from_raw(p)), "ipc").as_deref() == Some(&inner_ipc))
        .collect();
    fact(
        &format!("processes of this run in {inner_ipc}"),
        format!("{ours:?} (the keeper {k} and the visitors were reaped by waitpid)"),
    );
    if !ours.is_empty() {
        bail!("processes are still in the keeper's namespace: {ours:?}");
    }
    explain(format!(
        "No process is left in {inner_ipc}: its last one, the keeper, has exited. ipc_namespaces(7): when the last process of an \
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
    call!(sysv::shmctl_rmid(shmid))?;
    segment.disarm();
    call!(shm_unlink(name))?;
    object.disarm();
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

/// The visitor, in the keeper's IPC namespace: `KEY NAME`.
pub fn visit(args: &[String]) -> anyhow::Result<()> {
    let (key, name) = key_and(args)?;
    evidence("ipcs -m   # inside", crate::host::segments_listing().1);
    let segments = inspect::sysv_segments().len();
    fact("segments in /proc/sysvipc/shm", segments);
    // ANCHOR: visit
    match attempt!(sysv::shmget(key => call::ipc_key, 0, 0)) {
        Err(Errno::ENOENT) => fact("result inside", "shmget(host key) = ENOENT"),
        other => bail!("expected ENOENT for the host's key inside, got {other:?}"),
    }
    let fd = call!(shm_open(name.as_str(), OFlag::O_RDONLY => |_: &OFlag| "O_RDONLY".to_string(), Mode::empty()))?;
    let mut buf = [0u8; GREETING.len()];
    let n = call!(pread(&fd, &mut buf[..], 0))?;
    fact("read", format!("{:?}", String::from_utf8_lossy(&buf[..n])));
    fact("result inside", "the host's POSIX object opened");

    let page = inspect::page_size();
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | 0o600;
    let shmid = call!(sysv::shmget(key => call::ipc_key, page, flags => call::ipc_flags))?;
    // ANCHOR_END: visit
    evidence("ipcs -m   # inside", inspect::ipcs_rows(shmid));
    explain(format!(
        "The same key, a new segment: keys are per IPC namespace. pid {} exits now without \
         IPC_RMID.",
        getpid()
    ));
    Ok(())
}

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

/// The parent pid of process `pid` (`PPid:` in /proc/PID/status).
fn parent_of(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn key_and(args: &[String]) -> anyhow::Result<(i32, String)> {
    match args {
        [key, other, ..] => Ok((key.parse()?, other.clone())),
        _ => bail!("expected KEY and another argument"),
    }
}
