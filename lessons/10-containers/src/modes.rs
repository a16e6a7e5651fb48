//! Part 2. Docker's `--ipc` modes, emulated with `unshare` and `setns`.
//!
//! - `private` (Docker's default) and `shareable`: a new IPC namespace, and
//!   a new mount namespace with a 64 MiB tmpfs of its own on `/dev/shm`;
//! - `container:NAME`: a second process joins the first one's IPC *and*
//!   mount namespaces (`setns`), so both find the segment by its key and the
//!   object by its name;
//! - `host`: no new namespace at all: the host sees everything;
//! - `none`: a new IPC namespace and nothing mounted on `/dev/shm` (here: a
//!   fresh tmpfs over `/dev`, as in a container, without `shm` in it).
//!   `shm_open` fails, System V still works.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use common::args::{Hold, hold_point};
use common::narrate::{self, evidence, explain, fact, section, subsection};
use common::{attempt, call, cleanup, inspect, names, ns, shm, sysv};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MsFlags, mount};
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::Mode;
use nix::sys::statfs::statfs;
use nix::sys::uio::{pread, pwrite};
use nix::unistd::{Pid, ftruncate, getpid};

use crate::kept;

/// Docker's `/dev/shm` for `private` and `shareable`: what `docker run`
/// mounts when `--shm-size` is not given (64 MiB).
pub const DOCKER_SHM: &str = "mode=1777,size=67108864";

/// What the first container stores in its segment and its object.
const MAGIC: u64 = 0x5ca1_ab1e_0000_0010;

pub fn run(hold: Hold) -> anyhow::Result<()> {
    section("Part 2. Docker's --ipc modes, emulated");
    let host_ipc = ns::identity(None, "ipc").unwrap_or_default();
    let host_mnt = ns::identity(None, "mnt").unwrap_or_default();

    subsection("--ipc=private (the default): docker run --ipc=private IMAGE");
    // ANCHOR: private
    let first = kept::start("private", &[])?;
    let (key, shmid, name) = parse_info(&first.info)?;
    let (ipc, mnt) = identities(first.pid);
    fact("host ipc / mnt", format!("{host_ipc} {host_mnt}"));
    fact("container ipc / mnt", format!("{ipc} {mnt}"));
    let seen_key = inspect::sysv_segments().iter().any(|s| s.key == key);
    let seen_name = inspect::dev_shm_entry(&name).is_some();
    let seen = format!("key: {}, name: {}", yes_no(seen_key), yes_no(seen_name));
    fact("the host sees", seen);
    if ipc == host_ipc || mnt == host_mnt || seen_key || seen_name {
        bail!("--ipc=private leaked into the host");
    }
    first.release()?;
    // ANCHOR_END: private
    fact(
        "result private",
        format!("own ipc and mnt namespaces; shmid {shmid} and {name} invisible on the host"),
    );

    // ANCHOR: shareable
    subsection("--ipc=shareable, then a second container with --ipc=container:NAME");
    narrate::commands(&["docker run -d --name one --ipc=shareable IMAGE"]);
    let first = kept::start("shareable", &[])?;
    let (key, shmid, name) = parse_info(&first.info)?;
    let (ipc, mnt) = identities(first.pid);
    fact("container one ipc / mnt", format!("{ipc} {mnt}"));
    narrate::commands(&[
        "docker run --ipc=container:one IMAGE   # one's IPC namespace and /dev/shm",
    ]);
    hold_point(
        hold,
        "sleep(50)",
        &[
            format!(
                "sudo nsenter -t {} -i -m ipcs -m   # the container's segment",
                first.pid
            ),
            format!(
                "sudo nsenter -t {} -m ls -l /dev/shm   # and object",
                first.pid
            ),
        ],
    );
    let args = [first.pid.to_string(), key.to_string(), name.clone()];
    let second = kept::run("container", &args)?;
    first.release()?;
    fact(
        "result shareable",
        format!(
            "pid {second} joined pid {}'s namespaces and found shmid {shmid} and {name}",
            first_pid_text(&args)
        ),
    );
    // ANCHOR_END: shareable

    // ANCHOR: host
    subsection("--ipc=host: docker run --ipc=host IMAGE");
    let child = kept::start("host", &[])?;
    let (key, shmid, name) = parse_info(&child.info)?;
    // The child made them on the host: if it is killed, we remove them.
    let segment = cleanup::sysv_segment(shmid);
    let object = cleanup::posix_object(&name);
    let (ipc, _) = identities(child.pid);
    fact("container ipc", &ipc);
    evidence("ipcs -m   # on the host", inspect::ipcs_rows(shmid));
    evidence(&format!("ls -l /dev/shm{name}"), inspect::dev_shm_ls(&name));
    let seen = inspect::sysv_segment(shmid).is_some_and(|s| s.key == key)
        && inspect::dev_shm_entry(&name).is_some();
    if ipc != host_ipc || !seen {
        bail!("--ipc=host: the host should see the child's segment and object");
    }
    child.release()?;
    segment.disarm();
    object.disarm();
    fact(
        "result host",
        format!("the host's own namespace {ipc}; the host saw shmid {shmid} and {name}"),
    );
    // ANCHOR_END: host

    subsection("--ipc=none: docker run --ipc=none IMAGE");
    kept::run("none", &[])?;
    Ok(())
}

