//! Traffic through the sandbox: a client pod to a ClusterIP whose
//! backends are a server pod.
//!
//! * `datapath`: new connections per second (one request per TCP
//!   connection, like netperf TCP_CRR), requests per second on kept
//!   connections (TCP_RR), UDP requests per second (UDP_RR), and bulk TCP
//!   (iperf3), from two client threads, through five modes on the same
//!   topology in interleaved rounds: our tc program on the pod veths;
//!   the same plus our socket hooks (connections translated at connect);
//!   kube-proxy's iptables rules; kube-proxy's nftables rules; and pod to
//!   pod with nothing in between (the floor every mode is a ratio to). At
//!   1, 1k and 10k Services, the probed one last in kube-proxy's lists.
//! * `throughput`: iperf3 through the tc program against pod to pod.
//! * `nodeport`: NodePort to a remote backend, XDP forwarding against the
//!   kernel forwarding.
//!
//! The client and servers are threads of this process that entered the
//! pods' namespaces (setns), so nothing but the measured path (and
//! iperf3) runs per request.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use svc_agent::dataplane::BASELINE_OBJECT;

use super::{
    Ctx, Row, count_label,
    kube_proxy_rules::{self, NodeConfig, ServicePort},
    median, plot,
    report::{out_dir, table},
    run_timed,
};
use crate::{
    netns::{NetNs, sh},
    sandbox::Sandbox,
    static_services::StaticService,
};

const IPERF_SECONDS: &str = "4";
const IPERF_ROUNDS: usize = 3;

/// The pods: client 10.244.1.10, server 10.244.1.21.
const CLIENT_POD: u8 = 10;
const SERVER_POD: u8 = 21;
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, SERVER_POD);
/// The probed Service's ClusterIP: port 80 (TCP and UDP) to the server's
/// ports 7000 and 7001 (two endpoints), port 5201 to iperf3.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const ECHO_PORTS: [u16; 2] = [7000, 7001];
const IPERF_PORT: u16 = 5201;
const CLIENT_THREADS: usize = 2;

/// The four ways from the client pod to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ebpf,
    /// The socket hooks translate the client pod's connections at connect
    /// (tcx stays attached, for what sockets do not cover).
    Sockets,
    Iptables,
    Nftables,
    Direct,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::Ebpf,
        Mode::Sockets,
        Mode::Iptables,
        Mode::Nftables,
        Mode::Direct,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Ebpf => "svc-proxy (tcx)",
            Mode::Sockets => "svc-proxy (socket hooks)",
            Mode::Iptables => "kube-proxy iptables",
            Mode::Nftables => "kube-proxy nftables",
            Mode::Direct => "direct pod to pod",
        }
    }
}

/// The measurements, in table order.
const METRICS: [(&str, &str); 4] = [
    ("new connections/s", "TCP_CRR"),
    ("requests/s, kept connection", "TCP_RR"),
    ("UDP requests/s", "UDP_RR"),
    ("bulk TCP Gb/s", "iperf3"),
];

// ---------------------------------------------------------------------
// Threads in namespaces, the servers and the clients.

