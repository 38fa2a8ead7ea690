//! Allocation of clusterIPs and nodePorts (`pkg/registry/core/service/storage/alloc.go`):
//! what a manifest asks for is reserved, what a Service holds is kept, and the
//! rest is picked by a seeded probe so that each Service lands in the same
//! place whatever else comes and goes.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::{
    allocations::{Allocations, HEALTH_CHECK_KEY, port_key},
    field::{Val, invalid},
    network::{Cidr, Family, ServiceNetwork, address, parse_ip},
    service::{
        LOAD_BALANCER, NODE_PORT, NONE, ip_families, is_headless, needs_health_check, type_of,
    },
};

/// The allocations, indexed by address and port, and what the desired
/// manifests ask for by value.
pub(super) struct State<'a> {
    pub(super) net: &'a ServiceNetwork,
    pub(super) allocations: &'a mut Allocations,
    ip_owner: BTreeMap<IpAddr, String>,
    port_owner: BTreeMap<u16, String>,
    /// Addresses and ports some desired manifest names explicitly: dynamic
    /// allocation leaves them alone, so that admitting a directory of
    /// manifests does not depend on the order its files are read in.
    wanted_ips: BTreeSet<IpAddr>,
    wanted_ports: BTreeSet<u16>,
}

impl<'a> State<'a> {
    pub(super) fn new(
        net: &'a ServiceNetwork,
        allocations: &'a mut Allocations,
        desired: &[Service],
    ) -> Self {
        let mut ip_owner = BTreeMap::new();
        for (k, ips) in &allocations.cluster_ips {
            for ip in ips {
                ip_owner.entry(*ip).or_insert_with(|| k.clone());
            }
        }
        let mut port_owner = BTreeMap::new();
        for (k, ports) in &allocations.node_ports {
            for p in ports.values() {
                port_owner.entry(*p).or_insert_with(|| k.clone());
            }
        }
        let (mut wanted_ips, mut wanted_ports) = (BTreeSet::new(), BTreeSet::new());
        for spec in desired.iter().filter_map(|s| s.spec.as_ref()) {
            let ips = spec
                .cluster_ip
                .iter()
                .chain(spec.cluster_ips.iter().flatten());
            wanted_ips.extend(ips.filter_map(|ip| parse_ip(ip)));
            let ports = spec.ports.iter().flatten().filter_map(|p| p.node_port);
            let ports = ports.chain(spec.health_check_node_port);
            wanted_ports.extend(ports.filter_map(|p| u16::try_from(p).ok()));
        }
        Self {
            net,
            allocations,
            ip_owner,
            port_owner,
            wanted_ips,
            wanted_ports,
        }
    }

    fn ip_taken(&self, ip: &IpAddr, key: &str) -> bool {
        self.ip_owner.get(ip).is_some_and(|owner| owner != key)
    }

    fn port_taken(&self, port: u16, key: &str) -> bool {
        self.port_owner.get(&port).is_some_and(|owner| owner != key)
    }

    /// Replaces what `key` holds.
    pub(super) fn commit(&mut self, key: &str, ips: Vec<IpAddr>, ports: BTreeMap<String, u16>) {
        self.ip_owner.retain(|_, owner| owner != key);
        self.port_owner.retain(|_, owner| owner != key);
        for ip in &ips {
            self.ip_owner.insert(*ip, key.into());
        }
        for p in ports.values() {
            self.port_owner.insert(*p, key.into());
        }
        self.allocations.set(key, ips, ports);
    }
}

/// Why allocation failed; the two are worded differently in a rejection.
pub(super) enum Failure {
    /// Field errors: the object "is invalid".
    Invalid(Vec<String>),
    /// An error that is not the object's fault, already worded.
    Internal(String),
}

/// `errors.NewInternalError`: the API server's wording for a failure that is
/// not the object's fault, such as a full range.
fn internal(msg: &str) -> Failure {
    Failure::Internal(format!("Internal error occurred: {msg}"))
}

