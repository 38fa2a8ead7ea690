//! Map layouts. The design follows Cilium's `lb4_service` slot layout and
//! Katran's split of VIPs and reals:
//!
//! * `SERVICES` is keyed by frontend (address, port, protocol) plus a slot.
//!   Slot 0 is the service itself (backend count, flags, id); slots
//!   `1..=count` each name one backend by id. Changing a service's backend
//!   set rewrites only that service's slots.
//! * `BACKENDS` maps a backend id to its address and port. Ids are shared by
//!   every service slot that points at the same endpoint.
//! * `CONNTRACK` (LRU) pins each flow to the backend it was first given and
//!   holds the reverse translation for its replies.
//! * `MAGLEV` holds, for each frontend with a choice of backends, its
//!   Maglev lookup table: `MAGLEV_CONFIG`'s M entries, each a slot number,
//!   indexed by the new flow's hash (see svc-agent's `maglev.rs`).
//! * `SERVICE_STATS` and `DROP_STATS` are per-CPU counters.

/// Map names, as they appear in the object file and under the pin directory.
pub const SERVICES_MAP: &str = "SERVICES";
pub const BACKENDS_MAP: &str = "BACKENDS";
pub const CONNTRACK_MAP: &str = "CONNTRACK";
pub const SERVICE_STATS_MAP: &str = "SERVICE_STATS";
pub const DROP_STATS_MAP: &str = "DROP_STATS";
pub const VIRTUAL_UPLINKS_MAP: &str = "VIRTUAL_UPLINKS";
pub const AFFINITY_MAP: &str = "AFFINITY";
pub const SNAT_CONFIG_MAP: &str = "SNAT_CONFIG";
pub const SOURCE_RANGES_MAP: &str = "SOURCE_RANGES";
pub const XDP_FORWARD_MAP: &str = "XDP_FORWARD";
pub const CT_TIMEOUTS_MAP: &str = "CT_TIMEOUTS";
pub const MAGLEV_MAP: &str = "MAGLEV";
pub const MAGLEV_CONFIG_MAP: &str = "MAGLEV_CONFIG";

/// Program names (the Rust function names in `svc-ebpf`).
pub const XDP_PROGRAM: &str = "svc_xdp";
pub const TC_PROGRAM: &str = "svc_tc";
/// tcx egress of pod veths and uplinks: ICMP errors the node itself sends
/// about translated flows (see `svc-ebpf/src/icmp.rs`).
pub const TC_EGRESS_PROGRAM: &str = "svc_tc_egress";

/// Capacity of the maps. Sized for a large cluster's worth of frontends and
/// endpoints while staying in the tens of megabytes.
pub const MAX_SERVICE_SLOTS: u32 = 262_144;
pub const MAX_BACKENDS: u32 = 131_072;
pub const MAX_CONNTRACK: u32 = 262_144;
pub const MAX_AFFINITY: u32 = 65_536;
/// Service ids index `SERVICE_STATS`, so they are bounded by its size.
pub const MAX_SERVICES: u32 = 65_536;

/// Uplinks (by ifindex) without a physical device behind them, such as
/// veths: only there can XDP meet a partial (`CHECKSUM_PARTIAL`) L4
/// checksum, so only there does it look for one (see `xdp_rewrite`).
pub const MAX_UPLINKS: u32 = 256;

/// `SOURCE_RANGES` capacity: allowed client prefixes over all frontends.
pub const MAX_SOURCE_RANGES: u32 = 16_384;

/// L4 protocol numbers as they appear in the IP header.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// Key of `SERVICES`: one frontend and one slot of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Frontend address, IPv4-mapped for IPv4.
    pub addr: [u8; 16],
    /// Frontend port, network byte order.
    pub port: u16,
    /// 0 for the service entry, `1..=backend_count` for its backends.
    pub slot: u16,
    pub proto: u8,
    // Three bytes of padding as a byte and a word: the kernel program then
    // zeroes them with two stores, where a 3-byte array became a call to a
    // byte-by-byte memset (a subprogram call) on every packet.
    pub _pad: u8,
    pub _pad2: u16,
}

