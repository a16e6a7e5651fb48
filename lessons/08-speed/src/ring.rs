//! The shared-memory ring: a header of atomics and 16 slots (64 KiB each, 1 MiB
//! for `--sweep`), in one
//! `MAP_SHARED|MAP_ANONYMOUS` mapping made before `fork`, so parent and child
//! see the same physical pages.
//!
//! Layout (offsets from the start of the mapping):
//!
//! ```text
//!   0  head  (u32 counter + "reader sleeps" flag)  written by the producer
//!  64  tail  (u32 counter + "writer sleeps" flag)  written by the consumer
//! 128  control: ready, abort, end time, checksums  (start/stop of one run)
//! 4096 slot 0 .. slot 15, each as long as one message (room for 64 KiB,
//!      or for 1 MiB with --sweep)
//! ```
//!
//! head and tail sit on separate 64-byte cache lines: each side writes only
//! its own line, so a store by one does not steal the line the other is
//! writing ("false sharing").
//!
//! The slots are written by another process, so they are never seen through a
//! Rust reference: only raw pointers and copies, ordered by the Acquire and
//! Release counters (a `&[u8]` over memory another process writes is undefined
//! behaviour: see "Why not `&mut u64`?" in chapter 6, docs/src/06-sync.md).
//!
//! The futex calls are `common::futex::wait` and `wake` (shared with
//! lesson-6): one raw `futex(2)` system call each, async-signal-safe.

use std::hint::spin_loop;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use common::{call, futex};
use nix::sched::sched_yield;
use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};

/// Bytes moved per message in the throughput test (without `--sweep`).
pub const CHUNK: usize = 64 * 1024;
/// The largest message of `--sweep`.
pub const MAX_MSG: usize = 1024 * 1024;
/// Slots in the ring (at least 16).
pub const SLOTS: usize = 16;
/// Where the slots start: 4096 bytes in, after the header (one page with
/// 4 KiB pages; c/ring.c uses the same layout).
pub const SLOTS_OFFSET: usize = 4096;
/// Pause instructions before a yielding or futex waiter gives up the CPU.
pub const SPIN_BEFORE_YIELD: u32 = 16;
pub const SPIN_BEFORE_FUTEX: u32 = 16;

/// One counter alone on its own 64-byte cache line.
#[repr(C, align(64))]
pub struct Counter {
    /// How many messages this side has published (wraps at 2^32).
    pub value: AtomicU32,
    /// 1 while the other side sleeps in FUTEX_WAIT on `value`.
    pub sleeping: AtomicU32,
    /// The 8-byte message of the ping-pong, on the same line as its counter.
    pub msg: AtomicU64,
}

/// Start and result of one run, written by the child for the parent.
#[repr(C, align(64))]
pub struct Control {
    pub ready: AtomicU32,
    pub abort: AtomicU32,
    pub error: AtomicU32,
    pub end_ns: AtomicU64,
    pub checksum: AtomicU64,
    pub content: AtomicU64,
    pub count: AtomicU64,
    /// FUTEX_WAIT calls made by either side during the run.
    pub sleeps: AtomicU64,
}

/// The header at the start of the mapping: atomics only, so a shared
/// reference to it is sound even though two processes write it.
#[repr(C)]
pub struct Header {
    pub head: Counter,
    pub tail: Counter,
    pub ctl: Control,
}

/// How a side waits for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Busy-wait with `spin_loop()` (the PAUSE instruction): never sleeps.
    Spin,
    /// Spin briefly, then `sched_yield()` in a loop.
    Yield,
    /// Spin briefly, then sleep in `FUTEX_WAIT` on the counter (shared futex).
    Futex,
}

/// The waiting side gave up: the run was aborted by the parent's watchdog.
#[derive(Debug)]
pub struct Aborted;

/// The mapping: created before `fork`, inherited by the child.
pub struct Region {
    base: NonNull<libc::c_void>,
    /// The whole mapping: the header page and SLOTS slots of `room` bytes.
    len: usize,
    /// The largest message a slot holds.
    room: usize,
}