/// `allocClusterIPs`: reserves the addresses asked for, reuses the ones held
/// and allocates the rest; sets clusterIP and clusterIPs.
pub(super) fn allocate_ips(
    spec: &mut ServiceSpec,
    key: &str,
    held: &[IpAddr],
    st: &State,
) -> Result<Vec<IpAddr>, Failure> {
    if is_headless(spec) {
        spec.cluster_ip = Some(NONE.into());
        return Ok(vec![]);
    }
    let fams = ip_families(spec);
    let mut ips = spec.cluster_ips.take().unwrap_or_default();
    ips.resize(ips.len().max(fams.len()), String::new());
    // The API server shows the list with "" where an address is to be allocated.
    let shown = Val::strings(&ips);
    let mut out = vec![];
    for (i, fam) in fams.iter().enumerate() {
        let cidr = st
            .net
            .cidr(*fam)
            .expect("families were checked against the network");
        let ip = if ips[i].is_empty() {
            let reuse = held
                .iter()
                .find(|ip| Family::of(ip) == *fam && !st.ip_taken(ip, key));
            match reuse {
                Some(ip) => *ip,
                None => next_free_ip(cidr, key, st)
                    .ok_or_else(|| internal("failed to allocate a serviceIP: range is full"))?,
            }
        } else {
            let ip = parse_ip(&ips[i]).expect("addresses were validated");
            let err = if !cidr.can_allocate(&ip) {
                format!(
                    "the provided IP ({ip}) is not in the valid range. The range of valid IPs is {cidr}"
                )
            } else if st.ip_taken(&ip, key) {
                "provided IP is already allocated".into()
            } else {
                String::new()
            };
            if !err.is_empty() {
                let msg = format!("failed to allocate IP {}: {err}", ips[i]);
                return Err(Failure::Invalid(vec![invalid(
                    "spec.clusterIPs",
                    shown,
                    &msg,
                )]));
            }
            ip
        };
        if ips[i].is_empty() {
            ips[i] = ip.to_string();
        }
        out.push(ip);
    }
    spec.cluster_ip = ips.first().cloned();
    spec.cluster_ips = Some(ips);
    Ok(out)
}

/// A free address of the range for `key`, spread by a hash of the key so that
/// each Service lands in the same place whatever else comes and goes.
fn next_free_ip(cidr: &Cidr, key: &str, st: &State) -> Option<IpAddr> {
    let (first, last) = cidr.usable()?;
    let fam = cidr.family();
    // KEP-3070: dynamic allocation prefers the upper band, leaving the lower
    // one (min(max(16, size/16), 256) addresses) to static assignment.
    let offset = static_band(cidr.host_mask().saturating_add(1), 16, 256);
    // The first address is the `kubernetes` Service's, which the API server
    // always holds; it can only be asked for explicitly.
    let taken = |n: u128| {
        let ip = address(fam, n);
        n == first || st.ip_owner.contains_key(&ip) || st.wanted_ips.contains(&ip)
    };
    let busy = st.ip_owner.len() + st.wanted_ips.len() + 1;
    let seed = fnv1a(&[key.as_bytes(), fam.name().as_bytes()]);
    probe(first, last, offset, seed, busy, taken).map(|n| address(fam, n))
}

