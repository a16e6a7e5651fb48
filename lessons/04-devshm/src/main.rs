//! Lesson 4: `/dev/shm` unmounted, on a disk, removed, or full.
//!
//! The article unmounts `/dev/shm`, then removes it, and reports that
//! `shm_open` still worked and put its file in `/dev/`. Repeating that on a
//! shared machine would remove `/dev/shm` for everyone (even from a private
//! mount namespace: see `common::ns`), and today's glibc would not behave
//! that way anyway. So each scenario runs in a child process: this same
//! program, started again with `--internal-scenario N`, which makes a private
//! mount namespace of its own, stages the scenario there on a fresh tmpfs,
//! ramfs or bind mount, and shows what this machine's libc does. The parent
//! stays in the host's namespace and checks, after every scenario, that the
//! host's mount table has not changed.
//!
//! One module per scenario, each read top to bottom: [`baseline`],
//! [`unmounted`], [`on_disk`], [`removed`] (with [`glibc`], old glibc's
//! search), [`full`]; [`show`] holds what they share.
//!
//! Run it: `cargo run -p lesson-4` (as root, or as a user allowed to make
//! user namespaces).

mod baseline;
mod full;
mod glibc;
mod on_disk;
mod removed;
mod show;
mod unmounted;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use common::args::{Cli, Hold};
use common::children::{Waited, wait_deadline};
use common::narrate::{self, evidence, explain, fact, section};
use common::{Exit, call, cleanup, fault, inspect, names, ns};
use nix::sys::wait::WaitStatus;
use nix::unistd::{Pid, getpid};

/// How the parent starts a scenario's child: `lesson-4 --internal-scenario N
/// NAME SCRATCH HOLD`. Not in `--help`: only the lesson itself uses it.
const INTERNAL: &str = "--internal-scenario";

/// The exit status for "skipped: this machine can't stage the scenarios".
const SKIPPED: u8 = 77;

const SCENARIOS: [&str; 5] = [
    "0. Baseline: /dev/shm is a tmpfs",
    "1. Unmounted: /dev/shm is a plain directory",
    "2. On a disk filesystem: a scratch directory bind-mounted over /dev/shm",
    "3. Removed: no /dev/shm at all",
    "4. Full: a 1 MiB tmpfs on /dev/shm",
];

const ABOUT: &str = "Lesson 4: what shm_open does when /dev/shm is unmounted, on a disk, \
    removed or full. Each scenario is staged in a private mount namespace of its own child \
    process; the host's mounts are never changed.";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some(INTERNAL) {
        return scenario_main(&argv[1..]);
    }
    common::run(lesson)
}

/// The parent: stays in the host's namespace, runs each scenario's child and
/// checks the host's mount table after each one.
fn lesson() -> anyhow::Result<()> {
    let args = Cli::new("lesson-4", ABOUT)
        .hold()
        .option_with(
            "--only",
            "N",
            "run only scenario N (0 to 4)",
            parse_scenario,
        )
        .parse();
    let hold = args.hold();
    let only = args.value("--only").and_then(|v| parse_scenario(v).ok());
    let before = show::host_before();
    let scratch = show::scratch_dir()?;
    let scratch_guard = cleanup::path(&scratch); // removed on every path
    let scratch_fs = inspect::fs_type(&scratch).context("statfs of the scratch directory")?;
    fact(
        "scratch directory",
        format!("{}, on {scratch_fs}", scratch.display()),
    );

    // ANCHOR: parent
    for (n, heading) in SCENARIOS.iter().enumerate() {
        if only.is_some_and(|o| o != n) {
            continue;
        }
        section(heading);
        let name = names::unique_name(4, &format!("s{n}"));
        if !run_scenario(n, &name, &scratch, hold)? {
            show::explain_without_namespaces(n);
            return Err(Exit(SKIPPED).into());
        }
        host_mounts_unchanged(&before)?;
        explain("The host's mount table is unchanged: the child's mounts died with it.");
    }
    section("The host, after");
    let count = host_mounts_unchanged(&before)?;
    let same = format!("unchanged ({count} mounts)");
    fact("/proc/self/mountinfo", same);
    call!(cleanup::rmdir(scratch.as_path()))?;
    scratch_guard.disarm();
    // ANCHOR_END: parent
    narrate::conclude(
        "lesson-4 done: every scenario ran in a namespace of its own, and the host's mounts \
         are exactly as they were.",
    );
    Ok(())
}

