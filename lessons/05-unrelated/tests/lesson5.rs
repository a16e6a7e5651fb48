//! lesson-5 proves what it prints, on the running kernel: two separate
//! processes exchange a message through shared memory found by name or key,
//! in either order, and the writer leaves nothing behind.
//!
//! Every test passes its own unique --name or --key: the default name is per
//! user, and tests run in parallel.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::testkit::{self, Running};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(30);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lesson-5"))
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}

/// `--api posix --name NAME` or `--api sysv --key KEY`.
#[derive(Clone)]
enum Target {
    Posix(String),
    Sysv(i32),
}

impl Target {
    fn posix(tag: &str) -> Target {
        Target::Posix(testkit::unique_name(tag))
    }

    fn sysv() -> Target {
        Target::Sysv(testkit::unique_key())
    }

    fn args(&self) -> Vec<String> {
        match self {
            Target::Posix(n) => vec!["--api".into(), "posix".into(), "--name".into(), n.clone()],
            Target::Sysv(k) => vec![
                "--api".into(),
                "sysv".into(),
                "--key".into(),
                format!("{:#x}", *k as u32),
            ],
        }
    }

    fn exists(&self) -> bool {
        match self {
            Target::Posix(n) => testkit::shm_exists(n),
            Target::Sysv(k) => !testkit::segments_with_key(*k).is_empty(),
        }
    }

    /// Remove what a test deliberately left (after --keep or SIGKILL).
    fn remove(&self) {
        match self {
            Target::Posix(n) => {
                let _ = nix::sys::mman::shm_unlink(n.as_str());
            }
            Target::Sysv(k) => {
                if let Ok(id) = common::sysv::shmget(*k, 0, 0) {
                    let _ = common::sysv::shmctl_rmid(id);
                }
            }
        }
    }
}

/// Remove the target on every path of a test that leaves it on purpose
/// (SIGKILL, --keep), even when an assertion fails half-way.
fn removed_on_drop(t: &Target) -> common::cleanup::Guard {
    let t = t.clone();
    common::cleanup::Guard::new("the test's object", move || t.remove())
}

