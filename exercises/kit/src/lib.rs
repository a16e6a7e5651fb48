//! What an exercise gets from the checker, and nothing it is meant to learn.
//!
//! The checker (`cargo run -p exercises -- check ID`) runs an exercise with
//! a name and a key that belong to this run only, and with a small shared
//! object of its own, the *report*, where the program leaves its result.
//! The checker then reads the report, the exit status and what is left in
//! `/dev/shm` and `ipcs -m`: it never reads what the program prints.
//!
//! Run by hand (`cargo run -p ex01_child_string`), an exercise gets a name
//! made from its own pid and prints its result instead.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open};
use nix::sys::stat::Mode;

/// The environment variables the checker sets.
pub const ENV_NAME: &str = "SHM_EX_NAME";
pub const ENV_KEY: &str = "SHM_EX_KEY";
pub const ENV_REPORT: &str = "SHM_EX_REPORT";

/// The report's layout: a `u64` that is 1 once a result is there (stored
/// with release, after the rest), the result's length, then its bytes.
pub const REPORT_SIZE: usize = 4096;
pub const OFF_SET: usize = 0;
pub const OFF_LEN: usize = 8;
pub const OFF_DATA: usize = 16;

/// The POSIX name this run may create: `/shm-lessons-ex-<pid>-…` from the
/// checker, or `/shm-lessons-ex-<pid>` (your own pid) when run by hand.
pub fn name() -> String {
    std::env::var(ENV_NAME).unwrap_or_else(|_| format!("/shm-lessons-ex-{}", std::process::id()))
}

/// The System V key this run may use: from the checker, or one made from
/// your pid when run by hand (top byte 0x53, like the lessons' keys).
pub fn key() -> libc::key_t {
    std::env::var(ENV_KEY)
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or((0x53 << 24 | 0xe << 20 | (std::process::id() & 0xf_ffff)) as libc::key_t)
}

/// Leave `bytes` for the checker (or print them when run by hand).
pub fn report(bytes: &[u8]) {
    let Ok(name) = std::env::var(ENV_REPORT) else {
        println!("result: {:?}", String::from_utf8_lossy(bytes));
        return;
    };
    let n = bytes.len().min(REPORT_SIZE - OFF_DATA);
    let fd =
        shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty()).expect("the checker's report object");
    let len = NonZeroUsize::new(REPORT_SIZE).unwrap();
    // SAFETY: a fresh mapping of the checker's report object, which the
    // checker created REPORT_SIZE bytes long and reads only after the flag's
    // release store below (its acquire load) or after we exit (waitpid);
    // nothing else maps it.
    let p = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            &fd,
            0,
        )
    }
    .expect("mmap of the report object");
    let base = p.as_ptr().cast::<u8>();
    // SAFETY: every offset below is inside the REPORT_SIZE-byte mapping; the
    // flag and the length are 8-byte aligned (the mapping is page-aligned),
    // and the flag is written last, with release.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(OFF_DATA), n);
        base.add(OFF_LEN).cast::<u64>().write_volatile(n as u64);
        (*base.add(OFF_SET).cast::<AtomicU64>()).store(1, Ordering::Release);
        let _ = munmap(p, REPORT_SIZE);
    }
}

/// Leave a number for the checker.
pub fn report_u64(value: u64) {
    if std::env::var(ENV_REPORT).is_err() {
        println!("result: {value:#x} ({value})");
        return;
    }
    report(&value.to_le_bytes());
}

/// Leave several numbers for the checker, in order.
pub fn report_u64s(values: &[u64]) {
    if std::env::var(ENV_REPORT).is_err() {
        println!("result: {values:?}");
        return;
    }
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    report(&bytes);
}
