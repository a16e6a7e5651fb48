//! Every exercise: where it lives, its hints, and how it is judged.
//!
//! A judge runs the program (once or more) through [`Run`] and decides from
//! what the kernel shows: the exit status or the signal, the value the
//! program left in the checker's shared memory, what is still in `/dev/shm`
//! or `ipcs -m`. It returns `Err(sentence)` with what was wrong, in words a
//! student understands.

use std::time::Duration;

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
    let shared = Shared::create(&r.name, common::inspect::page_size())?;
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

/// The check cannot run on this machine (exit status 77): `check` says
/// SKIP with the rest of the sentence.
pub const SKIP: &str = "SKIP:";

fn errno_name(code: u64) -> String {
    common::report::errno_name(nix::errno::Errno::from_raw(code as i32))
}

// ---------------------------------------------------------------------------
// Lesson 2
// ---------------------------------------------------------------------------

const MAGIC: u64 = 0xdead_beef;

fn judge_sysv_rmid(r: &mut Run) -> anyhow::Result<Verdict> {
    let o = r.exec(&[])?;
    let got = r.report_u64();
    Ok((|| {
        exited_cleanly(r, o)?;
        if got != Some(MAGIC) {
            return Err(format!(
                "the parent reported {got:#x?}, not 0xdeadbeef: keep the child's store and the report."
            ));
        }
        if let Some(s) = r.sysv_segment() {
            return Err(format!(
                "after your program ended, ipcs -m still lists its segment (key {}, nattch {}): \
                 shmdt only detaches, the segment lives on until shmctl(IPC_RMID) removes it \
                 (the checker removed it for you).",
                common::names::key_hex(s.key),
                s.nattch
            ));
        }
        Ok(())
    })())
}

/// What the checker's own segment holds while it plays "someone else".
const SOMEONE_ELSES: u64 = 0x0123_4567_89ab_cdef;

fn judge_sysv_excl(r: &mut Run) -> anyhow::Result<Verdict> {
    // Run 1: the key is taken by a segment of the checker's.
    let page = common::inspect::page_size();
    let id = common::sysv::shmget(r.key, page, libc::IPC_CREAT | libc::IPC_EXCL | 0o600)?;
    let at = common::sysv::shmat(id, 0)?;
    let word = at.as_ptr().cast::<u64>();
    // SAFETY: the start of our own attached, page-aligned segment; the
    // program may write it concurrently, so only volatile accesses, and we
    // read it after waitpid.
    unsafe { word.write_volatile(SOMEONE_ELSES) };
    let o1 = r.exec(&[])?;
    // SAFETY: as above; the program has ended (waitpid).
    let after = unsafe { word.read_volatile() };
    let seg = common::inspect::sysv_segment(id);
    // SAFETY: `at` came from shmat and is not used afterwards.
    let _ = unsafe { common::sysv::shmdt(at) };
    let _ = common::sysv::shmctl_rmid(id);
    let first = (|| {
        if after != SOMEONE_ELSES {
            return Err(format!(
                "another program's segment already had your key, and your program attached to it \
                 and overwrote its data ({after:#x}): make shmget fail with EEXIST when the key is \
                 taken (IPC_EXCL)."
            ));
        }
        if seg.is_none_or(|s| s.perms & 0o1000 != 0) {
            return Err(
                "your program removed a segment that another program had created: \
                        make shmget fail with EEXIST when the key is taken (IPC_EXCL)."
                    .into(),
            );
        }
        if o1 != Outcome::Exited(1) {
            return Err(format!(
                "with the key already taken, your program should exit with status 1; it {}.",
                o1.describe(r.timeout)
            ));
        }
        Ok(())
    })();
    if first.is_err() {
        return Ok(first);
    }
    // Run 2: the key is free.
    let o2 = r.exec(&[])?;
    let got = r.report_u64();
    Ok((|| {
        if o2 != Outcome::Exited(0) {
            return Err(format!(
                "with the key free, your program {}.",
                o2.describe(r.timeout)
            ));
        }
        if got != Some(MAGIC) {
            return Err(format!(
                "with the key free, the parent reported {got:#x?}, not 0xdeadbeef."
            ));
        }
        nothing_left(r)
    })())
}

// ---------------------------------------------------------------------------
// Lesson 3
// ---------------------------------------------------------------------------