/// Run `check` for a POSIX name and a System V key at the same time, in two
/// threads: a test that has to wait out a --timeout then waits once, not
/// twice.
fn both_apis(tag: &str, check: fn(Target)) {
    let threads =
        [Target::posix(tag), Target::sysv()].map(|t| std::thread::spawn(move || check(t)));
    for t in threads {
        if let Err(panic) = t.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

fn args<'a>(role: &'a str, t: &'a [String], extra: &'a [&'a str]) -> Vec<&'a str> {
    let mut v = vec![role];
    v.extend(t.iter().map(String::as_str));
    v.extend_from_slice(extra);
    v
}

fn start(role: &str, t: &Target, extra: &[&str]) -> Running {
    let ta = t.args();
    testkit::start(bin(), &args(role, &ta, extra))
}

fn run(role: &str, t: &Target, extra: &[&str]) -> (u32, Option<i32>, String, String) {
    let ta = t.args();
    let (pid, out) = testkit::run_with_pid(bin(), &args(role, &ta, extra));
    (
        pid,
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Start the writer in the background, wait until it waits for a reader.
fn start_writer(t: &Target, extra: &[&str]) -> Running {
    let mut w = start("writer", t, extra);
    w.wait_for("writer: waiting for a reader", T);
    w
}

/// The writer's whole stdout once it is done, its exit code and stderr.
fn finish_writer(mut w: Running, acked: bool) -> (String, Option<i32>, String) {
    if acked {
        w.wait_for("writer done", T);
    }
    let seen = w.seen.clone();
    let (code, err) = w.finish(T);
    (seen, code, err)
}

/// Stop a writer the test no longer needs (a skipped test): SIGTERM, so it
/// still removes its object.
fn stop_writer(w: Running) {
    w.signal(Signal::SIGTERM);
    let (code, err) = w.finish(T);
    assert_eq!(code, Some(143), "{err}");
}

/// One writer and one reader, as separate processes, in the order asked.
fn exchange(t: &Target, reader_first: bool, message: &str) {
    let (writer_out, writer_code, reader_pid, reader_out) = if reader_first {
        let mut r = start("reader", t, &["--timeout", "30"]);
        r.wait_for("reader: waiting for", T);
        let (wpid, wcode, wout, werr) = run("writer", t, &["--message", message]);
        assert_eq!(wcode, Some(0), "writer: {wout}\n{werr}");
        testkit::assert_nothing_left_by(5, wpid);
        r.wait_for("reader done", T);
        let rpid = r.pid();
        let rout = r.seen.clone();
        let (rcode, rerr) = r.finish(T);
        assert_eq!(rcode, Some(0), "reader: {rout}\n{rerr}");
        (wout, wcode, rpid, rout)
    } else {
        let w = start_writer(t, &["--message", message]);
        let (rpid, rcode, rout, rerr) = run("reader", t, &["--timeout", "30"]);
        assert_eq!(rcode, Some(0), "reader: {rout}\n{rerr}");
        let (wout, wcode, werr) = finish_writer(w, true);
        assert_eq!(wcode, Some(0), "writer: {wout}\n{werr}");
        (wout, wcode, rpid, rout)
    };
    assert_eq!(writer_code, Some(0));
    assert!(
        reader_out.contains(&format!("\nreader: message: {message}\n")),
        "{reader_out}"
    );
    assert!(
        reader_out.contains("\nreader: sequence: 1\n"),
        "{reader_out}"
    );
    assert!(
        writer_out.contains(&format!("writer: reader pid {reader_pid} acknowledged")),
        "the writer saw the ack of this very reader:\n{writer_out}"
    );
    // Each side printed where it mapped the segment, and the reader printed
    // the writer's address (read from the header) next to its own.
    let w_addr = line_after(&writer_out, "writer: mapped at ");
    let r_addr = line_after(&reader_out, "reader: mapped at ");
    assert!(
        reader_out.contains(&format!(
            "reader: the writer mapped it at {w_addr}, this reader at {r_addr}"
        )),
        "{reader_out}"
    );
    assert!(!t.exists(), "the writer left its object behind");
}

fn line_after(text: &str, prefix: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{text}"))
        .to_string()
}

#[test]
fn posix_writer_then_reader() {
    exchange(&Target::posix("wr"), false, "posix, writer first");
}

#[test]
fn posix_reader_then_writer() {
    exchange(&Target::posix("rw"), true, "posix, reader first");
}

#[test]
fn sysv_writer_then_reader() {
    exchange(&Target::sysv(), false, "sysv, writer first");
}

#[test]
fn sysv_reader_then_writer() {
    exchange(&Target::sysv(), true, "sysv, reader first");
}

#[test]
fn two_pairs_with_different_names_run_at_once() {
    let a = Target::posix("pair-a");
    let b = Target::posix("pair-b");
    let ta = std::thread::spawn(move || exchange(&a, true, "message for pair a"));
    let tb = std::thread::spawn(move || exchange(&b, false, "message for pair b"));
    ta.join().unwrap();
    tb.join().unwrap();
}

#[test]
fn a_reader_with_no_writer_exits_1_at_its_timeout() {
    both_apis("nowriter", |t| {
        let (_, code, out, err) = run("reader", &t, &["--timeout", "1"]);
        assert_eq!(code, Some(1), "{out}\n{err}");
        assert!(err.contains("ERROR no writer created"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!t.exists());
    });
}

#[test]
fn a_writer_with_no_reader_removes_its_object_at_the_timeout() {
    both_apis("noreader", |t| {
        let (pid, code, out, err) = run("writer", &t, &["--timeout", "1"]);
        assert_eq!(code, Some(1), "{out}\n{err}");
        assert!(err.contains("no reader acknowledged within 1 s"), "{err}");
        assert!(!t.exists(), "removed at the timeout");
        testkit::assert_nothing_left_by(5, pid);
    });
}

#[test]
fn a_killed_writer_leaves_a_stale_object_that_the_next_writer_replaces() {
    for t in [Target::posix("stale"), Target::sysv()] {
        let _remove = removed_on_drop(&t);
        let w = start_writer(&t, &["--message", "first"]);
        w.signal(Signal::SIGKILL);
        let (code, _) = w.finish(T);
        assert_eq!(code, None, "killed by a signal");
        assert!(t.exists(), "SIGKILL leaves the object: no cleanup can run");

        // A reader started now sees the stale object and waits for a new one.
        let mut r = start("reader", &t, &["--timeout", "30"]);
        r.wait_for("reader: stale object (sequence 1, its writer pid", T);
        let (_, wcode, wout, werr) = run("writer", &t, &["--message", "second"]);
        assert_eq!(wcode, Some(0), "{wout}\n{werr}");
        assert!(wout.contains("writer: replacing a stale "), "{wout}");
        r.wait_for("reader done", T);
        let seen = r.seen.clone();
        let (rcode, rerr) = r.finish(T);
        assert_eq!(rcode, Some(0), "{seen}\n{rerr}");
        assert!(seen.contains("\nreader: message: second\n"), "{seen}");
        assert!(seen.contains("\nreader: sequence: 2\n"), "{seen}");
        assert!(!t.exists());
    }
}

#[test]
fn keep_leaves_the_object_and_the_next_writer_reuses_the_name() {
    for t in [Target::posix("keep"), Target::sysv()] {
        let _remove = removed_on_drop(&t);
        let w = start_writer(&t, &["--keep"]);
        let (_, rcode, rout, _) = run("reader", &t, &[]);
        assert_eq!(rcode, Some(0), "{rout}");
        let (wout, wcode, _) = finish_writer(w, true);
        assert_eq!(wcode, Some(0));
        assert!(wout.contains("--keep"), "{wout}");
        assert!(t.exists(), "--keep leaves the object");

        let w = start_writer(&t, &[]);
        let (_, rcode, rout, _) = run("reader", &t, &[]);
        assert_eq!(rcode, Some(0), "{rout}");
        assert!(rout.contains("\nreader: sequence: 2\n"), "{rout}");
        let (wout, wcode, _) = finish_writer(w, true);
        assert_eq!(wcode, Some(0));
        assert!(wout.contains("writer: replacing a stale "), "{wout}");
        assert!(!t.exists());
    }
}

#[test]
fn a_foreign_posix_object_is_refused_and_not_overwritten() {
    for size in [4096usize, 100] {
        let t = Target::posix("foreign");
        let Target::Posix(name) = &t else {
            unreachable!()
        };
        let path = format!("/dev/shm/{}", name.trim_start_matches('/'));
        let content = vec![0xabu8; size];
        std::fs::write(&path, &content).unwrap();
        let _remove = common::cleanup::path(&path); // even if an assertion fails
        for role in ["writer", "reader"] {
            let (_, code, out, err) = run(role, &t, &["--timeout", "5"]);
            assert_eq!(code, Some(1), "{role}: {out}\n{err}");
            assert!(err.contains("not a lesson-5 segment"), "{role}: {err}");
        }
        let still = std::fs::read(&path).unwrap();
        assert_eq!(still, content, "nothing was overwritten");
    }
}

#[test]
fn a_foreign_sysv_segment_is_refused_and_not_removed() {
    let t = Target::sysv();
    let Target::Sysv(key) = t else { unreachable!() };
    let id = common::sysv::shmget(key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o600).unwrap();
    let _guard = common::cleanup::sysv_segment(id);
    let (_, code, out, err) = run("writer", &t, &["--timeout", "5"]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(err.contains("not a lesson-5 segment"), "{err}");
    let seg = common::inspect::sysv_segment(id).expect("the foreign segment is still there");
    assert_eq!(seg.key, key);
}

/// Fill a System V segment the test made, through a fresh attachment.
fn fill_segment(id: i32, size: usize, byte: u8) {
    let p = common::sysv::shmat(id, 0).unwrap();
    // SAFETY: a fresh attachment of `size` bytes of a segment only this test
    // knows (its key is unique), detached right after.
    unsafe {
        std::ptr::write_bytes(p.as_ptr().cast::<u8>(), byte, size);
        common::sysv::shmdt(p).unwrap();
    }
}

/// The bytes of a System V segment, through a read-only attachment.
fn segment_bytes(id: i32, size: usize) -> Vec<u8> {
    let p = common::sysv::shmat(id, libc::SHM_RDONLY).unwrap();
    // SAFETY: a fresh attachment of `size` bytes; no other process writes the
    // segment (the lesson refused it), and it is detached right after.
    unsafe {
        let v = std::slice::from_raw_parts(p.as_ptr().cast::<u8>(), size).to_vec();
        common::sysv::shmdt(p).unwrap();
        v
    }
}

#[test]
fn a_foreign_sysv_segment_of_another_size_or_magic_is_refused_by_both_roles() {
    for size in [4096usize, 100] {
        let t = Target::sysv();
        let Target::Sysv(key) = t else { unreachable!() };
        let id = common::sysv::shmget(key, size, libc::IPC_CREAT | libc::IPC_EXCL | 0o600).unwrap();
        let _guard = common::cleanup::sysv_segment(id);
        fill_segment(id, size, 0xab);
        for role in ["writer", "reader"] {
            let (_, code, out, err) = run(role, &t, &["--timeout", "5"]);
            assert_eq!(code, Some(1), "{role}: {out}\n{err}");
            assert!(err.contains("not a lesson-5 segment"), "{role}: {err}");
        }
        let seg = common::inspect::sysv_segment(id).expect("the foreign segment is still there");
        assert_eq!((seg.key, seg.size), (key, size as u64));
        assert_eq!(
            segment_bytes(id, size),
            vec![0xab; size],
            "nothing was overwritten"
        );
    }
}

#[test]
fn a_second_writer_on_a_live_name_or_key_is_refused_and_the_first_goes_on() {
    for t in [Target::posix("live"), Target::sysv()] {
        let w = start_writer(&t, &["--message", "first"]);
        let (_, code, out, err) = run("writer", &t, &["--message", "second", "--timeout", "5"]);
        assert_eq!(code, Some(1), "{out}\n{err}");
        assert!(
            err.contains(&format!("still running (pid {})", w.pid())),
            "{err}"
        );
        assert!(err.contains("Nothing was overwritten"), "{err}");
        let (_, rcode, rout, rerr) = run("reader", &t, &[]);
        assert_eq!(rcode, Some(0), "{rout}\n{rerr}");
        assert!(rout.contains("\nreader: message: first\n"), "{rout}");
        assert!(rout.contains("\nreader: sequence: 1\n"), "{rout}");
        let (wout, wcode, werr) = finish_writer(w, true);
        assert_eq!(wcode, Some(0), "{wout}\n{werr}");
        assert!(!t.exists());
    }
}

#[test]
fn ctrl_c_on_the_writer_or_the_reader_leaves_nothing() {
    for t in [Target::posix("sigint"), Target::sysv()] {
        let w = start_writer(&t, &[]);
        assert!(t.exists());
        w.signal(Signal::SIGINT);
        let (code, err) = w.finish(T);
        assert_eq!(code, Some(130), "{err}");
        assert!(err.contains("cleanup: "), "{err}");
        assert!(!t.exists(), "Ctrl-C on the writer removed its object");

        let mut r = start("reader", &t, &["--timeout", "30"]);
        r.wait_for("reader: waiting for", T);
        r.signal(Signal::SIGINT);
        let (code, _) = r.finish(T);
        assert_eq!(code, Some(130));
        assert!(!t.exists(), "the reader creates nothing");
    }
}

#[test]
fn sigterm_on_a_waiting_writer_removes_its_object() {
    for t in [Target::posix("sigterm"), Target::sysv()] {
        let w = start_writer(&t, &[]);
        assert!(t.exists());
        w.signal(Signal::SIGTERM);
        let (code, err) = w.finish(T);
        assert_eq!(code, Some(143), "{err}");
        assert!(err.contains("cleanup: "), "{err}");
        assert!(!t.exists(), "SIGTERM on the writer removed its object");
    }
}

#[test]
fn a_reader_without_permission_gets_a_clear_eacces() {
    both_apis("eacces", |t| {
        // The writer's --timeout need only outlast the start of one reader.
        let w = start_writer(&t, &["--timeout", "2"]);
        let ta = t.args();
        let Some(out) = testkit::run_as_nobody(bin(), &args("reader", &ta, &["--timeout", "5"]))
        else {
            stop_writer(w);
            return;
        };
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("ERROR [EACCES Permission denied]"), "{err}");
        assert!(err.contains("belongs to root with mode 0600"), "{err}");
        assert!(err.contains("--mode 0644"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        // No ack came: the writer removes its object at its timeout.
        let (_, code, _) = finish_writer(w, false);
        assert_eq!(code, Some(1));
        assert!(!t.exists());
    });
}

#[test]
fn mode_0644_lets_another_user_read_but_not_acknowledge() {
    both_apis("mode644", |t| {
        let w = start_writer(
            &t,
            &[
                "--mode",
                "0644",
                "--message",
                "for everyone",
                "--timeout",
                "2",
            ],
        );
        let ta = t.args();
        let Some(out) = testkit::run_as_nobody(bin(), &args("reader", &ta, &["--timeout", "5"]))
        else {
            stop_writer(w);
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert!(text.contains("\nreader: message: for everyone\n"), "{text}");
        assert!(text.contains("read-only: no acknowledgement"), "{text}");
        let (_, code, err) = finish_writer(w, false);
        assert_eq!(
            code,
            Some(1),
            "no ack, so the writer stops at its timeout: {err}"
        );
        assert!(!t.exists());
    });
}

#[test]
fn the_python_reader_reads_and_acknowledges() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let t = Target::posix("python");
    let Target::Posix(name) = &t else {
        unreachable!()
    };
    let w = start_writer(&t, &["--message", "from rust to python"]);
    let out = Command::new("python3")
        .arg(script("lesson5_reader.py"))
        .args([name.as_str(), "--timeout", "20"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");
    // SharedMemory(name=...) did not hand the writer's object to the
    // resource tracker (which would unlink it and warn of a "leak").
    assert!(!err.contains("leaked"), "{err}");
    assert!(
        text.contains("python reader: message: from rust to python\n"),
        "{text}"
    );
    assert!(text.contains("python reader: sequence: 1\n"), "{text}");
    assert!(text.contains("python reader: acknowledged"), "{text}");
    let (wout, code, _) = finish_writer(w, true);
    assert_eq!(code, Some(0));
    // The same 8-byte address, read with Python's struct "=": the byte
    // order agrees (a "<"/">" mismatch would reverse it).
    let w_addr = line_after(&wout, "writer: mapped at ");
    assert!(
        text.contains(&format!("the writer mapped it at {w_addr}")),
        "{text}"
    );
    assert!(!t.exists());
}

#[test]
fn the_c_reader_reads_both_apis_and_acknowledges() {
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("skipped: no C compiler (cc)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("shm-lessons-5-c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = common::cleanup::path(&dir);
    let exe = dir.join("lesson5_reader");
    let cc = Command::new("cc")
        .args(["-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(script("lesson5_reader.c"))
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    for t in [Target::posix("c"), Target::sysv()] {
        let target: Vec<String> = match &t {
            Target::Posix(n) => vec![n.clone()],
            Target::Sysv(k) => vec!["--key".into(), format!("{:#x}", *k as u32)],
        };
        let w = start_writer(&t, &["--message", "from rust to c"]);
        let out = Command::new(&exe).args(&target).arg("20").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("c reader: message: from rust to c\n"),
            "{text}"
        );
        assert!(text.contains("c reader: sequence: 1\n"), "{text}");
        let (wout, code, _) = finish_writer(w, true);
        assert_eq!(code, Some(0), "{wout}");
        // The writer's address (0x7f..., an 8-byte number that reads
        // differently byte-reversed) comes back the same from C: the byte
        // order agrees.
        let w_addr = line_after(&wout, "writer: mapped at ");
        assert!(
            text.contains(&format!(", the writer at {w_addr}\n")),
            "{text}"
        );
        assert!(!t.exists());
    }
}

#[test]
fn the_demo_runs_both_apis_as_separate_programs_and_leaves_nothing() {
    let t = Target::posix("demo");
    let Target::Posix(name) = &t else {
        unreachable!()
    };
    let key = testkit::unique_key();
    let hex = format!("{:#x}", key as u32);
    let (pid, out) = testkit::run_with_pid(bin(), &["--name", name, "--key", &hex]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(" reader --api posix --name {name}")),
        "{text}"
    );
    assert!(
        text.contains(&format!(" writer --api sysv --key {hex}")),
        "{text}"
    );
    assert_eq!(
        text.matches("reader | reader: message: hello from").count(),
        2,
        "{text}"
    );
    assert_eq!(text.matches("exited with status 0").count(), 4, "{text}");
    assert!(
        text.contains("the reader mapped the segment at: 0x"),
        "{text}"
    );
    assert!(!t.exists());
    assert!(testkit::segments_with_key(key).is_empty());
    testkit::assert_nothing_left_by(5, pid);
}

#[test]
fn bad_input_gives_usage_and_exit_2() {
    testkit::assert_usage_errors(
        bin(),
        "lesson-5",
        &[
            &["bogus"],
            &["--bogus"],
            &["reader", "--api", "shmem"],
            &["--api", "sysv"],
            &["reader", "--message", "hi"],
            &["reader", "--keep"],
            &["writer", "--timeout", "soon"],
            &["writer", "--mode", "999"],
            &["reader", "extra"],
            &["writer", "--name", "/a/b"],
        ],
    );
}

/// proc(5): with kernel.shm_rmid_forced = 1 (set in a private IPC namespace of
/// the test's own) a System V writer, even with --keep, can't leave a segment
/// behind: it dies at the last shmdt, the writer's or the reader's. Both
/// still finish 0, and the writer says which happened.
#[test]
fn with_shm_rmid_forced_the_sysv_writer_even_with_keep_leaves_nothing_and_exits_0() {
    let key = format!("{:#x}", testkit::unique_key() as u32);
    let script = format!(
        "\"$0\" writer --api sysv --key {key} --keep --timeout 30 & w=$!
         \"$0\" reader --api sysv --key {key} --timeout 30 >&2 || echo \"READER FAILED $?\"
         wait $w || echo \"WRITER FAILED $?\"
         echo '--- left:'; grep -i ' {key_dec} ' /proc/sysvipc/shm || echo '(none)'",
        key_dec = i32::from_str_radix(key.trim_start_matches("0x"), 16).unwrap()
    );
    let Some((_, out)) = testkit::run_in_ipc_namespace(
        Path::new("/bin/sh"),
        &["-c", &script, bin().to_str().unwrap()],
        &[("shm_rmid_forced", "1")],
    ) else {
        return;
    };
    let (wout, rout) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(!wout.contains("FAILED"), "{wout}\n{rout}");
    assert!(rout.contains("reader: message: hello from"), "{rout}");
    assert!(wout.contains("kernel.shm_rmid_forced: 1\n"), "{wout}");
    // Whichever shmdt came last destroyed it; the writer said which, and
    // showed it from /proc/sysvipc/shm when it was its own.
    let flat = wout.split_whitespace().collect::<Vec<_>>().join(" ");
    let at_ours = flat.contains("| (no segment with shmid ")
        && flat
            .contains("destroyed the segment when its attach count fell to 0, here at our shmdt");
    let at_readers = flat.contains("the kernel destroys it at that reader's shmdt");
    assert!(at_ours != at_readers, "{wout}");
    if at_ours {
        assert!(flat.contains("--keep kept nothing"), "{wout}");
        assert!(!flat.contains("left for inspection"), "{wout}");
    }
    // Nothing is left in the namespace once both are done.
    let left = wout.split("--- left:").nth(1).unwrap();
    assert_eq!(left.trim(), "(none)", "{wout}");
}

/// When one side of the demo fails (here the writer: a read-only /dev/shm,
/// staged on a fresh tmpfs in a private mount namespace, makes its
/// shm_open(O_CREAT) fail with EROFS), the demo stops the other side at once
/// instead of letting the reader wait out its --timeout, and its error names
/// the writer's own failing call.
#[test]
fn the_demo_stops_at_the_first_failure_with_that_sides_reason() {
    if !testkit::is_root() {
        eprintln!("skipped: staging a read-only /dev/shm needs root");
        return;
    }
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount -t tmpfs -o ro,size=64k,mode=1777 tmpfs /dev/shm && exec \"$0\" --timeout 300")
        .arg(bin())
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ERROR the writer did not succeed")
            && last.contains("ERROR [EROFS Read-only file system] shm_open("),
        "{stderr}"
    );
    // The reader was stopped (SIGTERM: status 143), not left to time out.
    assert!(stdout.contains("/* reader */) = Exited(Pid("), "{stdout}");
    assert!(stdout.contains("), 143)"), "{stdout}");
    assert!(!stdout.contains("within 300 s"), "{stdout}");
}

/// With kernel.shm_rmid_forced = 1 (a private IPC namespace of the test's own)
/// the whole demo still exits 0, and the System V writer never claims to have
/// removed the segment the kernel destroyed at its shmdt.
#[test]
fn with_shm_rmid_forced_the_demo_succeeds_and_the_writer_claims_no_removal() {
    let Some((_, out)) =
        testkit::run_in_ipc_namespace(bin(), &["--timeout", "30"], &[("shm_rmid_forced", "1")])
    else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let flat = text
        .lines()
        .map(|l| l.trim_start_matches("    writer |"))
        .collect::<Vec<_>>()
        .join(" ");
    let flat = flat.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(out.status.success(), "{text}");
    assert!(flat.contains("kernel.shm_rmid_forced: 1"), "{text}");
    // The System V part. The writer's shmdt was the last (nothing left to
    // remove), or the reader's came between the writer's check and its
    // IPC_RMID (EINVAL), or the reader was still attached and the writer's
    // IPC_RMID marked the segment (= 0). Only then did the writer remove it.
    let sysv = flat.split("--- System V").nth(1).unwrap();
    let marked = sysv.contains("IPC_RMID, NULL) = 0");
    assert!(
        marked
            || sysv.contains("EINVAL: the reader detached in the meantime")
            || sysv.contains("the segment when its attach count fell to 0, here at our shmdt"),
        "{text}"
    );
    assert_eq!(
        sysv.contains("the writer removed what it created"),
        marked,
        "{text}"
    );
    if !marked {
        assert!(
            sysv.contains("so the writer had nothing to remove"),
            "{text}"
        );
    }
}
