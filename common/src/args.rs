//! The command line every lesson shares.
//!
//! ```text
//! lesson-1 [--hold SECS | --pause] [--name NAME]
//! ```
//!
//! `--help` prints the usage on stdout and exits 0. An unknown option, a
//! missing value or a malformed number prints the usage on stderr and exits 2,
//! never a panic.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use crate::narrate;

type Validator = Box<dyn Fn(&str) -> Result<(), String>>;

struct Opt {
    long: &'static str,
    value: Option<&'static str>,
    help: String,
    validate: Option<Validator>,
}

/// The description of a lesson's command line.
pub struct Cli {
    program: &'static str,
    about: &'static str,
    opts: Vec<Opt>,
    positionals: Vec<(&'static str, String)>,
}

/// What was given on the command line.
#[derive(Debug, Clone, Default)]
pub struct Args {
    values: HashMap<&'static str, String>,
    flags: Vec<&'static str>,
    positional: Vec<String>,
}

/// A usage error: the message and the usage text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Help(String),
    Usage { message: String, usage: String },
}

/// Parse a whole number of seconds, at most `max` (for `--hold`,
/// `--timeout` and the like).
pub fn parse_secs(s: &str, max: u64) -> Result<u64, String> {
    let v: u64 = s
        .parse()
        .map_err(|e: std::num::ParseIntError| format!("{s:?} is not a number of seconds: {e}"))?;
    if v > max {
        return Err(format!("at most {max} seconds"));
    }
    Ok(v)
}

/// Parse a System V key: decimal (`12345678`), hex (`0xbc614e`), or
/// `IPC_PRIVATE`.
pub fn parse_key(s: &str) -> Result<i32, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("IPC_PRIVATE") {
        return Ok(libc::IPC_PRIVATE);
    }
    let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u32::from_str_radix(h, 16).map_err(|e| e.to_string())?
    } else {
        t.parse::<u32>().map_err(|e| e.to_string())?
    };
    Ok(v as i32)
}

/// Parse a file mode written in octal: `0600`, `644`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let v = u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|e| e.to_string())?;
    if v > 0o777 {
        return Err("a mode has at most the bits 0777".into());
    }
    Ok(v)
}

/// Parse a POSIX shared memory name: `/mymem` or `mymem`; no inner `/`.
pub fn parse_shm_name(s: &str) -> Result<String, String> {
    let body = s.strip_prefix('/').unwrap_or(s);
    if body.is_empty() {
        return Err("the name is empty".into());
    }
    if body.contains('/') {
        return Err("a name may not contain '/' after the first character".into());
    }
    if body.len() > 200 {
        return Err("the name is too long".into());
    }
    Ok(format!("/{body}"))
}

fn typed<T: FromStr>(s: &str) -> Result<(), String>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map(|_| ()).map_err(|e| e.to_string())
}

impl Cli {
    pub fn new(program: &'static str, about: &'static str) -> Cli {
        Cli {
            program,
            about,
            opts: Vec::new(),
            positionals: Vec::new(),
        }
    }

    /// A switch with no value.
    pub fn flag(mut self, long: &'static str, help: impl Into<String>) -> Cli {
        self.opts.push(Opt {
            long,
            value: None,
            help: help.into(),
            validate: None,
        });
        self
    }

    /// An option whose value must parse as `T`.
    pub fn option<T: FromStr>(
        self,
        long: &'static str,
        value: &'static str,
        help: impl Into<String>,
    ) -> Cli
    where
        T::Err: std::fmt::Display,
    {
        self.option_with(long, value, help, typed::<T>)
    }

    /// An option checked by `check` (e.g. [`parse_key`]).
    pub fn option_with<T>(
        mut self,
        long: &'static str,
        value: &'static str,
        help: impl Into<String>,
        check: fn(&str) -> Result<T, String>,
    ) -> Cli
    where
        T: 'static,
    {
        self.opts.push(Opt {
            long,
            value: Some(value),
            help: help.into(),
            validate: Some(Box::new(move |s| check(s).map(|_| ()))),
        });
        self
    }

    /// `--hold SECS` and `--pause`: where the article sleeps, wait so a
    /// student can inspect from a second terminal.
    pub fn hold(self) -> Cli {
        self.option_with(
            "--hold",
            "SECS",
            "wait SECS seconds where the article sleeps (inspect from another terminal)",
            |s| parse_secs(s, 3600),
        )
        .flag("--pause", "wait for Enter where the article sleeps")
    }

