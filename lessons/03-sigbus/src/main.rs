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
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::ptr::NonNull;

use anyhow::Context;
use common::args::{Cli, Hold, hold_point};
use common::cleanup::{self, Guard};
use common::fault::{self, Fault, FaultReport};
use common::narrate::{self, compare, evidence, explain, fact, note, section, step, warn};
use common::report::CallResult;
use common::{children, inspect, names, shm};
use nix::errno::Errno;
use nix::fcntl::posix_fallocate;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_unlink};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::stat::fstat;
use nix::sys::uio::pread;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, SysconfVar, close, fork, ftruncate, getpid, sysconf};

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

// ANCHOR: helpers
/// `fstat(fd)`, narrated: the object's size as the kernel sees it now.
fn size_of(fd: &OwnedFd) -> anyhow::Result<i64> {
    let s = step(format!("fstat({}, &st)", fd.as_raw_fd()));
    let st = s.check(fstat(fd))?;
    s.ok(format!(
        "0, st_size {}, st_blocks {}",
        st.st_size, st.st_blocks
    ));
    Ok(st.st_size)
}

/// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0)`, narrated.
fn map(fd: &OwnedFd, len: usize) -> anyhow::Result<NonNull<libc::c_void>> {
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let s = step(format!(
        "mmap(NULL, {len}, {}, MAP_SHARED, {}, 0)",
        narrate::flags(prot),
        fd.as_raw_fd()
    ));
    let length = NonZeroUsize::new(len).context("a mapping needs a length")?;
    // SAFETY: a fresh mapping at an address the kernel chooses (NULL) cannot
    // overlap any Rust object; it is only touched through raw volatile
    // accesses, and only by children where it may fault.
    let ptr = s.check(unsafe { mmap(None, length, prot, MapFlags::MAP_SHARED, fd, 0) })?;
    s.ok(format!("{:p}", ptr.as_ptr()));
    Ok(ptr)
}

/// `munmap`, `close` and `shm_unlink`, narrated: the end of a part.
fn remove(
    name: &str,
    fd: OwnedFd,
    guard: Guard,
    ptr: NonNull<libc::c_void>,
    len: usize,
) -> anyhow::Result<()> {
    let s = step(format!("munmap({:p}, {len})", ptr.as_ptr()));
    // SAFETY: ptr/len are exactly a mapping made by map(); no pointer into it
    // is used afterwards.
    s.check(unsafe { munmap(ptr, len) })?;
    s.ok(0);
    let raw = fd.as_raw_fd();
    let s = step(format!("close({raw})"));
    s.check(close(fd))?;
    s.ok(0);
    let s = step(format!("shm_unlink({name:?})"));
    s.check(shm_unlink(name))?;
    guard.disarm(); // removed by the lesson itself
    s.ok(0);
    Ok(())
}

// ANCHOR_END: helpers