fn judge_fstat_size(r: &mut Run) -> anyhow::Result<Verdict> {
    let size = 3 * common::inspect::page_size() + 100;
    let shared = Shared::create(&r.name, size)?;
    let bytes: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
    shared.write(0, &bytes);
    let want_sum: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
    let o = r.exec(&[])?;
    let got = r.report_u64s();
    let still_there = r.posix_exists(&r.name);
    Ok((|| {
        if o == Outcome::Signaled(Signal::SIGBUS) {
            return Err(format!(
                "your program was killed by SIGBUS: its mapping is longer than the object \
                 ({size} bytes) and it read a page beyond the end. Map exactly st_size bytes, \
                 as fstat reports."
            ));
        }
        exited_cleanly(r, o)?;
        match got.as_deref() {
            Some([s, sum]) if *s == size as u64 && *sum == want_sum => Ok(()),
            Some([s, _]) if *s != size as u64 => Err(format!(
                "your program reported a size of {s} bytes; the object holds {size}."
            )),
            Some(_) => Err(format!(
                "the sum of the bytes is wrong (expected {want_sum}): read every byte, no more."
            )),
            None => Err("your program reported nothing: keep the kit::report_u64s call.".into()),
        }?;
        if !still_there {
            return Err(
                "your program removed the checker's object: a reader must not \
                        shm_unlink what it did not create."
                    .into(),
            );
        }
        Ok(())
    })())
}

// ---------------------------------------------------------------------------
// Lesson 4
// ---------------------------------------------------------------------------

fn judge_devshm_file(r: &mut Run) -> anyhow::Result<Verdict> {
    let o = r.exec(&[])?;
    let got = r.report_u64();
    Ok((|| {
        exited_cleanly(r, o)?;
        match got {
            Some(0) => Ok(()),
            Some(2) => Err(format!(
                "the child's shm_open({:?}) failed with ENOENT: shm_open looks for the object in \
                 /dev/shm only, and your file is somewhere else.",
                r.name
            )),
            Some(100) => {
                Err("the child found a file by that name, but not the number you wrote.".into())
            }
            Some(e) => Err(format!(
                "the child's shm_open or mmap failed with {}.",
                errno_name(e)
            )),
            None => Err("your program reported nothing: keep the kit::report_u64 call.".into()),
        }?;
        nothing_left(r)
    })())
}

fn judge_fallocate(r: &mut Run) -> anyhow::Result<Verdict> {
    // The exercise's object is 32 pages: it fits in 64, not in 16.
    r.sandbox = Some((crate::sandbox::TMPFS, "64".into()));
    let fits = r.exec(&[])?;
    r.sandbox = Some((crate::sandbox::TMPFS, "16".into()));
    let full = if fits == Outcome::Exited(crate::sandbox::SKIPPED) {
        fits
    } else {
        r.exec(&[])?
    };
    r.sandbox = None;
    Ok((|| {
        if fits == Outcome::Exited(crate::sandbox::SKIPPED) {
            return Err(format!(
                "{SKIP} this machine refuses the private mount namespace the check needs for its \
                 small tmpfs (see the message above)."
            ));
        }
        if fits != Outcome::Exited(0) {
            return Err(format!(
                "on a /dev/shm with room for the object, your program {}.",
                fits.describe(r.timeout)
            ));
        }
        match full {
            Outcome::Exited(28) => Ok(()),
            Outcome::Signaled(Signal::SIGBUS) => Err(
                "on a /dev/shm too small for the object, your program was killed by SIGBUS half-way \
                 through filling it: ftruncate reserved nothing. Reserve every page first \
                 (posix_fallocate) and exit with status 28 (ENOSPC) when that fails."
                    .into(),
            ),
            other => Err(format!(
                "on a /dev/shm too small for the object, your program {}; it should exit with \
                 status 28 (ENOSPC).",
                other.describe(r.timeout)
            )),
        }
    })())
}

// ---------------------------------------------------------------------------
// Lesson 5
// ---------------------------------------------------------------------------

/// Lesson 5's layout (lessons/05-unrelated/src/layout.rs).
mod l5 {
    pub const SIZE: usize = 4096;
    pub const MAGIC: [u8; 8] = *b"SHMLSN5\0";
    pub const OFF_VERSION: usize = 8;
    pub const OFF_STATE: usize = 12;
    pub const OFF_WRITER_PID: usize = 16;
    pub const OFF_READER_PID: usize = 20;
    pub const OFF_SEQUENCE: usize = 24;
    pub const OFF_MSG_LEN: usize = 40;
    pub const OFF_MSG: usize = 48;
    pub const READY: u32 = 1;
    pub const ACKED: u32 = 2;
}

