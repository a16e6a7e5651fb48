//! The measurements: how each transport is made, what the parent (writer,
//! pinger) and the forked child (reader, ponger) do, and how a run is timed
//! and checked.
//!
//! Every transport does the same work. Throughput: the writer stamps a
//! sequence number into a hot buffer of one message (64 KiB, or each size of
//! `--sweep`) and sends it (`write` copies it into the kernel; the ring copies
//! it into a slot); the reader ends with the bytes in its own private buffer
//! (`read` copies them out of the kernel; the ring copies them out of the
//! slot) and folds them into a checksum. Latency: a message (8 bytes, or the
//! full size with `--sweep`) goes over and comes back with its stamp
//! incremented; each round trip is timed on its own (CLOCK_MONOTONIC).
//!
//! After `fork`, the child does only async-signal-safe work (atomics, raw
//! copies, read/write/futex/sched_yield/clock_gettime) and leaves with
//! `_exit`: no allocation, no lock, no formatting.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::bail;
use common::call;
use common::children::{die_with_parent, wait_deadline, wait_until};
use common::cleanup;
use common::narrate::quietly;
use common::report::CallResult;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::{ForkResult, Pid, fork, pipe2};

use crate::ring::{Region, SLOTS, Wait};
use common::children::now_ns;

/// `ready` value of a child that could not pin itself.
const NOT_PINNED: u32 = 2;

/// The size `F_SETPIPE_SZ` asks for (the default `pipe-max-size` allows it).
pub const BIG_PIPE: usize = 1024 * 1024;

/// A transport under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pipe,
    Pipe1M,
    Unix,
    Eventfd,
    Shm(Wait),
}

impl Kind {
    /// The key in `--json`.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Pipe => "pipe",
            Kind::Pipe1M => "pipe_1mib",
            Kind::Unix => "unix_socket",
            Kind::Eventfd => "eventfd",
            Kind::Shm(Wait::Spin) => "shm_spin",
            Kind::Shm(Wait::Yield) => "shm_yield",
            Kind::Shm(Wait::Futex) => "shm_futex",
        }
    }

    /// The label in the table.
    pub fn label(self, latency: bool) -> &'static str {
        match self {
            Kind::Pipe if latency => "pipe pair",
            Kind::Pipe => "pipe (default size)",
            Kind::Pipe1M => "pipe, F_SETPIPE_SZ 1 MiB",
            Kind::Unix => "unix socketpair",
            Kind::Eventfd => "eventfd pair",
            Kind::Shm(Wait::Spin) => "shm ring, spin",
            Kind::Shm(Wait::Yield) => "shm ring, spin+yield",
            Kind::Shm(Wait::Futex) => "shm ring, spin+futex",
        }
    }

    /// How the receiving side waits: burning its CPU, or asleep in the kernel.
    pub fn waits(self) -> &'static str {
        match self {
            Kind::Shm(Wait::Spin) => "busy-wait",
            // spin+yield never sleeps either: sched_yield returns at once
            // when nothing else wants the CPU.
            Kind::Shm(Wait::Yield) => "busy-wait",
            _ => "blocking",
        }
    }
}

pub const THROUGHPUT: [Kind; 6] = [
    Kind::Pipe,
    Kind::Pipe1M,
    Kind::Unix,
    Kind::Shm(Wait::Spin),
    Kind::Shm(Wait::Yield),
    Kind::Shm(Wait::Futex),
];

/// What `--sweep` measures at every size (eventfd carries 8 bytes only, a
/// 1 MiB pipe would only repeat the pipe, and yield sits between spin and futex).
pub const SWEEP: [Kind; 4] = [
    Kind::Pipe,
    Kind::Unix,
    Kind::Shm(Wait::Spin),
    Kind::Shm(Wait::Futex),
];

/// The message sizes of `--sweep`.
pub const SWEEP_SIZES: [usize; 6] = [64, 1 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20];

pub const LATENCY: [Kind; 6] = [
    Kind::Pipe,
    Kind::Unix,
    Kind::Eventfd,
    Kind::Shm(Wait::Spin),
    Kind::Shm(Wait::Yield),
    Kind::Shm(Wait::Futex),
];

/// Where the two processes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub parent_cpu: usize,
    pub child_cpu: usize,
}

