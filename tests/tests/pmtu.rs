//! Path MTU discovery through a ClusterIP, end to end.
//!
//! One link on the way between a client pod and its backend has a smaller
//! MTU than both pods' own interfaces, only on the node's side of a veth,
//! so the MSS both ends announce still allows full-size segments. The node
//! forwards them into that link, cannot, and sends "fragmentation needed"
//! (IPv4) or "packet too big" (IPv6) to the sender, quoting the packet as
//! translated. Only once the egress program has translated the error back
//! does the sender recognise its own connection, lower its path MTU and
//! get the transfer through; otherwise the transfer stalls (a black hole).
//!
//! * Upload (client -> backend), the small MTU on the backend's link: the
//!   error is about a forward packet, goes to the client and leaves
//!   through the client's veth. The client's route cache then holds the
//!   smaller MTU for the ClusterIP.
//! * Download (backend -> client), the small MTU on the client's link: the
//!   error is about a reply, so it is addressed to the ClusterIP (its
//!   source after reverse NAT) and leaves by the node's default route,
//!   the uplink, where the egress program readdresses it to the backend
//!   and routes it again. The backend's route cache then holds the
//!   smaller MTU for the client.
//!
//! Each runs with default offloads (TSO: the node forwards GSO packets
//! and checks their segments' size) and with tx checksum offload off on
//! every veth (no GSO, every checksum verified).
use std::net::IpAddr;

use svc_agent::dataplane::Dataplane;
use tests::{
    netns::NetNs,
    sandbox::{Bulk, EXTERNAL_V4, EXTERNAL_V6, Sandbox, bulk_transfer},
    static_services::{self, StaticService},
};

const VIP4: &str = "10.96.0.50";
const VIP6: &str = "fd00:96::50";
const PORT: u16 = 80;
const BULK_PORT: u16 = 9000;
/// The small link's MTU: IPv6's minimum, so one value serves both.
const SMALL_MTU: u32 = 1280;
/// Enough for thousands of full-size segments.
const BYTES: u64 = 8 << 20;

/// A node with a client pod (10) and a backend pod (21) serving bulk
/// transfers behind a dual-stack ClusterIP, the dataplane attached, and a
/// default route on the node (through the external host), as a node has.
fn cluster(tag: &str, tx_checksum: bool) -> (Sandbox, Dataplane) {
    let mut sb = Sandbox::new(tag).expect("building the sandbox (needs root)");
    sb.add_pod("client", 10).unwrap();
    sb.add_pod("backend", 21)
        .unwrap()
        .serve_bulk(BULK_PORT)
        .unwrap();
    sb.node
        .run(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &EXTERNAL_V4.to_string(),
        ])
        .unwrap();
    sb.node
        .run(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &EXTERNAL_V6.to_string(),
        ])
        .unwrap();
    if !tx_checksum {
        sb.set_tx_checksum(false).unwrap();
    }
    let mut dp = sb.attach_dataplane().unwrap();
    let specs: Vec<StaticService> = [
        format!("{VIP4}:{PORT}/tcp=10.244.1.21:{BULK_PORT}"),
        format!("[{VIP6}]:{PORT}/tcp=[fd00:244:1::21]:{BULK_PORT}"),
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    static_services::apply(&mut dp, &specs).unwrap();
    (sb, dp)
}

/// The path MTU `ns` has learned towards `dst`, if any (`ip route get`
/// shows a learned one as "mtu N" on the cached route).
fn learned_mtu(ns: &NetNs, dst: IpAddr) -> Option<u32> {
    let family = if dst.is_ipv6() { "-6" } else { "-4" };
    let out = ns
        .run(&["ip", family, "route", "get", &dst.to_string()])
        .unwrap();
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "mtu")
        .map(|w| w[1].parse().unwrap())
}

fn upload_through_a_smaller_mtu_on_the_backends_link(tag: &str, tx_checksum: bool) {
    let (sb, _dp) = cluster(tag, tx_checksum);
    let backend_veth = &sb.pod("backend").node_veth;
    sb.node
        .run(&[
            "ip",
            "link",
            "set",
            backend_veth,
            "mtu",
            &SMALL_MTU.to_string(),
        ])
        .unwrap();
    let client = &sb.pod("client").ns;
    for vip in [VIP4, VIP6] {
        let vip: IpAddr = vip.parse().unwrap();
        assert_eq!(learned_mtu(client, vip), None, "{vip}: before");
        let got = bulk_transfer(client, Bulk::Put, vip, PORT, BYTES)
            .unwrap_or_else(|e| panic!("upload to {vip}: {e:#}"));
        assert_eq!(got, BYTES, "upload to {vip}");
        assert_eq!(learned_mtu(client, vip), Some(SMALL_MTU), "{vip}: after");
    }
}

fn download_through_a_smaller_mtu_on_the_clients_link(tag: &str, tx_checksum: bool) {
    let (sb, _dp) = cluster(tag, tx_checksum);
    let client = sb.pod("client");
    sb.node
        .run(&[
            "ip",
            "link",
            "set",
            &client.node_veth,
            "mtu",
            &SMALL_MTU.to_string(),
        ])
        .unwrap();
    let backend = &sb.pod("backend").ns;
    for (vip, client_addr) in [
        (VIP4, IpAddr::from(client.ipv4)),
        (VIP6, IpAddr::from(client.ipv6)),
    ] {
        let vip: IpAddr = vip.parse().unwrap();
        assert_eq!(learned_mtu(backend, client_addr), None, "{vip}: before");
        let got = bulk_transfer(&client.ns, Bulk::Get, vip, PORT, BYTES)
            .unwrap_or_else(|e| panic!("download from {vip}: {e:#}"));
        assert_eq!(got, BYTES, "download from {vip}");
        assert_eq!(
            learned_mtu(backend, client_addr),
            Some(SMALL_MTU),
            "{vip}: after"
        );
    }
}

#[test]
fn upload_learns_the_path_mtu_with_default_offloads() {
    upload_through_a_smaller_mtu_on_the_backends_link("pmtu-up", true);
}

#[test]
fn upload_learns_the_path_mtu_with_tx_checksum_off() {
    upload_through_a_smaller_mtu_on_the_backends_link("pmtu-upc", false);
}

#[test]
fn download_learns_the_path_mtu_with_default_offloads() {
    download_through_a_smaller_mtu_on_the_clients_link("pmtu-down", true);
}

#[test]
fn download_learns_the_path_mtu_with_tx_checksum_off() {
    download_through_a_smaller_mtu_on_the_clients_link("pmtu-downc", false);
}