fn judge_header_reader(r: &mut Run) -> anyhow::Result<Verdict> {
    let shared = Shared::create(&r.name, l5::SIZE)?;
    let seq = 1000 + u64::from(std::process::id() % 1000);
    let message = format!("greetings from checker {}", std::process::id());
    shared.write(0, &l5::MAGIC);
    shared.write(l5::OFF_VERSION, &1u32.to_ne_bytes());
    shared.write(
        l5::OFF_WRITER_PID,
        &(std::process::id() as i32).to_ne_bytes(),
    );
    let started = r.start(&[])?;
    // Publish only once the program has mapped the object, so a reader that
    // does not wait for READY reads an unpublished header.
    let pid = started.pid();
    let file = common::names::file_name(&r.name).to_string();
    common::children::wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| m.contains(&file))
            || common::children::state(pid).is_none_or(|s| s == 'Z')
    });
    shared.write(l5::OFF_SEQUENCE, &seq.to_ne_bytes());
    shared.write(l5::OFF_MSG_LEN, &(message.len() as u32).to_ne_bytes());
    shared.write(l5::OFF_MSG, message.as_bytes());
    shared.set_u32(l5::OFF_STATE, l5::READY); // release: publishes the above
    let o = r.finish(started);
    let got = r.report();
    let state = shared.u32_at(l5::OFF_STATE);
    let reader = shared.u32_at(l5::OFF_READER_PID) as i32;
    Ok((|| {
        exited_cleanly(r, o)?;
        let Some(got) = got.filter(|g| g.len() >= 8) else {
            return Err("your program reported nothing: keep the kit::report call.".into());
        };
        let got_seq = u64::from_le_bytes(got[..8].try_into().unwrap());
        if got_seq != seq || got[8..] != *message.as_bytes() {
            return Err(format!(
                "you reported sequence {got_seq} and message {}; the header holds {seq} and {:?}. \
                 Wait for READY (Acquire) before you read, and read each field at its offset.",
                text(&got[8..]),
                message
            ));
        }
        if state != l5::ACKED || reader != pid.as_raw() {
            return Err(format!(
                "the header's state is {state} and its reader pid {reader}: acknowledge with your \
                 pid ({pid}) in the reader-pid field, then the state ACKED (2) with Release."
            ));
        }
        Ok(())
    })())
}

fn judge_publish_order(r: &mut Run) -> anyhow::Result<Verdict> {
    let started = r.start(&[])?;
    let pid = started.pid();
    let name = r.name.clone();
    let alive = || common::children::state(pid).is_some_and(|s| s != 'Z');
    let shared = common::children::poll_until(Duration::from_secs(5), || {
        Shared::open_sized(&name, l5::SIZE).or_else(|| (!alive()).then_some(None)?)
    });
    // Read as a reader does: everything, as soon as READY shows.
    let mut seen = None;
    if let Some(sh) = &shared {
        let ready = common::children::wait_until(Duration::from_secs(5), || {
            sh.u32_at(l5::OFF_STATE) == l5::READY || !alive()
        });
        if ready && sh.u32_at(l5::OFF_STATE) == l5::READY {
            let n = (sh.u32_at(l5::OFF_MSG_LEN) as usize).min(l5::SIZE - l5::OFF_MSG);
            seen = Some(sh.read(l5::OFF_MSG, n));
            sh.set_u32(l5::OFF_READER_PID, std::process::id());
            sh.set_u32(l5::OFF_STATE, l5::ACKED);
        }
    }
    let o = r.finish(started);
    Ok((|| {
        let Some(_) = shared else {
            return Err(format!(
                "your program never created {} with its full size: it {}.",
                r.name,
                o.describe(r.timeout)
            ));
        };
        match &seen {
            None => Err("the checker never saw the state READY in your header.".into()),
            Some(m) if m.as_slice() != b"hello from the writer" => Err(format!(
                "the checker saw READY and read the message {}, not \"hello from the writer\": \
                 a reader trusts every field once READY shows, so READY must be the last store, \
                 with Release.",
                text(m)
            )),
            Some(_) => Ok(()),
        }?;
        exited_cleanly(r, o)?;
        nothing_left(r)
    })())
}

// ---------------------------------------------------------------------------
// Lesson 6 (continued)
// ---------------------------------------------------------------------------

const SEM_WORKER: u64 = 5_000;

fn judge_semaphore(r: &mut Run) -> anyhow::Result<Verdict> {
    let shared = Shared::create(&r.name, common::inspect::page_size())?;
    let o = r.exec(&[])?;
    let count = shared.u64_at(0);
    let mut value: libc::c_int = -1;
    // SAFETY: offset 64 of our own page holds the program's sem_t (32
    // bytes, aligned); all its users have exited. A never-initialised
    // (zero) sem_t reads as value 0.
    unsafe { libc::sem_getvalue(shared.ptr().add(64).cast(), &mut value) };
    Ok((|| {
        if o == Outcome::TimedOut {
            return Err(format!(
                "your program hung and was killed after {} s: a worker sleeps in sem_wait and the \
                 other's sem_post never wakes it. Is the semaphore in the shared page, and \
                 process-shared (sem_init's pshared = 1)?",
                r.timeout.as_secs()
            ));
        }
        exited_cleanly(r, o)?;
        let want = 2 * SEM_WORKER;
        if count != want {
            return Err(format!(
                "the counter in shared memory is {count}, not {want}: {} updates were lost. Wrap \
                 the load and the store in sem_wait/sem_post on the semaphore in the page.",
                want.saturating_sub(count)
            ));
        }
        if value != 1 {
            return Err(format!(
                "the count is right, but the semaphore at offset 64 has value {value}, not 1: \
                 initialise it with sem_init(sem, 1, 1) and post after every wait."
            ));
        }
        Ok(())
    })())
}

