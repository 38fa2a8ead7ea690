//! `cargo xtask bench`: measurements taken side by side in one run, printed
//! as ratios. Not a test: nothing here gates CI.
//!
//! 1. BPF_PROG_TEST_RUN cost per packet of each program's hit path against
//!    an empty program of the same type (medians of repeated runs).
//! 2. iperf3 bulk TCP from a client pod: to a ClusterIP (programs
//!    attached) against pod to pod with nothing attached, and pod to pod
//!    with the programs attached (their cost on non-service traffic).
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, TestRun as _, TestRunOptions,
    programs::{SchedClassifier, Xdp},
};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use svc_agent::dataplane::BASELINE_OBJECT;
use svc_common::ServiceKey;
use tests::{
    cluster::Cluster,
    netns::sh,
    packet::Spec,
    progtest::{Fixture, Hook},
    sandbox::Sandbox,
};

/// Runs per measurement and repeats inside the kernel per run.
const RUNS: usize = 9;
const REPEAT: u32 = 200_000;
const IPERF_SECONDS: &str = "4";
const IPERF_ROUNDS: usize = 3;

/// Each part by name; `bench [NAME...]` runs only those named.
type Part = fn() -> Result<()>;

const PARTS: [(&str, Part); 5] = [
    ("costs", prog_test_run_costs),
    ("throughput", throughput),
    ("nodeport", nodeport_forwarding),
    ("latency", change_latency),
    ("cold-start", cold_start),
];

fn main() -> Result<()> {
    let only: Vec<String> = std::env::args().skip(1).collect();
    for (name, part) in PARTS {
        if only.is_empty() || only.iter().any(|o| o == name) {
            part()?;
        }
    }
    Ok(())
}

/// Time from a Service written to its frontend present in the pinned
/// SERVICES map (the agent's whole path: notification, parse, model,
/// reconcile, map write), one Service at a time: through a manifest file,
/// and through the API server (stand-in), watched by kube-rs.
fn change_latency() -> Result<()> {
    const CHANGES: u8 = 40;
    for with_api in [false, true] {
        let source = if with_api {
            "API server watch"
        } else {
            "manifest file"
        };
        println!("\n== {source} change -> map, {CHANGES} Services added one by one");
        let mut c = if with_api {
            Cluster::with_api_server("bench-lat-k8s")?
        } else {
            Cluster::new("bench-lat")?
        };
        c.start_agent()?;
        let map = services_map(&c)?;
        let mut samples = Vec::new();
        for i in 0..CHANGES {
            let ip: Ipv4Addr = [10, 96, 7, i + 1].into();
            let svc: Service = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("lat-{i}"), "namespace": "default"},
                "spec": {"clusterIP": ip.to_string(), "ports": [{"port": 80}]}
            }))?;
            let start = Instant::now();
            if with_api {
                c.api().apply(&svc)?;
            } else {
                c.write(&format!("lat-{i}.json"), &serde_json::to_string(&svc)?)?;
            }
            wait_in_map(&c, &map, ip, start)?;
            samples.push(start.elapsed().as_secs_f64() * 1e3);
        }
        print_percentiles(samples);
    }
    Ok(())
}

/// Cold start in Kubernetes mode: `N` Services with 10 endpoints each are
/// in the API server before the agent starts; time until the last one's
/// frontend is in the map, and the agent's RSS then.
fn cold_start() -> Result<()> {
    const N: u16 = 2_000;
    println!("\n== cold start: {N} Services x 10 endpoints in the API server, agent started");
    let mut c = Cluster::with_api_server("bench-cold")?;
    for i in 0..N {
        let ip: Ipv4Addr = [10, 97, (i >> 8) as u8, i as u8].into();
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("cold-{i}"), "namespace": "default"},
            "spec": {"clusterIP": ip.to_string(), "ports": [{"name": "http", "port": 80}]}
        }))?;
        c.api().apply(&svc)?;
        let endpoints: Vec<_> = (0..10u16)
            .map(|e| {
                let n = u32::from(i) * 10 + u32::from(e);
                serde_json::json!({"addresses": [format!("10.{}.{}.{}", 128 + (n >> 16), (n >> 8) as u8, n as u8)]})
            })
            .collect();
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("cold-{i}-x"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": format!("cold-{i}")}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        }))?;
        c.api().apply(&slice)?;
    }
    let last: Ipv4Addr = [10, 97, ((N - 1) >> 8) as u8, (N - 1) as u8].into();
    let start = Instant::now();
    c.start_agent()?;
    let map = services_map(&c)?;
    wait_in_map(&c, &map, last, start)?;
    let took = start.elapsed();
    // The last Service's frontend is written last of all (frontends go in
    // address order), so everything is in.
    let frontends = c.frontends()?.len();
    let rss_kib = agent_rss_kib(&c)?;
    println!(
        "all {frontends} frontends programmed {:.2} s after start; agent RSS {:.1} MiB ({:.0} bytes per endpoint)",
        took.as_secs_f64(),
        rss_kib as f64 / 1024.0,
        rss_kib as f64 * 1024.0 / (f64::from(N) * 10.0)
    );
    Ok(())
}

