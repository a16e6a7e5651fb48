//! Solution of exercise 04_devshm_file (lesson 4): shm_open is open(2) in
//! /dev/shm.
//!
//! Why it is right: on Linux, glibc's shm_open(name) opens "/dev/shm" +
//! name (a tmpfs) with O_NOFOLLOW|O_CLOEXEC added; shm_unlink is unlink of
//! the same path. A file created at /dev/shm/<name> with ordinary calls *is*
//! a POSIX shared memory object, and removing the file removes the name.
//!
//! glibc's shm_open("/x") is little more than open("/dev/shm/x"). Your
//! program creates the object with plain file calls (std::fs), sizes it,
//! and writes a number into it; a child then opens it *by name* with
//! shm_open, maps it and reads the number back; the parent reports what the
//! child found. The child cannot find it.
//!
//! Check it: `cargo run -p exercises -- check 04_devshm_file --solution`

use std::io::Write;
use std::num::NonZeroUsize;
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::OFlag;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, shm_open};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

const VALUE: u64 = 0x0d15_c0de;

fn main() {
    let name = kit::name(); // "/shm-lessons-ex-...": shm_open's kind of name
    let path = format!("/dev/shm{name}");

    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true) // O_CREAT|O_EXCL
        .mode(0o600)
        .open(&path)
        .expect("open");
    file.write_all(&VALUE.to_ne_bytes()).expect("write");
    file.set_len(4096).expect("ftruncate");

    // SAFETY: the child only calls shm_open, mmap, a volatile read and
    // _exit (no allocation: the name was made before the fork).
    let status = match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = match shm_open(name.as_str(), OFlag::O_RDWR, Mode::empty()) {
                Err(errno) => errno as i32, // ENOENT is 2
                Ok(fd) => {
                    let len = NonZeroUsize::new(8).unwrap();
                    // SAFETY: a fresh read-only mapping of a 4096-byte file.
                    match unsafe {
                        mmap(
                            None,
                            len,
                            ProtFlags::PROT_READ,
                            MapFlags::MAP_SHARED,
                            &fd,
                            0,
                        )
                    } {
                        // SAFETY: 8 bytes inside the mapping; the parent
                        // wrote them before the fork.
                        Ok(p) if unsafe { p.as_ptr().cast::<u64>().read_volatile() } == VALUE => 0,
                        Ok(_) => 100, // found a file, but not ours
                        Err(errno) => errno as i32,
                    }
                }
            };
            // SAFETY: _exit runs none of the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => waitpid(child, None).expect("waitpid"),
    };
    let code = match status {
        WaitStatus::Exited(_, code) => code,
        _ => 255,
    };
    // Report the child's exit status: 0 when it found VALUE, else an errno.
    kit::report_u64(code as u64);
    std::fs::remove_file(&path).expect("unlink");
}
