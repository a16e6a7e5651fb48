//! Part 4. The way out: `memfd_create`.
//!
//! A memfd is shared memory with no name: nothing in `/dev/shm`, nothing in
//! `ipcs`, freed when its last descriptor and mapping go, so a crash leaks
//! nothing. Another process gets it as a descriptor over a Unix socket
//! (SCM_RIGHTS). Because the receiver maps memory the sender controls, the
//! sender could shrink it under the receiver (SIGBUS): seals forbid that, and
//! a careful receiver checks them (`F_GET_SEALS`) and refuses a memfd without
//! `F_SEAL_SHRINK`. Last, a receiver holding the only reference to a 64 MiB
//! memfd is killed with SIGKILL: the `Shmem:` figure shows the kernel freeing
//! the pages.

use std::io::{IoSlice, IoSliceMut};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};
use std::ptr::NonNull;
use std::time::Duration;

use anyhow::{Context, bail};
use common::children;
use common::narrate::{self, compare, evidence, explain, section, step, subsection, warn};
use common::{cleanup, fault, inspect};

use crate::posix_unlink;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl, posix_fallocate};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::sys::stat::fstat;
use nix::sys::wait::WaitStatus;
use nix::unistd::{close, ftruncate, getpid, read, write};

const MEMFD_NAME: &str = "shm-lessons-7-memfd";
const MESSAGE: &[u8] = b"hello through a memfd\0";

/// Protocol bytes on the socket: the memfd itself, "mapped", "refused (no
/// seals)", "touch it now".
const SENT: u8 = b'F';
const MAPPED: u8 = b'M';
const REFUSED: u8 = b'R';
const TOUCH: u8 = b'T';
/// The careful receiver's exit status when it refuses an unsealed memfd.
pub const REFUSED_EXIT: i32 = 3;
/// The seal a receiver needs before it maps: without it the sender can
/// shrink the file under the mapping, and the receiver's next access raises
/// SIGBUS.
const NEEDED: SealFlag = SealFlag::F_SEAL_SHRINK;
/// Part 4's big memfd: 64 MiB, to stand out in `Shmem:`.
const BIG: usize = 64 << 20;
const BIG_KIB: i64 = (BIG >> 10) as i64;

/// One byte from the socket, waiting at most 10 s.
fn recv_byte(fd: &impl AsFd) -> anyhow::Result<u8> {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::from(10_000u16)).context("poll")? == 0 {
        bail!("no answer on the socket within 10 s");
    }
    let mut b = [0u8; 1];
    match read(fd, &mut b).context("read")? {
        0 => bail!("the other side closed the socket"),
        _ => Ok(b[0]),
    }
}

fn seals_text(bits: i32) -> String {
    let s = SealFlag::from_bits_truncate(bits);
    if s.is_empty() {
        "0 (no seals)".into()
    } else {
        narrate::flags(s)
    }
}

