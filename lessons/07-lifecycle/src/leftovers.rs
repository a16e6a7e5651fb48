//! Part 5 and `lesson-7 --cleanup` (what `scripts/cleanup` runs): list, and
//! with `--yes` remove, the leftovers of this workspace's lessons that the
//! current user owns, and nothing else.
//!
//! - POSIX objects: files in `/dev/shm` named `shm-lessons-*` (every lesson
//!   name starts with [`names::PREFIX`]), owned by our uid.
//! - System V segments: a lesson key (`0x53……`, see [`names::is_lesson_key`]),
//!   owned by our uid.
//!
//! - Scratch files outside `/dev/shm`, in the directories the lessons use
//!   for them ([`scratch_dirs`]): lesson-4's `shm-lessons-4-<pid>-disk`
//!   directory, lesson-6's `shm-lessons-6-<pid>-msync` file, lesson-9's
//!   `shm-lessons-9-<pid>-disk` file and `shm-lessons-9-<pid>-thp` mount
//!   point. Each lesson removes its own on every path but SIGKILL.
//!
//! An object still in use is left alone: a POSIX object whose name carries
//! the pid of a running process or that a process maps or holds open, a
//! segment that is attached or whose creator still runs. Segments with key
//! IPC_PRIVATE whose creator is dead are listed but never removed: nothing
//! says a lesson made them. The same holds for a segment whose key is
//! `ftok($HOME, 5)`, the key lesson-5 uses without `--key` (`writer --keep
//! --api sysv` leaves one): an ftok key carries no lesson mark, since any
//! program that hashes the same file with project id 5 gets the same key.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::bail;
use common::attempt;
use common::inspect::{self, ShmEntry, SysvSegment};
use common::narrate::{self, evidence, explain, fact, section};
use common::{names, sysv};
use nix::sys::mman::shm_unlink;
use nix::unistd::{getuid, unlink};

/// What `--prefix` and `--keys` narrow the cleanup to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// POSIX names (without `/`) must start with this; it starts with
    /// [`names::PREFIX`].
    pub prefix: String,
    /// Only these lesson keys, or every lesson key.
    pub keys: Option<Vec<i32>>,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            prefix: names::PREFIX.to_string(),
            keys: None,
        }
    }
}

/// `--prefix P`: `P` or `/P`, starting with `shm-lessons-`, no inner `/`.
pub fn parse_prefix(s: &str) -> Result<String, String> {
    let p = s.strip_prefix('/').unwrap_or(s);
    if !p.starts_with(names::PREFIX) {
        return Err(format!("the prefix must start with {}", names::PREFIX));
    }
    if p.contains('/') {
        return Err("a prefix has no '/' after the first character".into());
    }
    Ok(p.to_string())
}

/// `--keys K,K`: System V keys made by the lessons (`0x53……`).
pub fn parse_keys(s: &str) -> Result<Vec<i32>, String> {
    s.split(',')
        .map(|k| {
            let key = common::args::parse_key(k)?;
            if names::is_lesson_key(key) {
                Ok(key)
            } else {
                Err(format!(
                    "{} is not a lesson key (lesson keys start with 0x53)",
                    names::key_hex(key)
                ))
            }
        })
        .collect()
}

/// What happens to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A leftover of ours: listed, removed with `--yes`.
    Remove,
    /// Ours, but something still uses it: left alone, and why.
    InUse(String),
    /// A lesson name or key owned by another user: never touched.
    Foreign(u32),
    /// Not a regular file (a directory, a symlink): never touched.
    NotFile,
    /// A scratch name holding what no lesson leaves there: never touched.
    Unexpected(String),
}

/// A `shm-lessons-*` entry of a scratch directory, as found.
#[derive(Debug, Clone)]
pub struct Scratch {
    /// The scratch directory it is in.
    pub dir: PathBuf,
    pub entry: ShmEntry,
    /// For a directory: its entries (not followed into).
    pub contents: Vec<ShmEntry>,
}

impl Scratch {
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.entry.name)
    }

    /// The path as ls quotes it.
    pub fn quoted(&self) -> String {
        format!("{}/{}", self.dir.display(), self.entry.quoted)
    }
}

