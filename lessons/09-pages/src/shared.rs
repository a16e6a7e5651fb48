//! Part 1: `MAP_SHARED` and `MAP_PRIVATE` on the same POSIX object.

use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;

use anyhow::Context;
use common::args::{Hold, hold_point};
use common::call;
use common::narrate::{self, evidence, explain, fact, note, section, warn};
use common::pages::{self, PagemapEntry};
use common::{cleanup, names, shm};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_unlink};
use nix::sys::uio::pread;
use nix::unistd::{ForkResult, Pid, close, fork, ftruncate, geteuid, getpid, pipe, write};

use crate::util::{self, Report, word};

/// What the parent stores first, through its `MAP_SHARED` mapping.
pub const FIRST: u64 = 0x1111;
/// What the child stores through its `MAP_SHARED` mapping (the article's).
pub const VIA_SHARED: u64 = 0xdeadbeef;
/// What the child stores through its `MAP_PRIVATE` mapping.
pub const VIA_PRIVATE: u64 = 0xc0ffee;

/// The smaps fields that tell shared and private pages apart.
const FIELDS: [&str; 4] = ["Rss", "Shared_Dirty", "Private_Dirty", "Shared_Clean"];

pub fn part1(page: usize, hold: Hold) -> anyhow::Result<()> {
    // ANCHOR: map_both
    section("1. MAP_SHARED and MAP_PRIVATE on the same object");
    let name = names::unique_name(9, "same");
    let file = names::file_name(&name).to_string();
    let (fd, object) = shm::create(&name)?;
    call!(ftruncate(&fd, page as libc::off_t))?;
    let len = NonZeroUsize::new(page).context("the page size is 0")?;
    let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY: a new mapping at an address the kernel picks overlaps nothing
    // of Rust's; it is only accessed through util::word (atomics).
    let shared = unsafe { call!(mmap(None, len, rw, MapFlags::MAP_SHARED, &fd, 0)) }?;
    // SAFETY: as above.
    let private = unsafe { call!(mmap(None, len, rw, MapFlags::MAP_PRIVATE, &fd, 0)) }?;
    // SAFETY: both mappings are live, page-aligned and a page long until the
    // munmap calls at the end of this part.
    let (sh, pr) = unsafe { (word(shared, 0), word(private, 0)) };
    sh.store(FIRST, Ordering::SeqCst); // the parent writes through MAP_SHARED
    // ANCHOR_END: map_both
    fact(
        "the parent stored through MAP_SHARED",
        format!(
            "{FIRST:#x}; through MAP_PRIVATE it now reads {:#x}",
            pr.load(Ordering::SeqCst)
        ),
    );
    explain(
        "Both mappings show the same object. A MAP_PRIVATE mapping reads the object's page \
         until this process writes to it; only then does it get a copy of its own.",
    );

    // ANCHOR: child_writes
    let report = Report::new()?;
    let (go_read, go_write) = call!(pipe())?;
    // SAFETY: the child does atomic stores and loads, write(2), read(2) and
    // _exit: all async-signal-safe; no lock, no allocation.
    let child = match unsafe { call!(fork()) }? {
        ForkResult::Child => {
            common::children::die_with_parent();
            sh.store(VIA_SHARED, Ordering::SeqCst); // *(u64 *)shared = 0xdeadbeef
            pr.store(VIA_PRIVATE, Ordering::SeqCst); // *(u64 *)private = 0xc0ffee
            let seen = [sh.load(Ordering::SeqCst), pr.load(Ordering::SeqCst)];
            report.send(&seen.map(|v| v as i64));
            util::wait_for_go(&go_read); // stay alive while the parent looks
            // SAFETY: _exit runs no destructor of the parent's objects.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => child,
    };
    let guard = cleanup::child(child);
    explain(format!(
        "the child stores {VIA_SHARED:#x} through MAP_SHARED and {VIA_PRIVATE:#x} through \
         MAP_PRIVATE, reports what it reads back through a pipe, and waits."
    ));
    // ANCHOR_END: child_writes
    let seen = report.receive(2)?;
    fact(
        "the child reads",
        format!("MAP_SHARED {:#x}, MAP_PRIVATE {:#x}", seen[0], seen[1]),
    );
    let (our_shared, our_private) = (sh.load(Ordering::SeqCst), pr.load(Ordering::SeqCst));
    fact(
        "the parent reads",
        format!("MAP_SHARED {our_shared:#x}, MAP_PRIVATE {our_private:#x}"),
    );
    let mut buf = [0u8; 8];
    call!(pread(&fd, &mut buf[..], 0))?;
    let in_object = u64::from_ne_bytes(buf);
    fact("the object holds", format!("{in_object:#x}"));
    evidence(
        &format!("od -A x -t x8 -N 8 /dev/shm/{file}"),
        [format!("000000 {in_object:016x}"), "000008".to_string()],
    );
    conclude_who_saw(our_shared, our_private, in_object);

    // ANCHOR: smaps
    let pid = getpid();
    for (label, addr) in [("MAP_SHARED", shared), ("MAP_PRIVATE", private)] {
        let addr = addr.as_ptr() as usize;
        match pages::smaps_of(child, addr) {
            Some(sm) => evidence(
                &format!("grep -A 20 ^{addr:x} /proc/{child}/smaps   # the child's {label}"),
                std::iter::once(sm.header.clone()).chain(sm.lines(&FIELDS)),
            ),
            None => warn(format!(
                "no smaps block for {addr:#x} in /proc/{child}/smaps"
            )),
        }
    }
    explain(
        "smaps counts a page as Shared when more than one process maps it, and as Private \
         when only this one does (Documentation/filesystems/proc.rst). The child's MAP_SHARED page is the object's page, mapped \
         by the parent too: Shared_Dirty. Its MAP_PRIVATE page is the copy the kernel made \
         at the child's first write, mapped by the child alone: Private_Dirty.",
    );
    // ANCHOR_END: smaps
    frames(
        pid,
        child,
        shared.as_ptr() as usize,
        private.as_ptr() as usize,
    );

    if hold == Hold::No {
        note("run with --part 1 --hold 30 to look at both processes' smaps yourself");
    } else {
        hold_point(
            hold,
            "sleep(50)",
            &[
                format!("grep -A 20 {file} /proc/{child}/smaps"),
                format!("grep {file} /proc/{pid}/maps /proc/{child}/maps"),
                format!("od -A x -t x8 -N 8 /dev/shm/{file}"),
            ],
        );
    }

    // ANCHOR: end1
    call!(write(&go_write, &b"x"[..]))?; // the child may exit now
    util::reap_ok(child, guard)?;
    for (m, _) in [(shared, "shared"), (private, "private")] {
        // SAFETY: exactly the mapping made above; no reference into it is
        // used after this (sh and pr end here).
        unsafe { call!(munmap(m, page)) }?;
    }
    call!(close(fd))?;
    call!(shm_unlink(name.as_str()))?;
    object.disarm(); // removed by the lesson itself
    // ANCHOR_END: end1
    Ok(())
}

/// Say, from the numbers just read, who saw which write.
fn conclude_who_saw(our_shared: u64, our_private: u64, in_object: u64) {
    if our_shared == VIA_SHARED && in_object == VIA_SHARED && our_private != VIA_PRIVATE {
        explain(format!(
            "The child's MAP_SHARED store reached the object and the parent. Its MAP_PRIVATE \
             store ({VIA_PRIVATE:#x}) reached nobody: it went into a copy of the page that only \
             the child maps."
        ));
    } else {
        warn(format!(
            "unexpected: the parent read {our_shared:#x} (shared) and {our_private:#x} \
             (private), the object holds {in_object:#x}"
        ));
    }
    if our_private == VIA_SHARED {
        explain(
            "And the parent's MAP_PRIVATE mapping shows the child's MAP_SHARED store: the \
             parent never wrote through it, so it still maps the object's page. MAP_PRIVATE \
             is private for writes only. POSIX leaves it unspecified whether such a mapping \
             sees later changes to the object; on Linux it does, until the first write.",
        );
    }
}

/// The physical frames behind the pages, from `/proc/PID/pagemap`.
fn frames(parent: Pid, child: Pid, shared: usize, private: usize) {
    let read = |pid: Pid, addr: usize| pages::pagemap_of(pid, addr);
    let rows = [
        ("parent", "MAP_SHARED", read(parent, shared)),
        ("child", "MAP_SHARED", read(child, shared)),
        ("parent", "MAP_PRIVATE", read(parent, private)),
        ("child", "MAP_PRIVATE", read(child, private)),
    ];
    let lines: Vec<String> = rows
        .iter()
        .map(|(who, what, e)| match e {
            Ok(e) => format!("{who:<6} {what:<11} {e}"),
            Err(err) => format!("{who:<6} {what:<11} unreadable: {err}"),
        })
        .collect();
    evidence(
        "pread(/proc/PID/pagemap, &entry, 8, addr / page_size * 8)   # per page",
        lines,
    );
    let entries: Vec<Option<PagemapEntry>> = rows
        .iter()
        .map(|(_, _, e)| e.as_ref().ok().copied())
        .collect();
    let [Some(ps), Some(cs), Some(_), Some(cp)] = entries[..] else {
        return;
    };
    if ps.pfn() != 0 && cs.pfn() != 0 && cp.pfn() != 0 {
        let same = ps.pfn() == cs.pfn();
        let copied = cp.pfn() != cs.pfn();
        explain(format!(
            "The MAP_SHARED page: frame {:#x} in the parent and {:#x} in the child, {}. The \
             child's MAP_PRIVATE page: frame {:#x}, {}.",
            ps.pfn(),
            cs.pfn(),
            if same {
                "the same physical memory"
            } else {
                "NOT the same (unexpected)"
            },
            cp.pfn(),
            if copied {
                "a different frame: the copy made on its first write"
            } else {
                "the same frame (unexpected)"
            },
        ));
    } else {
        explain(format!(
            "The frame numbers read as 0: this process (euid {}) lacks CAP_SYS_ADMIN (in the \
             host's user namespace; root in a container may lack it too). Since Linux 4.2 the \
             kernel zeroes the PFN field of pagemap for such readers, because physical \
             addresses help Rowhammer attacks (Documentation/admin-guide/mm/pagemap.rst). Run \
             as root on the host to see them. The other bits still speak: the child's \
             MAP_PRIVATE page is exclusive={} ({}), its MAP_SHARED page exclusive={} ({}).",
            geteuid(),
            u8::from(cp.exclusive()),
            mapped_by(cp),
            u8::from(cs.exclusive()),
            mapped_by(cs),
        ));
    }
    narrate::end_pending();
}

/// What pagemap's exclusive bit (56) says of a page.
fn mapped_by(e: PagemapEntry) -> &'static str {
    if e.exclusive() {
        "mapped by one process only"
    } else {
        "mapped by more than one process"
    }
}
