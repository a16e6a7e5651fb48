//! Lesson 4: `/dev/shm` unmounted, on a disk, removed, or full.
//!
//! The article unmounts `/dev/shm`, then removes it, and reports that
//! `shm_open` still worked and put its file in `/dev/`. Repeating that on a
//! shared machine would remove `/dev/shm` for everyone (even from a private
//! mount namespace: see `common::ns`), and today's glibc would not behave
//! that way anyway. So each scenario runs in a child process: this same
//! program, started again with `--internal-scenario N`, which makes a private
//! mount namespace of its own, stages the scenario there on a fresh tmpfs,
//! ramfs or bind mount, and shows what this machine's libc does. The parent
//! stays in the host's namespace and checks, after every scenario, that the
//! host's mount table has not changed.
//!
//! Run it: `cargo run -p lesson-4` (as root, or as a user allowed to make
//! user namespaces).

use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use common::args::{Cli, Hold, hold_point};
use common::children::{Waited, wait_deadline};
use common::fault::{self, FaultReport};
use common::narrate::{self, compare, evidence, explain, fact, note, section, step};
use common::report::CallResult;
use common::{Exit, cleanup, inspect, names, ns, shm};
use nix::errno::Errno;
use nix::fcntl::{OFlag, posix_fallocate};
use nix::mount::{MsFlags, mount};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::stat::{Mode, fstat};
use nix::sys::statfs::statfs;
use nix::sys::wait::WaitStatus;
use nix::unistd::{ForkResult, Pid, chdir, chroot, fork, ftruncate, getpid, mkdir, unlink};

/// How the parent starts a scenario's child: `lesson-4 --internal-scenario N
/// NAME SCRATCH`. Not in `--help`: only the lesson itself uses it.
const INTERNAL: &str = "--internal-scenario";

/// The exit status for "skipped: this machine can't stage the scenarios".
const SKIPPED: u8 = 77;

/// Set (by the tests only) to a glibc version such as `2.33` to make the
/// lesson behave as it does on that glibc. It says so wherever it matters.
const SIMULATE_GLIBC: &str = "SHM_LESSONS_SIMULATE_GLIBC";

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Scenario 4's tiny tmpfs, and the object it cannot hold.
const FULL_TMPFS: &str = "size=1M,mode=1777";
const BIG: usize = 4 << 20;

const SCENARIOS: [&str; 5] = [
    "0. Baseline: /dev/shm is a tmpfs",
    "1. Unmounted: /dev/shm is a plain directory",
    "2. On a disk filesystem: a scratch directory bind-mounted over /dev/shm",
    "3. Removed: no /dev/shm at all",
    "4. Full: a 1 MiB tmpfs on /dev/shm",
];

const ABOUT: &str = "Lesson 4: what shm_open does when /dev/shm is unmounted, on a disk, \
    removed or full. Each scenario is staged in a private mount namespace of its own child \
    process; the host's mounts are never changed.";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some(INTERNAL) {
        return scenario_main(&argv[1..]);
    }
    common::run(lesson)
}

// ANCHOR: parent
/// The parent: stays in the host's namespace, runs each scenario's child and
/// checks the host's mount table after each one.
fn lesson() -> anyhow::Result<()> {
    let args = Cli::new("lesson-4", ABOUT)
        .hold()
        .option_with(
            "--only",
            "N",
            "run only scenario N (0 to 4)",
            parse_scenario,
        )
        .parse();
    let hold = args.hold();
    let only = args.value("--only").and_then(|v| parse_scenario(v).ok());
    narrate::title(
        "lesson-4",
        "/dev/shm unmounted, on a disk, removed, or full",
        "The article unmounts and removes /dev/shm on its own machine. Here each scenario is \
         staged in a private mount namespace of a child process, so the host's /dev/shm is \
         never touched, and the lesson shows what this machine's libc does.",
    );

    section("The host's /dev/shm, before");
    this_libc().show();
    let before = ns::mount_table();
    evidence("findmnt /dev/shm", host_dev_shm());
    explain(
        "Never run the article's `umount /dev/shm; rmdir /dev/shm` on a shared machine: it \
         breaks every program that uses POSIX shared memory or semaphores. Since Linux 3.18 \
         even a private mount namespace does not protect you: rmdir of a directory that is a \
         mount point in another namespace succeeds and detaches that mount there. So the \
         children below never unmount or remove anything; they mount something new on top, \
         in a namespace that dies with them.",
    );

    let scratch = scratch_dir()?;
    let scratch_guard = cleanup::path(&scratch); // removed on every path
    let scratch_fs = inspect::fs_type(&scratch).context("statfs of the scratch directory")?;
    fact(
        "scratch directory",
        format!("{}, on {scratch_fs}", scratch.display()),
    );

    for (n, heading) in SCENARIOS.iter().enumerate() {
        if only.is_some_and(|o| o != n) {
            continue;
        }
        section(heading);
        let name = names::unique_name(4, &format!("s{n}"));
        if !run_scenario(n, &name, &scratch, hold)? {
            explain_without_namespaces(n);
            return Err(Exit(SKIPPED).into());
        }
        evidence(
            "findmnt /dev/shm   # back in the host's namespace",
            host_dev_shm(),
        );
        host_mounts_unchanged(&before)?;
        explain("The host's mount table is unchanged: the child's mounts died with it.");
    }

    section("The host, after");
    let count = host_mounts_unchanged(&before)?;
    fact(
        "/proc/self/mountinfo",
        format!("unchanged ({count} mounts, the same as before)"),
    );
    evidence("findmnt /dev/shm", host_dev_shm());
    let s = step(format!("rmdir({:?})", scratch.display().to_string()));
    s.check(std::fs::remove_dir(&scratch))?;
    scratch_guard.disarm();
    s.ok(0);
    narrate::conclude(
        "lesson-4 done: every scenario ran in a namespace of its own, and the host's mounts \
         are exactly as they were.",
    );
    Ok(())
}

