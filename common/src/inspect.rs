//! Evidence from the running kernel: what a student could check by hand.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

/// One entry of `/dev/shm` (a POSIX shared memory object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShmEntry {
    pub name: String,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    /// A regular file (or a FIFO): what `shm_open` can have made.
    pub is_file: bool,
    /// The file type letter `ls -l` prints: `-` file, `d` directory, `l`
    /// symbolic link, `p` FIFO, `s` socket, `c`/`b` device (not followed:
    /// a symlink is shown as itself).
    pub kind: char,
    /// The name quoted the way `ls` quotes it for a terminal (GNU's
    /// shell-escape style): as is when it holds only safe characters, else
    /// in single quotes, with control characters and invalid bytes as
    /// `$'\n'`, `$'\377'`, so a name with a newline stays on one line.
    pub quoted: String,
    /// For a symbolic link, where it points (quoted the same way).
    pub target: Option<String>,
}

impl ShmEntry {
    /// The entry the way `ls -l` prints it (without the date).
    pub fn ls_line(&self) -> String {
        let mut line = format!(
            "{}{} {} {} {} {} {}",
            self.kind,
            mode_string(self.mode),
            self.nlink,
            user_name(self.uid),
            group_name(self.gid),
            self.size,
            self.quoted
        );
        if let Some(t) = &self.target {
            line.push_str(" -> ");
            line.push_str(t);
        }
        line
    }
}

/// The `ls -l` type letter of a file type (the file itself, not followed).
pub fn kind_letter(ft: std::fs::FileType) -> char {
    if ft.is_symlink() {
        'l'
    } else if ft.is_dir() {
        'd'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        '-'
    }
}

/// A file name as GNU `ls` shows it on a terminal (`--quoting-style=
/// shell-escape`, its default there): unchanged when every character is
/// safe for a shell; otherwise single-quoted, with each control character or
/// invalid UTF-8 byte written as `$'\n'`, `$'\t'` or `$'\ooo'` outside the
/// quotes and a single quote as `\'`. The result, pasted into a shell, is
/// the name again, and it never spans two lines.
pub fn ls_quote(name: &[u8]) -> String {
    let safe = |c: char| c.is_alphanumeric() || "%+,-./:=@_^".contains(c);
    let text = String::from_utf8_lossy(name);
    if !name.is_empty()
        && std::str::from_utf8(name).is_ok()
        && text.chars().all(|c| safe(c) && !c.is_control())
    {
        return text.into_owned();
    }
    // GNU ls: a name whose only trouble is a single quote goes in double quotes.
    if std::str::from_utf8(name).is_ok()
        && text.contains('\'')
        && text
            .chars()
            .all(|c| !c.is_control() && !"\"$`\\!".contains(c))
    {
        return format!("\"{text}\"");
    }
    let mut out = String::new();
    let mut open = false; // inside '...'
    let mut rest = name;
    while !rest.is_empty() {
        let (ch, len) = match utf8_char(rest) {
            Some((c, n)) => (Some(c), n),
            None => (None, 1),
        };
        match ch {
            Some(c) if !c.is_control() && c != '\'' => {
                if !open {
                    out.push('\'');
                    open = true;
                }
                out.push(c);
            }
            Some('\'') => {
                if open {
                    out.push('\'');
                    open = false;
                }
                out.push_str("\\'");
            }
            _ => {
                if open {
                    out.push('\'');
                    open = false;
                }
                let b = rest[0];
                let esc = match ch {
                    Some('\n') => "\\n".to_string(),
                    Some('\t') => "\\t".to_string(),
                    Some('\r') => "\\r".to_string(),
                    Some(c) if (c as u32) < 0x80 => format!("\\{:03o}", c as u32),
                    Some(c) => {
                        let mut buf = [0u8; 4];
                        c.encode_utf8(&mut buf)
                            .bytes()
                            .map(|b| format!("\\{b:03o}"))
                            .collect()
                    }
                    None => format!("\\{b:03o}"),
                };
                out.push_str(&format!("$'{esc}'"));
            }
        }
        rest = &rest[len..];
    }
    if open {
        out.push('\'');
    }
    if out.is_empty() {
        out.push_str("''");
    }
    out
}

/// The first UTF-8 character of `bytes` and its length, or `None` when the
/// first byte does not start a valid character.
fn utf8_char(bytes: &[u8]) -> Option<(char, usize)> {
    (1..=bytes.len().min(4)).find_map(|n| {
        std::str::from_utf8(&bytes[..n])
            .ok()
            .and_then(|s| s.chars().next().map(|c| (c, n)))
    })
}

