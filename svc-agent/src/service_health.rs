//! kube-proxy's per-Service health checks: for a LoadBalancer Service with
//! `externalTrafficPolicy: Local`, every node answers HTTP on the Service's
//! `healthCheckNodePort`, 200 when it has a ready endpoint of the Service
//! (and the proxy is healthy), 503 otherwise, so that cloud load balancers
//! send the Service's traffic only to nodes that can serve it locally.
//!
//! Three parts: `health_check_ports` (which ports to serve, and each one's
//! counts: a pure function of the objects), `answer` (the reply to one
//! probe: a pure function) and `ServiceHealthServers` (the listeners).
//!
//! The rules are kube-proxy's (pkg/proxy/healthcheck/service_health.go,
//! pkg/proxy/endpoints.go, pkg/proxy/endpointslicecache.go):
//! * only LoadBalancer Services get a check (`NeedsHealthCheck`), not
//!   NodePort ones, even with externalTrafficPolicy Local;
//! * an endpoint counts when its `nodeName` is this node's name and it is
//!   ready (unset means ready); serving and terminating do not matter, so a
//!   node left with terminating endpoints only answers 503 and load
//!   balancers drain it (KEP-1669) while the dataplane still uses them;
//! * endpoints are counted by IP address across the Service's ports (a Pod
//!   serving two ports is one endpoint), and per IP family: kube-proxy runs
//!   one proxier per family, each counting its own, so a dual-stack Pod is
//!   one endpoint, not two;
//! * every path and method gets the same answer; the proxy's own health is
//!   the one of `/livez` (the Node's eligibility does not enter).
use std::{
    collections::{BTreeMap, BTreeSet, btree_map::Entry},
    convert::Infallible,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use http_body_util::Full;
use hyper::{Response, body::Bytes};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use log::{info, warn};
use tokio::{
    net::{TcpListener, TcpSocket},
    task::{JoinHandle, JoinSet},
};

use crate::model::is_proxied;

/// Where kube-proxy reports the local endpoint count as a weight (Google
/// Cloud's weighted load balancing reads it).
pub const WEIGHT_HEADER: &str = "X-Load-Balancing-Endpoint-Weight";

/// The IP family a probe arrived over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// The family of an address, IPv4-mapped IPv6 ones (what a dual-stack
    /// socket reports for IPv4 peers) counting as IPv4.
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

/// One health check port's Service and what it reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealth {
    pub namespace: String,
    pub name: String,
    /// Ready endpoints on this node, as told to a probe over IPv4.
    pub local_ipv4: usize,
    /// Ready endpoints on this node, as told to a probe over IPv6.
    pub local_ipv6: usize,
}

impl ServiceHealth {
    pub fn local_endpoints(&self, probe: Family) -> usize {
        match probe {
            Family::Ipv4 => self.local_ipv4,
            Family::Ipv6 => self.local_ipv6,
        }
    }
}

/// The health check ports this node serves, with each one's Service and
/// counts.
///
/// A dual-stack Service reports each family's count to probes of that
/// family (as kube-proxy does since it binds one socket per family); a
/// single-stack Service reports its family's count whatever the probe's
/// family (as kube-proxy's one wildcard socket did before that).
///
/// Two Services claiming one port (the API server's allocator prevents
/// it; manifests may not) leave it to the first by namespace and name.
pub fn health_check_ports(
    checks: impl IntoIterator<Item = (u16, ServiceHealth)>,
) -> BTreeMap<u16, ServiceHealth> {
    let mut out: BTreeMap<u16, ServiceHealth> = BTreeMap::new();
    for (port, health) in checks {
        match out.entry(port) {
            Entry::Vacant(e) => {
                e.insert(health);
            }
            Entry::Occupied(mut e) => {
                let held = e.get();
                if (&health.namespace, &health.name) < (&held.namespace, &held.name) {
                    e.insert(health);
                }
            }
        }
    }
    out
}

/// One Service's health check port and what it reports, given its own
/// slices, if it has one (see `health_check_ports`).
pub fn health_check(
    svc: &Service,
    own_slices: &[&Arc<EndpointSlice>],
    node_name: &str,
) -> Option<(u16, ServiceHealth)> {
    if !is_proxied(svc) {
        return None;
    }
    let port = health_check_node_port(svc)?;
    let (v4, v6) = local_ready_endpoints(own_slices, node_name);
    let (local_ipv4, local_ipv6) = match cluster_ip_families(svc) {
        (true, true) => (v4, v6),
        (true, false) => (v4, v4),
        (false, true) => (v6, v6),
        // No cluster IP: kube-proxy serves it in neither family.
        (false, false) => return None,
    };
    let health = ServiceHealth {
        namespace: svc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: svc.metadata.name.clone().unwrap_or_default(),
        local_ipv4,
        local_ipv6,
    };
    Some((port, health))
}

