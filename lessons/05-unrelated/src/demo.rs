//! The self-driving demo: with no role, the lesson starts its own executable
//! twice, once as the reader and once as the writer. These are two separate
//! programs (spawned, not forked: they share no memory and no descriptors, only
//! the name or the key), and the demo shows what each one prints.
//!
//! Who removes: the writer, as always. The demo only watches; if a child
//! misbehaves or Ctrl-C arrives, its guards stop the children (SIGTERM, so the
//! writer still removes its object) and then remove the name or key as a
//! backstop.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::children::{self, Waited};
use common::cleanup::{self, Guard};
use common::narrate::{self, evidence, explain, fact, section, step};
use common::{inspect, names, sysv};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::Opts;
use crate::layout;

pub fn run(o: &Opts) -> anyhow::Result<()> {
    narrate::title(
        "lesson-5",
        "unrelated processes share memory",
        "The article: \"non-parent-child processes can also communicate in the shared memory \
         area\". This demo starts two separate programs, a writer and a reader (this lesson's \
         own executable, with a role), and shows both sides: first with POSIX shared memory \
         (found by name), then with System V (found by key).",
    );
    let exe = std::env::current_exe().context("finding this program's executable")?;

    section("The protocol in the segment");
    explain(
        "The kernel does not synchronise access to shared memory. The writer and the reader \
         agree on a header at fixed offsets; a state word, stored with release and loaded \
         with acquire, says when the message is complete:",
    );
    narrate::block(layout::table());

    // A name and a key unique to this run, so the demo never meets a writer
    // or reader a student started by hand.
    let name = if o.explicit_name {
        o.name.clone()
    } else {
        names::unique_name(5, "")
    };
    let key = o.key.unwrap_or_else(|| names::unique_key(5));
    let timeout = o.timeout.as_secs().to_string();

    // ANCHOR: demo_posix
    section("POSIX: the reader starts first and waits for the name");
    explain(
        "Each child's lines come through its own pipe, tagged writer or reader. One side's \
         lines are in order; between the two sides, a line can show up a little after the \
         other side's later lines (two pipes, read as they arrive). The state words are the \
         real record of who did what first.",
    );
    let backstop = cleanup::posix_object(&name);
    let posix_args = [
        "--api",
        "posix",
        "--name",
        name.as_str(),
        "--timeout",
        &timeout,
    ];
    let lines = pair(&exe, &posix_args, true, o)?;
    evidence(
        &format!("ls -l /dev/shm/{}", names::file_name(&name)),
        inspect::dev_shm_ls(&name),
    );
    if inspect::dev_shm_entry(&name).is_some() {
        bail!("{name} is still in /dev/shm after the writer finished");
    }
    backstop.disarm();
    show_addresses(&lines);
    // ANCHOR_END: demo_posix

    // ANCHOR: demo_sysv
    section("System V: the writer starts first, the reader finds the key");
    let hex = sysv::key_string(key);
    let backstop = Guard::new(format!("remove the segment with key {hex}"), move || {
        if let Ok(id) = sysv::shmget(key, 0, 0) {
            let _ = sysv::shmctl_rmid(id);
        }
    });
    let sysv_args = [
        "--api",
        "sysv",
        "--key",
        hex.as_str(),
        "--timeout",
        &timeout,
    ];
    let lines = pair(&exe, &sysv_args, false, o)?;
    let left: Vec<String> = inspect::sysv_segments()
        .into_iter()
        .filter(|s| s.key == key)
        .map(|s| s.line)
        .collect();
    let any_left = !left.is_empty();
    evidence(
        &format!("grep -w {key} /proc/sysvipc/shm   # the key in decimal"),
        left,
    );
    if any_left {
        bail!("a segment with key {hex} is still there after the writer finished");
    }
    backstop.disarm();
    show_addresses(&lines);
    // ANCHOR_END: demo_sysv

    section("Try it in two terminals");
    narrate::commands(&[
        "cargo run -p lesson-5 -- writer --message 'hello'     # terminal 1",
        "cargo run -p lesson-5 -- reader                       # terminal 2",
        "python3 scripts/lesson5_reader.py                     # or a Python reader",
        "cargo run -p lesson-5 -- writer --api sysv            # System V, key from ftok($HOME, 5)",
        "cargo run -p lesson-5 -- reader --api sysv",
    ]);
    narrate::conclude(
        "lesson-5 done: two unrelated processes exchanged a message through shared memory, \
         found by name and by key, and nothing either of them created is left.",
    );
    Ok(())
}

/// Stop a child we started, by its pid, on every path: SIGTERM first, so a
/// writer still removes its object; SIGKILL if it has not ended 5 s later.
fn child_guard(pid: Pid, role: &str) -> Guard {
    Guard::new(format!("kill({pid} /* {role} */, SIGTERM)"), move || {
        let _ = kill(pid, Signal::SIGTERM);
        let _ = children::wait_deadline(pid, Duration::from_secs(5));
    })
}

