//! Traffic from outside the cluster, end to end on two nodes: NodePorts,
//! LoadBalancer ingress IPs and externalIPs, with both external traffic
//! policies, health check node ports, loadBalancerSourceRanges and the
//! SNAT port pool. A real agent per node watches one API server; the
//! outside client sits behind a router that knows only the nodes (and the
//! prefixes announced to it, as a load balancer or BGP would).
use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use serde_json::{Value, json};
use tests::{
    fabric::{EXTERNAL_V4, EXTERNAL_V6},
    multi_node::{MultiNodeCluster, web_service},
    netns::NetNs,
    sandbox::{self, http_get, http_get_path},
};

const PORT: u16 = tests::multi_node::WEB_PORT;
const NODE1_V4: &str = "192.0.2.1";
const NODE1_V6: &str = "2001:db8::1";
const NODE2_V4: &str = "192.0.2.2";
const NODE2_V6: &str = "2001:db8::2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A two-node cluster with pod `web-a` on node-1 (10.244.1.21) and
/// `web-b` on node-2 (10.244.2.22), both serving 8080 (TCP and UDP), the
/// agents running with `extra_args`.
fn cluster(tag: &str, extra_args: &[&str]) -> MultiNodeCluster {
    let mut c = MultiNodeCluster::new(tag).expect("sandbox (needs root)");
    c.add_pod(0, "web-a", 21, &[PORT]).unwrap();
    c.add_pod(1, "web-b", 22, &[PORT]).unwrap();
    c.start_agents(extra_args).unwrap();
    c
}

/// Who answers `tries` requests from outside; every request must succeed.
fn answers(ns: &NetNs, addr: &str, port: u16, udp: bool, tries: usize) -> BTreeSet<String> {
    sandbox::answers(ns, ip(addr), port, udp, tries)
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// With random source ports, 16 requests all land on one of two backends
/// once in 2^15 runs.
const TRIES: usize = 16;

fn from_outside_every_way_in_reaches_backends_on_both_nodes(tag: &str, tx_checksum: bool) {
    let c = cluster(tag, &[]);
    if !tx_checksum {
        c.fabric.set_tx_checksum(false).unwrap();
    }
    let svc = web_service(
        "web",
        10,
        30080,
        json!({"type": "LoadBalancer", "externalIPs": ["203.0.113.20", "2001:db8:ff::20"]}),
        json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}, {"ip": "2001:db8:ff::10"}]}}),
    );
    c.api().apply(&svc).unwrap();
    c.publish_slices("web", &[(0, 21), (1, 22)]);
    // The load balancer's IPs lead to node-1, the external IPs to node-2.
    for (prefix, node) in [
        ("203.0.113.10/32", 0),
        ("2001:db8:ff::10/128", 0),
        ("203.0.113.20/32", 1),
        ("2001:db8:ff::20/128", 1),
    ] {
        c.fabric.route_to_node(prefix, node).unwrap();
    }
    c.wait_programmed(&[0, 1], "203.0.113.20:80/TCP", 2);

    let outside = &c.fabric.external;
    let both = set(&["web-a", "web-b"]);
    for node in [NODE1_V4, NODE1_V6, NODE2_V4, NODE2_V6] {
        assert_eq!(answers(outside, node, 30080, false, TRIES), both, "{node}");
        assert_eq!(
            answers(outside, node, 30081, true, TRIES),
            both,
            "{node} UDP"
        );
    }
    for lb in [
        "203.0.113.10",
        "2001:db8:ff::10",
        "203.0.113.20",
        "2001:db8:ff::20",
    ] {
        assert_eq!(answers(outside, lb, 80, false, TRIES), both, "{lb}");
        assert_eq!(answers(outside, lb, 53, true, TRIES), both, "{lb} UDP");
    }
    // Through node-1: its own pod sees the client, node-2's sees node-1
    // (SNAT, so the reply comes back through node-1).
    for (node, client) in [
        (NODE1_V4, EXTERNAL_V4.to_string()),
        (NODE1_V6, EXTERNAL_V6.to_string()),
    ] {
        let seen: BTreeSet<String> = (0..TRIES)
            .map(|_| http_get_path(outside, ip(node), 30080, "/client").unwrap())
            .collect();
        assert_eq!(seen, set(&[&client, node]), "through {node}");
    }
}

