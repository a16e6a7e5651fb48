//! One narrated system call, one line of lesson source.
//!
//! [`call!`](crate::call!) wraps a call as the article writes it. It prints
//! the call, built from the call's own name and the *values* of its
//! arguments, before the call runs, then its result, strace-style:
//!
//! ```text
//!   ▸ shm_open("/shm-lessons-1-42", O_CREAT|O_EXCL|O_RDWR, 0600) = fd 3
//! ```
//!
//! from this line of source:
//!
//! ```no_run
//! # use common::call;
//! # use nix::{fcntl::OFlag, sys::{mman::shm_open, stat::Mode}};
//! # fn f(name: String) -> anyhow::Result<()> {
//! let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
//! let fd = call!(shm_open(name.as_str(), flags, Mode::from_bits_truncate(0o600)))?;
//! # Ok(()) }
//! ```
//!
//! A failing call prints `= -1 EEXIST (File exists)` and returns a
//! [`SysError`](crate::report::SysError) naming the call, so `?`,
//! `.context(..)`, [`errno_of`](crate::report::errno_of) and
//! [`common::run`](crate::run)'s `ERROR [EEXIST File exists] shm_open(..)`
//! line work as they always did.
//!
//! Each argument is rendered by its type ([`Arg`]): flag sets as C spells
//! them (`O_CREAT|O_EXCL`), a [`Mode`] as `0600`, descriptors as their
//! number, pointers as `0x7f…`, `None` as `NULL`, strings quoted, numbers as
//! numbers. An argument whose type says too little (a raw `c_int` that is
//! really a flag word) names its renderer after `=>`:
//! `call!(shmget(key => call::ipc_key, size, flags => call::ipc_flags))`.
//! Each result is rendered by its type too ([`Ret`]): `fd 3`, `0` for `()`,
//! an address, a number, a child's pid; `=> renderer` after the closing
//! parenthesis replaces that.
//!
//! [`attempt!`](crate::attempt!) is the same for a call the lesson *expects*
//! may fail: the error is printed as an outcome, not a failure, and handed
//! back as a plain `Result<T, Errno>` to inspect.
//!
//! An `unsafe` call stays inside the lesson's own `unsafe { }` block, with its
//! `// SAFETY:` comment: `unsafe { call!(mmap(None, len, prot, flags, &fd, 0)) }?`.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use nix::sys::stat::Mode;

use crate::narrate;

/// How an argument appears in a narrated call: what C source would write.
pub trait Arg {
    fn arg(&self) -> String;

    /// How `None` of this type reads in C: `NULL` for pointers and the like,
    /// `0` for flag sets (`waitpid(pid, &status, 0)`).
    fn none() -> String
    where
        Self: Sized,
    {
        "NULL".to_string()
    }
}

/// How a successful result appears after `=`. `None` prints nothing at all:
/// the child side of `fork`, which must not touch stdio.
pub trait Ret {
    fn ret(&self) -> Option<String>;
}

impl<T: Arg + ?Sized> Arg for &T {
    fn arg(&self) -> String {
        (**self).arg()
    }
}

impl Arg for str {
    fn arg(&self) -> String {
        format!("{self:?}")
    }
}

impl Arg for String {
    fn arg(&self) -> String {
        self.as_str().arg()
    }
}

impl Arg for std::path::Path {
    fn arg(&self) -> String {
        format!("{self:?}")
    }
}

impl Arg for std::ffi::CStr {
    fn arg(&self) -> String {
        self.to_string_lossy().as_ref().arg()
    }
}

/// A byte buffer the call reads (`write`): its first bytes, quoted, and its
/// length, as C passes a buffer: `write(3, "hello", 5)`.
impl Arg for [u8] {
    fn arg(&self) -> String {
        const SHOWN: usize = 16;
        let text: String = self
            .iter()
            .take(SHOWN)
            .flat_map(|b| std::ascii::escape_default(*b))
            .map(char::from)
            .collect();
        let more = if self.len() > SHOWN { "..." } else { "" };
        format!("\"{text}\"{more}, {}", self.len())
    }
}

/// A buffer the call fills (`read`, `pread`): not an input, so only `buf`
/// and its length, as C passes it: `pread(3, buf, 4096, 0)`.
impl Arg for &mut [u8] {
    fn arg(&self) -> String {
        format!("buf, {}", self.len())
    }
}