/// The shapes of the lessons' scratch files: (name suffix, `ls` type
/// letter). lesson-4's `-disk` directory holds at most its scenario-2
/// objects (`shm-lessons-4-*` files); a `-thp` directory is an empty mount
/// point; `-disk` and `-msync` files are lesson-9's and lesson-6's.
const SCRATCH_SHAPES: [(&str, char); 4] = [
    ("-disk", 'd'),
    ("-thp", 'd'),
    ("-disk", '-'),
    ("-msync", '-'),
];

/// Decide for the scratch entries, without touching anything. Names that do
/// not have a lesson scratch file's shape are not considered at all;
/// `in_use` says why an entry is still in use (its pid runs, a process maps
/// it, it is a mount point).
pub fn plan_scratch(
    found: &[Scratch],
    uid: u32,
    filter: &Filter,
    in_use: impl Fn(&Scratch) -> Option<String>,
) -> Vec<(Scratch, Verdict)> {
    let mut out = Vec::new();
    for s in found {
        let (name, kind) = (&s.entry.name, s.entry.kind);
        if !name.starts_with(names::PREFIX) || !name.starts_with(&filter.prefix) {
            continue;
        }
        let shaped = SCRATCH_SHAPES
            .iter()
            .any(|(end, k)| name.ends_with(end) && *k == kind);
        if pid_in_name(name).is_none() || !shaped {
            continue;
        }
        let surprise = s.contents.iter().find(|c| {
            !(name.ends_with("-disk")
                && c.kind == '-'
                && c.uid == uid
                && c.name.starts_with(names::PREFIX))
        });
        let verdict = if s.entry.uid != uid {
            Verdict::Foreign(s.entry.uid)
        } else if let Some(c) = surprise {
            Verdict::Unexpected(format!(
                "it holds {} ({}), which no lesson leaves there",
                c.quoted, c.kind
            ))
        } else if let Some(why) = in_use(s) {
            Verdict::InUse(why)
        } else {
            Verdict::Remove
        };
        out.push((s.clone(), verdict));
    }
    out
}

/// The whole decision, before anything is removed.
#[derive(Debug, Default)]
pub struct Plan {
    pub posix: Vec<(ShmEntry, Verdict)>,
    pub sysv: Vec<(SysvSegment, Verdict)>,
    /// IPC_PRIVATE segments of ours, unattached, whose creator is dead.
    pub orphans: Vec<SysvSegment>,
    /// Segments of ours with lesson-5's default key `ftok($HOME, 5)`,
    /// unattached, whose creator is dead: listed, never removed.
    pub ftok_keyed: Vec<SysvSegment>,
    /// The lessons' scratch files and directories outside `/dev/shm`.
    pub scratch: Vec<(Scratch, Verdict)>,
}

impl Plan {
    pub fn to_remove(&self) -> usize {
        let p = self.posix.iter().filter(|(_, v)| *v == Verdict::Remove);
        let s = self.sysv.iter().filter(|(_, v)| *v == Verdict::Remove);
        let f = self.scratch.iter().filter(|(_, v)| *v == Verdict::Remove);
        p.count() + s.count() + f.count()
    }
}

/// The pid in a lesson name: `shm-lessons-<lesson>-<pid>…`.
pub fn pid_in_name(file: &str) -> Option<i32> {
    let rest = file.strip_prefix(names::PREFIX)?;
    rest.split('-').nth(1)?.parse().ok()
}

/// Decide, without touching anything. `posix_in_use` says why a name is
/// still in use (if it is); `running` why a segment's processes are (the
/// creator, or the lesson run whose pid is in the key); `lesson5_key` is
/// `ftok($HOME, 5)`, if it could be computed.
pub fn plan(
    entries: &[ShmEntry],
    segments: &[SysvSegment],
    uid: u32,
    filter: &Filter,
    posix_in_use: impl Fn(&ShmEntry) -> Option<String>,
    running: impl Fn(&SysvSegment) -> Option<String>,
    lesson5_key: Option<i32>,
) -> Plan {
    let mut out = Plan::default();
    for e in entries {
        if !e.name.starts_with(names::PREFIX) || !e.name.starts_with(&filter.prefix) {
            continue;
        }
        let verdict = if e.uid != uid {
            Verdict::Foreign(e.uid)
        } else if !e.is_file {
            Verdict::NotFile
        } else if let Some(why) = posix_in_use(e) {
            Verdict::InUse(why)
        } else {
            Verdict::Remove
        };
        out.posix.push((e.clone(), verdict));
    }
    for s in segments {
        let unmarked = s.key == libc::IPC_PRIVATE || Some(s.key) == lesson5_key;
        if unmarked {
            // Listed (never removed) only when it looks abandoned.
            if filter.keys.is_none()
                && s.uid == uid
                && s.nattch == 0
                && s.perms & sysv::SHM_DEST == 0
                && running(s).is_none()
            {
                if s.key == libc::IPC_PRIVATE {
                    out.orphans.push(s.clone());
                } else {
                    out.ftok_keyed.push(s.clone());
                }
            }
            continue;
        }
        if !names::is_lesson_key(s.key) {
            continue;
        }
        if filter.keys.as_ref().is_some_and(|k| !k.contains(&s.key)) {
            continue;
        }
        let verdict = if s.uid != uid {
            Verdict::Foreign(s.uid)
        } else if s.nattch > 0 {
            Verdict::InUse(format!("{} process(es) attached", s.nattch))
        } else if let Some(why) = running(s) {
            Verdict::InUse(why)
        } else {
            Verdict::Remove
        };
        out.sysv.push((s.clone(), verdict));
    }
    out
}

