//! The host as the lesson found it: its System V segments (`ipcs -m`), its
//! IPC limits (`/proc/sys/kernel/shm*`) and its mount table. The lesson takes
//! a snapshot before the parts and checks it after: every change was made in
//! namespaces of the lesson's own, so nothing here may differ.

use anyhow::bail;
use common::narrate::{evidence, explain, fact, section};
use common::{inspect, names, ns};

/// The IPC sysctls, which belong to an IPC namespace (proc(5)).
pub const SYSCTLS: [&str; 5] = [
    "shmmax",
    "shmall",
    "shmmni",
    "shm_rmid_forced",
    "shm_next_id",
];

/// `/proc/sys/kernel/NAME`, as this process (its IPC namespace) sees it.
pub fn sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|e| format!("unreadable ({e})"))
}

/// `ipcs -m` when installed, else `cat /proc/sysvipc/shm`: the command and
/// its lines.
pub fn segments_listing() -> (&'static str, Vec<String>) {
    match inspect::ipcs_m() {
        Some(lines) => ("ipcs -m", lines),
        None => (
            "cat /proc/sysvipc/shm   # (ipcs is not installed)",
            std::fs::read_to_string("/proc/sysvipc/shm")
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect(),
        ),
    }
}

/// `ipcs -l -m` when installed, else the limits from `/proc/sys/kernel`.
pub fn ipcs_limits() -> Vec<String> {
    let out = std::process::Command::new("ipcs")
        .args(["-l", "-m"])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
        _ => ["shmmni", "shmmax", "shmall"]
            .iter()
            .map(|n| format!("kernel.{n} = {}   # (no ipcs)", sysctl(n)))
            .collect(),
    }
}

pub struct Snapshot {
    segments: Vec<String>,
    sysctls: Vec<(String, String)>,
    mounts: Vec<String>,
}

impl Snapshot {
    pub fn take() -> Snapshot {
        Snapshot {
            segments: segments_listing().1,
            sysctls: SYSCTLS.iter().map(|s| (s.to_string(), sysctl(s))).collect(),
            mounts: ns::mount_table(),
        }
    }

    pub fn sysctl(&self, name: &str) -> &str {
        self.sysctls
            .iter()
            .find(|(n, _)| n == name)
            .map_or("?", |(_, v)| v.as_str())
    }

    pub fn show(&self, heading: &str) {
        section(heading);
        for (name, value) in &self.sysctls {
            fact(&format!("kernel.{name}"), value);
        }
        fact(
            "/proc/self/mountinfo",
            format!("{} mounts", self.mounts.len()),
        );
        fact(
            "System V segments",
            format!(
                "{} ({} of them from shm-lessons runs)",
                inspect::sysv_segments().len(),
                inspect::sysv_segments()
                    .iter()
                    .filter(|s| names::is_lesson_key(s.key))
                    .count()
            ),
        );
        fact(
            "/proc/self/ns/ipc",
            ns::identity(None, "ipc").unwrap_or_default(),
        );
    }

    /// Compare with `before`: the limits and the mount table must be
    /// byte-identical, and no segment with this run's key may be left. A
    /// segment listing that differs only by other processes' rows (another
    /// student's run) is shown, not an error.
    pub fn unchanged_since(&self, before: &Snapshot) -> anyhow::Result<()> {
        section("The host, after");
        for ((name, was), (_, now)) in before.sysctls.iter().zip(&self.sysctls) {
            if was != now {
                bail!("the host's kernel.{name} changed from {was} to {now}");
            }
            fact(&format!("kernel.{name}"), format!("{now} (unchanged)"));
        }
        let diff = ns::mount_table_diff(&before.mounts, &self.mounts);
        if !diff.is_empty() {
            bail!("the host's mount table changed:\n{}", diff.join("\n"));
        }
        fact(
            "/proc/self/mountinfo",
            format!("{} mounts, byte-identical", self.mounts.len()),
        );
        let ours = inspect::sysv_segments()
            .into_iter()
            .filter(|s| s.key == names::unique_key(10))
            .collect::<Vec<_>>();
        if !ours.is_empty() {
            bail!("segments of this run are left on the host: {ours:?}");
        }
        let (command, now) = segments_listing();
        if now == before.segments {
            evidence(&format!("{command}   # byte-identical to before"), &now);
        } else {
            let diff = ns::mount_table_diff(&before.segments, &now);
            evidence(
                &format!("{command}   # changed by other processes meanwhile"),
                &diff,
            );
            explain(format!(
                "None of these rows has this run's key {}: they belong to other programs \
                 running on this machine at the same time.",
                names::key_hex(names::unique_key(10))
            ));
        }
        Ok(())
    }
}
