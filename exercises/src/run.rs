//! One run of an exercise's program, watched from the kernel's side.
//!
//! The checker hands the program names and a key that carry its own pid
//! (`/shm-lessons-ex-<checker pid>-…`, key `0x53e<pid>`), starts it in a
//! process group of its own, waits with a deadline, and afterwards, whatever
//! happened (exit, panic, signal, hang, Ctrl-C on the checker), kills what is
//! left of the group and removes every object under those names and key.

use std::num::NonZeroUsize;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::{cleanup, inspect, names};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::signal::{Signal, killpg};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, ftruncate, getpid};

/// How the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signaled(Signal),
    /// Still running at the deadline: the checker killed its whole group.
    TimedOut,
}

impl Outcome {
    /// The outcome in words, for a sentence that starts "your program …".
    pub fn describe(self, timeout: Duration) -> String {
        match self {
            Outcome::Exited(0) => "exited with status 0".into(),
            Outcome::Exited(101) => "panicked (exit status 101; its message is above)".into(),
            Outcome::Exited(n) => format!("exited with status {n} (its error message is above)"),
            Outcome::Signaled(s) => format!("was killed by {}{}", s.as_str(), why(s)),
            Outcome::TimedOut => format!(
                "was still running after {} s, so the checker killed it: it hangs (a deadlock, \
                 or a wait that nothing ends)",
                timeout.as_secs()
            ),
        }
    }
}

fn why(s: Signal) -> &'static str {
    match s {
        Signal::SIGBUS => {
            " (it touched a page of its mapping that lies beyond the end of the object)"
        }
        Signal::SIGSEGV => {
            " (it touched memory it may not: unmapped, or mapped without that permission)"
        }
        Signal::SIGABRT => {
            " (it aborted: a panic in a forked child, or a failed assertion in libc)"
        }
        Signal::SIGINT => " (Ctrl-C ended it before it could clean up)",
        _ => "",
    }
}

