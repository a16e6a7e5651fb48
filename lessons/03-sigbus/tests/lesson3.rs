//! lesson-3 proves what it prints, on the running kernel: which signal killed
//! each child, the si_code and si_addr its handler saw, the values read, the
//! errno, and that nothing is left behind.

use std::path::Path;
use std::time::Duration;

use common::{inspect, testkit};
use nix::sys::signal::Signal;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lesson-3"))
}

/// Run the lesson to the end; it must succeed (it never dies itself) and
/// leave nothing. Returns stdout and stderr.
fn run(args: &[&str]) -> (String, String) {
    let (pid, out) = testkit::run_with_pid(bin(), args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}:\n{text}\n{err}");
    assert!(!text.contains('\x1b'), "escape codes with NO_COLOR=1");
    testkit::assert_nothing_left_by(3, pid);
    (text, err)
}

/// The address the first `mmap(NULL, len, ...)` in `text` returned.
fn mapping(text: &str, len: usize) -> usize {
    let call = format!("mmap(NULL, {len}, PROT_READ|PROT_WRITE, MAP_SHARED, ");
    let at = text.find(&call).expect("the mmap step");
    let rest = &text[at..];
    let hex = &rest[rest.find("= 0x").expect("mmap's result") + 4..];
    let hex: String = hex.chars().take_while(char::is_ascii_hexdigit).collect();
    usize::from_str_radix(&hex, 16).unwrap()
}

/// The child killed at `addr`: waitpid says SIGBUS, and its handler (in
/// stdout through the shared page, and in its own stderr line) says
/// BUS_ADRERR at exactly that address.
fn assert_sigbus_at(text: &str, err: &str, addr: usize, offset: usize) {
    assert!(text.contains(": killed by SIGBUS (signal 7)\n"), "{text}");
    let seen = format!(
        "the child's handler saw: SIGBUS with si_code=BUS_ADRERR at si_addr={addr:#x} (mapping + {offset})"
    );
    assert!(text.contains(&seen), "missing {seen:?} in:\n{text}");
    let line = format!("SIGBUS handler: si_code=BUS_ADRERR si_addr={addr:#x}\n");
    assert!(err.contains(&line), "missing {line:?} in stderr:\n{err}");
}

#[test]
fn without_ftruncate_mmap_succeeds_and_the_first_write_dies_of_sigbus() {
    let page = inspect::page_size();
    let (text, err) = run(&["--part", "1"]);
    assert!(text.contains("st_size 0, st_blocks 0"), "{text}");
    let addr = mapping(&text, page);
    assert_sigbus_at(&text, &err, addr, 0);
    assert!(text.contains("rw-s 00000000"), "{text}");
    assert!(!text.contains("--- 2."), "--part 1 ran another part");
}

#[test]
fn a_100_byte_object_works_to_the_end_of_its_page_and_no_further() {
    let page = inspect::page_size();
    let (text, err) = run(&["--part", "2"]);
    assert!(
        text.contains(", 100) = 0\n"),
        "ftruncate to 100 bytes: {text}"
    );
    let addr = mapping(&text, 2 * page);
    // Offset 200: the child read 0 there, wrote, and exited normally; the
    // parent sees its value; the object is still 100 bytes long.
    let inside = text.find("offset 200: past the object").unwrap();
    let later = text
        .find(&format!("offset {}: one page later", page + 200))
        .unwrap();
    let first = &text[inside..later];
    assert!(first.contains(": exited with status 0\n"), "{first}");
    // The child read 0 there, and we read its 0xdeadbeef after it.
    assert!(
        first.contains("the child read, then we read: 0x0, 0xdeadbeef\n"),
        "{first}"
    );
    assert!(first.contains("st_size 100, "), "{first}");
    // Read through the descriptor, the object is still 100 bytes long.
    assert!(
        first.contains(&format!(", buf, {page}, 0) = 100\n")),
        "pread: {first}"
    );
    assert!(!first.contains("SIGBUS with"), "{first}");
    // One page later: SIGBUS, BUS_ADRERR, at exactly that address.
    assert_sigbus_at(&text[later..], &err, addr + page + 200, page + 200);
    assert_eq!(err.matches("SIGBUS handler").count(), 1, "{err}");
}

