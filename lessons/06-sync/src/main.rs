//! Lesson 6: the kernel does not synchronise shared memory.
//!
//! The article says "the kernel does not synchronize access to the shared
//! memory" and uses `wait` as its only synchronisation. It also says `msync`
//! "writes the cached data back to the physical memory so that other processes
//! can listen for these changes". This lesson forks workers over one
//! `MAP_SHARED` object and measures, on the running kernel, one module per
//! part:
//!
//! 1. `race.rs`: two processes lose updates to a shared counter;
//! 2. `atomics.rs`: `fetch_add` (an atomic read-modify-write) gives exactly 2N;
//! 3. `semaphore.rs`: a process-shared POSIX semaphore guards the increment;
//! 4. `futex_lock.rs`: a lock on one futex word sleeps instead of spinning,
//!    and `FUTEX_PRIVATE_FLAG` never wakes another process;
//! 5. `robust.rs`: a lock holder killed with SIGKILL: a plain process-shared
//!    mutex is lost forever, a robust one reports `EOWNERDEAD`;
//! 6. `msync.rs` and `ordering.rs`: visibility needs no `msync`; `MS_SYNC` is
//!    about disks; order comes from the memory model.
//!
//! `shared.rs` holds the mapping, the two-worker contest and the rules for
//! forked children. Run it: `cargo run -p lesson-6` (`--part N` runs one
//! part, `--hold 30` keeps the futex sleeper and the lock-holding victims
//! alive to inspect).

mod atomics;
mod futex_lock;
mod msync;
mod ordering;
mod posix;
mod race;
mod robust;
mod semaphore;
mod shared;

use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use common::args::{Cli, parse_secs};
use common::narrate::{self, block, explain, note, section, subsection};
use common::{call, inspect, names, shm};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, shm_unlink};
use nix::unistd::{close, ftruncate};

use shared::{PAGES, Shared};

const ABOUT: &str = "Lesson 6: the kernel does not synchronise shared memory. Forked processes \
    race on a shared counter and lose updates; atomics, a process-shared semaphore, futexes and \
    a robust mutex fix or explain it; and msync turns out to have nothing to do with \
    visibility.";

/// Increments per worker process in parts 1-5.
const DEFAULT_ITERATIONS: u64 = 1_000_000;

fn main() -> ExitCode {
    common::run(lesson)
}

fn parse_part(s: &str) -> Result<u8, String> {
    match s.parse::<u8>() {
        Ok(v @ 1..=6) => Ok(v),
        _ => Err("the parts are numbered 1 to 6".into()),
    }
}

fn parse_iterations(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(v @ 1..=50_000_000) => Ok(v),
        _ => Err("a whole number from 1 to 50000000".into()),
    }
}

fn lesson() -> anyhow::Result<()> {
    let args = Cli::new("lesson-6", ABOUT)
        .option_with("--part", "N", "run only part N (1-6)", parse_part)
        .option_with(
            "--iterations",
            "N",
            format!("increments per worker process in parts 1 to 5 (default {DEFAULT_ITERATIONS})"),
            parse_iterations,
        )
        .option_with(
            "--hold",
            "SECS",
            "keep the sleeping futex child (part 4) and each victim holding the lock (part 5) \
             alive SECS seconds, to look at them from another terminal",
            |s| parse_secs(s, 3600),
        )
        .parse();
    let only = args.get::<u8>("--part");
    let wants = |p: u8| only.is_none_or(|o| o == p);
    let n = args
        .get::<u64>("--iterations")
        .unwrap_or(DEFAULT_ITERATIONS);
    let hold = args.get::<u64>("--hold").map(Duration::from_secs);
    let memname = names::unique_name(6, "");

    narrate::title(
        "lesson-6",
        "the kernel does not synchronise shared memory",
        "Two processes, one MAP_SHARED page: watch updates get lost, fix it three ways and \
         compare the costs, see a lock die with its holder, and find out what msync is really \
         for.",
    );

    section("0. One shared object for every part");
    // ANCHOR: setup
    let page = inspect::page_size();
    let len = PAGES * page;
    let (fd, object) = shm::create(&memname)?; // removed on every path from here on
    call!(ftruncate(&fd, len as libc::off_t))?;
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let nz = NonZeroUsize::new(len).context("zero length")?;
    // SAFETY: a fresh mapping at a kernel-chosen address overlaps no Rust
    // object; it is reached only through atomics and raw pointers.
    let base = unsafe { call!(mmap(None, nz, prot, MapFlags::MAP_SHARED, &fd, 0)) }?;
    call!(close(fd))?;
    let shared = Shared { base, len, page }; // owns the mapping from here on
    // ANCHOR_END: setup
    explain(format!(
        "{PAGES} pages, zero-filled, shared by the parent and every child it forks. Each part \
         uses its own page."
    ));

    let mut costs: Vec<(&str, f64)> = Vec::new();
    if wants(1) {
        race::run(&shared, n)?;
    }
    if wants(2) {
        costs.push(("atomic fetch_add", atomics::run(&shared, n)?));
    }
    if wants(3) {
        let ns = semaphore::run(&shared, n)?;
        costs.push(("sem_wait + increment + sem_post", ns));
    }
    if wants(4) {
        let ns = futex_lock::run(&shared, n, hold)?;
        costs.push(("futex lock + increment + unlock", ns));
    }
    if costs.len() > 1 {
        subsection("Cost per increment, two processes on this machine");
        let rows: Vec<String> = costs
            .iter()
            .map(|(what, ns)| format!("{what:<36} {ns:>10.1} ns"))
            .collect();
        block(rows.join("\n"));
        note(
            "a debug build (cargo run) is several times slower than cargo run --release; the \
             figures vary from run to run and with the machine's load.",
        );
    }
    if wants(5) {
        robust::run(&shared, n, hold, &memname)?;
    }
    if wants(6) {
        msync::run(&shared)?;
    }

    section("Unmap and unlink");
    // ANCHOR: cleanup
    shared.unmap()?; // munmap: takes `shared`, so no reference into it survives
    call!(shm_unlink(memname.as_str()))?;
    object.disarm(); // removed by the lesson itself
    // ANCHOR_END: cleanup

    narrate::conclude(
        "lesson-6 done: the kernel shares the memory but not the discipline. Atomics, \
         semaphores, futexes and robust mutexes give exact results; msync has nothing to do \
         with it.",
    );
    Ok(())
}
