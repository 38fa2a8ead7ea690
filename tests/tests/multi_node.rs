//! The two-node harness (`tests::multi_node`, `tests::fabric`), checked
//! with real traffic: the routing it promises without any agent, then a
//! ClusterIP Service served across nodes by the real agents, one per node,
//! watching one API server stand-in on node-1.
use std::{
    io::{BufRead as _, BufReader},
    net::IpAddr,
    process::{Child, Stdio},
    time::Duration,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::json;
use tests::{
    fabric::{EXTERNAL_V4, EXTERNAL_V6, Fabric},
    multi_node::MultiNodeCluster,
    netns::NetNs,
    sandbox::{Pod, http_get, http_get_path, udp_ask, udp_request},
};

const PORT: u16 = 8080;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The pod server run in a namespace that is not a pod's (a node's),
/// answering with `name`; killed on drop.
struct Server(Child);

impl Server {
    fn start(ns: &NetNs, name: &str, port: u16) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/pod_server.py");
        let mut child = ns
            .command("python3")
            .args(["-u", script, name, &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Self(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pod_ips(p: &Pod) -> [IpAddr; 2] {
    [p.ipv4.into(), p.ipv6.into()]
}

#[test]
fn without_agents_pods_route_across_nodes_and_the_outside_reaches_only_nodes() {
    let mut c = MultiNodeCluster::new("mn-route").expect("sandbox (needs root)");
    c.add_pod(0, "client", 10, &[PORT]).unwrap();
    c.add_pod(1, "web-21", 21, &[PORT]).unwrap();
    let client = &c.pod("client").ns;
    let web = c.pod("web-21");
    assert_eq!(web.ipv4.to_string(), "10.244.2.21");
    assert_eq!(web.ipv6.to_string(), "fd00:244:2::21");

    // Pod to pod across the fabric, both families, both protocols.
    for addr in pod_ips(web) {
        assert_eq!(http_get(client, addr, PORT).unwrap(), "web-21", "{addr}");
        assert_eq!(udp_ask(client, addr, PORT).unwrap(), "web-21", "{addr}");
    }

    // The outside reaches the nodes, directly routed (no NAT on the way).
    let external = &c.fabric.external;
    let _servers: Vec<Server> = c
        .fabric
        .nodes
        .iter()
        .map(|n| Server::start(&n.ns, &n.name, 9000))
        .collect();
    for node in &c.fabric.nodes {
        for (addr, me) in [
            (IpAddr::from(node.ipv4), IpAddr::from(EXTERNAL_V4)),
            (node.ipv6.into(), EXTERNAL_V6.into()),
        ] {
            assert_eq!(http_get(external, addr, 9000).unwrap(), node.name);
            assert_eq!(
                http_get_path(external, addr, 9000, "/client").unwrap(),
                me.to_string()
            );
        }
    }
    // ... but not pods: the router has no route to a pod range.
    for addr in pod_ips(web) {
        assert!(
            c.fabric
                .router
                .run(&["ip", "route", "get", &addr.to_string()])
                .is_err(),
            "the router must not route {addr}"
        );
        let r = http_get(external, addr, PORT);
        assert!(r.is_err(), "{addr} answered the outside: {r:?}");
    }

    // A prefix routed to a node, as a LoadBalancer IP would be.
    let node2 = c.node(1);
    node2
        .ns
        .run(&["ip", "addr", "add", "203.0.113.7/32", "dev", "lo"])
        .unwrap();
    node2
        .ns
        .run(&["ip", "addr", "add", "2001:db8:ff::7/128", "dev", "lo"])
        .unwrap();
    c.fabric.route_to_node("203.0.113.0/24", 1).unwrap();
    c.fabric.route_to_node("2001:db8:ff::/64", 1).unwrap();
    for lb in ["203.0.113.7", "2001:db8:ff::7"] {
        assert_eq!(http_get(external, ip(lb), 9000).unwrap(), "node-2");
    }
    c.fabric.unroute("203.0.113.0/24").unwrap();
    assert!(
        c.fabric
            .router
            .run(&["ip", "route", "get", "203.0.113.7"])
            .is_err()
    );

    // Node-2 reaches the API server stand-in on node-1 across the fabric,
    // with the certificate naming 192.0.2.1.
    let api = c.api();
    assert_eq!(api.addr().ip(), ip("192.0.2.1"));
    let ca = c.agent(1).dir().join("ca.pem");
    std::fs::write(&ca, api.ca_pem()).unwrap();
    let out = node2
        .ns
        .run(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            ca.to_str().unwrap(),
            "-H",
            &format!("Authorization: Bearer {}", api.token()),
            &format!("https://{}/api/v1/nodes/node-2", api.addr()),
        ])
        .unwrap();
    let node: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(node["metadata"]["name"], "node-2", "{out}");
    assert_eq!(
        node["status"]["addresses"][0]["address"], "192.0.2.2",
        "{out}"
    );
}

#[test]
fn the_pod_server_reports_the_address_it_saw() {
    let mut f = Fabric::new("mn-peer").expect("sandbox (needs root)");
    f.add_pod(0, "client", 10).unwrap();
    f.add_pod(1, "web-21", 21).unwrap().serve(PORT).unwrap();
    let client = f.pod("client");
    let web = f.pod("web-21");
    for (addr, me) in pod_ips(web).into_iter().zip(pod_ips(client)) {
        let me = me.to_string();
        assert_eq!(
            http_get_path(&client.ns, addr, PORT, "/client").unwrap(),
            me
        );
        assert_eq!(
            udp_request(&client.ns, addr, PORT, 0, "client").unwrap(),
            me
        );
        // Anything else: the name, as always.
        assert_eq!(
            http_get_path(&client.ns, addr, PORT, "/x").unwrap(),
            "web-21"
        );
        assert_eq!(
            udp_request(&client.ns, addr, PORT, 0, "x").unwrap(),
            "web-21"
        );
    }
}

/// A dual-stack ClusterIP Service `name` (10.96.0.N, fd00:96::N): http
/// 80 → 8080 and dns 53/UDP → 8080.
fn service(name: &str, n: u8) -> Service {
    let (v4, v6) = (format!("10.96.0.{n}"), format!("fd00:96::{n}"));
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": v4, "clusterIPs": [v4, v6],
            "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
            "ports": [
                {"name": "http", "port": 80, "targetPort": PORT, "protocol": "TCP"},
                {"name": "dns", "port": 53, "targetPort": PORT, "protocol": "UDP"}
            ]
        }
    }))
    .unwrap()
}