macro_rules! numbers {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn arg(&self) -> String {
                self.to_string()
            }
        }
        impl Ret for $t {
            fn ret(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}
numbers!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

impl Arg for std::num::NonZeroUsize {
    fn arg(&self) -> String {
        self.to_string()
    }
}

impl Arg for nix::unistd::Pid {
    fn arg(&self) -> String {
        self.to_string()
    }
}

/// A user or group id as a number: `fchown(3, 1000, 1000)`.
impl Arg for nix::unistd::Uid {
    fn arg(&self) -> String {
        self.as_raw().to_string()
    }
}

impl Arg for nix::unistd::Gid {
    fn arg(&self) -> String {
        self.as_raw().to_string()
    }
}

impl Ret for nix::unistd::Pid {
    fn ret(&self) -> Option<String> {
        Some(self.to_string())
    }
}

/// Flag sets of nix, as C spells them: `O_CREAT|O_EXCL|O_RDWR`, `0` when empty.
macro_rules! flag_sets {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn arg(&self) -> String {
                narrate::flags(self)
            }
            fn none() -> String {
                "0".to_string()
            }
        }
    )*};
}
flag_sets!(
    nix::fcntl::OFlag,
    nix::fcntl::SealFlag,
    nix::fcntl::FallocateFlags,
    nix::fcntl::AtFlags,
    nix::sys::mman::ProtFlags,
    nix::sys::mman::MRemapFlags,
    nix::sys::mman::MsFlags,
    nix::sys::memfd::MFdFlags,
    nix::mount::MsFlags,
    nix::mount::MntFlags,
    nix::sched::CloneFlags,
    nix::sys::wait::WaitPidFlag,
    nix::sys::socket::MsgFlags,
    nix::sys::socket::SockFlag
);

/// `fcntl`'s command and its argument: `F_SETPIPE_SZ, 1048576`,
/// `F_ADD_SEALS, F_SEAL_SHRINK|F_SEAL_GROW`.
impl Arg for nix::fcntl::FcntlArg<'_> {
    fn arg(&self) -> String {
        match self {
            Self::F_ADD_SEALS(seals) => format!("F_ADD_SEALS, {}", seals.arg()),
            other => format!("{other:?}").replace('(', ", ").replace(')', ""),
        }
    }
}

/// A deadline, `10s`: for [`children::wait_deadline`](crate::children::wait_deadline).
impl Arg for std::time::Duration {
    fn arg(&self) -> String {
        format!("{self:?}")
    }
}

impl Arg for nix::sys::socket::AddressFamily {
    fn arg(&self) -> String {
        match self {
            Self::Unix => "AF_UNIX".to_string(),
            Self::Inet => "AF_INET".to_string(),
            Self::Inet6 => "AF_INET6".to_string(),
            other => format!("{other:?}"),
        }
    }
}

impl Arg for nix::sys::socket::SockType {
    fn arg(&self) -> String {
        match self {
            Self::Stream => "SOCK_STREAM".to_string(),
            Self::Datagram => "SOCK_DGRAM".to_string(),
            Self::SeqPacket => "SOCK_SEQPACKET".to_string(),
            other => format!("{other:?}"),
        }
    }
}

/// `None` is the protocol 0: the family's default.
impl Arg for nix::sys::socket::SockProtocol {
    fn arg(&self) -> String {
        format!("{self:?}")
    }
    fn none() -> String {
        "0".to_string()
    }
}

/// A CPU set as the CPUs in it: `CPUs [0, 1]`.
impl Arg for nix::sched::CpuSet {
    fn arg(&self) -> String {
        let cpus: Vec<usize> = (0..nix::sched::CpuSet::count())
            .filter(|&c| self.is_set(c).unwrap_or(false))
            .collect();
        format!("CPUs {cpus:?}")
    }
}

impl Ret for nix::sched::CpuSet {
    fn ret(&self) -> Option<String> {
        Some(self.arg())
    }
}

/// `mmap`'s flags; nix names `MAP_ANONYMOUS` by its alias `MAP_ANON`.
impl Arg for nix::sys::mman::MapFlags {
    fn arg(&self) -> String {
        narrate::flags(self)
            .split('|')
            .map(|f| if f == "MAP_ANON" { "MAP_ANONYMOUS" } else { f })
            .collect::<Vec<_>>()
            .join("|")
    }
    fn none() -> String {
        "0".to_string()
    }
}

