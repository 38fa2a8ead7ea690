//! `cargo xtask demo`: the examples of the Kubernetes Service article
//! (`examples/`) served by the real agent in a sandbox node, and real
//! requests showing which pod answers each one.
use std::{collections::BTreeMap, net::IpAddr, path::Path};

use anyhow::{Context as _, Result};
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
    println!("\n(the outside host is {EXTERNAL_V4}; the node is 192.0.2.1)");
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
