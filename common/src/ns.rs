//! Private mount namespaces: staging mounts without touching the host's.
//!
//! A lesson that shows what happens when `/dev/shm` is missing, on a disk or
//! full must never change the machine's own mounts: on a shared server that
//! would break every other student's programs. Instead the lesson starts a
//! child (its own executable again, see [`spawn_self`]) that first calls
//! [`enter_private_mount_namespace`]:
//!
//! 1. `unshare(CLONE_NEWNS)` (as root), or `unshare(CLONE_NEWUSER|CLONE_NEWNS)`
//!    with a uid/gid map (as anyone else): a copy of the mount table that
//!    belongs to this process alone;
//! 2. `mount(NULL, "/", NULL, MS_REC|MS_PRIVATE, NULL)`: no mount or unmount
//!    made from now on propagates back to the host, even where the host's
//!    mounts are shared (systemd makes `/` shared).
//!
//! Then the child mounts a fresh tmpfs (or a bind mount of a scratch
//! directory) on top of what it wants to change. It never unmounts or removes
//! anything it inherited: since Linux 3.18, `rmdir` of a directory that is a
//! mount point in *another* namespace succeeds and detaches the mount there,
//! so `umount /dev/shm; rmdir /dev/shm` in a private namespace still removes
//! the host's `/dev/shm`. When the child exits, its namespace and every mount
//! in it disappear.
//!
//! Call [`enter_private_mount_namespace`] before [`crate::run`], which starts
//! the cleanup thread, for two reasons (unshare(2)). `CLONE_NEWUSER` implies
//! `CLONE_THREAD`, so `unshare(CLONE_NEWUSER|...)` fails with `EINVAL` in a
//! process that has more than one thread. `CLONE_NEWNS` alone is accepted
//! there, but it moves only the calling thread: the cleanup thread would stay
//! in the host's mount namespace, and its guards would act on the host's
//! mounts instead of ours.

use std::process::{Child, Command};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{getegid, geteuid};

use crate::narrate::{self, explain, fact, step};

/// Set to `1` (by the tests only) to make [`enter_private_mount_namespace`]
/// behave as if the kernel refused `unshare` with EPERM, without calling it.
pub const DENY_ENV: &str = "SHM_LESSONS_DENY_UNSHARE";

/// How the child got its private mount namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// As root: `unshare(CLONE_NEWNS)`.
    Root,
    /// As another user: a user namespace where we are root, mapped to our
    /// own uid and gid outside.
    UserNamespace { outer_uid: u32, outer_gid: u32 },
}

/// The kernel (or the test switch) refused a private mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The call that failed, with its real arguments.
    pub call: String,
    pub errno: Errno,
    /// True when [`DENY_ENV`] simulated the refusal.
    pub simulated: bool,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} = -1 {}{}",
            self.call,
            narrate::errno_result(self.errno),
            if self.simulated {
                format!(" (simulated by {DENY_ENV}=1)")
            } else {
                String::new()
            }
        )
    }
}

impl Refused {
    /// Why the kernel says no, in words a student can act on.
    pub fn reason(&self) -> String {
        let why = match self.errno {
            Errno::EPERM => {
                "this process may not make the namespace: it lacks CAP_SYS_ADMIN (it is not \
                 root, or it is root inside a container), and unprivileged user namespaces \
                 are disabled here (a sysctl such as \
                 kernel.unprivileged_userns_clone=0 or \
                 kernel.apparmor_restrict_unprivileged_userns=1), or a container's seccomp \
                 profile forbids unshare (Docker's default does)"
            }
            Errno::ENOSPC => {
                "the limit on user namespaces is reached (user.max_user_namespaces may be 0)"
            }
            Errno::EINVAL => {
                "the kernel has no namespace support built in (CONFIG_USER_NS / \
                 CONFIG_NAMESPACES), or, for CLONE_NEWUSER (which implies CLONE_THREAD), the \
                 process had more than one thread"
            }
            Errno::ENOSYS => "the kernel or a seccomp filter does not offer unshare at all",
            _ => "the kernel refused it",
        };
        why.to_string()
    }