/// `initNodePorts`/`updateNodePorts`: reserves the nodePorts asked for, reuses
/// the ones held and allocates the rest; then the health check nodePort.
pub(super) fn allocate_node_ports(
    spec: &mut ServiceSpec,
    key: &str,
    held: &BTreeMap<String, u16>,
    st: &State,
) -> Result<BTreeMap<String, u16>, Failure> {
    let mut out = BTreeMap::new();
    let ty = type_of(spec);
    if ty != NODE_PORT && ty != LOAD_BALANCER {
        return Ok(out);
    }
    let allocate = ty == NODE_PORT || spec.allocate_load_balancer_node_ports != Some(false);
    let net = st.net;
    let ports = spec.ports.get_or_insert_default();
    let requested: Vec<(i32, i32)> = ports
        .iter()
        .filter_map(|p| Some((p.port, p.node_port.filter(|n| *n != 0)?)))
        .collect();
    // nodePort -> service port number, within this Service: ports with the
    // same number (e.g. 53/UDP and 53/TCP) share one nodePort.
    let mut here: BTreeMap<u16, i32> = BTreeMap::new();
    // Why a nodePort cannot be had, in the allocator's words.
    let refuse = |n: i32, port: Option<i32>, here: &BTreeMap<u16, i32>| -> Option<String> {
        if !net.port_in_range(n) {
            return Some(format!(
                "provided port is not in the valid range. The range of valid ports is {}",
                net.port_range()
            ));
        }
        let n = n as u16;
        let shared = port.is_some() && here.get(&n) == port.as_ref();
        (!shared && (here.contains_key(&n) || st.port_taken(n, key)))
            .then(|| "provided port is already allocated".into())
    };
    for (i, p) in ports.iter_mut().enumerate() {
        let asked = p.node_port.filter(|n| *n != 0).or_else(|| {
            let sibling = requested.iter().find(|(port, _)| *port == p.port);
            sibling.filter(|_| allocate).map(|(_, n)| *n)
        });
        let np = if let Some(n) = asked {
            if let Some(err) = refuse(n, Some(p.port), &here) {
                let path = format!("spec.ports[{i}].nodePort");
                return Err(Failure::Invalid(vec![invalid(
                    &path,
                    Val::Int(n.into()),
                    &err,
                )]));
            }
            n as u16
        } else if !allocate {
            continue;
        } else if let Some((n, _)) = here.iter().find(|(_, port)| **port == p.port) {
            *n
        } else if let Some(n) = held
            .get(&port_key(p))
            .filter(|n| {
                !here.contains_key(n) && !requested.iter().any(|(_, r)| *r == i32::from(**n))
            })
            .filter(|n| refuse(i32::from(**n), None, &here).is_none())
        {
            *n
        } else {
            next_free_port(net, key, &port_key(p), &here, st)
                .ok_or_else(|| internal("failed to allocate a nodePort: range is full"))?
        };
        here.insert(np, p.port);
        p.node_port = Some(np.into());
        out.insert(port_key(p), np);
    }

    if needs_health_check(spec) {
        let hc = match spec.health_check_node_port.filter(|n| *n != 0) {
            Some(n) => match refuse(n, None, &here) {
                Some(err) => {
                    return Err(internal(&format!(
                        "failed to allocate requested HealthCheck NodePort {n}: {err}"
                    )));
                }
                None => n as u16,
            },
            None => match held.get(HEALTH_CHECK_KEY) {
                Some(n) if refuse(i32::from(*n), None, &here).is_none() => *n,
                _ => next_free_port(net, key, HEALTH_CHECK_KEY, &here, st).ok_or_else(|| {
                    internal("failed to allocate a HealthCheck NodePort 0: range is full")
                })?,
            },
        };
        spec.health_check_node_port = Some(hc.into());
        out.insert(HEALTH_CHECK_KEY.into(), hc);
    }
    Ok(out)
}

/// A free nodePort for the Service `key`'s port `port` (a [`port_key`] or
/// [`HEALTH_CHECK_KEY`]), seeded by both so that each port keeps its place.
fn next_free_port(
    net: &ServiceNetwork,
    key: &str,
    port: &str,
    here: &BTreeMap<u16, i32>,
    st: &State,
) -> Option<u16> {
    let (first, last) = (
        u128::from(*net.node_ports.start()),
        u128::from(*net.node_ports.end()),
    );
    // KEP-3668: the lower min(max(16, size/32), 128) ports are left to static assignment.
    let offset = static_band(last - first + 1, 32, 128);
    let taken = |n: u128| {
        let n = n as u16;
        here.contains_key(&n) || st.port_owner.contains_key(&n) || st.wanted_ports.contains(&n)
    };
    let busy = here.len() + st.port_owner.len() + st.wanted_ports.len();
    let seed = fnv1a(&[key.as_bytes(), b"/", port.as_bytes()]);
    probe(first, last, offset, seed, busy, taken).map(|n| n as u16)
}

