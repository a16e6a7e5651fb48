//! A System V segment's record, in the spirit of TLPI's `svshm_mon`:
//! `shmctl(IPC_STAT)` and every field a student asks about.

use std::time::{SystemTime, UNIX_EPOCH};

use common::narrate;
use common::{call, inspect, names, sysv};

/// A time from `shmid_ds` as seconds since the epoch, and how long ago.
fn when(t: libc::time_t) -> String {
    if t == 0 {
        return "0 (never)".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format!("{t} ({} s ago)", now - t)
}

/// The mode word the way svshm_mon explains it: permissions plus the flags
/// the kernel keeps in the same field.
pub fn mode_text(mode: u32) -> String {
    let mut s = format!("{:#o} ({})", mode, inspect::mode_string(mode & 0o777));
    let dest = mode & sysv::SHM_DEST != 0;
    s.push_str(if dest {
        ", SHM_DEST set: marked by IPC_RMID, destroyed at the last detach"
    } else {
        ", SHM_DEST not set"
    });
    if mode & 0o2000 != 0 {
        s.push_str(", SHM_LOCKED");
    }
    s
}

/// `shmctl(shmid, IPC_STAT, &ds)` and its fields, as one block.
pub fn show(shmid: i32) -> anyhow::Result<libc::shmid_ds> {
    let ds = call!(sysv::shmctl_stat(shmid))?;
    let p = &ds.shm_perm;
    narrate::block(
        [
            format!("key     {}", names::key_hex(p.__key)),
            format!("segsz   {}", ds.shm_segsz),
            format!("nattch  {}", ds.shm_nattch),
            format!("cpid    {}   (created it)", ds.shm_cpid),
            format!("lpid    {}   (last shmat/shmdt)", ds.shm_lpid),
            format!("atime   {}", when(ds.shm_atime)),
            format!("dtime   {}", when(ds.shm_dtime)),
            format!("ctime   {}", when(ds.shm_ctime)),
            format!(
                "owner   uid {} gid {}, creator uid {} gid {}",
                p.uid, p.gid, p.cuid, p.cgid
            ),
            format!("mode    {}", mode_text(u32::from(p.mode))),
        ]
        .join("\n"),
    );
    Ok(ds)
}

/// `lesson-7 --monitor SHMID`.
pub fn run(shmid: i32) -> anyhow::Result<()> {
    narrate::section(format!("svshm_mon {shmid}"));
    show(shmid)?;
    narrate::evidence("ipcs -m", inspect::ipcs_rows(shmid));
    Ok(())
}