#[test]
fn from_outside_every_way_in_reaches_backends_on_both_nodes_with_default_offloads() {
    from_outside_every_way_in_reaches_backends_on_both_nodes("np-all", true);
}

#[test]
fn from_outside_every_way_in_reaches_backends_on_both_nodes_with_tx_checksum_off() {
    from_outside_every_way_in_reaches_backends_on_both_nodes("np-all-csum", false);
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_health_checks_tell_nodes_apart() {
    let c = cluster("np-local", &[]);
    let svc = web_service(
        "local",
        30,
        30090,
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32100}),
        json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.30"}, {"ip": "2001:db8:ff::30"}]}}),
    );
    c.api().apply(&svc).unwrap();
    // Its only endpoint runs on node-2, where the load balancer sends.
    c.publish_slices("local", &[(1, 22)]);
    c.fabric.route_to_node("203.0.113.30/32", 1).unwrap();
    c.fabric.route_to_node("2001:db8:ff::30/128", 1).unwrap();
    c.wait_programmed(&[0, 1], "10.96.0.30:80/TCP", 1);

    let outside = &c.fabric.external;
    for (lb, node2, client) in [
        ("203.0.113.30", NODE2_V4, EXTERNAL_V4.to_string()),
        ("2001:db8:ff::30", NODE2_V6, EXTERNAL_V6.to_string()),
    ] {
        assert_eq!(answers(outside, lb, 80, false, 4), set(&["web-b"]));
        // The pod sees the client itself.
        assert_eq!(
            http_get_path(outside, ip(lb), 80, "/client").unwrap(),
            client
        );
        assert_eq!(
            http_get_path(outside, ip(node2), 30090, "/client").unwrap(),
            client
        );
    }
    // Node-1 has no endpoint of its own: its NodePort drops.
    for node1 in [NODE1_V4, NODE1_V6] {
        let r = http_get(outside, ip(node1), 30090);
        assert!(r.is_err(), "node-1 answered: {r:?}");
    }
    // ... and says so on the health check node port, as kube-proxy does.
    let health = |node: &str| -> (u16, Value) {
        let url = format!("http://{}/", std::net::SocketAddr::new(ip(node), 32100));
        let out = outside
            .run(&[
                "curl",
                "-sS",
                "--max-time",
                "3",
                "-w",
                "\n%{http_code}",
                &url,
            ])
            .unwrap();
        let (body, code) = out.trim_end().rsplit_once('\n').unwrap();
        (code.parse().unwrap(), serde_json::from_str(body).unwrap())
    };
    let (code, body) = health(NODE2_V4);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["localEndpoints"], 1);
    assert_eq!(body["service"]["name"], "local");
    let (code, body) = health(NODE1_V4);
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["localEndpoints"], 0);
}

#[test]
fn load_balancer_source_ranges_allow_and_deny() {
    let c = cluster("np-ranges", &[]);
    let with_ranges = |ranges: &[&str]| {
        web_service(
            "ranged",
            40,
            30100,
            json!({"type": "LoadBalancer", "loadBalancerSourceRanges": ranges}),
            json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.40"}, {"ip": "2001:db8:ff::40"}]}}),
        )
    };
    c.api()
        .apply(&with_ranges(&["198.51.100.0/30", "2001:db8:1::/64"]))
        .unwrap();
    c.publish_slices("ranged", &[(0, 21), (1, 22)]);
    c.fabric.route_to_node("203.0.113.40/32", 0).unwrap();
    c.fabric.route_to_node("2001:db8:ff::40/128", 0).unwrap();
    c.wait_programmed(&[0, 1], "203.0.113.40:80/TCP", 2);
    let outside = &c.fabric.external;
    let both = set(&["web-a", "web-b"]);
    for lb in ["203.0.113.40", "2001:db8:ff::40"] {
        assert_eq!(answers(outside, lb, 80, false, TRIES), both, "{lb}");
    }

    // The client is no longer in the ranges.
    c.api()
        .apply(&with_ranges(&["10.0.0.0/8", "fd00::/8"]))
        .unwrap();
    c.wait_for(
        "the load-balancer IPs to refuse the client",
        Duration::from_secs(10),
        || {
            ["203.0.113.40", "2001:db8:ff::40"]
                .iter()
                .all(|lb| http_get(outside, ip(lb), 80).is_err())
        },
    )
    .unwrap();
    // The ranges guard the load balancer's IPs only (as in kube-proxy).
    assert_eq!(answers(outside, NODE1_V4, 30100, false, TRIES), both);
}

