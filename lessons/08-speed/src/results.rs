//! Runs → medians, minima, percentiles, ratios, tables, a bar chart and
//! `--json`.

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
    /// Latency only: every round trip of every run, in µs.
    pub samples: Vec<f64>,
}

/// The spread of the round trips: the median, the 99th percentile, the
/// slowest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

// ANCHOR: percentile
/// The `p`th percentile (0 < p <= 100) of sorted samples, by the
/// nearest-rank method: the smallest sample with at least p% of all samples
/// at or below it. Always a sample that was measured, never an interpolation.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50, p99 and the maximum of some samples (in any order).
pub fn spread(samples: &[f64]) -> Option<Spread> {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Some(Spread {
        p50: percentile(&v, 50.0)?,
        p99: percentile(&v, 99.0)?,
        max: *v.last()?,
    })
}
// ANCHOR_END: percentile

impl Series {
    pub fn new(kind: Kind) -> Series {
        Series {
            kind,
            values: Vec::new(),
            sleeps: Vec::new(),
            ok: true,
            skipped: None,
            samples: Vec::new(),
        }
    }

    /// p50, p99 and max of every round trip of every run.
    pub fn spread(&self) -> Option<Spread> {
        spread(&self.samples)
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
        "{:<26} {:<9} {:>8} {:>8} {:>8} {:>9}  {}\n",
        "transport", "waits by", "median", "min", "÷ pipe", "÷ memcpy", "checksum"
    );
    out.push_str("(GB/s, higher is better)\n");
    for s in &g.throughput {
        let m = s.median();
        out.push_str(&format!(
            "{:<26} {:<9} {:>8} {:>8} {:>8} {:>9}  {}\n",
            s.kind.label(false),
            s.kind.waits(),
            fmt(m),
            fmt(s.min()),
            fmt_ratio(ratio(m, pipe)),
            fmt_ratio(ratio(m, memcpy)),
            check(s)
        ));
    }
    out
}

/// The latency table: median and minimum of the runs' means, the spread of
/// every single round trip, how many times faster than the pipe.
pub fn latency_table(g: &Group) -> String {
    let pipe = g.us("pipe");
    let mut out = format!(
        "{:<26} {:<9} {:>7} {:>7} {:>7} {:>7} {:>8} {:>11}  {}\n",
        "transport", "waits by", "median", "min", "p50", "p99", "max", "pipe ÷ this", "replies"
    );
    out.push_str("(µs per round trip, lower is better)\n");
    for s in &g.latency {
        let m = s.median();
        let sp = s.spread();
        out.push_str(&format!(
            "{:<26} {:<9} {:>7} {:>7} {:>7} {:>7} {:>8} {:>11}  {}\n",
            s.kind.label(true),
            s.kind.waits(),
            fmt(m),
            fmt(s.min()),
            fmt(sp.map(|x| x.p50)),
            fmt(sp.map(|x| x.p99)),
            fmt(sp.map(|x| x.max)),
            fmt_ratio(ratio(pipe, m)),
            check(s)
        ));
    }
    out.push_str(
        "median, min: of the runs' mean round trips; p50, p99, max: of every round trip\n",
    );
    out
}