#[test]
fn after_ftruncate_the_same_write_succeeds() {
    let page = inspect::page_size();
    let (text, err) = run(&["--part", "3"]);
    assert!(
        text.contains(&format!(", {page}) = 0\n")),
        "ftruncate: {text}"
    );
    assert!(text.contains(&format!("st_size {page}, ")), "{text}");
    assert!(text.contains(": exited with status 0\n"), "{text}");
    assert!(text.contains("\nchild wrote 0xdeadbeef\n"), "{text}");
    assert!(!text.contains("SIGBUS with"), "{text}");
    assert!(!err.contains("handler"), "{err}");
}

#[test]
fn mmap_of_length_0_is_einval() {
    let (text, _) = run(&["--part", "4"]);
    let line = text
        .lines()
        .find(|l| l.contains("mmap(NULL, 0, PROT_READ|PROT_WRITE, MAP_SHARED, "))
        .expect("the mmap step");
    assert!(
        line.ends_with(", 0) = -1 EINVAL (Invalid argument)"),
        "{line}"
    );
    assert!(!text.contains("warning:"), "{text}");
}

#[test]
fn shrinking_the_object_under_a_mapping_gives_sigbus() {
    let page = inspect::page_size();
    let (text, err) = run(&["--part", "5"]);
    assert!(
        text.contains(&format!(", 0, {page}) = 0\n")),
        "posix_fallocate: {text}"
    );
    let blocks = text.find(&format!("st_size {page}, st_blocks ")).unwrap();
    assert!(
        !text[blocks..].starts_with(&format!("st_size {page}, st_blocks 0\n")),
        "posix_fallocate reserves blocks: {text}"
    );
    assert!(text.contains(", 0) = 0 (as another process"), "{text}");
    assert_sigbus_at(&text, &err, mapping(&text, page), 0);
}

#[test]
fn the_whole_lesson_survives_three_sigbus_children() {
    let (text, err) = run(&[]);
    for part in 1..=5 {
        assert!(
            text.contains(&format!("--- {part}. ")),
            "part {part} missing"
        );
    }
    assert_eq!(
        err.matches("SIGBUS handler: si_code=BUS_ADRERR").count(),
        3,
        "{err}"
    );
    assert_eq!(text.matches("killed by SIGBUS (signal 7)").count(), 3);
    assert!(!text.contains("warning:"), "something unexpected:\n{text}");
    assert!(text.contains("lesson-3 done"));
}

#[test]
fn four_concurrent_runs_all_succeed() {
    for (pid, out) in testkit::run_concurrently(bin(), &[], 4) {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert_eq!(err.matches("SIGBUS handler").count(), 3, "{err}");
        testkit::assert_nothing_left_by(3, pid);
    }
}

#[test]
fn bad_arguments_print_usage_and_exit_2() {
    testkit::assert_usage_errors(
        bin(),
        "lesson-3",
        &[
            &["--bogus"],
            &["--part"],
            &["--part", "0"],
            &["--part", "6"],
            &["--part", "two"],
            &["--hold", "soon"],
            &["extra"],
        ],
    );
}

#[test]
fn sigint_or_sigterm_during_the_hold_leaves_nothing() {
    for (part, sig, code) in [("1", Signal::SIGINT, 130), ("2", Signal::SIGTERM, 143)] {
        let mut run = testkit::start(bin(), &["--part", part, "--hold", "30"]);
        run.wait_for("holding for 30 s", Duration::from_secs(10));
        let pid = run.pid();
        let live = testkit::shm_with_prefix(&format!("shm-lessons-3-{pid}-"));
        assert_eq!(live.len(), 1, "the object exists during the hold: {live:?}");
        run.signal(sig);
        let (status, err) = run.finish(Duration::from_secs(5));
        assert_eq!(status, Some(code), "{err}");
        assert!(err.contains("cleanup: shm_unlink("), "{err}");
        testkit::assert_nothing_left_by(3, pid);
    }
}

#[test]
fn works_for_an_unprivileged_user() {
    let Some(out) = testkit::run_as_nobody(bin(), &[]) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");
    assert_eq!(
        err.matches("SIGBUS handler: si_code=BUS_ADRERR").count(),
        3,
        "{err}"
    );
    assert!(text.contains("\nchild wrote 0xdeadbeef\n"));
    assert!(!text.contains("warning:"), "{text}");
    // setpriv execs the lesson in place, so the pid in its object names is
    // the lesson's own: nothing of that run is left in /dev/shm.
    let pid = testkit::number_after(&text, "shm_open(\"/shm-lessons-3-");
    testkit::assert_nothing_left_by(3, pid);
}