impl Region {
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0)`
    /// (nix's `mmap_anonymous`), narrated; slots of `room` bytes each.
    // ANCHOR: map
    pub fn map(room: usize) -> anyhow::Result<Region> {
        let len = NonZeroUsize::new(SLOTS_OFFSET + SLOTS * room).expect("len > 0");
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        // SAFETY: a fresh anonymous mapping chosen by the kernel overlaps no
        // Rust object; it is zero-filled, a valid state for every atomic.
        let base = unsafe { call!(mmap_anonymous(None, len, prot, MapFlags::MAP_SHARED)) }?;
        let region = Region {
            base,
            len: len.get(),
            room,
        };
        // Touch every page now so page faults are not timed.
        for off in (SLOTS_OFFSET..region.len).step_by(common::inspect::page_size()) {
            // SAFETY: off < len, inside the mapping; no other process
            // exists yet.
            unsafe { region.byte(off).write_volatile(0) };
        }
        Ok(region)
    }
    // ANCHOR_END: map

    /// `munmap(base, len)`, narrated (dropping a Region unmaps silently).
    pub fn unmap(self) -> anyhow::Result<()> {
        let (base, len) = (self.base, self.len);
        std::mem::forget(self);
        // SAFETY: base/len are exactly the mapping made in map(); self is
        // gone, so no reference into it remains.
        unsafe { call!(munmap(base, len)) }
    }

    pub fn addr(&self) -> usize {
        self.base.as_ptr() as usize
    }

    /// The largest message a slot holds.
    pub fn room(&self) -> usize {
        self.room
    }

    fn byte(&self, off: usize) -> *mut u8 {
        assert!(off < self.len, "offset {off} outside the ring");
        // SAFETY: off < len (checked above), so the result stays inside the
        // mapping.
        unsafe { self.base.as_ptr().cast::<u8>().add(off) }
    }

    pub fn header(&self) -> &Header {
        // SAFETY: the mapping is page-aligned, larger than Header, lives as
        // long as self, and Header holds only atomics (interior mutability):
        // a shared reference is sound while another process writes them.
        unsafe { &*self.base.as_ptr().cast::<Header>() }
    }

    /// The start of slot `i % SLOTS` for messages of `size` bytes, as a raw
    /// pointer (never a reference). Slots are packed at `size` rounded up to
    /// a cache line, so 16 small messages share a few lines instead of
    /// sitting a megabyte apart.
    pub fn slot(&self, i: u32, size: usize) -> *mut u8 {
        assert!(
            size <= self.room,
            "a {size}-byte message in a {}-byte slot",
            self.room
        );
        let stride = size.div_ceil(64) * 64;
        self.byte(SLOTS_OFFSET + (i as usize % SLOTS) * stride)
    }

    /// Zero the counters and the control block before a run.
    pub fn reset(&self) {
        let h = self.header();
        for c in [&h.head, &h.tail] {
            c.value.store(0, Ordering::SeqCst);
            c.sleeping.store(0, Ordering::SeqCst);
            c.msg.store(0, Ordering::SeqCst);
        }
        let c = &h.ctl;
        for a in [&c.ready, &c.abort, &c.error] {
            a.store(0, Ordering::SeqCst);
        }
        for a in [&c.end_ns, &c.checksum, &c.content, &c.count, &c.sleeps] {
            a.store(0, Ordering::SeqCst);
        }
    }

    pub fn aborted(&self) -> bool {
        self.header().ctl.abort.load(Ordering::Relaxed) != 0
    }

    /// Wait until `ready(counter)` holds; returns the counter's value.
    /// Async-signal-safe (atomics, PAUSE, sched_yield, futex): the child
    /// calls it too.
    // ANCHOR: wait
    pub fn wait_for(
        &self,
        c: &Counter,
        wait: Wait,
        ready: impl Fn(u32) -> bool,
    ) -> Result<u32, Aborted> {
        let mut spins: u32 = 0;
        loop {
            let v = c.value.load(Ordering::Acquire);
            if ready(v) {
                return Ok(v);
            }
            spins = spins.wrapping_add(1);
            match wait {
                Wait::Spin => spin_loop(),
                Wait::Yield if spins < SPIN_BEFORE_YIELD => spin_loop(),
                Wait::Yield => {
                    let _ = sched_yield(); // async-signal-safe: a bare system call
                }
                Wait::Futex if spins < SPIN_BEFORE_FUTEX => spin_loop(),
                Wait::Futex => {
                    // Say we sleep, then look once more: a publish between our
                    // load and this store may not have seen the flag.
                    c.sleeping.store(1, Ordering::SeqCst);
                    let v = c.value.load(Ordering::SeqCst);
                    if ready(v) {
                        return Ok(v);
                    }
                    self.header().ctl.sleeps.fetch_add(1, Ordering::Relaxed);
                    // Sleeps only while the counter is v; shared (false: the
                    // other side is another process); 50 ms, to notice an
                    // abort. Woken, timed out or EAGAIN: we look again.
                    let _ = futex::wait(&c.value, v, Duration::from_millis(50), false);
                }
            }
            if spins % 256 == 0 && self.aborted() {
                return Err(Aborted);
            }
        }
    }
    // ANCHOR_END: wait

    /// Publish a new counter value; with futex waits, wake the other side if
    /// it said it sleeps.
    // ANCHOR: publish
    pub fn publish(&self, c: &Counter, v: u32, wait: Wait) {
        if wait == Wait::Futex {
            c.value.store(v, Ordering::SeqCst);
            if c.sleeping.swap(0, Ordering::SeqCst) != 0 {
                let _ = futex::wake(&c.value, 1, false);
            }
        } else {
            c.value.store(v, Ordering::Release);
        }
    }
    // ANCHOR_END: publish
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly the mapping made in map(), and no
        // reference into it outlives self.
        let _ = unsafe { munmap(self.base, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_tail_are_on_separate_cache_lines() {
        assert_eq!(std::mem::offset_of!(Header, head), 0);
        assert_eq!(std::mem::offset_of!(Header, tail), 64);
        assert_eq!(std::mem::offset_of!(Header, ctl), 128);
        assert!(std::mem::size_of::<Header>() <= SLOTS_OFFSET);
        const { assert!(SLOTS >= 16) };
    }
}
