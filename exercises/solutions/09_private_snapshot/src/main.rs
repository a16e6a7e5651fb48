//! Solution of exercise 09_private_snapshot (lesson 9): a MAP_PRIVATE
//! snapshot that does not change.
//!
//! Why it is right: a MAP_PRIVATE page that was only read is the object's
//! own page, mapped read-only; Linux shows later changes to the object
//! through it (POSIX leaves this unspecified). Only the first *write* gives
//! the process its own copy (copy-on-write), which the object's changes no
//! longer reach. Writing one byte of each page, with the value it already
//! holds, copies every page at the moment of the snapshot.
//!
//! The checker's object (its name is `kit::name()`) holds DATA_PAGES pages
//! of data, then one control page with a flag word. Your program wants a
//! *snapshot* of the data: a view that keeps today's bytes even when the
//! object changes. It maps the data with MAP_PRIVATE, tells the checker
//! (flag = 1), waits while the checker rewrites every data page (flag = 2),
//! then adds up its snapshot. The sum comes out as the *new* data's.
//!
//! Edit the TODO, then: `cargo run -p exercises -- check 09_private_snapshot`

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, shm_open};
use nix::sys::stat::Mode;
use nix::unistd::{SysconfVar, sysconf};

const DATA_PAGES: usize = 4;

fn main() {
    let name = kit::name();
    let page = sysconf(SysconfVar::PAGE_SIZE).unwrap().unwrap() as usize;
    let fd = shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty()).expect("shm_open");
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;

    // The control page, shared with the checker.
    let whole = NonZeroUsize::new((DATA_PAGES + 1) * page).unwrap();
    // SAFETY: a fresh shared mapping of the whole object; only the flag
    // word is used, as an atomic.
    let shared = unsafe { mmap(None, whole, prot, MapFlags::MAP_SHARED, &fd, 0) }.expect("mmap");
    // SAFETY: the first word of the control page: aligned, inside the mapping.
    let flag = unsafe {
        &*shared
            .as_ptr()
            .cast::<u8>()
            .add(DATA_PAGES * page)
            .cast::<AtomicU32>()
    };

    // The snapshot: the data pages, private.
    let data = NonZeroUsize::new(DATA_PAGES * page).unwrap();
    // SAFETY: a fresh private mapping; volatile accesses only.
    let snap = unsafe { mmap(None, data, prot, MapFlags::MAP_PRIVATE, &fd, 0) }.expect("mmap");
    let base = snap.as_ptr().cast::<u8>();
    let mut sum = 0u64;
    for i in 0..DATA_PAGES * page {
        // SAFETY: i < the mapping's length.
        sum += u64::from(unsafe { base.add(i).read_volatile() });
    }
    println!("snapshot taken: sum {sum}");
    for p in 0..DATA_PAGES {
        // SAFETY: the first byte of data page p, inside the private mapping;
        // the write copies the page (copy-on-write) without changing a byte.
        unsafe {
            let b = base.add(p * page);
            b.write_volatile(b.read_volatile());
        }
    }

    flag.store(1, Ordering::Release); // "snapshot taken"
    let deadline = Instant::now() + Duration::from_secs(5);
    while flag.load(Ordering::Acquire) != 2 {
        assert!(Instant::now() < deadline, "the object never changed");
        std::thread::sleep(Duration::from_millis(1));
    }

    let mut later = 0u64;
    for i in 0..DATA_PAGES * page {
        // SAFETY: as above.
        later += u64::from(unsafe { base.add(i).read_volatile() });
    }
    kit::report_u64(later);
}
