//! Services without endpoints refuse new connections, end to end, as
//! kube-proxy's REJECT makes them (the Kubernetes e2e check "should be
//! rejected when no endpoints exist"): a pod's curl to the ClusterIP fails
//! at once with "connection refused" (a TCP reset from the tc program on
//! its veth), a connected UDP socket gets ECONNREFUSED (an ICMP port
//! unreachable), and so does a client outside the cluster through a
//! NodePort or a load-balancer IP (from the XDP program on the node's
//! uplink). An `externalTrafficPolicy: Local` NodePort on a node without
//! a local endpoint drops instead, as kube-proxy's does. Once an endpoint
//! appears, the service answers.
//!
//! Each scenario runs with default offloads (pods send partial
//! checksums), with tx checksum offload off everywhere (every receiver
//! verifies the refusal's checksums), and off on the node's ends only
//! (a partial-checksum skb's reply must not be "completed" on its way to
//! the pod).
use std::{net::IpAddr, time::Duration};

use k8s_openapi::api::core::v1::Service;
use serde_json::json;
use tests::{
    multi_node::{MultiNodeCluster, web_service},
    netns::NetNs,
    sandbox::{UPLINK, curl_try, http_get, udp_ask, udp_connected},
};

const PORT: u16 = tests::multi_node::WEB_PORT;
/// Curl's exit codes: could not connect, timed out.
const NOT_CONNECTED: i32 = 7;
const TIMED_OUT: i32 = 28;
/// Refused "at once": well under any timeout a client would use.
const AT_ONCE: Duration = Duration::from_secs(1);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `web_service` as a LoadBalancer with ingress IPs `lb`; `spec` merged in.
fn service(name: &str, n: u8, node_port: u16, spec: serde_json::Value, lb: &[&str]) -> Service {
    let mut spec = spec;
    spec["type"] = json!("LoadBalancer");
    let ingress: Vec<_> = lb.iter().map(|ip| json!({"ip": ip})).collect();
    web_service(
        name,
        n,
        node_port,
        spec,
        json!({"loadBalancer": {"ingress": ingress}}),
    )
}

/// Asserts that `who` is refused at once at `addr`: TCP `tcp_port` with
/// "connection refused", UDP `udp_port` with ECONNREFUSED.
fn assert_refused(who: &str, ns: &NetNs, addr: &str, tcp_port: u16, udp_port: u16) {
    let curl = curl_try(ns, ip(addr), tcp_port, Duration::from_secs(5)).unwrap();
    let refused = curl.code == NOT_CONNECTED && curl.log.contains("failed: Connection refused");
    assert!(refused, "{who}: curl {addr}:{tcp_port}: {curl:?}");
    assert!(
        curl.took < AT_ONCE,
        "{who}: curl {addr}:{tcp_port}: {curl:?}"
    );
    let (answer, took) = udp_connected(ns, ip(addr), udp_port, Duration::from_secs(3)).unwrap();
    assert_eq!(answer, "ECONNREFUSED", "{who}: UDP {addr}:{udp_port}");
    assert!(took < AT_ONCE, "{who}: UDP {addr}:{udp_port} took {took:?}");
}

enum Offload {
    Default,
    OffEverywhere,
    OffOnNodeSide,
}

