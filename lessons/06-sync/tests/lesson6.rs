//! lesson-6 proves what it prints, on the running kernel.
//!
//! Nothing here depends on timing: the race may or may not lose updates on a
//! busy machine, so its test checks only that the lesson reports exactly the
//! loss it measured. The fixes must give exact counts.

use std::path::Path;
use std::time::Duration;

use common::testkit;
use nix::sys::signal::Signal;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lesson-6"))
}

/// Run the lesson to the end; it must succeed and leave nothing behind.
fn run_ok(args: &[&str]) -> String {
    let (pid, out) = testkit::run_with_pid(bin(), args);
    let text = String::from_utf8(out.stdout).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed:\n{text}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    testkit::assert_nothing_left_by(6, pid);
    assert_no_scratch_file(pid);
    text
}

/// The msync part's disk file (`shm-lessons-6-<pid>-msync`) is gone too.
fn assert_no_scratch_file(pid: u32) {
    for dir in [std::path::PathBuf::from("/var/tmp"), std::env::temp_dir()] {
        let f = dir.join(format!("shm-lessons-6-{pid}-msync"));
        assert!(!f.exists(), "{} left behind", f.display());
    }
}

/// The pid in `fork() = PID (the victim)`.
fn victim_pid(text: &str) -> u32 {
    text.lines()
        .find_map(|l| l.split("fork() = ").nth(1)?.strip_suffix(" (the victim)"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no victim pid in {text}"))
}

/// `final counter: X of Y; lost updates: Z` → (X, Y, Z), one per occurrence.
fn counters(text: &str) -> Vec<(u64, u64, u64)> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("final counter: "))
        .filter_map(|rest| {
            let (x, rest) = rest.split_once(" of ")?;
            let (y, rest) = rest.split_once("; lost updates: ")?;
            Some((x.parse().ok()?, y.parse().ok()?, rest.parse().ok()?))
        })
        .collect()
}

#[test]
fn the_race_reports_exactly_the_loss_it_measured() {
    let text = run_ok(&["--part", "1", "--iterations", "300000"]);
    let c = counters(&text);
    assert_eq!(c.len(), 1, "{text}");
    let (counted, total, lost) = c[0];
    assert_eq!(total, 600_000);
    assert!(counted <= total, "{text}");
    assert_eq!(counted + lost, total, "the loss reported is not 2N - final");
    if lost > 0 {
        assert!(
            text.contains(&format!("{lost} updates were lost")),
            "{text}"
        );
        assert!(!text.contains("no update was lost"), "{text}");
    } else {
        assert!(text.contains("no update was lost this time"), "{text}");
    }
    assert!(text.contains("Ordering::Relaxed, never a &mut"), "{text}");
}

#[test]
fn atomics_give_exactly_2n() {
    let text = run_ok(&["--part", "2", "--iterations", "300000"]);
    assert_eq!(counters(&text), vec![(600_000, 600_000, 0)], "{text}");
    assert!(text.contains("ns per increment"), "{text}");
}

#[test]
fn the_process_shared_semaphore_gives_exactly_2n() {
    let text = run_ok(&["--part", "3", "--iterations", "200000"]);
    assert!(text.contains(", 1, 1) = 0"), "sem_init(pshared=1): {text}");
    assert!(text.contains("sem_destroy("), "{text}");
    assert_eq!(counters(&text), vec![(400_000, 400_000, 0)], "{text}");
}

#[test]
fn a_shared_futex_wakes_another_process_and_a_private_one_does_not() {
    let text = run_ok(&["--part", "4", "--iterations", "100000"]);
    // The lock made of one shared futex word gives an exact count.
    assert_eq!(counters(&text), vec![(200_000, 200_000, 0)], "{text}");
    assert!(
        text.contains("FUTEX_WAIT (a worker asked to sleep)"),
        "{text}"
    );
    // Shared: the wake-up found the sleeping child, whose wait returned 0.
    assert!(
        text.contains(", FUTEX_WAKE, 1) = 1 (waiters woken)"),
        "{text}"
    );
    assert!(
        text.contains("the child's FUTEX_WAIT returned: 0 (woken); the word was 1"),
        "{text}"
    );
    // Private: nobody was woken; the child slept to its timeout although
    // the word had changed.
    assert!(
        text.contains(", FUTEX_WAKE|FUTEX_PRIVATE_FLAG, 1) = 0 (waiters woken)"),
        "{text}"
    );
    assert!(
        text.contains(
            "the child's FUTEX_WAIT|FUTEX_PRIVATE_FLAG returned: -1 ETIMEDOUT (Connection timed out); the word was 1"
        ),
        "{text}"
    );
    assert!(text.contains("State:\tS (sleeping)"), "{text}");
}

