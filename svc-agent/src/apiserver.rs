//! What the Kubernetes API server does to a Service when it is created or
//! updated, for standalone mode (Services read from manifests, no API
//! server): defaulting (`SetDefaults_Service`), validation
//! (`ValidateService`, `ValidateServiceUpdate`) and allocation of clusterIPs
//! and nodePorts (`pkg/registry/core/service/storage/alloc.go`), with
//! rejections worded as the API server words them. Pure functions, plus a
//! small JSON state file that keeps allocations stable across restarts.
//!
//! The allocation a Service holds in [`Allocations`] plays the part of the
//! stored object's allocated fields: a manifest that leaves `clusterIP` or a
//! `nodePort` out keeps what it was given before (the API server patches them
//! in from the old object), and changing an allocated clusterIP is refused
//! ("may not change once set").
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
    path::Path,
    str::FromStr,
};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::{
    api::core::v1::{ClientIPConfig, Service, ServicePort, ServiceSpec, SessionAffinityConfig},
    apimachinery::pkg::{
        apis::meta::v1::ObjectMeta, apis::meta::v1::Time, util::intstr::IntOrString,
    },
    jiff::Timestamp,
};
use serde::{Deserialize, Serialize};

/// The service network: one or two CIDRs (at most one per family, first is
/// the primary family) and the nodePort range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceNetwork {
    pub cidrs: Vec<Cidr>,
    pub node_ports: RangeInclusive<u16>,
}

impl ServiceNetwork {
    /// Checks what the API server checks of its flags: one or two CIDRs, of
    /// different families, and a non-empty nodePort range.
    pub fn new(cidrs: Vec<Cidr>, node_ports: RangeInclusive<u16>) -> Result<Self> {
        match cidrs.as_slice() {
            [_] => {}
            [a, b] if a.family() != b.family() => {}
            [_, _] => bail!(
                "service CIDRs {} and {} are of the same family",
                cidrs[0],
                cidrs[1]
            ),
            _ => bail!("expected one or two service CIDRs, got {}", cidrs.len()),
        }
        if node_ports.is_empty() {
            bail!("empty nodePort range");
        }
        Ok(Self { cidrs, node_ports })
    }

    fn cidr(&self, family: Family) -> Option<&Cidr> {
        self.cidrs.iter().find(|c| c.family() == family)
    }

    fn primary(&self) -> Family {
        self.cidrs.first().map_or(Family::V4, Cidr::family)
    }

    fn dual_stack(&self) -> bool {
        self.cidr(Family::V4).is_some() && self.cidr(Family::V6).is_some()
    }

    /// As `net.PortRange` prints it.
    fn port_range(&self) -> String {
        format!("{}-{}", self.node_ports.start(), self.node_ports.end())
    }

    fn port_in_range(&self, port: i32) -> bool {
        u16::try_from(port).is_ok_and(|p| self.node_ports.contains(&p))
    }
}

/// A CIDR, e.g. "10.96.0.0/16" or "fd00:96::/112". Parsing masks the host
/// bits, as Go's `ParseCIDR` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = ip.to_canonical();
        Family::of(&ip) == self.family() && number(&ip) & !self.host_mask() == self.network()
    }

    fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    fn host_mask(&self) -> u128 {
        let host_bits = self.family().bits() - u32::from(self.prefix);
        u128::MAX.checked_shr(128 - host_bits).unwrap_or(0)
    }

    fn network(&self) -> u128 {
        number(&self.addr) & !self.host_mask()
    }

    /// The addresses the allocator may hand out, as numbers: never the
    /// network address, nor IPv4's broadcast address (ipallocator.go).
    fn usable(&self) -> Option<(u128, u128)> {
        let first = self.network().checked_add(1)?;
        let mut last = self.network() | self.host_mask();
        if self.family() == Family::V4 {
            last = last.checked_sub(1)?;
        }
        (first <= last).then_some((first, last))
    }

    fn can_allocate(&self, ip: &IpAddr) -> bool {
        let n = number(&ip.to_canonical());
        self.contains(ip)
            && self
                .usable()
                .is_some_and(|(first, last)| (first..=last).contains(&n))
    }
}

impl FromStr for Cidr {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| anyhow!("{s:?}: expected ADDRESS/PREFIX"))?;
        let addr: IpAddr = addr
            .parse()
            .with_context(|| format!("{s:?}: bad address"))?;
        let prefix: u8 = prefix
            .parse()
            .with_context(|| format!("{s:?}: bad prefix length"))?;
        if u32::from(prefix) > Family::of(&addr).bits() {
            bail!("{s:?}: prefix length out of range");
        }
        let cidr = Cidr { addr, prefix };
        Ok(Cidr {
            addr: address(cidr.family(), cidr.network()),
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Allocations that must survive restarts, keyed by "namespace/name".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocations {
    /// Each Service's clusterIPs, primary family first.
    #[serde(default)]
    pub cluster_ips: BTreeMap<String, Vec<IpAddr>>,
    /// Each Service's nodePorts by [`port_key`], plus its health check
    /// nodePort under [`HEALTH_CHECK_KEY`].
    #[serde(default)]
    pub node_ports: BTreeMap<String, BTreeMap<String, u16>>,
}

/// The key of a Service's health check nodePort in [`Allocations::node_ports`];
/// port keys always hold a '/', so it cannot collide with one.
pub const HEALTH_CHECK_KEY: &str = "healthCheckNodePort";

/// A Service port's key in [`Allocations::node_ports`]: "name/PROTOCOL", or
/// "port/PROTOCOL" when unnamed (only a Service's single port may be).
pub fn port_key(port: &ServicePort) -> String {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match port.name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => format!("{name}/{protocol}"),
        None => format!("{}/{protocol}", port.port),
    }
}

impl Allocations {
    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the state file through a temporary file and a rename, so a
    /// crash leaves either the old state or the new one, never half of one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let mut file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec_pretty(self)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub namespace: String,
    pub name: String,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Admission {
    pub admitted: Vec<Service>,
    pub rejections: Vec<Rejection>,
}

/// Admits the desired Services (as read from manifests, in a stable order).
///
/// `previous` holds each Service's last admitted version (key "ns/name"): a
/// Service that fails validation keeps its previous admitted version in
/// `admitted` (the API server would have rejected the update, so the old
/// object stays), or is absent if it never was admitted. Allocations for
/// Services that no longer exist are released.
pub fn admit(
    desired: Vec<Service>,
    previous: &BTreeMap<String, Service>,
    net: &ServiceNetwork,
    allocations: &mut Allocations,
) -> Admission {
    let keys: Vec<String> = desired.iter().map(key).collect();
    let live: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
    allocations
        .cluster_ips
        .retain(|k, _| live.contains(k.as_str()));
    allocations
        .node_ports
        .retain(|k, _| live.contains(k.as_str()));
    // If the state file was lost, what was admitted still holds its addresses.
    for k in &live {
        if let Some(prev) = previous.get(*k)
            && !allocations.cluster_ips.contains_key(*k)
            && !allocations.node_ports.contains_key(*k)
        {
            record(allocations, k, prev);
        }
    }
    // After a change of the service CIDRs or nodePort range, what fell out of
    // them is re-allocated rather than kept.
    for ips in allocations.cluster_ips.values_mut() {
        ips.retain(|ip| net.cidrs.iter().any(|c| c.can_allocate(ip)));
    }
    for ports in allocations.node_ports.values_mut() {
        ports.retain(|_, p| net.node_ports.contains(p));
    }
    allocations.cluster_ips.retain(|_, v| !v.is_empty());
    allocations.node_ports.retain(|_, v| !v.is_empty());

    let mut state = State::new(net, allocations, &desired);
    let mut out = Admission::default();
    let mut seen = BTreeSet::new();
    for (svc, key) in desired.into_iter().zip(keys) {
        let namespace = svc.metadata.namespace.clone().filter(|n| !n.is_empty());
        let namespace = namespace.unwrap_or_else(|| "default".into());
        let name = svc.metadata.name.clone().unwrap_or_default();
        if !seen.insert(key.clone()) {
            // The first manifest created it; a second one cannot create it again.
            let message = format!("services {} already exists", quote(&name));
            out.rejections.push(Rejection {
                namespace,
                name,
                message,
            });
            continue;
        }
        match admit_one(svc, &key, previous.get(&key), &mut state) {
            Ok(svc) => out.admitted.push(svc),
            Err(message) => {
                if let Some(prev) = previous.get(&key) {
                    out.admitted.push(prev.clone());
                }
                out.rejections.push(Rejection {
                    namespace,
                    name,
                    message,
                });
            }
        }
    }
    out
}

/// "namespace/name", with the namespace defaulted.
fn key(svc: &Service) -> String {
    let ns = svc.metadata.namespace.as_deref().filter(|n| !n.is_empty());
    format!(
        "{}/{}",
        ns.unwrap_or("default"),
        svc.metadata.name.as_deref().unwrap_or("")
    )
}

/// Records what an admitted Service holds.
fn record(allocations: &mut Allocations, key: &str, svc: &Service) {
    let Some(spec) = &svc.spec else { return };
    let ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .filter_map(|ip| parse_ip(ip))
        .collect();
    let mut ports: BTreeMap<String, u16> = BTreeMap::new();
    for p in spec.ports.iter().flatten() {
        if let Some(np) = p
            .node_port
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0)
        {
            ports.insert(port_key(p), np);
        }
    }
    if let Some(hc) = spec
        .health_check_node_port
        .and_then(|n| u16::try_from(n).ok())
    {
        ports.insert(HEALTH_CHECK_KEY.into(), hc);
    }
    if !ips.is_empty() {
        allocations.cluster_ips.insert(key.into(), ips);
    }
    if !ports.is_empty() {
        allocations.node_ports.insert(key.into(), ports);
    }
}

/// The allocations, indexed by address and port, and what the desired
/// manifests ask for by value.
struct State<'a> {
    net: &'a ServiceNetwork,
    allocations: &'a mut Allocations,
    ip_owner: BTreeMap<IpAddr, String>,
    port_owner: BTreeMap<u16, String>,
    /// Addresses and ports some desired manifest names explicitly: dynamic
    /// allocation leaves them alone, so that admitting a directory of
    /// manifests does not depend on the order its files are read in.
    wanted_ips: BTreeSet<IpAddr>,
    wanted_ports: BTreeSet<u16>,
}

