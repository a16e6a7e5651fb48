//! Names and keys unique to one run.
//!
//! The article uses the fixed name `/mymem` and key `12345678`. Two students on
//! one server, or two tests running in parallel, would then share (and
//! clobber) one object. Every lesson instead makes names from its number and
//! its process id, all starting with [`PREFIX`] so that `scripts/cleanup` can
//! find this workspace's leftovers and nothing else. The article's values stay
//! available through `--name /mymem` and `--key 12345678`.

use nix::unistd::getpid;

/// Every POSIX object a lesson creates is named `/shm-lessons-…`.
pub const PREFIX: &str = "shm-lessons-";

/// The top byte of every System V key a lesson makes up (`0x53` is `'S'`).
pub const KEY_MARK: u32 = 0x53;

/// `/shm-lessons-<lesson>-<pid>`, or `/shm-lessons-<lesson>-<pid>-<what>`
/// when a run needs more than one object.
pub fn unique_name(lesson: u8, what: &str) -> String {
    if what.is_empty() {
        format!("/{PREFIX}{lesson}-{}", getpid())
    } else {
        format!("/{PREFIX}{lesson}-{}-{what}", getpid())
    }
}

/// `/shm-lessons-<lesson>-<user>`: the same for every run by one user, so a
/// writer and a reader in two terminals meet, and two users don't collide.
pub fn per_user_name(lesson: u8) -> String {
    format!(
        "/{PREFIX}{lesson}-{}",
        crate::inspect::user_name(nix::unistd::getuid().as_raw())
    )
}

/// A System V key for this run: `0x53` (`'S'`), the lesson number, then the
/// low 20 bits of the pid. Create it with `IPC_EXCL`: a collision is an error.
pub fn unique_key(lesson: u8) -> i32 {
    let pid = getpid().as_raw() as u32;
    ((KEY_MARK << 24) | ((u32::from(lesson) & 0xf) << 20) | (pid & 0xf_ffff)) as i32
}

/// Whether a key was made up by [`unique_key`].
pub fn is_lesson_key(key: i32) -> bool {
    (key as u32) >> 24 == KEY_MARK
}

/// A key as `ipcs` prints it: `0x00bc614e` for 12345678.
pub fn key_hex(key: i32) -> String {
    format!("{:#010x}", key as u32)
}

/// The file name of a POSIX object under `/dev/shm` (no leading slash).
pub fn file_name(name: &str) -> &str {
    name.trim_start_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn article_key_in_hex() {
        assert_eq!(key_hex(12345678), "0x00bc614e");
    }

    #[test]
    fn unique_names_carry_the_prefix_and_pid() {
        let n = unique_name(3, "nosize");
        assert!(n.starts_with("/shm-lessons-3-"));
        assert!(n.ends_with("-nosize"));
        assert!(is_lesson_key(unique_key(2)));
        assert!(!is_lesson_key(12345678));
    }
}
