//! The reader: finds the writer's object by name (POSIX) or its segment by key
//! (System V), waits until it is marked ready, prints the message and the
//! sequence number, and acknowledges.
//!
//! The reader removes nothing: the object is the writer's. It never hangs:
//! every wait is bounded by `--timeout`, and it polls (1 ms, growing to 25 ms)
//! instead of sleeping a fixed time, because the kernel sends no notice when a
//! shared memory object appears or a word in it changes.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::bail;
use common::narrate::{self, explain, fact, note, section, step, warn};
use common::report::CallResult;
use common::{attempt, call, children, inspect, names, sysv};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{munmap, shm_open};
use nix::sys::stat::{FileStat, Mode, fstat};
use nix::unistd::{getpid, getuid};

use crate::layout::{self, Found, Segment};
use crate::{Api, Opts};

pub fn run(o: &Opts) -> anyhow::Result<()> {
    narrate::title(
        "lesson-5 reader",
        &format!("reading an unrelated writer's memory ({})", o.api.as_str()),
        "The reader waits (at most --timeout) until the writer's shared memory exists and is \
         marked ready, prints the message and the sequence number, and acknowledges. It \
         removes nothing: that is the writer's job.",
    );
    fact("reader pid", getpid());
    let deadline = Instant::now() + o.timeout;
    match o.api {
        Api::Posix => posix(o, deadline),
        Api::Sysv => sysv_reader(o, deadline),
    }
}

fn left(deadline: Instant) -> std::time::Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The seconds left, rounded up, for the student to read.
fn secs_left(deadline: Instant) -> u64 {
    left(deadline).as_secs_f64().ceil() as u64
}

/// What one try at opening the object found.
enum Opened {
    ReadWrite(OwnedFd),
    ReadOnly(OwnedFd),
}

// ANCHOR: posix_open
/// One try at opening the writer's object: read-write, or read-only when its
/// mode lets us only read. `None`: not there yet, or not ready for a reader.
fn try_open(name: &str, stale: Option<libc::ino_t>) -> Option<Result<(Opened, FileStat), Errno>> {
    let opened = match shm_open(name, OFlag::O_RDWR, Mode::empty()) {
        Ok(fd) => Opened::ReadWrite(fd),
        Err(Errno::EACCES) => match shm_open(name, OFlag::O_RDONLY, Mode::empty()) {
            Ok(fd) => Opened::ReadOnly(fd),
            Err(e) => return Some(Err(e)),
        },
        Err(Errno::ENOENT) => return None, // no writer yet: try again
        Err(e) => return Some(Err(e)),
    };
    let (Opened::ReadWrite(fd) | Opened::ReadOnly(fd)) = &opened;
    let st = fstat(fd).ok()?;
    // Size 0: the writer is between shm_open and ftruncate. The stale object
    // we already saw: wait for its replacement.
    (st.st_size != 0 && Some(st.st_ino) != stale).then_some(Ok((opened, st)))
}
// ANCHOR_END: posix_open

fn posix(o: &Opts, deadline: Instant) -> anyhow::Result<()> {
    let name = o.name.as_str();
    let mut stale_inode = None;
    loop {
        section("reader 1. Open the object by name, once it exists");
        println!(
            "reader: waiting for {name} to exist (at most {} s)",
            secs_left(deadline)
        );
        let started = Instant::now();
        let mut tries = 0u32;
        // Polled: announced once, its result printed when a try succeeds.
        let s = step(format!("shm_open({name:?}, O_RDWR, 0)"));
        let opened = children::poll_until(left(deadline), || {
            tries += 1;
            try_open(name, stale_inode)
        });
        let (opened, st) = match opened {
            None => {
                s.ok("-1 ENOENT (No such file or directory)");
                bail!(
                    "no writer created {name} within {} s. Start one with: cargo run -p \
                     lesson-5 -- writer --name {name}",
                    o.timeout.as_secs()
                );
            }
            Some(Err(Errno::EACCES)) => {
                s.ok("-1 EACCES (Permission denied)");
                let r = step(format!("shm_open({name:?}, O_RDONLY, 0)"));
                r.ok("-1 EACCES (Permission denied)");
                return Err(permission_denied_posix(name));
            }
            Some(Err(e)) => {
                return Err(e).call(format!("shm_open({name:?}, O_RDWR, 0)"));
            }
            Some(Ok(v)) => v,
        };
        let waited = started.elapsed().as_millis();
        let (fd, writable) = match opened {
            Opened::ReadWrite(fd) => {
                s.ok(format!(
                    "fd {} (try {tries}, after {waited} ms)",
                    fd.as_raw_fd()
                ));
                (fd, true)
            }
            Opened::ReadOnly(fd) => {
                s.ok("-1 EACCES (Permission denied)");
                let r = step(format!("shm_open({name:?}, O_RDONLY, 0)"));
                r.ok(format!("fd {}", fd.as_raw_fd()));
                explain(
                    "The writer's --mode lets us read but not write: we can read the message \
                     but not acknowledge it (the writer removes the object at its timeout).",
                );
                (fd, false)
            }
        };
        let size = st.st_size as u64;
        if size != layout::SIZE as u64 {
            bail!(
                "{name} is not a lesson-5 segment: {}",
                match layout::judge(size, None) {
                    Found::Foreign(why) => why,
                    other => format!("{other:?}"),
                }
            );
        }

        section("reader 2. Map it");
        let seg = layout::map_posix(fd, writable, "reader")?;

        let outcome = consume(&seg, writable, deadline, o);
        // SAFETY: the mapping made above, handed back by into_ptr, which
        // consumes `seg`: nothing borrowed from it is still alive.
        unsafe { call!(munmap(seg.into_ptr(), layout::SIZE)) }?;
        match outcome? {
            Consumed::Done => return Ok(()),
            Consumed::Stale => stale_inode = Some(st.st_ino),
        }
    }
}