/// The directory lesson-5's `ftok` hashes by default: the home directory
/// from the password database, else `$HOME` (as lesson-5 resolves it).
fn home_dir() -> Option<PathBuf> {
    nix::unistd::User::from_uid(getuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
}

/// lesson-5's `ftok` project id.
const LESSON5_PROJ_ID: u8 = 5;

/// The `ipcs -m` header and the rows of these segments; without `ipcs`,
/// the `/proc/sysvipc/shm` header and lines.
fn ipcs_rows<'a>(segments: impl Iterator<Item = &'a SysvSegment>) -> Vec<String> {
    let segments: Vec<&SysvSegment> = segments.collect();
    if segments.is_empty() {
        return Vec::new();
    }
    let Some(lines) = inspect::ipcs_m() else {
        let mut out = vec![
            "(ipcs is not installed: showing /proc/sysvipc/shm)".to_string(),
            inspect::sysvipc_header(),
        ];
        out.extend(segments.iter().map(|s| s.line.clone()));
        return out;
    };
    let ids: Vec<String> = segments.iter().map(|s| s.shmid.to_string()).collect();
    lines
        .into_iter()
        .filter(|l| {
            l.starts_with("key") || ids.iter().any(|id| l.split_whitespace().nth(1) == Some(id))
        })
        .collect()
}

/// Why a segment on this machine is still in use, if it is: its creator
/// runs, or the lesson run that made its key does. A lesson key holds the
/// low 20 bits of that run's pid (see [`names::unique_key`]): part 3's
/// segment, say, is created by a child that dies, while the run that will
/// remove it holds for inspection.
fn segment_running(s: &SysvSegment) -> Option<String> {
    if inspect::pid_alive(s.cpid) {
        return Some(format!("its creator, pid {}, is running", s.cpid));
    }
    if !names::is_lesson_key(s.key) {
        return None;
    }
    let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1 << 22);
    let low = s.key & 0xf_ffff;
    (0..)
        .map(|k| low + (k << 20))
        .take_while(|&p| p < pid_max)
        .find_map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).ok()?;
            let comm = comm.trim();
            comm.starts_with("lesson-")
                .then(|| format!("the run that made its key, pid {p} ({comm}), is running"))
        })
}

/// Why a POSIX object on this machine is still in use, if it is.
fn posix_in_use(e: &ShmEntry) -> Option<String> {
    file_in_use(&e.name, &format!("/dev/shm/{}", e.name))
}

/// Why the file `path` named `name` is still in use: the pid in its name
/// runs, or a process maps it or holds it open.
fn file_in_use(name: &str, path: &str) -> Option<String> {
    if let Some(pid) = pid_in_name(name).filter(|&p| inspect::pid_alive(p)) {
        return Some(format!("its name carries pid {pid}, which is running"));
    }
    let users = inspect::pids_using(path);
    (!users.is_empty()).then(|| format!("mapped or open by pid {users:?}"))
}