/// How many values at the bottom of a range of `size` are left to static
/// assignment: none in a range of 16 or fewer, else size/`step` bounded to
/// [16, `max`].
fn static_band(size: u128, step: u128, max: u128) -> u128 {
    if size <= 16 {
        0
    } else {
        (size / step).clamp(16, max)
    }
}

/// Linear probe from a seeded start, in the upper band [first+offset, last]
/// and then in the lower one. `busy` bounds how many taken values there can
/// be, which bounds the probe in huge IPv6 ranges.
fn probe(
    first: u128,
    last: u128,
    offset: u128,
    seed: u64,
    busy: usize,
    taken: impl Fn(u128) -> bool,
) -> Option<u128> {
    let split = first.saturating_add(offset).min(last);
    let lower = (split > first).then(|| (first, split - 1));
    for (lo, hi) in std::iter::once((split, last)).chain(lower) {
        // hi - lo + 1 overflows only for a /0 IPv6 range.
        let size = (hi - lo).saturating_add(1);
        let start = u128::from(seed) % size;
        for step in 0..size.min(busy as u128 + 1) {
            let off = if step >= size - start {
                step - (size - start)
            } else {
                start + step
            };
            if !taken(lo + off) {
                return Some(lo + off);
            }
        }
    }
    None
}