/// A mode as C source writes it: `0600`.
impl Arg for Mode {
    fn arg(&self) -> String {
        narrate::mode(self.bits())
    }
}

impl Arg for nix::unistd::SysconfVar {
    fn arg(&self) -> String {
        format!("_SC_{self:?}")
    }
}

impl Arg for nix::sys::signal::Signal {
    fn arg(&self) -> String {
        self.as_str().to_string()
    }
}

/// A descriptor is its number, as in C.
impl Arg for OwnedFd {
    fn arg(&self) -> String {
        self.as_raw_fd().to_string()
    }
}

impl Arg for BorrowedFd<'_> {
    fn arg(&self) -> String {
        self.as_raw_fd().to_string()
    }
}

impl<T> Arg for NonNull<T> {
    fn arg(&self) -> String {
        format!("{:p}", self.as_ptr())
    }
}

impl<T> Arg for *mut T {
    fn arg(&self) -> String {
        pointer(*self as *const T)
    }
}

impl<T> Arg for *const T {
    fn arg(&self) -> String {
        pointer(*self)
    }
}

fn pointer<T>(p: *const T) -> String {
    if p.is_null() {
        "NULL".to_string()
    } else {
        format!("{p:p}")
    }
}

/// `None` is C's `NULL` (an address, a path, a buffer left out).
impl<T: Arg> Arg for Option<T> {
    fn arg(&self) -> String {
        self.as_ref().map_or_else(T::none, Arg::arg)
    }
}

/// `close`, `ftruncate`, `munmap`...: C returns 0.
impl Ret for () {
    fn ret(&self) -> Option<String> {
        Some("0".to_string())
    }
}

impl Ret for OwnedFd {
    fn ret(&self) -> Option<String> {
        Some(format!("fd {}", self.as_raw_fd()))
    }
}

/// `pipe`, `socketpair`: the two descriptors, as C's `int fds[2]` holds them.
impl Ret for (OwnedFd, OwnedFd) {
    fn ret(&self) -> Option<String> {
        Some(format!("[{}, {}]", self.0.as_raw_fd(), self.1.as_raw_fd()))
    }
}

impl<T> Ret for NonNull<T> {
    fn ret(&self) -> Option<String> {
        Some(format!("{:p}", self.as_ptr()))
    }
}

/// `sysconf`: `None` is C's -1 with errno untouched (no limit, no value).
impl<T: Ret> Ret for Option<T> {
    fn ret(&self) -> Option<String> {
        match self {
            Some(v) => v.ret(),
            None => Some("-1 (no value)".to_string()),
        }
    }
}

/// `fork`: the child's pid in the parent; nothing at all in the child,
/// which may only make async-signal-safe calls (no stdio, no allocation).
impl Ret for nix::unistd::ForkResult {
    fn ret(&self) -> Option<String> {
        match self {
            Self::Parent { child } => Some(format!("{child} (in the parent; 0 in the child)")),
            Self::Child => None,
        }
    }
}

/// `waitpid`: the pid, and how the child ended, in words:
/// `1234: exited with status 0`, `1234: killed by SIGBUS (signal 7)`.
impl Ret for nix::sys::wait::WaitStatus {
    fn ret(&self) -> Option<String> {
        Some(match self.pid() {
            Some(pid) => format!("{pid}: {}", crate::fault::describe(*self)),
            None => "0 (still running)".to_string(),
        })
    }
}

/// [`children::wait_deadline`](crate::children::wait_deadline): as
/// `waitpid`, and whether the deadline had to kill the child.
impl Ret for crate::children::Waited {
    fn ret(&self) -> Option<String> {
        match self {
            Self::Ended(status) => status.ret(),
            Self::TimedOut(status) => status
                .ret()
                .map(|s| format!("{s} (past the deadline: we killed it)")),
        }
    }
}

/// `fstat`: 0, and the size and the blocks allocated.
impl Ret for nix::sys::stat::FileStat {
    fn ret(&self) -> Option<String> {
        Some(format!(
            "0 (st_size {}, st_blocks {})",
            self.st_size, self.st_blocks
        ))
    }
}

/// `shmctl(IPC_STAT)`: 0, and the segment's size and attachment count.
impl Ret for libc::shmid_ds {
    fn ret(&self) -> Option<String> {
        Some(format!(
            "0 (shm_segsz {}, shm_nattch {})",
            self.shm_segsz, self.shm_nattch
        ))
    }
}

