//! Lesson 8: is shared memory really the fastest IPC?
//!
//! The article says shared memory "has the highest efficiency among the
//! various inter-process communication methods". This lesson measures it on
//! the student's machine against a pipe (default and 1 MiB), a Unix
//! socketpair, eventfd and a plain memcpy: throughput (256 MiB in 64 KiB
//! chunks, parent to child) and latency (an 8-byte ping-pong), with the two
//! processes pinned to different CPUs, then to the same one.
//!
//! Run it: `cargo run -p lesson-8 --release` (`--quick` for a first look,
//! `--json` for a machine-readable summary). `--sweep` measures pipe, Unix
//! socket and the ring at message sizes from 64 B to 1 MiB instead, and
//! `--svg PATH` draws that sweep as a chart.

mod bench;
mod chart;
mod machine;
mod results;
mod ring;

use std::io::{IsTerminal, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::Duration;

use bench::{Bench, Kind, LATENCY, Placement, SWEEP, SWEEP_SIZES, THROUGHPUT, one_cpu};
use common::args::Cli;
use common::narrate::{self, block, compare, evidence, explain, fact, note, section, warn};
use common::report::{CallResult, errno_of};
use common::{call, inspect};
use nix::errno::Errno;
use nix::sched::{sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use results::{Group, Series, ratio};
use ring::{CHUNK, MAX_MSG, Region, SLOTS, SLOTS_OFFSET, Wait};

const ABOUT: &str = "Lesson 8: is shared memory really the fastest IPC? Measures throughput \
    (parent to child, 64 KiB chunks) and 8-byte round-trip latency over pipes, a Unix \
    socketpair, eventfd and a shared-memory ring with three ways to wait (spin, yield, futex), \
    against a plain memcpy; pinned to different CPUs, then to one.";

/// How much work one invocation does.
struct Plan {
    runs: usize,
    chunks: u32,
    trips: u32,
    memcpy_len: usize,
    /// A spinner sharing a CPU waits out whole time slices: far fewer messages.
    same_cpu_spin_chunks: u32,
    same_cpu_spin_trips: u32,
    timeout: Duration,
    quick: bool,
}

/// What one group of measurements moves.
struct Job<'a> {
    throughput: &'a [Kind],
    latency: &'a [Kind],
    /// The message size of the throughput test and of the ping-pong.
    sizes: (usize, usize),
    /// Messages a throughput run, round trips a latency run.
    counts: (u32, u32),
}

/// How many messages and round trips a sweep run makes at `size`: about
/// the same bytes at every size, between a floor (enough samples for a
/// p99) and a cap (small messages would take too long).
fn sweep_counts(quick: bool, size: usize) -> (u32, u32) {
    let (bytes, cap, floor, trip_bytes, trip_cap, trip_floor) = if quick {
        (8usize << 20, 10_000, 16, 1usize << 20, 1_000, 100)
    } else {
        (64 << 20, 50_000, 64, 8 << 20, 5_000, 200)
    };
    let n = |b: usize, lo: usize, hi: usize| (b / size).clamp(lo, hi) as u32;
    (n(bytes, floor, cap), n(trip_bytes, trip_floor, trip_cap))
}

fn parse_runs(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=50).contains(&n) => Ok(n),
        Ok(_) => Err("between 1 and 50".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn main() -> ExitCode {
    common::run(lesson)
}

fn lesson() -> anyhow::Result<()> {
    let args = Cli::new("lesson-8", ABOUT)
        .flag(
            "--quick",
            "16 MiB and 1000 round trips a run: a few seconds, for tests and a first look",
        )
        .option_with(
            "--runs",
            "N",
            "runs of each measurement (default 5; --sweep: 3, --sweep --quick: 1)",
            parse_runs,
        )
        .flag(
            "--json",
            "narrate on stderr and print one JSON object of medians on stdout",
        )
        .flag(
            "--sweep",
            "measure pipe, Unix socket and the ring at 64 B .. 1 MiB messages (default 3 runs; \
             with --quick 1 run of fewer messages)",
        )
        .option_with(
            "--svg",
            "PATH",
            "write the sweep as a chart (implies --sweep)",
            |p| {
                if p.is_empty() {
                    Err("an empty path".into())
                } else {
                    Ok(p.to_string())
                }
            },
        )
        .parse();
    let quick = args.flag("--quick");
    let svg = args.value("--svg").map(std::path::PathBuf::from);
    let sweep = args.flag("--sweep") || svg.is_some();
    let default_runs = match (sweep, quick) {
        (false, _) => 5,
        (true, false) => 3,
        (true, true) => 1,
    };
    let runs = args
        .value("--runs")
        .map_or(Ok(default_runs), parse_runs)
        .unwrap_or(default_runs);
    let plan = if quick {
        Plan {
            runs,
            chunks: 256,
            trips: 1000,
            memcpy_len: 16 << 20,
            same_cpu_spin_chunks: 32,
            same_cpu_spin_trips: 10,
            timeout: Duration::from_secs(10),
            quick,
        }
    } else {
        Plan {
            runs,
            chunks: 4096, // 256 MiB
            trips: 20_000,
            memcpy_len: 64 << 20,
            same_cpu_spin_chunks: 64,
            same_cpu_spin_trips: 20,
            timeout: Duration::from_secs(20),
            quick,
        }
    };
    // --json: the narration goes to stderr, the object alone to stdout.
    let json_out = if args.flag("--json") {
        Some(stdout_to_stderr()?)
    } else {
        None
    };

    narrate::title(
        "lesson-8",
        "is shared memory really the fastest IPC?",
        "A measured shoot-out: pipes, a Unix socketpair, eventfd and a shared-memory ring, \
         against memcpy. Shared memory removes copies, not wake-ups: watch which of the two \
         dominates each number.",
    );

    // ANCHOR: machine
    section("1. The machine the numbers come from");
    let m = machine::read();
    fact("CPU model", &m.model);
    fact("CPUs online", m.online);
    fact(
        "virtualised",
        if m.virtualized {
            "yes (the 'hypervisor' flag is set in /proc/cpuinfo)"
        } else {
            "no 'hypervisor' flag in /proc/cpuinfo"
        },
    );
    let mask = call!(sched_getaffinity(Pid::from_raw(0)))?;
    let usable = machine::cpus_in(&mask);
    let load = m.load1.map_or("?".to_string(), |l| format!("{l:.2}"));
    evidence(
        "grep -m1 'model name' /proc/cpuinfo; nproc; cut -d' ' -f1 /proc/loadavg",
        [
            format!("model name : {}", m.model),
            usable.len().to_string(),
            load.clone(),
        ],
    );
    if m.virtualized {
        explain(
            "A virtual machine's idle vCPU is halted by the hypervisor; waking it to run a \
             sleeping reader can cost tens of microseconds. Every blocking round trip across \
             CPUs pays it (section 8 compares the two placements).",
        );
    }
    if m.load1.is_some_and(|l| l >= 0.5) {
        warn(format!(
            "the load average over the last minute is {load}: other programs (perhaps the \
             build) kept the CPUs busy. They compete with the benchmark, so expect noisy \
             figures; the min column shows the best run of each."
        ));
    }
    // ANCHOR_END: machine

    // ANCHOR: region
    section("2. The shared-memory ring: one mapping made before fork");
    let room = if sweep { MAX_MSG } else { CHUNK }; // the largest message
    let region = Region::map(room)?;
    inspect::show_maps(&format!("{:x}", region.addr()), region.addr() as *const _);
    block(format!(
        "offset  what\n\
         0       head: count of chunks written  (+ 'reader sleeps' flag, 8-byte message)\n\
         64      tail: count of chunks read     (+ 'writer sleeps' flag, 8-byte message)\n\
         128     control: ready, abort, end time, checksums\n\
         {SLOTS_OFFSET}    {SLOTS} slots of up to {} KiB",
        room / 1024
    ));
    explain(
        "MAP_SHARED|MAP_ANONYMOUS: memory with no name, shared with the children forked after \
         it (a MAP_PRIVATE mapping would be copied on the first write). The writer fills a \
         slot and stores head+1 (release); the reader sees it (acquire), copies the slot out \
         and stores tail+1. head and tail sit on different 64-byte cache lines, so each CPU \
         writes only its own line.",
    );
    explain(
        "How a side waits for the other: spin (the PAUSE instruction in a loop, never \
         sleeping); spin then sched_yield(); or spin then futex(FUTEX_WAIT) on the counter, \
         woken by futex(FUTEX_WAKE) from the other side. The futex is shared (no \
         FUTEX_PRIVATE_FLAG): the two processes are different address spaces.",
    );
    // ANCHOR_END: region

    // ANCHOR: kernel
    section("3. The kernel transports (each run makes fresh ones)");
    narrate::subsection("a pipe, default size");
    drop(bench::make_fds(Kind::Pipe, true, true)?);
    explain("A pipe carries bytes one way: the ping-pong needs a second one for the answers.");
    narrate::subsection("a pipe enlarged to 1 MiB");
    // EPERM: above /proc/sys/fs/pipe-max-size, or this user already holds
    // more pipe buffers than fs.pipe-user-pages-soft allows (a busy server).
    let big_pipe_refused = match bench::make_fds(Kind::Pipe1M, false, true) {
        Err(e) if errno_of(&e) == Some(Errno::EPERM) => {
            warn(
                "the kernel refused a 1 MiB pipe to this user (see /proc/sys/fs/pipe-max-size \
                 and pipe-user-pages-soft): that row is skipped.",
            );
            true
        }
        other => {
            drop(other?);
            false
        }
    };
    narrate::subsection("a Unix stream socketpair");
    drop(bench::make_fds(Kind::Unix, true, true)?);
    narrate::subsection("two eventfds (ping and pong)");
    drop(bench::make_fds(Kind::Eventfd, true, true)?);
    explain(
        "Each of these copies every byte twice: write() from the writer's buffer into the \
         kernel, read() from the kernel into the reader's buffer. The ring copies twice too \
         (into a slot, out of it) but never enters the kernel, unless a side sleeps.",
    );
    // ANCHOR_END: kernel

    // ANCHOR: placement
    section("4. Placement: sched_setaffinity");
    let (main_place, same_place) = placements(&usable)?;
    let cpu = one_cpu(main_place.parent_cpu)?;
    call!(sched_setaffinity(Pid::from_raw(0), &cpu))?;
    explain(format!(
        "The parent (writer, pinger) runs on CPU {}. Each forked child pins itself with \
         sched_setaffinity(0, {{CPU {}}}) before it says it is ready; the headline figures \
         are {}. Then both run on CPU {}.",
        main_place.parent_cpu,
        main_place.child_cpu,
        main_place.key(),
        same_place.parent_cpu
    ));
    let one_cpu_only = main_place == same_place;
    if one_cpu_only {
        warn(
            "only one CPU is usable here, so pure spin is skipped: a spinning reader on the \
             writer's own CPU burns its whole time slice before the writer can run, and each \
             round trip would cost milliseconds (run without taskset to see it measured).",
        );
    }
    // ANCHOR_END: placement

    // ANCHOR: memcpy
    section("5. The baseline: memcpy in one thread");
    let src = vec![0x5au8; plan.memcpy_len];
    let mut dst = vec![0u8; plan.memcpy_len];
    bench::memcpy(&src, &mut dst); // fault the pages in, untimed
    let mut memcpy = Series::new(Kind::Pipe);
    for _ in 0..plan.runs {
        memcpy.values.push(bench::memcpy(&src, &mut dst));
    }
    drop((src, dst));
    let memcpy_gbps = memcpy.median();
    fact(
        &format!("memcpy of {} MiB", plan.memcpy_len >> 20),
        format!(
            "median {:.1} GB/s, min {:.1} GB/s (runs: {})",
            memcpy_gbps.unwrap_or(0.0),
            memcpy.min().unwrap_or(0.0),
            plan.runs
        ),
    );
    explain(
        "At 64 MiB (the default; --quick copies 16 MiB) source and destination are larger \
         than the caches: this is the speed of DRAM, the ceiling for any transport whose \
         data must go through memory rather than stay in the caches.",
    );
    // ANCHOR_END: memcpy

    if sweep {
        let machine = (&m, &mask, usable.as_slice());
        let out = (memcpy_gbps, json_out, svg);
        return sweep_lesson(&plan, region, (main_place, one_cpu_only), machine, out);
    }

    // ANCHOR: measure
    section("6. Measuring");
    explain(format!(
        "Runs of each: {}. Throughput: {} MiB in {} KiB chunks a run; latency: {} round \
         trips of 8 bytes a run ({} in all).",
        plan.runs,
        (plan.chunks as usize * CHUNK) >> 20,
        CHUNK / 1024,
        plan.trips,
        plan.trips as usize * plan.runs
    ));
    if !one_cpu_only {
        explain(format!(
            "On one CPU, pure spin moves only {} chunks and makes {} round trips a run: each \
             wait there lasts until the end of a time slice.",
            plan.same_cpu_spin_chunks, plan.same_cpu_spin_trips
        ));
    }
    let mut bench = Bench::new(&region, plan.timeout);
    let groups_to_run = if one_cpu_only { 1 } else { 2 };
    let mut progress =
        Progress::new(groups_to_run * plan.runs * (THROUGHPUT.len() + LATENCY.len()));
    let job = Job {
        throughput: &THROUGHPUT,
        latency: &LATENCY,
        sizes: (CHUNK, 8),
        counts: (plan.chunks, plan.trips),
    };
    let main_group = measure(
        &mut bench,
        &plan,
        &job,
        main_place,
        (one_cpu_only, big_pipe_refused),
        &mut progress,
    )?;
    let same_group = if one_cpu_only {
        main_group.clone()
    } else {
        measure(
            &mut bench,
            &plan,
            &job,
            same_place,
            (false, big_pipe_refused),
            &mut progress,
        )?
    };
    progress.clear();
    // ANCHOR_END: measure

    // ANCHOR: report
    for g in if one_cpu_only {
        vec![&main_group]
    } else {
        vec![&main_group, &same_group]
    } {
        section(format!("7. Results, {}", g.placement));
        block(results::throughput_table(g, memcpy_gbps));
        let mut rows = vec![("memcpy (one thread)".to_string(), memcpy_gbps)];
        rows.extend(
            g.throughput
                .iter()
                .map(|s| (s.kind.label(false).to_string(), s.median())),
        );
        block(results::chart(&rows, false, "GB/s"));
        block(results::latency_table(g));
        let rows: Vec<_> = g
            .latency
            .iter()
            .map(|s| (s.kind.label(true).to_string(), s.median()))
            .collect();
        block(results::chart(&rows, true, "µs"));
        let sl = |s: Option<&Series>| s.and_then(Series::sleeps).unwrap_or(0.0);
        fact(
            "spin+futex: FUTEX_WAIT calls per message",
            format!(
                "{:.2} in the throughput test, {:.2} in the ping-pong",
                sl(g.tput("shm_futex")),
                sl(g.lat("shm_futex"))
            ),
        );
        for s in g.throughput.iter().chain(&g.latency) {
            if let Some(why) = &s.skipped {
                note(format!("{}: skipped: {why}", s.kind.label(false)));
            }
        }
    }
    // ANCHOR_END: report

    // ANCHOR: conclude
    section("8. What the numbers say");
    for text in conclusions(
        &main_group,
        &same_group,
        (memcpy_gbps, plan.memcpy_len >> 20),
        one_cpu_only,
        &m,
    ) {
        explain(text);
    }
    let spin_x = ratio(
        main_group.gbps("shm_spin"),
        main_group.best_kernel_gbps().map(|b| b.1),
    );
    let fmt_us = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} µs"));
    compare(
        "shared memory has the highest efficiency among the various inter-process \
         communication methods",
        &match spin_x {
            Some(x) => format!(
                "across CPUs a spinning ring moved data {x:.1}× faster than the best kernel \
                 transport; on one CPU, spinning then sleeping in a futex, its round trip took \
                 {} against the pipe's {}",
                fmt_us(same_group.us("shm_futex")),
                fmt_us(same_group.us("pipe")),
            ),
            None => format!(
                "pure spin could not be measured on one CPU; spinning then sleeping in a \
                 futex, the ring's round trip took {} against the pipe's {}",
                fmt_us(same_group.us("shm_futex")),
                fmt_us(same_group.us("pipe")),
            ),
        },
        "shared memory saves the copies through the kernel, not the cost of waking the other \
         side. It wins big only when the reader busy-waits on another CPU.",
    );
    // ANCHOR_END: conclude

    drop(bench);
    clean_up(region, &mask)?;

    if let Some(saved) = json_out {
        narrate::end_pending();
        std::io::stdout().flush().ok();
        restore_stdout(saved)?;
        println!(
            "{}",
            results::json(&m, usable.len(), memcpy_gbps, &main_group, &same_group)
        );
    }
    let all_ok = [&main_group, &same_group]
        .iter()
        .flat_map(|g| g.throughput.iter().chain(&g.latency))
        .all(|s| s.ok);
    if !all_ok {
        anyhow::bail!("a checksum or a reply did not match (see the tables)");
    }
    Ok(())
}

/// `--sweep`: sections 6 to 9 over every message size, in one placement
/// (different CPUs when there are two).
fn sweep_lesson(
    plan: &Plan,
    region: Region,
    (place, one_cpu_only): (Placement, bool),
    (m, mask, usable): (&machine::Machine, &nix::sched::CpuSet, &[usize]),
    (memcpy_gbps, json_out, svg): (Option<f64>, Option<OwnedFd>, Option<std::path::PathBuf>),
) -> anyhow::Result<()> {
    // ANCHOR: sweep
    section("6. Measuring: a sweep over message sizes");
    explain(format!(
        "At each size, {}: one-way throughput, and round trips carrying the whole message \
         both ways, each round trip timed with CLOCK_MONOTONIC. Runs of each: {}. eventfd \
         carries 8 bytes only, so it is not in the sweep (run without --sweep for it).",
        place.key(),
        plan.runs
    ));
    let mut bench = Bench::new(&region, plan.timeout);
    let mut progress = Progress::new(SWEEP_SIZES.len() * plan.runs * 2 * SWEEP.len());
    let mut sweep = Vec::new();
    for size in SWEEP_SIZES {
        let job = Job {
            throughput: &SWEEP,
            latency: &SWEEP,
            sizes: (size, size),
            counts: sweep_counts(plan.quick, size),
        };
        let skip = (one_cpu_only, false);
        sweep.push((
            size,
            measure(&mut bench, plan, &job, place, skip, &mut progress)?,
        ));
    }
    progress.clear();
    // ANCHOR_END: sweep

    section(format!("7. Results by message size, {}", place.key()));
    block(results::sweep_tables(&sweep));
    if let Some((_, g)) = sweep.first() {
        for s in g.throughput.iter().filter(|s| s.skipped.is_some()) {
            let why = s.skipped.as_deref().unwrap_or("");
            note(format!("{}: skipped: {why}", s.kind.label(false)));
        }
    }
    explain(
        "busy-wait: the receiver spins on its CPU and never sleeps; blocking: it sleeps in \
         the kernel (read, or FUTEX_WAIT after a short spin) and must be woken. Published \
         comparisons rarely say which one they measured.",
    );
    let caption = m.describe(usable.len());
    if let Some(path) = &svg {
        chart::write(path, &sweep, &caption)?;
        fact("chart written to", path.display());
    }

    section("8. What the numbers say");
    for text in sweep_conclusions(&sweep) {
        explain(text);
    }

    drop(bench);
    clean_up(region, mask)?;
    if let Some(saved) = json_out {
        narrate::end_pending();
        std::io::stdout().flush().ok();
        restore_stdout(saved)?;
        println!(
            "{}",
            results::sweep_json(m, usable.len(), memcpy_gbps, &sweep)
        );
    }
    let all_ok = sweep
        .iter()
        .flat_map(|(_, g)| g.throughput.iter().chain(&g.latency))
        .all(|s| s.ok);
    if !all_ok {
        anyhow::bail!("a checksum or a reply did not match (see the tables)");
    }
    Ok(())
}

/// Section 9: the affinity mask we started with, and the ring unmapped.
fn clean_up(region: Region, mask: &nix::sched::CpuSet) -> anyhow::Result<()> {
    section("9. Clean up");
    call!(sched_setaffinity(Pid::from_raw(0), mask))?; // the mask we started with
    region.unmap()?;
    narrate::conclude(
        "lesson-8 done: every transport's checksum and every reply were checked; the numbers \
         above are this machine's.",
    );
    Ok(())
}

/// The sweep's conclusions, from its numbers: how the ring's lead changes
/// with the size, how its round trip grows, and the tail.
fn sweep_conclusions(sweep: &[(usize, Group)]) -> Vec<String> {
    let mut out = Vec::new();
    let (Some((small, gs)), Some((large, gl))) = (sweep.first(), sweep.last()) else {
        return out;
    };
    let (small, large) = (results::size_label(*small), results::size_label(*large));
    let x = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}×"));
    let lead = |g: &Group, key| ratio(g.gbps(key), g.gbps("pipe"));
    if let (Some(a), Some(b)) = (lead(gs, "shm_spin"), lead(gl, "shm_spin")) {
        out.push(format!(
            "Throughput: the spinning ring moved {a:.1}× a pipe's bytes at {small} and {b:.1}× \
             at {large} (spin then futex: {} and {}; Unix socket: {} and {}). {}",
            x(lead(gs, "shm_futex")),
            x(lead(gl, "shm_futex")),
            x(lead(gs, "unix_socket")),
            x(lead(gl, "unix_socket")),
            if a > b {
                "The lead shrinks as messages grow: a pipe pays a system call and a wake-up \
                 per message whatever its size, while copying the bytes, which both do \
                 twice, grows with it."
            } else {
                "Here the lead did not shrink with the size: at small sizes something other \
                 than the system calls held the ring back, most often a CPU shared with \
                 another program."
            }
        ));
    }
    let skipped = gs.tput("shm_spin").and_then(|s| s.skipped.as_deref());
    if let (Some(why), Some(a), Some(b)) = (skipped, lead(gs, "shm_futex"), lead(gl, "shm_futex")) {
        out.push(format!(
            "Pure spin was not measured ({why}). The ring that sleeps, spin then futex, moved \
             {a:.1}× a pipe's bytes at {small} and {b:.1}× at {large}: when the two sides take \
             turns on one CPU, each wake-up costs about what a pipe's does."
        ));
    }
    let p50 = |g: &Group, key| g.lat(key).and_then(Series::spread).map(|s| s.p50);
    if let (Some(a), Some(b)) = (p50(gs, "shm_spin"), p50(gl, "shm_spin")) {
        out.push(format!(
            "Round trip, median: the spinning ring took {a:.2} µs at {small} and {b:.0} µs at \
             {large} ({:.0}×); the Unix socket {} and {} µs. This ring copies each message \
             into a slot and out again, both ways, so its round trip grows with the size \
             like the kernel's do. A zero-copy design, where the receiver reads the message \
             where the sender wrote it, keeps it flat.",
            b / a,
            p50(gs, "unix_socket").map_or("-".into(), |v| format!("{v:.1}")),
            p50(gl, "unix_socket").map_or("-".into(), |v| format!("{v:.0}")),
        ));
    }
    // The tail, at the smallest size, where a wake-up weighs most.
    let tails: Vec<String> = gs
        .latency
        .iter()
        .filter_map(|s| {
            let sp = s.spread()?;
            Some(format!(
                "{} p99 {:.1}× its median, slowest {:.0} µs",
                s.kind.label(true),
                sp.p99 / sp.p50,
                sp.max
            ))
        })
        .collect();
    if !tails.is_empty() {
        out.push(format!(
            "The tail at {small}: {}. A reader with a deadline must plan for the p99 and the \
             slowest round trip, not for the median.",
            tails.join("; ")
        ));
    }
    out
}

