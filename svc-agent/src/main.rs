//! `svc-agent`: the daemon and its kubectl-style command line.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use svc_agent::{
    agent::{self, Config, SourceConfig, unix_now},
    api::{self, Request, Response},
    apiserver::{Cidr, ServiceNetwork},
    dataplane::{Capacity, Pins, SockLbTarget, XdpForwarding},
    kubectl::{self, Output},
    maglev::{LoadBalancing, TableSize},
};
use svc_common::CtTimeouts;

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
    /// Load and attach the dataplane, and serve the Services of the
    /// Kubernetes API (or of a manifests directory).
    Run(Box<RunArgs>),
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Forwarding {
    Auto,
    On,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SocketLbScope {
    Node,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Balancing {
    Maglev,
    Hash,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Wide,
    Json,
    Yaml,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kubeconfig of the API server to watch (default: the in-cluster
    /// service account, or $KUBECONFIG).
    #[arg(long, conflicts_with = "manifests")]
    kubeconfig: Option<PathBuf>,
    /// The Node this agent serves (default: the host name; with
    /// --manifests, none: every endpoint is local).
    #[arg(long, env = "NODE_NAME")]
    hostname_override: Option<String>,
    /// Instead of an API server: a directory of Service, Pod and
    /// EndpointSlice manifests (watched), for clusters without one.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Uplinks (traffic from outside the node): get the XDP program, and
    /// tcx egress for the ICMP errors the node sends.
    #[arg(
        long,
        env = "SVC_AGENT_UPLINKS",
        value_delimiter = ',',
        required = true
    )]
    uplinks: Vec<String>,
    /// Node-side pod interfaces, names or globs (`veth*,cali*,lxc*`): get
    /// the tcx programs (ingress, and egress for ICMP errors the node
    /// sends), also when they appear later.
    #[arg(
        long,
        env = "SVC_AGENT_POD_INTERFACES",
        value_delimiter = ',',
        required = true
    )]
    pod_interfaces: Vec<String>,
    /// The node's addresses (default: the Node object's InternalIP and
    /// ExternalIP addresses, else the uplinks'): NodePorts answer there, and
    /// traffic from outside to other nodes' backends is SNATed to the first
    /// of each family.
    #[arg(long, env = "SVC_AGENT_NODE_IP", value_delimiter = ',')]
    node_ip: Vec<IpAddr>,
    /// NodePorts answer only on local addresses within these CIDRs
    /// (kube-proxy's flag; default: the node's addresses).
    #[arg(long, env = "SVC_AGENT_NODEPORT_ADDRESSES", value_delimiter = ',')]
    nodeport_addresses: Vec<Cidr>,
    /// Source ports for SNAT (above Linux's default ephemeral range, so they
    /// never clash with the node's own connections).
    #[arg(long, default_value = "61000-65535")]
    snat_port_range: String,
    /// How long an idle established TCP flow keeps its backend and
    /// translation (kube-proxy's flag and default).
    #[arg(long, default_value = "24h", value_parser = duration)]
    conntrack_tcp_timeout_established: Duration,
    /// The same once a FIN or RST was seen. Also how long a SNAT port rests
    /// after its flow closed, so a new flow never meets the backend's
    /// TIME_WAIT socket of the old one (60 s on Linux).
    #[arg(long, default_value = "60s", value_parser = duration)]
    conntrack_tcp_timeout_closing: Duration,
    /// The same for an idle UDP flow (kube-proxy's flag; our default is
    /// the kernel conntrack's).
    #[arg(long, default_value = "30s", value_parser = duration)]
    conntrack_udp_timeout: Duration,
    /// Whether XDP sends translated packets out of uplinks itself (FIB
    /// lookup, XDP_TX or redirect) or through the stack. auto: physical
    /// uplinks only (a veth's peer must run XDP or GRO to receive them).
    #[arg(long, value_enum, default_value = "auto")]
    xdp_forwarding: Forwarding,
    /// How a new flow picks its backend. maglev: from a per-frontend
    /// Maglev lookup table, so that when one of N backends comes or goes
    /// only about 1/N of new flows change backend. hash: the flow's hash
    /// modulo the backend count (most new flows change backend with it).
    /// Established flows keep theirs either way.
    #[arg(long, value_enum, default_value = "maglev")]
    load_balancing: Balancing,
    /// Entries of each Maglev table: a prime up to 65521 (such as 1021,
    /// 4093, 16381, 65521). Backends share new flows evenly when it is
    /// well above 100 times the largest backend count of a Service (1021:
    /// up to about 10); 2 bytes per entry per frontend.
    #[arg(long, default_value = "1021")]
    maglev_table_size: TableSize,
    /// /healthz and /livez, as kube-proxy serves them ("" to disable).
    #[arg(long, default_value = "0.0.0.0:10256")]
    healthz_bind_address: BindAddress,
    /// /metrics (Prometheus) and /proxyMode ("" to disable).
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_bind_address: BindAddress,
    /// How often the maps are checked against the desired state and
    /// repaired (e.g. 30s, 1m, 500ms); health is stale after twice this.
    #[arg(long, default_value = "30s", value_parser = duration)]
    sync_period: Duration,
    /// Manifests mode: service CIDR(s), at most one per family; the first
    /// is the primary.
    #[arg(long, value_delimiter = ',', default_value = "10.96.0.0/12")]
    service_cidr: Vec<Cidr>,
    /// Manifests mode: the nodePort range.
    #[arg(long, default_value = "30000-32767")]
    node_port_range: String,
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
    /// Socket-level load balancing for the node's own processes
    /// (hostNetwork pods, kubelet probes, node daemons), which XDP and tcx
    /// never see: the cgroup v2 directory whose processes get the
    /// connect/sendmsg/recvmsg/getpeername hooks. Default: the cgroup2
    /// root, /sys/fs/cgroup (or its unified/ on a hybrid v1/v2 host),
    /// skipped with a warning if it is not there; "" disables.
    #[arg(long, env = "SVC_AGENT_CGROUP_PATH")]
    cgroup_path: Option<String>,
    /// Map sizes, fixed when the maps are created (a changed size
    /// recreates that map empty at the next start, losing its flows).
    /// Frontends: service IP or NodePort address x port x protocol.
    #[arg(long, default_value_t = Capacity::default().frontends)]
    max_frontends: u32,
    /// Frontends plus, for each, its endpoints.
    #[arg(long, default_value_t = Capacity::default().service_slots)]
    max_service_slots: u32,
    /// Distinct endpoints (address and port) over all Services.
    #[arg(long, default_value_t = Capacity::default().backends)]
    max_endpoints: u32,
    /// Connection-tracking entries (two per flow; least recently used go
    /// first when full).
    #[arg(long, default_value_t = Capacity::default().conntrack)]
    max_conntrack: u32,
    /// Whose sockets the hooks translate: the node's own network namespace
    /// (pods keep the per-packet tcx path), or every namespace (pods'
    /// connections are translated once, at connect, which measured faster
    /// than per packet: `cargo xtask bench datapath`; what a pod's socket
    /// cannot decide, tcx still does).
    #[arg(
        long,
        value_enum,
        default_value = "all",
        env = "SVC_AGENT_SOCKET_LB_SCOPE"
    )]
    socket_lb_scope: SocketLbScope,
}