    /// Print what failed, why, and the sysctls that decide it.
    pub fn explain(&self) {
        narrate::warn(format!("no private mount namespace: {self}"));
        explain(format!("why: {}.", self.reason()));
        for (label, path) in [
            (
                "user.max_user_namespaces",
                "/proc/sys/user/max_user_namespaces",
            ),
            (
                "kernel.unprivileged_userns_clone",
                "/proc/sys/kernel/unprivileged_userns_clone",
            ),
            (
                "kernel.apparmor_restrict_unprivileged_userns",
                "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            ),
        ] {
            if let Ok(v) = std::fs::read_to_string(path) {
                fact(label, v.trim());
            }
        }
    }
}

fn denied_for_tests() -> bool {
    std::env::var_os(DENY_ENV).is_some_and(|v| v == "1")
}

fn try_unshare(flags: CloneFlags, text: &str) -> Result<(), Refused> {
    let call = format!("unshare({text})");
    let s = step(call.clone());
    if denied_for_tests() {
        let r = Refused {
            call,
            errno: Errno::EPERM,
            simulated: true,
        };
        let _ = s.outcome(Err::<(), Errno>(r.errno), |_| String::new());
        narrate::note(format!(
            "not really called: {DENY_ENV}=1 (a switch for the tests) simulates a refusal"
        ));
        return Err(r);
    }
    s.outcome(unshare(flags), |_| "0".to_string())
        .map_err(|errno| Refused {
            call: format!("unshare({text})"),
            errno,
            simulated: false,
        })
}

fn write_proc(path: &str, text: &str) -> Result<(), Refused> {
    let s = step(format!("write({path:?}, {text:?})"));
    s.outcome(std::fs::write(path, text), |_| text.len().to_string())
        .map_err(|errno| Refused {
            call: format!("write({path:?}, {text:?})"),
            errno,
            simulated: false,
        })
}

/// Give this process, while it is still single-threaded (see the module
/// documentation), a mount namespace of its own, with
/// propagation set to private, narrating every call. As root this is
/// `unshare(CLONE_NEWNS)`; otherwise, or when that is refused, a user
/// namespace is added, where we are root mapped to our own uid/gid.
pub fn enter_private_mount_namespace() -> Result<Sandbox, Refused> {
    let (uid, gid) = (geteuid().as_raw(), getegid().as_raw());
    let sandbox = if uid == 0 {
        match try_unshare(CloneFlags::CLONE_NEWNS, "CLONE_NEWNS") {
            Ok(()) => Sandbox::Root,
            Err(r) if r.simulated => return Err(r),
            Err(_) => {
                explain("root without CAP_SYS_ADMIN (a container?): try a user namespace too.");
                enter_user_namespace(uid, gid)?
            }
        }
    } else {
        enter_user_namespace(uid, gid)?
    };
    explain(
        "from here on this process has its own copy of the mount table. Next, make every \
         mount in it private, so nothing we mount or unmount propagates to the host:",
    );
    let s = step("mount(NULL, \"/\", NULL, MS_REC|MS_PRIVATE, NULL)");
    s.outcome(
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
        |_| "0".to_string(),
    )
    .map_err(|errno| Refused {
        call: "mount(NULL, \"/\", NULL, MS_REC|MS_PRIVATE, NULL)".into(),
        errno,
        simulated: false,
    })?;
    Ok(sandbox)
}

fn enter_user_namespace(uid: u32, gid: u32) -> Result<Sandbox, Refused> {
    try_unshare(
        CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS,
        "CLONE_NEWUSER|CLONE_NEWNS",
    )?;
    explain(format!(
        "a user namespace: inside it we may be root (uid 0), mapped to uid {uid} outside, with \
         the right to mount tmpfs and bind mounts in our own mount namespace and nothing more. \
         setgroups must be denied before an unprivileged gid map is accepted."
    ));
    write_proc("/proc/self/setgroups", "deny")?;
    write_proc("/proc/self/uid_map", &format!("0 {uid} 1"))?;
    write_proc("/proc/self/gid_map", &format!("0 {gid} 1"))?;
    Ok(Sandbox::UserNamespace {
        outer_uid: uid,
        outer_gid: gid,
    })
}

/// Start this program again with `args`, sharing our stdout and stderr (its
/// narration appears in place). The child is killed by the kernel if the
/// lesson dies first (`PR_SET_PDEATHSIG`). The caller waits for it, e.g. with
/// [`crate::children::wait_deadline`], and guards it with
/// [`crate::cleanup::child`].
pub fn spawn_self(args: &[String]) -> std::io::Result<Child> {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    narrate::end_pending();
    let _ = std::io::stdout().flush();
    let parent = std::process::id() as libc::pid_t;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(args);
    // SAFETY: runs in the forked child before exec: prctl, getppid and _exit
    // are async-signal-safe and touch no memory of ours.
    unsafe {
        cmd.pre_exec(move || {
            // If the lesson dies (even by SIGKILL, which runs no cleanup),
            // the kernel kills the scenario's child too: it never outlives
            // us holding a mount namespace and a scratch directory.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            if libc::getppid() != parent {
                libc::_exit(1); // the lesson died before prctl took effect
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// The lines of `/proc/self/mountinfo`: this process's mount table, exactly.
pub fn mount_table() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Lines only in `before` (prefixed `-`) or only in `after` (`+`).
pub fn mount_table_diff(before: &[String], after: &[String]) -> Vec<String> {
    let gone = before
        .iter()
        .filter(|l| !after.contains(l))
        .map(|l| format!("- {l}"));
    let new = after
        .iter()
        .filter(|l| !before.contains(l))
        .map(|l| format!("+ {l}"));
    gone.chain(new).collect()
}

/// The mount that holds `path` (what `findmnt -T PATH` shows): among the
/// mounts of the device `stat(path)` reports, the newest (topmost) whose
/// mount point is the longest prefix of `path`. Mounts hidden under a newer
/// one (a tmpfs mounted over `/dev` hides `/dev/shm`) are skipped, because
/// their device differs.
pub fn mount_containing(path: &str) -> Option<crate::inspect::MountInfo> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let under = |mp: &str| {
        mp == "/" || path == mp || path.strip_prefix(mp).is_some_and(|r| r.starts_with('/'))
    };
    crate::inspect::mounts()
        .into_iter()
        .filter(|m| m.line.split_whitespace().nth(2) == Some(want.as_str()))
        .filter(|m| under(&m.mount_point))
        .max_by_key(|m| m.mount_point.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_shows_what_changed() {
        let a: Vec<String> = vec!["1 / ext4".into(), "2 /dev/shm tmpfs".into()];
        let b: Vec<String> = vec!["1 / ext4".into(), "3 /dev/shm ext4".into()];
        assert_eq!(
            mount_table_diff(&a, &b),
            vec!["- 2 /dev/shm tmpfs", "+ 3 /dev/shm ext4"]
        );
        assert!(mount_table_diff(&a, &a).is_empty());
    }

    #[test]
    fn the_root_mount_holds_everything() {
        assert!(mount_containing("/").is_some());
        if let Some(m) = mount_containing("/proc/self") {
            assert_eq!(m.mount_point, "/proc");
        }
    }

    #[test]
    fn a_refusal_names_the_call_and_errno() {
        let r = Refused {
            call: "unshare(CLONE_NEWNS)".into(),
            errno: Errno::EPERM,
            simulated: false,
        };
        assert_eq!(
            r.to_string(),
            "unshare(CLONE_NEWNS) = -1 EPERM (Operation not permitted)"
        );
        assert!(r.reason().contains("CAP_SYS_ADMIN"));
    }
}