/// The two placements: the parent and the child on the first two usable
/// CPUs, then both on the first (one placement if only one CPU is usable).
fn placements(usable: &[usize]) -> anyhow::Result<(Placement, Placement)> {
    let place = |parent_cpu, child_cpu| Placement {
        parent_cpu,
        child_cpu,
    };
    match usable {
        [a, b, ..] => Ok((place(*a, *b), place(*a, *a))),
        [a] => Ok((place(*a, *a), place(*a, *a))),
        [] => anyhow::bail!("sched_getaffinity returned no CPU"),
    }
}

/// Every transport of a job, `plan.runs` times, in one placement.
fn measure(
    bench: &mut Bench,
    plan: &Plan,
    job: &Job,
    place: Placement,
    (skip_spin, skip_big_pipe): (bool, bool),
    progress: &mut Progress,
) -> anyhow::Result<Group> {
    let same = place.parent_cpu == place.child_cpu;
    let mut group = Group {
        placement: place.key(),
        throughput: job.throughput.iter().map(|&k| Series::new(k)).collect(),
        latency: job.latency.iter().map(|&k| Series::new(k)).collect(),
    };
    for latency in [false, true] {
        let list = if latency {
            &mut group.latency
        } else {
            &mut group.throughput
        };
        for series in list.iter_mut() {
            let spin = series.kind == Kind::Shm(Wait::Spin);
            if spin && skip_spin {
                series.skipped = Some(
                    "one usable CPU: a spinner would hold it for a whole time slice per message"
                        .into(),
                );
                progress.skip(plan.runs);
                continue;
            }
            if series.kind == Kind::Pipe1M && skip_big_pipe {
                series.skipped = Some("F_SETPIPE_SZ to 1 MiB was refused (EPERM)".into());
                progress.skip(plan.runs);
                continue;
            }
            for run in 0..plan.runs {
                let size = if latency { job.sizes.1 } else { job.sizes.0 };
                progress.tick(&format!(
                    "{} {} {}, {}, run {}/{}",
                    place.key(),
                    if latency { "latency" } else { "throughput" },
                    series.kind.label(latency),
                    results::size_label(size),
                    run + 1,
                    plan.runs
                ));
                let r = if latency {
                    let n = if spin && same {
                        plan.same_cpu_spin_trips
                    } else {
                        job.counts.1
                    };
                    bench.latency(series.kind, place, (n, size))?
                } else {
                    let n = if spin && same {
                        plan.same_cpu_spin_chunks
                    } else {
                        job.counts.0
                    };
                    bench.throughput(series.kind, place, (n, size))?
                };
                match r {
                    Some(r) => {
                        series.values.push(r.value);
                        series.sleeps.push(r.sleeps);
                        series.ok &= r.ok;
                        series.samples.extend(r.samples);
                    }
                    None => {
                        series.skipped = Some(format!(
                            "a run took longer than {} s and was stopped",
                            bench.timeout.as_secs()
                        ));
                        progress.skip(plan.runs - run - 1);
                        break;
                    }
                }
            }
        }
    }
    Ok(group)
}