fn scenario(tag: &str, offload: Offload) {
    let mut c = MultiNodeCluster::new(tag).expect("sandbox (needs root)");
    c.fabric.add_pod(0, "client", 10).unwrap();
    c.add_pod(1, "web-b", 22, &[PORT]).unwrap();
    c.start_agents(&[]).unwrap();
    match offload {
        Offload::Default => {}
        Offload::OffEverywhere => c.fabric.set_tx_checksum(false).unwrap(),
        Offload::OffOnNodeSide => {
            let node = c.node(0);
            for p in &node.pods {
                node.ns
                    .run(&["ethtool", "-K", &p.node_veth, "tx", "off"])
                    .unwrap();
            }
            node.ns
                .run(&["ethtool", "-K", UPLINK, "tx", "off"])
                .unwrap();
        }
    }
    // The refusals from outside leave by XDP_TX: the switch must take them.
    c.fabric
        .let_ports_take_xdp_frames(c.agent(0).dir())
        .unwrap();

    // No endpoints at all; its load-balancer IPs lead to node-1.
    let lb = ["203.0.113.70", "2001:db8:ff::70"];
    c.api()
        .apply(&service("empty", 70, 30130, json!({}), &lb))
        .unwrap();
    for prefix in ["203.0.113.70/32", "2001:db8:ff::70/128"] {
        c.fabric.route_to_node(prefix, 0).unwrap();
    }
    // externalTrafficPolicy Local, its only endpoint on node-2.
    c.api()
        .apply(&service(
            "local",
            71,
            30140,
            json!({"externalTrafficPolicy": "Local"}),
            &[],
        ))
        .unwrap();
    c.publish_slices("local", &[(1, 22)]);
    c.wait_programmed(&[0], "203.0.113.70:80/TCP", 0);
    c.wait_programmed(&[0], "10.96.0.71:80/TCP", 1);

    let client = &c.pod("client").ns;
    let outside = &c.fabric.external;
    // Who asks, from where, at which address, TCP and UDP port.
    let ways_in = |cluster_ip, node_ip, lb_ip| {
        [
            ("pod, ClusterIP", client, cluster_ip, 80, 53),
            ("outside, NodePort", outside, node_ip, 30130, 30131),
            ("outside, load-balancer IP", outside, lb_ip, 80, 53),
        ]
    };
    let families = [
        ("10.96.0.70", "192.0.2.1", lb[0]),
        ("fd00:96::70", "2001:db8::1", lb[1]),
    ];
    for (cluster_ip, node_ip, lb_ip) in families {
        for (who, ns, addr, tcp_port, udp_port) in ways_in(cluster_ip, node_ip, lb_ip) {
            assert_refused(who, ns, addr, tcp_port, udp_port);
        }
        // Endpoints elsewhere, none here, Local: dropped, not refused.
        let curl = curl_try(outside, ip(node_ip), 30140, Duration::from_secs(2)).unwrap();
        assert_eq!(
            curl.code, TIMED_OUT,
            "Local NodePort on {node_ip}: {curl:?}"
        );
        let (answer, _) =
            udp_connected(outside, ip(node_ip), 30141, Duration::from_secs(1)).unwrap();
        assert_eq!(answer, "timeout", "Local NodePort on {node_ip}, UDP");
    }
    // Node-1 refused six packets per family (one SYN, one datagram per
    // way in), and says so.
    let (_, metrics) = c.agent(0).node_get(10249, "/metrics").unwrap();
    let rejected = metrics
        .lines()
        .find(|l| l.contains("reason=\"rejected\""))
        .unwrap_or_default();
    assert!(rejected.ends_with(" 12"), "{rejected}");

    // An endpoint appears: the service answers, from inside and out.
    c.publish_slices("empty", &[(1, 22)]);
    c.wait_programmed(&[0], "203.0.113.70:80/TCP", 1);
    for (cluster_ip, node_ip, lb_ip) in families {
        for (who, ns, addr, tcp_port, udp_port) in ways_in(cluster_ip, node_ip, lb_ip) {
            let tcp = http_get(ns, ip(addr), tcp_port);
            assert_eq!(tcp.as_deref().ok(), Some("web-b"), "{who} {addr}: {tcp:?}");
            let udp = udp_ask(ns, ip(addr), udp_port);
            assert_eq!(udp.as_deref().ok(), Some("web-b"), "{who} {addr}: {udp:?}");
        }
    }
}

#[test]
fn services_without_endpoints_refuse_with_default_offloads() {
    scenario("rej-dflt", Offload::Default);
}

#[test]
fn services_without_endpoints_refuse_with_tx_checksum_off_everywhere() {
    scenario("rej-csoff", Offload::OffEverywhere);
}

#[test]
fn services_without_endpoints_refuse_with_tx_checksum_off_on_node_side() {
    scenario("rej-nodeoff", Offload::OffOnNodeSide);
}
