//! lesson-9 proves what it prints from the running kernel: who saw each
//! write, the smaps fields and pagemap frames of the child's pages (read by
//! the test itself during a hold), exact minor-fault counts, and that
//! nothing is left behind.

use std::path::Path;
use std::time::Duration;

use common::{inspect, pages, testkit};
use nix::sys::signal::Signal;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lesson-9"))
}

/// Run the lesson to the end; it must exit 0 and leave nothing. Returns
/// stdout.
fn run(args: &[&str]) -> String {
    let (pid, out) = testkit::run_with_pid(bin(), args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}:\n{text}\n{err}");
    assert!(!text.contains('\x1b'), "escape codes with NO_COLOR=1");
    testkit::assert_nothing_left_by(9, pid);
    text
}

/// The line that starts (after indentation) with `label`.
fn line<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .map(str::trim_start)
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no line starting with {label:?} in:\n{text}"))
}

/// The `0x…` address an `mmap(NULL, len, …, flags, …)` step returned.
fn mapped_at(text: &str, flags: &str) -> usize {
    let l = text
        .lines()
        .find(|l| l.contains("mmap(NULL, ") && l.contains(&format!(", {flags}, ")))
        .unwrap_or_else(|| panic!("no mmap with {flags} in:\n{text}"));
    let hex = &l[l.find("= 0x").unwrap() + 4..];
    let hex: String = hex.chars().take_while(char::is_ascii_hexdigit).collect();
    usize::from_str_radix(&hex, 16).unwrap()
}

#[test]
fn part1_only_the_shared_write_reaches_the_object_and_the_parent() {
    let text = run(&["--part", "1"]);
    assert_eq!(
        line(&text, "the child reads:"),
        "the child reads: MAP_SHARED 0xdeadbeef, MAP_PRIVATE 0xc0ffee"
    );
    // The parent never wrote through MAP_PRIVATE: it still maps the object's
    // page, so it sees the child's MAP_SHARED store, not its private one.
    assert_eq!(
        line(&text, "the parent reads:"),
        "the parent reads: MAP_SHARED 0xdeadbeef, MAP_PRIVATE 0xdeadbeef"
    );
    assert!(text.contains("the object holds: 0xdeadbeef\n"), "{text}");
    assert!(text.contains("| 000000 00000000deadbeef\n"), "{text}");
    assert!(!text.contains("--- 2."), "--part 1 ran another part");
}

#[test]
fn part1_smaps_and_pagemap_of_the_child_during_the_hold() {
    let page_kib = inspect::page_size() / 1024;
    let mut run = testkit::start(bin(), &["--part", "1", "--hold", "30"]);
    run.wait_for("holding for 30 s", Duration::from_secs(20));
    let child = testkit::number_after(&run.seen, "fork() = ");
    let shared = mapped_at(&run.seen, "MAP_SHARED");
    let private = mapped_at(&run.seen, "MAP_PRIVATE");
    // Read by the test itself, from the kernel, while the child is alive.
    let sm = pages::smaps_of(child, shared).expect("the child's MAP_SHARED mapping");
    assert!(sm.header.contains(" rw-s "), "{sm:?}");
    assert_eq!(sm.kib("Shared_Dirty"), Some(page_kib as u64), "{sm:?}");
    assert_eq!(sm.kib("Private_Dirty"), Some(0), "{sm:?}");
    let pm = pages::smaps_of(child, private).expect("the child's MAP_PRIVATE mapping");
    assert!(pm.header.contains(" rw-p "), "{pm:?}");
    assert_eq!(pm.kib("Private_Dirty"), Some(page_kib as u64), "{pm:?}");
    assert_eq!(pm.kib("Shared_Dirty"), Some(0), "{pm:?}");
    let parent = run.pid();
    let cs = pages::pagemap_of(child, shared).unwrap();
    let ps = pages::pagemap_of(parent, shared).unwrap();
    let cp = pages::pagemap_of(child, private).unwrap();
    assert!(cs.present() && ps.present() && cp.present());
    assert!(cp.exclusive() && !cs.exclusive(), "{cp} / {cs}");
    if testkit::is_root() {
        assert_ne!(cs.pfn(), 0, "root reads frame numbers");
        assert_eq!(cs.pfn(), ps.pfn(), "one frame behind both MAP_SHARED pages");
        assert_ne!(cp.pfn(), cs.pfn(), "the private page was copied");
        // The lesson printed the same frames.
        assert!(
            run.seen.contains(&format!(
                "child  MAP_SHARED  present=1 exclusive=0 file/shared=1 pfn={:#x}",
                cs.pfn()
            )),
            "{}",
            run.seen
        );
    }
    // Ctrl-C during the hold: the child is stopped and the object removed.
    let live = testkit::shm_with_prefix(&format!("shm-lessons-9-{parent}-"));
    assert_eq!(live.len(), 1, "the object exists during the hold: {live:?}");
    run.signal(Signal::SIGINT);
    let (status, err) = run.finish(Duration::from_secs(10));
    assert_eq!(status, Some(130), "{err}");
    assert!(err.contains("cleanup: shm_unlink"), "{err}");
    assert!(!is_child_of(child, parent), "the child outlived the lesson");
    testkit::assert_nothing_left_by(9, parent);
}

/// Whether process `pid` exists with `parent` as its parent (a pid reused
/// by someone else's process does not count).
fn is_child_of(pid: u32, parent: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let after = &stat[stat.rfind(')').unwrap() + 1..];
        after.split_whitespace().nth(1) == Some(parent.to_string().as_str())
    })
}

#[test]
fn part2_copy_on_write_costs_exactly_one_fault() {
    let text = run(&["--part", "2"]);
    let count =
        |what: &str| -> u32 { testkit::number_after(&text, &format!("the child: {what}: ")) };
    assert_eq!(count("read the private page"), 0, "{text}");
    assert_eq!(count("write the private page"), 1, "{text}");
    assert_eq!(count("write the private page again"), 0, "{text}");
    assert_eq!(count("read the shared page"), 1, "{text}");
    assert_eq!(count("write the shared page"), 0, "{text}");
    assert_eq!(
        line(&text, "after the child exited, the parent reads:"),
        "after the child exited, the parent reads: private 1, shared 2"
    );
    // The article's program with MAP_PRIVATE: the parent reads 0.
    assert!(text.contains("\nchild wrote 0x0\n"), "{text}");
    assert!(!text.contains("warning:"), "{text}");
}

#[test]
fn as_nobody_frames_read_as_zero_and_the_rest_still_works() {
    let Some(out) = testkit::run_as_nobody(bin(), &["--part", "1"]) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("child  MAP_PRIVATE present=1 exclusive=1 file/shared=0 pfn=0x0"),
        "{text}"
    );
    assert!(text.contains("The frame numbers read as 0"), "{text}");
    assert!(text.contains("Private_Dirty: "), "{text}");
    assert_eq!(
        line(&text, "the parent reads:"),
        "the parent reads: MAP_SHARED 0xdeadbeef, MAP_PRIVATE 0xdeadbeef"
    );
}

#[test]
fn bad_arguments_print_usage_and_exit_2() {
    testkit::assert_usage_errors(
        bin(),
        "lesson-9",
        &[
            &["--bogus"],
            &["--part"],
            &["--part", "0"],
            &["--part", "7"],
            &["--hold", "soon"],
            &["extra"],
        ],
    );
}

#[test]
fn concurrent_runs_do_not_collide() {
    for (pid, out) in testkit::run_concurrently(bin(), &["--part", "1"], 3) {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        testkit::assert_nothing_left_by(9, pid);
    }
}