fn agent_rss_kib(c: &Cluster) -> Result<u64> {
    let pid = c.agent_pid().context("the agent is not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

type ServicesMap = aya::maps::HashMap<aya::maps::MapData, ServiceKey, svc_common::ServiceValue>;

fn services_map(c: &Cluster) -> Result<ServicesMap> {
    let pin = c
        .bpffs()
        .join("svc-agent/maps")
        .join(svc_common::SERVICES_MAP);
    Ok(aya::maps::HashMap::try_from(aya::maps::Map::HashMap(
        aya::maps::MapData::from_pin(&pin)?,
    ))?)
}

/// Polls until `ip:80/TCP`'s slot 0 is in the map.
fn wait_in_map(c: &Cluster, map: &ServicesMap, ip: Ipv4Addr, start: Instant) -> Result<()> {
    let key = ServiceKey::new(svc_common::ipv4_mapped(ip.octets()), 80u16.to_be(), 6, 0);
    while map.get(&key, 0).is_err() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{ip} never reached the map; agent log:\n{}", c.agent_log());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

fn print_percentiles(mut samples: Vec<f64>) {
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    println!(
        "p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn prog_test_run_costs() -> Result<()> {
    println!("== BPF_PROG_TEST_RUN, ns per packet (median of {RUNS} runs x {REPEAT} repeats)");
    // The kernel reruns the program on the buffer the previous run left,
    // so a frontend whose backend is itself keeps every repeat on the hit
    // path (service lookup, conntrack hit, rewrite and checksum update).
    let mut f = Fixture::new();
    f.services(&[
        "10.96.0.10:80/tcp=10.96.0.10:80",
        "[fd00:96::10]:80/tcp=[fd00:96::10]:80",
    ]);
    let mut base = Ebpf::load(BASELINE_OBJECT)?;
    let packets = [
        (
            "IPv4 TCP hit",
            Spec::tcp("192.0.2.2:40000", "10.96.0.10:80").build(),
        ),
        (
            "IPv6 TCP hit",
            Spec::tcp("[2001:db8::2]:40000", "[fd00:96::10]:80").build(),
        ),
        (
            "IPv4 TCP miss",
            Spec::tcp("192.0.2.2:40000", "10.244.1.21:80").build(),
        ),
    ];
    println!(
        "{:<6} {:<14} {:>10} {:>10} {:>8}",
        "hook", "packet", "program", "empty", "ratio"
    );
    for hook in [Hook::Xdp, Hook::Tc] {
        for (name, pkt) in &packets {
            let mut prog = Vec::new();
            let mut empty = Vec::new();
            for _ in 0..RUNS {
                // Interleaved, so drift affects both alike.
                prog.push(f.run_repeat(hook, pkt, REPEAT)?.2.as_nanos() as f64);
                empty.push(baseline_run(&mut base, hook, pkt)?.as_nanos() as f64);
            }
            let (p, e) = (median(prog), median(empty));
            println!(
                "{:<6} {:<14} {:>10.1} {:>10.1} {:>7.2}x",
                format!("{hook:?}"),
                name,
                p,
                e,
                p / e
            );
        }
    }
    Ok(())
}

fn baseline_run(base: &mut Ebpf, hook: Hook, pkt: &[u8]) -> Result<Duration> {
    let opts = TestRunOptions {
        data_in: Some(pkt),
        repeat: REPEAT,
        ..TestRunOptions::default()
    };
    let result = match hook {
        Hook::Xdp => {
            let p: &mut Xdp = base
                .program_mut("baseline_xdp")
                .context("baseline_xdp")?
                .try_into()?;
            if p.fd().is_err() {
                p.load()?;
            }
            p.test_run(opts)?
        }
        Hook::Tc => {
            let p: &mut SchedClassifier = base
                .program_mut("baseline_tc")
                .context("baseline_tc")?
                .try_into()?;
            if p.fd().is_err() {
                p.load()?;
            }
            p.test_run(opts)?
        }
    };
    Ok(result.duration)
}

fn throughput() -> Result<()> {
    println!(
        "\n== iperf3 bulk TCP, client pod -> backend pod ({IPERF_SECONDS} s each, median of {IPERF_ROUNDS} rounds)"
    );
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
    let result = (|| -> Result<()> {
        for _ in 0..IPERF_ROUNDS {
            plain.push(iperf_gbps(&sb, "10.244.1.21")?);
            let mut dp = sb.attach_dataplane()?;
            let spec = "10.96.0.10:5201/tcp=10.244.1.21:5201".parse()?;
            tests::static_services::apply(&mut dp, &[spec])?;
            via_vip.push(iperf_gbps(&sb, "10.96.0.10")?);
            attached_direct.push(iperf_gbps(&sb, "10.244.1.21")?);
            drop(dp); // detaches
        }
        Ok(())
    })();
    let _ = iperf.kill();
    let _ = iperf.wait();
    result?;
    let p = median(plain);
    for (name, v) in [
        ("pod -> pod, nothing attached", p),
        ("pod -> ClusterIP (tcx DNAT)", median(via_vip)),
        ("pod -> pod, programs attached", median(attached_direct)),
    ] {
        println!("{name:<32} {v:>7.2} Gb/s  {:>5.2}x", v / p);
    }
    Ok(())
}

/// From outside to a NodePort on node-1 whose backend runs on node-2
/// (SNAT both ways): node-1's XDP sends translated packets out itself
/// (`--xdp-forwarding on`) against handing them to its kernel to forward
/// (`off`). New connections per second (one request each, sequential)
/// and iperf3 bulk TCP, interleaved rounds, medians.
fn nodeport_forwarding() -> Result<()> {
    println!(
        "\n== outside -> NodePort on node-1 -> backend on node-2 (SNAT): XDP forwarding vs the kernel ({IPERF_ROUNDS} rounds)"
    );
    let mut c = tests::multi_node::MultiNodeCluster::new("bench-np")?;
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
    c.fabric.let_ports_take_xdp_frames(c.agent(0).dir())?;
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
    let snat = ["--snat-closed-hold", "1s"];
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
    // Mode, connections/s, Gb/s, connections that failed (1 s timeout).
    let mut results: Vec<(&str, Vec<f64>, Vec<f64>, u64)> = vec![
        ("kernel forwards", vec![], vec![], 0),
        ("XDP forwards", vec![], vec![], 0),
    ];
    let run = (|| -> Result<()> {
        for _ in 0..IPERF_ROUNDS {
            for (mode, r) in ["off", "on"].iter().zip(results.iter_mut()) {
                c.start_agent(0, &[&snat[..], &["--xdp-forwarding", mode]].concat())?;
                c.wait_for("the NodePort", Duration::from_secs(20), || {
                    c.agent(0)
                        .frontends()
                        .is_ok_and(|f| f.get("192.0.2.1:30200/TCP").is_some_and(|b| b.len() == 1))
                })?;
                let out = sh(c.fabric.external.command("python3").args([
                    "-c",
                    CONNECT_LOOP,
                    "192.0.2.1",
                    "3",
                ]))?;
                let out = String::from_utf8_lossy(&out.stdout).into_owned();
                let (rate, failed) = out.trim().split_once(' ').context("connect loop output")?;
                r.1.push(rate.parse()?);
                r.3 += failed.parse::<u64>()?;
                let out = sh(c.fabric.external.command("iperf3").args([
                    "-c",
                    "192.0.2.1",
                    "-p",
                    "30201",
                    "-t",
                    IPERF_SECONDS,
                    "-J",
                ]))?;
                r.2.push(iperf_json_gbps(&String::from_utf8_lossy(&out.stdout))?);
                c.stop_agent(0)?;
            }
        }
        Ok(())
    })();
    let _ = iperf.kill();
    let _ = iperf.wait();
    run?;
    let base = (median(results[0].1.clone()), median(results[0].2.clone()));
    for (name, rate, gbps, failed) in results {
        let (rate, gbps) = (median(rate), median(gbps));
        println!(
            "{name:<18} {rate:>8.0} conn/s {:>5.2}x   {gbps:>6.2} Gb/s {:>5.2}x   ({failed} connections timed out)",
            rate / base.0,
            gbps / base.1
        );
    }
    Ok(())
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
fn iperf_json_gbps(json: &str) -> Result<f64> {
    // end.sum_received.bits_per_second, without a JSON dependency.
    let after = json
        .find("\"sum_received\"")
        .map(|i| &json[i..])
        .context("no sum_received in iperf3 output")?;
    let num = after
        .split("\"bits_per_second\":")
        .nth(1)
        .and_then(|s| s.split([',', '}']).next())
        .context("no bits_per_second")?;
    let bps: f64 = num.trim().parse()?;
    if bps <= 0.0 {
        bail!("iperf3 measured nothing");
    }
    Ok(bps / 1e9)
}
