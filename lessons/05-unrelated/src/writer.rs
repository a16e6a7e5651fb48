//! The writer: creates the object (POSIX, by name) or the segment (System V,
//! by key), fills in the header and the message, publishes them with a release
//! store, waits for a reader's acknowledgement, then removes what it created.
//!
//! Who removes: **the writer**, always. After the reader's ack, at
//! `--timeout`, on an error, on Ctrl-C/SIGTERM (a cleanup guard), unless
//! `--keep` asks it to leave the object for inspection. A writer killed with
//! SIGKILL cannot clean up: the next writer finds the stale object (right
//! magic, dead pid), says so and replaces it.

use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use anyhow::bail;
use common::call::{ipc_flags, ipc_key};
use common::narrate::{self, evidence, explain, fact, note, section, warn};
use common::report::CallResult;
use common::sysv::{self, shmget};
use common::{attempt, call, children, cleanup, inspect, names};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::stat::{FileStat, Mode, fchmod, fstat};
use nix::unistd::{ftruncate, getpid};

use crate::layout::{self, Found, Segment};
use crate::{Api, Opts};

pub fn run(o: &Opts) -> anyhow::Result<()> {
    narrate::title(
        "lesson-5 writer",
        &format!("shared memory for an unrelated reader ({})", o.api.as_str()),
        "The writer creates the shared memory, writes a header and a message into it, marks it \
         ready with a release store, and waits for a reader (another program, started in \
         either order) to acknowledge. Then it removes what it created.",
    );
    fact("writer pid", getpid());
    explain("The header, at fixed offsets from the start (never pointers):");
    narrate::block(layout::table());
    match o.api {
        Api::Posix => posix(o),
        Api::Sysv => sysv_writer(o),
    }
}

fn message(o: &Opts) -> String {
    o.message
        .clone()
        .unwrap_or_else(|| format!("hello from the lesson-5 writer, pid {}", getpid()))
}

// ANCHOR: posix_create
fn posix(o: &Opts) -> anyhow::Result<()> {
    let name = o.name.as_str();
    let file = names::file_name(name).to_string();

    section("writer 1. Create the object by name: shm_open(O_CREAT|O_EXCL)");
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    let mode = Mode::from_bits_truncate(o.mode);
    let (fd, sequence) = match attempt!(shm_open(name, flags, mode)) {
        Ok(fd) => (fd, 1),
        Err(Errno::EEXIST) => {
            let old = posix_existing(name)?; // stale: removed, so the name is free again
            (call!(shm_open(name, flags, mode))?, old + 1)
        }
        Err(e) => return Err(e).call(format!("shm_open({name:?})")),
    };
    let object = cleanup::posix_object(name); // the writer removes it on every path
    umask_check(&fd, o.mode)?;
    call!(ftruncate(&fd, layout::SIZE as libc::off_t))?;
    // ANCHOR_END: posix_create
    evidence(&format!("ls -l /dev/shm/{file}"), inspect::dev_shm_ls(name));

    section("writer 2. Map it");
    let seg = layout::map_posix(fd, true, "writer")?;

    publish(&seg, sequence, &message(o));
    let acked = wait_for_ack(&seg, o, &reader_commands(o, None));

    section("writer 5. Unmap, then remove the name (the writer's job)");
    // SAFETY: the mapping made above, handed back by into_ptr, which consumes
    // `seg`: nothing borrowed from it is still alive.
    unsafe { call!(munmap(seg.into_ptr(), layout::SIZE)) }?;
    if o.keep {
        object.disarm();
        note(format!(
            "--keep: {name} is left in place. Look at it, then remove it yourself:"
        ));
        narrate::commands(&[
            format!("ls -l /dev/shm/{file}"),
            format!("od -A d -c /dev/shm/{file} | head"),
            format!("rm /dev/shm/{file}"),
        ]);
    } else {
        call!(shm_unlink(name))?;
        object.disarm();
        evidence(&format!("ls -l /dev/shm/{file}"), inspect::dev_shm_ls(name));
    }
    finish(acked, o.keep, false, o)
}

/// shm_open's mode passes through the umask (like open's): 0666 with umask
/// 022 gives 0644. Set the exact mode with fchmod when they differ.
fn umask_check(fd: &OwnedFd, wanted: u32) -> anyhow::Result<()> {
    let st = fstat(fd).call(format!("fstat({}, &st)", fd.as_raw_fd()))?;
    let got = st.st_mode & 0o777;
    if got != wanted {
        explain(format!(
            "the umask turned mode {} into {}, as it does for open(2).",
            narrate::mode(wanted),
            narrate::mode(got)
        ));
        call!(fchmod(fd, Mode::from_bits_truncate(wanted)))?;
    }
    Ok(())
}

