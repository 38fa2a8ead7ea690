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
const PARTS: [(&str, fn() -> Result<()>); 4] = [
    ("costs", prog_test_run_costs),
    ("throughput", throughput),
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
    let json = String::from_utf8_lossy(&out.stdout);
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
