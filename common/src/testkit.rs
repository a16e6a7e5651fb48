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
