//! The load-balancing decision: which packets are service traffic, which
//! backend a flow goes to, and which packets are replies to translate back.
//! Pure map logic; rewriting the packet is the caller's job.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use svc_common::{
    AffinityKey, AffinityValue, CT_FORWARD, CT_REPLY, DropReason, FlowKey, NatEntry, ServiceKey,
    ServiceStats, ServiceValue, nat_flags::HAIRPIN, service_flags,
};

use crate::{
    maps::{AFFINITY, BACKENDS, CONNTRACK, DROP_STATS, SERVICE_STATS, SERVICES},
    packet::Flow,
};

/// Rewrite one endpoint of the packet to `addr:port`.
pub struct Rewrite {
    /// `true`: DNAT of the destination (client -> backend);
    /// `false`: reverse NAT of the source (backend reply -> client).
    pub dst: bool,
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: u16,
    /// Also rewrite the other endpoint's address (port unchanged): the
    /// source to the frontend on the way in, the destination back to the
    /// client on the way out (see `nat_flags::HAIRPIN`).
    pub hairpin: bool,
}

pub enum Verdict {
    Pass,
    Drop,
    Rewrite(Rewrite),
}

// A BPF subprogram of its own: its locals get their own frame instead of
// adding to the caller's (the whole chain must fit in 512 bytes).
#[inline(never)]
pub fn decide(flow: &Flow, packet_len: u32) -> Verdict {
    let frontend = ServiceKey::new(flow.dst, flow.dst_port, flow.proto, 0);
    // SAFETY: values are plain integers; a concurrent update can at worst
    // give a stale but well-formed value.
    if let Some(svc) = unsafe { SERVICES.get(&frontend) } {
        return to_backend(flow, frontend, *svc, packet_len);
    }

    let reply = flow_key(flow, CT_REPLY);
    if let Some(nat) = unsafe { CONNTRACK.get(&reply) } {
        count_service(nat.service_id, packet_len, true);
        return Verdict::Rewrite(Rewrite {
            dst: false,
            addr: nat.addr,
            port: nat.port,
            hairpin: nat.flags & HAIRPIN != 0,
        });
    }
    Verdict::Pass
}

/// Client -> frontend: reuse the flow's backend while it exists, otherwise
/// pick one by flow hash and remember the choice in both directions.
#[inline(always)]
fn to_backend(flow: &Flow, frontend: ServiceKey, svc: ServiceValue, packet_len: u32) -> Verdict {
    let service_id = svc.service_id;
    let forward = flow_key(flow, CT_FORWARD);
    if let Some(nat) = unsafe { CONNTRACK.get(&forward) } {
        // The pinned backend must still exist and still be the endpoint we
        // pinned (ids are reused once freed).
        if let Some(b) = unsafe { BACKENDS.get(&nat.backend_id) } {
            if b.addr == nat.addr && b.port == nat.port {
                count_service(nat.service_id, packet_len, false);
                return Verdict::Rewrite(Rewrite {
                    dst: true,
                    addr: nat.addr,
                    port: nat.port,
                    hairpin: nat.flags & HAIRPIN != 0,
                });
            }
        }
    }

    if svc.backend_count == 0 {
        count_drop(DropReason::NoBackend);
        return Verdict::Drop;
    }
    let Some(backend_id) = choose_backend(flow, frontend, &svc) else {
        count_drop(DropReason::MissingBackend);
        return Verdict::Drop;
    };
    let Some(backend) = (unsafe { BACKENDS.get(&backend_id) }) else {
        count_drop(DropReason::MissingBackend);
        return Verdict::Drop;
    };
    let (addr, port) = (backend.addr, backend.port);
    let hairpin = addr == flow.src;
    let flags = if hairpin { HAIRPIN } else { 0 };

    let to_backend = NatEntry {
        addr,
        port,
        flags,
        backend_id,
        service_id,
        ..NatEntry::default()
    };
    // The reply comes from the backend to the client (to the frontend
    // address, for hairpin) and must look as if it came from the frontend.
    let reply_key = FlowKey {
        src_addr: addr,
        dst_addr: if hairpin { flow.dst } else { flow.src },
        src_port: port,
        dst_port: flow.src_port,
        proto: flow.proto,
        direction: CT_REPLY,
        _pad: [0; 2],
    };
    let to_frontend = NatEntry {
        addr: flow.dst,
        port: flow.dst_port,
        flags,
        backend_id,
        service_id,
        ..NatEntry::default()
    };
    // Reply entry first: once the forward entry exists, packets may reach
    // the backend and its answer must find the way back.
    if CONNTRACK.insert(&reply_key, &to_frontend, 0).is_err()
        || CONNTRACK.insert(&forward, &to_backend, 0).is_err()
    {
        // Still translate: the hash gives the same backend next time.
        count_drop(DropReason::ConntrackFull);
    }
    count_service(service_id, packet_len, false);
    Verdict::Rewrite(Rewrite {
        dst: true,
        addr,
        port,
        hairpin,
    })
}

