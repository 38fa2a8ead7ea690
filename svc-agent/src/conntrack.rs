//! Which conntrack entries are over. The kernel treats an expired forward
//! entry as a new flow but never deletes anything itself (the map is only
//! LRU-bounded); the agent sweeps the table every sync period so finished
//! flows do not crowd out live ones.
use std::collections::HashMap;

use svc_common::{CtTimeouts, FlowKey, NatEntry};

/// The keys to delete: entries that have expired and whose other
/// direction has expired too or is gone. A flow is kept while either
/// direction is alive: a reply entry must outlive a quiet forward
/// direction (a server streaming to a silent UDP client), and a forward
/// entry a quiet reply direction.
pub fn expired(
    entries: &HashMap<FlowKey, NatEntry>,
    timeouts: &CtTimeouts,
    now_s: u32,
) -> Vec<FlowKey> {
    let over = |key: &FlowKey, entry: &NatEntry| timeouts.expired(entry, key.proto, now_s);
    entries
        .iter()
        .filter(|(key, entry)| {
            over(key, entry)
                && entries
                    .get(&key.partner(entry))
                    .is_none_or(|other| over(&key.partner(entry), other))
        })
        .map(|(key, _)| *key)
        .collect()
}

/// Seconds of CLOCK_MONOTONIC: the clock the programs stamp entries with
/// (`bpf_ktime_get_coarse_ns`).
pub fn now_s() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

#[cfg(test)]
mod tests {
    use svc_common::{CT_FORWARD, CT_REPLY, PROTO_TCP, PROTO_UDP, nat_flags::CLOSING};

    use super::*;

    const TIMEOUTS: CtTimeouts = CtTimeouts {
        tcp_established_s: 100,
        tcp_closing_s: 10,
        udp_s: 30,
        _pad: 0,
    };

    fn addr(last: u8) -> [u8; 16] {
        let mut a = [0; 16];
        a[15] = last;
        a
    }

    /// Client 1:1000 -> frontend 2:80, DNATed to backend 3:8080: the
    /// forward and reply entries, each last seen at the given second.
    fn flow(proto: u8, forward_seen: u32, reply_seen: u32, flags: u16) -> [(FlowKey, NatEntry); 2] {
        let key = |src, dst, sport, dport, direction| FlowKey {
            src_addr: addr(src),
            dst_addr: addr(dst),
            src_port: sport,
            dst_port: dport,
            proto,
            direction,
            _pad: [0; 2],
        };
        let nat = |src, dst, sport, dport, seen| NatEntry {
            src_addr: addr(src),
            dst_addr: addr(dst),
            src_port: sport,
            dst_port: dport,
            flags,
            last_seen_s: seen,
            ..NatEntry::default()
        };
        [
            (
                key(1, 2, 1000, 80, CT_FORWARD),
                nat(1, 3, 1000, 8080, forward_seen),
            ),
            (
                key(3, 1, 8080, 1000, CT_REPLY),
                nat(2, 1, 80, 1000, reply_seen),
            ),
        ]
    }

    fn sweep(entries: &[(FlowKey, NatEntry)], now: u32) -> usize {
        expired(&entries.iter().copied().collect(), &TIMEOUTS, now).len()
    }

    #[test]
    fn the_pair_goes_only_once_both_directions_expired() {
        let f = flow(PROTO_TCP, 0, 50, 0);
        // Each entry names its partner.
        assert_eq!(f[0].0.partner(&f[0].1), f[1].0);
        assert_eq!(f[1].0.partner(&f[1].1), f[0].0);
        assert_eq!(sweep(&f, 100), 0);
        // The forward entry has expired, but the replies keep the flow.
        assert_eq!(sweep(&f, 120), 0);
        assert_eq!(sweep(&f, 151), 2);
        // Alone, an expired entry goes.
        assert_eq!(sweep(&f[..1], 120), 1);
    }

    #[test]
    fn closing_tcp_and_udp_flows_expire_sooner_than_established_ones() {
        assert_eq!(sweep(&flow(PROTO_TCP, 0, 0, 0), 11), 0);
        assert_eq!(sweep(&flow(PROTO_TCP, 0, 0, CLOSING), 11), 2);
        assert_eq!(sweep(&flow(PROTO_UDP, 0, 0, 0), 31), 2);
        assert_eq!(sweep(&flow(PROTO_UDP, 0, 0, 0), 30), 0);
    }

    #[test]
    fn a_zero_timeout_never_expires() {
        let never = CtTimeouts {
            tcp_established_s: 0,
            ..TIMEOUTS
        };
        let f: HashMap<_, _> = flow(PROTO_TCP, 0, 0, 0).into_iter().collect();
        assert!(expired(&f, &never, 1_000_000).is_empty());
    }
}