/// A message size as a person writes it: 64 B, 16 KiB, 1 MiB.
pub fn size_label(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// The sweep's tables: throughput by size, then p50/p99/max by size.
pub fn sweep_tables(sweep: &[(usize, Group)]) -> String {
    let Some((_, first)) = sweep.first() else {
        return String::new();
    };
    let head = |what: &str| {
        let mut h = format!("{what:<37}");
        for (size, _) in sweep {
            h.push_str(&format!(" {:>9}", size_label(*size)));
        }
        h + "  checks\n"
    };
    let mut out = head("one-way throughput, GB/s");
    for (i, s) in first.throughput.iter().enumerate() {
        let label = format!("{} [{}]", s.kind.label(false), s.kind.waits());
        out.push_str(&format!("{label:<37}"));
        for (_, g) in sweep {
            out.push_str(&format!(" {:>9}", fmt(g.throughput[i].median())));
        }
        out.push_str(&format!("  {}\n", all_checks(sweep, |g| &g.throughput[i])));
    }
    out.push('\n');
    out.push_str(&head("round trip, µs"));
    for (i, s) in first.latency.iter().enumerate() {
        let label = format!("{} [{}]", s.kind.label(true), s.kind.waits());
        type Pick = fn(Spread) -> f64;
        let stats: [(&str, Pick); 3] = [("p50", |x| x.p50), ("p99", |x| x.p99), ("max", |x| x.max)];
        for (n, (stat, pick)) in stats.into_iter().enumerate() {
            let name = if n == 0 { label.as_str() } else { "" };
            out.push_str(&format!("{name:<32} {stat:>4}"));
            for (_, g) in sweep {
                out.push_str(&format!(" {:>9}", fmt(g.latency[i].spread().map(pick))));
            }
            if n == 0 {
                out.push_str(&format!("  {}", all_checks(sweep, |g| &g.latency[i])));
            }
            out.push('\n');
        }
    }
    out
}

/// "ok" when every size checked out, else the first thing that did not.
fn all_checks(sweep: &[(usize, Group)], pick: impl Fn(&Group) -> &Series) -> String {
    for (size, g) in sweep {
        let c = check(pick(g));
        if c != "ok" {
            return format!("{c} at {}", size_label(*size));
        }
    }
    "ok".into()
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
        (
            "latency_p50_us".into(),
            per_kind(&g.latency, |s| jnum(s.spread().map(|x| x.p50))),
        ),
        (
            "latency_p99_us".into(),
            per_kind(&g.latency, |s| jnum(s.spread().map(|x| x.p99))),
        ),
        (
            "latency_max_us".into(),
            per_kind(&g.latency, |s| jnum(s.spread().map(|x| x.max))),
        ),
        (
            "waits".into(),
            per_kind(&g.latency, |s| jstr(s.kind.waits())),
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

/// One transport at one size in the sweep's JSON.
fn sweep_cell(t: &Series, l: &Series, size: usize) -> String {
    let sp = l.spread();
    let skipped = t.skipped.as_ref().or(l.skipped.as_ref());
    jobj(&[
        ("size_bytes".into(), size.to_string()),
        ("waits".into(), jstr(t.kind.waits())),
        ("throughput_gbps".into(), jnum(t.median())),
        ("throughput_min_gbps".into(), jnum(t.min())),
        ("checksum_ok".into(), checked(t)),
        ("latency_us".into(), jnum(l.median())),
        ("latency_p50_us".into(), jnum(sp.map(|x| x.p50))),
        ("latency_p99_us".into(), jnum(sp.map(|x| x.p99))),
        ("latency_max_us".into(), jnum(sp.map(|x| x.max))),
        ("round_trips".into(), l.samples.len().to_string()),
        ("replies_ok".into(), checked(l)),
        ("runs".into(), t.values.len().to_string()),
        (
            "skipped".into(),
            skipped.map_or("null".into(), |why| jstr(why)),
        ),
    ])
}

/// The whole `--sweep --json` object.
pub fn sweep_json(
    machine: &crate::machine::Machine,
    usable: usize,
    memcpy: Option<f64>,
    sweep: &[(usize, Group)],
) -> String {
    let placement = sweep.first().map_or("?", |(_, g)| g.placement);
    let results: Vec<(String, String)> = sweep
        .iter()
        .map(|(size, g)| {
            let cells: Vec<(String, String)> = g
                .throughput
                .iter()
                .zip(&g.latency)
                .map(|(t, l)| (t.kind.key().to_string(), sweep_cell(t, l, *size)))
                .collect();
            (size.to_string(), jobj(&cells))
        })
        .collect();
    let sizes: Vec<String> = sweep.iter().map(|(s, _)| s.to_string()).collect();
    jobj(&[
        ("cpus".into(), machine.online.to_string()),
        ("usable_cpus".into(), usable.to_string()),
        ("cpu_model".into(), jstr(&machine.model)),
        ("virtualized".into(), machine.virtualized.to_string()),
        ("kernel".into(), jstr(&machine.kernel)),
        ("load_average".into(), jnum(machine.load1)),
        ("memcpy_gbps".into(), jnum(memcpy)),
        ("placement".into(), jstr(placement)),
        ("sizes".into(), format!("[{}]", sizes.join(", "))),
        ("sweep".into(), jobj(&results)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        // 1..=100: p50 is the 50th value, p99 the 99th, max the 100th.
        let hundred: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = spread(&hundred).unwrap();
        assert_eq!((s.p50, s.p99, s.max), (50.0, 99.0, 100.0));
        // One slow outlier in 1000: it is the max, not the p99.
        let mut v = vec![2.0; 999];
        v.push(5000.0);
        let s = spread(&v).unwrap();
        assert_eq!((s.p50, s.p99, s.max), (2.0, 2.0, 5000.0));
        // Eleven slow in 1000 (more than 1%): now the p99 sees them.
        let mut v = vec![2.0; 989];
        v.extend([300.0; 11]);
        assert_eq!(spread(&v).unwrap().p99, 300.0);
        // A single sample is every percentile; none gives nothing.
        let s = spread(&[7.0]).unwrap();
        assert_eq!((s.p50, s.p99, s.max), (7.0, 7.0, 7.0));
        assert_eq!(spread(&[]), None);
        // Nearest rank, rounded up, never interpolated: of 4 samples p50 is
        // the 2nd; of 5 the 3rd; of 10, p99 (rank 9.9) is the 10th.
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 50.0), Some(3.0));
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(spread(&ten).unwrap().p99, 10.0);
    }

    #[test]
    fn sizes_are_labelled_in_binary_units() {
        assert_eq!(size_label(64), "64 B");
        assert_eq!(size_label(16 << 10), "16 KiB");
        assert_eq!(size_label(1 << 20), "1 MiB");
    }

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
