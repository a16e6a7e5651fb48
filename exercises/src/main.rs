//! The exercises' checker, in the style of rustlings.
//!
//! ```text
//! cargo run -p exercises -- list                 # every exercise, and which you have done
//! cargo run -p exercises -- check 03_ftruncate   # build your version, run it, judge it
//! cargo run -p exercises -- check 03_ftruncate --solution
//! cargo run -p exercises -- hint 03_ftruncate    # the next hint (one more each time)
//! ```
//!
//! A check builds the program with cargo into a target directory of its own,
//! runs it with a name and a key unique to this check and a timeout, and
//! judges what the kernel shows: the value left in shared memory, the exit
//! status or the signal, the errno, the exact count, what is left in
//! `/dev/shm` and `ipcs -m`. It never reads what the program prints. Then it
//! removes everything the program created, whatever the program did.

mod catalog;
mod fake;
mod run;
mod sandbox;
mod state;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use catalog::{EXERCISES, Exercise};

const USAGE: &str = "\
usage: exercises list
       exercises check ID [--solution] [--timeout SECS]
       exercises hint ID
       exercises reset-hints ID
       exercises prebuild

  list         every exercise with its lesson, and the ones you have passed
  check ID     build exercises/ID (or exercises/solutions/ID with --solution),
               run it and judge what it did; exit status 0 when it passes
  hint ID      show the next hint for ID (one more each time you ask)
  prebuild     build every exercise (and solution) now, so that checks in
               class start at once

ID is the folder name (03_ftruncate) or its number prefix (03_f...) if unique.
Environment: SHM_EX_TARGET_DIR (where the exercises are built; default
target/exercises, or $CARGO_TARGET_DIR/exercises-<uid>),
XDG_STATE_HOME (where your hint and progress notes are kept).";

fn main() -> ExitCode {
    if let Ok(mode) = std::env::var(fake::ENV) {
        fake::misbehave(&mode); // never returns
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some(sandbox::TMPFS) => sandbox::tmpfs_and_exec(&args[1..]), // never returns
        Some(sandbox::IPC) => sandbox::ipc_and_exec(&args[1..]),     // never returns
        _ => {}
    }
    common::narrate::init();
    common::cleanup::install_signal_cleanup();
    run::become_subreaper();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["list"] => list(),
        ["prebuild"] => prebuild(),
        ["hint", id] => with_exercise(id, hint),
        ["reset-hints", id] => with_exercise(id, |e| {
            state::set_hints_seen(e, 0);
            println!("hints for {} start again from the first", e.id);
            ExitCode::SUCCESS
        }),
        ["check", id, rest @ ..] => match parse_check(rest) {
            Ok(opts) => with_exercise(id, |e| check(e, &opts)),
            Err(msg) => usage_error(&msg),
        },
        ["--help" | "-h" | "help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => usage_error("expected list, check ID or hint ID"),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("exercises: {msg}\n{USAGE}");
    ExitCode::from(2)
}

fn with_exercise(id: &str, f: impl FnOnce(&'static Exercise) -> ExitCode) -> ExitCode {
    match catalog::find(id) {
        Ok(e) => f(e),
        Err(msg) => usage_error(&msg),
    }
}

#[derive(Default)]
struct CheckOptions {
    solution: bool,
    timeout: Option<u64>,
    /// Skip the build (the tests build every exercise once, beforehand).
    no_build: bool,
    /// Run a stand-in that misbehaves instead of the exercise (for the tests).
    fake: Option<String>,
}

fn parse_check(rest: &[&str]) -> Result<CheckOptions, String> {
    let mut o = CheckOptions::default();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match *a {
            "--solution" => o.solution = true,
            "--no-build" => o.no_build = true,
            "--timeout" => {
                let v = it.next().ok_or("--timeout needs a number of seconds")?;
                o.timeout = Some(common::args::parse_secs(v, 600)?);
            }
            "--fake" => {
                let v = it.next().ok_or("--fake needs panic, hang or kill")?;
                if !["panic", "hang", "kill"].contains(v) {
                    return Err(format!("--fake {v}: expected panic, hang or kill"));
                }
                o.fake = Some(v.to_string());
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

/// The workspace root (the folder of the top Cargo.toml).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("exercises/ has a parent")
        .to_path_buf()
}

/// Where the exercises are built: `$SHM_EX_TARGET_DIR`, or `exercises` in
/// the workspace's target directory. Under a shared `$CARGO_TARGET_DIR` (a
/// classroom's), `exercises-<uid>`: every student has an `ex01_child_string`
/// of their own, and cargo would copy each one's build to the same
/// `debug/ex01_child_string`, so a check could run another student's program
/// (and the progress notes kept beside it would be mixed up too).
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SHM_EX_TARGET_DIR") {
        return PathBuf::from(d);
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(shared) => PathBuf::from(shared).join(format!("exercises-{}", nix::unistd::getuid())),
        None => root().join("target").join("exercises"),
    }
}

fn list() -> ExitCode {
    let mut done = 0;
    println!("{:<4} {:<22} {:<6} what", "", "ID", "lesson");
    for e in EXERCISES {
        let passed = state::passed(e);
        done += usize::from(passed);
        println!(
            "{:<4} {:<22} {:<6} {}",
            if passed { "done" } else { "" },
            e.id,
            e.lesson,
            e.title
        );
    }
    println!(
        "\n{done} of {} done. Edit exercises/<ID>/src/main.rs (look for TODO), then \
         `cargo run -p exercises -- check <ID>`; stuck: `... -- hint <ID>`.",
        EXERCISES.len()
    );
    ExitCode::SUCCESS
}

/// Build every exercise and solution in one cargo run (for the instructor,
/// before class; the tests do the same).
fn prebuild() -> ExitCode {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Ctrl-C must stop cargo too (it would inherit our blocked SIGINT).
    common::cleanup::default_signals_on_exec(&mut cmd);
    cmd.args(["build", "--target-dir"])
        .arg(target_dir())
        .current_dir(root());
    for e in EXERCISES {
        cmd.args([
            "--package",
            &e.package(),
            "--package",
            &e.solution_package(),
        ]);
    }
    match cmd.status() {
        Ok(s) if s.success() => {
            println!(
                "built {} exercises and their solutions in {}",
                EXERCISES.len(),
                target_dir().display()
            );
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("exercises: the build failed (see above)");
            ExitCode::FAILURE
        }
    }
}

fn hint(e: &'static Exercise) -> ExitCode {
    let seen = state::hints_seen(e);
    let n = (seen + 1).min(e.hints.len());
    for (i, h) in e.hints.iter().enumerate().take(n) {
        println!("hint {} of {} for {}: {h}", i + 1, e.hints.len(), e.id);
    }
    if n == e.hints.len() {
        println!(
            "(that was the last hint; the reference is exercises/solutions/{}/src/main.rs)",
            e.id
        );
    } else {
        println!("(ask again for the next one)");
    }
    state::set_hints_seen(e, n);
    ExitCode::SUCCESS
}

/// Build one exercise package into the checker's target directory.
pub fn build(package: &str) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let dir = target_dir();
    let mut cmd = Command::new(cargo);
    // Ctrl-C during the build must stop cargo too: without this it inherits
    // the SIGINT/SIGTERM/SIGHUP the checker blocks, and builds on after the
    // checker has exited.
    common::cleanup::default_signals_on_exec(&mut cmd);
    let status = cmd
        .args(["build", "--quiet", "--package", package, "--target-dir"])
        .arg(&dir)
        .current_dir(root())
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    // Ctrl-C during the build stopped cargo too: the signal thread is
    // cleaning up and exits with 130; say nothing about the code.
    common::cleanup::park_if_interrupted();
    if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&status) {
        return Err(format!(
            "the build was stopped by signal {sig} before it finished: check again"
        ));
    }
    if !status.success() {
        return Err(
            "your code does not compile: fix the first error cargo printed above, then check again"
                .into(),
        );
    }
    Ok(dir.join("debug").join(package))
}