/// `rw-------` for mode 0600.
pub fn mode_string(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for shift in [6u32, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    if mode & 0o1000 != 0 {
        let last = if mode & 1 != 0 { 't' } else { 'T' };
        s.pop();
        s.push(last);
    }
    s
}

/// The entries of a directory that holds shared memory objects.
pub fn shm_entries_in(dir: &Path) -> Vec<ShmEntry> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<ShmEntry> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            // DirEntry::metadata does not follow a symlink: lstat.
            let md = e.metadata().ok()?;
            let raw = e.file_name();
            let target = md
                .file_type()
                .is_symlink()
                .then(|| std::fs::read_link(e.path()).ok())
                .flatten()
                .map(|t| ls_quote(t.as_os_str().as_bytes()));
            Some(ShmEntry {
                name: raw.to_string_lossy().into_owned(),
                size: md.len(),
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                nlink: md.nlink(),
                is_file: md.file_type().is_file() || md.file_type().is_fifo(),
                kind: kind_letter(md.file_type()),
                quoted: ls_quote(raw.as_bytes()),
                target,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Every entry of `/dev/shm`.
pub fn dev_shm_entries() -> Vec<ShmEntry> {
    shm_entries_in(Path::new("/dev/shm"))
}

/// The `/dev/shm` entry of a POSIX object name (`/x` or `x`).
pub fn dev_shm_entry(name: &str) -> Option<ShmEntry> {
    let file = crate::names::file_name(name);
    dev_shm_entries().into_iter().find(|e| e.name == file)
}

/// The `ls -l` evidence lines for one object, or "No such file" text.
pub fn dev_shm_ls(name: &str) -> Vec<String> {
    let file = crate::names::file_name(name);
    match dev_shm_entry(name) {
        Some(e) => vec![e.ls_line()],
        None => vec![format!(
            "ls: cannot access '/dev/shm/{file}': No such file or directory"
        )],
    }
}

/// Narrated evidence: `$ ls -l /dev/shm/<file>` and what it shows now.
pub fn show_dev_shm(name: &str) {
    let file = crate::names::file_name(name);
    crate::narrate::evidence(&format!("ls -l /dev/shm/{file}"), dev_shm_ls(name));
}

/// Narrated evidence: `$ grep <what> /proc/<pid>/maps` and the line of the
/// mapping that covers `addr`.
pub fn show_maps(what: &str, addr: *const libc::c_void) {
    let pid = std::process::id();
    crate::narrate::evidence(
        &format!("grep {what} /proc/{pid}/maps"),
        maps_line_for(addr as usize),
    );
}

/// Narrated evidence: `$ ipcs -m` and the row of one segment.
pub fn show_ipcs(shmid: i32) {
    crate::narrate::evidence("ipcs -m", ipcs_rows(shmid));
}

/// One row of `/proc/sysvipc/shm`: a System V segment as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysvSegment {
    pub key: i32,
    pub shmid: i32,
    /// Permission bits, plus SHM_DEST (0o1000) once IPC_RMID marked it.
    pub perms: u32,
    pub size: u64,
    pub cpid: i32,
    pub lpid: i32,
    pub nattch: u64,
    pub uid: u32,
    pub gid: u32,
    /// The raw line, as `cat /proc/sysvipc/shm` shows it.
    pub line: String,
}

/// Parse the text of `/proc/sysvipc/shm` (header line, then one row each).
pub fn parse_sysvipc_shm(text: &str) -> Vec<SysvSegment> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let cols: Vec<&str> = header.split_whitespace().collect();
    let idx = |name: &str| cols.iter().position(|c| *c == name);
    let (
        Some(ik),
        Some(iid),
        Some(ip),
        Some(is),
        Some(ic),
        Some(il),
        Some(ina),
        Some(iu),
        Some(ig),
    ) = (
        idx("key"),
        idx("shmid"),
        idx("perms"),
        idx("size"),
        idx("cpid"),
        idx("lpid"),
        idx("nattch"),
        idx("uid"),
        idx("gid"),
    )
    else {
        return Vec::new();
    };
    lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let get = |i: usize| f.get(i).copied();
            Some(SysvSegment {
                key: get(ik)?.parse().ok()?,
                shmid: get(iid)?.parse().ok()?,
                perms: u32::from_str_radix(get(ip)?, 8).ok()?,
                size: get(is)?.parse().ok()?,
                cpid: get(ic)?.parse().ok()?,
                lpid: get(il)?.parse().ok()?,
                nattch: get(ina)?.parse().ok()?,
                uid: get(iu)?.parse().ok()?,
                gid: get(ig)?.parse().ok()?,
                line: l.trim_end().to_string(),
            })
        })
        .collect()
}

