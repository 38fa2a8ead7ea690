//! A two-node cluster in the sandbox: the [`Fabric`] topology, one API
//! server stand-in on the control-plane node (node-1, listening on its
//! fabric address 192.0.2.1, so node-2's agent reaches it across the
//! fabric), and one real `svc-agent` per node in Kubernetes mode.
//!
//! The stand-in holds the Node objects node-1 and node-2 (InternalIPs of
//! both families, the `kubernetes.io/hostname` label); tests write
//! Services and EndpointSlices there (with `nodeName` on the endpoints).
//! Each agent has its own directory, bpffs and state under
//! `/run/svc-sandbox/<node namespace>/` (see [`Agent`]); drop stops them,
//! runs `svc-agent cleanup`, unmounts, then removes the namespaces.
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::{
    core::v1::{Node as NodeObject, Service},
    discovery::v1::EndpointSlice,
};
use serde_json::{Value, json};

use crate::{
    apiserver_standin::ApiServerStandIn,
    cluster::{Agent, SYNC_PERIOD, poll},
    fabric::{self, Fabric},
    sandbox::{Pod, UPLINK},
};

/// The node the API server stand-in runs on.
pub const CONTROL_PLANE: usize = 0;

pub struct MultiNodeCluster {
    /// First to go: the agents, then the stand-in, then the namespaces
    /// (see Drop).
    agents: Vec<Agent>,
    api: Option<ApiServerStandIn>,
    pub fabric: Fabric,
}

/// The Node object of a fabric node, as the kubelet registers it.
fn node_object(node: &fabric::Node) -> Result<NodeObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
        "status": {"addresses": [
            {"type": "InternalIP", "address": node.ipv4.to_string()},
            {"type": "InternalIP", "address": node.ipv6.to_string()},
            {"type": "Hostname", "address": node.name}
        ]}
    }))?)
}

impl MultiNodeCluster {
    /// The fabric, the stand-in on node-1 with both Node objects, each
    /// node's agent directory (kubeconfig written); no agent runs yet, no
    /// pods.
    pub fn new(tag: &str) -> Result<Self> {
        let fabric = Fabric::new(tag)?;
        let cp = fabric.node(CONTROL_PLANE);
        let api = ApiServerStandIn::start_on(&cp.ns, cp.ipv4.into())?;
        let mut agents = Vec::new();
        for node in &fabric.nodes {
            let agent = Agent::new(&node.ns)?;
            api.write_kubeconfig(&agent.dir().join("kubeconfig"))?;
            api.apply(&node_object(node)?)?;
            agents.push(agent);
        }
        Ok(Self {
            agents,
            api: Some(api),
            fabric,
        })
    }

    /// Starts every node's agent (see `start_agent`).
    pub fn start_agents(&mut self, extra_args: &[&str]) -> Result<()> {
        for index in 0..self.agents.len() {
            self.start_agent(index, extra_args)?;
        }
        Ok(())
    }

    /// Starts node `index`'s agent: `svc-agent run --kubeconfig K
    /// --hostname-override node-N --uplinks up0 --pod-interfaces 'vpod*'
    /// --sync-period 1500ms EXTRA_ARGS`; returns once it answers.
    pub fn start_agent(&mut self, index: usize, extra_args: &[&str]) -> Result<()> {
        let node = self.fabric.node(index);
        let agent = &mut self.agents[index];
        let kubeconfig = agent.dir().join("kubeconfig");
        let sync_period = format!("{}ms", SYNC_PERIOD.as_millis());
        let mut args: Vec<&str> = vec![
            "--kubeconfig",
            kubeconfig.to_str().context("a UTF-8 path")?,
            "--hostname-override",
            &node.name,
            "--uplinks",
            UPLINK,
            "--pod-interfaces",
            "vpod*",
            "--sync-period",
            &sync_period,
        ];
        args.extend_from_slice(extra_args);
        agent
            .start(&args)
            .with_context(|| format!("starting {}'s agent", node.name))
    }

    /// Stops node `index`'s agent with SIGTERM (its dataplane stays).
    pub fn stop_agent(&mut self, index: usize) -> Result<()> {
        self.agents[index].stop()
    }

    /// Stops node `index`'s agent and detaches its programs (`svc-agent
    /// cleanup`), leaving the node to another proxy.
    pub fn stop_and_clean_up_agent(&mut self, index: usize) -> Result<()> {
        self.agents[index].stop_and_clean_up()
    }

    /// The API server stand-in both agents watch.
    pub fn api(&self) -> &ApiServerStandIn {
        self.api
            .as_ref()
            .expect("the stand-in lives as long as the cluster")
    }

    /// Node `index` (0: node-1, the control plane).
    pub fn node(&self, index: usize) -> &fabric::Node {
        self.fabric.node(index)
    }

