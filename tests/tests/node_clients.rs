//! Clients on the node itself (hostNetwork pods, kubelet probes, node
//! daemons): XDP and tcx never see what they send, so the agent's cgroup
//! socket hooks translate it. The real agent, in Kubernetes mode, attaches
//! them to a cgroup of the test's own (`--cgroup-path`); the clients are
//! processes of the node namespace moved into it. Nothing outside that
//! cgroup is affected, which one test checks too.
use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde_json::{Value, json};
use tests::{
    apiserver_standin::ApiServerStandIn,
    cgroup::TestCgroup,
    cluster::{Agent, NODE_IPS, NODE_NAME, agent_binary, poll},
    netns::sh,
    sandbox::{Sandbox, UPLINK},
};

const CLUSTER_IP: &str = "10.96.0.10";
const CLUSTER_IP6: &str = "fd00:96::10";
const NODE_IP: &str = "192.0.2.1";
const NODE_IP6: &str = "2001:db8::1";
const HTTP_NODE_PORT: u16 = 30080;
const DNS_NODE_PORT: u16 = 30053;

/// A node (the sandbox), pods `web-N` serving 8080, an API server
/// stand-in, and the agent watching it with its socket hooks on a cgroup
/// of this test's own.
struct NodeUnderTest {
    sb: Sandbox,
    api: Option<ApiServerStandIn>,
    agent: Agent,
    cg: TestCgroup,
    kubeconfig: PathBuf,
}