fn judge_robust_mutex(r: &mut Run) -> anyhow::Result<Verdict> {
    let shared = Shared::create(&r.name, common::inspect::page_size())?;
    let o = r.exec(&[])?;
    let mutex = shared.ptr().cast::<libc::pthread_mutex_t>();
    // SAFETY: the program initialised a process-shared robust mutex at the
    // start of this page; we lock it the way any other process would.
    let rc = unsafe { libc::pthread_mutex_trylock(mutex) };
    if rc == 0 || rc == libc::EOWNERDEAD {
        // SAFETY: we hold it: make it consistent if needed, then release it.
        unsafe {
            if rc == libc::EOWNERDEAD {
                libc::pthread_mutex_consistent(mutex);
            }
            libc::pthread_mutex_unlock(mutex);
        }
    }
    let counter = shared.u64_at(64);
    Ok((|| {
        exited_cleanly(r, o)?;
        match rc {
            0 => Ok(()),
            libc::ENOTRECOVERABLE => Err(
                "the checker's pthread_mutex_trylock on the mutex returned ENOTRECOVERABLE: it was \
                 unlocked after EOWNERDEAD without pthread_mutex_consistent, so no process can \
                 ever lock it again."
                    .into(),
            ),
            libc::EOWNERDEAD => Err("the checker got EOWNERDEAD: your program ended still holding the mutex.".into()),
            libc::EBUSY => Err("the mutex is still locked after your program ended.".into()),
            e => Err(format!(
                "the checker's pthread_mutex_trylock returned {}.",
                errno_name(e as u64)
            )),
        }?;
        if counter != 2 {
            return Err(format!(
                "the counter is {counter}, not 2: both the child and the parent add 1."
            ));
        }
        Ok(())
    })())
}

// ---------------------------------------------------------------------------
// Lesson 7
// ---------------------------------------------------------------------------

fn judge_sigint_writer(r: &mut Run) -> anyhow::Result<Verdict> {
    let started = r.start(&[])?;
    let pid = started.pid();
    let name = r.name.clone();
    // Ctrl-C once the object exists with its size, as a student would.
    let made = common::children::wait_until(Duration::from_secs(5), || {
        common::inspect::dev_shm_entry(&name).is_some_and(|e| e.size > 0)
            || common::children::state(pid).is_none_or(|s| s == 'Z')
    }) && common::inspect::dev_shm_entry(&name).is_some();
    if made {
        let _ = nix::sys::signal::killpg(pid, Signal::SIGINT);
    }
    let o = r.finish(started);
    let left = r.posix_exists(&r.name);
    Ok((|| {
        if !made {
            return Err(format!(
                "your program never created {}: it {}.",
                r.name,
                o.describe(r.timeout)
            ));
        }
        if o == Outcome::TimedOut {
            return Err(format!(
                "after Ctrl-C your program kept running until the checker killed it after {} s: \
                 Ctrl-C must end the hold.",
                r.timeout.as_secs()
            ));
        }
        if left {
            return Err(format!(
                "after Ctrl-C, /dev/shm/{} was still there (your program {}): end the hold on \
                 SIGINT and shm_unlink before you exit (the checker removed it for you).",
                common::names::file_name(&r.name),
                o.describe(r.timeout)
            ));
        }
        Ok(())
    })())
}

fn judge_memfd_seal(r: &mut Run) -> anyhow::Result<Verdict> {
    let o = r.exec(&[])?;
    let got = r.report_u64s();
    Ok((|| {
        if o == Outcome::Signaled(Signal::SIGBUS) {
            return Err(
                "your program was killed by SIGBUS: the peer shrank the memfd to 0 bytes under \
                 your mapping. Seal it against shrinking (F_SEAL_SHRINK) before the peer gets it."
                    .into(),
            );
        }
        exited_cleanly(r, o)?;
        match got.as_deref() {
            Some([1, 0x005e_a1ed]) => Ok(()),
            Some([peer, v]) => Err(format!(
                "the peer's ftruncate ended with {} and you read {v:#x}: it should fail with EPERM \
                 and the value stay 0x5ea1ed.",
                if *peer == 0 {
                    "success".to_string()
                } else {
                    errno_name(*peer)
                }
            )),
            _ => Err("your program reported nothing: keep the kit::report_u64s call.".into()),
        }
    })())
}

// ---------------------------------------------------------------------------
// Lesson 8
// ---------------------------------------------------------------------------

/// Where both lesson-8 exercises' consumer stores its sum (their `SUM_OFFSET`).
const SUM_OFFSET: usize = 512;

