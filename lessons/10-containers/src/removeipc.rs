//! Part 5. systemd-logind's `RemoveIPC=`.
//!
//! logind.conf(5): with `RemoveIPC=yes` (the default), when a user's last
//! session ends, logind removes the System V objects and POSIX shared memory
//! the user owns, except for root and system users. A database started from
//! a login shell loses its segments at logout (systemd/systemd#2039).
//!
//! The lesson reads this machine's effective setting from `logind.conf` and
//! its drop-ins, and says whether logind runs here. Then it emulates the
//! cleanup on objects of its own, in new IPC and mount namespaces (a private
//! tmpfs on `/dev/shm`), without touching logind.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use common::narrate::{evidence, explain, fact, note, section, subsection};
use common::{call, inspect, names, sysv};
use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid, fchown};

use crate::kept;
use crate::modes::docker_dev_shm;

/// Where systemd looks for `logind.conf`, highest priority first.
const DIRS: [&str; 4] = ["/etc", "/run", "/usr/local/lib", "/usr/lib"];

/// The uid of the "student" whose last session ends, as root stages it.
const STUDENT: u32 = 1000;

pub fn run() -> anyhow::Result<()> {
    section("Part 5. systemd-logind's RemoveIPC");
    let (value, files) = effective_remove_ipc();
    for (file, line) in &files {
        fact(
            &file.display().to_string(),
            line.as_deref().unwrap_or("(no RemoveIPC=)"),
        );
    }
    let value = value.unwrap_or_else(|| "yes (the default: no file sets it)".into());
    fact("RemoveIPC, effective", &value);
    let booted = Path::new("/run/systemd/system").exists();
    let logind = inspect::pids().into_iter().find(|&p| {
        std::fs::read_to_string(format!("/proc/{p}/comm"))
            .is_ok_and(|c| c.trim() == "systemd-logind")
    });
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    match (booted, logind) {
        (true, Some(pid)) => fact(
            "systemd-logind",
            format!("running (pid {pid}): the setting applies here"),
        ),
        (true, None) => fact(
            "systemd-logind",
            "not running: nothing applies the setting now",
        ),
        (false, _) => fact(
            "systemd-logind",
            format!(
                "not systemd (PID 1 is {}): nothing removes IPC at logout here",
                pid1.trim()
            ),
        ),
    }
    let sys_uid_max = sys_uid_max();
    fact(
        "system users",
        format!(
            "uid <= {sys_uid_max} (SYS_UID_MAX; systemd fixes its own limit when it is built, \
             usually from /etc/login.defs)"
        ),
    );
    explain(
        "logind.conf(5): with RemoveIPC=yes, when a user's last session ends, logind removes \
         the System V semaphores, shared memory segments and message queues and the POSIX \
         shared memory and message queues that the user owns. Root and system users are \
         spared: run daemons as system users, or set RemoveIPC=no in a drop-in such as \
         /etc/systemd/logind.conf.d/ipc.conf. (systemd's clean-ipc.c also skips a segment \
         that a process still has attached.)",
    );
    kept::run("removeipc", &[sys_uid_max.to_string()])?;
    Ok(())
}

/// The last `RemoveIPC=` in `[Login]` of the main file and its drop-ins, in
/// the order systemd reads them; and each file read, with its line.
fn effective_remove_ipc() -> (Option<String>, Vec<(PathBuf, Option<String>)>) {
    let main = DIRS
        .iter()
        .map(|d| Path::new(d).join("systemd/logind.conf"))
        .find(|p| p.exists());
    // Drop-ins: by file name across all directories; the same name in a
    // directory of higher priority hides the others.
    let mut dropins: Vec<(String, PathBuf)> = Vec::new();
    for d in DIRS {
        let dir = Path::new(d).join("systemd/logind.conf.d");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".conf") && !dropins.iter().any(|(n, _)| *n == name) {
                dropins.push((name, e.path()));
            }
        }
    }
    dropins.sort();
    let mut value = None;
    let mut files = Vec::new();
    for file in main.into_iter().chain(dropins.into_iter().map(|(_, p)| p)) {
        let line = remove_ipc_in(&std::fs::read_to_string(&file).unwrap_or_default());
        if let Some(l) = &line {
            value = l.split_once('=').map(|(_, v)| v.trim().to_string());
        }
        files.push((file, line));
    }
    (value, files)
}

/// The last uncommented `RemoveIPC=` line of the `[Login]` section (systemd
/// strips the blanks around `=`: `RemoveIPC = no` counts too).
fn remove_ipc_in(text: &str) -> Option<String> {
    let mut section = "";
    let mut found = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Login]"
            && line
                .split_once('=')
                .is_some_and(|(k, _)| k.trim() == "RemoveIPC")
        {
            found = Some(line.to_string());
        }
    }
    found
}

/// SYS_UID_MAX from /etc/login.defs, else 999.
fn sys_uid_max() -> u32 {
    std::fs::read_to_string("/etc/login.defs")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SYS_UID_MAX"))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(999)
}

