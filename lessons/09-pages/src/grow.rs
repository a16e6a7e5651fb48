//! Part 6: growing a segment while a peer maps it.

use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use anyhow::Context;
use common::fault::{self, FaultReport};
use common::narrate::{self, evidence, explain, fact, section, step, subsection, warn};
use common::report::CallResult;
use common::{cleanup, inspect, names, shm};
use nix::sys::mman::{
    MRemapFlags, MapFlags, ProtFlags, mmap, mmap_anonymous, mremap, munmap, shm_unlink,
};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::wait::WaitStatus;
use nix::unistd::{ForkResult, Pid, fork, ftruncate, pipe, write};

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
    let s = step(format!(
        "ftruncate({}, {old})   # a header page and a data page",
        fd.as_raw_fd()
    ));
    s.check(ftruncate(&fd, old as libc::off_t))?;
    s.ok(0);
    let owner = map(&fd, None, old, MapFlags::MAP_SHARED)?;
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

    // ANCHOR: peer_map
    explain(
        "The peer maps the object as it is now: two pages. (We put its mapping at the start \
         of a range we reserved and then released, so that nothing else is mapped right \
         after it: otherwise a touch past its end could land in another mapping, silently.)",
    );
    let s = step(format!(
        "mmap(NULL, {new}, PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0)   # reserve"
    ));
    let len = NonZeroUsize::new(new).context("size 0")?;
    // SAFETY: a new PROT_NONE mapping overlaps nothing of Rust's.
    let reserve =
        s.check(unsafe { mmap_anonymous(None, len, ProtFlags::PROT_NONE, MapFlags::MAP_PRIVATE) })?;
    s.ok(format!("{:p}", reserve.as_ptr()));
    let peer = map(
        &fd,
        Some(reserve),
        old,
        MapFlags::MAP_SHARED | MapFlags::MAP_FIXED,
    )?;
    let tail = NonNull::new(peer.as_ptr().cast::<u8>().wrapping_add(old).cast()).context("null")?;
    let s = step(format!(
        "munmap({:p}, {})   # release the rest",
        tail.as_ptr(),
        new - old
    ));
    // SAFETY: the tail of our own reservation; nothing points into it.
    s.check(unsafe { munmap(tail, new - old) })?;
    s.ok(0);
    evidence(
        &format!(
            "grep -A1 {:x} /proc/self/maps   # the peer's mapping, and what follows",
            peer.as_ptr() as usize
        ),
        [
            inspect::maps_line_for(peer.as_ptr() as usize).unwrap_or_default(),
            inspect::maps_line_for(tail.as_ptr() as usize)
                .unwrap_or_else(|| format!("{:x}: nothing mapped", tail.as_ptr() as usize)),
        ],
    );
    // ANCHOR_END: peer_map

    let naive = Peer::start(&faults, peer, old, Strategy::Touch)?;
    let careful = Peer::start(&faults, peer, old, Strategy::CheckGeneration)?;

    // ANCHOR: grow
    subsection("the owner grows the object to four pages");
    let s = step(format!("ftruncate({}, {new})", fd.as_raw_fd()));
    s.check(ftruncate(&fd, new as libc::off_t))?;
    s.ok(0);
    let s = step(format!(
        "mremap({:p}, {old}, {new}, MREMAP_MAYMOVE)",
        owner.as_ptr()
    ));
    // SAFETY: owner/old is exactly our mapping; after this only the new
    // address is used.
    let owner = s.check(unsafe { mremap(owner, old, new, MRemapFlags::MREMAP_MAYMOVE, None) })?;
    s.ok(format!("{:p}", owner.as_ptr()));
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

    for (p, l, what) in [(owner, new, "owner"), (peer, old, "peer")] {
        let s = step(format!("munmap({:p}, {l})   # {what}", p.as_ptr()));
        // SAFETY: exactly mappings made above; nothing points into them later.
        s.check(unsafe { munmap(p, l) })?;
        s.ok(0);
    }
    drop(fd);
    let s = step(format!("shm_unlink({name:?})"));
    s.check(shm_unlink(name.as_str()))?;
    object.disarm(); // removed by the lesson itself
    s.ok(0);
    narrate::end_pending();
    Ok(())
}

/// `mmap(addr, len, PROT_READ|PROT_WRITE, flags, fd, 0)`, narrated.
fn map(
    fd: &OwnedFd,
    at: Option<NonNull<libc::c_void>>,
    len: usize,
    flags: MapFlags,
) -> anyhow::Result<NonNull<libc::c_void>> {
    let addr = at.map_or("NULL".to_string(), |a| format!("{:p}", a.as_ptr()));
    let s = step(format!(
        "mmap({addr}, {len}, PROT_READ|PROT_WRITE, {}, {}, 0)",
        narrate::flags(flags),
        fd.as_raw_fd()
    ));
    let length = NonZeroUsize::new(len).context("length 0")?;
    let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let addr = at.and_then(|a| NonZeroUsize::new(a.as_ptr() as usize));
    // SAFETY: either a new mapping where the kernel picks, or MAP_FIXED over
    // our own PROT_NONE reservation, which no Rust object lives in.
    let p = s.check(unsafe { mmap(addr, length, rw, flags, fd, 0) })?;
    s.ok(format!("{:p}", p.as_ptr()));
    Ok(p)
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
        let s = step("fork()");
        // ANCHOR: peer
        // SAFETY: the child does sigaction, atomic loads and stores, read(2),
        // write(2), mremap(2) and _exit: all async-signal-safe system calls.
        match s.check(unsafe { fork() })? {
            ForkResult::Child => {
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
                    size = unsafe { word(peer, SIZE) }.load(Ordering::Relaxed); // ordered by the acquire load
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
            }
            // ANCHOR_END: peer
            ForkResult::Parent { child } => {
                let guard = cleanup::child(child);
                let plan = match how {
                    Strategy::Touch => format!("will touch offset {old} as it is"),
                    Strategy::CheckGeneration => "will check the generation first".into(),
                };
                s.ok(format!("{child}   # a peer that {plan}"));
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
