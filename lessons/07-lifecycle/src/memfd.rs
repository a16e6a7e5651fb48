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
use common::{attempt, call, cleanup, fault, inspect};

use crate::posix_unlink;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl, posix_fallocate};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction};
use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    socketpair,
};
use nix::sys::stat::fstat;
use nix::sys::wait::WaitStatus;
use nix::unistd::{Pid, close, ftruncate, getpid, read, write};

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
/// How long a receiver may take to end before we kill it (by its pid).
const WAIT: Duration = Duration::from_secs(10);

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

fn seals_text(bits: &i32) -> String {
    let s = SealFlag::from_bits_truncate(*bits);
    if s.is_empty() {
        "0 (no seals)".into()
    } else {
        narrate::flags(s)
    }
}

/// Where `/proc/self/fd` still names the memfd: `4 -> /memfd:... (deleted)`.
fn fds_naming(label: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?.display().to_string();
            let fd = e.file_name().to_string_lossy().into_owned();
            target.contains(label).then(|| format!("{fd} -> {target}"))
        })
        .collect()
}

pub fn run() -> anyhow::Result<()> {
    section("Part 4. The way out: memfd_create");
    let size = inspect::page_size();
    let pid = getpid();

    // ANCHOR: create
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    let mfd = call!(memfd_create(MEMFD_NAME, flags))?; // the name is only a label
    call!(ftruncate(&mfd, size as libc::off_t))?;
    let len = NonZeroUsize::new(size).context("page size 0")?;
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY: a fresh mapping at a kernel-chosen address; accessed only
    // through raw pointers, since the receiver maps the same pages.
    let ptr = unsafe { call!(mmap(None, len, prot, MapFlags::MAP_SHARED, &mfd, 0)) }?;
    put_message(ptr);
    let fd = mfd.as_raw_fd();
    evidence(
        &format!("ls -l /proc/{pid}/fd | grep {fd}"),
        fds_naming(MEMFD_NAME),
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
    // ANCHOR_END: create

    // ANCHOR: unsealed
    subsection("Without seals: the sender shrinks the memfd under a trusting receiver");
    let status = with_receiver(&mfd, Trust::Blindly, |sock| {
        call!(ftruncate(&mfd, 0))?; // nothing stops the sender
        write(sock, &[TOUCH]).context("write")?;
        Ok(())
    })?;
    if !matches!(status, WaitStatus::Signaled(_, Signal::SIGBUS, _)) {
        bail!(
            "expected the receiver to die of SIGBUS, it {}",
            fault::describe(status)
        );
    }
    subsection("A careful receiver checks F_GET_SEALS first, and refuses");
    let status = with_receiver(&mfd, Trust::CheckSeals, |_| {
        bail!("the careful receiver mapped a memfd without F_SEAL_SHRINK")
    })?;
    if status != WaitStatus::Exited(status.pid().unwrap_or(pid), REFUSED_EXIT) {
        bail!(
            "expected the careful receiver to refuse (exit {REFUSED_EXIT}): it {}",
            fault::describe(status)
        );
    }
    // ANCHOR_END: unsealed

    // ANCHOR: sealed
    subsection("With F_SEAL_SHRINK|F_SEAL_GROW: the size is fixed for everyone");
    call!(ftruncate(&mfd, size as libc::off_t))?;
    put_message(ptr);
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW;
    call!(fcntl(&mfd, FcntlArg::F_ADD_SEALS(seals)))?;
    let status = with_receiver(&mfd, Trust::CheckSeals, |sock| {
        for bad in [0, 2 * size] {
            match attempt!(ftruncate(&mfd, bad as libc::off_t)) {
                Err(Errno::EPERM) => {} // the seals bind the sender too
                other => bail!("expected EPERM from ftruncate on a sealed memfd, got {other:?}"),
            }
        }
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
    // SAFETY: exactly the mapping made above; not used afterwards.
    unsafe { call!(munmap(ptr, size)) }?;
    call!(close(mfd))?; // no name to remove: the memory is freed
    evidence(
        &format!("ls -l /proc/{pid}/fd | grep {MEMFD_NAME}"),
        fds_naming(MEMFD_NAME),
    );
    evidence(
        &format!("grep {MEMFD_NAME} /proc/{pid}/maps"),
        inspect::maps_lines_matching(MEMFD_NAME),
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
        "memfd_create (Linux 3.17) made anonymous shared memory a file descriptor. Wayland \
         clients pass buffers this way (wl_shm), and systemd-journald maps a large message \
         sent as a memfd without copying it only when the memfd is sealed.",
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
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    let big = call!(memfd_create(format!("{MEMFD_NAME}-big").as_str(), flags))?;
    call!(ftruncate(&big, BIG as libc::off_t))?;
    call!(posix_fallocate(&big, 0, BIG as libc::off_t))?; // Shmem, not in /dev/shm
    let filled = posix_unlink::show_shmem("after allocating 64 MiB", start)?;
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW;
    call!(fcntl(&big, FcntlArg::F_ADD_SEALS(seals)))?;
    let receiver = start_receiver(&big, Trust::CheckSeals)?;
    if !receiver.mapped {
        bail!("the careful receiver refused a sealed memfd");
    }
    call!(close(big))?; // now the receiver holds the only references
    let closed = posix_unlink::show_shmem("after our close", filled)?;
    let cpid = receiver.pid;
    call!(kill(cpid, Signal::SIGKILL))?;
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

/// `sendmsg(sock, {iov "F", SCM_RIGHTS [fd]}, 0)`: one byte, and one
/// descriptor for the kernel to install in the receiver's table.
fn sendmsg(sock: &OwnedFd, fd: &OwnedFd) -> nix::Result<usize> {
    let iov = [IoSlice::new(&[SENT])];
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    socket::sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
}

/// `recvmsg(sock, &msg, 0)` for one byte and the descriptor that came with
/// it (SCM_RIGHTS), which the kernel installed in our table.
fn recvmsg(sock: RawFd) -> nix::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = socket::recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::empty())?;
    let mut got = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just installed this descriptor in our
            // table for us (SCM_RIGHTS); nothing else owns it.
            got = fds.first().map(|&raw| unsafe { OwnedFd::from_raw_fd(raw) });
        }
    }
    Ok(got)
}

/// How `sendmsg` above reads in C.
fn with_fd(fd: &&OwnedFd) -> String {
    format!("{{iov \"F\", SCM_RIGHTS [{}]}}, 0", fd.as_raw_fd())
}

/// How `recvmsg` above returned: the descriptor SCM_RIGHTS gave us.
fn got_fd(fd: &Option<OwnedFd>) -> String {
    match fd {
        Some(fd) => format!("1, SCM_RIGHTS gave us fd {}", fd.as_raw_fd()),
        None => "1, but no descriptor came with it".into(),
    }
}

/// Start a receiver: this program again, `--receive-fd`, with the other end
/// of the socket pair as its stdin. A new program, not a fork: it inherits
/// no memfd, only the socket.
fn spawn_receiver(theirs: OwnedFd, trust: Trust) -> anyhow::Result<(Pid, cleanup::Guard)> {
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
    let cpid = Pid::from_raw(child.id() as i32);
    let guard = cleanup::child(cpid);
    s.ok(format!("pid {cpid}"));
    Ok((cpid, guard))
}

// ANCHOR: send
fn start_receiver(mfd: &OwnedFd, trust: Trust) -> anyhow::Result<Receiver> {
    let (family, kind, flags) = (
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
    );
    let (ours, theirs) = call!(socketpair(family, kind, None, flags))?;
    let (pid, guard) = spawn_receiver(theirs, trust)?;
    call!(sendmsg(&ours, mfd => with_fd))?;
    let mapped = match recv_byte(&ours)? {
        MAPPED => true,
        REFUSED => false,
        other => bail!("unexpected byte {other:#x} from the receiver"),
    };
    let sock = ours;
    Ok(Receiver {
        sock,
        pid,
        guard,
        mapped,
    })
}

fn finish_receiver(r: Receiver) -> anyhow::Result<WaitStatus> {
    // Printed once it returns: the receiver writes to our terminal meanwhile.
    let status = call!(after children::wait_deadline(r.pid, WAIT))?.status();
    r.guard.disarm();
    Ok(status)
}
// ANCHOR_END: send

/// `lesson-7 --receive-fd`: the receiving program of part 4. Its stdin is a
/// Unix socket; a memfd arrives on it with SCM_RIGHTS.
// ANCHOR: receive
pub fn receiver(trusting: bool) -> anyhow::Result<()> {
    let me = getpid();
    narrate::name_calls(format_args!("receiver {me}")); // its lines share our terminal
    let sock: RawFd = 0; // stdin
    let fd = call!(recvmsg(sock) => got_fd)?.context("no descriptor in the message")?;
    let seals = call!(fcntl(&fd, FcntlArg::F_GET_SEALS) => seals_text)?;
    if !SealFlag::from_bits_truncate(seals).contains(NEEDED) {
        if !trusting {
            println!(
                "[receiver {me}] refused: the memfd lacks F_SEAL_SHRINK, so the sender could \
                 shrink it under our mapping (SIGBUS)"
            );
            write(fd_of(sock), &[REFUSED]).context("write")?;
            std::process::exit(REFUSED_EXIT);
        }
        narrate::explain(format!("[receiver {me}] --trusting: maps it anyway"));
    }
    let size = call!(fstat(&fd))?.st_size as usize;
    let len = NonZeroUsize::new(size).context("the memfd is empty")?;
    let (prot, flags) = (ProtFlags::PROT_READ, MapFlags::MAP_SHARED);
    // SAFETY: a fresh read-only mapping at a kernel-chosen address; read
    // only byte by byte through raw pointers (see read_message).
    let ptr = unsafe { call!(mmap(None, len, prot, flags, &fd, 0)) }?;
    narrate::fact(
        &format!("[receiver {me}] read"),
        format!("{:?}", read_message(ptr)),
    );
    write(fd_of(sock), &[MAPPED]).context("write")?;
    // ANCHOR_END: receive

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
    let text = read_message(ptr); // again, after the sender's ftruncate
    narrate::fact(
        &format!("[receiver {me}] read again"),
        format!("{text:?}: still there"),
    );
    Ok(())
}

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
