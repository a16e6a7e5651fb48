//! Part 3. Leaks: a child creates a POSIX object and a System V segment and
//! is killed with SIGKILL. No destructor, no atexit handler, no signal
//! handler runs: both survive, because the kernel frees a dead process's
//! mappings, not the names it created. Two exceptions for the segment, both
//! detected and shown: `kernel.shm_rmid_forced = 1` destroys it when its
//! attach count falls to 0 (proc(5)), and the end of its IPC namespace (a
//! container stopping) destroys every System V object in it
//! (ipc_namespaces(7)).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use anyhow::{Context, bail};
use common::args::{Hold, hold_point};
use common::call::ipc_key;
use common::children;
use common::narrate::{compare, evidence, explain, fact, note, section, step, subsection};
use common::sysv::{self, shmget};
use common::{call, cleanup, fault, inspect, names};
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

    let (object, segment) = guards(&name, key)?; // the child will never remove them
    let (ready_r, ready_w) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;

    // ANCHOR: child
    // SAFETY: on data prepared before the fork, the child calls ftruncate,
    // write, pause and _exit, which signal-safety(7) lists, makes a volatile
    // store, and calls shmget, shmat and shm_open, which it does not (POSIX
    // lists no shared memory call): in glibc shmget and shmat are one system
    // call each, and since glibc 2.34 shm_open is open(2) on a path built on
    // the stack (2.33 and older first searched the mount table with
    // setmntent, which allocates: not safe here).
    match unsafe { call!(fork()) }? {
        // SAFETY: in the child, only the calls listed above, on a C string
        // and integers made before the fork; the volatile store goes to the
        // start of the page shmat just attached, which nothing else writes.
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
            narrate_child(&name, key, size);
            // ANCHOR_END: child
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

            // ANCHOR: kill
            let shmid = call!(shmget(key => ipc_key, 0, 0))?; // the child's, by its key
            evidence(
                &format!("ls -l /dev/shm/{file}"),
                inspect::dev_shm_ls(&name),
            );
            evidence("ipcs -m", inspect::ipcs_rows(shmid));
            call!(kill(child, Signal::SIGKILL))?;
            let status = call!(waitpid(child, None))?; // SIGKILL: it cannot linger
            child_guard.disarm();
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
            let forced = sysv::rmid_forced();
            fact(
                "kernel.shm_rmid_forced",
                forced.map_or("unknown", |f| if f { "1" } else { "0" }),
            );
            let seg = inspect::sysv_segment(shmid);
            if inspect::dev_shm_entry(&name).is_none() {
                bail!("/dev/shm/{file} vanished with the child: expected it to survive");
            }
            match (&seg, forced) {
                (Some(s), Some(false) | None) if s.nattch == 0 && s.cpid == child.as_raw() => {
                    explain(format!(
                        "Both survive: the segment's creator (cpid {child}) is dead and nattch \
                         is 0, yet it stays until someone removes it."
                    ))
                }
                (None, Some(true)) => explain(
                    "The POSIX object survives. The System V segment is gone: \
                     kernel.shm_rmid_forced is 1 in this IPC namespace, so the kernel destroyed \
                     it when the killed child's attachment went away (proc(5)).",
                ),
                _ => bail!(
                    "unexpected segment state after the crash: {seg:?}, shm_rmid_forced {forced:?}"
                ),
            }
            // ANCHOR_END: survive
            note(
                "Besides IPC_RMID, only kernel.shm_rmid_forced = 1 (0 by default; proc(5)) and \
                 the end of the IPC namespace (ipc_namespaces(7)) remove a System V segment. \
                 Nothing but an unlink removes a POSIX name.",
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

            another_user(&name, seg.as_ref().map(|s| s.shmid))?;

            // ANCHOR: remove
            subsection("Removing them: the calls, and the same from a shell");
            call!(shm_unlink(name.as_str()))?;
            object.disarm();
            fact("from a shell", format!("rm /dev/shm/{file}"));
            if seg.is_some() {
                call!(sysv::shmctl_rmid(shmid))?;
                fact("from a shell", format!("ipcrm -m {shmid}"));
            }
            segment.disarm();
            // ANCHOR_END: remove
            evidence(
                &format!("ls -l /dev/shm/{file}"),
                inspect::dev_shm_ls(&name),
            );
            evidence("ipcs -m", inspect::ipcs_rows(shmid));
            compare(
                "shm_unlink and ipcs manage the objects",
                if seg.is_some() {
                    "after a crash nothing was removed by itself: the name in /dev/shm and the \
                     key in ipcs -m stayed until we removed them"
                } else {
                    "after a crash the name in /dev/shm stayed until we removed it; the segment \
                     did not, because kernel.shm_rmid_forced = 1 destroyed it at nattch 0"
                },
                "names are a filesystem entry and a kernel table slot, not memory of the \
                 process. A program that crashes between creating and unlinking leaks them, \
                 and its next start fails with EEXIST. The table slot lasts at most as long \
                 as the IPC namespace (the container) it was made in.",
            );
        }
    }
    Ok(())
}

