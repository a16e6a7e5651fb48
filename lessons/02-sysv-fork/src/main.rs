//! Lesson 2: the article's System V shared memory program, step by step.
//!
//! The article's "Source program 2" creates a segment with
//! `shmget(12345678, page, IPC_CREAT|0666)`, attaches it with `shmat`, forks,
//! lets the child write `0xdeadbeef`, prints it in the parent, sleeps, then
//! detaches (`shmdt`) and removes the segment (`shmctl(IPC_RMID)`). This is the
//! same program in the same order, every call narrated and checked, with the
//! kernel's own records of the segment (`ipcs -m`, `/proc/sysvipc/shm`,
//! `/proc/self/maps`) after each step.
//!
//! Run it: `cargo run -p lesson-2` (add `--hold 30` to inspect from another
//! terminal, `--key 12345678` for the article's key).

use std::os::fd::{AsRawFd, IntoRawFd};
use std::process::ExitCode;

use anyhow::{Context, bail};
use common::args::{Cli, hold_point};
use common::call::{ipc_flags, ipc_key};
use common::inspect::{show_ipcs, show_maps};
use common::narrate::{self, compare, evidence, explain, fact, note, section};
use common::sysv;
use common::{attempt, call, children, cleanup, inspect, names};
use nix::errno::Errno;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, SysconfVar, close, fork, getpid, pipe, sysconf};

/// What the child writes, as in the article (`u_long` is 64 bits here).
const MAGIC: libc::c_ulong = 0xdeadbeef;

const ABOUT: &str = "Lesson 2: the article's System V shared memory fork demo. A parent \
    creates a segment with shmget, attaches it with shmat and forks; the child writes \
    0xdeadbeef and the parent reads it back, then detaches and removes the segment. The \
    default key is IPC_PRIVATE; --key 12345678 uses the article's.";

fn main() -> ExitCode {
    common::run(lesson)
}

/// Why shmget failed with --key: the key is taken.
fn in_use(key: libc::key_t) -> String {
    format!(
        "key {} is already in use (another run of lesson-2, or someone else's segment: see \
         ipcs -m); run without --key to use IPC_PRIVATE",
        names::key_hex(key)
    )
}

/// `1`, `0` or `(unreadable)`: a sysctl flag as /proc shows it.
fn flag(v: Option<bool>) -> &'static str {
    v.map_or("(unreadable)", |f| if f { "1" } else { "0" })
}

/// Narrated evidence: `$ cat /proc/sysvipc/shm`, the segment's row or its absence.
fn show_sysvipc(smid: i32, seg: Option<&inspect::SysvSegment>) {
    let row = seg.map_or_else(
        || format!("(no segment with shmid {smid})"),
        |s| s.line.clone(),
    );
    evidence("cat /proc/sysvipc/shm", [inspect::sysvipc_header(), row]);
}

/// `nattch` of a segment, as `/proc/sysvipc/shm` lists it right now.
fn nattch(shmid: i32) -> String {
    inspect::sysv_segment(shmid)
        .map(|s| s.nattch.to_string())
        .unwrap_or_else(|| "(no such segment)".into())
}

