//! Helpers for the lessons' integration tests (feature `testkit`).
//!
//! Tests run in parallel, with other students' runs possibly alive on the
//! same machine, so every check looks at *this* run's objects only: by the
//! name the test chose, or by the pid of the lesson process that created a
//! System V segment.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::inspect;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A POSIX name no other test (in this or another process) uses:
/// `/shm-lessons-test-<pid>-<tag>-<n>`.
pub fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "/{}test-{}-{tag}-{n}",
        crate::names::PREFIX,
        std::process::id()
    )
}

/// Whether `/dev/shm` holds an object with this name.
pub fn shm_exists(name: &str) -> bool {
    inspect::dev_shm_entry(name).is_some()
}

/// `/dev/shm` entries whose names start with `prefix` (no leading slash).
pub fn shm_with_prefix(prefix: &str) -> Vec<String> {
    inspect::dev_shm_entries()
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n.starts_with(prefix.trim_start_matches('/')))
        .collect()
}

/// System V segments created by the process `pid` that still exist.
pub fn segments_created_by(pid: u32) -> Vec<inspect::SysvSegment> {
    inspect::sysv_segments()
        .into_iter()
        .filter(|s| s.cpid as u32 == pid)
        .collect()
}

/// System V segments with this key that still exist.
pub fn segments_with_key(key: i32) -> Vec<inspect::SysvSegment> {
    inspect::sysv_segments()
        .into_iter()
        .filter(|s| s.key == key && key != 0)
        .collect()
}

/// Assert that a finished lesson process left nothing: no `/dev/shm` entry
/// whose name starts with `/shm-lessons-<lesson>-<pid>` and no segment it
/// created.
pub fn assert_nothing_left_by(lesson: u8, pid: u32) {
    let prefix = format!("{}{lesson}-{pid}", crate::names::PREFIX);
    let left = shm_with_prefix(&prefix);
    assert!(
        left.is_empty(),
        "objects left in /dev/shm by pid {pid}: {left:?}"
    );
    let segs = segments_created_by(pid);
    assert!(
        segs.is_empty(),
        "System V segments left by pid {pid}: {segs:?}"
    );
}

/// Whether the tests run as root (then they also run the lesson as nobody).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Run a built binary as uid/gid 65534 (nobody) with `setpriv`, from a
/// world-readable copy (the build directory may sit under a private home).
/// Returns `None`, with a message, when the tests don't run as root or
/// `setpriv` is missing.
pub fn run_as_nobody(bin: &Path, args: &[&str]) -> Option<Output> {
    if !is_root() {
        eprintln!("skipped: not root, so the normal run already was unprivileged");
        return None;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: setpriv (util-linux) is not installed");
        return None;
    }
    let dir = std::env::temp_dir().join(format!(
        "shm-lessons-nobody-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy: PathBuf = dir.join(bin.file_name().unwrap());
    std::fs::copy(bin, &copy).expect("copy the lesson binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    // While std::fs::copy had the copy open for writing, a sibling test
    // thread may have forked: its child holds that descriptor until it execs,
    // and exec of a file open for writing fails with ETXTBSY. Try again then.
    let mut tries = 0;
    let out = loop {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&copy)
            .args(args)
            .env("NO_COLOR", "1")
            .current_dir(&dir)
            .output()
            .expect("run setpriv");
        let busy = String::from_utf8_lossy(&out.stderr).contains("Text file busy");
        tries += 1;
        if !busy || tries == 50 {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = std::fs::remove_dir_all(&dir);
    Some(out)
}

/// A lesson process started in the background, with its stdout collected.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: String,
}

/// `bin args` with NO_COLOR=1, stdin closed, stdout and stderr piped.
fn spawn(bin: &Path, args: &[&str]) -> Child {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    spawn_command(cmd).expect("start the lesson")
}

/// `cmd` with NO_COLOR=1, stdin closed, stdout and stderr piped.
fn spawn_command(mut cmd: Command) -> std::io::Result<Child> {
    cmd.env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

/// Start `bin` with `args` (NO_COLOR=1), stdout piped.
pub fn start(bin: &Path, args: &[&str]) -> Running {
    let mut child = spawn(bin, args);
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    Running {
        child,
        lines: rx,
        seen: String::new(),
    }
}

impl Running {
    /// Wait until a stdout line contains `needle`; panic after `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push_str(&l);
                    self.seen.push('\n');
                    if l.contains(needle) {
                        return;
                    }
                }
                Err(_) => {
                    // SIGTERM, not SIGKILL: the lesson's cleanup still runs.
                    self.stop_gently();
                    panic!(
                        "no line with {needle:?} within {timeout:?}; output so far:\n{}",
                        self.seen
                    );
                }
            }
        }
    }

    /// SIGTERM the lesson (it cleans up and exits 143), then reap it; SIGKILL
    /// only if it is still alive 5 s later.
    fn stop_gently(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal to the lesson process (by its pid: we started it).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig)
            .expect("signal the lesson");
    }

    /// Wait for the exit, at most `timeout` (then kill it and panic).
    /// Returns the exit code (`None` if a signal killed it) and stderr.
    pub fn finish(mut self, timeout: Duration) -> (Option<i32>, String) {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the lesson") {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                    self.seen.push_str(&l);
                    self.seen.push('\n');
                }
                return (status.code(), err);
            }
            if Instant::now() > end {
                self.stop_gently();
                panic!("the lesson did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A test that fails between [`start`] and [`Running::finish`] must not
/// leave the lesson running (holding its objects, perhaps for minutes):
/// stop it with SIGTERM, so that its own cleanup still runs.
impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop_gently();
        }
    }
}

