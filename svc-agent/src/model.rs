//! The desired dataplane state, computed from Kubernetes objects: a pure
//! function of each (admitted) Service, its EndpointSlices and the node
//! (`frontends`). Every source feeds it; `desired_state` keeps the whole
//! of it across syncs (`desired` computes it from scratch, the reference
//! the incremental one is tested against), and the reconciler makes the
//! maps equal to it.
//!
//! Semantics follow kube-proxy: one frontend per (service IP, port,
//! protocol) for each clusterIP, externalIP and load-balancer ingress IP,
//! plus (node IP, nodePort) for NodePort and LoadBalancer Services; backends
//! are the ready endpoints of the matching EndpointSlice port, falling back
//! to serving-but-terminating ones when none is ready. A frontend whose
//! service port has no endpoint at all refuses new flows (REJECT); one
//! that a `Local` traffic policy leaves without any here drops them.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use svc_common::service_flags;

use crate::{
    apiserver::Cidr,
    dataplane::{Endpoint, Frontend, Protocol, Settings, SourceRange},
    view::PortEndpoints,
};

/// Services with either label are left to another proxy (or to none).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// A Node's zone, for topology-aware routing.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// What the node contributes: its name (which endpoints are local) and
/// the addresses NodePorts answer on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// Empty: unknown, and every endpoint counts as local.
    pub name: String,
    pub ips: Vec<IpAddr>,
    /// The Node's `topology.kubernetes.io/zone`, for topology-aware routing.
    pub zone: Option<String>,
}

impl Node {
    /// An endpoint without a nodeName is taken as local: nothing says it
    /// runs elsewhere.
    fn runs(&self, endpoint_node: Option<&str>) -> bool {
        self.name.is_empty() || endpoint_node.is_none_or(|n| n == self.name)
    }
}

/// Which service port a frontend serves, for stats and diagnostics.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port: String,
}

/// One frontend's desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub service: ServicePortName,
    /// Backends, sorted and without duplicates.
    pub backends: Vec<Endpoint>,
    pub settings: Settings,
    /// Only these clients may connect (with `service_flags::SOURCE_RANGES`).
    pub source_ranges: Vec<SourceRange>,
}

pub type Desired = BTreeMap<Frontend, Target>;

/// sessionAffinityConfig.clientIP.timeoutSeconds when unset (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// Whether this proxy implements the Service at all.
pub fn is_proxied(svc: &Service) -> bool {
    let labels = svc.metadata.labels.as_ref();
    let labelled = |l: &str| labels.is_some_and(|m| m.contains_key(l));
    let spec = svc.spec.as_ref();
    let kind = spec.and_then(|s| s.type_.as_deref()).unwrap_or("ClusterIP");
    let headless = spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None");
    !labelled(SERVICE_PROXY_NAME_LABEL)
        && !labelled(HEADLESS_LABEL)
        && kind != "ExternalName"
        && !headless
}

