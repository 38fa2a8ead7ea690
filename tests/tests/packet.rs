//! Packet-level tests: the programs under BPF_PROG_TEST_RUN on crafted
//! packets. Every expected packet is built from scratch (`Spec::build`, its
//! own checksum code) and compared byte for byte with the program's output.
use std::net::{IpAddr, SocketAddr};

use svc_common::DropReason;
use tests::{
    packet::{Csum, FIN_ACK, Frag, IcmpError, IcmpKind, PSH_ACK, SYN, Spec, TCP, UDP, diff},
    progtest::{Action, Fixture, HOOKS, Hook, loopback},
};

const VIP4: &str = "10.96.0.10:80";
const VIP6: &str = "[fd00:96::10]:80";
const BACKENDS4: [&str; 2] = ["10.244.1.21:8080", "10.244.1.22:8080"];
const BACKENDS6: [&str; 2] = ["[fd00:244:1::21]:8080", "[fd00:244:1::22]:8080"];
const CLIENT4: &str = "192.0.2.2:40000";
const CLIENT6: &str = "[2001:db8::2]:40000";

/// A fixture serving VIP4 and VIP6 on TCP and UDP, two backends each.
fn fixture() -> Fixture {
    let mut f = Fixture::new();
    f.services(&[
        &format!("{VIP4}/tcp={}", BACKENDS4.join(",")),
        &format!("{VIP4}/udp={}", BACKENDS4.join(",")),
        &format!("{VIP6}/tcp={}", BACKENDS6.join(",")),
        &format!("{VIP6}/udp={}", BACKENDS6.join(",")),
    ]);
    f
}

/// The four (family, protocol) client packets towards the VIPs.
fn client_packets() -> Vec<Spec> {
    vec![
        Spec::tcp(CLIENT4, VIP4),
        Spec::udp(CLIENT4, VIP4),
        Spec::tcp(CLIENT6, VIP6),
        Spec::udp(CLIENT6, VIP6),
    ]
}

fn backends_for(spec: &Spec) -> Vec<SocketAddr> {
    let list = if spec.dst.is_ipv4() {
        BACKENDS4
    } else {
        BACKENDS6
    };
    list.iter().map(|b| b.parse().unwrap()).collect()
}

/// Asserts `out` is exactly `spec` DNATed to one of its backends, and
/// returns which.
fn assert_dnat(hook: Hook, spec: &Spec, action: Action, out: &[u8]) -> SocketAddr {
    assert_eq!(action, Action::Pass, "{hook:?} {spec:?}");
    let backends = backends_for(spec);
    for b in &backends {
        if out == spec.with_dst(*b).build().as_slice() {
            return *b;
        }
    }
    let nearest = spec.with_dst(backends[0]).build();
    panic!(
        "{hook:?}: {spec:?} not DNATed to any backend; vs {}: {}",
        backends[0],
        diff(out, &nearest)
    );
}

#[test]
fn hit_is_dnated_with_checksums_recomputed_from_scratch() {
    for hook in HOOKS {
        let mut f = fixture();
        for spec in client_packets() {
            let (action, out) = f.run(hook, &spec.build());
            assert_dnat(hook, &spec, action, &out);
        }
    }
}

#[test]
fn miss_passes_unchanged() {
    for hook in HOOKS {
        let mut f = fixture();
        for spec in [
            Spec::tcp(CLIENT4, "10.96.0.11:80"),    // other address
            Spec::tcp(CLIENT4, "10.96.0.10:81"),    // other port
            Spec::tcp(CLIENT6, "[fd00:96::11]:80"), // other v6 address
            Spec::new(132, CLIENT4, VIP4),          // other protocol (SCTP)
        ] {
            let pkt = spec.build();
            assert_eq!(f.run(hook, &pkt), (Action::Pass, pkt), "{hook:?} {spec:?}");
        }
    }
}

#[test]
fn same_flow_keeps_its_backend_and_flows_spread() {
    for hook in HOOKS {
        let mut f = fixture();
        for base in client_packets() {
            let first = {
                let (a, out) = f.run(hook, &base.build());
                assert_dnat(hook, &base, a, &out)
            };
            for _ in 0..10 {
                let (a, out) = f.run(hook, &base.build());
                assert_eq!(assert_dnat(hook, &base, a, &out), first, "{hook:?}");
            }
            let mut seen = std::collections::BTreeMap::new();
            for port in 20000..20064 {
                let mut s = base.clone();
                s.src.set_port(port);
                let (a, out) = f.run(hook, &s.build());
                *seen.entry(assert_dnat(hook, &s, a, &out)).or_insert(0) += 1;
            }
            // 64 flows over 2 backends: each gets a fair share.
            assert_eq!(seen.len(), 2, "{hook:?} {base:?}: {seen:?}");
            assert!(seen.values().all(|&n| n >= 16), "{hook:?}: skewed {seen:?}");
        }
    }
}

#[test]
fn replies_are_reverse_natted_on_either_hook() {
    // The forward packet may cross one hook (XDP on the uplink) and the
    // reply the other (tc on the backend's veth): the maps are shared.
    for (fwd_hook, reply_hook) in [
        (Hook::Xdp, Hook::Tc),
        (Hook::Tc, Hook::Tc),
        (Hook::Tc, Hook::Xdp),
        (Hook::Xdp, Hook::Xdp),
    ] {
        let mut f = fixture();
        for spec in client_packets() {
            let (a, out) = f.run(fwd_hook, &spec.build());
            let backend = assert_dnat(fwd_hook, &spec, a, &out);
            let reply = spec.with_dst(backend).reply();
            let (a, out) = f.run(reply_hook, &reply.build());
            let want = reply.with_src(spec.dst).build();
            assert_eq!(a, Action::Pass);
            assert!(out == want, "{reply_hook:?} reply: {}", diff(&out, &want));
        }
    }
}