fn judge_ring(r: &mut Run) -> anyhow::Result<Verdict> {
    const COUNT: u64 = 20_000;
    let shared = Shared::create(&r.name, common::inspect::page_size())?;
    let o = r.exec(&[])?;
    let head = shared.u64_at(0);
    let tail = shared.u64_at(64);
    // The consumer's own store, read from the checker's mapping.
    let got = shared.u64_at(SUM_OFFSET);
    Ok((|| {
        exited_cleanly(r, o)?;
        let want = COUNT * (COUNT + 1) / 2;
        if got != want {
            return Err(format!(
                "the consumer's sum (offset {SUM_OFFSET} of the shared object) is {got}, not \
                 {want}: a message was lost, repeated or read before it was written."
            ));
        }
        if head != COUNT || tail != COUNT {
            return Err(format!(
                "the sum is right, but the ring in shared memory shows head {head} and tail \
                 {tail}, not {COUNT}: the messages did not go through it (still the pipe?)."
            ));
        }
        Ok(())
    })())
}

fn judge_futex_shared(r: &mut Run) -> anyhow::Result<Verdict> {
    const COUNT: u64 = 2_000;
    let shared = Shared::create(&r.name, common::inspect::page_size())?;
    let o = r.exec(&[])?;
    // The consumer's own store, read from the checker's mapping.
    let got = shared.u64_at(SUM_OFFSET);
    let (head, tail) = (shared.u32_at(0), shared.u32_at(64));
    Ok((|| {
        if o == Outcome::TimedOut {
            return Err(format!(
                "your program hung and was killed after {} s, with head {head} and tail {tail} \
                 ({}): the consumer slept in FUTEX_WAIT through the producer's FUTEX_WAKE. A wake \
                 finds a waiter of another process only when both calls treat the futex as \
                 shared between processes.",
                r.timeout.as_secs(),
                if head == tail {
                    "the ring empty".to_string()
                } else {
                    format!(
                        "{} messages in the ring, not taken",
                        head.wrapping_sub(tail)
                    )
                }
            ));
        }
        exited_cleanly(r, o)?;
        let want = COUNT * (COUNT + 1) / 2;
        if got != want {
            return Err(format!(
                "the consumer's sum (offset {SUM_OFFSET} of the shared object) is {got}, not \
                 {want}."
            ));
        }
        Ok(())
    })())
}

// ---------------------------------------------------------------------------
// Lesson 9
// ---------------------------------------------------------------------------

fn judge_private_snapshot(r: &mut Run) -> anyhow::Result<Verdict> {
    const DATA_PAGES: usize = 4;
    let page = common::inspect::page_size();
    let flag_at = DATA_PAGES * page;
    let shared = Shared::create(&r.name, (DATA_PAGES + 1) * page)?;
    shared.write(0, &vec![b'A'; DATA_PAGES * page]);
    let started = r.start(&[])?;
    let pid = started.pid();
    let taken = common::children::wait_until(Duration::from_secs(5), || {
        shared.u32_at(flag_at) == 1 || common::children::state(pid).is_none_or(|s| s == 'Z')
    }) && shared.u32_at(flag_at) == 1;
    if taken {
        // Change the object under the snapshot, then say so.
        shared.write(0, &vec![b'B'; DATA_PAGES * page]);
        shared.set_u32(flag_at, 2);
    }
    let o = r.finish(started);
    let got = r.report_u64();
    Ok((|| {
        exited_cleanly(r, o)?;
        if !taken {
            return Err("your program never set the flag to 1 (\"snapshot taken\").".into());
        }
        let (old, new) = (
            (DATA_PAGES * page) as u64 * u64::from(b'A'),
            (DATA_PAGES * page) as u64 * u64::from(b'B'),
        );
        match got {
            Some(v) if v == old => Ok(()),
            Some(v) if v == new => Err(
                "your snapshot changed when the object changed: pages of a MAP_PRIVATE mapping \
                 that were only read are still the object's own pages. A page becomes yours at \
                 its first write (copy-on-write)."
                    .into(),
            ),
            Some(v) => Err(format!(
                "your snapshot's sum is {v}: neither the old data's ({old}) nor the new ({new}); \
                 only some of its pages were copied."
            )),
            None => Err("your program reported nothing: keep the kit::report_u64 call.".into()),
        }
    })())
}

fn judge_fork_heap(r: &mut Run) -> anyhow::Result<Verdict> {
    let o = r.exec(&[])?;
    let got = r.report_u64();
    Ok((|| {
        exited_cleanly(r, o)?;
        match got {
            Some(1000) => Ok(()),
            Some(0) => Err(
                "the parent read 0: the child added 1000 to its own copy of the page. After fork, \
                 heap, stack and MAP_PRIVATE pages are copy-on-write; only a MAP_SHARED mapping \
                 is the same memory in both."
                    .into(),
            ),
            Some(v) => Err(format!("the parent read {v}, not 1000.")),
            None => Err("your program reported nothing: keep the kit::report_u64 call.".into()),
        }?;
        // A named object (shm_open) works too, if it is removed.
        nothing_left(r)
    })())
}