/// The host's mount table, compared with `before`: an error lists every
/// change; otherwise the number of mounts.
fn host_mounts_unchanged(before: &[String]) -> anyhow::Result<usize> {
    let now = ns::mount_table();
    let diff = ns::mount_table_diff(before, &now);
    if !diff.is_empty() {
        bail!("the host's mount table changed:\n{}", diff.join("\n"));
    }
    Ok(now.len())
}

/// Start scenario `n` in a child and wait for it. False if the child could
/// not make a private mount namespace (it exits 77 after saying why).
fn run_scenario(n: usize, name: &str, scratch: &Path, hold: Hold) -> anyhow::Result<bool> {
    let hold = match hold {
        Hold::No => "no".to_string(),
        Hold::UntilEnter => "pause".to_string(),
        Hold::For(d) => d.as_secs().to_string(),
    };
    let args = [
        INTERNAL.to_string(),
        n.to_string(),
        name.to_string(),
        scratch.display().to_string(),
        hold,
    ];
    // If the child is killed before it removes its object (Ctrl-C during a
    // hold), the parent removes it: scenario 0's is in the host's /dev/shm,
    // scenario 2's in the scratch directory; the others die with the
    // child's namespace.
    let object = cleanup::posix_object(name);
    let child = ns::spawn_self(&args).context("starting the scenario's child")?;
    let pid = Pid::from_raw(child.id() as i32);
    let guard = cleanup::child(pid); // stopped and reaped on every path
    let waited = wait_deadline(pid, Duration::from_secs(4000)).context("waitpid")?;
    guard.disarm();
    if let Waited::Ended(WaitStatus::Exited(..)) = waited {
        object.disarm(); // the child ended normally: its own guards removed it
    }
    match waited {
        Waited::Ended(WaitStatus::Exited(_, 0)) => Ok(true),
        Waited::Ended(WaitStatus::Exited(_, code)) if code == i32::from(SKIPPED) => Ok(false),
        Waited::Ended(s) => bail!("scenario {n}'s child {}", fault::describe(s)),
        Waited::TimedOut(_) => bail!("scenario {n}'s child did not finish in time"),
    }
}
// ANCHOR_END: parent

// ANCHOR: child
/// A scenario's child: make the namespace while still single-threaded, then
/// stage and run. unshare(CLONE_NEWUSER) fails with EINVAL once there is a
/// second thread, and CLONE_NEWNS would move only this thread, leaving the
/// cleanup thread of `common::run` in the host's namespace.
fn scenario_main(args: &[String]) -> ExitCode {
    narrate::init();
    let (Some(n), Some(name), Some(scratch), Some(hold)) = (
        args.first().and_then(|a| parse_scenario(a).ok()),
        args.get(1),
        args.get(2).map(PathBuf::from),
        args.get(3).and_then(|h| match h.as_str() {
            "no" => Some(Hold::No),
            "pause" => Some(Hold::UntilEnter),
            secs => secs.parse().ok().map(|s| Hold::For(Duration::from_secs(s))),
        }),
    ) else {
        eprintln!(
            "usage: lesson-4 {INTERNAL} N NAME SCRATCH no|pause|SECS (lesson-4 starts this itself)"
        );
        return ExitCode::from(2);
    };
    fact("child", format!("pid {}", getpid()));
    if n > 0 {
        if let Err(refused) = ns::enter_private_mount_namespace() {
            refused.explain();
            return ExitCode::from(SKIPPED);
        }
    }
    common::run(|| match n {
        0 => baseline(name, hold),
        1 => unmounted(name, hold),
        2 => on_disk(name, &scratch, hold),
        3 => removed(name, &scratch, hold),
        4 => full(name, hold),
        _ => bail!("no scenario {n}"),
    })
}
// ANCHOR_END: child