impl<'a> State<'a> {
    fn new(net: &'a ServiceNetwork, allocations: &'a mut Allocations, desired: &[Service]) -> Self {
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
    fn commit(&mut self, key: &str, ips: Vec<IpAddr>, ports: BTreeMap<String, u16>) {
        self.ip_owner.retain(|_, owner| owner != key);
        self.port_owner.retain(|_, owner| owner != key);
        for ip in &ips {
            self.ip_owner.insert(*ip, key.into());
        }
        for p in ports.values() {
            self.port_owner.insert(*p, key.into());
        }
        self.allocations.cluster_ips.remove(key);
        self.allocations.node_ports.remove(key);
        if !ips.is_empty() {
            self.allocations.cluster_ips.insert(key.into(), ips);
        }
        if !ports.is_empty() {
            self.allocations.node_ports.insert(key.into(), ports);
        }
    }
}

const NONE: &str = "None";
const CLUSTER_IP: &str = "ClusterIP";
const NODE_PORT: &str = "NodePort";
const LOAD_BALANCER: &str = "LoadBalancer";
const EXTERNAL_NAME: &str = "ExternalName";
const SINGLE_STACK: &str = "SingleStack";
const PREFER_DUAL_STACK: &str = "PreferDualStack";
const REQUIRE_DUAL_STACK: &str = "RequireDualStack";

/// Create or update one Service. On success the stored allocations are
/// updated; on failure nothing changes and the API server's message is
/// returned.
fn admit_one(
    mut svc: Service,
    key: &str,
    prev: Option<&Service>,
    st: &mut State,
) -> Result<Service, String> {
    set_defaults(&mut svc);
    let name = svc.metadata.name.clone().unwrap_or_default();
    let invalid =
        |errs: Vec<String>| format!("Service {} is invalid: {}", quote(&name), aggregate(errs));
    let mut spec = svc.spec.take().unwrap_or_default();
    // normalizeClusterIPs: an old-style manifest sets only the singular field.
    if let Some(ip) = spec.cluster_ip.as_ref().filter(|ip| !ip.is_empty())
        && spec.cluster_ips.as_ref().is_none_or(Vec::is_empty)
    {
        spec.cluster_ips = Some(vec![ip.clone()]);
    }
    let user = spec.clone();
    let held_ips = st
        .allocations
        .cluster_ips
        .get(key)
        .cloned()
        .unwrap_or_default();
    let held_ports = st
        .allocations
        .node_ports
        .get(key)
        .cloned()
        .unwrap_or_default();

    // patchAllocatedValues: a manifest without a clusterIP keeps the one allocated.
    let patched = !held_ips.is_empty()
        && type_of(&spec) != EXTERNAL_NAME
        && opt(&spec.cluster_ip).is_none()
        && spec.cluster_ips.as_ref().is_none_or(Vec::is_empty);
    if patched {
        spec.cluster_ip = Some(held_ips[0].to_string());
        spec.cluster_ips = Some(held_ips.iter().map(IpAddr::to_string).collect());
    }

    let mut errs = if held_ips.is_empty() {
        vec![]
    } else {
        update_errors(&user, &spec, &held_ips)
    };
    errs.extend(validate(&svc.metadata, &spec));
    if !errs.is_empty() {
        return Err(invalid(errs));
    }
    let fail = |e: Failure| match e {
        Failure::Invalid(errs) => invalid(errs),
        Failure::Internal(msg) => msg,
    };
    let ips = if type_of(&spec) == EXTERNAL_NAME {
        vec![]
    } else {
        init_families(&mut spec, &user, patched, &held_ips, prev, st.net).map_err(invalid)?;
        allocate_ips(&mut spec, key, &held_ips, st).map_err(fail)?
    };
    let ports = allocate_node_ports(&mut spec, key, &held_ports, st).map_err(fail)?;

    st.commit(key, ips, ports);
    svc.spec = Some(spec);
    svc.status = prev.and_then(|p| p.status.clone());
    svc.metadata.creation_timestamp = prev
        .and_then(|p| p.metadata.creation_timestamp.clone())
        .or_else(now);
    Ok(svc)
}

/// Now, to the second, as the API server stores timestamps.
fn now() -> Option<Time> {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let seconds = i64::try_from(since_epoch.as_secs()).ok()?;
    Timestamp::from_second(seconds).ok().map(Time)
}

enum Failure {
    /// Field errors: the object "is invalid".
    Invalid(Vec<String>),
    /// An error that is not the object's fault, already worded.
    Internal(String),
}

/// `SetDefaults_Service`, plus the namespace the request would have named.
fn set_defaults(svc: &mut Service) {
    if opt(&svc.metadata.namespace).is_none() {
        svc.metadata.namespace = Some("default".into());
    }
    let spec = svc.spec.get_or_insert_default();
    if opt(&spec.session_affinity).is_none() {
        spec.session_affinity = Some(NONE.into());
    }
    match spec.session_affinity.as_deref() {
        Some(NONE) => spec.session_affinity_config = None,
        Some("ClientIP") => {
            let cfg = spec.session_affinity_config.get_or_insert_default();
            let ip = cfg.client_ip.get_or_insert_default();
            ip.timeout_seconds.get_or_insert(10800);
        }
        _ => {}
    }
    if opt(&spec.type_).is_none() {
        spec.type_ = Some(CLUSTER_IP.into());
    }
    for p in spec.ports.iter_mut().flatten() {
        if opt(&p.protocol).is_none() {
            p.protocol = Some("TCP".into());
        }
        match &p.target_port {
            None | Some(IntOrString::Int(0)) => p.target_port = Some(IntOrString::Int(p.port)),
            Some(IntOrString::String(s)) if s.is_empty() => {
                p.target_port = Some(IntOrString::Int(p.port))
            }
            _ => {}
        }
    }
    if externally_accessible(spec) && opt(&spec.external_traffic_policy).is_none() {
        spec.external_traffic_policy = Some("Cluster".into());
    }
    if spec.internal_traffic_policy.is_none()
        && [CLUSTER_IP, NODE_PORT, LOAD_BALANCER].contains(&type_of(spec))
    {
        spec.internal_traffic_policy = Some("Cluster".into());
    }
    if type_of(spec) == LOAD_BALANCER {
        spec.allocate_load_balancer_node_ports.get_or_insert(true);
    }
}

/// `validateUpgradeDowngradeClusterIPs` and `validateUpgradeDowngradeIPFamilies`,
/// the old object being what the Service holds. `user` is the Service as
/// given, `spec` the one with allocated values patched in.
fn update_errors(user: &ServiceSpec, spec: &ServiceSpec, held: &[IpAddr]) -> Vec<String> {
    let mut errs = vec![];
    if type_of(spec) == EXTERNAL_NAME {
        return errs;
    }
    let policy = match opt(&user.ip_family_policy) {
        Some(p) => Val::Str(p.into()),
        None => Val::Null,
    };
    let old: Vec<String> = held.iter().map(IpAddr::to_string).collect();
    let new = spec.cluster_ips.clone().unwrap_or_default();
    let same = |a: &str, b: &str| a == b || parse_ip(a).is_some_and(|a| parse_ip(b) == Some(a));
    let changed = |i: usize| {
        invalid(
            &format!("spec.clusterIPs[{i}]"),
            Val::strings(&new),
            "may not change once set",
        )
    };
    if old.len() == new.len() {
        errs.extend(
            (0..old.len())
                .filter(|i| !same(&old[*i], &new[*i]))
                .map(changed),
        );
    } else if !new.is_empty() && !same(&old[0], &new[0]) {
        errs.push(changed(0));
    }
    if old.len() > new.len() && new.len() == 1 && opt(&user.ip_family_policy) != Some(SINGLE_STACK)
    {
        let msg = "must be set to 'SingleStack' when releasing the secondary clusterIP";
        errs.push(invalid("spec.ipFamilyPolicy", policy.clone(), msg));
    }

    if is_headless(spec) {
        return errs;
    }
    let old: Vec<&str> = held.iter().map(|ip| Family::of(ip).name()).collect();
    let new: Vec<String> = user.ip_families.clone().unwrap_or_default();
    let first_changed = !new.is_empty() && new[0] != old[0];
    if old.len() == new.len() {
        let val = Val::Go(format!("[]core.IPFamily{}", go_list(&new)));
        for i in 0..old.len() {
            if old[i] != new[i] {
                errs.push(invalid(
                    "spec.ipFamilies[0]",
                    val.clone(),
                    "may not change once set",
                ));
            }
        }
    } else if first_changed {
        let ips = Val::strings(spec.cluster_ips.as_deref().unwrap_or_default());
        errs.push(invalid(
            "spec.ipFamilies[0]",
            ips,
            "may not change once set",
        ));
    }
    if old.len() > new.len() && new.len() == 1 && opt(&user.ip_family_policy) != Some(SINGLE_STACK)
    {
        let msg = "must be set to 'SingleStack' when releasing the secondary ipFamily";
        errs.push(invalid("spec.ipFamilyPolicy", policy, msg));
    }
    errs
}

/// `ValidateService`, less the checks noted in the summary below.
fn validate(meta: &ObjectMeta, spec: &ServiceSpec) -> Vec<String> {
    let mut errs = vec![];
    match opt(&meta.name) {
        None => errs.push(required(
            "metadata.name",
            "name or generateName is required",
        )),
        Some(name) => {
            let msgs = dns1035_label(name);
            errs.extend(
                msgs.into_iter()
                    .map(|m| invalid("metadata.name", Val::str(name), &m)),
            );
        }
    }
    if let Some(ns) = opt(&meta.namespace) {
        let msgs = dns1123_label(ns);
        errs.extend(
            msgs.into_iter()
                .map(|m| invalid("metadata.namespace", Val::str(ns), &m)),
        );
    }

    let ty = type_of(spec);
    let ports = spec.ports.as_deref().unwrap_or_default();
    let headless = is_headless(spec);
    if ports.is_empty() && !headless && ty != EXTERNAL_NAME {
        errs.push(required("spec.ports", ""));
    }
    match ty {
        LOAD_BALANCER | NODE_PORT if headless => errs.push(invalid(
            "spec.clusterIPs[0]",
            Val::str(NONE),
            &format!("may not be set to 'None' for {ty} services"),
        )),
        EXTERNAL_NAME => {
            for (field, set) in [
                (
                    "spec.clusterIPs",
                    spec.cluster_ips.as_ref().is_some_and(|v| !v.is_empty()),
                ),
                (
                    "spec.ipFamilies",
                    spec.ip_families.as_ref().is_some_and(|v| !v.is_empty()),
                ),
                ("spec.ipFamilyPolicy", spec.ip_family_policy.is_some()),
            ] {
                if set {
                    errs.push(forbidden(field, "may not be set for ExternalName services"));
                }
            }
            // The value (a CNAME) may have a trailing dot to denote it as fully qualified.
            let cname = spec.external_name.as_deref().unwrap_or("");
            let cname = cname.strip_suffix('.').unwrap_or(cname);
            if cname.is_empty() {
                errs.push(required("spec.externalName", ""));
            } else {
                let msgs = dns1123_subdomain(cname);
                errs.extend(
                    msgs.iter()
                        .map(|m| invalid("spec.externalName", Val::str(cname), m)),
                );
            }
        }
        _ => {}
    }

    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        errs.extend(validate_port(p, i, ports.len() > 1, &mut names));
    }

