//! The load-balancing decision: which packets are service traffic, which
//! backend a flow goes to, and which packets are replies to translate back.
//! Pure map logic; rewriting the packet is the caller's job.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
};
use svc_common::{
    AffinityKey, AffinityValue, CT_FORWARD, CT_REPLY, CtTimeouts, DropReason, FlowKey,
    MAGLEV_CHUNK_SLOTS, MaglevKey, NatEntry, SNAT_PROBES, ServiceKey, ServiceStats, ServiceValue,
    SourceRangeKey, backend_flags,
    nat_flags::{CLOSING, HAIRPIN, SNAT},
    service_flags,
};

use crate::{
    maps::{
        AFFINITY, BACKENDS, CONNTRACK, CT_TIMEOUTS, DROP_STATS, MAGLEV, MAGLEV_CONFIG,
        SERVICE_STATS, SERVICES, SNAT_CONFIG, SOURCE_RANGES,
    },
    packet::{Flow, TCP_FIN, TCP_RST, TCP_SYN},
};

/// The packet's new addresses and ports (network byte order); the writer
/// changes only those that differ from the packet's.
pub struct Rewrite {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// For `Verdict::Snat`: the flow's backend and service.
    pub backend_id: u32,
    pub service_id: u32,
}

impl Rewrite {
    #[inline(always)]
    fn set(&mut self, nat: &NatEntry) -> Verdict {
        self.src = nat.src_addr;
        self.dst = nat.dst_addr;
        self.src_port = nat.src_port;
        self.dst_port = nat.dst_port;
        Verdict::Rewrite
    }
}

/// What to do with a packet. `Rewrite` comes with the new addresses in
/// the caller's `Rewrite`: a BPF subprogram may return a scalar, never a
/// pointer into its caller's stack (which returning a large enum would be).
/// `Snat`: a new flow from outside to a backend elsewhere, whose source is
/// still to be chosen by `snat` (a call of its own from the program, not
/// from here: the stack has no room for another level below `decide`).
/// `Reject`: a new flow to a frontend without endpoints, to be refused
/// (`reject`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    Rewrite,
    Snat,
    /// A new flow to the backend in `rw`, to be remembered by `track`
    /// (likewise a call of its own from the program).
    Track,
    /// No backends and the frontend refuses: `reject` answers the client.
    Reject,
}

/// Where a packet was seen: on an uplink (from outside the node, XDP) or
/// leaving a pod (tcx).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Uplink,
    Pod,
}

// A BPF subprogram of its own: its locals get their own frame instead of
// adding to the caller's (the whole chain must fit in 512 bytes).
#[inline(never)]
pub fn decide(flow: &Flow, packet_len: u32, origin: Origin, rw: &mut Rewrite) -> Verdict {
    let frontend = ServiceKey::new(flow.dst, flow.dst_port, flow.proto, 0);
    // SAFETY: values are plain integers; a concurrent update can at worst
    // give a stale but well-formed value.
    if let Some(svc) = unsafe { SERVICES.get(&frontend) } {
        let svc = *svc;
        return to_backend(flow, &svc, packet_len, origin, rw);
    }

    let reply = flow_key(flow, CT_REPLY);
    if let Some(nat) = CONNTRACK.get_ptr_mut(&reply) {
        // SAFETY: a valid map value; racing writers only store integers.
        let nat = unsafe { &mut *nat };
        touch(nat, flow.tcp_flags, now_s());
        count_service(nat.service_id, packet_len, true);
        return rw.set(nat);
    }
    Verdict::Pass
}

