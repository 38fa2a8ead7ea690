//! The agent's handle on the kernel side. It loads the embedded eBPF object,
//! attaches the programs and is the only code that writes the maps, so the
//! daemon, the tests and the benchmarks all program the dataplane the same
//! way.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key as LpmKey},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId},
        xdp::{XdpLink, XdpLinkId},
    },
};
use svc_common::{
    AFFINITY_MAP, BACKENDS_MAP, Backend, CONNTRACK_MAP, CT_TIMEOUTS_MAP, CtTimeouts,
    DROP_STATS_MAP, DropReason, FlowKey, MAX_BACKENDS, MAX_CONNTRACK, MAX_SERVICE_SLOTS,
    MAX_SERVICES, NatEntry, PROTO_SCTP, PROTO_TCP, PROTO_UDP, SERVICE_STATS_MAP, SERVICES_MAP,
    SNAT_CONFIG_MAP, SOURCE_RANGES_MAP, ServiceKey, ServiceStats, ServiceValue, SnatConfig,
    SourceRangeKey, TC_EGRESS_PROGRAM, TC_PROGRAM, VIRTUAL_UPLINKS_MAP, XDP_FORWARD_MAP,
    XDP_PROGRAM, backend_flags,
};
use svc_common::{
    MAGLEV_CHUNK_SLOTS, MAGLEV_CONFIG_MAP, MAGLEV_MAP, MaglevChunk, MaglevConfig, MaglevKey,
};
use svc_common::{
    NODE_PORTS_MAP, NodePortKey, NodePortTarget, SOCK_LB_CONFIG_MAP, SOCK_PROGRAMS,
    SOCK_REVERSE_MAP, SockLbConfig, SockRevKey, SockRevValue, service_flags,
};

use crate::{
    maglev::{LoadBalancing, TableSize},
    map_batch,
    reconcile::Programmed,
};

pub mod sock_diag;
mod sock_lb;

pub use sock_lb::SockLbTarget;

/// Every map, for pinning.
const MAPS: [&str; 16] = [
    AFFINITY_MAP,
    SERVICES_MAP,
    BACKENDS_MAP,
    CONNTRACK_MAP,
    SERVICE_STATS_MAP,
    DROP_STATS_MAP,
    VIRTUAL_UPLINKS_MAP,
    SNAT_CONFIG_MAP,
    SOURCE_RANGES_MAP,
    XDP_FORWARD_MAP,
    SOCK_REVERSE_MAP,
    NODE_PORTS_MAP,
    SOCK_LB_CONFIG_MAP,
    CT_TIMEOUTS_MAP,
    MAGLEV_MAP,
    MAGLEV_CONFIG_MAP,
];

/// The eBPF object built by build.rs from `svc-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/svc-ebpf"));

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
            Protocol::Sctp => PROTO_SCTP,
        }
    }
}

impl TryFrom<u8> for Protocol {
    type Error = anyhow::Error;
    fn try_from(n: u8) -> Result<Self> {
        match n {
            PROTO_TCP => Ok(Protocol::Tcp),
            PROTO_UDP => Ok(Protocol::Udp),
            PROTO_SCTP => Ok(Protocol::Sctp),
            _ => bail!("unknown protocol number {n}"),
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => bail!("unsupported protocol {s:?}: must be TCP, UDP or SCTP"),
        }
    }
}

/// A frontend's behaviour beyond its backends (slot 0's flags and timeout).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `svc_common::service_flags` bits.
    pub flags: u16,
    /// sessionAffinity ClientIP's timeoutSeconds (with the AFFINITY flag).
    pub affinity_timeout_s: u32,
}

/// A frontend for `Dataplane::add_services`: what `set_service` takes.
#[derive(Clone, Copy, Debug)]
pub struct NewService<'a> {
    pub frontend: Frontend,
    pub service_id: u32,
    pub settings: Settings,
    /// Ids of existing backends, slot 1 first.
    pub backend_ids: &'a [u32],
    /// `maglev::table` of the backends, or none (see `set_service`).
    pub maglev: Option<&'a [u16]>,
}

/// Where clients send: a service IP, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: SocketAddr,
    pub proto: Protocol,
}

impl Frontend {
    fn key(&self, slot: u16) -> ServiceKey {
        ServiceKey::new(
            map_addr(self.addr.ip()),
            self.addr.port().to_be(),
            self.proto.number(),
            slot,
        )
    }
}

/// An address as the maps store it: IPv4-mapped for IPv4.
pub fn map_addr(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => svc_common::ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The inverse of `map_addr`.
pub fn unmap_addr(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// A backend: an endpoint's address and target port, and whether it runs
/// on this node (traffic from outside to a backend elsewhere is SNATed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub local: bool,
}

/// A bare address is a local endpoint (a single node's view).
impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Self { addr, local: true }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// A client prefix allowed by `loadBalancerSourceRanges`: address and
/// prefix length, the address masked to it.
pub type SourceRange = (IpAddr, u8);

/// A backend as the maps store it.
fn backend_value(ep: Endpoint) -> Backend {
    Backend {
        addr: map_addr(ep.addr.ip()),
        port: ep.addr.port().to_be(),
        flags: if ep.local { backend_flags::LOCAL } else { 0 },
        ..Backend::default()
    }
}

/// The LPM trie key of one source range of one frontend.
fn source_range_key(service_id: u32, range: SourceRange) -> LpmKey<SourceRangeKey> {
    let bits = match range.0 {
        IpAddr::V4(_) => 96 + u32::from(range.1),
        IpAddr::V6(_) => u32::from(range.1),
    };
    LpmKey::new(
        32 + bits,
        SourceRangeKey {
            service_id: service_id.to_be_bytes(),
            addr: map_addr(range.0),
        },
    )
}

pub struct Dataplane {
    ebpf: Ebpf,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    service_stats: PerCpuArray<MapData, ServiceStats>,
    drop_stats: PerCpuArray<MapData, u64>,
    virtual_uplinks: HashMap<MapData, u32, u32>,
    snat_config: Array<MapData, SnatConfig>,
    conntrack: HashMap<MapData, FlowKey, NatEntry>,
    ct_timeouts: Array<MapData, CtTimeouts>,
    source_ranges: LpmTrie<MapData, SourceRangeKey, u8>,
    xdp_forward: HashMap<MapData, u32, u32>,
    xdp_forwarding: XdpForwarding,
    sock_reverse: HashMap<MapData, SockRevKey, SockRevValue>,
    node_ports: HashMap<MapData, NodePortKey, NodePortTarget>,
    sock_lb_config: Array<MapData, SockLbConfig>,
    maglev: HashMap<MapData, MaglevKey, MaglevChunk>,
    maglev_config: Array<MapData, MaglevConfig>,
    /// What `maglev_config` holds.
    load_balancing: LoadBalancing,
    /// The node addresses each NodePort (protocol, port) has frontends on,
    /// behind `NODE_PORTS` (which names one per family).
    node_port_addrs: BTreeMap<NodePortKey, BTreeSet<IpAddr>>,
    /// Whether the socket hooks are attached: then connected UDP sockets
    /// of a backend that leaves a frontend are destroyed.
    sock_lb: bool,
    capacity: Capacity,
}

/// The two tcx hooks and their programs: ingress of pod veths (service
/// traffic from pods), egress of pod veths and uplinks (ICMP errors the
/// node sends about translated flows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcHook {
    Ingress,
    Egress,
}

