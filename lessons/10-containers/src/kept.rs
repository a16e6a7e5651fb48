//! The children that run each scenario, and the link that keeps one alive.
//!
//! The lesson starts this program again as `lesson-10 --internal ROLE ARGS`
//! ([`start`]). The child makes or joins the namespaces its role needs while
//! still single-threaded, then narrates its scenario. A child that must stay
//! in its namespace while the lesson looks from outside calls [`ready`]: it
//! tells the lesson (over a socket pair on its stdin) and waits until the
//! lesson releases it ([`Kept::release`]). A child that cannot make its
//! namespaces says why and exits 77; the lesson then skips with the same
//! status.

use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail};
use common::children::{Waited, wait_deadline};
use common::cleanup::{self, Guard};
use common::narrate::{self, fact};
use common::ns::{self, Link};
use common::{Exit, fault};
use nix::sched::CloneFlags;
use nix::sys::wait::WaitStatus;
use nix::unistd::{Pid, getpid};

use crate::{SKIPPED, ipcns, limits, modes, removeipc, shmsize};

/// How the lesson starts a child: `lesson-10 --internal ROLE ARGS`. Not in
/// `--help`: only the lesson itself uses it.
pub const INTERNAL: &str = "--internal";

/// The namespaces a role's child makes or joins before anything else.
enum Namespaces {
    /// The host's, like `docker run --ipc=host`.
    Host,
    /// New ones (`unshare`), with a user namespace added when not root.
    New(CloneFlags),
    /// Those of another child (`setns`, as `nsenter -t PID`).
    Join(Pid, &'static [&'static str]),
}

static LINK: Mutex<Option<Link>> = Mutex::new(None);

/// A child's entry point.
pub fn child_main(argv: &[String]) -> ExitCode {
    narrate::init();
    let role = argv.first().map(String::as_str).unwrap_or("");
    let args: Vec<String> = argv.iter().skip(1).cloned().collect();
    let other = || args.first().and_then(|p| p.parse().ok()).map(Pid::from_raw);
    let ipc = CloneFlags::CLONE_NEWIPC;
    let ipc_mnt = CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWNS;
    let namespaces = match role {
        "keep" | "limits" => Namespaces::New(ipc),
        "visit" | "look" => match other() {
            Some(pid) => Namespaces::Join(pid, &["ipc"]),
            None => return usage(),
        },
        "private" | "shareable" | "none" | "shm-size" | "removeipc" => Namespaces::New(ipc_mnt),
        "container" => match other() {
            Some(pid) => Namespaces::Join(pid, &["ipc", "mnt"]),
            None => return usage(),
        },
        "host" => Namespaces::Host,
        _ => return usage(),
    };
    fact("child", format!("pid {} ({role})", getpid()));
    let entered = match namespaces {
        Namespaces::Host => Ok(()),
        Namespaces::New(flags) => ns::enter(flags).map(|_| ()),
        Namespaces::Join(pid, kinds) => ns::join(pid, kinds),
    };
    if let Err(refused) = entered {
        refused.explain();
        return ExitCode::from(SKIPPED);
    }
    if let Ok(link) = Link::from_stdin() {
        *LINK.lock().unwrap_or_else(|p| p.into_inner()) = Some(link);
    }
    common::run(|| match role {
        "keep" => ipcns::keeper(),
        "visit" => ipcns::visit(&args[1..]),
        "look" => ipcns::look(&args[1..]),
        "private" | "shareable" | "none" | "host" => modes::container(role, &args),
        "container" => modes::join(&args[1..]),
        "shm-size" => shmsize::inside(),
        "limits" => limits::inside(&args),
        "removeipc" => removeipc::inside(&args),
        _ => bail!("no role {role}"),
    })
}

fn usage() -> ExitCode {
    eprintln!("usage: lesson-10 {INTERNAL} ROLE ARGS (lesson-10 starts this itself)");
    ExitCode::from(2)
}

/// In a child: tell the lesson we are ready (with `info` for it), then wait
/// until it releases us.
pub fn ready(info: &str) {
    narrate::end_pending();
    let mut link = LINK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(l) = link.as_mut() {
        if l.send(&format!("ready {info}")).is_ok() {
            while l.recv().is_some() {}
        }
    }
    common::cleanup::park_if_interrupted();
}

/// A child the lesson started, maybe still kept in its namespaces.
pub struct Kept {
    pub pid: Pid,
    /// What the child said when it was ready.
    pub info: String,
    role: String,
    link: Option<Link>,
    guard: Option<Guard>,
}

/// Start `lesson-10 --internal ROLE ARGS` and wait until it is ready (or has
/// ended). Exit 77 from the child (namespaces refused) skips the lesson.
pub fn start(role: &str, args: &[String]) -> anyhow::Result<Kept> {
    let mut argv = vec![INTERNAL.to_string(), role.to_string()];
    argv.extend(args.iter().cloned());
    let (child, mut link) = ns::spawn_self_linked(&argv).context("starting a child")?;
    let pid = Pid::from_raw(child.id() as i32);
    // Stopped and reaped on every path: SIGTERM first, so the child's own
    // cleanup removes what it made (on the host too, for --ipc=host) and
    // reaps its own children; SIGKILL if it has not ended in 5 s.
    let guard = cleanup::program(pid, Duration::from_secs(5));
    let mut kept = Kept {
        pid,
        info: String::new(),
        role: role.to_string(),
        link: None,
        guard: Some(guard),
    };
    match link.recv() {
        Some(line) if line.starts_with("ready") => {
            kept.info = line["ready".len()..].trim().to_string();
            kept.link = Some(link);
        }
        _ => {
            drop(link);
            kept.finish()?;
        }
    }
    Ok(kept)
}

/// Run a child to its end.
pub fn run(role: &str, args: &[String]) -> anyhow::Result<Pid> {
    let kept = start(role, args)?;
    let pid = kept.pid;
    kept.release()?;
    Ok(pid)
}

impl Kept {
    /// Let the child go on (it leaves its namespaces by exiting), and reap it.
    pub fn release(mut self) -> anyhow::Result<()> {
        drop(self.link.take());
        self.finish()
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        let Some(guard) = self.guard.take() else {
            return Ok(());
        };
        let waited = wait_deadline(self.pid, Duration::from_secs(120)).context("waitpid")?;
        let status = match waited {
            Waited::Ended(s) => s,
            Waited::TimedOut(_) => {
                guard.disarm(); // wait_deadline killed and reaped it
                bail!("the {} child did not finish in time", self.role);
            }
        };
        guard.disarm();
        match status {
            WaitStatus::Exited(_, 0) => Ok(()),
            WaitStatus::Exited(_, code) if code == i32::from(SKIPPED) => {
                narrate::warn(format!(
                    "skipped: exit status {SKIPPED}: this machine refuses the namespaces the \
                     lesson needs (the child said which call failed, and why, just above). \
                     Run it as root, or where unprivileged user namespaces are allowed."
                ));
                Err(Exit(SKIPPED).into())
            }
            s => bail!("the {} child {}", self.role, fault::describe(s)),
        }
    }
}
