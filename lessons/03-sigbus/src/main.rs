//! Lesson 3: SIGBUS, and why the article's ftruncate matters.
//!
//! The article says that without `ftruncate` "a bus error is reported". This
//! lesson shows exactly when: not at `mmap`, which succeeds, but at the first
//! touch of a page that lies beyond the end of the object. Every faulting
//! access happens in a forked child; the child's `SA_SIGINFO` handler records
//! `si_code` and `si_addr`, and the parent reports what killed the child.
//!
//! 1. no ftruncate: a one-page mapping of a 0-byte object, the first write;
//! 2. a 100-byte object: offset 200 works, one page later SIGBUS;
//! 3. the fix: ftruncate to the page size, the same write succeeds;
//! 4. mmap with length 0: EINVAL;
//! 5. a mapping outlives its object's size: posix_fallocate, fstat, and a
//!    shrink under the mapping.
//!
//! Run it: `cargo run -p lesson-3` (`--part N` for one part, `--hold 30` to
//! inspect parts 1 and 2 from another terminal).

use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::ptr::NonNull;

use anyhow::Context;
use common::args::{Cli, Hold, hold_point};
use common::cleanup::{self, Guard};
use common::fault::{self, Fault, FaultReport};
use common::inspect::show_maps;
use common::narrate::{self, compare, explain, fact, note, section, warn};
use common::report::CallResult;
use common::{attempt, call, children, names, shm};
use nix::errno::Errno;
use nix::fcntl::posix_fallocate;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_unlink};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::stat::fstat;
use nix::sys::uio::pread;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, SysconfVar, close, fork, ftruncate, sysconf};

/// What the children write, as in the article.
const MAGIC: u64 = 0xdeadbeef;

/// The size of the object in part 2: less than a page.
const PARTIAL: usize = 100;

/// The offset part 2 reads and writes: past the object's 100 bytes, but in
/// its first (partial) page.
const INSIDE_PAGE: usize = 200;

const ABOUT: &str = "Lesson 3: SIGBUS when ftruncate is skipped. mmap of a 0-byte object \
    succeeds and the first touch kills the process with SIGBUS; a 100-byte object can be used \
    to the end of its page and no further; ftruncate fixes it; mmap of length 0 is EINVAL. \
    Every faulting access happens in a child, and the parent reports what killed it.";

fn main() -> ExitCode {
    common::run(lesson)
}

fn parse_part(s: &str) -> Result<u8, String> {
    match s.parse::<u8>() {
        Ok(n @ 1..=5) => Ok(n),
        _ => Err("the parts are 1 to 5".into()),
    }
}

/// What a child does at `mapping + offset`.
#[derive(Clone, Copy)]
enum Access {
    /// `*(u64 *)addr = v`
    Write(u64),
    /// `old = *(u64 *)addr; *(u64 *)addr = v`; the old value comes back
    /// through the report page.
    ReadWrite(u64),
}

/// How a child's access ended.
struct Touched {
    status: WaitStatus,
    fault: Option<Fault>,
    /// The value a `ReadWrite` child read before writing.
    read: u64,
}

impl Touched {
    fn died_of_sigbus(&self) -> bool {
        matches!(self.status, WaitStatus::Signaled(_, Signal::SIGBUS, _))
    }

    fn exited_cleanly(&self) -> bool {
        matches!(self.status, WaitStatus::Exited(_, 0))
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Write(v) => write!(f, "*(u64 *)p = {v:#x}"),
            Access::ReadWrite(v) => write!(f, "old = *(u64 *)p; *(u64 *)p = {v:#x}"),
        }
    }
}

/// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0)`, as every part maps.
fn map(fd: &OwnedFd, len: usize) -> anyhow::Result<NonNull<libc::c_void>> {
    let length = NonZeroUsize::new(len).context("a mapping needs a length")?;
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY: a fresh mapping at an address the kernel chooses (NULL) cannot
    // overlap any Rust object; it is only touched through raw volatile
    // accesses, and only by children where it may fault.
    unsafe { call!(mmap(None, length, prot, MapFlags::MAP_SHARED, fd, 0)) }
}

/// `munmap`, `close` and `shm_unlink`: the end of a part.
fn remove(
    name: &str,
    fd: OwnedFd,
    guard: Guard,
    ptr: NonNull<libc::c_void>,
    len: usize,
) -> anyhow::Result<()> {
    // SAFETY: ptr/len are exactly a mapping made by map(); no pointer into it
    // is used afterwards.
    unsafe { call!(munmap(ptr, len)) }?;
    call!(close(fd))?;
    call!(shm_unlink(name))?;
    guard.disarm(); // removed by the lesson itself
    Ok(())
}