    match opt(&spec.session_affinity) {
        None => errs.push(required("spec.sessionAffinity", "")),
        Some(a) if !["ClientIP", NONE].contains(&a) => errs.push(not_supported(
            "spec.sessionAffinity",
            Val::str(a),
            &["ClientIP", NONE],
        )),
        Some("ClientIP") => errs.extend(validate_affinity_config(
            spec.session_affinity_config.as_ref(),
        )),
        Some(_) if spec.session_affinity_config.is_some() => errs.push(forbidden(
            "spec.sessionAffinityConfig",
            "must not be set when session affinity is None",
        )),
        Some(_) => {}
    }

    errs.extend(validate_cluster_ips(spec));

    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        let path = format!("spec.externalIPs[{i}]");
        match parse_ip(ip) {
            None => errs.push(invalid(&path, Val::str(ip), IP_MSG)),
            Some(addr) => errs.extend(non_special_ip(&addr).into_iter().map(|m| {
                let m = m.replace("{ip}", ip);
                invalid(&path, Val::str(ip), &m)
            })),
        }
    }

    const TYPES: [&str; 4] = [CLUSTER_IP, EXTERNAL_NAME, LOAD_BALANCER, NODE_PORT];
    match opt(&spec.type_) {
        None => errs.push(required("spec.type", "")),
        Some(t) if !TYPES.contains(&t) => {
            errs.push(not_supported("spec.type", Val::str(t), &TYPES))
        }
        Some(_) => {}
    }
    if ty == CLUSTER_IP {
        for (i, p) in ports.iter().enumerate() {
            if p.node_port.is_some_and(|n| n != 0) {
                let path = format!("spec.ports[{i}].nodePort");
                errs.push(forbidden(
                    &path,
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }
    // Duplicate (protocol, nodePort) and (protocol, port) pairs.
    let mut node_ports = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        if let Some(np) = p.node_port.filter(|n| *n != 0)
            && !node_ports.insert((p.protocol.clone(), np))
        {
            errs.push(duplicate(
                &format!("spec.ports[{i}].nodePort"),
                Val::Int(np.into()),
            ));
        }
    }
    let mut pairs = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let protocol = p.protocol.as_deref().unwrap_or("");
        if !pairs.insert((protocol, p.port)) {
            // The API server prints its internal struct with Go's %#v.
            let key = format!(
                "core.ServicePort{{Name:\"\", Protocol:{}, AppProtocol:(*string)(nil), Port:{}, \
                 TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
                quote(protocol),
                p.port
            );
            errs.push(duplicate(&format!("spec.ports[{i}]"), Val::Go(key)));
        }
    }

    let ranges = spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default();
    if !ranges.is_empty() {
        if ty != LOAD_BALANCER {
            let msg = "may only be used when `type` is 'LoadBalancer'";
            errs.push(forbidden("spec.LoadBalancerSourceRanges", msg));
        }
        for (i, r) in ranges.iter().enumerate() {
            if r.trim().parse::<Cidr>().is_err() {
                let msg = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
                errs.push(invalid(
                    &format!("spec.LoadBalancerSourceRanges[{i}]"),
                    Val::str(r.trim()),
                    msg,
                ));
            }
        }
    }
    if ty != LOAD_BALANCER {
        let msg = "may only be used when `type` is 'LoadBalancer'";
        if spec.allocate_load_balancer_node_ports.is_some() {
            errs.push(forbidden("spec.allocateLoadBalancerNodePorts", msg));
        }
        if spec.load_balancer_class.is_some() {
            errs.push(forbidden("spec.loadBalancerClass", msg));
        }
    }

    // validateServiceExternalTrafficPolicy
    let etp = opt(&spec.external_traffic_policy);
    if !externally_accessible(spec) {
        if let Some(p) = etp {
            let msg = "may only be set for externally-accessible services";
            errs.push(invalid("spec.externalTrafficPolicy", Val::str(p), msg));
        }
    } else {
        match etp {
            None => errs.push(required("spec.externalTrafficPolicy", "")),
            Some(p) if !["Cluster", "Local"].contains(&p) => errs.push(not_supported(
                "spec.externalTrafficPolicy",
                Val::str(p),
                &["Cluster", "Local"],
            )),
            Some(_) => {}
        }
    }
    // A missing healthCheckNodePort is allocated later, so only a given one is checked.
    if let Some(hc) = spec.health_check_node_port.filter(|n| *n != 0) {
        if !needs_health_check(spec) {
            let msg = "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'";
            errs.push(invalid(
                "spec.healthCheckNodePort",
                Val::Int(hc.into()),
                msg,
            ));
        } else if !(1..=65535).contains(&hc) {
            errs.push(invalid(
                "spec.healthCheckNodePort",
                Val::Int(hc.into()),
                PORT_RANGE_MSG,
            ));
        }
    }
    match spec.internal_traffic_policy.as_deref() {
        None if [CLUSTER_IP, NODE_PORT, LOAD_BALANCER].contains(&ty) => {
            errs.push(required("spec.internalTrafficPolicy", ""))
        }
        Some(p) if !["Cluster", "Local"].contains(&p) => errs.push(not_supported(
            "spec.internalTrafficPolicy",
            Val::str(p),
            &["Cluster", "Local"],
        )),
        _ => {}
    }
    errs
}

/// `validateServicePort`.
fn validate_port(
    p: &ServicePort,
    i: usize,
    require_name: bool,
    names: &mut BTreeSet<String>,
) -> Vec<String> {
    let mut errs = vec![];
    let path = |field: &str| format!("spec.ports[{i}].{field}");
    match opt(&p.name) {
        None if require_name => errs.push(required(&path("name"), "")),
        None => {}
        Some(name) => {
            let msgs = dns1123_label(name);
            errs.extend(
                msgs.iter()
                    .map(|m| invalid(&path("name"), Val::str(name), m)),
            );
            if !names.insert(name.to_owned()) {
                errs.push(duplicate(&path("name"), Val::str(name)));
            }
        }
    }
    if !(1..=65535).contains(&p.port) {
        errs.push(invalid(
            &path("port"),
            Val::Int(p.port.into()),
            PORT_RANGE_MSG,
        ));
    }
    const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];
    match opt(&p.protocol) {
        None => errs.push(required(&path("protocol"), "")),
        Some(proto) if !PROTOCOLS.contains(&proto) => errs.push(not_supported(
            &path("protocol"),
            Val::str(proto),
            &PROTOCOLS,
        )),
        Some(_) => {}
    }
    match &p.target_port {
        Some(IntOrString::Int(n)) if !(1..=65535).contains(n) => errs.push(invalid(
            &path("targetPort"),
            Val::Int((*n).into()),
            PORT_RANGE_MSG,
        )),
        Some(IntOrString::String(s)) => {
            let msgs = port_name(s);
            errs.extend(
                msgs.iter()
                    .map(|m| invalid(&path("targetPort"), Val::str(s), m)),
            );
        }
        _ => {}
    }
    errs
}

