//! The daemon: watches its source, turns objects into the desired
//! dataplane state and keeps the maps equal to it; attaches the programs to
//! the interfaces it is told about, including ones that appear later; and
//! answers the CLI on its socket.
//!
//! Everything it attaches and every map is pinned, so stopping the agent
//! (SIGTERM, a crash, an upgrade) leaves the dataplane serving, and the next
//! agent adopts the pins and reconciles from what the maps hold.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Service;
use log::{info, warn};
use svc_common::{CtTimeouts, DropReason};

use crate::{
    api::{self, Snapshot},
    apiserver::{Cidr, ServiceNetwork},
    cluster::{self, ClusterSource},
    dataplane::{self, Capacity, Dataplane, Frontend, Pins, SockLbTarget, TcHook, XdpForwarding},
    desired_state::{Changed, DesiredState, Objects},
    health::Health,
    http_server::{self, HealthHandle, SharedHealth},
    maglev::LoadBalancing,
    manifest_source::ManifestSource,
    metrics::{self, Exposition, Histogram, Sample, single},
    model::{self, Node, Problem},
    netif,
    reconcile::{Reconciler, Scope},
    service_health::ServiceHealthServers,
    view::EventView,
};

pub struct Config {
    pub source: SourceConfig,
    /// This node's name: endpoints elsewhere are remote, and the Node
    /// object of that name is watched. Empty: every endpoint is local.
    pub node_name: String,
    /// NodePorts answer on the node's addresses within these (empty: the
    /// node's own addresses, see `node_ips`).
    pub nodeport_addresses: Vec<Cidr>,
    /// Source ports for traffic from outside SNATed to the node.
    pub snat_ports: RangeInclusive<u16>,
    /// How long conntrack entries live.
    pub ct_timeouts: CtTimeouts,
    /// Map sizes.
    pub capacity: Capacity,
    pub xdp_forwarding: XdpForwarding,
    pub uplinks: Vec<String>,
    /// Interface names or globs (`veth*`).
    pub pod_interfaces: Vec<String>,
    /// Node addresses for NodePorts; empty means the Node object's (in
    /// cluster mode), else the uplinks'.
    pub node_ips: Vec<IpAddr>,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub pins: Pins,
    /// Where `/healthz` and `/livez` are served (kube-proxy's 10256).
    pub healthz_addr: Option<SocketAddr>,
    /// Where `/metrics` and `/proxyMode` are served (kube-proxy's 10249).
    pub metrics_addr: Option<SocketAddr>,
    /// How often the maps are compared with the desired state and
    /// repaired; health goes stale after twice this.
    pub sync_period: Duration,
    /// Socket-level load balancing for the node's own processes: the
    /// cgroup the socket hooks attach to (None: off).
    pub sock_lb: Option<SockLbTarget>,
    /// How new flows pick their backend (Maglev tables, or the modulo).
    pub load_balancing: LoadBalancing,
}

pub enum SourceConfig {
    /// A directory of manifests (no API server).
    Manifests {
        dir: PathBuf,
        network: ServiceNetwork,
    },
    /// The Kubernetes API.
    Cluster {
        /// None: in-cluster configuration.
        kubeconfig: Option<PathBuf>,
    },
}

/// What a source provides at a sync.
pub struct Inputs {
    /// Which Services may have changed since the last sync.
    pub changed: Changed,
    /// The Services and their slices, shared with the source (reading
    /// them copies nothing).
    pub objects: Arc<dyn Objects + Send + Sync>,
    /// This agent's Node, when the source knows it.
    pub node: Option<k8s_openapi::api::core::v1::Node>,
    /// Services (or parts) the source could not accept, with why.
    pub problems: Vec<Problem>,
}

enum Source {
    Manifests(ManifestSource),
    Cluster(ClusterSource),
}

impl Source {
    fn ready(&self) -> bool {
        match self {
            Source::Manifests(_) => true,
            Source::Cluster(c) => c.is_ready(),
        }
    }