/// A listener's address; empty for none.
#[derive(Clone, Debug, PartialEq)]
struct BindAddress(Option<SocketAddr>);

impl std::str::FromStr for BindAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(Self(None));
        }
        s.parse()
            .map(|a| Self(Some(a)))
            .map_err(|e| format!("{s:?}: {e} (expected IP:PORT)"))
    }
}

/// "30s", "1m", "1h", "500ms".
/// Whole seconds (at least one), as the conntrack timestamps count.
fn seconds(d: Duration) -> Result<u32> {
    u32::try_from(d.as_secs().max(1)).context("a timeout of at most 136 years")
}

fn duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: expected e.g. 30s"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: the unit must be ms, s, m or h")),
    };
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Run(args) => run(*args),
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
    let source = match args.manifests {
        Some(dir) => SourceConfig::Manifests {
            dir,
            network: ServiceNetwork::new(
                args.service_cidr,
                port_range(&args.node_port_range, "--node-port-range")?,
            )?,
        },
        None => SourceConfig::Cluster {
            kubeconfig: args.kubeconfig,
        },
    };
    // Without an API server nothing names the node: unless told, every
    // endpoint of the manifests is taken as local.
    let node_name = match (args.hostname_override, &source) {
        (Some(n), _) => n,
        (None, SourceConfig::Manifests { .. }) => String::new(),
        (None, SourceConfig::Cluster { .. }) => host_name()?,
    }
    .to_lowercase();
    let config = Config {
        source,
        node_name,
        nodeport_addresses: args.nodeport_addresses,
        snat_ports: port_range(&args.snat_port_range, "--snat-port-range")?,
        ct_timeouts: CtTimeouts {
            tcp_established_s: seconds(args.conntrack_tcp_timeout_established)?,
            tcp_closing_s: seconds(args.conntrack_tcp_timeout_closing)?,
            udp_s: seconds(args.conntrack_udp_timeout)?,
            _pad: 0,
        },
        xdp_forwarding: match args.xdp_forwarding {
            Forwarding::Auto => XdpForwarding::Auto,
            Forwarding::On => XdpForwarding::On,
            Forwarding::Off => XdpForwarding::Off,
        },
        uplinks: args.uplinks,
        pod_interfaces: args.pod_interfaces,
        node_ips: args.node_ip,
        state_dir: args.state_dir,
        socket: args.socket,
        pins: Pins {
            dir: args.bpffs_dir,
        },
        healthz_addr: args.healthz_bind_address.0,
        metrics_addr: args.metrics_bind_address.0,
        sync_period: args.sync_period,
        capacity: Capacity {
            frontends: args.max_frontends,
            service_slots: args.max_service_slots,
            backends: args.max_endpoints,
            conntrack: args.max_conntrack,
        },
        load_balancing: match args.load_balancing {
            Balancing::Maglev => LoadBalancing::Maglev(args.maglev_table_size),
            Balancing::Hash => LoadBalancing::Hash,
        },
        sock_lb: match args.cgroup_path {
            None => Some(SockLbTarget {
                cgroup: SockLbTarget::DEFAULT.into(),
                explicit: false,
                all_namespaces: args.socket_lb_scope == SocketLbScope::All,
            }),
            Some(p) if p.is_empty() => None,
            Some(p) => Some(SockLbTarget {
                cgroup: p.into(),
                explicit: true,
                all_namespaces: args.socket_lb_scope == SocketLbScope::All,
            }),
        },
    };
    tokio::runtime::Runtime::new()?.block_on(agent::run(config))
}

