//! `cargo xtask demo`: the examples of the Kubernetes Service article
//! (`examples/`) served by the real agent in a sandbox node, and real
//! requests showing which pod answers each one; then the same agent in
//! Kubernetes mode, watching an API server.
use std::{collections::BTreeMap, net::IpAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::json;
use svc_agent::manifests;
use tests::{
    cluster::Cluster,
    sandbox::{EXTERNAL_V4, http_get},
};

const REQUESTS: usize = 4;

fn main() -> Result<()> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let objects = manifests::read_dir(&examples);
    anyhow::ensure!(
        objects.errors.is_empty(),
        "bad examples: {:?}",
        objects.errors
    );

    println!("== a node, a client pod and an outside host, in network namespaces");
    let mut cluster = Cluster::new("demo")?;
    cluster.start_agent()?;

    println!("== the kubelet starts the example pods");
    for (n, pod) in (21u8..).zip(&objects.pods) {
        let name = pod.metadata.name.clone().context("pod without a name")?;
        let labels: BTreeMap<String, String> = pod.metadata.labels.clone().unwrap_or_default();
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let ports: Vec<(String, u16)> = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .map(|p| (p.name.clone().unwrap_or_default(), p.container_port as u16))
            .collect();
        let ports: Vec<(&str, u16)> = ports.iter().map(|(n, p)| (n.as_str(), *p)).collect();
        cluster.run_pod(&name, n, &labels, &ports)?;
        let ip = cluster.pod(&name).ipv4;
        println!("   pod {name:<10} {ip:<13} ports {ports:?}");
    }

    println!("== kubectl apply -f examples/  (the Services)");
    for svc in &objects.services {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let mut object = serde_json::to_value(svc)?;
        object["apiVersion"] = "v1".into();
        object["kind"] = "Service".into();
        cluster.write(
            &format!("svc-{name}.json"),
            &serde_json::to_string_pretty(&object)?,
        )?;
    }
    cluster.wait_for_service(&["nodeport-service", "8080:30007/TCP"])?;
    cluster.wait_for_service(&["custom-ip-service", "10.96.0.100"])?;
    cluster.wait_for_service(&["load-balancer-service", "203.0.113.80"])?;

    println!("\n$ svc-agent get services");
    print!("{}", cluster.cli(&["get", "services"])?);

    println!("\n== requests from the client pod (tcx on its veth)");
    let views = serde_json::from_str::<serde_json::Value>(
        &cluster.cli(&["get", "services", "-o", "json"])?,
    )?;
    for item in views["items"].as_array().into_iter().flatten() {
        let name = item["metadata"]["name"].as_str().unwrap_or("");
        let Some(ip) = item["spec"]["clusterIP"]
            .as_str()
            .and_then(|s| s.parse::<IpAddr>().ok())
        else {
            let external = item["spec"]["externalName"].as_str().unwrap_or("-");
            println!("   {name}: no cluster IP (an alias for {external}): nothing to load-balance");
            continue;
        };
        for port in item["spec"]["ports"].as_array().into_iter().flatten() {
            let port = port["port"].as_u64().unwrap_or(0) as u16;
            ask(&cluster, name, ip, port, false)?;
        }
    }

    println!("\n== requests from outside the node (XDP on its uplink), to the NodePort");
    ask(
        &cluster,
        "nodeport-service",
        "192.0.2.1".parse()?,
        30007,
        true,
    )?;
    // The load balancer's address is announced to the outside as routed
    // to the node (a cloud load balancer or BGP would do this).
    cluster
        .sb
        .external
        .run(&["ip", "route", "add", "203.0.113.0/24", "via", "192.0.2.1"])?;
    println!("\n== from outside, to the LoadBalancer's ingress IP (routed to the node)");
    ask(
        &cluster,
        "load-balancer-service",
        "203.0.113.80".parse()?,
        80,
        true,
    )?;
    println!("\n(the outside host is {EXTERNAL_V4}; the node is 192.0.2.1)");
    drop(cluster);

    kubernetes_mode(&objects.services)
}

