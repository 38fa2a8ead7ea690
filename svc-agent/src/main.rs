//! `svc-agent`: the daemon and its command line.
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use log::{info, warn};
use svc_agent::{
    dataplane::Dataplane,
    static_services::{self, StaticService},
};

#[derive(Parser)]
#[command(version, about = "eBPF Kubernetes Service proxy agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the dataplane and serve until interrupted.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Uplinks (traffic from outside the node): get the XDP program.
    #[arg(long, value_delimiter = ',')]
    uplinks: Vec<String>,
    /// Node-side pod veths: get the tcx ingress program.
    #[arg(long, value_delimiter = ',')]
    pod_interfaces: Vec<String>,
    /// A static service: FRONTEND/PROTO=BACKEND[,BACKEND...], repeatable.
    #[arg(long = "service")]
    services: Vec<StaticService>,
    /// Print per-service counters this often (seconds; 0 = only at exit).
    #[arg(long, default_value_t = 0)]
    stats_interval: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let plan = static_services::plan(&args.services)?;
    let mut dp = Dataplane::load()?;
    let logger = start_kernel_log(&mut dp);
    static_services::apply(&mut dp, &plan)?;
    for iface in &args.uplinks {
        dp.attach_xdp(iface)?;
        info!("XDP attached to uplink {iface}");
    }
    for iface in &args.pod_interfaces {
        dp.attach_tc(iface)?;
        info!("tcx ingress attached to pod interface {iface}");
    }
    info!(
        "serving {} services; Ctrl-C or SIGTERM stops",
        plan.services.len()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let period = Duration::from_secs(args.stats_interval.max(1));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick(), if args.stats_interval > 0 => print_stats(&dp, &plan)?,
        }
    }
    print_stats(&dp, &plan)?;
    drop(logger);
    // Dropping the dataplane detaches the programs.
    Ok(())
}

fn print_stats(dp: &Dataplane, plan: &static_services::Plan) -> Result<()> {
    for (frontend, id, _) in &plan.services {
        let s = dp.service_stats(*id)?;
        println!(
            "{}/{:?}: {} packets {} bytes, {} reply packets {} reply bytes",
            frontend.addr, frontend.proto, s.packets, s.bytes, s.reply_packets, s.reply_bytes
        );
    }
    for (reason, n) in dp.drop_stats()? {
        if n > 0 {
            println!("drops {}: {n}", reason.name());
        }
    }
    Ok(())
}

/// Forwards the programs' aya-log records to this process's logger.
fn start_kernel_log(dp: &mut Dataplane) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(dp.ebpf_mut()) {
        Ok(l) => l,
        Err(e) => {
            warn!("kernel-side logging unavailable: {e}");
            return None;
        }
    };
    // SAFETY: the logger owns its ring buffer's fd for as long as it lives,
    // and the AsyncFd owns the logger.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!("kernel-side logging unavailable: polling the log ring: {e}");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