/// "LOW-HIGH", inclusive.
fn port_range(s: &str, flag: &str) -> Result<std::ops::RangeInclusive<u16>> {
    let (lo, hi) = s
        .split_once('-')
        .with_context(|| format!("{flag}: expected LOW-HIGH"))?;
    let (lo, hi) = (lo.trim().parse::<u16>()?, hi.trim().parse::<u16>()?);
    if lo > hi || lo == 0 {
        bail!("{flag}: {s:?} is empty or starts at 0");
    }
    Ok(lo..=hi)
}

/// The kernel's host name, as kube-proxy defaults its node name to.
fn host_name() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the host name (or pass --hostname-override / NODE_NAME)")?;
    Ok(name.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_addresses_parse() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(duration("0s").is_err());
        assert!(duration("30").is_err());
        assert_eq!("".parse(), Ok(BindAddress(None)));
        assert_eq!(
            "0.0.0.0:10256".parse(),
            Ok(BindAddress(Some("0.0.0.0:10256".parse().unwrap())))
        );
        assert!("10256".parse::<BindAddress>().is_err());
    }

    #[test]
    fn the_command_line_is_consistent_and_parses() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "svc-agent",
            "run",
            "--uplinks",
            "eth0",
            "--pod-interfaces",
            "veth*",
            "--healthz-bind-address",
            "",
            "--sync-period",
            "1s",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.healthz_bind_address, BindAddress(None));
        assert_eq!(
            args.metrics_bind_address,
            BindAddress(Some("127.0.0.1:10249".parse().unwrap()))
        );
        assert_eq!(args.sync_period, Duration::from_secs(1));
        assert_eq!(args.load_balancing, Balancing::Maglev);
        assert_eq!(args.maglev_table_size, TableSize::DEFAULT);
        let run = |extra: &[&str]| {
            let base = [
                "svc-agent",
                "run",
                "--uplinks",
                "eth0",
                "--pod-interfaces",
                "veth*",
            ];
            Cli::try_parse_from(base.iter().chain(extra))
        };
        assert!(run(&["--load-balancing", "hash", "--maglev-table-size", "65521"]).is_ok());
        for bad in ["1024", "65537", "0"] {
            assert!(run(&["--maglev-table-size", bad]).is_err(), "{bad}");
        }
        assert!(run(&["--load-balancing", "random"]).is_err());
    }
}