pub fn run() -> anyhow::Result<()> {
    section("Part 4. The way out: memfd_create");
    let size = inspect::page_size();
    let pid = getpid();

    // ANCHOR: create
    let s = step(format!(
        "memfd_create({MEMFD_NAME:?}, MFD_CLOEXEC|MFD_ALLOW_SEALING)"
    ));
    let mfd = s.check(memfd_create(
        MEMFD_NAME,
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    ))?;
    s.ok(format!("fd {}", mfd.as_raw_fd()));
    let s = step(format!("ftruncate({}, {size})", mfd.as_raw_fd()));
    s.check(ftruncate(&mfd, size as libc::off_t))?;
    s.ok(0);
    let len = NonZeroUsize::new(size).context("page size 0")?;
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let s = step(format!(
        "mmap(NULL, {size}, {}, MAP_SHARED, {}, 0)",
        narrate::flags(prot),
        mfd.as_raw_fd()
    ));
    // SAFETY: a fresh mapping at a kernel-chosen address; accessed only
    // through raw pointers, since the receiver maps the same pages.
    let ptr = s.check(unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, &mfd, 0) })?;
    s.ok(format!("{:p}", ptr.as_ptr()));
    put_message(ptr);
    let link = std::fs::read_link(format!("/proc/self/fd/{}", mfd.as_raw_fd()))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    evidence(
        &format!("readlink /proc/{pid}/fd/{}", mfd.as_raw_fd()),
        [link],
    );
    evidence(
        &format!("grep memfd: /proc/{pid}/maps"),
        inspect::maps_line_for(ptr.as_ptr() as usize),
    );
    let in_dev_shm: Vec<String> = inspect::dev_shm_entries()
        .into_iter()
        .filter(|e| e.name.contains(MEMFD_NAME))
        .map(|e| e.ls_line())
        .collect();
    evidence(&format!("ls /dev/shm | grep {MEMFD_NAME}"), in_dev_shm);
    explain(
        "The name is only a label for /proc: there is no entry in /dev/shm or in ipcs to leak. \
         The file was never linked anywhere, hence (deleted) from the start.",
    );
    // ANCHOR_END: create

    // ANCHOR: unsealed
    subsection("Without seals: the sender shrinks the memfd under a trusting receiver");
    let status = with_receiver(&mfd, Trust::Blindly, |sock| {
        let s = step(format!("ftruncate({}, 0)", mfd.as_raw_fd()));
        s.check(ftruncate(&mfd, 0))?;
        s.ok("0: nothing stops the sender");
        write(sock, &[TOUCH]).context("write")?;
        Ok(())
    })?;
    match status {
        WaitStatus::Signaled(_, Signal::SIGBUS, _) => explain(
            "The receiver's pages no longer exist in the file: its next access raised SIGBUS. A \
             receiver that maps memory from someone it does not trust can be killed this way.",
        ),
        other => bail!(
            "expected the receiver to die of SIGBUS, it {}",
            fault::describe(other)
        ),
    }
    subsection("A careful receiver checks F_GET_SEALS first, and refuses");
    let status = with_receiver(&mfd, Trust::CheckSeals, |_| {
        bail!("the careful receiver mapped a memfd without F_SEAL_SHRINK")
    })?;
    if status != WaitStatus::Exited(status.pid().unwrap_or(pid), REFUSED_EXIT) {
        bail!(
            "expected the careful receiver to refuse the unsealed memfd (exit {REFUSED_EXIT}): \
             it {}",
            fault::describe(status)
        );
    }
    explain(format!(
        "The careful receiver read the seals, found no F_SEAL_SHRINK, and refused before \
         mapping anything (exit {REFUSED_EXIT}): the sender can no longer kill it with a shrink."
    ));
    // ANCHOR_END: unsealed

    // ANCHOR: sealed
    subsection("With F_SEAL_SHRINK|F_SEAL_GROW: the size is fixed for everyone");
    let s = step(format!("ftruncate({}, {size})", mfd.as_raw_fd()));
    s.check(ftruncate(&mfd, size as libc::off_t))?;
    s.ok(0);
    put_message(ptr);
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW;
    let s = step(format!(
        "fcntl({}, F_ADD_SEALS, {})",
        mfd.as_raw_fd(),
        narrate::flags(seals)
    ));
    s.check(fcntl(&mfd, FcntlArg::F_ADD_SEALS(seals)))?;
    s.ok(0);
    let status = with_receiver(&mfd, Trust::CheckSeals, |sock| {
        for bad in [0, 2 * size] {
            let s = step(format!("ftruncate({}, {bad})", mfd.as_raw_fd()));
            match s.outcome(ftruncate(&mfd, bad as libc::off_t), |_| "0".into()) {
                Err(Errno::EPERM) => {}
                other => bail!("expected EPERM from ftruncate on a sealed memfd, got {other:?}"),
            }
        }
        explain("The seals make ftruncate fail with EPERM, for the sender too.");
        write(sock, &[TOUCH]).context("write")?;
        Ok(())
    })?;
    if status != WaitStatus::Exited(status.pid().unwrap_or(pid), 0) {
        bail!(
            "expected the receiver to read the message and exit 0: it {}",
            fault::describe(status)
        );
    }
    // ANCHOR_END: sealed

    // ANCHOR: release
    subsection("Release: the last descriptor and mapping");
    let s = step(format!("munmap({:p}, {size})", ptr.as_ptr()));
    // SAFETY: exactly the mapping made above; not used afterwards.
    s.check(unsafe { munmap(ptr, size) })?;
    s.ok(0);
    let raw = mfd.as_raw_fd();
    let s = step(format!("close({raw})"));
    s.check(close(mfd))?;
    s.ok("0: the memory is freed; there was never a name to remove");
    let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    let target = std::fs::read_link(e.path()).ok()?;
                    let target = target.display().to_string();
                    target
                        .contains(MEMFD_NAME)
                        .then(|| format!("{} -> {target}", e.file_name().to_string_lossy()))
                })
                .collect()
        })
        .unwrap_or_default();
    evidence(&format!("ls -l /proc/{pid}/fd | grep {MEMFD_NAME}"), fds);
    evidence(
        &format!("grep {MEMFD_NAME} /proc/{pid}/maps"),
        inspect::maps_lines_matching(MEMFD_NAME),
    );
    explain(
        "No descriptor and no mapping refers to the memfd any more, and the receivers have \
         exited: nothing can reach it, so the kernel frees its pages. One page is too small to \
         see in Shmem; the next step measures 64 MiB, freed by a crash.",
    );
    // ANCHOR_END: release
    let freed = killed_holder(pid)?;
    compare(
        "POSIX objects have names (shm_unlink) and System V segments keys (ipcs)",
        &if freed {
            "a memfd has neither: it reaches another process as a descriptor over a Unix \
             socket, and its pages were freed when its last holder died of SIGKILL (Shmem \
             above)"
                .to_string()
        } else {
            "a memfd has neither: it reaches another process as a descriptor over a Unix \
             socket, and no name of it was left after the SIGKILL (this run's Shmem figures \
             were blurred by other processes)"
                .to_string()
        },
        "memfd_create (Linux 3.17) made anonymous shared memory a file descriptor. Wayland, \
         systemd and Android pass buffers this way, sealed so the receiver can trust the size.",
    );
    Ok(())
}