#[test]
fn unrelated_reply_direction_traffic_passes_unchanged() {
    let mut f = fixture();
    for hook in HOOKS {
        // From a backend to a client that never talked to the service.
        let spec = Spec::tcp("10.244.1.21:8080", "192.0.2.3:40000");
        let pkt = spec.build();
        assert_eq!(f.run(hook, &pkt), (Action::Pass, pkt));
    }
}

#[test]
fn xdp_updates_partial_checksums_as_partial() {
    // From a local socket over a veth, the L4 field holds only the
    // pseudo-header sum; the kernel finishes it later. Only the address
    // change belongs in it.
    let mut f = fixture();
    for mut spec in client_packets() {
        spec.csum = Csum::Partial;
        let (a, out) = f.run(Hook::Xdp, &spec.build());
        let backend = assert_dnat(Hook::Xdp, &spec, a, &out);
        let reply = Spec {
            csum: Csum::Partial,
            ..spec.with_dst(backend).reply()
        };
        let (a, out) = f.run(Hook::Xdp, &reply.build());
        let want = reply.with_src(spec.dst).build();
        assert_eq!(a, Action::Pass);
        assert!(out == want, "partial reply: {}", diff(&out, &want));
    }
}

#[test]
fn udp_zero_checksum_stays_zero() {
    for hook in HOOKS {
        let mut f = fixture();
        let spec = Spec {
            csum: Csum::Zero,
            ..Spec::udp(CLIENT4, VIP4)
        };
        let (a, out) = f.run(hook, &spec.build());
        assert_dnat(hook, &spec, a, &out);
    }
}

#[test]
fn vlan_tagged_and_ipv4_options_are_translated() {
    for hook in HOOKS {
        let mut f = fixture();
        let mut specs = Vec::new();
        for mut s in client_packets() {
            s.vlan = Some(42);
            specs.push(s);
        }
        for proto in [TCP, UDP] {
            let mut s = Spec::new(proto, CLIENT4, VIP4);
            // Two NOPs, a 6-byte unknown option, End: 8 bytes, ihl = 7.
            s.ip_options = vec![1, 1, 0x88, 6, 0xab, 0xcd, 0xef, 0];
            specs.push(s.clone());
            s.vlan = Some(7);
            specs.push(s);
        }
        for spec in specs {
            let (a, out) = f.run(hook, &spec.build());
            assert_dnat(hook, &spec, a, &out);
        }
    }
}

#[test]
fn fragments_and_truncated_packets_pass_unchanged() {
    for hook in HOOKS {
        let mut f = fixture();
        let mut packets = Vec::new();
        for (frag, base) in [
            (Frag::V4First, Spec::udp(CLIENT4, VIP4)),
            (Frag::V4Later, Spec::udp(CLIENT4, VIP4)),
            (Frag::V4First, Spec::tcp(CLIENT4, VIP4)),
            (Frag::V6Header, Spec::udp(CLIENT6, VIP6)),
        ] {
            packets.push(Spec { frag, ..base }.build());
        }
        for spec in client_packets() {
            let full = spec.build();
            let ip_end = if spec.dst.is_ipv4() { 34 } else { 54 };
            // Cut inside the L4 header, and inside the IP header. The
            // kernel's test run for skb programs refuses (EINVAL) a frame
            // whose IP header is cut, so that case is XDP's alone.
            packets.push(full[..ip_end + 5].to_vec());
            if hook == Hook::Xdp {
                packets.push(full[..ip_end - 6].to_vec());
            }
        }
        // IPv4 options push the TCP header past the end of the packet.
        let mut s = Spec::tcp(CLIENT4, VIP4);
        s.ip_options = vec![1; 40];
        packets.push(s.build()[..14 + 60 + 10].to_vec());
        // Not IP at all (ARP).
        let mut arp = Spec::tcp(CLIENT4, VIP4).build();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        packets.push(arp);

        for pkt in packets {
            assert_eq!(f.run(hook, &pkt), (Action::Pass, pkt.clone()), "{hook:?}");
        }
    }
}

/// Frontends without endpoints (so the agent sets REJECT on them): VIP4
/// and VIP6, TCP and UDP.
fn empty_fixture() -> Fixture {
    let mut f = Fixture::new();
    f.services(&[
        &format!("{VIP4}/tcp="),
        &format!("{VIP4}/udp="),
        &format!("{VIP6}/tcp="),
        &format!("{VIP6}/udp="),
    ]);
    f
}

/// What a hook does with a refusal: XDP sends it back out of the uplink,
/// tc redirects it (to the pod's end of the veth).
fn sent(hook: Hook) -> Action {
    match hook {
        Hook::Xdp => Action::Tx,
        Hook::Tc | Hook::TcEgress => Action::Redirect,
    }
}

fn count(f: &Fixture, reason: DropReason) -> u64 {
    let drops = f.dp.drop_stats().unwrap();
    drops.iter().find(|(r, _)| *r == reason).unwrap().1
}