impl TcHook {
    fn program(self) -> &'static str {
        match self {
            TcHook::Ingress => TC_PROGRAM,
            TcHook::Egress => TC_EGRESS_PROGRAM,
        }
    }
}

/// Whether XDP sends translated packets out of an uplink itself (after a
/// FIB lookup) or hands them to the stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpForwarding {
    /// On physical uplinks only. Out of a veth, `XDP_TX` and redirects
    /// arrive only if the peer runs XDP or has GRO on, which the agent
    /// cannot see from its side.
    #[default]
    Auto,
    On,
    Off,
}

/// How many entries the maps that grow with the cluster hold: set at
/// load time, so a large cluster needs no rebuilt object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Frontends (each needs a service id, which indexes `SERVICE_STATS`).
    pub frontends: u32,
    /// `SERVICES` entries: one per frontend plus one per backend of each.
    pub service_slots: u32,
    /// Distinct endpoints (`BACKENDS`).
    pub backends: u32,
    /// Flows, two entries each (`CONNTRACK`).
    pub conntrack: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            frontends: MAX_SERVICES,
            service_slots: MAX_SERVICE_SLOTS,
            backends: MAX_BACKENDS,
            conntrack: MAX_CONNTRACK,
        }
    }
}

impl Capacity {
    /// The size `map` gets, if it is one of the resizable ones.
    fn max_entries(&self, map: &str) -> Option<u32> {
        match map {
            SERVICES_MAP => Some(self.service_slots),
            BACKENDS_MAP => Some(self.backends),
            CONNTRACK_MAP => Some(self.conntrack),
            SERVICE_STATS_MAP => Some(self.frontends),
            _ => None,
        }
    }

    fn apply(&self, loader: &mut EbpfLoader) {
        for map in MAPS {
            if let Some(n) = self.max_entries(map) {
                loader.map_max_entries(map, n);
            }
        }
    }
}

impl Dataplane {
    /// Loads the object and both programs (so the verifier has accepted
    /// them before anything is attached), with maps of its own and the
    /// default load balancing.
    pub fn load() -> Result<Self> {
        let mut dp = Self::load_with(&mut EbpfLoader::new(), Capacity::default())?;
        dp.set_load_balancing(LoadBalancing::default())?;
        dp.set_ct_timeouts(CtTimeouts::default())?;
        Ok(dp)
    }

    /// Like `load`, but the maps live pinned under `pins` (see [`Pins`]):
    /// maps pinned by an earlier agent are reused with their contents, so
    /// services and established connections survive agent restarts. The
    /// load balancing is the pinned one until `set_load_balancing`.
    pub fn load_pinned(pins: &Pins, capacity: Capacity) -> Result<Self> {
        std::fs::create_dir_all(pins.maps_dir())?;
        for name in remove_incompatible_pins(pins, &capacity)? {
            log::warn!(
                "pinned map {name} has another layout or size than this agent's: recreated empty"
            );
        }
        let paths: Vec<(&str, PathBuf)> =
            MAPS.iter().map(|m| (*m, pins.maps_dir().join(m))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        Self::load_with(&mut loader, capacity)
    }

    fn load_with(loader: &mut EbpfLoader, capacity: Capacity) -> Result<Self> {
        capacity.apply(loader);
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the eBPF object")?;
        let xdp: &mut Xdp = program(&mut ebpf, XDP_PROGRAM)?.try_into()?;
        xdp.load().context("loading the XDP program")?;
        let tc: &mut SchedClassifier = program(&mut ebpf, TC_PROGRAM)?.try_into()?;
        tc.load().context("loading the tc program")?;
        let egress: &mut SchedClassifier = program(&mut ebpf, TC_EGRESS_PROGRAM)?.try_into()?;
        egress.load().context("loading the tc egress program")?;
        Self {
            services: HashMap::try_from(take_map(&mut ebpf, SERVICES_MAP)?)?,
            backends: HashMap::try_from(take_map(&mut ebpf, BACKENDS_MAP)?)?,
            service_stats: PerCpuArray::try_from(take_map(&mut ebpf, SERVICE_STATS_MAP)?)?,
            drop_stats: PerCpuArray::try_from(take_map(&mut ebpf, DROP_STATS_MAP)?)?,
            virtual_uplinks: HashMap::try_from(take_map(&mut ebpf, VIRTUAL_UPLINKS_MAP)?)?,
            snat_config: Array::try_from(take_map(&mut ebpf, SNAT_CONFIG_MAP)?)?,
            conntrack: HashMap::try_from(take_map(&mut ebpf, CONNTRACK_MAP)?)?,
            ct_timeouts: Array::try_from(take_map(&mut ebpf, CT_TIMEOUTS_MAP)?)?,
            source_ranges: LpmTrie::try_from(take_map(&mut ebpf, SOURCE_RANGES_MAP)?)?,
            xdp_forward: HashMap::try_from(take_map(&mut ebpf, XDP_FORWARD_MAP)?)?,
            xdp_forwarding: XdpForwarding::default(),
            sock_reverse: HashMap::try_from(take_map(&mut ebpf, SOCK_REVERSE_MAP)?)?,
            node_ports: HashMap::try_from(take_map(&mut ebpf, NODE_PORTS_MAP)?)?,
            sock_lb_config: Array::try_from(take_map(&mut ebpf, SOCK_LB_CONFIG_MAP)?)?,
            maglev: HashMap::try_from(take_map(&mut ebpf, MAGLEV_MAP)?)?,
            maglev_config: Array::try_from(take_map(&mut ebpf, MAGLEV_CONFIG_MAP)?)?,
            load_balancing: LoadBalancing::Hash,
            node_port_addrs: BTreeMap::new(),
            sock_lb: false,
            capacity,
            ebpf,
        }
        .with_node_ports_rebuilt()?
        .with_load_balancing_read()
    }

    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Every conntrack entry.
    pub fn conntrack(&self) -> Result<Vec<(FlowKey, NatEntry)>> {
        Ok(map_batch::entries(&self.conntrack)?)
    }

    /// Sets how long conntrack entries live (see `CtTimeouts`; all zero,
    /// as a new pinned map starts, means never).
    pub fn set_ct_timeouts(&mut self, timeouts: CtTimeouts) -> Result<()> {
        self.ct_timeouts.set(0, &timeouts, 0)?;
        Ok(())
    }

    /// Deletes the conntrack entries whose flows are over (see
    /// `conntrack::expired`); returns how many there were and how many
    /// were deleted.
    pub fn expire_conntrack(&mut self, now_s: u32) -> Result<(usize, usize)> {
        let timeouts = self.ct_timeouts.get(&0, 0)?;
        let entries: std::collections::HashMap<FlowKey, NatEntry> =
            self.conntrack()?.into_iter().collect();
        let stale = crate::conntrack::expired(&entries, &timeouts, now_s);
        // Those gone already (LRU eviction, the kernel replacing them)
        // are skipped.
        let deleted = map_batch::delete(&mut self.conntrack, &stale)?;
        Ok((entries.len(), deleted))
    }

    /// Reads the table size the (possibly adopted) config holds.
    fn with_load_balancing_read(mut self) -> Result<Self> {
        let size = self.maglev_config.get(&0, 0)?.table_size;
        self.load_balancing = match size {
            0 => LoadBalancing::Hash,
            m => TableSize::new(m).map_or(LoadBalancing::Hash, LoadBalancing::Maglev),
        };
        Ok(self)
    }

    /// How new flows pick their backend. A change of table size (or of
    /// mode) deletes every table first (frontends fall back to the modulo
    /// meanwhile; `dump` then reports them without one, so the reconciler
    /// writes them again).
    pub fn set_load_balancing(&mut self, lb: LoadBalancing) -> Result<()> {
        let size = lb.table_size().map_or(0, TableSize::get);
        if self.maglev_config.get(&0, 0)?.table_size == size {
            self.load_balancing = lb;
            return Ok(());
        }
        let stale = map_batch::keys(&self.maglev)?;
        map_batch::delete(&mut self.maglev, &stale)?;
        let config = MaglevConfig {
            table_size: size,
            _pad: 0,
        };
        self.maglev_config.set(0, &config, 0)?;
        self.load_balancing = lb;
        Ok(())
    }

    pub fn load_balancing(&self) -> LoadBalancing {
        self.load_balancing
    }

    /// Rebuilds `NODE_PORTS` from the NodePort frontends `SERVICES` holds
    /// (an adopted map's, or none), so it never names a stale one.
    fn with_node_ports_rebuilt(mut self) -> Result<Self> {
        for (key, value) in map_batch::entries(&self.services)? {
            if key.slot == 0 && value.flags & service_flags::NODE_PORT != 0 {
                self.node_port_addrs
                    .entry(node_port_key(key.port, key.proto))
                    .or_default()
                    .insert(unmap_addr(key.addr));
            }
        }
        let stale: Vec<NodePortKey> = self
            .node_ports
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !self.node_port_addrs.contains_key(k))
            .collect();
        for k in stale {
            ignore_missing(self.node_ports.remove(&k))?;
        }
        let keys: Vec<NodePortKey> = self.node_port_addrs.keys().copied().collect();
        for k in keys {
            self.write_node_port(k)?;
        }
        Ok(self)
    }