/// FNV-1a: stable across builds and platforms, unlike std's hasher.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::{Rejection, admit, network::number, test_support::*};

    #[test]
    fn custom_cluster_ip_kept_and_first_address_only_on_request() {
        let dns = simple("kube-dns", "  clusterIP: 10.96.0.10");
        let api = simple("kubernetes", "  clusterIP: 10.96.0.1");
        let out = admit(
            vec![dns, api],
            &BTreeMap::new(),
            &v4(),
            &mut Allocations::default(),
        );
        assert_eq!(out.rejections, vec![]);
        assert_eq!(
            spec(&out.admitted[0]).cluster_ip.as_deref(),
            Some("10.96.0.10")
        );
        assert_eq!(ips(&out.admitted[0]), vec!["10.96.0.10"]);
        assert_eq!(ips(&out.admitted[1]), vec!["10.96.0.1"]);
    }

    #[test]
    fn duplicate_cluster_ip_newcomer_rejected_incumbent_kept() {
        let mut alloc = Allocations::default();
        let first = admit(
            vec![simple("old", "  clusterIP: 10.96.0.10")],
            &BTreeMap::new(),
            &v4(),
            &mut alloc,
        );
        let prev = previous(&first);
        // The newcomer comes first in the list, and still loses.
        let desired = vec![
            simple("new", "  clusterIP: 10.96.0.10"),
            simple("old", "  clusterIP: 10.96.0.10"),
        ];
        let out = admit(desired, &prev, &v4(), &mut alloc);
        assert_eq!(
            out.rejections,
            vec![Rejection {
                namespace: "default".into(),
                name: "new".into(),
                message: "Service \"new\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.96.0.10\"}: \
                          failed to allocate IP 10.96.0.10: provided IP is already allocated"
                    .into(),
            }]
        );
        assert_eq!(out.admitted.len(), 1);
        assert_eq!(ips(&out.admitted[0]), vec!["10.96.0.10"]);
        assert_eq!(
            alloc.cluster_ips["default/old"],
            vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
        );
        assert!(!alloc.cluster_ips.contains_key("default/new"));

        // Among newcomers, the first listed wins.
        let desired = vec![
            simple("x", "  clusterIP: 10.96.0.20"),
            simple("y", "  clusterIP: 10.96.0.20"),
        ];
        let out = admit(
            desired,
            &BTreeMap::new(),
            &v4(),
            &mut Allocations::default(),
        );
        assert_eq!(out.admitted.len(), 1);
        assert_eq!(out.rejections[0].name, "y");
    }

    #[test]
    fn dual_stack_allocation() {
        let desired = vec![
            simple("prefer", "  ipFamilyPolicy: PreferDualStack"),
            simple(
                "v6first",
                "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6, IPv4]",
            ),
            simple("single", ""),
            simple(
                "pinned",
                "  clusterIP: 10.96.0.53\n  ipFamilyPolicy: RequireDualStack",
            ),
        ];
        let mut alloc = Allocations::default();
        let out = admit(desired, &BTreeMap::new(), &dual(), &mut alloc);
        assert_eq!(out.rejections, vec![]);
        let fams = |s: &Service| spec(s).ip_families.clone().unwrap();
        let parsed = |s: &Service| {
            ips(s)
                .iter()
                .map(|ip| ip.parse::<IpAddr>().unwrap())
                .collect::<Vec<_>>()
        };
        let [prefer, v6first, single, pinned] = out.admitted.as_slice() else {
            panic!()
        };
        assert_eq!(fams(prefer), ["IPv4", "IPv6"]);
        let p = parsed(prefer);
        assert!(
            p[0].is_ipv4() && p[1].is_ipv6() && dual().cidrs[1].contains(&p[1]),
            "{p:?}"
        );
        assert_eq!(spec(prefer).cluster_ip, Some(p[0].to_string()));
        assert_eq!(fams(v6first), ["IPv6", "IPv4"]);
        assert!(parsed(v6first)[0].is_ipv6());
        assert_eq!(fams(single), ["IPv4"]);
        assert_eq!(ips(single).len(), 1);
        assert_eq!(ips(pinned)[0], "10.96.0.53");
        assert!(parsed(pinned)[1].is_ipv6());

        // SingleStack releases the secondary address and keeps the primary.
        let prev = previous(&out);
        let out2 = admit(
            vec![simple("prefer", "  ipFamilyPolicy: SingleStack")],
            &prev,
            &dual(),
            &mut alloc,
        );
        assert_eq!(out2.rejections, vec![]);
        assert_eq!(parsed(&out2.admitted[0]), vec![p[0]]);
        assert_eq!(alloc.cluster_ips["default/prefer"], vec![p[0]]);
        assert_eq!(
            alloc.cluster_ips.len(),
            1,
            "deleted Services released theirs"
        );
    }

    #[test]
    fn node_port_range_and_conflicts() {
        let net = v4();
        let np = |name: &str, port: &str| {
            svc(&format!(
                "metadata: {{name: {name}}}\nspec:\n  type: NodePort\n  ports: [{{port: 80{port}}}]"
            ))
        };
        assert_eq!(
            rejected(np("s", ", nodePort: 20000"), &net),
            "Service \"s\" is invalid: spec.ports[0].nodePort: Invalid value: 20000: provided port is not in the \
             valid range. The range of valid ports is 30000-32767"
        );
        assert_eq!(
            rejected(simple("s", "  ports: [{port: 80, nodePort: 30080}]"), &net),
            "Service \"s\" is invalid: spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"
        );

        let mut alloc = Allocations::default();
        let first = admit(
            vec![np("old", ", nodePort: 30080"), np("auto", "")],
            &BTreeMap::new(),
            &net,
            &mut alloc,
        );
        assert_eq!(first.rejections, vec![]);
        assert_eq!(node_ports(&first.admitted[0]), vec![30080]);
        // Dynamic nodePorts come from the upper band: the lowest 86 ports of
        // the default range are left to static assignment.
        let auto = node_ports(&first.admitted[1])[0];
        assert!((30086..=32767).contains(&auto), "{auto}");
        assert_eq!(
            alloc.node_ports["default/auto"],
            BTreeMap::from([("80/TCP".to_string(), auto as u16)])
        );

        let desired = vec![
            np("new", ", nodePort: 30080"),
            np("old", ", nodePort: 30080"),
            np("auto", ""),
        ];
        let out = admit(desired, &previous(&first), &net, &mut alloc);
        assert_eq!(
            out.rejections[0].message,
            "Service \"new\" is invalid: spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
        );
        assert_eq!(out.admitted, first.admitted);

        // Ports with one number share a nodePort; LoadBalancers may opt out.
        let dns = svc(
            "metadata: {name: dns}\nspec:\n  type: NodePort\n  ports: [{name: udp, port: 53, protocol: UDP}, {name: tcp, port: 53}]",
        );
        let lb = svc(
            "metadata: {name: lb}\nspec:\n  type: LoadBalancer\n  allocateLoadBalancerNodePorts: false\n  ports: [{port: 443}]",
        );
        let out = admit(vec![dns, lb], &BTreeMap::new(), &net, &mut alloc);
        assert_eq!(out.rejections, vec![]);
        let shared = node_ports(&out.admitted[0]);
        assert_eq!(shared.len(), 2);
        assert_eq!(shared[0], shared[1]);
        assert_eq!(node_ports(&out.admitted[1]), Vec::<i32>::new());
    }

    #[test]
    fn health_check_node_port_for_local_load_balancers() {
        let lb = "metadata: {name: lb}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  ports: [{port: 443}]";
        let mut alloc = Allocations::default();
        let out = admit(vec![svc(lb)], &BTreeMap::new(), &v4(), &mut alloc);
        assert_eq!(out.rejections, vec![]);
        let hc = spec(&out.admitted[0]).health_check_node_port.unwrap();
        assert!(v4().port_in_range(hc));
        assert_eq!(alloc.node_ports["default/lb"][HEALTH_CHECK_KEY], hc as u16);
        assert_eq!(
            rejected(simple("s", "  healthCheckNodePort: 30100"), &v4()),
            "Service \"s\" is invalid: spec.healthCheckNodePort: Invalid value: 30100: may only be set when `type` \
             is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"
        );
    }

    #[test]
    fn small_range_fills_up() {
        // A /29 has six usable addresses; the first is the `kubernetes` Service's.
        let net = ServiceNetwork::new(vec!["10.0.0.0/29".parse().unwrap()], 30000..=30001).unwrap();
        let desired: Vec<Service> = (0..6).map(|i| simple(&format!("s{i}"), "")).collect();
        let out = admit(desired, &BTreeMap::new(), &net, &mut Allocations::default());
        let mut got: Vec<String> = out.admitted.iter().map(|s| ips(s)[0].clone()).collect();
        got.sort();
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        assert_eq!(out.rejections.len(), 1);
        assert_eq!(
            out.rejections[0].message,
            "Internal error occurred: failed to allocate a serviceIP: range is full"
        );
    }

    #[test]
    fn large_ipv6_range() {
        let net =
            ServiceNetwork::new(vec!["fd00:96::/64".parse().unwrap()], 30000..=32767).unwrap();
        let desired: Vec<Service> = (0..3).map(|i| simple(&format!("s{i}"), "")).collect();
        let out = admit(desired, &BTreeMap::new(), &net, &mut Allocations::default());
        assert_eq!(out.rejections, vec![]);
        let got: BTreeSet<String> = out.admitted.iter().map(|s| ips(s)[0].clone()).collect();
        assert_eq!(got.len(), 3);
        for ip in got {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(
                net.cidrs[0].contains(&ip) && number(&ip) & 0xffff_ffff_ffff_ffff > 256,
                "{ip}"
            );
        }
        assert_eq!(
            spec(&out.admitted[0]).ip_families,
            Some(vec!["IPv6".into()])
        );
    }
}