/// The port kube-proxy would serve for the Service: LoadBalancer with
/// externalTrafficPolicy Local, with a port to proxy and the allocated
/// healthCheckNodePort.
fn health_check_node_port(svc: &Service) -> Option<u16> {
    let spec = svc.spec.as_ref()?;
    let wanted = spec.type_.as_deref() == Some("LoadBalancer")
        && spec.external_traffic_policy.as_deref() == Some("Local")
        && spec.ports.as_ref().is_some_and(|p| !p.is_empty());
    if !wanted {
        return None;
    }
    spec.health_check_node_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

/// Whether the Service has an IPv4 and an IPv6 cluster IP: kube-proxy's
/// proxier of a family only knows the Services with a cluster IP of it.
fn cluster_ip_families(svc: &Service) -> (bool, bool) {
    let spec = svc.spec.as_ref();
    let ips = spec
        .and_then(|s| s.cluster_ips.clone())
        .filter(|v| !v.is_empty())
        .or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]))
        .unwrap_or_default();
    let families: Vec<Family> = ips
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .map(Family::of)
        .collect();
    (
        families.contains(&Family::Ipv4),
        families.contains(&Family::Ipv6),
    )
}

/// This node's ready endpoints of the slices, by distinct IP: (IPv4, IPv6).
///
/// As kube-proxy reads slices: only an endpoint's first address counts,
/// and only through a slice port with a number (kube-proxy ignores the
/// others, so a slice without one contributes nothing). An address listed
/// more than once counts if one of its local entries is ready (kube-proxy
/// keeps one of them, which one depending on map order).
fn local_ready_endpoints(slices: &[&Arc<EndpointSlice>], node_name: &str) -> (usize, usize) {
    let mut ready: BTreeSet<IpAddr> = BTreeSet::new();
    for slice in slices {
        let family = match slice.address_type.as_str() {
            "IPv4" => Family::Ipv4,
            "IPv6" => Family::Ipv6,
            _ => continue,
        };
        let has_port = slice.ports.iter().flatten().any(|p| {
            p.port
                .and_then(|p| u16::try_from(p).ok())
                .is_some_and(|p| p != 0)
        });
        if !has_port {
            continue;
        }
        for ep in &slice.endpoints {
            let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            // An empty node name (unknown) makes nothing local.
            let local = !node_name.is_empty() && ep.node_name.as_deref() == Some(node_name);
            let is_ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if Family::of(ip) == family && local && is_ready {
                ready.insert(ip);
            }
        }
    }
    let v4 = ready.iter().filter(|ip| ip.is_ipv4()).count();
    (v4, ready.len() - v4)
}

/// A reply: status, headers in order, body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// kube-proxy's reply to a probe: 200 when the node has local endpoints
/// of the probe's family and the proxy is healthy, else 503; the count in
/// the weight header; the body byte for byte as kube-proxy prints it
/// (tab-indented, no final newline).
pub fn answer(health: &ServiceHealth, probe: Family, proxy_healthy: bool) -> Answer {
    let count = health.local_endpoints(probe);
    let status = if count != 0 && proxy_healthy {
        200
    } else {
        503
    };
    // Go's %q and JSON quote Kubernetes names (DNS labels) alike; JSON's
    // escaping keeps any other name valid JSON.
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        quote(&health.namespace),
        quote(&health.name),
    );
    Answer {
        status,
        headers: vec![
            ("Content-Type", "application/json".into()),
            ("X-Content-Type-Options", "nosniff".into()),
            (WEIGHT_HEADER, count.to_string()),
        ],
        body,
    }
}

/// What the listeners answer from; replaced at each sync.
#[derive(Debug, Default)]
struct Shared {
    services: BTreeMap<u16, ServiceHealth>,
    proxy_healthy: bool,
}

