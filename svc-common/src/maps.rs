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
//! * `SERVICE_STATS` and `DROP_STATS` are per-CPU counters.

/// Map names, as they appear in the object file and under the pin directory.
pub const SERVICES_MAP: &str = "SERVICES";
pub const BACKENDS_MAP: &str = "BACKENDS";
pub const CONNTRACK_MAP: &str = "CONNTRACK";
pub const SERVICE_STATS_MAP: &str = "SERVICE_STATS";
pub const DROP_STATS_MAP: &str = "DROP_STATS";
pub const VIRTUAL_UPLINKS_MAP: &str = "VIRTUAL_UPLINKS";
pub const AFFINITY_MAP: &str = "AFFINITY";

/// Program names (the Rust function names in `svc-ebpf`).
pub const XDP_PROGRAM: &str = "svc_xdp";
pub const TC_PROGRAM: &str = "svc_tc";

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

/// L4 protocol numbers as they appear in the IP header.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

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
    pub _pad: [u8; 3],
}

impl ServiceKey {
    pub const fn new(addr: [u8; 16], port_be: u16, proto: u8, slot: u16) -> Self {
        Self {
            addr,
            port: port_be,
            slot,
            proto,
            _pad: [0; 3],
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

/// Value of `BACKENDS`, keyed by a `u32` backend id (never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr: [u8; 16],
    /// Target port, network byte order.
    pub port: u16,
    pub flags: u16,
    pub _pad: u32,
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

/// Value of `CONNTRACK`: the address and port to write into the packet.
///
/// * Forward entry: backend address/port (the new destination).
/// * Reply entry: frontend address/port (the new source).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    pub addr: [u8; 16],
    pub port: u16,
    /// `nat_flags` bits.
    pub flags: u16,
    /// Backend the flow is pinned to; checked against `BACKENDS` on every
    /// forward hit so a deleted backend's flows are rebalanced.
    pub backend_id: u32,
    pub service_id: u32,
    pub _pad2: u32,
}

/// Bits of [`NatEntry::flags`].
pub mod nat_flags {
    /// The client is its own backend (a pod reaching its own Service). Its
    /// packets are source-NATed to the frontend address too, so that the
    /// backend's answer leaves the pod and comes back through the program
    /// (kube-proxy masquerades such hairpin traffic for the same reason).
    pub const HAIRPIN: u16 = 1 << 0;
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
    /// The frontend exists but has no backends.
    NoBackend = 0,
    /// A backend slot or backend id that should exist was missing (a
    /// transient state the agent's ordering is meant to prevent).
    MissingBackend = 1,
    /// A packet-rewrite helper failed.
    RewriteFailed = 2,
    /// The conntrack insert failed.
    ConntrackFull = 3,
}

impl DropReason {
    pub const COUNT: u32 = 4;
    pub const ALL: [DropReason; 4] = [
        DropReason::NoBackend,
        DropReason::MissingBackend,
        DropReason::RewriteFailed,
        DropReason::ConntrackFull,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::NoBackend => "no_backend",
            DropReason::MissingBackend => "missing_backend",
            DropReason::RewriteFailed => "rewrite_failed",
            DropReason::ConntrackFull => "conntrack_full",
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
}

// No implicit padding anywhere: the sizes are the sums of the fields.
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 24);
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);
const _: () = assert!(core::mem::size_of::<Backend>() == 24);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<NatEntry>() == 32);
const _: () = assert!(core::mem::size_of::<ServiceStats>() == 32);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 24);
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);
