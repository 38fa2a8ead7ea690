//! End to end in Kubernetes mode: the real agent watches the API server
//! stand-in through its kube client and a kubeconfig (TLS, a token), as it
//! would a real API server; tests write Services, EndpointSlices and the
//! Node there and check the BPF maps and real traffic in the sandbox.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde_json::json;
use tests::{
    cluster::{Cluster, NODE_NAME, SYNC_PERIOD},
    load::{Load, assert_no_failures},
    netns::NetNs,
    sandbox::{self, http_get, udp_ask_from},
};

const CLUSTER_IP: &str = "10.96.0.10";
const CLUSTER_IP6: &str = "fd00:96::10";

/// `web`: a dual-stack NodePort Service, http 80 → 8080 and dns 53/UDP → 8080.
fn web_service() -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "type": "NodePort",
            "clusterIP": CLUSTER_IP, "clusterIPs": [CLUSTER_IP, CLUSTER_IP6],
            "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"},
                {"name": "dns", "port": 53, "targetPort": 8080, "protocol": "UDP"}
            ]
        }
    }))
    .unwrap()
}

/// An endpoint of a slice: pod number and whether it is ready.
struct Ep {
    pod: u8,
    ready: bool,
}

fn ready(pods: &[u8]) -> Vec<Ep> {
    pods.iter().map(|&pod| Ep { pod, ready: true }).collect()
}

/// `web`'s slice of one family, as the EndpointSlice controller writes it.
fn web_slice(family: &str, endpoints: &[Ep]) -> EndpointSlice {
    let v4 = family == "IPv4";
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|e| {
            let addr = if v4 {
                format!("10.244.1.{}", e.pod)
            } else {
                format!("fd00:244:1::{}", e.pod)
            };
            json!({
                "addresses": [addr],
                "conditions": {"ready": e.ready, "serving": e.ready, "terminating": false},
                "nodeName": NODE_NAME,
                "targetRef": {"kind": "Pod", "namespace": "default", "name": format!("web-{}", e.pod)}
            })
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("web-{}", family.to_lowercase()), "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
        },
        "addressType": family,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 8080, "protocol": "UDP"}],
        "endpoints": endpoints
    }))
    .unwrap()
}

fn publish_endpoints(c: &Cluster, endpoints_v4: &[Ep], endpoints_v6: &[Ep]) {
    c.api().apply(&web_slice("IPv4", endpoints_v4)).unwrap();
    c.api().apply(&web_slice("IPv6", endpoints_v6)).unwrap();
}

/// A cluster with the agent watching the API server, pods web-21 and
/// web-22 (and web-23, not in any slice yet) serving 8080, and the `web`
/// Service with both first pods ready, programmed.
fn web_cluster(tag: &str) -> Cluster {
    let mut c = Cluster::with_api_server(tag).expect("sandbox (needs root)");
    for n in [21, 22, 23] {
        c.start_pod(&format!("web-{n}"), n, &[8080]).unwrap();
    }
    c.start_agent().unwrap();
    c.api().apply(&web_service()).unwrap();
    publish_endpoints(&c, &ready(&[21, 22]), &ready(&[21, 22]));
    wait_for_backends(
        &c,
        "10.96.0.10:80/TCP",
        &["10.244.1.21:8080", "10.244.1.22:8080"],
    );
    c
}

/// Waits until the maps give `frontend` exactly `backends` (None: until
/// the frontend is gone).
fn wait_for_frontend(c: &Cluster, frontend: &str, backends: Option<&[&str]>) {
    let want: Option<Vec<String>> = backends.map(|b| b.iter().map(|s| s.to_string()).collect());
    let mut last = None;
    let waited = c.wait_for(
        &format!("{frontend} → {want:?} in the maps"),
        Duration::from_secs(15),
        || {
            let now = c.frontends().unwrap().get(frontend).cloned();
            let done = now == want;
            last = Some(now);
            done
        },
    );
    if let Err(e) = waited {
        panic!("{e:#}\nlast seen: {last:?}");
    }
}

fn wait_for_backends(c: &Cluster, frontend: &str, backends: &[&str]) {
    wait_for_frontend(c, frontend, Some(backends));
}

/// Who answers `n` requests; every request must succeed.
fn answers(ns: &NetNs, ip: &str, port: u16, udp: bool, n: usize) -> BTreeSet<String> {
    sandbox::answers(ns, ip.parse().unwrap(), port, udp, n)
}