// ANCHOR: baseline
fn baseline(name: &str, hold: Hold) -> anyhow::Result<()> {
    explain("No namespace is needed to look: this child sees the host's /dev/shm.");
    let s = step("statfs(\"/dev/shm\", &buf)");
    let st = s.check(statfs("/dev/shm"))?;
    let size = st.blocks() * st.block_size() as u64;
    s.ok(format!(
        "f_type {:#x} ({}), {} bytes",
        st.filesystem_type().0,
        inspect::fs_name(magic(&st)),
        size
    ));
    let (fd, object) = shm::create(name)?;
    let fs = locate(name)?;
    look(
        hold,
        &[&format!("ls -l /dev/shm/{}", names::file_name(name))],
    );
    remove(name, fd, object)?;
    result(0, "baseline", &format!("shm_open worked; {fs}"));
    Ok(())
}
// ANCHOR_END: baseline

// ANCHOR: unmounted
fn unmounted(name: &str, hold: Hold) -> anyhow::Result<()> {
    explain(
        "In 2010 udev mounted a tmpfs on /dev, and `umount /dev/shm` left /dev/shm as a plain \
         directory on it. We stage exactly that: a fresh tmpfs over /dev (hiding the host's \
         /dev in this namespace only), holding a plain shm directory.",
    );
    evidence(
        "findmnt /dev   # before: the /dev this child inherited from the host",
        ns::mount_containing("/dev").as_ref().map(findmnt_line),
    );
    let s = step("mount(\"udev\", \"/dev\", \"tmpfs\", MS_NOSUID, \"mode=0755\")");
    s.check(mount(
        Some("udev"),
        "/dev",
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    ))?;
    s.ok(0);
    let s = step("mkdir(\"/dev/shm\", 01777)");
    s.check(mkdir("/dev/shm", Mode::from_bits_truncate(0o1777)))?;
    s.ok(0);
    evidence(
        "findmnt -T /dev/shm   # the mount that holds it: /dev, not /dev/shm",
        ns::mount_containing("/dev/shm").as_ref().map(findmnt_line),
    );
    let (fd, object) = shm::create(name)?;
    let fs = locate(name)?;
    look(
        hold,
        &[
            "findmnt -N PID /dev   # the child's /dev: our tmpfs",
            "ls -l /proc/PID/root/dev/shm/   # the object, through the child's root",
            "findmnt /dev/shm   # the host's: unchanged",
        ],
    );
    remove(name, fd, object)?;
    compare(
        "after umount /dev/shm, \"shm_open only creates a file under /dev/shm, regardless of \
         whether /dev/shm is a partition mounted with tmpfs\"",
        &format!("shm_open worked; {fs}"),
        "glibc 2.34+ simply opens /dev/shm/NAME: a plain directory is fine, and the file lands \
         on whatever filesystem holds it. On a machine of today that is the /dev shown \
         above, usually a devtmpfs, which every namespace shares: the article's experiment run \
         for real would write into the host's /dev.",
    );
    result(1, "unmounted", &format!("shm_open worked; {fs}"));
    Ok(())
}
// ANCHOR_END: unmounted

// ANCHOR: on_disk
fn on_disk(name: &str, scratch: &Path, hold: Hold) -> anyhow::Result<()> {
    let dir = scratch.display().to_string();
    let s = step(format!("mount({dir:?}, \"/dev/shm\", NULL, MS_BIND, NULL)"));
    s.check(mount(
        Some(scratch),
        "/dev/shm",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ))?;
    s.ok(0);
    let libc = this_libc();
    if libc.searches {
        // Old glibc rejects this /dev/shm (not a tmpfs) and takes the first
        // tmpfs in the mount table: one of the host's, such as /run.
        explain(format!(
            "{libc} is older than 2.34: its shm_open would reject this /dev/shm (not a tmpfs) \
             and create the object in the first tmpfs of /proc/mounts, which in this \
             namespace is one of the host's. So the lesson does not call it, and replays the \
             search instead (statfs only):"
        ));
        let dir = where_is_shmfs_2_33();
        let dir = dir.as_deref().unwrap_or("nothing (ENOSYS)");
        result(
            2,
            "on disk",
            &format!("shm_open not called: {libc} would use {dir}"),
        );
        return Ok(());
    }
    let (fd, object) = shm::create(name)?;
    let page = inspect::page_size();
    let s = step(format!("ftruncate({}, {page})", fd.as_raw_fd()));
    s.check(ftruncate(&fd, page as libc::off_t))?;
    s.ok(0);
    let s = step(format!("pwrite({}, \"hello\", 5, 0)", fd.as_raw_fd()));
    let written = s.check(nix::sys::uio::pwrite(&fd, b"hello", 0))?;
    s.ok(written);
    let fs = locate(name)?;
    evidence(
        &format!("ls -l {dir}   # the same file, by its path on disk"),
        inspect::shm_entries_in(scratch)
            .iter()
            .map(inspect::ShmEntry::ls_line),
    );
    look(
        hold,
        &[
            &format!("ls -l {dir}   # the object, as a file on disk"),
            "findmnt -N PID /dev/shm   # the child's bind mount",
        ],
    );
    write_back(&fd, page)?;
    remove(name, fd, object)?;
    explain(
        "The object is an ordinary file now. Mapping it still shares pages through the page \
         cache, but what is written to it also goes to the disk, and an object nobody \
         unlinked survives a reboot: on tmpfs it would vanish.",
    );
    result(2, "on disk", &format!("shm_open worked; {fs}"));
    Ok(())
}

