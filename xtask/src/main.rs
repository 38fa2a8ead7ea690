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
    /// Measure the programs against baselines, side by side in one run.
    Bench,
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
            let mut cmd = vec![
                "test",
                "--workspace",
                "--exclude",
                "svc-ebpf",
                "--exclude",
                "xtask",
            ];
            if !args.is_empty() {
                cmd.push("--");
                cmd.extend(args.iter().map(String::as_str));
            }
            cargo(&cmd)
        }
        Task::Bench => {
            require_root("the benchmarks")?;
            cargo(&["run", "--release", "--package", "tests", "--bin", "bench"])
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

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