#[test]
fn frontend_without_endpoints_refuses_tcp_with_a_reset_and_udp_with_port_unreachable() {
    for hook in HOOKS {
        let mut f = empty_fixture();
        let mut refused = 0;
        for base in client_packets() {
            // Replies shorter, as long as and longer than the packet: the
            // program shrinks it or grows it.
            let mut specs = Vec::new();
            for payload in [Vec::new(), b"hello, service".to_vec(), vec![0x5a; 1200]] {
                let s = Spec {
                    payload,
                    ..base.clone()
                };
                if s.proto == TCP {
                    // Without ACK: RST|ACK acknowledging payload, SYN and
                    // FIN; with ACK: RST from its ack.
                    for flags in [SYN, PSH_ACK, FIN_ACK, 0x01, 0x10] {
                        specs.push(Spec {
                            tcp_flags: flags,
                            ..s.clone()
                        });
                    }
                } else {
                    // The quoted header holds the checksum as it came.
                    for csum in [Csum::Full, Csum::Partial, Csum::Zero] {
                        specs.push(Spec { csum, ..s.clone() });
                    }
                }
            }
            for spec in specs {
                let want = if spec.proto == TCP {
                    spec.reset()
                } else {
                    spec.port_unreachable()
                };
                let (a, out) = f.run(hook, &spec.build());
                assert_eq!(a, sent(hook), "{hook:?} {spec:?}");
                assert!(out == want, "{hook:?} {spec:?}: {}", diff(&out, &want));
                refused += 1;
            }
        }
        assert_eq!(count(&f, DropReason::Rejected), refused, "{hook:?}");
        assert_eq!(count(&f, DropReason::NoBackend), 0, "{hook:?}");

        // An endpoint appears: the same packets are served.
        f.services(&[
            &format!("{VIP4}/tcp={}", BACKENDS4[0]),
            &format!("{VIP4}/udp={}", BACKENDS4[0]),
            &format!("{VIP6}/tcp={}", BACKENDS6[0]),
            &format!("{VIP6}/udp={}", BACKENDS6[0]),
        ]);
        for spec in client_packets() {
            let (a, out) = f.run(hook, &spec.build());
            assert_dnat(hook, &spec, a, &out);
        }
    }
}

#[test]
fn refusals_are_not_sent_to_resets_tagged_frames_ip_options_or_non_hosts() {
    for hook in HOOKS {
        let mut f = empty_fixture();
        let mut specs = Vec::new();
        // A reset is never answered (RFC 793).
        for flags in [0x04, 0x14] {
            for base in [Spec::tcp(CLIENT4, VIP4), Spec::tcp(CLIENT6, VIP6)] {
                specs.push(Spec {
                    tcp_flags: flags,
                    ..base
                });
            }
        }
        // Layouts the refusal does not handle: VLAN tags, IPv4 options.
        for mut s in client_packets() {
            s.vlan = Some(42);
            specs.push(s);
        }
        for proto in [TCP, UDP] {
            let mut s = Spec::new(proto, CLIENT4, VIP4);
            s.ip_options = vec![1, 1, 1, 0];
            specs.push(s);
        }
        // Sources that are no single host.
        for src in [
            "224.0.0.1:5353",
            "255.255.255.255:68",
            "0.0.0.0:68",
            "[ff02::1]:5353",
            "[::]:546",
        ] {
            let src: SocketAddr = src.parse().unwrap();
            let vip = if src.is_ipv4() { VIP4 } else { VIP6 };
            for proto in [TCP, UDP] {
                specs.push(Spec::new(proto, &src.to_string(), vip));
            }
        }
        for spec in &specs {
            let pkt = spec.build();
            assert_eq!(f.run(hook, &pkt).0, Action::Drop, "{hook:?} {spec:?}");
        }
        assert_eq!(
            count(&f, DropReason::NoBackend),
            specs.len() as u64,
            "{hook:?}"
        );
        assert_eq!(count(&f, DropReason::Rejected), 0, "{hook:?}");
    }
}

#[test]
fn external_local_frontend_without_local_endpoints_drops_instead_of_refusing() {
    use svc_agent::dataplane::{Frontend, Protocol, Settings};
    use svc_common::service_flags::{EXTERNAL_LOCAL, NODE_PORT, REJECT};
    // externalTrafficPolicy: Local, endpoints only on other nodes: no
    // backends here and no REJECT (kube-proxy drops such traffic).
    for hook in HOOKS {
        let mut f = Fixture::new();
        let frontend = |addr: &str, proto| Frontend {
            addr: addr.parse().unwrap(),
            proto,
        };
        let mut packets = Vec::new();
        for (id, (addr, client)) in [
            ("192.0.2.1:30080", CLIENT4),
            ("[2001:db8::1]:30080", CLIENT6),
        ]
        .into_iter()
        .enumerate()
        {
            for (k, proto) in [Protocol::Tcp, Protocol::Udp].into_iter().enumerate() {
                let local = Settings {
                    flags: NODE_PORT | EXTERNAL_LOCAL,
                    affinity_timeout_s: 0,
                };
                let id = (id * 2 + k) as u32;
                f.dp.set_service(&frontend(addr, proto), id, local, &[], None)
                    .unwrap();
                let p = if proto == Protocol::Tcp { TCP } else { UDP };
                packets.push(Spec {
                    tcp_flags: SYN,
                    ..Spec::new(p, client, addr)
                });
            }
        }
        for spec in &packets {
            assert_eq!(
                f.run(hook, &spec.build()).0,
                Action::Drop,
                "{hook:?} {spec:?}"
            );
        }
        assert_eq!(count(&f, DropReason::NoBackend), packets.len() as u64);
        assert_eq!(count(&f, DropReason::Rejected), 0);

        // With no endpoint anywhere the agent adds REJECT: refused.
        let spec = &packets[0];
        let refusing = Settings {
            flags: NODE_PORT | EXTERNAL_LOCAL | REJECT,
            affinity_timeout_s: 0,
        };
        f.dp.set_service(
            &frontend("192.0.2.1:30080", Protocol::Tcp),
            0,
            refusing,
            &[],
            None,
        )
        .unwrap();
        let (a, out) = f.run(hook, &spec.build());
        assert_eq!(a, sent(hook));
        assert!(out == spec.reset(), "{}", diff(&out, &spec.reset()));
    }
}

