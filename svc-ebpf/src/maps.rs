//! The maps, declared once and shared by both programs (one object file, so
//! one set of map instances).
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use svc_common::{
    AffinityKey, AffinityValue, Backend, DropReason, FlowKey, MAX_AFFINITY, MAX_BACKENDS,
    MAX_CONNTRACK, MAX_SERVICE_SLOTS, MAX_SERVICES, MAX_UPLINKS, NatEntry, ServiceKey,
    ServiceStats, ServiceValue,
};

#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(MAX_SERVICE_SLOTS, 0);

#[map]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::with_max_entries(MAX_BACKENDS, 0);

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
