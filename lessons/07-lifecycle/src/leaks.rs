//! Part 3. Leaks: a child creates a POSIX object and a System V segment and
//! is killed with SIGKILL. No destructor, no atexit handler, no signal
//! handler runs: both survive, because the kernel cleans up no names.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use anyhow::{Context, bail};
use common::args::{Hold, hold_point};
use common::children;
use common::narrate::{compare, evidence, explain, fact, note, section, step, subsection};
use common::{cleanup, fault, inspect, names, sysv};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork, pipe2, read};

/// The child's exit status when its `shm_open` / `shmget` fails.
const FAILED_SHM_OPEN: i32 = 10;
const FAILED_SHMGET: i32 = 11;

/// `/proc/sys/kernel/shm_rmid_forced`: 1 makes the kernel destroy a System V
/// segment when its last attached process exits.
fn rmid_forced() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Wait for one byte on `fd` for at most `timeout`; `None` on EOF/timeout.
fn read_byte(fd: &impl AsFd, timeout: Duration) -> anyhow::Result<Option<u8>> {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    if poll(&mut fds, ms).context("poll")? == 0 {
        return Ok(None);
    }
    let mut b = [0u8; 1];
    match read(fd, &mut b).context("read")? {
        0 => Ok(None),
        _ => Ok(Some(b[0])),
    }
}