impl NodeUnderTest {
    fn new(tag: &str, pods: &[u8]) -> Self {
        let mut sb = Sandbox::new(tag).expect("sandbox (needs root)");
        for &n in pods {
            sb.add_pod(&format!("web-{n}"), n)
                .unwrap()
                .serve(8080)
                .unwrap();
        }
        let agent = Agent::new(&sb.node).unwrap();
        let api = ApiServerStandIn::start(&sb.node).unwrap();
        let kubeconfig = agent.dir().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).unwrap();
        let ips: Vec<&str> = NODE_IPS.split(',').collect();
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": ips[0]},
                {"type": "InternalIP", "address": ips[1]},
                {"type": "Hostname", "address": NODE_NAME}
            ]}
        }))
        .unwrap();
        api.apply(&node).unwrap();
        let cg = TestCgroup::new().expect("a cgroup v2 of our own");
        let mut n = Self {
            sb,
            api: Some(api),
            agent,
            cg,
            kubeconfig,
        };
        n.start_agent();
        n
    }

    fn agent_args(&self) -> Vec<String> {
        [
            "--kubeconfig",
            &self.kubeconfig.to_string_lossy(),
            "--hostname-override",
            NODE_NAME,
            "--sync-period",
            "1500ms",
            "--uplinks",
            UPLINK,
            "--pod-interfaces",
            "vpod*",
            "--cgroup-path",
            &self.cg.path().to_string_lossy(),
        ]
        .map(String::from)
        .to_vec()
    }

    fn start_agent(&mut self) {
        let args = self.agent_args();
        self.agent.start(&args).unwrap();
        let log = self.agent.log();
        assert!(
            log.contains("socket hooks attached"),
            "the agent did not attach its socket hooks:\n{log}"
        );
    }

    fn api(&self) -> &ApiServerStandIn {
        self.api.as_ref().unwrap()
    }

    /// Waits until the maps give `frontend` exactly `backends`.
    fn wait_for_backends(&self, frontend: &str, backends: &[&str]) {
        let want: Vec<String> = backends.iter().map(|s| s.to_string()).collect();
        let mut last = None;
        let waited = self.agent.wait_for(
            &format!("{frontend} → {want:?} in the maps"),
            Duration::from_secs(15),
            || {
                let now = self.agent.frontends().unwrap().get(frontend).cloned();
                let done = now.as_ref() == Some(&want);
                last = Some(now);
                done
            },
        );
        if let Err(e) = waited {
            panic!("{e:#}\nlast seen: {last:?}");
        }
    }

    /// Runs the client (`CLIENT`, below) in the node namespace, inside the
    /// test cgroup: one JSON object.
    fn client(&self, mode: &str, host: &str, port: u16) -> Value {
        let port = port.to_string();
        let out = sh(&mut self
            .cg
            .command(&self.sb.node, &["python3", "-c", CLIENT, mode, host, &port]))
        .unwrap_or_else(|e| panic!("client {mode} {host}:{port}: {e:#}"));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The same client outside the test cgroup (in the node namespace).
    fn client_outside(&self, mode: &str, host: &str, port: u16) -> Value {
        let out =
            sh(self
                .sb
                .node
                .command("python3")
                .args(["-c", CLIENT, mode, host, &port.to_string()]))
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for NodeUnderTest {
    fn drop(&mut self) {
        self.agent.kill();
        // Before the namespace goes: the stand-in's sockets live in it.
        self.api = None;
        // While the namespace and the cgroup still exist.
        self.agent.teardown();
    }
}

/// One exchange from a node process, printed as JSON: `peer` (what
/// getpeername says), `answer` (the pod's name), `from` (recvfrom's
/// address, UDP), or `error` (errno's name).
///
/// * `tcp`: connect, getpeername, HTTP GET.
/// * `udp`: an unconnected socket: sendto, recvfrom.
/// * `udpc`: a connected socket: connect, getpeername, send, recvfrom.
const CLIENT: &str = r#"
import errno, json, socket, sys
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
def fmt(a):
    return ('[%s]:%d' if ':' in a[0] else '%s:%d') % (a[0], a[1])
out = {}
try:
    if mode == 'tcp':
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect((host, port))
        out['peer'] = fmt(s.getpeername())
        s.sendall(b'GET / HTTP/1.0\r\n\r\n')
        data = b''
        while True:
            c = s.recv(4096)
            if not c:
                break
            data += c
        out['answer'] = data.split(b'\r\n\r\n', 1)[-1].decode().strip()
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(3)
        if mode == 'udpc':
            s.connect((host, port))
            out['peer'] = fmt(s.getpeername())
            s.send(b'ping')
        else:
            s.sendto(b'ping', (host, port))
        data, frm = s.recvfrom(65535)
        out['answer'] = data.decode().strip()
        out['from'] = fmt(frm)
except OSError as e:
    out['error'] = errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__
print(json.dumps(out))
"#;

/// `web`: dual-stack NodePort, http 80 → 8080 (nodePort 30080) and dns
/// 53/UDP → 8080 (nodePort 30053).
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
                {"name": "http", "port": 80, "targetPort": 8080, "nodePort": HTTP_NODE_PORT, "protocol": "TCP"},
                {"name": "dns", "port": 53, "targetPort": 8080, "nodePort": DNS_NODE_PORT, "protocol": "UDP"}
            ]
        }
    }))
    .unwrap()
}

/// `web`'s slice of one family with these (ready) pods.
fn web_slice(family: &str, pods: &[u8]) -> EndpointSlice {
    slice("web", family, pods)
}

/// Service `service`'s slice of one family with these (ready) pods, ports
/// http (TCP) and dns (UDP) on 8080.
fn slice(service: &str, family: &str, pods: &[u8]) -> EndpointSlice {
    let v4 = family == "IPv4";
    let endpoints: Vec<_> = pods
        .iter()
        .map(|n| {
            let addr = if v4 {
                format!("10.244.1.{n}")
            } else {
                format!("fd00:244:1::{n}")
            };
            json!({
                "addresses": [addr],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": NODE_NAME,
                "targetRef": {"kind": "Pod", "namespace": "default", "name": format!("web-{n}")}
            })
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-{}", family.to_lowercase()), "namespace": "default",
            "labels": {"kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
        },
        "addressType": family,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 8080, "protocol": "UDP"}],
        "endpoints": endpoints
    }))
    .unwrap()
}

fn publish(n: &NodeUnderTest, pods: &[u8]) {
    n.api().apply(&web_slice("IPv4", pods)).unwrap();
    n.api().apply(&web_slice("IPv6", pods)).unwrap();
}