/// `fstat`'s result as the writer judges it: size, mode and owner.
fn stat_shown(st: &FileStat) -> String {
    let owner = inspect::user_name(st.st_uid);
    let mode = narrate::mode(st.st_mode);
    format!("0 (st_size {}, mode {mode}, owner {owner})", st.st_size)
}

// ANCHOR: posix_existing
/// The name exists: judge what it is before touching it. Refuse anything
/// foreign or live; remove a stale one. Returns its sequence number.
fn posix_existing(name: &str) -> anyhow::Result<u64> {
    let fd = call!(shm_open(name, OFlag::O_RDONLY, Mode::empty()))?;
    let size = call!(fstat(&fd) => stat_shown)?.st_size as u64;
    let found = match NonZeroUsize::new(layout::SIZE).filter(|_| size == layout::SIZE as u64) {
        Some(len) => {
            let (prot, flags) = (ProtFlags::PROT_READ, MapFlags::MAP_SHARED);
            // SAFETY: a fresh read-only mapping chosen by the kernel; read
            // only through `Segment`'s atomic loads.
            let p = unsafe { call!(mmap(None, len, prot, flags, &fd, 0)) }?;
            // SAFETY: p is a live read-only mapping of SIZE bytes, unmapped
            // below only through into_ptr; judge only reads.
            let old = unsafe { Segment::new(p, layout::SIZE) };
            let found = layout::judge(size, Some(&old));
            // SAFETY: the mapping made just above; into_ptr consumed `old`.
            unsafe { call!(munmap(old.into_ptr(), layout::SIZE)) }?;
            found
        }
        None => layout::judge(size, None), // the wrong size: not even mapped
    };
    let file = names::file_name(name);
    let instead = format!(
        "Choose another --name, or remove it (rm /dev/shm/{file}) if you know it is yours."
    );
    let sequence = stale_or_refuse(found, name, &instead)?;
    call!(shm_unlink(name))?; // its writer is gone: replace it
    Ok(sequence)
}
// ANCHOR_END: posix_existing

/// What to do with an existing segment: refuse a foreign or live one (bail,
/// nothing overwritten), or return a stale one's sequence number so that the
/// caller replaces it.
fn stale_or_refuse(found: Found, what: &str, instead: &str) -> anyhow::Result<u64> {
    match found {
        Found::Foreign(why) => bail!(
            "{what} exists but is not a lesson-5 segment: {why}. Nothing was overwritten. \
             {instead}"
        ),
        Found::Live { pid } => bail!(
            "{what} belongs to a writer that is still running (pid {pid}). Nothing was \
             overwritten. {instead}"
        ),
        Found::Stale { pid, sequence } => {
            warn(format!(
                "{what} is stale: it has the right magic, but its writer (pid {pid}) is gone \
                 (killed, or run with --keep). Replacing it, with sequence {}.",
                sequence + 1
            ));
            println!("writer: replacing a stale segment (its writer pid {pid} is gone)");
            Ok(sequence)
        }
    }
}

