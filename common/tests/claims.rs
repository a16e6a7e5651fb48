//! Claims of the ledger (docs/src/claims.md) that no lesson binary shows by
//! itself, checked on this machine:
//!
//! - claim-lrt: the article compiles with `gcc ... -lrt`. Since glibc 2.34,
//!   `shm_open` and `shm_unlink` are in libc itself and `librt` is an empty
//!   stub;
//! - claim-unrelated: Python's `multiprocessing.shared_memory` unlinks an
//!   object it only attached to, unless (3.13+) `track=False`.

use std::ffi::CStr;
use std::path::PathBuf;
use std::process::Command;

use common::{inspect, names};

/// Whether the already loaded `libc.so.6` itself defines `symbol`. `dlsym`
/// with a handle searches that object and its dependencies only (for libc,
/// just the dynamic loader), never librt.
fn libc_defines(symbol: &CStr) -> Option<bool> {
    // SAFETY: the argument is a NUL-terminated string; RTLD_NOLOAD only
    // returns a handle to an object that is already loaded (our own libc),
    // so no constructor runs.
    let handle = unsafe { libc::dlopen(c"libc.so.6".as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        return None;
    }
    // SAFETY: handle came from dlopen above; symbol is NUL-terminated.
    let found = unsafe { !libc::dlsym(handle, symbol.as_ptr()).is_null() };
    // SAFETY: one dlclose for the one dlopen; the object stays loaded
    // because this process was linked against it.
    unsafe { libc::dlclose(handle) };
    Some(found)
}

#[test]
fn shm_open_is_in_libc_itself_from_glibc_2_34() {
    let Some(new_glibc) = inspect::glibc_at_least(2, 34) else {
        eprintln!("skipped: not glibc");
        return;
    };
    let Some(open) = libc_defines(c"shm_open") else {
        eprintln!("skipped: libc.so.6 is not loaded (a static build?)");
        return;
    };
    let unlink = libc_defines(c"shm_unlink").unwrap();
    let v = inspect::libc_version().unwrap();
    if new_glibc {
        assert!(
            open && unlink,
            "glibc {v}: libc.so.6 lacks shm_open/shm_unlink"
        );
    } else {
        assert!(!open, "glibc {v} < 2.34, yet libc.so.6 defines shm_open");
    }
}

/// The article's POSIX program, cut to what links against `shm_open`: the
/// name comes from argv (unique to the test), O_EXCL and 0600, no sleep.
const PROGRAM: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char *argv[]) {
    long size = sysconf(_SC_PAGE_SIZE);
    int fd = shm_open(argv[1], O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd == -1) { perror("shm_open"); return 1; }
    int ok = ftruncate(fd, size) == 0;
    unsigned long *p = mmap(0, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (ok && p != MAP_FAILED) { *p = 0xdeadbeef; printf("wrote %#lx\n", *p); munmap(p, size); }
    if (shm_unlink(argv[1]) != 0) { perror("shm_unlink"); return 1; }
    return ok && p != MAP_FAILED ? 0 : 1;
}
"#;

/// A scratch directory, removed on drop (also when an assertion fails).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_c_program_using_shm_open_links_without_lrt() {
    if inspect::glibc_at_least(2, 34) != Some(true) {
        eprintln!("skipped: not glibc 2.34 or newer, where -lrt is still needed");
        return;
    }
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("skipped: no C compiler (cc)");
        return;
    }
    let dir = Scratch(std::env::temp_dir().join(format!("shm-lessons-lrt-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let source = dir.0.join("posix-shm.c");
    let binary = dir.0.join("posix-shm");
    std::fs::write(&source, PROGRAM).unwrap();
    // No -lrt, and --no-as-needed is irrelevant: nothing else is linked.
    let cc = Command::new("cc")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "cc without -lrt failed:\n{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    // The binary does not even depend on librt.
    let needed = Command::new("ldd").arg(&binary).output();
    if let Ok(ldd) = needed {
        let text = String::from_utf8_lossy(&ldd.stdout);
        assert!(!text.contains("librt"), "linked against librt:\n{text}");
    }
    // Unique to this test process, like testkit's names (a feature this
    // crate's own tests don't enable).
    let name = format!("/{}test-{}-lrt", names::PREFIX, std::process::id());
    let out = Command::new(&binary).arg(&name).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if inspect::dev_shm_entry(&name).is_some() {
        let _ = std::fs::remove_file(format!("/dev/shm/{}", name.trim_start_matches('/')));
        panic!("{name} was left behind");
    }
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text, "wrote 0xdeadbeef\n");
}

/// Removes a POSIX object on drop (also when an assertion fails).
struct Object(String);

impl Drop for Object {
    fn drop(&mut self) {
        let _ = nix::sys::mman::shm_unlink(self.0.as_str());
    }
}

fn exists(name: &str) -> bool {
    inspect::dev_shm_entry(name).is_some()
}

/// A fresh 4096-byte object, as a writer in lesson 5 makes one.
fn create(name: &str) -> Object {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let fd = nix::sys::mman::shm_open(
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
        Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let object = Object(name.to_string());
    nix::unistd::ftruncate(&fd, 4096).unwrap();
    object
}

/// Attach to `name` from Python's multiprocessing.shared_memory, close it,
/// exit. `extra` goes into the constructor's arguments.
fn python_attach(name: &str, extra: &str) -> std::process::Output {
    let script = format!(
        "import sys\n\
         from multiprocessing import shared_memory\n\
         shm = shared_memory.SharedMemory(name=sys.argv[1]{extra})\n\
         print(shm.size)\n\
         shm.close()\n"
    );
    // Python adds the leading slash itself.
    Command::new("python3")
        .args(["-c", &script, name.trim_start_matches('/')])
        .output()
        .unwrap()
}

/// (major, minor) of python3, when it is installed.
fn python_version() -> Option<(u32, u32)> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(*sys.version_info[:2])"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|p| p.parse().ok());
    Some((it.next()??, it.next()??))
}

/// Lesson 5's trap for Python readers (docs/src/claims.md#claim-unrelated):
/// `SharedMemory(name=...)` only attaches, yet its resource tracker unlinks
/// the writer's object when the Python process exits. Python 3.13's
/// `track=False` leaves it alone.
#[test]
fn pythons_shared_memory_unlinks_an_object_it_only_attached() {
    let Some(version) = python_version() else {
        eprintln!("skipped: python3 is not installed");
        return;
    };
    if version < (3, 8) {
        eprintln!("skipped: python3 {version:?} has no multiprocessing.shared_memory");
        return;
    }
    let name = format!("/{}test-{}-pytrack", names::PREFIX, std::process::id());
    let _object = create(&name);
    let out = python_attach(&name, "");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "4096\n");
    // The tracker is a process of its own that unlinks as it shuts down,
    // right after the script exits: wait for that (bounded).
    let gone = common::children::poll_until(std::time::Duration::from_secs(10), || {
        (!exists(&name)).then_some(())
    });
    assert!(
        gone.is_some(),
        "python3 {version:?} attached and exited, and {name} is still there"
    );

    if version >= (3, 13) {
        let _object = create(&name);
        let out = python_attach(&name, ", track=False");
        assert!(out.status.success(), "{out:?}");
        assert!(
            exists(&name),
            "python3 {version:?} with track=False removed {name}"
        );
    }
}
