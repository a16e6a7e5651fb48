//! Runs → medians, minima, ratios, a table, a bar chart and `--json`.

use crate::bench::Kind;

/// The runs of one transport in one placement.
#[derive(Debug, Clone)]
pub struct Series {
    pub kind: Kind,
    pub values: Vec<f64>,
    /// FUTEX_WAIT calls per message, one per run.
    pub sleeps: Vec<f64>,
    /// Every run's checksum (throughput) or every reply (latency) was right.
    pub ok: bool,
    /// Why it was not measured (pure spin on one CPU, a watchdog timeout).
    pub skipped: Option<String>,
}

impl Series {
    pub fn new(kind: Kind) -> Series {
        Series {
            kind,
            values: Vec::new(),
            sleeps: Vec::new(),
            ok: true,
            skipped: None,
        }
    }

    pub fn median(&self) -> Option<f64> {
        median(&self.values)
    }

    /// Median FUTEX_WAIT calls per message.
    pub fn sleeps(&self) -> Option<f64> {
        median(&self.sleeps)
    }

    pub fn min(&self) -> Option<f64> {
        self.values.iter().copied().reduce(f64::min)
    }
}

pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// One placement's results.
#[derive(Debug, Clone)]
pub struct Group {
    pub placement: &'static str,
    pub throughput: Vec<Series>,
    pub latency: Vec<Series>,
}

impl Group {
    pub fn tput(&self, key: &str) -> Option<&Series> {
        self.throughput.iter().find(|s| s.kind.key() == key)
    }

    pub fn lat(&self, key: &str) -> Option<&Series> {
        self.latency.iter().find(|s| s.kind.key() == key)
    }

    /// Median throughput of a transport, GB/s.
    pub fn gbps(&self, key: &str) -> Option<f64> {
        self.tput(key).and_then(Series::median)
    }

    /// Median round trip of a transport, µs.
    pub fn us(&self, key: &str) -> Option<f64> {
        self.lat(key).and_then(Series::median)
    }

