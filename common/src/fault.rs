//! Watching a child die of SIGBUS or SIGSEGV, and saying why.
//!
//! A lesson that teaches a fault never faults itself: the faulting access
//! happens in a forked child. Before forking, the lesson makes a
//! [`FaultReport`]: one `MAP_SHARED|MAP_ANONYMOUS` page that parent and child
//! both see. In the child, the lesson installs [`report_fault`] itself, with
//! `sigaction(SIGBUS, SA_SIGINFO|SA_RESETHAND)`, so the call is visible where
//! it is taught. When the fault comes, the handler:
//!
//! 1. stores `si_signo`, `si_code` and `si_addr` in the shared page (atomic
//!    stores: async-signal-safe);
//! 2. writes one line to stderr with `write(2)` (async-signal-safe; no
//!    allocation, no locks): `[child 4243] SIGBUS handler: si_code=BUS_ADRERR
//!    si_addr=0x7f…`;
//! 3. returns. `SA_RESETHAND` has restored the default action, so the faulting
//!    instruction runs again and the kernel kills the child with the same
//!    signal: the parent's `waitpid` reports the real cause.
//!
//! The child can also count its progress (e.g. pages written before the
//! fault) with [`FaultReport::set_progress`].

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};
use nix::sys::wait::WaitStatus;

/// What the handler records, in a page shared with the parent.
#[repr(C)]
pub struct FaultRecord {
    signo: AtomicI32,
    code: AtomicI32,
    addr: AtomicUsize,
    progress: AtomicU64,
}

/// The record the handler writes to (set by [`FaultReport::new`], inherited
/// by forked children).
static RECORD: AtomicPtr<FaultRecord> = AtomicPtr::new(std::ptr::null_mut());

/// A fault as the child's handler saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub signo: i32,
    pub code: i32,
    pub addr: usize,
}

impl Fault {
    /// `SIGBUS`.
    pub fn signal_name(&self) -> &'static str {
        signal_name(self.signo)
    }

    /// `BUS_ADRERR`.
    pub fn code_name(&self) -> &'static str {
        si_code_name(self.signo, self.code)
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} with si_code={} at si_addr={:#x}",
            self.signal_name(),
            self.code_name(),
            self.addr
        )
    }
}

/// The shared page that carries a child's fault record back to the parent.
pub struct FaultReport {
    page: NonNull<FaultRecord>,
    len: usize,
}

impl FaultReport {
    /// Map the shared record page and point the handler at it.
    pub fn new() -> nix::Result<FaultReport> {
        let len = crate::inspect::page_size();
        // SAFETY: an anonymous mapping at an address the kernel chooses
        // cannot overlap any Rust object; the page is zero-filled, which is a
        // valid FaultRecord (all atomics 0).
        let p = unsafe {
            mmap_anonymous(
                None,
                NonZeroUsize::new(len).ok_or(nix::errno::Errno::EINVAL)?,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )?
        };
        let page = p.cast::<FaultRecord>();
        RECORD.store(page.as_ptr(), Ordering::SeqCst);
        Ok(FaultReport { page, len })
    }

    fn record(&self) -> &FaultRecord {
        // SAFETY: the page is mapped for our lifetime and holds only atomics,
        // which may be shared with the child process.
        unsafe { self.page.as_ref() }
    }

    /// Forget an earlier child's fault, before forking the next one.
    pub fn clear(&self) {
        let r = self.record();
        r.signo.store(0, Ordering::SeqCst);
        r.code.store(0, Ordering::SeqCst);
        r.addr.store(0, Ordering::SeqCst);
        r.progress.store(0, Ordering::SeqCst);
    }

    /// For the child: record progress (an atomic store: async-signal-safe).
    pub fn set_progress(&self, n: u64) {
        self.record().progress.store(n, Ordering::SeqCst);
    }

    /// The progress the child recorded.
    pub fn progress(&self) -> u64 {
        self.record().progress.load(Ordering::SeqCst)
    }

    /// The fault the child's handler recorded, if any.
    pub fn fault(&self) -> Option<Fault> {
        let r = self.record();
        let signo = r.signo.load(Ordering::SeqCst);
        (signo != 0).then(|| Fault {
            signo,
            code: r.code.load(Ordering::SeqCst),
            addr: r.addr.load(Ordering::SeqCst),
        })
    }
}