/// EACCES on O_RDONLY too: explain who owns the object and what to change.
fn permission_denied_posix(name: &str) -> anyhow::Error {
    let file = names::file_name(name);
    let who = inspect::user_name(getuid().as_raw());
    let (owner, mode) = std::fs::metadata(format!("/dev/shm/{file}"))
        .map(|m| (inspect::user_name(m.uid()), narrate::mode(m.mode())))
        .unwrap_or_else(|_| ("?".into(), "?".into()));
    anyhow::Error::new(common::report::SysError {
        call: format!("shm_open({name:?}, O_RDONLY, 0)"),
        errno: Errno::EACCES,
    })
    .context(format!(
        "{name} belongs to {owner} with mode {mode}, and you are {who}: only the owner may \
         open it. The writer can let others read with --mode 0644 (ls -l /dev/shm/{file} \
         shows the mode)"
    ))
}

// ANCHOR: sysv_open
/// One try at finding the writer's segment by key. `None`: not there yet, or
/// only the stale one we already saw.
fn try_find(key: libc::key_t, stale: Option<i32>) -> Option<Result<i32, Errno>> {
    match sysv::shmget(key, 0, 0) {
        Ok(id) if Some(id) != stale => Some(Ok(id)),
        Ok(_) | Err(Errno::ENOENT) => None,
        Err(e) => Some(Err(e)),
    }
}

/// Attach read-write, or read-only when the segment's mode lets us only read.
fn attach(shmid: i32) -> Result<(NonNull<libc::c_void>, bool), Errno> {
    match attempt!(sysv::shmat(shmid, 0)) {
        Ok(p) => Ok((p, true)),
        Err(Errno::EACCES) => attempt!(sysv::shmat(shmid, libc::SHM_RDONLY)).map(|p| (p, false)),
        Err(e) => Err(e),
    }
}
// ANCHOR_END: sysv_open

fn sysv_reader(o: &Opts, deadline: Instant) -> anyhow::Result<()> {
    section("reader 1. Find the segment by key, once it exists");
    let key = crate::sysv_key(o)?;
    let k = sysv::key_string(key);
    let mut stale_id = None;
    loop {
        println!(
            "reader: waiting for a segment with key {k} (at most {} s)",
            secs_left(deadline)
        );
        let started = Instant::now();
        let mut tries = 0u32;
        // Polled: announced once, its result printed when a try succeeds.
        let s = step(format!("shmget({k}, 0, 0)"));
        let found = children::poll_until(left(deadline), || {
            tries += 1;
            try_find(key, stale_id)
        });
        let shmid = match found {
            None => {
                s.ok("-1 ENOENT (No such file or directory)");
                bail!(
                    "no writer created a segment with key {k} within {} s. Start one with: \
                     cargo run -p lesson-5 -- writer --api sysv --key {k}",
                    o.timeout.as_secs()
                );
            }
            Some(Err(e)) => return Err(e).call(format!("shmget({k}, 0, 0)")),
            Some(Ok(id)) => id,
        };
        s.ok(format!(
            "{shmid} (try {tries}, after {} ms)",
            started.elapsed().as_millis()
        ));
        // /proc/sysvipc/shm is readable by everyone, unlike IPC_STAT.
        let row = inspect::sysv_segment(shmid);
        let size = row.as_ref().map_or(0, |r| r.size);
        if size != layout::SIZE as u64 {
            bail!(
                "the segment with key {k} is not a lesson-5 segment: {}",
                match layout::judge(size, None) {
                    Found::Foreign(why) => why,
                    other => format!("{other:?}"),
                }
            );
        }

        section("reader 2. Attach it");
        let (ptr, writable) = match attach(shmid) {
            Ok(v) => v,
            Err(Errno::EACCES) => {
                let (owner, mode) = row.as_ref().map_or(("?".into(), "?".into()), |r| {
                    (inspect::user_name(r.uid), narrate::mode(r.perms))
                });
                return Err(anyhow::Error::new(common::report::SysError {
                    call: format!("shmat({shmid}, NULL, SHM_RDONLY)"),
                    errno: Errno::EACCES,
                })
                .context(format!(
                    "the segment with key {k} belongs to {owner} with mode {mode}, and \
                     you are {}: only the owner may attach it. The writer can let \
                     others read with --mode 0644 (ipcs -m shows the perms)",
                    inspect::user_name(getuid().as_raw())
                )));
            }
            Err(e) => return Err(e).call(format!("shmat({shmid}, NULL, 0)")),
        };
        if !writable {
            explain(
                "The segment's mode lets us read but not write: we can read the message but \
                 not acknowledge it.",
            );
        }
        // SAFETY: ptr is a live attachment of SIZE bytes (writable when
        // `writable`), detached below only through into_ptr.
        let seg = unsafe { Segment::new(ptr, layout::SIZE) };
        layout::show_address("reader", &seg);

        let outcome = consume(&seg, writable, deadline, o);
        // SAFETY: the address shmat returned, handed back by into_ptr, which
        // consumes `seg`: nothing borrowed from it is still alive.
        unsafe { call!(sysv::shmdt(seg.into_ptr())) }?;
        match outcome? {
            Consumed::Done => return Ok(()),
            Consumed::Stale => stale_id = Some(shmid),
        }
    }
}

