//! Part 6: growing a segment while a peer maps it.

use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use anyhow::Context;
use common::call;
use common::fault::{self, FaultReport};
use common::narrate::{evidence, explain, fact, section, step, subsection, warn};
use common::report::CallResult;
use common::{cleanup, inspect, names, shm};
use nix::sys::mman::{
    MRemapFlags, MapFlags, ProtFlags, mmap, mmap_anonymous, mremap, munmap, shm_unlink,
};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::wait::WaitStatus;
use nix::unistd::{ForkResult, Pid, fork, ftruncate, getpid, pipe, write};

use crate::util::{self, Report, word};

/// The header's words: a generation counter and the size it goes with.
const GENERATION: usize = 0;
const SIZE: usize = 8;
/// What the owner writes in the first data page, and past the old end.
pub const OLD_DATA: u64 = 0x1111;
pub const NEW_DATA: u64 = 0x2222;

pub fn part6(page: usize) -> anyhow::Result<()> {
    section("6. Growing a segment while a peer maps it");
    let (old, new) = (2 * page, 4 * page);
    // Mapped first, so it cannot land right after the peer's mapping.
    let faults = FaultReport::new()
        .call("mmap(NULL, page, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0)")?;
    // ANCHOR: owner
    let name = names::unique_name(9, "grow");
    let (fd, object) = shm::create(&name)?;
    call!(ftruncate(&fd, old as libc::off_t))?;
    let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY: a new mapping where the kernel picks overlaps nothing of
    // Rust's; only util::word touches it.
    let owner = unsafe { call!(mmap(None, len(old)?, rw, MapFlags::MAP_SHARED, &fd, 0)) }?;
    // SAFETY: the header and first data page lie in the live owner mapping.
    unsafe {
        word(owner, page).store(OLD_DATA, Ordering::Relaxed);
        word(owner, SIZE).store(old as u64, Ordering::Relaxed);
        word(owner, GENERATION).store(1, Ordering::Release); // publish generation 1
    }
    fact(
        "header",
        format!("generation 1, size {old}; data page: {OLD_DATA:#x}"),
    );
    // ANCHOR_END: owner

    explain(
        "The peer maps the object as it is now: two pages. (We put its mapping at the start \
         of a range we reserved and then released, so that nothing else is mapped right \
         after it: otherwise a touch past its end could land in another mapping, silently.)",
    );
    let (none, private) = (
        ProtFlags::PROT_NONE,
        MapFlags::MAP_PRIVATE | MapFlags::MAP_ANONYMOUS,
    );
    // SAFETY: a new PROT_NONE mapping overlaps nothing of Rust's.
    let reserve = unsafe {
        call!(mmap_anonymous(None, len(new)?, none => |_: &ProtFlags| "PROT_NONE".to_string(), private))
    }?;
    let at = NonZeroUsize::new(reserve.as_ptr() as usize);
    let fixed = MapFlags::MAP_SHARED | MapFlags::MAP_FIXED;
    // SAFETY: MAP_FIXED over our own PROT_NONE reservation, where no Rust
    // object lives; only util::word touches it.
    let peer = unsafe { call!(mmap(at => address, len(old)?, rw, fixed, &fd, 0)) }?;
    let tail = NonNull::new(peer.as_ptr().cast::<u8>().wrapping_add(old).cast()).context("null")?;
    // SAFETY: the tail of our own reservation; nothing points into it.
    unsafe { call!(munmap(tail, new - old)) }?;
    evidence(
        &format!(
            "grep -A1 {:x} /proc/{}/maps   # the peer's mapping, and what follows",
            peer.as_ptr() as usize,
            getpid()
        ),
        [
            inspect::maps_line_for(peer.as_ptr() as usize).unwrap_or_default(),
            inspect::maps_line_for(tail.as_ptr() as usize)
                .unwrap_or_else(|| format!("{:x}: nothing mapped", tail.as_ptr() as usize)),
        ],
    );

    let naive = Peer::start(&faults, peer, old, Strategy::Touch)?;
    let careful = Peer::start(&faults, peer, old, Strategy::CheckGeneration)?;

    // ANCHOR: grow
    subsection("the owner grows the object to four pages");
    call!(ftruncate(&fd, new as libc::off_t))?;
    // SAFETY: owner/old is exactly our mapping; after this only the new
    // address is used.
    let owner = unsafe { call!(mremap(owner, old, new, MRemapFlags::MREMAP_MAYMOVE, None)) }?;
    // SAFETY: offsets inside the live, grown owner mapping.
    unsafe {
        word(owner, old).store(NEW_DATA, Ordering::Relaxed); // data past the old end
        word(owner, SIZE).store(new as u64, Ordering::Relaxed);
        word(owner, GENERATION).store(2, Ordering::Release); // publish: everything above first
    }
    fact(
        "header",
        format!("generation 2, size {new}; at offset {old}: {NEW_DATA:#x}"),
    );
    // ANCHOR_END: grow

    subsection("a peer that touches past its old mapping");
    let status = naive.finish(None)?;
    let fault = faults.fault();
    match (status, fault) {
        (WaitStatus::Signaled(_, Signal::SIGSEGV, _), Some(f))
            if f.addr == tail.as_ptr() as usize =>
        {
            fact("the child's handler saw", format!("{f} (mapping + {old})"));
            explain(
                "SIGSEGV, not SIGBUS. The object is big enough now; the peer's mapping is not. \
                 ftruncate changes the object, never another process's mappings, so the \
                 address has no mapping at all (SEGV_MAPERR). SIGBUS is the opposite case, \
                 lesson 3's: a mapping that reaches past the end of its object.",
            );
        }
        _ => warn(format!(
            "expected SIGSEGV at {:p}; the child {}",
            tail.as_ptr(),
            fault::describe(status)
        )),
    }

    subsection("the fix: a peer that checks the generation, then remaps");
    let mut got = [0i64; 4];
    careful.finish(Some(&mut got))?;
    fact(
        "the peer saw",
        format!(
            "generation {} when it mapped, {} now, size {}; at offset {old} after mremap: {:#x}",
            got[0], got[1], got[2], got[3]
        ),
    );
    if got[0] == 1 && got[1] == 2 && got[2] == new as i64 && got[3] as u64 == NEW_DATA {
        explain(
            "It found the generation changed, read the new size from the header and grew its \
             own mapping with mremap before touching the new page. The owner wrote the data \
             and the size first and the generation last, with a \
             release store; the peer reads the generation with an acquire load, so when it \
             sees 2 it also sees the size and data that came before.",
        );
    } else {
        warn("the remapping peer did not read the new data");
    }

    for (p, l) in [(owner, new), (peer, old)] {
        // SAFETY: exactly mappings made above; nothing points into them later.
        unsafe { call!(munmap(p, l)) }?;
    }
    drop(fd);
    call!(shm_unlink(name.as_str()))?;
    object.disarm(); // removed by the lesson itself
    Ok(())
}

