//! lesson-8 measures; its tests check what the measurement claims about
//! itself, never a speed: every transport ran, every checksum and reply
//! matched, the ratios are computed from the measured values, one CPU skips
//! pure spin. Lesson-8 creates no named object (its ring is
//! `MAP_SHARED|MAP_ANONYMOUS`), so what it could leave behind is a child:
//! tests/children_reaped.rs checks that none outlives it.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::testkit;
use nix::sys::signal::Signal;
use serde_json::Value;

const THROUGHPUT: [&str; 6] = [
    "pipe",
    "pipe_1mib",
    "unix_socket",
    "shm_spin",
    "shm_yield",
    "shm_futex",
];
const LATENCY: [&str; 6] = [
    "pipe",
    "unix_socket",
    "eventfd",
    "shm_spin",
    "shm_yield",
    "shm_futex",
];

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lesson-8"))
}

/// Run the lesson, optionally restricted to one CPU (what `taskset -c CPU`
/// does: sched_setaffinity before exec).
fn run(args: &[&str], cpu: Option<usize>) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cpu) = cpu {
        // SAFETY: the closure only calls sched_setaffinity (a system call,
        // async-signal-safe) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut set = nix::sched::CpuSet::new();
                set.set(cpu)?;
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
                Ok(())
            });
        }
    }
    let child = cmd.spawn().expect("start lesson-8");
    child.wait_with_output().expect("wait for lesson-8")
}

fn json_of(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {text}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not one JSON object ({e}): {text}"))
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur
            .get(p)
            .unwrap_or_else(|| panic!("no key {path:?} in {v}"));
    }
    cur.as_f64()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 + 2e-3 * b.abs()
}

/// Every ratio in a group equals the quotient of the values it reports.
fn assert_ratios_from_values(g: &Value, memcpy: f64) {
    let pipe = num(g, &["throughput_gbps", "pipe"]).expect("pipe throughput");
    let pipe_us = num(g, &["latency_us", "pipe"]).expect("pipe latency");
    for k in THROUGHPUT {
        let Some(v) = num(g, &["throughput_gbps", k]) else {
            assert!(num(g, &["throughput_vs_pipe", k]).is_none(), "{k}");
            continue;
        };
        let r = num(g, &["throughput_vs_pipe", k]).unwrap();
        assert!(close(r, v / pipe), "{k}: {r} != {v}/{pipe}");
        let r = num(g, &["throughput_vs_memcpy", k]).unwrap();
        assert!(close(r, v / memcpy), "{k}: {r} != {v}/{memcpy}");
        let min = num(g, &["throughput_min_gbps", k]).unwrap();
        assert!(
            min <= v * (1.0 + 1e-6),
            "{k}: the minimum {min} > the median {v}"
        );
    }
    for k in LATENCY {
        let Some(v) = num(g, &["latency_us", k]) else {
            continue;
        };
        let r = num(g, &["latency_speedup_vs_pipe", k]).unwrap();
        assert!(close(r, pipe_us / v), "{k}: {r} != {pipe_us}/{v}");
        let min = num(g, &["latency_min_us", k]).unwrap();
        assert!(
            min <= v * (1.0 + 1e-6),
            "{k}: the minimum {min} > the median {v}"
        );
    }
}