impl ServiceKey {
    pub const fn new(addr: [u8; 16], port_be: u16, proto: u8, slot: u16) -> Self {
        Self {
            addr,
            port: port_be,
            slot,
            proto,
            _pad: 0,
            _pad2: 0,
        }
    }
}

/// Bits of [`ServiceValue::flags`] (slot 0 only). The ones below are reserved
/// for the frontends later issues add; the programs ignore unknown bits.
pub mod service_flags {
    /// The frontend is a NodePort (matched on any local address).
    pub const NODE_PORT: u16 = 1 << 0;
    /// externalTrafficPolicy: Local.
    pub const EXTERNAL_LOCAL: u16 = 1 << 1;
    /// sessionAffinity: ClientIP.
    pub const AFFINITY: u16 = 1 << 2;
    /// Only clients in `SOURCE_RANGES` for this service id may connect
    /// (`loadBalancerSourceRanges`, on load-balancer IPs).
    pub const SOURCE_RANGES: u16 = 1 << 3;
    /// New flows pick their slot from the frontend's `MAGLEV` table.
    pub const MAGLEV: u16 = 1 << 4;
    /// With no backends, new flows are refused (a TCP reset, an ICMP port
    /// unreachable) rather than dropped: the service has no endpoints at
    /// all (kube-proxy's REJECT). Without it a frontend left without
    /// backends by a `Local` traffic policy drops them, as kube-proxy does.
    pub const REJECT: u16 = 1 << 5;
}

/// Value of `SERVICES`. Slot 0 uses `backend_count`, `flags` and
/// `affinity_timeout_s`; backend slots use `backend_id`. Both carry the
/// `service_id`, which indexes the statistics.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    pub backend_id: u32,
    pub service_id: u32,
    pub backend_count: u16,
    pub flags: u16,
    pub affinity_timeout_s: u32,
}

/// Entries per `MAGLEV` value: a frontend's table of M entries is stored
/// as `ceil(M / 512)` chunks of 1 KiB (the map allocates only the chunks
/// that exist; one map value could not hold every table size).
pub const MAGLEV_CHUNK_SLOTS: usize = 512;
/// `MAGLEV` capacity in chunks: a table of up to 2048 entries (4 chunks)
/// for every service id; bigger tables fit fewer frontends. Only chunks
/// in use take memory (about 1 KiB each).
pub const MAX_MAGLEV_CHUNKS: u32 = 262_144;

/// Key of `MAGLEV`: one chunk of one frontend's table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevKey {
    pub service_id: u32,
    /// Entries `chunk * MAGLEV_CHUNK_SLOTS ..` of the table.
    pub chunk: u32,
}

/// Value of `MAGLEV`: table entries, each a slot (`1..=backend_count`) of
/// the frontend; 0 past the table's end.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevChunk {
    pub slots: [u16; MAGLEV_CHUNK_SLOTS],
}

/// The single value of `MAGLEV_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaglevConfig {
    /// Entries of every table (a prime); 0: no tables, slot
    /// `1 + hash % backend_count` for every frontend.
    pub table_size: u32,
    pub _pad: u32,
}

/// Value of `BACKENDS`, keyed by a `u32` backend id (never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr: [u8; 16],
    /// Target port, network byte order.
    pub port: u16,
    /// `backend_flags` bits.
    pub flags: u16,
    pub _pad: u32,
}

/// Bits of [`Backend::flags`].
pub mod backend_flags {
    /// The endpoint runs on this node. Traffic from outside the node to a
    /// backend elsewhere is source-NATed to the node (so the reply comes
    /// back through it); to a local one it keeps the client's address.
    pub const LOCAL: u16 = 1 << 0;
}

/// Direction of a `CONNTRACK` entry.
pub const CT_FORWARD: u8 = 0;
pub const CT_REPLY: u8 = 1;

/// Key of `CONNTRACK`: a flow exactly as the packet carries it.
///
/// * Forward entry: client -> frontend (before DNAT).
/// * Reply entry: backend -> client (before reverse NAT).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub direction: u8,
    pub _pad: [u8; 2],
}

