//! `cargo xtask <task>`: the project's entry points. Every task first makes
//! sure the machine has what it needs (see `bootstrap`), so each works on a
//! fresh machine.
mod bootstrap;

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing, then build the eBPF object and the agent.
    Build,
    /// Build, then run the agent with the given arguments (as root).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit, packet-level (BPF_PROG_TEST_RUN) and end-to-end.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure the programs against baselines and kube-proxy's iptables
    /// and nftables modes, side by side in one run; writes
    /// target/bench/report.md and PNG plots.
    Bench {
        /// A short smoke run (fewer sizes, rounds and seconds).
        #[arg(long)]
        quick: bool,
        /// Only these parts: program-cost, datapath, control-plane, costs,
        /// throughput, nodeport, latency, cold-start, map-batch.
        parts: Vec<String>,
    },
    /// The article's example Services, served by the agent in a sandbox.
    Demo,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    bootstrap::ensure_all()?;
    match cli.task {
        Task::Build => cargo(&["build", "--release", "--package", "svc-agent"]),
        Task::Run { args } => {
            cargo(&["build", "--release", "--package", "svc-agent"])?;
            run(
                Command::new(bootstrap::workspace_root().join("target/release/svc-agent"))
                    .args(args),
            )
        }
        Task::Test { args } => {
            require_root("the packet-level and end-to-end tests")?;
            // The end-to-end tests run the agent binary itself.
            cargo(&["build", "--package", "svc-agent"])?;
            let mut cmd = vec!["test", "--workspace", "--exclude", "svc-ebpf"];
            if !args.is_empty() {
                cmd.push("--");
                cmd.extend(args.iter().map(String::as_str));
            }
            cargo_test(&cmd)
        }
        Task::Bench { quick, parts } => {
            require_root("the benchmarks")?;
            cargo(&["build", "--release", "--package", "svc-agent"])?;
            let mut cmd = vec![
                "run",
                "--release",
                "--package",
                "tests",
                "--bin",
                "bench",
                "--",
            ];
            if quick {
                cmd.push("--quick");
            }
            cmd.extend(parts.iter().map(String::as_str));
            cargo(&cmd)
        }
        Task::Demo => {
            require_root("the demo")?;
            cargo(&["build", "--package", "svc-agent"])?;
            cargo(&["run", "--quiet", "--package", "tests", "--bin", "demo"])
        }
    }
}

fn require_root(what: &str) -> Result<()> {
    // Tests that need root must fail, never skip: say so up front.
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("{what} load eBPF programs and create network namespaces: run as root");
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .args(args)
        .current_dir(bootstrap::workspace_root()))
}

/// Runs `cargo test`, passing its output through, and ends with one line
/// totalling every test binary's result (the per-binary lines end with
/// doc-test runs that are usually empty).
fn cargo_test(args: &[&str]) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .args(args)
        .current_dir(bootstrap::workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = parse_test_result(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}

/// `test result: ok. 12 passed; 0 failed; ...` -> (12, 0)
fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| -> Option<u64> {
        rest.split(';')
            .find_map(|part| part.trim().strip_suffix(word))
            .and_then(|n| n.trim().rsplit(' ').next())
            .and_then(|n| n.parse().ok())
    };
    Some((count(" passed")?, count(" failed")?))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_cargo_test_result_lines() {
        let line = "test result: ok. 12 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.92s";
        assert_eq!(super::parse_test_result(line), Some((12, 3)));
        assert_eq!(super::parse_test_result("running 3 tests"), None);
    }
}