/// The production path: the agent watching an API server through kube-rs
/// (here the tests' stand-in, speaking the real protocol over TLS), with
/// the first example Service and the EndpointSlice the controller would
/// write for its two pods.
fn kubernetes_mode(services: &[Service]) -> Result<()> {
    println!(
        "\n== the same agent in Kubernetes mode: watching an API server (kubeconfig, TLS, watches)"
    );
    let mut cluster = Cluster::with_api_server("demo-k8s")?;
    for (name, n) in [("nginx", 21), ("nginx-2", 22)] {
        cluster.start_pod(name, n, &[80])?;
    }
    cluster.start_agent()?;
    let mut svc = services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("first-service"))
        .context("examples/first-service.yaml has no first-service")?
        .clone();
    svc.metadata.namespace = Some("default".into());
    // What the API server's allocator would have written.
    let spec = svc.spec.get_or_insert_default();
    spec.cluster_ip = Some("10.96.0.80".into());
    spec.cluster_ips = Some(vec!["10.96.0.80".into()]);
    let api = cluster.api();
    api.apply(&svc)?;
    let slice = |pods: &[(&str, u8)]| -> Result<EndpointSlice> {
        let endpoints: Vec<_> = pods
            .iter()
            .map(|(name, n)| {
                json!({"addresses": [format!("10.244.1.{n}")], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "namespace": "default", "name": name}})
            })
            .collect();
        Ok(serde_json::from_value(json!({
            "metadata": {"name": "first-service-x1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "first-service"}},
            "addressType": "IPv4",
            "ports": [{"name": "service-port", "port": 80, "protocol": "TCP"}],
            "endpoints": endpoints
        }))?)
    };
    api.apply(&slice(&[("nginx", 21), ("nginx-2", 22)])?)?;
    println!(
        "   kubectl apply: Service first-service (clusterIP 10.96.0.80), EndpointSlice: nginx, nginx-2"
    );
    cluster.wait_for_service(&["first-service", "10.96.0.80"])?;
    let ip: IpAddr = "10.96.0.80".parse()?;
    cluster.wait_for("first-service to answer", Duration::from_secs(10), || {
        http_get(&cluster.pod("client").ns, ip, 80).is_ok()
    })?;
    ask(&cluster, "first-service", ip, 80, false)?;

    api.apply(&slice(&[("nginx-2", 22)])?)?;
    println!("   the EndpointSlice controller drops nginx (scaled down)");
    cluster.wait_for("nginx to leave", Duration::from_secs(10), || {
        (0..4).all(|_| http_get(&cluster.pod("client").ns, ip, 80).is_ok_and(|a| a == "nginx-2"))
    })?;
    ask(&cluster, "first-service", ip, 80, false)?;

    println!("\n$ curl http://127.0.0.1:10256/healthz   (kube-proxy's health contract)");
    println!("   {}", cluster.node_get(10256, "/healthz")?.1);
    println!("$ curl http://127.0.0.1:10249/metrics | grep first-service");
    let (_, metrics) = cluster.node_get(10249, "/metrics")?;
    for line in metrics
        .lines()
        .filter(|l| l.contains("first-service") && l.contains("packets"))
    {
        println!("   {line}");
    }
    Ok(())
}

fn ask(cluster: &Cluster, name: &str, ip: IpAddr, port: u16, external: bool) -> Result<()> {
    let ns = if external {
        &cluster.sb.external
    } else {
        &cluster.pod("client").ns
    };
    let answers: Vec<String> = (0..REQUESTS)
        .map(|_| http_get(ns, ip, port).unwrap_or_else(|e| format!("FAILED: {e:#}")))
        .collect();
    println!(
        "   curl http://{}/  ({name})  ->  {}",
        std::net::SocketAddr::new(ip, port),
        answers.join(", ")
    );
    Ok(())
}
