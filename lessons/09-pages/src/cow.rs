//! Part 2: fork and copy-on-write, counted in page faults.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use common::call;
use common::narrate::{compare, explain, fact, section, subsection, warn};
use common::pages::minor_faults;
use common::{cleanup, names, shm};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, mmap_anonymous, munmap, shm_unlink};
use nix::unistd::{ForkResult, close, fork, ftruncate};

use crate::util::{self, Report, word};

/// The accesses the child measures, in order, and what each costs here.
pub const ACCESSES: [&str; 5] = [
    "read the private page",
    "write the private page",
    "write the private page again",
    "read the shared page",
    "write the shared page",
];

/// One access to a word of a page.
#[derive(Clone, Copy)]
enum Access {
    Read,
    Write(u64),
}
use Access::{Read, Write};

/// The minor faults one access costs: `ru_minflt` after it minus before.
/// One function for every access, so that the child runs no code it has not
/// run before (after fork, even a code page can cost a fault of its own).
#[inline(never)]
fn faults(word: &AtomicU64, access: Access) -> i64 {
    let before = minor_faults();
    match access {
        Read => {
            black_box(word.load(Ordering::SeqCst));
        }
        Write(v) => word.store(v, Ordering::SeqCst),
    }
    minor_faults() - before
}

pub fn part2(page: usize) -> anyhow::Result<()> {
    // ANCHOR: two_pages
    section("2. fork and copy-on-write, counted in page faults");
    let len = NonZeroUsize::new(page).context("the page size is 0")?;
    let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY: a new anonymous mapping overlaps nothing of Rust's; it is only
    // accessed through util::word.
    let private = unsafe {
        call!(mmap_anonymous(
            None,
            len,
            rw,
            MapFlags::MAP_PRIVATE | MapFlags::MAP_ANONYMOUS
        ))
    }?;
    // SAFETY: as above.
    let shared = unsafe {
        call!(mmap_anonymous(
            None,
            len,
            rw,
            MapFlags::MAP_SHARED | MapFlags::MAP_ANONYMOUS
        ))
    }?;
    // SAFETY: both are live, aligned, page-long mappings until the munmaps.
    let (pr, sh) = unsafe { (word(private, 0), word(shared, 0)) };
    pr.store(1, Ordering::SeqCst); // the parent touches both pages first
    sh.store(1, Ordering::SeqCst);
    fact("before fork, the parent stored", "1 in each page");
    // ANCHOR_END: two_pages

    explain(
        "The child counts its own minor page faults (ru_minflt from getrusage) before and \
         after each single access, and reports the differences through a pipe:",
    );
    // ANCHOR: count
    let report = Report::new()?;
    // SAFETY: the child does atomic loads and stores, getrusage(2) and
    // write(2) (plain system calls: no lock, no allocation) and _exit.
    let child = match unsafe { call!(fork()) }? {
        ForkResult::Child => {
            let warm = AtomicU64::new(0); // on this child's stack
            faults(&warm, Read); // run the measuring code once: its code,
            faults(&warm, Write(1)); // its stack, getrusage's, are now mapped
            let cost = [
                faults(pr, Read),
                faults(pr, Write(2)),
                faults(pr, Write(3)),
                faults(sh, Read),
                faults(sh, Write(2)),
            ];
            report.send(&cost);
            // SAFETY: _exit runs no destructor of the parent's objects.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => child,
    };
    let guard = cleanup::child(child);
    let cost = report.receive(ACCESSES.len())?;
    util::reap_ok(child, guard)?;
    for (what, n) in ACCESSES.iter().zip(&cost) {
        fact(&format!("the child: {what}"), format!("{n} minor fault(s)"));
    }
    fact(
        "after the child exited, the parent reads",
        format!(
            "private {}, shared {}",
            pr.load(Ordering::SeqCst),
            sh.load(Ordering::SeqCst)
        ),
    );
    // ANCHOR_END: count
    explain_cost(&cost, pr.load(Ordering::SeqCst), sh.load(Ordering::SeqCst));
    for (m, _) in [(private, "private"), (shared, "shared")] {
        // SAFETY: exactly the mapping made above; pr and sh are not used
        // after this.
        unsafe { call!(munmap(m, page)) }?;
    }
    article_with_map_private(page)
}

/// Conclusions from the counts the child reported.
fn explain_cost(cost: &[i64], private_now: u64, shared_now: u64) {
    if cost == [0, 1, 0, 1, 0] {
        explain(
            "Reading the private page cost nothing: fork copied its page-table entry, marked \
             read-only. The first write cost exactly one fault: the kernel copied the page \
             for the child (copy-on-write) and the second write cost nothing. The shared page \
             is different: fork does not copy page-table entries of shared mappings (the \
             kernel fills them on demand: vma_needs_copy in mm/memory.c), so the first read \
             cost one fault that maps the same page, copying nothing. The write then cost no \
             fault at all: the read fault had mapped the page writable already, since tmpfs \
             has no write-back to a disk, so the kernel need not see a first write \
             (vma_wants_writenotify in mm/vma.c).",
        );
    } else {
        warn(format!(
            "the counts differ from a quiet machine's 0, 1, 0, 1, 0: {cost:?} (transparent \
             huge pages, or memory pressure, can change them)"
        ));
    }
    if private_now == 1 && shared_now == 2 {
        explain(
            "After the child exited, the parent still reads 1 in its private page (the \
             child's 2 and 3 went to the child's copy) and 2 in the shared page.",
        );
    } else {
        warn(format!(
            "unexpected: private {private_now}, shared {shared_now}"
        ));
    }
}

// ANCHOR: article_private
/// The article's program, with `MAP_PRIVATE` instead of `MAP_SHARED`.
fn article_with_map_private(page: usize) -> anyhow::Result<()> {
    subsection("the article's program, with MAP_PRIVATE instead of MAP_SHARED");
    let name = names::unique_name(9, "private");
    let (fd, object) = shm::create(&name)?;
    call!(ftruncate(&fd, page as libc::off_t))?;
    let len = NonZeroUsize::new(page).context("the page size is 0")?;
    let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY: a new mapping overlaps nothing of Rust's; accessed through word.
    let ptr = unsafe { call!(mmap(None, len, rw, MapFlags::MAP_PRIVATE, &fd, 0)) }?;
    // SAFETY: live, aligned and a page long until munmap below.
    let d = unsafe { word(ptr, 0) };
    // SAFETY: the child does one atomic store and _exit.
    let child = match unsafe { call!(fork()) }? {
        ForkResult::Child => {
            d.store(0xdeadbeef, Ordering::SeqCst); // *d = 0xdeadbeef, as the article
            // SAFETY: _exit runs no destructor of the parent's objects.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => child,
    };
    let guard = cleanup::child(child);
    util::reap_ok(child, guard)?;
    let value = d.load(Ordering::SeqCst);
    println!("child wrote {value:#x}");
    // ANCHOR_END: article_private
    compare(
        "Child wrote 0xdeadbeef (with MAP_SHARED)",
        &format!("with MAP_PRIVATE the parent reads {value:#x}"),
        "the child's store went into its own copy of the page, made at that store and freed \
         when it exited. The article needs MAP_SHARED for the parent to see the child's write.",
    );
    // SAFETY: exactly the mapping made above; d is not used after this.
    unsafe { call!(munmap(ptr, page)) }?;
    call!(close(fd))?;
    call!(shm_unlink(name.as_str()))?;
    object.disarm(); // removed by the lesson itself
    Ok(())
}
