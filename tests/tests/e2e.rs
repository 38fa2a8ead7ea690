//! End to end, in network namespaces: real clients, real servers, the
//! programs attached where the agent attaches them.
//!
//! A client pod reaches the ClusterIP through the tc program on its veth;
//! an external host reaches it through the XDP program on the node's
//! uplink. Both must get answers from both backends over TCP (HTTP with
//! curl) and UDP (a Python client), on IPv4 and IPv6.
//!
//! Checksum offload decides what a wrong checksum does, so each scenario
//! runs three ways:
//! * default offloads: senders leave partial checksums (CHECKSUM_PARTIAL);
//! * tx checksum off on every veth: every packet carries a full checksum
//!   and every receiver verifies it, so a bad update is a dropped packet;
//! * tx checksum off on the node side only: clients still send partial
//!   checksums, which the node completes on the way out, so a bad update
//!   of a *partial* checksum is a dropped packet too.
use std::{collections::BTreeSet, net::IpAddr};

use anyhow::Result;
use svc_agent::dataplane::Dataplane;
use tests::{
    netns::NetNs,
    sandbox::{Sandbox, UPLINK, http_get, udp_ask},
    static_services::{self, StaticService},
};

const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";
const PORT: u16 = 80;
/// Served by the client pod itself: a pod reaching its own Service.
const HAIRPIN_VIP4: &str = "10.96.0.30";
const HAIRPIN_VIP6: &str = "fd00:96::30";
const REQUESTS: usize = 16;

/// A node with a client pod and two backend pods, the dataplane attached
/// and a dual-stack TCP+UDP ClusterIP pointing at the backends' port 8080.
fn cluster(tag: &str) -> Result<(Sandbox, Dataplane)> {
    let mut sb = Sandbox::new(tag)?;
    // The client serves too: it is the only backend of the hairpin VIP.
    sb.add_pod("client", 10)?.serve(8080)?;
    sb.add_pod("backend-a", 21)?.serve(8080)?;
    sb.add_pod("backend-b", 22)?.serve(8080)?;
    let mut dp = sb.attach_dataplane()?;
    let specs: Vec<StaticService> = [
        format!("{VIP4}:{PORT}/tcp=10.244.1.21:8080,10.244.1.22:8080"),
        format!("{VIP4}:{PORT}/udp=10.244.1.21:8080,10.244.1.22:8080"),
        format!("[{VIP6}]:{PORT}/tcp=[fd00:244:1::21]:8080,[fd00:244:1::22]:8080"),
        format!("[{VIP6}]:{PORT}/udp=[fd00:244:1::21]:8080,[fd00:244:1::22]:8080"),
        format!("{HAIRPIN_VIP4}:{PORT}/tcp=10.244.1.10:8080"),
        format!("{HAIRPIN_VIP4}:{PORT}/udp=10.244.1.10:8080"),
        format!("[{HAIRPIN_VIP6}]:{PORT}/tcp=[fd00:244:1::10]:8080"),
    ]
    .iter()
    .map(|s| s.parse())
    .collect::<Result<_>>()?;
    static_services::apply(&mut dp, &specs)?;
    Ok((sb, dp))
}

/// Sends `REQUESTS` TCP and UDP requests to each VIP from `client`; every
/// one must be answered, and both backends must answer.
fn reach_both_backends(who: &str, client: &NetNs) {
    for vip in [VIP4, VIP6] {
        let vip: IpAddr = vip.parse().unwrap();
        for (proto, ask) in [
            ("tcp", http_get as fn(&NetNs, IpAddr, u16) -> Result<String>),
            ("udp", udp_ask),
        ] {
            let mut answered = BTreeSet::new();
            for i in 0..REQUESTS {
                match ask(client, vip, PORT) {
                    Ok(name) => {
                        answered.insert(name);
                    }
                    Err(e) => panic!("{who} -> {vip}:{PORT}/{proto} request {i} failed: {e:#}"),
                }
            }
            let want: BTreeSet<String> = ["backend-a", "backend-b"].map(String::from).into();
            assert_eq!(answered, want, "{who} -> {vip}:{PORT}/{proto}");
        }
    }
}

fn scenario(tag: &str, offload: Offload) {
    let (sb, dp) = cluster(tag).expect("building the sandbox (needs root)");
    match offload {
        Offload::Default => {}
        Offload::OffEverywhere => sb.set_tx_checksum(false).unwrap(),
        Offload::OffOnNodeSide => {
            for p in &sb.pods {
                sb.node
                    .run(&["ethtool", "-K", &p.node_veth, "tx", "off"])
                    .unwrap();
            }
            sb.node
                .run(&["ethtool", "-K", UPLINK, "tx", "off"])
                .unwrap();
        }
    }
    reach_both_backends("client pod (tcx)", &sb.pod("client").ns);
    reach_both_backends("external host (XDP)", &sb.external);
    let client = &sb.pod("client").ns;
    for (vip, udp) in [
        (HAIRPIN_VIP4, false),
        (HAIRPIN_VIP4, true),
        (HAIRPIN_VIP6, false),
    ] {
        let vip: IpAddr = vip.parse().unwrap();
        for i in 0..4 {
            let answer = if udp {
                udp_ask(client, vip, PORT)
            } else {
                http_get(client, vip, PORT)
            };
            let answer =
                answer.unwrap_or_else(|e| panic!("hairpin {vip} (udp: {udp}) request {i}: {e:#}"));
            assert_eq!(answer, "client");
        }
    }

    // Every request was translated, none dropped by the programs.
    for (reason, n) in dp.drop_stats().unwrap() {
        assert_eq!(n, 0, "drops for {}", reason.name());
    }
    // Seven frontends, service ids 0..7 (see `cluster`), all used.
    for id in 0..7 {
        let s = dp.service_stats(id).unwrap();
        assert!(s.packets > 0 && s.reply_packets > 0, "service {id}: {s:?}");
    }
}

enum Offload {
    Default,
    OffEverywhere,
    OffOnNodeSide,
}

#[test]
fn clusterip_with_default_offloads() {
    scenario("e2e-dflt", Offload::Default);
}

#[test]
fn clusterip_with_tx_checksum_off_everywhere() {
    scenario("e2e-csoff", Offload::OffEverywhere);
}

#[test]
fn clusterip_with_tx_checksum_off_on_node_side() {
    scenario("e2e-nodeoff", Offload::OffOnNodeSide);
}