/// Value of `CONNTRACK`: the addresses and ports to write into the packet
/// (all four; those equal to the packet's are left alone).
///
/// * Forward entry: the backend as destination; as source the client, or
///   the frontend (hairpin), or the node's SNAT address and port.
/// * Reply entry: the frontend as source, the client as destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Network byte order.
    pub src_port: u16,
    pub dst_port: u16,
    /// `nat_flags` bits.
    pub flags: u16,
    pub _pad: u16,
    /// Backend the flow is pinned to; checked against `BACKENDS` on every
    /// forward hit so a deleted backend's flows are rebalanced.
    pub backend_id: u32,
    pub service_id: u32,
    /// Monotonic seconds (`bpf_ktime_get_coarse_ns`) of the last packet in
    /// this entry's direction: entries expire after `CtTimeouts`, and SNAT
    /// ports are reused once their flow is over.
    pub last_seen_s: u32,
}

/// Bits of [`NatEntry::flags`].
pub mod nat_flags {
    /// The client is its own backend (a pod reaching its own Service). Its
    /// packets are source-NATed to the frontend address too, so that the
    /// backend's answer leaves the pod and comes back through the program
    /// (kube-proxy masquerades such hairpin traffic for the same reason).
    pub const HAIRPIN: u16 = 1 << 0;
    /// The flow came from outside the node to a backend on another node:
    /// source-NATed to the node's address and a port of the SNAT pool.
    pub const SNAT: u16 = 1 << 1;
    /// A FIN or RST was seen in this entry's direction (a SYN clears it):
    /// the connection is ending, so the entry expires sooner.
    pub const CLOSING: u16 = 1 << 2;
}

/// The single value of `CT_TIMEOUTS`: how long a `CONNTRACK` entry lives
/// after the last packet in its direction, by protocol and TCP state
/// (kube-proxy's `--conntrack-*` settings, here for our own table). An
/// expired forward entry is a new flow to the kernel (balanced afresh); the
/// agent deletes a pair of entries once both have expired; a SNAT port is
/// free again once its reply entry has. 0 means never.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    pub tcp_established_s: u32,
    /// After a FIN or RST (`nat_flags::CLOSING`). Also how long a SNAT port
    /// rests after its flow closed: the backend's socket lingers in
    /// TIME_WAIT (60 s on Linux) and may refuse a new SYN from the same
    /// address and port meanwhile, hence the default.
    pub tcp_closing_s: u32,
    pub udp_s: u32,
    pub _pad: u32,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        Self {
            tcp_established_s: 86_400,
            tcp_closing_s: 60,
            udp_s: 30,
            _pad: 0,
        }
    }
}

impl CtTimeouts {
    /// Whether `entry` (of protocol `proto`) has expired at `now_s`.
    #[inline(always)]
    pub fn expired(&self, entry: &NatEntry, proto: u8, now_s: u32) -> bool {
        let timeout = if proto != PROTO_TCP {
            self.udp_s
        } else if entry.flags & nat_flags::CLOSING != 0 {
            self.tcp_closing_s
        } else {
            self.tcp_established_s
        };
        timeout != 0 && now_s.wrapping_sub(entry.last_seen_s) > timeout
    }
}

impl FlowKey {
    /// The key of the entry for the other direction of `entry`'s flow
    /// (`self` being `entry`'s key): each entry holds the tuple its packets
    /// are rewritten to, which is the other direction's tuple reversed.
    /// Inlined: a BPF subprogram must not return a struct.
    #[inline(always)]
    pub fn partner(&self, entry: &NatEntry) -> FlowKey {
        FlowKey {
            src_addr: entry.dst_addr,
            dst_addr: entry.src_addr,
            src_port: entry.dst_port,
            dst_port: entry.src_port,
            proto: self.proto,
            direction: if self.direction == CT_FORWARD {
                CT_REPLY
            } else {
                CT_FORWARD
            },
            _pad: [0; 2],
        }
    }
}
/// How many pool ports a new flow tries before giving up.
pub const SNAT_PROBES: u32 = 16;

/// The single value of `SNAT_CONFIG`: the node's addresses that SNATed
/// flows leave from, and the port pool (inclusive, host byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatConfig {
    /// IPv4-mapped; all zero: no IPv4 SNAT (the flow is dropped, counted).
    pub addr_v4: [u8; 16],
    pub addr_v6: [u8; 16],
    pub port_min: u16,
    pub port_max: u16,
    pub _pad: u32,
}