/// Run `bin` with `args` (NO_COLOR=1, stdin closed) to the end; returns the
/// lesson's pid (for [`assert_nothing_left_by`]) and its output.
pub fn run_with_pid(bin: &Path, args: &[&str]) -> (u32, Output) {
    let child = spawn(bin, args);
    let pid = child.id();
    (pid, child.wait_with_output().expect("wait for the lesson"))
}

/// Run `n` copies of `bin args` at the same time; returns each one's pid and
/// output, in start order. For "parallel runs never collide" tests.
pub fn run_concurrently(bin: &Path, args: &[&str], n: usize) -> Vec<(u32, Output)> {
    let children: Vec<Child> = (0..n).map(|_| spawn(bin, args)).collect();
    children
        .into_iter()
        .map(|c| {
            let pid = c.id();
            (pid, c.wait_with_output().expect("wait for the lesson"))
        })
        .collect()
}

/// Every argument list in `bad` makes the lesson print its usage on stderr
/// and exit 2 (never a panic, never a half-run lesson).
pub fn assert_usage_errors(bin: &Path, program: &str, bad: &[&[&str]]) {
    for args in bad {
        let out = Command::new(bin)
            .args(*args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run the lesson");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("usage: {program}")),
            "{args:?} printed no usage: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(out.stdout.is_empty(), "{args:?} ran the lesson anyway");
    }
}

/// A System V key no other test uses: `0x53` (`'S'`, see
/// [`crate::names::KEY_MARK`]), the low 16 bits of the test process's pid,
/// then a counter. Create with `IPC_EXCL` all the same.
pub fn unique_key() -> i32 {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xff;
    ((crate::names::KEY_MARK << 24) | ((std::process::id() & 0xffff) << 8) | n) as i32
}

/// The number printed right after the first `needle` in a lesson's output:
/// the pid in `/shm-lessons-3-<pid>`, the shmid after `= shmid `. Panics,
/// showing the output, when the needle or the number is missing.
pub fn number_after(text: &str, needle: &str) -> u32 {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("no {needle:?} in:\n{text}"))
        + needle.len();
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no number after {needle:?} in:\n{text}"))
}