/// Scenario 2's evidence that a disk file's pages are written back: this
/// process's `write_bytes` (`/proc/self/io`: bytes it made dirty for the
/// storage layer) and the machine's `Dirty` and `Writeback`
/// (`/proc/meminfo`), around a 4 MiB `pwrite` and an `fsync`.
fn write_back(fd: &OwnedFd, at: usize) -> anyhow::Result<()> {
    narrate::subsection("writeback, in the kernel's own figures");
    for (knob, what) in [
        (
            "dirty_writeback_centisecs",
            "the flusher threads wake up this often",
        ),
        (
            "dirty_expire_centisecs",
            "dirty data this old is written at their next wake-up",
        ),
    ] {
        let v = std::fs::read_to_string(format!("/proc/sys/vm/{knob}"));
        let v = v.map_or_else(|_| "unreadable".into(), |v| v.trim().to_string());
        fact(&format!("vm.{knob}"), format!("{v} ({what}; in 1/100 s)"));
    }
    let before = Writeback::now("before the write");
    let data = vec![0x5a_u8; BIG];
    let s = step(format!("pwrite({}, buf, {BIG}, {at})", fd.as_raw_fd()));
    let written = s.check(nix::sys::uio::pwrite(fd, &data, at as libc::off_t))?;
    s.ok(written);
    let dirtied = Writeback::now("after the write");
    let s = step(format!("fsync({})", fd.as_raw_fd()));
    s.check(nix::unistd::fsync(fd))?;
    s.ok(0);
    let synced = Writeback::now("after fsync");
    let (Some(b), Some(d)) = (before.write_bytes, dirtied.write_bytes) else {
        note("/proc/self/io is missing (no task I/O accounting in this kernel): not shown.");
        return Ok(());
    };
    let change = |from: &Writeback, to: &Writeback| match (from.dirty, to.dirty) {
        (Some(a), Some(b)) => format!("{:+}", b as i64 - a as i64),
        _ => "?".into(),
    };
    fact(
        "this process's write_bytes",
        format!("+{} bytes after the pwrite", d.saturating_sub(b)),
    );
    if d - b >= BIG as u64 {
        explain(format!(
            "The kernel counted our {BIG} bytes as data this process made dirty for the disk. \
             Machine-wide, Dirty went {} kB with the write and {} kB with fsync (other \
             programs' writes count there too). Without fsync (or msync(MS_SYNC) on a \
             mapping), a flusher thread writes them once they are older than \
             vm.dirty_expire_centisecs, at its next wake-up. That is disk I/O tmpfs never does.",
            change(&before, &dirtied),
            change(&dirtied, &synced),
        ));
    } else {
        explain(format!(
            "write_bytes did not grow by our {BIG} bytes: this filesystem sends nothing to a \
             disk (a memory filesystem: no disk directory was found for the scratch directory)."
        ));
    }
    Ok(())
}

/// `write_bytes` of `/proc/self/io`, and `Dirty` and `Writeback` of
/// `/proc/meminfo` (kB), shown as evidence when read.
struct Writeback {
    write_bytes: Option<u64>,
    dirty: Option<u64>,
}

impl Writeback {
    fn now(when: &str) -> Writeback {
        let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
        let write_bytes = io
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))
            .and_then(|v| v.trim().parse().ok());
        let dirty = inspect::meminfo_kib("Dirty");
        let writeback = inspect::meminfo_kib("Writeback");
        let show = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
        evidence(
            &format!(
                "grep -E '^(Dirty|Writeback):' /proc/meminfo; grep ^write_bytes \
                 /proc/{}/io   # {when}",
                getpid()
            ),
            [
                format!("Dirty: {} kB", show(dirty)),
                format!("Writeback: {} kB", show(writeback)),
                format!("write_bytes: {}", show(write_bytes)),
            ],
        );
        Writeback { write_bytes, dirty }
    }
}
// ANCHOR_END: on_disk