#[test]
fn a_dead_holder_times_out_a_plain_mutex_and_a_robust_one_recovers_exactly() {
    let text = run_ok(&["--part", "5", "--iterations", "20000"]);
    let plain = text
        .find("a plain process-shared mutex")
        .expect("plain case");
    let robust = text.find("a robust mutex").expect("robust case");
    assert!(plain < robust);
    let (plain, robust) = (&text[plain..robust], &text[robust..]);

    assert!(plain.contains("PTHREAD_MUTEX_STALLED) = 0"), "{plain}");
    assert!(plain.contains("= killed by SIGKILL (signal 9)"), "{plain}");
    // The dead holder's mutex is unchanged: locked, naming the dead thread.
    let victim = victim_pid(plain);
    assert!(
        plain.contains(&format!(
            "the mutex, its holder dead: __lock = 0x1 (locked), __owner = {victim}"
        )),
        "{plain}"
    );
    assert!(
        plain.contains("now + 1 s) = -1 ETIMEDOUT (Connection timed out)"),
        "{plain}"
    );
    assert!(
        plain.contains("count = 20001, copy = 20000: stuck half-updated"),
        "{plain}"
    );

    assert!(robust.contains("PTHREAD_MUTEX_ROBUST) = 0"), "{robust}");
    // The robust mutex's word held the victim's id; at its death the kernel
    // replaced it with FUTEX_OWNER_DIED.
    let victim = victim_pid(robust);
    assert!(
        robust.contains(&format!(
            "the mutex, alive: __lock = {victim:#x} (the victim's thread id {victim}), __owner = {victim}"
        )),
        "{robust}"
    );
    assert!(
        robust.contains(&format!(
            "the mutex, its holder dead: __lock = 0x40000000 (FUTEX_OWNER_DIED), __owner = {victim}"
        )),
        "{robust}"
    );
    assert!(
        robust.contains("= killed by SIGKILL (signal 9)"),
        "{robust}"
    );
    assert!(
        robust.contains("now + 1 s) = -1 EOWNERDEAD (Owner died)"),
        "{robust}"
    );
    assert!(
        robust.contains("repair: count = 20001, copy = 20000"),
        "{robust}"
    );
    assert!(robust.contains("pthread_mutex_consistent("), "{robust}");
    assert!(robust.contains("pthread_mutex_unlock("), "{robust}");
    assert!(
        robust.contains("final counter: 40000 of 40000; copy = 40000"),
        "{robust}"
    );
    assert!(robust.contains("pthread_mutex_destroy("), "{robust}");
}

#[test]
fn the_value_is_visible_without_msync_and_ordering_holds() {
    let text = run_ok(&["--part", "6"]);
    assert!(
        text.contains("the parent read: 0xdeadbeef while the child was still running (state "),
        "{text}"
    );
    assert!(text.contains("msync was never called"), "{text}");
    assert!(
        text.contains("messages received: 2000; with a torn or stale payload: 0"),
        "{text}"
    );
    if text.contains("(on ") {
        // A disk-backed directory exists: read(2) saw the store without msync,
        // and every msync kind ran.
        assert!(
            text.contains(", buf, 8, 0) = 8 (bytes: 0xdeadbeef)"),
            "{text}"
        );
        for kind in [
            "tmpfs object, MS_ASYNC",
            "tmpfs object, MS_SYNC",
            "disk file, MS_ASYNC",
            "disk file, MS_SYNC",
        ] {
            assert!(text.contains(&format!("= 0   ({kind}; ")), "{kind}: {text}");
            let row = text
                .lines()
                .find(|l| l.trim_start().starts_with(kind) && l.ends_with(" us per msync"));
            assert!(row.is_some(), "no timing row for {kind}: {text}");
        }
    } else {
        assert!(text.contains("no disk-backed directory found"), "{text}");
    }
}