    fn read(&mut self) -> Inputs {
        match self {
            Source::Manifests(m) => m.read(),
            Source::Cluster(c) => Inputs {
                changed: c.take_changed(),
                objects: Arc::new(c.objects()),
                node: c.node(),
                problems: Vec::new(),
            },
        }
    }
}

/// A drift check's result: the count of map-writing syncs when it
/// started, and the maps as read.
type DriftCheck = (u64, Result<dataplane::MapContents>);

/// How long a burst of changes may keep growing before one sync.
const COALESCE: Duration = Duration::from_millis(20);
/// How often interfaces are rescanned for new pod veths.
const INTERFACE_SCAN: Duration = Duration::from_millis(500);
/// How soon a sync that failed is tried again.
const RETRY: Duration = Duration::from_secs(1);

pub async fn run(cfg: Config) -> Result<()> {
    cfg.pins.prepare()?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let mut dp = Dataplane::load_pinned(&cfg.pins, cfg.capacity)?;
    dp.set_xdp_forwarding(cfg.xdp_forwarding);
    dp.set_ct_timeouts(cfg.ct_timeouts)?;
    // Before the maps are read back: a new table size deletes the old
    // tables, and the frontends are then adopted without them.
    dp.set_load_balancing(cfg.load_balancing)?;
    info!("new flows pick their backend by {}", cfg.load_balancing);
    dp.attach_sock_lb(cfg.sock_lb.as_ref(), &cfg.pins)?;
    let _kernel_log = forward_kernel_log(&mut dp);
    let (backends, frontends) = dp.dump()?;
    if !frontends.is_empty() {
        info!(
            "adopting {} frontends and {} backends from the pinned maps",
            frontends.len(),
            backends.len()
        );
    }

    let health = Arc::new(Mutex::new(SharedHealth {
        health: Health::new(2 * cfg.sync_period),
        answered: BTreeMap::new(),
    }));
    // The first sync is due from the start: an agent that never manages
    // one (no API server) goes unhealthy after the timeout.
    health.lock().unwrap().health.queued(SystemTime::now());
    let (metrics_tx, mut metrics_rx) = tokio::sync::mpsc::channel(4);
    http_server::start(
        cfg.healthz_addr,
        cfg.metrics_addr,
        health.clone(),
        metrics_tx,
    )
    .await?;

    let snapshot = Arc::new(Mutex::new(Snapshot::default()));
    let server = tokio::spawn({
        let (path, snapshot) = (cfg.socket.clone(), snapshot.clone());
        async move {
            if let Err(e) = api::serve(&path, snapshot).await {
                warn!("socket: {e:#}");
            }
        }
    });

    let (changed_tx, mut changed) = tokio::sync::mpsc::unbounded_channel();
    let source = match &cfg.source {
        SourceConfig::Manifests { dir, network } => Source::Manifests(ManifestSource::start(
            dir,
            network.clone(),
            &cfg.state_dir,
            changed_tx,
        )?),
        SourceConfig::Cluster { kubeconfig } => {
            let client = cluster::client(kubeconfig.as_deref()).await?;
            info!("watching the API server as node {}", cfg.node_name);
            Source::Cluster(ClusterSource::start(
                client,
                cfg.node_name.clone(),
                changed_tx,
            ))
        }
    };
    let mut state = State {
        source,
        reconciler: Reconciler::adopt(backends, frontends),
        desired: DesiredState::new(),
        whole_sync_due: true,
        retry: BTreeSet::new(),
        map_writes: 0,
        checking_drift: false,
        events: BTreeMap::new(),
        last_problems: BTreeMap::new(),
        counters: Counters::default(),
        health,
        snat: None,
        health_checks: ServiceHealthServers::new(),
        drops_seen: BTreeMap::new(),
    };

    let mut interfaces = Interfaces::default();
    interfaces.scan(&cfg, &mut dp);
    let mut retry_at = None;
    if state.source.ready() && !state.sync(&cfg, &mut dp, &snapshot).await {
        retry_at = Some(Instant::now() + RETRY);
    }

    let (drift_tx, mut drift_rx) = tokio::sync::mpsc::channel(1);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut scan = tokio::time::interval(INTERFACE_SCAN);
    let mut resync = tokio::time::interval_at(
        tokio::time::Instant::now() + cfg.sync_period,
        cfg.sync_period,
    );
    loop {
        let retry = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let ok = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = scan.tick() => {
                interfaces.scan(&cfg, &mut dp);
                continue;
            }
            Some(reply) = metrics_rx.recv() => {
                let _ = reply.send(state.render_metrics(&dp));
                continue;
            }
            Some(()) = changed.recv() => {
                state.counters.last_queued = Some(SystemTime::now());
                state.health.lock().unwrap().health.queued(SystemTime::now());
                // Coalesce a burst (an editor's write, a relist).
                tokio::time::sleep(COALESCE).await;
                while changed.try_recv().is_ok() {}
                state.sync(&cfg, &mut dp, &snapshot).await
            }
            _ = resync.tick() => {
                state.warn_about_new_drops(&cfg, &dp);
                state.check_drift(&cfg.pins, &drift_tx);
                state.expire_conntrack(&mut dp);
                state.sync(&cfg, &mut dp, &snapshot).await
            }
            Some((writes, maps)) = drift_rx.recv() => {
                if !state.repair_drift(writes, maps) {
                    continue;
                }
                state.sync(&cfg, &mut dp, &snapshot).await
            }
            _ = retry => state.sync(&cfg, &mut dp, &snapshot).await,
        };
        retry_at = (!ok).then(|| Instant::now() + RETRY);
    }
    info!("stopping; the pinned dataplane keeps serving");
    server.abort();
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}