/// Every System V segment on the machine (in this IPC namespace).
pub fn sysv_segments() -> Vec<SysvSegment> {
    std::fs::read_to_string("/proc/sysvipc/shm")
        .map(|t| parse_sysvipc_shm(&t))
        .unwrap_or_default()
}

/// The segment with this id, if it still exists.
pub fn sysv_segment(shmid: i32) -> Option<SysvSegment> {
    sysv_segments().into_iter().find(|s| s.shmid == shmid)
}

/// The header of `/proc/sysvipc/shm`, trimmed to its first columns.
pub fn sysvipc_header() -> String {
    std::fs::read_to_string("/proc/sysvipc/shm")
        .ok()
        .and_then(|t| t.lines().next().map(|l| l.trim_end().to_string()))
        .unwrap_or_default()
}

/// The output of `ipcs -m`, when the tool is installed.
pub fn ipcs_m() -> Option<Vec<String>> {
    let out = Command::new("ipcs").arg("-m").output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

/// The `ipcs -m` column header and the row of one segment, when `ipcs`
/// exists; otherwise the matching `/proc/sysvipc/shm` line.
pub fn ipcs_rows(shmid: i32) -> Vec<String> {
    if let Some(lines) = ipcs_m() {
        let id = shmid.to_string();
        let header = lines.iter().find(|l| l.starts_with("key"));
        let row = lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(id.as_str()));
        return match row {
            Some(r) => header.into_iter().chain(Some(r)).cloned().collect(),
            None => vec![format!("(no row with shmid {shmid})")],
        };
    }
    match sysv_segment(shmid) {
        Some(s) => vec![
            "(ipcs is not installed: showing /proc/sysvipc/shm)".to_string(),
            s.line,
        ],
        None => vec![format!("(no segment with shmid {shmid})")],
    }
}

/// The line of `/proc/self/maps` whose range covers `addr`.
pub fn maps_line_for(addr: usize) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .find(|l| {
            let range = l.split_whitespace().next().unwrap_or("");
            let Some((lo, hi)) = range.split_once('-') else {
                return false;
            };
            match (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                (Ok(lo), Ok(hi)) => lo <= addr && addr < hi,
                _ => false,
            }
        })
        .map(collapse_spaces)
}

/// The lines of `/proc/self/maps` that mention `needle`.
pub fn maps_lines_matching(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(collapse_spaces)
        .collect()
}

fn collapse_spaces(l: &str) -> String {
    l.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A filesystem type, as `statfs(2)` reports it, with its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsType {
    pub magic: i64,
    pub name: &'static str,
}

impl std::fmt::Display for FsType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (f_type {:#x})", self.name, self.magic)
    }
}

/// The name of a `statfs` magic number (from `linux/magic.h`).
pub fn fs_name(magic: i64) -> &'static str {
    match magic {
        0x0102_1994 => "tmpfs",
        0x8584_58f6 => "ramfs",
        0xef53 => "ext2/ext3/ext4",
        0x794c_7630 => "overlay",
        0x9123_683e => "btrfs",
        0x5846_5342 => "xfs",
        0x2fc1_2fc1 => "zfs",
        0xf2f5_2010 => "f2fs",
        0x6969 => "nfs",
        0x0102_1997 => "9p",
        0x6573_5546 => "fuse",
        0x7371_7368 => "squashfs",
        0x9584_58f6 => "hugetlbfs",
        0x9fa0 => "proc",
        0x6265_6572 => "sysfs",
        0x1cd1 => "devpts",
        0x6367_7270 => "cgroup2",
        0x4d44 => "vfat",
        _ => "unknown",
    }
}

/// The filesystem type of `path`, by `statfs(2)`.
pub fn fs_type(path: impl AsRef<Path>) -> nix::Result<FsType> {
    let st = nix::sys::statfs::statfs(path.as_ref())?;
    let magic = st.filesystem_type().0 as i64;
    Ok(FsType {
        magic,
        name: fs_name(magic),
    })
}

