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

/// The `N` in a line `label: N faults; Rss R kB, ShmemPmdMapped P kB, …`.
fn thp_numbers(text: &str, label: &str) -> (u64, u64, u64) {
    let l = line(text, label);
    let num = |after: &str| -> u64 {
        let at = l
            .find(after)
            .unwrap_or_else(|| panic!("no {after:?} in {l}"))
            + after.len();
        l[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    (num(": "), num("Rss "), num("ShmemPmdMapped "))
}

#[test]
fn part3_only_the_file_is_written_back_and_msync_cleans_it() {
    let (pid, out) = testkit::run_with_pid(bin(), &["--part", "3"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    testkit::assert_nothing_left_by(9, pid);
    let disk = format!("/var/tmp/shm-lessons-9-{pid}-disk");
    assert!(!Path::new(&disk).exists(), "{disk} was left behind");
    if inspect::disk_dir().is_none() {
        assert!(text.contains("Skipping part 3"), "{text}");
        return;
    }
    let page = inspect::page_size();
    let size_kib = 16 << 10;
    let last = (16 << 20) - page + 1;
    assert!(
        text.contains(&format!(
            "file {last:#x}, shm {last:#x} (we wrote {last:#x})"
        )),
        "the child did not read our writes: {text}"
    );
    // Our own smaps, in order: both dirty; msync cleans only the file; the
    // file dirty again; fsync cleans it.
    let dirty: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim_start().strip_prefix("smaps of the ")?;
            let which = l.split_whitespace().next()?.to_string();
            let kib = l
                .rsplit_once(") ")?
                .1
                .trim_end_matches(" kB")
                .parse()
                .ok()?;
            Some((which, kib))
        })
        .collect();
    let want: Vec<(String, u64)> = [
        ("file", size_kib),
        ("shm", size_kib),
        ("file", 0),
        ("shm", size_kib),
        ("file", size_kib),
        ("file", 0),
    ]
    .iter()
    .map(|(w, k)| (w.to_string(), *k))
    .collect();
    assert_eq!(dirty, want, "{text}");
    // (A warning about /proc/meminfo is allowed: those counters are the
    // whole machine's, and other programs move them.)
    assert!(!text.contains("unexpected dirty counts"), "{text}");
}

/// Whether tmpfs at /dev/shm may hand out huge pages here (then a touch
/// costs fewer faults than pages, and part 4's counts are not exact).
fn dev_shm_may_use_huge_pages() -> bool {
    let forced = pages::thp_setting("shmem_enabled").is_some_and(|(_, v)| v == "force");
    let opts = ns_mount_options("/dev/shm");
    forced || (opts.contains("huge=") && !opts.contains("huge=never"))
}

fn ns_mount_options(at: &str) -> String {
    inspect::mount_at(at).map(|m| m.options).unwrap_or_default()
}

#[test]
fn part4_first_touch_costs_one_fault_a_page_and_a_second_touch_none() {
    let text = run(&["--part", "4", "--mib", "4"]);
    let pages = (4 << 20) / inspect::page_size();
    let row = |how: &str| -> Vec<f64> {
        let l = text
            .lines()
            .find(|l| l.trim_start().starts_with(how))
            .unwrap_or_else(|| panic!("no row {how:?} in:\n{text}"));
        l.trim_start()[how.len()..]
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect()
    };
    // Columns: prepare ms, prepare faults, touch ms, touch faults, per MiB.
    let (fresh, populate, fallocate, second) = (
        row("fresh mapping"),
        row("MAP_POPULATE"),
        row("posix_fallocate"),
        row("a second time"),
    );
    assert_eq!(second[3], 0.0, "a second touch faults: {text}");
    assert_eq!(
        populate[3], 0.0,
        "MAP_POPULATE left faults to the touch: {text}"
    );
    assert_eq!(fresh[1], 0.0, "a plain mmap faults nothing in: {text}");
    if dev_shm_may_use_huge_pages() {
        assert!(fresh[3] > 0.0 && fresh[3] <= pages as f64, "{text}");
        return;
    }
    assert_eq!(fresh[3], pages as f64, "one fault a page: {text}");
    assert_eq!(fresh[4], (pages / 4) as f64, "{text}");
    assert_eq!(populate[1], pages as f64, "mmap took every fault: {text}");
    assert_eq!(fallocate[1], 0.0, "{text}");
    assert_eq!(
        fallocate[3], pages as f64,
        "still one fault a page to map: {text}"
    );
    // The conclusions follow these counts: with them, no sentence of part
    // 4 is a warning.
    assert!(!text.contains("warning:"), "{text}");
}

/// Every file of /sys/kernel/mm/transparent_hugepage, and below it, read.
fn thp_snapshot() -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            // Counters move on their own (khugepaged's scans, the per-size
            // fault statistics): only settings must stay the same.
            let name = p.file_name().unwrap().to_string_lossy();
            if name == "stats" || name == "full_scans" || name == "pages_collapsed" {
                continue;
            }
            if p.is_dir() {
                walk(&p, out);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((p.display().to_string(), b));
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new(pages::THP_DIR), &mut out);
    out.sort();
    out
}

#[test]
fn part5_hugetlb_errno_and_thp_faults_and_the_host_is_unchanged() {
    let mounts = std::fs::read("/proc/self/mountinfo").unwrap();
    let thp = thp_snapshot();
    let (pid, out) = testkit::run_with_pid(bin(), &["--part", "5"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        std::fs::read("/proc/self/mountinfo").unwrap(),
        mounts,
        "host mounts changed"
    );
    assert_eq!(thp_snapshot(), thp, "THP settings changed");
    testkit::assert_nothing_left_by(9, pid);
    let scratch = std::env::temp_dir().join(format!("shm-lessons-9-{pid}-thp"));
    assert!(!scratch.exists(), "{} left behind", scratch.display());
    // MAP_HUGETLB: the pool's pages, or the real errno when it is empty.
    let free = inspect::meminfo_kib("HugePages_Free").unwrap_or(0);
    let surplus = std::fs::read_to_string("/proc/sys/vm/nr_overcommit_hugepages")
        .map_or(0, |s| s.trim().parse::<u64>().unwrap_or(0));
    // call! renders mmap_anonymous as the mmap(2) it is: fd -1, offset 0.
    let hugetlb = text
        .lines()
        .map(str::trim_start)
        .find(|l| l.starts_with("▸ mmap(NULL, ") && l.contains("MAP_HUGETLB"))
        .unwrap_or_else(|| panic!("no MAP_HUGETLB mmap line in:\n{text}"));
    if free == 0 && surplus == 0 {
        assert!(
            hugetlb.ends_with("= -1 ENOMEM (Out of memory)"),
            "{hugetlb}"
        );
        assert!(text.contains("vm.nr_hugepages"), "{text}");
    }
    match out.status.code() {
        Some(0) => {
            let pmd = pages::pmd_size().expect("THP ran, so the kernel has it");
            let (page_kib, pmd_kib) = ((inspect::page_size() >> 10) as u64, (pmd >> 10) as u64);
            let (small, rss, pmd_mapped) = thp_numbers(&text, "huge=never:");
            assert_eq!(
                small,
                rss / page_kib,
                "one fault a page on huge=never: {text}"
            );
            assert_eq!(pmd_mapped, 0, "{text}");
            let (big, rss, pmd_mapped) = thp_numbers(&text, "huge=always:");
            // Exact: one fault per PMD-mapped huge page, one per page of the
            // rest (where no huge page could be had).
            assert_eq!(
                big,
                (rss - pmd_mapped) / page_kib + pmd_mapped / pmd_kib,
                "{text}"
            );
            if pmd <= 64 << 20 {
                // 64 MiB holds whole huge pages (not so with 64 KiB pages,
                // whose PMD maps 512 MiB).
                assert!(big < small, "{text}");
            }
        }
        Some(77) => {
            assert!(
                text.contains("no private mount namespace: unshare("),
                "{text}"
            );
            assert!(
                text.contains("skipped: part 5's transparent huge pages"),
                "{text}"
            );
        }
        other => panic!(
            "exit {other:?}:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn part5_exits_77_with_the_reason_when_namespaces_are_refused() {
    let out = std::process::Command::new(bin())
        .args(["--part", "5"])
        .env("NO_COLOR", "1")
        .env(common::ns::DENY_ENV, "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(77), "{text}");
    assert!(
        text.contains("= -1 EPERM (Operation not permitted)\n"),
        "{text}"
    );
    assert!(text.contains("(simulated by"), "{text}");
    assert!(text.contains("CAP_SYS_ADMIN"), "the reason: {text}");
    // Only the THP half was skipped: the hugetlb half ran.
    assert!(
        text.contains("memfd_create(\"shm-lessons-9-huge\""),
        "{text}"
    );
}

#[test]
fn part6_the_old_mapping_gives_sigsegv_and_the_remapping_peer_reads_the_new_page() {
    let (pid, out) = testkit::run_with_pid(bin(), &["--part", "6"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{text}\n{err}");
    testkit::assert_nothing_left_by(9, pid);
    let page = inspect::page_size();
    let (old, new) = (2 * page, 4 * page);
    // The peer's mapping starts at the MAP_FIXED address.
    let fixed = line(&text, "▸ mmap(0x");
    let peer =
        usize::from_str_radix(&fixed["▸ mmap(0x".len()..fixed.find(',').unwrap()], 16).unwrap();
    assert!(text.contains("= killed by SIGSEGV (signal 11)\n"), "{text}");
    let seen = format!(
        "the child's handler saw: SIGSEGV with si_code=SEGV_MAPERR at si_addr={:#x} (mapping + {old})",
        peer + old
    );
    assert!(text.contains(&seen), "missing {seen:?} in:\n{text}");
    assert!(
        err.contains(&format!(
            "SIGSEGV handler: si_code=SEGV_MAPERR si_addr={:#x}\n",
            peer + old
        )),
        "{err}"
    );
    assert!(!err.contains("SIGBUS"), "{err}");
    assert_eq!(
        line(&text, "the peer saw:"),
        format!(
            "the peer saw: generation 1 when it mapped, 2 now, size {new}; at offset {old} after mremap: 0x2222"
        )
    );
    assert!(text.contains("= exited with status 0\n"), "{text}");
}

#[test]
fn the_whole_lesson_runs_as_nobody() {
    let Some(out) = testkit::run_as_nobody(bin(), &["--mib", "4"]) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(77),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if code == Some(77) {
        assert!(text.contains("no private mount namespace"), "{text}");
    }
    for part in 1..=6 {
        assert!(
            text.contains(&format!("--- {part}. ")),
            "part {part} missing:\n{text}"
        );
    }
    assert!(text.contains("huge=always:") || code == Some(77), "{text}");
}

/// On a /dev/shm with 256 KiB free (a fresh tmpfs of that size over /dev/shm
/// in a private mount namespace of the test's own), parts 3 and 4, which
/// write megabytes there page by page, are skipped with the reason instead
/// of dying of SIGBUS with their object left behind; the lesson exits 0 and
/// that tmpfs is empty afterwards.
#[test]
fn a_256_kib_dev_shm_skips_parts_3_and_4_instead_of_a_sigbus() {
    if !testkit::is_root() {
        eprintln!("skipped: mounting a tmpfs over /dev/shm needs root");
        return;
    }
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            "mount -t tmpfs -o size=256k,mode=1777 tmpfs /dev/shm && \"$0\"; \
             s=$?; echo \"--- left: $(ls -A /dev/shm)\"; exit $s",
        )
        .arg(bin())
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("Skipping part 3."), "{text}");
    assert!(flat.contains("Skipping part 4."), "{text}");
    assert!(text.trim_end().ends_with("--- left:"), "{text}");
}