/// The closing explanation, drawn from the measured numbers: each sentence
/// says what this run showed, and the explanation that fits it.
fn conclusions(
    main: &Group,
    same: &Group,
    (memcpy, memcpy_mib): (Option<f64>, usize),
    one_cpu: bool,
    machine: &machine::Machine,
) -> Vec<String> {
    let mut out = Vec::new();
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    if let (Some((best, bk)), Some(spin)) = (main.best_kernel_gbps(), main.gbps("shm_spin")) {
        let vs_memcpy = match memcpy {
            Some(mc) if spin > mc => format!(
                "{:.2}× a single-thread memcpy of {memcpy_mib} MiB ({mc:.2} GB/s): the \
                 ring's 1 MiB of slots stays in the CPU caches, while a large memcpy goes \
                 through DRAM",
                spin / mc
            ),
            Some(mc) => format!(
                "{:.2}× a single-thread memcpy of {memcpy_mib} MiB ({mc:.2} GB/s): the ring \
                 copies every byte \
                 twice, and a spinner that loses its CPU to another program stalls its \
                 partner (compare the median with the min column)",
                spin / mc
            ),
            None => "memcpy was not measured".into(),
        };
        let why = if spin / bk >= 1.5 {
            "A kernel transport copies each byte into the kernel and out again, and wakes \
             the reader when it waits; the spinning ring enters the kernel for nothing."
        } else {
            "That is a small margin: here something other than the kernel's copies and \
             wake-ups limited the ring, most often a CPU shared with another program."
        };
        out.push(format!(
            "Throughput, {}: the spinning ring moved {spin:.1} GB/s, {:.1}× the best kernel \
             transport ({best}, {bk:.1} GB/s) and {vs_memcpy}. {why}",
            main.placement,
            spin / bk,
        ));
    }
    match (one_cpu, main.gbps("shm_spin"), same.gbps("shm_yield")) {
        (false, Some(cross), Some(one)) if one > cross => out.push(format!(
            "Odd but real: the ring moved more with both processes on one CPU (yield, \
             {one:.1} GB/s) than spinning on two ({cross:.1} GB/s). On one CPU the slots \
             never leave that CPU's caches and the two sides take turns, 16 slots at a time; \
             across CPUs every slot moves from one CPU's cache to the other's, and a spinner \
             that another program pushes off its CPU leaves its partner spinning in vain \
             (load average at the start: {}).",
            machine.load1.map_or("?".to_string(), |l| format!("{l:.2}"))
        )),
        _ => {}
    }
    let (pipe, big) = (main.gbps("pipe"), main.gbps("pipe_1mib"));
    if let (Some(p), Some(b)) = (pipe, big) {
        out.push(if b / p >= 1.25 {
            format!(
                "F_SETPIPE_SZ took the pipe from {p:.2} to {b:.2} GB/s ({:.1}×): with 64 KiB \
                 of buffer a 64 KiB write fills it, so writer and reader wake each other for \
                 every chunk; with 1 MiB they work in batches.",
                b / p
            )
        } else {
            format!(
                "F_SETPIPE_SZ barely changed the pipe here ({p:.2} → {b:.2} GB/s, {:.2}×). A \
                 bigger buffer saves wake-ups only while writer and reader run at the same \
                 time on their own CPUs; when they take turns (one CPU, or CPUs shared with \
                 other programs) the copies are all that is left, and both sizes copy the \
                 same bytes.",
                b / p
            )
        });
    }
    if let (Some((best, bu)), Some(spin)) = (main.best_kernel_us(), main.us("shm_spin")) {
        out.push(format!(
            "Latency, {}: a spin round trip took {spin:.2} µs, {:.0}× faster than the fastest \
             kernel transport ({best}, {bu:.1} µs). {}",
            main.placement,
            bu / spin,
            if spin < 1.0 {
                "Nobody sleeps, so nobody is woken: the message is just a cache line moving \
                 between two CPUs."
            } else {
                "That is slow for a spin: a cache line moves between CPUs in well under a \
                 microsecond, so one side must have lost its CPU to another program for part \
                 of the run."
            }
        ));
    }
    let sleeps = |g: &Group| g.lat("shm_futex").and_then(Series::sleeps);
    for g in if one_cpu {
        vec![main]
    } else {
        vec![main, same]
    } {
        if let (Some(fu), Some(p), Some(z)) = (g.us("shm_futex"), g.us("pipe"), sleeps(g)) {
            let r = fu / p;
            let why = if z >= 0.5 {
                format!(
                    "Most messages ({:.0}%) slept: each costs a FUTEX_WAIT, a FUTEX_WAKE and \
                     a scheduler wake-up, the same kind of work a pipe does, {}. Shared \
                     memory removes copies, not wake-ups.",
                    (z * 100.0).min(100.0),
                    if r < 0.5 {
                        format!("though here it took only {r:.2}× a pipe's time")
                    } else if r <= 2.0 {
                        format!("and it took about a pipe's time ({r:.2}×)")
                    } else {
                        format!("and here it took {r:.1}× a pipe's time")
                    }
                )
            } else {
                format!(
                    "The short spin usually caught the answer, so only {:.0}% of messages \
                     slept, and it took {r:.2}× a pipe's time: that is the whole trick of \
                     spin-then-sleep locks.",
                    z * 100.0
                )
            };
            out.push(format!(
                "Spin then futex, {}: {fu:.2} µs per round trip against the pipe's {p:.2} µs, \
                 with {z:.2} FUTEX_WAIT calls per message. {why}",
                g.placement,
            ));
        }
    }
    if let (false, Some((_, cross)), Some((_, one))) =
        (one_cpu, main.best_kernel_us(), same.best_kernel_us())
    {
        out.push(if cross > 1.5 * one {
            format!(
                "The fastest kernel round trip took {cross:.1} µs across CPUs but {one:.1} µs on \
                 one CPU: waking a sleeping process on another CPU (an idle one must first \
                 wake up itself) costs more than switching to it on our own.{}",
                if machine.virtualized {
                    " This machine is virtualised: an idle vCPU is halted by the hypervisor, \
                     and waking it goes through the hypervisor too."
                } else {
                    ""
                }
            )
        } else {
            format!(
                "The fastest kernel round trip took {cross:.1} µs across CPUs and {one:.1} µs \
                 on one CPU: here waking the other CPU cost no more than switching on our own."
            )
        });
    }
    if !one_cpu {
        if let (Some(s1), Some(s2)) = (same.us("shm_spin"), main.us("shm_spin")) {
            out.push(format!(
                "On one CPU the same spin took {s1:.0} µs per round trip, {:.0}× slower than \
                 across CPUs: the spinner holds the CPU until its time slice ends, while the \
                 process it waits for cannot run. Yield ({} µs) gives the CPU away at once; \
                 that is why spinning is only for a reader with a CPU of its own.",
                s1 / s2,
                f(same.us("shm_yield"))
            ));
        }
    } else {
        out.push(
            "With one usable CPU, only yield and futex waits make sense for shared memory; \
             run without taskset to see the spinning ring on a CPU of its own."
                .into(),
        );
    }
    out
}

