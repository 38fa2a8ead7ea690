//! End to end with the real agent: Services, Pods and EndpointSlices as
//! manifests, the agent process in the node namespace, real clients.
use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use aya::programs::TcAttachType;
use tests::{
    cluster::Cluster,
    load::{Load, assert_no_failures},
    sandbox::{answers, http_get, udp_ask_from},
};

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
    nodePort: 30080
  - name: alt
    port: 8000
    targetPort: 9090
  - name: dns
    protocol: UDP
    port: 53
    targetPort: 8080
"#;

/// A cluster with the agent running, pods web-a and web-b (app=web,
/// named port http=8080, and 9090) and the `web` Service.
fn web_cluster(tag: &str) -> Cluster {
    let mut c = Cluster::new(tag).expect("sandbox (needs root)");
    c.start_agent().unwrap();
    for (name, n) in [("web-a", 21), ("web-b", 22)] {
        c.run_pod(name, n, &[("app", "web")], &[("http", 8080), ("", 9090)])
            .unwrap();
    }
    c.write("web.yaml", WEB).unwrap();
    c.wait_for_service(&["web", "80:30080/TCP"]).unwrap();
    c
}

fn service_ips(c: &Cluster, name: &str) -> Vec<IpAddr> {
    let json: serde_json::Value =
        serde_json::from_str(&c.cli(&["get", "services", "-o", "json"]).unwrap()).unwrap();
    let item = json["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no service {name}"));
    item["spec"]["clusterIPs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| ip.as_str().unwrap().parse().unwrap())
        .collect()
}

/// Requests per check that both backends answer: with random source
/// ports, all of them land on one backend once in 2^15 checks.
const TRIES: usize = 16;

fn both() -> BTreeSet<String> {
    ["web-a", "web-b"].map(String::from).into()
}

#[test]
fn clusterip_nodeport_multiport_named_target_port_and_dual_stack() {
    let c = web_cluster("agent-svc");
    let ips = service_ips(&c, "web");
    assert_eq!(
        ips.len(),
        2,
        "RequireDualStack gives two cluster IPs: {ips:?}"
    );
    assert!(ips[0].is_ipv4() && ips[1].is_ipv6());
    let client = &c.pod("client").ns;
    for ip in &ips {
        // Named targetPort "http" resolves to 8080 in each pod.
        assert_eq!(answers(client, *ip, 80, false, TRIES), both(), "{ip}:80");
        // Second port of the same Service, numeric targetPort.
        assert_eq!(
            answers(client, *ip, 8000, false, TRIES),
            both(),
            "{ip}:8000"
        );
        assert_eq!(answers(client, *ip, 53, true, TRIES), both(), "{ip}:53/UDP");
    }
    // The NodePort from outside the node, through XDP on the uplink.
    for node_ip in ["192.0.2.1", "2001:db8::1"] {
        assert_eq!(
            answers(
                &c.sb.external,
                node_ip.parse().unwrap(),
                30080,
                false,
                TRIES
            ),
            both(),
            "{node_ip}"
        );
    }
    let table = c.cli(&["get", "services"]).unwrap();
    assert!(table.starts_with("NAME "), "{table}");
    assert!(table.contains("80:30080/TCP,8000:"), "{table}");
    let describe = c.cli(&["describe", "service", "web"]).unwrap();
    assert!(
        describe.contains("TargetPort:") && describe.contains("http/TCP"),
        "{describe}"
    );
    assert!(describe.contains("10.244.1.21:8080"), "{describe}");
}

