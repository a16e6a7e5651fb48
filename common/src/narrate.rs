//! Narration: what the student reads while a lesson runs.
//!
//! Each system call gets one step line, announced *before* the call with its
//! real arguments and completed with its result, strace-style:
//!
//! ```text
//!   ▸ shm_open("/shm-lessons-1-4242", O_CREAT|O_EXCL|O_RDWR, 0600) = fd 3
//! ```
//!
//! In a lesson's source that is one line, [`call!`](crate::call!):
//! `let fd = call!(shm_open(name.as_str(), flags, mode))?;` (see
//! [`crate::call`]). [`step`] and [`Step`] remain for the rare call whose
//! text the macro cannot build.
//!
//! Colour marks structure only; every line carries its meaning in text too,
//! so the output reads the same with `NO_COLOR=1` or in a log file.

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use colored::Colorize;
use nix::errno::Errno;

use crate::report::{AsErrno, SysError};

const WIDTH: usize = 78;

/// True while a step line has been announced but its result not yet printed.
static PENDING: AtomicBool = AtomicBool::new(false);

/// True inside [`quietly`]: steps print nothing.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Run `f` with its step lines silenced when `quiet` is true: for a call
/// made many times (each run of a benchmark) and narrated only the first
/// time. Failures still carry the call's text (the [`SysError`]).
pub fn quietly<T>(quiet: bool, f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            QUIET.store(self.0, Ordering::SeqCst);
        }
    }
    let _restore = Restore(QUIET.swap(quiet, Ordering::SeqCst));
    f()
}

/// Decide on colour: off with `NO_COLOR`, or when stdout is not a terminal
/// (unless `CLICOLOR_FORCE` is set).
pub fn init() {
    let forced = std::env::var_os("CLICOLOR_FORCE").is_some_and(|v| v != "0");
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    if no_color || (!forced && !std::io::stdout().is_terminal()) {
        colored::control::set_override(false);
    }
}

/// Finish a step line left open (its call blocked, failed or printed nothing).
pub fn end_pending() {
    if PENDING.swap(false, Ordering::SeqCst) {
        // Never panics: this also runs from the cleanup paths.
        let _ = writeln!(std::io::stdout());
    }
}

fn line(text: impl Display) {
    end_pending();
    println!("{text}");
}

/// Word-wrap `text` to the page width, every line starting with `indent`.
pub fn wrap(text: &str, indent: &str) -> String {
    let mut out = String::new();
    for paragraph in text.split('\n') {
        let mut current = String::from(indent);
        let mut empty = true;
        for word in paragraph.split_whitespace() {
            if !empty && current.chars().count() + 1 + word.chars().count() > WIDTH {
                out.push_str(current.trim_end());
                out.push('\n');
                current = String::from(indent);
                empty = true;
            }
            if !empty {
                current.push(' ');
            }
            current.push_str(word);
            empty = false;
        }
        out.push_str(current.trim_end());
        out.push('\n');
    }
    out.pop();
    out
}

/// The lesson's banner: its number, its title, and what it reproduces.
pub fn title(lesson: &str, title: &str, summary: &str) {
    let head = format!("{lesson}: {title}");
    line("");
    line(format!("{}", format!("=== {head} ===").bold()));
    line(wrap(summary, ""));
}

/// A section heading: one part of the lesson.
pub fn section(heading: impl Display) {
    line("");
    line(format!("{}", format!("--- {heading} ---").cyan().bold()));
}

/// A sub-heading inside a section (one case of a part, one scenario).
pub fn subsection(heading: impl Display) {
    line("");
    line(format!("  {}", format!("· {heading}").bold()));
}

/// A block of preformatted text (a layout table, a C struct, a chart),
/// printed as it is, indented, without wrapping.
pub fn block(text: impl AsRef<str>) {
    for l in text.as_ref().lines() {
        line(format!("      {l}"));
    }
}

/// A short explanation: why, not what.
pub fn explain(text: impl AsRef<str>) {
    line(wrap(text.as_ref(), "    "));
}

/// A fact the lesson read from the machine: `label: value`.
pub fn fact(label: &str, value: impl Display) {
    line(format!("    {}: {value}", label.bold()));
}