/// `service`'s slice of one family: the one pod `backend`, on `node`.
fn slice(service: &str, family: &str, backend: &Pod, node: &str) -> EndpointSlice {
    let addr = if family == "IPv4" {
        backend.ipv4.to_string()
    } else {
        backend.ipv6.to_string()
    };
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-{}", family.to_lowercase()), "namespace": "default",
            "labels": {"kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
        },
        "addressType": family,
        "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}, {"name": "dns", "port": PORT, "protocol": "UDP"}],
        "endpoints": [{
            "addresses": [addr],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": node,
            "targetRef": {"kind": "Pod", "namespace": "default", "name": backend.name}
        }]
    }))
    .unwrap()
}

/// A metric's value, summed over the samples whose labels contain every
/// `needle`.
fn metric(text: &str, name: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Packets node `index`'s programs translated for Service `name`, in
/// `direction` ("forward": DNAT to a backend; "reply": reverse NAT).
fn translated(c: &MultiNodeCluster, index: usize, name: &str, direction: &str) -> f64 {
    let (code, text) = c.agent(index).node_get(10249, "/metrics").unwrap();
    assert_eq!(code, 200, "{text}");
    metric(
        &text,
        "svc_agent_service_packets_total",
        &[
            &format!("service=\"{name}\""),
            &format!("direction=\"{direction}\""),
        ],
    )
}

/// Every request a client pod makes to a Service, both families, TCP and
/// UDP: answered by `backend`, which sees the client's own address.
fn check_service(client: &Pod, n: u8, backend: &str) {
    let frontends = [ip(&format!("10.96.0.{n}")), ip(&format!("fd00:96::{n}"))];
    for (fe, me) in frontends.into_iter().zip(pod_ips(client)) {
        let me = me.to_string();
        let ns = &client.ns;
        let what = format!("{} → {fe}", client.name);
        assert_eq!(http_get(ns, fe, 80).expect(&what), backend, "{what}:80");
        assert_eq!(udp_ask(ns, fe, 53).expect(&what), backend, "{what}:53/UDP");
        assert_eq!(
            http_get_path(ns, fe, 80, "/client").expect(&what),
            me,
            "{what}: no source NAT"
        );
        assert_eq!(
            udp_request(ns, fe, 53, 0, "client").expect(&what),
            me,
            "{what}/UDP: no source NAT"
        );
    }
}

#[test]
fn cluster_ip_backends_on_either_node_serve_pods_on_both() {
    let mut c = MultiNodeCluster::new("mn-cip").expect("sandbox (needs root)");
    c.add_pod(0, "client-1", 10, &[]).unwrap();
    c.add_pod(1, "client-2", 10, &[]).unwrap();
    c.add_pod(1, "web-21", 21, &[PORT]).unwrap();
    c.add_pod(0, "app-22", 22, &[PORT]).unwrap();
    c.start_agents(&[]).unwrap();

    // `web`'s only backend is on node-2, `app`'s on node-1.
    let api = c.api();
    for (name, n, backend, node) in [
        ("web", 10, "web-21", "node-2"),
        ("app", 11, "app-22", "node-1"),
    ] {
        api.apply(&service(name, n)).unwrap();
        for family in ["IPv4", "IPv6"] {
            api.apply(&slice(name, family, c.pod(backend), node))
                .unwrap();
        }
    }
    let want = [
        ("10.96.0.10:80/TCP", "10.244.2.21:8080"),
        ("[fd00:96::10]:53/UDP", "[fd00:244:2::21]:8080"),
        ("10.96.0.11:53/UDP", "10.244.1.22:8080"),
        ("[fd00:96::11]:80/TCP", "[fd00:244:1::22]:8080"),
    ];
    for index in 0..2 {
        let mut last = None;
        let waited = c.wait_for(
            &format!("node-{}'s maps", index + 1),
            Duration::from_secs(15),
            || {
                let now = c.agent(index).frontends().unwrap_or_default();
                let done = want
                    .iter()
                    .all(|(fe, be)| now.get(*fe).is_some_and(|b| b == &[be.to_string()]));
                last = Some(now);
                done
            },
        );
        if let Err(e) = waited {
            panic!("{e:#}\nlast seen: {last:?}");
        }
    }

    // Node-1's client to node-2's backend: node-1's tcx program DNATs the
    // request; the reply comes back through node-1's uplink, where its XDP
    // program reverse-NATs it from node-1's conntrack. Node-2 forwards
    // both ways and translates nothing.
    check_service(c.pod("client-1"), 10, "web-21");
    assert!(translated(&c, 0, "web", "forward") >= 8.0);
    assert!(translated(&c, 0, "web", "reply") >= 8.0);
    assert_eq!(translated(&c, 1, "web", "forward"), 0.0);
    assert_eq!(translated(&c, 1, "web", "reply"), 0.0);

    // The same with node-2's client and node-1's backend; and each client
    // to the backend on its own node.
    check_service(c.pod("client-2"), 11, "app-22");
    assert_eq!(translated(&c, 0, "app", "forward"), 0.0);
    assert!(translated(&c, 1, "app", "reply") >= 8.0);
    check_service(c.pod("client-2"), 10, "web-21");
    check_service(c.pod("client-1"), 11, "app-22");

    // Once more with software checksums everywhere: a wrong checksum is a
    // dropped packet.
    c.fabric.set_tx_checksum(false).unwrap();
    check_service(c.pod("client-1"), 10, "web-21");
    check_service(c.pod("client-2"), 11, "app-22");
}
