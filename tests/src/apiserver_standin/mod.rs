//! A Kubernetes API server stand-in for end-to-end tests: the real agent
//! talks to it through its ordinary kube client and a kubeconfig.
//!
//! It speaks the wire protocol kube-rs relies on: HTTPS with a bearer
//! token; JSON get/list/watch/create/update/merge-patch/delete of Services,
//! EndpointSlices, Nodes and Events (and any other k8s-openapi kind a test
//! `apply`s); one resourceVersion counter for all kinds; label and field
//! selectors; paged lists with continue tokens; watches from a
//! resourceVersion with bookmarks, timeouts and 410 Expired once the
//! history is compacted (`expire_watches`).
//!
//! It lives in a network namespace and serves from its own tokio runtime,
//! so synchronous tests drive it directly.
mod http;
mod kubeconfig;
mod patch;
mod selector;
mod server;
mod status;
mod store;
mod tls;
mod watch;

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use k8s_openapi::{
    Resource,
    api::{
        core::v1::{Event as CoreEvent, Node, Service},
        discovery::v1::EndpointSlice,
        events::v1::Event,
    },
};
use rustls::ServerConfig;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::runtime::Runtime;

use crate::netns::NetNs;
use server::Serving;
use store::{ResourceType, Store};

/// State shared by the test-side API and the server's tasks.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// Signalled after every write to the store: wakes the watch streams.
    changed: tokio::sync::watch::Sender<()>,
    requests: Mutex<Vec<String>>,
    token: String,
    bookmark_interval: Mutex<Duration>,
}

/// Nothing is left half-done under these locks, so a panic elsewhere
/// (a failing test) must not make the server unusable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&lock(&self.store))
    }

    fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let result = f(&mut lock(&self.store));
        self.changed.send_replace(());
        result
    }

    fn log_request(&self, line: String) {
        lock(&self.requests).push(line);
    }

    fn bookmark_interval(&self) -> Duration {
        *lock(&self.bookmark_interval)
    }
}

pub struct ApiServerStandIn {
    shared: Arc<Shared>,
    /// An Option only so that Drop can shut it down without blocking.
    runtime: Option<Runtime>,
    tls: Arc<ServerConfig>,
    ca_pem: String,
    /// The network namespace, to bind in again on resume().
    netns: File,
    ip: IpAddr,
    port: u16,
    serving: Mutex<Option<Serving>>,
}

