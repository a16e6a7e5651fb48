//! Lesson 9: pages.
//!
//! The article maps its object with `MAP_SHARED` and never says why. This
//! lesson makes the page visible: what `MAP_SHARED` and `MAP_PRIVATE` do to
//! it, what `fork` copies and when, what the first touch of a page costs,
//! what huge pages change, and what happens to a peer's mapping when the
//! object grows. The evidence comes from the kernel: `/proc/PID/smaps`,
//! `/proc/PID/pagemap`, `ru_minflt` from `getrusage`, and `/proc/meminfo`.
//!
//! 1. `MAP_SHARED` vs `MAP_PRIVATE` on one POSIX object;
//! 2. fork and copy-on-write, counted in page faults;
//! 3. a disk file mapped `MAP_SHARED` vs a shm object: write-back and msync;
//! 4. the price of first touch (`--mib N`, default 64);
//! 5. huge pages: `MAP_HUGETLB`, and transparent huge pages on a tmpfs of our
//!    own (in a private mount namespace);
//! 6. growing a segment while a peer maps it.
//!
//! Run it: `cargo run -p lesson-9` (`--part N` for one part, `--hold 30` to
//! inspect part 1 from another terminal).

use std::process::ExitCode;

use anyhow::Context;
use common::Exit;
use common::args::Cli;
use common::call;
use common::narrate;
use nix::unistd::{SysconfVar, sysconf};

mod cow;
mod disk;
mod grow;
mod huge;
mod shared;
mod touch;
mod util;

const ABOUT: &str = "Lesson 9: pages. MAP_SHARED against MAP_PRIVATE on one object, \
    copy-on-write after fork counted in page faults, a disk file against a shm object, the \
    price of first touch, huge pages, and growing a segment while a peer maps it.";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some(huge::INTERNAL) {
        return huge::child_main(&argv[1..]);
    }
    common::run(lesson)
}

fn parse_part(s: &str) -> Result<u8, String> {
    match s.parse::<u8>() {
        Ok(n @ 1..=6) => Ok(n),
        _ => Err("the parts are 1 to 6".into()),
    }
}

fn parse_mib(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ 1..=4096) => Ok(n),
        _ => Err("a whole number of MiB, 1 to 4096".into()),
    }
}

fn lesson() -> anyhow::Result<()> {
    let args = Cli::new("lesson-9", ABOUT)
        .hold()
        .option_with(
            "--part",
            "N",
            "run only part N: 1 shared vs private, 2 fork and copy-on-write, 3 disk file vs \
             shm, 4 first touch, 5 huge pages, 6 growing a segment",
            parse_part,
        )
        .option_with(
            "--mib",
            "N",
            "how many MiB part 4 touches (default 64)",
            parse_mib,
        )
        .parse();
    let only = args.get::<u8>("--part");
    let runs = |n: u8| only.is_none_or(|p| p == n);

    narrate::title(
        "lesson-9",
        "pages",
        "The article maps its object with MAP_SHARED and never says why. Here is what \
         MAP_SHARED and MAP_PRIVATE do to a page, what fork copies and when, and what pages \
         cost, with the kernel's own numbers: /proc/PID/smaps, /proc/PID/pagemap and the \
         minor-fault counter of getrusage.",
    );
    let page = call!(sysconf(SysconfVar::PAGE_SIZE))?
        .context("sysconf(_SC_PAGE_SIZE) has no value")? as usize;

    if runs(1) {
        shared::part1(page, args.hold())?;
    }
    if runs(2) {
        cow::part2(page)?;
    }
    if runs(3) {
        disk::part3(page)?;
    }
    if runs(4) {
        touch::part4(page, args.get::<usize>("--mib").unwrap_or(64))?;
    }
    let mut thp_ran = true;
    if runs(5) {
        thp_ran = huge::part5(page)?;
    }
    if runs(6) {
        grow::part6(page)?;
    }
    if !thp_ran {
        narrate::warn(format!(
            "skipped: part 5's transparent huge pages on a tmpfs of our own (no private mount \
             namespace here, see above); everything else ran. Exit status {}.",
            huge::SKIPPED
        ));
        return Err(Exit(huge::SKIPPED).into());
    }
    narrate::conclude(
        "lesson-9 done: every page this run mapped is unmapped, and nothing is left.",
    );
    Ok(())
}
