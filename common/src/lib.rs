//! What every lesson shares, and nothing a lesson teaches.
//!
//! A lesson's `main.rs` calls the system calls itself, at the call site, with
//! their real arguments. This crate only holds what would otherwise be written
//! eight times:
//!
//! - [`report`]: the article's `error_out`, with the errno *name* (`ENOENT`)
//!   beside its text, and the lesson's exit status;
//! - [`call`]: [`call!`], one narrated system call in one line of source:
//!   `let fd = call!(shm_open(name.as_str(), flags, mode))?;`;
//! - [`narrate`]: section titles, one step line per system call, explanations,
//!   evidence blocks and "the article says / this machine shows" comparisons;
//! - [`inspect`]: what a student could check by hand (`/dev/shm`,
//!   `/proc/self/maps`, `/proc/sysvipc/shm`, `ipcs -m`, filesystem types);
//! - [`args`]: the shared command line (`--help`, `--hold`, `--pause`,
//!   `--name`, `--key`), with usage and exit status 2 on bad input;
//! - [`names`]: object names and keys unique to one run;
//! - [`cleanup`]: guards that remove what a run created on every path,
//!   including Ctrl-C and SIGTERM;
//! - [`shm`]: `shm_open(O_CREAT|O_EXCL|O_RDWR, 0600)` with its cleanup guard,
//!   for the lessons after lesson-1;
//! - [`sysv`]: thin safe wrappers for `shmget`/`shmat`/`shmdt`/`shmctl`/`ftok`,
//!   which nix lacks;
//! - [`children`]: waiting for forked children with a deadline, so a
//!   lesson never hangs;
//! - [`futex`]: `FUTEX_WAIT`/`FUTEX_WAKE` on a shared word, private or not;
//! - [`ns`]: private mount, IPC (and user) namespaces in which lessons 4
//!   and 10 stage their scenarios without touching the host's mounts or IPC
//!   limits; joining another process's namespaces (`setns`); starting the
//!   lesson again as a child, with a link to keep it in its namespace;
//! - [`fault`]: a shared page where a child's SIGBUS/SIGSEGV handler records
//!   `si_code` and `si_addr` for its parent;
//! - [`pages`]: what the kernel says of a mapping's pages (`/proc/PID/smaps`,
//!   `/proc/PID/pagemap`, `ru_minflt`, the transparent huge page settings).

pub mod args;
pub mod call;
pub mod children;
pub mod cleanup;
pub mod fault;
pub mod futex;
pub mod inspect;
pub mod names;
pub mod narrate;
pub mod ns;
pub mod pages;
pub mod report;
pub mod shm;
pub mod sysv;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use report::{Exit, run};