fn lesson() -> anyhow::Result<()> {
    let args = Cli::new("lesson-2", ABOUT)
        .hold()
        .key("IPC_PRIVATE")
        .parse();
    let mykey = args.key().unwrap_or(libc::IPC_PRIVATE);
    let pid = getpid();

    narrate::title(
        "lesson-2",
        "the article's System V program",
        "shmget, shmat, fork: the child writes 0xdeadbeef into a System V segment and the \
         parent reads it; then shmdt and shmctl(IPC_RMID). Every call is shown with its real \
         arguments and result, next to what ipcs and /proc say about the segment.",
    );

    // ANCHOR: page_size
    section("1. The size of the segment: one page");
    let region_size = call!(sysconf(SysconfVar::PAGE_SIZE))?.context("no page size")? as usize;
    // ANCHOR_END: page_size

    // ANCHOR: shmget
    section("2. Create the segment: shmget");
    let shmflg = libc::IPC_CREAT | libc::IPC_EXCL | 0o600; // article: IPC_CREAT|0666
    let smid = call!(sysv::shmget(mykey => ipc_key, region_size, shmflg => ipc_flags)
        => |id| format!("shmid {id}"))
    .with_context(|| in_use(mykey))?;
    let segment = cleanup::sysv_segment(smid); // removed on every path from here on
    compare(
        "shmget(12345678, region_size, IPC_CREAT|0666)",
        "the call above: IPC_PRIVATE unless --key, IPC_EXCL and 0600",
        "a fixed key is found by any process that knows the number, and two programs that \
         picked it collide; without IPC_EXCL shmget hands back their segment, and 0666 lets \
         every user read and write it. IPC_PRIVATE always makes a new segment no key finds.",
    );
    show_ipcs(smid);
    fact("nattch", nattch(smid));
    explain("shmid is one id for the whole IPC namespace, not a per-process handle like an fd.");
    // ANCHOR_END: shmget

    // ANCHOR: shmat
    section("3. Attach it: shmat");
    let ptr = call!(sysv::shmat(smid, 0))?;
    fact("nattch", nattch(smid));
    let sysv_file = format!("SYSV{:08x}", mykey as u32);
    show_maps(&sysv_file, ptr.as_ptr());
    compare(
        "the memory zone created by System V api is invisible in any file system",
        &format!("/proc/{pid}/maps names the attachment /{sysv_file} (deleted)"),
        "the kernel backs every segment with an unlinked file on an internal tmpfs: \
         invisible to ls, not to /proc (/proc/sysvipc/shm lists every segment; ipcs reads it).",
    );
    // ANCHOR_END: shmat

    // ANCHOR: fork
    section("4. fork: the child writes, the parent waits and reads");
    let (go_r, go_w) = call!(pipe())?; // not in the article: holds the child until we look
    // SAFETY: the child calls die_with_parent (prctl, getppid: see there),
    // makes a volatile store, and calls close, read and _exit, which are
    // async-signal-safe. It touches no lock and no allocator.
    let child = match unsafe { call!(fork()) }? {
        ForkResult::Parent { child } => child,
        ForkResult::Child => {
            children::die_with_parent();
            // SAFETY: ptr is the start of the attached, writable, page-aligned
            // segment; the parent reads it only after waitpid has reaped us,
            // which orders this store before that read.
            unsafe { ptr.as_ptr().cast::<libc::c_ulong>().write_volatile(MAGIC) };
            let mut b = [0u8; 1];
            // SAFETY: close and read are async-signal-safe; the fds are ours
            // (inherited) and b is a valid one-byte buffer. read returns 0
            // (EOF) once the parent closes its write end.
            unsafe {
                libc::close(go_w.into_raw_fd());
                libc::read(go_r.as_raw_fd(), b.as_mut_ptr().cast(), 1);
            }
            // SAFETY: _exit ends the child at once (no destructors, no stdio
            // flush); it also detaches the segment.
            unsafe { libc::_exit(0) }
        }
    };
    // ANCHOR_END: fork
    // ANCHOR: wait
    let child_guard = cleanup::child(child);
    drop(go_r);
    fact("nattch while the child is alive", nattch(smid));
    explain("fork copied our attachment: nattch counts attachments, not shmat calls.");
    call!(close(go_w))?; // the child's read returns 0 and it calls _exit
    let status = call!(waitpid(child, None))?;
    child_guard.disarm(); // reaped: the pid is no longer ours to signal
    if status != WaitStatus::Exited(child, 0) {
        bail!("the child did not exit cleanly: {status:?}");
    }
    fact("nattch after the child exited", nattch(smid));
    // SAFETY: the segment is still attached. The only writer, the child, has
    // exited and waitpid above reaped it: its store happens before this read,
    // so the read races with nothing (waitpid orders it, not the volatile).
    let value = unsafe { ptr.as_ptr().cast::<libc::c_ulong>().read_volatile() };
    println!("child wrote {value:#x}");
    if value != MAGIC {
        bail!("expected {MAGIC:#x} in the segment, read {value:#x}");
    }
    // ANCHOR_END: wait

    section("5. The article's sleep(30): look from another terminal");
    hold_point(
        args.hold(),
        "sleep(30)",
        &[
            "ipcs -m".to_string(),
            format!("ipcs -m -i {smid}"),
            format!("grep {sysv_file} /proc/{pid}/maps"),
            "cat /proc/sysvipc/shm".to_string(),
        ],
    );

    // ANCHOR: cleanup
    section("6. Detach and remove: shmdt, shmctl(IPC_RMID)");
    let forced = sysv::rmid_forced();
    fact(
        "kernel.shm_rmid_forced (/proc/sys/kernel/shm_rmid_forced)",
        flag(forced),
    );
    // SAFETY: ptr came from shmat above and is not used after this call.
    unsafe { call!(sysv::shmdt(ptr)) }?;
    let left = inspect::sysv_segment(smid);
    show_sysvipc(smid, left.as_ref());
    if forced == Some(true) {
        // The last detach destroyed it (proc(5), shm_rmid_forced).
        if let Some(seg) = left {
            bail!("kernel.shm_rmid_forced is 1, yet segment {smid} survived shmdt: {seg:?}");
        }
        segment.disarm(); // gone: its id may be handed out again
        explain("shm_rmid_forced=1: the last detach destroyed the segment, without IPC_RMID.");
        let rmid = attempt!(sysv::shmctl_rmid(smid));
        if rmid != Err(Errno::EINVAL) {
            bail!("IPC_RMID on the destroyed segment {smid} gave {rmid:?}, not EINVAL");
        }
        explain("Portable code treats this EINVAL after its own last shmdt as success.");
    } else {
        let Some(seg) = left else {
            bail!("segment {smid} vanished at shmdt although kernel.shm_rmid_forced is not 1");
        };
        fact("nattch", seg.nattch);
        explain("With nattch 0 the segment stays, with its data: System V outlives crashes.");
        call!(sysv::shmctl_rmid(smid))?;
        segment.disarm(); // removed by the lesson itself
    }
    let gone = attempt!(sysv::shmctl_stat(smid));
    if gone != Err(Errno::EINVAL) {
        bail!("the segment {smid} still exists: {gone:?}");
    }
    show_ipcs(smid);
    // ANCHOR_END: cleanup
    note(
        "the article checks IPC_RMID with error_out(\"shmdt\"), copied from the line above: \
         a failure would name the wrong call. Here every failure names its own call and errno.",
    );

    section("Notes");
    note(
        "the article compiles this program with -lrt. System V calls were never in librt; \
         they have always been in libc.",
    );
    narrate::conclude(
        "lesson-2 done: the child's write reached the parent through a System V segment, and \
         the segment is gone.",
    );
    Ok(())
}