// ANCHOR: removed
fn removed(name: &str, scratch: &Path, hold: Hold) -> anyhow::Result<()> {
    explain(
        "We stage a 2010 machine with /dev/shm removed: a new root (a ramfs, so nothing is \
         written to disk) holding a udev tmpfs on /dev without shm, and /proc. After chroot, \
         /proc/mounts lists these mounts, in this order, as a 2010 mount table would, plus \
         whatever the host has mounted under /proc (the recursive bind brings those too).",
    );
    let root = scratch.display().to_string();
    let s = step(format!("mount(\"rootfs\", {root:?}, \"ramfs\", 0, NULL)"));
    s.check(mount(
        Some("rootfs"),
        scratch,
        Some("ramfs"),
        MsFlags::empty(),
        None::<&str>,
    ))?;
    s.ok(0);
    for sub in ["dev", "proc"] {
        let p = scratch.join(sub);
        let s = step(format!("mkdir({:?}, 0755)", p.display().to_string()));
        s.check(mkdir(&p, Mode::from_bits_truncate(0o755)))?;
        s.ok(0);
    }
    let dev = format!("{root}/dev");
    let s = step(format!(
        "mount(\"udev\", {dev:?}, \"tmpfs\", MS_NOSUID, \"mode=0755\")"
    ));
    s.check(mount(
        Some("udev"),
        dev.as_str(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    ))?;
    s.ok(0);
    let proc = format!("{root}/proc");
    let s = step(format!(
        "mount(\"/proc\", {proc:?}, NULL, MS_BIND|MS_REC, NULL)"
    ));
    s.check(mount(
        Some("/proc"),
        proc.as_str(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ))?;
    s.ok(0);
    let s = step(format!("chroot({root:?})"));
    s.check(chroot(scratch))?;
    s.ok(0);
    let s = step("chdir(\"/\")");
    s.check(chdir("/"))?;
    s.ok(0);
    evidence(
        "cat /proc/mounts",
        std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>(),
    );

    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
    let libc = this_libc();
    let outcome = if libc.searches {
        explain(format!(
            "{libc} is older than 2.34: its shm_open would run the search below. The lesson \
             does not call it, and replays the search instead."
        ));
        format!("shm_open not called on {libc}")
    } else {
        let s = step(format!(
            "shm_open({name:?}, {}, 0600)",
            narrate::flags(flags)
        ));
        let opened = s.outcome(
            shm_open(name, flags, Mode::from_bits_truncate(0o600)),
            |fd| format!("fd {}", fd.as_raw_fd()),
        );
        if let Ok(fd) = opened {
            let object = cleanup::posix_object(name);
            remove(name, fd, object)?;
            bail!("shm_open worked without /dev/shm: this libc does not behave like glibc 2.34+");
        }
        let errno = opened.err().unwrap_or(Errno::UnknownErrno);
        format!("shm_open failed with {}", common::report::errno_name(errno))
    };
    look(
        hold,
        &[
            "cat /proc/PID/mounts   # the child's 2010 mount table",
            "ls -l /proc/PID/root/dev/   # no shm directory",
        ],
    );
    libc.show();

    section("What glibc 2.33 would have done: where_is_shmfs(), in Rust");
    let dir = where_is_shmfs_2_33();
    match &dir {
        Some(d) => fact("glibc 2.33 would use", d),
        None => fact("glibc 2.33 would fail with", "ENOSYS (no tmpfs mounted)"),
    }
    if let Some(d) = &dir {
        explain(
            "glibc 2.33's shm_open then opened that directory + NAME, with these flags. We do \
             it by hand, in our staged /dev:",
        );
        let path = format!("{d}{}", names::file_name(name));
        let oflags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let s = step(format!("open({path:?}, {}, 0600)", narrate::flags(oflags)));
        let fd = s.check(nix::fcntl::open(
            path.as_str(),
            oflags,
            Mode::from_bits_truncate(0o600),
        ))?;
        let file = cleanup::path(&path); // removed on every path
        s.ok(format!("fd {}", fd.as_raw_fd()));
        evidence(
            &format!("ls -l {d}"),
            inspect::shm_entries_in(Path::new(d))
                .iter()
                .map(inspect::ShmEntry::ls_line),
        );
        drop(fd);
        let s = step(format!("unlink({path:?})"));
        s.check(unlink(path.as_str()))?;
        file.disarm();
        s.ok(0);
    }
    compare(
        "after rmdir /dev/shm, \"the program cannot find /dev/shm, and the shared memory \
         file is created in the /dev/ directory\" (ls -l /dev/mymem)",
        &format!(
            "{outcome}{}; glibc 2.33's search would have picked {}",
            if libc.searches {
                String::new()
            } else {
                format!(" on {libc}")
            },
            dir.as_deref().unwrap_or("nothing")
        ),
        "glibc up to 2.33 looked for the first tmpfs in /proc/mounts when /dev/shm was not a \
         tmpfs, and in 2010 that was udev's /dev. Since 2.34 glibc always uses /dev/shm and \
         reports ENOENT when it is missing.",
    );
    result(
        3,
        "removed",
        &format!(
            "{outcome}; glibc 2.33's where_is_shmfs would have used {}",
            dir.as_deref().unwrap_or("nothing (ENOSYS)")
        ),
    );
    Ok(())
}

/// A statfs result's f_type (its C type differs between architectures).
fn magic(st: &nix::sys::statfs::Statfs) -> i64 {
    #[allow(clippy::unnecessary_cast)]
    let m = st.filesystem_type().0 as i64;
    m
}

/// glibc 2.33's `where_is_shmfs()` (sysdeps/unix/sysv/linux/shm-directory.c):
/// `/dev/shm/` if statfs says tmpfs or ramfs, else the first `tmpfs` or `shm`
/// entry of `/proc/mounts` (or `/etc/fstab`) that statfs confirms.
fn where_is_shmfs_2_33() -> Option<String> {
    let is_shmfs = |magic: i64| magic == TMPFS_MAGIC || magic == RAMFS_MAGIC;
    let s = step("statfs(\"/dev/shm/\", &f)");
    if let Ok(st) = s.outcome(statfs("/dev/shm/"), |st| {
        format!("0, f_type {:#x}", magic(st))
    }) {
        if is_shmfs(magic(&st)) {
            return Some("/dev/shm/".into());
        }
    }
    explain(
        "not a tmpfs: \"OK, do it the hard way\": the first tmpfs (or shm) entry in \
         /proc/mounts that statfs confirms.",
    );
    let table = std::fs::read_to_string("/proc/mounts")
        .or_else(|_| std::fs::read_to_string("/etc/fstab"))
        .unwrap_or_default();
    for line in table.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dir), Some(kind)) = (f.get(1), f.get(2)) else {
            continue;
        };
        if *kind != "tmpfs" && *kind != "shm" {
            continue;
        }
        let dir = inspect::unescape_octal(dir);
        if !dir.starts_with('/') {
            continue;
        }
        let s = step(format!("statfs({dir:?}, &f)"));
        match s.outcome(statfs(dir.as_str()), |st| {
            format!("0, f_type {:#x}", magic(st))
        }) {
            Ok(st) if is_shmfs(magic(&st)) => {
                return Some(if dir.ends_with('/') { dir } else { dir + "/" });
            }
            _ => continue,
        }
    }
    None
}
// ANCHOR_END: removed