/// Every transport of a group was measured (except those listed as
/// skipped, with a reason) and every checksum and reply matched.
fn assert_group_complete(g: &Value, placement: &str, skipped: &[&str]) {
    assert_eq!(g["placement"], placement, "{g}");
    for k in THROUGHPUT {
        let v = num(g, &["throughput_gbps", k]);
        if skipped.contains(&k) {
            assert!(v.is_none(), "{k} should be skipped: {g}");
            assert!(g["skipped"][k].as_str().is_some_and(|s| !s.is_empty()));
            assert!(
                g["checksum_ok"][k].is_null(),
                "{k}: nothing was checked: {g}"
            );
        } else {
            assert!(v.is_some_and(|v| v > 0.0), "{k} not measured: {g}");
            assert_eq!(g["checksum_ok"][k], true, "{k} checksum: {g}");
        }
    }
    for k in LATENCY {
        let v = num(g, &["latency_us", k]);
        if skipped.contains(&k) {
            assert!(v.is_none(), "{k} should be skipped: {g}");
            assert!(
                g["replies_ok"][k].is_null(),
                "{k}: nothing was checked: {g}"
            );
        } else {
            assert!(v.is_some_and(|v| v > 0.0), "{k} not measured: {g}");
            assert_eq!(g["replies_ok"][k], true, "{k} replies: {g}");
            let p = |which: &str| num(g, &[&format!("latency_{which}_us"), k]);
            assert_spread(p("p50"), p("p99"), p("max"), k);
            assert_eq!(g["waits"][k], waits(k), "{k}: {g}");
        }
    }
}

/// How each transport's receiver waits, as the table and the chart say.
fn waits(key: &str) -> &'static str {
    match key {
        "shm_spin" | "shm_yield" => "busy-wait",
        _ => "blocking",
    }
}

/// p50 <= p99 <= max, all measured.
fn assert_spread(p50: Option<f64>, p99: Option<f64>, max: Option<f64>, what: &str) {
    let (Some(p50), Some(p99), Some(max)) = (p50, p99, max) else {
        panic!("{what}: a percentile is missing: {p50:?} {p99:?} {max:?}");
    };
    assert!(
        0.0 < p50 && p50 <= p99 && p99 <= max,
        "{what}: {p50} {p99} {max}"
    );
}

const SWEEP: [&str; 4] = ["pipe", "unix_socket", "shm_spin", "shm_futex"];
const SIZES: [u64; 6] = [64, 1024, 16384, 65536, 262144, 1048576];

#[test]
fn sweep_quick_checks_every_size_and_draws_one_line_per_transport() {
    let svg = std::env::temp_dir().join(format!(
        "shm-lessons-test-{}-lesson8-sweep.svg",
        std::process::id()
    ));
    let out = run(
        &[
            "--sweep",
            "--quick",
            "--json",
            "--svg",
            svg.to_str().unwrap(),
        ],
        None,
    );
    let text = std::fs::read_to_string(&svg);
    let _ = std::fs::remove_file(&svg);
    let v = json_of(&out);
    let text = text.expect("the chart was written");

    // The JSON: every size × transport, measured and checked.
    let one_cpu = v["usable_cpus"].as_u64().unwrap() < 2;
    let sizes: Vec<u64> = v["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    assert_eq!(sizes, SIZES, "{v}");
    for size in SIZES {
        for k in SWEEP {
            let c = &v["sweep"][size.to_string()][k];
            let what = format!("{k} at {size} B");
            assert_eq!(c["size_bytes"], size, "{what}: {c}");
            assert_eq!(c["waits"], waits(k), "{what}: {c}");
            if one_cpu && k == "shm_spin" {
                assert!(c["skipped"].is_string(), "{what}: {c}");
                continue;
            }
            assert_eq!(c["checksum_ok"], true, "{what}: {c}");
            assert_eq!(c["replies_ok"], true, "{what}: {c}");
            assert!(
                num(c, &["throughput_gbps"]).is_some_and(|g| g > 0.0),
                "{what}: {c}"
            );
            // Every round trip was timed: as many samples as round trips.
            assert!(
                c["round_trips"].as_u64().is_some_and(|n| n >= 100),
                "{what}: {c}"
            );
            let p = |which: &str| num(c, &[&format!("latency_{which}_us")]);
            assert_spread(p("p50"), p("p99"), p("max"), &what);
        }
    }

    // The chart: well-formed XML, one line per transport in each panel,
    // labelled axes, the machine in the caption.
    let doc = roxmltree::Document::parse(&text).expect("the chart is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect();
    let has = |needle: &str| texts.iter().filter(|t| t.contains(needle)).count();
    assert_eq!(has("message size (bytes"), 2, "{texts:?}");
    assert_eq!(has("throughput (GB/s"), 1, "{texts:?}");
    assert_eq!(has("round trip (µs"), 1, "{texts:?}");
    let model = v["cpu_model"].as_str().unwrap();
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("measured on:") && t.contains(model)),
        "no caption with {model:?}: {texts:?}"
    );
    let title = doc.descendants().find(|n| n.has_tag_name("title"));
    assert!(
        title
            .and_then(|t| t.text())
            .is_some_and(|t| t.contains(model)),
        "no <title> naming the machine"
    );
    // A data line has a point per measured size; the axes' own lines have 2.
    let lines: Vec<(String, usize)> = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .map(|n| {
            let points = n
                .attribute("points")
                .unwrap_or("")
                .split_whitespace()
                .count();
            (n.attribute("stroke").unwrap_or("").to_string(), points)
        })
        .filter(|&(_, points)| points > 2)
        .collect();
    let drawn = if one_cpu { 3 } else { 4 };
    assert_eq!(lines.len(), 2 * drawn, "{lines:?}");
    for (stroke, points) in &lines {
        assert_eq!(*points, SIZES.len(), "{stroke}: {lines:?}");
        assert_eq!(
            lines.iter().filter(|l| &l.0 == stroke).count(),
            2,
            "{lines:?}"
        );
    }
    // Each line is named in the legends, with how it waits.
    for label in [
        "pipe (default size) [blocking]",
        "unix socketpair [blocking]",
        "shm ring, spin+futex [blocking]",
        "shm ring, spin [busy-wait]",
    ] {
        assert_eq!(has(label), 2, "{label}: {texts:?}");
    }
}