/// What `/proc/self/mountinfo` says of the mount at exactly `mount_point`
/// (the topmost one, when mounts are stacked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_id: u64,
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
    pub options: String,
    pub line: String,
}

/// Parse one `/proc/self/mountinfo` line.
pub fn parse_mountinfo_line(line: &str) -> Option<MountInfo> {
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split_whitespace().collect();
    let r: Vec<&str> = right.split_whitespace().collect();
    Some(MountInfo {
        mount_id: l.first()?.parse().ok()?,
        mount_point: unescape_octal(l.get(4)?),
        fs_type: r.first()?.to_string(),
        source: r.get(1).map(|s| unescape_octal(s)).unwrap_or_default(),
        options: format!(
            "{},{}",
            l.get(5).copied().unwrap_or(""),
            r.get(2).copied().unwrap_or("")
        )
        .trim_matches(',')
        .to_string(),
        line: line.to_string(),
    })
}

/// Undo the octal escapes of mount tables (`\040` for a space).
pub fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every mount this process sees.
pub fn mounts() -> Vec<MountInfo> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(parse_mountinfo_line)
        .collect()
}

/// The topmost mount at exactly `mount_point`, if any.
pub fn mount_at(mount_point: &str) -> Option<MountInfo> {
    mounts()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == mount_point)
}

/// The user name of a uid (from the password database), or the number.
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// The group name of a gid, or the number.
pub fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string())
}

/// The page size, as the article gets it: `sysconf(_SC_PAGE_SIZE)`.
pub fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map(|v| v as usize)
        .unwrap_or(4096)
}

/// The C library's version, from `gnu_get_libc_version()` (glibc only).
pub fn libc_version() -> Option<String> {
    #[cfg(target_env = "gnu")]
    {
        unsafe extern "C" {
            fn gnu_get_libc_version() -> *const libc::c_char;
        }
        // SAFETY: gnu_get_libc_version takes no arguments and returns a
        // pointer to a static NUL-terminated string owned by glibc.
        let p = unsafe { gnu_get_libc_version() };
        if p.is_null() {
            return None;
        }
        // SAFETY: p is non-null and points to glibc's static C string.
        let s = unsafe { std::ffi::CStr::from_ptr(p) };
        Some(s.to_string_lossy().into_owned())
    }
    #[cfg(not(target_env = "gnu"))]
    {
        None
    }
}

/// Whether this is glibc at or after `major.minor`.
pub fn glibc_at_least(major: u32, minor: u32) -> Option<bool> {
    version_at_least(&libc_version()?, major, minor)
}