/// libc's `mmap`, which takes any length: nix's takes a `NonZeroUsize`, so
/// part 4's length 0 would not compile.
mod unchecked {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::ptr::NonNull;

    use nix::errno::Errno;
    use nix::sys::mman::{MapFlags, ProtFlags};

    /// # Safety
    /// As `mmap(2)` without `MAP_FIXED`: the new mapping must only be used
    /// through raw pointers.
    pub unsafe fn mmap(
        addr: Option<NonNull<libc::c_void>>,
        len: usize,
        prot: ProtFlags,
        flags: MapFlags,
        fd: &OwnedFd,
        offset: libc::off_t,
    ) -> Result<NonNull<libc::c_void>, Errno> {
        // SAFETY: without MAP_FIXED (the caller's contract) addr is only a
        // hint: the kernel never replaces an existing mapping.
        let p = unsafe {
            libc::mmap(
                addr.map_or(std::ptr::null_mut(), NonNull::as_ptr),
                len,
                prot.bits(),
                flags.bits(),
                fd.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            Err(Errno::last())
        } else {
            NonNull::new(p).ok_or(Errno::EINVAL)
        }
    }
}

/// Fork a child that installs the fault handler and does `access` at
/// `mapping + offset`; wait for it; report how it ended and what its
/// handler saw. The parent never touches the address itself.
fn touch_in_child(
    report: &FaultReport,
    mapping: NonNull<libc::c_void>,
    offset: usize,
    access: Access,
) -> anyhow::Result<Touched> {
    let p = mapping
        .as_ptr()
        .cast::<u8>()
        .wrapping_add(offset)
        .cast::<u64>();
    let action = SigAction::new(
        SigHandler::SigAction(fault::report_fault),
        SaFlags::SA_SIGINFO | SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    report.clear();
    explain(format!(
        "the child: sigaction(SIGBUS and SIGSEGV, SA_SIGINFO|SA_RESETHAND), then {access} \
         with p = mapping + {offset}, then _exit(0)"
    ));
    // ANCHOR: touch
    // `after`: the child may write its handler's line before we print ours.
    // SAFETY: the child only does async-signal-safe work: prctl, sigaction,
    // one volatile load and store, atomic stores and _exit. It touches no
    // lock and no allocator.
    let child = match unsafe { call!(after fork()) }? {
        ForkResult::Parent { child } => child,
        ForkResult::Child => {
            children::die_with_parent();
            // SAFETY: sigaction is async-signal-safe, and report_fault only
            // does atomic stores, getpid and write.
            unsafe {
                let _ = sigaction(Signal::SIGBUS, &action);
                let _ = sigaction(Signal::SIGSEGV, &action);
            }
            // SAFETY: p lies inside a MAP_SHARED mapping of this process
            // (offset < its length) and is 8-byte aligned; no Rust reference
            // points there. If the page is beyond the object's end, the
            // access raises SIGBUS, which is what this child is for.
            unsafe {
                if let Access::ReadWrite(_) = access {
                    report.set_progress(p.read_volatile());
                }
                let (Access::Write(v) | Access::ReadWrite(v)) = access;
                p.write_volatile(v);
                libc::_exit(0)
            }
        }
    };
    let guard = cleanup::child(child);
    // `after`: the child's handler writes to the terminal while we wait.
    let status = call!(after waitpid(child, None))?;
    guard.disarm(); // reaped: the pid is no longer ours to signal
    // ANCHOR_END: touch
    let fault = report.fault();
    if let Some(f) = fault {
        let at = f.addr.wrapping_sub(mapping.as_ptr() as usize);
        fact("the child's handler saw", format!("{f} (mapping + {at})"));
    }
    let read = report.progress();
    Ok(Touched {
        status,
        fault,
        read,
    })
}

/// True if the child exited with status 0; if not, say what happened.
fn expect_clean_exit(t: &Touched) -> bool {
    let clean = t.exited_cleanly();
    if !clean {
        warn(format!(
            "expected exit 0; this machine gave: {}",
            fault::describe(t.status)
        ));
    }
    clean
}

/// Say whether the child died as the lesson expects.
fn expect_sigbus(t: &Touched, at: usize) {
    match t.fault {
        Some(f) if t.died_of_sigbus() && f.code == libc::BUS_ADRERR && f.addr == at => explain(
            "SIGBUS with si_code BUS_ADRERR (\"nonexistent physical address\"), at exactly the \
             address the child wrote: the page is mapped, but no part of the object lies there.",
        ),
        _ => warn(format!(
            "expected SIGBUS with BUS_ADRERR at {at:#x}; this machine gave: {}",
            fault::describe(t.status)
        )),
    }
}

/// The article has no sleep here: hold only when asked, and say how.
fn hold(hold: Hold, part: u8, name: &str) {
    let file = names::file_name(name);
    if hold == Hold::No {
        note(format!(
            "to look at this object from a second terminal, run with --part {part} --hold 30"
        ));
    } else {
        hold_point(
            hold,
            "sleep(50)",
            &[
                format!("ls -l /dev/shm/{file}"),
                format!("grep {file} /proc/{}/maps", std::process::id()),
                format!("od -A d -t x1 /dev/shm/{file}   # the object's bytes"),
            ],
        );
    }
}

/// The value at `mapping + offset`, read after the child that wrote it
/// has exited.
fn read_at(mapping: NonNull<libc::c_void>, offset: usize) -> u64 {
    // SAFETY: the caller's child read and wrote this address without a fault
    // and has been reaped (waitpid orders its store before this load): the
    // page is backed and no one else writes it now.
    unsafe {
        mapping
            .as_ptr()
            .cast::<u8>()
            .add(offset)
            .cast::<u64>()
            .read_volatile()
    }
}

fn lesson() -> anyhow::Result<()> {
    let args = Cli::new("lesson-3", ABOUT)
        .hold()
        .option_with(
            "--part",
            "N",
            "run only part N: 1 no ftruncate, 2 partial page, 3 the fix, 4 mmap length 0, \
             5 a mapping outlives its object's size",
            parse_part,
        )
        .parse();
    let only = args.get::<u8>("--part");
    let runs = |n: u8| only.is_none_or(|p| p == n);

    narrate::title(
        "lesson-3",
        "SIGBUS, and why ftruncate matters",
        "The article: \"If the ftruncate function is not executed, a bus error is reported.\" \
         Here is when, exactly, and why. Every access that may fault happens in a forked child \
         whose SIGBUS handler reports si_code and si_addr; this process reports how the child \
         ended and never faults itself.",
    );

    let page = call!(sysconf(SysconfVar::PAGE_SIZE))?.context("no page size")? as usize;
    let report = FaultReport::new()
        .call("mmap(NULL, page, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0)")?;
    explain(
        "Before any fork we also map one MAP_SHARED|MAP_ANONYMOUS page (common::fault): the \
         children's SIGBUS handler stores si_code and si_addr there for us to read.",
    );

    // ANCHOR: part1
    if runs(1) {
        section("1. No ftruncate: mmap succeeds, the first write dies");
        let name = names::unique_name(3, "nosize");
        let (fd, guard) = shm::create(&name)?;
        call!(fstat(&fd))?;
        let ptr = map(&fd, page)?;
        show_maps(names::file_name(&name), ptr.as_ptr());
        explain("mmap checks the descriptor, the protection and the length, not the size.");
        let t = touch_in_child(&report, ptr, 0, Access::Write(MAGIC))?;
        expect_sigbus(&t, ptr.as_ptr() as usize);
        compare(
            "If the ftruncate function is not executed, a bus error is reported.",
            &format!(
                "mmap succeeded; the first write: {}",
                fault::describe(t.status)
            ),
            "no part of the 0-byte object lies behind the page; the kernel finds out at the \
             page fault, and a signal is the only way it can tell the process.",
        );
        hold(args.hold(), 1, &name);
        remove(&name, fd, guard, ptr, page)?;
    }
    // ANCHOR_END: part1

    // ANCHOR: part2
    if runs(2) {
        section(format!(
            "2. A {PARTIAL}-byte object: usable to the end of its page"
        ));
        let name = names::unique_name(3, "partial");
        let (fd, guard) = shm::create(&name)?;
        call!(ftruncate(&fd, PARTIAL as libc::off_t))?;
        let len = 2 * page; // the second page lies wholly beyond the object
        let ptr = map(&fd, len)?;
        show_maps(names::file_name(&name), ptr.as_ptr());

        narrate::subsection(format!(
            "offset {INSIDE_PAGE}: past the object, inside its page"
        ));
        let t = touch_in_child(&report, ptr, INSIDE_PAGE, Access::ReadWrite(MAGIC))?;
        if expect_clean_exit(&t) {
            let now = read_at(ptr, INSIDE_PAGE);
            fact(
                "the child read, then we read",
                format!("{:#x}, {now:#x}", t.read),
            );
            call!(fstat(&fd))?;
            let mut buf = vec![0u8; page];
            let n = call!(pread(&fd, buf.as_mut_slice(), 0))?;
            explain(format!(
                "The page exists to its end, zero-filled and shared, but it is not the object: \
                 st_size stays {PARTIAL}, and pread returns {n} bytes, not the child's value."
            ));
        }
        // ANCHOR_END: part2
        // ANCHOR: part2_beyond
        narrate::subsection(format!("offset {}: one page later", page + INSIDE_PAGE));
        let at = ptr.as_ptr() as usize + page + INSIDE_PAGE;
        let t = touch_in_child(&report, ptr, page + INSIDE_PAGE, Access::Write(MAGIC))?;
        expect_sigbus(&t, at);
        hold(args.hold(), 2, &name);
        remove(&name, fd, guard, ptr, len)?;
    }
    // ANCHOR_END: part2_beyond

    // ANCHOR: part3
    if runs(3) {
        section("3. The fix: ftruncate first, and the same write succeeds");
        let name = names::unique_name(3, "sized");
        let (fd, guard) = shm::create(&name)?;
        call!(ftruncate(&fd, page as libc::off_t))?;
        call!(fstat(&fd))?;
        let ptr = map(&fd, page)?;
        let t = touch_in_child(&report, ptr, 0, Access::Write(MAGIC))?;
        if expect_clean_exit(&t) {
            println!("child wrote {:#x}", read_at(ptr, 0));
        }
        remove(&name, fd, guard, ptr, page)?;
    }
    // ANCHOR_END: part3

    // ANCHOR: part4
    if runs(4) {
        section("4. mmap with length 0");
        let name = names::unique_name(3, "len0");
        let (fd, guard) = shm::create(&name)?;
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        // SAFETY: a new mapping at an address the kernel chooses; with length
        // 0 it maps nothing (EINVAL), and a mapping would never be touched.
        let r = unsafe { attempt!(unchecked::mmap(None, 0, prot, MapFlags::MAP_SHARED, &fd, 0)) };
        match r {
            Err(Errno::EINVAL) => explain(
                "A mapping of nothing is refused (since Linux 2.6.12), so mapping \"the whole \
                 object\" by st_size fails on an empty one. In Rust it does not even compile: \
                 nix takes the length as a NonZeroUsize.",
            ),
            other => warn(format!("expected EINVAL; this machine gave {other:?}")),
        }
        call!(close(fd))?;
        call!(shm_unlink(name.as_str()))?;
        guard.disarm();
    }
    // ANCHOR_END: part4

    // ANCHOR: part5
    if runs(5) {
        section("5. A mapping outlives its object's size");
        let name = names::unique_name(3, "shrunk");
        let (fd, guard) = shm::create(&name)?;
        call!(posix_fallocate(&fd, 0, page as libc::off_t))?;
        explain("posix_fallocate reserves the pages too: on a full tmpfs it fails with ENOSPC.");
        call!(fstat(&fd))?;
        let ptr = map(&fd, page)?;
        call!(ftruncate(&fd, 0) => |_| "0 (as another process holding the object could do)")?;
        call!(fstat(&fd))?;
        let t = touch_in_child(&report, ptr, 0, Access::Write(MAGIC))?;
        expect_sigbus(&t, ptr.as_ptr() as usize);
        explain(
            "A mapping records a range of the file, not its size; the size is checked at each \
             page fault, so shrinking the object under a mapping turns its pages into SIGBUS.",
        );
        remove(&name, fd, guard, ptr, page)?;
    }
    // ANCHOR_END: part5

    section("How to avoid SIGBUS");
    note(
        "size the object before anyone maps it: ftruncate, or posix_fallocate to reserve the \
         memory too (and get ENOSPC instead of a SIGBUS on a full /dev/shm).",
    );
    note(
        "before mapping an object someone else made, fstat it: map at most st_size rounded up \
         to a page, and never with length 0.",
    );
    note(
        "agree that no one shrinks an object while it is mapped. A memfd can enforce it with \
         F_SEAL_SHRINK; a POSIX object cannot.",
    );
    narrate::conclude(
        "lesson-3 done: SIGBUS comes from touching a page with no object behind it, never \
         from mmap itself; every object this run made is removed.",
    );
    Ok(())
}