pub fn run(hold: Hold) -> anyhow::Result<()> {
    section("Part 3. Leaks: a child is killed with SIGKILL");
    let name = names::unique_name(7, "leak");
    let file = names::file_name(&name).to_string();
    let key = names::unique_key(7);
    let size = inspect::page_size();
    let cname = CString::new(name.as_str())?; // built before fork: the child must not allocate

    // ANCHOR: child
    // Both must be free now; from here on, guards remove them on every path
    // (Ctrl-C included), since the child will never remove them itself.
    if shm_open(name.as_str(), OFlag::O_RDONLY, Mode::empty()).err() != Some(Errno::ENOENT)
        || sysv::shmget(key, 0, 0) != Err(Errno::ENOENT)
    {
        bail!("{name} or key {} already exists", names::key_hex(key));
    }
    let object = cleanup::posix_object(&name);
    let segment = cleanup::Guard::new(
        format!(
            "shmctl(shmget({}, 0, 0), IPC_RMID, NULL)",
            names::key_hex(key)
        ),
        move || {
            if let Ok(id) = sysv::shmget(key, 0, 0) {
                let _ = sysv::shmctl_rmid(id);
            }
        },
    );
    let (ready_r, ready_w) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;

    let s = step("fork()");
    // SAFETY: the child makes only async-signal-safe calls (shm_open is open(2)
    // on a path built on the stack, ftruncate, shmget, shmat, a volatile
    // store, write, pause, _exit) on data prepared before the fork.
    match s.check(unsafe { fork() })? {
        // SAFETY: in the child, only the async-signal-safe calls listed above,
        // on a C string and integers made before the fork; the volatile store
        // goes to the start of the page shmat just attached.
        ForkResult::Child => unsafe {
            children::die_with_parent();
            let fd = libc::shm_open(
                cname.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
                0o600,
            );
            if fd == -1 || libc::ftruncate(fd, size as libc::off_t) == -1 {
                libc::_exit(FAILED_SHM_OPEN);
            }
            let id = libc::shmget(key, size, libc::IPC_CREAT | libc::IPC_EXCL | 0o600);
            if id == -1 {
                libc::_exit(FAILED_SHMGET);
            }
            let p = libc::shmat(id, std::ptr::null(), 0);
            if p as isize != -1 {
                p.cast::<u64>().write_volatile(0xdeadbeef);
            }
            libc::write(ready_w.as_raw_fd(), b"!".as_ptr().cast(), 1);
            loop {
                libc::pause(); // until the parent's SIGKILL
            }
        },
        ForkResult::Parent { child } => {
            let child_guard = cleanup::child(child);
            drop(ready_w);
            s.ok(format!("{child}"));
            narrate_child(&name, key, size);
            if read_byte(&ready_r, Duration::from_secs(10))?.is_none() {
                let status = waitpid(child, None).context("waitpid")?;
                child_guard.disarm();
                match status {
                    WaitStatus::Exited(_, FAILED_SHM_OPEN) => object.disarm(),
                    WaitStatus::Exited(_, FAILED_SHMGET) => segment.disarm(),
                    _ => {}
                }
                bail!(
                    "the child failed to create its objects: {}",
                    fault::describe(status)
                );
            }
            // ANCHOR_END: child

            // ANCHOR: kill
            let s = step(format!("shmget({}, 0, 0)", names::key_hex(key)));
            let shmid = s.check(sysv::shmget(key, 0, 0))?;
            s.ok(format!(
                "{shmid}: the parent finds the child's segment by its key"
            ));
            evidence(
                &format!("ls -l /dev/shm/{file}"),
                inspect::dev_shm_ls(&name),
            );
            evidence("ipcs -m", inspect::ipcs_rows(shmid));

            let s = step(format!("kill({child}, SIGKILL)"));
            s.check(kill(child, Signal::SIGKILL))?;
            s.ok(0);
            let s = step(format!("waitpid({child}, &status, 0)"));
            let status = s
                .check(children::wait_deadline(child, Duration::from_secs(10)))?
                .status();
            child_guard.disarm();
            s.ok(fault::describe(status));
            if status != WaitStatus::Signaled(child, Signal::SIGKILL, false) {
                bail!(
                    "expected the child to die of SIGKILL: {}",
                    fault::describe(status)
                );
            }
            // ANCHOR_END: kill

            // ANCHOR: survive
            subsection("What the dead child left behind");
            evidence(
                &format!("ls -l /dev/shm/{file}"),
                inspect::dev_shm_ls(&name),
            );
            evidence("ipcs -m", inspect::ipcs_rows(shmid));
            let forced = rmid_forced();
            fact(
                "kernel.shm_rmid_forced",
                forced.map_or("unknown".to_string(), |v| v.to_string()),
            );
            let seg = inspect::sysv_segment(shmid);
            if inspect::dev_shm_entry(&name).is_none() {
                bail!("/dev/shm/{file} vanished with the child: expected it to survive");
            }
            match (&seg, forced) {
                (Some(s), Some(0) | None) if s.nattch == 0 && s.cpid == child.as_raw() => {
                    explain(format!(
                        "Both survive. The segment's creator (cpid {child}) is dead and nothing \
                         is attached (nattch 0), yet it stays until someone removes it: the \
                         kernel cleans up memory a dead process mapped, never a name."
                    ))
                }
                (None, Some(1)) => explain(
                    "The POSIX object survives. The System V segment is gone: this machine sets \
                     kernel.shm_rmid_forced = 1, so the kernel destroyed it when the last \
                     process attached to it exited.",
                ),
                _ => bail!(
                    "unexpected segment state after the crash: {seg:?}, shm_rmid_forced {forced:?}"
                ),
            }
            note(
                "kernel.shm_rmid_forced = 1 (sysctl, root) makes the kernel destroy System V \
                 segments that no process is attached to when their users exit. It is 0 by \
                 default, because programs may rely on a segment outliving them. Nothing \
                 similar exists for POSIX objects: /dev/shm is a filesystem, and files stay.",
            );
            hold_point(
                hold,
                "sleep(50)",
                &[
                    format!("ls -l /dev/shm/{file}"),
                    "ipcs -m -p          # cpid of a dead process".to_string(),
                    "scripts/cleanup     # the dry run lists both".to_string(),
                ],
            );
            // ANCHOR_END: survive

            // ANCHOR: remove
            subsection("Removing them: the calls, and the same from a shell");
            let s = step(format!("shm_unlink({name:?})"));
            s.check(shm_unlink(name.as_str()))?;
            object.disarm();
            s.ok(format!("0   (from a shell: rm /dev/shm/{file})"));
            if seg.is_some() {
                let s = step(format!("shmctl({shmid}, IPC_RMID, NULL)"));
                s.check(sysv::shmctl_rmid(shmid))?;
                s.ok(format!("0   (from a shell: ipcrm -m {shmid})"));
            }
            segment.disarm();
            evidence(
                &format!("ls -l /dev/shm/{file}"),
                inspect::dev_shm_ls(&name),
            );
            evidence("ipcs -m", inspect::ipcs_rows(shmid));
            compare(
                "shm_unlink and ipcs manage the objects",
                "after a crash nothing is removed by itself: the name in /dev/shm and the key in \
                 ipcs -m stay until someone removes them",
                "names are a filesystem entry and a kernel table slot, not memory of the \
                 process. A program that crashes between creating and unlinking leaks them, \
                 and its next start fails with EEXIST.",
            );
            // ANCHOR_END: remove
        }
    }
    Ok(())
}

/// What the child does, for the student (it can't print: it only does
/// async-signal-safe work).
fn narrate_child(name: &str, key: i32, size: usize) {
    explain(format!(
        "The child calls shm_open({name:?}, O_CREAT|O_EXCL|O_RDWR, 0600), ftruncate(fd, \
         {size}), shmget({}, {size}, IPC_CREAT|IPC_EXCL|0600) and shmat, writes 0xdeadbeef, \
         tells us on a pipe, and waits.",
        names::key_hex(key)
    ));
}
