//! Exercise 07_memfd_seal (lesson 7): seal a memfd so a peer can't shrink it.
//!
//! A memfd is shared memory without a name: you pass its descriptor to a
//! peer (here a forked child; in real life over a Unix socket). The peer
//! may be hostile: this one calls ftruncate(fd, 0). Your mapping then lies
//! beyond the end of the file, and your next read dies with SIGBUS. The
//! parent reports the peer's exit status (the errno of its ftruncate, 0 if
//! it succeeded) and the value it read back.
//!
//! Edit the TODO, then: `cargo run -p exercises -- check 07_memfd_seal`

use std::num::NonZeroUsize;

use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, SysconfVar, fork, ftruncate, sysconf};

const VALUE: u64 = 0x005e_a1ed;

fn main() {
    let page = sysconf(SysconfVar::PAGE_SIZE).unwrap().unwrap() as usize;
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    let fd = memfd_create("ex07-seal", flags).expect("memfd_create");
    ftruncate(&fd, page as libc::off_t).expect("ftruncate");
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let len = NonZeroUsize::new(page).unwrap();
    // SAFETY: a fresh mapping chosen by the kernel; volatile accesses only.
    let ptr = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0) }.expect("mmap");
    // SAFETY: the start of the page-aligned mapping; the peer doesn't exist yet.
    unsafe { ptr.as_ptr().cast::<u64>().write_volatile(VALUE) };

    // TODO: before handing the descriptor to anyone, seal the memfd so that
    // nobody can make it smaller (nix::fcntl::fcntl with F_ADD_SEALS).

    // SAFETY: the child (the peer) only calls ftruncate and _exit.
    let peer = match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = match ftruncate(&fd, 0) {
                Ok(()) => 0,
                Err(errno) => errno as i32, // EPERM is 1
            };
            // SAFETY: _exit runs none of the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => waitpid(child, None).expect("waitpid"),
    };
    let peer_code = match peer {
        WaitStatus::Exited(_, code) => code as u64,
        _ => 255,
    };
    // SAFETY: the mapping is still ours; the peer has exited.
    let value = unsafe { ptr.as_ptr().cast::<u64>().read_volatile() };
    kit::report_u64s(&[peer_code, value]);
    // SAFETY: exactly the mapping made above, not used afterwards.
    unsafe { munmap(ptr, page) }.expect("munmap");
}