    /// `--name NAME`: a POSIX object name instead of the run's unique one.
    pub fn name(self, default: &str) -> Cli {
        let help = format!("POSIX object name (default {default}; the article uses /mymem)");
        self.option_with("--name", "NAME", help, parse_shm_name)
    }

    /// `--key KEY`: a System V key instead of the lesson's default.
    pub fn key(self, default: &str) -> Cli {
        let help = format!(
            "System V key, decimal or 0x-hex (default {default}; the article uses 12345678)"
        );
        self.option_with("--key", "KEY", help, parse_key)
    }

    /// An optional positional argument, such as a role.
    pub fn positional(mut self, name: &'static str, help: impl Into<String>) -> Cli {
        self.positionals.push((name, help.into()));
        self
    }

    /// The usage text.
    pub fn usage(&self) -> String {
        let mut head = format!("usage: {}", self.program);
        for o in &self.opts {
            match o.value {
                Some(v) => head.push_str(&format!(" [{} {v}]", o.long)),
                None => head.push_str(&format!(" [{}]", o.long)),
            }
        }
        for (p, _) in &self.positionals {
            head.push_str(&format!(" [{p}]"));
        }
        let mut out = narrate::wrap(&head, "");
        out.push_str("\n\n");
        out.push_str(&narrate::wrap(self.about, ""));
        out.push_str("\n\narguments:\n");
        let mut rows: Vec<(String, String)> = self
            .positionals
            .iter()
            .map(|(p, h)| (p.to_string(), h.clone()))
            .collect();
        rows.extend(self.opts.iter().map(|o| {
            let left = match o.value {
                Some(v) => format!("{} {v}", o.long),
                None => o.long.to_string(),
            };
            (left, o.help.clone())
        }));
        rows.push(("--help".into(), "print this help and exit".into()));
        let w = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (l, h) in rows {
            out.push_str(&format!("  {l:<w$}  {h}\n"));
        }
        out
    }

    /// Parse the given arguments (without the program name).
    pub fn parse_from<I, S>(&self, args: I) -> Result<Args, Parsed>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let usage_err = |message: String| Parsed::Usage {
            message,
            usage: self.usage(),
        };
        let mut out = Args::default();
        let mut it = args.into_iter().map(Into::into);
        while let Some(arg) = it.next() {
            if arg == "--help" || arg == "-h" {
                return Err(Parsed::Help(self.usage()));
            }
            if arg.starts_with("--") {
                let (key, inline) = match arg.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (arg.clone(), None),
                };
                let Some(opt) = self.opts.iter().find(|o| o.long == key) else {
                    return Err(usage_err(format!("unknown option '{key}'")));
                };
                match (opt.value, inline) {
                    (None, None) => out.flags.push(opt.long),
                    (None, Some(_)) => {
                        return Err(usage_err(format!("'{}' takes no value", opt.long)));
                    }
                    (Some(v), inline) => {
                        let Some(value) = inline.or_else(|| it.next()) else {
                            return Err(usage_err(format!("'{}' needs a value {v}", opt.long)));
                        };
                        if let Some(check) = &opt.validate {
                            check(&value).map_err(|e| {
                                usage_err(format!("bad value '{value}' for {}: {e}", opt.long))
                            })?;
                        }
                        out.values.insert(opt.long, value);
                    }
                }
            } else if out.positional.len() < self.positionals.len() {
                out.positional.push(arg);
            } else {
                return Err(usage_err(format!("unexpected argument '{arg}'")));
            }
        }
        if out.flag("--pause") && out.values.contains_key("--hold") {
            return Err(usage_err("choose --hold or --pause, not both".into()));
        }
        Ok(out)
    }

    /// Parse the process's arguments; print usage and exit on `--help` (0)
    /// or on a usage error (2).
    pub fn parse(self) -> Args {
        match self.parse_from(std::env::args().skip(1)) {
            Ok(a) => a,
            Err(Parsed::Help(u)) => {
                print!("{u}");
                std::process::exit(0);
            }
            Err(Parsed::Usage { message, usage }) => {
                eprintln!("{}: {message}\n\n{usage}", self.program);
                std::process::exit(2);
            }
        }
    }
}