/// The backend for a new flow: under ClientIP affinity the client's recent
/// one while it is fresh and still the frontend's, else one by flow hash.
#[inline(always)]
fn choose_backend(flow: &Flow, frontend: ServiceKey, svc: &ServiceValue) -> Option<u32> {
    let affinity = svc.flags & service_flags::AFFINITY != 0;
    let key = AffinityKey {
        client_addr: flow.src,
        service_id: svc.service_id,
        _pad: 0,
    };
    // SAFETY: a helper without arguments. Only affinity needs the time.
    let now = if affinity {
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    if affinity {
        if let Some(recent) = unsafe { AFFINITY.get(&key) } {
            let timeout_ns = u64::from(svc.affinity_timeout_s) * 1_000_000_000;
            let slot_key = ServiceKey {
                slot: recent.slot,
                ..frontend
            };
            let still_there = recent.slot >= 1
                && recent.slot <= svc.backend_count
                && unsafe { SERVICES.get(&slot_key) }
                    .is_some_and(|s| s.backend_id == recent.backend_id);
            if now.wrapping_sub(recent.last_used_ns) < timeout_ns && still_there {
                let backend_id = recent.backend_id;
                remember(&key, backend_id, recent.slot, now);
                return Some(backend_id);
            }
        }
    }
    let slot = 1 + (flow_hash(flow) % u32::from(svc.backend_count)) as u16;
    let slot_key = ServiceKey { slot, ..frontend };
    let backend_id = unsafe { SERVICES.get(&slot_key) }?.backend_id;
    if affinity {
        remember(&key, backend_id, slot, now);
    }
    Some(backend_id)
}

#[inline(always)]
fn remember(key: &AffinityKey, backend_id: u32, slot: u16, now: u64) {
    let value = AffinityValue {
        backend_id,
        slot,
        _pad: 0,
        last_used_ns: now,
    };
    // Best effort: losing it only loses stickiness for this client.
    let _ = AFFINITY.insert(key, &value, 0);
}

#[inline(always)]
fn flow_key(flow: &Flow, direction: u8) -> FlowKey {
    FlowKey {
        src_addr: flow.src,
        dst_addr: flow.dst,
        src_port: flow.src_port,
        dst_port: flow.dst_port,
        proto: flow.proto,
        direction,
        _pad: [0; 2],
    }
}

/// A hash of the client side of the flow (murmur3's finaliser over the
/// mixed words): same flow, same backend; different flows spread evenly.
#[inline(always)]
fn flow_hash(flow: &Flow) -> u32 {
    let mut h: u32 = u32::from(flow.proto);
    let mut i = 0;
    while i < 16 {
        let w = u32::from_ne_bytes([
            flow.src[i],
            flow.src[i + 1],
            flow.src[i + 2],
            flow.src[i + 3],
        ]);
        h = (h ^ w).wrapping_mul(0x9e37_79b1).rotate_left(13);
        i += 4;
    }
    h ^= (u32::from(flow.src_port) << 16) | u32::from(flow.dst_port);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn count_service(service_id: u32, packet_len: u32, reply: bool) {
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, so no other writer runs concurrently.
        let stats: &mut ServiceStats = unsafe { &mut *stats };
        if reply {
            stats.reply_packets += 1;
            stats.reply_bytes += u64::from(packet_len);
        } else {
            stats.packets += 1;
            stats.bytes += u64::from(packet_len);
        }
    }
}

#[inline(always)]
pub fn count_drop(reason: DropReason) {
    if let Some(n) = DROP_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot.
        unsafe { *n += 1 };
    }
}