/// Counters behind `/metrics` that only the loop updates.
struct Counters {
    sync_duration: Histogram,
    last_sync: Option<SystemTime>,
    last_queued: Option<SystemTime>,
    reconcile_errors: u64,
    drift_repairs: u64,
    /// Conntrack entries at the last sweep, and deleted by sweeps so far.
    conntrack_entries: usize,
    conntrack_expired: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            // kube-proxy's buckets for the same metric.
            sync_duration: Histogram::exponential(0.001, 2.0, 15),
            last_sync: None,
            last_queued: None,
            reconcile_errors: 0,
            drift_repairs: 0,
            conntrack_entries: 0,
            conntrack_expired: 0,
        }
    }
}

struct State {
    source: Source,
    reconciler: Reconciler,
    /// The desired state of the last sync.
    desired: DesiredState,
    /// Whether the next sync looks at every frontend (the first one, and
    /// after the maps were read back), not only at those that changed.
    whole_sync_due: bool,
    /// Frontends that could not be programmed, tried again at the next sync.
    retry: BTreeSet<Frontend>,
    /// Syncs that wrote to the service maps so far: a drift check read
    /// while one did is not compared.
    map_writes: u64,
    /// Whether a drift check is reading the maps.
    checking_drift: bool,
    events: BTreeMap<String, Vec<EventView>>,
    /// Each Service's problems at the last sync, so a lasting problem is
    /// reported once, not at every sync.
    last_problems: BTreeMap<String, BTreeSet<(String, String)>>,
    counters: Counters,
    health: HealthHandle,
    /// The SNAT addresses last written.
    snat: Option<(Option<Ipv4Addr>, Option<Ipv6Addr>)>,
    health_checks: ServiceHealthServers,
    /// Drop counters at the last look, by reason.
    drops_seen: BTreeMap<&'static str, u64>,
}