#[test]
fn scaling_endpoints_under_load_fails_no_request() {
    let mut c = Cluster::new("agent-scale").unwrap();
    c.start_agent().unwrap();
    c.run_pod(
        "web-a",
        21,
        &[("app", "web")],
        &[("http", 8080), ("", 9090)],
    )
    .unwrap();
    c.write("web.yaml", WEB).unwrap();
    c.wait_for_service(&["web", "10.244.1.21:8080"]).unwrap();
    let ip = service_ips(&c, "web")[0];
    let load = Load::start(&c.pod("client").ns, ip, 80);
    let mut log = Vec::new();
    load.wait_until_only(&c, &["web-a"], &mut log);

    // Scale up: the new pod starts taking requests.
    c.run_pod(
        "web-b",
        22,
        &[("app", "web")],
        &[("http", 8080), ("", 9090)],
    )
    .unwrap();
    c.wait_for("web-b to answer", Duration::from_secs(15), || {
        let batch = load.take();
        let hit = batch.iter().any(|r| r.as_deref() == Ok("web-b"));
        log.extend(batch);
        hit
    })
    .unwrap();

    // Scale down: web-a turns not-ready, then its object goes; it keeps
    // running until then, as a terminating pod would.
    let labels = [("app", "web")].into_iter().collect();
    let ports = [("http".to_string(), 8080), (String::new(), 9090)];
    c.publish_pod("web-a", &labels, &ports, false).unwrap();
    load.wait_until_only(&c, &["web-b"], &mut log);
    c.delete_pod("web-a").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    log.extend(load.finish());
    assert_no_failures(&log);
    assert!(
        log.iter().any(|r| r.as_deref() == Ok("web-a"))
            && log.iter().any(|r| r.as_deref() == Ok("web-b"))
    );
}

#[test]
fn service_deletion_and_port_changes_take_effect() {
    let c = web_cluster("agent-edit");
    let ip = service_ips(&c, "web")[0];
    let client = &c.pod("client").ns;
    assert_eq!(answers(client, ip, 80, false, TRIES), both());

    // Change port 80 to 81: 81 answers, 80 no longer does.
    c.write("web.yaml", &WEB.replace("port: 80\n", "port: 81\n"))
        .unwrap();
    c.wait_for_service(&["web", "81:30080/TCP"]).unwrap();
    assert_eq!(answers(client, ip, 81, false, TRIES), both());
    assert!(
        http_get(client, ip, 80).is_err(),
        "port 80 still served after the change"
    );

    // Delete the Service: its DNAT goes, the cluster IP stops answering.
    c.remove("web.yaml").unwrap();
    c.wait_for("web to disappear", Duration::from_secs(10), || {
        !c.cli(&["get", "services"])
            .unwrap_or_default()
            .contains("web")
    })
    .unwrap();
    assert!(
        http_get(client, ip, 81).is_err(),
        "deleted service still answers"
    );
    assert!(http_get(&c.sb.external, "192.0.2.1".parse().unwrap(), 30080).is_err());
}

#[test]
fn invalid_manifests_are_rejected_and_the_rest_keeps_serving() {
    let c = web_cluster("agent-invalid");
    let ip = service_ips(&c, "web")[0];
    // A new Service with a cluster IP outside the service CIDR.
    c.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  clusterIP: 10.200.0.1\n  ports:\n  - port: 80\n",
    )
    .unwrap();
    // An invalid update of the working Service, and a file that is not YAML.
    c.write("web.yaml", &WEB.replace("protocol: UDP", "protocol: ICMP"))
        .unwrap();
    c.write("junk.yaml", "kind: [unclosed\n").unwrap();
    c.wait_for("the rejection event", Duration::from_secs(10), || {
        c.cli(&["describe", "service", "web"])
            .is_ok_and(|d| d.contains("Unsupported value: \"ICMP\""))
    })
    .unwrap();
    // The Service that never got in: not found, with why.
    c.wait_for("the rejection of bad", Duration::from_secs(10), || {
        c.cli(&["describe", "service", "bad"]).is_err_and(|e| {
            let e = e.to_string();
            e.contains("Service \"bad\" is invalid")
                && e.contains("10.200.0.1")
                && e.contains("NotFound")
        })
    })
    .unwrap();
    assert!(!c.cli(&["get", "services"]).unwrap().contains("bad"));
    // The earlier version of web is still served, UDP port included.
    let client = &c.pod("client").ns;
    assert_eq!(answers(client, ip, 80, false, TRIES), both());
    assert_eq!(answers(client, ip, 53, true, TRIES), both());
}