/// The uid outside our user namespace that uid 0 inside maps to (ourselves
/// when there is no user namespace: the map is the identity).
fn outer_uid_of_root() -> u32 {
    std::fs::read_to_string("/proc/self/uid_map")
        .ok()
        .and_then(|m| {
            let f: Vec<u32> = m
                .split_whitespace()
                .take(3)
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() == 3 && f[0] == 0).then_some(f[1])
        })
        .unwrap_or(0)
}

/// A segment and a POSIX object owned by `uid`, as logind would find them.
fn objects_of(uid: u32) -> anyhow::Result<()> {
    let page = inspect::page_size();
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | 0o600;
    let shmid =
        call!(sysv::shmget(libc::IPC_PRIVATE => call::ipc_key, page, flags => call::ipc_flags))?;
    // ANCHOR: objects
    let mut ds = sysv::shmctl_stat(shmid).context("IPC_STAT")?;
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = uid;
    call!(sysv::shmctl_set(shmid, &ds => |d: &&libc::shmid_ds| format!(
        "{{uid={}, gid={}}}",
        d.shm_perm.uid, d.shm_perm.gid
    )))?;
    let name = names::unique_name(10, &format!("uid{uid}"));
    let oflags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    let fd = call!(shm_open(
        name.as_str(),
        oflags,
        Mode::from_bits_truncate(0o600)
    ))?;
    call!(fchown(
        &fd,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(uid))
    ))?;
    // ANCHOR_END: objects
    Ok(())
}

// ANCHOR: sweep
/// What logind does when the last session of `user` ends (systemd's
/// clean_ipc_by_uid in src/shared/clean-ipc.c, for shared memory): nothing
/// for a system user; otherwise IPC_RMID on every segment whose owner uid is
/// the user's and that no process has attached (nattch 0), and unlink of
/// every /dev/shm file the user owns. `inside` is the same user as seen in
/// this namespace. Returns (segments, files) removed.
fn logout(user: u32, inside: u32, sys_uid_max: u32) -> anyhow::Result<(usize, usize)> {
    if user <= sys_uid_max {
        explain(format!(
            "uid {user} <= {sys_uid_max}: a system user (or root), spared."
        ));
        return Ok((0, 0));
    }
    let mut segments = 0;
    for seg in inspect::sysv_segments() {
        if seg.uid == inside && seg.nattch == 0 {
            call!(sysv::shmctl_rmid(seg.shmid))?;
            segments += 1;
        }
    }
    let mut files = 0;
    for e in inspect::dev_shm_entries() {
        if e.uid == inside {
            let name = format!("/{}", e.name);
            call!(shm_unlink(name.as_str()))?;
            files += 1;
        }
    }
    Ok((segments, files))
}
// ANCHOR_END: sweep

/// In new IPC and mount namespaces: `SYS_UID_MAX`.
pub fn inside(args: &[String]) -> anyhow::Result<()> {
    let sys_uid_max: u32 = args.first().context("SYS_UID_MAX")?.parse()?;
    docker_dev_shm()?;
    let me = outer_uid_of_root();
    // As root: a student (uid 1000) and a system user. In a user namespace
    // only our own uid exists (as 0 inside): one user, ourselves.
    let users: Vec<(u32, u32)> = if me == 0 && nix::unistd::geteuid().is_root() {
        vec![(STUDENT, STUDENT), (sys_uid_max, sys_uid_max)]
    } else {
        note(format!(
            "in this user namespace only our own uid {me} exists (as uid 0 inside), so the \
             objects have one owner; run as root to see a system user's objects spared too"
        ));
        vec![(me, 0)]
    };
    for (_, inside) in &users {
        objects_of(*inside)?;
    }
    let listing = || {
        let mut l: Vec<String> = vec![inspect::sysvipc_header()];
        l.extend(inspect::sysv_segments().into_iter().map(|s| s.line));
        l.extend(
            inspect::dev_shm_entries()
                .iter()
                .map(inspect::ShmEntry::ls_line),
        );
        l
    };
    evidence(
        "cat /proc/sysvipc/shm; ls -l /dev/shm   # inside, before",
        listing(),
    );
    for (user, inside) in &users {
        subsection(format!("The last session of uid {user} ends"));
        let (segments, files) = logout(*user, *inside, sys_uid_max)?;
        fact(
            &format!("result logout {user}"),
            if segments + files == 0 {
                "spared".to_string()
            } else {
                format!("removed {segments} segment(s) and {files} file(s)")
            },
        );
    }
    evidence(
        "cat /proc/sysvipc/shm; ls -l /dev/shm   # inside, after",
        listing(),
    );
    let left = inspect::sysv_segments().len() + inspect::dev_shm_entries().len();
    if users.len() == 2 && left != 2 {
        bail!("expected the system user's two objects to be left, found {left}");
    }
    explain("What is left dies with this namespace when the child exits.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::remove_ipc_in;

    #[test]
    fn the_last_remove_ipc_of_the_login_section_counts() {
        let conf = "[Login]\n#RemoveIPC=yes\nRemoveIPC = no\n[Other]\nRemoveIPC=yes\n";
        assert_eq!(remove_ipc_in(conf).as_deref(), Some("RemoveIPC = no"));
        assert_eq!(remove_ipc_in("[Login]\n#RemoveIPC=no\n"), None);
        assert_eq!(remove_ipc_in("[Login]\nRemoveIPCX=no\n"), None);
    }
}