/// A 64 MiB sealed memfd whose only holder, a receiver, is killed with
/// SIGKILL: Shmem shows the pages allocated, kept after the sender's close,
/// and freed when the kernel cleans up the dead receiver. Returns whether the
/// figures showed it (other processes may move Shmem at the same time).
fn killed_holder(pid: nix::unistd::Pid) -> anyhow::Result<bool> {
    // ANCHOR: killed
    subsection("A crash: the last holder of a 64 MiB memfd dies of SIGKILL");
    let start = posix_unlink::shmem()?;
    evidence("grep Shmem: /proc/meminfo", [format!("Shmem: {start} kB")]);
    let s = step(format!(
        "memfd_create(\"{MEMFD_NAME}-big\", MFD_CLOEXEC|MFD_ALLOW_SEALING)"
    ));
    let big = s.check(memfd_create(
        format!("{MEMFD_NAME}-big").as_str(),
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    ))?;
    s.ok(format!("fd {}", big.as_raw_fd()));
    let s = step(format!("ftruncate({}, {BIG})", big.as_raw_fd()));
    s.check(ftruncate(&big, BIG as libc::off_t))?;
    s.ok(0);
    let s = step(format!("posix_fallocate({}, 0, {BIG})", big.as_raw_fd()));
    s.check(posix_fallocate(&big, 0, BIG as libc::off_t))?;
    s.ok("0: every page exists now (a memfd's pages are Shmem, not in /dev/shm)");
    let filled = posix_unlink::show_shmem("after allocating 64 MiB", start)?;
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW;
    let s = step(format!(
        "fcntl({}, F_ADD_SEALS, {})",
        big.as_raw_fd(),
        narrate::flags(seals)
    ));
    s.check(fcntl(&big, FcntlArg::F_ADD_SEALS(seals)))?;
    s.ok(0);
    let receiver = start_receiver(&big, Trust::CheckSeals)?;
    if !receiver.mapped {
        bail!("the careful receiver refused a sealed memfd");
    }
    let raw = big.as_raw_fd();
    let s = step(format!("close({raw})"));
    s.check(close(big))?;
    s.ok("0: the receiver's descriptor and mapping are now the only references");
    let closed = posix_unlink::show_shmem("after our close", filled)?;
    let cpid = receiver.pid;
    let s = step(format!("kill({cpid}, SIGKILL)"));
    s.check(kill(cpid, Signal::SIGKILL))?;
    s.ok(0);
    let status = finish_receiver(receiver)?;
    if status != WaitStatus::Signaled(cpid, Signal::SIGKILL, false) {
        bail!(
            "expected the receiver to die of SIGKILL: it {}",
            fault::describe(status)
        );
    }
    let end = posix_unlink::show_shmem("after the receiver's death", closed)?;
    evidence(
        &format!("grep {MEMFD_NAME}-big /proc/{pid}/maps"),
        inspect::maps_lines_matching(&format!("{MEMFD_NAME}-big")),
    );
    // ANCHOR_END: killed
    let (rose, kept, fell) = (filled - start, closed - filled, closed - end);
    let freed = rose >= BIG_KIB * 3 / 4 && kept.abs() < BIG_KIB / 4 && fell >= BIG_KIB * 3 / 4;
    if freed {
        explain(format!(
            "Shmem rose by {rose} kB for the 64 MiB ({BIG_KIB} kB), did not move when we closed \
             our descriptor ({kept:+} kB: the receiver still held it), and fell by {fell} kB \
             when the receiver died of SIGKILL. Nobody called munmap or close for it: the \
             kernel closed the dead process's descriptor, removed its mapping, and with the \
             last reference gone freed the pages. There was no name to leak."
        ));
    } else {
        warn(format!(
            "Shmem moved by {rose:+} kB at the allocation, {kept:+} kB at our close and \
             {:+} kB at the receiver's death: other processes on this machine changed Shmem at \
             the same time, so these figures prove nothing this run. Run --part 4 again.",
            -fell
        ));
    }
    Ok(freed)
}