/// A Service's namespace and name, the order in which Services claim a
/// frontend that more than one of them names.
pub fn service_key(svc: &Service) -> (&str, &str) {
    (
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        svc.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// The whole desired state, from scratch (`DesiredState` keeps the same
/// up to date across syncs). A frontend that two Services name (a shared
/// externalIP and port, say) goes to the first in `service_key` order.
pub fn desired(services: &[Arc<Service>], index: &SliceIndex, node: &Node) -> Desired {
    let mut sorted: Vec<&Arc<Service>> = services.iter().collect();
    sorted.sort_by(|a, b| service_key(a).cmp(&service_key(b)));
    let mut out = Desired::new();
    for svc in sorted {
        for (fe, target) in frontends(svc, index.of(svc), node) {
            out.entry(fe).or_insert(target);
        }
    }
    out
}

/// One Service's frontends, each with its target, given the Service's own
/// EndpointSlices. A frontend the Service names twice keeps the first.
pub fn frontends(
    svc: &Service,
    own_slices: &[&Arc<EndpointSlice>],
    node: &Node,
) -> Vec<(Frontend, Target)> {
    let mut out = Vec::new();
    if !is_proxied(svc) {
        return out;
    }
    let Some(spec) = &svc.spec else { return out };
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    {
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let mut flags = 0;
        if external_local {
            flags |= service_flags::EXTERNAL_LOCAL;
        }
        let mut affinity_timeout_s = 0;
        if spec.session_affinity.as_deref() == Some("ClientIP") {
            flags |= service_flags::AFFINITY;
            affinity_timeout_s = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S);
        }
        let ips = ServiceIps::of(svc);
        let ranges = source_ranges(svc);
        for port in spec.ports.iter().flatten() {
            let Ok(proto) = port
                .protocol
                .as_deref()
                .unwrap_or("TCP")
                .parse::<Protocol>()
            else {
                continue;
            };
            let port_name = port.name.clone().unwrap_or_default();
            let Ok(svc_port) = u16::try_from(port.port) else {
                continue;
            };
            let sets = |family: &str| {
                let found = endpoints(own_slices, &port_name, proto, family, node);
                let zone = topology_zone(svc, &found, node);
                (
                    cluster_set(&found, zone),
                    local_set(&found),
                    usable_anywhere(&found),
                )
            };
            let ((cluster_v4, local_v4, usable_v4), (cluster_v6, local_v6, usable_v6)) =
                (sets("IPv4"), sets("IPv6"));
            // internalTrafficPolicy Local: traffic to the cluster IPs goes to
            // this node's endpoints only; externalTrafficPolicy Local: traffic
            // from outside likewise (none: dropped), keeping the client's
            // address. Cluster: to the cluster-wide set.
            let (all_v4, all_v6) = if internal_local {
                (local_v4.clone(), local_v6.clone())
            } else {
                (cluster_v4.clone(), cluster_v6.clone())
            };
            let (ext_v4, ext_v6) = if external_local {
                (local_v4, local_v6)
            } else {
                (cluster_v4, cluster_v6)
            };
            let mut add =
                |ip: IpAddr, port: u16, external: bool, extra: u16, ranges: &[SourceRange]| {
                    let backends = match (ip.is_ipv4(), external) {
                        (true, false) => &all_v4,
                        (false, false) => &all_v6,
                        (true, true) => &ext_v4,
                        (false, true) => &ext_v6,
                    };
                    let ranges: Vec<SourceRange> = ranges
                        .iter()
                        .filter(|r| r.0.is_ipv4() == ip.is_ipv4())
                        .copied()
                        .collect();
                    let usable = if ip.is_ipv4() { usable_v4 } else { usable_v6 };
                    let mut flags = flags | extra | reject_flag(backends, usable);
                    if !ranges.is_empty() {
                        flags |= service_flags::SOURCE_RANGES;
                    }
                    let target = Target {
                        service: ServicePortName {
                            namespace: namespace.clone(),
                            name: name.clone(),
                            port: port_name.clone(),
                        },
                        backends: backends.clone(),
                        settings: Settings {
                            flags,
                            affinity_timeout_s,
                        },
                        source_ranges: ranges,
                    };
                    let fe = Frontend {
                        addr: SocketAddr::new(ip, port),
                        proto,
                    };
                    if !out.iter().any(|(f, _)| *f == fe) {
                        out.push((fe, target));
                    }
                };
            for &ip in &ips.cluster {
                add(ip, svc_port, false, 0, &[]);
            }
            for &ip in &ips.external {
                add(ip, svc_port, true, 0, &[]);
            }
            // loadBalancerSourceRanges restrict the load-balancer IPs.
            for &ip in &ips.load_balancer {
                add(ip, svc_port, true, 0, &ranges);
            }
            if let Some(node_port) = port.node_port.and_then(|p| u16::try_from(p).ok()) {
                for &ip in &node.ips {
                    add(ip, node_port, true, service_flags::NODE_PORT, &[]);
                }
            }
        }
    }
    out
}

/// A Service's addresses by kind: the kind decides which traffic policy
/// and restrictions apply.
struct ServiceIps {
    cluster: Vec<IpAddr>,
    external: Vec<IpAddr>,
    load_balancer: Vec<IpAddr>,
}

impl ServiceIps {
    fn of(svc: &Service) -> Self {
        let spec = svc.spec.as_ref();
        let parse = |v: Vec<String>| -> Vec<IpAddr> {
            let set: BTreeSet<IpAddr> = v.iter().filter_map(|s| s.parse().ok()).collect();
            set.into_iter().collect()
        };
        let raw = RawIps::of(svc);
        let _ = spec;
        Self {
            cluster: parse(raw.cluster),
            external: parse(raw.external),
            load_balancer: parse(raw.load_balancer),
        }
    }
}

/// The same, as strings, as the Service spells them.
struct RawIps {
    cluster: Vec<String>,
    external: Vec<String>,
    load_balancer: Vec<String>,
}

impl RawIps {
    fn of(svc: &Service) -> Self {
        let spec = svc.spec.as_ref();
        let cluster = spec
            .and_then(|s| s.cluster_ips.clone())
            .filter(|v| !v.is_empty())
            .or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]))
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| ip != "None" && !ip.is_empty())
            .collect();
        let external = spec
            .and_then(|s| s.external_ips.clone())
            .unwrap_or_default();
        let load_balancer = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|v| v.iter().filter_map(|i| i.ip.clone()).collect())
            .unwrap_or_default();
        Self {
            cluster,
            external,
            load_balancer,
        }
    }

    fn all(self) -> impl Iterator<Item = String> {
        self.cluster
            .into_iter()
            .chain(self.external)
            .chain(self.load_balancer)
    }
}

/// `spec.loadBalancerSourceRanges`, parsed and masked; unparseable ones
/// are left out (and reported by `problems`).
fn source_ranges(svc: &Service) -> Vec<SourceRange> {
    let mut v: Vec<SourceRange> = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_source_ranges.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|r| r.trim().parse::<Cidr>().ok())
        .map(|c| (c.addr, c.prefix))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Why part of a proxied Service is not served, for an Event on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub namespace: String,
    pub name: String,
    /// CamelCase, as Kubernetes event reasons are.
    pub reason: String,
    pub message: String,
}

