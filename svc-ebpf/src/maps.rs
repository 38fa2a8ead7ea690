//! The maps, declared once and shared by both programs (one object file, so
//! one set of map instances).
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use svc_common::{
    AffinityKey, AffinityValue, Backend, DropReason, FlowKey, MAX_AFFINITY, MAX_BACKENDS,
    MAX_CONNTRACK, MAX_MAGLEV_CHUNKS, MAX_SERVICE_SLOTS, MAX_SERVICES, MAX_SOURCE_RANGES,
    MAX_UPLINKS, MaglevChunk, MaglevConfig, MaglevKey, NatEntry, ServiceKey, ServiceStats,
    ServiceValue, SnatConfig, SourceRangeKey,
};

#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(MAX_SERVICE_SLOTS, 0);

#[map]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::with_max_entries(MAX_BACKENDS, 0);

/// Maglev tables of the frontends flagged `service_flags::MAGLEV`, in
/// chunks. Not preallocated: only the chunks that exist take memory.
#[map]
pub static MAGLEV: HashMap<MaglevKey, MaglevChunk> =
    HashMap::with_max_entries(MAX_MAGLEV_CHUNKS, BPF_F_NO_PREALLOC);

/// The size of every Maglev table (one entry).
#[map]
pub static MAGLEV_CONFIG: Array<MaglevConfig> = Array::with_max_entries(1, 0);

#[map]
pub static CONNTRACK: LruHashMap<FlowKey, NatEntry> =
    LruHashMap::with_max_entries(MAX_CONNTRACK, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<ServiceStats> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static DROP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);

/// ifindex -> 1 for uplinks that may deliver partial checksums.
#[map]
pub static VIRTUAL_UPLINKS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_UPLINKS, 0);

/// sessionAffinity: ClientIP: each client's recent backend per frontend.
#[map]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(MAX_AFFINITY, 0);

/// How long conntrack entries live (one entry; see `CtTimeouts`).
#[map]
pub static CT_TIMEOUTS: Array<svc_common::CtTimeouts> = Array::with_max_entries(1, 0);

/// The node's SNAT addresses and port pool (one entry).
#[map]
pub static SNAT_CONFIG: Array<SnatConfig> = Array::with_max_entries(1, 0);

/// loadBalancerSourceRanges of every frontend that has them.
#[map]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> =
    LpmTrie::with_max_entries(MAX_SOURCE_RANGES, 0);

/// ifindex -> 1 for uplinks XDP may send translated packets out of itself
/// (found with a FIB lookup), instead of handing them to the stack.
#[map]
pub static XDP_FORWARD: HashMap<u32, u32> = HashMap::with_max_entries(MAX_UPLINKS, 0);

/// Scratch space for the rewrite a packet gets (per CPU: one packet at a
/// time), so it does not take 40 bytes of the programs' 512-byte stack.
#[map]
pub static REWRITE: PerCpuArray<crate::lb::Rewrite> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space for a refusal (`reject`): the whole reply frame is built
/// here before it replaces the packet.
#[map]
pub static REPLY: PerCpuArray<[u8; crate::reject::REPLY_MAX]> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space for the packet an ICMP error quotes (`icmp`), likewise.
#[map]
pub static QUOTED: PerCpuArray<crate::packet::Flow> = PerCpuArray::with_max_entries(1, 0);

/// Socket-level load balancing (`sock`): for each socket sent to a backend
/// in a frontend's place, the address the application asked for.
#[map]
pub static SOCK_REVERSE: LruHashMap<svc_common::SockRevKey, svc_common::SockRevValue> =
    LruHashMap::with_max_entries(svc_common::MAX_SOCK_REVERSE, 0);

/// NodePorts by (port, protocol): the node-address frontends a connection
/// to a loopback address uses.
#[map]
pub static NODE_PORTS: HashMap<svc_common::NodePortKey, svc_common::NodePortTarget> =
    HashMap::with_max_entries(svc_common::MAX_NODE_PORTS, 0);

/// The socket hooks' settings (one entry).
#[map]
pub static SOCK_LB_CONFIG: Array<svc_common::SockLbConfig> = Array::with_max_entries(1, 0);