/// Run `bin` with `args` (NO_COLOR=1) to the end on one CPU only, the first
/// one this test may use: what `taskset -c CPU` does (sched_setaffinity
/// before exec; the lesson and its children inherit the mask). Returns the
/// lesson's pid and its output.
pub fn run_on_one_cpu(bin: &Path, args: &[&str]) -> (u32, Output) {
    use std::os::unix::process::CommandExt;
    let me = nix::unistd::Pid::from_raw(0);
    let mine = nix::sched::sched_getaffinity(me).expect("sched_getaffinity");
    let cpu = (0..nix::sched::CpuSet::count())
        .find(|&c| mine.is_set(c).unwrap_or(false))
        .expect("at least one usable CPU");
    let mut one = nix::sched::CpuSet::new();
    one.set(cpu).expect("a CPU number within cpu_set_t");
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure makes one system call
    // (sched_setaffinity) on a CpuSet built before the fork.
    unsafe {
        cmd.pre_exec(move || Ok(nix::sched::sched_setaffinity(me, &one)?));
    }
    let child = cmd.spawn().expect("start the lesson");
    let pid = child.id();
    (pid, child.wait_with_output().expect("wait for the lesson"))
}

/// How many CPUs this process may run on (its sched_getaffinity mask).
pub fn usable_cpus() -> usize {
    let mask =
        nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("sched_getaffinity");
    (0..nix::sched::CpuSet::count())
        .filter(|&c| mask.is_set(c).unwrap_or(false))
        .count()
}

/// Run `bin args` (NO_COLOR=1) to the end in a private IPC namespace of its
/// own (`unshare -i`, or `unshare -r -i` with a user namespace when not
/// root), after writing each `(sysctl, value)` into that namespace's
/// `/proc/sys/kernel/<sysctl>`: `[("shm_rmid_forced", "1")]`. The host's
/// settings are never touched (IPC sysctls are per IPC namespace). Every
/// segment the run leaves dies with the namespace. Returns the lesson's pid
/// and output, or `None` (with a message) when the namespace is refused.
pub fn run_in_ipc_namespace(
    bin: &Path,
    args: &[&str],
    sysctls: &[(&str, &str)],
) -> Option<(u32, Output)> {
    let mut script = String::new();
    for (name, value) in sysctls {
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        assert!(value.chars().all(|c| c.is_ascii_digit()));
        script.push_str(&format!(
            "echo {value} > /proc/sys/kernel/{name} || exit 125; "
        ));
    }
    script.push_str("exec \"$0\" \"$@\"");
    let mut cmd = Command::new("unshare");
    if !is_root() {
        cmd.arg("-r");
    }
    // unshare and sh exec in place: the pid is the lesson's own.
    cmd.args(["-i", "--", "sh", "-c", &script])
        .arg(bin)
        .args(args);
    let child = spawn_command(cmd).ok()?;
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for the lesson");
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(125) || err.starts_with("unshare: ") {
        eprintln!("skipped: no private IPC namespace here: {err}");
        return None;
    }
    Some((pid, out))
}

/// Compile one C file the way the article's readers would, with
/// `cc -Wall -Werror -o exe src` and no library flags (no `-lrt`). `None`,
/// with the reason printed, when this machine has no `cc`: the caller then
/// skips.
pub fn cc(src: &Path, exe: &Path) -> Option<Output> {
    match Command::new("cc")
        .args(["-Wall", "-Werror", "-o"])
        .arg(exe)
        .arg(src)
        .output()
    {
        Ok(out) => Some(out),
        Err(e) => {
            eprintln!("skipped: no C compiler (cc: {e})");
            None
        }
    }
}