#[test]
fn agent_restart_under_traffic_fails_no_request_and_cleanup_removes_everything() {
    let mut c = web_cluster("agent-restart");
    let ips = service_ips(&c, "web");
    let ip = ips[0];
    let load = Load::start(&c.pod("client").ns, ip, 80);
    let mut log = Vec::new();
    load.wait_until_only(&c, &["web-a", "web-b"], &mut log);
    // One UDP flow (fixed source port): it must stay on its backend
    // through the restart, as established connections do.
    let flow_backend = udp_ask_from(&c.pod("client").ns, ip, 53, 40053).unwrap();

    // No agent: the pinned dataplane keeps serving new connections.
    c.stop_agent().unwrap();
    assert_eq!(
        udp_ask_from(&c.pod("client").ns, ip, 53, 40053).unwrap(),
        flow_backend
    );
    std::thread::sleep(Duration::from_secs(1));
    let during = load.take();
    assert!(during.len() > 5, "no requests while the agent was down");
    log.extend(during);

    // A new agent adopts the pins and reconciles instead of rebuilding.
    let first_run = c.agent_log().len();
    c.start_agent().unwrap();
    c.wait_for_service(&["web", "80:30080/TCP"]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    log.extend(load.finish());
    assert_no_failures(&log);
    // The log holds both runs: look at the second.
    let agent_log = c.agent_log()[first_run..].to_string();
    assert!(agent_log.contains("adopting"), "{agent_log}");
    // Nothing changed while it was down, so adopting wrote nothing.
    assert!(!agent_log.contains("programmed"), "{agent_log}");
    // Allocations are stable across restarts (kept in the state directory).
    assert_eq!(service_ips(&c, "web"), ips);
    assert_eq!(
        udp_ask_from(&c.pod("client").ns, ip, 53, 40053).unwrap(),
        flow_backend
    );
    // A third backend changes where the hash sends new flows; the flow's
    // conntrack entry, which survived the restart in the pinned map, keeps
    // it where it was.
    c.run_pod(
        "web-c",
        23,
        &[("app", "web")],
        &[("http", 8080), ("", 9090)],
    )
    .unwrap();
    c.wait_for_service(&["web", "10.244.1.23:8080"]).unwrap();
    for _ in 0..3 {
        assert_eq!(
            udp_ask_from(&c.pod("client").ns, ip, 53, 40053).unwrap(),
            flow_backend
        );
    }

    // tcx ingress on pod veths, tcx egress (ICMP errors the node sends)
    // on pod veths and the uplink.
    for (iface, kind) in [
        (c"vpod21", TcAttachType::Ingress),
        (c"vpod21", TcAttachType::Egress),
        (c"up0", TcAttachType::Egress),
    ] {
        assert_eq!(tcx_programs(&c, iface, kind), Some(1), "{iface:?} {kind:?}");
    }

    // Cleanup detaches everything and removes the pins.
    c.stop_agent().unwrap();
    let bin = tests::cluster::agent_binary().unwrap();
    let out = std::process::Command::new(bin)
        .arg("cleanup")
        .arg("--bpffs-dir")
        .arg(c.bpffs().join("svc-agent"))
        .arg("--state-dir")
        .arg(c.dir.join("state"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!c.bpffs().join("svc-agent").exists());
    // The kernel releases an unpinned link from a work queue: give it a
    // moment, then nothing may be attached or translated any more.
    c.wait_for("the programs to detach", Duration::from_secs(5), || {
        let links = c.sb.node.run(&["ip", "link", "show"]).unwrap_or_default();
        !links.contains("xdp")
            && tcx_programs(&c, c"vpod21", TcAttachType::Ingress) == Some(0)
            && tcx_programs(&c, c"vpod21", TcAttachType::Egress) == Some(0)
            && tcx_programs(&c, c"up0", TcAttachType::Egress) == Some(0)
    })
    .unwrap();
    assert!(
        http_get(&c.pod("client").ns, ip, 80).is_err(),
        "still DNATed after cleanup"
    );
}

/// How many programs are attached at tcx `kind` of the node's `iface`.
fn tcx_programs(c: &Cluster, iface: &std::ffi::CStr, kind: TcAttachType) -> Option<usize> {
    c.sb.node
        .enter(|| {
            let (_, programs) = aya::programs::SchedClassifier::query_tcx(iface, kind)?;
            Ok(programs.len())
        })
        .ok()
}

#[test]
fn cli_says_clearly_when_no_agent_runs() {
    let out = std::process::Command::new(tests::cluster::agent_binary().unwrap())
        .args([
            "get",
            "services",
            "--socket",
            "/run/svc-sandbox/no-agent-here.sock",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no svc-agent is running"), "{err}");
}

#[test]
fn selectorless_service_uses_endpoint_slices_from_the_manifests() {
    // A Service without a selector gets its endpoints from EndpointSlices
    // the user writes, e.g. for something outside the cluster's pods.
    let mut c = Cluster::new("agent-slice").unwrap();
    c.start_agent().unwrap();
    c.run_pod("web-a", 21, &[("app", "other")], &[("http", 8080)])
        .unwrap();
    c.write(
        "manual.yaml",
        r#"
apiVersion: v1
kind: Service
metadata:
  name: manual
spec:
  clusterIP: 10.96.0.77
  ports:
  - name: http
    port: 80
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: manual-1
  labels:
    kubernetes.io/service-name: manual
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
- addresses: ["10.244.1.21"]
  conditions: {ready: true}
"#,
    )
    .unwrap();
    c.wait_for_service(&["manual", "10.244.1.21:8080"]).unwrap();
    let ip: IpAddr = "10.96.0.77".parse().unwrap();
    let got = answers(&c.pod("client").ns, ip, 80, false, 4);
    assert_eq!(got, BTreeSet::from(["web-a".to_string()]));
}

#[test]
fn client_ip_session_affinity_keeps_a_client_on_one_pod() {
    let mut c = web_cluster("agent-sticky");
    let sticky_service = |affinity: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: sticky\nspec:\n  clusterIP: 10.96.0.88\n  \
             sessionAffinity: {affinity}\n  selector:\n    app: web\n  ports:\n  - port: 80\n    targetPort: http\n"
        )
    };
    c.write("sticky.yaml", &sticky_service("ClientIP")).unwrap();
    c.wait_for_service(&["sticky", "10.96.0.88"]).unwrap();
    // Without affinity the same client's requests spread over both pods...
    let ip = service_ips(&c, "web")[0];
    assert_eq!(answers(&c.pod("client").ns, ip, 80, false, TRIES), both());
    // ...with it, every new connection goes to the pod the first one chose.
    let sticky: IpAddr = "10.96.0.88".parse().unwrap();
    let got = answers(&c.pod("client").ns, sticky, 80, false, TRIES);
    assert_eq!(got.len(), 1, "{got:?}");
    let describe = c.cli(&["describe", "service", "sticky"]).unwrap();
    assert!(
        describe.contains("Session Affinity:         ClientIP"),
        "{describe}"
    );

    // The choice lives in a pinned map: it survives an agent restart.
    c.stop_agent().unwrap();
    c.start_agent().unwrap();
    assert_eq!(answers(&c.pod("client").ns, sticky, 80, false, TRIES), got);

    // Switched off on the live Service, requests spread again...
    c.write("sticky.yaml", &sticky_service("None")).unwrap();
    c.wait_for("affinity off", Duration::from_secs(10), || {
        answers(&c.pod("client").ns, sticky, 80, false, TRIES) == both()
    })
    .unwrap();
    // ...and switched back on, they stick to one pod again.
    c.write("sticky.yaml", &sticky_service("ClientIP")).unwrap();
    c.wait_for("affinity on", Duration::from_secs(10), || {
        answers(&c.pod("client").ns, sticky, 80, false, TRIES).len() == 1
    })
    .unwrap();
}

/// A process that dies with the test (a server or client in a pod).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn finished_flows_leave_conntrack_sooner_than_idle_open_ones_which_keep_working() {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::process::Stdio;
    use svc_common::CT_FORWARD;

    let mut c = Cluster::new("agent-ct").expect("sandbox (needs root)");
    c.start_agent_with(&[
        "--sync-period",
        "1s",
        "--conntrack-tcp-timeout-closing",
        "1s",
        "--conntrack-tcp-timeout-established",
        "8s",
    ])
    .unwrap();
    c.run_pod("echo", 23, &[("app", "echo")], &[("http", 9090)])
        .unwrap();
    // An echo server that keeps its connections open as long as the client.
    let _echo = Child(
        c.pod("echo")
            .ns
            .command("socat")
            .args(["TCP6-LISTEN:7000,fork,reuseaddr,ipv6only=0", "EXEC:cat"])
            .spawn()
            .unwrap(),
    );
    c.write(
        "echo.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\nspec:\n  clusterIP: 10.96.0.77\n  \
         selector:\n    app: echo\n  ports:\n  - name: http\n    port: 80\n    targetPort: 9090\n  \
         - name: hold\n    port: 7000\n    targetPort: 7000\n",
    )
    .unwrap();
    let vip: IpAddr = "10.96.0.77".parse().unwrap();
    let client = &c.pod("client").ns;
    c.wait_for("the echo service", Duration::from_secs(10), || {
        http_get(client, vip, 80).is_ok()
    })
    .unwrap();

    // One connection that stays open, echoing a line per line on stdin.
    let mut held = Child(
        client
            .command("python3")
            .args([
                "-u",
                "-c",
                "import socket, sys\n\
                 s = socket.create_connection(('10.96.0.77', 7000))\n\
                 for line in sys.stdin:\n    s.sendall(line.encode()); print(s.recv(100).decode().strip())\n",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut to_held = held.0.stdin.take().unwrap();
    let mut from_held = BufReader::new(held.0.stdout.take().unwrap());
    let mut echo = |word: &str| {
        writeln!(to_held, "{word}").unwrap();
        let mut line = String::new();
        from_held.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), word, "the held connection stopped echoing");
    };
    echo("one");
    // And one request whose connection is closed at once.
    http_get(client, vip, 80).unwrap();

    let port = |p: u16| p.to_be();
    let flows = |dst_port: u16| {
        c.agent()
            .conntrack()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.direction == CT_FORWARD && k.dst_port == port(dst_port))
            .count()
    };
    assert_eq!(flows(7000), 1);
    // The closed flow's entries go after the closing timeout and a sweep;
    // the idle open one (established timeout 8 s) stays meanwhile.
    let closed_at = std::time::Instant::now();
    c.wait_for("the closed flow to expire", Duration::from_secs(6), || {
        flows(80) == 0
    })
    .unwrap();
    assert!(closed_at.elapsed() < Duration::from_secs(6));
    assert_eq!(
        flows(7000),
        1,
        "an idle open flow expired with the closed one"
    );
    echo("two");
    // Idle past its timeout, the open flow goes too...
    c.wait_for("the idle flow to expire", Duration::from_secs(15), || {
        flows(7000) == 0
    })
    .unwrap();
    // ...and its next packet is a new flow to the same backend, so the
    // connection carries on.
    echo("three");
    assert_eq!(flows(7000), 1);
    let (_, metrics) = c.node_get(10249, "/metrics").unwrap();
    let expired = metrics
        .lines()
        .find_map(|l| l.strip_prefix("svc_agent_conntrack_expired_total "))
        .expect("the expiry counter");
    assert!(expired.parse::<f64>().unwrap() >= 4.0, "{expired}");
}