impl ApiServerStandIn {
    /// Serves HTTPS on 127.0.0.1:<free port> inside `ns`.
    pub fn start(ns: &NetNs) -> Result<Self> {
        Self::start_on(ns, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Serves HTTPS on `ip`:<free port> inside `ns` (an address of one of
    /// its interfaces, so that clients in other namespaces can reach it);
    /// the certificate and the kubeconfig name that address.
    pub fn start_on(ns: &NetNs, ip: IpAddr) -> Result<Self> {
        let pki = tls::generate(ip).context("making the stand-in's certificates")?;
        let netns = ns.enter(|| Ok(File::open("/proc/thread-self/ns/net")?))?;
        let listener = server::bind_in(&netns, ip, 0)?;
        let port = listener.local_addr()?.port();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("apiserver-standin")
            .enable_all()
            .build()?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new([
                ResourceType::of::<Service>(),
                ResourceType::of::<EndpointSlice>(),
                ResourceType::of::<Node>(),
                ResourceType::of::<Event>(),
                ResourceType::of::<CoreEvent>(),
            ])),
            changed: tokio::sync::watch::Sender::new(()),
            requests: Mutex::new(Vec::new()),
            token: format!("standin-{:x}-{nanos:x}", std::process::id()),
            bookmark_interval: Mutex::new(Duration::from_secs(1)),
        });
        let serving = Serving::spawn(
            runtime.handle(),
            listener,
            pki.server_config.clone(),
            shared.clone(),
        )?;
        Ok(Self {
            shared,
            runtime: Some(runtime),
            tls: pki.server_config,
            ca_pem: pki.ca_pem,
            netns,
            ip,
            port,
            serving: Mutex::new(Some(serving)),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where it listens (the kubeconfig's server).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// The bearer token clients must send.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The CA certificate (PEM) the server's certificate chains to.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// How often watches that allow bookmarks get one (default 1 s);
    /// applies to watches started afterwards.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        *lock(&self.shared.bookmark_interval) = interval;
    }

    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        // SocketAddr brackets an IPv6 address, as a URL wants.
        let server = format!("https://{}", self.addr());
        let yaml = kubeconfig::render(&server, &self.ca_pem, &self.shared.token);
        std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
    }

    /// Create or replace (by kind, namespace, name); returns the stored
    /// object with its new resourceVersion. Unchanged content is not a
    /// write (same resourceVersion, no watch event), as on a real server.
    pub fn apply<K>(&self, obj: &K) -> Result<K>
    where
        K: Resource + Serialize + DeserializeOwned,
    {
        let rt = ResourceType::of::<K>();
        let value = serde_json::to_value(obj)?;
        let stored = self.shared.write(|s| {
            s.register(rt);
            s.upsert(rt, value)
        })?;
        Ok(serde_json::from_value(stored)?)
    }

    /// Deletes an object; `namespace` is None for cluster-scoped kinds.
    pub fn delete<K: Resource>(&self, namespace: Option<&str>, name: &str) -> Result<()> {
        let rt = ResourceType::of::<K>();
        self.shared
            .write(|s| s.delete(rt, namespace.unwrap_or(""), name))?;
        Ok(())
    }

    /// The stored object; panics if it does not decode as `K` (a test bug
    /// or a client that stored something malformed: either way the test
    /// should fail loudly).
    pub fn get<K: Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<K> {
        let rt = ResourceType::of::<K>();
        let value = self
            .shared
            .read(|s| s.get(rt, namespace.unwrap_or(""), name).cloned())?;
        Some(
            serde_json::from_value(value)
                .unwrap_or_else(|e| panic!("stored {} {name} does not decode: {e}", rt.kind)),
        )
    }

    /// The API server goes away: stop listening and drop every connection
    /// (clients see refused connections and closed streams). The store
    /// stays; apply/delete keep working.
    pub fn stop(&self) {
        if let Some(serving) = lock(&self.serving).take() {
            serving.shut();
        }
        self.shared.write(Store::end_watches);
    }

    /// Comes back on the same port with the state it has now (changes made
    /// while stopped included). Does nothing if already serving.
    pub fn resume(&self) -> Result<()> {
        let mut serving = lock(&self.serving);
        if serving.is_none() {
            let listener = server::bind_in(&self.netns, self.ip, self.port)?;
            let runtime = self.runtime.as_ref().context("the runtime is gone")?;
            *serving = Some(Serving::spawn(
                runtime.handle(),
                listener,
                self.tls.clone(),
                self.shared.clone(),
            )?);
        }
        Ok(())
    }

    /// Compacts the history (every resourceVersion so far becomes too old)
    /// and ends every open watch stream: clients re-watch from their last
    /// resourceVersion, get 410 Expired and must relist.
    pub fn expire_watches(&self) {
        self.shared.write(Store::expire);
    }

    /// Every Event object (events.k8s.io/v1 and core/v1) clients created or
    /// patched, as now stored, in creation order.
    pub fn events(&self) -> Vec<Value> {
        self.shared.read(|s| {
            let mut events: Vec<Value> = s
                .types()
                .iter()
                .filter(|t| t.kind == "Event")
                .filter_map(|t| s.snapshot(*t, None).ok())
                .flat_map(|(_, objects)| objects.into_values())
                .collect();
            // uids are minted from the creation resourceVersion.
            events.sort_by(|a, b| {
                a["metadata"]["uid"]
                    .as_str()
                    .cmp(&b["metadata"]["uid"].as_str())
            });
            events
        })
    }

    /// Every request received, as "METHOD path?query" (the query as sent,
    /// percent-encoded), in order.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.requests).clone()
    }
}

impl Drop for ApiServerStandIn {
    fn drop(&mut self) {
        self.stop();
        // Not a blocking shutdown: the stand-in may be dropped inside
        // another runtime's async context, where blocking panics.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