/// `validateClientIPAffinityConfig`.
fn validate_affinity_config(cfg: Option<&SessionAffinityConfig>) -> Vec<String> {
    let detail = "when session affinity type is ClientIP";
    match cfg.map(|c| c.client_ip.as_ref()) {
        None => vec![required("spec.sessionAffinityConfig", detail)],
        Some(None) => vec![required("spec.sessionAffinityConfig.clientIP", detail)],
        Some(Some(ClientIPConfig {
            timeout_seconds: None,
        })) => {
            vec![required(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                detail,
            )]
        }
        Some(Some(ClientIPConfig {
            timeout_seconds: Some(t),
        })) if !(1..=86400).contains(t) => {
            vec![invalid(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                Val::Int((*t).into()),
                "must be greater than 0 and less than 86400",
            )]
        }
        Some(Some(_)) => vec![],
    }
}

/// `ValidateServiceClusterIPsRelatedFields`.
fn validate_cluster_ips(spec: &ServiceSpec) -> Vec<String> {
    let mut errs = vec![];
    if type_of(spec) == EXTERNAL_NAME {
        return errs;
    }
    let ips = spec.cluster_ips.as_deref().unwrap_or_default();
    let shown = || Val::strings(ips);
    // normalizeClusterIPs has already filled clusterIPs from a lone clusterIP.
    match opt(&spec.cluster_ip) {
        Some(ip) if ips[0] != ip => errs.push(invalid(
            "spec.clusterIPs",
            shown(),
            "first value must match `clusterIP`",
        )),
        None if !ips.is_empty() => errs.push(invalid(
            "spec.clusterIPs",
            shown(),
            "must be empty when `clusterIP` is not specified",
        )),
        _ => {}
    }
    let mut seen = BTreeSet::new();
    for (i, fam) in spec.ip_families.iter().flatten().enumerate() {
        let path = format!("spec.ipFamilies[{i}]");
        if Family::parse(fam).is_none() {
            errs.push(not_supported(&path, Val::str(fam), &["IPv4", "IPv6"]));
        }
        if !seen.insert(fam) {
            errs.push(duplicate(&path, Val::str(fam)));
        }
    }
    if let Some(p) = &spec.ip_family_policy {
        const POLICIES: [&str; 3] = [PREFER_DUAL_STACK, REQUIRE_DUAL_STACK, SINGLE_STACK];
        if !POLICIES.contains(&p.as_str()) {
            errs.push(not_supported("spec.ipFamilyPolicy", Val::str(p), &POLICIES));
        }
    }
    let mut bad_ips = false;
    for (i, ip) in ips.iter().enumerate() {
        if i == 0 && ip == NONE {
            if ips.len() > 1 {
                bad_ips = true;
                errs.push(invalid(
                    "spec.clusterIPs",
                    shown(),
                    "'None' must be the first and only value",
                ));
            }
            continue;
        }
        if parse_ip(ip).is_none() {
            bad_ips = true;
            errs.push(invalid(
                &format!("spec.clusterIPs[{i}]"),
                Val::str(ip),
                IP_MSG,
            ));
        }
    }
    if ips.len() > 2 {
        errs.push(invalid(
            "spec.clusterIPs",
            shown(),
            "may only hold up to 2 values",
        ));
    }
    // Past a malformed address the remaining checks would only add noise.
    if bad_ips {
        return errs;
    }
    let parsed: Vec<IpAddr> = ips.iter().filter_map(|ip| parse_ip(ip)).collect();
    if ips.len() > 1 {
        let dual = parsed.iter().any(IpAddr::is_ipv4) && parsed.iter().any(IpAddr::is_ipv6);
        if !dual {
            let msg = "may specify no more than one IP for each IP family";
            errs.push(invalid("spec.clusterIPs", shown(), msg));
        }
    }
    if !is_headless(spec) {
        for (i, (ip, fam)) in parsed
            .iter()
            .zip(spec.ip_families.iter().flatten())
            .enumerate()
        {
            let want = match fam.as_str() {
                "IPv4" if ip.is_ipv6() => "IPv4",
                "IPv6" if ip.is_ipv4() => "IPv6",
                _ => continue,
            };
            let msg = format!("expected an {want} value as indicated by `ipFamilies[{i}]`");
            errs.push(invalid(
                &format!("spec.clusterIPs[{i}]"),
                Val::str(&ips[i]),
                &msg,
            ));
        }
    }
    errs
}

