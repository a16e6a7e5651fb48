//! The first call of most lessons after lesson-1: create a POSIX object the
//! safe way. Lesson-1 teaches `shm_open` and makes the call inline; the later
//! lessons, whose subject is something else (SIGBUS, `/dev/shm`, races,
//! lifecycle), call this instead. It still narrates the call with its real
//! arguments and result, like every step.

use std::os::fd::OwnedFd;

use nix::fcntl::OFlag;
use nix::sys::mman::shm_open;
use nix::sys::stat::Mode;

use crate::cleanup::{self, Guard};

/// `shm_open(name, O_CREAT|O_EXCL|O_RDWR, 0600)`, narrated, and the guard
/// that unlinks the name on every path from here on (disarm it when the
/// lesson calls `shm_unlink` itself). `O_EXCL`: an existing object, someone
/// else's, fails with EEXIST and is left alone.
pub fn create(name: &str) -> anyhow::Result<(OwnedFd, Guard)> {
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    let fd = crate::call!(shm_open(name, flags, Mode::from_bits_truncate(0o600)))?;
    let guard = cleanup::posix_object(name); // only after it succeeded: O_EXCL
    Ok((fd, guard))
}
