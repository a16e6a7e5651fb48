//! Lesson 5: unrelated processes share memory by name (POSIX) and by key
//! (System V).
//!
//! The article ends its POSIX part with "non-parent-child processes can also
//! communicate in the shared memory area" and shows nothing. Here a writer and
//! a reader are two separate programs, started in either order, in two
//! terminals:
//!
//! ```text
//! cargo run -p lesson-5 -- writer --message "hi"     # terminal 1
//! cargo run -p lesson-5 -- reader                    # terminal 2
//! ```
//!
//! With no role, `cargo run -p lesson-5` runs both itself: it starts its own
//! executable twice, once as each role (no fork), and shows both sides.
//! `scripts/lesson5_reader.py` and `scripts/lesson5_reader.c` read the same
//! segment from Python and C.

mod demo;
mod layout;
mod reader;
mod writer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use common::args::{Args, Cli, parse_mode, parse_secs};
use common::{call, names, sysv};

const ABOUT: &str = "Lesson 5: two unrelated processes share memory. ROLE is writer or reader \
    (start them in either order, in two terminals); with no ROLE the lesson runs both itself. \
    POSIX objects are found by name, System V segments by key.";

/// `ftok`'s project id: the lesson's number.
pub const PROJ_ID: u8 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Posix,
    Sysv,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Posix => "posix",
            Api::Sysv => "sysv",
        }
    }
}

fn parse_api(s: &str) -> Result<Api, String> {
    match s {
        "posix" => Ok(Api::Posix),
        "sysv" => Ok(Api::Sysv),
        _ => Err("choose posix or sysv".into()),
    }
}

fn parse_message(s: &str) -> Result<String, String> {
    if s.len() > layout::MSG_MAX {
        return Err(format!("at most {} bytes", layout::MSG_MAX));
    }
    Ok(s.to_string())
}

/// Everything a role needs, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Opts {
    pub api: Api,
    /// The POSIX name (default: per user).
    pub name: String,
    /// Whether --name was given (the demo otherwise picks a name of its own).
    pub explicit_name: bool,
    /// The System V key, when given with --key (otherwise `ftok`).
    pub key: Option<i32>,
    /// The path `ftok` hashes (default: your home directory).
    pub ftok_path: PathBuf,
    pub timeout: Duration,
    pub message: Option<String>,
    pub mode: u32,
    pub keep: bool,
}

fn cli() -> Cli {
    Cli::new("lesson-5", ABOUT)
        .positional("ROLE", "writer or reader; none runs the demo (both roles)")
        .option_with("--api", "API", "posix (default) or sysv", parse_api)
        .name("/shm-lessons-5-<user>")
        .key("ftok(--ftok PATH, 5)")
        .option::<String>(
            "--ftok",
            "PATH",
            "the file System V's ftok() hashes into a key (default: your home directory)",
        )
        .option_with(
            "--timeout",
            "SECS",
            "how long to wait for the other side (default 30)",
            |s| parse_secs(s, 3600),
        )
        .option_with(
            "--message",
            "TEXT",
            "writer: what to write (default: a greeting with the pid)",
            parse_message,
        )
        .option_with(
            "--mode",
            "MODE",
            "writer: permissions of the object (default 0600; 0644 lets others read)",
            parse_mode,
        )
        .flag(
            "--keep",
            "writer: leave the object in place at the end (inspect it with ls -l /dev/shm, ipcs -m)",
        )
}

/// A usage error found after parsing (a role that does not exist, a writer
/// option given to the reader): usage on stderr, exit 2.
fn usage_error(message: &str) -> ! {
    eprintln!("lesson-5: {message}\n\n{}", cli().usage());
    std::process::exit(2);
}

fn home_dir() -> PathBuf {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn opts(args: &Args) -> Opts {
    Opts {
        api: args
            .value("--api")
            .and_then(|v| parse_api(v).ok())
            .unwrap_or(Api::Posix),
        name: args.name().unwrap_or_else(|| names::per_user_name(5)),
        explicit_name: args.name().is_some(),
        key: args.key(),
        ftok_path: args
            .value("--ftok")
            .map(PathBuf::from)
            .unwrap_or_else(home_dir),
        timeout: Duration::from_secs(args.get::<u64>("--timeout").unwrap_or(30)),
        message: args.value("--message").map(str::to_string),
        mode: args.mode().unwrap_or(0o600),
        keep: args.flag("--keep"),
    }
}

// ANCHOR: ftok
/// The System V key both roles agree on: `--key`, or `ftok(path, 5)`.
pub fn sysv_key(o: &Opts) -> anyhow::Result<libc::key_t> {
    if let Some(key) = o.key {
        common::narrate::fact("key (from --key)", sysv::key_string(key));
        return Ok(key);
    }
    let key = call!(sysv::ftok(o.ftok_path.as_path(), PROJ_ID) => call::ipc_key)?;
    common::narrate::explain(format!(
        "The same file, {}, gives both sides the same key.",
        o.ftok_path.display()
    ));
    Ok(key)
}
// ANCHOR_END: ftok

fn main() -> ExitCode {
    common::run(lesson)
}

// ANCHOR: roles
fn lesson() -> anyhow::Result<()> {
    let args = cli().parse();
    let o = opts(&args);
    let role = args.positional(0);
    if role != Some("writer") {
        for writer_only in ["--message", "--mode", "--keep"] {
            if args.value(writer_only).is_some() || args.flag(writer_only) {
                usage_error(&format!("{writer_only} is an option of the writer"));
            }
        }
    }
    if role.is_none() && args.value("--api").is_some() {
        usage_error("the demo runs both APIs; --api chooses the API of a writer or a reader");
    }
    match role {
        Some("writer") => writer::run(&o),
        Some("reader") => reader::run(&o),
        None => demo::run(&o),
        Some(other) => usage_error(&format!("unknown role '{other}': writer or reader")),
    }
}
// ANCHOR_END: roles