/// The data of a `SOURCE_RANGES` key (an LPM trie; the prefix length comes
/// with the key): a service id followed by an address, both big-endian, so
/// one trie holds every frontend's ranges. A prefix covers the 32 bits of
/// the id plus the address prefix (IPv4 prefixes are mapped, so +96).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceRangeKey {
    pub service_id: [u8; 4],
    pub addr: [u8; 16],
}

/// Key of `AFFINITY` (LRU): one client of one frontend with
/// `sessionAffinity: ClientIP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client_addr: [u8; 16],
    pub service_id: u32,
    pub _pad: u32,
}

/// Value of `AFFINITY`: the backend the client's last new flow went to,
/// by slot and id (the slot still naming that id proves the backend is
/// still the frontend's), and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub slot: u16,
    pub _pad: u16,
    /// bpf_ktime_get_ns() of the last flow that used it.
    pub last_used_ns: u64,
}

/// Per-CPU counters of one service, indexed by service id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Packets and bytes translated client -> backend.
    pub packets: u64,
    pub bytes: u64,
    /// Replies translated backend -> client.
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

/// Reasons a packet is dropped or a translation failed; index of
/// `DROP_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The frontend exists but has no backends, and the packet was dropped
    /// without an answer (see `Rejected` for the ones refused).
    NoBackend = 0,
    /// A backend slot or backend id that should exist was missing (a
    /// transient state the agent's ordering is meant to prevent).
    MissingBackend = 1,
    /// A packet-rewrite helper failed.
    RewriteFailed = 2,
    /// The conntrack insert failed.
    ConntrackFull = 3,
    /// No free port in the SNAT pool (or no SNAT address for the family).
    SnatPortsExhausted = 4,
    /// A client outside `loadBalancerSourceRanges`.
    SourceRangeDenied = 5,
    /// Refused: answered with a TCP reset or an ICMP port unreachable (to
    /// a frontend with `service_flags::REJECT` and no backends), or, from
    /// a node socket to a frontend without backends, `connect`/`sendmsg`
    /// failed with `ECONNREFUSED`.
    Rejected = 6,
}

impl DropReason {
    pub const COUNT: u32 = 7;
    pub const ALL: [DropReason; 7] = [
        DropReason::NoBackend,
        DropReason::MissingBackend,
        DropReason::RewriteFailed,
        DropReason::ConntrackFull,
        DropReason::SnatPortsExhausted,
        DropReason::SourceRangeDenied,
        DropReason::Rejected,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::NoBackend => "no_backend",
            DropReason::MissingBackend => "missing_backend",
            DropReason::RewriteFailed => "rewrite_failed",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::SnatPortsExhausted => "snat_ports_exhausted",
            DropReason::SourceRangeDenied => "source_range_denied",
            DropReason::Rejected => "rejected",
        }
    }
}

/// IPv4 address as stored in the maps (IPv4-mapped IPv6).
pub const fn ipv4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, contain only integers and
    // arrays of integers, and have no implicit padding (asserted below).
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for NatEntry {}
    unsafe impl aya::Pod for ServiceStats {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for SnatConfig {}
    unsafe impl aya::Pod for CtTimeouts {}
    unsafe impl aya::Pod for SourceRangeKey {}
    unsafe impl aya::Pod for MaglevKey {}
    unsafe impl aya::Pod for MaglevChunk {}
    unsafe impl aya::Pod for MaglevConfig {}
}

// No implicit padding anywhere: the sizes are the sums of the fields.
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 24);
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);
const _: () = assert!(core::mem::size_of::<Backend>() == 24);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<NatEntry>() == 52);
const _: () = assert!(core::mem::size_of::<SnatConfig>() == 40);
const _: () = assert!(core::mem::size_of::<CtTimeouts>() == 16);
const _: () = assert!(core::mem::size_of::<SourceRangeKey>() == 20);
const _: () = assert!(core::mem::size_of::<ServiceStats>() == 32);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 24);
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);
const _: () = assert!(core::mem::size_of::<MaglevKey>() == 8);
const _: () = assert!(core::mem::size_of::<MaglevChunk>() == 2 * MAGLEV_CHUNK_SLOTS);
const _: () = assert!(core::mem::size_of::<MaglevConfig>() == 8);