impl State {
    /// Makes the maps equal to what the source describes; false if some of
    /// it could not be programmed (to be retried).
    async fn sync(&mut self, cfg: &Config, dp: &mut Dataplane, snapshot: &Mutex<Snapshot>) -> bool {
        if !self.source.ready() {
            return true;
        }
        let started = Instant::now();
        let inputs = self.source.read();
        let own_ips = node_ips(cfg, inputs.node.as_ref());
        self.set_snat(cfg, &own_ips, dp);
        let node = Node {
            name: cfg.node_name.clone(),
            ips: node_port_ips(cfg, own_ips),
            zone: inputs
                .node
                .as_ref()
                .and_then(|n| n.metadata.labels.as_ref())
                .and_then(|l| l.get(model::ZONE_LABEL))
                .cloned(),
        };
        let update = self
            .desired
            .update(&inputs.changed, inputs.objects.as_ref(), &node);
        let mut changed = update.changed;
        changed.append(&mut self.retry);
        let scope = if self.whole_sync_due {
            Scope::All
        } else {
            Scope::Only(&changed)
        };
        let desired = self.desired.desired();
        let mut problems = inputs.problems;
        problems.extend(self.desired.problems().cloned());
        let ok = match self.reconciler.apply_to(desired, scope, dp) {
            Ok(c) => {
                if !c.is_empty() {
                    self.map_writes += 1;
                }
                self.whole_sync_due = false;
                self.retry = c.failed.iter().map(|(fe, _)| *fe).collect();
                if c.frontends_set + c.frontends_removed + c.backends_added + c.backends_removed > 0
                {
                    info!(
                        "programmed in {:?}: {} frontends set, {} removed, {} backends added, {} removed",
                        started.elapsed(),
                        c.frontends_set,
                        c.frontends_removed,
                        c.backends_added,
                        c.backends_removed
                    );
                }
                for (fe, why) in &c.failed {
                    if let Some(t) = desired.get(fe) {
                        problems.push(Problem {
                            namespace: t.service.namespace.clone(),
                            name: t.service.name.clone(),
                            reason: "FailedToProgram".into(),
                            message: format!("{} {:?}: {why}", fe.addr, fe.proto),
                        });
                    }
                }
                c.failed.is_empty()
            }
            Err(e) => {
                warn!("programming the dataplane: {e:#}");
                self.map_writes += 1;
                self.whole_sync_due = true;
                false
            }
        };
        let now = SystemTime::now();
        {
            let mut shared = self.health.lock().unwrap();
            shared.health.set_node(inputs.node.as_ref());
            if ok {
                shared.health.updated(now);
            }
        }
        if ok {
            self.counters
                .sync_duration
                .observe(started.elapsed().as_secs_f64());
            self.counters.last_sync = Some(now);
        } else {
            self.counters.reconcile_errors += 1;
        }
        // healthCheckNodePorts: kube-proxy answers them with its own
        // liveness (not the Node's eligibility) and this node's endpoints.
        let proxy_healthy = self.health.lock().unwrap().health.is_healthy(now);
        let checks = self.desired.health_checks();
        self.health_checks.sync(checks, proxy_healthy).await;
        self.report(problems);
        *snapshot.lock().unwrap() = Snapshot {
            objects: Some(inputs.objects),
            events: self.events.clone(),
        };
        ok
    }

    /// Points SNAT at the node's first address of each family (when they
    /// change), so flows from outside to other nodes' backends come back.
    fn set_snat(&mut self, cfg: &Config, own_ips: &[IpAddr], dp: &mut Dataplane) {
        let v4 = own_ips.iter().find_map(|ip| match ip {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        });
        let v6 = own_ips.iter().find_map(|ip| match ip {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        });
        if self.snat == Some((v4, v6)) {
            return;
        }
        match dp.set_snat(v4, v6, cfg.snat_ports.clone()) {
            Ok(()) => {
                info!(
                    "SNAT for remote backends: {v4:?} {v6:?}, ports {:?}",
                    cfg.snat_ports
                );
                self.snat = Some((v4, v6));
            }
            Err(e) => warn!("setting the SNAT addresses: {e:#}"),
        }
    }