/// What `desired` leaves out of proxied Services, and why: ports whose
/// protocol the programs do not translate, and service IPs that do not
/// parse (the API server validates them, a manifest may not).
pub fn problems(svc: &Service) -> Vec<Problem> {
    let mut out = Vec::new();
    if is_proxied(svc) {
        let problem = |reason: &str, message: String| Problem {
            namespace: svc.metadata.namespace.clone().unwrap_or_default(),
            name: svc.metadata.name.clone().unwrap_or_default(),
            reason: reason.into(),
            message,
        };
        for port in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
            let proto = port.protocol.as_deref().unwrap_or("TCP");
            if !matches!(proto.parse(), Ok(Protocol::Tcp | Protocol::Udp)) {
                out.push(problem(
                    "UnsupportedProtocol",
                    format!(
                        "port {:?} ({}/{proto}) is not served: the dataplane translates TCP and UDP only",
                        port.name.as_deref().unwrap_or(""),
                        port.port
                    ),
                ));
            }
        }
        for ip in RawIps::of(svc).all() {
            if ip.parse::<IpAddr>().is_err() {
                out.push(problem(
                    "InvalidIP",
                    format!("{ip:?} is not an IP address; it is not served"),
                ));
            }
        }
        let ranges = svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_source_ranges.as_ref());
        for r in ranges.into_iter().flatten() {
            if r.trim().parse::<Cidr>().is_err() {
                out.push(problem(
                    "InvalidSourceRange",
                    format!("loadBalancerSourceRanges: {r:?} is not a CIDR; it is ignored"),
                ));
            }
        }
    }
    out
}

/// EndpointSlices grouped by the Service they belong to (namespace and
/// the `kubernetes.io/service-name` label), so each Service finds its own
/// without scanning every slice.
pub struct SliceIndex<'a> {
    /// By namespace, then Service name, borrowed from the slices (building
    /// the index copies no string, and a lookup borrows the Service's);
    /// each Service's slices sorted by name, so the same slices always
    /// come in the same order.
    by_service: HashMap<&'a str, HashMap<&'a str, Vec<&'a Arc<EndpointSlice>>>>,
}

impl<'a> SliceIndex<'a> {
    pub fn new(slices: &'a [Arc<EndpointSlice>]) -> Self {
        let mut by_service: HashMap<&str, HashMap<&str, Vec<&Arc<EndpointSlice>>>> = HashMap::new();
        for slice in slices {
            let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let Some(service) = service.filter(|s| !s.is_empty()) {
                by_service
                    .entry(namespace)
                    .or_default()
                    .entry(service.as_str())
                    .or_default()
                    .push(slice);
            }
        }
        let groups = by_service.values_mut().flat_map(|s| s.values_mut());
        for own in groups.filter(|v| v.len() > 1) {
            own.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        Self { by_service }
    }

    /// The slices labelled as the Service's, in its namespace.
    pub fn of(&self, svc: &Service) -> &[&'a Arc<EndpointSlice>] {
        let namespace = svc.metadata.namespace.as_deref().unwrap_or("default");
        let name = svc.metadata.name.as_deref().unwrap_or("");
        self.by_service
            .get(namespace)
            .and_then(|services| services.get(name))
            .map_or(&[], |v| v.as_slice())
    }
}

/// One endpoint's conditions, read as kube-proxy reads them: unset
/// ready and serving mean true, unset terminating means false.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Conditions {
    ready: bool,
    serving: bool,
    terminating: bool,
}

/// One endpoint as a proxy sees it.
#[derive(Clone, Debug)]
struct Found {
    endpoint: Endpoint,
    conditions: Conditions,
    /// `hints.forZones`; empty: no hint.
    zones: BTreeSet<String>,
}

/// The endpoints of one service port and family, as kube-proxy reads
/// them: only an endpoint's first address counts (the others are the same
/// Pod's), ports without a number are ignored, and an address listed
/// twice (a Pod moving between slices) keeps its non-terminating entry.
fn endpoints(
    slices: &[&Arc<EndpointSlice>],
    port_name: &str,
    proto: Protocol,
    address_type: &str,
    node: &Node,
) -> Vec<Found> {
    let mut seen: BTreeMap<Endpoint, Found> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.address_type == address_type) {
        let Some(port) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && p.protocol
                    .as_deref()
                    .unwrap_or("TCP")
                    .parse::<Protocol>()
                    .ok()
                    == Some(proto)
        }) else {
            continue;
        };
        let Some(port) = port
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let Some(addr) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            if addr.is_ipv4() != (address_type == "IPv4") {
                continue;
            }
            let c = ep.conditions.as_ref();
            let found = Found {
                endpoint: Endpoint {
                    addr: SocketAddr::new(addr, port),
                    local: node.runs(ep.node_name.as_deref()),
                },
                conditions: Conditions {
                    ready: c.and_then(|c| c.ready).unwrap_or(true),
                    serving: c.and_then(|c| c.serving).unwrap_or(true),
                    terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                },
                zones: ep
                    .hints
                    .iter()
                    .flat_map(|h| h.for_zones.iter().flatten())
                    .map(|z| z.name.clone())
                    .collect(),
            };
            seen.entry(found.endpoint)
                .and_modify(|kept| {
                    if kept.conditions.terminating && !found.conditions.terminating {
                        *kept = found.clone();
                    }
                })
                .or_insert(found);
        }
    }
    seen.into_values().collect()
}