/// `initIPFamilyFields`: settles ipFamilyPolicy and ipFamilies.
fn init_families(
    spec: &mut ServiceSpec,
    user: &ServiceSpec,
    patched: bool,
    held: &[IpAddr],
    prev: Option<&Service>,
    net: &ServiceNetwork,
) -> Result<(), Vec<String>> {
    let headless = is_headless(spec);
    let selectorless = spec.selector.as_ref().is_none_or(BTreeMap::is_empty);
    if spec.ip_family_policy.is_none() {
        // An update keeps the policy it had; a create infers one.
        let old = prev.and_then(|p| p.spec.as_ref()?.ip_family_policy.clone());
        let default = if headless && selectorless {
            REQUIRE_DUAL_STACK
        } else {
            SINGLE_STACK
        };
        spec.ip_family_policy = Some(old.unwrap_or_else(|| default.into()));
    }
    let policy = spec.ip_family_policy.clone().unwrap_or_default();
    let mut ips = spec.cluster_ips.take().unwrap_or_default();
    let mut fams: Vec<Family> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| Family::parse(f))
        .collect();
    let held_fams: Vec<Family> = held.iter().map(Family::of).collect();
    let mut errs = vec![];
    if policy == SINGLE_STACK {
        // Setting SingleStack on an unchanged dual-stack Service is how one
        // releases its secondary address.
        if patched && ips.len() > 1 {
            ips.truncate(1);
        }
        if fams.len() > 1 && fams == held_fams {
            fams.truncate(1);
        }
        if ips.len() == 2 {
            let msg = "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified";
            errs.push(invalid("spec.ipFamilyPolicy", Val::str(&policy), msg));
        }
        if fams.len() == 2 {
            let msg = "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified";
            errs.push(invalid("spec.ipFamilyPolicy", Val::str(&policy), msg));
        }
    }
    for (i, ip) in ips.iter().enumerate() {
        if ip == NONE {
            break;
        }
        let Some(fam) = parse_ip(ip).map(|ip| Family::of(&ip)) else {
            continue;
        };
        if i >= fams.len() {
            if net.cidr(fam).is_some() {
                fams.push(fam);
            } else {
                let msg = format!("{} is not configured on this cluster", fam.name());
                errs.push(invalid(
                    &format!("spec.clusterIPs[{i}]"),
                    Val::strings(&ips),
                    &msg,
                ));
            }
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let done = |spec: &mut ServiceSpec, fams: Vec<Family>, ips: Vec<String>| {
        spec.ip_families = Some(fams.iter().map(|f| f.name().to_owned()).collect());
        spec.cluster_ips = (!ips.is_empty()).then_some(ips);
        Ok(())
    };
    if headless && selectorless {
        // Headless without a selector may name families the cluster lacks:
        // no address is allocated, and endpoints are managed by hand.
        if fams.is_empty() {
            fams.push(net.primary());
        }
        if fams.len() < 2 && policy != SINGLE_STACK {
            fams.push(fams[0].other());
        }
        return done(spec, fams, ips);
    }
    if policy == REQUIRE_DUAL_STACK && !net.dual_stack() {
        let msg = "this cluster is not configured for dual-stack services";
        errs.push(invalid("spec.ipFamilyPolicy", Val::str(&policy), msg));
    }
    for (i, fam) in fams.iter().enumerate() {
        if net.cidr(*fam).is_none() {
            let path = format!("spec.ipFamilies[{i}]");
            errs.push(invalid(
                &path,
                Val::str(fam.name()),
                "not configured on this cluster",
            ));
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    if fams.is_empty() {
        fams.push(net.primary());
    }
    // The API server never upgrades or downgrades a PreferDualStack Service
    // on its own after the cluster's families change: it keeps what it has.
    let keep = policy == PREFER_DUAL_STACK
        && patched
        && user.ip_families.as_ref().is_none_or(Vec::is_empty);
    if policy != SINGLE_STACK && fams.len() == 1 && net.dual_stack() && !keep {
        fams.push(fams[0].other());
    }
    done(spec, fams, ips)
}

/// `allocClusterIPs`: reserves the addresses asked for, reuses the ones held
/// and allocates the rest; sets clusterIP and clusterIPs.
fn allocate_ips(
    spec: &mut ServiceSpec,
    key: &str,
    held: &[IpAddr],
    st: &State,
) -> Result<Vec<IpAddr>, Failure> {
    if is_headless(spec) {
        spec.cluster_ip = Some(NONE.into());
        return Ok(vec![]);
    }
    let fams: Vec<Family> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| Family::parse(f))
        .collect();
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
                None => next_free_ip(cidr, key, st).ok_or_else(|| {
                    Failure::Internal(
                        "Internal error occurred: failed to allocate a serviceIP: range is full"
                            .into(),
                    )
                })?,
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
    let size = cidr.host_mask().saturating_add(1);
    let offset = if size <= 16 {
        0
    } else {
        (size / 16).clamp(16, 256)
    };
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
fn allocate_node_ports(
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
            next_free_port(net, key, &port_key(p), &here, st).ok_or_else(|| {
                Failure::Internal(
                    "Internal error occurred: failed to allocate a nodePort: range is full".into(),
                )
            })?
        };
        here.insert(np, p.port);
        p.node_port = Some(np.into());
        out.insert(port_key(p), np);
    }

    if needs_health_check(spec) {
        let hc = match spec.health_check_node_port.filter(|n| *n != 0) {
            Some(n) => match refuse(n, None, &here) {
                Some(err) => {
                    return Err(Failure::Internal(format!(
                        "Internal error occurred: failed to allocate requested HealthCheck NodePort {n}: {err}"
                    )));
                }
                None => n as u16,
            },
            None => match held.get(HEALTH_CHECK_KEY) {
                Some(n) if refuse(i32::from(*n), None, &here).is_none() => *n,
                _ => next_free_port(net, key, HEALTH_CHECK_KEY, &here, st).ok_or_else(|| {
                    Failure::Internal(
                        "Internal error occurred: failed to allocate a HealthCheck NodePort 0: range is full".into(),
                    )
                })?,
            },
        };
        spec.health_check_node_port = Some(hc.into());
        out.insert(HEALTH_CHECK_KEY.into(), hc);
    }
    Ok(out)
}

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
    let size = last - first + 1;
    let offset = if size <= 16 {
        0
    } else {
        (size / 32).clamp(16, 128)
    };
    let taken = |n: u128| {
        let n = n as u16;
        here.contains_key(&n) || st.port_owner.contains_key(&n) || st.wanted_ports.contains(&n)
    };
    let busy = here.len() + st.port_owner.len() + st.wanted_ports.len();
    let seed = fnv1a(&[key.as_bytes(), b"/", port.as_bytes()]);
    probe(first, last, offset, seed, busy, taken).map(|n| n as u16)
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
    fn other(self) -> Self {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }
    fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

fn number(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(*a).into(),
        IpAddr::V6(a) => u128::from(*a),
    }
}