    /// The best kernel transport's throughput: (key, GB/s).
    pub fn best_kernel_gbps(&self) -> Option<(&'static str, f64)> {
        self.throughput
            .iter()
            .filter(|s| !matches!(s.kind, Kind::Shm(_)))
            .filter_map(|s| Some((s.kind.key(), s.median()?)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The fastest kernel transport's round trip: (key, µs).
    pub fn best_kernel_us(&self) -> Option<(&'static str, f64)> {
        self.latency
            .iter()
            .filter(|s| !matches!(s.kind, Kind::Shm(_)))
            .filter_map(|s| Some((s.kind.key(), s.median()?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// `x / y`, when both were measured.
pub fn ratio(x: Option<f64>, y: Option<f64>) -> Option<f64> {
    match (x, y) {
        (Some(x), Some(y)) if y > 0.0 => Some(x / y),
        _ => None,
    }
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn fmt_ratio(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 10.0 => format!("{v:.0}×"),
        Some(v) if v >= 0.01 => format!("{v:.2}×"),
        Some(v) => format!("{v:.1e}×"),
    }
}

fn check(s: &Series) -> &'static str {
    match (&s.skipped, s.ok) {
        (Some(_), _) => "skipped",
        (None, true) => "ok",
        (None, false) => "MISMATCH",
    }
}

/// The throughput table: median, minimum, ratios, check.
pub fn throughput_table(g: &Group, memcpy: Option<f64>) -> String {
    let pipe = g.gbps("pipe");
    let mut out = format!(
        "{:<26} {:>8} {:>8} {:>8} {:>9}  {}\n",
        "transport", "median", "min", "÷ pipe", "÷ memcpy", "checksum"
    );
    out.push_str(&format!(
        "{:<26} {:>8} {:>8}\n",
        "(GB/s, higher is better)", "", ""
    ));
    for s in &g.throughput {
        let m = s.median();
        out.push_str(&format!(
            "{:<26} {:>8} {:>8} {:>8} {:>9}  {}\n",
            s.kind.label(false),
            fmt(m),
            fmt(s.min()),
            fmt_ratio(ratio(m, pipe)),
            fmt_ratio(ratio(m, memcpy)),
            check(s)
        ));
    }
    out
}

/// The latency table: median, minimum, how many times faster than the pipe.
pub fn latency_table(g: &Group) -> String {
    let pipe = g.us("pipe");
    let mut out = format!(
        "{:<26} {:>8} {:>8} {:>12}  {}\n",
        "transport", "median", "min", "pipe ÷ this", "replies"
    );
    out.push_str("(µs per round trip, lower is better)\n");
    for s in &g.latency {
        let m = s.median();
        out.push_str(&format!(
            "{:<26} {:>8} {:>8} {:>12}  {}\n",
            s.kind.label(true),
            fmt(m),
            fmt(s.min()),
            fmt_ratio(ratio(pipe, m)),
            check(s)
        ));
    }
    out
}

const BAR: usize = 40;

/// Horizontal bars: linear for throughput, log10 for latency (its values
/// span four orders of magnitude when a spinner shares a CPU).
pub fn chart(rows: &[(String, Option<f64>)], log: bool, unit: &str) -> String {
    let vals: Vec<f64> = rows.iter().filter_map(|r| r.1).collect();
    let max = vals.iter().copied().fold(f64::MIN, f64::max);
    let min = vals.iter().copied().fold(f64::MAX, f64::min);
    let mut out = String::from(if log {
        "(log scale: each bar is proportional to the logarithm)\n"
    } else {
        ""
    });
    for (label, v) in rows {
        let Some(v) = *v else {
            out.push_str(&format!("{label:<26} (skipped)\n"));
            continue;
        };
        let frac = if log {
            // log scale from a decade below the smallest value to the largest.
            let lo = (min / 10.0).log10();
            let hi = max.log10();
            if hi > lo {
                (v.log10() - lo) / (hi - lo)
            } else {
                1.0
            }
        } else if max > 0.0 {
            v / max
        } else {
            0.0
        };
        let n = ((frac * BAR as f64).round() as usize).clamp(1, BAR);
        out.push_str(&format!(
            "{label:<26} {:<BAR$} {} {unit}\n",
            "█".repeat(n),
            fmt(Some(v))
        ));
    }
    out
}

// ---- JSON, written by hand (a handful of numbers, no crate needed) ----

fn jnum(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.6}"),
        _ => "null".into(),
    }
}

pub fn jstr(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn jobj(pairs: &[(String, String)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}: {v}", jstr(k)))
        .collect();
    format!("{{{}}}", inner.join(", "))
}

fn per_kind(series: &[Series], f: impl Fn(&Series) -> String) -> String {
    jobj(
        &series
            .iter()
            .map(|s| (s.kind.key().to_string(), f(s)))
            .collect::<Vec<_>>(),
    )
}

/// `true`/`false` for a transport that was measured; `null` for one that was
/// skipped (nothing was checked).
fn checked(s: &Series) -> String {
    match s.skipped {
        Some(_) if s.values.is_empty() => "null".into(),
        _ => s.ok.to_string(),
    }
}

/// One placement's part of the JSON object.
pub fn group_json(g: &Group, memcpy: Option<f64>) -> Vec<(String, String)> {
    let pipe_g = g.gbps("pipe");
    let pipe_us = g.us("pipe");
    let skipped = |s: &Series| match &s.skipped {
        Some(why) => jstr(why),
        None => "null".into(),
    };
    vec![
        ("placement".into(), jstr(g.placement)),
        (
            "throughput_gbps".into(),
            per_kind(&g.throughput, |s| jnum(s.median())),
        ),
        (
            "throughput_min_gbps".into(),
            per_kind(&g.throughput, |s| jnum(s.min())),
        ),
        (
            "latency_us".into(),
            per_kind(&g.latency, |s| jnum(s.median())),
        ),
        (
            "latency_min_us".into(),
            per_kind(&g.latency, |s| jnum(s.min())),
        ),
        ("checksum_ok".into(), per_kind(&g.throughput, checked)),
        ("replies_ok".into(), per_kind(&g.latency, checked)),
        (
            "futex_sleeps_per_message".into(),
            jobj(&[
                (
                    "throughput".into(),
                    jnum(g.tput("shm_futex").and_then(Series::sleeps)),
                ),
                (
                    "latency".into(),
                    jnum(g.lat("shm_futex").and_then(Series::sleeps)),
                ),
            ]),
        ),
        (
            "runs".into(),
            per_kind(&g.throughput, |s| s.values.len().to_string()),
        ),
        (
            "throughput_vs_pipe".into(),
            per_kind(&g.throughput, |s| jnum(ratio(s.median(), pipe_g))),
        ),
        (
            "throughput_vs_memcpy".into(),
            per_kind(&g.throughput, |s| jnum(ratio(s.median(), memcpy))),
        ),
        (
            "latency_speedup_vs_pipe".into(),
            per_kind(&g.latency, |s| jnum(ratio(pipe_us, s.median()))),
        ),
        (
            "skipped".into(),
            jobj(
                &g.throughput
                    .iter()
                    .chain(&g.latency)
                    .filter(|s| s.skipped.is_some())
                    .map(|s| (s.kind.key().to_string(), skipped(s)))
                    .collect::<Vec<_>>(),
            ),
        ),
    ]
}

/// The whole `--json` object.
pub fn json(
    machine: &crate::machine::Machine,
    usable: usize,
    memcpy: Option<f64>,
    main: &Group,
    same: &Group,
) -> String {
    let mut pairs = vec![
        ("cpus".into(), machine.online.to_string()),
        ("usable_cpus".into(), usable.to_string()),
        ("cpu_model".into(), jstr(&machine.model)),
        ("virtualized".into(), machine.virtualized.to_string()),
        ("load_average".into(), jnum(machine.load1)),
        ("memcpy_gbps".into(), jnum(memcpy)),
    ];
    pairs.extend(group_json(main, memcpy));
    pairs.push(("same_cpu".into(), jobj(&group_json(same, memcpy))));
    jobj(&pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(jstr("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
