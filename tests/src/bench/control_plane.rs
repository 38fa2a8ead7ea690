//! The control plane: the real agent (Kubernetes mode, watching the API
//! server stand-in through its kube client) programming many Services,
//! next to kube-proxy loading the equivalent rulesets.
//!
//! * `latency`: one Service at a time, change to map, through a manifest
//!   file and through the API server.
//! * `cold_start`: 2000 Services x 10 endpoints, agent started.
//! * `control_plane`: 10k (and, without --quick, 100k) Services x 10
//!   endpoints: cold start time and RSS, then EndpointSlice change to map
//!   latency with all of them in place; and how long `iptables-restore`
//!   (both backends) and `nft -f` take to load the same Services.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use svc_common::ServiceKey;

use super::{
    Ctx, Row, count_label,
    datapath::{clean_netfilter, load_iptables_with, load_nft},
    kube_proxy_rules::{self, NodeConfig, ServicePort},
    percentile, plot,
    report::{out_dir, table},
};
use crate::{cluster::Cluster, netns::NetNs};

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

fn key(ip: Ipv4Addr) -> ServiceKey {
    ServiceKey::new(svc_common::ipv4_mapped(ip.octets()), 80u16.to_be(), 6, 0)
}

/// Polls until `ip:80/TCP`'s slot 0 is in the map.
fn wait_in_map(c: &Cluster, map: &ServicesMap, ip: Ipv4Addr, start: Instant) -> Result<()> {
    let key = key(ip);
    while map.get(&key, 0).is_err() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{ip} never reached the map; agent log:\n{}", c.agent_log());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// The durations of the agent's logged syncs ("programmed in 1.2ms: ..."),
/// in milliseconds, oldest first.
fn sync_times_ms(log: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|l| l.split("programmed in ").nth(1)?.split(':').next())
        .filter_map(|d| {
            let unit = d.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
            let value: f64 = d[..d.len() - unit.len()].parse().ok()?;
            let ms = match unit {
                "s" => 1e3,
                "ms" => 1.0,
                "µs" => 1e-3,
                "ns" => 1e-6,
                _ => return None,
            };
            Some(value * ms)
        })
        .collect()
}

fn print_percentiles(ctx: &mut Ctx, samples: &[f64]) {
    ctx.line(format!(
        "p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        percentile(samples, 0.5),
        percentile(samples, 0.99),
        percentile(samples, 1.0)
    ));
}

/// Time from a Service written to its frontend present in the pinned
/// SERVICES map (the agent's whole path: notification, parse, model,
/// reconcile, map write), one Service at a time: through a manifest file,
/// and through the API server (stand-in), watched by kube-rs.
pub fn change_latency(ctx: &mut Ctx) -> Result<()> {
    const CHANGES: u8 = 40;
    ctx.section("Change to map, one Service at a time (latency)");
    let mut rows = Vec::new();
    for with_api in [false, true] {
        let source = if with_api {
            "API server watch"
        } else {
            "manifest file"
        };
        ctx.line(format!(
            "{source} change -> map, {CHANGES} Services added one by one"
        ));
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
        print_percentiles(ctx, &samples);
        rows.push(vec![
            source.to_string(),
            format!("{:.1}", percentile(&samples, 0.5)),
            format!("{:.1}", percentile(&samples, 0.99)),
        ]);
    }
    ctx.report
        .markdown(&table(&["source", "p50 ms", "p99 ms"], &rows));
    Ok(())
}

/// Cold start in Kubernetes mode with 2000 Services x 10 endpoints.
pub fn cold_start(ctx: &mut Ctx) -> Result<()> {
    ctx.section("Cold start, 2000 Services x 10 endpoints (cold-start)");
    let (_c, r) = cold_start_run(ctx, "bench-cold", 2_000, 10, Duration::from_secs(60))?;
    ctx.report.markdown(&format!(
        "All {} frontends programmed {} after the agent started; agent RSS {:.1} MiB ({:.0} bytes per endpoint).",
        r.frontends,
        r.programmed_s
            .map_or("(not all)".into(), |s| format!("{s:.2} s")),
        r.rss_kib as f64 / 1024.0,
        r.rss_bytes_per_endpoint()
    ));
    Ok(())
}

fn service_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a61_0000 + i) // 10.97.0.0 upwards
}