/// Build a C program with plain `cc` and no `-lrt`, and check that it names
/// no librt. `uses_posix_shm`: it calls `shm_open`/`shm_unlink`, which are in
/// libc only since glibc 2.34; before that the link must fail (the article's
/// `-lrt` was right then) and the caller skips, as it does without `cc` or on
/// a libc other than glibc. `None` means skipped (the reason is printed).
pub fn cc_without_lrt(src: &Path, exe: &Path, uses_posix_shm: bool) -> Option<PathBuf> {
    let out = cc(src, exe)?;
    let err = String::from_utf8_lossy(&out.stderr);
    if uses_posix_shm {
        match inspect::glibc_at_least(2, 34) {
            Some(true) => {}
            Some(false) => {
                assert!(!out.status.success(), "linked without -lrt on old glibc");
                eprintln!("skipped: glibc < 2.34 needs -lrt, as the article says");
                return None;
            }
            None => {
                eprintln!("skipped: not glibc; the -lrt claim is about glibc");
                return None;
            }
        }
    }
    assert!(out.status.success(), "cc without -lrt failed:\n{err}");
    if let Some(libs) = needed_libraries(exe) {
        assert!(!libs.iter().any(|l| l.starts_with("librt")), "{libs:?}");
    }
    Some(exe.to_path_buf())
}

/// The shared libraries an executable names (`readelf -d`'s NEEDED lines),
/// or `None` when `readelf` is missing.
pub fn needed_libraries(exe: &Path) -> Option<Vec<String>> {
    let out = Command::new("readelf").arg("-d").arg(exe).output().ok()?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("(NEEDED)"))
            .filter_map(|l| Some(l.split('[').nth(1)?.trim_end_matches(']').to_string()))
            .collect(),
    )
}

/// How [`check_transcript`] compares a fresh run with a lesson's transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Every line, after normalising.
    Everything,
    /// Only the lines that give the lesson its shape: section and
    /// subsection headings, `▸` steps and `$` commands. For a lesson whose
    /// prose is computed from what it measures (lesson-8's conclusions), so
    /// that its wording changes from run to run.
    Structure,
}

/// `docs/src/transcripts/lesson-N.txt`.
pub fn transcript_path(lesson: u8) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/src/transcripts")
        .join(format!("lesson-{lesson}.txt"))
}