fn address(family: Family, n: u128) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::from(n as u32).into(),
        Family::V6 => Ipv6Addr::from(n).into(),
    }
}

/// Parses an address as Go's `ParseIP` does as far as it matters here: an
/// IPv4-mapped IPv6 address is an IPv4 address.
fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// Some("") counts as absent, as Go's zero values do.
fn opt(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

fn type_of(spec: &ServiceSpec) -> &str {
    spec.type_.as_deref().unwrap_or("")
}

fn is_headless(spec: &ServiceSpec) -> bool {
    spec.cluster_ips
        .as_deref()
        .is_some_and(|ips| ips.len() == 1 && ips[0] == NONE)
}

fn externally_accessible(spec: &ServiceSpec) -> bool {
    let ty = type_of(spec);
    ty == LOAD_BALANCER
        || ty == NODE_PORT
        || (ty == CLUSTER_IP && spec.external_ips.as_ref().is_some_and(|v| !v.is_empty()))
}

fn needs_health_check(spec: &ServiceSpec) -> bool {
    type_of(spec) == LOAD_BALANCER && spec.external_traffic_policy.as_deref() == Some("Local")
}

// Field errors, worded as k8s.io/apimachinery/pkg/util/validation/field does.

/// A field error's bad value, printed as the API server prints it.
#[derive(Clone, Debug)]
enum Val {
    /// A Go string, printed with %q.
    Str(String),
    Int(i64),
    /// Printed as is (Go's %#v of a composite value).
    Go(String),
    /// A nil pointer.
    Null,
}

impl Val {
    fn str(s: &str) -> Self {
        Val::Str(s.into())
    }
    /// A Go `[]string`, as %#v prints it.
    fn strings(items: &[String]) -> Self {
        Val::Go(format!("[]string{}", go_list(items)))
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Str(s) => f.write_str(&quote(s)),
            Val::Int(n) => write!(f, "{n}"),
            Val::Go(s) => f.write_str(s),
            Val::Null => f.write_str("null"),
        }
    }
}

fn go_list(items: &[String]) -> String {
    format!(
        "{{{}}}",
        items
            .iter()
            .map(|s| quote(s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Go's %q, near enough: the two agree on printable text.
fn quote(s: &str) -> String {
    format!("{s:?}")
}

fn with_detail(s: String, detail: &str) -> String {
    if detail.is_empty() {
        s
    } else {
        format!("{s}: {detail}")
    }
}

fn required(path: &str, detail: &str) -> String {
    with_detail(format!("{path}: Required value"), detail)
}

fn forbidden(path: &str, detail: &str) -> String {
    with_detail(format!("{path}: Forbidden"), detail)
}

fn invalid(path: &str, value: Val, detail: &str) -> String {
    with_detail(format!("{path}: Invalid value: {value}"), detail)
}

fn duplicate(path: &str, value: Val) -> String {
    format!("{path}: Duplicate value: {value}")
}

fn not_supported(path: &str, value: Val, supported: &[&str]) -> String {
    let list: Vec<String> = supported.iter().map(|s| quote(s)).collect();
    format!(
        "{path}: Unsupported value: {value}: supported values: {}",
        list.join(", ")
    )
}

/// `ErrorList.ToAggregate().Error()`: duplicates dropped, several errors
/// bracketed and comma-separated.
fn aggregate(errs: Vec<String>) -> String {
    let mut seen = BTreeSet::new();
    let errs: Vec<String> = errs
        .into_iter()
        .filter(|e| seen.insert(e.clone()))
        .collect();
    match errs.as_slice() {
        [one] => one.clone(),
        _ => format!("[{}]", errs.join(", ")),
    }
}

const IP_MSG: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";
const PORT_RANGE_MSG: &str = "must be between 1 and 65535, inclusive";

fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = vec![];
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".into());
    }
    if !is_dns1123_label(s) {
        errs.push(if s.split('.').all(is_dns1123_label) {
            "must not contain dots".into()
        } else {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and \
             must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used \
             for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                .into()
        });
    }
    errs
}

fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = vec![];
    if s.len() > 253 {
        errs.push("must be no more than 253 characters".into());
    }
    if !s.split('.').all(is_dns1123_label) {
        errs.push(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', \
             and must start and end with an alphanumeric character (e.g. 'example.com', regex used for \
             validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                .into(),
        );
    }
    errs
}

fn dns1035_label(s: &str) -> Vec<String> {
    let mut errs = vec![];
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".into());
    }
    if !is_dns1123_label(s) || !s.as_bytes()[0].is_ascii_lowercase() {
        errs.push(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an \
             alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', \
             regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
                .into(),
        );
    }
    errs
}

