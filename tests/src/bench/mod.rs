//! `cargo xtask bench [--quick] [PART...]`: measurements taken side by
//! side in one run, printed as they come and gathered in
//! `target/bench/report.md` with PNG plots and a summary table.
//!
//! * `program_cost`: BPF_PROG_TEST_RUN ns per packet of both programs
//!   against empty programs, at 1 to 100k services;
//! * `datapath`: a client pod to a ClusterIP in the sandbox, through our
//!   programs, kube-proxy-shaped iptables and nftables rules, and pod to
//!   pod with nothing in between (plus the older throughput and NodePort
//!   forwarding parts);
//! * `control_plane`: the real agent's cold start and change latency, next
//!   to loading the equivalent kube-proxy rulesets;
//! * `kube_proxy_rules`: those rulesets, rendered as kube-proxy writes them;
//! * `map_batch`: the agent's map writes and reads per key against batched.
//!
//! Nothing here asserts a time: it measures and reports.
pub mod control_plane;
pub mod datapath;
pub mod kube_proxy_rules;
pub mod map_batch;
pub mod plot;
pub mod program_cost;
pub mod report;

use std::time::Duration;

use anyhow::{Context as _, Result, bail};

pub use report::{Report, Row};

/// What a part gets: the run's options and the report it adds to.
pub struct Ctx {
    /// `--quick`: a short smoke run (fewer sizes, rounds and seconds).
    pub quick: bool,
    pub report: Report,
}

impl Ctx {
    pub fn new(quick: bool) -> Self {
        Self {
            quick,
            report: Report::new(quick),
        }
    }

    /// Prints a line and adds it to the current section's log.
    pub fn line(&mut self, text: impl AsRef<str>) {
        println!("{}", text.as_ref());
        self.report.log(text.as_ref());
    }

    /// Starts a section of the report (a heading on stdout too).
    pub fn section(&mut self, title: &str) {
        println!("\n== {title}");
        self.report.section(title);
    }

    /// `full` normally, `quick` with `--quick`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The `p`-quantile (0..=1) by nearest rank.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// "1", "1k", "10k", "100k".
pub fn count_label(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// Runs `cmd` to completion with a time limit; kills it at the limit.
/// Ok(Some(elapsed)) when it succeeded in time, Ok(None) when it was
/// stopped at the limit, an error when it failed.
pub fn run_timed(
    cmd: &mut std::process::Command,
    stdin_file: Option<&std::path::Path>,
    limit: Duration,
) -> Result<Option<Duration>> {
    use std::process::Stdio;
    if let Some(f) = stdin_file {
        cmd.stdin(std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let took = start.elapsed();
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read as _;
                    let _ = e.read_to_string(&mut err);
                }
                let err: String = err.chars().take(2000).collect();
                bail!("{cmd:?} failed ({status}): {}", err.trim());
            }
            return Ok(Some(took));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The machine, for the report: nproc, memory, kernel.
pub fn machine() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    format!(
        "{nproc} CPUs ({cpu}), {:.1} GiB memory, Linux {kernel}",
        mem_kib as f64 / 1024.0 / 1024.0
    )
}

/// The 1, 5 and 15 minute load averages (other work on the machine
/// disturbs the measurements; the report says how busy it was).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// First line of `PROGRAM --version` (for the report).
pub fn tool_version(program: &str) -> String {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "not found".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert!(median(vec![]).is_nan());
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 0.5), 51.0);
        assert_eq!(percentile(&s, 0.99), 99.0);
        assert_eq!(percentile(&s, 1.0), 100.0);
    }

    #[test]
    fn count_labels() {
        assert_eq!(count_label(1), "1");
        assert_eq!(count_label(1000), "1k");
        assert_eq!(count_label(100_000), "100k");
        assert_eq!(count_label(1500), "1500");
    }
}
