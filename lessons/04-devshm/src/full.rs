//! Scenario 4: a full `/dev/shm`, staged as a 1 MiB tmpfs. `ftruncate` to
//! 4 MiB succeeds (the file is sparse), a child writing page by page dies of
//! SIGBUS when the tmpfs is full, and `posix_fallocate` fails at once with
//! ENOSPC instead: what PostgreSQL does since 2018.

use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::time::Duration;

use anyhow::Context;
use common::args::Hold;
use common::children::wait_deadline;
use common::fault::{self, FaultReport};
use common::narrate::{explain, fact, note};
use common::report::errno_name;
use common::{attempt, call, cleanup, inspect, names, shm};
use nix::fcntl::posix_fallocate;
use nix::mount::{MsFlags, mount};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::stat::fstat;
use nix::sys::statfs::{Statfs, statfs};
use nix::unistd::{ForkResult, fork, ftruncate};

use crate::show::{look, remove, result};

/// Scenario 4's tiny tmpfs, and the object it cannot hold.
const FULL_TMPFS: &str = "size=1M,mode=1777";
pub const BIG: usize = 4 << 20;

// ANCHOR: full
pub fn run(name: &str, hold: Hold) -> anyhow::Result<()> {
    let (nosuid_nodev, tiny) = (MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(FULL_TMPFS));
    call!(mount(
        Some("tmpfs"),
        "/dev/shm",
        Some("tmpfs"),
        nosuid_nodev,
        tiny
    ))?;
    let st = call!(statfs("/dev/shm") => |st: &Statfs| format!("0 (f_blocks {})", st.blocks()))?;
    let tmpfs_size = st.blocks() * st.block_size() as u64;
    let (fd, object) = shm::create(name)?;
    call!(ftruncate(&fd, BIG as libc::off_t))?;
    let st = call!(fstat(&fd))?;
    fact(
        "st_blocks",
        format!("{} (512-byte blocks allocated)", st.st_blocks),
    );
    explain("ftruncate only sets the size: tmpfs allocates a page when it is first touched.");
    let file = names::file_name(name);
    look(
        hold,
        &[&format!(
            "ls -ls /proc/PID/root/dev/shm/{file}; stat -f /proc/PID/root/dev/shm"
        )],
    );
    let (pages, signal) = write_every_page(&fd, tmpfs_size)?;
    remove(name, fd, object)?;
    let errno = fallocate_instead(&format!("{name}-fallocate"))?;
    let sparse = format!("ftruncate to {BIG} worked; {signal} after {pages} pages");
    let tail = format!("(tmpfs size {tmpfs_size}); posix_fallocate: {errno}");
    result(4, "full", &format!("{sparse} {tail}"));
    Ok(())
}
// ANCHOR_END: full

// ANCHOR: sigbus
/// Map the object and let a child write one byte into each page, counting
/// them in a shared fault report, until the tmpfs can't give it another
/// page. Returns the pages written and the signal that stopped the child.
fn write_every_page(fd: &OwnedFd, tmpfs_size: u64) -> anyhow::Result<(u64, &'static str)> {
    let (page, prot) = (
        inspect::page_size(),
        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
    );
    let len = NonZeroUsize::new(BIG).context("BIG is 0")?;
    // SAFETY: a fresh mapping at an address the kernel chooses overlaps no
    // Rust object; only the forked child touches it, with volatile stores.
    let ptr: NonNull<libc::c_void> =
        unsafe { call!(mmap(None, len, prot, MapFlags::MAP_SHARED, fd, 0)) }?;
    let report = FaultReport::new().context("mmap for the fault report")?;
    // SAFETY: the child only runs `write_pages` (sigaction, volatile stores,
    // atomic progress updates, _exit): all async-signal-safe.
    match unsafe { call!(fork()) }? {
        ForkResult::Child => write_pages(ptr, page, &report),
        ForkResult::Parent { child } => {
            let guard = cleanup::child(child);
            let waited = wait_deadline(child, Duration::from_secs(60)).context("waitpid")?;
            guard.disarm();
            fact("the child", fault::describe(waited.status()));
        }
    }
    let fault = report.fault();
    fact(
        "its handler saw",
        fault.map_or("nothing".into(), |f| f.to_string()),
    );
    // SAFETY: exactly the mapping made above; the child that wrote it is gone.
    unsafe { call!(munmap(ptr, BIG)) }?;
    let (pages, bytes) = (report.progress(), report.progress() * page as u64);
    fact(
        "pages written",
        format!("{pages} ({bytes} bytes; the tmpfs holds {tmpfs_size})"),
    );
    Ok((pages, fault.map_or("no signal", |f| f.signal_name())))
}
// ANCHOR_END: sigbus

/// The forked child: one byte into each page of the mapping, in order,
/// counting them, until a SIGBUS (its handler records where) or the end.
fn write_pages(ptr: NonNull<libc::c_void>, page: usize, report: &FaultReport) -> ! {
    let on_fault = SigHandler::SigAction(fault::report_fault);
    let flags = SaFlags::SA_SIGINFO | SaFlags::SA_RESETHAND;
    // SAFETY: sigaction is async-signal-safe; report_fault is too.
    let _ = unsafe {
        sigaction(
            Signal::SIGBUS,
            &SigAction::new(on_fault, flags, SigSet::empty()),
        )
    };
    for i in 0..BIG / page {
        // SAFETY: i * page < BIG: inside the live MAP_SHARED mapping.
        unsafe { ptr.as_ptr().cast::<u8>().add(i * page).write_volatile(1) };
        report.set_progress(i as u64 + 1);
    }
    // SAFETY: _exit skips destructors that belong to the parent.
    unsafe { libc::_exit(0) }
}

// ANCHOR: fallocate
/// posix_fallocate asks for every page up front: a full tmpfs is an error at
/// the call, not a SIGBUS later. PostgreSQL does this for each dynamic shared
/// memory segment, and reports the error in its own words.
fn fallocate_instead(name: &str) -> anyhow::Result<String> {
    let (fd, object) = shm::create(name)?;
    let reserved = attempt!(posix_fallocate(&fd, 0, BIG as libc::off_t));
    remove(name, fd, object)?;
    note(
        "Docker's /dev/shm is 64 MiB: PyTorch's DataLoader workers die of SIGBUS there, while \
         PostgreSQL, calling posix_fallocate since 2018, reports an error. Fix: --shm-size=1g.",
    );
    let Err(e) = reserved else {
        return Ok("no error".into());
    };
    let pg = format!("could not resize shared memory segment \"{name}\" to {BIG} bytes");
    fact("PostgreSQL would report", format!("{pg}: {}", e.desc()));
    Ok(errno_name(e))
}
// ANCHOR_END: fallocate