/// What the checker passes to the program and removes afterwards.
pub struct Run {
    bin: PathBuf,
    pub timeout: Duration,
    /// `/shm-lessons-ex-<checker pid>-`: every name of this check starts so.
    prefix: String,
    /// The POSIX name the program may create (`SHM_EX_NAME`).
    pub name: String,
    /// The System V key the program may use (`SHM_EX_KEY`).
    pub key: i32,
    report_name: String,
    report: *mut u8,
    pgid: Arc<AtomicI32>,
    guard: Option<cleanup::Guard>,
    /// Extra environment for the next start.
    env: Vec<(String, String)>,
    /// Run the program through one of the checker's sandboxes (see
    /// `sandbox.rs`): `(sandbox::TMPFS, pages)` or `(sandbox::IPC, shmmax)`.
    pub sandbox: Option<(&'static str, String)>,
    /// The pid of the program last started.
    pub last_pid: Option<Pid>,
}

impl Run {
    pub fn new(bin: PathBuf, timeout: Duration) -> anyhow::Result<Run> {
        let pid = getpid();
        let prefix = format!("/{}ex-{pid}-", names::PREFIX);
        let key = ((names::KEY_MARK << 24) | (0xe << 20) | (pid.as_raw() as u32 & 0xf_ffff)) as i32;
        let pgid = Arc::new(AtomicI32::new(0));
        // Ctrl-C on the checker, or a panic in it: stop the program's group
        // and remove everything of this check.
        let guard = {
            let (prefix, pgid) = (prefix.clone(), pgid.clone());
            cleanup::Guard::new(
                format!("the objects {prefix}* and key {}", names::key_hex(key)),
                move || {
                    stop_group(pgid.swap(0, Ordering::SeqCst));
                    remove_all(&prefix, key);
                },
            )
        };
        // A previous checker with our pid was SIGKILLed: its names (they
        // carry our whole pid) are stale; a segment under our key only if
        // nobody uses it (the key has 20 bits of the pid, and pid_max may
        // be larger: a live checker with a pid 2^20 away has the same key).
        remove_all(&prefix, None);
        remove_stale_segments(key);
        let report_name = format!("{prefix}report");
        let fd = shm_open(
            report_name.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::from_bits_truncate(0o600),
        )
        .with_context(|| format!("shm_open({report_name:?}) for the report"))?;
        ftruncate(&fd, kit::REPORT_SIZE as libc::off_t).context("ftruncate of the report")?;
        // SAFETY: a fresh mapping of our own report object, which is
        // REPORT_SIZE bytes long; we read it only while no program runs
        // (after waitpid), except for the release/acquire flag.
        let report = unsafe {
            mmap(
                None,
                NonZeroUsize::new(kit::REPORT_SIZE).unwrap(),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .context("mmap of the report")?;
        Ok(Run {
            bin,
            timeout,
            name: format!("{prefix}obj"),
            prefix,
            key,
            report_name,
            report: report.as_ptr().cast(),
            pgid,
            guard: Some(guard),
            env: Vec::new(),
            sandbox: None,
            last_pid: None,
        })
    }

    pub fn set_env(&mut self, k: &str, v: impl Into<String>) {
        self.env.push((k.to_string(), v.into()));
    }

    /// Start the program in a process group of its own.
    pub fn start(&mut self, args: &[&str]) -> anyhow::Result<Started> {
        self.clear_report();
        let mut cmd = match &self.sandbox {
            Some((kind, param)) => {
                let mut c = Command::new(std::env::current_exe()?);
                c.arg(kind).arg(param).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.args(args)
            .env(kit::ENV_NAME, &self.name)
            .env(kit::ENV_KEY, self.key.to_string())
            .env(kit::ENV_REPORT, &self.report_name)
            .stdin(Stdio::null())
            .process_group(0);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // The checker blocks SIGINT/SIGTERM/SIGHUP for its cleanup thread,
        // and exec keeps both the blocked mask and "ignored" dispositions (a
        // shell's background job starts with SIGINT ignored). Give the
        // program what a terminal's Ctrl-C expects: nothing blocked, default
        // actions.
        cleanup::default_signals_on_exec(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.pgid.store(child.id() as i32, Ordering::SeqCst);
        self.last_pid = Some(Pid::from_raw(child.id() as i32));
        Ok(Started {
            child,
            since: Instant::now(),
        })
    }

    /// Wait for the program until the deadline, then stop whatever is left
    /// of its process group and reap it.
    pub fn finish(&mut self, mut started: Started) -> Outcome {
        let pid = Pid::from_raw(started.child.id() as i32);
        let end = started.since + self.timeout;
        let outcome = loop {
            // Ctrl-C on the checker: its cleanup stops the group and removes
            // the objects, then exits with 128 + signal; stay out of its way.
            cleanup::park_if_interrupted();
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => break Outcome::Exited(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => break Outcome::Signaled(sig),
                Ok(_) => {}
                Err(_) => {
                    break started.child.wait().map_or(Outcome::TimedOut, |s| {
                        use std::os::unix::process::ExitStatusExt;
                        s.code().map_or_else(
                            || {
                                Outcome::Signaled(
                                    Signal::try_from(s.signal().unwrap_or(9))
                                        .unwrap_or(Signal::SIGKILL),
                                )
                            },
                            Outcome::Exited,
                        )
                    });
                }
            }
            cleanup::park_if_interrupted();
            if Instant::now() >= end {
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                break Outcome::TimedOut;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        cleanup::park_if_interrupted();
        stop_group(self.pgid.swap(0, Ordering::SeqCst));
        outcome
    }

    /// Start, then finish.
    pub fn exec(&mut self, args: &[&str]) -> anyhow::Result<Outcome> {
        let s = self.start(args)?;
        Ok(self.finish(s))
    }

    /// The result the program left with `kit::report`, if it left one.
    pub fn report(&self) -> Option<Vec<u8>> {
        // SAFETY: the report mapping is REPORT_SIZE bytes, page-aligned; the
        // flag is read with acquire, which orders the reads of the length
        // and the bytes after the program's release store.
        unsafe {
            let set = (*self.report.add(kit::OFF_SET).cast::<AtomicU64>()).load(Ordering::Acquire);
            if set != 1 {
                return None;
            }
            let len = (self.report.add(kit::OFF_LEN).cast::<u64>().read_volatile() as usize)
                .min(kit::REPORT_SIZE - kit::OFF_DATA);
            let mut out = vec![0u8; len];
            for (i, b) in out.iter_mut().enumerate() {
                *b = self.report.add(kit::OFF_DATA + i).read_volatile();
            }
            Some(out)
        }
    }

    /// The reported numbers (`kit::report_u64s`), if the program reported any.
    pub fn report_u64s(&self) -> Option<Vec<u64>> {
        let r = self.report()?;
        Some(
            r.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
    }

    /// The reported number, if the program reported one.
    pub fn report_u64(&self) -> Option<u64> {
        let r = self.report()?;
        Some(u64::from_le_bytes(r.get(..8)?.try_into().ok()?))
    }

    fn clear_report(&self) {
        // SAFETY: no program runs now; the flag is inside the mapping.
        unsafe { (*self.report.add(kit::OFF_SET).cast::<AtomicU64>()).store(0, Ordering::Release) };
    }

    /// Whether `/dev/shm/<name>` exists now.
    pub fn posix_exists(&self, name: &str) -> bool {
        inspect::dev_shm_entry(name).is_some()
    }

    /// The System V segment with this check's key, if there is one.
    pub fn sysv_segment(&self) -> Option<inspect::SysvSegment> {
        inspect::sysv_segments()
            .into_iter()
            .find(|s| s.key == self.key)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        stop_group(self.pgid.swap(0, Ordering::SeqCst));
        // SAFETY: the mapping made in Run::new, not used after this.
        unsafe {
            let _ = munmap(
                std::ptr::NonNull::new_unchecked(self.report.cast()),
                kit::REPORT_SIZE,
            );
        }
        remove_all(&self.prefix, self.key);
        if let Some(g) = self.guard.take() {
            g.disarm(); // done above, quietly
        }
    }
}

/// A started program.
pub struct Started {
    child: Child,
    since: Instant,
}

impl Started {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }
}

/// Kill what is left of a program's process group (children it forked and
/// left behind) and reap them: the checker is their subreaper.
fn stop_group(pgid: i32) {
    if pgid <= 0 {
        return;
    }
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                // Orphans still dying: give them a moment, but never hang.
                if Instant::now() >= end || killpg(Pid::from_raw(pgid), None) == Err(Errno::ESRCH) {
                    // The group is empty; reap the last zombies.
                    while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                        if s == WaitStatus::StillAlive {
                            break;
                        }
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(_) => {}
            Err(_) => return, // ECHILD: nobody left
        }
    }
}

/// Remove the segments with `key` that nobody attaches and whose creator
/// is gone: what a SIGKILLed checker's program left.
fn remove_stale_segments(key: i32) {
    for s in inspect::sysv_segments() {
        if s.key == key
            && s.nattch == 0
            && common::children::state(Pid::from_raw(s.cpid)).is_none_or(|st| st == 'Z')
        {
            // SAFETY: IPC_RMID takes no buffer; a stale id only gives EINVAL.
            unsafe { libc::shmctl(s.shmid, libc::IPC_RMID, std::ptr::null_mut()) };
        }
    }
}

/// Unlink every `/dev/shm/<prefix>*` (and `/tmp/<prefix>*`) and remove
/// every segment with `key`, if given.
fn remove_all(prefix: &str, key: impl Into<Option<i32>>) {
    let key = key.into();
    let file_prefix = names::file_name(prefix);
    for e in inspect::dev_shm_entries() {
        if e.name.starts_with(file_prefix) {
            let _ = shm_unlink(format!("/{}", e.name).as_str());
        }
    }
    // Files a program made outside /dev/shm by mistake (04_devshm_file).
    if let Ok(dir) = std::fs::read_dir("/tmp") {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with(file_prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    for s in inspect::sysv_segments() {
        if Some(s.key) == key {
            // SAFETY: IPC_RMID takes no buffer; a stale id only gives EINVAL.
            unsafe { libc::shmctl(s.shmid, libc::IPC_RMID, std::ptr::null_mut()) };
        }
    }
}

/// Become the subreaper of everything the programs fork, so an orphan
/// grandchild is ours to reap rather than init's.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// An object the checker itself creates (`O_CREAT|O_EXCL`, 0600) and maps,
/// for the program to open by name: the checker reads the result from it
/// even if the program unlinks the name or dies.
pub struct Shared {
    ptr: std::ptr::NonNull<std::ffi::c_void>,
    len: usize,
}

impl Shared {
    /// Map an object the program created, once it is `len` bytes long
    /// (never earlier: touching a mapping beyond its end would kill the
    /// checker with SIGBUS).
    pub fn open_sized(name: &str, len: usize) -> Option<Shared> {
        let fd = shm_open(name, OFlag::O_RDWR, Mode::empty()).ok()?;
        if nix::sys::stat::fstat(&fd).ok()?.st_size < len as libc::off_t {
            return None;
        }
        // SAFETY: a fresh shared mapping of `len` bytes of an object that
        // is at least that long; only atomics and volatile accesses.
        let ptr = unsafe {
            mmap(
                None,
                NonZeroUsize::new(len)?,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .ok()?;
        Some(Shared { ptr, len })
    }

    pub fn create(name: &str, len: usize) -> anyhow::Result<Shared> {
        let fd = shm_open(
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::from_bits_truncate(0o600),
        )
        .with_context(|| format!("shm_open({name:?})"))?;
        ftruncate(&fd, len as libc::off_t).context("ftruncate")?;
        // SAFETY: a fresh shared mapping of an object we just made `len`
        // bytes long; it is only accessed through atomics and volatile reads.
        let ptr = unsafe {
            mmap(
                None,
                NonZeroUsize::new(len).context("a zero length")?,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .context("mmap")?;
        Ok(Shared { ptr, len })
    }

    /// The `u64` at `off` (8-byte aligned), loaded with acquire.
    pub fn u64_at(&self, off: usize) -> u64 {
        assert!(off % 8 == 0 && off + 8 <= self.len);
        // SAFETY: in bounds and aligned (checked above; the mapping is
        // page-aligned); another process may write it, hence an atomic.
        unsafe {
            (*self.ptr.as_ptr().cast::<u8>().add(off).cast::<AtomicU64>()).load(Ordering::Acquire)
        }
    }

    /// The `u32` at `off` (4-byte aligned), loaded with acquire.
    pub fn u32_at(&self, off: usize) -> u32 {
        assert!(off % 4 == 0 && off + 4 <= self.len);
        // SAFETY: as in u64_at.
        unsafe {
            (*self
                .ptr
                .as_ptr()
                .cast::<u8>()
                .add(off)
                .cast::<std::sync::atomic::AtomicU32>())
            .load(Ordering::Acquire)
        }
    }

    /// Store a `u32` at `off` with release.
    pub fn set_u32(&self, off: usize, v: u32) {
        assert!(off % 4 == 0 && off + 4 <= self.len);
        // SAFETY: as in u64_at.
        unsafe {
            (*self
                .ptr
                .as_ptr()
                .cast::<u8>()
                .add(off)
                .cast::<std::sync::atomic::AtomicU32>())
            .store(v, Ordering::Release)
        }
    }

    /// Copy `bytes` in at `off` (before the program runs, or ordered by a
    /// release store that follows).
    pub fn write(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= self.len);
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: in bounds (checked above).
            unsafe {
                self.ptr
                    .as_ptr()
                    .cast::<u8>()
                    .add(off + i)
                    .write_volatile(*b)
            };
        }
    }

    /// Copy `n` bytes out from `off`.
    pub fn read(&self, off: usize, n: usize) -> Vec<u8> {
        assert!(off + n <= self.len);
        // SAFETY: in bounds (checked above). Byte atomics, not volatile: a
        // wrong program may still be writing these bytes (05_publish_order
        // publishes READY before the message, and the checker must read what
        // a reader would); a correct one is ordered by the caller's acquire
        // load. An atomic load is defined either way; volatile is not.
        (0..n)
            .map(|i| unsafe {
                (*self
                    .ptr
                    .as_ptr()
                    .cast::<u8>()
                    .add(off + i)
                    .cast::<std::sync::atomic::AtomicU8>())
                .load(Ordering::Relaxed)
            })
            .collect()
    }

    /// The start of the mapping, for the checker's own libc calls
    /// (`pthread_mutex_trylock` on a mutex the program initialised).
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr().cast()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in create; not used afterwards.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unused_segments_of_dead_creators_are_stale() {
        // The key a checker with our pid would use: no checker has our pid.
        let pid = std::process::id();
        let key = ((common::names::KEY_MARK << 24) | (0xe << 20) | (pid & 0xf_ffff)) as i32;
        // 1. Made by us, alive: not stale, even unattached.
        let id = common::sysv::shmget(key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o600)
            .expect("shmget");
        remove_stale_segments(key);
        let kept = common::inspect::sysv_segment(id).is_some();
        let _ = common::sysv::shmctl_rmid(id);
        assert!(kept, "removed a segment whose creator is alive");
        // 2. Made by a child that exited: stale.
        // SAFETY: the child only calls shmget and _exit (async-signal-safe).
        let child = match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                let ok = libc::shmget(key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) >= 0;
                libc::_exit(if ok { 0 } else { 1 })
            },
            nix::unistd::ForkResult::Parent { child } => child,
        };
        assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
        let orphan = common::inspect::sysv_segments()
            .into_iter()
            .find(|s| s.key == key)
            .expect("the child's segment");
        remove_stale_segments(key);
        let gone = common::inspect::sysv_segment(orphan.shmid).is_none();
        let _ = common::sysv::shmctl_rmid(orphan.shmid);
        assert!(gone, "left a segment nobody uses, whose creator is gone");
    }
}