/// Whether the version `v` (`"2.36"`, `"2.33.9000"`) is at or after
/// `major.minor`; `None` if `v` does not start with a number.
pub fn version_at_least(v: &str, major: u32, minor: u32) -> Option<bool> {
    let mut it = v.split('.').map(|p| p.trim().parse::<u32>().ok());
    let ma = it.next()??;
    let mi = it.next().flatten().unwrap_or(0);
    Some((ma, mi) >= (major, minor))
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_sysvipc_shm() {
        let text = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n  12345678          3  1600                  4096  4242  4243      1     0     0     0     0 1732640000          0 1732640000                  4096                     0\n";
        let segs = parse_sysvipc_shm(text);
        assert_eq!(segs.len(), 1);
        let s = &segs[0];
        assert_eq!(
            (s.key, s.shmid, s.perms, s.size),
            (12345678, 3, 0o1600, 4096)
        );
        assert_eq!((s.cpid, s.lpid, s.nattch), (4242, 4243, 1));
    }

    #[test]
    fn parses_mountinfo() {
        let m = parse_mountinfo_line(
            "30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683656k",
        )
        .unwrap();
        assert_eq!(m.mount_point, "/dev/shm");
        assert_eq!(m.fs_type, "tmpfs");
        assert!(m.options.contains("size=24683656k"));
    }

    #[test]
    fn names_are_quoted_like_gnu_ls() {
        assert_eq!(ls_quote(b"shm-lessons-1-42"), "shm-lessons-1-42");
        assert_eq!(ls_quote(b"a b"), "'a b'");
        // A newline never splits the line: ls prints 'a'$'\n''b'.
        assert_eq!(ls_quote(b"a\nb"), "'a'$'\\n''b'");
        assert_eq!(ls_quote(b"it's"), "\"it's\"");
        assert_eq!(ls_quote(b"it's $x"), "'it'\\''s $x'");
        assert_eq!(ls_quote(b"x\x01"), "'x'$'\\001'");
        assert_eq!(ls_quote(b"bad\xff"), "'bad'$'\\377'");
        assert_eq!(ls_quote("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(ls_quote(b""), "''");
    }

    #[test]
    fn a_symlink_and_a_newline_in_dev_shm_are_listed_like_ls() {
        let dir = std::env::temp_dir().join(format!("shm-lessons-inspect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _rm = crate::cleanup::path(&dir);
        std::os::unix::fs::symlink("/nowhere", dir.join("link")).unwrap();
        std::fs::write(dir.join("two\nlines"), b"x").unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        let lines: Vec<String> = shm_entries_in(&dir).iter().map(ShmEntry::ls_line).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].starts_with("lrwxrwxrwx 1 ") && lines[0].ends_with(" link -> /nowhere"),
            "{lines:?}"
        );
        assert!(lines[1].starts_with("drwx"), "{lines:?}");
        assert!(
            lines[2].starts_with("-rw") && lines[2].ends_with(" 1 'two'$'\\n''lines'"),
            "{lines:?}"
        );
        assert!(lines.iter().all(|l| !l.contains('\n')));
    }

    #[test]
    fn modes_read_like_ls() {
        assert_eq!(mode_string(0o600), "rw-------");
        assert_eq!(mode_string(0o1777), "rwxrwxrwt");
    }

    #[test]
    fn the_maps_line_of_our_own_code_is_executable() {
        let f: fn() -> usize = page_size;
        let line = maps_line_for(f as usize).expect("code is mapped");
        assert!(
            line.split_whitespace().nth(1).unwrap().contains('x'),
            "{line}"
        );
    }

    #[test]
    fn dev_shm_is_tmpfs_here() {
        if Path::new("/dev/shm").exists() {
            assert_eq!(fs_type("/dev/shm").unwrap().name, "tmpfs");
        }
    }
}

/// A field of `/proc/meminfo` in kB (`Shmem`, `MemFree`, ...), as the kernel
/// prints it: `Shmem:   123456 kB`.
pub fn meminfo_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_kib(&text, field)
}

/// The value of `field` in the text of `/proc/meminfo`, in kB.
pub fn parse_meminfo_kib(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        if name.trim() != field {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The process ids of every process this user may look at (`/proc/<pid>`).
pub fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a process with this pid exists (`kill(pid, 0)`: EPERM means it
/// exists but belongs to another user).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

/// The pids of processes (that we may inspect) which map or hold open the
/// file `path`: the lines of `/proc/<pid>/maps` and the links in
/// `/proc/<pid>/fd` that name it, "(deleted)" or not.
pub fn pids_using(path: &str) -> Vec<i32> {
    let mapped = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map(|m| {
                m.lines().any(|l| {
                    let p = l.split_whitespace().nth(5).unwrap_or("");
                    p == path
                })
            })
            .unwrap_or(false)
    };
    let open = |pid: i32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|rd| {
                rd.filter_map(Result::ok).any(|e| {
                    std::fs::read_link(e.path())
                        .map(|t| t.as_os_str() == path)
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    };
    pids()
        .into_iter()
        .filter(|&p| mapped(p) || open(p))
        .collect()
}

#[cfg(test)]
mod meminfo_tests {
    use super::*;

    #[test]
    fn reads_a_meminfo_field() {
        let text = "MemTotal:       16318480 kB\nShmem:             12345 kB\nShmemHugePages:        0 kB\n";
        assert_eq!(parse_meminfo_kib(text, "Shmem"), Some(12345));
        assert_eq!(parse_meminfo_kib(text, "Nope"), None);
        assert!(meminfo_kib("MemTotal").is_some_and(|v| v > 0));
    }

    #[test]
    fn we_are_alive_and_use_our_own_files() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(0));
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(pids_using(exe.to_str().unwrap()).contains(&(std::process::id() as i32)));
    }
}

/// A directory on a disk filesystem (not tmpfs or ramfs), for a file whose
/// pages the kernel must write back: `/var/tmp` (on a disk by convention: it
/// survives reboots), else the temporary directory. `None` when both are in
/// memory.
pub fn disk_dir() -> Option<(std::path::PathBuf, FsType)> {
    [std::path::PathBuf::from("/var/tmp"), std::env::temp_dir()]
        .into_iter()
        .find_map(|d| {
            let t = fs_type(&d).ok()?;
            (t.name != "tmpfs" && t.name != "ramfs").then_some((d, t))
        })
}