impl Drop for FaultReport {
    fn drop(&mut self) {
        let _ = RECORD.compare_exchange(
            self.page.as_ptr(),
            std::ptr::null_mut(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        // SAFETY: page/len are exactly the mapping made in new(); the record
        // pointer was cleared above, and &self borrows have ended.
        unsafe {
            let _ = munmap(self.page.cast(), self.len);
        }
    }
}

/// The SA_SIGINFO handler to install in a child with
/// `sigaction(SIGBUS or SIGSEGV, SA_SIGINFO|SA_RESETHAND)`. Async-signal-safe:
/// atomic stores, `getpid(2)` and `write(2)` only.
// nix's SigHandler::SigAction needs a safe `extern "C" fn`; the pointer comes
// from the kernel, never from Rust callers.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub extern "C" fn report_fault(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    // With SA_SIGINFO the kernel passes a valid siginfo_t; for SIGBUS and
    // SIGSEGV, si_addr is the faulting address.
    if info.is_null() {
        return;
    }
    // SAFETY: checked non-null above.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    let rec = RECORD.load(Ordering::SeqCst);
    if !rec.is_null() {
        // SAFETY: RECORD points to the live shared page made by
        // FaultReport::new in the parent and inherited across fork.
        let r = unsafe { &*rec };
        r.code.store(code, Ordering::SeqCst);
        r.addr.store(addr, Ordering::SeqCst);
        r.signo.store(sig, Ordering::SeqCst);
    }
    let mut buf = [0u8; 160];
    let mut n = 0;
    let mut put = |s: &[u8]| {
        for &b in s {
            if n < buf.len() {
                buf[n] = b;
                n += 1;
            }
        }
    };
    let mut num = [0u8; 20];
    put(b"    [child ");
    // SAFETY: getpid(2) is async-signal-safe and cannot fail.
    put(fmt_dec(unsafe { libc::getpid() } as u64, &mut num));
    put(b"] ");
    put(signal_name(sig).as_bytes());
    put(b" handler: si_code=");
    put(si_code_name(sig, code).as_bytes());
    put(b" si_addr=0x");
    put(fmt_hex(addr as u64, &mut num));
    put(b"\n");
    // SAFETY: write(2) is async-signal-safe; buf[..n] is initialised.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
    }
}

fn fmt_dec(mut v: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &out[i..]
}

fn fmt_hex(mut v: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b"0123456789abcdef"[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    &out[i..]
}

/// `SIGBUS` for 7 (on x86-64 and arm64).
pub fn signal_name(signo: i32) -> &'static str {
    match signo {
        libc::SIGBUS => "SIGBUS",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        _ => "signal",
    }
}

/// The name of a SIGBUS/SIGSEGV `si_code` (from `<asm-generic/siginfo.h>`).
pub fn si_code_name(signo: i32, code: i32) -> &'static str {
    match (signo, code) {
        (libc::SIGBUS, 1) => "BUS_ADRALN",
        (libc::SIGBUS, 2) => "BUS_ADRERR",
        (libc::SIGBUS, 3) => "BUS_OBJERR",
        (libc::SIGBUS, 4) => "BUS_MCEERR_AR",
        (libc::SIGBUS, 5) => "BUS_MCEERR_AO",
        (libc::SIGSEGV, 1) => "SEGV_MAPERR",
        (libc::SIGSEGV, 2) => "SEGV_ACCERR",
        (libc::SIGSEGV, 3) => "SEGV_BNDERR",
        (libc::SIGSEGV, 4) => "SEGV_PKUERR",
        (_, 0) => "SI_USER",
        _ => "unknown",
    }
}

/// How a child ended, in words: `killed by SIGBUS (signal 7)`,
/// `exited with status 0`.
pub fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, core) => format!(
            "killed by {} (signal {}){}",
            sig.as_str(),
            sig as i32,
            if core { ", core dumped" } else { "" }
        ),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format_without_allocating() {
        let mut b = [0u8; 20];
        assert_eq!(fmt_dec(4243, &mut b), b"4243");
        assert_eq!(fmt_hex(0x7f00dead, &mut b), b"7f00dead");
        assert_eq!(fmt_dec(0, &mut b), b"0");
    }

    #[test]
    fn a_child_touching_past_the_end_dies_of_sigbus_and_reports_it() {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
        use nix::sys::wait::waitpid;
        use nix::unistd::{ForkResult, fork};

        let report = FaultReport::new().unwrap();
        let len = crate::inspect::page_size();
        // A zero-length memfd: mapping it works, touching it faults.
        // SAFETY: the name is a valid C string; flags are plain bits.
        let fd = unsafe { libc::memfd_create(c"fault-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh shared mapping at a kernel-chosen address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let action = SigAction::new(
            SigHandler::SigAction(report_fault),
            SaFlags::SA_SIGINFO | SaFlags::SA_RESETHAND,
            SigSet::empty(),
        );
        // SAFETY: the child only installs a handler, stores, and _exits.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // SAFETY: sigaction is async-signal-safe; report_fault is too.
                unsafe {
                    let _ = sigaction(Signal::SIGBUS, &action);
                    p.cast::<u8>().write_volatile(1);
                    libc::_exit(0)
                }
            }
            ForkResult::Parent { child } => {
                let status = waitpid(child, None).unwrap();
                assert_eq!(describe(status), "killed by SIGBUS (signal 7)");
                let f = report.fault().expect("the handler recorded the fault");
                assert_eq!((f.signal_name(), f.code_name()), ("SIGBUS", "BUS_ADRERR"));
                assert_eq!(f.addr, p as usize);
            }
        }
        // SAFETY: unmapping our own mapping; closing our own fd.
        unsafe {
            libc::munmap(p, len);
            libc::close(fd);
        }
    }

    #[test]
    fn names_of_codes() {
        assert_eq!(si_code_name(libc::SIGBUS, libc::BUS_ADRERR), "BUS_ADRERR");
        assert_eq!(si_code_name(libc::SIGSEGV, 2), "SEGV_ACCERR");
    }
}