/// The zone to keep traffic in, when kube-proxy would: the Service asks
/// for it (`trafficDistribution: PreferClose`, or the topology-mode
/// annotation `Auto`), this node has a zone, every ready endpoint carries
/// zone hints, and at least one is hinted for this node's zone.
fn topology_zone<'a>(svc: &Service, found: &[Found], node: &'a Node) -> Option<&'a str> {
    let annotations = svc.metadata.annotations.as_ref();
    let mode = [
        "service.kubernetes.io/topology-mode",
        "service.kubernetes.io/topology-aware-hints",
    ]
    .iter()
    .find_map(|k| annotations.and_then(|a| a.get(*k)));
    let prefer_close = svc
        .spec
        .as_ref()
        .and_then(|s| s.traffic_distribution.as_deref())
        == Some("PreferClose");
    if !prefer_close && !matches!(mode.map(String::as_str), Some("Auto" | "auto")) {
        return None;
    }
    let zone = node.zone.as_deref().filter(|z| !z.is_empty())?;
    let ready: Vec<&Found> = found.iter().filter(|f| f.conditions.ready).collect();
    let usable =
        ready.iter().all(|f| !f.zones.is_empty()) && ready.iter().any(|f| f.zones.contains(zone));
    usable.then_some(zone)
}

/// `service_flags::REJECT` for a frontend whose new flows are to be
/// refused (a TCP reset, an ICMP port unreachable) rather than dropped,
/// as kube-proxy decides: refused when it has no backends because its
/// service port has no usable endpoint of its family anywhere (REJECT);
/// dropped when endpoints exist but its traffic policy (`Local`) leaves
/// this node none of them (DROP).
pub fn reject_flag(backends: &[Endpoint], usable_anywhere: bool) -> u16 {
    if backends.is_empty() && !usable_anywhere {
        service_flags::REJECT
    } else {
        0
    }
}

/// Whether any endpoint serves anywhere in the cluster: ready, or serving
/// while terminating (kube-proxy's `hasAnyEndpoints`).
fn usable_anywhere(found: &[Found]) -> bool {
    found
        .iter()
        .any(|f| f.conditions.ready || (f.conditions.serving && f.conditions.terminating))
}

/// Where cluster-wide traffic may go: the ready endpoints (of this node's
/// zone, when `zone` says so); if none, the serving-but-terminating ones
/// (kube-proxy's fallback, so connections drain during a rollout).
fn cluster_set(found: &[Found], zone: Option<&str>) -> Vec<Endpoint> {
    let ready: Vec<Endpoint> = found
        .iter()
        .filter(|f| f.conditions.ready && zone.is_none_or(|z| f.zones.contains(z)))
        .map(|f| f.endpoint)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    found
        .iter()
        .filter(|f| f.conditions.serving && f.conditions.terminating)
        .map(|f| f.endpoint)
        .collect()
}

/// Where node-local traffic (a `Local` traffic policy) may go: this
/// node's ready endpoints; if none, its serving-but-terminating ones.
fn local_set(found: &[Found]) -> Vec<Endpoint> {
    let local: Vec<Found> = found.iter().filter(|f| f.endpoint.local).cloned().collect();
    cluster_set(&local, None)
}