    /// Node `index`'s agent (its process, CLI, maps, log).
    pub fn agent(&self, index: usize) -> &Agent {
        &self.agents[index]
    }

    /// Starts pod `name`, number `n` on node `node_index` (see
    /// `Fabric::add_pod`), serving `ports`. Nothing is published: tests
    /// write the EndpointSlices.
    pub fn add_pod(&mut self, node_index: usize, name: &str, n: u8, ports: &[u16]) -> Result<&Pod> {
        self.fabric
            .add_pod(node_index, name, n)?
            .serve_ports(ports)?;
        Ok(self.fabric.pod(name))
    }

    /// Pod `name`, on whichever node.
    pub fn pod(&self, name: &str) -> &Pod {
        self.fabric.pod(name)
    }

    /// Polls `done` every 20 ms until it holds or `timeout` passes; the
    /// error carries every agent's log.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl FnMut() -> bool,
    ) -> Result<()> {
        if poll(timeout, done) {
            return Ok(());
        }
        bail!("timed out waiting for {what}\n{}", self.agent_logs())
    }

    /// Every agent's log so far, headed by its node's name.
    pub fn agent_logs(&self) -> String {
        self.fabric
            .nodes
            .iter()
            .zip(&self.agents)
            .map(|(node, agent)| format!("--- {}'s agent log:\n{}", node.name, agent.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for MultiNodeCluster {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            agent.kill();
        }
        // Before the namespaces go: the stand-in's sockets live in one.
        self.api = None;
        // While the namespaces (the programs' interfaces) still exist.
        for agent in &mut self.agents {
            agent.teardown();
        }
    }
}

/// The port the tests' web pods serve (HTTP over TCP, and UDP).
pub const WEB_PORT: u16 = 8080;

/// A dual-stack Service `name` (ClusterIPs 10.96.0.`n` and fd00:96::`n`):
/// http 80 → `WEB_PORT` on `node_port`, dns 53/UDP → `WEB_PORT` on
/// `node_port + 1`; a NodePort unless `spec` (merged in) says otherwise;
/// `status` as given.
pub fn web_service(name: &str, n: u8, node_port: u16, spec: Value, status: Value) -> Service {
    let (v4, v6) = (format!("10.96.0.{n}"), format!("fd00:96::{n}"));
    let mut svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "NodePort",
            "clusterIP": v4, "clusterIPs": [v4, v6],
            "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
            "ports": [
                {"name": "http", "port": 80, "targetPort": WEB_PORT, "protocol": "TCP", "nodePort": node_port},
                {"name": "dns", "port": 53, "targetPort": WEB_PORT, "protocol": "UDP", "nodePort": node_port + 1}
            ]
        },
        "status": status
    });
    if let (Some(s), Some(extra)) = (svc["spec"].as_object_mut(), spec.as_object()) {
        s.extend(extra.clone());
    }
    serde_json::from_value(svc).unwrap()
}

impl MultiNodeCluster {
    /// A `web_service`'s slices, one per family, as the EndpointSlice
    /// controller writes them: `pods` as (node index, pod number).
    pub fn publish_slices(&self, service: &str, pods: &[(usize, u8)]) {
        for (family, v4) in [("IPv4", true), ("IPv6", false)] {
            let endpoints: Vec<Value> = pods
                .iter()
                .map(|(node, n)| {
                    let addr = if v4 {
                        format!("10.244.{}.{n}", node + 1)
                    } else {
                        format!("fd00:244:{}::{n}", node + 1)
                    };
                    json!({"addresses": [addr], "conditions": {"ready": true},
                           "nodeName": format!("node-{}", node + 1)})
                })
                .collect();
            let slice: EndpointSlice = serde_json::from_value(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{service}-{}", family.to_lowercase()), "namespace": "default",
                             "labels": {"kubernetes.io/service-name": service}},
                "addressType": family,
                "ports": [{"name": "http", "port": WEB_PORT, "protocol": "TCP"},
                          {"name": "dns", "port": WEB_PORT, "protocol": "UDP"}],
                "endpoints": endpoints
            }))
            .unwrap();
            self.api().apply(&slice).unwrap();
        }
    }

    /// Waits until the agents of `nodes` have `frontend`
    /// ("addr:port/PROTO") with `n` backends.
    pub fn wait_programmed(&self, nodes: &[usize], frontend: &str, n: usize) {
        self.wait_for(
            &format!("{frontend} with {n} backends on nodes {nodes:?}"),
            Duration::from_secs(20),
            || {
                nodes.iter().all(|&i| {
                    self.agent(i)
                        .frontends()
                        .is_ok_and(|f| f.get(frontend).is_some_and(|b| b.len() == n))
                })
            },
        )
        .unwrap();
    }
}