fn check(e: &'static Exercise, o: &CheckOptions) -> ExitCode {
    let which = if o.solution {
        "the reference solution"
    } else {
        "your version"
    };
    let package = if o.solution {
        e.solution_package()
    } else {
        e.package()
    };
    println!("checking {} ({which}: {})", e.id, e.source(o.solution));
    let bin = if o.fake.is_some() {
        std::env::current_exe().expect("the checker's own path")
    } else if o.no_build {
        target_dir().join("debug").join(&package)
    } else {
        match build(&package) {
            Ok(bin) => bin,
            Err(msg) => return fail(e, o, &msg),
        }
    };
    let timeout = Duration::from_secs(o.timeout.unwrap_or(e.timeout_secs));
    let mut r = match run::Run::new(bin, timeout) {
        Ok(r) => r,
        Err(err) => {
            eprintln!("exercises: could not set up the check: {err:#}");
            return ExitCode::from(3);
        }
    };
    if let Some(mode) = &o.fake {
        r.set_env(fake::ENV, mode.clone());
    }
    let verdict = match (e.judge)(&mut r) {
        Ok(v) => v,
        Err(err) => Err(format!("the checker could not run your program: {err:#}")),
    };
    drop(r); // removes everything under this check's names and key
    match verdict {
        Ok(()) => {
            println!("PASS {}: {}", e.id, e.passed);
            if !o.solution && o.fake.is_none() {
                state::set_passed(e, true);
            }
            ExitCode::SUCCESS
        }
        Err(msg) if msg.starts_with(catalog::SKIP) => {
            println!("SKIP {}: {}", e.id, &msg[catalog::SKIP.len()..]);
            ExitCode::from(77)
        }
        Err(msg) => fail(e, o, &msg),
    }
}

fn fail(e: &Exercise, o: &CheckOptions, msg: &str) -> ExitCode {
    println!("FAIL {}: {msg}", e.id);
    if !o.solution && o.fake.is_none() {
        state::set_passed(e, false);
        println!("(stuck? `cargo run -p exercises -- hint {}`)", e.id);
    }
    ExitCode::FAILURE
}
