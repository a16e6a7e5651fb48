//! What the scenarios share: where an object landed, its removal, the pause
//! for a second terminal, the result line the tests read, and the parent's
//! view of the host.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use common::args::{Hold, hold_point};
use common::narrate::{self, evidence, explain, fact, section};
use common::{call, cleanup, inspect, names, ns};
use nix::sys::mman::shm_unlink;
use nix::sys::stat::Mode;
use nix::unistd::{getpid, mkdir};

use crate::glibc;

pub const TMPFS_MAGIC: i64 = 0x0102_1994;
pub const RAMFS_MAGIC: i64 = 0x8584_58f6;

// ANCHOR: helpers
/// Where the object's file landed: its filesystem type and the mount that
/// holds it (`findmnt -T`). Returns the summary for the result line.
pub fn locate(name: &str) -> anyhow::Result<String> {
    let path = format!("/dev/shm/{}", names::file_name(name));
    evidence(&format!("ls -l {path}"), inspect::dev_shm_ls(name));
    let fs = call!(statfs(path.as_str()) => fs_shown)?;
    let mount = ns::mount_containing(&path);
    evidence(
        &format!("findmnt -T {path}"),
        mount.as_ref().map(findmnt_line),
    );
    let at = mount.map(|m| m.mount_point).unwrap_or_else(|| "?".into());
    Ok(format!("the object is on {fs}, in the mount at {at}"))
}

/// `shm_unlink(NAME)` and close: the lesson removes what it made.
pub fn remove(name: &str, fd: OwnedFd, object: cleanup::Guard) -> anyhow::Result<()> {
    drop(fd);
    call!(shm_unlink(name))?;
    object.disarm();
    Ok(())
}
// ANCHOR_END: helpers

/// `findmnt -T PATH`: the mount that holds PATH, as findmnt prints it.
pub fn findmnt_t(path: &str) -> Option<String> {
    ns::mount_containing(path).as_ref().map(findmnt_line)
}

/// How a `statfs` result reads after `=`: `0 (f_type 0x1021994, tmpfs)`.
pub fn fs_shown(t: &inspect::FsType) -> String {
    format!("0 (f_type {:#x}, {})", t.magic, t.name)
}

/// `statfs(PATH, &buf)`, as the filesystem's magic number and name.
pub fn statfs(path: &str) -> nix::Result<inspect::FsType> {
    inspect::fs_type(path)
}

/// A statfs result's f_type (its C type differs between architectures).
pub fn magic(st: &nix::sys::statfs::Statfs) -> i64 {
    #[allow(clippy::unnecessary_cast)]
    let m = st.filesystem_type().0 as i64;
    m
}

/// With `--hold`/`--pause`: wait inside the child's namespace while the
/// student looks from a second terminal (`PID` is this child's pid).
pub fn look(hold: Hold, commands: &[&str]) {
    if hold == Hold::No {
        return;
    }
    let pid = getpid().to_string();
    let commands: Vec<String> = commands.iter().map(|c| c.replace("PID", &pid)).collect();
    hold_point(hold, "sleep(50)", &commands);
}

/// The line the tests (and a student skimming) look for.
pub fn result(n: usize, what: &str, text: &str) {
    fact(&format!("result {n} ({what})"), text);
}

/// `TARGET SOURCE FSTYPE OPTIONS`, as findmnt prints a mount: the mount's
/// options, then the filesystem's, each named once (`rw` is in both).
pub fn findmnt_line(m: &inspect::MountInfo) -> String {
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
pub fn host_dev_shm() -> Vec<String> {
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

/// The parent's opening: the title, this machine's libc and /dev/shm, and
/// why the article's experiment is never run as written. Returns the host's
/// mount table, to compare with after every scenario.
pub fn host_before() -> Vec<String> {
    narrate::title(
        "lesson-4",
        "/dev/shm unmounted, on a disk, removed, or full",
        "The article unmounts and removes /dev/shm on its own machine. Here each scenario is \
         staged in a private mount namespace of a child process, so the host's /dev/shm is \
         never touched, and the lesson shows what this machine's libc does.",
    );
    section("The host's /dev/shm, before");
    glibc::this_libc().show();
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
    before
}

/// A fresh directory on a disk filesystem for scenario 2's bind mount (and
/// the mount point of scenario 3's new root): the temp dir if it is on a
/// disk, else /var/tmp (on a disk by convention: it survives reboots), else
/// next to the executable. If none is, it says so: scenario 2 then shows a
/// memory filesystem, not a disk.
pub fn scratch_dir() -> anyhow::Result<PathBuf> {
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
    call!(mkdir(dir.as_path(), Mode::from_bits_truncate(0o700)))?;
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
pub fn explain_without_namespaces(from: usize) {
    let page = inspect::page_size();
    let what = [
        String::new(),
        "1. Unmounted: /dev/shm is a plain directory; shm_open works and the file lands on the \
         filesystem beneath (glibc 2.34+ does not check the type)."
            .into(),
        "2. On a disk: a directory on ext4 (or overlay, ...) bind-mounted over /dev/shm; \
         shm_open works and makes an ordinary disk file (f_type 0xef53 on ext4): written back \
         to disk, and, left unlinked, still there after a reboot."
            .into(),
        "3. Removed: shm_open fails with ENOENT on glibc 2.34+. glibc 2.33 searched \
         /proc/mounts for the first tmpfs instead, and in 2010 that was udev's /dev: hence the \
         article's /dev/mymem."
            .into(),
        format!(
            "4. Full: on a 1 MiB tmpfs, ftruncate to 4 MiB succeeds (the file is sparse), a \
             child writing page by page dies of SIGBUS after about {} pages (1 MiB in pages of \
             {page} bytes), and posix_fallocate fails at once with ENOSPC.",
            (1 << 20) / page
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
        "skipped: exit status {} (this machine can't stage the scenarios)",
        crate::SKIPPED
    ));
}