/// Write MESSAGE at the start of the mapping.
fn put_message(ptr: NonNull<libc::c_void>) {
    let p = ptr.as_ptr().cast::<u8>();
    for (i, b) in MESSAGE.iter().enumerate() {
        // SAFETY: i < MESSAGE.len() < one page, inside our live mapping. No
        // receiver runs while we write: each is started (spawn, sendmsg)
        // after this, and the socket round trip orders our stores before
        // its reads. Volatile keeps the stores, which no Rust code reads.
        unsafe { p.add(i).write_volatile(*b) };
    }
}

/// Whether the receiver maps whatever it gets, or checks the seals first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// `--receive-fd --trusting`: maps without looking (to show the SIGBUS).
    Blindly,
    /// `--receive-fd`: refuses a memfd without F_SEAL_SHRINK.
    CheckSeals,
}

/// A receiver process we started and sent a memfd to.
struct Receiver {
    sock: OwnedFd,
    pid: nix::unistd::Pid,
    guard: cleanup::Guard,
    /// Whether it mapped the memfd (a careful receiver may refuse).
    mapped: bool,
}

/// Start a receiver (this program again, `--receive-fd`, a socket on its
/// stdin), send it `mfd` with SCM_RIGHTS, run `then` once it has mapped it
/// (not if it refused), and wait for the receiver's end.
fn with_receiver(
    mfd: &OwnedFd,
    trust: Trust,
    then: impl FnOnce(&OwnedFd) -> anyhow::Result<()>,
) -> anyhow::Result<WaitStatus> {
    let r = start_receiver(mfd, trust)?;
    if r.mapped {
        then(&r.sock)?;
    }
    finish_receiver(r)
}

// ANCHOR: send
fn start_receiver(mfd: &OwnedFd, trust: Trust) -> anyhow::Result<Receiver> {
    let s = step("socketpair(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0, sv)");
    let (ours, theirs) = s.check(socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    ))?;
    s.ok(format!(
        "0, sv = [{}, {}]",
        ours.as_raw_fd(),
        theirs.as_raw_fd()
    ));

    let exe = std::env::current_exe().context("current_exe")?;
    let trusting = if trust == Trust::Blindly {
        " --trusting"
    } else {
        ""
    };
    let s = step(format!(
        "spawn {} --receive-fd{trusting}   (stdin = fd {})",
        exe.display(),
        theirs.as_raw_fd()
    ));
    let mut cmd = Command::new(&exe);
    cmd.arg("--receive-fd").stdin(Stdio::from(theirs));
    if trust == Trust::Blindly {
        cmd.arg("--trusting");
    }
    let child = s.check(cmd.spawn())?;
    let cpid = nix::unistd::Pid::from_raw(child.id() as i32);
    let guard = cleanup::child(cpid);
    s.ok(format!(
        "pid {cpid}: a new program, not a fork; it inherits no memfd, only the socket"
    ));

    let fds = [mfd.as_raw_fd()];
    let s = step(format!(
        "sendmsg({}, {{iov \"F\", SCM_RIGHTS [{}]}}, 0)",
        ours.as_raw_fd(),
        mfd.as_raw_fd()
    ));
    s.check(sendmsg::<()>(
        ours.as_raw_fd(),
        &[IoSlice::new(&[SENT])],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    ))?;
    s.ok(1);
    let mapped = match recv_byte(&ours)? {
        MAPPED => true,
        REFUSED => false,
        other => bail!("unexpected byte {other:#x} from the receiver"),
    };
    Ok(Receiver {
        sock: ours,
        pid: cpid,
        guard,
        mapped,
    })
}