/// `IsValidPortName`, for a named targetPort.
fn port_name(s: &str) -> Vec<String> {
    let mut errs = vec![];
    if s.len() > 15 {
        errs.push("must be no more than 15 characters".into());
    }
    if s.is_empty()
        || !s
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if s.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

/// `ValidateNonSpecialIP`, for externalIPs; "{ip}" stands for the address as given.
fn non_special_ip(ip: &IpAddr) -> Vec<&'static str> {
    let mut errs = vec![];
    if ip.is_unspecified() {
        errs.push("may not be unspecified ({ip})");
    }
    if ip.is_loopback() {
        errs.push("may not be in the loopback range (127.0.0.0/8, ::1/128)");
    }
    let (link_local, link_local_multicast) = match ip {
        IpAddr::V4(a) => (a.is_link_local(), a.octets()[..3] == [224, 0, 0]),
        IpAddr::V6(a) => (
            a.is_unicast_link_local(),
            a.octets()[0] == 0xff && a.octets()[1] & 0x0f == 0x02,
        ),
    };
    if link_local {
        errs.push("may not be in the link-local range (169.254.0.0/16, fe80::/10)");
    }
    if link_local_multicast {
        errs.push("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)");
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> ServiceNetwork {
        ServiceNetwork::new(vec!["10.96.0.0/16".parse().unwrap()], 30000..=32767).unwrap()
    }

    fn dual() -> ServiceNetwork {
        let cidrs = vec![
            "10.96.0.0/16".parse().unwrap(),
            "fd00:96::/112".parse().unwrap(),
        ];
        ServiceNetwork::new(cidrs, 30000..=32767).unwrap()
    }

    /// A Service from YAML, as the manifests directory holds them.
    fn svc(yaml: &str) -> Service {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn simple(name: &str, extra: &str) -> Service {
        svc(&format!(
            "metadata: {{name: {name}}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: 80}}]\n{extra}"
        ))
    }

    fn spec(s: &Service) -> &ServiceSpec {
        s.spec.as_ref().unwrap()
    }

    fn ips(s: &Service) -> Vec<String> {
        spec(s).cluster_ips.clone().unwrap_or_default()
    }

    fn node_ports(s: &Service) -> Vec<i32> {
        spec(s)
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.node_port)
            .collect()
    }

    /// Admits with no history and returns the only rejection's message.
    fn rejected(s: Service, net: &ServiceNetwork) -> String {
        let out = admit(vec![s], &BTreeMap::new(), net, &mut Allocations::default());
        assert!(out.admitted.is_empty(), "{:?}", out.admitted);
        assert_eq!(out.rejections.len(), 1);
        out.rejections[0].message.clone()
    }

    fn previous(out: &Admission) -> BTreeMap<String, Service> {
        out.admitted.iter().map(|s| (key(s), s.clone())).collect()
    }

    #[test]
    fn cidr_parse_display_contains() {
        let c: Cidr = "10.96.1.7/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.96.0.0/16");
        assert!(c.contains(&"10.96.255.255".parse().unwrap()));
        assert!(!c.contains(&"10.97.0.0".parse().unwrap()));
        assert!(!c.contains(&"fd00::1".parse().unwrap()));
        let c6: Cidr = "fd00:96::/112".parse().unwrap();
        assert_eq!(c6.to_string(), "fd00:96::/112");
        assert!(c6.contains(&"fd00:96::ffff".parse().unwrap()));
        assert!(!c6.contains(&"fd00:96::1:0".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains(&"1.2.3.4".parse().unwrap())
        );
        let err = ServiceNetwork::new(vec![c, "10.1.0.0/16".parse().unwrap()], 30000..=32767);
        assert!(err.is_err());
    }

    #[test]
    fn defaults_applied() {
        let lb = svc(
            "metadata: {name: lb}\nspec:\n  type: LoadBalancer\n  ports: [{port: 443, targetPort: https}]",
        );
        let np = svc(
            "metadata: {name: np, namespace: web}\nspec:\n  type: NodePort\n  ports: [{port: 80}]",
        );
        let ext =
            svc("metadata: {name: ext}\nspec: {type: ExternalName, externalName: example.com.}");
        let mut alloc = Allocations::default();
        let out = admit(
            vec![simple("a", ""), lb, np, ext],
            &BTreeMap::new(),
            &v4(),
            &mut alloc,
        );
        assert_eq!(out.rejections, vec![]);
        let [a, lb, np, ext] = out.admitted.as_slice() else {
            panic!("{out:?}")
        };

        assert_eq!(a.metadata.namespace.as_deref(), Some("default"));
        assert!(a.metadata.creation_timestamp.is_some());
        let s = spec(a);
        assert_eq!(s.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(s.session_affinity.as_deref(), Some("None"));
        assert_eq!(s.ip_family_policy.as_deref(), Some("SingleStack"));
        assert_eq!(s.ip_families, Some(vec!["IPv4".to_string()]));
        assert_eq!(s.internal_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(s.external_traffic_policy, None);
        let port = &s.ports.as_ref().unwrap()[0];
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
        assert_eq!(port.target_port, Some(IntOrString::Int(80)));
        assert_eq!(port.node_port, None);
        let ip: IpAddr = s.cluster_ip.as_deref().unwrap().parse().unwrap();
        assert_eq!(s.cluster_ips, Some(vec![ip.to_string()]));
        // Dynamic allocation: in the range, above the static band, never the
        // network address nor the first address (the `kubernetes` Service's).
        assert!(v4().cidrs[0].contains(&ip));
        assert!(number(&ip) >= number(&"10.96.1.1".parse().unwrap()), "{ip}");
        assert_eq!(alloc.cluster_ips[&key(a)], vec![ip]);

        let s = spec(lb);
        assert_eq!(s.allocate_load_balancer_node_ports, Some(true));
        assert_eq!(s.external_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(
            s.ports.as_ref().unwrap()[0].target_port,
            Some(IntOrString::String("https".into()))
        );
        assert_eq!(node_ports(lb).len(), 1);
        assert_eq!(spec(np).external_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(key(np), "web/np");

        let s = spec(ext);
        assert_eq!(
            (
                s.cluster_ip.clone(),
                s.cluster_ips.clone(),
                s.ip_families.clone()
            ),
            (None, None, None)
        );
        assert_eq!(s.ip_family_policy, None);
        assert_eq!(s.internal_traffic_policy, None);
        assert!(!alloc.cluster_ips.contains_key("default/ext"));
    }

    #[test]
    fn allocation_stable_across_calls_and_restarts() {
        let desired = || vec![simple("a", "  type: NodePort"), simple("b", "")];
        let mut alloc = Allocations::default();
        let first = admit(desired(), &BTreeMap::new(), &v4(), &mut alloc);
        assert_eq!(first.rejections, vec![]);
        let again = admit(desired(), &previous(&first), &v4(), &mut alloc);
        assert_eq!(again.admitted, first.admitted);

        // A restart: the state comes back from the file, the previous objects do not.
        let dir = std::env::temp_dir().join(format!("apiserver-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("allocations.json");
        assert_eq!(Allocations::load(&path).unwrap(), Allocations::default());
        alloc.save(&path).unwrap();
        let mut loaded = Allocations::load(&path).unwrap();
        assert_eq!(loaded, alloc);
        // A newcomer listed first does not displace anything that was admitted.
        let mut with_new = vec![simple("c", "  type: NodePort")];
        with_new.extend(desired());
        let restarted = admit(with_new, &BTreeMap::new(), &v4(), &mut loaded);
        assert_eq!(restarted.rejections, vec![]);
        for (before, after) in first.admitted.iter().zip(&restarted.admitted[1..]) {
            assert_eq!(ips(before), ips(after));
            assert_eq!(node_ports(before), node_ports(after));
        }
        assert_ne!(ips(&restarted.admitted[0]), ips(&first.admitted[0]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
    fn cluster_ip_validation() {
        let net = v4();
        assert_eq!(
            rejected(simple("s", "  clusterIP: not-an-ip"), &net),
            "Service \"s\" is invalid: spec.clusterIPs[0]: Invalid value: \"not-an-ip\": \
             must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
        );
        assert_eq!(
            rejected(simple("s", "  clusterIP: 10.0.0.1"), &net),
            "Service \"s\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.0.0.1\"}: \
             failed to allocate IP 10.0.0.1: the provided IP (10.0.0.1) is not in the valid range. \
             The range of valid IPs is 10.96.0.0/16"
        );
        // Neither the network nor the broadcast address is in the valid range.
        for ip in ["10.96.0.0", "10.96.255.255"] {
            let msg = rejected(simple("s", &format!("  clusterIP: {ip}")), &net);
            assert!(
                msg.ends_with("is not in the valid range. The range of valid IPs is 10.96.0.0/16"),
                "{msg}"
            );
        }
        assert_eq!(
            rejected(
                simple("s", "  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.20]"),
                &net
            ),
            "Service \"s\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.96.0.20\"}: \
             first value must match `clusterIP`"
        );
        assert_eq!(
            rejected(simple("s", "  clusterIPs: [10.96.0.20]"), &net),
            "Service \"s\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.96.0.20\"}: \
             must be empty when `clusterIP` is not specified"
        );
        let three = "  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, \"fd00:96::10\", 10.96.0.11]\n  \
                     ipFamilyPolicy: RequireDualStack";
        assert_eq!(
            rejected(simple("s", three), &dual()),
            "Service \"s\" is invalid: spec.clusterIPs: Invalid value: \
             []string{\"10.96.0.10\", \"fd00:96::10\", \"10.96.0.11\"}: may only hold up to 2 values"
        );
        let same = "  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, 10.96.0.11]\n  ipFamilyPolicy: PreferDualStack";
        assert_eq!(
            rejected(simple("s", same), &dual()),
            "Service \"s\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.96.0.10\", \"10.96.0.11\"}: \
             may specify no more than one IP for each IP family"
        );
    }

    #[test]
    fn families_not_configured() {
        let net = v4();
        assert_eq!(
            rejected(simple("s", "  ipFamilies: [IPv6]"), &net),
            "Service \"s\" is invalid: spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster"
        );
        assert_eq!(
            rejected(simple("s", "  ipFamilyPolicy: RequireDualStack"), &net),
            "Service \"s\" is invalid: spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": \
             this cluster is not configured for dual-stack services"
        );
        assert_eq!(
            rejected(simple("s", "  clusterIP: \"fd00:96::10\""), &net),
            "Service \"s\" is invalid: spec.clusterIPs[0]: Invalid value: []string{\"fd00:96::10\"}: \
             IPv6 is not configured on this cluster"
        );
        assert_eq!(
            rejected(simple("s", "  ipFamilies: [IPv4, IPv6]"), &dual()),
            "Service \"s\" is invalid: spec.ipFamilyPolicy: Invalid value: \"SingleStack\": \
             must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified"
        );
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
    fn invalid_update_keeps_previous_version() {
        let mut alloc = Allocations::default();
        let first = admit(vec![simple("web", "")], &BTreeMap::new(), &v4(), &mut alloc);
        let prev = previous(&first);
        let state = alloc.clone();
        let bad =
            svc("metadata: {name: web}\nspec:\n  ports: [{name: http, port: 80}, {port: 81}]");
        let out = admit(vec![bad], &prev, &v4(), &mut alloc);
        assert_eq!(
            out.rejections[0].message,
            "Service \"web\" is invalid: spec.ports[1].name: Required value"
        );
        assert_eq!(out.admitted, first.admitted);
        assert_eq!(alloc, state);

        // An allocated clusterIP cannot be changed by an update.
        let moved = simple("web", "  clusterIP: 10.96.0.20");
        let out = admit(vec![moved], &prev, &v4(), &mut alloc);
        assert_eq!(
            out.rejections[0].message,
            "Service \"web\" is invalid: spec.clusterIPs[0]: Invalid value: []string{\"10.96.0.20\"}: \
             may not change once set"
        );
        assert_eq!(out.admitted, first.admitted);
        assert_eq!(alloc, state);

        // The previous admission's creationTimestamp survives a valid update.
        let ts = Time(Timestamp::from_second(1_700_000_000).unwrap());
        let mut prev = prev;
        prev.get_mut("default/web")
            .unwrap()
            .metadata
            .creation_timestamp = Some(ts.clone());
        let out = admit(
            vec![simple("web", "  sessionAffinity: ClientIP")],
            &prev,
            &v4(),
            &mut alloc,
        );
        assert_eq!(out.rejections, vec![]);
        assert_eq!(out.admitted[0].metadata.creation_timestamp, Some(ts));
        let affinity = spec(&out.admitted[0]).session_affinity_config.clone();
        assert_eq!(
            affinity.and_then(|c| c.client_ip?.timeout_seconds),
            Some(10800)
        );
        assert_eq!(ips(&out.admitted[0]), ips(&first.admitted[0]));
    }

    #[test]
    fn never_admitted_invalid_service_is_absent() {
        let out = admit(
            vec![simple("Bad_Name", "")],
            &BTreeMap::new(),
            &v4(),
            &mut Allocations::default(),
        );
        assert_eq!(out.admitted, vec![]);
        assert_eq!(
            out.rejections[0].message,
            "Service \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a DNS-1035 label must \
             consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end \
             with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is \
             '[a-z]([-a-z0-9]*[a-z0-9])?')"
        );
    }

    #[test]
    fn port_validation() {
        let net = v4();
        let ports = |p: &str| svc(&format!("metadata: {{name: s}}\nspec:\n  ports: {p}"));
        assert_eq!(
            rejected(ports("[{name: http, port: 80}, {port: 81}]"), &net),
            "Service \"s\" is invalid: spec.ports[1].name: Required value"
        );
        assert_eq!(
            rejected(
                ports("[{name: http, port: 80}, {name: http, port: 81}]"),
                &net
            ),
            "Service \"s\" is invalid: spec.ports[1].name: Duplicate value: \"http\""
        );
        assert_eq!(
            rejected(ports("[{port: 80, protocol: ICMP}]"), &net),
            "Service \"s\" is invalid: spec.ports[0].protocol: Unsupported value: \"ICMP\": \
             supported values: \"SCTP\", \"TCP\", \"UDP\""
        );
        assert_eq!(
            rejected(ports("[{port: 70000, targetPort: 8080}]"), &net),
            "Service \"s\" is invalid: spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
        // Several errors are joined as the API server joins them; the
        // defaulted targetPort inherits the bad port.
        assert_eq!(
            rejected(ports("[{port: 0}]"), &net),
            "Service \"s\" is invalid: [spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive, \
             spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive]"
        );
        assert_eq!(
            rejected(ports("[{name: a, port: 443}, {name: b, port: 443}]"), &net),
            "Service \"s\" is invalid: spec.ports[1]: Duplicate value: core.ServicePort{Name:\"\", Protocol:\"TCP\", \
             AppProtocol:(*string)(nil), Port:443, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:\"\"}, \
             NodePort:0}"
        );
        assert_eq!(
            rejected(ports("[]"), &net),
            "Service \"s\" is invalid: spec.ports: Required value"
        );
    }

    #[test]
    fn external_name_validation() {
        let net = v4();
        assert_eq!(
            rejected(svc("metadata: {name: e}\nspec: {type: ExternalName}"), &net),
            "Service \"e\" is invalid: spec.externalName: Required value"
        );
        assert_eq!(
            rejected(
                svc("metadata: {name: e}\nspec: {type: ExternalName, externalName: Not_Valid}"),
                &net
            ),
            "Service \"e\" is invalid: spec.externalName: Invalid value: \"Not_Valid\": a lowercase RFC 1123 \
             subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end \
             with an alphanumeric character (e.g. 'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        );
        assert_eq!(
            rejected(
                svc(
                    "metadata: {name: e}\nspec: {type: ExternalName, externalName: a.example, clusterIP: 10.96.0.9}"
                ),
                &net
            ),
            "Service \"e\" is invalid: spec.clusterIPs: Forbidden: may not be set for ExternalName services"
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
    fn release_on_deletion() {
        let mut alloc = Allocations::default();
        let first = admit(
            vec![simple("a", "  type: NodePort")],
            &BTreeMap::new(),
            &v4(),
            &mut alloc,
        );
        let ip = ips(&first.admitted[0])[0].clone();
        let port = node_ports(&first.admitted[0])[0];
        assert!(!alloc.cluster_ips.is_empty() && !alloc.node_ports.is_empty());
        let out = admit(vec![], &previous(&first), &v4(), &mut alloc);
        assert_eq!(out, Admission::default());
        assert_eq!(alloc, Allocations::default());
        // What a deleted Service held can be had by another.
        let taker = simple(
            "b",
            &format!(
                "  type: NodePort\n  clusterIP: {ip}\n  ports: [{{port: 80, nodePort: {port}}}]"
            ),
        );
        let out = admit(vec![taker], &BTreeMap::new(), &v4(), &mut alloc);
        assert_eq!(out.rejections, vec![]);
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
    fn headless_services() {
        let with_selector = simple("h", "  clusterIP: None");
        let selectorless =
            svc("metadata: {name: manual}\nspec: {clusterIP: None, ports: [{port: 80}]}");
        let mut alloc = Allocations::default();
        let out = admit(
            vec![with_selector, selectorless],
            &BTreeMap::new(),
            &v4(),
            &mut alloc,
        );
        assert_eq!(out.rejections, vec![]);
        let s = spec(&out.admitted[0]);
        assert_eq!(
            (s.cluster_ip.as_deref(), ips(&out.admitted[0])),
            (Some("None"), vec!["None".into()])
        );
        assert_eq!(s.ip_family_policy.as_deref(), Some("SingleStack"));
        assert_eq!(s.ip_families, Some(vec!["IPv4".into()]));
        // Without a selector it defaults to both families, configured or not.
        let s = spec(&out.admitted[1]);
        assert_eq!(s.ip_family_policy.as_deref(), Some("RequireDualStack"));
        assert_eq!(s.ip_families, Some(vec!["IPv4".into(), "IPv6".into()]));
        assert_eq!(alloc, Allocations::default());
        assert_eq!(
            rejected(
                svc(
                    "metadata: {name: n}\nspec: {type: NodePort, clusterIP: None, ports: [{port: 80}]}"
                ),
                &v4()
            ),
            "Service \"n\" is invalid: spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for NodePort services"
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

    #[test]
    fn duplicate_manifest_rejected() {
        let out = admit(
            vec![simple("a", ""), simple("a", "")],
            &BTreeMap::new(),
            &v4(),
            &mut Allocations::default(),
        );
        assert_eq!(out.admitted.len(), 1);
        assert_eq!(out.rejections[0].message, "services \"a\" already exists");
        // Even when it existed before, it is listed once.
        let prev = previous(&out);
        let out = admit(
            vec![simple("a", ""), simple("a", "")],
            &prev,
            &v4(),
            &mut Allocations::default(),
        );
        assert_eq!(out.admitted.len(), 1);
    }
}