#[test]
fn quick_json_parses_and_every_transport_is_checked() {
    let out = run(&["--quick", "--json"], None);
    let v = json_of(&out);
    for key in [
        "cpus",
        "cpu_model",
        "virtualized",
        "memcpy_gbps",
        "placement",
        "same_cpu",
    ] {
        assert!(v.get(key).is_some(), "no {key} in {v}");
    }
    assert!(v["cpus"].as_u64().is_some_and(|n| n >= 1));
    assert!(v["cpu_model"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(v["virtualized"].is_boolean());
    // What /proc/loadavg said at the start (null only if it was unreadable).
    assert!(v["load_average"].as_f64().is_some_and(|l| l >= 0.0), "{v}");
    let memcpy = num(&v, &["memcpy_gbps"]).expect("memcpy measured");
    assert!(memcpy > 0.0);

    let usable = v["usable_cpus"].as_u64().unwrap();
    if usable >= 2 {
        // Pure spin is measured in both placements, the headline across CPUs.
        assert_group_complete(&v, "cross-cpu", &[]);
        assert_group_complete(&v["same_cpu"], "same-cpu", &[]);
    } else {
        assert_group_complete(&v, "same-cpu", &["shm_spin"]);
    }
    assert_ratios_from_values(&v, memcpy);
    assert_ratios_from_values(&v["same_cpu"], memcpy);
    for k in THROUGHPUT {
        assert_eq!(
            v["runs"][k],
            if usable < 2 && k == "shm_spin" { 0 } else { 5 }
        );
    }
    // The narration went to stderr, so stdout held the object alone.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--- 8. What the numbers say ---"), "{err}");
}

#[test]
fn one_usable_cpu_skips_pure_spin_and_finishes() {
    let out = run(&["--quick", "--json", "--runs", "2"], Some(0));
    let v = json_of(&out);
    assert_eq!(v["usable_cpus"], 1, "{v}");
    assert_group_complete(&v, "same-cpu", &["shm_spin"]);
    assert_group_complete(&v["same_cpu"], "same-cpu", &["shm_spin"]);
    assert_ratios_from_values(&v, num(&v, &["memcpy_gbps"]).unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("only one CPU is usable here, so pure spin is skipped"),
        "{err}"
    );
    assert!(err.contains("skipped: one usable CPU"), "{err}");
}

#[test]
fn one_usable_cpu_sweep_skips_pure_spin_and_checks_the_rest() {
    let out = run(&["--sweep", "--quick", "--json"], Some(0));
    let v = json_of(&out);
    assert_eq!(v["usable_cpus"], 1, "{v}");
    assert_eq!(v["placement"], "same-cpu", "{v}");
    for size in SIZES {
        for k in SWEEP {
            let c = &v["sweep"][size.to_string()][k];
            if k == "shm_spin" {
                assert!(
                    c["skipped"]
                        .as_str()
                        .is_some_and(|s| s.contains("one usable CPU")),
                    "{c}"
                );
                assert!(
                    c["checksum_ok"].is_null() && c["throughput_gbps"].is_null(),
                    "{c}"
                );
            } else {
                assert_eq!(c["checksum_ok"], true, "{k} at {size}: {c}");
                assert_eq!(c["replies_ok"], true, "{k} at {size}: {c}");
            }
        }
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shm ring, spin: skipped: one usable CPU"),
        "{err}"
    );
}

#[test]
fn the_narration_shows_the_calls_the_tables_and_the_explanation() {
    let out = run(&["--quick", "--runs", "1"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "sched_getaffinity(0) = CPUs [",
        "PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0) = 0x",
        " rw-s ",
        "pipe2(fds, O_CLOEXEC) = [",
        "F_GETPIPE_SZ) = ",
        "F_SETPIPE_SZ, 1048576) = 1048576",
        "socketpair(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0, sv) = [",
        "eventfd(0, EFD_CLOEXEC) = fd ",
        "sched_setaffinity(0, CPUs [",
        "memcpy of 16 MiB: median ",
        "shm ring, spin+futex",
        "FUTEX_WAIT calls per message",
        "(log scale",
        "--- 8. What the numbers say ---",
        "the article says: shared memory has the highest efficiency",
        "munmap(0x",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("MISMATCH"), "{text}");
    // One "ok" per transport in each table printed.
    let oks = text
        .lines()
        .filter(|l| l.trim_end().ends_with("  ok"))
        .count();
    assert!(oks >= 12, "{oks} checked rows in:\n{text}");
    assert!(!text.contains('\x1b'), "escape codes with NO_COLOR=1");
}

#[test]
fn bad_arguments_print_usage_and_exit_2() {
    testkit::assert_usage_errors(
        bin(),
        "lesson-8",
        &[
            &["--bogus"],
            &["--runs"],
            &["--runs", "0"],
            &["--runs", "many"],
            &["--runs", "51"],
            &["--json=yes"],
            &["extra"],
            &["--svg"],
            &["--svg", ""],
        ],
    );
}

#[test]
fn sigint_while_measuring_exits_promptly_and_stops_the_child() {
    let mut run = testkit::start(bin(), &["--quick", "--runs", "50"]);
    run.wait_for("--- 6. Measuring ---", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    run.signal(Signal::SIGINT);
    let (status, stderr) = run.finish(Duration::from_secs(5));
    assert_eq!(status, Some(130), "stderr: {stderr}");
    // A child that was running got SIGKILL from the cleanup guard (or, at
    // the latest, from PR_SET_PDEATHSIG when the lesson exited): it is gone.
    for line in stderr.lines() {
        if let Some(rest) = line.strip_prefix("cleanup: kill(") {
            let child: u32 = rest.split(',').next().unwrap().parse().unwrap();
            let alive = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .is_ok_and(|s| s.contains("(lesson-8)"));
            assert!(!alive, "child {child} survived: {stderr}");
        }
    }
}

#[test]
fn works_for_an_unprivileged_user() {
    let Some(out) = testkit::run_as_nobody(bin(), &["--quick", "--runs", "1", "--json"]) else {
        return;
    };
    let v = json_of(&out);
    let placement = v["placement"].as_str().unwrap().to_string();
    let skipped: &[&str] = if placement == "same-cpu" {
        &["shm_spin"]
    } else {
        &[]
    };
    // F_SETPIPE_SZ to 1 MiB needs no privilege (the default pipe-max-size).
    assert_group_complete(&v, &placement, skipped);
}

/// The pids of the running (not zombie) children of `pid`.
fn live_children(pid: u32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .filter(|&c| {
            common::children::state(nix::unistd::Pid::from_raw(c)).is_some_and(|s| s != 'Z')
        })
        .collect()
}

/// The descriptor numbers a process holds.
fn fds_of(pid: i32) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds
}

/// `Cpus_allowed_list` of a process.
fn cpus_allowed(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("Cpus_allowed_list:")
                .map(|v| v.trim().to_string())
        })
}

/// Start lesson-8, then SIGKILL every child of it that `pick` selects (as a
/// crash or a `kill -9` from another terminal would) until the lesson ends.
/// A child may end on its own just before the kill lands, so keep killing
/// the next one. Returns the exit status, stderr and how long the lesson
/// took to end after the first kill.
fn kill_children(pick: impl Fn(u32, i32) -> bool) -> (Option<i32>, String, Duration) {
    let mut run = testkit::start(bin(), &["--quick", "--runs", "50"]);
    run.wait_for("--- 6. Measuring ---", Duration::from_secs(30));
    let pid = run.pid();
    let lesson = nix::unistd::Pid::from_raw(pid as i32);
    let mut killed = Vec::new();
    let mut first_kill = None;
    let gone = common::children::wait_until(Duration::from_secs(30), || {
        for c in live_children(pid).into_iter().filter(|&c| pick(pid, c)) {
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(c), Signal::SIGKILL).is_ok() {
                killed.push(c);
                first_kill.get_or_insert_with(std::time::Instant::now);
            }
        }
        common::children::state(lesson).is_none_or(|s| s == 'Z')
    });
    assert!(
        gone,
        "lesson-8 still runs after its children were killed: {killed:?}"
    );
    let after = first_kill.expect("a child was killed").elapsed();
    let (status, stderr) = run.finish(Duration::from_secs(5));
    for c in killed {
        let alive = std::fs::read_to_string(format!("/proc/{c}/stat"))
            .is_ok_and(|s| s.contains("(lesson-8)"));
        assert!(!alive, "child {c} was not reaped: {stderr}");
    }
    (status, stderr, after)
}