/// The directories where the lessons put scratch files: `/var/tmp` and the
/// temporary directory ([`inspect::disk_dir`], lesson-6's and lesson-4's
/// choice, lesson-9's `-thp` mount point in [`std::env::temp_dir`]), and
/// lesson-4's last resort, the directory of the executable.
pub fn scratch_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("/var/tmp"), std::env::temp_dir()];
    if let Some(d) = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.to_owned()))
    {
        dirs.push(d);
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for d in dirs {
        let real = std::fs::canonicalize(&d).unwrap_or(d);
        if real != Path::new("/dev/shm") && !out.contains(&real) {
            out.push(real);
        }
    }
    out
}

/// The `shm-lessons-*` entries of these directories, with the contents of
/// the ones that are directories (lstat: no symlink is followed).
fn find_scratch(dirs: &[PathBuf]) -> Vec<Scratch> {
    let mut out = Vec::new();
    for dir in dirs {
        for entry in inspect::shm_entries_in(dir) {
            if !entry.name.starts_with(names::PREFIX) {
                continue;
            }
            let contents = if entry.kind == 'd' {
                inspect::shm_entries_in(&dir.join(&entry.name))
            } else {
                Vec::new()
            };
            out.push(Scratch {
                dir: dir.clone(),
                entry,
                contents,
            });
        }
    }
    out
}

/// Why `path` is a mount point, if it is: here (its device differs from its
/// parent's), or in the mount namespace of a process we may inspect (rmdir
/// of a mount point of another namespace succeeds and detaches that mount
/// there, since Linux 3.18).
fn mount_point(path: &Path) -> Option<String> {
    let dev = |p: &Path| std::fs::symlink_metadata(p).map(|m| m.dev()).ok();
    if dev(path) != path.parent().and_then(dev) {
        return Some("it is a mount point here".into());
    }
    let want = path.to_str()?;
    let procs = std::fs::read_dir("/proc").ok()?;
    procs.filter_map(Result::ok).find_map(|p| {
        let pid: i32 = p.file_name().to_str()?.parse().ok()?;
        let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
        info.lines()
            .filter_map(inspect::parse_mountinfo_line)
            .any(|m| m.mount_point == want)
            .then(|| format!("it is a mount point in the mount namespace of pid {pid}"))
    })
}

/// Why a scratch file or directory is still in use, if it is.
fn scratch_in_use(s: &Scratch) -> Option<String> {
    let path = s.path();
    let text = path.to_str()?;
    file_in_use(&s.entry.name, text)
        .or_else(|| (s.entry.kind == 'd').then(|| mount_point(&path)).flatten())
}

fn why_left(v: &Verdict) -> String {
    match v {
        Verdict::Remove => String::new(),
        Verdict::InUse(why) => format!("in use: {why}"),
        Verdict::Foreign(uid) => {
            format!("owned by {} (uid {uid}), not you", inspect::user_name(*uid))
        }
        Verdict::NotFile => "not a regular file".into(),
        Verdict::Unexpected(why) => why.clone(),
    }
}