/// Moves the calling thread into network namespace `name`.
fn enter(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a valid namespace fd affects only this thread.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// SO_RCVTIMEO on a listening socket: accept() gives up after `t`.
fn accept_timeout(l: &TcpListener, t: Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid fd and a timeval of the size given.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(l),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Echo servers in the server pod: TCP and UDP on `ECHO_PORTS` (each
/// byte read is written back), and iperf3 on `IPERF_PORT`.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    iperf: std::process::Child,
}

impl Servers {
    fn start(ns: &NetNs) -> Result<Self> {
        let (listeners, udps) = ns.enter(|| {
            let mut l = Vec::new();
            let mut u = Vec::new();
            for port in ECHO_PORTS {
                l.push(TcpListener::bind(("0.0.0.0", port))?);
                u.push(UdpSocket::bind(("0.0.0.0", port))?);
            }
            Ok((l, u))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for l in listeners {
            accept_timeout(&l, Duration::from_millis(200))?;
            // Enough workers for every client thread's kept connection
            // plus connections in flight.
            for _ in 0..4 {
                let l = l.try_clone()?;
                let stop = stop.clone();
                threads.push(std::thread::spawn(move || tcp_worker(&l, &stop)));
            }
        }
        for u in udps {
            u.set_read_timeout(Some(Duration::from_millis(200)))?;
            for _ in 0..2 {
                let u = u.try_clone()?;
                let stop = stop.clone();
                threads.push(std::thread::spawn(move || udp_worker(&u, &stop)));
            }
        }
        let iperf = ns
            .command("iperf3")
            .args(["-s", "-p", &IPERF_PORT.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self {
            stop,
            threads,
            iperf,
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = self.iperf.kill();
        let _ = self.iperf.wait();
    }
}

fn tcp_worker(l: &TcpListener, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut s, _)) = l.accept() else { continue };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
}

fn udp_worker(u: &UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = u.recv_from(&mut buf) {
            let _ = u.send_to(&buf[..n], from);
        }
    }
}

/// What a client loop counted.
#[derive(Clone, Copy, Debug, Default)]
struct Count {
    ok: u64,
    failed: u64,
}

/// Runs `f(thread index, deadline)` on `CLIENT_THREADS` threads in the
/// client's namespace; sums their counts; returns (per second, failed).
fn clients(
    client_ns: &str,
    secs: f64,
    f: impl Fn(usize, Instant) -> Result<Count> + Sync,
) -> Result<(f64, u64)> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let counts: Vec<Result<Count>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENT_THREADS)
            .map(|i| {
                let f = &f;
                s.spawn(move || {
                    enter(client_ns)?;
                    f(i, deadline)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut total = Count::default();
    for c in counts {
        let c = c?;
        total.ok += c.ok;
        total.failed += c.failed;
    }
    Ok((total.ok as f64 / elapsed, total.failed))
}

/// One request per connection: connect, send a byte, read it back, close.
fn crr(client_ns: &str, targets: &[SocketAddr], secs: f64) -> Result<(f64, u64)> {
    clients(client_ns, secs, |i, deadline| {
        let mut c = Count::default();
        let mut j = i;
        let mut byte = [0u8; 1];
        while Instant::now() < deadline {
            j += 1;
            let target = targets[j % targets.len()];
            let ok = (|| -> std::io::Result<()> {
                let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                s.write_all(b"x")?;
                s.read_exact(&mut byte)?;
                Ok(())
            })();
            match ok {
                Ok(()) => c.ok += 1,
                Err(_) => c.failed += 1,
            }
        }
        Ok(c)
    })
}

/// Requests on one kept connection per thread.
fn rr(client_ns: &str, targets: &[SocketAddr], secs: f64) -> Result<(f64, u64)> {
    clients(client_ns, secs, |i, deadline| {
        let target = targets[i % targets.len()];
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))
            .with_context(|| format!("connecting to {target}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut c = Count::default();
        let mut byte = [0u8; 1];
        while Instant::now() < deadline {
            s.write_all(b"x")?;
            s.read_exact(&mut byte)?;
            c.ok += 1;
        }
        Ok(c)
    })
}

/// UDP requests, one socket (flow) per thread; a lost answer is counted
/// after 200 ms.
fn udp_rr(client_ns: &str, targets: &[SocketAddr], secs: f64) -> Result<(f64, u64)> {
    clients(client_ns, secs, |i, deadline| {
        let target = targets[i % targets.len()];
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(target)?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut c = Count::default();
        let mut buf = [0u8; 16];
        while Instant::now() < deadline {
            s.send(b"x")?;
            match s.recv(&mut buf) {
                Ok(_) => c.ok += 1,
                Err(_) => c.failed += 1,
            }
        }
        Ok(c)
    })
}

fn bulk(client: &NetNs, target: SocketAddr, secs: f64) -> Result<f64> {
    let out = sh(client.command("iperf3").args([
        "-c",
        &target.ip().to_string(),
        "-p",
        &target.port().to_string(),
        "-t",
        &format!("{secs}"),
        "-J",
    ]))?;
    iperf_json_gbps(&String::from_utf8_lossy(&out.stdout))
}

/// One TCP and one UDP request through `tcp` and `udp`: the path works.
fn sanity(client_ns: &str, tcp: SocketAddr, udp: SocketAddr) -> Result<()> {
    let r: Result<()> = std::thread::scope(|s| {
        s.spawn(|| {
            enter(client_ns)?;
            let mut t = TcpStream::connect_timeout(&tcp, Duration::from_secs(3))
                .with_context(|| format!("TCP to {tcp}"))?;
            t.set_read_timeout(Some(Duration::from_secs(3)))?;
            t.write_all(b"s")?;
            let mut b = [0u8; 1];
            t.read_exact(&mut b)
                .with_context(|| format!("TCP answer from {tcp}"))?;
            let u = UdpSocket::bind("0.0.0.0:0")?;
            u.connect(udp)?;
            u.set_read_timeout(Some(Duration::from_secs(1)))?;
            for attempt in 0..3 {
                u.send(b"s")?;
                if u.recv(&mut b).is_ok() {
                    return Ok(());
                }
                if attempt == 2 {
                    bail!("no UDP answer from {udp}");
                }
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    r
}

// ---------------------------------------------------------------------
// The Services, as kube-proxy sees them and as our fixtures program them.

/// `n` Services: `n - 1` fillers (one port, one endpoint that nothing
/// reaches) and, last, the probed one: TCP and UDP port 80 to the
/// server's two echo ports, and port 5201 to iperf3.
pub fn services(n: usize) -> Vec<ServicePort> {
    let mut out: Vec<ServicePort> = (0..n.saturating_sub(1) as u32)
        .map(|i| ServicePort {
            namespace: "bench".into(),
            name: format!("svc-{i}"),
            port_name: "http".into(),
            protocol: "tcp",
            cluster_ip: Ipv4Addr::from(0x0a60_0100 + i),
            port: 80,
            node_port: None,
            endpoints: vec![SocketAddrV4::new(Ipv4Addr::from(0x0af5_0000 + i), 8080)],
        })
        .collect();
    let echo = |proto: &'static str, port_name: &str| ServicePort {
        namespace: "bench".into(),
        name: "probe".into(),
        port_name: port_name.into(),
        protocol: proto,
        cluster_ip: VIP,
        port: 80,
        node_port: None,
        endpoints: ECHO_PORTS
            .iter()
            .map(|p| SocketAddrV4::new(SERVER_IP, *p))
            .collect(),
    };
    out.push(echo("tcp", "tcp"));
    out.push(echo("udp", "udp"));
    out.push(ServicePort {
        port_name: "iperf".into(),
        port: IPERF_PORT,
        node_port: None,
        endpoints: vec![SocketAddrV4::new(SERVER_IP, IPERF_PORT)],
        ..echo("tcp", "iperf")
    });
    out
}

/// The same Services for our dataplane.
pub fn static_services(services: &[ServicePort]) -> Result<Vec<StaticService>> {
    services
        .iter()
        .map(|s| {
            let backends: Vec<String> = s.endpoints.iter().map(|e| e.to_string()).collect();
            format!(
                "{}:{}/{}={}",
                s.cluster_ip,
                s.port,
                s.protocol,
                backends.join(",")
            )
            .parse()
        })
        .collect()
}

// ---------------------------------------------------------------------
// Modes in the node namespace.

/// Puts kube-proxy's iptables rules in `ns`: its jump rules one by one
/// (as it ensures them), then the restore input; returns how long the
/// restore took.
pub fn load_iptables(ns: &NetNs, restore: &Path, limit: Duration) -> Result<Option<Duration>> {
    load_iptables_with(ns, "iptables", "iptables-restore", restore, limit)
}

/// Like `load_iptables`, with another iptables backend's commands
/// (`iptables-legacy`, `iptables-legacy-restore`).
pub fn load_iptables_with(
    ns: &NetNs,
    iptables: &str,
    restore_cmd: &str,
    restore: &Path,
    limit: Duration,
) -> Result<Option<Duration>> {
    for (table, chain, args) in kube_proxy_rules::iptables_jump_rules() {
        // EnsureChain: -N fails if it exists, which is fine.
        let _ = sh(ns.command(iptables).args(["-w", "-t", table, "-N", chain]));
        let mut cmd = ns.command(iptables);
        cmd.args(["-w", "-t", table]).args(&args);
        sh(&mut cmd)?;
    }
    run_timed(
        ns.command(restore_cmd)
            .args(["-w", "--noflush", "--counters"]),
        Some(restore),
        limit,
    )
}

/// Loads kube-proxy's nftables transaction; returns how long it took.
pub fn load_nft(ns: &NetNs, ruleset: &Path, limit: Duration) -> Result<Option<Duration>> {
    run_timed(ns.command("nft").args(["-f"]).arg(ruleset), None, limit)
}

/// Leaves `ns` without rules or connection tracking state: iptables
/// chains flushed and deleted, every nftables table (iptables-nft's too)
/// gone, conntrack emptied.
pub fn clean_netfilter(ns: &NetNs) -> Result<()> {
    for table in ["nat", "filter"] {
        for op in ["-F", "-X"] {
            let _ = sh(ns.command("iptables").args(["-w", "-t", table, op]));
            let _ = sh(ns.command("iptables-legacy").args(["-w", "-t", table, op]));
        }
    }
    ns.run(&["nft", "flush", "ruleset"])?;
    // "conntrack -F" fails when nothing was ever tracked here.
    let _ = sh(ns.command("conntrack").arg("-F"));
    let left = ns.run(&["nft", "list", "ruleset"])?;
    if !left.trim().is_empty() {
        bail!("rules left in {} after cleaning:\n{left}", ns.name());
    }
    Ok(())
}

// ---------------------------------------------------------------------
// The part.

struct Plan {
    sizes: Vec<usize>,
    rounds: usize,
    crr_s: f64,
    rr_s: f64,
    udp_s: f64,
    bulk_s: f64,
}

/// results[size][mode][metric] = samples (one per round)
type Samples = Vec<Vec<[Vec<f64>; 4]>>;

pub fn datapath(ctx: &mut Ctx) -> Result<()> {
    ctx.section("Data path: client pod -> ClusterIP, five modes");
    let plan = if ctx.quick {
        Plan {
            sizes: vec![1, 1_000],
            rounds: 1,
            crr_s: 1.0,
            rr_s: 1.0,
            udp_s: 1.0,
            bulk_s: 1.0,
        }
    } else {
        Plan {
            sizes: vec![1, 1_000, 10_000],
            rounds: 3,
            crr_s: 2.0,
            rr_s: 1.5,
            udp_s: 1.5,
            bulk_s: 2.0,
        }
    };
    ctx.line(format!(
        "{} client threads; {} round(s) per size, modes interleaved; CRR {} s, RR {} s, UDP {} s, iperf3 {} s per mode and round",
        CLIENT_THREADS, plan.rounds, plan.crr_s, plan.rr_s, plan.udp_s, plan.bulk_s
    ));
    let mut sb = Sandbox::new("bdp")?;
    sb.add_pod("client", CLIENT_POD)?;
    sb.add_pod("server", SERVER_POD)?;
    let client_ns = sb.pod("client").ns.name().to_string();
    for pod in ["client", "server"] {
        // No TIME_WAIT sockets: a reused client port would meet a stale one
        // and its SYN would stall for a second. All client ports usable.
        sb.pod(pod).ns.run(&[
            "sysctl",
            "-qw",
            "net.ipv4.tcp_max_tw_buckets=0",
            "net.ipv4.ip_local_port_range=1024 65000",
        ])?;
    }
    // This process (whose threads are the clients) in a cgroup of its own,
    // for the socket hooks to attach to without touching anything else.
    let cgroup = crate::cgroup::TestCgroup::new()?;
    cgroup.enter()?;
    let _servers = Servers::start(&sb.pod("server").ns)?;
    let scratch = std::env::temp_dir().join(format!("svc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = run_sizes(ctx, &plan, &sb, &client_ns, &scratch, cgroup.host_path());
    let _ = std::fs::remove_dir_all(&scratch);
    let (samples, loads) = result?;
    report_datapath(ctx, &plan, &samples, &loads)
}

/// Per size: (iptables-restore s, nft -f s), medians over rounds.
type Loads = Vec<(f64, f64)>;

fn run_sizes(
    ctx: &mut Ctx,
    plan: &Plan,
    sb: &Sandbox,
    client_ns: &str,
    scratch: &Path,
    cgroup: &Path,
) -> Result<(Samples, Loads)> {
    let node = &sb.node;
    let mut samples: Samples = Vec::new();
    let mut loads: Loads = Vec::new();
    let direct_tcp: Vec<SocketAddr> = ECHO_PORTS
        .iter()
        .map(|p| SocketAddr::from((SERVER_IP, *p)))
        .collect();
    let vip_tcp = vec![SocketAddr::from((VIP, 80))];
    for &n in &plan.sizes {
        let svcs = services(n);
        let specs = static_services(&svcs)?;
        let cfg = NodeConfig::default();
        let ipt: PathBuf = scratch.join(format!("iptables-{n}.txt"));
        let nft: PathBuf = scratch.join(format!("nft-{n}.txt"));
        std::fs::write(&ipt, kube_proxy_rules::iptables_restore(&svcs, &cfg))?;
        std::fs::write(&nft, kube_proxy_rules::nft_ruleset(&svcs, &cfg))?;
        let mut per_mode: Vec<[Vec<f64>; 4]> = vec![Default::default(); Mode::ALL.len()];
        let mut hooks = Vec::new();
        let (mut ipt_s, mut nft_s) = (Vec::new(), Vec::new());
        clean_netfilter(node)?;
        for round in 0..plan.rounds {
            // Interleaved, starting with a different mode each round.
            for k in 0..Mode::ALL.len() {
                let mi = (k + round) % Mode::ALL.len();
                let mode = Mode::ALL[mi];
                let mut dp = None;
                let setup = Instant::now();
                match mode {
                    Mode::Direct => {}
                    Mode::Ebpf | Mode::Sockets => {
                        let mut d = sb.attach_dataplane()?;
                        crate::static_services::apply(&mut d, &specs)?;
                        if mode == Mode::Sockets {
                            hooks = d.attach_sock_hooks(cgroup, true)?;
                        }
                        dp = Some(d);
                    }
                    Mode::Iptables => {
                        let t = load_iptables(node, &ipt, Duration::from_secs(300))?
                            .context("iptables-restore took over 300 s")?;
                        ipt_s.push(t.as_secs_f64());
                    }
                    Mode::Nftables => {
                        let t = load_nft(node, &nft, Duration::from_secs(300))?
                            .context("nft -f took over 300 s")?;
                        nft_s.push(t.as_secs_f64());
                    }
                }
                let setup_s = setup.elapsed().as_secs_f64();
                let (tcp, udp, iperf) = if mode == Mode::Direct {
                    (
                        direct_tcp.clone(),
                        direct_tcp.clone(),
                        SocketAddr::from((SERVER_IP, IPERF_PORT)),
                    )
                } else {
                    (
                        vip_tcp.clone(),
                        vip_tcp.clone(),
                        SocketAddr::from((VIP, IPERF_PORT)),
                    )
                };
                let measured = (|| -> Result<[(f64, u64); 4]> {
                    sanity(client_ns, tcp[0], udp[0])
                        .with_context(|| format!("{} does not reach the server", mode.name()))?;
                    Ok([
                        crr(client_ns, &tcp, plan.crr_s)?,
                        rr(client_ns, &tcp, plan.rr_s)?,
                        udp_rr(client_ns, &udp, plan.udp_s)?,
                        (bulk(&sb.pod("client").ns, iperf, plan.bulk_s)?, 0),
                    ])
                })();
                hooks.clear();
                drop(dp); // detaches our programs
                clean_netfilter(node)?;
                let m = measured?;
                ctx.line(format!(
                    "{:>4} svc  round {}  {:<20} {:>8.0} conn/s ({} failed)  {:>8.0} req/s  {:>8.0} UDP req/s ({} lost)  {:>6.2} Gb/s   (setup {:.1} s)",
                    count_label(n),
                    round + 1,
                    mode.name(),
                    m[0].0,
                    m[0].1,
                    m[1].0,
                    m[2].0,
                    m[2].1,
                    m[3].0,
                    setup_s
                ));
                for (k, (v, _)) in m.iter().enumerate() {
                    per_mode[mi][k].push(*v);
                }
            }
        }
        samples.push(per_mode);
        loads.push((median(ipt_s), median(nft_s)));
    }
    Ok((samples, loads))
}

fn report_datapath(ctx: &mut Ctx, plan: &Plan, samples: &Samples, loads: &Loads) -> Result<()> {
    let di = Mode::ALL.iter().position(|m| *m == Mode::Direct).unwrap();
    // ratio[size][mode][metric]
    let med = |s: usize, m: usize, k: usize| median(samples[s][m][k].clone());
    let mut rows = Vec::new();
    for (s, &n) in plan.sizes.iter().enumerate() {
        for (m, mode) in Mode::ALL.iter().enumerate() {
            let mut row = vec![count_label(n), mode.name().to_string()];
            for k in 0..METRICS.len() {
                let v = med(s, m, k);
                let unit = if k == 3 {
                    format!("{v:.2}")
                } else {
                    format!("{v:.0}")
                };
                row.push(format!("{unit} ({:.2}x)", v / med(s, di, k)));
            }
            rows.push(row);
        }
    }
    let header = [
        "services",
        "mode",
        "new conn/s (TCP_CRR)",
        "req/s kept conn (TCP_RR)",
        "UDP req/s (UDP_RR)",
        "bulk Gb/s (iperf3)",
    ];
    let load_rows: Vec<Vec<String>> = plan
        .sizes
        .iter()
        .zip(loads)
        .map(|(n, (i, f))| vec![count_label(*n), format!("{i:.2} s"), format!("{f:.2} s")])
        .collect();
    ctx.report.markdown(&format!(
        "A single node (`Sandbox`): client pod 10.244.1.10 and server pod 10.244.1.21 on veths of the node namespace, routed. The probed Service (ClusterIP {VIP}) has TCP and UDP port 80 with two endpoints (the server's ports {} and {}) and port {IPERF_PORT} to iperf3; the other Services are fillers with one endpoint each, listed before it (kube-proxy's KUBE-SERVICES is walked in order, so the probe is the worst case). Modes, on the same pods and servers, one after the other in each round (the first mode rotating), medians over {} round(s), ratios to direct pod to pod:\n\n\
        * **svc-proxy (tcx)**: our programs attached as the agent attaches them (`Sandbox::attach_dataplane`: tcx on the pod veths, XDP on the uplink), the Services programmed through the agent's reconciler;\n\
        * **svc-proxy (socket hooks)**: the same, plus the cgroup socket hooks on a cgroup holding the client (`Dataplane::attach_sock_hooks`, every namespace, as `--socket-lb-scope all`): connections are translated once, at connect, and their packets cross the pod veths' tcx hook already addressed to a backend;\n\
        * **kube-proxy iptables**: kube-proxy's jump rules and full-sync `iptables-restore --noflush` input in the node namespace (`{}`);\n\
        * **kube-proxy nftables**: kube-proxy's `nft -f` transaction for table `ip kube-proxy` (`{}`);\n\
        * **direct**: the client talks to the server's own address; nothing translates (the client threads alternate between the two ports).\n\n\
        Between modes the node namespace's rules are removed (iptables -F/-X, `nft flush ruleset`), conntrack flushed (`conntrack -F`) and our programs detached. Clients: {CLIENT_THREADS} threads in the client pod; TCP_CRR opens a connection per request (1 byte each way), TCP_RR keeps one connection per thread, UDP_RR one socket per thread (200 ms timeout counts a loss). Client and server namespaces keep no TIME_WAIT sockets (`net.ipv4.tcp_max_tw_buckets=0`). Everything shares the machine's CPUs, so absolute rates are low and the ratios are what to read.\n\n{}\n\
        Loading the rules of each size (median over rounds; one endpoint per filler Service):\n\n{}",
        ECHO_PORTS[0],
        ECHO_PORTS[1],
        plan.rounds,
        super::tool_version("iptables"),
        super::tool_version("nft"),
        table(&header, &rows),
        table(&["services", "iptables-restore", "nft -f"], &load_rows),
    ));
    // Plots: ratio to direct per metric.
    let groups: Vec<String> = plan
        .sizes
        .iter()
        .map(|n| format!("{} Services", count_label(*n)))
        .collect();
    std::fs::create_dir_all(out_dir())?;
    for (k, (metric, tool)) in METRICS.iter().enumerate() {
        let series: Vec<(String, Vec<f64>)> = Mode::ALL
            .iter()
            .enumerate()
            .map(|(m, mode)| {
                (
                    mode.name().to_string(),
                    (0..plan.sizes.len())
                        .map(|s| med(s, m, k) / med(s, di, k))
                        .collect(),
                )
            })
            .collect();
        let file = format!("datapath-{}.png", tool.to_lowercase());
        plot::grouped_bars(
            &out_dir().join(&file),
            &format!("{metric} ({tool}), ratio to direct pod to pod"),
            "ratio to direct",
            &groups,
            &series,
            &|v| format!("{v:.2}"),
        )?;
        ctx.report.plot(metric, &file);
    }
    // Summary: new connections at every size; the others at the largest.
    let last = plan.sizes.len() - 1;
    let add = |ctx: &mut Ctx, s: usize, k: usize| {
        let cell = |m: Mode| {
            let mi = Mode::ALL.iter().position(|x| *x == m).unwrap();
            format!("{:.2}x", med(s, mi, k) / med(s, di, k))
        };
        let d = med(s, di, k);
        ctx.report.row(Row {
            area: "data path".into(),
            measure: format!(
                "{} at {}, ratio to direct",
                METRICS[k].0,
                services_label(plan.sizes[s])
            ),
            ours: format!("{} tcx, {} sockets", cell(Mode::Ebpf), cell(Mode::Sockets)),
            iptables: cell(Mode::Iptables),
            nftables: cell(Mode::Nftables),
            baseline: if k == 3 {
                format!("direct: {d:.2} Gb/s")
            } else {
                format!("direct: {d:.0}/s")
            },
        });
    };
    for s in 0..plan.sizes.len() {
        add(ctx, s, 0);
    }
    for k in 1..METRICS.len() {
        add(ctx, last, k);
    }
    ctx.report.row(Row {
        area: "data path".into(),
        measure: format!(
            "loading {} Services x 1 endpoint into the node",
            count_label(plan.sizes[last])
        ),
        ours: "(reconciler + map writes: see control plane)".into(),
        iptables: format!("{:.2} s", loads[last].0),
        nftables: format!("{:.2} s", loads[last].1),
        baseline: String::new(),
    });
    Ok(())
}

fn services_label(n: usize) -> String {
    if n == 1 {
        "1 Service".into()
    } else {
        format!("{} Services", count_label(n))
    }
}

// ---------------------------------------------------------------------
// The older parts.

/// iperf3 bulk TCP from a client pod: to a ClusterIP (programs
/// attached, with and without the egress program, which only translates
/// ICMP errors) against pod to pod with nothing attached, and pod to pod
/// with the programs attached (their cost on non-service traffic).
pub fn throughput(ctx: &mut Ctx) -> Result<()> {
    ctx.section("iperf3 bulk TCP through tcx (throughput)");
    ctx.line(format!(
        "iperf3 bulk TCP, client pod -> backend pod ({IPERF_SECONDS} s each, median of {IPERF_ROUNDS} rounds)"
    ));
    let mut sb = Sandbox::new("bench")?;
    sb.add_pod("client", 10)?;
    sb.add_pod("server", 21)?;
    let server = sb.pod("server");
    let mut iperf = server
        .ns
        .command("iperf3")
        .args(["-s", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));

    let (mut plain, mut via_vip, mut attached_direct) = (Vec::new(), Vec::new(), Vec::new());
    let mut via_vip_no_egress = Vec::new();
    let result = (|| -> Result<()> {
        for _ in 0..IPERF_ROUNDS {
            plain.push(iperf_gbps(&sb, "10.244.1.21")?);
            for egress in [false, true] {
                let mut dp = sb.attach_dataplane_with(egress)?;
                let spec = "10.96.0.10:5201/tcp=10.244.1.21:5201".parse()?;
                crate::static_services::apply(&mut dp, &[spec])?;
                let gbps = iperf_gbps(&sb, "10.96.0.10")?;
                if egress {
                    via_vip.push(gbps);
                    attached_direct.push(iperf_gbps(&sb, "10.244.1.21")?);
                } else {
                    via_vip_no_egress.push(gbps);
                }
                drop(dp); // detaches
            }
        }
        Ok(())
    })();
    let _ = iperf.kill();
    let _ = iperf.wait();
    result?;
    let p = median(plain);
    let mut rows = Vec::new();
    for (name, v) in [
        ("pod -> pod, nothing attached", p),
        ("pod -> ClusterIP (tcx DNAT)", median(via_vip)),
        (
            "pod -> ClusterIP, no egress prog",
            median(via_vip_no_egress),
        ),
        ("pod -> pod, programs attached", median(attached_direct)),
    ] {
        ctx.line(format!("{name:<32} {v:>7.2} Gb/s  {:>5.2}x", v / p));
        rows.push(vec![
            name.to_string(),
            format!("{v:.2}"),
            format!("{:.2}x", v / p),
        ]);
    }
    ctx.report
        .markdown(&table(&["path", "Gb/s", "ratio"], &rows));
    Ok(())
}

/// From outside to a NodePort on node-1 whose backend runs on node-2
/// (SNAT both ways): node-1's XDP sends translated packets out itself
/// (`--xdp-forwarding on`) against handing them to its kernel to forward
/// (`off`), and kube-proxy's iptables and nftables rules for the same
/// Service on node-1 (no agent there then). New connections per second
/// (one request each, sequential) and iperf3 bulk TCP, interleaved
/// rounds, medians.
pub fn nodeport_forwarding(ctx: &mut Ctx) -> Result<()> {
    ctx.section("NodePort to a remote backend: XDP forwarding, the kernel, kube-proxy (nodeport)");
    ctx.line(format!(
        "outside -> NodePort on node-1 -> backend on node-2 (SNAT): XDP forwarding vs the kernel vs kube-proxy's rules ({IPERF_ROUNDS} rounds)"
    ));
    let mut c = crate::multi_node::MultiNodeCluster::new("bench-np")?;
    c.add_pod(1, "server", 22, &[8080])?;
    let mut iperf = c
        .pod("server")
        .ns
        .command("iperf3")
        .args(["-s", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    // Full checksums (as from a wire) and switch ports that take XDP_TX
    // frames at once: the same for both modes.
    c.fabric.set_tx_checksum(false)?;
    let object = c.agent(0).dir().join("baseline-xdp.o");
    std::fs::write(&object, BASELINE_OBJECT)?;
    for node in &c.fabric.nodes {
        c.fabric.bridge.run(&[
            "ip",
            "link",
            "set",
            "dev",
            &node.bridge_port,
            "xdp",
            "obj",
            object.to_str().unwrap_or_default(),
            "sec",
            "xdp",
        ])?;
    }
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "np", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.70", "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30200},
            {"name": "iperf", "port": 5201, "targetPort": 5201, "nodePort": 30201}]}
    }))?;
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "np-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "np"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "iperf", "port": 5201, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.244.2.22"], "nodeName": "node-2"}]
    }))?;
    c.api().apply(&svc)?;
    c.api().apply(&slice)?;
    // Thousands of connections a second from one client: closed flows'
    // SNAT ports must come back within a second, and the server must keep
    // no TIME_WAIT that a reused port would meet.
    let snat = ["--conntrack-tcp-timeout-closing", "1s"];
    c.pod("server")
        .ns
        .run(&["sysctl", "-qw", "net.ipv4.tcp_max_tw_buckets=0"])?;
    c.start_agent(1, &snat)?;

    const CONNECT_LOOP: &str = "import socket, sys, time\n\
        n, end = 0, time.time() + float(sys.argv[2])\n\
        failed = 0\n\
        while time.time() < end:\n\
        \x20   try:\n\
        \x20       s = socket.create_connection((sys.argv[1], 30200), timeout=1)\n\
        \x20       s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n\
        \x20       while s.recv(4096): pass\n\
        \x20       s.close(); n += 1\n\
        \x20   except OSError:\n\
        \x20       failed += 1\n\
        print(n / float(sys.argv[2]), failed)\n";
    // kube-proxy's rules for the same Service, as node-1's would be.
    let rules_dir = c.agent(0).dir().to_path_buf();
    let endpoint = |port| std::net::SocketAddrV4::new([10, 244, 2, 22].into(), port);
    let ports: Vec<ServicePort> = [("http", 80, 30200, 8080), ("iperf", 5201, 30201, 5201)]
        .into_iter()
        .map(|(name, port, node_port, target)| ServicePort {
            namespace: "default".into(),
            name: "np".into(),
            port_name: name.into(),
            protocol: "tcp",
            cluster_ip: [10, 96, 0, 70].into(),
            port,
            node_port: Some(node_port),
            endpoints: vec![endpoint(target)],
        })
        .collect();
    let node = NodeConfig::default();
    let restore = rules_dir.join("kube-proxy.iptables");
    std::fs::write(&restore, kube_proxy_rules::iptables_restore(&ports, &node))?;
    let nft = rules_dir.join("kube-proxy.nft");
    std::fs::write(&nft, kube_proxy_rules::nft_ruleset(&ports, &node))?;
    let limit = Duration::from_secs(30);

    let mut results: Vec<NodePortRuns> = [
        "kernel forwards",
        "XDP forwards",
        "kube-proxy iptables",
        "kube-proxy nftables",
    ]
    .into_iter()
    .map(NodePortRuns::new)
    .collect();
    let run = (|| -> Result<()> {
        for _ in 0..IPERF_ROUNDS {
            for (mode, r) in ["off", "on", "iptables", "nftables"]
                .iter()
                .zip(results.iter_mut())
            {
                let ns = &c.node(0).ns;
                clean_netfilter(ns)?;
                match *mode {
                    "iptables" => {
                        load_iptables(ns, &restore, limit)?.context("iptables-restore")?;
                    }
                    "nftables" => {
                        load_nft(ns, &nft, limit)?.context("nft -f")?;
                    }
                    xdp_forwarding => {
                        c.start_agent(
                            0,
                            &[&snat[..], &["--xdp-forwarding", xdp_forwarding]].concat(),
                        )?;
                        c.wait_for("the NodePort", Duration::from_secs(20), || {
                            c.agent(0).frontends().is_ok_and(|f| {
                                f.get("192.0.2.1:30200/TCP").is_some_and(|b| b.len() == 1)
                            })
                        })?;
                    }
                }
                let out = sh(c.fabric.external.command("python3").args([
                    "-c",
                    CONNECT_LOOP,
                    "192.0.2.1",
                    "3",
                ]))?;
                let out = String::from_utf8_lossy(&out.stdout).into_owned();
                let (rate, failed) = out.trim().split_once(' ').context("connect loop output")?;
                r.rates.push(rate.parse()?);
                if !r.mode.starts_with("kube-proxy") {
                    r.no_snat_port += snat_exhausted(&c.node(0).ns)?;
                }
                r.timed_out += failed.parse::<u64>()?;
                let out = sh(c.fabric.external.command("iperf3").args([
                    "-c",
                    "192.0.2.1",
                    "-p",
                    "30201",
                    "-t",
                    IPERF_SECONDS,
                    "-J",
                ]))?;
                r.gbps
                    .push(iperf_json_gbps(&String::from_utf8_lossy(&out.stdout))?);
                // The next mode finds node-1 without this one's programs.
                c.stop_and_clean_up_agent(0)?;
            }
        }
        clean_netfilter(&c.node(0).ns)
    })();
    let _ = iperf.kill();
    let _ = iperf.wait();
    run?;
    let base = (
        median(results[0].rates.clone()),
        median(results[0].gbps.clone()),
    );
    let mut rows = Vec::new();
    for r in results {
        let (name, failed, exhausted) = (r.mode, r.timed_out, r.no_snat_port);
        let (rate, gbps) = (median(r.rates), median(r.gbps));
        ctx.line(format!(
            "{name:<20} {rate:>8.0} conn/s {:>5.2}x   {gbps:>6.2} Gb/s {:>5.2}x   ({failed} connections timed out, {exhausted} SYNs found no free SNAT port)",
            rate / base.0,
            gbps / base.1
        ));
        rows.push(vec![
            name.to_string(),
            format!("{rate:.0} ({:.2}x)", rate / base.0),
            format!("{gbps:.2} ({:.2}x)", gbps / base.1),
            failed.to_string(),
            exhausted.to_string(),
        ]);
    }
    ctx.report.markdown(&format!(
        "Each timed-out connection costs its 3-second loop 1 s. Our SNAT pool is `--snat-port-range` 61000-65535 (4536 ports, above the node's ephemeral range), and a closed flow's port rests `--conntrack-tcp-timeout-closing` (1 s here, counted in whole seconds: 1 to 2 s): at a few thousand new connections a second to one backend it runs out, and the SYNs that find no free port are dropped. netfilter's masquerade picks from the whole port space.\n\n{}",
        table(&["mode", "conn/s", "Gb/s", "timed out", "no SNAT port"], &rows)
    ));
    Ok(())
}

/// One NodePort mode's results over the rounds.
struct NodePortRuns {
    mode: &'static str,
    /// New connections per second, and Gb/s, per round.
    rates: Vec<f64>,
    gbps: Vec<f64>,
    /// Connections that timed out (1 s each).
    timed_out: u64,
    /// New flows dropped for want of a free SNAT port (ours only).
    no_snat_port: u64,
}

impl NodePortRuns {
    fn new(mode: &'static str) -> Self {
        Self {
            mode,
            rates: Vec::new(),
            gbps: Vec::new(),
            timed_out: 0,
            no_snat_port: 0,
        }
    }
}

/// New flows node-1's agent dropped for want of a free SNAT port.
fn snat_exhausted(ns: &NetNs) -> Result<u64> {
    let metrics = ns.run(&["curl", "-s", "127.0.0.1:10249/metrics"])?;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("svc_agent_dropped_packets_total{reason=\"snat_ports_exhausted\"}"))
        .context("no snat_ports_exhausted counter in /metrics")?;
    let value = line.rsplit(' ').next().unwrap_or_default();
    Ok(value.parse::<f64>().context("snat_ports_exhausted")? as u64)
}

fn iperf_gbps(sb: &Sandbox, target: &str) -> Result<f64> {
    let out = sh(sb.pod("client").ns.command("iperf3").args([
        "-c",
        target,
        "-p",
        "5201",
        "-t",
        IPERF_SECONDS,
        "-J",
    ]))?;
    iperf_json_gbps(&String::from_utf8_lossy(&out.stdout))
}

/// end.sum_received.bits_per_second of iperf3's JSON, in Gb/s.
pub fn iperf_json_gbps(json: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3's output is not JSON")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in iperf3's output")?;
    if bps <= 0.0 {
        bail!("iperf3 measured nothing");
    }
    Ok(bps / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_put_the_probe_last_and_match_static_specs() {
        let s = services(5);
        assert_eq!(s.len(), 4 + 3);
        assert_eq!(s[s.len() - 3].cluster_ip, VIP);
        assert_eq!(s.last().unwrap().port, IPERF_PORT);
        let specs = static_services(&s).unwrap();
        assert_eq!(specs.len(), s.len());
        assert_eq!(specs[s.len() - 3].backends.len(), 2);
        assert_eq!(services(1).len(), 3);
    }

    #[test]
    fn parses_iperf_json() {
        let j = r#"{"end": {"sum_sent": {"bits_per_second": 1}, "sum_received": {"bits_per_second": 2.5e10}}}"#;
        assert_eq!(iperf_json_gbps(j).unwrap(), 25.0);
        assert!(iperf_json_gbps("{}").is_err());
    }
}