fn pods(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// With random source ports, all of 16 requests land on one of two
/// backends once in 2^15 runs.
const TRIES: usize = 16;

#[test]
fn services_and_endpoint_slices_from_the_api_are_served_and_followed() {
    let c = web_cluster("k8s-crud");
    let frontends: Vec<String> = c.frontends().unwrap().into_keys().collect();
    assert_eq!(
        frontends,
        [
            "10.96.0.10:53/UDP",
            "10.96.0.10:80/TCP",
            // NodePorts on the Node object's InternalIPs.
            "192.0.2.1:30080/TCP",
            "[2001:db8::1]:30080/TCP",
            "[fd00:96::10]:53/UDP",
            "[fd00:96::10]:80/TCP",
        ]
    );
    let client = &c.pod("client").ns;
    let both = pods(&["web-21", "web-22"]);
    for ip in [CLUSTER_IP, CLUSTER_IP6] {
        assert_eq!(answers(client, ip, 80, false, TRIES), both, "{ip}:80");
        assert_eq!(answers(client, ip, 53, true, TRIES), both, "{ip}:53/UDP");
    }
    assert_eq!(
        answers(&c.sb.external, "192.0.2.1", 30080, false, TRIES),
        both
    );
    // The CLI shows what the API server holds.
    let listed = c.cli(&["get", "services", "-o", "wide"]).unwrap();
    assert!(
        listed.contains("web") && listed.contains("80:30080/TCP"),
        "{listed}"
    );

    // An endpoint turns unready: it leaves the maps, and traffic with it.
    publish_endpoints(
        &c,
        &[
            Ep {
                pod: 21,
                ready: false,
            },
            Ep {
                pod: 22,
                ready: true,
            },
        ],
        &ready(&[21, 22]),
    );
    wait_for_backends(&c, "10.96.0.10:80/TCP", &["10.244.1.22:8080"]);
    assert_eq!(answers(client, CLUSTER_IP, 80, false, 4), pods(&["web-22"]));

    // The Service's port changes: the old frontend goes, the new one serves.
    let mut svc = web_service();
    svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 81;
    c.api().apply(&svc).unwrap();
    wait_for_frontend(&c, "10.96.0.10:80/TCP", None);
    wait_for_backends(&c, "10.96.0.10:81/TCP", &["10.244.1.22:8080"]);
    assert_eq!(answers(client, CLUSTER_IP, 81, false, 4), pods(&["web-22"]));

    // The IPv4 slice is deleted: its frontends stay, with no backends.
    c.api()
        .delete::<EndpointSlice>(Some("default"), "web-ipv4")
        .unwrap();
    wait_for_backends(&c, "10.96.0.10:81/TCP", &[]);
    wait_for_backends(
        &c,
        "[fd00:96::10]:81/TCP",
        &["[fd00:244:1::21]:8080", "[fd00:244:1::22]:8080"],
    );

    // A port the dataplane cannot serve: a Warning Event on the Service.
    let mut svc = svc.clone();
    let sctp =
        serde_json::from_value(json!({"name": "sig", "port": 2905, "protocol": "SCTP"})).unwrap();
    svc.spec
        .as_mut()
        .unwrap()
        .ports
        .as_mut()
        .unwrap()
        .push(sctp);
    c.api().apply(&svc).unwrap();
    c.wait_for(
        "an UnsupportedProtocol event",
        Duration::from_secs(10),
        || {
            c.api().events().iter().any(|e| {
                e["reason"] == "UnsupportedProtocol"
                    && e["regarding"]["name"] == "web"
                    && e["regarding"]["kind"] == "Service"
                    && e["type"] == "Warning"
                    && e["reportingController"] == "svc-agent"
                    && e["reportingInstance"] == NODE_NAME
                    && e["note"].as_str().is_some_and(|n| n.contains("2905/SCTP"))
            })
        },
    )
    .unwrap();

    // The Service is deleted: every frontend goes.
    c.api().delete::<Service>(Some("default"), "web").unwrap();
    c.wait_for("no frontends", Duration::from_secs(10), || {
        c.frontends().unwrap().is_empty()
    })
    .unwrap();
}

#[test]
fn service_proxy_name_and_headless_labels_stop_and_restore_a_service() {
    let c = web_cluster("k8s-labels");
    let v4 = "10.96.0.10:80/TCP";
    let backends = ["10.244.1.21:8080", "10.244.1.22:8080"];
    for label in [
        "service.kubernetes.io/service-proxy-name",
        "service.kubernetes.io/headless",
    ] {
        let mut svc = web_service();
        svc.metadata.labels = Some(BTreeMap::from([(label.to_string(), "other".to_string())]));
        c.api().apply(&svc).unwrap();
        wait_for_frontend(&c, v4, None);
        let client = &c.pod("client").ns;
        assert!(
            http_get(client, CLUSTER_IP.parse().unwrap(), 80).is_err(),
            "{label}: the service must no longer be served"
        );
        c.api().apply(&web_service()).unwrap();
        wait_for_backends(&c, v4, &backends);
        assert_eq!(
            answers(client, CLUSTER_IP, 80, false, TRIES),
            pods(&["web-21", "web-22"]),
            "{label} removed"
        );
    }
    // On a slice (the EndpointSlice controller labels a headless
    // Service's slices): the slice is not ours, its endpoints go.
    let mut slice = web_slice("IPv4", &ready(&[21, 22]));
    slice
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("service.kubernetes.io/headless".into(), String::new());
    c.api().apply(&slice).unwrap();
    wait_for_backends(&c, v4, &[]);
    c.api()
        .apply(&web_slice("IPv4", &ready(&[21, 22])))
        .unwrap();
    wait_for_backends(&c, v4, &backends);
}

#[test]
fn the_dataplane_serves_through_an_api_server_outage_then_converges() {
    let c = web_cluster("k8s-outage");
    let load = Load::start(&c.pod("client").ns, CLUSTER_IP.parse().unwrap(), 80);
    let mut log = Vec::new();
    load.wait_until_only(&c, &["web-21", "web-22"], &mut log);

    c.api().stop();
    // While it is away, the endpoints move to web-23 (the old pods keep
    // running, as they would until the kubelet hears otherwise).
    publish_endpoints(&c, &ready(&[23]), &ready(&[23]));
    std::thread::sleep(3 * SYNC_PERIOD);
    assert_eq!(
        c.frontends().unwrap()["10.96.0.10:80/TCP"],
        ["10.244.1.21:8080", "10.244.1.22:8080"],
        "the maps must stay as they were while the API server is away"
    );
    log.extend(load.take());
    let (code, _) = c.node_get(10256, "/livez").unwrap();
    assert_eq!(code, 200, "nothing is pending: the agent is live");

    c.api().resume().unwrap();
    wait_for_backends(&c, "10.96.0.10:80/TCP", &["10.244.1.23:8080"]);
    load.wait_until_only(&c, &["web-23"], &mut log);
    log.extend(load.finish());
    assert_no_failures(&log);
}

#[test]
fn an_expired_watch_relists_without_dropping_anything() {
    let c = web_cluster("k8s-410");
    let load = Load::start(&c.pod("client").ns, CLUSTER_IP.parse().unwrap(), 80);
    let mut log = Vec::new();
    load.wait_until_only(&c, &["web-21", "web-22"], &mut log);

    let lists = |api: &tests::apiserver_standin::ApiServerStandIn| -> usize {
        api.requests()
            .iter()
            .filter(|r| {
                r.starts_with("GET ") && !r.contains("watch=true") && !r.contains("watch=1")
            })
            .filter(|r| {
                r.contains("/services?") || r.contains("/endpointslices?") || r.contains("/nodes?")
            })
            .count()
    };
    let before = lists(c.api());
    c.api().expire_watches();
    c.wait_for(
        "the three resources to be listed again",
        Duration::from_secs(15),
        || lists(c.api()) >= before + 3,
    )
    .unwrap();
    assert_eq!(
        c.frontends().unwrap()["10.96.0.10:80/TCP"],
        ["10.244.1.21:8080", "10.244.1.22:8080"]
    );
    // The new watches deliver changes.
    publish_endpoints(&c, &ready(&[22, 23]), &ready(&[22, 23]));
    wait_for_backends(
        &c,
        "10.96.0.10:80/TCP",
        &["10.244.1.22:8080", "10.244.1.23:8080"],
    );
    load.wait_until_only(&c, &["web-22", "web-23"], &mut log);
    log.extend(load.finish());
    assert_no_failures(&log);
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

#[test]
fn health_metrics_and_drift_repair_behave_as_kube_proxy_s() {
    let c = web_cluster("k8s-health");
    // /healthz and /livez: kube-proxy's bodies.
    let (code, body) = c.node_get(10256, "/healthz").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["nodeEligible"], true, "{body}");
    for key in ["lastUpdated", "currentTime"] {
        assert!(
            v[key].as_str().is_some_and(|t| t.ends_with(" +0000 UTC")),
            "{body}"
        );
    }
    let (code, body) = c.node_get(10256, "/livez").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 2, "{body}");

    // Traffic shows up in the per-service counters.
    answers(&c.pod("client").ns, CLUSTER_IP, 80, false, 5);
    let (code, text) = c.node_get(10249, "/metrics").unwrap();
    assert_eq!(code, 200);
    let web80 = [
        "service=\"web\"",
        "frontend=\"10.96.0.10:80\"",
        "direction=\"forward\"",
    ];
    assert!(
        metric(&text, "svc_agent_service_packets_total", &web80) >= 5.0,
        "{text}"
    );
    assert!(
        metric(&text, "svc_agent_service_bytes_total", &web80) > 0.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "kubeproxy_sync_proxy_rules_duration_seconds_count",
            &[]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            &[]
        ) > 1.7e9
    );
    assert_eq!(metric(&text, "svc_agent_services_programmed", &[]), 1.0);
    assert_eq!(metric(&text, "svc_agent_frontends_programmed", &[]), 6.0);
    assert_eq!(
        metric(&text, "kubeproxy_proxy_healthz_total", &["code=\"200\""]),
        1.0
    );
    assert_eq!(
        c.node_get(10249, "/proxyMode").unwrap(),
        (200, "ebpf".into())
    );

    // The cluster autoscaler marks the node for deletion: /healthz fails
    // (load balancers drain it), /livez does not.
    let mut node: Node = c.api().get(None, NODE_NAME).unwrap();
    node.spec.get_or_insert_default().taints = Some(vec![
        serde_json::from_value(json!({"key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000", "effect": "NoSchedule"}))
            .unwrap(),
    ]);
    c.api().apply(&node).unwrap();
    c.wait_for("/healthz to fail", Duration::from_secs(10), || {
        c.node_get(10256, "/healthz")
            .is_ok_and(|(code, body)| code == 503 && body.contains(r#""nodeEligible": false"#))
    })
    .unwrap();
    assert_eq!(c.node_get(10256, "/livez").unwrap().0, 200);
    node.spec.as_mut().unwrap().taints = None;
    c.api().apply(&node).unwrap();
    c.wait_for("/healthz to recover", Duration::from_secs(10), || {
        c.node_get(10256, "/healthz")
            .is_ok_and(|(code, _)| code == 200)
    })
    .unwrap();

    // Someone deletes a frontend's slot 0 behind the agent's back: the
    // periodic resync puts it back and counts the repair.
    remove_frontend_head(&c, CLUSTER_IP, 80);
    assert!(!c.frontends().unwrap().contains_key("10.96.0.10:80/TCP"));
    wait_for_backends(
        &c,
        "10.96.0.10:80/TCP",
        &["10.244.1.21:8080", "10.244.1.22:8080"],
    );
    let (_, text) = c.node_get(10249, "/metrics").unwrap();
    assert!(
        metric(&text, "svc_agent_drift_repairs_total", &[]) >= 1.0,
        "{text}"
    );
    assert_eq!(
        answers(&c.pod("client").ns, CLUSTER_IP, 80, false, TRIES),
        pods(&["web-21", "web-22"])
    );
}

/// Deletes the slot-0 entry of a TCP frontend from the pinned SERVICES map.
fn remove_frontend_head(c: &Cluster, ip: &str, port: u16) {
    let path = c
        .bpffs()
        .join("svc-agent/maps")
        .join(svc_common::SERVICES_MAP);
    let map = aya::maps::Map::HashMap(aya::maps::MapData::from_pin(&path).unwrap());
    let mut services: aya::maps::HashMap<_, svc_common::ServiceKey, svc_common::ServiceValue> =
        aya::maps::HashMap::try_from(map).unwrap();
    let ip: IpAddr = ip.parse().unwrap();
    let key = svc_common::ServiceKey::new(
        svc_agent::dataplane::map_addr(ip),
        port.to_be(),
        svc_common::PROTO_TCP,
        0,
    );
    services.remove(&key).unwrap();
}

#[test]
fn udp_flows_move_at_once_when_their_backend_goes_and_start_with_the_first_endpoint() {
    let c = web_cluster("k8s-udp");
    let client = &c.pod("client").ns;
    let vip: IpAddr = CLUSTER_IP.parse().unwrap();
    // One flow: the same source port every time, as a DNS client's socket.
    let ask = || udp_ask_from(client, vip, 53, 40053);
    let first = ask().unwrap();
    let (gone, other) = if first == "web-21" {
        (21, 22)
    } else {
        (22, 21)
    };
    // Its backend goes away: the very next datagram of the flow reaches
    // the other one (no conntrack entry to wait out).
    publish_endpoints(&c, &ready(&[other]), &ready(&[21, 22]));
    wait_for_backends(
        &c,
        "10.96.0.10:53/UDP",
        &[&format!("10.244.1.{other}:8080")],
    );
    assert_eq!(ask().unwrap(), format!("web-{other}"), "web-{gone} left");

    // No endpoint at all: dropped.
    publish_endpoints(&c, &[], &ready(&[21, 22]));
    wait_for_backends(&c, "10.96.0.10:53/UDP", &[]);
    assert!(ask().is_err());
    // The first endpoint becomes ready: the same flow is answered at once
    // (nothing was remembered for the dropped datagrams).
    publish_endpoints(&c, &ready(&[23]), &ready(&[21, 22]));
    wait_for_backends(&c, "10.96.0.10:53/UDP", &["10.244.1.23:8080"]);
    assert_eq!(ask().unwrap(), "web-23");
}