/// Rerun lesson `lesson` (the binary `bin`) as `scripts/update-transcripts`
/// recorded it (the transcript's first line gives the arguments) and compare
/// its output with the transcript after [`normalise`]. Lines are compared as
/// a multiset, so that lines two processes print at the same time may come
/// in another order. Skips, printing why, when this machine differs from the
/// one that recorded the transcript in a way the lesson reports: exit status
/// 77 (it can't run here), or a differing `machine_facts` line (a fact whose
/// label starts with one of these, e.g. `kernel.shm_rmid_forced`). The
/// sections whose headings start with one of `volatile_sections` are left
/// out: what they show depends on what else is on the machine (lesson-7's
/// scan for leftovers). Panics, naming `scripts/update-transcripts`, when
/// the text differs.
pub fn check_transcript(
    bin: &Path,
    lesson: u8,
    compare: Compare,
    machine_facts: &[&str],
    volatile_sections: &[&str],
) {
    let path = transcript_path(lesson);
    let recorded = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/update-transcripts {lesson}",
            path.display()
        )
    });
    let (command, recorded) = recorded.split_once('\n').unwrap_or((&recorded, ""));
    let args: Vec<&str> = command
        .split_once(" -- ")
        .map_or(Vec::new(), |(_, a)| a.split_whitespace().collect());
    // One pipe for stdout and stderr, as `2>&1` in the script: a child's
    // line on stderr lands where a terminal would show it.
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    let mut child = Command::new(bin)
        .args(&args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end.try_clone().unwrap()))
        .stderr(Stdio::from(write_end))
        .spawn()
        .unwrap();
    let mut bytes = Vec::new();
    std::fs::File::from(read_end)
        .read_to_end(&mut bytes)
        .unwrap();
    let status = child.wait().unwrap();
    let out = Output {
        status,
        stdout: bytes,
        stderr: Vec::new(),
    };
    let mut fresh = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.code() {
        Some(0) => {}
        Some(77) if !recorded.contains("(exit status 77)") => {
            eprintln!("skipped: lesson-{lesson} can't run on this machine (exit status 77)");
            return;
        }
        Some(code) => fresh.push_str(&format!("(exit status {code})\n")),
        None => panic!("lesson-{lesson} was killed: {:?}\n{fresh}", out.status),
    }
    for label in machine_facts {
        let fact = |text: &str| {
            text.lines()
                .map(str::trim)
                .find(|l| l.starts_with(label))
                .map(str::to_string)
        };
        if fact(recorded) != fact(&fresh) {
            eprintln!(
                "skipped: this machine differs from the one that recorded {}: {:?} here, {:?} there",
                path.display(),
                fact(&fresh),
                fact(recorded)
            );
            return;
        }
    }
    let keep = |text: &str| -> String {
        let mut skipping = false;
        let mut kept = String::new();
        for line in text.lines() {
            let t = line.trim_start();
            if t.starts_with("--- ") {
                skipping = volatile_sections
                    .iter()
                    .any(|v| t.trim_start_matches("--- ").starts_with(v));
            }
            if !skipping {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        kept
    };
    let (recorded, fresh_kept) = (keep(recorded), keep(&fresh));
    let lines = |text: &str| {
        let mut v: Vec<String> = joined_lines(text)
            .iter()
            .filter(|l| compare == Compare::Everything || is_structure(l))
            .map(|l| normalise(l))
            .filter(|l| !l.is_empty())
            .collect();
        v.sort();
        v
    };
    let (want, got) = (lines(&recorded), lines(&fresh_kept));
    if want != got {
        let missing: Vec<&String> = want.iter().filter(|l| !got.contains(l)).collect();
        let extra: Vec<&String> = got.iter().filter(|l| !want.contains(l)).collect();
        panic!(
            "lesson-{lesson} no longer prints what {} shows (numbers, addresses and names \
             normalised). If the change is intended, run scripts/update-transcripts {lesson} \
             and commit the transcript.\n\nonly in the transcript:\n  {}\n\nonly in this run:\n  {}\n\nthis run:\n{fresh}",
            path.display(),
            join_or_none(&missing),
            join_or_none(&extra),
        );
    }
}

fn join_or_none(lines: &[&String]) -> String {
    if lines.is_empty() {
        "(none: the same lines, a different count)".into()
    } else {
        lines
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    }
}

/// Lines that stand alone: never the continuation of a wrapped paragraph,
/// and never continued (steps, commands, evidence, headings, lines a child
/// process writes).
fn atomic(t: &str) -> bool {
    const MARKS: &[&str] = &[
        "▸",
        "$",
        "|",
        "---",
        "·",
        "===",
        "[",
        "ERROR",
        "(exit status",
    ];
    MARKS.iter().any(|m| t.starts_with(m))
}

/// A prose line that begins a paragraph of its own.
fn starts_paragraph(t: &str) -> bool {
    const MARKS: &[&str] = &[
        "note:",
        "warning:",
        "the article says:",
        "this machine shows:",
        "because:",
    ];
    MARKS.iter().any(|m| t.starts_with(m))
}

/// `writer | text` (lesson-5 prefixes each of its two processes' lines):
/// the stream's name and the line without the prefix.
fn stream_of(line: &str) -> (&str, &str) {
    let t = line.trim_start();
    let (tag, rest) = match t.split_once(" |") {
        Some((tag, rest)) => (tag, rest.strip_prefix(' ').unwrap_or(rest)),
        None => return ("", line),
    };
    if !tag.is_empty() && tag.chars().all(|c| c.is_ascii_lowercase()) {
        (tag, rest)
    } else {
        ("", line)
    }
}

/// The output's lines with each wrapped paragraph joined into one, so that a
/// number of another width, which moves the wrap, changes nothing. Lines of
/// a prefixed stream (`writer | …`) are joined within their stream.
pub fn joined_lines(text: &str) -> Vec<String> {
    use std::collections::HashMap;
    let mut out: Vec<String> = Vec::new();
    // Per stream: the index in `out` of its open paragraph, and its indent.
    let mut open: HashMap<String, (usize, usize)> = HashMap::new();
    // Another process's line can land in the middle of a step line left
    // open (`  ▸ fork()    [child 7] SIGBUS handler: …`, then ` = 7 (…)` on
    // a line of its own): cut such lines in two.
    let mut lines: Vec<&str> = Vec::new();
    for mut line in text.lines() {
        loop {
            // Look from the second character on: a mark at the start of the
            // line is where it belongs.
            let from = line.char_indices().nth(1).map_or(line.len(), |(i, _)| i);
            let rest = &line[from..];
            let Some(at) = [rest.find("    ["), rest.find("  ▸ ")]
                .into_iter()
                .flatten()
                .map(|at| at + from)
                .filter(|&at| !line[..at].trim().is_empty())
                .min()
            else {
                break;
            };
            lines.push(&line[..at]);
            line = &line[at..];
        }
        lines.push(line);
    }
    for line in lines {
        let (tag, body) = stream_of(line);
        let t = body.trim();
        let indent = body.len() - body.trim_start().len();
        if t.is_empty() {
            open.remove(tag);
            continue;
        }
        match open.get(tag) {
            Some(&(at, ind)) if ind == indent && !atomic(t) && !starts_paragraph(t) => {
                out[at].push(' ');
                out[at].push_str(t);
            }
            _ => {
                out.push(format!(
                    "{tag}{}{t}",
                    if tag.is_empty() { "" } else { " | " }
                ));
                if atomic(t) {
                    open.remove(tag);
                } else {
                    open.insert(tag.to_string(), (out.len() - 1, indent));
                }
            }
        }
    }
    // A result printed apart from its step (above) is a line of its own:
    // make it one always, so the two shapes compare equal.
    out.iter()
        .flat_map(|l| {
            let mut parts = l.split(" = ");
            let first = parts.next().unwrap_or("").to_string();
            std::iter::once(first).chain(parts.map(|p| format!("= {p}")))
        })
        .collect()
}

/// An absolute path into a build directory (`/work/main/target/debug/lesson-5`)
/// as `target/debug/lesson-5`: where the workspace is checked out differs
/// between machines and worktrees, not what the lesson does.
fn without_build_dir(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find("/target/") {
        let start = rest[..at]
            .rfind([' ', '(', '"', '\'', '='])
            .map_or(0, |p| p + 1);
        if rest[start..].starts_with('/') {
            out.push_str(&rest[..start]);
        } else {
            out.push_str(&rest[..at + 1]);
        }
        out.push_str("target/");
        rest = &rest[at + "/target/".len()..];
    }
    out.push_str(rest);
    out
}

fn is_structure(line: &str) -> bool {
    let t = line.trim_start();
    ["---", "·", "▸", "$", "==="]
        .iter()
        .any(|m| t.starts_with(m))
}

/// What may differ between two runs of the same lesson, replaced by a
/// placeholder: `0x…` becomes `0xH`; hex strings of 8 digits or more
/// (addresses, keys, SYSV names) and every other number (pids, shmids,
/// inodes, devices, sizes, timings, measured figures) becomes `N`, the sign
/// of a signed figure (`(+16436 kB)`, `(-16280 kB)`: a machine-wide delta
/// that other programs move either way) becomes `±`, a bar of a chart
/// becomes `BAR`, and runs of spaces (table columns) become one.
pub fn normalise(line: &str) -> String {
    let line = &without_build_dir(line);
    let mut s = String::new();
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let hex_run = chars[i..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            .count();
        if c == '0' && chars.get(i + 1) == Some(&'x') {
            let n = chars[i + 2..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit())
                .count();
            s.push_str("0xH");
            i += 2 + n;
        } else if hex_run >= 8 && chars[i..i + hex_run].iter().any(char::is_ascii_digit) {
            // `N`, like any number: a figure can be 7 digits in one run and 8
            // in the next, and a key's hex digits may all be decimal.
            s.push('N');
            i += hex_run;
        } else if (c == '+' || c == '-')
            && chars.get(i + 1).is_some_and(char::is_ascii_digit)
            && (i == 0 || chars[i - 1] == '(' || chars[i - 1] == ' ')
        {
            s.push('±');
            i += 1;
        } else if c.is_ascii_digit() {
            // A number, with any hex letters that follow it (`1b` in a
            // device number `00:1b`) and a decimal part.
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || ('a'..='f').contains(&chars[i])
                    || chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
            {
                i += 1;
            }
            s.push('N');
        } else if c == '█'
            || c == '▏'
            || c == '▎'
            || c == '▍'
            || c == '▌'
            || c == '▋'
            || c == '▊'
            || c == '▉'
        {
            while i < chars.len() && "█▏▎▍▌▋▊▉".contains(chars[i]) {
                i += 1;
            }
            s.push_str("BAR");
        } else if c == ' ' {
            while i < chars.len() && chars[i] == ' ' {
                i += 1;
            }
            s.push(' ');
        } else {
            s.push(c);
            i += 1;
        }
    }
    s.trim().to_string()
}

#[cfg(test)]
mod transcript_tests {
    use super::*;

    #[test]
    fn numbers_addresses_and_names_are_normalised() {
        assert_eq!(
            normalise("  ▸ mmap(NULL, 4096, PROT_READ, MAP_SHARED, 3, 0) = 0x7fc2248a6000"),
            "▸ mmap(NULL, N, PROT_READ, MAP_SHARED, N, N) = 0xH"
        );
        assert_eq!(
            normalise(
                "| 7fc2248a6000-7fc2248a7000 rw-s 00000000 00:1b 533 /SYSV53c0ffee (deleted)"
            ),
            "| N-N rw-s N N:N N /SYSVN (deleted)"
        );
        assert_eq!(normalise("median 6.4 GB/s   ███▍ x"), "median N GB/s BAR x");
        assert_eq!(
            normalise("| Cached 16307852 kB -> 16340572 kB (+32720 kB)"),
            normalise("| Cached 16340572 kB -> 16324292 kB (-16280 kB)")
        );
        assert_eq!(
            normalise("| Cached 14741188 kB"),
            normalise("| Cached 9999312 kB")
        );
        assert_eq!(normalise("/SYSV53000123"), normalise("/SYSV53c0ffee"));
        assert_eq!(normalise("= -1 ENOENT, pid-42"), "= ±N ENOENT, pid-N");
        assert_ne!(
            normalise("child wrote 0xdeadbeef"),
            normalise("Child wrote 0xdeadbeef")
        );
    }

    #[test]
    fn wrapped_paragraphs_are_joined() {
        let text = "    a b\n    c\n  ▸ call() = 0\n    d\n    | x\n    e\n";
        assert_eq!(
            joined_lines(text),
            ["a b c", "▸ call()", "= 0", "d", "| x", "e"]
        );
        // A child's line inside an open step line compares equal to the
        // same lines printed whole.
        let sorted = |t: &str| {
            let mut v = joined_lines(t);
            v.sort();
            v
        };
        assert_eq!(
            sorted("  ▸ fork()    [child 7] handler\n = 7 (parent)\n"),
            sorted("    [child 7] handler\n  ▸ fork() = 7 (parent)\n")
        );
        assert_eq!(
            sorted("  ▸ spawn (x = 1)  ▸ [r 2] recv()\n = 9\n = 3\n"),
            sorted("  ▸ spawn (x = 1) = 9\n  ▸ [r 2] recv() = 3\n")
        );
        let text = "  w | a b\n  r | x\n  w | c\n";
        assert_eq!(joined_lines(text), ["w | a b c", "r | x"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkout_path_does_not_change_a_transcript_line() {
        let main = "  ▸ spawn: /work/main/target/debug/lesson-5 reader --timeout 30 = pid 7";
        let other = "  ▸ spawn: /work/wt/rev13/target/debug/lesson-5 reader --timeout 30 = pid 9";
        assert_eq!(normalise(main), normalise(other));
        assert!(normalise(main).contains("spawn: target/debug/lesson-N reader"));
        assert_eq!(
            without_build_dir("cargo build --target/x"),
            "cargo build --target/x"
        );
    }
}