/// The host's mount table, compared with `before`: an error lists every
/// change; otherwise the number of mounts. Shows the host's /dev/shm too.
fn host_mounts_unchanged(before: &[String]) -> anyhow::Result<usize> {
    evidence(
        "findmnt /dev/shm   # in the host's namespace",
        show::host_dev_shm(),
    );
    let now = ns::mount_table();
    let diff = ns::mount_table_diff(before, &now);
    if !diff.is_empty() {
        bail!("the host's mount table changed:\n{}", diff.join("\n"));
    }
    Ok(now.len())
}

// ANCHOR: run_scenario
/// Start scenario `n` in a child and wait for it. False if the child could
/// not make a private mount namespace (it exits 77 after saying why).
fn run_scenario(n: usize, name: &str, scratch: &Path, hold: Hold) -> anyhow::Result<bool> {
    let args = [
        INTERNAL,
        &n.to_string(),
        name,
        &scratch.display().to_string(),
        &hold_arg(hold),
    ];
    // If the child is killed before it removes its object (Ctrl-C during a
    // hold), the parent removes it: scenario 0's is in the host's /dev/shm,
    // scenario 2's in the scratch directory; the others die with the
    // child's namespace.
    let object = cleanup::posix_object(name);
    let child = ns::spawn_self(&args.map(String::from)).context("starting the scenario's child")?;
    let pid = Pid::from_raw(child.id() as i32);
    let guard = cleanup::child(pid); // stopped and reaped on every path
    let waited = wait_deadline(pid, Duration::from_secs(4000)).context("waitpid")?;
    guard.disarm();
    if let Waited::Ended(WaitStatus::Exited(..)) = waited {
        object.disarm(); // the child ended normally: its own guards removed it
    }
    match waited {
        Waited::Ended(WaitStatus::Exited(_, 0)) => Ok(true),
        Waited::Ended(WaitStatus::Exited(_, code)) if code == i32::from(SKIPPED) => Ok(false),
        Waited::Ended(s) => bail!("scenario {n}'s child {}", fault::describe(s)),
        Waited::TimedOut(_) => bail!("scenario {n}'s child did not finish in time"),
    }
}
// ANCHOR_END: run_scenario

// ANCHOR: child
/// A scenario's child: make the namespace while still single-threaded, then
/// stage and run. unshare(CLONE_NEWUSER) fails with EINVAL once there is a
/// second thread, and CLONE_NEWNS would move only this thread, leaving the
/// cleanup thread of `common::run` in the host's namespace.
fn scenario_main(args: &[String]) -> ExitCode {
    narrate::init();
    let Some((n, name, scratch, hold)) = internal_args(args) else {
        eprintln!(
            "usage: lesson-4 {INTERNAL} N NAME SCRATCH no|pause|SECS (lesson-4 starts this itself)"
        );
        return ExitCode::from(2);
    };
    fact("child", format!("pid {}", getpid()));
    if n > 0 {
        if let Err(refused) = ns::enter_private_mount_namespace() {
            refused.explain();
            return ExitCode::from(SKIPPED);
        }
    }
    common::run(|| match n {
        0 => baseline::run(&name, hold),
        1 => unmounted::run(&name, hold),
        2 => on_disk::run(&name, &scratch, hold),
        3 => removed::run(&name, &scratch, hold),
        _ => full::run(&name, hold),
    })
}
// ANCHOR_END: child

/// `--hold` as the child's last argument: `no`, `pause` or seconds.
fn hold_arg(hold: Hold) -> String {
    match hold {
        Hold::No => "no".to_string(),
        Hold::UntilEnter => "pause".to_string(),
        Hold::For(d) => d.as_secs().to_string(),
    }
}

/// The child's arguments: scenario, object name, scratch directory, hold.
fn internal_args(args: &[String]) -> Option<(usize, String, PathBuf, Hold)> {
    let hold = match args.get(3)?.as_str() {
        "no" => Hold::No,
        "pause" => Hold::UntilEnter,
        secs => Hold::For(Duration::from_secs(secs.parse().ok()?)),
    };
    let n = parse_scenario(args.first()?).ok()?;
    Some((n, args.get(1)?.clone(), PathBuf::from(args.get(2)?), hold))
}

/// A scenario number for `--only` and the internal entry point.
fn parse_scenario(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n < SCENARIOS.len() => Ok(n),
        _ => Err(format!(
            "{s:?} is not a scenario (0 to {})",
            SCENARIOS.len() - 1
        )),
    }
}