/// A System V flag word as C spells it: `IPC_CREAT|IPC_EXCL|0600`.
/// Use it after `=>`: `call!(shmget(key, size, flags => call::ipc_flags))`.
pub fn ipc_flags(flags: &libc::c_int) -> String {
    crate::sysv::shmflg_string(*flags)
}

/// A System V key as C source writes it: `IPC_PRIVATE` or `0x00bc614e`.
pub fn ipc_key(key: &libc::key_t) -> String {
    crate::sysv::key_string(*key)
}

/// A number in hex, `0xdeadbeef`: for values a student compares with a dump.
pub fn hex(v: &impl std::fmt::LowerHex) -> String {
    format!("{v:#x}")
}

/// The call's text, `name(arg, arg)`, from its path and rendered arguments.
/// A wrapper whose Rust signature differs from the C call it makes is shown
/// as the C call (see [`c_form`]).
#[doc(hidden)]
pub fn text(path: &str, args: &[String]) -> String {
    let name = path.rsplit("::").next().unwrap_or(path).trim();
    c_form(name, args).unwrap_or_else(|| format!("{name}({})", args.join(", ")))
}

/// The C spelling of a call whose Rust wrapper drops or merges arguments:
/// `shmctl_rmid(7)` is `shmctl(7, IPC_RMID, NULL)`, nix's `waitpid(pid, 0)`
/// is `waitpid(pid, &status, 0)`, `mmap_anonymous(..)` is `mmap(.., -1, 0)`,
/// `fstat(3)` is `fstat(3, &st)`, nix's `socketpair(.., SOCK_CLOEXEC)` puts
/// the flag in the type as C does and fills `sv`.
pub fn c_form(name: &str, args: &[String]) -> Option<String> {
    Some(match (name, args) {
        ("fstat", [fd]) => format!("fstat({fd}, &st)"),
        ("statfs", [path]) => format!("statfs({path}, &buf)"),
        ("recvmsg", [sock]) => format!("recvmsg({sock}, &msg, 0)"),
        ("pipe", []) => "pipe(fds)".to_string(),
        ("pipe2", [flags]) => format!("pipe2(fds, {flags})"),
        // children::wait_deadline: waitpid, with a kill past the deadline.
        ("wait_deadline", [pid, deadline]) => {
            format!("waitpid({pid}, &status, 0) (at most {deadline})")
        }
        ("socketpair", [domain, kind, protocol, flags]) => {
            let kind = if flags == "0" {
                kind.clone()
            } else {
                format!("{kind}|{flags}")
            };
            format!("socketpair({domain}, {kind}, {protocol}, sv)")
        }
        ("shmat", [id, flags]) => format!("shmat({id}, NULL, {flags})"),
        ("shmctl_rmid", [id]) => format!("shmctl({id}, IPC_RMID, NULL)"),
        ("shmctl_stat", [id]) => format!("shmctl({id}, IPC_STAT, &buf)"),
        ("waitpid", [pid, options]) => format!("waitpid({pid}, &status, {options})"),
        ("mmap_anonymous", [addr, len, prot, flags]) => {
            // nix adds MAP_ANONYMOUS; the caller may already have said so
            // (bitflags spells that bit MAP_ANON): name it once.
            let mut names: Vec<&str> = flags
                .split('|')
                .map(|f| if f == "MAP_ANON" { "MAP_ANONYMOUS" } else { f })
                .filter(|f| *f != "0")
                .collect();
            if !names.contains(&"MAP_ANONYMOUS") {
                names.push("MAP_ANONYMOUS");
            }
            format!("mmap({addr}, {len}, {prot}, {}, -1, 0)", names.join("|"))
        }
        _ => return None,
    })
}