/// Client -> frontend: reuse the flow's backend while it exists, otherwise
/// pick one by flow hash and remember the choice in both directions.
/// (At most five arguments: BPF passes no more in registers.)
#[inline(always)]
fn to_backend(
    flow: &Flow,
    svc: &ServiceValue,
    packet_len: u32,
    origin: Origin,
    rw: &mut Rewrite,
) -> Verdict {
    let service_id = svc.service_id;
    if svc.flags & service_flags::SOURCE_RANGES != 0 && !source_allowed(service_id, &flow.src) {
        count_drop(DropReason::SourceRangeDenied);
        return Verdict::Drop;
    }
    let forward = flow_key(flow, CT_FORWARD);
    let now = now_s();
    if let Some(nat) = CONNTRACK.get_ptr_mut(&forward) {
        // SAFETY: a valid map value; racing writers only store integers.
        let nat = unsafe { &mut *nat };
        // The pinned backend must still exist and still be the endpoint we
        // pinned (ids are reused once freed), and the flow must not have
        // expired (then it starts afresh, as a new flow).
        if let Some(b) = unsafe { BACKENDS.get(&nat.backend_id) } {
            if b.addr == nat.dst_addr && b.port == nat.dst_port && !expired(nat, flow.proto, now) {
                touch(nat, flow.tcp_flags, now);
                count_service(nat.service_id, packet_len, false);
                return rw.set(nat);
            }
        }
    }

    if svc.backend_count == 0 {
        // Refused when the service has no endpoints at all (counted by
        // `reject`), dropped when a traffic policy leaves this node none.
        if svc.flags & service_flags::REJECT != 0 {
            return Verdict::Reject;
        }
        count_drop(DropReason::NoBackend);
        return Verdict::Drop;
    }
    let frontend = ServiceKey::new(flow.dst, flow.dst_port, flow.proto, 0);
    let backend_id = choose_backend(flow, &frontend, svc);
    if backend_id == 0 {
        count_drop(DropReason::MissingBackend);
        return Verdict::Drop;
    }
    let Some(backend) = (unsafe { BACKENDS.get(&backend_id) }) else {
        count_drop(DropReason::MissingBackend);
        return Verdict::Drop;
    };
    let (addr, port) = (backend.addr, backend.port);
    let hairpin = addr == flow.src;
    // From outside the node to a backend on another node: the reply would
    // go straight back to the client, untranslated, unless it comes back
    // here. So the node's address (and a pool port) becomes the source.
    let snat = origin == Origin::Uplink && backend.flags & backend_flags::LOCAL == 0 && !hairpin;

    rw.dst = addr;
    rw.dst_port = port;
    rw.backend_id = backend_id;
    rw.service_id = service_id;
    count_service(service_id, packet_len, false);
    if snat { Verdict::Snat } else { Verdict::Track }
}

/// Completes a `Verdict::Track`: remembers the new flow to the backend
/// `rw` names in both directions and fills in the rest of `rw`. Called by
/// the program after `decide` returned, so their frames never add up.
#[inline(never)]
pub fn track(flow: &Flow, rw: &mut Rewrite) -> Verdict {
    let (addr, port) = (rw.dst, rw.dst_port);
    let hairpin = addr == flow.src;
    let now = now_s();
    // The reply: from the backend back to the client, made to look as if it
    // came from the frontend.
    let to_frontend = NatEntry {
        src_addr: flow.dst,
        src_port: flow.dst_port,
        dst_addr: flow.src,
        dst_port: flow.src_port,
        flags: if hairpin { HAIRPIN } else { 0 },
        backend_id: rw.backend_id,
        service_id: rw.service_id,
        last_seen_s: now,
        ..NatEntry::default()
    };
    // Hairpin: the frontend becomes the source, so the backend's answer
    // leaves the pod (kube-proxy masquerades it likewise).
    let src = if hairpin { flow.dst } else { flow.src };
    let reply_key = FlowKey {
        src_addr: addr,
        dst_addr: src,
        src_port: port,
        dst_port: flow.src_port,
        proto: flow.proto,
        direction: CT_REPLY,
        _pad: [0; 2],
    };
    // Reply entry first: once the forward entry exists, packets may reach
    // the backend and its answer must find the way back.
    if CONNTRACK.insert(&reply_key, &to_frontend, 0).is_err() {
        count_drop(DropReason::ConntrackFull);
    }
    let to_backend = NatEntry {
        src_addr: src,
        src_port: flow.src_port,
        dst_addr: addr,
        dst_port: port,
        flags: to_frontend.flags | closing_bit(flow.tcp_flags),
        backend_id: rw.backend_id,
        service_id: rw.service_id,
        last_seen_s: now,
        ..NatEntry::default()
    };
    if CONNTRACK
        .insert(&flow_key(flow, CT_FORWARD), &to_backend, 0)
        .is_err()
    {
        // Still translate: the hash gives the same backend next time.
        count_drop(DropReason::ConntrackFull);
    }
    rw.set(&to_backend)
}

