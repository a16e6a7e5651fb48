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
use common::narrate::{self, compare, evidence, explain, fact, note, section, step};
use common::sysv::{self, key_string, shmflg_string};
use common::{children, cleanup, inspect, names};
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
    let s = step("sysconf(_SC_PAGE_SIZE)");
    let region_size = s
        .check(sysconf(SysconfVar::PAGE_SIZE))?
        .context("sysconf(_SC_PAGE_SIZE) has no value")? as usize;
    s.ok(region_size);
    // ANCHOR_END: page_size

    // ANCHOR: shmget
    section("2. Create the segment: shmget");
    explain(
        "A System V segment is named by a key, a 32-bit number, as a POSIX object is named by \
         a path. The article picks the fixed key 12345678: any process on the machine that \
         knows the number finds the segment, and two programs that picked the same number \
         collide. ftok(path, id) makes a key from a file's inode, which is only a little \
         better. IPC_PRIVATE (key 0) always creates a new segment that no key can find: the \
         right choice when, as here, only a parent and the children it forks share it.",
    );
    let shmflg = libc::IPC_CREAT | libc::IPC_EXCL | 0o600;
    let s = step(format!(
        "shmget({}, {region_size}, {})",
        key_string(mykey),
        shmflg_string(shmflg)
    ));
    let smid = s
        .check(sysv::shmget(mykey, region_size, shmflg))
        .with_context(|| {
            format!(
                "key {} is already in use (another run of lesson-2, or someone else's \
                 segment: see ipcs -m); run without --key to use IPC_PRIVATE",
                names::key_hex(mykey)
            )
        })?;
    let segment = cleanup::sysv_segment(smid); // removed on every path from here on
    s.ok(format!("shmid {smid}"));
    compare(
        "shmget(12345678, region_size, IPC_CREAT|0666)",
        &format!(
            "shmget({}, {region_size}, {})",
            key_string(mykey),
            shmflg_string(shmflg)
        ),
        "without IPC_EXCL, shmget silently hands back a segment someone else made with the \
         same key, and 0666 lets every user on the machine read and write it. IPC_EXCL fails \
         with EEXIST instead, and 0600 keeps the segment to us.",
    );
    evidence("ipcs -m", inspect::ipcs_rows(smid));
    evidence(
        "cat /proc/sysvipc/shm",
        [inspect::sysvipc_header()]
            .into_iter()
            .chain(inspect::sysv_segment(smid).map(|s| s.line)),
    );
    explain(
        "ipcs reads /proc/sysvipc/shm: key (0x00000000 is IPC_PRIVATE), shmid (what shmget \
         returned: one id for the whole system, or rather for this IPC namespace, not a \
         per-process handle like a file descriptor; any process with permission can shmat \
         it), owner, perms, bytes, and nattch, the number of attachments, which is 0 as \
         long as nothing has called shmat.",
    );
    fact("nattch", nattch(smid));
    // ANCHOR_END: shmget

    // ANCHOR: shmat
    section("3. Attach it: shmat");
    let s = step(format!("shmat({smid}, NULL, 0)"));
    let ptr = s.check(sysv::shmat(smid, 0))?;
    s.ok(format!("{:p}", ptr.as_ptr()));
    fact("nattch", nattch(smid));
    let sysv_file = format!("SYSV{:08x}", mykey as u32);
    evidence(
        &format!("grep {sysv_file} /proc/{pid}/maps"),
        inspect::maps_line_for(ptr.as_ptr() as usize),
    );
    compare(
        "the memory zone created by System V api is invisible in any file system",
        &format!("/proc/{pid}/maps names the attachment /{sysv_file} (deleted)"),
        "the kernel backs every segment with a file on an internal tmpfs that no one can \
         mount, named SYSV and the key in hex. It has no link in any directory, so maps says \
         \"(deleted)\" from the start, long before IPC_RMID. Invisible to ls, then, but not to \
         /proc: /proc/sysvipc/shm lists every segment, and ipcs reads it.",
    );
    // ANCHOR_END: shmat

    // ANCHOR: fork
    section("4. fork: the child writes, the parent waits and reads");
    let s = step("pipe()");
    let (go_r, go_w) = s.check(pipe())?;
    s.ok(format!("[{}, {}]", go_r.as_raw_fd(), go_w.as_raw_fd()));
    explain(
        "Not in the article: a pipe on which the child waits after its write, so that we can \
         count its attachment while it is alive. Closing the write end lets it go.",
    );
    let s = step("fork()");
    // SAFETY: the child calls die_with_parent (prctl, getppid: see there),
    // makes a volatile store, and calls close, read and _exit, which are
    // async-signal-safe. It touches no lock and no allocator.
    match s.check(unsafe { fork() })? {
        ForkResult::Child => {
            children::die_with_parent();
            let d = ptr.as_ptr().cast::<libc::c_ulong>();
            // SAFETY: d is the start of the attached, writable, page-aligned
            // segment; the parent reads it only after waitpid has reaped us,
            // which orders this store before that read.
            unsafe { d.write_volatile(MAGIC) };
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
        ForkResult::Parent { child } => {
            let child_guard = cleanup::child(child);
            s.ok(format!("{child} (in the parent; 0 in the child)"));
            drop(go_r);
            fact("nattch while the child is alive", nattch(smid));
            evidence("ipcs -m", inspect::ipcs_rows(smid));
            explain(
                "fork copied our attachment into the child, which never called shmat: \
                 nattch counts attachments, not shmat calls.",
            );
            let w = go_w.as_raw_fd();
            let s = step(format!("close({w})"));
            s.check(close(go_w))?;
            s.ok("0 (the child's read returns 0 and it calls _exit)");

            let s = step(format!("waitpid({child}, &status, 0)"));
            let status = s.check(waitpid(child, None))?;
            child_guard.disarm(); // reaped: the pid is no longer ours to signal
            match status {
                WaitStatus::Exited(_, 0) => s.ok("child exited with status 0"),
                other => {
                    s.ok(format!("{other:?}"));
                    bail!("the child did not exit cleanly: {other:?}");
                }
            }
            fact("nattch after the child exited", nattch(smid));
            explain("_exit detached the child's copy; ours remains.");
        }
    }

    // SAFETY: the segment is still attached. The only writer, the child, has
    // exited and waitpid above reaped it: its store happens before this read,
    // so the read races with nothing (waitpid orders it, not the volatile).
    let value = unsafe { ptr.as_ptr().cast::<libc::c_ulong>().read_volatile() };
    println!("child wrote {value:#x}");
    if value != MAGIC {
        bail!("expected {MAGIC:#x} in the segment, read {value:#x}");
    }
    compare(
        "Child wrote 0xdeadbeef",
        &format!("child wrote {value:#x}"),
        "the child's store went to the same physical page we have attached.",
    );
    // ANCHOR_END: fork

    // ANCHOR: hold
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
    // ANCHOR_END: hold

    // ANCHOR: cleanup
    section("6. Detach and remove: shmdt, shmctl(IPC_RMID)");
    let forced = sysv::rmid_forced();
    fact(
        "kernel.shm_rmid_forced (/proc/sys/kernel/shm_rmid_forced)",
        forced.map_or("(unreadable)", |f| if f { "1" } else { "0" }),
    );
    let s = step(format!("shmdt({:p})", ptr.as_ptr()));
    // SAFETY: ptr came from shmat above and is not used after this call.
    s.check(unsafe { sysv::shmdt(ptr) })?;
    s.ok(0);
    let left = inspect::sysv_segment(smid);
    evidence(
        "cat /proc/sysvipc/shm",
        [inspect::sysvipc_header()]
            .into_iter()
            .chain(Some(left.as_ref().map_or_else(
                || format!("(no segment with shmid {smid})"),
                |seg| seg.line.clone(),
            ))),
    );
    if forced == Some(true) {
        // The last detach destroyed it (proc(5), shm_rmid_forced).
        if let Some(seg) = left {
            bail!("kernel.shm_rmid_forced is 1, yet segment {smid} survived shmdt: {seg:?}");
        }
        segment.disarm(); // gone: its id may be handed out again
        explain(
            "kernel.shm_rmid_forced is 1 in this IPC namespace, so the kernel destroyed the \
             segment the moment its attach count fell to 0, here at our shmdt, without any \
             IPC_RMID (proc(5)). The default is 0 (proc(5)), and then the segment would \
             stay, with its data, until someone removed it.",
        );
        let s = step(format!("shmctl({smid}, IPC_RMID, NULL)"));
        let rmid = s.outcome(sysv::shmctl_rmid(smid), |()| "0".into());
        if rmid != Err(nix::errno::Errno::EINVAL) {
            bail!("IPC_RMID on the destroyed segment {smid} gave {rmid:?}, not EINVAL");
        }
        explain(
            "EINVAL: the article's IPC_RMID finds no segment with this id, because there is \
             nothing left to remove. A program that must work everywhere treats this EINVAL \
             after its own last shmdt as success.",
        );
    } else {
        let Some(seg) = left else {
            bail!("segment {smid} vanished at shmdt although kernel.shm_rmid_forced is not 1");
        };
        fact("nattch", seg.nattch);
        explain(
            "Detaching does not destroy the segment: with nattch 0 it stays, holding its \
             data, until someone removes it (unless kernel.shm_rmid_forced is 1, or its IPC \
             namespace ends). This is how System V segments outlive crashed programs.",
        );

        let s = step(format!("shmctl({smid}, IPC_RMID, NULL)"));
        s.check(sysv::shmctl_rmid(smid))?;
        segment.disarm(); // removed by the lesson itself
        s.ok(0);
    }
    let s = step(format!("shmctl({smid}, IPC_STAT, &buf)"));
    let gone = s.outcome(sysv::shmctl_stat(smid), |st| {
        format!("0 (still there, nattch {})", st.shm_nattch)
    });
    if gone != Err(nix::errno::Errno::EINVAL) {
        bail!("the segment {smid} still exists: {gone:?}");
    }
    evidence("ipcs -m", inspect::ipcs_rows(smid));
    if forced != Some(true) {
        explain(
            "EINVAL: no segment has this id any more. With nattch 0, IPC_RMID destroyed it \
             at once; with attachments left it would only be marked (status dest) and \
             destroyed at the last shmdt.",
        );
    }
    note(
        "the article checks this call with error_out(\"shmdt\"), copied from the line above: \
         a failing IPC_RMID would print \"shmdt: ...\" and send the reader to the wrong call. \
         Here every failure names its own call and errno.",
    );
    // ANCHOR_END: cleanup

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
