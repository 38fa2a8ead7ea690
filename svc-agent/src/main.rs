//! `svc-agent`: the daemon and its kubectl-style command line.
use std::{net::IpAddr, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use svc_agent::{
    agent::{self, Config, unix_now},
    api::{self, Request, Response},
    apiserver::{Cidr, ServiceNetwork},
    dataplane::Pins,
    kubectl::{self, Output},
};

const DEFAULT_SOCKET: &str = "/run/svc-agent/agent.sock";
const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/svc-agent";
const DEFAULT_STATE_DIR: &str = "/var/lib/svc-agent";

#[derive(Parser)]
#[command(version, about = "eBPF Kubernetes Service proxy agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the dataplane, and serve the Services in a manifests directory.
    Run(RunArgs),
    /// Display services, as `kubectl get` does.
    Get {
        #[arg(value_parser = ["services", "service", "svc"])]
        resource: String,
        /// Only this namespace (default: "default").
        #[arg(short, long)]
        namespace: Option<String>,
        /// All namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short, long)]
        output: Option<OutputFormat>,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Show a service in detail, as `kubectl describe` does.
    Describe {
        #[arg(value_parser = ["services", "service", "svc"])]
        resource: String,
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Detach the programs and remove every pin and the state (stop the agent first).
    Cleanup {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
        bpffs_dir: PathBuf,
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Wide,
    Json,
    Yaml,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Directory of Service, Pod and EndpointSlice manifests (watched).
    #[arg(long)]
    manifests: PathBuf,
    /// Uplinks (traffic from outside the node): get the XDP program.
    #[arg(long, value_delimiter = ',', required = true)]
    uplinks: Vec<String>,
    /// Node-side pod interfaces, names or globs (`veth*,cali*,lxc*`): get
    /// the tcx program, also when they appear later.
    #[arg(long, value_delimiter = ',', required = true)]
    pod_interfaces: Vec<String>,
    /// Node addresses NodePorts answer on (default: the uplinks').
    #[arg(long, value_delimiter = ',')]
    node_ip: Vec<IpAddr>,
    /// Service CIDR(s), at most one per family; the first is the primary.
    #[arg(long, value_delimiter = ',', default_value = "10.96.0.0/12")]
    service_cidr: Vec<Cidr>,
    #[arg(long, default_value = "30000-32767")]
    node_port_range: String,
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Run(args) => run(args),
        Command::Get {
            namespace,
            all_namespaces,
            output,
            socket,
            ..
        } => {
            let namespace = if all_namespaces {
                None
            } else {
                Some(namespace.unwrap_or_else(|| "default".into()))
            };
            let Response::Services(views) = api::ask(
                &socket,
                &Request::GetServices {
                    namespace: namespace.clone(),
                },
            )?
            else {
                bail!("unexpected answer from the agent");
            };
            if views.is_empty() && output.is_none() {
                match namespace {
                    Some(ns) => eprintln!("No resources found in {ns} namespace."),
                    None => eprintln!("No resources found"),
                }
                return Ok(());
            }
            let output = match output {
                None => Output::Table,
                Some(OutputFormat::Wide) => Output::Wide,
                Some(OutputFormat::Json) => Output::Json,
                Some(OutputFormat::Yaml) => Output::Yaml,
            };
            print!(
                "{}",
                kubectl::get_services(&views, output, all_namespaces, unix_now())
            );
            Ok(())
        }
        Command::Describe {
            name,
            namespace,
            socket,
            ..
        } => {
            let req = Request::DescribeService {
                namespace,
                name: name.clone(),
            };
            let Response::Service { view, events } = api::ask(&socket, &req)? else {
                bail!("unexpected answer from the agent");
            };
            match view {
                Some(v) => print!("{}", kubectl::describe_service(&v, unix_now())),
                None => {
                    for e in &events {
                        eprintln!("{}: {}", e.reason, e.message);
                    }
                    bail!("Error from server (NotFound): services \"{name}\" not found");
                }
            }
            Ok(())
        }
        Command::Cleanup {
            bpffs_dir,
            state_dir,
        } => {
            let removed = Pins {
                dir: bpffs_dir.clone(),
            }
            .remove_all()?;
            if state_dir.exists() {
                std::fs::remove_dir_all(&state_dir)
                    .with_context(|| format!("removing {}", state_dir.display()))?;
            }
            println!(
                "removed {removed} pins under {} and the state in {}",
                bpffs_dir.display(),
                state_dir.display()
            );
            Ok(())
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    let (lo, hi) = args
        .node_port_range
        .split_once('-')
        .context("--node-port-range: expected LOW-HIGH")?;
    let node_ports = lo.trim().parse::<u16>()?..=hi.trim().parse::<u16>()?;
    let config = Config {
        manifests: args.manifests,
        uplinks: args.uplinks,
        pod_interfaces: args.pod_interfaces,
        node_ips: args.node_ip,
        network: ServiceNetwork::new(args.service_cidr, node_ports)?,
        state_dir: args.state_dir,
        socket: args.socket,
        pins: Pins {
            dir: args.bpffs_dir,
        },
    };
    tokio::runtime::Runtime::new()?.block_on(agent::run(config))
}