// ANCHOR: full
fn full(name: &str, hold: Hold) -> anyhow::Result<()> {
    let s = step(format!(
        "mount(\"tmpfs\", \"/dev/shm\", \"tmpfs\", MS_NOSUID|MS_NODEV, \"{FULL_TMPFS}\")"
    ));
    s.check(mount(
        Some("tmpfs"),
        "/dev/shm",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(FULL_TMPFS),
    ))?;
    s.ok(0);
    let st = statfs("/dev/shm").call("statfs(\"/dev/shm\")")?;
    let tmpfs_size = st.blocks() * st.block_size() as u64;
    fact("tmpfs size", format!("{tmpfs_size} bytes"));
    let page = inspect::page_size();

    let (fd, object) = shm::create(name)?;
    let s = step(format!("ftruncate({}, {BIG})", fd.as_raw_fd()));
    s.check(ftruncate(&fd, BIG as libc::off_t))?;
    s.ok(0);
    let st = fstat(&fd).call("fstat")?;
    fact(
        "fstat",
        format!(
            "st_size {} bytes, st_blocks {} (512-byte blocks really allocated)",
            st.st_size, st.st_blocks
        ),
    );
    explain(
        "ftruncate only sets the size: the file is sparse, and tmpfs allocates a page the first \
         time it is touched. So it succeeds on a tmpfs four times too small.",
    );
    look(
        hold,
        &[
            &format!(
                "ls -ls /proc/PID/root/dev/shm/{}   # 4 MiB, 0 blocks",
                names::file_name(name)
            ),
            &format!(
                "stat -f /proc/PID/root/dev/shm   # the 1 MiB tmpfs: {} blocks of {page} \
                 bytes, all free",
                tmpfs_size / page as u64
            ),
        ],
    );

    let len = NonZeroUsize::new(BIG).context("BIG is 0")?;
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let s = step(format!(
        "mmap(NULL, {BIG}, PROT_READ|PROT_WRITE, MAP_SHARED, {}, 0)",
        fd.as_raw_fd()
    ));
    // SAFETY: a fresh mapping at an address the kernel chooses overlaps no
    // Rust object; only the forked child touches it, with volatile stores.
    let ptr = s.check(unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, &fd, 0) })?;
    s.ok(format!("{:p}", ptr.as_ptr()));

    let report = FaultReport::new().call("mmap(MAP_SHARED|MAP_ANONYMOUS) for the fault report")?;
    let action = SigAction::new(
        SigHandler::SigAction(fault::report_fault),
        SaFlags::SA_SIGINFO | SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    let s = step("fork()");
    // SAFETY: the child only calls sigaction, does volatile stores and atomic
    // progress updates, and leaves with _exit: all async-signal-safe.
    match s.check(unsafe { fork() })? {
        ForkResult::Child => {
            // SAFETY: sigaction is async-signal-safe; report_fault is too.
            unsafe {
                let _ = sigaction(Signal::SIGBUS, &action);
            }
            for i in 0..BIG / page {
                // SAFETY: i * page < BIG: inside the live MAP_SHARED mapping.
                unsafe { ptr.as_ptr().cast::<u8>().add(i * page).write_volatile(1) };
                report.set_progress(i as u64 + 1);
            }
            // SAFETY: _exit skips destructors that belong to the parent.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            let guard = cleanup::child(child);
            s.ok(child);
            explain("The child writes one byte into each page, in order, counting them.");
            let waited = wait_deadline(child, Duration::from_secs(60)).call("waitpid")?;
            guard.disarm();
            fact("the child", fault::describe(waited.status()));
            if let Some(f) = report.fault() {
                fact("its handler saw", f);
            }
        }
    }
    let pages = report.progress();
    let signal = report
        .fault()
        .map(|f| f.signal_name())
        .unwrap_or("no signal");
    fact(
        "pages written before the fault",
        format!(
            "{pages} ({} bytes; the tmpfs holds {tmpfs_size})",
            pages * page as u64
        ),
    );
    let s = step(format!("munmap({:p}, {BIG})", ptr.as_ptr()));
    // SAFETY: exactly the mapping made above; no reference into it remains.
    s.check(unsafe { munmap(ptr, BIG) })?;
    s.ok(0);
    remove(name, fd, object)?;

    explain(
        "posix_fallocate asks for every page up front, so a full tmpfs is an error at the call \
         instead of a SIGBUS later, somewhere in the program:",
    );
    let name2 = format!("{name}-fallocate");
    let (fd, object) = shm::create(&name2)?;
    let s = step(format!("posix_fallocate({}, 0, {BIG})", fd.as_raw_fd()));
    let fallocated = s.outcome(posix_fallocate(&fd, 0, BIG as libc::off_t), |_| "0".into());
    let errno = match fallocated {
        Ok(()) => "no error".to_string(),
        Err(e) => common::report::errno_name(e),
    };
    remove(&name2, fd, object)?;
    note(
        "Docker gives every container a 64 MiB /dev/shm by default. A program that only \
         ftruncates dies of SIGBUS there, like the child above: PyTorch's DataLoader workers \
         print \"Unexpected bus error encountered in worker. This might be caused by \
         insufficient shared memory (shm).\" PostgreSQL does what this last step does: since \
         2018 it calls posix_fallocate on every new dynamic shared memory segment, so a \
         parallel query gets an error instead of a crash. `docker run --shm-size=1g` makes \
         /dev/shm bigger.",
    );
    if let Err(e) = fallocated {
        fact(
            "PostgreSQL would report this run's failure as",
            format!(
                "could not resize shared memory segment \"{name2}\" to {BIG} bytes: {}",
                e.desc()
            ),
        );
    }
    result(
        4,
        "full",
        &format!(
            "ftruncate to {BIG} worked; {signal} after {pages} pages (tmpfs size \
             {tmpfs_size}); posix_fallocate: {errno}"
        ),
    );
    Ok(())
}
// ANCHOR_END: full

