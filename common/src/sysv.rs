//! Thin safe wrappers for the System V shared memory calls, which nix lacks.
//!
//! One function per call, in the style of nix: typed arguments, `Result<_,
//! Errno>` for failures, and one `unsafe` block each with its reason. A lesson
//! still calls them one by one, visibly, where the article does.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;

use nix::errno::Errno;

/// `shmget(key, size, flags)`: create or find a segment; returns its shmid.
/// `flags` is `IPC_CREAT|IPC_EXCL|0600` and the like.
pub fn shmget(key: libc::key_t, size: usize, flags: libc::c_int) -> Result<libc::c_int, Errno> {
    // SAFETY: shmget takes only integers and touches no memory of ours.
    let id = unsafe { libc::shmget(key, size, flags) };
    if id == -1 { Err(Errno::last()) } else { Ok(id) }
}

/// `shmat(shmid, NULL, flags)`: attach the segment where the kernel chooses.
/// `flags` is 0 or `SHM_RDONLY`. The kernel picks a fresh address range, so
/// the attachment cannot overlap any Rust object. Use it only through raw
/// pointers and atomics, never `&`/`&mut` (another process may write it). A
/// plain or volatile access through a raw pointer is defined only when
/// something orders it against the other process's accesses: `waitpid` after
/// the writer exited, or an acquire load that saw the writer's release
/// store. Volatile alone does not: a volatile read racing with a write is
/// still a data race, undefined behaviour (`std::ptr::read_volatile`).
pub fn shmat(shmid: libc::c_int, flags: libc::c_int) -> Result<NonNull<libc::c_void>, Errno> {
    // SAFETY: with a null address the kernel chooses an unused range, so no
    // existing mapping (and no Rust reference) is replaced.
    let p = unsafe { libc::shmat(shmid, std::ptr::null(), flags) };
    if p as isize == -1 {
        return Err(Errno::last());
    }
    NonNull::new(p).ok_or(Errno::EINVAL)
}

/// `shmdt(addr)`: detach.
///
/// # Safety
/// `addr` must be an address returned by [`shmat`], and no reference or
/// pointer into the segment may be used afterwards.
pub unsafe fn shmdt(addr: NonNull<libc::c_void>) -> Result<(), Errno> {
    // SAFETY: the caller promises addr came from shmat and is no longer used.
    let r = unsafe { libc::shmdt(addr.as_ptr()) };
    if r == -1 { Err(Errno::last()) } else { Ok(()) }
}

/// `shmctl(shmid, IPC_STAT, &buf)`: the kernel's record of the segment.
pub fn shmctl_stat(shmid: libc::c_int) -> Result<libc::shmid_ds, Errno> {
    // SAFETY: shmid_ds is plain old data with private padding fields, so an
    // all-zero value is valid; the kernel fills it in.
    let mut buf: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: buf is a valid, writable shmid_ds for the kernel to fill.
    let r = unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut buf) };
    if r == -1 { Err(Errno::last()) } else { Ok(buf) }
}

/// `shmctl(shmid, IPC_SET, &buf)`: set the owner's uid and gid and the
/// permission bits from `buf.shm_perm` (the other fields are ignored).
pub fn shmctl_set(shmid: libc::c_int, buf: &libc::shmid_ds) -> Result<(), Errno> {
    let mut copy = *buf;
    // SAFETY: copy is a valid shmid_ds; IPC_SET only reads it.
    let r = unsafe { libc::shmctl(shmid, libc::IPC_SET, &mut copy) };
    if r == -1 { Err(Errno::last()) } else { Ok(()) }
}

/// `shmctl(shmid, IPC_RMID, NULL)`: mark the segment for destruction. It goes
/// away after the last detach; its key is released at once.
pub fn shmctl_rmid(shmid: libc::c_int) -> Result<(), Errno> {
    // SAFETY: IPC_RMID reads no buffer; null is what shmctl(2) documents.
    let r = unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) };
    if r == -1 { Err(Errno::last()) } else { Ok(()) }
}

