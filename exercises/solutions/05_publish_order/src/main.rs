//! Solution of exercise 05_publish_order (lesson 5): publish the message
//! before READY.
//!
//! Why it is right: READY is the last store, with Release. A reader that
//! loads READY with Acquire then sees every store made before it, so the
//! length and the message are complete whenever it looks, however slow the
//! copy was. (Before, the reader could see READY a whole second before the
//! message existed.)
//!
//! Your program is lesson-5's writer: it creates the object (its name is
//! `kit::name()`), fills in lesson-5's header and a message, sets the state
//! to READY, waits for a reader's ACKED, then removes the object. The
//! checker is the reader: it trusts every field as soon as it sees READY.
//! It reads an empty message.
//!
//! Check it: `cargo run -p exercises -- check 05_publish_order --solution`

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::stat::Mode;
use nix::unistd::ftruncate;

// Lesson 5's layout (lessons/05-unrelated/src/layout.rs).
const SIZE: usize = 4096;
const MAGIC: [u8; 8] = *b"SHMLSN5\0";
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8; // u32
const OFF_STATE: usize = 12; // u32, atomic
const OFF_WRITER_PID: usize = 16; // i32
const OFF_SEQUENCE: usize = 24; // u64
const OFF_MSG_LEN: usize = 40; // u32
const OFF_MSG: usize = 48;
const STATE_READY: u32 = 1;
const STATE_ACKED: u32 = 2;

const MESSAGE: &[u8] = b"hello from the writer";

/// Store `bytes` at `off`: before READY, nobody may read them yet.
///
/// # Safety
/// `off + bytes.len()` must be inside the mapping at `base`.
unsafe fn put(base: *mut u8, off: usize, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        // SAFETY: the caller keeps off + i inside the mapping.
        unsafe { base.add(off + i).write_volatile(*b) };
    }
}

fn main() {
    let name = kit::name();
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    let fd = shm_open(name.as_str(), flags, Mode::from_bits_truncate(0o600)).expect("shm_open");
    ftruncate(&fd, SIZE as libc::off_t).expect("ftruncate");
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let len = NonZeroUsize::new(SIZE).unwrap();
    // SAFETY: a fresh mapping chosen by the kernel, SIZE bytes.
    let ptr = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0) }.expect("mmap");
    let base = ptr.as_ptr().cast::<u8>();
    // SAFETY: OFF_STATE is 4-byte aligned and inside the mapping; a reader
    // in another process loads and stores it, so it is only used atomically.
    let state = unsafe { &*base.add(OFF_STATE).cast::<AtomicU32>() };

    // SAFETY: every offset below is inside the SIZE-byte mapping.
    unsafe {
        put(base, OFF_MAGIC, &MAGIC);
        put(base, OFF_VERSION, &1u32.to_ne_bytes());
        put(
            base,
            OFF_WRITER_PID,
            &(std::process::id() as i32).to_ne_bytes(),
        );
        put(base, OFF_SEQUENCE, &1u64.to_ne_bytes());
    }

    std::thread::sleep(Duration::from_secs(1)); // a long message takes a while to copy
    // SAFETY: OFF_MSG + MESSAGE.len() < SIZE.
    unsafe {
        put(base, OFF_MSG_LEN, &(MESSAGE.len() as u32).to_ne_bytes());
        put(base, OFF_MSG, MESSAGE);
    }
    // Last, with Release: everything above is visible to an Acquire load of READY.
    state.store(STATE_READY, Ordering::Release);

    let deadline = Instant::now() + Duration::from_secs(8);
    while state.load(Ordering::Acquire) != STATE_ACKED && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: exactly the mapping made above, not used afterwards.
    unsafe { munmap(ptr, SIZE) }.expect("munmap");
    shm_unlink(name.as_str()).expect("shm_unlink");
}
