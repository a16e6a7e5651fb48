//! Every exercise: where it lives, its hints, and how it is judged.
//!
//! A judge runs the program (once or more) through [`Run`] and decides from
//! what the kernel shows: the exit status or the signal, the value the
//! program left in the checker's shared memory, what is still in `/dev/shm`
//! or `ipcs -m`. It returns `Err(sentence)` with what was wrong, in words a
//! student understands.

use nix::sys::signal::Signal;

use crate::run::{Outcome, Run, Shared};

pub type Verdict = Result<(), String>;

pub struct Exercise {
    /// The folder under `exercises/` (and `exercises/solutions/`).
    pub id: &'static str,
    pub lesson: u8,
    pub title: &'static str,
    /// Said when the check passes: what the kernel showed.
    pub passed: &'static str,
    pub hints: &'static [&'static str],
    pub timeout_secs: u64,
    pub judge: fn(&mut Run) -> anyhow::Result<Verdict>,
}

impl Exercise {
    /// `ex01_child_string`: the student's package (and binary).
    pub fn package(&self) -> String {
        format!("ex{}", self.id)
    }
    /// `sol01_child_string`: the reference solution's package.
    pub fn solution_package(&self) -> String {
        format!("sol{}", self.id)
    }
    pub fn source(&self, solution: bool) -> String {
        if solution {
            format!("exercises/solutions/{}/src/main.rs", self.id)
        } else {
            format!("exercises/{}/src/main.rs", self.id)
        }
    }
}

/// An exercise by its full id, or by a prefix that only one id has.
pub fn find(id: &str) -> Result<&'static Exercise, String> {
    if let Some(e) = EXERCISES.iter().find(|e| e.id == id) {
        return Ok(e);
    }
    let matches: Vec<&Exercise> = EXERCISES.iter().filter(|e| e.id.starts_with(id)).collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("no exercise {id:?} (see `exercises list`)")),
        many => Err(format!(
            "{id:?} could be {}",
            many.iter().map(|e| e.id).collect::<Vec<_>>().join(", ")
        )),
    }
}

const PAGE: usize = 4096; // the checker's own objects; programs use sysconf

/// The program must end with exit status 0.
fn exited_cleanly(r: &Run, o: Outcome) -> Verdict {
    if o == Outcome::Exited(0) {
        Ok(())
    } else {
        Err(format!("your program {}.", o.describe(r.timeout)))
    }
}

/// Nothing of the program's may be left under the check's name or key.
fn nothing_left(r: &Run) -> Verdict {
    if r.posix_exists(&r.name) {
        return Err(format!(
            "your program left /dev/shm/{} behind: shm_unlink the name before it exits (the \
             checker removed it for you).",
            common::names::file_name(&r.name)
        ));
    }
    if let Some(s) = r.sysv_segment() {
        return Err(format!(
            "your program left a System V segment behind (key {}, shmid {}, nattch {}): remove \
             it with shmctl(IPC_RMID) (the checker removed it for you).",
            common::names::key_hex(s.key),
            s.shmid,
            s.nattch
        ));
    }
    Ok(())
}