/// `lesson-7 --cleanup [--yes] [--prefix P] [--keys K,K]`.
pub fn run(filter: &Filter, yes: bool) -> anyhow::Result<()> {
    let uid = getuid().as_raw();
    let dirs = scratch_dirs();
    section(format!(
        "Leftovers of the shm-lessons lessons owned by {} (uid {uid}){}",
        inspect::user_name(uid),
        if yes { "" } else { ": dry run" }
    ));
    let keys = match &filter.keys {
        Some(k) => k
            .iter()
            .map(|k| names::key_hex(*k))
            .collect::<Vec<_>>()
            .join(", "),
        None => "0x53000000-0x53ffffff".into(),
    };
    explain(format!(
        "Looking for POSIX objects /dev/shm/{}* and System V segments with keys {keys}, and \
         for the lessons' scratch files {}/{}*, owned by you and not in use. Nothing else is \
         ever touched.",
        filter.prefix,
        dirs_text(&dirs),
        filter.prefix
    ));

    let home = home_dir();
    let lesson5_key = home
        .as_deref()
        .and_then(|h| sysv::ftok(h, LESSON5_PROJ_ID).ok());
    // ANCHOR: plan
    let mut plan = plan(
        &inspect::dev_shm_entries(),
        &inspect::sysv_segments(),
        uid,
        filter,
        posix_in_use,
        segment_running,
        lesson5_key,
    );
    plan.scratch = plan_scratch(&find_scratch(&dirs), uid, filter, scratch_in_use);
    // ANCHOR_END: plan
    evidence(
        &format!("ls -l /dev/shm/{}*", filter.prefix),
        plan.posix.iter().map(|(e, _)| e.ls_line()),
    );
    let mut failed = 0;
    for (e, v) in &plan.posix {
        // Shown quoted like ls (a newline in a name stays on one line, and
        // the rm command can be pasted into a shell as it is).
        let path = format!("/dev/shm/{}", e.quoted);
        if *v != Verdict::Remove {
            fact("left alone", format!("{path}: {}", why_left(v)));
        } else if !yes {
            fact("would remove", format!("{path}   (rm {path})"));
        } else if remove_posix(e, uid) {
            fact("removed", &path);
        } else {
            failed += 1;
        }
    }
    evidence(
        &format!("ipcs -m   # keys {keys}"),
        ipcs_rows(plan.sysv.iter().map(|(s, _)| s)),
    );
    for (s, v) in &plan.sysv {
        let what = format!("System V key {} shmid {}", names::key_hex(s.key), s.shmid);
        if *v != Verdict::Remove {
            fact("left alone", format!("{what}: {}", why_left(v)));
        } else if !yes {
            fact("would remove", format!("{what}   (ipcrm -m {})", s.shmid));
        } else if remove_sysv(s, uid) {
            fact("removed", &what);
        } else {
            failed += 1;
        }
    }
    evidence(
        &format!("ls -ld {}/{}*", dirs_text(&dirs), filter.prefix),
        plan.scratch.iter().map(|(s, _)| {
            let line = s.entry.ls_line();
            let cut = line.len() - s.entry.quoted.len();
            format!("{}{}", &line[..cut], s.quoted())
        }),
    );
    for (s, v) in &plan.scratch {
        let path = s.quoted();
        if *v != Verdict::Remove {
            fact("left alone", format!("{path}: {}", why_left(v)));
        } else if !yes {
            let how = if s.entry.kind == 'd' && s.contents.is_empty() {
                format!("rmdir {path}")
            } else if s.entry.kind == 'd' {
                format!("rm {path}/*; rmdir {path}")
            } else {
                format!("rm {path}")
            };
            fact("would remove", format!("{path}   ({how})"));
        } else if remove_scratch(s, uid) {
            fact("removed", &path);
        } else {
            failed += 1;
        }
    }
    for s in &plan.orphans {
        fact(
            "not removed",
            format!(
                "System V shmid {} (key IPC_PRIVATE, {} bytes): its creator pid {} is dead and \
                 nothing is attached, but an IPC_PRIVATE segment carries no mark of a lesson. \
                 If you know it is yours: ipcrm -m {}",
                s.shmid, s.size, s.cpid, s.shmid
            ),
        );
    }
    for s in &plan.ftok_keyed {
        let home = home.as_deref().unwrap_or(std::path::Path::new("?"));
        fact(
            "not removed",
            format!(
                "System V key {} shmid {}: key = ftok({home:?}, {LESSON5_PROJ_ID}), {} bytes, \
                 creator pid {} dead, nattch 0",
                names::key_hex(s.key),
                s.shmid,
                s.size,
                s.cpid
            ),
        );
        explain(format!(
            "This is the key lesson-5 uses without --key (its writer --keep --api sysv leaves \
             one), but an ftok key carries no lesson mark: any program that calls ftok on \
             {home:?} with project id {LESSON5_PROJ_ID} gets the same key, so the cleanup does \
             not remove it. lesson-5's writer recognises its own stale segment by the magic \
             inside and replaces it. If you know it is yours: ipcrm -m {}",
            s.shmid
        ));
    }
    let n = plan.to_remove();
    if yes {
        narrate::conclude(format!("removed {} object(s)", n - failed));
    } else if n == 0 {
        narrate::conclude("dry run: no leftovers to remove");
    } else {
        narrate::conclude(format!(
            "dry run: nothing removed; {n} object(s) would be removed. Run scripts/cleanup --yes \
             to remove them."
        ));
    }
    if failed > 0 {
        bail!("{failed} object(s) could not be removed");
    }
    Ok(())
}

/// Check again right before removing (the listing may be stale), then
/// `shm_unlink`.
fn remove_posix(e: &ShmEntry, uid: u32) -> bool {
    let path = format!("/dev/shm/{}", e.name);
    match std::fs::symlink_metadata(&path) {
        Ok(md) if md.uid() == uid && (md.file_type().is_file() || md.file_type().is_fifo()) => {}
        _ => {
            fact("skipped", format!("{path} changed since it was listed"));
            return false;
        }
    }
    let name = format!("/{}", e.name);
    attempt!(shm_unlink(name.as_str())).is_ok()
}