/// A side remark worth knowing.
pub fn note(text: impl AsRef<str>) {
    line(wrap(&format!("note: {}", text.as_ref()), "    "));
}

/// Something that surprised the lesson or deserves caution.
pub fn warn(text: impl AsRef<str>) {
    let t = wrap(&format!("warning: {}", text.as_ref()), "    ");
    line(format!("{}", t.yellow()));
}

/// Evidence a student can check by hand: the command to type in a second
/// terminal, and what this lesson sees right now.
pub fn evidence<S: AsRef<str>>(command: &str, output: impl IntoIterator<Item = S>) {
    line(format!("    {} {}", "$".dimmed(), command.bold()));
    let mut any = false;
    for l in output {
        any = true;
        line(format!("    {} {}", "|".dimmed(), l.as_ref()));
    }
    if !any {
        line(format!("    {} {}", "|".dimmed(), "(nothing)".dimmed()));
    }
}

/// Commands for the student to type in a second terminal, one a line.
pub fn commands<S: AsRef<str>>(cmds: &[S]) {
    for c in cmds {
        line(format!("      {} {}", "$".dimmed(), c.as_ref()));
    }
}

/// Where the article and this machine disagree (or agree): print both, and why.
pub fn compare(article: &str, here: &str, because: &str) {
    line(wrap(&format!("the article says: {article}"), "    "));
    line(format!(
        "{}",
        wrap(&format!("this machine shows: {here}"), "    ").green()
    ));
    if !because.is_empty() {
        line(wrap(&format!("because: {because}"), "    "));
    }
}

/// A concluding line of the lesson (green when all went as taught).
pub fn conclude(text: impl AsRef<str>) {
    line("");
    line(format!("{}", wrap(text.as_ref(), "").green().bold()));
}

/// A step: one system call, announced before it runs.
#[must_use = "finish the step with .ok(result) so the student sees the result"]
pub struct Step {
    call: String,
    announced: bool,
    quiet: bool,
}

/// The name in front of every call this process narrates (see [`name_calls`]).
static WHO: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Put `[who] ` in front of every call this process narrates from now on:
/// for a helper process whose lines share the terminal with the lesson's
/// (`[receiver 1234] recvmsg(0) = 1`). Set once; later calls change nothing.
pub fn name_calls(who: impl Display) {
    let _ = WHO.set(format!("[{who}] "));
}

fn named(call: impl Into<String>) -> String {
    match WHO.get() {
        Some(who) => format!("{who}{}", call.into()),
        None => call.into(),
    }
}

/// Announce a call with its real arguments. The line stays open until the
/// result is printed with [`Step::ok`] (or the call fails in [`Step::check`]).
pub fn step(call: impl Into<String>) -> Step {
    let call = named(call);
    if QUIET.load(Ordering::SeqCst) {
        return Step {
            call,
            announced: false,
            quiet: true,
        };
    }
    end_pending();
    print!("  {} {}", "▸".blue(), call);
    let _ = std::io::stdout().flush();
    PENDING.store(true, Ordering::SeqCst);
    Step {
        call,
        announced: true,
        quiet: false,
    }
}

/// A step printed whole after its call returns, for a call during which
/// another process writes to the terminal (a child's signal handler): the
/// announced line would be cut in two.
#[doc(hidden)]
pub fn step_after(call: impl Into<String>) -> Step {
    Step {
        call: named(call),
        announced: false,
        quiet: QUIET.load(Ordering::SeqCst),
    }
}

impl Step {
    /// The call's text, as announced.
    pub fn call(&self) -> &str {
        &self.call
    }

    fn finish(&self, result: impl Display) {
        if self.quiet {
            return;
        }
        if !self.announced {
            end_pending();
            println!("  {} {} = {result}", "▸".blue(), self.call);
        } else if PENDING.swap(false, Ordering::SeqCst) {
            println!(" = {result}");
        } else {
            println!("    {} = {result}", self.call);
        }
    }

    /// The call succeeded: print its result.
    pub fn ok(self, result: impl Display) {
        let shown = format!("{}", result.to_string().green());
        self.finish(shown);
    }

