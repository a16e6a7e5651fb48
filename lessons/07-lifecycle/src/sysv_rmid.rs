//! Part 2. System V: `shmctl(IPC_RMID)` while the segment is attached.
//!
//! IPC_RMID only marks the segment (SHM_DEST) and resets its key to
//! IPC_PRIVATE at once: `ipcs -m` shows key 0x00000000 and status `dest`,
//! `shmget(key)` fails with ENOENT, `shmat(id)` still works on Linux. The
//! segment is destroyed at the last `shmdt`; IPC_STAT then fails with EINVAL.

use anyhow::bail;
use common::args::{Hold, hold_point};
use common::call::{ipc_flags, ipc_key};
use common::narrate::{compare, evidence, explain, fact, section, subsection};
use common::sysv::{self, shmget};
use common::{attempt, call, cleanup, inspect, names};
use nix::errno::Errno;

use crate::monitor;

const MAGIC: u64 = 0xdeadbeef;

pub fn run(hold: Hold) -> anyhow::Result<()> {
    section("Part 2. System V: IPC_RMID while attached");
    let key = names::unique_key(7);
    let size = inspect::page_size();

    // ANCHOR: create
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | 0o600;
    let shmid = call!(shmget(key => ipc_key, size, flags => ipc_flags))?;
    let segment = cleanup::sysv_segment(shmid); // removed on every path from here on
    let first = call!(sysv::shmat(shmid, 0))?;
    // SAFETY: the start of our live, writable, page-aligned attachment.
    unsafe { first.as_ptr().cast::<u64>().write_volatile(MAGIC) }; // to find it again
    monitor::show(shmid)?;
    evidence("ipcs -m", inspect::ipcs_rows(shmid));
    // ANCHOR_END: create

    // ANCHOR: rmid
    subsection("IPC_RMID while still attached");
    call!(sysv::shmctl_rmid(shmid))?;
    segment.disarm(); // marked: it goes at the last detach, even if we crash
    evidence("ipcs -m", inspect::ipcs_rows(shmid));
    let row = inspect::sysv_segment(shmid);
    evidence(
        &format!("grep -w {shmid} /proc/sysvipc/shm"),
        row.as_ref().map(|r| r.line.clone()),
    );
    if !row.is_some_and(|r| r.key == 0 && r.perms & sysv::SHM_DEST != 0) {
        bail!("expected key 0 and SHM_DEST after IPC_RMID");
    }
    monitor::show(shmid)?;

    match attempt!(shmget(key => ipc_key, 0, 0)) {
        Err(Errno::ENOENT) => explain("The key was released at once: a new segment may take it."),
        other => bail!("expected ENOENT from shmget(key) after IPC_RMID, got {other:?}"),
    }
    let second = match attempt!(sysv::shmat(shmid, 0)) {
        Ok(p) => p, // Linux attaches a marked segment by its id
        Err(e) => bail!("expected shmat of a marked segment to work on Linux, got {e:?}"),
    };
    // SAFETY: the start of a live attachment; nobody else writes it.
    let seen = unsafe { second.as_ptr().cast::<u64>().read_volatile() };
    fact(
        "the second attachment sees the same memory",
        format!("{seen:#x}"),
    );
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
    for addr in [second, first] {
        // SAFETY: addr came from shmat above and is not used afterwards.
        unsafe { call!(sysv::shmdt(addr)) }?;
    }
    match attempt!(sysv::shmctl_stat(shmid)) {
        Err(Errno::EINVAL) => {}
        other => bail!(
            "expected EINVAL from IPC_STAT after the last shmdt, got {:?}",
            other.map(|ds| ds.shm_nattch)
        ),
    }
    evidence("ipcs -m", inspect::ipcs_rows(shmid));
    // ANCHOR_END: detach
    compare(
        "ipcs manages System V segments; IPC_RMID removes one",
        "IPC_RMID only marked the segment (key 0x00000000, status dest); it went away at the \
         last shmdt, after which its id is invalid (EINVAL)",
        "the kernel keeps a segment while it is attached. A \"deleted\" segment that stays in \
         ipcs -m is still attached somewhere: look at nattch and lpid.",
    );
    Ok(())
}