// ---------------------------------------------------------------------------
// Socket-level load balancing (cgroup hooks) for the node's own processes.
//
// Packets a process on the node sends never cross XDP or the pod veths' tcx
// hook, so their translation happens on the socket instead: `connect` and
// `sendmsg` swap a frontend for a backend before the kernel routes anything,
// and `recvmsg` and `getpeername` show the frontend again. The hooks read the
// same `SERVICES` and `BACKENDS`.
// ---------------------------------------------------------------------------

pub const SOCK_REVERSE_MAP: &str = "SOCK_REVERSE";
pub const NODE_PORTS_MAP: &str = "NODE_PORTS";
pub const SOCK_LB_CONFIG_MAP: &str = "SOCK_LB_CONFIG";

/// The cgroup programs, by function name, with the hook each attaches to
/// (the section name's part after `cgroup/`).
pub const SOCK_PROGRAMS: [(&str, &str); 8] = [
    ("svc_connect4", "connect4"),
    ("svc_connect6", "connect6"),
    ("svc_sendmsg4", "sendmsg4"),
    ("svc_sendmsg6", "sendmsg6"),
    ("svc_recvmsg4", "recvmsg4"),
    ("svc_recvmsg6", "recvmsg6"),
    ("svc_getpeername4", "getpeername4"),
    ("svc_getpeername6", "getpeername6"),
];

/// `SOCK_REVERSE` capacity: sockets (times the backends each talks to)
/// whose peer is shown as a frontend. LRU: a closed socket's entries age
/// out (cookies are never reused, so a stale entry matches nothing).
pub const MAX_SOCK_REVERSE: u32 = 131_072;
/// `NODE_PORTS` capacity: one entry per (protocol, nodePort).
pub const MAX_NODE_PORTS: u32 = 65_536;

/// Key of `SOCK_REVERSE`: a socket (by cookie) and a backend it was sent
/// to in a frontend's place.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    /// `bpf_get_socket_cookie`, as `sock_diag` reports it too.
    pub cookie: u64,
    /// Backend address (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// Backend port, network byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Value of `SOCK_REVERSE`: the address the application asked for (what
/// `getpeername` and `recvmsg` show it), and the frontend's service id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevValue {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: u16,
    pub _pad: u16,
    pub service_id: u32,
}

/// Key of `NODE_PORTS`: a NodePort, for connections to a loopback address
/// (127.0.0.0/8, ::1), which `SERVICES` does not list (it holds NodePorts
/// per node address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodePortKey {
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `NODE_PORTS`: the node-address frontend of each family whose
/// `SERVICES` entries serve the NodePort (all zero: none of that family).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodePortTarget {
    /// IPv4-mapped.
    pub addr_v4: [u8; 16],
    pub addr_v6: [u8; 16],
}

/// The single value of `SOCK_LB_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockLbConfig {
    /// The node's network namespace (its `SO_NETNS_COOKIE`): its sockets
    /// are always translated.
    pub node_netns_cookie: u64,
    /// 1: sockets of other namespaces (pods') are translated too, where a
    /// socket alone decides as the packet path would (see `sock.rs`).
    pub pods: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod sock_pod {
    use super::*;
    // SAFETY: repr(C), Copy, integers only, no implicit padding (asserted).
    unsafe impl aya::Pod for SockRevKey {}
    unsafe impl aya::Pod for SockRevValue {}
    unsafe impl aya::Pod for NodePortKey {}
    unsafe impl aya::Pod for NodePortTarget {}
    unsafe impl aya::Pod for SockLbConfig {}
}

const _: () = assert!(core::mem::size_of::<SockRevKey>() == 32);
const _: () = assert!(core::mem::size_of::<SockRevValue>() == 24);
const _: () = assert!(core::mem::size_of::<NodePortKey>() == 4);
const _: () = assert!(core::mem::size_of::<NodePortTarget>() == 32);
const _: () = assert!(core::mem::size_of::<SockLbConfig>() == 16);