    /// Pass a call's result through: on failure print `= -1 ENAME (text)` and
    /// return the error as a [`SysError`] naming this call. On success print
    /// nothing yet: the lesson says what the result means with [`Step::ok`].
    pub fn check<T, E: AsErrno>(&self, result: Result<T, E>) -> anyhow::Result<T> {
        result.map_err(|e| {
            let errno = e.as_errno();
            self.finish(format!("-1 {}", errno_result(errno)).red());
            anyhow::Error::new(SysError {
                call: self.call.clone(),
                errno,
            })
        })
    }

    /// For a call the lesson *expects* may fail: print either outcome and hand
    /// back the plain result to inspect.
    pub fn outcome<T, E: AsErrno>(
        self,
        result: Result<T, E>,
        show: impl FnOnce(&T) -> String,
    ) -> Result<T, Errno> {
        match result {
            Ok(v) => {
                let shown = show(&v);
                self.ok(shown);
                Ok(v)
            }
            Err(e) => {
                let errno = e.as_errno();
                self.finish(format!("-1 {}", errno_result(errno)).yellow());
                Err(errno)
            }
        }
    }
}

impl Step {
    /// The end of [`call!`](crate::call!): print the result (as `show`
    /// renders it) or `-1 ENAME (text)`, and return the result with the
    /// failure as a [`SysError`] naming the call.
    #[doc(hidden)]
    pub fn done<T, E: AsErrno>(
        self,
        result: Result<T, E>,
        show: impl FnOnce(&T) -> Option<String>,
    ) -> anyhow::Result<T> {
        let v = self.check(result)?;
        self.show(&v, show);
        Ok(v)
    }

    /// The end of [`attempt!`](crate::attempt!): print either outcome and
    /// hand back the plain result.
    #[doc(hidden)]
    pub fn attempted<T, E: AsErrno>(
        self,
        result: Result<T, E>,
        show: impl FnOnce(&T) -> Option<String>,
    ) -> Result<T, Errno> {
        match result {
            Ok(v) => {
                self.show(&v, show);
                Ok(v)
            }
            Err(e) => {
                let errno = e.as_errno();
                self.finish(format!("-1 {}", errno_result(errno)).yellow());
                Err(errno)
            }
        }
    }

    fn show<T>(self, v: &T, show: impl FnOnce(&T) -> Option<String>) {
        match show(v) {
            Some(text) => self.ok(text),
            // The child of fork: no stdio, no allocator (not even to free
            // the call's text); it leaves with _exit.
            None => std::mem::forget(self),
        }
    }
}

/// `ENOENT (No such file or directory)`, as strace prints it.
pub fn errno_result(errno: Errno) -> String {
    format!("{:?} ({})", errno, errno.desc())
}

/// Render a nix bitflags value the way C source spells it:
/// `OFlag(O_RDWR | O_CREAT | O_EXCL)` becomes `O_RDWR|O_CREAT|O_EXCL`.
pub fn flags(f: impl std::fmt::Debug) -> String {
    let text = format!("{f:?}");
    let inner = match (text.find('('), text.rfind(')')) {
        (Some(open), Some(close)) if open < close => &text[open + 1..close],
        _ => text.as_str(),
    };
    if inner.is_empty() || inner == "0x0" {
        "0".to_string()
    } else {
        inner.replace(" | ", "|")
    }
}

/// A mode the way C source spells it: `0600`.
pub fn mode(bits: u32) -> String {
    match bits & 0o7777 {
        b if b > 0o777 => format!("0{b:o}"), // 01777: sticky, as C writes it
        b => format!("{b:04o}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;

    #[test]
    fn flags_read_like_c() {
        assert_eq!(flags(OFlag::O_CREAT | OFlag::O_EXCL), "O_CREAT|O_EXCL");
        assert_eq!(flags(OFlag::empty()), "0");
        assert_eq!(mode(0o100600), "0600");
    }

    #[test]
    fn wrap_keeps_words_whole() {
        let w = wrap(&"word ".repeat(40), "    ");
        assert!(
            w.lines()
                .all(|l| l.len() <= WIDTH && l.starts_with("    word"))
        );
    }
}