    /// Notes whether `frontend` is (still) a NodePort and rewrites its
    /// `NODE_PORTS` entry if that changed what it holds.
    fn note_node_port(&mut self, frontend: &Frontend, is_node_port: bool) -> Result<()> {
        let key = node_port_key(frontend.addr.port().to_be(), frontend.proto.number());
        let ip = frontend.addr.ip();
        let changed = if is_node_port {
            self.node_port_addrs.entry(key).or_default().insert(ip)
        } else {
            let removed = self
                .node_port_addrs
                .get_mut(&key)
                .is_some_and(|s| s.remove(&ip));
            if self.node_port_addrs.get(&key).is_some_and(|s| s.is_empty()) {
                self.node_port_addrs.remove(&key);
            }
            removed
        };
        if changed {
            self.write_node_port(key)?;
        }
        Ok(())
    }

    /// `NODE_PORTS[key]`: the lowest node address of each family with the
    /// NodePort (all of them have the same backends), or no entry.
    fn write_node_port(&mut self, key: NodePortKey) -> Result<()> {
        let Some(addrs) = self.node_port_addrs.get(&key) else {
            return ignore_missing(self.node_ports.remove(&key));
        };
        let v4 = addrs.iter().find(|a| a.is_ipv4());
        let v6 = addrs.iter().find(|a| a.is_ipv6());
        let target = NodePortTarget {
            addr_v4: v4.map_or([0; 16], |a| map_addr(*a)),
            addr_v6: v6.map_or([0; 16], |a| map_addr(*a)),
        };
        self.node_ports.insert(&key, &target, 0)?;
        Ok(())
    }

    /// Attaches the XDP program to an uplink (named in the calling thread's
    /// network namespace); the link lives as long as this dataplane.
    pub fn attach_xdp(&mut self, iface: &str) -> Result<()> {
        self.new_xdp_link(iface).map(drop)
    }

    /// Attaches the tc program at tcx ingress of a pod veth (node side);
    /// the link lives as long as this dataplane.
    pub fn attach_tc(&mut self, iface: &str) -> Result<()> {
        self.new_tc_link(iface, TcHook::Ingress).map(drop)
    }

    /// Attaches the egress program (ICMP errors the node sends about
    /// translated flows) at tcx egress of a pod veth or an uplink.
    pub fn attach_tc_egress(&mut self, iface: &str) -> Result<()> {
        self.new_tc_link(iface, TcHook::Egress).map(drop)
    }

    /// Attaches XDP to `iface` through a link pinned at `pin`. If a link is
    /// pinned there already (an earlier agent's), its program is replaced
    /// atomically instead: no packet goes unprocessed during an upgrade.
    pub fn attach_xdp_pinned(&mut self, iface: &str, pin: &Path) -> Result<()> {
        if let Some(link) = adopt_link(pin) {
            self.note_uplink(iface)?;
            let xdp: &mut Xdp = program(&mut self.ebpf, XDP_PROGRAM)?.try_into()?;
            if let Ok(link) = XdpLink::try_from(link)
                && xdp.attach_to_link(link).is_ok()
            {
                return Ok(());
            }
            let _ = std::fs::remove_file(pin);
        }
        let id = self.new_xdp_link(iface)?;
        let xdp: &mut Xdp = program(&mut self.ebpf, XDP_PROGRAM)?.try_into()?;
        pin_link(xdp.take_link(id)?.try_into()?, pin)
    }

    /// Attaches tcx `hook` of `iface` through a link pinned at `pin`,
    /// adopting an existing pinned link as `attach_xdp_pinned` does.
    pub fn attach_tc_pinned(&mut self, iface: &str, hook: TcHook, pin: &Path) -> Result<()> {
        if let Some(link) = adopt_link(pin) {
            let tc: &mut SchedClassifier = program(&mut self.ebpf, hook.program())?.try_into()?;
            if let Ok(link) = SchedClassifierLink::try_from(link)
                && tc.attach_to_link(link).is_ok()
            {
                return Ok(());
            }
            let _ = std::fs::remove_file(pin);
        }
        let id = self.new_tc_link(iface, hook)?;
        let tc: &mut SchedClassifier = program(&mut self.ebpf, hook.program())?.try_into()?;
        pin_link(tc.take_link(id)?.try_into()?, pin)
    }