/// `host:port` as the client prints addresses.
fn addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// A node with `web` served by web-21 and web-22, programmed.
fn web_node(tag: &str) -> NodeUnderTest {
    let n = NodeUnderTest::new(tag, &[21, 22]);
    n.api().apply(&web_service()).unwrap();
    publish(&n, &[21, 22]);
    for fe in ["10.96.0.10:80/TCP", "10.96.0.10:53/UDP"] {
        n.wait_for_backends(fe, &["10.244.1.21:8080", "10.244.1.22:8080"]);
    }
    for fe in ["[fd00:96::10]:80/TCP", "[2001:db8::1]:30053/UDP"] {
        n.wait_for_backends(fe, &["[fd00:244:1::21]:8080", "[fd00:244:1::22]:8080"]);
    }
    n
}

/// Sockets spread over backends by a hash of their cookie: with two
/// backends, all of 16 land on one once in 2^15 runs.
const TRIES: usize = 16;

#[test]
fn node_processes_reach_cluster_ips_and_node_ports_and_see_the_service_address() {
    let n = web_node("sock-lb");
    let both = set(&["web-21", "web-22"]);
    let targets = [
        (CLUSTER_IP, 80, 53),
        (CLUSTER_IP6, 80, 53),
        // An IPv6 socket to an IPv4 service (IPv4-mapped).
        ("::ffff:10.96.0.10", 80, 53),
        // NodePorts on the node's addresses and on loopback.
        (NODE_IP, HTTP_NODE_PORT, DNS_NODE_PORT),
        (NODE_IP6, HTTP_NODE_PORT, DNS_NODE_PORT),
        ("127.0.0.1", HTTP_NODE_PORT, DNS_NODE_PORT),
        ("::1", HTTP_NODE_PORT, DNS_NODE_PORT),
    ];
    for (host, tcp_port, udp_port) in targets {
        // The spread is checked on two targets; the others, fewer tries.
        let tries = if host == CLUSTER_IP || host == "127.0.0.1" {
            TRIES
        } else {
            4
        };
        // TCP: every connection answered, spread over both backends, and
        // getpeername shows what the client connected to.
        let mut answers = BTreeSet::new();
        for _ in 0..tries {
            let out = n.client("tcp", host, tcp_port);
            assert_eq!(
                out["peer"],
                addr(host, tcp_port),
                "{host}:{tcp_port}: {out}"
            );
            answers.insert(out["answer"].as_str().unwrap().to_string());
        }
        assert!(
            answers.is_subset(&both) && (tries < TRIES || answers == both),
            "TCP {host}:{tcp_port}: {answers:?}"
        );

        // UDP, unconnected and connected: the answer comes from the
        // service's address (recvfrom), and a connected socket's peer is
        // the service.
        let mut answers = BTreeSet::new();
        for i in 0..tries {
            let mode = if i % 2 == 0 { "udp" } else { "udpc" };
            let out = n.client(mode, host, udp_port);
            assert_eq!(
                out["from"],
                addr(host, udp_port),
                "{mode} {host}:{udp_port}: {out}"
            );
            if mode == "udpc" {
                assert_eq!(out["peer"], addr(host, udp_port), "{out}");
            }
            answers.insert(out["answer"].as_str().unwrap().to_string());
        }
        assert!(
            answers.is_subset(&both) && (tries < TRIES || answers == both),
            "UDP {host}:{udp_port}: {answers:?}"
        );
    }

    // sessionAffinity: ClientIP: every socket of the node goes where the
    // first one went (the node is one client, as kube-proxy sees it).
    let sticky: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "sticky", "namespace": "default"},
        "spec": {
            "clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30"],
            "sessionAffinity": "ClientIP", "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
        }
    }))
    .unwrap();
    n.api().apply(&sticky).unwrap();
    n.api().apply(&slice("sticky", "IPv4", &[21, 22])).unwrap();
    n.wait_for_backends(
        "10.96.0.30:80/TCP",
        &["10.244.1.21:8080", "10.244.1.22:8080"],
    );
    let answers: BTreeSet<String> = (0..8)
        .map(|_| {
            let out = n.client("tcp", "10.96.0.30", 80);
            assert_eq!(out["peer"], "10.96.0.30:80", "{out}");
            out["answer"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(answers.len(), 1, "one backend under affinity: {answers:?}");

    // The node's other processes (outside the test cgroup) are untouched:
    // the service range is not routed in the node namespace, and nothing
    // listens on the NodePort on loopback.
    let out = n.client_outside("tcp", CLUSTER_IP, 80);
    assert_eq!(out["error"], "ENETUNREACH", "{out}");
    let out = n.client_outside("tcp", "127.0.0.1", HTTP_NODE_PORT);
    assert_eq!(out["error"], "ECONNREFUSED", "{out}");
}

#[test]
fn a_service_without_endpoints_refuses_node_clients() {
    let n = web_node("sock-noep");
    publish(&n, &[]);
    n.wait_for_backends("10.96.0.10:80/TCP", &[]);
    n.wait_for_backends("10.96.0.10:53/UDP", &[]);
    n.wait_for_backends("[2001:db8::1]:30080/TCP", &[]);
    for (host, tcp_port, udp_port) in [
        (CLUSTER_IP, 80, 53),
        (CLUSTER_IP6, 80, 53),
        ("127.0.0.1", HTTP_NODE_PORT, DNS_NODE_PORT),
        (NODE_IP6, HTTP_NODE_PORT, DNS_NODE_PORT),
    ] {
        // connect() fails at once with "connection refused", as kube-proxy's
        // REJECT makes it; so does a datagram sent to the service.
        for (mode, port) in [("tcp", tcp_port), ("udpc", udp_port), ("udp", udp_port)] {
            let started = Instant::now();
            let out = n.client(mode, host, port);
            assert_eq!(out["error"], "ECONNREFUSED", "{mode} {host}:{port}: {out}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "refused at once"
            );
        }
    }
    // Endpoints come back: served again.
    publish(&n, &[22]);
    n.wait_for_backends("10.96.0.10:80/TCP", &["10.244.1.22:8080"]);
    assert_eq!(n.client("tcp", CLUSTER_IP, 80)["answer"], "web-22");
}

/// A long-lived client with one UDP socket, connected (as DNS clients and
/// metrics agents keep one) or not (`sendto` each time): every 100 ms it
/// sends and waits for the answer (1 s), printing one JSON line per
/// attempt. When the socket reports an error (its backend left: the agent
/// destroyed it, `ECONNABORTED`), it connects the same socket again to the
/// service, as such clients do.
const LONG_LIVED: &str = r#"
import errno, json, socket, sys, time
host, port, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
connected = sys.argv[4] == 'connected'
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(1)
if connected:
    s.connect((host, port))
for i in range(rounds):
    out = {'fd': s.fileno()}
    try:
        if connected:
            s.send(b'ping')
        else:
            s.sendto(b'ping', (host, port))
        data, frm = s.recvfrom(65535)
        out['answer'] = data.decode().strip()
        out['from'] = frm[0]
    except socket.timeout:
        out['error'] = 'timeout'
    except OSError as e:
        out['error'] = errno.errorcode.get(e.errno, str(e))
        try:
            s.connect((host, port))
        except OSError as e2:
            out['reconnect'] = errno.errorcode.get(e2.errno, str(e2))
    print(json.dumps(out), flush=True)
    time.sleep(0.1)
"#;

/// A client process, killed when the test is done with it (or fails).
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_connected_udp_socket_follows_a_backend_replacement() {
    let n = NodeUnderTest::new("sock-udp", &[21, 22]);
    n.api().apply(&web_service()).unwrap();
    publish(&n, &[21]);
    n.wait_for_backends("10.96.0.10:53/UDP", &["10.244.1.21:8080"]);
    n.wait_for_backends("[fd00:96::10]:53/UDP", &["[fd00:244:1::21]:8080"]);

    let mut clients = Vec::new();
    // Connected sockets to a ClusterIP (both families) and to a NodePort on
    // loopback; an unconnected one, whose datagrams are each translated.
    for (host, kind) in [
        (CLUSTER_IP, "connected"),
        (CLUSTER_IP6, "connected"),
        ("127.0.0.1", "connected"),
        (CLUSTER_IP, "unconnected"),
    ] {
        let port = if host == "127.0.0.1" {
            DNS_NODE_PORT
        } else {
            53
        };
        let mut child =
            n.cg.command(
                &n.sb.node,
                &[
                    "python3",
                    "-u",
                    "-c",
                    LONG_LIVED,
                    host,
                    &port.to_string(),
                    "150",
                    kind,
                ],
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel::<Value>();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                    break;
                }
            }
        });
        clients.push((host, kind, KillOnDrop(Some(child)), rx));
    }
    let next = |host: &str, rx: &mpsc::Receiver<Value>| -> Value {
        rx.recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("{host}: the client stopped answering"))
    };

    // Settled on the only backend, answered from the service's address.
    for (host, _, _, rx) in &clients {
        for _ in 0..5 {
            let out = next(host, rx);
            assert_eq!(out["answer"], "web-21", "{host}: {out}");
            assert_eq!(out["from"], *host, "{host}: {out}");
        }
    }

    // The backend is replaced: web-21 leaves, web-22 comes. web-21 still
    // runs, so a socket left connected to it would keep "working" while
    // the service no longer includes it (and if web-21 were gone, would
    // send into the void): it must move to web-22.
    for (_, _, _, rx) in &clients {
        while rx.try_recv().is_ok() {}
    }
    let changed = Instant::now();
    publish(&n, &[22]);
    n.wait_for_backends("10.96.0.10:53/UDP", &["10.244.1.22:8080"]);
    n.wait_for_backends("[fd00:96::10]:53/UDP", &["[fd00:244:1::22]:8080"]);
    n.wait_for_backends("[2001:db8::1]:30053/UDP", &["[fd00:244:1::22]:8080"]);
    for (host, kind, child, rx) in &mut clients {
        let mut seen = Vec::new();
        let moved = poll(Duration::from_secs(5), || {
            let Ok(out) = rx.try_recv() else {
                return false;
            };
            let done = out["answer"] == "web-22";
            seen.push(out);
            done
        });
        assert!(
            moved,
            "{host}: still not on web-22 {:?} after the EndpointSlice changed: {seen:?}\nagent log:\n{}",
            changed.elapsed(),
            n.agent.log()
        );
        // On the way: only the errors that told the client (the socket
        // was aborted: ECONNABORTED, reported by the next receive, and
        // EDESTADDRREQ if a send came first, the socket being
        // disconnected), never a silent timeout, and the same socket
        // throughout.
        let errors: Vec<&Value> = seen.iter().filter(|o| o.get("error").is_some()).collect();
        assert!(
            errors
                .iter()
                .all(|o| o["error"] == "ECONNABORTED" || o["error"] == "EDESTADDRREQ")
                && errors.len() <= 2,
            "{host}: {seen:?}"
        );
        // An unconnected socket's next datagram simply goes elsewhere.
        if *kind == "unconnected" {
            assert!(errors.is_empty(), "{host} {kind}: {seen:?}");
        }
        assert!(
            seen.iter().all(|o| o.get("reconnect").is_none()),
            "{host}: {seen:?}"
        );
        // And it stays there, answered from the service's address.
        for _ in 0..5 {
            let out = next(host, rx);
            assert_eq!(out["answer"], "web-22", "{host}: {out}");
            assert_eq!(out["from"], *host, "{host}: {out}");
        }
        let fds: BTreeSet<String> = seen.iter().map(|o| o["fd"].to_string()).collect();
        assert_eq!(fds.len(), 1, "{host}: one socket: {seen:?}");
        eprintln!(
            "{host} ({kind}): on web-22 {:?} after the EndpointSlice changed; on the way: {:?}",
            changed.elapsed(),
            errors
        );
        drop(std::mem::replace(child, KillOnDrop(None)));
    }
    assert!(
        n.agent.log().contains("destroyed"),
        "the agent destroyed the sockets:\n{}",
        n.agent.log()
    );
}