#[test]
fn snat_ports_are_reused_across_many_short_connections() {
    // A small pool that rests closed flows' ports for a second: 40
    // connections over 16 ports need each port more than once.
    let c = cluster(
        "np-reuse",
        &[
            "--snat-port-range",
            "61000-61015",
            "--conntrack-tcp-timeout-closing",
            "1s",
        ],
    );
    // The backend keeps no TIME_WAIT sockets, so a reused port is never
    // refused by the remains of its previous connection.
    c.pod("web-b")
        .ns
        .run(&["sysctl", "-qw", "net.ipv4.tcp_max_tw_buckets=0"])
        .unwrap();
    let svc = web_service("remote", 50, 30110, json!({}), json!({}));
    c.api().apply(&svc).unwrap();
    c.publish_slices("remote", &[(1, 22)]);
    c.wait_programmed(&[0, 1], "10.96.0.50:80/TCP", 1);
    let outside = &c.fabric.external;
    for i in 0..40 {
        let r = http_get_path(outside, ip(NODE1_V4), 30110, "/client");
        assert_eq!(
            r.as_deref().ok(),
            Some(NODE1_V4),
            "connection {i}: {r:?}\n{}",
            c.agent_logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, metrics) = c.agent(0).node_get(10249, "/metrics").unwrap();
    let exhausted = metrics
        .lines()
        .find(|l| l.contains("reason=\"snat_ports_exhausted\""))
        .unwrap_or_default()
        .to_string();
    assert!(exhausted.ends_with(" 0"), "{exhausted}");
}

/// Packets node-1's kernel forwarded (IPv4 and IPv6), from /proc/net/snmp
/// and snmp6 in its namespace.
fn forwarded_by_kernel(c: &MultiNodeCluster) -> u64 {
    let ns = &c.node(0).ns;
    let snmp = ns.run(&["cat", "/proc/net/snmp"]).unwrap();
    let mut lines = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let v4: u64 = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ForwDatagrams")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap();
    let snmp6 = ns.run(&["cat", "/proc/net/snmp6"]).unwrap();
    let v6: u64 = snmp6
        .lines()
        .find_map(|l| l.strip_prefix("Ip6OutForwDatagrams"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    v4 + v6
}

#[test]
fn xdp_forwards_translated_packets_itself_where_allowed() {
    let c = cluster("np-xdpfwd", &["--xdp-forwarding", "on"]);
    // Full checksums, as from a wire: a packet whose checksum a local
    // socket left partial (veths keep it so) is only ever handed to the
    // stack, which completes it.
    c.fabric.set_tx_checksum(false).unwrap();
    c.fabric
        .let_ports_take_xdp_frames(c.agent(0).dir())
        .unwrap();
    let svc = web_service("remote", 60, 30120, json!({}), json!({}));
    c.api().apply(&svc).unwrap();
    c.publish_slices("remote", &[(1, 22)]);
    c.wait_programmed(&[0, 1], "10.96.0.60:80/TCP", 1);
    let outside = &c.fabric.external;
    // The first packets may find no neighbour entry yet and take the
    // stack (which resolves it); then XDP sends them on.
    for node in [NODE1_V4, NODE1_V6] {
        assert_eq!(answers(outside, node, 30120, false, 2), set(&["web-b"]));
    }
    let before = forwarded_by_kernel(&c);
    for node in [NODE1_V4, NODE1_V6] {
        assert_eq!(answers(outside, node, 30120, false, TRIES), set(&["web-b"]));
        assert_eq!(answers(outside, node, 30121, true, TRIES), set(&["web-b"]));
    }
    // 64 requests, each several packets in and out through node-1: none
    // crossed its kernel's forwarding path.
    let forwarded = forwarded_by_kernel(&c) - before;
    assert!(
        forwarded == 0,
        "node-1's kernel forwarded {forwarded} packets"
    );
}