// ANCHOR: helpers
/// Where the object's file landed: its filesystem type and the mount that
/// holds it (`findmnt -T`). Returns the summary for the result line.
fn locate(name: &str) -> anyhow::Result<String> {
    let path = format!("/dev/shm/{}", names::file_name(name));
    evidence(&format!("ls -l {path}"), inspect::dev_shm_ls(name));
    let s = step(format!("statfs({path:?}, &buf)"));
    let fs = s.check(inspect::fs_type(&path))?;
    s.ok(format!("f_type {:#x} ({})", fs.magic, fs.name));
    let mount = ns::mount_containing(&path);
    evidence(
        &format!("findmnt -T {path}"),
        mount.as_ref().map(findmnt_line),
    );
    let at = mount.map(|m| m.mount_point).unwrap_or_else(|| "?".into());
    Ok(format!("the object is on {fs}, in the mount at {at}"))
}

/// `shm_unlink(NAME)` and close: the lesson removes what it made.
fn remove(name: &str, fd: OwnedFd, object: cleanup::Guard) -> anyhow::Result<()> {
    drop(fd);
    let s = step(format!("shm_unlink({name:?})"));
    s.check(shm_unlink(name))?;
    object.disarm();
    s.ok(0);
    Ok(())
}

/// This machine's C library, as far as `shm_open` goes.
struct Libc {
    /// `gnu_get_libc_version()`, or what [`SIMULATE_GLIBC`] says.
    version: Option<String>,
    /// glibc before 2.34: `shm_open` searches the mount table for a tmpfs
    /// when /dev/shm is not one (`where_is_shmfs`), instead of simply using
    /// /dev/shm. Scenarios 2 and 3 then replay the search and never call it.
    searches: bool,
    simulated: bool,
}

fn this_libc() -> Libc {
    let (version, simulated) = match std::env::var(SIMULATE_GLIBC) {
        Ok(v) => (Some(v), true),
        Err(_) => (inspect::libc_version(), false),
    };
    let searches = version
        .as_deref()
        .and_then(|v| inspect::version_at_least(v, 2, 34))
        == Some(false);
    Libc {
        version,
        searches,
        simulated,
    }
}

impl std::fmt::Display for Libc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.version {
            Some(v) if self.simulated => write!(f, "glibc {v} (simulated)"),
            Some(v) => write!(f, "glibc {v}"),
            None => write!(f, "a C library that is not glibc"),
        }
    }
}

impl Libc {
    fn show(&self) {
        let v = self.version.as_deref().unwrap_or("(not glibc)");
        fact("gnu_get_libc_version()", v);
        if self.simulated {
            note(format!(
                "simulated: {SIMULATE_GLIBC}={v} (a switch for the tests) makes the lesson act \
                 as on that glibc; this machine's is {}",
                inspect::libc_version().unwrap_or_else(|| "not glibc".into())
            ));
        }
    }
}