#[test]
fn a_child_killed_while_measuring_is_reported_at_once() {
    let (status, stderr, after) = kill_children(|_, _| true);
    assert_eq!(status, Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("was killed by SIGKILL during the run"),
        "stderr: {stderr}"
    );
    // The watchdog looks every 100 ms: the lesson does not wait for the
    // run's timeout (10 s with --quick) to notice a dead child.
    assert!(after < Duration::from_secs(8), "{after:?}: {stderr}");
}

#[test]
fn a_ring_child_killed_while_spinning_is_reported_at_once() {
    let cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    if (0..nix::sched::CpuSet::count())
        .filter(|&c| cpus.is_set(c).unwrap_or(false))
        .count()
        < 2
    {
        return; // the ring's children only get a CPU of their own with two
    }
    // A ring child holds exactly the lesson's descriptors (it has no pipe or
    // socket of its own): its parent spins and would never see EOF or EPIPE.
    // Kill it once it has pinned itself to a CPU other than the lesson's.
    // The parent is then spinning in the ring (or, on a busy machine where
    // the child may wait to run on its new CPU, still waiting for it to say
    // it is ready, or, if the kill lands late, already done): only the
    // watchdog or the exit status can tell it the child died.
    let (status, stderr, after) = kill_children(|lesson, c| {
        fds_of(c) == fds_of(lesson as i32) && cpus_allowed(c) != cpus_allowed(lesson as i32)
    });
    assert_eq!(status, Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("was killed by SIGKILL during the run"),
        "stderr: {stderr}"
    );
    assert!(after < Duration::from_secs(8), "{after:?}: {stderr}");
}
