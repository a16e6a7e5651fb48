//! The semaphore and mutex calls of parts 3 and 5, under their C names, as
//! thin `Result` wrappers so that `call!` can narrate them: `sem_init`
//! returns -1 and sets errno, the `pthread_*` functions return the error
//! number itself.
//!
//! # Safety
//! Each function is `unsafe` exactly as its C original: the pointers must
//! point to live, aligned objects of the right kind (initialised, except for
//! the `*_init` functions).

#![allow(clippy::missing_safety_doc)] // the module documentation says it

use nix::errno::Errno;

/// 0 or an error number, as the `pthread_*` functions return it.
fn pthread(rc: libc::c_int) -> Result<(), Errno> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw(rc))
    }
}

/// 0, or -1 with errno, as the semaphore functions return it.
fn posix(rc: libc::c_int) -> Result<(), Errno> {
    if rc == -1 { Err(Errno::last()) } else { Ok(()) }
}

pub unsafe fn sem_init(sem: *mut libc::sem_t, pshared: i32, value: u32) -> Result<(), Errno> {
    // SAFETY: the caller's, as for sem_init(3).
    posix(unsafe { libc::sem_init(sem, pshared, value) })
}

pub unsafe fn sem_destroy(sem: *mut libc::sem_t) -> Result<(), Errno> {
    // SAFETY: the caller's, as for sem_destroy(3).
    posix(unsafe { libc::sem_destroy(sem) })
}

pub unsafe fn pthread_mutexattr_init(a: *mut libc::pthread_mutexattr_t) -> Result<(), Errno> {
    // SAFETY: the caller's.
    pthread(unsafe { libc::pthread_mutexattr_init(a) })
}

pub unsafe fn pthread_mutexattr_setpshared(
    a: *mut libc::pthread_mutexattr_t,
    pshared: i32,
) -> Result<(), Errno> {
    // SAFETY: the caller's.
    pthread(unsafe { libc::pthread_mutexattr_setpshared(a, pshared) })
}

pub unsafe fn pthread_mutexattr_setrobust(
    a: *mut libc::pthread_mutexattr_t,
    robust: i32,
) -> Result<(), Errno> {
    // SAFETY: the caller's.
    pthread(unsafe { libc::pthread_mutexattr_setrobust(a, robust) })
}

pub unsafe fn pthread_mutexattr_destroy(a: *mut libc::pthread_mutexattr_t) -> Result<(), Errno> {
    // SAFETY: the caller's.
    pthread(unsafe { libc::pthread_mutexattr_destroy(a) })
}

pub unsafe fn pthread_mutex_init(
    m: *mut libc::pthread_mutex_t,
    a: *const libc::pthread_mutexattr_t,
) -> Result<(), Errno> {
    // SAFETY: the caller's.
    pthread(unsafe { libc::pthread_mutex_init(m, a) })
}

pub unsafe fn pthread_mutex_lock(m: *mut libc::pthread_mutex_t) -> Result<(), Errno> {
    // SAFETY: the caller's.
    pthread(unsafe { libc::pthread_mutex_lock(m) })
}

pub unsafe fn pthread_mutex_timedlock(
    m: *mut libc::pthread_mutex_t,
    at: &libc::timespec,
) -> Result<(), Errno> {
    // SAFETY: the caller's; `at` is a valid absolute CLOCK_REALTIME time.
    pthread(unsafe { libc::pthread_mutex_timedlock(m, at) })
}

pub unsafe fn pthread_mutex_consistent(m: *mut libc::pthread_mutex_t) -> Result<(), Errno> {
    // SAFETY: the caller's.
    pthread(unsafe { libc::pthread_mutex_consistent(m) })
}

pub unsafe fn pthread_mutex_unlock(m: *mut libc::pthread_mutex_t) -> Result<(), Errno> {
    // SAFETY: the caller's.
    pthread(unsafe { libc::pthread_mutex_unlock(m) })
}

pub unsafe fn pthread_mutex_destroy(m: *mut libc::pthread_mutex_t) -> Result<(), Errno> {
    // SAFETY: the caller's.
    pthread(unsafe { libc::pthread_mutex_destroy(m) })
}

/// Render a C constant by its name after `=>` in `call!`:
/// `call!(pthread_mutexattr_setpshared(a, pshared => named("PTHREAD_PROCESS_SHARED")))`.
pub fn named(name: &'static str) -> impl Fn(&i32) -> String {
    move |_| name.to_string()
}