/// With `--hold`/`--pause`: wait inside the child's namespace while the
/// student looks from a second terminal (`PID` is this child's pid).
fn look(hold: Hold, commands: &[&str]) {
    if hold == Hold::No {
        return;
    }
    let pid = getpid().to_string();
    let commands: Vec<String> = commands.iter().map(|c| c.replace("PID", &pid)).collect();
    hold_point(hold, "sleep(50)", &commands);
}

/// A scenario number for `--only` and the internal entry point.
fn parse_scenario(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n < SCENARIOS.len() => Ok(n),
        _ => Err(format!(
            "{s:?} is not a scenario (0 to {})",
            SCENARIOS.len() - 1
        )),
    }
}

/// The line the tests (and a student skimming) look for.
fn result(n: usize, what: &str, text: &str) {
    fact(&format!("result {n} ({what})"), text);
}

/// `TARGET SOURCE FSTYPE OPTIONS`, as findmnt prints a mount: the mount's
/// options, then the filesystem's, each named once (`rw` is in both).
fn findmnt_line(m: &inspect::MountInfo) -> String {
    let mut options: Vec<&str> = Vec::new();
    for o in m.options.split(',') {
        if !options.contains(&o) {
            options.push(o);
        }
    }
    format!(
        "{} {} {} {}",
        m.mount_point,
        m.source,
        m.fs_type,
        options.join(",")
    )
}

/// Every mount at /dev/shm in the host's namespace (they may be stacked).
fn host_dev_shm() -> Vec<String> {
    let lines: Vec<String> = inspect::mounts()
        .iter()
        .filter(|m| m.mount_point == "/dev/shm")
        .map(findmnt_line)
        .collect();
    if lines.is_empty() {
        vec!["(nothing is mounted on /dev/shm)".into()]
    } else {
        lines
    }
}

/// A fresh directory on a disk filesystem for scenario 2's bind mount (and
/// the mount point of scenario 3's new root): the temp dir if it is on a
/// disk, else /var/tmp (on a disk by convention: it survives reboots), else
/// next to the executable. If none is, it says so: scenario 2 then shows a
/// memory filesystem, not a disk.
fn scratch_dir() -> anyhow::Result<PathBuf> {
    let mut candidates = vec![std::env::temp_dir(), PathBuf::from("/var/tmp")];
    if let Some(dir) = std::env::current_exe()?.parent() {
        candidates.push(dir.to_path_buf());
    }
    let on_disk = |p: &PathBuf| {
        inspect::fs_type(p).is_ok_and(|t| t.magic != TMPFS_MAGIC && t.magic != RAMFS_MAGIC)
    };
    let base = candidates
        .iter()
        .find(|p| on_disk(p))
        .unwrap_or(&candidates[0]);
    let dir = base.join(format!("{}4-{}-disk", names::PREFIX, getpid()));
    let s = step(format!("mkdir({:?}, 0700)", dir.display().to_string()));
    s.check(std::fs::DirBuilder::new().mode(0o700).create(&dir))?;
    s.ok(0);
    if !on_disk(&dir) {
        narrate::warn(format!(
            "no directory on a disk filesystem found ({}): scenario 2 will show {} instead",
            candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            inspect::fs_type(&dir).map_or_else(|_| "?".into(), |t| t.to_string()),
        ));
    }
    Ok(dir)
}

/// Without namespaces: what each remaining scenario would have shown, and
/// how to run the lesson so it can.
fn explain_without_namespaces(from: usize) {
    let what: [&str; 5] = [
        "",
        "1. Unmounted: /dev/shm is a plain directory; shm_open works and the file lands on the \
         filesystem beneath (glibc 2.34+ does not check the type).",
        "2. On a disk: a directory on ext4 (or overlay, ...) bind-mounted over /dev/shm; \
         shm_open works and makes an ordinary disk file (f_type 0xef53 on ext4): written back \
         to disk, and still there after a reboot.",
        "3. Removed: shm_open fails with ENOENT on glibc 2.34+. glibc 2.33 searched \
         /proc/mounts for the first tmpfs instead, and in 2010 that was udev's /dev: hence the \
         article's /dev/mymem.",
        &format!(
            "4. Full: on a 1 MiB tmpfs, ftruncate to 4 MiB succeeds (the file is sparse), a \
             child writing page by page dies of SIGBUS after about {} pages (1 MiB in pages of \
             {} bytes), and posix_fallocate fails at once with ENOSPC.",
            (1 << 20) / inspect::page_size(),
            inspect::page_size()
        ),
    ];
    section("Without a private mount namespace");
    explain(
        "The child could not make a private mount namespace (it said which call failed, and \
         why, just above), and this lesson never changes the host's mounts. What the \
         remaining scenarios show:",
    );
    for w in what.iter().skip(from.max(1)) {
        explain(w);
    }
    explain("To run them, as root (or where unprivileged user namespaces are allowed):");
    narrate::commands(&["cargo build -p lesson-4 && sudo ./target/debug/lesson-4"]);
    narrate::warn(format!(
        "skipped: exit status {SKIPPED} (this machine can't stage the scenarios)"
    ));
}
// ANCHOR_END: helpers