    /// Logs drops that mean the node is short of a resource (SNAT ports,
    /// conntrack entries), once per sync period, with how many.
    fn warn_about_new_drops(&mut self, cfg: &Config, dp: &Dataplane) {
        let Ok(drops) = dp.drop_stats() else { return };
        for (reason, total) in drops {
            let seen = self
                .drops_seen
                .insert(reason.name(), total)
                .unwrap_or(total);
            let new = total.saturating_sub(seen);
            match reason {
                DropReason::SnatPortsExhausted if new > 0 => warn!(
                    "{new} new flows from outside to remote backends dropped: no free SNAT port in {:?} (--snat-port-range)",
                    cfg.snat_ports
                ),
                DropReason::ConntrackFull if new > 0 => {
                    warn!("{new} conntrack inserts failed: the CONNTRACK map is full")
                }
                _ => {}
            }
        }
    }

    /// Starts reading the maps back, off the loop (at 100k Services that
    /// takes seconds, which a change must not wait for); `repair_drift`
    /// gets the result, with the count of map-writing syncs at the start.
    fn check_drift(&mut self, pins: &Pins, done: &tokio::sync::mpsc::Sender<DriftCheck>) {
        if self.checking_drift {
            return;
        }
        self.checking_drift = true;
        let (pins, done, writes) = (pins.clone(), done.clone(), self.map_writes);
        tokio::task::spawn_blocking(move || {
            let _ = done.blocking_send((writes, dataplane::dump_pinned(&pins)));
        });
    }

    /// Compares the maps read back with what was programmed; on a
    /// difference (an entry deleted or rewritten behind the agent's back),
    /// adopts what the maps hold, so the next sync, due now (true),
    /// rewrites exactly what differs. A read that a sync's writes overlapped
    /// proves nothing: the next period reads again.
    fn repair_drift(&mut self, writes: u64, maps: Result<dataplane::MapContents>) -> bool {
        self.checking_drift = false;
        if writes != self.map_writes {
            return false;
        }
        match maps {
            Ok((backends, frontends)) => {
                let drift = self.reconciler.drift(&backends, &frontends);
                if drift > 0 {
                    warn!("{drift} map entries differ from what was programmed; repairing");
                    self.counters.drift_repairs += drift as u64;
                    self.reconciler = Reconciler::adopt(backends, frontends);
                    self.whole_sync_due = true;
                    return true;
                }
            }
            Err(e) => warn!("reading the maps back: {e:#}"),
        }
        false
    }

    /// Deletes the conntrack entries of flows that are over.
    fn expire_conntrack(&mut self, dp: &mut Dataplane) {
        match dp.expire_conntrack(crate::conntrack::now_s()) {
            Ok((entries, deleted)) => {
                self.counters.conntrack_entries = entries - deleted;
                self.counters.conntrack_expired += deleted as u64;
            }
            Err(e) => warn!("sweeping conntrack: {e:#}"),
        }
    }

    /// Logs and records (and in cluster mode, publishes as Events) the
    /// problems that are new since the last sync.
    fn report(&mut self, problems: Vec<Problem>) {
        let now = unix_now();
        let mut current: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
        for p in problems {
            let key = format!("{}/{}", p.namespace, p.name);
            let entry = (p.reason.clone(), p.message.clone());
            let known = self
                .last_problems
                .get(&key)
                .is_some_and(|s| s.contains(&entry));
            if !known {
                warn!("{key}: {}: {}", p.reason, p.message);
                record(
                    self.events.entry(key.clone()).or_default(),
                    "Warning",
                    &p.reason,
                    &p.message,
                    now,
                );
                if let Source::Cluster(c) = &self.source {
                    c.publish(&p);
                }
            }
            current.entry(key).or_default().insert(entry);
        }
        self.last_problems = current;
    }

