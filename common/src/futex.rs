//! Thin safe wrappers for `futex(2)` `FUTEX_WAIT` and `FUTEX_WAKE`, which nix
//! lacks.
//!
//! A futex is a 32-bit word in memory. `FUTEX_WAIT(&word, expected)` checks
//! the word once, atomically: if it no longer holds `expected`, the call
//! returns `EAGAIN` at once; otherwise the caller sleeps until a `FUTEX_WAKE`
//! on that word wakes it (or its timeout expires, or a signal arrives). The
//! kernel never watches the word while the caller sleeps: a store to it
//! wakes nobody, so whoever changes the word must also call `FUTEX_WAKE`
//! (futex(2)). `FUTEX_WAKE` wakes up to `n` sleepers on that word.
//!
//! The kernel matches a wake-up with its sleepers by a key computed from the
//! word's address (kernel/futex/core.c, `get_futex_key`):
//!
//! - **shared** (no flag): the kernel looks at the memory behind the address.
//!   For a page of a file or of shmem (a tmpfs file such as `/dev/shm`, a
//!   `MAP_SHARED|MAP_ANONYMOUS` mapping, a System V segment) the key is the
//!   inode and the offset in it, so every process that maps that page meets
//!   there, at whatever address it maps it. For private anonymous memory
//!   (`MAP_PRIVATE|MAP_ANONYMOUS`, the heap, the stack) the key is (address
//!   space, virtual address), as for a private futex;
//! - **private** (`FUTEX_PRIVATE_FLAG`): the key is always (address space,
//!   virtual address). It is faster, and it never matches a sleeper in
//!   another process, even on a `MAP_SHARED` page.
//!
//! Both calls are one raw system call, with no lock or memory of the C
//! library involved, so a forked child may use them.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use nix::errno::Errno;

fn op(base: libc::c_int, private: bool) -> libc::c_int {
    if private {
        base | libc::FUTEX_PRIVATE_FLAG
    } else {
        base
    }
}

/// `FUTEX_WAIT` or `FUTEX_WAIT|FUTEX_PRIVATE_FLAG`, as C spells it.
pub fn op_name(base: &str, private: bool) -> String {
    if private {
        format!("{base}|FUTEX_PRIVATE_FLAG")
    } else {
        base.to_string()
    }
}

/// `futex(word, FUTEX_WAIT[|FUTEX_PRIVATE_FLAG], expected, &timeout)`: if
/// `*word == expected` (checked once, on entry), sleep until a `FUTEX_WAKE`
/// on `word`, for at most `timeout` (relative, on the monotonic clock).
/// `Ok(())` when woken (or spuriously); `EAGAIN` when the word no longer held
/// `expected` on entry; `ETIMEDOUT` when nobody woke us in time, whatever the
/// word holds by then; `EINTR` when a signal arrived.
pub fn wait(
    word: &AtomicU32,
    expected: u32,
    timeout: Duration,
    private: bool,
) -> Result<(), Errno> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, aligned 32-bit atomic (the futex word); `ts`
    // outlives the call; uaddr2 and val3 are unused by FUTEX_WAIT.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op(libc::FUTEX_WAIT, private),
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if rc == -1 { Err(Errno::last()) } else { Ok(()) }
}

/// `futex(word, FUTEX_WAKE[|FUTEX_PRIVATE_FLAG], n)`: wake up to `n` sleepers
/// on `word`; returns how many were woken.
pub fn wake(word: &AtomicU32, n: u32, private: bool) -> Result<usize, Errno> {
    // SAFETY: `word` is a live, aligned 32-bit atomic; FUTEX_WAKE reads no
    // other argument.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op(libc::FUTEX_WAKE, private),
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if rc == -1 {
        Err(Errno::last())
    } else {
        Ok(rc as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_wait_on_a_changed_word_returns_eagain_and_nobody_wakes_nobody() {
        let w = AtomicU32::new(1);
        assert_eq!(
            wait(&w, 0, Duration::from_secs(5), true),
            Err(Errno::EAGAIN)
        );
        assert_eq!(wake(&w, 1, true), Ok(0));
        assert_eq!(wake(&w, 1, false), Ok(0));
    }

    #[test]
    fn an_unwoken_wait_times_out() {
        let w = AtomicU32::new(0);
        assert_eq!(
            wait(&w, 0, Duration::from_millis(20), false),
            Err(Errno::ETIMEDOUT)
        );
        w.store(1, Ordering::SeqCst);
        assert_eq!(op_name("FUTEX_WAIT", true), "FUTEX_WAIT|FUTEX_PRIVATE_FLAG");
    }
}