#[test]
fn the_socket_hooks_survive_an_agent_restart_and_cleanup_detaches_them() {
    let mut n = web_node("sock-restart");
    let attached = |n: &NodeUnderTest| -> usize {
        let out = sh(Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(n.cg.path()))
        .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("svc_"))
            .count()
    };
    assert_eq!(attached(&n), 8, "the eight socket hooks");

    // Stopped, the pinned hooks keep serving.
    n.agent.stop().unwrap();
    assert!(n.client("tcp", CLUSTER_IP, 80)["answer"].is_string());
    // A new agent replaces them: still eight, still serving.
    n.start_agent();
    assert_eq!(attached(&n), 8);
    assert!(n.client("tcp", CLUSTER_IP, 80)["answer"].is_string());
    let out = n.client("udpc", CLUSTER_IP, 53);
    assert_eq!(out["from"], "10.96.0.10:53", "{out}");

    // `svc-agent cleanup` detaches them.
    n.agent.stop().unwrap();
    let bpffs = n.agent.bpffs().join("svc-agent");
    sh(Command::new(agent_binary().unwrap())
        .arg("cleanup")
        .arg("--bpffs-dir")
        .arg(&bpffs)
        .arg("--state-dir")
        .arg(n.agent.state_dir()))
    .unwrap();
    assert_eq!(attached(&n), 0);
    assert_eq!(n.client("tcp", CLUSTER_IP, 80)["error"], "ENETUNREACH");
}