/// Check that the name and the key are free, then guard both: from here on
/// they are removed on every path (Ctrl-C included).
fn guards(name: &str, key: libc::key_t) -> anyhow::Result<(cleanup::Guard, cleanup::Guard)> {
    if shm_open(name, OFlag::O_RDONLY, Mode::empty()).err() != Some(Errno::ENOENT)
        || sysv::shmget(key, 0, 0) != Err(Errno::ENOENT)
    {
        bail!("{name} or key {} already exists", names::key_hex(key));
    }
    let object = cleanup::posix_object(name);
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
    Ok((object, segment))
}

/// The uid that part 3's second user takes (`nobody`).
const NOBODY: u32 = 65534;

/// Another user tries to remove our leftovers: `/dev/shm` is sticky, and a
/// segment may be removed only by its owner, its creator or root. Shown
/// with a child that becomes `nobody` when we are root; otherwise only the
/// directory's mode is shown.
fn another_user(name: &str, shmid: Option<i32>) -> anyhow::Result<()> {
    subsection("Another user's leftovers: you can't remove them");
    let md = std::fs::metadata("/dev/shm").context("stat /dev/shm")?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&md.permissions());
    evidence(
        "stat -c '%A %U' /dev/shm",
        [format!(
            "d{} {}",
            inspect::mode_string(mode & 0o7777),
            inspect::user_name(std::os::unix::fs::MetadataExt::uid(&md))
        )],
    );
    let sticky = mode & libc::S_ISVTX != 0;
    explain(if sticky {
        "The t at the end is the sticky bit (01000): in this directory a file can be removed \
         only by its owner, the directory's owner or root, like /tmp. Everyone may create \
         files in /dev/shm, but a stale object of another user stays until that user or root \
         removes it, and its name stays taken."
    } else {
        "This /dev/shm has no sticky bit (01000), unlike the usual drwxrwxrwt: here anyone who \
         may write the directory can remove anyone's objects."
    });
    if !sticky {
        return Ok(()); // another user could remove them here: nothing to show
    }
    if !nix::unistd::geteuid().is_root() {
        note(format!(
            "Run this part as root to watch a second user (uid {NOBODY}) try: this process can't \
             change its uid. With a classmate: they run `rm /dev/shm/{}` and get \
             \"Operation not permitted\".",
            names::file_name(name)
        ));
        return Ok(());
    }
    // ANCHOR: sticky
    let path = CString::new(format!("/dev/shm/{}", names::file_name(name)))?;
    let (r, w) = pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    // SAFETY: the child calls setgid, setuid, unlink, write and _exit, which
    // signal-safety(7) lists, and shmctl and setgroups, which it does not
    // (neither is in POSIX's list): shmctl is one system call in glibc, and
    // glibc implements setgroups exactly as it does setgid and setuid. All on
    // data prepared before the fork.
    match unsafe { call!(fork()) }? {
        // SAFETY: see above; `path` and `shmid` were made before the fork.
        ForkResult::Child => unsafe {
            // errno of each call, 0 for success: [become nobody, unlink, IPC_RMID]
            let mut errs: [i32; 3] = [0, -1, -1];
            let errno = |r: libc::c_int| if r == -1 { Errno::last_raw() } else { 0 };
            errs[0] = errno(libc::setgroups(0, std::ptr::null()));
            if errs[0] == 0 {
                errs[0] = errno(libc::setgid(NOBODY));
            }
            if errs[0] == 0 {
                errs[0] = errno(libc::setuid(NOBODY)); // the last: uid 0 may still setgid
            }
            if errs[0] == 0 {
                errs[1] = errno(libc::unlink(path.as_ptr()));
                if let Some(id) = shmid {
                    errs[2] = errno(libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()));
                }
            }
            libc::write(
                w.as_raw_fd(),
                errs.as_ptr().cast(),
                std::mem::size_of_val(&errs),
            );
            libc::_exit(0);
        },
        // ANCHOR_END: sticky
        ForkResult::Parent { child } => {
            let guard = cleanup::child(child);
            drop(w);
            let status = children::wait_deadline(child, Duration::from_secs(10))
                .context("waitpid")?
                .status();
            guard.disarm();
            let mut buf = [0u8; 12];
            let n = read(&r, &mut buf).context("read")?;
            if n != buf.len() || status != WaitStatus::Exited(child, 0) {
                bail!(
                    "the second user's child ended early: {}",
                    fault::describe(status)
                );
            }
            let errno = |i: usize| {
                i32::from_ne_bytes([buf[4 * i], buf[4 * i + 1], buf[4 * i + 2], buf[4 * i + 3]])
            };
            let s = step(format!(
                "[child {child}] setgroups(0, NULL), setgid({NOBODY}), setuid({NOBODY})"
            ));
            if errno(0) != 0 {
                s.outcome::<(), _>(Err(Errno::from_raw(errno(0))), |_| String::new())
                    .ok();
                note(
                    "This machine would not let the child become another user (a user namespace \
                      that maps no uid 65534?): nothing more to show.",
                );
                return Ok(());
            }
            s.ok(format!(
                "0: the child is now {}",
                inspect::user_name(NOBODY)
            ));
            let s = step(format!("[child {child}] unlink({path:?})"));
            match s.outcome(result(errno(1)), |_| "0".into()) {
                Err(Errno::EPERM) => {}
                other => bail!("expected EPERM from another user's unlink, got {other:?}"),
            }
            if let Some(id) = shmid {
                let s = step(format!("[child {child}] shmctl({id}, IPC_RMID, NULL)"));
                match s.outcome(result(errno(2)), |_| "0".into()) {
                    Err(Errno::EPERM) => {}
                    other => bail!("expected EPERM from another user's IPC_RMID, got {other:?}"),
                }
            }
            explain(format!(
                "{} with EPERM for {}: the sticky bit protects the file, and a segment \
                 may be removed only by its owner, its creator or a process with \
                 CAP_SYS_ADMIN. From a shell: su -s /bin/sh {} -c 'rm -f {}' says \
                 \"Operation not permitted\". This is why the cleanup command removes only \
                 what you own.",
                if shmid.is_some() {
                    "Both fail"
                } else {
                    "The unlink fails"
                },
                inspect::user_name(NOBODY),
                inspect::user_name(NOBODY),
                path.to_string_lossy()
            ));
        }
    }
    Ok(())
}

/// An errno as the child reported it: 0 for success.
fn result(errno: i32) -> Result<(), Errno> {
    if errno == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw(errno))
    }
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