fn endpoint_ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a80_0000 + n) // 10.128.0.0 upwards
}

/// What a cold start measured.
pub struct ColdStartResult {
    pub services: u32,
    pub endpoints_per: u32,
    /// Writing the objects into the API server stand-in.
    pub load_api_s: f64,
    /// Agent start to the last frontend in the map (None: not reached).
    pub programmed_s: Option<f64>,
    /// Agent start to its first "programmed in" log line.
    pub first_sync_s: Option<f64>,
    /// Frontends in the map at the end.
    pub frontends: usize,
    pub rss_kib: u64,
    /// The agent's CPU time (user + system) until then.
    pub cpu_s: f64,
    /// Interesting lines of the agent's log (syncs, failures).
    pub log_excerpt: Vec<String>,
    pub failed_warnings: usize,
}

impl ColdStartResult {
    pub fn rss_bytes_per_endpoint(&self) -> f64 {
        self.rss_kib as f64 * 1024.0 / (f64::from(self.services) * f64::from(self.endpoints_per))
    }
}

fn slice_json(i: u32, eps: u32, extra: u32) -> Result<EndpointSlice> {
    let endpoints: Vec<_> = (0..eps + extra)
        .map(|e| {
            let n = if e < eps {
                i * eps + e
            } else {
                0x0070_0000 + i
            };
            serde_json::json!({"addresses": [endpoint_ip(n).to_string()]})
        })
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("cold-{i}-x"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": format!("cold-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    }))?)
}