#[test]
fn pod_sockets_are_translated_at_connect_where_that_decides_as_tcx_would() {
    use svc_common::CT_FORWARD;
    // The agent's default scope (`--socket-lb-scope all`): pods' sockets in
    // the cgroup too.
    let mut n = web_node("sock-pod");
    n.sb.add_pod("client", 10).unwrap();
    let run = |mode: &str, host: &str, port: u16| -> Value {
        let port = port.to_string();
        let pod = &n.sb.pod("client").ns;
        let out = sh(&mut n
            .cg
            .command(pod, &["python3", "-c", CLIENT, mode, host, &port]))
        .unwrap_or_else(|e| panic!("pod client {mode} {host}:{port}: {e:#}"));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // Flows tcx tracked to the ClusterIP's port `port`.
    let tracked = |port: u16| {
        let vip = svc_agent::dataplane::map_addr(CLUSTER_IP.parse().unwrap());
        n.agent
            .conntrack()
            .unwrap()
            .iter()
            .filter(|(k, _)| {
                k.direction == CT_FORWARD && k.dst_addr == vip && k.dst_port == port.to_be()
            })
            .count()
    };
    let both = set(&["web-21", "web-22"]);

    // TCP: sent to a backend at connect, so tcx tracks nothing; the
    // application still sees the service address.
    for _ in 0..4 {
        let r = run("tcp", CLUSTER_IP, 80);
        assert!(both.contains(r["answer"].as_str().unwrap_or("")), "{r}");
        assert_eq!(r["peer"], addr(CLUSTER_IP, 80), "{r}");
    }
    assert_eq!(tracked(80), 0, "TCP from the pod went through tcx");
    // Unconnected UDP: each datagram sent to a backend; the reply shows
    // the service address.
    let r = run("udp", CLUSTER_IP, 53);
    assert!(both.contains(r["answer"].as_str().unwrap_or("")), "{r}");
    assert_eq!(r["from"], addr(CLUSTER_IP, 53), "{r}");
    assert_eq!(tracked(53), 0);
    // Connected UDP stays with tcx (which moves a flow whose backend goes;
    // the agent cannot destroy sockets in a pod's namespace): answered
    // once the agent has attached tcx to the new pod's veth.
    assert!(
        poll(Duration::from_secs(5), || {
            run("udpc", CLUSTER_IP, 53)["answer"]
                .as_str()
                .is_some_and(|a| both.contains(a))
        }),
        "connected UDP from the pod unanswered:\n{}",
        n.agent.log()
    );
    assert!(tracked(53) > 0, "connected UDP from the pod bypassed tcx");
    // The pod's own loopback is not the node's: no NodePort there.
    let r = run("tcp", "127.0.0.1", HTTP_NODE_PORT);
    assert_eq!(r["error"], "ECONNREFUSED", "{r}");
}