/// A mapping length: never 0.
fn len(n: usize) -> anyhow::Result<NonZeroUsize> {
    NonZeroUsize::new(n).context("a mapping of 0 bytes")
}

/// An address argument as C writes it: `NULL` or `0x7f…`.
fn address(a: &Option<NonZeroUsize>) -> String {
    a.map_or("NULL".into(), |a| format!("{:#x}", a.get()))
}

#[derive(Clone, Copy, PartialEq)]
enum Strategy {
    /// Touch the first page past the old end, as if nothing had changed.
    Touch,
    /// Check the generation, remap if it changed, then read.
    CheckGeneration,
}

/// A peer: a child that maps the object at its old size and waits for go.
struct Peer {
    pid: Pid,
    guard: cleanup::Guard,
    go: OwnedFd,
    report: Report,
}

impl Peer {
    fn start(
        faults: &FaultReport,
        peer: NonNull<libc::c_void>,
        old: usize,
        how: Strategy,
    ) -> anyhow::Result<Peer> {
        let report = Report::new()?;
        let (go_read, go_write) = pipe().call("pipe(go)")?;
        let action = SigAction::new(
            SigHandler::SigAction(fault::report_fault),
            SaFlags::SA_SIGINFO | SaFlags::SA_RESETHAND,
            SigSet::empty(),
        );
        faults.clear();
        // The generation the peer's mapping goes with, read when it was made
        // (before the fork: the child may first run after the growth).
        // SAFETY: the header is in the peer's live mapping.
        let mapped_at = unsafe { word(peer, GENERATION) }.load(Ordering::Acquire);
        // SAFETY: the child does sigaction, atomic loads and stores, read(2),
        // write(2), mremap(2) and _exit: all async-signal-safe system calls.
        match unsafe { call!(fork()) }? {
            ForkResult::Child => {
                // ANCHOR: peer
                common::children::die_with_parent();
                util::wait_for_go(&go_read); // the owner grows the object meanwhile
                if how == Strategy::Touch {
                    // SAFETY: report_fault is async-signal-safe.
                    unsafe { sigaction(Signal::SIGSEGV, &action) }.ok();
                    let past = peer.as_ptr().cast::<u8>().wrapping_add(old);
                    // SAFETY: deliberately outside any mapping: this faults,
                    // and the fault kills only this child.
                    unsafe { past.cast::<u64>().write_volatile(1) };
                    // SAFETY: _exit runs no destructor of the parent's objects.
                    unsafe { libc::_exit(0) }
                }
                // SAFETY: as above: the header is in the live mapping.
                let generation = unsafe { word(peer, GENERATION) }.load(Ordering::Acquire);
                let (mut p, mut size) = (peer, old as u64);
                if generation != mapped_at {
                    // SAFETY: the header is in the live mapping. The load is
                    // ordered by the acquire load of the generation above.
                    size = unsafe { word(peer, SIZE) }.load(Ordering::Relaxed);
                    // SAFETY: peer/old is exactly this child's mapping.
                    match unsafe {
                        mremap(peer, old, size as usize, MRemapFlags::MREMAP_MAYMOVE, None)
                    } {
                        Ok(q) => p = q,
                        // SAFETY: _exit ends the child without destructors.
                        Err(e) => unsafe { libc::_exit(e as i32) },
                    }
                }
                // SAFETY: old < size: inside the (re)mapped range.
                let value = unsafe { word(p, old) }.load(Ordering::Relaxed);
                report.send(&[
                    mapped_at as i64,
                    generation as i64,
                    size as i64,
                    value as i64,
                ]);
                // SAFETY: _exit runs no destructor of the parent's objects.
                unsafe { libc::_exit(0) }
                // ANCHOR_END: peer
            }
            ForkResult::Parent { child } => {
                let guard = cleanup::child(child);
                let plan = match how {
                    Strategy::Touch => format!("will touch offset {old} as it is"),
                    Strategy::CheckGeneration => "will check the generation first".into(),
                };
                fact(&format!("peer {child}"), plan);
                Ok(Peer {
                    pid: child,
                    guard,
                    go: go_write,
                    report,
                })
            }
        }
    }

    /// Say go, and wait; a careful peer's four numbers land in `got`.
    fn finish(self, got: Option<&mut [i64; 4]>) -> anyhow::Result<WaitStatus> {
        write(&self.go, b"x").call("write(go, \"x\", 1)")?;
        let received = got.map(|got| {
            let v = self.report.receive(4)?;
            got.copy_from_slice(&v);
            anyhow::Ok(())
        });
        let status = util::reap(self.pid, self.guard)?;
        if let Some(Err(e)) = received {
            anyhow::bail!("{e}: the peer {}", fault::describe(status));
        }
        // Printed after waitpid: the child's handler writes its own line to
        // stderr meanwhile, and this step line should not be cut in two.
        step(format!("write(go, \"x\", 1); waitpid({})", self.pid)).ok(fault::describe(status));
        Ok(status)
    }
}