// ANCHOR: touch
/// Fork a child that installs the fault handler and does `access` at
/// `mapping + offset`; wait for it; report how it ended and what its
/// handler saw. The parent never touches the address itself.
fn touch_in_child(
    report: &FaultReport,
    mapping: NonNull<libc::c_void>,
    offset: usize,
    access: Access,
) -> anyhow::Result<Touched> {
    let addr = mapping.as_ptr() as usize + offset;
    let what = match access {
        Access::Write(v) => format!("*(u64 *)({:#x}) = {v:#x}", addr),
        Access::ReadWrite(v) => {
            format!("old = *(u64 *)({addr:#x}); *(u64 *)({addr:#x}) = {v:#x}")
        }
    };
    explain(format!(
        "in the child: sigaction(SIGBUS and SIGSEGV, {{report_fault, SA_SIGINFO|SA_RESETHAND}}), \
         then {what} (mapping + {offset}), then _exit(0)"
    ));
    let action = SigAction::new(
        SigHandler::SigAction(fault::report_fault),
        SaFlags::SA_SIGINFO | SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    report.clear();
    let s = step("fork()");
    // SAFETY: the child only does async-signal-safe work: prctl, sigaction,
    // one volatile load and store, atomic stores and _exit. It touches no
    // lock and no allocator.
    match s.check(unsafe { fork() })? {
        ForkResult::Child => {
            children::die_with_parent();
            // SAFETY: sigaction is async-signal-safe, and report_fault only
            // does atomic stores, getpid and write.
            unsafe {
                let _ = sigaction(Signal::SIGBUS, &action);
                let _ = sigaction(Signal::SIGSEGV, &action);
            }
            let p = addr as *mut u64;
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
        ForkResult::Parent { child } => {
            let guard = cleanup::child(child);
            s.ok(format!("{child}"));
            // Wait first, then print: the child's handler writes its line to
            // stderr meanwhile, and our step line should not be cut in two.
            let status = waitpid(child, None).call(format!("waitpid({child}, &status, 0)"))?;
            guard.disarm(); // reaped: the pid is no longer ours to signal
            step(format!("waitpid({child}, &status, 0)"))
                .ok(format!("{child}: {}", fault::describe(status)));
            let fault = report.fault();
            if let Some(f) = fault {
                fact(
                    "the child's handler saw",
                    format!(
                        "{f} (mapping + {})",
                        f.addr.wrapping_sub(mapping.as_ptr() as usize)
                    ),
                );
            }
            Ok(Touched {
                status,
                fault,
                read: report.progress(),
            })
        }
    }
}

// ANCHOR_END: touch

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
fn hold(hold: Hold, part: u8, commands: &[String]) {
    if hold == Hold::No {
        note(format!(
            "to look at this object from a second terminal, run with --part {part} --hold 30"
        ));
    } else {
        hold_point(hold, "sleep(50)", commands);
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
    let pid = getpid();

    narrate::title(
        "lesson-3",
        "SIGBUS, and why ftruncate matters",
        "The article: \"If the ftruncate function is not executed, a bus error is reported.\" \
         Here is when, exactly, and why. Every access that may fault happens in a forked child \
         whose SIGBUS handler reports si_code and si_addr; this process reports how the child \
         ended and never faults itself.",
    );

    let s = step("sysconf(_SC_PAGE_SIZE)");
    let page = s
        .check(sysconf(SysconfVar::PAGE_SIZE))?
        .context("sysconf(_SC_PAGE_SIZE) has no value")? as usize;
    s.ok(page);
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
        size_of(&fd)?;
        let ptr = map(&fd, page)?;
        evidence(
            &format!("grep {} /proc/{pid}/maps", names::file_name(&name)),
            inspect::maps_line_for(ptr.as_ptr() as usize),
        );
        explain(
            "mmap did not complain: it checks the descriptor, the protection and the length, \
             not the object's size. The size matters only when a page is touched.",
        );
        let t = touch_in_child(&report, ptr, 0, Access::Write(MAGIC))?;
        expect_sigbus(&t, ptr.as_ptr() as usize);
        compare(
            "If the ftruncate function is not executed, a bus error is reported.",
            &format!(
                "mmap succeeded; the child's first write: {}",
                fault::describe(t.status)
            ),
            "the object is 0 bytes long, so the page the mapping covers has nothing behind it. \
             The kernel finds out on the page fault, and the only way it can tell the process \
             is a signal.",
        );
        hold(
            args.hold(),
            1,
            &[
                format!("ls -l /dev/shm/{}", names::file_name(&name)),
                format!("grep {} /proc/{pid}/maps", names::file_name(&name)),
            ],
        );
        remove(&name, fd, guard, ptr, page)?;
    }
    // ANCHOR_END: part1

    // ANCHOR: part2
    if runs(2) {
        section(format!(
            "2. A {PARTIAL}-byte object: usable to the end of its page, and no further"
        ));
        let name = names::unique_name(3, "partial");
        let (fd, guard) = shm::create(&name)?;
        let s = step(format!("ftruncate({}, {PARTIAL})", fd.as_raw_fd()));
        s.check(ftruncate(&fd, PARTIAL as libc::off_t))?;
        s.ok(0);
        let len = 2 * page;
        let ptr = map(&fd, len)?;
        evidence(
            &format!("grep {} /proc/{pid}/maps", names::file_name(&name)),
            inspect::maps_line_for(ptr.as_ptr() as usize),
        );
        explain(format!(
            "Two pages mapped over {PARTIAL} bytes: mmap allows it. The first page holds the \
             object's {PARTIAL} bytes and, after them, zeroes to the end of the page; the \
             second page lies wholly beyond the object. (With a one-page mapping, offset \
             {page} would be outside the mapping altogether: SIGSEGV, or a write into whatever \
             mapping happens to follow.)"
        ));

        narrate::subsection(format!(
            "offset {INSIDE_PAGE}: past the object, inside its page"
        ));
        let t = touch_in_child(&report, ptr, INSIDE_PAGE, Access::ReadWrite(MAGIC))?;
        if t.exited_cleanly() {
            fact(
                &format!("the child read at offset {INSIDE_PAGE}"),
                format!("{:#x}", t.read),
            );
            // SAFETY: the child just read and wrote this address without a
            // fault, and has exited: no one else writes it now.
            let now = unsafe {
                ptr.as_ptr()
                    .cast::<u8>()
                    .add(INSIDE_PAGE)
                    .cast::<u64>()
                    .read_volatile()
            };
            fact(
                &format!("we read at offset {INSIDE_PAGE} after the child"),
                format!("{now:#x}"),
            );
            size_of(&fd)?;
            let mut buf = vec![0u8; page];
            let s = step(format!("pread({}, buf, {page}, 0)", fd.as_raw_fd()));
            let n = s.check(pread(&fd, &mut buf, 0))?;
            s.ok(format!(
                "{n} (bytes read: the object's size, not the page's)"
            ));
            explain(format!(
                "The kernel maps whole pages, so the bytes from {PARTIAL} to {} exist: zero \
                 when first read, writable, shared. They are not part of the object: st_size \
                 stays {PARTIAL}, and reading the object through its descriptor returns {n} \
                 bytes, without the value the child wrote at offset {INSIDE_PAGE}.",
                page - 1
            ));
        } else {
            warn(format!(
                "expected the child to exit 0; this machine gave: {}",
                fault::describe(t.status)
            ));
        }

        narrate::subsection(format!("offset {}: one page later", page + INSIDE_PAGE));
        let at = ptr.as_ptr() as usize + page + INSIDE_PAGE;
        let t = touch_in_child(&report, ptr, page + INSIDE_PAGE, Access::Write(MAGIC))?;
        expect_sigbus(&t, at);
        hold(
            args.hold(),
            2,
            &[
                format!("ls -l /dev/shm/{}", names::file_name(&name)),
                format!("grep {} /proc/{pid}/maps", names::file_name(&name)),
                format!(
                    "od -A d -t x1 /dev/shm/{}   # only {PARTIAL} bytes",
                    names::file_name(&name)
                ),
            ],
        );
        remove(&name, fd, guard, ptr, len)?;
    }
    // ANCHOR_END: part2

    // ANCHOR: part3
    if runs(3) {
        section("3. The fix: ftruncate first, and the same write succeeds");
        let name = names::unique_name(3, "sized");
        let (fd, guard) = shm::create(&name)?;
        let s = step(format!("ftruncate({}, {page})", fd.as_raw_fd()));
        s.check(ftruncate(&fd, page as libc::off_t))?;
        s.ok(0);
        size_of(&fd)?;
        let ptr = map(&fd, page)?;
        let t = touch_in_child(&report, ptr, 0, Access::Write(MAGIC))?;
        if t.exited_cleanly() {
            // SAFETY: the child wrote here without a fault and has exited.
            let v = unsafe { ptr.as_ptr().cast::<u64>().read_volatile() };
            println!("child wrote {v:#x}");
            explain(
                "The same write as in part 1, now to a page the object covers: no signal, and \
                 the value reached us through the shared page.",
            );
        } else {
            warn(format!(
                "expected the child to exit 0; this machine gave: {}",
                fault::describe(t.status)
            ));
        }
        remove(&name, fd, guard, ptr, page)?;
    }
    // ANCHOR_END: part3

    // ANCHOR: part4
    if runs(4) {
        section("4. mmap with length 0");
        let name = names::unique_name(3, "len0");
        let (fd, guard) = shm::create(&name)?;
        let s = step(format!(
            "mmap(NULL, 0, PROT_READ|PROT_WRITE, MAP_SHARED, {}, 0)",
            fd.as_raw_fd()
        ));
        // SAFETY: a request for a new mapping at a kernel-chosen address; with
        // length 0 the kernel maps nothing (it fails with EINVAL).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                0,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        let result = if p == libc::MAP_FAILED {
            Err(Errno::last())
        } else {
            Ok(p)
        };
        let r = s.outcome(result, |p| format!("{p:p}"));
        match r {
            Err(Errno::EINVAL) => explain(
                "EINVAL: a mapping of nothing is refused outright (since Linux 2.6.12). So \
                 \"map the whole object\" with st_size as the length fails on an empty object \
                 instead of mapping nothing. nix's mmap takes the length as a NonZeroUsize, so \
                 in Rust the mistake does not compile; this part calls libc::mmap to show the \
                 kernel's answer.",
            ),
            other => warn(format!("expected EINVAL; this machine gave {other:?}")),
        }
        let raw = fd.as_raw_fd();
        let s = step(format!("close({raw})"));
        s.check(close(fd))?;
        s.ok(0);
        let s = step(format!("shm_unlink({name:?})"));
        s.check(shm_unlink(name.as_str()))?;
        guard.disarm();
        s.ok(0);
    }
    // ANCHOR_END: part4

    // ANCHOR: part5
    if runs(5) {
        section("5. A mapping outlives its object's size");
        let name = names::unique_name(3, "shrunk");
        let (fd, guard) = shm::create(&name)?;
        let s = step(format!("posix_fallocate({}, 0, {page})", fd.as_raw_fd()));
        s.check(posix_fallocate(&fd, 0, page as libc::off_t))?;
        s.ok(0);
        explain(
            "posix_fallocate sets the size and also reserves the pages (st_blocks > 0): on a \
             full tmpfs it fails here with ENOSPC, where ftruncate would succeed and the first \
             write would die of SIGBUS.",
        );
        let size = size_of(&fd)?;
        explain(format!(
            "Before mapping an object someone else made, fstat it and map no more than \
             st_size ({size} here) rounded up to a page."
        ));
        let ptr = map(&fd, page)?;
        let s = step(format!("ftruncate({}, 0)", fd.as_raw_fd()));
        s.check(ftruncate(&fd, 0))?;
        s.ok("0 (as another process holding the object could do)");
        size_of(&fd)?;
        let t = touch_in_child(&report, ptr, 0, Access::Write(MAGIC))?;
        expect_sigbus(&t, ptr.as_ptr() as usize);
        explain(
            "The mapping was made when the object was a page long, and it stays: a mapping \
             records a range of the file, not its size. The size is checked at each page \
             fault, so shrinking the object under a mapping turns its pages into SIGBUS.",
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