type SharedHandle = Arc<Mutex<Shared>>;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the accept loop waits after an accept error (out of file
/// descriptors, typically) before trying again, rather than spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One HTTP listener per health check port, on every address of the node
/// (one dual-stack socket, or IPv4 alone on a host without IPv6).
///
/// Dropping it closes every listener (from its tasks' next poll).
#[derive(Debug, Default)]
pub struct ServiceHealthServers {
    shared: SharedHandle,
    /// Port → the task that owns its listener and its connections.
    listeners: BTreeMap<u16, JoinHandle<()>>,
}

impl ServiceHealthServers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves exactly `wanted`: binds the ports not bound yet, closes the
    /// others (the port is free again when this returns; open connections
    /// to it are closed too), and answers from the new counts and proxy
    /// health on the listeners kept, without rebinding them.
    ///
    /// A port that cannot be bound (taken by another process) is logged
    /// and tried again at the next sync. Probes see `proxy_healthy` until
    /// the next sync: call it whenever the proxy's health may change.
    pub async fn sync(&mut self, wanted: BTreeMap<u16, ServiceHealth>, proxy_healthy: bool) {
        let stale: Vec<u16> = self
            .listeners
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        {
            let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            shared.services = wanted.clone();
            shared.proxy_healthy = proxy_healthy;
        }
        for port in stale {
            if let Some(task) = self.listeners.remove(&port) {
                task.abort();
                // Awaiting the aborted task means its listener is dropped,
                // so the port is free when sync returns.
                let _ = task.await;
                info!("closed the health check listener on port {port}");
            }
        }
        for (port, health) in &wanted {
            if self.listeners.contains_key(port) {
                continue;
            }
            match bind(*port) {
                Ok(listener) => {
                    info!(
                        "serving the health check of {}/{} on port {port}",
                        health.namespace, health.name
                    );
                    let task = tokio::spawn(serve(listener, *port, self.shared.clone()));
                    self.listeners.insert(*port, task);
                }
                Err(e) => warn!(
                    "cannot serve the health check of {}/{} on port {port} (retrying at the next sync): {e}",
                    health.namespace, health.name
                ),
            }
        }
    }

    /// The ports listened on now.
    pub fn ports(&self) -> Vec<u16> {
        self.listeners.keys().copied().collect()
    }
}

impl Drop for ServiceHealthServers {
    fn drop(&mut self) {
        for task in self.listeners.values() {
            task.abort();
        }
    }
}

/// A listener on every address: `[::]` with IPV6_V6ONLY off, which takes
/// IPv4 too whatever `net.ipv6.bindv6only` says; `0.0.0.0` where the host
/// has no IPv6.
fn bind(port: u16) -> io::Result<TcpListener> {
    match bind_dual_stack(port) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
            ) =>
        {
            listen(
                TcpSocket::new_v4()?,
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            )
        }
        other => other,
    }
}

fn bind_dual_stack(port: u16) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v6()?;
    let off: libc::c_int = 0;
    // SAFETY: setsockopt reads an int of the given size from a live local;
    // the fd is the socket's own, open for this whole call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&off as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    listen(socket, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
}