/// A progress line on stderr, only when stderr is a terminal.
struct Progress {
    total: usize,
    done: usize,
    tty: bool,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn tick(&mut self, what: &str) {
        self.done += 1;
        if self.tty {
            eprint!("\r\x1b[K[{:>3}/{}] {what}", self.done, self.total);
        }
    }

    fn skip(&mut self, n: usize) {
        self.done += n;
    }

    fn clear(&self) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
}

/// Point fd 1 at fd 2 (the narration goes to stderr); returns the real stdout.
fn stdout_to_stderr() -> anyhow::Result<OwnedFd> {
    std::io::stdout().flush().ok();
    // SAFETY: dup returns a new descriptor (or -1) that we own from here on.
    let copy = unsafe { libc::dup(1) };
    if copy < 0 {
        return Err(nix::errno::Errno::last()).call("dup(1)");
    }
    // SAFETY: copy is a fresh descriptor nobody else owns.
    let copy = unsafe { OwnedFd::from_raw_fd(copy) };
    // SAFETY: dup2 replaces fd 1, which std's Stdout uses by number only.
    if unsafe { libc::dup2(2, 1) } < 0 {
        return Err(nix::errno::Errno::last()).call("dup2(2, 1)");
    }
    Ok(copy)
}

/// Put the real stdout back on fd 1.
fn restore_stdout(saved: OwnedFd) -> anyhow::Result<()> {
    // SAFETY: saved is a valid descriptor; dup2 replaces fd 1.
    if unsafe { libc::dup2(saved.as_raw_fd(), 1) } < 0 {
        return Err(nix::errno::Errno::last()).call("dup2(saved, 1)");
    }
    Ok(())
}
