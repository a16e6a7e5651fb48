//! The layout of the segment: a small header, then the message.
//!
//! The kernel does not synchronise anything (the article's own point), so the
//! writer and the reader follow a protocol written into the memory itself.
//! Every field sits at a fixed *offset* from the start of the segment: the two
//! processes map it at different addresses, so a pointer stored by one would
//! mean nothing (or something else) in the other. The C reader
//! (`scripts/lesson5_reader.c`) and the Python reader
//! (`scripts/lesson5_reader.py`) use the same offsets. Byte order is the
//! machine's own (little-endian on x86-64 and arm64).

use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;
use common::inspect;
use common::narrate::{self, step};
use nix::sys::mman::{MapFlags, ProtFlags, mmap};
use nix::unistd::{close, getpid};

// ANCHOR: layout
/// The size of the whole segment: 4096 bytes, one page on x86-64 (a part of
/// one on 16 or 64 KiB pages: mmap rounds the mapping up to whole pages). A
/// fixed number, not the page size, because the C and Python readers share
/// this layout with the Rust code on whatever machine they run.
pub const SIZE: usize = 4096;
/// `SHMLSN5\0`: "this segment was made by lesson-5's writer".
pub const MAGIC: [u8; 8] = *b"SHMLSN5\0";
/// Bumped whenever the layout below changes.
pub const VERSION: u32 = 1;

pub const OFF_MAGIC: usize = 0; // [u8; 8]
pub const OFF_VERSION: usize = 8; // u32
pub const OFF_STATE: usize = 12; // u32, atomic: see STATE_*
pub const OFF_WRITER_PID: usize = 16; // i32
pub const OFF_READER_PID: usize = 20; // i32, set by the reader before it acks
pub const OFF_SEQUENCE: usize = 24; // u64, 1 for a new name, +1 on each replacement
pub const OFF_WRITER_ADDR: usize = 32; // u64, where the writer mapped it: a number, never a pointer
pub const OFF_MSG_LEN: usize = 40; // u32
pub const OFF_MSG: usize = 48; // the message bytes (UTF-8), up to MSG_MAX
pub const MSG_MAX: usize = SIZE - OFF_MSG;

/// Being written: the other fields are not to be trusted yet.
pub const STATE_EMPTY: u32 = 0;
/// Published by the writer with a release store; everything before it is visible
/// to a reader that loads READY with acquire.
pub const STATE_READY: u32 = 1;
/// Acknowledged by a reader (release store); the writer may remove the object.
pub const STATE_ACKED: u32 = 2;
// ANCHOR_END: layout

/// The layout as a table, for the narration (the docs show the same constants).
pub fn table() -> String {
    let rows: [(usize, usize, &str, &str); 10] = [
        (OFF_MAGIC, 8, "magic", "\"SHMLSN5\\0\""),
        (OFF_VERSION, 4, "version", "1"),
        (
            OFF_STATE,
            4,
            "state (atomic)",
            "0 empty, 1 ready (release), 2 acked",
        ),
        (OFF_WRITER_PID, 4, "writer pid", "i32"),
        (OFF_READER_PID, 4, "reader pid", "i32, set before the ack"),
        (OFF_SEQUENCE, 8, "sequence", "u64"),
        (
            OFF_WRITER_ADDR,
            8,
            "writer's address",
            "u64, shown, never used",
        ),
        (OFF_MSG_LEN, 4, "message length", "u32"),
        (OFF_MSG_LEN + 4, 4, "(reserved)", "0"),
        (OFF_MSG, MSG_MAX, "message", "UTF-8 bytes"),
    ];
    let mut out = String::from("offset  size  field              contents\n");
    for (off, size, field, what) in rows {
        out.push_str(&format!("{off:>6}  {size:>4}  {field:<17}  {what}\n"));
    }
    out
}

/// The segment as this process mapped it. Every access goes through an
/// atomic or a volatile raw access at a fixed offset: another process may be
/// writing the same bytes, so no `&`/`&mut` to plain data is ever formed.
#[derive(Clone, Copy)]
pub struct Segment {
    base: NonNull<u8>,
    len: usize,
}

impl Segment {
    /// # Safety
    /// `base` must be the start of a live shared mapping of at least `len`
    /// bytes (`len >= OFF_MSG`), page-aligned, that stays mapped while the
    /// `Segment` is used.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Segment {
        assert!(len >= OFF_MSG, "the mapping is smaller than the header");
        Segment { base, len }
    }

    pub fn addr(&self) -> usize {
        self.base.as_ptr() as usize
    }

    fn at<T>(&self, off: usize) -> *mut T {
        assert!(off + std::mem::size_of::<T>() <= self.len);
        assert_eq!(off % std::mem::align_of::<T>(), 0);
        // SAFETY: off + size_of::<T>() is inside the mapping (checked above).
        unsafe { self.base.as_ptr().add(off).cast::<T>() }
    }

    /// The state word, as an atomic.
    pub fn state(&self) -> &AtomicU32 {
        // SAFETY: the mapping is live, OFF_STATE is 4-aligned inside it, and
        // AtomicU32 has the layout of u32; atomics may be modified by others
        // (another process) while shared references to them exist.
        unsafe { AtomicU32::from_ptr(self.at::<u32>(OFF_STATE)) }
    }

    pub fn get_u32(&self, off: usize) -> u32 {
        // SAFETY: in bounds and aligned (checked in `at`); volatile, because
        // another process may write it.
        unsafe { self.at::<u32>(off).read_volatile() }
    }

    pub fn set_u32(&self, off: usize, v: u32) {
        // SAFETY: as in get_u32; the mapping is writable when we set fields.
        unsafe { self.at::<u32>(off).write_volatile(v) }
    }

    pub fn get_u64(&self, off: usize) -> u64 {
        // SAFETY: as in get_u32.
        unsafe { self.at::<u64>(off).read_volatile() }
    }

    pub fn set_u64(&self, off: usize, v: u64) {
        // SAFETY: as in set_u32.
        unsafe { self.at::<u64>(off).write_volatile(v) }
    }

    /// Copy `n` bytes from offset `off`, one volatile load each.
    pub fn get_bytes(&self, off: usize, n: usize) -> Vec<u8> {
        let p = self.at::<[u8; 0]>(off).cast::<u8>();
        assert!(off + n <= self.len);
        // SAFETY: off..off+n is inside the mapping (checked above).
        (0..n)
            .map(|i| unsafe { p.add(i).read_volatile() })
            .collect()
    }

    /// Store `bytes` at offset `off`, one volatile store each.
    pub fn set_bytes(&self, off: usize, bytes: &[u8]) {
        let p = self.at::<[u8; 0]>(off).cast::<u8>();
        assert!(off + bytes.len() <= self.len);
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: off..off+len is inside the writable mapping (checked above).
            unsafe { p.add(i).write_volatile(*b) }
        }
    }

    pub fn magic(&self) -> [u8; 8] {
        let v = self.get_bytes(OFF_MAGIC, 8);
        [v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]]
    }

    pub fn writer_pid(&self) -> i32 {
        self.get_u32(OFF_WRITER_PID) as i32
    }
}