// ---------------------------------------------------------------------------
// Lesson 10
// ---------------------------------------------------------------------------

fn judge_shm_limits(r: &mut Run) -> anyhow::Result<Verdict> {
    let page = common::inspect::page_size();
    let want = (8 * page) as u64;
    let small = (2 * page) as u64;
    let mut outcomes = Vec::new();
    for shmmax in [64 * page as u64, small] {
        r.sandbox = Some((crate::sandbox::IPC, shmmax.to_string()));
        let o = r.exec(&[])?;
        outcomes.push((shmmax, o, r.report_u64()));
        if o == Outcome::Exited(crate::sandbox::SKIPPED) {
            break;
        }
    }
    r.sandbox = None;
    Ok((|| {
        for (shmmax, o, got) in outcomes {
            if o == Outcome::Exited(crate::sandbox::SKIPPED) {
                return Err(format!(
                    "{SKIP} this machine refuses the IPC namespace the check needs (see the \
                     message above)."
                ));
            }
            let expect = want.min(shmmax);
            if o != Outcome::Exited(0) {
                return Err(format!(
                    "in an IPC namespace whose kernel.shmmax is {shmmax} bytes, your program {}: \
                     shmget refuses a segment larger than shmmax (EINVAL). Ask for no more than \
                     the limit.",
                    o.describe(r.timeout)
                ));
            }
            if got != Some(expect) {
                return Err(format!(
                    "with kernel.shmmax = {shmmax}, your segment's shm_segsz is {got:?}, not \
                     {expect}: make the biggest segment allowed, up to 8 pages."
                ));
            }
        }
        Ok(())
    })())
}

/// Whether a process may make an IPC namespace here (as root, or through a
/// user namespace), tried in a forked child that does nothing else.
fn can_unshare_ipc() -> bool {
    // SAFETY: the child only calls unshare and _exit (async-signal-safe);
    // the checker's other threads are not touched.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: unshare takes flags only; _exit ends the child.
            unsafe {
                let ok = libc::unshare(libc::CLONE_NEWIPC) == 0
                    || libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWIPC) == 0;
                libc::_exit(if ok { 0 } else { 1 })
            }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => matches!(
            nix::sys::wait::waitpid(child, None),
            Ok(nix::sys::wait::WaitStatus::Exited(_, 0))
        ),
        Err(_) => false,
    }
}