/// `{/var/tmp,/tmp}`: the scratch directories, as a shell would expand them.
fn dirs_text(dirs: &[PathBuf]) -> String {
    let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    if list.len() == 1 {
        list[0].clone()
    } else {
        format!("{{{}}}", list.join(","))
    }
}

/// Check again right before removing (the listing may be stale), then
/// `unlink` a file, or `unlink` the objects in a directory and `rmdir` it.
/// Nothing is followed: a symlink is never a file or directory of ours
/// here, and rmdir fails on a directory that is not empty by now.
fn remove_scratch(s: &Scratch, uid: u32) -> bool {
    let path = s.path();
    let same = |p: &Path, kind: char| {
        std::fs::symlink_metadata(p)
            .is_ok_and(|m| m.uid() == uid && inspect::kind_letter(m.file_type()) == kind)
    };
    let changed = |p: &Path| {
        fact(
            "skipped",
            format!("{} changed since it was listed", p.display()),
        );
        false
    };
    if !same(&path, s.entry.kind) {
        return changed(&path);
    }
    if s.entry.kind != 'd' {
        return attempt!(unlink(path.as_path())).is_ok();
    }
    if mount_point(&path).is_some() {
        return changed(&path);
    }
    for c in &s.contents {
        let inner = path.join(&c.name);
        if !same(&inner, '-') {
            return changed(&inner);
        }
        if attempt!(unlink(inner.as_path())).is_err() {
            return false;
        }
    }
    attempt!(common::cleanup::rmdir(path.as_path())).is_ok()
}

/// Check the segment is still the one listed (ids are reused), then
/// `shmctl(IPC_RMID)`.
fn remove_sysv(seg: &SysvSegment, uid: u32) -> bool {
    match sysv::shmctl_stat(seg.shmid) {
        Ok(ds) if ds.shm_perm.__key == seg.key && ds.shm_perm.uid == uid && ds.shm_nattch == 0 => {}
        _ => {
            fact(
                "skipped",
                format!("shmid {} changed since it was listed", seg.shmid),
            );
            return false;
        }
    }
    attempt!(sysv::shmctl_rmid(seg.shmid)).is_ok()
}