/// `ftok(path, proj_id)`: a key made from the file's inode and device
/// numbers and `proj_id`. Two different files can give the same key, and a
/// re-created file (new inode) gives a different one.
pub fn ftok(path: &Path, proj_id: u8) -> Result<libc::key_t, Errno> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: c is a valid NUL-terminated string that outlives the call.
    let key = unsafe { libc::ftok(c.as_ptr(), libc::c_int::from(proj_id)) };
    if key == -1 {
        Err(Errno::last())
    } else {
        Ok(key)
    }
}

/// `SHM_DEST`: set in the mode once IPC_RMID has marked a segment.
pub const SHM_DEST: u32 = 0o1000;

/// `SHM_NORESERVE` (010000): in a `shmget` flag word, "do not reserve swap
/// for this segment" (shmget(2)). The same bit value is `SHM_RDONLY` in a
/// `shmat` flag word, which is why the two must never be decoded alike.
pub const SHM_NORESERVE: libc::c_int = 0o10000;

/// `kernel.shm_rmid_forced` of this IPC namespace, read from
/// `/proc/sys/kernel/shm_rmid_forced` (`None` when it can't be read).
///
/// When it is 1 the kernel destroys a segment as soon as its attach count
/// falls to 0, whether by `shmdt`, exit or exec, without any `IPC_RMID`
/// (proc(5), `/proc/sys/kernel/shm_rmid_forced`; kernel `ipc/shm.c`,
/// `shm_may_destroy`). IPC sysctls are per IPC namespace, so a container (or
/// `unshare -i`) can have its own value.
pub fn rmid_forced() -> Option<bool> {
    std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
        .map(|v| v != 0)
}

/// `IPC_CREAT|IPC_EXCL|0600`, the way C source spells a shmget flag word.
/// (For a `shmat` flag word, where 010000 means `SHM_RDONLY`, don't use this.)
pub fn shmflg_string(flags: libc::c_int) -> String {
    let mut parts = Vec::new();
    if flags & libc::IPC_CREAT != 0 {
        parts.push("IPC_CREAT".to_string());
    }
    if flags & libc::IPC_EXCL != 0 {
        parts.push("IPC_EXCL".to_string());
    }
    if flags & libc::SHM_HUGETLB != 0 {
        parts.push("SHM_HUGETLB".to_string());
    }
    if flags & SHM_NORESERVE != 0 {
        parts.push("SHM_NORESERVE".to_string());
    }
    parts.push(format!("{:04o}", flags & 0o777));
    parts.join("|")
}

/// A key as C source would write it: `IPC_PRIVATE`, or `0x00bc614e`.
pub fn key_string(key: libc::key_t) -> String {
    if key == libc::IPC_PRIVATE {
        "IPC_PRIVATE".to_string()
    } else {
        crate::names::key_hex(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_stat_attach_remove() {
        let size = crate::inspect::page_size();
        let id = shmget(
            libc::IPC_PRIVATE,
            size,
            libc::IPC_CREAT | libc::IPC_EXCL | 0o600,
        )
        .unwrap();
        let _guard = crate::cleanup::sysv_segment(id);
        let st = shmctl_stat(id).unwrap();
        assert_eq!(st.shm_segsz, size);
        assert_eq!(st.shm_nattch, 0);
        let p = shmat(id, 0).unwrap();
        assert_eq!(shmctl_stat(id).unwrap().shm_nattch, 1);
        // SAFETY: p came from shmat and is not used afterwards.
        unsafe { shmdt(p).unwrap() };
        shmctl_rmid(id).unwrap();
        assert_eq!(shmctl_stat(id).unwrap_err(), Errno::EINVAL);
    }

    #[test]
    fn flags_and_keys_read_like_c() {
        assert_eq!(
            shmflg_string(libc::IPC_CREAT | libc::IPC_EXCL | 0o600),
            "IPC_CREAT|IPC_EXCL|0600"
        );
        // 010000 in a shmget flag word is SHM_NORESERVE (shmget(2)), not
        // shmat's SHM_RDONLY, although the two constants share the value.
        assert_eq!(libc::SHM_RDONLY, SHM_NORESERVE);
        assert_eq!(
            shmflg_string(libc::IPC_CREAT | SHM_NORESERVE | 0o600),
            "IPC_CREAT|SHM_NORESERVE|0600"
        );
        assert_eq!(key_string(12345678), "0x00bc614e");
        assert_eq!(key_string(libc::IPC_PRIVATE), "IPC_PRIVATE");
    }
}