/// `n` Services with `eps` endpoints each in the API server before the
/// agent starts; time until the last one's frontend is in the map (at
/// most `cap`), and the agent's RSS then. Returns the cluster, agent
/// running, for more measurements.
pub fn cold_start_run(
    ctx: &mut Ctx,
    tag: &str,
    n: u32,
    eps: u32,
    cap: Duration,
) -> Result<(Cluster, ColdStartResult)> {
    ctx.line(format!(
        "cold start: {} Services x {eps} endpoints in the API server, agent started",
        count_label(n as usize)
    ));
    let mut c = Cluster::with_api_server(tag)?;
    let t = Instant::now();
    for i in 0..n {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("cold-{i}"), "namespace": "default"},
            "spec": {"clusterIP": service_ip(i).to_string(), "ports": [{"name": "http", "port": 80}]}
        }))?;
        c.api().apply(&svc)?;
        c.api().apply(&slice_json(i, eps, 0)?)?;
    }
    let load_api_s = t.elapsed().as_secs_f64();
    ctx.line(format!(
        "  {} Services and EndpointSlices written to the API server stand-in in {load_api_s:.1} s",
        count_label(n as usize)
    ));
    let last = service_ip(n - 1);
    let sizes = capacity_args(n, eps);
    let start = Instant::now();
    // The agent's default sync period (30 s), not the tests' short one:
    // each period reads every map back to look for drift.
    let mut args: Vec<&str> = sizes.iter().map(String::as_str).collect();
    args.extend(["--sync-period", "30s"]);
    c.start_agent_with(&args)?;
    let map = services_map(&c)?;
    let last_key = key(last);
    let mut programmed_s = None;
    let mut first_sync_s = None;
    let mut log_checked = Instant::now();
    loop {
        if map.get(&last_key, 0).is_ok() {
            programmed_s = Some(start.elapsed().as_secs_f64());
            break;
        }
        if log_checked.elapsed() > Duration::from_millis(500) {
            log_checked = Instant::now();
            if first_sync_s.is_none() && c.agent_log().contains("programmed in") {
                first_sync_s = Some(start.elapsed().as_secs_f64());
            }
        }
        // A first sync that did not program the last frontend: give the
        // retries a little while, not the whole cap.
        let gave_up = first_sync_s.is_some_and(|f| start.elapsed().as_secs_f64() > f + 15.0);
        if start.elapsed() > cap || gave_up {
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    if first_sync_s.is_none() && c.agent_log().contains("programmed in") {
        first_sync_s = Some(start.elapsed().as_secs_f64());
    }
    let rss_kib = agent_rss_kib(&c)?;
    let cpu_s = agent_cpu_s(&c)?;
    let frontends = count_frontends(&map);
    let log = c.agent_log();
    let failed_warnings = log.matches("FailedToProgram").count();
    let mut log_excerpt: Vec<String> = log
        .lines()
        .filter(|l| {
            l.contains("programmed in")
                || l.contains("WARN") && !l.contains("FailedToProgram")
                || l.contains("ERROR")
        })
        .take(12)
        .map(|l| l.chars().take(300).collect())
        .collect();
    if let Some(first_failure) = log.lines().find(|l| l.contains("FailedToProgram")) {
        log_excerpt.push(first_failure.chars().take(400).collect());
    }
    let r = ColdStartResult {
        services: n,
        endpoints_per: eps,
        load_api_s,
        programmed_s,
        first_sync_s,
        frontends,
        rss_kib,
        cpu_s,
        log_excerpt,
        failed_warnings,
    };
    match r.programmed_s {
        Some(s) => ctx.line(format!(
            "  all {} frontends programmed {s:.2} s after start ({:.1} s of agent CPU); agent RSS {:.1} MiB ({:.0} bytes per endpoint)",
            r.frontends,
            r.cpu_s,
            r.rss_kib as f64 / 1024.0,
            r.rss_bytes_per_endpoint()
        )),
        None => ctx.line(format!(
            "  NOT all programmed: {} frontends in the map after {:.1} s (first sync logged at {}; {:.1} s of agent CPU); agent RSS {:.1} MiB; {} FailedToProgram warnings",
            r.frontends,
            start.elapsed().as_secs_f64(),
            r.first_sync_s.map_or("never".into(), |s| format!("{s:.1} s")),
            r.cpu_s,
            r.rss_kib as f64 / 1024.0,
            r.failed_warnings
        )),
    }
    for l in &r.log_excerpt {
        ctx.line(format!("  agent: {l}"));
    }
    Ok((c, r))
}

/// Slot-0 entries of the SERVICES map (frontends).
fn count_frontends(map: &ServicesMap) -> usize {
    map.keys()
        .filter_map(|k| k.ok())
        .filter(|k| k.slot == 0)
        .count()
}

/// The agent's CPU time so far (user + system), in seconds.
fn agent_cpu_s(c: &Cluster) -> Result<f64> {
    let pid = c.agent_pid().context("the agent is not running")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command name's closing parenthesis: state is field 3,
    // utime and stime fields 14 and 15.
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
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

/// EndpointSlice change to map with `n` Services in place: one slice at a
/// time gets an eleventh endpoint; time until its frontend's slot 0 shows
/// the new count.
fn slice_change_latency(c: &Cluster, n: u32, eps: u32, changes: u32) -> Result<Vec<f64>> {
    let map = services_map(c)?;
    let mut samples = Vec::new();
    for k in 0..changes {
        // Spread over the Services, none changed twice.
        let i = (u64::from(k) * u64::from(n) / u64::from(changes)) as u32;
        let key = key(service_ip(i));
        let slice = slice_json(i, eps, 1)?;
        let start = Instant::now();
        c.api().apply(&slice)?;
        loop {
            if map
                .get(&key, 0)
                .is_ok_and(|v| u32::from(v.backend_count) == eps + 1)
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("the change to cold-{i} never reached the map");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(start.elapsed().as_secs_f64() * 1e3);
        // Not back to back: the agent coalesces changes for 20 ms.
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(samples)
}

/// kube-proxy's rulesets for the cold start's Services (same names,
/// ClusterIPs and endpoints).
fn equivalent_services(n: u32, eps: u32) -> Vec<ServicePort> {
    (0..n)
        .map(|i| ServicePort {
            namespace: "default".into(),
            name: format!("cold-{i}"),
            port_name: "http".into(),
            protocol: "tcp",
            cluster_ip: service_ip(i),
            port: 80,
            node_port: None,
            endpoints: (0..eps)
                .map(|e| std::net::SocketAddrV4::new(endpoint_ip(i * eps + e), 8080))
                .collect(),
        })
        .collect()
}

/// Seconds a load took, or None if stopped at the limit.
struct RuleLoads {
    iptables_nft: Option<f64>,
    iptables_legacy: Option<f64>,
    nft: Option<f64>,
    limit: Duration,
    rules: usize,
}

fn load_rulesets(ctx: &mut Ctx, n: u32, eps: u32, limit: Duration) -> Result<RuleLoads> {
    let svcs = equivalent_services(n, eps);
    let cfg = NodeConfig::default();
    let dir = std::env::temp_dir().join(format!("svc-bench-cp-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| -> Result<RuleLoads> {
        let ipt = dir.join("iptables.txt");
        let nft = dir.join("nft.txt");
        let ipt_text = kube_proxy_rules::iptables_restore(&svcs, &cfg);
        let rules = ipt_text.lines().filter(|l| l.starts_with("-A ")).count();
        std::fs::write(&ipt, ipt_text)?;
        std::fs::write(&nft, kube_proxy_rules::nft_ruleset(&svcs, &cfg))?;
        drop(svcs);
        let ns = NetNs::new("bench-rules")?;
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        let iptables_legacy = secs(load_iptables_with(
            &ns,
            "iptables-legacy",
            "iptables-legacy-restore",
            &ipt,
            limit,
        )?);
        ctx.line(format!(
            "  iptables-legacy-restore: {}",
            fmt_load(iptables_legacy, limit)
        ));
        clean_netfilter(&ns)?;
        let iptables_nft = secs(load_iptables_with(
            &ns,
            "iptables",
            "iptables-restore",
            &ipt,
            limit,
        )?);
        ctx.line(format!(
            "  iptables-restore (nf_tables): {}",
            fmt_load(iptables_nft, limit)
        ));
        clean_netfilter(&ns)?;
        let nft_s = secs(load_nft(&ns, &nft, limit)?);
        ctx.line(format!("  nft -f: {}", fmt_load(nft_s, limit)));
        clean_netfilter(&ns)?;
        Ok(RuleLoads {
            iptables_nft,
            iptables_legacy,
            nft: nft_s,
            limit,
            rules,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let r = result?;
    ctx.line(format!(
        "  {} Services x {eps}: {} iptables rules; iptables-legacy-restore {}, iptables-restore (nf_tables) {}, nft -f {}",
        count_label(n as usize),
        r.rules,
        fmt_load(r.iptables_legacy, limit),
        fmt_load(r.iptables_nft, limit),
        fmt_load(r.nft, limit)
    ));
    Ok(r)
}

fn fmt_load(t: Option<f64>, limit: Duration) -> String {
    match t {
        Some(s) => format!("{s:.1} s"),
        None => format!("> {} s (stopped)", limit.as_secs()),
    }
}

/// The agent's map sizes for `n` Services x `eps` distinct endpoints
/// (the defaults where those are enough): a service id and 1 + eps
/// SERVICES slots per Service, eps BACKENDS entries each.
pub fn capacity_args(n: u32, eps: u32) -> Vec<String> {
    let default = svc_agent::dataplane::Capacity::default();
    let at_least =
        |flag: &str, want: u32, default: u32| [flag.to_string(), want.max(default).to_string()];
    [
        at_least("--max-frontends", n + 64, default.frontends),
        at_least(
            "--max-service-slots",
            n * (1 + eps) + 64,
            default.service_slots,
        ),
        at_least("--max-endpoints", n * eps + 64, default.backends),
    ]
    .concat()
}

pub fn control_plane(ctx: &mut Ctx) -> Result<()> {
    ctx.section("Control plane: cold start and change latency at scale");
    // BENCH_CONTROL_PLANE_SIZES=100000 (comma-separated): other sizes,
    // e.g. to profile one.
    let sizes: Vec<u32> = match std::env::var("BENCH_CONTROL_PLANE_SIZES") {
        Ok(v) => v
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()
            .context("BENCH_CONTROL_PLANE_SIZES")?,
        Err(_) => ctx.pick(vec![10_000, 100_000], vec![10_000]),
    };
    const EPS: u32 = 10;
    let changes = ctx.pick(30, 10);
    let rule_limit = ctx.pick(Duration::from_secs(150), Duration::from_secs(15));
    let mut rows = Vec::new();
    let mut bars: Vec<(String, Vec<f64>)> = vec![
        ("svc-proxy agent".into(), vec![]),
        ("iptables-restore (nf_tables)".into(), vec![]),
        ("iptables-legacy-restore".into(), vec![]),
        ("kube-proxy nftables (nft -f)".into(), vec![]),
    ];
    let mut groups = Vec::new();
    for &n in &sizes {
        let cap = if n > 20_000 {
            Duration::from_secs(90)
        } else {
            Duration::from_secs(120)
        };
        let (c, r) = cold_start_run(ctx, "bench-cp", n, EPS, cap)?;
        let latency = if r.programmed_s.is_some() {
            let s = slice_change_latency(&c, n, EPS, changes)?;
            ctx.line(format!(
                "  EndpointSlice change -> map with {} Services in place ({changes} changes):",
                count_label(n as usize)
            ));
            print_percentiles(ctx, &s);
            // The agent's own part: its syncs after the cold start.
            let syncs = sync_times_ms(&c.agent_log());
            if let Some(changes) = syncs.get(1..).filter(|v| !v.is_empty()) {
                ctx.line(format!(
                    "  of which the agent's syncs ({} logged: model, reconcile, map writes):",
                    changes.len()
                ));
                print_percentiles(ctx, changes);
            }
            Some(s)
        } else {
            None
        };
        drop(c);
        // kube-proxy's rulesets for the same Services: at 100k x 10 they
        // are hundreds of MB of text whose loads grow faster than linearly
        // (10k x 10 already takes minutes with the nf_tables backends).
        let loads = if n <= 20_000 {
            Some(load_rulesets(ctx, n, EPS, rule_limit)?)
        } else {
            ctx.line(format!(
                "  {} Services x {EPS}: kube-proxy's rulesets not loaded (see 10k: their loads grow faster than linearly)",
                count_label(n as usize)
            ));
            None
        };
        let lat = |p: f64| {
            latency
                .as_ref()
                .map_or("-".into(), |s| format!("{:.1}", percentile(s, p)))
        };
        rows.push(vec![
            count_label(n as usize),
            format!("{:.1}", r.load_api_s),
            r.programmed_s
                .map_or(format!("not all ({} frontends)", r.frontends), |s| {
                    format!("{s:.2}")
                }),
            format!("{:.0}", r.rss_kib as f64 / 1024.0),
            format!("{:.0}", r.rss_bytes_per_endpoint()),
            lat(0.5),
            lat(0.99),
            loads
                .as_ref()
                .map_or("-".into(), |l| fmt_load(l.iptables_nft, l.limit)),
            loads
                .as_ref()
                .map_or("-".into(), |l| fmt_load(l.iptables_legacy, l.limit)),
            loads
                .as_ref()
                .map_or("-".into(), |l| fmt_load(l.nft, l.limit)),
        ]);
        groups.push(format!("{} x {EPS}", count_label(n as usize)));
        let lim = |t: Option<f64>, l: &RuleLoads| t.unwrap_or(l.limit.as_secs_f64());
        bars[0].1.push(r.programmed_s.unwrap_or(f64::NAN));
        bars[1]
            .1
            .push(loads.as_ref().map_or(f64::NAN, |l| lim(l.iptables_nft, l)));
        bars[2].1.push(
            loads
                .as_ref()
                .map_or(f64::NAN, |l| lim(l.iptables_legacy, l)),
        );
        bars[3]
            .1
            .push(loads.as_ref().map_or(f64::NAN, |l| lim(l.nft, l)));

        let ms = |p: f64| {
            latency
                .as_ref()
                .map_or("-".into(), |s| format!("{:.0} ms", percentile(s, p)))
        };
        ctx.report.row(Row {
            area: "control plane".into(),
            measure: format!(
                "cold start, {} Services x {EPS} endpoints (agent: start to all in the maps; kube-proxy: loading its rules)",
                count_label(n as usize)
            ),
            ours: match r.programmed_s {
                Some(s) => format!(
                    "{s:.1} s, RSS {:.0} MiB ({:.0} B/endpoint)",
                    r.rss_kib as f64 / 1024.0,
                    r.rss_bytes_per_endpoint()
                ),
                None => format!(
                    "not all programmed: {} of {} frontends after {:.0} s ({}); RSS {:.0} MiB",
                    r.frontends,
                    n,
                    cap.as_secs_f64(),
                    match r.first_sync_s {
                        None => "the agent's initial lists never completed, see below",
                        Some(_) => "see the agent log below",
                    },
                    r.rss_kib as f64 / 1024.0
                ),
            },
            iptables: loads.as_ref().map_or("not loaded".into(), |l| {
                format!(
                    "{} (nf_tables), {} (legacy)",
                    fmt_load(l.iptables_nft, l.limit),
                    fmt_load(l.iptables_legacy, l.limit)
                )
            }),
            nftables: loads
                .as_ref()
                .map_or("not loaded".into(), |l| fmt_load(l.nft, l.limit)),
            baseline: String::new(),
        });
        if latency.is_some() {
            ctx.report.row(Row {
                area: "control plane".into(),
                measure: format!(
                    "EndpointSlice change to map, p50 / p99, {} Services in place",
                    count_label(n as usize)
                ),
                ours: format!("{} / {}", ms(0.5), ms(0.99)),
                iptables: "-".into(),
                nftables: "-".into(),
                baseline: String::new(),
            });
        }
        if r.programmed_s.is_none() {
            let mut why = Vec::new();
            if r.first_sync_s.is_none() {
                why.push(format!(
                    "**The agent's initial lists never completed** within {:.0} s; the agent used {:.1} s of CPU meanwhile.",
                    cap.as_secs_f64(),
                    r.cpu_s
                ));
            }
            ctx.report.markdown(&format!(
                "At {} Services x {EPS} endpoints the cold start did not finish ({} frontends in the maps after {:.0} s; agent RSS {:.0} MiB):\n\n{}",
                count_label(n as usize),
                r.frontends,
                cap.as_secs_f64(),
                r.rss_kib as f64 / 1024.0,
                why.iter().map(|w| format!("* {w}")).collect::<Vec<_>>().join("\n")
            ));
        }
        if !r.log_excerpt.is_empty() && r.programmed_s.is_none() {
            ctx.report.markdown(&format!(
                "Agent log at {} Services (excerpt):\n\n```text\n{}\n```",
                count_label(n as usize),
                r.log_excerpt.join("\n")
            ));
        }
    }
    ctx.report.markdown(&format!(
        "Kubernetes mode: the Services (one port each, ClusterIPs from 10.97.0.0) and their EndpointSlices ({EPS} endpoints each, all distinct) are in the API server stand-in before the agent starts; the agent lists and watches them through kube-rs over TLS. *Cold start*: agent start to the last Service's frontend in the pinned SERVICES map (frontends are written in address order, so then all are in). *Change to map*: with all Services in place, one EndpointSlice at a time gains an eleventh endpoint; time from the write to the API server until that frontend's slot 0 shows 11 backends ({changes} changes, 50 ms apart). kube-proxy's loads: the same Services rendered as kube-proxy's full sync (`kube_proxy_rules`), loaded into a fresh namespace, each load stopped after {} s.\n\n{}",
        rule_limit.as_secs(),
        table(
            &[
                "services",
                "API objects written (s)",
                "agent cold start (s)",
                "agent RSS (MiB)",
                "RSS B/endpoint",
                "change p50 (ms)",
                "change p99 (ms)",
                "iptables-restore nf_tables",
                "iptables-legacy-restore",
                "nft -f",
            ],
            &rows
        )
    ));
    std::fs::create_dir_all(out_dir())?;
    let file = "control-plane-cold-start.png";
    plot::grouped_bars(
        &out_dir().join(file),
        "seconds to program N Services x 10 endpoints",
        "seconds",
        &groups,
        &bars,
        &|v| format!("{v:.1}"),
    )?;
    ctx.report.plot("cold start", file);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_sized_for_the_run() {
        let args = capacity_args(100_000, 10);
        assert_eq!(
            args,
            [
                "--max-frontends",
                "100064",
                "--max-service-slots",
                "1100064",
                "--max-endpoints",
                "1000064"
            ]
        );
        // The defaults suffice at 10k x 10.
        let d = svc_agent::dataplane::Capacity::default();
        assert_eq!(capacity_args(10_000, 10)[1], d.frontends.to_string());
    }

    #[test]
    fn equivalent_services_match_the_cold_start_objects() {
        let s = equivalent_services(3, 10);
        assert_eq!(s[2].cluster_ip, service_ip(2));
        assert_eq!(s[2].endpoints[0].ip(), &endpoint_ip(20));
        let slice = slice_json(2, 10, 1).unwrap();
        let addrs: Vec<String> = slice
            .endpoints
            .iter()
            .map(|e| e.addresses[0].clone())
            .collect();
        assert_eq!(addrs.len(), 11);
        assert_eq!(addrs[0], endpoint_ip(20).to_string());
    }
}
