//! Exercise 05_header_reader (lesson 5): a reader for lesson-5's header.
//!
//! The checker plays lesson-5's writer: it creates an object (its name is
//! `kit::name()`) with lesson-5's layout (lessons/05-unrelated/src/layout.rs,
//! and the table in the book's chapter 5) and publishes a message in it,
//! but only *after* your program has mapped it. Your program must wait for
//! the state READY, read the sequence number and the message, report them,
//! and acknowledge: its pid in the reader-pid field, then the state ACKED.
//!
//! Edit the TODOs, then: `cargo run -p exercises -- check 05_header_reader`

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open};
use nix::sys::stat::Mode;

// Lesson 5's layout: offsets from the start of the segment.
const SIZE: usize = 4096;
const MAGIC: [u8; 8] = *b"SHMLSN5\0";
const OFF_MAGIC: usize = 0; // [u8; 8]
const OFF_STATE: usize = 12; // u32, atomic
const OFF_READER_PID: usize = 20; // i32
const OFF_SEQUENCE: usize = 24; // u64
const OFF_MSG_LEN: usize = 40; // u32
const OFF_MSG: usize = 48; // the message bytes
const STATE_READY: u32 = 1;
const STATE_ACKED: u32 = 2;

fn main() {
    let name = kit::name();
    let fd = shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty()).expect("shm_open");
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let len = NonZeroUsize::new(SIZE).unwrap();
    // SAFETY: a fresh mapping of the writer's SIZE-byte object; touched only
    // through atomics and volatile reads ordered by the acquire load below.
    let ptr = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0) }.expect("mmap");
    let base = ptr.as_ptr().cast::<u8>();
    // SAFETY: OFF_STATE is 4-byte aligned and inside the mapping; another
    // process writes this word, so it is only used as an atomic.
    let state = unsafe { &*base.add(OFF_STATE).cast::<AtomicU32>() };

    let mut magic = [0u8; 8];
    for (i, b) in magic.iter_mut().enumerate() {
        // SAFETY: inside the mapping; the writer set the magic before we started.
        *b = unsafe { base.add(OFF_MAGIC + i).read_volatile() };
    }
    assert_eq!(magic, MAGIC, "not a lesson-5 segment");

    // TODO: the writer has not published yet. Wait (with a deadline of a
    // few seconds) until the state is READY, loaded with Ordering::Acquire.
    let _ = (
        state,
        STATE_READY,
        Ordering::Acquire,
        Instant::now(),
        Duration::from_secs(5),
    );

    // TODO: read the sequence number (u64 at OFF_SEQUENCE), the message
    // length (u32 at OFF_MSG_LEN) and the message bytes (at OFF_MSG).
    let sequence: u64 = 0;
    let message: Vec<u8> = Vec::new();
    let _ = (OFF_SEQUENCE, OFF_MSG_LEN, OFF_MSG, AtomicU64::new(0));

    let mut report = sequence.to_le_bytes().to_vec();
    report.extend_from_slice(&message);
    kit::report(&report);

    // TODO: acknowledge: store our pid (std::process::id()) in the reader
    // pid field (i32 at OFF_READER_PID), then STATE_ACKED with Release.
    let _ = (OFF_READER_PID, STATE_ACKED, AtomicI32::new(0));

    // SAFETY: exactly the mapping made above, not used afterwards.
    unsafe { munmap(ptr, SIZE) }.expect("munmap");
}