#[test]
fn counters_track_packets_and_bytes_both_ways() {
    for hook in HOOKS {
        let mut f = fixture();
        let spec = Spec::tcp(CLIENT4, VIP4);
        let pkt = spec.build();
        let mut backend = None;
        for _ in 0..5 {
            let (a, out) = f.run(hook, &pkt);
            backend = Some(assert_dnat(hook, &spec, a, &out));
        }
        let reply = spec.with_dst(backend.unwrap()).reply().build();
        for _ in 0..3 {
            f.run(hook, &reply);
        }
        // The TCP v4 service is the first one: id 0.
        let s = f.dp.service_stats(0).unwrap();
        assert_eq!((s.packets, s.bytes), (5, 5 * pkt.len() as u64), "{hook:?}");
        assert_eq!(
            (s.reply_packets, s.reply_bytes),
            (3, 3 * reply.len() as u64)
        );
        assert_eq!(f.dp.service_stats(1).unwrap().packets, 0);
    }
}

#[test]
fn flows_stay_on_their_backend_until_it_is_removed() {
    use svc_agent::dataplane::{Frontend, Protocol, Settings};
    for hook in HOOKS {
        let mut f = fixture();
        let frontend = Frontend {
            addr: VIP4.parse().unwrap(),
            proto: Protocol::Tcp,
        };
        let flows: Vec<Spec> = (30000..30032)
            .map(|p| {
                let mut s = Spec::tcp(CLIENT4, VIP4);
                s.src.set_port(p);
                s
            })
            .collect();
        let first: Vec<SocketAddr> = flows
            .iter()
            .map(|s| {
                let (a, out) = f.run(hook, &s.build());
                assert_dnat(hook, s, a, &out)
            })
            .collect();

        // A third backend, listed first: the hash now maps flows elsewhere,
        // but established flows stay where they are.
        f.dp.set_backend(
            100,
            "10.244.1.23:8080".parse::<std::net::SocketAddr>().unwrap(),
        )
        .unwrap();
        f.dp.set_service(&frontend, 0, Settings::default(), &[100, 2, 1], None)
            .unwrap();
        for (s, was) in flows.iter().zip(&first) {
            let (a, out) = f.run(hook, &s.build());
            assert_eq!(a, Action::Pass);
            assert_eq!(out, s.with_dst(*was).build(), "{hook:?}: flow moved");
        }

        // Backend 1 (BACKENDS4[0]) goes: its flows move, the others stay.
        f.dp.set_service(&frontend, 0, Settings::default(), &[100, 2], None)
            .unwrap();
        f.dp.remove_backend(1).unwrap();
        let gone: SocketAddr = BACKENDS4[0].parse().unwrap();
        let mut moved = 0;
        for (s, was) in flows.iter().zip(&first) {
            let (a, out) = f.run(hook, &s.build());
            assert_eq!(a, Action::Pass);
            if *was == gone {
                moved += 1;
                assert_ne!(
                    out,
                    s.with_dst(gone).build(),
                    "{hook:?}: sent to a deleted backend"
                );
                let ok = ["10.244.1.23:8080", BACKENDS4[1]]
                    .iter()
                    .any(|b| out == s.with_dst(b.parse().unwrap()).build());
                assert!(ok, "{hook:?}: not rebalanced to a live backend");
            } else {
                assert_eq!(out, s.with_dst(*was).build(), "{hook:?}: flow moved");
            }
        }
        assert!(moved > 0, "no flow was on the removed backend");
    }
}

#[test]
fn hairpin_client_that_is_its_own_backend_is_source_natted_both_ways() {
    // A pod reaching its own Service may be picked as the backend. Its
    // packet must come in from the frontend address (or the pod would
    // answer itself directly, past the program), and the answer must go
    // back to the pod from the frontend.
    for hook in HOOKS {
        let mut f = Fixture::new();
        f.services(&[
            "10.96.0.30:80/tcp=10.244.1.10:8080",
            "10.96.0.30:80/udp=10.244.1.10:8080",
            "[fd00:96::30]:80/tcp=[fd00:244:1::10]:8080",
        ]);
        for (client, vip, backend) in [
            ("10.244.1.10:40000", "10.96.0.30:80", "10.244.1.10:8080"),
            (
                "[fd00:244:1::10]:40000",
                "[fd00:96::30]:80",
                "[fd00:244:1::10]:8080",
            ),
        ] {
            for mut spec in [Spec::tcp(client, vip), Spec::udp(client, vip)] {
                if spec.src.is_ipv6() && spec.proto == UDP {
                    continue; // no such frontend
                }
                let csums: &[Csum] = if hook == Hook::Xdp {
                    &[Csum::Full, Csum::Partial]
                } else {
                    &[Csum::Full]
                };
                for &csum in csums {
                    spec.src.set_port(spec.src.port() + 1); // a new flow each time
                    spec.csum = csum;
                    let backend: SocketAddr = backend.parse().unwrap();
                    let frontend_as_client = SocketAddr::new(spec.dst.ip(), spec.src.port());
                    let (a, out) = f.run(hook, &spec.build());
                    let want = Spec {
                        src: frontend_as_client,
                        dst: backend,
                        ..spec.clone()
                    }
                    .build();
                    assert_eq!(a, Action::Pass);
                    assert!(out == want, "{hook:?} {csum:?} in: {}", diff(&out, &want));

                    let reply = Spec {
                        src: backend,
                        dst: frontend_as_client,
                        ..spec.clone()
                    };
                    let (a, out) = f.run(hook, &reply.build());
                    let want = Spec {
                        src: spec.dst,
                        dst: spec.src,
                        ..spec.clone()
                    }
                    .build();
                    assert_eq!(a, Action::Pass);
                    assert!(out == want, "{hook:?} {csum:?} out: {}", diff(&out, &want));
                }
            }
        }
    }
}