fn listen(socket: TcpSocket, addr: SocketAddr) -> io::Result<TcpListener> {
    // As Go's listeners (and so kube-proxy's): a port closed with
    // connections in TIME_WAIT can be bound again at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts and serves connections until aborted; its connections live in
/// its JoinSet, so aborting it closes them with the listener.
async fn serve(listener: TcpListener, port: u16, shared: SharedHandle) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, port, shared.clone()));
                }
                Err(e) => {
                    warn!("health check port {port}: accept: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, port: u16, shared: SharedHandle) {
    // The family of the address the probe was sent to picks the count.
    let probe = stream
        .local_addr()
        .map_or(Family::Ipv4, |a| Family::of(a.ip()));
    let service = hyper::service::service_fn(move |_req| {
        let reply = respond(&shared, port, probe);
        async move { Ok::<_, Infallible>(reply) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        // Header names as Go writes them (Content-Type, not content-type).
        .title_case_headers(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn respond(shared: &Mutex<Shared>, port: u16, probe: Family) -> Response<Full<Bytes>> {
    let (health, proxy_healthy) = {
        let shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
        (shared.services.get(&port).cloned(), shared.proxy_healthy)
    };
    // Only while a sync is closing this port.
    let Some(health) = health else {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
        return r;
    };
    let a = answer(&health, probe, proxy_healthy);
    let mut builder = Response::builder().status(a.status);
    for (name, value) in &a.headers {
        builder = builder.header(*name, value);
    }
    builder
        .body(Full::new(Bytes::from(a.body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SliceIndex;

    /// `health_check_ports` of plain objects.
    fn ports(
        services: &[Service],
        slices: &[EndpointSlice],
        node_name: &str,
    ) -> BTreeMap<u16, ServiceHealth> {
        let services: Vec<Arc<Service>> = services.iter().cloned().map(Arc::new).collect();
        let slices: Vec<Arc<EndpointSlice>> = slices.iter().cloned().map(Arc::new).collect();
        let index = SliceIndex::new(&slices);
        health_check_ports(
            services
                .iter()
                .filter_map(|s| health_check(s, index.of(s), node_name)),
        )
    }
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    /// A LoadBalancer Service with externalTrafficPolicy Local.
    fn lb(name: &str, hcnp: u16, cluster_ips: &[&str]) -> serde_json::Value {
        json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                     "healthCheckNodePort": hcnp, "clusterIP": cluster_ips[0], "clusterIPs": cluster_ips,
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                               {"name": "https", "port": 443, "nodePort": 30443}]}
        })
    }

    fn slice_of(
        service: &str,
        name: &str,
        family: &str,
        endpoints: serde_json::Value,
    ) -> EndpointSlice {
        slice(json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": service}},
            "addressType": family,
            "ports": [{"name": "http", "port": 8080}, {"name": "https", "port": 8443}],
            "endpoints": endpoints
        }))
    }

    fn health(name: &str, local_ipv4: usize, local_ipv6: usize) -> ServiceHealth {
        ServiceHealth {
            namespace: "shop".into(),
            name: name.into(),
            local_ipv4,
            local_ipv6,
        }
    }

    #[test]
    fn only_load_balancers_with_local_policy_and_a_port_get_a_check() {
        let mut cluster_policy = lb("cluster", 32001, &["10.96.0.2"]);
        cluster_policy["spec"]["externalTrafficPolicy"] = json!("Cluster");
        let mut no_port = lb("no-port", 32002, &["10.96.0.3"]);
        no_port["spec"]
            .as_object_mut()
            .unwrap()
            .remove("healthCheckNodePort");
        // kube-proxy's NeedsHealthCheck: LoadBalancer only.
        let mut node_port = lb("node-port", 32003, &["10.96.0.4"]);
        node_port["spec"]["type"] = json!("NodePort");
        let mut other_proxy = lb("other-proxy", 32004, &["10.96.0.5"]);
        other_proxy["metadata"]["labels"] =
            json!({"service.kubernetes.io/service-proxy-name": "someone-else"});
        let headless = lb("headless", 32005, &["None"]);
        let mut zero = lb("zero", 0, &["10.96.0.6"]);
        zero["spec"]["healthCheckNodePort"] = json!(0);
        let services: Vec<Service> = [
            lb("web", 32000, &["10.96.0.1"]),
            cluster_policy,
            no_port,
            node_port,
            other_proxy,
            headless,
            zero,
        ]
        .into_iter()
        .map(svc)
        .collect();
        let got = ports(&services, &[], "node-a");
        assert_eq!(got, BTreeMap::from([(32000, health("web", 0, 0))]));
    }

    #[test]
    fn counts_this_nodes_ready_endpoints_by_address() {
        let services = [svc(lb("web", 32000, &["10.96.0.1", "fd00:96::1"]))];
        let slices = [
            slice_of(
                "web",
                "web-v4-a",
                "IPv4",
                json!([
                    // Ready (unset means ready), on this node: counted once
                    // although the slice has two ports.
                    {"addresses": ["10.244.1.1"], "nodeName": "node-a"},
                    {"addresses": ["10.244.1.2"], "nodeName": "node-a", "conditions": {"ready": true}},
                    // Another node's, and one without a node.
                    {"addresses": ["10.244.2.1"], "nodeName": "node-b"},
                    {"addresses": ["10.244.1.9"]},
                    // Not ready; terminating (ready false, still serving).
                    {"addresses": ["10.244.1.3"], "nodeName": "node-a", "conditions": {"ready": false}},
                    {"addresses": ["10.244.1.4"], "nodeName": "node-a",
                     "conditions": {"ready": false, "serving": true, "terminating": true}},
                    // Only the first address counts; a wrong-family one is ignored.
                    {"addresses": ["fd00:244:1::5", "10.244.1.5"], "nodeName": "node-a"},
                    {"addresses": [], "nodeName": "node-a"},
                ]),
            ),
            // The same Pod again (moving between slices): still one.
            slice_of(
                "web",
                "web-v4-b",
                "IPv4",
                json!([{"addresses": ["10.244.1.1"], "nodeName": "node-a", "conditions": {"ready": false}}]),
            ),
            slice_of(
                "web",
                "web-v6",
                "IPv6",
                json!([{"addresses": ["fd00:244:1::1"], "nodeName": "node-a"},
                       {"addresses": ["fd00:244:2::1"], "nodeName": "node-b"}]),
            ),
            // Another namespace's slice for a Service of the same name.
            slice(json!({
                "metadata": {"name": "web-x", "namespace": "other", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": ["10.244.1.7"], "nodeName": "node-a"}]
            })),
            // No port with a number: kube-proxy takes none of its endpoints.
            slice(json!({
                "metadata": {"name": "web-y", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 0}],
                "endpoints": [{"addresses": ["10.244.1.8"], "nodeName": "node-a"}]
            })),
        ];
        let got = ports(&services, &slices, "node-a");
        // Dual-stack: each family its own count (a dual-stack Pod is one
        // endpoint, not two).
        assert_eq!(got[&32000], health("web", 2, 1));
        let got = ports(&services, &slices, "node-b");
        assert_eq!(got[&32000], health("web", 1, 1));
        // An unknown node name makes nothing local.
        let got = ports(&services, &slices, "");
        assert_eq!(got[&32000], health("web", 0, 0));
    }

    #[test]
    fn terminating_only_counts_zero_and_single_stack_answers_every_family() {
        let services = [
            svc(lb("draining", 32010, &["10.96.0.10"])),
            svc(lb("v6-only", 32011, &["fd00:96::11"])),
        ];
        let slices = [
            slice_of(
                "draining",
                "draining-a",
                "IPv4",
                json!([{"addresses": ["10.244.1.1"], "nodeName": "node-a",
                        "conditions": {"ready": false, "serving": true, "terminating": true}}]),
            ),
            slice_of(
                "v6-only",
                "v6-only-a",
                "IPv6",
                json!([{"addresses": ["fd00:244:1::1"], "nodeName": "node-a"},
                       {"addresses": ["fd00:244:1::2"], "nodeName": "node-a"}]),
            ),
        ];
        let got = ports(&services, &slices, "node-a");
        assert_eq!(
            got,
            BTreeMap::from([
                (32010, health("draining", 0, 0)),
                (32011, health("v6-only", 2, 2)),
            ])
        );
    }

    #[test]
    fn a_port_claimed_twice_goes_to_the_first_service_by_name() {
        let services = [
            svc(lb("zeta", 32000, &["10.96.0.2"])),
            svc(lb("alpha", 32000, &["10.96.0.1"])),
        ];
        let got = ports(&services, &[], "node-a");
        assert_eq!(got[&32000].name, "alpha");
    }

    #[test]
    fn answers_as_kube_proxy_does() {
        let h = health("web", 2, 1);
        // The body kube-proxy prints (dedented Go template, tabs, no final
        // newline), byte for byte.
        let healthy = "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}";
        assert_eq!(
            answer(&h, Family::Ipv4, true),
            Answer {
                status: 200,
                headers: vec![
                    ("Content-Type", "application/json".into()),
                    ("X-Content-Type-Options", "nosniff".into()),
                    ("X-Load-Balancing-Endpoint-Weight", "2".into()),
                ],
                body: healthy.into(),
            }
        );
        // The probe's family picks the count.
        let v6 = answer(&h, Family::Ipv6, true);
        assert_eq!(v6.status, 200);
        assert!(v6.body.contains("\"localEndpoints\": 1,"), "{}", v6.body);
        assert_eq!(v6.headers[2].1, "1");

        // An unhealthy proxy fails the check but still reports its count.
        let sick = answer(&h, Family::Ipv4, false);
        assert_eq!(sick.status, 503);
        assert_eq!(
            sick.body,
            healthy.replace(
                "\"serviceProxyHealthy\": true",
                "\"serviceProxyHealthy\": false"
            )
        );
        assert_eq!(sick.headers[2].1, "2");

        // No local endpoint: 503, weight 0.
        let none = answer(&health("idle", 0, 0), Family::Ipv4, true);
        assert_eq!(none.status, 503);
        assert_eq!(
            none.body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"idle\"\n\t},\n\t\"localEndpoints\": 0,\n\t\"serviceProxyHealthy\": true\n}"
        );
        assert_eq!(none.headers[2].1, "0");
        // The body is JSON a client can read.
        let parsed: serde_json::Value = serde_json::from_str(&none.body).unwrap();
        assert_eq!(parsed["service"]["name"], "idle");
    }

    #[test]
    fn mapped_ipv4_addresses_are_ipv4_probes() {
        assert_eq!(
            Family::of("::ffff:192.0.2.1".parse().unwrap()),
            Family::Ipv4
        );
        assert_eq!(Family::of("192.0.2.1".parse().unwrap()), Family::Ipv4);
        assert_eq!(Family::of("2001:db8::1".parse().unwrap()), Family::Ipv6);
    }
}
