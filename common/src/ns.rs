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
//! [`enter`] does the same for other namespaces too (lesson-10 unshares
//! `CLONE_NEWIPC`, whose `kernel.shm*` sysctls then belong to the child
//! alone), and [`join`] enters another process's namespaces with `setns`,
//! as `nsenter -t PID` does. [`spawn_self_linked`] starts a child with a
//! [`Link`], so the lesson can keep it in its namespaces while it looks from
//! outside, then release it.
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
use nix::unistd::{Pid, getegid, geteuid};

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
        let what = if self.call.contains("CLONE_NEWNS") || self.call.contains("/ns/mnt") {
            "no private mount namespace"
        } else {
            "no private namespace"
        };
        narrate::warn(format!("{what}: {self}"));
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

/// `CLONE_NEWUSER|CLONE_NEWIPC|CLONE_NEWNS`: the user namespace first, as
/// `unshare -Urim` makes them.
pub fn clone_flags(flags: CloneFlags) -> String {
    let names = [
        (CloneFlags::CLONE_NEWUSER, "CLONE_NEWUSER"),
        (CloneFlags::CLONE_NEWIPC, "CLONE_NEWIPC"),
        (CloneFlags::CLONE_NEWNS, "CLONE_NEWNS"),
        (CloneFlags::CLONE_NEWUTS, "CLONE_NEWUTS"),
        (CloneFlags::CLONE_NEWPID, "CLONE_NEWPID"),
        (CloneFlags::CLONE_NEWNET, "CLONE_NEWNET"),
    ];
    let text: Vec<&str> = names
        .iter()
        .filter(|(f, _)| flags.contains(*f))
        .map(|(_, n)| *n)
        .collect();
    if text.is_empty() {
        narrate::flags(flags)
    } else {
        text.join("|")
    }
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
    enter(CloneFlags::CLONE_NEWNS)
}

/// Give this (single-threaded) process the namespaces in `flags`
/// (`CLONE_NEWIPC`, `CLONE_NEWNS`, ...), narrating every call, the way
/// `unshare -i -m` (as root) or `unshare -Urim` (as anyone else) does: as
/// root `unshare(flags)`; otherwise, or when that is refused, with
/// `CLONE_NEWUSER` added and a uid/gid map where we are root mapped to our
/// own uid/gid. With `CLONE_NEWNS`, every mount is then made private.
pub fn enter(flags: CloneFlags) -> Result<Sandbox, Refused> {
    let (uid, gid) = (geteuid().as_raw(), getegid().as_raw());
    let sandbox = if uid == 0 {
        match try_unshare(flags, &clone_flags(flags)) {
            Ok(()) => Sandbox::Root,
            Err(r) if r.simulated => return Err(r),
            Err(_) => {
                explain("root without CAP_SYS_ADMIN (a container?): try a user namespace too.");
                enter_user_namespace(flags, uid, gid)?
            }
        }
    } else {
        enter_user_namespace(flags, uid, gid)?
    };
    if !flags.contains(CloneFlags::CLONE_NEWNS) {
        return Ok(sandbox);
    }
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

fn enter_user_namespace(flags: CloneFlags, uid: u32, gid: u32) -> Result<Sandbox, Refused> {
    let flags = CloneFlags::CLONE_NEWUSER | flags;
    try_unshare(flags, &clone_flags(flags))?;
    explain(format!(
        "a user namespace: inside it we may be root (uid 0), mapped to uid {uid} outside, with \
         the right to mount tmpfs and bind mounts in our own mount namespace and (on kernels \
         that allow it) set the IPC sysctls of our own IPC namespace, and no right over the \
         host's. setgroups must be denied before an unprivileged gid map is accepted."
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
    self_command(args)?.spawn()
}

/// Like [`spawn_self`], with a [`Link`] to the child: a Unix socket pair
/// whose other end is the child's stdin (the child takes it with
/// [`Link::from_stdin`]). The lesson tells a child kept in a namespace when
/// to go on (or drops the link to release it: the child reads end of file),
/// and the child says when it is ready.
pub fn spawn_self_linked(args: &[String]) -> std::io::Result<(Child, Link)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let mut cmd = self_command(args)?;
    cmd.stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
        theirs,
    )));
    let child = cmd.spawn()?;
    // Never wait for ever on a child that hangs: after a minute, recv gives
    // up (None), and the lesson stops the child by its pid.
    Ok((
        child,
        Link::new(ours, Some(std::time::Duration::from_secs(60))),
    ))
}

/// One end of a line-based link between the lesson and a child of its own.
pub struct Link {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
}