enum Consumed {
    Done,
    /// Its writer is gone: wait for a new one to replace it.
    Stale,
}

// ANCHOR: consume
/// Wait for READY (acquire), check the header, read the message.
fn consume(seg: &Segment, writable: bool, deadline: Instant, o: &Opts) -> anyhow::Result<Consumed> {
    section("reader 3. Wait until the writer marks it ready (acquire load)");
    let state = children::poll_until(left(deadline), || {
        let st = layout::load_state(seg); // Relaxed load, then an Acquire fence
        (st != layout::STATE_EMPTY).then_some(st) // 0: still being written
    });
    let Some(state) = state else {
        return Err(never_ready(seg, o));
    };
    fact("state", layout::state_name(state));
    if state > layout::STATE_ACKED {
        bail!(
            "this is not a lesson-5 segment: its state word is {state:#x}, which no writer stores"
        );
    }
    match layout::judge(layout::SIZE as u64, Some(seg)) {
        Found::Foreign(why) => bail!("this is not a lesson-5 segment: {why}"),
        Found::Stale { pid, sequence } => return Ok(stale(pid, sequence)),
        Found::Live { .. } => {}
    }

    section("reader 4. Read the header and the message");
    let sequence = seg.get_u64(layout::OFF_SEQUENCE);
    let writer_addr = seg.get_u64(layout::OFF_WRITER_ADDR);
    let len = seg.get_u32(layout::OFF_MSG_LEN) as usize;
    if len > layout::MSG_MAX {
        bail!(
            "the message length {len} is larger than its room ({})",
            layout::MSG_MAX
        );
    }
    let msg = String::from_utf8_lossy(&seg.get_bytes(layout::OFF_MSG, len)).into_owned();
    fact("writer pid", seg.writer_pid());
    println!("reader: message: {msg}");
    println!("reader: sequence: {sequence}");
    // ANCHOR_END: consume

    // ANCHOR: addresses
    println!(
        "reader: the writer mapped it at {writer_addr:#x}, this reader at {:#x}",
        seg.addr()
    );
    if writer_addr != seg.addr() as u64 {
        explain(
            "The same physical page sits at two different virtual addresses, one per \
             process. A pointer the writer stored would point elsewhere here (into nothing, \
             or into something unrelated), which is why the header holds offsets only.",
        );
    } else {
        explain(
            "Both processes happen to map it at the same address (address space layout \
             randomisation is probably off). Nothing guarantees it: the next reader may get \
             another address, which is why the header holds offsets only.",
        );
    }
    // ANCHOR_END: addresses

    section("reader 5. Acknowledge (release store)");
    if writable {
        seg.set_u32(layout::OFF_READER_PID, getpid().as_raw() as u32);
        seg.state().store(layout::STATE_ACKED, Ordering::Release); // publishes reader_pid
        fact(
            "state",
            "2 (acked), stored with Ordering::Release after reader pid",
        );
        println!("reader: acknowledged sequence {sequence}");
    } else {
        note(
            "read-only: no acknowledgement is possible. The writer removes the object at its \
             --timeout.",
        );
    }
    narrate::conclude(
        "reader done: the message came through shared memory from an unrelated process.",
    );
    Ok(Consumed::Done)
}

/// No READY within the timeout: say whether the object is someone else's.
fn never_ready(seg: &Segment, o: &Opts) -> anyhow::Error {
    fact("state", layout::state_name(layout::load_state(seg)));
    if seg.magic() != [0; 8] && seg.magic() != layout::MAGIC {
        return anyhow::anyhow!(
            "this is not a lesson-5 segment: its magic is {:02x?}",
            seg.magic()
        );
    }
    anyhow::anyhow!(
        "the object exists, but no writer marked it ready within {} s",
        o.timeout.as_secs()
    )
}

/// The writer of this segment is gone: wait for a new one to replace it.
fn stale(pid: i32, sequence: u64) -> Consumed {
    warn(format!(
        "stale: sequence {sequence} was written by pid {pid}, which is gone (killed, or run \
         with --keep). Waiting for a new writer to replace it."
    ));
    println!("reader: stale object (sequence {sequence}, its writer pid {pid} is gone)");
    Consumed::Stale
}
