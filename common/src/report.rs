//! Error reporting in the spirit of the article's `error_out()`.
//!
//! The article prints `perror(msg)` and exits. We print the errno *name* as
//! well, because that is what a student searches for:
//!
//! ```text
//! ERROR [ENOENT No such file or directory] shm_open("/x", O_RDWR, 0600)
//! ```

use std::fmt;
use std::process::ExitCode;

use nix::errno::Errno;

/// A failed system call: which call (with its real arguments) and the errno.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysError {
    pub call: String,
    pub errno: Errno,
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", errno_label(self.errno), self.call)
    }
}

impl std::error::Error for SysError {}

/// `ENOENT` for `Errno::ENOENT`: the symbolic name a student can look up.
pub fn errno_name(errno: Errno) -> String {
    format!("{errno:?}")
}

/// `ENOENT No such file or directory`.
pub fn errno_label(errno: Errno) -> String {
    format!("{} {}", errno_name(errno), errno.desc())
}

/// A request to end the lesson with a given status and no `ERROR` line, for
/// outcomes that are not failures (77 = "skipped: this machine can't do it").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit(pub u8);

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// Anything that carries an errno: nix's `Errno`, `std::io::Error`.
pub trait AsErrno {
    fn as_errno(&self) -> Errno;
}

impl AsErrno for Errno {
    fn as_errno(&self) -> Errno {
        *self
    }
}

impl AsErrno for std::io::Error {
    fn as_errno(&self) -> Errno {
        Errno::from_raw(self.raw_os_error().unwrap_or(0))
    }
}

/// Attach the call's text to a failed result: `.call("shm_open(\"/x\")")?`.
pub trait CallResult<T> {
    fn call(self, call: impl Into<String>) -> anyhow::Result<T>;
}

impl<T, E: AsErrno> CallResult<T> for Result<T, E> {
    fn call(self, call: impl Into<String>) -> anyhow::Result<T> {
        self.map_err(|e| {
            anyhow::Error::new(SysError {
                call: call.into(),
                errno: e.as_errno(),
            })
        })
    }
}

/// The errno inside an error chain, if a system call caused it.
pub fn errno_of(err: &anyhow::Error) -> Option<Errno> {
    err.chain()
        .find_map(|e| e.downcast_ref::<SysError>())
        .map(|e| e.errno)
}

/// Run a lesson's body and turn its result into the process exit status.
///
/// - `Ok` → 0;
/// - an [`Exit`] anywhere in the chain → that status, silently;
/// - a [`SysError`] → `ERROR [ENAME text] call` (plus any context) → 1;
/// - anything else → `ERROR message` → 1.
///
/// It also installs the Ctrl-C/SIGTERM cleanup (see [`crate::cleanup`]) and
/// the colour choice (see [`crate::narrate::init`]).
pub fn run(body: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    crate::narrate::init();
    crate::cleanup::install_signal_cleanup();
    crate::children::record_forks();
    quiet_broken_pipe();
    let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(result) => result,
        // `lesson-1 | head`: the reader went away. The guards already ran
        // while the panic unwound; end quietly, as a C program killed by
        // SIGPIPE would (128 + 13).
        Err(payload) if is_broken_pipe(payload.as_ref()) => return ExitCode::from(141),
        Err(payload) => std::panic::resume_unwind(payload),
    };
    // Ctrl-C arrived while the lesson ran (a hold, a blocking call that then
    // failed with EINTR...). The signal thread is removing what the run
    // created and will exit with 128 + signal; returning now would race it
    // and could end the process half-way through the cleanup.
    crate::cleanup::park_if_interrupted();
    crate::narrate::end_pending();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(Exit(code)) = err.chain().find_map(|e| e.downcast_ref::<Exit>()) {
                return ExitCode::from(*code);
            }
            eprintln!("{}", error_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so a `println!` into a closed pipe panics. Keep the
/// panic (it unwinds through the cleanup guards) but not its message.
fn quiet_broken_pipe() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_broken_pipe(info.payload()) {
            default_hook(info);
        }
    }));
}

fn is_broken_pipe(payload: &(dyn std::any::Any + Send)) -> bool {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    text.starts_with("failed printing to std") && text.contains("Broken pipe")
}

/// The `ERROR …` line for an error chain.
pub fn error_line(err: &anyhow::Error) -> String {
    use colored::Colorize;
    let mut parts: Vec<String> = Vec::new();
    let mut sys = None;
    for cause in err.chain() {
        if let Some(s) = cause.downcast_ref::<SysError>() {
            sys = Some(s.to_string());
        } else {
            parts.push(cause.to_string());
        }
    }
    let head = "ERROR".red().bold();
    match sys {
        Some(s) if parts.is_empty() => format!("{head} {s}"),
        Some(s) => format!("{head} {s}\n      while: {}", parts.join(": ")),
        None => format!("{head} {}", parts.join(": ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn error_line_names_the_errno_and_the_call() {
        colored::control::set_override(false);
        let r: Result<(), Errno> = Err(Errno::ENOENT);
        let err = r.call("shm_open(\"/x\")").unwrap_err();
        assert_eq!(
            error_line(&err),
            "ERROR [ENOENT No such file or directory] shm_open(\"/x\")"
        );
        assert_eq!(errno_of(&err), Some(Errno::ENOENT));
    }

    #[test]
    fn context_is_kept_after_the_call() {
        colored::control::set_override(false);
        let r: Result<(), std::io::Error> = Err(std::io::Error::from_raw_os_error(libc::EACCES));
        let err = r
            .call("open(\"/dev/shm/x\")")
            .context("reading the header")
            .unwrap_err();
        let line = error_line(&err);
        assert!(
            line.starts_with("ERROR [EACCES Permission denied] open(\"/dev/shm/x\")"),
            "{line}"
        );
        assert!(line.contains("reading the header"), "{line}");
    }
}
