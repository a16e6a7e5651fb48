//! Lesson 10: containers and hosts. IPC namespaces, Docker's `--ipc` modes
//! and `/dev/shm` size, the kernel's limits, and systemd-logind's RemoveIPC.
//!
//! Most shared-memory failures in production come from where a program
//! runs, not from its code. This lesson stages each one in namespaces it
//! makes itself, so the host is never changed:
//!
//! 1. [`ipcns`]: a System V segment belongs to an IPC namespace, a POSIX
//!    object to a mount namespace;
//! 2. [`modes`]: Docker's `--ipc` modes, emulated with `unshare` and `setns`;
//! 3. [`shmsize`]: a 64 MiB `/dev/shm` (Docker's default `--shm-size`);
//! 4. [`limits`]: `kernel.shmmni`, `shmmax`, `shmall` and `shm_rmid_forced`,
//!    set inside the lesson's own IPC namespace;
//! 5. [`removeipc`]: systemd-logind's `RemoveIPC=`, read from this machine's
//!    configuration and emulated on the lesson's own objects.
//!
//! The lesson process stays in the host's namespaces. Each scenario runs in
//! a child: this program again, started with `--internal ROLE ...`
//! ([`kept`]), which makes or joins namespaces while it is still
//! single-threaded (`unshare` of a user namespace and `setns` into a user or
//! mount namespace refuse a multi-threaded process), then narrates its part. As root it unshares directly, like Docker; as
//! anyone else it adds a user namespace, like `unshare -Urim`.
//!
//! Run it: `cargo run -p lesson-10` (all parts), `-- --part 2` (one part),
//! `-- --hold 30` to look around from another terminal.

mod host;
mod ipcns;
mod kept;
mod limits;
mod modes;
mod removeipc;
mod shmsize;

use std::process::ExitCode;

use common::args::Cli;
use common::narrate;

const ABOUT: &str = "Lesson 10: containers and hosts. IPC namespaces hide System V segments \
    but not POSIX objects; Docker's --ipc modes and 64 MiB /dev/shm, emulated; the kernel's \
    shm limits made small in an IPC namespace of the lesson's own; systemd-logind's RemoveIPC. \
    Nothing on the host is changed: every change happens in namespaces the lesson creates.";

/// The exit status for "skipped: this machine refuses the namespaces".
pub const SKIPPED: u8 = 77;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some(kept::INTERNAL) {
        return kept::child_main(&argv[1..]);
    }
    common::run(lesson)
}

fn parse_part(s: &str) -> Result<u8, String> {
    match s.parse::<u8>() {
        Ok(n @ 1..=5) => Ok(n),
        _ => Err("a part is a number from 1 to 5".into()),
    }
}

fn lesson() -> anyhow::Result<()> {
    let args = Cli::new("lesson-10", ABOUT)
        .hold()
        .option_with(
            "--part",
            "N",
            "run one part: 1 IPC namespaces, 2 Docker's --ipc modes, 3 --shm-size, 4 kernel \
             limits, 5 systemd's RemoveIPC",
            parse_part,
        )
        .parse();
    let part = args.get::<u8>("--part");
    let hold = args.hold();
    narrate::title(
        "lesson-10",
        "containers and hosts",
        "Where a program runs decides what shared memory it sees and how much it gets. Each \
         part runs in namespaces this lesson makes itself (as root with unshare, like Docker; \
         otherwise inside a user namespace, like unshare -Urim), and the host's segments, IPC \
         limits and mounts are checked unchanged at the end.",
    );
    let before = host::Snapshot::take();
    before.show("The host, before");
    let run = |n: u8| part.is_none_or(|p| p == n);
    if run(1) {
        ipcns::run(hold)?;
    }
    if run(2) {
        modes::run(hold)?;
    }
    if run(3) {
        shmsize::run(hold)?;
    }
    if run(4) {
        limits::run(&before)?;
    }
    if run(5) {
        removeipc::run()?;
    }
    host::Snapshot::take().unchanged_since(&before)?;
    narrate::conclude(match part {
        Some(n) => format!(
            "lesson-10 part {n} done: every change was made in namespaces of the lesson's own, \
             and the host is exactly as it was."
        ),
        None => "lesson-10 done: every change was made in namespaces of the lesson's own, and \
                 the host is exactly as it was."
            .to_string(),
    });
    Ok(())
}