    fn render_metrics(&self, dp: &Dataplane) -> String {
        let mut e = Exposition::default();
        let c = &self.counters;
        e.histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "How long one sync of the desired state into the BPF maps took, in seconds.",
            &c.sync_duration,
        );
        e.gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "When the maps were last synced successfully (Unix seconds).",
            &single(metrics::timestamp(c.last_sync)),
        );
        e.gauge(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "When a change was last queued for a sync (Unix seconds).",
            &single(metrics::timestamp(c.last_queued)),
        );
        {
            let shared = self.health.lock().unwrap();
            for (name, path) in [
                ("kubeproxy_proxy_healthz_total", "/healthz"),
                ("kubeproxy_proxy_livez_total", "/livez"),
            ] {
                let samples: Vec<Sample> = shared
                    .answered
                    .iter()
                    .filter(|((p, _), _)| *p == path)
                    .map(|((_, code), n)| (vec![("code", code.to_string())], *n as f64))
                    .collect();
                e.counter(
                    name,
                    &format!("Answers of {path}, by status code."),
                    &samples,
                );
            }
        }
        let programmed = self.reconciler.frontends();
        let services: BTreeSet<(&str, &str)> = programmed
            .keys()
            .filter_map(|fe| self.desired.desired().get(fe))
            .map(|t| (t.service.namespace.as_str(), t.service.name.as_str()))
            .collect();
        e.gauge(
            "svc_agent_services_programmed",
            "Services with at least one frontend in the maps.",
            &single(services.len() as f64),
        );
        e.gauge(
            "svc_agent_frontends_programmed",
            "Frontends (service IP, port, protocol) in the maps.",
            &single(programmed.len() as f64),
        );
        e.gauge(
            "svc_agent_endpoints_programmed",
            "Distinct backends (endpoint address and port) in the maps.",
            &single(self.reconciler.backend_count() as f64),
        );
        e.counter(
            "svc_agent_reconcile_errors_total",
            "Syncs that could not program everything (retried).",
            &single(c.reconcile_errors as f64),
        );
        e.counter(
            "svc_agent_drift_repairs_total",
            "Map entries found different from what was programmed, and repaired.",
            &single(c.drift_repairs as f64),
        );
        e.gauge(
            "svc_agent_conntrack_entries",
            "Conntrack entries (one per direction of a flow) after the last sweep.",
            &single(c.conntrack_entries as f64),
        );
        e.counter(
            "svc_agent_conntrack_expired_total",
            "Conntrack entries of finished flows deleted by the periodic sweep.",
            &single(c.conntrack_expired as f64),
        );

        // Per-frontend traffic, from the per-CPU counters.
        let (mut packets, mut bytes) = (Vec::new(), Vec::new());
        for (fe, p) in programmed {
            let (Some(t), Ok(s)) = (
                self.desired.desired().get(fe),
                dp.service_stats(p.service_id),
            ) else {
                continue;
            };
            for (direction, n_packets, n_bytes) in [
                ("forward", s.packets, s.bytes),
                ("reply", s.reply_packets, s.reply_bytes),
            ] {
                let labels = vec![
                    ("namespace", t.service.namespace.clone()),
                    ("service", t.service.name.clone()),
                    ("port", t.service.port.clone()),
                    ("protocol", format!("{:?}", fe.proto).to_uppercase()),
                    ("frontend", fe.addr.to_string()),
                    ("direction", direction.to_string()),
                ];
                packets.push((labels.clone(), n_packets as f64));
                bytes.push((labels, n_bytes as f64));
            }
        }
        e.counter(
            "svc_agent_service_packets_total",
            "Packets translated per frontend: forward (client to backend) and reply.",
            &packets,
        );
        e.counter(
            "svc_agent_service_bytes_total",
            "Bytes translated per frontend: forward (client to backend) and reply.",
            &bytes,
        );
        if let Ok(drops) = dp.drop_stats() {
            let samples: Vec<Sample> = drops
                .iter()
                .map(|(r, n)| (vec![("reason", r.name().to_string())], *n as f64))
                .collect();
            e.counter(
                "svc_agent_dropped_packets_total",
                "Packets to a frontend that the programs dropped, by reason.",
                &samples,
            );
        }
        e.finish()
    }
}