fn text(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

// ---------------------------------------------------------------------------
// Lesson 1
// ---------------------------------------------------------------------------

const CHILD_STRING: &[u8] = b"hello from the child";

fn judge_child_string(r: &mut Run) -> anyhow::Result<Verdict> {
    let o = r.exec(&[])?;
    let got = r.report();
    Ok((|| {
        exited_cleanly(r, o)?;
        match got {
            None => Err(
                "the parent reported nothing: keep the kit::report(...) call at the end.".into(),
            ),
            Some(g) if g.is_empty() => Err(
                "the parent read an empty string: the child must store the bytes of the message, \
                 then a 0 byte, into the shared page before it exits."
                    .into(),
            ),
            Some(g) if g != CHILD_STRING => Err(format!(
                "the parent read {}, not {}: store every byte, then one 0 byte after the last.",
                text(&g),
                text(CHILD_STRING)
            )),
            Some(_) => Ok(()),
        }?;
        nothing_left(r)
    })())
}

fn judge_map_shared(r: &mut Run) -> anyhow::Result<Verdict> {
    let o = r.exec(&[])?;
    let got = r.report_u64();
    Ok((|| {
        exited_cleanly(r, o)?;
        match got {
            Some(0xdead_beef) => Ok(()),
            Some(v) => Err(format!(
                "the parent read {v:#x}, not 0xdeadbeef: the child's store went to a copy of the \
                 page that only the child sees."
            )),
            None => Err("the parent reported nothing: keep the kit::report_u64(...) call.".into()),
        }?;
        nothing_left(r)
    })())
}

// ---------------------------------------------------------------------------
// Lesson 3
// ---------------------------------------------------------------------------

const FTRUNCATE_VALUE: u64 = 0x5eb0_5eb0;

fn judge_ftruncate(r: &mut Run) -> anyhow::Result<Verdict> {
    let o = r.exec(&[])?;
    let got = r.report_u64();
    Ok((|| {
        if o == Outcome::Signaled(Signal::SIGBUS) {
            return Err(
                "your program was killed by SIGBUS when it stored into the mapping: a new object \
                 is 0 bytes long, so every page of the mapping lies beyond its end. Give the \
                 object its size before you touch the mapping."
                    .into(),
            );
        }
        exited_cleanly(r, o)?;
        match got {
            Some(FTRUNCATE_VALUE) => Ok(()),
            Some(v) => Err(format!(
                "pread on the object returned {v:#x}, not {FTRUNCATE_VALUE:#x}: the store did not \
                 reach the object."
            )),
            None => {
                Err("your program reported nothing: keep the kit::report_u64(...) call.".into())
            }
        }?;
        nothing_left(r)
    })())
}

// ---------------------------------------------------------------------------
// Lesson 6
// ---------------------------------------------------------------------------

/// Each of the two workers adds this many (see the exercise's `PER_WORKER`).
const PER_WORKER: u64 = 20_000;

fn judge_atomic_counter(r: &mut Run) -> anyhow::Result<Verdict> {
    let shared = Shared::create(&r.name, PAGE)?;
    let o = r.exec(&[])?;
    let count = shared.u64_at(0);
    Ok((|| {
        exited_cleanly(r, o)?;
        let want = 2 * PER_WORKER;
        if count != want {
            return Err(format!(
                "the counter in shared memory is {count}, not {want}: {} increments were lost, \
                 because the other process changed the counter between one worker's load and its \
                 store.",
                want.saturating_sub(count)
            ));
        }
        Ok(())
    })())
}

pub static EXERCISES: &[Exercise] = &[
    Exercise {
        id: "01_child_string",
        lesson: 1,
        title: "the child writes a string, the parent reads it",
        passed: "the parent read \"hello from the child\" from the page the child wrote, and the name is gone.",
        hints: &[
            "The child gets the same mapping at the same address: p is valid in the child too.",
            "Don't build a &mut [u8] over the page. Store byte i with p.add(i).write_volatile(b), \
             inside an unsafe block with a SAFETY comment.",
            "After the message, store one 0 byte: the parent's loop stops at the first 0.",
        ],
        timeout_secs: 10,
        judge: judge_child_string,
    },
    Exercise {
        id: "01_map_shared",
        lesson: 1,
        title: "the parent never sees the child's 0xdeadbeef",
        passed: "the parent read 0xdeadbeef: both processes map the same page.",
        hints: &[
            "The child's store works (the child reads its own 0xdeadbeef). The question is which \
             page it went to.",
            "Look at the flags of mmap: one of them decides whether a write is shared or copied.",
            "grep the object's name in /proc/<pid>/maps: the 4th letter of the permissions says p \
             (private) or s (shared).",
        ],
        timeout_secs: 10,
        judge: judge_map_shared,
    },
    Exercise {
        id: "03_ftruncate",
        lesson: 3,
        title: "find the missing call that ends in SIGBUS",
        passed: "the store reached the object (pread read it back) and no SIGBUS came.",
        hints: &[
            "Run it by hand: cargo run -p ex03_ftruncate. Which signal ends it? (echo $? prints 135 = 128 + 7)",
            "ls -l /dev/shm while it runs (add a sleep): how big is a new object?",
            "Lesson 1's step 3 is the call that is missing here.",
        ],
        timeout_secs: 10,
        judge: judge_ftruncate,
    },
    Exercise {
        id: "06_atomic_counter",
        lesson: 6,
        title: "two processes count to 40000: fix the lost updates",
        passed: "the counter in shared memory is exactly 40000.",
        hints: &[
            "Both workers load the same value, both add one, both store it: one increment is lost.",
            "The load and the store must be one indivisible step. AtomicU64 has a method that \
             does both.",
            "fetch_add(1, Ordering::Relaxed) is enough here: waitpid orders the final read.",
        ],
        timeout_secs: 20,
        judge: judge_atomic_counter,
    },
];