/// Completes a `Verdict::Snat`: picks the node's SNAT address and a free
/// pool port, claims the port by inserting the flow's reply entry, then
/// the forward entry, and fills in `rw`'s source. A port is free when no
/// reply entry from that backend to it exists, or the one there belongs to
/// a flow that is over. Probes a bounded number of ports from a hash of
/// the flow. False: no port (counted; the packet is dropped and the
/// client's retransmission tries again).
#[inline(never)]
pub fn snat(flow: &Flow, rw: &mut Rewrite) -> bool {
    let Some(cfg) = SNAT_CONFIG.get(0) else {
        return false;
    };
    let addr = if flow.is_v6 { cfg.addr_v6 } else { cfg.addr_v4 };
    if addr == [0; 16] || cfg.port_max < cfg.port_min {
        count_drop(DropReason::SnatPortsExhausted);
        return false;
    }
    let reply = NatEntry {
        src_addr: flow.dst,
        src_port: flow.dst_port,
        dst_addr: flow.src,
        dst_port: flow.src_port,
        flags: SNAT,
        backend_id: rw.backend_id,
        service_id: rw.service_id,
        last_seen_s: now_s(),
        ..NatEntry::default()
    };
    let pool = u32::from(cfg.port_max - cfg.port_min) + 1;
    let start = flow_hash(flow);
    let mut key = FlowKey {
        src_addr: rw.dst,
        dst_addr: addr,
        src_port: rw.dst_port,
        dst_port: 0,
        proto: flow.proto,
        direction: CT_REPLY,
        _pad: [0; 2],
    };
    let mut chosen = None;
    for i in 0..SNAT_PROBES {
        let port = (cfg.port_min + (start.wrapping_add(i) % pool) as u16).to_be();
        key.dst_port = port;
        let claimed = match unsafe { CONNTRACK.get(&key) } {
            None => CONNTRACK
                .insert(&key, &reply, u64::from(BPF_NOEXIST))
                .is_ok(),
            Some(old) if expired(old, flow.proto, reply.last_seen_s) => {
                // The old flow's forward entry would still send its client
                // (should it reuse its port) to this port: it goes.
                let _ = CONNTRACK.remove(&key.partner(old));
                CONNTRACK.insert(&key, &reply, 0).is_ok()
            }
            Some(_) => false,
        };
        if claimed {
            chosen = Some(port);
            break;
        }
    }
    let Some(port) = chosen else {
        count_drop(DropReason::SnatPortsExhausted);
        return false;
    };
    let forward = NatEntry {
        src_addr: addr,
        src_port: port,
        dst_addr: rw.dst,
        dst_port: rw.dst_port,
        flags: SNAT | closing_bit(flow.tcp_flags),
        backend_id: rw.backend_id,
        service_id: rw.service_id,
        last_seen_s: reply.last_seen_s,
        ..NatEntry::default()
    };
    if CONNTRACK
        .insert(&flow_key(flow, CT_FORWARD), &forward, 0)
        .is_err()
    {
        count_drop(DropReason::ConntrackFull);
    }
    rw.set(&forward);
    true
}

/// For a packet an ICMP error quotes (`quoted`, as translated), the
/// addresses and ports it had before translation, into `rw`: its sender's
/// view of it. The packet went one of two ways:
/// * client -> backend (a forward packet): its flow's reply entry, keyed
///   by the reverse tuple, holds the frontend and the client;
/// * frontend -> client (a reply, reverse-NATed): its flow's forward
///   entry, keyed by the reverse tuple too, holds the client (or the SNAT
///   address and port) and the backend.
///
/// Either entry holds the rewrite for the packets going against the
/// quoted one, so the quoted packet's own tuple is that entry read
/// backwards. False: no flow of ours. A subprogram of its own: the
/// caller's frame has no room for the key.
#[inline(never)]
pub fn quoted_original(quoted: &Flow, rw: &mut Rewrite) -> bool {
    let mut key = FlowKey {
        src_addr: quoted.dst,
        dst_addr: quoted.src,
        src_port: quoted.dst_port,
        dst_port: quoted.src_port,
        proto: quoted.proto,
        direction: CT_REPLY,
        _pad: [0; 2],
    };
    // SAFETY: values are plain integers (see `decide`).
    let nat = match unsafe { CONNTRACK.get(&key) } {
        Some(nat) => nat,
        None => {
            key.direction = CT_FORWARD;
            match unsafe { CONNTRACK.get(&key) } {
                Some(nat) => nat,
                None => return false,
            }
        }
    };
    rw.src = nat.dst_addr;
    rw.src_port = nat.dst_port;
    rw.dst = nat.src_addr;
    rw.dst_port = nat.src_port;
    true
}

/// Whether a conntrack entry has outlived its timeout (`CtTimeouts`).
#[inline(always)]
fn expired(entry: &NatEntry, proto: u8, now: u32) -> bool {
    CT_TIMEOUTS
        .get(0)
        .is_some_and(|t: &CtTimeouts| t.expired(entry, proto, now))
}