/// Narrate one system call in one line of source: announce it with its real
/// arguments, run it, print `= result` or `= -1 ENAME (text)`.
///
/// Returns `anyhow::Result<T>`; a failure is a
/// [`SysError`](crate::report::SysError) naming the call. See the
/// [module documentation](crate::call) for the rendering rules.
///
/// `call!(after waitpid(child, None))` prints the whole line once the call
/// has returned, instead of announcing it first: for a call during which
/// another process writes to the terminal.
///
/// ```no_run
/// use common::call;
/// use nix::unistd::{SysconfVar, ftruncate, sysconf};
/// # fn f(fd: std::os::fd::OwnedFd) -> anyhow::Result<()> {
/// let page = call!(sysconf(SysconfVar::PAGE_SIZE))?;   // ▸ sysconf(_SC_PAGE_SIZE) = 4096
/// call!(ftruncate(&fd, 4096))?;                         // ▸ ftruncate(3, 4096) = 0
/// let id = call!(common::sysv::shmget(0, 4096, libc::IPC_CREAT | 0o600 => call::ipc_flags))?;
/// # Ok(()) }
/// ```
#[macro_export]
macro_rules! call {
    (after $($f:ident)::+ ( $($args:tt)* ) $(=> $show:expr)?) => {
        $crate::__call!(@bind done step_after [$($f)::+] [] [$($args)* ,] [$($show)?])
    };
    ($($f:ident)::+ ( $($args:tt)* ) $(=> $show:expr)?) => {
        $crate::__call!(@bind done step [$($f)::+] [] [$($args)* ,] [$($show)?])
    };
}

/// [`call!`] for a call the lesson expects may fail: prints either outcome
/// (a failure in the warning colour, as something taught, not an error) and
/// returns the plain `Result<T, Errno>` for the lesson to inspect.
///
/// ```no_run
/// use common::attempt;
/// # fn f(id: i32) {
/// let gone = attempt!(common::sysv::shmctl_stat(id)); // ▸ shmctl_stat(7) = -1 EINVAL (Invalid argument)
/// # }
/// ```
#[macro_export]
macro_rules! attempt {
    (after $($f:ident)::+ ( $($args:tt)* ) $(=> $show:expr)?) => {
        $crate::__call!(@bind attempted step_after [$($f)::+] [] [$($args)* ,] [$($show)?])
    };
    ($($f:ident)::+ ( $($args:tt)* ) $(=> $show:expr)?) => {
        $crate::__call!(@bind attempted step [$($f)::+] [] [$($args)* ,] [$($show)?])
    };
}

