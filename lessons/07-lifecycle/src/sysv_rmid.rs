//! Part 2. System V: `shmctl(IPC_RMID)` while the segment is attached.
//!
//! IPC_RMID only marks the segment (SHM_DEST) and resets its key to
//! IPC_PRIVATE at once: `ipcs -m` shows key 0x00000000 and status `dest`,
//! `shmget(key)` fails with ENOENT, `shmat(id)` still works on Linux. The
//! segment is destroyed at the last `shmdt`; IPC_STAT then fails with EINVAL.

use anyhow::bail;
use common::args::{Hold, hold_point};
use common::narrate::{compare, evidence, explain, section, step, subsection};
use common::{cleanup, inspect, names, sysv};
use nix::errno::Errno;

use crate::monitor;

const MAGIC: u64 = 0xdeadbeef;

pub fn run(hold: Hold) -> anyhow::Result<()> {
    section("Part 2. System V: IPC_RMID while attached");
    let key = names::unique_key(7);
    let size = inspect::page_size();

    // ANCHOR: create
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | 0o600;
    let s = step(format!(
        "shmget({}, {size}, {})",
        sysv::key_string(key),
        sysv::shmflg_string(flags)
    ));
    let shmid = s.check(sysv::shmget(key, size, flags))?;
    let segment = cleanup::sysv_segment(shmid); // removed on every path from here on
    s.ok(shmid);

    let s = step(format!("shmat({shmid}, NULL, 0)"));
    let first = s.check(sysv::shmat(shmid, 0))?;
    s.ok(format!("{:p}", first.as_ptr()));
    // SAFETY: the start of our live, writable, page-aligned attachment.
    unsafe { first.as_ptr().cast::<u64>().write_volatile(MAGIC) };
    explain(format!(
        "We store {MAGIC:#x} at the start, to find it again later."
    ));
    monitor::show(shmid)?;
    evidence("ipcs -m", inspect::ipcs_rows(shmid));
    // ANCHOR_END: create

    // ANCHOR: rmid
    subsection("IPC_RMID while still attached");
    let s = step(format!("shmctl({shmid}, IPC_RMID, NULL)"));
    s.check(sysv::shmctl_rmid(shmid))?;
    segment.disarm(); // marked: it goes at the last detach, even if we crash
    s.ok(0);
    evidence("ipcs -m", inspect::ipcs_rows(shmid));
    let row = inspect::sysv_segment(shmid);
    evidence(
        &format!("grep -w {shmid} /proc/sysvipc/shm"),
        row.as_ref().map(|r| r.line.clone()),
    );
    match row {
        Some(r) if r.key == 0 && r.perms & sysv::SHM_DEST != 0 => explain(
            "Still listed, with key 0x00000000 (IPC_PRIVATE) and status dest (SHM_DEST, 01000 \
             in the perms column). The memory is still there, because we are attached.",
        ),
        other => bail!("expected key 0 and SHM_DEST after IPC_RMID, saw {other:?}"),
    }
    monitor::show(shmid)?;

    let s = step(format!("shmget({}, 0, 0)", names::key_hex(key)));
    match s.outcome(sysv::shmget(key, 0, 0), |id| format!("{id}")) {
        Err(Errno::ENOENT) => explain(
            "The key was released at once: nobody can find the segment by its key any more, \
             and a new segment may take the key.",
        ),
        other => bail!("expected ENOENT from shmget(key) after IPC_RMID, got {other:?}"),
    }

    let s = step(format!("shmat({shmid}, NULL, 0)"));
    let second = match s.outcome(sysv::shmat(shmid, 0), |p| format!("{:p}", p.as_ptr())) {
        Ok(p) => p,
        Err(e) => bail!("expected shmat of a marked segment to work on Linux, got {e:?}"),
    };
    // SAFETY: the start of a live attachment; nobody else writes it.
    let seen = unsafe { second.as_ptr().cast::<u64>().read_volatile() };
    explain(format!(
        "Linux still attaches a marked segment by its id (POSIX leaves it unspecified), and \
         the second attachment sees the same memory: {seen:#x}."
    ));
    if seen != MAGIC {
        bail!("the second attachment read {seen:#x}, expected {MAGIC:#x}");
    }
    evidence("ipcs -m", inspect::ipcs_rows(shmid));
    // ANCHOR_END: rmid

    hold_point(
        hold,
        "sleep(50)",
        &[
            "ipcs -m          # key 0x00000000, status dest".to_string(),
            format!("lesson-7 --monitor {shmid}"),
            format!("grep -w {shmid} /proc/sysvipc/shm"),
        ],
    );

    // ANCHOR: detach
    subsection("The last shmdt destroys it");
    for (which, addr) in [("second", second), ("first", first)] {
        let s = step(format!("shmdt({:p})", addr.as_ptr()));
        // SAFETY: addr came from shmat above and is not used afterwards.
        s.check(unsafe { sysv::shmdt(addr) })?;
        s.ok(format!("0 (the {which} attachment)"));
    }
    let s = step(format!("shmctl({shmid}, IPC_STAT, &ds)"));
    match s.outcome(sysv::shmctl_stat(shmid), |ds| {
        format!("0, nattch {}", ds.shm_nattch)
    }) {
        Err(Errno::EINVAL) => {}
        other => bail!(
            "expected EINVAL from IPC_STAT after the last shmdt, got {:?}",
            other.map(|ds| ds.shm_nattch)
        ),
    }
    evidence("ipcs -m", inspect::ipcs_rows(shmid));
    compare(
        "ipcs manages System V segments; IPC_RMID removes one",
        "IPC_RMID only marked the segment (key 0x00000000, status dest); it went away at the \
         last shmdt, after which its id is invalid (EINVAL)",
        "the kernel keeps a segment while it is attached. A \"deleted\" segment that stays in \
         ipcs -m is still attached somewhere: look at nattch and lpid.",
    );
    // ANCHOR_END: detach
    Ok(())
}