/// `spec` with its last two payload bytes chosen so that its full L4
/// checksum equals its pseudo-header sum: the one full checksum that reads
/// like a partial one.
fn ambiguous(mut spec: Spec) -> Spec {
    let pseudo_sum = |s: &Spec| {
        Spec {
            csum: Csum::Partial,
            ..s.clone()
        }
        .build()
    };
    let field = |pkt: &[u8]| u16::from_be_bytes([pkt[14 + 20 + 16], pkt[14 + 20 + 17]]);
    for w in 0..=u16::MAX {
        let n = spec.payload.len();
        spec.payload[n - 2..].copy_from_slice(&w.to_be_bytes());
        if field(&spec.build()) == field(&pseudo_sum(&spec)) {
            return spec;
        }
    }
    unreachable!("some payload word always works");
}

#[test]
fn physical_uplinks_treat_every_checksum_as_full() {
    let mut f = fixture();
    let spec = ambiguous(Spec::tcp(CLIENT4, VIP4));
    // A physical NIC hands XDP full checksums only: this one is updated as
    // full, byte for byte right.
    f.dp.set_virtual_uplink(loopback(), false).unwrap();
    let (a, out) = f.run(Hook::Xdp, &spec.build());
    let backend = assert_dnat(Hook::Xdp, &spec, a, &out);
    // On a virtual uplink the same bytes read as a partial checksum (the
    // 1-in-65536 ambiguity xdp_rewrite documents), so it is updated as one.
    f.dp.set_virtual_uplink(loopback(), true).unwrap();
    let (_, out) = f.run(Hook::Xdp, &spec.build());
    assert_ne!(out, spec.with_dst(backend).build());
    assert_eq!(
        out,
        Spec {
            csum: Csum::Partial,
            ..spec.with_dst(backend)
        }
        .build()
    );
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend_until_it_expires() {
    use svc_agent::dataplane::{Frontend, Protocol, Settings};
    use svc_common::service_flags::AFFINITY;
    for hook in HOOKS {
        let mut f = Fixture::new();
        for (id, b) in [(1, BACKENDS4[0]), (2, BACKENDS4[1])] {
            f.dp.set_backend(id, b.parse::<std::net::SocketAddr>().unwrap())
                .unwrap();
        }
        let sticky = Settings {
            flags: AFFINITY,
            affinity_timeout_s: 1,
        };
        let fe = |a: &str| Frontend {
            addr: a.parse().unwrap(),
            proto: Protocol::Tcp,
        };
        f.dp.set_service(&fe("10.96.0.40:80"), 0, sticky, &[1, 2], None)
            .unwrap();
        // The same backends without affinity: shows where the hash alone
        // sends a flow (the hash ignores the frontend address).
        f.dp.set_service(&fe("10.96.0.41:80"), 1, Settings::default(), &[1, 2], None)
            .unwrap();
        let mut new_flow = |vip: &str, port: u16| {
            let mut s = Spec::tcp(CLIENT4, vip);
            s.src.set_port(port);
            let (a, out) = f.run(hook, &s.build());
            assert_dnat(hook, &s, a, &out)
        };

        let first = new_flow("10.96.0.40:80", 50000);
        for port in 50001..50033 {
            assert_eq!(
                new_flow("10.96.0.40:80", port),
                first,
                "{hook:?}: flow {port} left its client's backend"
            );
        }
        // A flow the hash alone would send elsewhere...
        let port = (51000..52000)
            .find(|&p| new_flow("10.96.0.41:80", p) != first)
            .expect("some flow hashes to the other backend");
        // ...still goes to the client's backend, until the affinity expires.
        let mut probe = port + 1000;
        while new_flow("10.96.0.41:80", probe) == first {
            probe += 1;
        }
        assert_eq!(new_flow("10.96.0.40:80", port), first, "{hook:?}");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_ne!(
            new_flow("10.96.0.40:80", probe),
            first,
            "{hook:?}: affinity outlived its timeout"
        );
    }
}

const NODE4: &str = "192.0.2.1";
const NODE6: &str = "2001:db8::1";

/// A NodePort whose only backend runs on another node, on TCP and UDP and
/// both families, and SNAT to the node's addresses with `ports`.
fn remote_fixture(ports: std::ops::RangeInclusive<u16>) -> Fixture {
    let mut f = Fixture::new();
    f.services(&[
        "192.0.2.1:30080/tcp=10.244.2.21:8080@remote",
        "192.0.2.1:30080/udp=10.244.2.21:8080@remote",
        "[2001:db8::1]:30080/tcp=[fd00:244:2::21]:8080@remote",
        "[2001:db8::1]:30080/udp=[fd00:244:2::21]:8080@remote",
    ]);
    f.dp.set_snat(
        Some(NODE4.parse().unwrap()),
        Some(NODE6.parse().unwrap()),
        ports,
    )
    .unwrap();
    f.dp.set_ct_timeouts(svc_common::CtTimeouts {
        tcp_closing_s: CLOSED_HOLD_S,
        ..Default::default()
    })
    .unwrap();
    f
}

/// How long a closed flow's SNAT port rests, here (the agent's default is
/// a minute).
const CLOSED_HOLD_S: u32 = 1;

fn remote_packets() -> Vec<Spec> {
    vec![
        Spec::tcp(CLIENT4, "192.0.2.1:30080"),
        Spec::udp(CLIENT4, "192.0.2.1:30080"),
        Spec::tcp(CLIENT6, "[2001:db8::1]:30080"),
        Spec::udp(CLIENT6, "[2001:db8::1]:30080"),
    ]
}

fn remote_backend(spec: &Spec) -> SocketAddr {
    if spec.dst.is_ipv4() {
        "10.244.2.21:8080".parse().unwrap()
    } else {
        "[fd00:244:2::21]:8080".parse().unwrap()
    }
}

/// Asserts `out` is `spec` sent to its remote backend from the node's
/// address and a port of `pool`; returns that source.
fn assert_snat(spec: &Spec, out: &[u8], pool: std::ops::RangeInclusive<u16>) -> SocketAddr {
    let node: std::net::IpAddr = if spec.dst.is_ipv4() { NODE4 } else { NODE6 }
        .parse()
        .unwrap();
    let to_backend = spec.with_dst(remote_backend(spec));
    for port in pool {
        let src = SocketAddr::new(node, port);
        if out == to_backend.with_src(src).build().as_slice() {
            return src;
        }
    }
    panic!(
        "{spec:?} not SNATed to {node} and a pool port: {}",
        diff(
            out,
            &to_backend.with_src(SocketAddr::new(node, 61000)).build()
        )
    );
}

#[test]
fn from_uplinks_remote_backends_are_snatted_and_their_replies_restored() {
    let pool = 61000..=61015;
    let mut f = remote_fixture(pool.clone());
    for spec in remote_packets() {
        let (a, out) = f.run(Hook::Xdp, &spec.build());
        assert_eq!(a, Action::Pass);
        let source = assert_snat(&spec, &out, pool.clone());
        // The same flow keeps its port.
        let (_, again) = f.run(Hook::Xdp, &spec.build());
        assert_eq!(assert_snat(&spec, &again, pool.clone()), source);
        // The backend answers the node; the reply goes back to the client
        // from the frontend, ports included.
        let reply = spec
            .with_dst(remote_backend(&spec))
            .with_src(source)
            .reply();
        for hook in HOOKS {
            let (a, out) = f.run(hook, &reply.build());
            let want = spec.reply().build();
            assert_eq!(a, Action::Pass);
            assert!(out == want, "{hook:?} reply: {}", diff(&out, &want));
        }
    }
    // From a pod (tcx), the same backend is reached with the pod's own
    // address: only traffic from outside the node needs SNAT.
    for mut spec in remote_packets() {
        spec.src = if spec.src.is_ipv4() {
            "10.244.1.10:41000"
        } else {
            "[fd00:244:1::10]:41000"
        }
        .parse()
        .unwrap();
        let (a, out) = f.run(Hook::Tc, &spec.build());
        let want = spec.with_dst(remote_backend(&spec)).build();
        assert_eq!(a, Action::Pass);
        assert!(out == want, "tc: {}", diff(&out, &want));
    }
}

#[test]
fn snat_ports_run_out_loudly_and_are_reused_once_flows_end() {
    let pool = 61000..=61001;
    let mut f = remote_fixture(pool.clone());
    let flow = |port: u16| {
        let mut s = Spec::tcp(CLIENT4, "192.0.2.1:30080");
        s.src.set_port(port);
        s
    };
    let mut sources = Vec::new();
    for port in [40001, 40002] {
        let (a, out) = f.run(Hook::Xdp, &flow(port).build());
        assert_eq!(a, Action::Pass);
        sources.push(assert_snat(&flow(port), &out, pool.clone()));
    }
    assert_ne!(sources[0], sources[1]);
    // Both ports are taken: a third flow is dropped and counted, never
    // sent out with a port another flow holds.
    let (a, _) = f.run(Hook::Xdp, &flow(40003).build());
    assert_eq!(a, Action::Drop);
    let drops = f.dp.drop_stats().unwrap();
    assert!(
        drops.contains(&(DropReason::SnatPortsExhausted, 1)),
        "{drops:?}"
    );
    // The backend closes the first flow (FIN); once the hold time has
    // passed, its port serves a new flow.
    let mut fin = flow(40001)
        .with_dst(remote_backend(&flow(40001)))
        .with_src(sources[0])
        .reply();
    fin.tcp_flags = FIN_ACK;
    assert_eq!(f.run(Hook::Xdp, &fin.build()).0, Action::Pass);
    std::thread::sleep(std::time::Duration::from_secs(u64::from(CLOSED_HOLD_S) + 1));
    let (a, out) = f.run(Hook::Xdp, &flow(40003).build());
    assert_eq!(a, Action::Pass);
    assert_eq!(assert_snat(&flow(40003), &out, pool.clone()), sources[0]);
    // The second flow, still open, keeps its port.
    let (_, out) = f.run(Hook::Xdp, &flow(40002).build());
    assert_eq!(assert_snat(&flow(40002), &out, pool), sources[1]);
}

#[test]
fn load_balancer_source_ranges_admit_only_their_clients() {
    let mut f = fixture();
    // VIP4 (service id 0, the first frontend) admits 192.0.2.0/28 only.
    let vip: svc_agent::dataplane::Frontend = svc_agent::dataplane::Frontend {
        addr: VIP4.parse().unwrap(),
        proto: svc_agent::dataplane::Protocol::Tcp,
    };
    f.dp.set_source_ranges(0, &[("192.0.2.0".parse().unwrap(), 28)], &[])
        .unwrap();
    let settings = svc_agent::dataplane::Settings {
        flags: svc_common::service_flags::SOURCE_RANGES,
        affinity_timeout_s: 0,
    };
    f.dp.set_service(&vip, 0, settings, &[1, 2], None).unwrap();
    for hook in HOOKS {
        let allowed = Spec::tcp(CLIENT4, VIP4); // 192.0.2.2
        let (a, out) = f.run(hook, &allowed.build());
        assert_dnat(hook, &allowed, a, &out);
        let denied = Spec::tcp("192.0.2.77:40000", VIP4);
        assert_eq!(f.run(hook, &denied.build()).0, Action::Drop, "{hook:?}");
    }
    let drops = f.dp.drop_stats().unwrap();
    assert!(
        drops.contains(&(DropReason::SourceRangeDenied, 2)),
        "{drops:?}"
    );
}

#[test]
fn a_fin_or_rst_marks_its_direction_closing_and_a_syn_reopens_it() {
    use svc_common::{CT_FORWARD, CT_REPLY, nat_flags::CLOSING};
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    for hook in HOOKS {
        let mut f = fixture();
        let closing = |f: &Fixture| -> Vec<(u8, bool)> {
            let mut v: Vec<(u8, bool)> =
                f.dp.conntrack()
                    .unwrap()
                    .iter()
                    .map(|(k, e)| (k.direction, e.flags & CLOSING != 0))
                    .collect();
            v.sort();
            v
        };
        let mut client = Spec::tcp(CLIENT4, VIP4);
        client.tcp_flags = SYN;
        let (a, out) = f.run(hook, &client.build());
        let backend = assert_dnat(hook, &client, a, &out);
        assert_eq!(closing(&f), [(CT_FORWARD, false), (CT_REPLY, false)]);
        // The backend resets: only its direction is closing.
        let mut reply = client.with_dst(backend).reply();
        reply.tcp_flags = RST;
        f.run(hook, &reply.build());
        assert_eq!(closing(&f), [(CT_FORWARD, false), (CT_REPLY, true)]);
        client.tcp_flags = FIN_ACK;
        f.run(hook, &client.build());
        assert_eq!(closing(&f), [(CT_FORWARD, true), (CT_REPLY, true)]);
        // The client reuses its port for a new connection.
        client.tcp_flags = SYN;
        f.run(hook, &client.build());
        assert_eq!(closing(&f), [(CT_FORWARD, false), (CT_REPLY, true)]);
        reply.tcp_flags = SYN | 0x10;
        f.run(hook, &reply.build());
        assert_eq!(closing(&f), [(CT_FORWARD, false), (CT_REPLY, false)]);
    }
}

// ICMP errors about translated flows: each quotes the packet it is about
// as the link that raised it saw it (translated), and must reach that
// packet's sender about the packet as it sent it.

/// Some router on the way (or the node itself), for errors raised there.
fn router(v6: bool) -> IpAddr {
    if v6 { "2001:db8::fe" } else { "192.0.2.254" }
        .parse()
        .unwrap()
}

/// The hooks an error may be seen at: from outside (XDP), from a pod (tc
/// ingress), from the node itself (tc egress).
const ICMP_HOOKS: [Hook; 3] = [Hook::Xdp, Hook::Tc, Hook::TcEgress];

/// Runs `err` through `hook`; asserts it leaves as `want`, byte for byte.
/// Only tc egress routes an error again when its destination changed
/// (a redirect, or a drop where the test's namespace has no route), so
/// there the verdict is `readdressed`'s to say.
fn assert_icmp(f: &mut Fixture, hook: Hook, err: &IcmpError, want: &IcmpError, readdressed: bool) {
    let (a, out) = f.run(hook, &err.build());
    let want_pkt = want.build();
    assert!(
        out == want_pkt,
        "{hook:?} {:?} {} -> {} about {:?} (quote {:?}): {}",
        err.kind,
        err.src,
        err.dst,
        err.about,
        err.quote,
        diff(&out, &want_pkt)
    );
    if hook == Hook::TcEgress && readdressed {
        assert_ne!(a, Action::Pass, "{hook:?}: readdressed but not rerouted");
    } else {
        assert_eq!(a, Action::Pass, "{hook:?} {err:?}");
    }
}

/// `err` quoting the whole packet (as Linux does), and only the IP header
/// and 8 bytes (all RFC 792 asks for; TCP's checksum is not in them).
fn both_quotes(err: IcmpError) -> [IcmpError; 2] {
    let minimal = err.minimal_quote();
    [
        err.clone(),
        IcmpError {
            quote: Some(minimal),
            ..err
        },
    ]
}

#[test]
fn errors_about_forward_packets_reach_the_client_about_what_it_sent() {
    for hook in ICMP_HOOKS {
        let mut f = fixture();
        for spec in client_packets() {
            let (a, out) = f.run(Hook::Tc, &spec.build());
            let backend = assert_dnat(Hook::Tc, &spec, a, &out);
            let v6 = spec.dst.is_ipv6();
            // Raised on the way (a router, the node forwarding into a
            // smaller MTU), or by the backend itself, which then appears
            // as the frontend.
            for (raiser, appears_as) in [(router(v6), router(v6)), (backend.ip(), spec.dst.ip())] {
                for kind in IcmpKind::ALL {
                    let about = spec.with_dst(backend);
                    for err in both_quotes(IcmpError::new(kind, raiser, spec.src.ip(), about)) {
                        let want = IcmpError {
                            src: appears_as,
                            about: spec.clone(),
                            ..err.clone()
                        };
                        assert_icmp(&mut f, hook, &err, &want, false);
                    }
                }
            }
        }
    }
}

#[test]
fn errors_about_replies_reach_the_backend_about_what_it_sent() {
    for hook in ICMP_HOOKS {
        let mut f = fixture();
        for spec in client_packets() {
            let (a, out) = f.run(Hook::Tc, &spec.build());
            let backend = assert_dnat(Hook::Tc, &spec, a, &out);
            let sent = spec.with_dst(backend).reply();
            let v6 = spec.dst.is_ipv6();
            // The reply came from the frontend: the error goes there, and
            // must go to the backend instead.
            for raiser in [router(v6), spec.src.ip()] {
                for kind in IcmpKind::ALL {
                    let about = spec.reply();
                    for err in both_quotes(IcmpError::new(kind, raiser, spec.dst.ip(), about)) {
                        let want = IcmpError {
                            dst: backend.ip(),
                            about: sent.clone(),
                            ..err.clone()
                        };
                        assert_icmp(&mut f, hook, &err, &want, true);
                    }
                }
            }
        }
    }
}

#[test]
fn errors_about_snatted_flows_are_translated_both_ways() {
    let pool = 61000..=61015;
    let mut f = remote_fixture(pool.clone());
    for spec in remote_packets() {
        let (a, out) = f.run(Hook::Xdp, &spec.build());
        assert_eq!(a, Action::Pass);
        let source = assert_snat(&spec, &out, pool.clone());
        let backend = remote_backend(&spec);
        let sent = spec.with_dst(backend).with_src(source);
        let v6 = spec.dst.is_ipv6();
        // Both arrive from outside (XDP); tc ingress runs the same code.
        for hook in HOOKS {
            for kind in IcmpKind::ALL {
                // About the client's packet, on its way to the remote
                // backend from the node's address: back to the client.
                for (raiser, appears_as) in
                    [(router(v6), router(v6)), (backend.ip(), spec.dst.ip())]
                {
                    let err = IcmpError::new(kind, raiser, source.ip(), sent.clone());
                    for err in both_quotes(err) {
                        let want = IcmpError {
                            src: appears_as,
                            dst: spec.src.ip(),
                            about: spec.clone(),
                            ..err.clone()
                        };
                        assert_icmp(&mut f, hook, &err, &want, false);
                    }
                }
                // About a reply, raised by the client (or a router) and
                // sent to the frontend: to the backend, about what it
                // sent to the node, the client appearing as the node.
                for (raiser, appears_as) in [(router(v6), router(v6)), (spec.src.ip(), source.ip())]
                {
                    let err = IcmpError::new(kind, raiser, spec.dst.ip(), spec.reply());
                    for err in both_quotes(err) {
                        let want = IcmpError {
                            src: appears_as,
                            dst: backend.ip(),
                            about: sent.reply(),
                            ..err.clone()
                        };
                        assert_icmp(&mut f, hook, &err, &want, true);
                    }
                }
            }
        }
    }
}

#[test]
fn quoted_ipv4_options_and_udp_without_checksum_are_handled() {
    for hook in ICMP_HOOKS {
        let mut f = fixture();
        let mut with_options = Spec::tcp(CLIENT4, VIP4);
        with_options.ip_options = vec![1, 1, 0x88, 6, 0xab, 0xcd, 0xef, 0];
        let no_checksum = Spec {
            csum: Csum::Zero,
            ..Spec::udp("192.0.2.3:40001", VIP4)
        };
        for spec in [with_options, no_checksum] {
            let (a, out) = f.run(Hook::Tc, &spec.build());
            let backend = assert_dnat(Hook::Tc, &spec, a, &out);
            let about = spec.with_dst(backend);
            let err = IcmpError::new(IcmpKind::ALL[0], router(false), spec.src.ip(), about);
            for err in both_quotes(err) {
                let want = IcmpError {
                    about: spec.clone(),
                    ..err.clone()
                };
                assert_icmp(&mut f, hook, &err, &want, false);
            }
        }
    }
}

#[test]
fn other_icmp_passes_unchanged() {
    for hook in ICMP_HOOKS {
        let mut f = fixture();
        let mut packets = Vec::new();
        for spec in client_packets() {
            let (a, out) = f.run(Hook::Tc, &spec.build());
            let backend = assert_dnat(Hook::Tc, &spec, a, &out);
            let v6 = spec.dst.is_ipv6();
            let about = spec.with_dst(backend);
            let err = IcmpError::new(IcmpKind::ALL[0], router(v6), spec.src.ip(), about.clone());
            // An echo request carrying the same bytes is no error.
            packets.push(IcmpError {
                kind: IcmpKind::Echo,
                ..err.clone()
            });
            // A quote too short to hold the ports.
            packets.push(IcmpError {
                quote: Some(err.minimal_quote() - 6),
                ..err.clone()
            });
            // About a flow nobody translated (another client port).
            let mut stranger = about.clone();
            stranger.src.set_port(stranger.src.port() + 1);
            packets.push(IcmpError {
                about: stranger,
                ..err.clone()
            });
            // About a packet sent to the frontend untranslated.
            packets.push(IcmpError {
                about: spec.clone(),
                ..err.clone()
            });
        }
        // About a fragment (no ports in it to go by).
        let fragment = Spec {
            frag: Frag::V4Later,
            ..Spec::udp(CLIENT4, BACKENDS4[0])
        };
        packets.push(IcmpError::new(
            IcmpKind::TimeExceeded,
            router(false),
            fragment.src.ip(),
            fragment,
        ));
        for err in packets {
            let pkt = err.build();
            assert_eq!(f.run(hook, &pkt), (Action::Pass, pkt), "{hook:?} {err:?}");
        }
    }
}