// ANCHOR: sysv_create
fn sysv_writer(o: &Opts) -> anyhow::Result<()> {
    section("writer 1. Create the segment by key: shmget(IPC_CREAT|IPC_EXCL)");
    let key = crate::sysv_key(o)?;
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | o.mode as libc::c_int;
    let size = layout::SIZE;
    let (shmid, sequence) = match attempt!(shmget(key => ipc_key, size, flags => ipc_flags)) {
        Ok(id) => (id, 1),
        Err(Errno::EEXIST) => {
            let old = sysv_existing(key)?; // stale: removed, so the key is free again
            (
                call!(shmget(key => ipc_key, size, flags => ipc_flags))?,
                old + 1,
            )
        }
        Err(e) => return Err(e).call(format!("shmget({})", sysv::key_string(key))),
    };
    let segment = cleanup::sysv_segment(shmid); // the writer removes it on every path
    evidence("ipcs -m", inspect::ipcs_rows(shmid));

    section("writer 2. Attach it");
    let ptr = call!(sysv::shmat(shmid, 0))?;
    // ANCHOR_END: sysv_create
    // SAFETY: ptr is a live read-write attachment of SIZE bytes, detached
    // below only through into_ptr.
    let seg = unsafe { Segment::new(ptr, layout::SIZE) };
    layout::show_address("writer", &seg);

    publish(&seg, sequence, &message(o));
    let acked = wait_for_ack(&seg, o, &reader_commands(o, Some(key)));

    section("writer 5. Detach, then remove the segment (the writer's job)");
    // SAFETY: the address shmat returned, handed back by into_ptr, which
    // consumes `seg`: nothing borrowed from it is still alive.
    unsafe { call!(sysv::shmdt(seg.into_ptr())) }?;
    // kernel.shm_rmid_forced = 1 destroys a segment when its attach count
    // falls to 0, by a plain shmdt too (proc(5)): then there is nothing to
    // remove, and nothing --keep could keep.
    let forced = sysv::rmid_forced() == Some(true);
    let mut gone = forced && inspect::sysv_segment(shmid).is_none();
    if forced {
        fact("kernel.shm_rmid_forced", 1);
    }
    let kept = o.keep && !gone;
    if gone {
        segment.disarm(); // destroyed by the kernel: its id may be reused
        evidence(
            &format!("grep -w {shmid} /proc/sysvipc/shm"),
            [format!("(no segment with shmid {shmid})")],
        );
        explain(format!(
            "kernel.shm_rmid_forced is 1 in this IPC namespace, so the kernel destroyed the \
             segment when its attach count fell to 0, here at our shmdt (proc(5)). There is \
             nothing left to remove{}",
            if o.keep {
                ", and nothing --keep could keep: on such a machine a segment lives only while \
                 a process is attached to it."
            } else {
                "."
            }
        ));
    } else if o.keep {
        segment.disarm();
        note(format!(
            "--keep: segment {shmid} (key {}) is left in place. Look at it, then remove it:",
            sysv::key_string(key)
        ));
        narrate::commands(&["ipcs -m".to_string(), format!("ipcrm -m {shmid}")]);
        if forced {
            note(
                "kernel.shm_rmid_forced is 1 here: the segment survived our shmdt only because \
                 a reader is still attached, and the kernel destroys it at that reader's shmdt.",
            );
        }
    } else {
        match attempt!(sysv::shmctl_rmid(shmid)) {
            Ok(()) => {}
            // The reader's shmdt, just after our check, took nattch to 0.
            Err(Errno::EINVAL) if forced => {
                gone = true; // by the reader's shmdt, not by us
                explain(
                    "EINVAL: the reader detached in the meantime, and with kernel.shm_rmid_forced \
                     = 1 its shmdt destroyed the segment (proc(5)).",
                )
            }
            Err(e) => return Err(e).call(format!("shmctl({shmid}, IPC_RMID, NULL)")),
        }
        segment.disarm();
        evidence(
            &format!("grep -w {shmid} /proc/sysvipc/shm"),
            inspect::sysv_segment(shmid).map(|s| s.line),
        );
    }
    finish(acked, kept, gone, o)
}

/// `IPC_STAT`'s result as the writer judges it: size, mode, owner, creator.
fn ds_shown(ds: &libc::shmid_ds) -> String {
    let owner = inspect::user_name(ds.shm_perm.uid);
    let mode = narrate::mode(u32::from(ds.shm_perm.mode));
    let (size, creator) = (ds.shm_segsz, ds.shm_cpid);
    format!("0 (shm_segsz {size}, mode {mode}, owner {owner}, creator pid {creator})")
}

/// The key is taken. Judge the segment: refuse anything foreign or live;
/// remove a stale one. Returns its sequence number.
fn sysv_existing(key: libc::key_t) -> anyhow::Result<u64> {
    let shmid = call!(shmget(key => ipc_key, 0, 0))?;
    let size = call!(sysv::shmctl_stat(shmid) => ds_shown)?.shm_segsz as u64;
    let found = if size == layout::SIZE as u64 {
        let p = call!(sysv::shmat(shmid, libc::SHM_RDONLY))?;
        // SAFETY: p is a live read-only attachment of SIZE bytes, detached
        // below only through into_ptr; judge only reads.
        let old = unsafe { Segment::new(p, layout::SIZE) };
        let found = layout::judge(size, Some(&old));
        // SAFETY: the address shmat returned; into_ptr consumed `old`.
        unsafe { call!(sysv::shmdt(old.into_ptr())) }?;
        found
    } else {
        layout::judge(size, None)
    };
    let what = format!(
        "the segment with key {} (shmid {shmid})",
        sysv::key_string(key)
    );
    let sequence = stale_or_refuse(found, &what, "Choose another --key or --ftok path.")?;
    call!(sysv::shmctl_rmid(shmid))?; // its writer is gone: replace it
    Ok(sequence)
}