/// Ready endpoints per service port (both families), for the CLI.
pub fn port_endpoints(svc: &Service, own: &[&Arc<EndpointSlice>]) -> Vec<PortEndpoints> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| {
            let port_name = p.name.clone().unwrap_or_default();
            let proto = p
                .protocol
                .as_deref()
                .unwrap_or("TCP")
                .parse()
                .unwrap_or(Protocol::Tcp);
            let node = Node::default();
            let mut addresses: Vec<SocketAddr> = ["IPv4", "IPv6"]
                .iter()
                .flat_map(|family| {
                    cluster_set(&endpoints(own, &port_name, proto, family, &node), None)
                })
                .map(|e| e.addr)
                .collect();
            addresses.dedup();
            PortEndpoints {
                port_name,
                addresses,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn arcs<T: Clone>(v: &[T]) -> Vec<Arc<T>> {
        v.iter().cloned().map(Arc::new).collect()
    }

    /// `desired` of plain objects.
    fn desired_of(services: &[Service], slices: &[EndpointSlice], node: &Node) -> Desired {
        let slices = arcs(slices);
        desired(&arcs(services), &SliceIndex::new(&slices), node)
    }

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn web() -> Service {
        svc(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30007},
                               {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }))
    }

    fn web_slices() -> Vec<EndpointSlice> {
        vec![
            slice(json!({
                "metadata": {"name": "web-a", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
                "endpoints": [
                    {"addresses": ["10.244.1.21"], "conditions": {"ready": true}},
                    {"addresses": ["10.244.1.22"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                    {"addresses": ["10.244.1.23"]}
                ]
            })),
            slice(json!({
                "metadata": {"name": "web-b", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv6",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": ["fd00:244:1::21"], "conditions": {"ready": true}}]
            })),
            // Another namespace's slice of the same name must not count.
            slice(json!({
                "metadata": {"name": "web-c", "namespace": "other", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 9999}],
                "endpoints": [{"addresses": ["10.244.9.9"]}]
            })),
        ]
    }

    fn addrs(v: &[Endpoint]) -> Vec<SocketAddr> {
        v.iter().map(|e| e.addr).collect()
    }

    fn fe(s: &str, proto: Protocol) -> Frontend {
        Frontend {
            addr: s.parse().unwrap(),
            proto,
        }
    }

    #[test]
    fn every_ip_and_port_is_a_frontend_with_ready_backends_of_its_family() {
        let node = Node {
            name: String::new(),
            ips: vec!["192.0.2.1".parse().unwrap()],
            zone: None,
        };
        let d = desired_of(&[web()], &web_slices(), &node);
        let keys: Vec<String> = d
            .keys()
            .map(|f| format!("{}/{:?}", f.addr, f.proto))
            .collect();
        assert_eq!(
            keys,
            [
                "10.96.0.10:53/Udp",
                "10.96.0.10:80/Tcp",
                "192.0.2.1:30007/Tcp",
                "[fd00:96::10]:53/Udp",
                "[fd00:96::10]:80/Tcp",
            ]
        );
        let http = &d[&fe("10.96.0.10:80", Protocol::Tcp)];
        let want: Vec<SocketAddr> = vec![
            "10.244.1.21:8080".parse().unwrap(),
            "10.244.1.23:8080".parse().unwrap(),
        ];
        assert_eq!(addrs(&http.backends), want);
        assert_eq!(http.settings, Settings::default());
        let np = &d[&fe("192.0.2.1:30007", Protocol::Tcp)];
        assert_eq!(
            (addrs(&np.backends), np.settings.flags),
            (want, service_flags::NODE_PORT)
        );
        assert_eq!(
            addrs(&d[&fe("[fd00:96::10]:80", Protocol::Tcp)].backends),
            vec!["[fd00:244:1::21]:8080".parse::<SocketAddr>().unwrap()]
        );
        // The v6 slice has no dns port: no backends, but the frontend exists.
        assert!(
            d[&fe("[fd00:96::10]:53", Protocol::Udp)]
                .backends
                .is_empty()
        );
        assert_eq!(d[&fe("10.96.0.10:53", Protocol::Udp)].backends.len(), 2);
    }

    #[test]
    fn terminating_endpoints_serve_only_when_nothing_is_ready() {
        let mut slices = web_slices();
        for ep in &mut slices[0].endpoints {
            if ep.addresses[0] != "10.244.1.22" {
                ep.conditions = Some(serde_json::from_value(json!({"ready": false})).unwrap());
            }
        }
        let d = desired_of(&[web()], &slices, &Node::default());
        assert_eq!(
            addrs(&d[&fe("10.96.0.10:80", Protocol::Tcp)].backends),
            vec!["10.244.1.22:8080".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn skipped_services_get_no_frontend() {
        let mut headless = web();
        headless.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        headless.spec.as_mut().unwrap().cluster_ips = Some(vec!["None".into()]);
        let external = svc(
            json!({"metadata": {"name": "db"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}}),
        );
        let mut other_proxy = web();
        other_proxy.metadata.labels =
            Some([(SERVICE_PROXY_NAME_LABEL.to_string(), "x".to_string())].into());
        let mut labelled_headless = web();
        labelled_headless.metadata.labels =
            Some([(HEADLESS_LABEL.to_string(), "".to_string())].into());
        for s in [headless, external, other_proxy, labelled_headless] {
            assert!(desired_of(&[s], &web_slices(), &Node::default()).is_empty());
        }
    }

    #[test]
    fn external_and_load_balancer_ips_are_frontends() {
        let s = svc(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "externalIPs": ["198.51.100.7"],
                     "externalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}, {"hostname": "lb.example.com"}]}}
        }));
        let d = desired_of(&[s], &web_slices(), &Node::default());
        let addrs: Vec<String> = d.keys().map(|f| f.addr.to_string()).collect();
        assert_eq!(
            addrs,
            ["10.96.0.10:80", "198.51.100.7:80", "203.0.113.9:80"]
        );
        assert!(
            d.values()
                .all(|t| t.settings.flags == service_flags::EXTERNAL_LOCAL)
        );
    }

    #[test]
    fn external_traffic_policy_local_keeps_external_frontends_on_local_endpoints() {
        let s = svc(json!({
            "metadata": {"name": "lb", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20", "externalIPs": ["198.51.100.7"],
                     "externalTrafficPolicy": "Local", "loadBalancerSourceRanges": ["203.0.113.0/25", "2001:db8::/32", " 10.1.2.3/8"],
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}
        }));
        let slices = [slice(json!({
            "metadata": {"name": "lb-a", "namespace": "default", "labels": {"kubernetes.io/service-name": "lb"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.244.1.21"], "nodeName": "node-1"},
                {"addresses": ["10.244.2.21"], "nodeName": "node-2"},
                // Terminating here, ready elsewhere: the local fallback.
                {"addresses": ["10.244.1.22"], "nodeName": "node-1", "conditions": {"ready": false, "serving": true, "terminating": true}}
            ]
        }))];
        let node = Node {
            name: "node-1".into(),
            ips: vec!["192.0.2.1".parse().unwrap()],
            zone: None,
        };
        let d = desired_of(std::slice::from_ref(&s), &slices, &node);
        let backends = |f: &str| -> Vec<(String, bool)> {
            d[&fe(f, Protocol::Tcp)]
                .backends
                .iter()
                .map(|e| (e.addr.to_string(), e.local))
                .collect()
        };
        // The clusterIP serves every ready endpoint, local or not.
        assert_eq!(
            backends("10.96.0.20:80"),
            [
                ("10.244.1.21:8080".into(), true),
                ("10.244.2.21:8080".into(), false)
            ]
        );
        // External frontends: this node's ready endpoints only.
        for f in ["198.51.100.7:80", "203.0.113.9:80", "192.0.2.1:30080"] {
            assert_eq!(backends(f), [("10.244.1.21:8080".into(), true)], "{f}");
        }
        // Only the load-balancer IP is restricted, to its family's ranges.
        let lb = &d[&fe("203.0.113.9:80", Protocol::Tcp)];
        assert_eq!(
            lb.source_ranges,
            [
                ("10.0.0.0".parse().unwrap(), 8),
                ("203.0.113.0".parse().unwrap(), 25)
            ]
        );
        assert_ne!(lb.settings.flags & service_flags::SOURCE_RANGES, 0);
        let ext = &d[&fe("198.51.100.7:80", Protocol::Tcp)];
        assert!(ext.source_ranges.is_empty());
        assert_eq!(ext.settings.flags & service_flags::SOURCE_RANGES, 0);

        // On a node with only a terminating local endpoint, that one serves.
        let node3 = Node {
            name: "node-3".into(),
            ..node.clone()
        };
        let d = desired_of(std::slice::from_ref(&s), &slices, &node3);
        assert!(d[&fe("203.0.113.9:80", Protocol::Tcp)].backends.is_empty());
        let mut only_terminating = slices.clone();
        only_terminating[0]
            .endpoints
            .retain(|e| e.addresses[0] == "10.244.1.22");
        let d = desired_of(&[s], &only_terminating, &node);
        assert_eq!(
            addrs(&d[&fe("203.0.113.9:80", Protocol::Tcp)].backends),
            vec!["10.244.1.22:8080".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn frontends_without_any_endpoint_reject_and_local_policies_drop() {
        let lb = |policy: serde_json::Value| {
            let mut spec = json!({
                "type": "LoadBalancer", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:96::20"],
                "externalIPs": ["198.51.100.7"], "ports": [{"name": "http", "port": 80, "nodePort": 30080}]
            });
            spec.as_object_mut()
                .unwrap()
                .extend(policy.as_object().unwrap().clone());
            svc(json!({
                "metadata": {"name": "lb", "namespace": "default"},
                "spec": spec,
                "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}
            }))
        };
        let on_node_2 = |conditions: serde_json::Value| {
            vec![slice(json!({
                "metadata": {"name": "lb-a", "namespace": "default", "labels": {"kubernetes.io/service-name": "lb"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": ["10.244.2.21"], "nodeName": "node-2", "conditions": conditions}]
            }))]
        };
        let node = Node {
            name: "node-1".into(),
            ips: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            zone: None,
        };
        // Which frontends refuse, which drop (no backends, no flag), which serve.
        let outcome = |s: &Service, slices: &[EndpointSlice]| -> Vec<(String, &'static str)> {
            desired_of(std::slice::from_ref(s), slices, &node)
                .iter()
                .map(|(fe, t)| {
                    let reject = t.settings.flags & service_flags::REJECT != 0;
                    let what = match (t.backends.is_empty(), reject) {
                        (true, true) => "reject",
                        (true, false) => "drop",
                        (false, false) => "serve",
                        (false, true) => "REJECT flag with backends",
                    };
                    (fe.addr.to_string(), what)
                })
                .collect()
        };
        let all = |v4: &'static str, v6: &'static str, external_v4: &'static str| {
            vec![
                ("10.96.0.20:80".to_string(), v4),
                ("192.0.2.1:30080".to_string(), external_v4),
                ("198.51.100.7:80".to_string(), external_v4),
                ("203.0.113.9:80".to_string(), external_v4),
                ("[2001:db8::1]:30080".to_string(), v6),
                ("[fd00:96::20]:80".to_string(), v6),
            ]
        };
        let ready = json!({"ready": true});

        // No endpoint at all: every frontend refuses, on every kind of
        // address (a family without endpoints likewise, below).
        assert_eq!(
            outcome(&lb(json!({})), &[]),
            all("reject", "reject", "reject")
        );
        // Endpoints that cannot serve are none.
        let unusable = on_node_2(json!({"ready": false, "serving": false, "terminating": true}));
        assert_eq!(
            outcome(&lb(json!({})), &unusable),
            all("reject", "reject", "reject")
        );
        // externalTrafficPolicy Local with the only endpoint on another
        // node: traffic from outside is dropped here, not refused.
        let local = lb(json!({"externalTrafficPolicy": "Local"}));
        assert_eq!(
            outcome(&local, &on_node_2(ready.clone())),
            all("serve", "reject", "drop")
        );
        // So also when that endpoint is only serving while it terminates.
        let terminating = on_node_2(json!({"ready": false, "serving": true, "terminating": true}));
        assert_eq!(
            outcome(&local, &terminating),
            all("serve", "reject", "drop")
        );
        // internalTrafficPolicy Local: the cluster IP drops likewise.
        let internal = lb(json!({"internalTrafficPolicy": "Local"}));
        assert_eq!(
            outcome(&internal, &on_node_2(ready)),
            all("drop", "reject", "serve")
        );

        // The decision itself.
        let one: Vec<Endpoint> = vec!["10.244.2.21:8080".parse::<SocketAddr>().unwrap().into()];
        assert_eq!(reject_flag(&[], false), service_flags::REJECT);
        assert_eq!(reject_flag(&[], true), 0);
        assert_eq!(reject_flag(&one, true), 0);
        assert_eq!(reject_flag(&one, false), 0);
    }

    /// `web` (ClusterIP 10.96.0.10:80) over three endpoints: 21 on node-1
    /// hinted for zone a, 22 on node-2 for zone b, 23 on node-2 for zone
    /// `hint23` (none: no hint).
    fn zoned(hint23: Option<&str>) -> Vec<EndpointSlice> {
        let hints = |z: Option<&str>| z.map(|z| json!({"forZones": [{"name": z}]}));
        vec![slice(json!({
            "metadata": {"name": "web-z", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.244.1.21"], "nodeName": "node-1", "hints": hints(Some("a"))},
                {"addresses": ["10.244.2.22"], "nodeName": "node-2", "hints": hints(Some("b"))},
                {"addresses": ["10.244.2.23"], "nodeName": "node-2", "hints": hints(hint23)}
            ]
        }))]
    }

    fn clusterip_backends(s: &Service, slices: &[EndpointSlice], node: &Node) -> Vec<String> {
        desired_of(std::slice::from_ref(s), slices, node)[&fe("10.96.0.10:80", Protocol::Tcp)]
            .backends
            .iter()
            .map(|e| e.addr.to_string())
            .collect()
    }

    #[test]
    fn internal_traffic_policy_local_keeps_cluster_ips_on_this_node() {
        let mut s = web();
        s.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
        let node = |name: &str| Node {
            name: name.into(),
            ..Node::default()
        };
        let slices = zoned(Some("a"));
        assert_eq!(
            clusterip_backends(&s, &slices, &node("node-1")),
            ["10.244.1.21:8080"]
        );
        assert_eq!(
            clusterip_backends(&s, &slices, &node("node-2")),
            ["10.244.2.22:8080", "10.244.2.23:8080"]
        );
        // No endpoint here: nothing (the traffic is dropped), never elsewhere.
        assert!(clusterip_backends(&s, &slices, &node("node-3")).is_empty());
    }

    #[test]
    fn zone_hints_are_used_only_as_kube_proxy_uses_them() {
        let in_zone = |zone: &str| Node {
            name: "node-9".into(),
            zone: Some(zone.into()),
            ..Node::default()
        };
        let all = ["10.244.1.21:8080", "10.244.2.22:8080", "10.244.2.23:8080"];
        let mut s = web();
        // Hints alone do nothing: the Service must ask.
        assert_eq!(
            clusterip_backends(&s, &zoned(Some("a")), &in_zone("a")),
            all
        );
        s.spec.as_mut().unwrap().traffic_distribution = Some("PreferClose".into());
        assert_eq!(
            clusterip_backends(&s, &zoned(Some("a")), &in_zone("a")),
            ["10.244.1.21:8080", "10.244.2.23:8080"]
        );
        assert_eq!(
            clusterip_backends(&s, &zoned(Some("a")), &in_zone("b")),
            ["10.244.2.22:8080"]
        );
        // One ready endpoint without a hint: cluster-wide.
        assert_eq!(clusterip_backends(&s, &zoned(None), &in_zone("a")), all);
        // No endpoint hinted for this node's zone: cluster-wide.
        assert_eq!(
            clusterip_backends(&s, &zoned(Some("a")), &in_zone("c")),
            all
        );
        // A node without a zone: cluster-wide.
        assert_eq!(
            clusterip_backends(&s, &zoned(Some("a")), &Node::default()),
            all
        );
        // The annotation asks too.
        let mut annotated = web();
        annotated.metadata.annotations = Some(
            [(
                "service.kubernetes.io/topology-mode".to_string(),
                "Auto".to_string(),
            )]
            .into(),
        );
        assert_eq!(
            clusterip_backends(&annotated, &zoned(Some("b")), &in_zone("b")),
            ["10.244.2.22:8080", "10.244.2.23:8080"]
        );
    }

    #[test]
    fn client_ip_affinity_sets_the_flag_and_timeout() {
        let mut s = web();
        let spec = s.spec.as_mut().unwrap();
        spec.session_affinity = Some("ClientIP".into());
        let d = desired_of(std::slice::from_ref(&s), &web_slices(), &Node::default());
        let t = &d[&fe("10.96.0.10:80", Protocol::Tcp)].settings;
        assert_eq!(
            (t.flags, t.affinity_timeout_s),
            (service_flags::AFFINITY, DEFAULT_AFFINITY_TIMEOUT_S)
        );
        s.spec.as_mut().unwrap().session_affinity_config =
            Some(serde_json::from_value(json!({"clientIP": {"timeoutSeconds": 60}})).unwrap());
        let d = desired_of(&[s], &web_slices(), &Node::default());
        assert_eq!(
            d[&fe("10.96.0.10:80", Protocol::Tcp)]
                .settings
                .affinity_timeout_s,
            60
        );
    }

    #[test]
    fn endpoints_are_read_as_kube_proxy_reads_them() {
        let s = slice(json!({
            "metadata": {"name": "web-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 0, "protocol": "UDP"}],
            "endpoints": [
                // Only the first address counts.
                {"addresses": ["10.244.1.31", "10.244.1.99"]},
                // No address: ignored.
                {"addresses": []},
                // Wrong family for the slice: ignored.
                {"addresses": ["fd00::31"]},
                // Listed twice: the non-terminating entry wins, whichever comes first.
                {"addresses": ["10.244.1.32"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.244.1.32"], "conditions": {"ready": true}},
                {"addresses": ["10.244.1.33"], "conditions": {"ready": true}},
                {"addresses": ["10.244.1.33"], "conditions": {"ready": false, "terminating": true}},
            ]
        }));
        let d = desired_of(&[web()], std::slice::from_ref(&s), &Node::default());
        let got: Vec<String> = d[&fe("10.96.0.10:80", Protocol::Tcp)]
            .backends
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            got,
            ["10.244.1.31:8080", "10.244.1.32:8080", "10.244.1.33:8080"]
        );
        // Port 0 is no port.
        assert!(d[&fe("10.96.0.10:53", Protocol::Udp)].backends.is_empty());

        // Unset serving means serving: a terminating endpoint without it
        // is still a fallback.
        let mut t = s;
        t.endpoints = vec![
            serde_json::from_value(
                json!({"addresses": ["10.244.1.34"], "conditions": {"ready": false, "terminating": true}}),
            )
            .unwrap(),
        ];
        let d = desired_of(&[web()], &[t], &Node::default());
        assert_eq!(
            addrs(&d[&fe("10.96.0.10:80", Protocol::Tcp)].backends),
            vec!["10.244.1.34:8080".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn unsupported_protocols_and_bad_ips_are_problems() {
        let mut s = web();
        let spec = s.spec.as_mut().unwrap();
        spec.ports.as_mut().unwrap()[1].protocol = Some("SCTP".into());
        spec.external_ips = Some(vec!["not-an-ip".into()]);
        let p = problems(&s);
        let reasons: Vec<&str> = p.iter().map(|p| p.reason.as_str()).collect();
        assert_eq!(reasons, ["UnsupportedProtocol", "InvalidIP"]);
        assert!(p[0].message.contains("53/SCTP"), "{}", p[0].message);
        assert_eq!(
            (p[0].namespace.as_str(), p[0].name.as_str()),
            ("default", "web")
        );
        assert!(problems(&web()).is_empty());
    }

    #[test]
    fn port_endpoints_lists_ready_addresses_per_port() {
        let slices = arcs(&web_slices());
        let pe = port_endpoints(&web(), SliceIndex::new(&slices).of(&web()));
        assert_eq!(pe.len(), 2);
        assert_eq!(pe[0].port_name, "http");
        let got: Vec<String> = pe[0].addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            got,
            [
                "10.244.1.21:8080",
                "10.244.1.23:8080",
                "[fd00:244:1::21]:8080"
            ]
        );
    }
}