fn finish_receiver(r: Receiver) -> anyhow::Result<WaitStatus> {
    let cpid = r.pid;
    let waited = children::wait_deadline(cpid, Duration::from_secs(10));
    let s = step(format!("waitpid({cpid}, &status, 0)"));
    let status = s.check(waited)?.status();
    r.guard.disarm();
    drop(r.sock);
    s.ok(fault::describe(status));
    Ok(status)
}
// ANCHOR_END: send

/// `lesson-7 --receive-fd`: the receiving program of part 4. Its stdin is a
/// Unix socket; a memfd arrives on it with SCM_RIGHTS.
// ANCHOR: receive
pub fn receiver(trusting: bool) -> anyhow::Result<()> {
    let me = getpid();
    let sock: RawFd = 0;
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let s = step(format!("[receiver {me}] recvmsg({sock}, &msg, 0)"));
    let mut iov = [IoSliceMut::new(&mut byte)];
    let msg = s.check(recvmsg::<()>(
        sock,
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    ))?;
    let mut got = None;
    for c in msg.cmsgs().context("cmsgs")? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            got = fds.first().copied();
        }
    }
    let raw = got.context("no descriptor in the message")?;
    // SAFETY: the kernel just installed this descriptor in our table for us
    // (SCM_RIGHTS); nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    s.ok(format!("1, SCM_RIGHTS gave us fd {raw}"));

    let s = step(format!("[receiver {me}] fcntl({raw}, F_GET_SEALS)"));
    let seals = s.check(fcntl(&fd, FcntlArg::F_GET_SEALS))?;
    s.ok(seals_text(seals));
    if !SealFlag::from_bits_truncate(seals).contains(NEEDED) {
        if !trusting {
            println!(
                "[receiver {me}] refused: the memfd lacks F_SEAL_SHRINK, so the sender could \
                 shrink it under our mapping (SIGBUS)"
            );
            write(fd_of(sock), &[REFUSED]).context("write")?;
            std::process::exit(REFUSED_EXIT);
        }
        narrate::explain(format!(
            "[receiver {me}] --trusting: maps it anyway, without F_SEAL_SHRINK"
        ));
    }
    let s = step(format!("[receiver {me}] fstat({raw})"));
    let size = s.check(fstat(&fd))?.st_size as usize;
    s.ok(format!("st_size {size}"));
    let len = NonZeroUsize::new(size).context("the memfd is empty")?;
    let s = step(format!(
        "[receiver {me}] mmap(NULL, {size}, PROT_READ, MAP_SHARED, {raw}, 0)"
    ));
    // SAFETY: a fresh read-only mapping at a kernel-chosen address; read
    // only byte by byte through raw pointers (see read_message).
    let ptr = s.check(unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ,
            MapFlags::MAP_SHARED,
            &fd,
            0,
        )
    })?;
    s.ok(format!("{:p}", ptr.as_ptr()));
    narrate::fact(
        &format!("[receiver {me}] read"),
        format!("{:?}", read_message(ptr)),
    );
    write(fd_of(sock), &[MAPPED]).context("write")?;

    if recv_byte(&fd_of(sock))? != TOUCH {
        bail!("unexpected byte from the sender");
    }
    // The next read may fault: report it from the handler, then die of it.
    let action = SigAction::new(
        SigHandler::SigAction(fault::report_fault),
        SaFlags::SA_SIGINFO | SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    // SAFETY: report_fault is async-signal-safe (see common::fault).
    unsafe { sigaction(Signal::SIGBUS, &action) }.context("sigaction")?;
    narrate::explain(format!("[receiver {me}] reads the mapping again:"));
    let text = read_message(ptr);
    narrate::fact(
        &format!("[receiver {me}] read"),
        format!("{text:?}: still there"),
    );
    Ok(())
}
// ANCHOR_END: receive

/// A borrowed view of a raw descriptor we do not own (our stdin).
fn fd_of(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the receiver process.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// The NUL-terminated text at the start of the mapping.
fn read_message(ptr: NonNull<libc::c_void>) -> String {
    let p = ptr.as_ptr().cast::<u8>();
    let mut out = Vec::new();
    for i in 0..MESSAGE.len() {
        // SAFETY: i is inside the first page of the live mapping. The sender
        // wrote the message before it sent us the memfd and does not write
        // it again while we run: the sendmsg/recvmsg pair orders its stores
        // before these reads, so they race with nothing. (The read raises
        // SIGBUS if the file was shrunk, which is what the lesson shows.)
        let b = unsafe { p.add(i).read_volatile() };
        if b == 0 {
            break;
        }
        out.push(b);
    }
    String::from_utf8_lossy(&out).into_owned()
}