// ANCHOR: publish
/// Fill in the header and the message, then publish them: the release store
/// of READY makes every store before it visible to a reader whose acquire
/// load sees READY.
fn publish(seg: &Segment, sequence: u64, msg: &str) {
    section("writer 3. Write the header and the message, then publish");
    let pid = getpid().as_raw();
    seg.set_bytes(layout::OFF_MAGIC, &layout::MAGIC);
    seg.set_u32(layout::OFF_VERSION, layout::VERSION);
    seg.set_u32(layout::OFF_WRITER_PID, pid as u32);
    seg.set_u32(layout::OFF_READER_PID, 0);
    seg.set_u64(layout::OFF_SEQUENCE, sequence);
    seg.set_u64(layout::OFF_WRITER_ADDR, seg.addr() as u64);
    seg.set_u32(layout::OFF_MSG_LEN, msg.len() as u32);
    seg.set_bytes(layout::OFF_MSG, msg.as_bytes());
    seg.state().store(layout::STATE_READY, Ordering::Release); // last: publishes the rest
    fact(
        "state",
        "1 (ready), stored with Ordering::Release after every other field",
    );
    println!("writer: published sequence {sequence}, message {msg:?}");
}
// ANCHOR_END: publish

fn reader_commands(o: &Opts, key: Option<libc::key_t>) -> Vec<String> {
    let name = o.name.as_str();
    match o.api {
        Api::Posix => vec![
            format!("cargo run -p lesson-5 -- reader --name {name}"),
            format!("python3 scripts/lesson5_reader.py {name}"),
            format!(
                "cc -o /tmp/lesson5_reader scripts/lesson5_reader.c && /tmp/lesson5_reader {name}"
            ),
        ],
        Api::Sysv => {
            let k = key.map(sysv::key_string).unwrap_or_default();
            vec![
                format!("cargo run -p lesson-5 -- reader --api sysv --key {k}"),
                format!(
                    "cc -o /tmp/lesson5_reader scripts/lesson5_reader.c && /tmp/lesson5_reader --key {k}"
                ),
            ]
        }
    }
}

// ANCHOR: wait_ack
/// Wait (at most --timeout) for a reader to store ACKED. Returns its pid.
fn wait_for_ack(seg: &Segment, o: &Opts, commands: &[String]) -> Option<i32> {
    section("writer 4. Wait for a reader's acknowledgement");
    println!(
        "writer: waiting for a reader (at most {} s); in another terminal, run one of:",
        o.timeout.as_secs()
    );
    narrate::commands(commands);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let acked = children::poll_until(o.timeout, || {
        (layout::load_state(seg) == layout::STATE_ACKED)
            .then(|| seg.get_u32(layout::OFF_READER_PID) as i32)
    });
    match acked {
        Some(reader) => println!("writer: reader pid {reader} acknowledged"),
        None => warn(format!(
            "no reader acknowledged within {} s",
            o.timeout.as_secs()
        )),
    }
    acked
}
// ANCHOR_END: wait_ack

/// `kept`: the object is still there for inspection (`--keep`, and nothing
/// destroyed it). `gone`: the kernel destroyed it at the last `shmdt`, ours
/// or the reader's (`kernel.shm_rmid_forced = 1`), so the writer removed
/// nothing.
fn finish(acked: Option<i32>, kept: bool, gone: bool, o: &Opts) -> anyhow::Result<()> {
    let Some(_) = acked else {
        let what = if kept {
            "left in place (--keep)"
        } else if gone {
            "destroyed by the kernel at our shmdt (kernel.shm_rmid_forced = 1)"
        } else {
            "removed"
        };
        bail!(
            "no reader acknowledged within {} s; the writer's object was {what}",
            o.timeout.as_secs()
        );
    };
    narrate::conclude(if kept {
        "writer done: the reader acknowledged; the object is left for inspection (--keep)."
    } else if o.keep {
        "writer done: the reader acknowledged; --keep kept nothing, because the kernel \
         destroyed the segment at its last shmdt (kernel.shm_rmid_forced = 1)."
    } else if gone {
        "writer done: the reader acknowledged; the kernel destroyed the segment at its last \
         shmdt (kernel.shm_rmid_forced = 1), so the writer had nothing to remove."
    } else {
        "writer done: the reader acknowledged, and the writer removed what it created."
    });
    Ok(())
}
