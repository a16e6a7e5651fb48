//! The layout of the segment: a small header, then the message.
//!
//! The kernel does not synchronise anything (the article's own point), so the
//! writer and the reader follow a protocol written into the memory itself.
//! Every field sits at a fixed *offset* from the start of the segment: the two
//! processes map it at different addresses, so a pointer stored by one would
//! mean nothing (or something else) in the other. The C reader
//! (`scripts/lesson5_reader.c`) and the Python reader
//! (`scripts/lesson5_reader.py`) use the same offsets. Byte order is the
//! machine's own (little-endian on x86-64 and arm64): Rust's plain loads and
//! stores, C's struct fields and Python's `struct` format `"="` all use it,
//! so the three agree on any machine (writer and readers share one machine).

use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering, fence};

use anyhow::Context;
use common::{call, inspect, narrate};
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

/// The segment as this process mapped it, and the owner of that mapping.
///
/// Every access is an atomic load or store at a fixed offset: another
/// process may write the same bytes at any moment, and a plain or volatile
/// access that races with a write is a data race, undefined behaviour
/// (`std::ptr::read_volatile`: volatile has no bearing on concurrency). Atomic
/// accesses never race. The fields are `Relaxed`; what makes the values
/// *meaningful* is the protocol on `state`: the writer fills in every field,
/// then stores READY with `Release`; a reader that loads READY with
/// acquire ordering ([`load_state`]) sees all of them. The reader sets `reader_pid`, then stores
/// ACKED with `Release`; the writer reads `reader_pid` after its acquire
/// load saw ACKED. No `&`/`&mut` to plain data is ever formed.
///
/// Not `Copy` or `Clone`: references it hands out (`state()`) borrow it, and
/// unmapping needs [`Segment::into_ptr`], which consumes it, so the compiler
/// rejects any use of the segment after `munmap`/`shmdt`.
pub struct Segment {
    base: NonNull<u8>,
    len: usize,
}

impl Segment {
    /// # Safety
    /// `base` must be the start of a live shared mapping of at least `len`
    /// bytes (`len >= OFF_MSG`), page-aligned, that stays mapped until
    /// [`Segment::into_ptr`] hands it back for `munmap`/`shmdt`. The mapping
    /// must be writable if any `set_*` or `store` is used.
    pub unsafe fn new(base: NonNull<libc::c_void>, len: usize) -> Segment {
        assert!(len >= OFF_MSG, "the mapping is smaller than the header");
        Segment {
            base: base.cast(),
            len,
        }
    }

    /// Give the mapping's address back, for `munmap` or `shmdt`. Consumes
    /// the segment: nothing borrowed from it can still be alive.
    pub fn into_ptr(self) -> NonNull<libc::c_void> {
        self.base.cast()
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

    /// The state word, as an atomic; borrowed from (so outlived by) `self`.
    pub fn state(&self) -> &AtomicU32 {
        self.atomic_u32(OFF_STATE)
    }

    fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        // SAFETY: the mapping is live while `self` is (see `new`), `off` is
        // 4-aligned inside it (checked in `at`), and AtomicU32 has the layout
        // of u32. This program only ever accesses these bytes atomically,
        // and so do the Rust writer and reader in other processes and the C
        // reader (__atomic); the Python reader can't (plain loads and stores,
        // correct on x86-64's TSO only: see scripts/lesson5_reader.py).
        // Atomics may be modified while shared references to them exist.
        unsafe { AtomicU32::from_ptr(self.at::<u32>(off)) }
    }

    fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        // SAFETY: as in atomic_u32, with 8-byte alignment (checked in `at`;
        // the mapping is page-aligned).
        unsafe { AtomicU64::from_ptr(self.at::<u64>(off)) }
    }

    fn atomic_u8(&self, off: usize) -> &AtomicU8 {
        // SAFETY: as in atomic_u32; any offset is aligned for a byte.
        unsafe { AtomicU8::from_ptr(self.at::<u8>(off)) }
    }

    /// A field, with a `Relaxed` load: race-free, and ordered by an earlier
    /// acquire load of `state` ([`load_state`]; see the type's documentation).
    pub fn get_u32(&self, off: usize) -> u32 {
        self.atomic_u32(off).load(Ordering::Relaxed)
    }

    /// A field, with a `Relaxed` store, published by a later `Release` store
    /// of `state`.
    pub fn set_u32(&self, off: usize, v: u32) {
        self.atomic_u32(off).store(v, Ordering::Relaxed)
    }

    pub fn get_u64(&self, off: usize) -> u64 {
        self.atomic_u64(off).load(Ordering::Relaxed)
    }

    pub fn set_u64(&self, off: usize, v: u64) {
        self.atomic_u64(off).store(v, Ordering::Relaxed)
    }

    /// Copy `n` bytes from offset `off`, one `Relaxed` atomic load each.
    pub fn get_bytes(&self, off: usize, n: usize) -> Vec<u8> {
        assert!(off + n <= self.len);
        (off..off + n)
            .map(|i| self.atomic_u8(i).load(Ordering::Relaxed))
            .collect()
    }

    /// Store `bytes` at offset `off`, one `Relaxed` atomic store each.
    pub fn set_bytes(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= self.len);
        for (i, b) in bytes.iter().enumerate() {
            self.atomic_u8(off + i).store(*b, Ordering::Relaxed);
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

/// Load the state with acquire ordering: a `Relaxed` load, then an `Acquire`
/// fence, which together synchronise with the other side's `Release` store
/// just as an `Acquire` load would. Written this way because a reader may
/// have mapped the segment read-only, and on read-only memory only small
/// `Relaxed` atomic loads are allowed (`core::sync::atomic`, "Atomic accesses
/// to read-only memory").
pub fn load_state(seg: &Segment) -> u32 {
    let state = seg.state().load(Ordering::Relaxed);
    fence(Ordering::Acquire);
    state
}

// ANCHOR: map
/// Both roles map the POSIX object the same way, read-only for a reader that
/// may only read.
pub fn map_posix(fd: OwnedFd, writable: bool, who: &str) -> anyhow::Result<Segment> {
    let len = NonZeroUsize::new(SIZE).context("SIZE is 0")?;
    let prot = if writable {
        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
    } else {
        ProtFlags::PROT_READ
    };
    // SAFETY: a fresh mapping at an address the kernel chooses overlaps no
    // Rust object; it is used only through `Segment` (atomics only).
    let ptr = unsafe { call!(mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0)) }?;
    call!(close(fd))?; // the mapping keeps the object open
    // SAFETY: ptr is a live MAP_SHARED mapping of SIZE bytes, writable when
    // `writable`; the caller unmaps it only through `Segment::into_ptr`.
    let seg = unsafe { Segment::new(ptr, SIZE) };
    show_address(who, &seg);
    Ok(seg)
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