/// Keeps an entry's time and TCP state for its expiry: `CLOSING` from a
/// FIN or RST on, until a SYN (a client that reused its port). Written
/// only when something changed, so a busy flow does not dirty the shared
/// entry on every packet.
#[inline(always)]
fn touch(nat: &mut NatEntry, tcp_flags: u8, now: u32) {
    if nat.last_seen_s != now {
        nat.last_seen_s = now;
    }
    let closing = if tcp_flags & TCP_SYN != 0 {
        0
    } else {
        closing_bit(tcp_flags) | (nat.flags & CLOSING)
    };
    if nat.flags & CLOSING != closing {
        nat.flags = (nat.flags & !CLOSING) | closing;
    }
}

/// `CLOSING` if the packet ends its connection.
#[inline(always)]
fn closing_bit(tcp_flags: u8) -> u16 {
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        CLOSING
    } else {
        0
    }
}

/// loadBalancerSourceRanges: whether any of the service's prefixes holds
/// the client.
#[inline(always)]
pub fn source_allowed(service_id: u32, client: &[u8; 16]) -> bool {
    let key = aya_ebpf::maps::lpm_trie::Key::new(
        32 + 128,
        SourceRangeKey {
            service_id: service_id.to_be_bytes(),
            addr: *client,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}

/// Monotonic seconds, for conntrack times (the coarse clock is cheaper and
/// plenty fine for timeouts counted in seconds; the agent reads the same
/// CLOCK_MONOTONIC).
#[inline(always)]
fn now_s() -> u32 {
    // SAFETY: a helper without arguments.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

/// The backend id for a new flow (0: none; ids are never 0): see
/// `pick_backend`. A subprogram of its own, so its keys take no room in
/// `decide`'s frame.
#[inline(never)]
fn choose_backend(flow: &Flow, frontend: &ServiceKey, svc: &ServiceValue) -> u32 {
    pick_backend(frontend, svc, &flow.src, flow_hash(flow)).unwrap_or(0)
}

/// The backend for something new to `frontend` (a flow, a socket): under
/// ClientIP affinity the client's recent one while it is fresh and still
/// the frontend's, else the slot `hash` picks (`slot_for`: Maglev or
/// modulo). Shared by the packet programs and the socket hooks, so both
/// balance alike.
#[inline(always)]
pub fn pick_backend(
    frontend: &ServiceKey,
    svc: &ServiceValue,
    client: &[u8; 16],
    hash: u32,
) -> Option<u32> {
    if svc.backend_count == 0 {
        return None;
    }
    let affinity = svc.flags & service_flags::AFFINITY != 0;
    let key = AffinityKey {
        client_addr: *client,
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
                ..*frontend
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
    let slot = slot_for(svc, hash);
    let slot_key = ServiceKey { slot, ..*frontend };
    let backend_id = unsafe { SERVICES.get(&slot_key) }?.backend_id;
    if affinity {
        remember(&key, backend_id, slot, now);
    }
    Some(backend_id)
}

/// The slot `hash` picks: the frontend's Maglev table entry if it has a
/// table (so a change of backends moves few new flows), else `1 + hash %
/// count`. An entry beyond the count, met while the agent rewrites a table
/// and its frontend one map write after the other, falls back to the
/// modulo rather than to a slot that may be gone. `backend_count` > 0.
#[inline(always)]
fn slot_for(svc: &ServiceValue, hash: u32) -> u16 {
    let count = svc.backend_count;
    if svc.flags & service_flags::MAGLEV != 0
        && let Some(slot) = maglev_entry(svc.service_id, hash)
        && slot >= 1
        && slot <= count
    {
        return slot;
    }
    1 + (hash % u32::from(count)) as u16
}

/// Entry `hash % M` of service `service_id`'s Maglev table.
#[inline(always)]
fn maglev_entry(service_id: u32, hash: u32) -> Option<u16> {
    let size = MAGLEV_CONFIG.get(0)?.table_size;
    if size == 0 {
        return None;
    }
    let index = hash % size;
    let key = MaglevKey {
        service_id,
        chunk: index / MAGLEV_CHUNK_SLOTS as u32,
    };
    // A pointer, not a copy: the chunk is 1 KiB, the stack 512 bytes.
    let chunk = MAGLEV.get_ptr(&key)?;
    let i = (index % MAGLEV_CHUNK_SLOTS as u32) as usize;
    // SAFETY: a valid map value; `get` bounds the index for the verifier.
    unsafe { (*chunk).slots.get(i).copied() }
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