/// Start `exe ROLE args` with its output piped to us, tagged.
fn spawn(
    exe: &Path,
    role: &'static str,
    args: &[&str],
    tx: &mpsc::Sender<(&'static str, String)>,
) -> anyhow::Result<(Pid, Guard)> {
    let shown = format!("{} {role} {}", exe.display(), args.join(" "));
    let s = step(format!("spawn: {shown}"));
    let mut child = s.check(
        Command::new(exe)
            .arg(role)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn(),
    )?;
    let pid = Pid::from_raw(child.id() as i32);
    let guard = child_guard(pid, role);
    s.ok(format!("pid {pid}"));
    forward(child.stdout.take(), role, tx.clone());
    forward(child.stderr.take(), role, tx.clone());
    drop(child); // not waited by std: the demo reaps it by pid below
    Ok((pid, guard))
}

fn forward(
    stream: Option<impl Read + Send + 'static>,
    role: &'static str,
    tx: mpsc::Sender<(&'static str, String)>,
) {
    if let Some(s) = stream {
        std::thread::spawn(move || {
            for line in BufReader::new(s).lines() {
                let Ok(l) = line else { break };
                if tx.send((role, l)).is_err() {
                    break;
                }
            }
        });
    }
}

/// Run one reader and one writer, in the order asked, printing both sides as
/// the lines arrive. Returns every line, tagged, for the summary.
fn pair(
    exe: &Path,
    args: &[&str],
    reader_first: bool,
    o: &Opts,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let (tx, rx) = mpsc::channel();
    let mut seen = Vec::new();
    let end = Instant::now() + o.timeout + Duration::from_secs(10);
    let (first, second, ready) = if reader_first {
        ("reader", "writer", "reader: waiting for")
    } else {
        ("writer", "reader", "writer: waiting for a reader")
    };
    let (pid1, guard1) = spawn(exe, first, args, &tx)?;
    // Start the second only once the first is visibly waiting, so the order
    // shown is the order that happened.
    let mut waiting = false;
    while !waiting {
        let Ok((role, l)) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) else {
            bail!("the {first} did not start waiting in time");
        };
        waiting = l.contains(ready);
        print_line(role, &l);
        seen.push((role, l));
    }
    let (pid2, guard2) = spawn(exe, second, args, &tx)?;
    drop(tx);
    // Every sender is gone once both children closed stdout and stderr. If
    // one child fails meanwhile (the writer can't create the object, say),
    // the other is stopped at once instead of waiting out its --timeout.
    let pids = [(pid1, first), (pid2, second)];
    let mut ended: [Option<WaitStatus>; 2] = [None, None];
    let mut failed_first = None; // the child that failed on its own
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((role, l)) => {
                print_line(role, &l);
                seen.push((role, l));
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= end => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        for (i, (pid, _)) in pids.iter().enumerate() {
            if ended[i].is_none()
                && let Ok(st @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) =
                    nix::sys::wait::waitpid(*pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
            {
                ended[i] = Some(st);
                if st != WaitStatus::Exited(*pid, 0) && failed_first.is_none() {
                    failed_first = Some(i);
                    let (other, _) = pids[1 - i];
                    let _ = kill(other, Signal::SIGTERM); // ours: started above
                }
            }
        }
    }
    let mut statuses = Vec::new();
    for (i, ((pid, role), guard)) in pids.into_iter().zip([guard1, guard2]).enumerate() {
        let s = step(format!("waitpid({pid} /* {role} */)"));
        let waited = match ended[i] {
            Some(st) => Waited::Ended(st),
            None => s.check(children::wait_deadline(
                pid,
                end.saturating_duration_since(Instant::now()),
            ))?,
        };
        guard.disarm(); // reaped: the pid is no longer ours
        let ok = matches!(waited, Waited::Ended(WaitStatus::Exited(_, 0)));
        if ok {
            s.ok("exited with status 0");
        } else {
            s.ok(format!("{:?}", waited.status()));
        }
        statuses.push((role, ok, waited));
    }
    // Report the child that failed by itself (the other may have been
    // stopped because of it), with its own one-line reason.
    let culprit = failed_first.or_else(|| statuses.iter().position(|(_, ok, _)| !ok));
    if let Some(i) = culprit {
        let (role, _, waited) = &statuses[i];
        let said = seen
            .iter()
            .rev()
            .find(|(r, l)| r == role && l.starts_with("ERROR "))
            .map(|(_, l)| format!(": {l}"))
            .unwrap_or_default();
        bail!("the {role} did not succeed ({:?}){said}", waited.status());
    }
    Ok(seen)
}

fn print_line(role: &str, l: &str) {
    println!("    {role:>6} | {l}");
}

/// The two mapping addresses each side printed.
fn show_addresses(lines: &[(&'static str, String)]) {
    let addr = |who: &str| {
        lines.iter().find_map(|(_, l)| {
            l.strip_prefix(&format!("{who}: mapped at "))
                .map(str::to_string)
        })
    };
    if let (Some(w), Some(r)) = (addr("writer"), addr("reader")) {
        fact("the writer mapped the segment at", &w);
        fact("the reader mapped the segment at", &r);
        explain(if w != r {
            "One physical page, two virtual addresses: each process's kernel-chosen mapping \
             lands somewhere else. Stored pointers would be meaningless across processes; \
             offsets from the start are not."
        } else {
            "The same address in both, by chance (is address space randomisation off?). \
             Nothing promises it, so the header still holds offsets only."
        });
    }
}