fn judge_ipc_namespace(r: &mut Run) -> anyhow::Result<Verdict> {
    if !can_unshare_ipc() {
        return Ok(Err(format!(
            "{SKIP} this machine refuses new IPC namespaces (unshare(CLONE_NEWIPC) and \
             CLONE_NEWUSER|CLONE_NEWIPC), so the exercise cannot run here."
        )));
    }
    let started = r.start(&[])?;
    let pid = started.pid();
    let ready = common::children::wait_until(Duration::from_secs(5), || {
        r.report().is_some() || common::children::state(pid).is_none_or(|s| s == 'Z')
    }) && r.report().is_some();
    let seen = ready.then(|| r.sysv_segment()).flatten();
    let _ = nix::sys::signal::kill(pid, Signal::SIGUSR1); // "looked: you may go"
    let o = r.finish(started);
    Ok((|| {
        if !ready {
            return Err(format!(
                "your program never reported its segment: it {}.",
                o.describe(r.timeout)
            ));
        }
        if let Some(s) = seen {
            return Err(format!(
                "the host's /proc/sysvipc/shm lists your segment (key {}, shmid {}): it was made \
                 in the host's IPC namespace. Enter a new IPC namespace before shmget.",
                common::names::key_hex(s.key),
                s.shmid
            ));
        }
        exited_cleanly(r, o)?;
        nothing_left(r)
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
            "The child's store works (the child would read its own 0xdeadbeef). The question is \
             which page it went to.",
            "Look at the flags of mmap: one of them decides whether a write is shared or copied.",
            "grep the object's name in /proc/<pid>/maps: the 4th letter of the permissions says p \
             (private) or s (shared).",
        ],
        timeout_secs: 10,
        judge: judge_map_shared,
    },
    Exercise {
        id: "02_sysv_rmid",
        lesson: 2,
        title: "the segment that outlives every process",
        passed: "the value arrived and ipcs -m shows no segment under the key.",
        hints: &[
            "Run it by hand, then ipcs -m: the segment is still listed, with nattch 0.",
            "Detaching is not removing. Lesson 2's last step removes the segment.",
            "shmctl(shmid, IPC_RMID, NULL), after shmdt (or before: it is then removed at the \
             last detach).",
        ],
        timeout_secs: 10,
        judge: judge_sysv_rmid,
    },
    Exercise {
        id: "02_sysv_excl",
        lesson: 2,
        title: "don't write into someone else's segment",
        passed: "with the key taken your program left the other segment alone and exited 1; with \
                 the key free it worked and removed its segment.",
        hints: &[
            "IPC_CREAT alone means \"create it, or give me the existing one\".",
            "The open(2) flag that means \"fail if it exists\" has a System V twin.",
            "IPC_CREAT | IPC_EXCL | 0o600: shmget then fails with EEXIST, and the segment is \
             yours alone.",
        ],
        timeout_secs: 10,
        judge: judge_sysv_excl,
    },
    Exercise {
        id: "03_ftruncate",
        lesson: 3,
        title: "find the missing call that ends in SIGBUS",
        passed: "the store reached the object (pread read it back) and no SIGBUS came.",
        hints: &[
            "Run it by hand: cargo run -p ex03_ftruncate. cargo says which signal ended it.",
            "ls -l /dev/shm while it runs (add a sleep before the store): how big is a new object?",
            "Lesson 1's step 3 is the call that is missing here.",
        ],
        timeout_secs: 10,
        judge: judge_ftruncate,
    },
    Exercise {
        id: "03_fstat_size",
        lesson: 3,
        title: "size a reader's mapping from fstat",
        passed: "your program reported the object's exact size and the sum of its bytes, without a SIGBUS.",
        hints: &[
            "A mapping may be longer than the object, but touching a page past the end is a SIGBUS.",
            "The kernel knows the object's size: the st_size of fstat(fd).",
            "let size = fstat(&fd)?.st_size as usize; then map size bytes and read size bytes.",
        ],
        timeout_secs: 10,
        judge: judge_fstat_size,
    },
    Exercise {
        id: "04_devshm_file",
        lesson: 4,
        title: "shm_open is open(2) in /dev/shm",
        passed: "the child's shm_open found the file you created with std::fs, and it is gone.",
        hints: &[
            "Where does ls show POSIX shared memory objects?",
            "shm_open(\"/x\") opens the file x on the tmpfs mounted at /dev/shm.",
            "let path = format!(\"/dev/shm{name}\");",
        ],
        timeout_secs: 10,
        judge: judge_devshm_file,
    },
    Exercise {
        id: "04_fallocate",
        lesson: 4,
        title: "catch ENOSPC before the SIGBUS",
        passed: "on a small tmpfs your program exited with ENOSPC (28) instead of a SIGBUS, and on a \
                 big one it filled the object.",
        hints: &[
            "ls -s shows how many blocks an object really uses: after ftruncate, 0.",
            "posix_fallocate(fd, 0, size) asks the filesystem for every block now, or fails.",
            "if let Err(e) = posix_fallocate(&fd, 0, size as off_t) { shm_unlink(...); \
             std::process::exit(e as i32) }",
        ],
        timeout_secs: 10,
        judge: judge_fallocate,
    },
    Exercise {
        id: "05_header_reader",
        lesson: 5,
        title: "a reader for lesson-5's header",
        passed: "you read the sequence number and the message after READY, and acknowledged with your pid.",
        hints: &[
            "The table of offsets is in the book's chapter 5 and in lessons/05-unrelated/src/layout.rs.",
            "Wait in a loop: while state.load(Ordering::Acquire) != STATE_READY { sleep 1 ms }, with a deadline.",
            "Read each field as an atomic (&*base.add(OFF).cast::<AtomicU64>()) or with \
             read_volatile, after the Acquire load. Acknowledge: pid first, then ACKED with Release.",
        ],
        timeout_secs: 10,
        judge: judge_header_reader,
    },
    Exercise {
        id: "05_publish_order",
        lesson: 5,
        title: "publish the message before READY",
        passed: "when the reader saw READY, the whole message was there.",
        hints: &[
            "The reader reads everything as soon as it sees READY. What has been written by then?",
            "READY must be the last store, and a Release store, so that everything before it is visible.",
            "Move state.store(STATE_READY, Ordering::Release) after the message is copied.",
        ],
        timeout_secs: 10,
        judge: judge_publish_order,
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
    Exercise {
        id: "06_semaphore",
        lesson: 6,
        title: "protect the counter with a process-shared semaphore",
        passed: "the counter is exactly 10000 and the semaphore is back at 1.",
        hints: &[
            "A semaphore with value 1 lets one process at a time through sem_wait.",
            "sem_init's second argument (pshared) must be non-zero when two processes use it, \
             and the sem_t must live in the shared page.",
            "sem_init(sem, 1, 1) before the fork; in the loop sem_wait(sem) before the load, \
             sem_post(sem) after the store.",
        ],
        timeout_secs: 10,
        judge: judge_semaphore,
    },
    Exercise {
        id: "06_robust_mutex",
        lesson: 6,
        title: "recover a robust mutex after EOWNERDEAD",
        passed: "the mutex can still be locked after the owner's death, and the counter is 2.",
        hints: &[
            "EOWNERDEAD means: you hold the lock now, but its previous owner died holding it.",
            "Unlocking without repairing first marks the mutex unusable for good (ENOTRECOVERABLE).",
            "man pthread_mutex_consistent.",
        ],
        timeout_secs: 10,
        judge: judge_robust_mutex,
    },
    Exercise {
        id: "07_sigint_writer",
        lesson: 7,
        title: "a writer that survives Ctrl-C without a leak",
        passed: "after Ctrl-C your program removed its object and exited.",
        hints: &[
            "SIGINT's default action ends the process at once: no destructor, no shm_unlink.",
            "Block SIGINT (SigSet::thread_block) before you create the object; the signal then \
             waits until you take it.",
            "Replace the sleep by libc::sigtimedwait(&set, null, &30 s): it returns SIGINT early \
             on Ctrl-C, and the cleanup below runs either way.",
        ],
        timeout_secs: 10,
        judge: judge_sigint_writer,
    },
    Exercise {
        id: "07_memfd_seal",
        lesson: 7,
        title: "seal a memfd so a peer can't shrink it",
        passed: "the peer's ftruncate failed with EPERM and your mapping kept its page.",
        hints: &[
            "The memfd was created with MFD_ALLOW_SEALING: seals can be added.",
            "fcntl(fd, F_ADD_SEALS, ...) with the seal that forbids making the file smaller.",
            "fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL))",
        ],
        timeout_secs: 10,
        judge: judge_memfd_seal,
    },
    Exercise {
        id: "08_ring",
        lesson: 8,
        title: "send through a ring in shared memory, not a pipe",
        passed: "20000 messages went through the ring in shared memory and the sum is right.",
        hints: &[
            "push: wait while head - tail == SLOTS; store the slot; then head + 1 with Release.",
            "pop: wait while head (Acquire) == tail; read the slot; then tail + 1 with Release.",
            "Wait with std::thread::yield_now(), and delete the pipe: the child calls ring.pop(), \
             the parent ring.push(i).",
        ],
        timeout_secs: 20,
        judge: judge_ring,
    },
    Exercise {
        id: "08_futex_shared",
        lesson: 8,
        title: "wake the consumer across processes",
        passed: "every message arrived: the wakes reached the sleeping consumer.",
        hints: &[
            "The kernel finds the sleepers of a futex by a key. How does it make that key?",
            "FUTEX_PRIVATE_FLAG keys the futex by this process's address space.",
            "Drop FUTEX_PRIVATE_FLAG from both WAIT and WAKE.",
        ],
        timeout_secs: 5,
        judge: judge_futex_shared,
    },
    Exercise {
        id: "09_private_snapshot",
        lesson: 9,
        title: "a MAP_PRIVATE snapshot that does not change",
        passed: "your snapshot kept the old data while the object changed under it.",
        hints: &[
            "A MAP_PRIVATE page that was only read: is it a copy yet?",
            "Copy-on-write copies a page at its first write, not at mmap.",
            "Write one byte of each page (the value it already holds) before setting the flag.",
        ],
        timeout_secs: 10,
        judge: judge_private_snapshot,
    },
    Exercise {
        id: "09_fork_heap",
        lesson: 9,
        title: "what fork copies: a counter on the heap",
        passed: "the parent read 1000: the counter is in memory fork shares.",
        hints: &[
            "Is a Box after fork the same memory in both processes?",
            "fork copies private pages on write; a MAP_SHARED mapping is never copied.",
            "mmap_anonymous(None, page, PROT_READ|PROT_WRITE, MAP_SHARED) before the fork, and \
             put the AtomicU64 there.",
        ],
        timeout_secs: 10,
        judge: judge_fork_heap,
    },
    Exercise {
        id: "10_ipc_namespace",
        lesson: 10,
        title: "a segment the host cannot see",
        passed: "the host's /proc/sysvipc/shm never listed your segment, and nothing is left.",
        hints: &[
            "Where does a container's ipcs -m look, and where does the host's?",
            "man unshare(2): CLONE_NEWIPC. Without root, add CLONE_NEWUSER.",
            "if unshare(CLONE_NEWIPC).is_err() { unshare(CLONE_NEWUSER | CLONE_NEWIPC)? } as the first call.",
        ],
        timeout_secs: 10,
        judge: judge_ipc_namespace,
    },
    Exercise {
        id: "10_shm_limits",
        lesson: 10,
        title: "fit under the namespace's kernel.shmmax",
        passed: "your segment was 8 pages under a generous shmmax and exactly shmmax under a small one.",
        hints: &[
            "Run it by hand, then look at the errno shmget gives in the small namespace: EINVAL.",
            "/proc/sys/kernel/shmmax shows the limit of the IPC namespace you are in.",
            "let size = (WANT_PAGES * page).min(shmmax), with shmmax read and parsed from that file.",
        ],
        timeout_secs: 10,
        judge: judge_shm_limits,
    },
];