impl Link {
    fn new(stream: std::os::unix::net::UnixStream, timeout: Option<std::time::Duration>) -> Link {
        let _ = stream.set_read_timeout(timeout);
        Link {
            reader: std::io::BufReader::new(stream),
        }
    }

    /// In a child started with [`spawn_self_linked`]: its end, on stdin.
    /// It waits as long as the lesson wants (a `--hold`); if the lesson dies,
    /// the kernel kills the child (`PR_SET_PDEATHSIG`).
    pub fn from_stdin() -> std::io::Result<Link> {
        use std::os::fd::AsFd;
        let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
        Ok(Link::new(std::os::unix::net::UnixStream::from(fd), None))
    }

    /// Send one line.
    pub fn send(&mut self, line: &str) -> std::io::Result<()> {
        use std::io::Write;
        writeln!(self.reader.get_mut(), "{line}")
    }

    /// The next line, or `None` at end of file (the other side is gone or
    /// released us), on an error, or (in the lesson) after a minute without
    /// one.
    pub fn recv(&mut self) -> Option<String> {
        use std::io::BufRead;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => Some(line.trim_end().to_string()),
            _ => None,
        }
    }
}

/// The command that starts this program again (see [`spawn_self`]).
fn self_command(args: &[String]) -> std::io::Result<Command> {
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
    Ok(cmd)
}

/// A namespace as the kernel names it: the target of `/proc/PID/ns/KIND`
/// (`ipc:[4026531839]`), for process `pid` or, with `None`, for ourselves.
/// Two processes are in the same namespace exactly when these are equal.
pub fn identity(pid: Option<Pid>, kind: &str) -> Option<String> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/ns/{kind}"),
        None => format!("/proc/self/ns/{kind}"),
    };
    std::fs::read_link(path)
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

/// The `CLONE_NEW*` flag that `setns` takes for a `/proc/PID/ns` entry.
fn ns_flag(kind: &str) -> Option<CloneFlags> {
    Some(match kind {
        "user" => CloneFlags::CLONE_NEWUSER,
        "ipc" => CloneFlags::CLONE_NEWIPC,
        "mnt" => CloneFlags::CLONE_NEWNS,
        "uts" => CloneFlags::CLONE_NEWUTS,
        "net" => CloneFlags::CLONE_NEWNET,
        _ => return None,
    })
}

/// Join the namespaces `kinds` (`"ipc"`, `"mnt"`, ...) of process `pid`, as
/// `nsenter -t PID` does, narrating each call: open every
/// `/proc/PID/ns/KIND`, then `setns` into its user namespace first when it
/// is not ours (that gives a process of the same uid the capabilities the
/// others need), then into each of `kinds`. Call it while single-threaded:
/// `setns` into a user or mount namespace refuses a multi-threaded process.
pub fn join(pid: Pid, kinds: &[&str]) -> Result<(), Refused> {
    use std::os::fd::AsRawFd;
    let mut wanted: Vec<&str> = Vec::new();
    if identity(Some(pid), "user") != identity(None, "user") {
        wanted.push("user");
    }
    wanted.extend(kinds.iter().copied().filter(|k| *k != "user"));
    let mut fds = Vec::new();
    for kind in wanted {
        let path = format!("/proc/{pid}/ns/{kind}");
        let call = format!("open({path:?}, O_RDONLY|O_CLOEXEC)");
        let s = step(call.clone());
        let fd = s
            .outcome(std::fs::File::open(&path), |f| {
                format!("fd {}", f.as_raw_fd())
            })
            .map_err(|errno| Refused {
                call,
                errno,
                simulated: false,
            })?;
        fds.push((kind, fd));
    }
    for (kind, fd) in fds {
        let flag = ns_flag(kind).unwrap_or(CloneFlags::empty());
        let call = format!("setns({}, {})", fd.as_raw_fd(), clone_flags(flag));
        let s = step(call.clone());
        if denied_for_tests() {
            let _ = s.outcome(Err::<(), Errno>(Errno::EPERM), |_| String::new());
            return Err(Refused {
                call,
                errno: Errno::EPERM,
                simulated: true,
            });
        }
        s.outcome(nix::sched::setns(&fd, flag), |_| "0".to_string())
            .map_err(|errno| Refused {
                call,
                errno,
                simulated: false,
            })?;
    }
    Ok(())
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
    fn identities_name_the_kind_and_match_our_own() {
        let ours = identity(None, "ipc").expect("/proc/self/ns/ipc");
        assert!(ours.starts_with("ipc:["), "{ours}");
        let me = Pid::from_raw(std::process::id() as i32);
        assert_eq!(identity(Some(me), "ipc"), Some(ours));
        assert_eq!(
            clone_flags(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUSER),
            "CLONE_NEWUSER|CLONE_NEWNS"
        );
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
