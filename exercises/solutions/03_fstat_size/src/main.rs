//! Solution of exercise 03_fstat_size (lesson 3): size a reader's mapping
//! from fstat.
//!
//! Why it is right: a mapping may be longer than the object, but every page
//! of it that holds no byte of the object raises SIGBUS when touched. fstat
//! returns the object's size (st_size), set by the creator's ftruncate; a
//! mapping of exactly st_size bytes, read up to st_size, never touches such
//! a page (the tail of the last page reads as zeros, and we don't read it).
//!
//! The checker creates an object (its name is `kit::name()`) whose size you
//! don't know in advance: a few pages and a bit. Your program opens it
//! read-only, maps it, adds up every byte and reports the object's size and
//! the sum. It maps a fixed 16 pages "to be safe", and dies with SIGBUS.
//!
//! Check it: `cargo run -p exercises -- check 03_fstat_size --solution`

use std::num::NonZeroUsize;

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open};
use nix::sys::stat::{Mode, fstat};

fn main() {
    let name = kit::name();
    // The checker's object: open it, never create or remove it.
    let fd = shm_open(name.as_str(), OFlag::O_RDONLY, Mode::empty()).expect("shm_open");

    let size = usize::try_from(fstat(&fd).expect("fstat").st_size).expect("a size");

    let len = NonZeroUsize::new(size).expect("an empty object");
    // SAFETY: a fresh read-only mapping chosen by the kernel; read only
    // through volatile reads (the checker wrote it before we started).
    let ptr = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ,
            MapFlags::MAP_SHARED,
            &fd,
            0,
        )
    }
    .expect("mmap");
    let base = ptr.as_ptr().cast::<u8>();
    let mut sum = 0u64;
    for i in 0..size {
        // SAFETY: i < size, the length of the mapping.
        sum += u64::from(unsafe { base.add(i).read_volatile() });
    }
    kit::report_u64s(&[size as u64, sum]);
    // SAFETY: exactly the mapping made above, not used afterwards.
    unsafe { munmap(ptr, size) }.expect("munmap");
}
