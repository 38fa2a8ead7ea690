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
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Service;
use log::{info, warn};
use notify::Watcher as _;

use crate::{
    api::{self, Snapshot},
    apiserver::{self, Allocations, ServiceNetwork},
    dataplane::{Dataplane, Pins},
    endpoints, manifests,
    model::{self, Node},
    netif,
    reconcile::Reconciler,
    view::{EventView, ServiceView},
};

pub struct Config {
    pub manifests: PathBuf,
    pub uplinks: Vec<String>,
    /// Interface names or globs (`veth*`).
    pub pod_interfaces: Vec<String>,
    /// Node addresses for NodePorts; empty means the uplinks' addresses.
    pub node_ips: Vec<IpAddr>,
    pub network: ServiceNetwork,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub pins: Pins,
}

/// How long a burst of file events may keep growing before one sync.
const COALESCE: Duration = Duration::from_millis(20);
/// How often interfaces are rescanned for new pod veths.
const INTERFACE_SCAN: Duration = Duration::from_millis(500);

pub async fn run(cfg: Config) -> Result<()> {
    cfg.pins.prepare()?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let mut dp = Dataplane::load_pinned(&cfg.pins)?;
    let _kernel_log = forward_kernel_log(&mut dp);
    let (backends, frontends) = dp.dump()?;
    if !frontends.is_empty() {
        info!(
            "adopting {} frontends and {} backends from the pinned maps",
            frontends.len(),
            backends.len()
        );
    }
    let allocations = Allocations::load(&cfg.state_dir.join("allocations.json"))?;
    let mut state = State {
        reconciler: Reconciler::adopt(backends, frontends),
        saved_allocations: allocations.clone(),
        allocations,
        admitted: BTreeMap::new(),
        events: BTreeMap::new(),
        last_rejections: BTreeMap::new(),
    };
    let snapshot = Arc::new(Mutex::new(Snapshot::default()));
    let server = tokio::spawn({
        let (path, snapshot) = (cfg.socket.clone(), snapshot.clone());
        async move {
            if let Err(e) = api::serve(&path, snapshot).await {
                warn!("socket: {e:#}");
            }
        }
    });

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok() {
            let _ = tx.send(());
        }
    })?;
    std::fs::create_dir_all(&cfg.manifests)?;
    watcher
        .watch(&cfg.manifests, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", cfg.manifests.display()))?;

    let mut interfaces = Interfaces::default();
    interfaces.scan(&cfg, &mut dp);
    let node = Node {
        ips: if cfg.node_ips.is_empty() {
            netif::addresses(&cfg.uplinks)
        } else {
            cfg.node_ips.clone()
        },
    };
    state.sync(&cfg, &node, &mut dp, &snapshot);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut scan = tokio::time::interval(INTERFACE_SCAN);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = scan.tick() => interfaces.scan(&cfg, &mut dp),
            Some(()) = rx.recv() => {
                // Coalesce a burst (an editor's write, a `cp` of many files).
                tokio::time::sleep(COALESCE).await;
                while rx.try_recv().is_ok() {}
                state.sync(&cfg, &node, &mut dp, &snapshot);
            }
        }
    }
    info!("stopping; the pinned dataplane keeps serving");
    server.abort();
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}

struct State {
    reconciler: Reconciler,
    allocations: Allocations,
    /// What the state file holds.
    saved_allocations: Allocations,
    /// Last admitted version of each Service, by "ns/name".
    admitted: BTreeMap<String, Service>,
    events: BTreeMap<String, Vec<EventView>>,
    /// The rejection message each object had at the last sync, so an
    /// unchanged invalid file is reported once, not at every sync.
    last_rejections: BTreeMap<String, String>,
}

impl State {
    fn sync(&mut self, cfg: &Config, node: &Node, dp: &mut Dataplane, snapshot: &Mutex<Snapshot>) {
        let started = Instant::now();
        let objects = manifests::read_dir(&cfg.manifests);
        for e in &objects.errors {
            warn!("manifests: {e}");
        }
        let admission = apiserver::admit(
            objects.services,
            &self.admitted,
            &cfg.network,
            &mut self.allocations,
        );
        let now = unix_now();
        let mut rejections = BTreeMap::new();
        for r in &admission.rejections {
            let key = format!("{}/{}", r.namespace, r.name);
            if self.last_rejections.get(&key) != Some(&r.message) {
                warn!("{}", r.message);
                record(
                    self.events.entry(key.clone()).or_default(),
                    "Warning",
                    "Invalid",
                    &r.message,
                    now,
                );
            }
            rejections.insert(key, r.message.clone());
        }
        self.last_rejections = rejections;
        self.admitted = admission
            .admitted
            .iter()
            .map(|s| (key(s), s.clone()))
            .collect();
        // Written (and fsynced) only when it changed: most syncs are
        // endpoint changes that allocate nothing.
        if self.allocations != self.saved_allocations {
            match self
                .allocations
                .save(&cfg.state_dir.join("allocations.json"))
            {
                Ok(()) => self.saved_allocations = self.allocations.clone(),
                Err(e) => warn!("saving allocations: {e:#}"),
            }
        }

        let mut slices = endpoints::endpoint_slices(&admission.admitted, &objects.pods);
        slices.extend(objects.endpoint_slices);
        let desired = model::desired(&admission.admitted, &slices, node);
        match self.reconciler.apply(&desired, dp) {
            Ok(c) if !c.is_empty() => info!(
                "programmed in {:?}: {} frontends set, {} removed, {} backends added, {} removed",
                started.elapsed(),
                c.frontends_set,
                c.frontends_removed,
                c.backends_added,
                c.backends_removed
            ),
            Ok(_) => {}
            Err(e) => warn!("programming the dataplane: {e:#}"),
        }

        let names: BTreeSet<String> = self.admitted.keys().cloned().collect();
        let services = admission
            .admitted
            .iter()
            .map(|s| ServiceView {
                service: s.clone(),
                endpoints: model::port_endpoints(s, &slices),
                events: self.events.get(&key(s)).cloned().unwrap_or_default(),
            })
            .collect();
        let orphan_events = self
            .events
            .iter()
            .filter(|(k, _)| !names.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        *snapshot.lock().unwrap() = Snapshot {
            services,
            orphan_events,
        };
    }
}

fn key(s: &Service) -> String {
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
                dp.attach_xdp_pinned(name, &cfg.pins.xdp_link(name))
                    .map(|_| "XDP")
            } else if cfg
                .pod_interfaces
                .iter()
                .any(|p| netif::glob_match(p, name))
            {
                if let Err(e) = netif::accept_local_source(name) {
                    warn!("{name}: accept_local: {e} (NodePort replies may be dropped)");
                }
                dp.attach_tc_pinned(name, &cfg.pins.tc_link(name))
                    .map(|_| "tcx ingress")
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
            let _ = std::fs::remove_file(cfg.pins.tc_link(&name));
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
