//! What machine the numbers come from: CPU model and count, whether it looks
//! virtualised, and which CPUs this process may run on.

use nix::sched::CpuSet;

pub struct Machine {
    /// `model name` from /proc/cpuinfo.
    pub model: String,
    /// CPUs online (`sysconf(_SC_NPROCESSORS_ONLN)`).
    pub online: usize,
    /// The `hypervisor` flag in /proc/cpuinfo: the CPU says it runs under a
    /// hypervisor.
    pub virtualized: bool,
    /// The 1-minute load average from /proc/loadavg when the lesson started:
    /// how many other programs were competing for the CPUs.
    pub load1: Option<f64>,
    /// The kernel release, from /proc/sys/kernel/osrelease (what `uname -r`
    /// prints).
    pub kernel: String,
}

/// Read /proc/cpuinfo and sysconf.
pub fn read() -> Machine {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut m = parse(&info, online());
    m.load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok());
    if let Ok(r) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        m.kernel = r.trim().to_string();
    }
    m
}

fn online() -> usize {
    // SAFETY: sysconf takes an integer and returns one.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as usize
}

/// Parse /proc/cpuinfo text.
pub fn parse(info: &str, online: usize) -> Machine {
    let field = |name: &str| {
        info.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let model = field("model name")
        .or_else(|| field("cpu model"))
        .or_else(|| field("Hardware"))
        .unwrap_or_else(|| "unknown".into());
    let virtualized =
        field("flags").is_some_and(|f| f.split_whitespace().any(|x| x == "hypervisor"));
    Machine {
        model,
        online,
        virtualized,
        load1: None,
        kernel: "unknown".into(),
    }
}

impl Machine {
    /// One line for a chart's caption: model, CPUs, VM or not, kernel, load.
    pub fn describe(&self, usable: usize) -> String {
        format!(
            "{}, {usable} of {} CPUs{}, Linux {}, load average {}",
            self.model,
            self.online,
            if self.virtualized {
                " (virtual machine)"
            } else {
                ""
            },
            self.kernel,
            self.load1.map_or("?".to_string(), |l| format!("{l:.2}"))
        )
    }
}

/// The CPUs in an affinity mask, in order.
pub fn cpus_in(set: &CpuSet) -> Vec<usize> {
    (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_model_and_the_hypervisor_flag() {
        let text =
            "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu vme hypervisor lahf_lm\n";
        let m = parse(text, 2);
        assert_eq!(m.model, "AMD EPYC");
        assert!(m.virtualized);
        assert!(!parse("model name : X\nflags : fpu\n", 1).virtualized);
    }
}
