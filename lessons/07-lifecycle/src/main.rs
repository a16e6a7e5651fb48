//! Lesson 7: the lifecycle of shared memory, how to inspect it, and how to
//! clean up after it.
//!
//! The article says `shm_unlink` frees nothing until every process lets go,
//! and that `ipcs` manages System V segments. This lesson makes the lifecycle
//! visible, one part per module:
//!
//! 1. [`posix_unlink`]: `shm_unlink` while mapped;
//! 2. [`sysv_rmid`]: `shmctl(IPC_RMID)` while attached, with a monitor in the
//!    spirit of TLPI's `svshm_mon` ([`monitor`]);
//! 3. [`leaks`]: a child killed with SIGKILL leaves both kinds behind;
//! 4. [`memfd`]: shared memory with no name, passed with SCM_RIGHTS, sealed;
//! 5. [`leftovers`]: what `scripts/cleanup` lists and removes.
//!
//! Run it: `cargo run -p lesson-7` (all parts), `-- --part 3` (one part),
//! `-- --cleanup` (dry run of the cleanup command), `-- --monitor SHMID`.

mod leaks;
mod leftovers;
mod memfd;
mod monitor;
mod posix_unlink;
mod sysv_rmid;

use std::process::ExitCode;

use common::args::{Cli, Parsed};
use common::narrate;

const ABOUT: &str = "Lesson 7: lifecycle, inspection and cleanup. shm_unlink while mapped, \
    IPC_RMID while attached, objects leaked by a crashed child, memfd_create with SCM_RIGHTS and \
    seals, and the cleanup command (dry run by default).";

fn main() -> ExitCode {
    common::run(lesson)
}

fn cli() -> Cli {
    Cli::new("lesson-7", ABOUT)
        .hold()
        .option_with(
            "--part",
            "N",
            "run one part: 1 shm_unlink while mapped, 2 IPC_RMID while attached, 3 leaks after a \
             crash, 4 memfd, 5 the cleanup dry run",
            parse_part,
        )
        .flag(
            "--cleanup",
            "list this user's leftover lesson objects (a dry run; scripts/cleanup calls this)",
        )
        .flag("--yes", "with --cleanup: remove what is listed")
        .option_with(
            "--prefix",
            "P",
            "with --cleanup: only POSIX objects and scratch files whose names start with P \
             (P starts with shm-lessons-)",
            leftovers::parse_prefix,
        )
        .option_with(
            "--keys",
            "K,K",
            "with --cleanup: only System V segments with these lesson keys (0x53......)",
            leftovers::parse_keys,
        )
        .option_with(
            "--monitor",
            "SHMID",
            "print a segment's IPC_STAT record, like TLPI's svshm_mon, and exit",
            |s| s.parse::<i32>().map_err(|e| e.to_string()),
        )
        .flag(
            "--receive-fd",
            "internal: be part 4's receiver (a Unix socket on stdin)",
        )
        .flag(
            "--trusting",
            "internal, with --receive-fd: map the memfd without checking its seals",
        )
}

fn parse_part(s: &str) -> Result<u8, String> {
    match s.parse::<u8>() {
        Ok(n @ 1..=5) => Ok(n),
        _ => Err("a part is a number from 1 to 5".into()),
    }
}

/// Options that only make sense together: a usage error (exit 2) otherwise.
fn check_combinations(a: &common::args::Args) -> Result<(), String> {
    let cleanup_only = ["--yes", "--prefix", "--keys"];
    let modes = ["--cleanup", "--monitor", "--receive-fd", "--part"]
        .iter()
        .filter(|m| a.flag(m) || a.value(m).is_some())
        .count();
    if modes > 1 {
        return Err("choose one of --part, --cleanup, --monitor".into());
    }
    let lesson_runs =
        !(a.flag("--cleanup") || a.flag("--receive-fd") || a.value("--monitor").is_some());
    if !lesson_runs && (a.flag("--pause") || a.value("--hold").is_some()) {
        return Err("--hold and --pause go with the lesson's parts".into());
    }
    if a.flag("--trusting") && !a.flag("--receive-fd") {
        return Err("--trusting goes with --receive-fd".into());
    }
    if !a.flag("--cleanup") {
        for o in cleanup_only {
            if a.flag(o) || a.value(o).is_some() {
                return Err(format!("{o} goes with --cleanup"));
            }
        }
    }
    Ok(())
}

fn lesson() -> anyhow::Result<()> {
    let cli = cli();
    let args = match cli.parse_from(std::env::args().skip(1)) {
        Ok(a) => match check_combinations(&a) {
            Ok(()) => a,
            Err(message) => usage_exit(&cli, &message),
        },
        Err(Parsed::Help(u)) => {
            print!("{u}");
            return Ok(());
        }
        Err(Parsed::Usage { message, .. }) => usage_exit(&cli, &message),
    };

    if args.flag("--receive-fd") {
        return memfd::receiver(args.flag("--trusting"));
    }
    if let Some(shmid) = args.get::<i32>("--monitor") {
        return monitor::run(shmid);
    }
    if args.flag("--cleanup") {
        let keys = args.value("--keys").map(leftovers::parse_keys).transpose();
        let filter = leftovers::Filter {
            prefix: args
                .value("--prefix")
                .unwrap_or(common::names::PREFIX)
                .to_string(),
            keys: keys.map_err(anyhow::Error::msg)?,
        };
        return leftovers::run(&filter, args.flag("--yes"));
    }

    narrate::title(
        "lesson-7",
        "lifecycle, inspection and cleanup",
        "When does shared memory really go away? shm_unlink and IPC_RMID remove a name, not \
         the memory; a crash removes neither; memfd has no name to leak. Every call is shown \
         with its real arguments, and every claim with evidence from this machine.",
    );
    let part = args.get::<u8>("--part");
    let hold = args.hold();
    let run = |n: u8| part.is_none_or(|p| p == n);
    if run(1) {
        posix_unlink::run(hold)?;
    }
    if run(2) {
        sysv_rmid::run(hold)?;
    }
    if run(3) {
        leaks::run(hold)?;
    }
    if run(4) {
        memfd::run()?;
    }
    if run(5) {
        leftovers::part()?;
    }
    narrate::conclude(match part {
        Some(n) => format!("lesson-7 part {n} done, and nothing of this run is left behind."),
        None => "lesson-7 done: names go with shm_unlink/IPC_RMID, memory with the last user, \
                 and nothing of this run is left behind."
            .to_string(),
    });
    Ok(())
}

fn usage_exit(cli: &Cli, message: &str) -> ! {
    eprintln!("lesson-7: {message}\n\n{}", cli.usage());
    std::process::exit(2);
}