/// The machinery of [`call!`] and [`attempt!`]: bind each argument once, in
/// order (each `v` is a distinct binding by macro hygiene), render it, then
/// announce, call and finish.
#[doc(hidden)]
#[macro_export]
macro_rules! __call {
    // Trailing commas: the user's own plus the one added above.
    (@bind $how:ident $when:ident [$($f:ident)::+] [$($done:tt)*] [, $(,)*] $show:tt) => {
        $crate::__call!(@bind $how $when [$($f)::+] [$($done)*] [] $show)
    };
    (@bind $how:ident $when:ident [$($f:ident)::+] [$($done:tt)*] [$a:expr => $r:expr , $($rest:tt)*] $show:tt) => {
        match $a {
            v => $crate::__call!(@bind $how $when [$($f)::+] [$($done)* (v, ($r)(&v))] [$($rest)*] $show),
        }
    };
    (@bind $how:ident $when:ident [$($f:ident)::+] [$($done:tt)*] [$a:expr , $($rest:tt)*] $show:tt) => {
        match $a {
            v => $crate::__call!(@bind $how $when [$($f)::+] [$($done)* (v, $crate::call::Arg::arg(&v))] [$($rest)*] $show),
        }
    };
    (@bind $how:ident $when:ident [$($f:ident)::+] [$(($v:ident, $shown:expr))*] [] [$($show:expr)?]) => {{
        let text = $crate::call::text(stringify!($($f)::+), &[$($shown),*]);
        let step = $crate::narrate::$when(text);
        let result = $($f)::+($($v),*);
        step.$how(result, $crate::__call!(@show $($show)?))
    }};
    (@show) => {
        $crate::call::Ret::ret
    };
    (@show $show:expr) => {
        |v: &_| ::std::option::Option::Some(::std::string::ToString::to_string(&($show)(v)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{SysError, errno_of, error_line};
    use nix::errno::Errno;
    use nix::fcntl::OFlag;
    use nix::sys::mman::{MapFlags, ProtFlags};
    use std::os::fd::FromRawFd;

    fn refused(_name: &str, _flags: OFlag, _mode: Mode) -> Result<OwnedFd, Errno> {
        Err(Errno::EEXIST)
    }

    fn fine(_fd: i32, _len: usize) -> Result<(), Errno> {
        Ok(())
    }

    #[test]
    fn mmap_anonymous_names_map_anonymous_once() {
        let form = |flags: MapFlags| {
            let args = ["NULL", "4096", "PROT_READ"].map(String::from);
            let all = [
                args[0].clone(),
                args[1].clone(),
                args[2].clone(),
                flags.arg(),
            ];
            c_form("mmap_anonymous", &all).unwrap()
        };
        assert_eq!(
            form(MapFlags::MAP_PRIVATE | MapFlags::MAP_ANONYMOUS | MapFlags::MAP_HUGETLB),
            "mmap(NULL, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB, -1, 0)"
        );
        assert_eq!(
            form(MapFlags::MAP_SHARED),
            "mmap(NULL, 4096, PROT_READ, MAP_SHARED|MAP_ANONYMOUS, -1, 0)"
        );
    }

    #[test]
    fn wrappers_read_as_the_c_calls_they_make() {
        let form = |name: &str, args: &[&str]| {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            text(name, &args)
        };
        assert_eq!(form("nix::sys::stat::fstat", &["3"]), "fstat(3, &st)");
        assert_eq!(form("recvmsg", &["0"]), "recvmsg(0, &msg, 0)");
        assert_eq!(form("nix::unistd::pipe", &[]), "pipe(fds)");
        assert_eq!(form("pipe2", &["O_CLOEXEC"]), "pipe2(fds, O_CLOEXEC)");
        assert_eq!(
            form("children::wait_deadline", &["42", "10s"]),
            "waitpid(42, &status, 0) (at most 10s)"
        );
        assert_eq!(
            form("show::statfs", &["\"/dev/shm\""]),
            "statfs(\"/dev/shm\", &buf)"
        );
        assert_eq!(
            form(
                "socketpair",
                &["AF_UNIX", "SOCK_STREAM", "0", "SOCK_CLOEXEC"]
            ),
            "socketpair(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0, sv)"
        );
        assert_eq!(
            form("socketpair", &["AF_UNIX", "SOCK_STREAM", "0", "0"]),
            "socketpair(AF_UNIX, SOCK_STREAM, 0, sv)"
        );
    }

    #[test]
    fn arguments_read_like_c() {
        assert_eq!(
            (OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR).arg(),
            "O_CREAT|O_EXCL|O_RDWR"
        );
        assert_eq!(OFlag::empty().arg(), "0");
        assert_eq!(
            (ProtFlags::PROT_READ | ProtFlags::PROT_WRITE).arg(),
            "PROT_READ|PROT_WRITE"
        );
        assert_eq!(MapFlags::MAP_SHARED.arg(), "MAP_SHARED");
        assert_eq!(
            (MapFlags::MAP_PRIVATE | MapFlags::MAP_ANONYMOUS).arg(),
            "MAP_PRIVATE|MAP_ANONYMOUS"
        );
        assert_eq!(
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20).arg(),
            "F_SETPIPE_SZ, 1048576"
        );
        assert_eq!(nix::fcntl::FcntlArg::F_GETPIPE_SZ.arg(), "F_GETPIPE_SZ");
        let seals = nix::fcntl::SealFlag::F_SEAL_SHRINK | nix::fcntl::SealFlag::F_SEAL_GROW;
        assert_eq!(
            nix::fcntl::FcntlArg::F_ADD_SEALS(seals).arg(),
            "F_ADD_SEALS, F_SEAL_SHRINK|F_SEAL_GROW"
        );
        assert_eq!(std::time::Duration::from_secs(10).arg(), "10s");
        let mut set = nix::sched::CpuSet::new();
        set.set(0).unwrap();
        set.set(3).unwrap();
        assert_eq!(set.arg(), "CPUs [0, 3]");
        assert_eq!(Mode::from_bits_truncate(0o600).arg(), "0600");
        assert_eq!(Mode::from_bits_truncate(0o644).arg(), "0644");
        assert_eq!("/shm-lessons-1-42".arg(), "\"/shm-lessons-1-42\"");
        assert_eq!(None::<NonNull<u8>>.arg(), "NULL");
        assert_eq!(None::<nix::sys::wait::WaitPidFlag>.arg(), "0");
        assert_eq!(std::ptr::null::<u8>().arg(), "NULL");
        assert_eq!(4096usize.arg(), "4096");
        assert_eq!((-1i64).arg(), "-1");
        assert_eq!(nix::unistd::SysconfVar::PAGE_SIZE.arg(), "_SC_PAGE_SIZE");
        assert_eq!(ipc_flags(&(libc::IPC_CREAT | 0o600)), "IPC_CREAT|0600");
        assert_eq!(ipc_key(&libc::IPC_PRIVATE), "IPC_PRIVATE");
        assert_eq!(b"ab\n".as_slice().arg(), "\"ab\\n\", 3");
        let mut buf = [0u8; 8];
        assert_eq!(buf.as_mut_slice().arg(), "buf, 8");
    }

    #[test]
    fn descriptors_and_pointers_are_their_values() {
        // SAFETY: dup gives us a fresh descriptor that the OwnedFd then owns.
        let fd = unsafe { OwnedFd::from_raw_fd(libc::dup(1)) };
        let n = fd.as_raw_fd();
        assert_eq!(fd.arg(), n.to_string());
        assert_eq!(Arg::arg(&&fd), n.to_string());
        assert_eq!(fd.ret().as_deref(), Some(format!("fd {n}").as_str()));
        let x = 7u64;
        let p = NonNull::from(&x);
        let shown = format!("{:p}", &x);
        assert!(shown.starts_with("0x"), "{shown}");
        assert_eq!(p.arg(), shown);
        assert_eq!(p.ret(), Some(shown.clone()));
        assert_eq!(Some(p).arg(), shown);
        assert_eq!(().ret().as_deref(), Some("0"));
        assert_eq!(nix::unistd::ForkResult::Child.ret(), None);
    }

    #[test]
    fn wait_statuses_say_how_the_child_ended() {
        use nix::sys::signal::Signal;
        use nix::sys::wait::WaitStatus;
        let pid = nix::unistd::Pid::from_raw(1234);
        assert_eq!(
            WaitStatus::Exited(pid, 0).ret().as_deref(),
            Some("1234: exited with status 0")
        );
        assert_eq!(
            WaitStatus::Signaled(pid, Signal::SIGBUS, false)
                .ret()
                .as_deref(),
            Some("1234: killed by SIGBUS (signal 7)")
        );
    }

    #[test]
    fn the_call_text_is_built_from_its_name_and_values() {
        assert_eq!(
            text(
                "nix :: sys :: mman :: shm_open",
                &["\"/x\"".into(), "0600".into()]
            ),
            "shm_open(\"/x\", 0600)"
        );
        assert_eq!(text("fork", &[]), "fork()");
        assert_eq!(
            text("common::sysv::shmctl_rmid", &["7".into()]),
            "shmctl(7, IPC_RMID, NULL)"
        );
        assert_eq!(
            text("waitpid", &["42".into(), "0".into()]),
            "waitpid(42, &status, 0)"
        );
        let args = ["NULL", "4096", "PROT_READ", "MAP_SHARED"].map(String::from);
        assert_eq!(
            text("mmap_anonymous", &args),
            "mmap(NULL, 4096, PROT_READ, MAP_SHARED|MAP_ANONYMOUS, -1, 0)"
        );
        let args = ["NULL", "4096", "PROT_READ", "MAP_PRIVATE|MAP_ANONYMOUS"].map(String::from);
        assert_eq!(
            text("mmap_anonymous", &args),
            "mmap(NULL, 4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0)"
        );
    }

    #[test]
    fn a_failing_call_names_itself_and_its_errno() {
        colored::control::set_override(false);
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
        let name = String::from("/shm-lessons-1-42");
        let err = crate::call!(refused(
            name.as_str(),
            flags,
            Mode::from_bits_truncate(0o600)
        ))
        .unwrap_err();
        assert_eq!(errno_of(&err), Some(Errno::EEXIST));
        let sys = err.downcast_ref::<SysError>().unwrap();
        assert_eq!(
            sys.call,
            "refused(\"/shm-lessons-1-42\", O_CREAT|O_EXCL|O_RDWR, 0600)"
        );
        assert_eq!(
            error_line(&err),
            "ERROR [EEXIST File exists] refused(\"/shm-lessons-1-42\", O_CREAT|O_EXCL|O_RDWR, 0600)"
        );
        assert_eq!(narrate::errno_result(Errno::EEXIST), "EEXIST (File exists)");
    }

    #[test]
    fn attempt_hands_back_the_errno_and_call_passes_values_through() {
        colored::control::set_override(false);
        let got = crate::attempt!(refused("/x", OFlag::O_RDWR, Mode::empty()));
        assert_eq!(got.err(), Some(Errno::EEXIST));
        let fd: i32 = 3;
        crate::call!(fine(fd, 4096,)).unwrap();
        crate::call!(fine(fd => |f: &i32| format!("fd {f}"), 4096) => |_| "ok").unwrap();
    }
}