impl Placement {
    /// `"cross-cpu"` or `"same-cpu"`, as in `--json`.
    pub fn key(self) -> &'static str {
        if self.parent_cpu == self.child_cpu {
            "same-cpu"
        } else {
            "cross-cpu"
        }
    }
}

/// A set holding one CPU.
pub fn one_cpu(cpu: usize) -> anyhow::Result<CpuSet> {
    let mut set = CpuSet::new();
    set.set(cpu).call(format!("CPU_SET({cpu})"))?;
    Ok(set)
}

/// The descriptors of one run: the parent's ends and the child's ends.
/// After `fork` each side closes the other's, so the death of one shows up
/// in the other as EOF or EPIPE instead of a hang.
pub struct Fds {
    pub parent_tx: OwnedFd,
    pub parent_rx: OwnedFd,
    pub child_rx: OwnedFd,
    pub child_tx: OwnedFd,
}

/// `eventfd(initval, flags)`, which nix offers only behind a feature we do
/// not build.
fn eventfd(initval: libc::c_uint, flags: libc::c_int) -> Result<OwnedFd, nix::errno::Errno> {
    // SAFETY: eventfd takes two integers and returns a new descriptor (or
    // -1), which we own from here on.
    let fd = unsafe { libc::eventfd(initval, flags) };
    if fd < 0 {
        Err(nix::errno::Errno::last())
    } else {
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// `EFD_CLOEXEC`, as C writes eventfd's flags.
fn efd_flags(flags: &libc::c_int) -> String {
    if *flags == libc::EFD_CLOEXEC {
        "EFD_CLOEXEC".into()
    } else {
        flags.to_string()
    }
}

/// `fcntl`'s answer about a pipe's size, in KiB too.
fn kib(n: &libc::c_int) -> String {
    format!("{n} ({} KiB)", n / 1024)
}

fn dup(fd: &OwnedFd) -> anyhow::Result<OwnedFd> {
    fd.try_clone()
        .call(format!("fcntl({}, F_DUPFD_CLOEXEC)", fd.as_raw_fd()))
}

/// Make the descriptors a kernel transport needs, narrated when `loud` (the
/// first time; every run makes fresh ones silently).
/// `latency`: two directions (ping and pong); otherwise one (parent → child).
pub fn make_fds(kind: Kind, latency: bool, loud: bool) -> anyhow::Result<Fds> {
    quietly(!loud, || make_fds_now(kind, latency))
}

// ANCHOR: make_fds
fn make_fds_now(kind: Kind, latency: bool) -> anyhow::Result<Fds> {
    Ok(match kind {
        Kind::Pipe | Kind::Pipe1M => {
            let (child_rx, parent_tx) = call!(pipe2(OFlag::O_CLOEXEC))?;
            if kind == Kind::Pipe1M {
                let size = FcntlArg::F_SETPIPE_SZ(BIG_PIPE as libc::c_int);
                let got = call!(fcntl(parent_tx.as_fd(), size) => kib)? as usize;
                if got < BIG_PIPE {
                    bail!("F_SETPIPE_SZ granted {got} bytes, not {BIG_PIPE}");
                }
            } else {
                call!(fcntl(parent_tx.as_fd(), FcntlArg::F_GETPIPE_SZ) => kib)?;
            }
            // The way back, its own pipe (the throughput test does not use it:
            // made silently then; a nested quietly(false) would unsilence it).
            let (parent_rx, child_tx) = if latency {
                call!(pipe2(OFlag::O_CLOEXEC))?
            } else {
                quietly(true, || call!(pipe2(OFlag::O_CLOEXEC)))?
            };
            Fds {
                parent_tx,
                parent_rx,
                child_rx,
                child_tx,
            }
        }
        Kind::Unix => {
            let (stream, sock, cloexec) = (SockType::Stream, None, SockFlag::SOCK_CLOEXEC);
            let (a, b) = call!(socketpair(AddressFamily::Unix, stream, sock, cloexec))?;
            Fds {
                parent_rx: dup(&a)?,
                parent_tx: a,
                child_tx: dup(&b)?,
                child_rx: b,
            }
        }
        // ANCHOR_END: make_fds
        Kind::Eventfd => {
            let ping = call!(eventfd(0, libc::EFD_CLOEXEC => efd_flags))?;
            let pong = call!(eventfd(0, libc::EFD_CLOEXEC => efd_flags))?;
            Fds {
                child_rx: dup(&ping)?,
                parent_tx: ping,
                parent_rx: dup(&pong)?,
                child_tx: pong,
            }
        }
        Kind::Shm(_) => bail!("the ring needs no descriptors"),
    })
}

// ---- raw I/O for both sides (async-signal-safe: no allocation) ----

/// Write all `len` bytes at `buf`; Err(errno) on failure.
fn write_full(fd: RawFd, buf: *const u8, len: usize) -> Result<(), i32> {
    let mut done = 0;
    while done < len {
        // SAFETY: buf..buf+len is readable memory of the caller's.
        let n = unsafe { libc::write(fd, buf.add(done).cast(), len - done) };
        if n < 0 {
            let e = nix::errno::Errno::last_raw();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Read exactly `len` bytes into `buf`; Err(0) on EOF, Err(errno) on failure.
fn read_full(fd: RawFd, buf: *mut u8, len: usize) -> Result<(), i32> {
    let mut done = 0;
    while done < len {
        // SAFETY: buf..buf+len is writable memory private to this process.
        let n = unsafe { libc::read(fd, buf.add(done).cast(), len - done) };
        if n < 0 {
            let e = nix::errno::Errno::last_raw();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(0);
        }
        done += n as usize;
    }
    Ok(())
}

// ---- checksums ----

/// Write the sequence number into the first and last 8 bytes of a message
/// of `len` bytes (an 8-byte message is the number alone).
fn stamp(buf: *mut u8, len: usize, seq: u64) {
    // SAFETY: buf points to len >= 8 writable bytes private to this process.
    unsafe {
        buf.cast::<u64>().write_unaligned(seq);
        if len >= 16 {
            buf.add(len - 8).cast::<u64>().write_unaligned(!seq);
        }
    }
}

/// The sequence number a message carries, if its two stamps agree.
fn stamp_of(buf: *const u8, len: usize) -> Option<u64> {
    // SAFETY: buf points to len >= 8 readable bytes private to this process.
    let (a, z) = unsafe {
        let a = buf.cast::<u64>().read_unaligned();
        let z = if len >= 16 {
            buf.add(len - 8).cast::<u64>().read_unaligned()
        } else {
            !a
        };
        (a, z)
    };
    (z == !a).then_some(a)
}

/// Fold one received message into the running checksum: both stamps and a
/// word from the middle (cheap, so it does not dominate the fast transports).
fn fold(sum: u64, buf: *const u8, len: usize) -> u64 {
    // SAFETY: buf points to len >= 16 readable bytes private to this process.
    let (a, m, z) = unsafe {
        (
            buf.cast::<u64>().read_unaligned(),
            buf.add(len / 2).cast::<u64>().read_unaligned(),
            buf.add(len - 8).cast::<u64>().read_unaligned(),
        )
    };
    (sum.rotate_left(7) ^ a)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(m ^ z.rotate_left(29))
}

/// FNV-1a of a whole message: the last one is checked byte for byte.
fn content(buf: *const u8, len: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..len {
        // SAFETY: i < len, inside the caller's private buffer.
        h = (h ^ u64::from(unsafe { *buf.add(i) })).wrapping_mul(0x100_0000_01b3);
    }
    h
}

// ---- one measured run ----

/// One run's result: the figure (GB/s or µs) and whether every check passed.
#[derive(Debug, Clone)]
pub struct Run {
    pub value: f64,
    pub ok: bool,
    /// FUTEX_WAIT calls per message (a round trip is two messages).
    pub sleeps: f64,
    /// Latency only: every round trip, in µs.
    pub samples: Vec<f64>,
}

/// The buffers and the shared region the runs use (each as long as the
/// largest message a slot holds).
pub struct Bench<'a> {
    region: &'a Region,
    hot: Vec<u8>,
    private: Vec<u8>,
    /// Where the pinger receives the replies.
    back: Vec<u8>,
    /// How long one run may take before the watchdog kills the child.
    pub timeout: Duration,
}

impl<'a> Bench<'a> {
    pub fn new(region: &'a Region, timeout: Duration) -> Bench<'a> {
        let room = region.room();
        let hot: Vec<u8> = (0..room).map(|i| (i * 7 + 3) as u8).collect();
        Bench {
            region,
            hot,
            private: vec![0; room],
            back: vec![0; room],
            timeout,
        }
    }

    /// Fork a child pinned to `place.child_cpu`; run `child` there and
    /// `parent` here, under a watchdog. `Ok(None)`: the watchdog fired.
    fn forked<T>(
        &self,
        place: Placement,
        ends: Ends,
        child: impl FnOnce() -> i32,
        parent: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<Option<T>> {
        self.region.reset();
        let cpus = one_cpu(place.child_cpu)?;
        // SAFETY: the child only pins itself, runs `child` (atomics, raw
        // copies and async-signal-safe system calls, no allocation or lock)
        // and leaves with _exit.
        match unsafe { fork() }.call("fork()")? {
            ForkResult::Child => {
                die_with_parent();
                close_all(&ends.parent);
                let code = if sched_setaffinity(Pid::from_raw(0), &cpus).is_err() {
                    let ctl = &self.region.header().ctl;
                    ctl.error
                        .store(nix::errno::Errno::last_raw() as u32, Ordering::SeqCst);
                    ctl.ready.store(NOT_PINNED, Ordering::Release);
                    3
                } else {
                    child()
                };
                // SAFETY: _exit ends the child without running the parent's
                // destructors, atexit handlers or stdio flushes.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                let guard = cleanup::child(child);
                let unblock = ends.unblock;
                drop(ends.child); // a dead child now means EOF or EPIPE here
                let ctl = &self.region.header().ctl;
                let (done, stop) = mpsc::channel::<()>();
                let timeout = self.timeout;
                // Why the watchdog stopped the run: the child died (a crash,
                // or a kill from another terminal), or the run overran.
                let (died, late) = (AtomicBool::new(false), AtomicBool::new(false));
                let result = std::thread::scope(|s| {
                    let (died, late) = (&died, &late);
                    s.spawn(move || {
                        let t0 = Instant::now();
                        // A spinning parent never notices a dead child by
                        // itself: look every 100 ms (waitid WNOWAIT leaves it
                        // to be reaped below).
                        while stop.recv_timeout(WATCH_EVERY) == Err(RecvTimeoutError::Timeout) {
                            if ended_abnormally(child) {
                                died.store(true, Ordering::SeqCst);
                            } else if t0.elapsed() >= timeout {
                                late.store(true, Ordering::SeqCst);
                            } else {
                                continue;
                            }
                            ctl.abort.store(1, Ordering::SeqCst);
                            let _ = kill(child, Signal::SIGKILL);
                            if let Some(fd) = unblock {
                                let _ = write_full(fd, 1u64.to_ne_bytes().as_ptr(), 8);
                            }
                            return;
                        }
                    });
                    let r = self.wait_ready(place.child_cpu).and_then(|()| parent());
                    let _ = done.send(());
                    if r.is_err() {
                        // EOF or EPIPE: did the child end first? Its
                        // descriptors close a moment before it turns zombie.
                        if !late.load(Ordering::SeqCst)
                            && wait_until(Duration::from_millis(200), || ended_abnormally(child))
                        {
                            died.store(true, Ordering::SeqCst);
                        }
                        let _ = kill(child, Signal::SIGKILL); // don't wait for it
                    }
                    r
                });
                let waited = wait_deadline(child, Duration::from_secs(10))
                    .call(format!("waitpid({child})"))?;
                guard.disarm();
                let status = waited.status();
                if died.load(Ordering::SeqCst) || !matches!(status, WaitStatus::Exited(_, 0)) {
                    if late.load(Ordering::SeqCst) {
                        return Ok(None); // the watchdog killed it: skipped
                    }
                    if died.load(Ordering::SeqCst) || result.is_ok() {
                        let why = child_error(child, status, ctl.error.load(Ordering::SeqCst));
                        return Err(match result {
                            Err(e) => e.context(why),
                            Ok(_) => anyhow::anyhow!(why),
                        });
                    }
                }
                if late.load(Ordering::SeqCst) {
                    return Ok(None);
                }
                result.map(Some)
            }
        }
    }

    /// Wait for the child to say it is pinned and ready.
    fn wait_ready(&self, cpu: usize) -> anyhow::Result<()> {
        let ctl = &self.region.header().ctl;
        loop {
            match ctl.ready.load(Ordering::Acquire) {
                0 if self.region.aborted() => bail!("the child never became ready"),
                0 => std::thread::yield_now(),
                NOT_PINNED => {
                    let e = nix::errno::Errno::from_raw(ctl.error.load(Ordering::SeqCst) as i32);
                    return Err(e)
                        .call(format!("sched_setaffinity(0, {{CPU {cpu}}}) in the child"));
                }
                _ => return Ok(()),
            }
        }
    }

    /// Parent → child, `chunks` messages of `size` bytes. Returns GB/s.
    pub fn throughput(
        &mut self,
        kind: Kind,
        place: Placement,
        (chunks, size): (u32, usize),
    ) -> anyhow::Result<Option<Run>> {
        assert!((16..=self.region.room()).contains(&size), "size {size}");
        let (ends, own, [parent_tx, _, child_rx, _]) = split(kind, false)?;
        let region = self.region;
        let hot = self.hot.as_mut_ptr();
        let private = self.private.as_mut_ptr();
        let child = || reader(region, kind, child_rx, private, (chunks, size));
        // ANCHOR: writer
        let parent = || {
            let t0 = now_ns();
            let mut tail = 0; // the reader's count as last seen: look again only when full
            for seq in 0..chunks {
                stamp(hot, size, u64::from(seq));
                match kind {
                    Kind::Shm(wait) => {
                        let h = region.header();
                        if seq.wrapping_sub(tail) >= SLOTS as u32 {
                            tail = region
                                .wait_for(&h.tail, wait, |t| seq.wrapping_sub(t) < SLOTS as u32)
                                .map_err(|_| anyhow::anyhow!("the watchdog stopped the run"))?;
                        }
                        // SAFETY: slot(seq) is free (the reader released it:
                        // tail > seq - SLOTS) and holds size bytes; hot is ours.
                        unsafe { std::ptr::copy_nonoverlapping(hot, region.slot(seq, size), size) };
                        region.publish(&h.head, seq.wrapping_add(1), wait);
                    }
                    _ => io(write_full(parent_tx, hot, size), || {
                        format!("write({parent_tx}, buf, {size})")
                    })?,
                }
            }
            Ok(t0)
        };
        // ANCHOR_END: writer
        let out = self.forked(place, ends, child, parent);
        drop(own);
        let Some(t0) = out? else { return Ok(None) };

        let ctl = &self.region.header().ctl;
        let end = ctl.end_ns.load(Ordering::SeqCst);
        let secs = (end.saturating_sub(t0)).max(1) as f64 / 1e9;
        let bytes = f64::from(chunks) * size as f64;
        // What the reader must have seen: recompute with our own stamps.
        let mut expect = 0u64;
        for seq in 0..chunks {
            stamp(hot, size, u64::from(seq));
            expect = fold(expect, hot, size);
        }
        let ok = ctl.checksum.load(Ordering::SeqCst) == expect
            && ctl.content.load(Ordering::SeqCst) == content(hot, size)
            && ctl.count.load(Ordering::SeqCst) == u64::from(chunks);
        let sleeps = ctl.sleeps.load(Ordering::SeqCst) as f64 / f64::from(chunks);
        Ok(Some(Run {
            value: bytes / secs / 1e9,
            ok,
            sleeps,
            samples: Vec::new(),
        }))
    }

    /// `trips` round trips of `size` bytes each way, each one timed.
    /// Returns µs per round trip (the mean of the run) and every sample.
    pub fn latency(
        &mut self,
        kind: Kind,
        place: Placement,
        (trips, size): (u32, usize),
    ) -> anyhow::Result<Option<Run>> {
        assert!(size == 8 || (16..=self.region.room()).contains(&size));
        let (ends, own, [ptx, prx, crx, ctx]) = split(kind, true)?;
        let region = self.region;
        let private = self.private.as_mut_ptr();
        let (hot, back) = (self.hot.as_mut_ptr(), self.back.as_mut_ptr());
        let child = || ponger(region, kind, [crx, ctx], private, (trips, size));
        // ANCHOR: ping
        let parent = || {
            let mut bad = 0u64;
            let mut samples = Vec::with_capacity(trips as usize);
            for i in 0..trips {
                let m = u64::from(i) + 1;
                let t = now_ns();
                let r = match kind {
                    // 8 bytes: the message sits on the counter's cache line.
                    Kind::Shm(wait) if size == 8 => {
                        let h = region.header();
                        h.head.msg.store(m, Ordering::Relaxed);
                        region.publish(&h.head, i.wrapping_add(1), wait);
                        region
                            .wait_for(&h.tail, wait, |t| t == i.wrapping_add(1))
                            .map_err(|_| anyhow::anyhow!("the watchdog stopped the run"))?;
                        Some(h.tail.msg.load(Ordering::Relaxed))
                    }
                    Kind::Shm(wait) => {
                        let h = region.header();
                        stamp(hot, size, m);
                        // SAFETY: slot 0 is ours until we publish head; the
                        // child wrote slot 1 before it published tail.
                        unsafe { std::ptr::copy_nonoverlapping(hot, region.slot(0, size), size) };
                        region.publish(&h.head, i.wrapping_add(1), wait);
                        region
                            .wait_for(&h.tail, wait, |t| t == i.wrapping_add(1))
                            .map_err(|_| anyhow::anyhow!("the watchdog stopped the run"))?;
                        // SAFETY: see above; back is ours.
                        unsafe { std::ptr::copy_nonoverlapping(region.slot(1, size), back, size) };
                        stamp_of(back, size)
                    }
                    _ => {
                        stamp(hot, size, m);
                        let ping = write_full(ptx, hot, size);
                        io(ping, || format!("write({ptx}, buf, {size})"))?;
                        let pong = read_full(prx, back, size);
                        io(pong, || format!("read({prx}, buf, {size})"))?;
                        stamp_of(back, size)
                    }
                };
                samples.push(now_ns() - t);
                if r != Some(m + 1) {
                    bad += 1;
                }
                if region.aborted() {
                    bail!("the watchdog stopped the run");
                }
            }
            Ok((samples, bad))
        };
        // ANCHOR_END: ping
        let out = self.forked(place, ends, child, parent);
        drop(own);
        let Some((samples, bad)) = out? else {
            return Ok(None);
        };
        let ctl = &self.region.header().ctl;
        // The middle of the last reply is the pinger's own bytes, unchanged.
        let mid = |p: *const u8| {
            // SAFETY: size >= 8 bytes of a buffer of ours; the offset is
            // at most size - 8.
            unsafe { p.add(size / 2 / 8 * 8).cast::<u64>().read_unaligned() }
        };
        let intact = size == 8 || mid(self.back.as_ptr()) == mid(self.hot.as_ptr());
        let ok = bad == 0 && intact && ctl.count.load(Ordering::SeqCst) == u64::from(trips);
        let sleeps = ctl.sleeps.load(Ordering::SeqCst) as f64 / (2.0 * f64::from(trips));
        let samples: Vec<f64> = samples.iter().map(|&ns| ns as f64 / 1e3).collect();
        Ok(Some(Run {
            value: samples.iter().sum::<f64>() / samples.len().max(1) as f64,
            ok,
            sleeps,
            samples,
        }))
    }
}

/// How often the watchdog looks at the child.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Whether the child has ended other than by `_exit(0)`, without reaping it
/// (`waitid(P_PID, child, WEXITED|WNOHANG|WNOWAIT)`).
fn ended_abnormally(child: Pid) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(child), flags) {
        Ok(WaitStatus::StillAlive | WaitStatus::Exited(_, 0)) | Err(_) => false,
        Ok(_) => true,
    }
}

/// "the child (pid N) was killed by SIGKILL during the run (its last errno: EPIPE)".
fn child_error(child: Pid, status: WaitStatus, errno: u32) -> String {
    let how = match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("was killed by {sig:?}"),
        other => format!("ended: {other:?}"),
    };
    let mut text = format!("the child (pid {child}) {how} during the run");
    if errno != 0 {
        text.push_str(&format!(
            " (its last errno: {:?})",
            nix::errno::Errno::from_raw(errno as i32)
        ));
    }
    text
}

/// A raw read/write result as an error naming the call: an errno, or end of
/// file (`read` returned 0: the other side closed its end or died). The
/// call's text is formatted only on failure: this runs inside the timed
/// loops, once per message.
fn io(r: Result<(), i32>, call: impl FnOnce() -> String) -> anyhow::Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(0) => bail!("{} = 0: end of file, the other side is gone", call()),
        Err(e) => Err(nix::errno::Errno::from_raw(e)).call(call()),
    }
}

/// Close descriptors by number (in the child: the parent's ends).
fn close_all(fds: &[RawFd]) {
    for &fd in fds {
        // SAFETY: close is async-signal-safe; these are the child's inherited
        // copies of the parent's ends, never used again in the child.
        unsafe { libc::close(fd) };
    }
}

/// Who closes what after `fork`.
struct Ends {
    /// The child's ends: the parent drops them right after fork.
    child: Vec<OwnedFd>,
    /// The parent's ends: the child closes them (by number) right after fork.
    parent: Vec<RawFd>,
    /// eventfd has no EOF: the watchdog writes here to wake a blocked parent.
    unblock: Option<RawFd>,
}

/// Make a run's descriptors (none for the ring) and split them: the ends
/// each side closes, the parent's own (kept until the run ends), and the raw
/// numbers `[parent_tx, parent_rx, child_rx, child_tx]` (-1 for the ring).
fn split(kind: Kind, latency: bool) -> anyhow::Result<(Ends, Vec<OwnedFd>, [RawFd; 4])> {
    if let Kind::Shm(_) = kind {
        let ends = Ends {
            child: Vec::new(),
            parent: Vec::new(),
            unblock: None,
        };
        return Ok((ends, Vec::new(), [-1; 4]));
    }
    let f = make_fds(kind, latency, false)?;
    let raw = [
        f.parent_tx.as_raw_fd(),
        f.parent_rx.as_raw_fd(),
        f.child_rx.as_raw_fd(),
        f.child_tx.as_raw_fd(),
    ];
    let ends = Ends {
        child: vec![f.child_rx, f.child_tx],
        parent: vec![raw[0], raw[1]],
        unblock: (kind == Kind::Eventfd).then_some(raw[1]),
    };
    Ok((ends, vec![f.parent_tx, f.parent_rx], raw))
}

/// The child's side of the throughput test. Returns its exit status.
fn reader(region: &Region, kind: Kind, rx: RawFd, private: *mut u8, n: (u32, usize)) -> i32 {
    let (chunks, size) = n;
    let ctl = &region.header().ctl;
    // Touch the private buffer now: its first writes would copy-on-write.
    // SAFETY: private points to at least size bytes of this process's own copy.
    unsafe { std::ptr::write_bytes(private, 0, size) };
    ctl.ready.store(1, Ordering::Release);
    let mut sum = 0u64;
    // ANCHOR: reader
    let mut head = 0; // the writer's count as last seen: look again only when caught up
    for seq in 0..chunks {
        match kind {
            Kind::Shm(wait) => {
                let h = region.header();
                if head == seq {
                    match region.wait_for(&h.head, wait, |v| v != seq) {
                        Ok(v) => head = v,
                        Err(_) => return 4,
                    }
                }
                // SAFETY: the writer published slot(seq) (head > seq) and
                // will not reuse it until we advance tail; private is ours.
                unsafe { std::ptr::copy_nonoverlapping(region.slot(seq, size), private, size) };
                region.publish(&h.tail, seq.wrapping_add(1), wait);
            }
            _ => {
                if let Err(e) = read_full(rx, private, size) {
                    ctl.error.store(e as u32, Ordering::SeqCst);
                    return 5;
                }
            }
        }
        sum = fold(sum, private, size);
    }
    // ANCHOR_END: reader
    ctl.end_ns.store(now_ns(), Ordering::SeqCst);
    ctl.checksum.store(sum, Ordering::SeqCst);
    ctl.content.store(content(private, size), Ordering::SeqCst);
    ctl.count.store(u64::from(chunks), Ordering::SeqCst);
    0
}

/// The child's side of the ping-pong: answer each message with its stamp
/// incremented, the rest of the bytes as they came.
fn ponger(region: &Region, kind: Kind, [rx, tx]: [RawFd; 2], buf: *mut u8, n: (u32, usize)) -> i32 {
    let (trips, size) = n;
    let ctl = &region.header().ctl;
    ctl.ready.store(1, Ordering::Release);
    for i in 0..trips {
        match kind {
            Kind::Shm(wait) => {
                let h = region.header();
                if region
                    .wait_for(&h.head, wait, |v| v == i.wrapping_add(1))
                    .is_err()
                {
                    return 4;
                }
                if size == 8 {
                    let m = h.head.msg.load(Ordering::Relaxed);
                    h.tail.msg.store(m + 1, Ordering::Relaxed);
                } else {
                    // SAFETY: the pinger published slot 0 (head = i + 1) and
                    // waits for our tail before it touches slot 0 or 1; buf
                    // is this process's own copy, size bytes long.
                    unsafe {
                        std::ptr::copy_nonoverlapping(region.slot(0, size), buf, size);
                        let m = stamp_of(buf, size).unwrap_or(0);
                        stamp(buf, size, m.wrapping_add(1));
                        std::ptr::copy_nonoverlapping(buf, region.slot(1, size), size);
                    }
                }
                region.publish(&h.tail, i.wrapping_add(1), wait);
            }
            _ => {
                let r = read_full(rx, buf, size).and_then(|()| {
                    let m = stamp_of(buf, size).unwrap_or(0);
                    stamp(buf, size, m.wrapping_add(1));
                    write_full(tx, buf, size)
                });
                if let Err(e) = r {
                    ctl.error.store(e as u32, Ordering::SeqCst);
                    return 5;
                }
            }
        }
    }
    ctl.count.store(u64::from(trips), Ordering::SeqCst);
    0
}

/// The memcpy baseline: copy `len` bytes from one buffer to another, once.
/// Returns GB/s.
pub fn memcpy(src: &[u8], dst: &mut [u8]) -> f64 {
    let t0 = now_ns();
    dst.copy_from_slice(src);
    let ns = (now_ns() - t0).max(1);
    std::hint::black_box(&dst);
    src.len() as f64 / ns as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::CHUNK;

    /// The checksum a reader would compute after receiving these chunks.
    fn sum_of(seqs: &[u64], len: usize) -> u64 {
        let mut buf: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        seqs.iter().fold(0, |sum, &seq| {
            stamp(buf.as_mut_ptr(), len, seq);
            fold(sum, buf.as_ptr(), len)
        })
    }

    #[test]
    fn the_checksum_catches_a_lost_repeated_or_reordered_chunk() {
        for len in [CHUNK, SWEEP_SIZES[0]] {
            catches_at(len);
        }
    }

    fn catches_at(len: usize) {
        let good: Vec<u64> = (0..64).collect();
        let expect = sum_of(&good, len);
        assert_eq!(sum_of(&good, len), expect, "deterministic");
        let mut lost = good.clone();
        lost.remove(17);
        let mut repeated = good.clone();
        repeated[18] = 17;
        let mut swapped = good.clone();
        swapped.swap(3, 4);
        for (what, seqs) in [("lost", lost), ("repeated", repeated), ("swapped", swapped)] {
            assert_ne!(sum_of(&seqs, len), expect, "a {what} chunk went unnoticed");
        }
    }

    #[test]
    fn the_last_chunk_is_checked_byte_for_byte() {
        let mut buf: Vec<u8> = (0..CHUNK).map(|i| (i * 7 + 3) as u8).collect();
        let before = content(buf.as_ptr(), CHUNK);
        buf[CHUNK / 3] ^= 1;
        assert_ne!(content(buf.as_ptr(), CHUNK), before);
    }

    #[test]
    fn a_reply_counts_only_with_both_stamps_right() {
        for len in [8, 64, CHUNK] {
            let mut buf = vec![0u8; len];
            stamp(buf.as_mut_ptr(), len, 41);
            assert_eq!(stamp_of(buf.as_ptr(), len), Some(41));
            if len >= 16 {
                buf[len - 1] ^= 0x80; // the tail of the message was lost
                assert_eq!(stamp_of(buf.as_ptr(), len), None);
            }
        }
    }
}