    /// Socket-level load balancing for the node's own processes (see
    /// `svc-ebpf/src/sock.rs`): loads the cgroup hooks, limits them to
    /// this network namespace's sockets, and attaches them to `target`'s
    /// cgroup through links pinned under `pins`. An earlier agent's links
    /// are replaced after the new ones are attached (both run meanwhile,
    /// harmlessly: the second sees a backend, no frontend), so no connect
    /// goes untranslated during an upgrade, and a changed cgroup path takes
    /// effect. `None` (disabled) removes an earlier agent's links; so does
    /// a default target that is not there, with a warning.
    pub fn attach_sock_lb(&mut self, target: Option<&SockLbTarget>, pins: &Pins) -> Result<()> {
        let Some(target) = target else {
            remove_sock_lb_links(pins);
            log::info!(
                "socket-level load balancing disabled: node-local clients are not translated"
            );
            return Ok(());
        };
        match self.attach_cgroup_pinned(target, pins) {
            Ok(path) => {
                log::info!(
                    "socket hooks attached to cgroup {}: node-local clients are load-balanced",
                    path.display()
                );
                Ok(())
            }
            Err(e) if !target.explicit => {
                log::warn!("node-local clients are not load-balanced: {e:#}");
                remove_sock_lb_links(pins);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Attaches the socket hooks to the cgroup at `path`, for the sockets
    /// of every network namespace or only of this one; the links detach
    /// when dropped.
    pub fn attach_sock_hooks(
        &mut self,
        path: &Path,
        all_namespaces: bool,
    ) -> Result<Vec<(&'static str, FdLink)>> {
        let cgroup = std::fs::File::open(path)
            .with_context(|| format!("opening cgroup {}", path.display()))?;
        let config = SockLbConfig {
            node_netns_cookie: sock_lb::netns_cookie()?,
            pods: u32::from(all_namespaces),
            _pad: 0,
        };
        self.sock_lb_config.set(0, &config, 0)?;
        let mut links = Vec::new();
        for (name, hook) in SOCK_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?.try_into()?;
            if prog.fd().is_err() {
                prog.load()
                    .with_context(|| format!("loading the {hook} program"))?;
            }
            let id = prog
                .attach(&cgroup, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {hook} to {}", path.display()))?;
            links.push((hook, prog.take_link(id)?.try_into()?));
        }
        Ok(links)
    }

    fn attach_cgroup_pinned(&mut self, target: &SockLbTarget, pins: &Pins) -> Result<PathBuf> {
        let path = target.resolve()?;
        std::fs::create_dir_all(pins.links_dir())
            .with_context(|| format!("creating {}", pins.links_dir().display()))?;
        for (hook, link) in self.attach_sock_hooks(&path, target.all_namespaces)? {
            let pin = pins.cgroup_link(hook);
            // (bpffs names take no dots.)
            let fresh = pins.links_dir().join(format!("cgroup-{hook}-new"));
            let _ = std::fs::remove_file(&fresh);
            pin_link(link, &fresh)?;
            // Over the old pin: its link (and program) goes only now.
            if std::fs::rename(&fresh, &pin).is_err() {
                let _ = std::fs::remove_file(&pin);
                std::fs::rename(&fresh, &pin)
                    .with_context(|| format!("pinning {}", pin.display()))?;
            }
        }
        self.sock_lb = true;
        Ok(path)
    }

    fn new_xdp_link(&mut self, iface: &str) -> Result<XdpLinkId> {
        self.note_uplink(iface)?;
        let xdp: &mut Xdp = program(&mut self.ebpf, XDP_PROGRAM)?.try_into()?;
        let name = std::ffi::CString::new(iface)?;
        xdp.attach(name.as_c_str(), XdpMode::Default)
            .with_context(|| format!("attaching XDP to {iface}"))
    }

    fn new_tc_link(&mut self, iface: &str, hook: TcHook) -> Result<SchedClassifierLinkId> {
        let tc: &mut SchedClassifier = program(&mut self.ebpf, hook.program())?.try_into()?;
        let name = std::ffi::CString::new(iface)?;
        let (kind, what) = match hook {
            TcHook::Ingress => (TcAttachType::Ingress, "ingress"),
            TcHook::Egress => (TcAttachType::Egress, "egress"),
        };
        tc.attach(name.as_c_str(), kind)
            .with_context(|| format!("attaching tcx {what} to {iface}"))
    }

    /// Tells the XDP program whether `iface` may deliver partial
    /// checksums (a virtual device, such as a veth: see `netif::is_virtual`)
    /// and whether it may send translated packets out of it.
    fn note_uplink(&mut self, iface: &str) -> Result<()> {
        let index = crate::netif::index(iface).with_context(|| format!("no interface {iface}"))?;
        let is_virtual = crate::netif::is_virtual(iface)?;
        self.set_virtual_uplink(index, is_virtual)?;
        let forward = match self.xdp_forwarding {
            XdpForwarding::On => true,
            XdpForwarding::Off => false,
            XdpForwarding::Auto => !is_virtual,
        };
        self.set_xdp_forward(index, forward)
    }

    /// How uplinks attached from now on forward translated packets.
    pub fn set_xdp_forwarding(&mut self, policy: XdpForwarding) {
        self.xdp_forwarding = policy;
    }

    /// Marks interface `index` as virtual (XDP looks for partial checksums
    /// in what it receives) or not (every checksum it receives is full).
    pub fn set_virtual_uplink(&mut self, index: u32, is_virtual: bool) -> Result<()> {
        if is_virtual {
            self.virtual_uplinks.insert(&index, &1, 0)?;
            Ok(())
        } else {
            ignore_missing(self.virtual_uplinks.remove(&index))
        }
    }

    pub fn xdp_program(&mut self) -> Result<&mut Xdp> {
        Ok(program(&mut self.ebpf, XDP_PROGRAM)?.try_into()?)
    }

    pub fn tc_program(&mut self) -> Result<&mut SchedClassifier> {
        Ok(program(&mut self.ebpf, TC_PROGRAM)?.try_into()?)
    }

    pub fn tc_egress_program(&mut self) -> Result<&mut SchedClassifier> {
        Ok(program(&mut self.ebpf, TC_EGRESS_PROGRAM)?.try_into()?)
    }

    /// The eBPF object, for attaching aya-log.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Whether XDP may send translated packets out of interface `index`
    /// itself (after a FIB lookup) rather than through the stack.
    pub fn set_xdp_forward(&mut self, index: u32, on: bool) -> Result<()> {
        if on {
            self.xdp_forward.insert(&index, &1, 0)?;
            Ok(())
        } else {
            ignore_missing(self.xdp_forward.remove(&index))
        }
    }

    /// The node addresses that traffic from outside to a backend on
    /// another node is SNATed to, and the pool of source ports.
    pub fn set_snat(
        &mut self,
        v4: Option<Ipv4Addr>,
        v6: Option<Ipv6Addr>,
        ports: RangeInclusive<u16>,
    ) -> Result<()> {
        let config = SnatConfig {
            addr_v4: v4.map_or([0; 16], |a| map_addr(a.into())),
            addr_v6: v6.map_or([0; 16], |a| a.octets()),
            port_min: *ports.start(),
            port_max: *ports.end(),
            _pad: 0,
        };
        self.snat_config.set(0, &config, 0)?;
        Ok(())
    }

    /// Creates or updates backend `id`. Ids are never 0.
    pub fn set_backend(&mut self, id: u32, ep: impl Into<Endpoint>) -> Result<()> {
        if id == 0 {
            bail!("backend id 0 is reserved");
        }
        self.backends.insert(&id, &backend_value(ep.into()), 0)?;
        Ok(())
    }

    /// Creates or updates many backends at once (one batch: `set_backend`
    /// for each, in far fewer syscalls). Ids are never 0; none is written
    /// if one is. On error (the map full) the first ones may be written.
    pub fn set_backends(&mut self, backends: &[(u32, Endpoint)]) -> Result<()> {
        if backends.iter().any(|(id, _)| *id == 0) {
            bail!("backend id 0 is reserved");
        }
        let ids: Vec<u32> = backends.iter().map(|(id, _)| *id).collect();
        let values: Vec<Backend> = backends.iter().map(|(_, ep)| backend_value(*ep)).collect();
        map_batch::update(&mut self.backends, &ids, &values).context("writing backends")?;
        Ok(())
    }

    /// Adds and removes source ranges of service `service_id`.
    pub fn set_source_ranges(
        &mut self,
        service_id: u32,
        add: &[SourceRange],
        remove: &[SourceRange],
    ) -> Result<()> {
        for r in add {
            self.source_ranges
                .insert(&source_range_key(service_id, *r), &1, 0)?;
        }
        for r in remove {
            ignore_missing(self.source_ranges.remove(&source_range_key(service_id, *r)))?;
        }
        Ok(())
    }

    /// Deletes backend `id`. Flows pinned to it are rebalanced on their next
    /// packet. Callers unreference it from every service first.
    pub fn remove_backend(&mut self, id: u32) -> Result<()> {
        ignore_missing(self.backends.remove(&id))
    }

    /// Points `frontend` at `backend_ids` (which must exist already), with
    /// `maglev` as its Maglev table (`maglev::table`: a slot number per
    /// entry, as many as the configured table size) or without one.
    ///
    /// Order matters to packets in flight: backend slots are written first,
    /// then the table, then slot 0 with the new count and flags, and only
    /// then are slots beyond the new count (and a table no longer wanted)
    /// deleted. A packet never sees a count that reaches past the written
    /// slots. The slots do move under a table being rewritten (slot k names
    /// the k-th backend, in address order), so a new flow that arrives
    /// meanwhile may meet another live backend than the new table will
    /// give, and an entry above the count a packet read; the kernel takes
    /// the modulo for those.
    pub fn set_service(
        &mut self,
        frontend: &Frontend,
        service_id: u32,
        settings: Settings,
        backend_ids: &[u32],
        maglev: Option<&[u16]>,
    ) -> Result<()> {
        let count = self.check_service(service_id, backend_ids, maglev)?;
        let old_head = self.head(frontend)?;
        let old_count = old_head.map_or(0, |h| h.backend_count);
        // Connected UDP sockets are pinned to a backend for life: those of
        // backends leaving the frontend are destroyed once it is rewritten.
        let leaving = if self.sock_lb && frontend.proto == Protocol::Udp {
            let mut old = self.slot_backends(frontend, old_count);
            old.retain(|(id, _)| !backend_ids.contains(id));
            old
        } else {
            Vec::new()
        };
        for (slot, &backend_id) in (1..).zip(backend_ids) {
            let value = ServiceValue {
                backend_id,
                service_id,
                ..ServiceValue::default()
            };
            self.services.insert(&frontend.key(slot), &value, 0)?;
        }
        // A table that cannot be written (a full MAGLEV map) leaves the
        // frontend on the modulo rather than unprogrammed; `dump` reports
        // it without a table, so drift repair tries again.
        let with_table = match maglev {
            Some(table) => match self.write_maglev(service_id, table) {
                Ok(()) => true,
                Err(e) => {
                    log::warn!(
                        "{} {:?}: no Maglev table, new flows hashed modulo the backend count: {e:#}",
                        frontend.addr,
                        frontend.proto
                    );
                    false
                }
            },
            None => false,
        };
        let mut flags = settings.flags & !service_flags::MAGLEV;
        if with_table {
            flags |= service_flags::MAGLEV;
        }
        let head = ServiceValue {
            service_id,
            backend_count: count,
            flags,
            affinity_timeout_s: settings.affinity_timeout_s,
            ..ServiceValue::default()
        };
        self.services.insert(&frontend.key(0), &head, 0)?;
        for slot in count + 1..=old_count {
            ignore_missing(self.services.remove(&frontend.key(slot)))?;
        }
        // Tables no longer read: the frontend's old one if it now goes
        // without (or had another id), and one only partly written.
        if let Some(old) = old_head
            && old.flags & service_flags::MAGLEV != 0
            && (!with_table || old.service_id != service_id)
        {
            self.remove_maglev(old.service_id)?;
        }
        if maglev.is_some() && !with_table {
            self.remove_maglev(service_id)?;
        }
        self.note_node_port(frontend, settings.flags & service_flags::NODE_PORT != 0)?;
        self.terminate_udp(service_id, &leaving);
        Ok(())
    }

    /// Programs many frontends that are not in the map yet (a cold start)
    /// in three batches instead of per key: every backend slot of all of
    /// them, then their Maglev tables, then their slot 0s, so no packet
    /// ever sees a head counting slots (or a table) not yet written.
    /// Validation, table fallback and node-port bookkeeping are those of
    /// `set_service`.
    ///
    /// The caller guarantees what `set_service` would otherwise look up:
    /// * no frontend given has any `SERVICES` entry (no slot 0, no slots),
    ///   e.g. `dump` showed none and nothing programmed them since: an
    ///   existing frontend's slots beyond the new count, its old table and
    ///   its connected UDP sockets would not be cleaned up;
    /// * the frontends are distinct (checked), and so are their service
    ///   ids (checked), which no other frontend's table uses;
    /// * the backends they name exist (e.g. written by `set_backends`).
    ///
    /// On error, some of the frontends may be partly programmed (slots and
    /// tables without a head, or a head for the first ones): the caller
    /// then programs each of them again with `set_service`, which finishes
    /// whatever this left.
    pub fn add_services(&mut self, services: &[NewService<'_>]) -> Result<()> {
        let mut frontends = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for s in services {
            if !frontends.insert(s.frontend) {
                bail!("{} {:?} given twice", s.frontend.addr, s.frontend.proto);
            }
            if !ids.insert(s.service_id) {
                bail!("service id {} given twice", s.service_id);
            }
            self.check_service(s.service_id, s.backend_ids, s.maglev)?;
        }
        // The backend slots of all of them.
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for s in services {
            for (slot, &backend_id) in (1..).zip(s.backend_ids) {
                keys.push(s.frontend.key(slot));
                values.push(ServiceValue {
                    backend_id,
                    service_id: s.service_id,
                    ..ServiceValue::default()
                });
            }
        }
        map_batch::update(&mut self.services, &keys, &values).context("writing backend slots")?;
        let with_table = self.write_maglev_batch(services)?;
        // Then the heads.
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for (s, &table) in services.iter().zip(&with_table) {
            let mut flags = s.settings.flags & !service_flags::MAGLEV;
            if table {
                flags |= service_flags::MAGLEV;
            }
            keys.push(s.frontend.key(0));
            values.push(ServiceValue {
                service_id: s.service_id,
                backend_count: s.backend_ids.len() as u16,
                flags,
                affinity_timeout_s: s.settings.affinity_timeout_s,
                ..ServiceValue::default()
            });
        }
        let written = map_batch::update(&mut self.services, &keys, &values);
        let heads = written
            .as_ref()
            .map_or_else(|e| e.written, |()| services.len());
        for s in &services[..heads] {
            let node_port = s.settings.flags & service_flags::NODE_PORT != 0;
            self.note_node_port(&s.frontend, node_port)?;
        }
        written.context("writing frontends")?;
        Ok(())
    }

    /// Writes the tables of those of `services` that have one, in one
    /// batch; returns which of them have their table whole. A full
    /// `MAGLEV` map leaves the rest without (on the modulo, as
    /// `set_service` does) and the one it stopped in is deleted.
    fn write_maglev_batch(&mut self, services: &[NewService<'_>]) -> Result<Vec<bool>> {
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        // Where each service's chunks end in the batch.
        let mut ends = Vec::with_capacity(services.len());
        for s in services {
            for (chunk, entries) in
                (0..).zip(s.maglev.unwrap_or_default().chunks(MAGLEV_CHUNK_SLOTS))
            {
                let mut value = MaglevChunk {
                    slots: [0; MAGLEV_CHUNK_SLOTS],
                };
                value.slots[..entries.len()].copy_from_slice(entries);
                keys.push(MaglevKey {
                    service_id: s.service_id,
                    chunk,
                });
                values.push(value);
            }
            ends.push(keys.len());
        }
        let written = match map_batch::update(&mut self.maglev, &keys, &values) {
            Ok(()) => keys.len(),
            Err(e) => {
                log::warn!(
                    "{} frontends without a Maglev table, new flows hashed modulo the backend count: {e} (is the MAGLEV map full?)",
                    ends.iter().filter(|&&end| end > e.written).count()
                );
                // The chunks of a table only partly written.
                let start = ends.iter().rev().find(|&&end| end <= e.written);
                map_batch::delete(
                    &mut self.maglev,
                    &keys[start.copied().unwrap_or(0)..e.written],
                )?;
                e.written
            }
        };
        Ok(services
            .iter()
            .zip(&ends)
            .map(|(s, &end)| s.maglev.is_some() && end <= written)
            .collect())
    }

    /// Removes `frontend`: slot 0 first, so no packet is sent to a slot
    /// (or table) that is about to go.
    pub fn remove_service(&mut self, frontend: &Frontend) -> Result<()> {
        let Some(head) = self.head(frontend)? else {
            self.note_node_port(frontend, false)?;
            return Ok(());
        };
        let old_count = head.backend_count;
        let leaving = if self.sock_lb && frontend.proto == Protocol::Udp {
            Some(self.slot_backends(frontend, old_count))
        } else {
            None
        };
        ignore_missing(self.services.remove(&frontend.key(0)))?;
        for slot in 1..=old_count {
            ignore_missing(self.services.remove(&frontend.key(slot)))?;
        }
        if head.flags & service_flags::MAGLEV != 0 {
            self.remove_maglev(head.service_id)?;
        }
        self.note_node_port(frontend, false)?;
        if let Some(backends) = leaving {
            self.terminate_udp(head.service_id, &backends);
        }
        Ok(())
    }

    /// Checks what `set_service` and `add_services` are given; returns
    /// the backend count.
    fn check_service(
        &self,
        service_id: u32,
        backend_ids: &[u32],
        maglev: Option<&[u16]>,
    ) -> Result<u16> {
        if service_id >= self.capacity.frontends {
            bail!(
                "service id {service_id} out of range (--max-frontends {})",
                self.capacity.frontends
            );
        }
        let count = u16::try_from(backend_ids.len()).map_err(|_| {
            anyhow!(
                "{} backends is more than a service can have",
                backend_ids.len()
            )
        })?;
        if let Some(table) = maglev {
            self.check_maglev(table, count)?;
        }
        Ok(count)
    }

    /// The configured table size in entries (0: no tables).
    fn maglev_size(&self) -> usize {
        self.load_balancing
            .table_size()
            .map_or(0, |m| m.get() as usize)
    }

    fn check_maglev(&self, table: &[u16], count: u16) -> Result<()> {
        let size = self.maglev_size();
        if table.len() != size {
            bail!(
                "a Maglev table of {} entries, where the dataplane's have {size}",
                table.len()
            );
        }
        if table.iter().any(|&slot| slot == 0 || slot > count) {
            bail!("a Maglev table entry names no slot of the {count}");
        }
        Ok(())
    }

    /// Writes service `service_id`'s table, chunk by chunk (each chunk is
    /// replaced whole: a packet reads the old one or the new one).
    fn write_maglev(&mut self, service_id: u32, table: &[u16]) -> Result<()> {
        for (chunk, entries) in (0..).zip(table.chunks(MAGLEV_CHUNK_SLOTS)) {
            let mut value = MaglevChunk {
                slots: [0; MAGLEV_CHUNK_SLOTS],
            };
            value.slots[..entries.len()].copy_from_slice(entries);
            let key = MaglevKey { service_id, chunk };
            self.maglev
                .insert(&key, &value, 0)
                .context("writing its table (is the MAGLEV map full?)")?;
        }
        Ok(())
    }

    fn remove_maglev(&mut self, service_id: u32) -> Result<()> {
        for chunk in 0..maglev_chunks(self.maglev_size()) {
            ignore_missing(self.maglev.remove(&MaglevKey { service_id, chunk }))?;
        }
        Ok(())
    }

    /// Forgets every flow, so the next packet of each is balanced afresh as
    /// a new flow (the packet-level tests measure where new flows go).
    pub fn clear_conntrack(&mut self) -> Result<usize> {
        let keys = map_batch::keys(&self.conntrack)?;
        map_batch::delete(&mut self.conntrack, &keys)?;
        Ok(keys.len())
    }

    /// The backends `frontend`'s slots `1..=count` name: ids and values.
    fn slot_backends(&self, frontend: &Frontend, count: u16) -> Vec<(u32, Backend)> {
        (1..=count)
            .filter_map(|slot| self.services.get(&frontend.key(slot), 0).ok())
            .filter_map(|v| {
                self.backends
                    .get(&v.backend_id, 0)
                    .ok()
                    .map(|b| (v.backend_id, b))
            })
            .collect()
    }

    /// Destroys the connected UDP sockets that the socket hooks sent to
    /// one of `backends` for the frontend of `service_id` (see
    /// `sock_diag`): their application sees `ECONNABORTED` and connects
    /// again, to a backend that serves. Best effort: failures are logged.
    fn terminate_udp(&self, service_id: u32, backends: &[(u32, Backend)]) {
        if backends.is_empty() {
            return;
        }
        let sockets = match sock_diag::connected_udp() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("listing connected UDP sockets: {e}");
                return;
            }
        };
        let mut destroyed = 0;
        for sock in sockets {
            let (peer, port) = (sock.peer(), sock.peer_port());
            if !backends
                .iter()
                .any(|(_, b)| b.addr == peer && b.port == port)
            {
                continue;
            }
            let key = SockRevKey {
                cookie: sock.cookie(),
                addr: peer,
                port,
                _pad: [0; 6],
            };
            // Only sockets the hooks sent there for this frontend: one
            // that connected to the backend itself is none of ours.
            let ours = self
                .sock_reverse
                .get(&key, 0)
                .is_ok_and(|v| v.service_id == service_id);
            if !ours {
                continue;
            }
            match sock_diag::destroy(&sock) {
                Ok(()) => destroyed += 1,
                Err(e) => log::warn!(
                    "destroying a UDP socket connected to {}:{}: {e}",
                    unmap_addr(peer),
                    u16::from_be(port)
                ),
            }
        }
        if destroyed > 0 {
            log::info!(
                "destroyed {destroyed} connected UDP sockets of backends that left service id {service_id}"
            );
        }
    }

    /// `frontend`'s slot 0, if it has one.
    fn head(&self, frontend: &Frontend) -> Result<Option<ServiceValue>> {
        match self.services.get(&frontend.key(0), 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Counters of one service, summed over CPUs.
    pub fn service_stats(&self, service_id: u32) -> Result<ServiceStats> {
        let per_cpu = self.service_stats.get(&service_id, 0)?;
        Ok(per_cpu
            .iter()
            .fold(ServiceStats::default(), |a, s| ServiceStats {
                packets: a.packets + s.packets,
                bytes: a.bytes + s.bytes,
                reply_packets: a.reply_packets + s.reply_packets,
                reply_bytes: a.reply_bytes + s.reply_bytes,
            }))
    }

    /// Drop counters by reason, summed over CPUs.
    pub fn drop_stats(&self) -> Result<Vec<(DropReason, u64)>> {
        DropReason::ALL
            .iter()
            .map(|&r| {
                let per_cpu = self.drop_stats.get(&(r as u32), 0)?;
                Ok((r, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// What the maps hold, for a reconciler adopting them: backend ids
    /// and each frontend's slots.
    pub fn dump(&self) -> Result<MapContents> {
        dump(
            &self.services,
            &self.backends,
            &self.source_ranges,
            &self.maglev,
            self.maglev_size(),
        )
    }
}

/// Backend ids with their endpoints, and each frontend's slots.
pub type MapContents = (BTreeMap<u32, Endpoint>, BTreeMap<Frontend, Programmed>);

/// Reads the service and backend maps an agent pinned under `pins`, from
/// outside it (tests, diagnostics).
pub fn dump_pinned(pins: &Pins) -> Result<MapContents> {
    let open = |name: &str| -> Result<MapData> {
        let path = pins.maps_dir().join(name);
        MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
    };
    let services = HashMap::try_from(aya::maps::Map::HashMap(open(SERVICES_MAP)?))?;
    let backends = HashMap::try_from(aya::maps::Map::HashMap(open(BACKENDS_MAP)?))?;
    let ranges = LpmTrie::try_from(aya::maps::Map::LpmTrie(open(SOURCE_RANGES_MAP)?))?;
    let maglev = HashMap::try_from(aya::maps::Map::HashMap(open(MAGLEV_MAP)?))?;
    let config: Array<MapData, MaglevConfig> =
        Array::try_from(aya::maps::Map::Array(open(MAGLEV_CONFIG_MAP)?))?;
    let size = config.get(&0, 0)?.table_size as usize;
    dump(&services, &backends, &ranges, &maglev, size)
}

/// How many `MAGLEV` chunks a table of `size` entries takes.
fn maglev_chunks(size: usize) -> u32 {
    size.div_ceil(MAGLEV_CHUNK_SLOTS) as u32
}

/// The conntrack entries an agent's pinned map holds (tests, diagnostics).
pub fn conntrack_pinned(pins: &Pins) -> Result<Vec<(FlowKey, NatEntry)>> {
    let path = pins.maps_dir().join(CONNTRACK_MAP);
    let map = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let conntrack: HashMap<MapData, FlowKey, NatEntry> =
        HashMap::try_from(aya::maps::Map::LruHashMap(map))?;
    Ok(map_batch::entries(&conntrack)?)
}

fn dump(
    services: &HashMap<MapData, ServiceKey, ServiceValue>,
    backends_map: &HashMap<MapData, u32, Backend>,
    ranges_map: &LpmTrie<MapData, SourceRangeKey, u8>,
    maglev: &HashMap<MapData, MaglevKey, MaglevChunk>,
    table_size: usize,
) -> Result<MapContents> {
    let mut backends = BTreeMap::new();
    for (id, b) in map_batch::entries(backends_map)? {
        let ep = Endpoint {
            addr: SocketAddr::new(unmap_addr(b.addr), u16::from_be(b.port)),
            local: b.flags & backend_flags::LOCAL != 0,
        };
        backends.insert(id, ep);
    }
    let mut ranges: BTreeMap<u32, BTreeSet<SourceRange>> = BTreeMap::new();
    for key in ranges_map.keys() {
        let key = key?;
        let data = key.data();
        let ip = unmap_addr(data.addr);
        let bits = key.prefix_len().saturating_sub(32);
        let len = if ip.is_ipv4() {
            bits.saturating_sub(96)
        } else {
            bits
        };
        ranges
            .entry(u32::from_be_bytes(data.service_id))
            .or_default()
            .insert((ip, len as u8));
    }
    // Each service id's chunks of a table of the configured size. A
    // flagged frontend without all of them counts as having no table, so
    // the reconciler writes it (again).
    let chunks = maglev_chunks(table_size);
    let mut tables: BTreeMap<u32, u32> = BTreeMap::new();
    map_batch::visit(maglev, |keys, _| {
        for key in keys.iter().filter(|k| k.chunk < chunks) {
            *tables.entry(key.service_id).or_default() += 1;
        }
    })?;
    let mut heads = BTreeMap::new();
    let mut slots: BTreeMap<Frontend, BTreeMap<u16, u32>> = BTreeMap::new();
    for (key, value) in map_batch::entries(services)? {
        let fe = Frontend {
            addr: SocketAddr::new(unmap_addr(key.addr), u16::from_be(key.port)),
            proto: Protocol::try_from(key.proto)?,
        };
        if key.slot == 0 {
            heads.insert(fe, value);
        } else {
            slots
                .entry(fe)
                .or_default()
                .insert(key.slot, value.backend_id);
        }
    }
    let frontends = heads
        .into_iter()
        .map(|(fe, head)| {
            let ids = slots.remove(&fe).unwrap_or_default();
            let backend_ids = (1..=head.backend_count)
                .filter_map(|s| ids.get(&s).copied())
                .collect();
            let maglev = head.flags & service_flags::MAGLEV != 0
                && chunks > 0
                && tables.get(&head.service_id) == Some(&chunks);
            let p = Programmed {
                service_id: head.service_id,
                settings: Settings {
                    flags: head.flags & !service_flags::MAGLEV,
                    affinity_timeout_s: head.affinity_timeout_s,
                },
                backend_ids,
                source_ranges: ranges
                    .remove(&head.service_id)
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                maglev,
            };
            (fe, p)
        })
        .collect();
    Ok((backends, frontends))
}

/// Where an agent pins its maps and links, under one bpffs directory:
/// `maps/<MAP>` and `links/<xdp|tcx|tcx-egress>-<interface>`.
#[derive(Clone, Debug)]
pub struct Pins {
    pub dir: PathBuf,
}

impl Pins {
    pub fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    pub fn xdp_link(&self, iface: &str) -> PathBuf {
        self.links_dir().join(format!("xdp-{iface}"))
    }

    /// tcx ingress keeps the name it had before egress links existed, so
    /// an upgraded agent adopts its predecessor's links.
    pub fn tc_link(&self, iface: &str, hook: TcHook) -> PathBuf {
        match hook {
            TcHook::Ingress => self.links_dir().join(format!("tcx-{iface}")),
            TcHook::Egress => self.links_dir().join(format!("tcx-egress-{iface}")),
        }
    }

    /// The socket hook `hook` (`connect4`, ...) on the node's cgroup.
    pub fn cgroup_link(&self, hook: &str) -> PathBuf {
        self.links_dir().join(format!("cgroup-{hook}"))
    }

    /// Checks the directory is on a bpffs (pins can live nowhere else),
    /// mounting one at the conventional /sys/fs/bpf if that is where it
    /// should be and none is there yet.
    pub fn prepare(&self) -> Result<()> {
        let bpffs_root = Path::new("/sys/fs/bpf");
        if self.dir.starts_with(bpffs_root) && !is_bpffs(bpffs_root) {
            let status = std::process::Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(bpffs_root)
                .status()
                .context("mounting bpffs")?;
            if !status.success() {
                bail!("mounting bpffs on {} failed", bpffs_root.display());
            }
        }
        std::fs::create_dir_all(self.links_dir())
            .with_context(|| format!("creating {}", self.links_dir().display()))?;
        if !is_bpffs(&self.dir) {
            bail!(
                "{} is not on a bpf filesystem (mount -t bpf bpf DIR)",
                self.dir.display()
            );
        }
        Ok(())
    }

    /// Removes every pin: links first (which detaches the programs once
    /// no process holds them), then maps, then the directories.
    pub fn remove_all(&self) -> Result<usize> {
        let mut removed = 0;
        for dir in [self.links_dir(), self.maps_dir()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries {
                std::fs::remove_file(e?.path())?;
                removed += 1;
            }
            std::fs::remove_dir(&dir)?;
        }
        let _ = std::fs::remove_dir(&self.dir);
        Ok(removed)
    }
}

fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Detaches the socket hooks an earlier agent pinned, if any.
fn remove_sock_lb_links(pins: &Pins) {
    for (_, hook) in SOCK_PROGRAMS {
        let pin = pins.cgroup_link(hook);
        let _ = std::fs::remove_file(pins.links_dir().join(format!("cgroup-{hook}-new")));
        let _ = std::fs::remove_file(pin);
    }
}

/// `NODE_PORTS`' key for a NodePort (port in network byte order).
fn node_port_key(port_be: u16, proto: u8) -> NodePortKey {
    NodePortKey {
        port: port_be,
        proto,
        _pad: 0,
    }
}

fn pin_link(link: FdLink, pin: &Path) -> Result<()> {
    link.pin(pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

/// The link pinned at `pin`, if one is there.
/// Deletes pinned maps whose type, key, value or size differ from the
/// embedded object's (left by an agent of another version): reusing them
/// would fail the load, so an upgrade would stop the agent. Their content
/// is lost (conntrack and affinity: flows are balanced afresh); every
/// other map is adopted as it is, and the reconciler rewrites the rest.
fn remove_incompatible_pins(pins: &Pins, capacity: &Capacity) -> Result<Vec<&'static str>> {
    let object = aya_obj::Object::parse(EBPF_OBJECT).context("parsing the eBPF object")?;
    let mut removed = Vec::new();
    for name in MAPS {
        let path = pins.maps_dir().join(name);
        if !path.exists() {
            continue;
        }
        let want = object
            .maps
            .get(name)
            .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
        let same = aya::maps::MapInfo::from_pin(&path).is_ok_and(|have| {
            have.key_size() == want.key_size()
                && have.value_size() == want.value_size()
                && have.max_entries() == capacity.max_entries(name).unwrap_or(want.max_entries())
                && have.map_type().ok().map(|t| t as u32) == Some(want.map_type())
        });
        if !same {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(name);
        }
    }
    Ok(removed)
}

fn adopt_link(pin: &Path) -> Option<FdLink> {
    if !pin.exists() {
        return None;
    }
    match PinnedLink::from_pin(pin) {
        Ok(link) => {
            // The pin stays; ownership moves to the program's link set.
            Some(FdLink::from(link))
        }
        Err(_) => None,
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

/// Deleting what is already gone is success: reconciling is idempotent.
fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<()> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        r => Ok(r?),
    }
}

/// Empty XDP and tc programs (`baseline_xdp`, `baseline_tc`), built with the
/// real ones: what the benchmarks compare the real programs against.
pub static BASELINE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baseline"));
