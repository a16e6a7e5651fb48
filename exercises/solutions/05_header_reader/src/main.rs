//! Solution of exercise 05_header_reader (lesson 5): a reader for lesson-5's
//! header.
//!
//! Why it is right: the writer fills every field first and stores READY
//! last with Release; our Acquire load that sees READY makes every one of
//! those earlier stores visible, so the sequence, the length and the bytes
//! read after it are complete. Fields are found by offset, never by a
//! pointer stored in the segment (the two processes map it at different
//! addresses). The acknowledgement is the same pattern the other way: pid
//! first, then ACKED with Release.
//!
//! The checker plays lesson-5's writer: it creates an object (its name is
//! `kit::name()`) with lesson-5's layout (lessons/05-unrelated/src/layout.rs,
//! and the table in the book's chapter 5) and publishes a message in it,
//! but only *after* your program has mapped it. Your program must wait for
//! the state READY, read the sequence number and the message, report them,
//! and acknowledge: its pid in the reader-pid field, then the state ACKED.
//!
//! Check it: `cargo run -p exercises -- check 05_header_reader --solution`

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

    let deadline = Instant::now() + Duration::from_secs(5);
    while state.load(Ordering::Acquire) != STATE_READY {
        assert!(Instant::now() < deadline, "no writer published within 5 s");
        std::thread::sleep(Duration::from_millis(1));
    }

    // SAFETY: aligned (8 and 4) and inside the mapping; read as atomics,
    // after the acquire load of READY that orders the writer's stores.
    let sequence = unsafe { &*base.add(OFF_SEQUENCE).cast::<AtomicU64>() }.load(Ordering::Relaxed);
    // SAFETY: as above.
    let n = unsafe { &*base.add(OFF_MSG_LEN).cast::<AtomicU32>() }.load(Ordering::Relaxed) as usize;
    let n = n.min(SIZE - OFF_MSG);
    let message: Vec<u8> = (0..n)
        // SAFETY: OFF_MSG + i < SIZE; ordered by the acquire load of READY.
        .map(|i| unsafe { base.add(OFF_MSG + i).read_volatile() })
        .collect();

    let mut report = sequence.to_le_bytes().to_vec();
    report.extend_from_slice(&message);
    kit::report(&report);

    // SAFETY: 4-byte aligned, inside the mapping.
    let reader_pid = unsafe { &*base.add(OFF_READER_PID).cast::<AtomicI32>() };
    reader_pid.store(std::process::id() as i32, Ordering::Relaxed);
    state.store(STATE_ACKED, Ordering::Release);

    // SAFETY: exactly the mapping made above, not used afterwards.
    unsafe { munmap(ptr, SIZE) }.expect("munmap");
}