/// The info a container child sends when ready: `KEY SHMID NAME`.
fn parse_info(info: &str) -> anyhow::Result<(i32, i32, String)> {
    let f: Vec<&str> = info.split_whitespace().collect();
    match f.as_slice() {
        [key, shmid, name] => Ok((key.parse()?, shmid.parse()?, name.to_string())),
        _ => bail!("unexpected ready line from a child: {info:?}"),
    }
}

fn first_pid_text(args: &[String]) -> &str {
    args.first().map_or("?", String::as_str)
}

fn identities(pid: Pid) -> (String, String) {
    (
        ns::identity(Some(pid), "ipc").unwrap_or_default(),
        ns::identity(Some(pid), "mnt").unwrap_or_default(),
    )
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

// ANCHOR: container
/// A container for `private`, `shareable` or `host`: its `/dev/shm`, then a
/// segment and an object holding MAGIC; it stays until the lesson releases it.
pub fn container(mode: &str, _args: &[String]) -> anyhow::Result<()> {
    if mode == "none" {
        return none();
    }
    if mode != "host" {
        docker_dev_shm()?;
    }
    let key = names::unique_key(10);
    let page = inspect::page_size();
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | 0o600;
    let shmid = call!(sysv::shmget(key => call::ipc_key, page, flags => call::ipc_flags))?;
    let segment = cleanup::sysv_segment(shmid);
    let at = call!(sysv::shmat(shmid, 0))?;
    // ANCHOR_END: container
    // SAFETY: a fresh, page-aligned attachment of `page` bytes; AtomicU64
    // because another process (the joiner) reads it.
    unsafe { (*at.as_ptr().cast::<AtomicU64>()).store(MAGIC, Ordering::Release) };
    let name = names::unique_name(10, mode);
    let (fd, object) = shm::create(&name)?;
    call!(ftruncate(&fd, page as libc::off_t))?;
    call!(pwrite(&fd, &MAGIC.to_ne_bytes()[..] => |_: &&[u8]| format!("&{MAGIC:#x}"), 0))?;
    kept::ready(&format!("{key} {shmid} {name}"));
    drop(fd);
    // IPC_RMID while still attached, then shmdt: right whatever
    // kernel.shm_rmid_forced says (with 1, a shmdt first would already have
    // destroyed the segment, and IPC_RMID would fail with EINVAL; proc(5)).
    crate::ipcns::remove(shmid, segment, &name, object)?;
    // SAFETY: `at` came from shmat; nothing uses it after this.
    unsafe { sysv::shmdt(at) }.context("shmdt")?;
    Ok(())
}

/// Docker's `/dev/shm` in our own mount namespace: a 64 MiB tmpfs, as
/// `docker run` mounts it without `--shm-size`. Returns its size.
pub fn docker_dev_shm() -> anyhow::Result<u64> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    call!(mount(
        Some("shm"),
        "/dev/shm",
        Some("tmpfs"),
        flags,
        Some(DOCKER_SHM)
    ))?;
    let st = call!(statfs("/dev/shm") => |st: &nix::sys::statfs::Statfs| format!(
        "0 (f_blocks {}, f_bsize {})",
        st.blocks(),
        st.block_size()
    ))?;
    let size = st.blocks() * st.block_size() as u64;
    fact("df /dev/shm", format!("{size} bytes"));
    Ok(size)
}

