//! Part 3. `--shm-size`: Docker's 64 MiB `/dev/shm`.
//!
//! In a private mount namespace the child mounts what `docker run` mounts
//! by default: a 64 MiB tmpfs on `/dev/shm`. A program that sizes its object
//! with `ftruncate` alone succeeds, and dies of SIGBUS when it touches the
//! page past 64 MiB (in a forked child, whose handler reports it). A program
//! that calls `posix_fallocate`, as PostgreSQL does, gets ENOSPC at once.

use std::num::NonZeroUsize;
use std::time::Duration;

use anyhow::{Context, bail};
use common::args::Hold;
use common::children::wait_deadline;
use common::fault::{self, FaultReport};
use common::narrate::{self, explain, fact, section};
use common::{attempt, call, cleanup, inspect, names, shm};
use nix::fcntl::posix_fallocate;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_unlink};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::unistd::{ForkResult, fork, ftruncate};

use crate::kept;
use crate::modes::docker_dev_shm;

/// What the program wants: more than the 64 MiB Docker gives.
const WANT: usize = 96 << 20;

pub fn run(_hold: Hold) -> anyhow::Result<()> {
    section("Part 3. --shm-size: a 64 MiB /dev/shm");
    kept::run("shm-size", &[])?;
    // ANCHOR: sizes
    explain("How to give a container more /dev/shm (the default is 64 MiB):");
    narrate::commands(&["docker run --shm-size=1g IMAGE"]);
    narrate::block(
        "# compose.yaml\n\
         services:\n  db:\n    shm_size: \"1gb\"\n\
         # Kubernetes: no shm size of its own; mount a memory-backed emptyDir\n\
         volumes:\n  - name: dshm\n    emptyDir: {medium: Memory, sizeLimit: 1Gi}\n\
         containers:\n  - volumeMounts: [{name: dshm, mountPath: /dev/shm}]",
    );
    explain(
        "The emptyDir's pages count against the container's memory limit (filling /dev/shm \
         can get the container OOM-killed), and what it may hold is the smaller of sizeLimit \
         and the sum of the pod's memory limits: set both.",
    );
    // ANCHOR_END: sizes
    Ok(())
}

/// In new IPC and mount namespaces: Docker's `/dev/shm`, then both programs.
pub fn inside() -> anyhow::Result<()> {
    let size = docker_dev_shm()?;

    // ANCHOR: ftruncate
    let name = names::unique_name(10, "ftruncate");
    let (fd, object) = shm::create(&name)?;
    call!(ftruncate(&fd, WANT as libc::off_t))?;
    let len = NonZeroUsize::new(WANT).context("WANT is 0")?;
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY: a new mapping where the kernel chooses overlaps no Rust
    // object; only the forked child touches it, with volatile stores.
    let ptr = unsafe { call!(mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0)) }?;
    let (fault, pages) = touch_every_page(ptr.as_ptr().cast())?;
    // ANCHOR_END: ftruncate
    // SAFETY: exactly the mapping made above; the child that used it is gone.
    unsafe { call!(munmap(ptr, WANT)) }?;
    drop(fd);
    call!(shm_unlink(name.as_str()))?;
    object.disarm();
    let page = inspect::page_size() as u64;
    fact(
        "result ftruncate",
        format!(
            "{fault} after {pages} pages ({} bytes; /dev/shm holds {size})",
            pages * page
        ),
    );
    fallocate(size)
}

// ANCHOR: fallocate
/// The PostgreSQL way: allocate every page up front.
fn fallocate(size: u64) -> anyhow::Result<()> {
    let name = names::unique_name(10, "fallocate");
    let (fd, object) = shm::create(&name)?;
    let errno = match attempt!(posix_fallocate(&fd, 0, WANT as libc::off_t)) {
        Ok(()) => bail!("posix_fallocate of {WANT} bytes worked on a {size}-byte tmpfs"),
        Err(e) => e,
    };
    drop(fd);
    call!(shm_unlink(name.as_str()))?;
    object.disarm();
    // ANCHOR_END: fallocate
    explain("PostgreSQL (dsm_impl_posix_resize) makes the same call and reports, in the log:");
    narrate::block(format!(
        "ERROR:  could not resize shared memory segment \"/PostgreSQL.NNN\" to {WANT} bytes: {}",
        errno.desc()
    ));
    fact(
        "result posix_fallocate",
        format!("{} up front", common::report::errno_name(errno)),
    );
    Ok(())
}

/// Fork a child that writes one byte into each page of the `WANT` bytes at
/// `base`, counting them; its SIGBUS handler reports the fault. Returns the
/// fault (or how the child ended) and the pages written.
fn touch_every_page(base: *mut u8) -> anyhow::Result<(String, u64)> {
    let page = inspect::page_size();
    let report = FaultReport::new().context("mmap of the fault report page")?;
    let action = SigAction::new(
        SigHandler::SigAction(fault::report_fault),
        SaFlags::SA_SIGINFO | SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    // SAFETY: the child only calls prctl/getppid/kill (die_with_parent) and
    // sigaction, does volatile stores and atomic progress updates, and
    // leaves with _exit: all async-signal-safe.
    match unsafe { call!(fork()) }? {
        ForkResult::Child => {
            // Killed with us if this process is killed (SIGKILL runs no
            // cleanup); on SIGTERM our own cleanup stops and reaps it.
            common::children::die_with_parent();
            // SAFETY: sigaction is async-signal-safe; report_fault is too.
            unsafe {
                let _ = sigaction(Signal::SIGBUS, &action);
            }
            for i in 0..WANT / page {
                // SAFETY: i * page < WANT: inside the live MAP_SHARED mapping.
                unsafe { base.add(i * page).write_volatile(1) };
                report.set_progress(i as u64 + 1);
            }
            // SAFETY: _exit skips destructors that belong to the parent.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            let guard = cleanup::child(child);
            let waited = wait_deadline(child, Duration::from_secs(60)).context("waitpid")?;
            guard.disarm();
            fact("the child", fault::describe(waited.status()));
            let what = match report.fault() {
                Some(f) => f.to_string(),
                None => fault::describe(waited.status()),
            };
            Ok((what, report.progress()))
        }
    }
}
