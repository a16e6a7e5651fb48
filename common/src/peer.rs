//! Another process that is not our child: a writer and a reader started in
//! two terminals. We cannot `waitpid` for it, and the kernel sends no notice
//! when it creates a shared memory object or changes a word in one, so we
//! poll, with a deadline, and check whether it is still alive.

use std::time::{Duration, Instant};

use nix::sys::signal::kill;
use nix::unistd::Pid;

/// Poll `probe` until it returns `Some`, or `timeout` passes (`None`). The
/// pause between tries grows from 1 ms to 25 ms, so a wait that ends at once
/// costs nothing and a long one costs little.
pub fn poll_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= end {
            return None;
        }
        std::thread::sleep(nap.min(end - now));
        nap = (nap * 2).min(Duration::from_millis(25));
    }
}

/// Whether a process with this pid exists (ours or not): `kill(pid, 0)`
/// succeeds, or fails with EPERM (it exists but belongs to another user).
/// ESRCH means it is gone. A pid can be reused, so "alive" may be a stranger.
pub fn is_alive(pid: Pid) -> bool {
    pid.as_raw() > 0 && !matches!(kill(pid, None), Err(nix::errno::Errno::ESRCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn we_are_alive_and_a_reaped_child_is_not() {
        assert!(is_alive(nix::unistd::getpid()));
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = Pid::from_raw(c.id() as i32);
        c.wait().unwrap();
        assert!(!is_alive(pid));
    }

    #[test]
    fn poll_until_returns_the_value_or_none_at_the_deadline() {
        let mut n = 0;
        assert_eq!(
            poll_until(Duration::from_secs(5), || {
                n += 1;
                (n == 3).then_some(n)
            }),
            Some(3)
        );
        assert_eq!(poll_until(Duration::from_millis(10), || None::<()>), None);
    }
}