/// The second container, in the first one's IPC and mount namespaces:
/// `KEY NAME`. Finds the segment by key and the object by name.
pub fn join(args: &[String]) -> anyhow::Result<()> {
    let [key, name] = args else {
        bail!("expected KEY NAME");
    };
    let key: i32 = key.parse()?;
    fact(
        "readlink /proc/self/ns/ipc",
        ns::identity(None, "ipc").unwrap_or_default(),
    );
    fact(
        "readlink /proc/self/ns/mnt",
        ns::identity(None, "mnt").unwrap_or_default(),
    );
    // ANCHOR: join
    let shmid = call!(sysv::shmget(key => call::ipc_key, 0, 0))?;
    let at = call!(sysv::shmat(shmid, libc::SHM_RDONLY => |_: &i32| "SHM_RDONLY".to_string()))?;
    // SAFETY: the first container stored MAGIC before it said it was ready
    // (Release), and we started after that; an atomic load, since the
    // memory is shared with another process.
    let seen = unsafe { (*at.as_ptr().cast::<AtomicU64>()).load(Ordering::Acquire) };
    let nattch = call!(sysv::shmctl_stat(shmid))?.shm_nattch;
    fact("read through the segment", format!("{seen:#x}"));
    // SAFETY: `at` came from shmat and is not used after this.
    unsafe { call!(sysv::shmdt(at)) }?;
    let fd = call!(shm_open(name.as_str(), OFlag::O_RDONLY => |_: &OFlag| "O_RDONLY".to_string(), Mode::empty()))?;
    let mut buf = [0u8; 8];
    call!(pread(&fd, &mut buf[..], 0))?;
    let via_file = u64::from_ne_bytes(buf);
    // ANCHOR_END: join
    fact("read through the object", format!("{via_file:#x}"));
    if seen != MAGIC || via_file != MAGIC || nattch != 2 {
        bail!("expected {MAGIC:#x} twice and nattch 2");
    }
    fact(
        "result container",
        format!("shmid {shmid}, {seen:#x} twice, nattch {nattch}"),
    );
    Ok(())
}

/// `--ipc=none`: a private IPC namespace and nothing on `/dev/shm`.
fn none() -> anyhow::Result<()> {
    explain(
        "A container's /dev is a tmpfs of its own. With --ipc=none Docker mounts nothing on \
         /dev/shm. We stage that: a fresh tmpfs over /dev in our mount namespace, with no shm \
         in it.",
    );
    // ANCHOR: none
    call!(mount(
        Some("tmpfs"),
        "/dev",
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755")
    ))?;
    let name = names::unique_name(10, "none");
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    let errno = if glibc_searches() {
        None // it would look for a tmpfs in the host's mount table (lesson 4)
    } else {
        match attempt!(shm_open(
            name.as_str(),
            flags,
            Mode::from_bits_truncate(0o600)
        )) {
            Err(e) => Some(e),
            Ok(_) => {
                let _ = shm_unlink(name.as_str());
                bail!("shm_open worked without /dev/shm");
            }
        }
    };
    let page = inspect::page_size();
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | 0o600;
    let shmid =
        call!(sysv::shmget(libc::IPC_PRIVATE => call::ipc_key, page, flags => call::ipc_flags))?;
    let segment = cleanup::sysv_segment(shmid);
    // ANCHOR_END: none
    call!(sysv::shmctl_rmid(shmid))?;
    segment.disarm();
    let shm_open = errno.map_or("not called".to_string(), common::report::errno_name);
    fact(
        "result none",
        format!(
            "shm_open = {shm_open}, shmget = shmid {shmid} (pid {})",
            getpid()
        ),
    );
    if errno.is_some_and(|e| e != Errno::ENOENT) {
        explain("(glibc before 2.34 searched the mount table for a tmpfs instead: see lesson 4)");
    }
    Ok(())
}

/// Set (by the tests only) to a glibc version such as `2.33`: the lesson
/// then behaves as on that glibc. Lesson 4 reads the same variable.
const SIMULATE_GLIBC: &str = "SHM_LESSONS_SIMULATE_GLIBC";

/// Whether this C library's `shm_open`, finding no tmpfs at `/dev/shm`,
/// would search the mount table for one (glibc before 2.34), which here
/// would find one of the host's tmpfs mounts (`/run`): then the lesson does
/// not call it, and says why.
fn glibc_searches() -> bool {
    let (version, simulated) = match std::env::var(SIMULATE_GLIBC) {
        Ok(v) => (Some(v), true),
        Err(_) => (inspect::libc_version(), false),
    };
    let Some(v) = version else { return false };
    if inspect::version_at_least(&v, 2, 34) != Some(false) {
        return false;
    }
    // The first other tmpfs it could pick: a mount copied from the host's.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let other = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let other_tmpfs = matches!(f.get(2), Some(&("tmpfs" | "shm")))
            && !matches!(f.get(1), Some(&("/dev" | "/dev/shm")));
        other_tmpfs.then(|| f[1].to_string())
    });
    let found = match other {
        Some(dir) => format!("the first one here is {dir}, a mount of the host's"),
        None => "there is none here".to_string(),
    };
    narrate::note(format!(
        "glibc {v}{}: with no tmpfs at /dev/shm, its shm_open searches /proc/mounts for another \
         tmpfs (lesson 4); {found}. So the lesson does not call it. glibc 2.34 and later fail \
         with ENOENT.",
        if simulated { " (simulated)" } else { "" },
    ));
    true
}