/// Part 5 of the lesson: the dry run, explained.
pub fn part() -> anyhow::Result<()> {
    section("Part 5. The cleanup command");
    explain(
        "scripts/cleanup (which runs lesson-7 --cleanup) lists what the lessons left behind \
         and you own: every lesson name starts with shm-lessons- and every lesson key with \
         0x53. It is a dry run unless you add --yes. Objects of other users, objects still in \
         use and anything without the lessons' mark are never touched. Root could remove \
         another user's objects (part 3 showed that nobody else can), so the cleanup checks \
         the owner itself.",
    );
    run(&Filter::default(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, uid: u32) -> ShmEntry {
        ShmEntry {
            name: name.into(),
            size: 4096,
            mode: 0o100600,
            uid,
            gid: uid,
            nlink: 1,
            is_file: true,
            kind: '-',
            quoted: inspect::ls_quote(name.as_bytes()),
            target: None,
        }
    }

    fn seg(key: i32, shmid: i32, uid: u32, nattch: u64, cpid: i32) -> SysvSegment {
        SysvSegment {
            key,
            shmid,
            perms: 0o600,
            size: 4096,
            cpid,
            lpid: cpid,
            nattch,
            uid,
            gid: uid,
            line: String::new(),
        }
    }

    const ME: u32 = 1000;
    const DEAD: i32 = 999_999;
    const LIVE: i32 = 4242;
    /// What ftok($HOME, 5) gives: project id 5 in the top byte.
    const LESSON5: i32 = 0x0501_2345;

    fn decide(filter: &Filter) -> Plan {
        let entries = [
            entry("shm-lessons-1-77", ME),
            entry("shm-lessons-1-78", 1001),
            entry("shm-lessons-1-4242", ME),
            entry("other-program", ME),
            entry("shm-lesson-typo", ME),
            ShmEntry {
                is_file: false,
                ..entry("shm-lessons-dir", ME)
            },
        ];
        let lesson = 0x5370_0001;
        let segments = [
            seg(lesson, 1, ME, 0, DEAD),
            seg(lesson + 1, 2, 1001, 0, DEAD),
            seg(lesson + 2, 3, ME, 1, DEAD),
            seg(lesson + 3, 4, ME, 0, LIVE),
            seg(12345678, 5, ME, 0, DEAD),
            seg(0, 6, ME, 0, DEAD),
            seg(0, 7, ME, 0, LIVE),
            seg(LESSON5, 8, ME, 0, DEAD),
        ];
        plan(
            &entries,
            &segments,
            ME,
            filter,
            |e| (pid_in_name(&e.name) == Some(LIVE)).then(|| "live".into()),
            |s| (s.cpid == LIVE).then(|| "live".into()),
            Some(LESSON5),
        )
    }

    #[test]
    fn only_our_unused_lesson_objects_are_removed() {
        let p = decide(&Filter::default());
        let posix: Vec<(&str, &Verdict)> =
            p.posix.iter().map(|(e, v)| (e.name.as_str(), v)).collect();
        assert_eq!(
            posix,
            [
                ("shm-lessons-1-77", &Verdict::Remove),
                ("shm-lessons-1-78", &Verdict::Foreign(1001)),
                ("shm-lessons-1-4242", &Verdict::InUse("live".into())),
                ("shm-lessons-dir", &Verdict::NotFile),
            ]
        );
        let sysv: Vec<(i32, bool)> = p
            .sysv
            .iter()
            .map(|(s, v)| (s.shmid, *v == Verdict::Remove))
            .collect();
        assert_eq!(sysv, [(1, true), (2, false), (3, false), (4, false)]);
        assert!(matches!(p.sysv[1].1, Verdict::Foreign(1001)));
        assert_eq!(p.orphans.iter().map(|s| s.shmid).collect::<Vec<_>>(), [6]);
        assert_eq!(p.to_remove(), 2);
    }

    #[test]
    fn an_ftok_keyed_lesson5_segment_is_listed_never_removed() {
        let p = decide(&Filter::default());
        let listed: Vec<i32> = p.ftok_keyed.iter().map(|s| s.shmid).collect();
        assert_eq!(listed, [8]);
        assert!(p.sysv.iter().all(|(s, _)| s.key != LESSON5));
        // Only an abandoned one of ours is listed: not one in use, not
        // another user's, and not when --keys narrows the search.
        let entries: [ShmEntry; 0] = [];
        let segments = [
            seg(LESSON5, 9, ME, 1, DEAD),
            seg(LESSON5, 10, ME, 0, LIVE),
            seg(LESSON5, 11, 1001, 0, DEAD),
        ];
        let p = plan(
            &entries,
            &segments,
            ME,
            &Filter::default(),
            |_| None,
            |s| (s.cpid == LIVE).then(|| "live".into()),
            Some(LESSON5),
        );
        assert!(p.ftok_keyed.is_empty() && p.sysv.is_empty() && p.to_remove() == 0);
        let p = decide(&Filter {
            keys: Some(vec![0x5370_0001]),
            ..Filter::default()
        });
        assert!(p.ftok_keyed.is_empty());
    }

    #[test]
    fn filters_narrow_the_selection() {
        let p = decide(&Filter {
            prefix: "shm-lessons-1-7".into(),
            keys: Some(vec![0x5370_0002]),
        });
        let names: Vec<&str> = p.posix.iter().map(|(e, _)| e.name.as_str()).collect();
        assert_eq!(names, ["shm-lessons-1-77", "shm-lessons-1-78"]);
        assert_eq!(p.sysv.len(), 1);
        assert_eq!(p.sysv[0].0.shmid, 2);
        assert!(p.orphans.is_empty());
    }

    fn scratch(name: &str, kind: char, uid: u32, contents: &[ShmEntry]) -> Scratch {
        Scratch {
            dir: "/var/tmp".into(),
            entry: ShmEntry {
                kind,
                is_file: kind == '-',
                ..entry(name, uid)
            },
            contents: contents.to_vec(),
        }
    }

    #[test]
    fn only_our_unused_scratch_files_of_a_lesson_shape_are_removed() {
        let object = entry("shm-lessons-4-77-s2-x", ME);
        let found = [
            scratch("shm-lessons-9-77-disk", '-', ME, &[]),
            scratch("shm-lessons-6-77-msync", '-', ME, &[]),
            scratch("shm-lessons-9-77-thp", 'd', ME, &[]),
            scratch(
                "shm-lessons-4-77-disk",
                'd',
                ME,
                std::slice::from_ref(&object),
            ),
            scratch("shm-lessons-9-4242-thp", 'd', ME, &[]),
            scratch("shm-lessons-9-78-thp", 'd', 1001, &[]),
            // A thp mount point holds nothing; lesson-4's directory holds
            // only its objects, as files of ours.
            scratch(
                "shm-lessons-9-79-thp",
                'd',
                ME,
                std::slice::from_ref(&object),
            ),
            scratch("shm-lessons-4-79-disk", 'd', ME, &[entry("notes", ME)]),
            scratch(
                "shm-lessons-4-80-disk",
                'd',
                ME,
                &[entry("shm-lessons-4-80", 1001)],
            ),
            scratch(
                "shm-lessons-4-81-disk",
                'd',
                ME,
                &[ShmEntry {
                    kind: 'l',
                    ..entry("shm-lessons-4-81-s2", ME)
                }],
            ),
            // Not a lesson's scratch shape: not considered at all.
            scratch("shm-lessons-6-77-msync", 'l', ME, &[]),
            scratch("shm-lessons-9-77-thp", '-', ME, &[]),
            scratch("shm-lessons-run-all.x1Yz", 'd', ME, &[]),
            scratch("shm-lessons-nobody-77-0", 'd', ME, &[]),
            scratch("other-77-disk", '-', ME, &[]),
        ];
        let live = |s: &Scratch| (pid_in_name(&s.entry.name) == Some(LIVE)).then(|| "live".into());
        let p = plan_scratch(&found, ME, &Filter::default(), live);
        let got: Vec<(&str, char, String)> = p
            .iter()
            .map(|(s, v)| {
                let v = match v {
                    Verdict::Unexpected(_) => "unexpected".into(),
                    v => format!("{v:?}"),
                };
                (s.entry.name.as_str(), s.entry.kind, v)
            })
            .collect();
        let want = [
            ("shm-lessons-9-77-disk", '-', "Remove"),
            ("shm-lessons-6-77-msync", '-', "Remove"),
            ("shm-lessons-9-77-thp", 'd', "Remove"),
            ("shm-lessons-4-77-disk", 'd', "Remove"),
            ("shm-lessons-9-4242-thp", 'd', "InUse(\"live\")"),
            ("shm-lessons-9-78-thp", 'd', "Foreign(1001)"),
            ("shm-lessons-9-79-thp", 'd', "unexpected"),
            ("shm-lessons-4-79-disk", 'd', "unexpected"),
            ("shm-lessons-4-80-disk", 'd', "unexpected"),
            ("shm-lessons-4-81-disk", 'd', "unexpected"),
        ];
        let want: Vec<(&str, char, String)> = want
            .iter()
            .map(|(n, k, v)| (*n, *k, v.to_string()))
            .collect();
        assert_eq!(got, want);
        let plan = Plan {
            scratch: p,
            ..Plan::default()
        };
        assert_eq!(plan.to_remove(), 4);
        // --prefix narrows the scratch files too.
        let filter = Filter {
            prefix: "shm-lessons-9-7".into(),
            keys: None,
        };
        let names: Vec<String> = plan_scratch(&found, ME, &filter, |_| None)
            .into_iter()
            .map(|(s, _)| s.entry.name)
            .collect();
        assert_eq!(
            names,
            [
                "shm-lessons-9-77-disk",
                "shm-lessons-9-77-thp",
                "shm-lessons-9-78-thp",
                "shm-lessons-9-79-thp"
            ]
        );
    }

    #[test]
    fn arguments_are_checked() {
        assert_eq!(
            parse_prefix("/shm-lessons-test-1-").unwrap(),
            "shm-lessons-test-1-"
        );
        assert!(parse_prefix("mymem").is_err());
        assert!(parse_prefix("shm-lessons-a/b").is_err());
        assert_eq!(
            parse_keys("0x53700001,0x53700002").unwrap(),
            [0x5370_0001, 0x5370_0002]
        );
        assert!(parse_keys("12345678").is_err());
        assert_eq!(pid_in_name("shm-lessons-test-4242-x-0"), Some(4242));
        assert_eq!(pid_in_name("shm-lessons-1-root"), None);
    }
}