#[test]
fn the_whole_lesson_runs_every_part_and_cleans_up() {
    let text = run_ok(&["--iterations", "50000"]);
    for heading in [
        "--- 1. The race",
        "--- 2. Fix A",
        "--- 3. Fix B",
        "--- 4. Fix C",
        "--- 5. A lock holder that dies",
        "--- 6. The msync myth",
        "Cost per increment",
        "futex lock + increment + unlock",
    ] {
        assert!(text.contains(heading), "missing {heading:?}:\n{text}");
    }
    assert!(text.contains("O_CREAT|O_EXCL|O_RDWR, 0600) = fd"), "{text}");
    assert!(text.contains("shm_unlink(\"/shm-lessons-6-"), "{text}");
    assert!(!text.contains('\x1b'), "escape codes with NO_COLOR=1");
}

#[test]
fn parallel_runs_never_collide() {
    for (pid, out) in testkit::run_concurrently(bin(), &["--part", "2", "--iterations", "20000"], 3)
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert_eq!(counters(&text), vec![(40_000, 40_000, 0)], "{text}");
        testkit::assert_nothing_left_by(6, pid);
    }
}

#[test]
fn sigterm_while_a_child_sleeps_removes_everything() {
    // The hold keeps the child asleep in FUTEX_WAIT (its timeout grows by the
    // hold) until the signal: nothing here races the lesson's own progress.
    let mut run = testkit::start(
        bin(),
        &["--part", "4", "--iterations", "1000", "--hold", "600"],
    );
    run.wait_for("a shared futex (no PRIVATE flag)", Duration::from_secs(30));
    run.wait_for("fork() = ", Duration::from_secs(30));
    let child: i32 = run
        .seen
        .lines()
        .rev()
        .find_map(|l| l.split("fork() = ").nth(1))
        .and_then(|p| p.trim().parse().ok())
        .expect("the child's pid");
    run.wait_for("State:", Duration::from_secs(30)); // the child sleeps in FUTEX_WAIT
    run.wait_for("holding for 600 s", Duration::from_secs(30));
    assert!(
        Path::new(&format!("/proc/{child}")).exists(),
        "the child is alive during the hold"
    );
    let pid = run.pid();
    run.signal(Signal::SIGTERM);
    let (status, stderr) = run.finish(Duration::from_secs(10));
    assert_eq!(status, Some(143), "stderr: {stderr}");
    assert!(stderr.contains("cleanup: shm_unlink"), "{stderr}");
    testkit::assert_nothing_left_by(6, pid);
    // The sleeping child was stopped too (killed and reaped by the lesson, or
    // by PR_SET_PDEATHSIG), not left behind.
    let gone = common::children::wait_until(Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{child}")).exists()
    });
    assert!(gone, "child {child} outlived the lesson");
}

#[test]
fn sigint_while_a_dead_lock_is_held_removes_everything() {
    let mut run = testkit::start(
        bin(),
        &["--part", "5", "--iterations", "1000", "--hold", "600"],
    );
    run.wait_for("a plain process-shared mutex", Duration::from_secs(30));
    run.wait_for("(the victim)", Duration::from_secs(30));
    let victim = victim_pid(&run.seen);
    run.wait_for("holding for 600 s", Duration::from_secs(30));
    assert!(
        run.seen.contains(&format!(
            "the mutex, alive: __lock = 0x1 (locked), __owner = {victim}"
        )),
        "{}",
        run.seen
    );
    let pid = run.pid();
    run.signal(Signal::SIGINT);
    let (status, stderr) = run.finish(Duration::from_secs(10));
    assert_eq!(status, Some(130), "stderr: {stderr}");
    assert!(stderr.contains("cleanup: shm_unlink"), "{stderr}");
    testkit::assert_nothing_left_by(6, pid);
    // The victim, paused while holding the lock, was stopped too.
    let gone = common::children::wait_until(Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{victim}")).exists()
    });
    assert!(gone, "victim {victim} outlived the lesson");
}

#[test]
fn bad_arguments_print_usage_and_exit_2() {
    testkit::assert_usage_errors(
        bin(),
        "lesson-6",
        &[
            &["--part", "0"],
            &["--part", "7"],
            &["--part"],
            &["--iterations", "0"],
            &["--iterations", "many"],
            &["--hold"],
            &["--hold", "soon"],
            &["--hold", "3601"],
            &["--bogus"],
            &["stray"],
        ],
    );
}

#[test]
fn works_for_an_unprivileged_user() {
    let Some(out) = testkit::run_as_nobody(bin(), &["--iterations", "20000"]) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("-1 EOWNERDEAD (Owner died)"), "{text}");
    assert!(
        text.contains("messages received: 2000; with a torn or stale payload: 0"),
        "{text}"
    );
    assert!(text.contains("shm_unlink(\"/shm-lessons-6-"), "{text}");
}