/// What a segment that already exists under our name turns out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Not ours: a wrong size, magic or version. Never touch it.
    Foreign(String),
    /// Ours, and its writer is still running.
    Live { pid: i32 },
    /// Ours, but the writer that made it is gone (killed, or run with --keep).
    Stale { pid: i32, sequence: u64 },
}

/// Judge an existing segment of `size` bytes. `seg` is `None` when the size
/// alone already rules it out (it is then not even mapped).
pub fn judge(size: u64, seg: Option<&Segment>) -> Found {
    if size != SIZE as u64 {
        return Found::Foreign(format!(
            "it is {size} bytes long, not {SIZE}: something else made it"
        ));
    }
    let Some(seg) = seg else {
        return Found::Foreign("it could not be mapped".into());
    };
    let magic = seg.magic();
    if magic != MAGIC {
        return Found::Foreign(format!(
            "its first 8 bytes are {magic:02x?}, not the magic {MAGIC:02x?} (\"SHMLSN5\\0\")"
        ));
    }
    let version = seg.get_u32(OFF_VERSION);
    if version != VERSION {
        return Found::Foreign(format!("its layout version is {version}, not {VERSION}"));
    }
    let pid = seg.writer_pid();
    if common::inspect::pid_alive(pid) {
        Found::Live { pid }
    } else {
        Found::Stale {
            pid,
            sequence: seg.get_u64(OFF_SEQUENCE),
        }
    }
}

/// A state word as a student reads it.
pub fn state_name(s: u32) -> &'static str {
    match s {
        STATE_EMPTY => "0 (empty)",
        STATE_READY => "1 (ready)",
        STATE_ACKED => "2 (acked)",
        _ => "? (unknown)",
    }
}

/// Load the state with acquire ordering.
pub fn load_state(seg: &Segment) -> u32 {
    seg.state().load(Ordering::Acquire)
}

// ANCHOR: map
/// Both roles map the POSIX object the same way: `mmap(NULL, SIZE, prot,
/// MAP_SHARED, fd, 0)`, read-write unless `writable` is false (a reader that
/// may only read), then `close(fd)`: the mapping keeps the object open.
pub fn map_posix(
    fd: OwnedFd,
    writable: bool,
    who: &str,
) -> anyhow::Result<(NonNull<libc::c_void>, Segment)> {
    let len = NonZeroUsize::new(SIZE).context("SIZE is 0")?;
    let prot = if writable {
        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
    } else {
        ProtFlags::PROT_READ
    };
    let s = step(format!(
        "mmap(NULL, {SIZE}, {}, MAP_SHARED, {}, 0)",
        narrate::flags(prot),
        fd.as_raw_fd()
    ));
    // SAFETY: a fresh mapping at an address the kernel chooses overlaps no
    // Rust object; it is used only through `Segment` (atomics and volatile).
    let ptr = s.check(unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0) })?;
    s.ok(format!("{:p}", ptr.as_ptr()));
    let raw = fd.as_raw_fd();
    let s = step(format!("close({raw})"));
    s.check(close(fd))?;
    s.ok(0);
    // SAFETY: ptr is a live MAP_SHARED mapping of SIZE bytes until the
    // caller's munmap, after which `Segment` is no longer used.
    let seg = unsafe { Segment::new(ptr.cast(), SIZE) };
    show_address(who, &seg);
    Ok((ptr, seg))
}
// ANCHOR_END: map

/// Where this process mapped the segment (it differs between the two
/// processes, which is why the layout stores offsets, never pointers).
pub fn show_address(who: &str, seg: &Segment) {
    println!("{who}: mapped at {:#x}", seg.addr());
    narrate::evidence(
        &format!("grep {:x} /proc/{}/maps", seg.addr(), getpid()),
        inspect::maps_line_for(seg.addr()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_aligned_and_fit_one_page() {
        assert_eq!(OFF_STATE % 4, 0);
        assert_eq!(OFF_SEQUENCE % 8, 0);
        assert_eq!(OFF_WRITER_ADDR % 8, 0);
        assert_eq!(OFF_MSG + MSG_MAX, SIZE);
        assert!(table().contains("    48  4048  message"));
    }
}