/// The addresses NodePorts answer on: with `--nodeport-addresses`, every
/// local address within those CIDRs (kube-proxy's filter); else the node's
/// own addresses.
fn node_port_ips(cfg: &Config, own: Vec<IpAddr>) -> Vec<IpAddr> {
    if cfg.nodeport_addresses.is_empty() {
        return own;
    }
    let names: Vec<String> = netif::list().into_keys().collect();
    let mut ips: Vec<IpAddr> = netif::addresses(&names)
        .into_iter()
        .filter(|ip| cfg.nodeport_addresses.iter().any(|c| c.contains(ip)))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The node's own addresses: `--node-ip`, else the Node object's
/// InternalIP and ExternalIP addresses, else the uplinks' addresses.
fn node_ips(cfg: &Config, node: Option<&k8s_openapi::api::core::v1::Node>) -> Vec<IpAddr> {
    if !cfg.node_ips.is_empty() {
        return cfg.node_ips.clone();
    }
    let from_node: Vec<IpAddr> = node
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    if !from_node.is_empty() {
        return from_node;
    }
    netif::addresses(&cfg.uplinks)
}

pub fn key(s: &Service) -> String {
    format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or("default"),
        s.metadata.name.as_deref().unwrap_or("")
    )
}

/// Appends an event, or counts a repeat of the latest one.
fn record(events: &mut Vec<EventView>, type_: &str, reason: &str, message: &str, now: u64) {
    if let Some(last) = events.last_mut()
        && last.reason == reason
        && last.message == message
    {
        last.count += 1;
        last.last_seen = now;
        return;
    }
    events.push(EventView {
        type_: type_.into(),
        reason: reason.into(),
        message: message.into(),
        first_seen: now,
        last_seen: now,
        count: 1,
        source: "svc-agent".into(),
    });
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Interfaces the programs are attached to, by name, with the index they
/// had: a veth deleted and re-created under the same name is a new device.
#[derive(Default)]
struct Interfaces {
    attached: BTreeMap<String, u32>,
}

impl Interfaces {
    fn scan(&mut self, cfg: &Config, dp: &mut Dataplane) {
        let present = netif::list();
        for (name, index) in &present {
            if self.attached.get(name) == Some(index) {
                continue;
            }
            let result = if cfg.uplinks.iter().any(|p| netif::glob_match(p, name)) {
                // SNATed packets carry the node's own address as source
                // when XDP hands them to the stack to forward: without
                // accept_local, IPv4 drops them as martians.
                if let Err(e) = netif::accept_local_source(name) {
                    warn!("{name}: accept_local: {e} (SNATed traffic may be dropped)");
                }
                dp.attach_xdp_pinned(name, &cfg.pins.xdp_link(name))
                    .and_then(|_| {
                        dp.attach_tc_pinned(
                            name,
                            TcHook::Egress,
                            &cfg.pins.tc_link(name, TcHook::Egress),
                        )
                    })
                    .map(|_| "XDP and tcx egress")
            } else if cfg
                .pod_interfaces
                .iter()
                .any(|p| netif::glob_match(p, name))
            {
                if let Err(e) = netif::accept_local_source(name) {
                    warn!("{name}: accept_local: {e} (NodePort replies may be dropped)");
                }
                [TcHook::Ingress, TcHook::Egress]
                    .into_iter()
                    .try_for_each(|hook| {
                        dp.attach_tc_pinned(name, hook, &cfg.pins.tc_link(name, hook))
                    })
                    .map(|_| "tcx ingress and egress")
            } else {
                continue;
            };
            match result {
                Ok(kind) => {
                    info!("{kind} attached to {name}");
                    self.attached.insert(name.clone(), *index);
                }
                Err(e) => warn!("attaching to {name}: {e:#}"),
            }
        }
        // Gone interfaces took their links with them; drop the stale pins.
        let gone: Vec<String> = self
            .attached
            .keys()
            .filter(|n| !present.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            self.attached.remove(&name);
            let _ = std::fs::remove_file(cfg.pins.xdp_link(&name));
            for hook in [TcHook::Ingress, TcHook::Egress] {
                let _ = std::fs::remove_file(cfg.pins.tc_link(&name, hook));
            }
        }
    }
}

/// Forwards the programs' aya-log records to this process's logger.
fn forward_kernel_log(dp: &mut Dataplane) -> Option<tokio::task::JoinHandle<()>> {
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