impl Args {
    /// Whether a switch was given.
    pub fn flag(&self, long: &str) -> bool {
        self.flags.contains(&long)
    }

    /// The raw value of an option.
    pub fn value(&self, long: &str) -> Option<&str> {
        self.values.get(long).map(String::as_str)
    }

    /// An option's value, parsed (it was validated by [`Cli::parse`]).
    pub fn get<T: FromStr>(&self, long: &str) -> Option<T> {
        self.value(long).and_then(|v| v.parse().ok())
    }

    /// The `n`th positional argument.
    pub fn positional(&self, n: usize) -> Option<&str> {
        self.positional.get(n).map(String::as_str)
    }

    /// `--name`, normalised to start with `/`.
    pub fn name(&self) -> Option<String> {
        self.value("--name").and_then(|v| parse_shm_name(v).ok())
    }

    /// `--key`, parsed.
    pub fn key(&self) -> Option<i32> {
        self.value("--key").and_then(|v| parse_key(v).ok())
    }

    /// `--mode`, parsed as octal.
    pub fn mode(&self) -> Option<u32> {
        self.value("--mode").and_then(|v| parse_mode(v).ok())
    }

    /// The hold asked for with `--hold SECS` or `--pause`.
    pub fn hold(&self) -> Hold {
        if self.flag("--pause") {
            Hold::UntilEnter
        } else if let Some(s) = self.get::<u64>("--hold") {
            Hold::For(Duration::from_secs(s))
        } else {
            Hold::No
        }
    }
}

/// How long to wait at the article's `sleep()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    No,
    For(Duration),
    UntilEnter,
}

/// The article's `sleep(N)`: a point where a student inspects the live object
/// from a second terminal. `commands` are what to type there. Ctrl-C here
/// still removes what the run created (see [`crate::cleanup`]).
pub fn hold_point(hold: Hold, article_sleep: &str, commands: &[String]) {
    match hold {
        Hold::No => {
            narrate::note(format!(
                "the article calls {article_sleep} here so you can look around. Run with \
                 --hold 30 (or --pause) to keep everything alive and try, in a second terminal:"
            ));
            narrate::commands(commands);
        }
        Hold::For(d) => {
            narrate::explain(format!(
                "holding for {} s, as the article's {article_sleep}. In a second terminal, try:",
                d.as_secs()
            ));
            narrate::commands(commands);
            narrate::explain("(Ctrl-C ends the hold early; the objects are still removed)");
            use std::io::Write;
            let _ = std::io::stdout().flush();
            // In short naps, so that Ctrl-C parks us at once (the cleanup
            // then ends the process) instead of after the whole hold.
            let end = std::time::Instant::now() + d;
            while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
                crate::cleanup::park_if_interrupted();
                std::thread::sleep(left.min(Duration::from_millis(20)));
            }
        }
        Hold::UntilEnter => {
            narrate::explain("paused where the article sleeps. In a second terminal, try:");
            narrate::commands(commands);
            narrate::explain(
                "press Enter to continue (Ctrl-C stops; the objects are still removed)",
            );
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
            crate::cleanup::park_if_interrupted();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> Cli {
        Cli::new("lesson-x", "about")
            .hold()
            .name("/shm-lessons-x")
            .key("IPC_PRIVATE")
    }

    #[test]
    fn parses_known_options() {
        let a = cli()
            .parse_from(["--hold", "5", "--name=mymem", "--key", "0xbc614e"])
            .unwrap();
        assert_eq!(a.hold(), Hold::For(Duration::from_secs(5)));
        assert_eq!(a.name().as_deref(), Some("/mymem"));
        assert_eq!(a.key(), Some(12345678));
    }

    #[test]
    fn rejects_bad_input_with_usage() {
        for bad in [
            vec!["--bogus"],
            vec!["--hold"],
            vec!["--hold", "x"],
            vec!["--hold", "5", "--pause"],
            vec!["--name", "/a/b"],
            vec!["--key", "nope"],
            vec!["stray"],
        ] {
            match cli().parse_from(bad.clone()) {
                Err(Parsed::Usage { usage, .. }) => assert!(usage.starts_with("usage: lesson-x")),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn help_is_not_an_error_message() {
        assert!(matches!(cli().parse_from(["--help"]), Err(Parsed::Help(_))));
    }
}
