//! A one-node cluster in the sandbox: the real `svc-agent` binary running
//! in the node namespace, and a stand-in kubelet that starts pods
//! (namespaces running the pod server).
//!
//! The agent's source is either a manifests directory, where the kubelet
//! stand-in writes Pod objects (status included), or, with
//! [`Cluster::with_api_server`], the Kubernetes API server stand-in, which
//! the agent reaches through a kubeconfig and its normal kube client, and
//! where tests write Services, EndpointSlices and the Node.
//!
//! Everything lives under `/run/svc-sandbox/<node namespace>/`: manifests,
//! agent state, the socket, and a bpffs mounted for this cluster's pins
//! (visible inside `ip netns exec`, unlike /sys/fs/bpf, which that
//! remounts). Drop stops the agent, runs `svc-agent cleanup`, unmounts and
//! removes it all.
//!
//! [`Agent`] is that agent process and its directory, on its own: the
//! multi-node cluster (`multi_node`) runs one per node.
use std::{
    collections::BTreeMap,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use crate::{
    apiserver_standin::ApiServerStandIn,
    netns::{self, NetNs, sh},
    sandbox::{Pod, Sandbox, UPLINK},
};

/// The Node object's name, as the kubelet stand-in puts it in Pods.
pub const NODE_NAME: &str = "node-1";

pub const SERVICE_CIDRS: &str = "10.96.0.0/16,fd00:96::/112";
pub const NODE_IPS: &str = "192.0.2.1,2001:db8::1";
/// The agent's `--sync-period` with an API server: short, so drift repair
/// and health staleness are observable within a test.
pub const SYNC_PERIOD: Duration = Duration::from_millis(1500);

pub struct Cluster {
    pub sb: Sandbox,
    pub dir: PathBuf,
    /// The API server the agent watches, when it watches one.
    pub api: Option<ApiServerStandIn>,
    agent: Agent,
}

/// The agent binary: `SVC_AGENT_BIN`, or the one cargo built next to the
/// running test (`cargo xtask test` builds it first).
pub fn agent_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SVC_AGENT_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("svc-agent");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no svc-agent binary near {}: build it (`cargo build -p svc-agent`; `cargo xtask test` does)",
        exe.display()
    )
}

/// Polls `done` every 20 ms until it holds (true) or `timeout` passes
/// (false).
pub fn poll(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The real `svc-agent` binary run in a node namespace, and its directory
/// `/run/svc-sandbox/<namespace>/`: state, socket, log (`agent.log`, kept
/// across restarts) and a bpffs mounted at `bpf/` for its pins. Dropping
/// it kills the process, runs `svc-agent cleanup`, unmounts and removes the
/// directory (also on interrupt, the unmount).
pub struct Agent {
    /// The network namespace's name.
    ns: String,
    dir: PathBuf,
    child: Option<Child>,
    /// The interrupt handler's unmount; None once torn down.
    mount_cleanup: Option<u32>,
}

impl Agent {
    /// Makes the directory for an agent in `ns` and mounts its bpffs; no
    /// process yet.
    pub fn new(ns: &NetNs) -> Result<Self> {
        let dir = PathBuf::from("/run/svc-sandbox").join(ns.name());
        for sub in ["state", "bpf"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let bpf = dir.join("bpf");
        let bpf_str = bpf.to_string_lossy().into_owned();
        if let Err(e) = sh(Command::new("mount").args(["-t", "bpf", "bpf", &bpf_str])) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let mount_cleanup = netns::on_interrupt(&["umount", "-l", &bpf_str]);
        Ok(Self {
            ns: ns.name().to_string(),
            dir,
            child: None,
            mount_cleanup: Some(mount_cleanup),
        })
    }

    /// `/run/svc-sandbox/<namespace>/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// The bpffs mount; the agent pins under `svc-agent/` in it.
    pub fn bpffs(&self) -> PathBuf {
        self.dir.join("bpf")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// Starts `svc-agent run ARGS` in the namespace, with this directory's
    /// `--state-dir`, `--socket` and `--bpffs-dir` added, stderr to the
    /// log; waits until it answers on its socket.
    pub fn start<S: AsRef<OsStr>>(&mut self, args: &[S]) -> Result<()> {
        if self.child.is_some() {
            bail!("the agent already runs");
        }
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(agent_binary()?)
            .arg("run")
            .args(args)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--socket")
            .arg(self.socket())
            .arg("--bpffs-dir")
            .arg(self.bpffs().join("svc-agent"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting svc-agent")?;
        let mut exited = None;
        let answered = poll(Duration::from_secs(20), || {
            exited = child.try_wait().ok().flatten();
            exited.is_some() || self.cli(&["get", "services", "-A"]).is_ok()
        });
        if let Some(status) = exited {
            bail!("the agent exited ({status}); agent log:\n{}", self.log());
        }
        self.child = Some(child);
        if !answered {
            bail!(
                "timed out waiting for the agent to answer; agent log:\n{}",
                self.log()
            );
        }
        Ok(())
    }

    /// The agent's pid (`ip netns exec` execs it), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops the agent with SIGTERM, as a DaemonSet rollout would, and
    /// waits for it to exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            child.wait()?;
        }
        Ok(())
    }

    /// Stops the agent and runs `svc-agent cleanup`: its programs are
    /// detached and its pins removed (the node is left without it, as
    /// for another proxy); it can be started again.
    pub fn stop_and_clean_up(&mut self) -> Result<()> {
        self.stop()?;
        self.clean_up()
    }

    /// `svc-agent cleanup` of this agent's pins and state.
    fn clean_up(&self) -> Result<()> {
        let out = Command::new(agent_binary()?)
            .arg("cleanup")
            .arg("--bpffs-dir")
            .arg(self.bpffs().join("svc-agent"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .output()?;
        if !out.status.success() {
            bail!(
                "svc-agent cleanup: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Kills the agent (SIGKILL), if it runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The agent's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs the `svc-agent` CLI against this agent.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = sh(Command::new(agent_binary()?)
            .args(args)
            .arg("--socket")
            .arg(self.socket()))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// GETs `http://127.0.0.1:{port}{path}` in the agent's namespace (its
    /// health and metrics listeners): status code and body.
    pub fn node_get(&self, port: u16, path: &str) -> Result<(u16, String)> {
        let url = format!("http://127.0.0.1:{port}{path}");
        let out = sh(Command::new("ip").args([
            "netns",
            "exec",
            &self.ns,
            "curl",
            "-sS",
            "--max-time",
            "3",
            "-w",
            "\n%{http_code}",
            &url,
        ]))?;
        let out = String::from_utf8_lossy(&out.stdout);
        let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
        Ok((
            code.parse().context("curl's status code")?,
            body.to_string(),
        ))
    }

    fn pins(&self) -> svc_agent::dataplane::Pins {
        svc_agent::dataplane::Pins {
            dir: self.bpffs().join("svc-agent"),
        }
    }

    /// The conntrack entries in the agent's pinned map, read from outside.
    pub fn conntrack(&self) -> Result<Vec<(svc_common::FlowKey, svc_common::NatEntry)>> {
        svc_agent::dataplane::conntrack_pinned(&self.pins())
    }

    /// The frontends in the agent's pinned maps, as "addr/PROTO" → sorted
    /// backends ("ip:port"), read from outside the agent.
    pub fn frontends(&self) -> Result<BTreeMap<String, Vec<String>>> {
        let (backends, frontends) = svc_agent::dataplane::dump_pinned(&self.pins())?;
        Ok(frontends
            .into_iter()
            .map(|(fe, p)| {
                let mut bs: Vec<String> = p
                    .backend_ids
                    .iter()
                    .map(|id| {
                        backends
                            .get(id)
                            .map_or(format!("#{id}?"), |a| a.to_string())
                    })
                    .collect();
                bs.sort();
                let proto = format!("{:?}", fe.proto).to_uppercase();
                (format!("{}/{proto}", fe.addr), bs)
            })
            .collect())
    }

    /// Polls `done` every 20 ms until it holds or `timeout` passes; the
    /// error carries the agent's log.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl FnMut() -> bool,
    ) -> Result<()> {
        if poll(timeout, done) {
            return Ok(());
        }
        bail!("timed out waiting for {what}; agent log:\n{}", self.log())
    }

    /// Kills the agent, runs `svc-agent cleanup` (programs detached, pins
    /// and state removed), unmounts the bpffs and removes the directory.
    /// Drop does it; call it earlier to do it while the namespace exists.
    pub fn teardown(&mut self) {
        self.kill();
        let Some(mount_cleanup) = self.mount_cleanup.take() else {
            return;
        };
        let _ = self.clean_up();
        let _ = Command::new("umount").arg("-l").arg(self.bpffs()).output();
        netns::forget(mount_cleanup);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.teardown();
    }
}

impl Cluster {
    /// A node with a client pod (`client`, pod number 10); no agent yet.
    pub fn new(tag: &str) -> Result<Self> {
        let mut sb = Sandbox::new(tag)?;
        sb.add_pod("client", 10)?;
        let agent = Agent::new(&sb.node)?;
        let dir = agent.dir().to_path_buf();
        std::fs::create_dir_all(dir.join("manifests"))?;
        Ok(Self {
            sb,
            dir,
            api: None,
            agent,
        })
    }

    /// Like `new`, with an API server stand-in in the node namespace for
    /// the agent to watch, holding this node's Node object (its addresses
    /// are the node's, so NodePorts answer there).
    pub fn with_api_server(tag: &str) -> Result<Self> {
        let mut c = Self::new(tag)?;
        let api = ApiServerStandIn::start(&c.sb.node)?;
        api.write_kubeconfig(&c.dir.join("kubeconfig"))?;
        let ips: Vec<&str> = NODE_IPS.split(',').collect();
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
            "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": ips[0]},
                {"type": "InternalIP", "address": ips[1]},
                {"type": "Hostname", "address": NODE_NAME}
            ]}
        }))?;
        api.apply(&node)?;
        c.api = Some(api);
        Ok(c)
    }

    /// The API server stand-in (panics without one: a test bug).
    pub fn api(&self) -> &ApiServerStandIn {
        self.api.as_ref().expect("a cluster made with_api_server")
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    pub fn socket(&self) -> PathBuf {
        self.agent.socket()
    }

    pub fn bpffs(&self) -> PathBuf {
        self.agent.bpffs()
    }

    /// The agent process and its directory.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// Starts `svc-agent run` in the node namespace and waits until it
    /// answers on its socket.
    pub fn start_agent(&mut self) -> Result<()> {
        self.start_agent_with(&[])
    }

    /// `start_agent` with extra arguments.
    pub fn start_agent_with(&mut self, extra: &[&str]) -> Result<()> {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if self.api.is_some() {
            // NodePort addresses come from the Node object.
            args.extend([
                "--kubeconfig".into(),
                self.dir.join("kubeconfig").to_string_lossy().into_owned(),
                "--hostname-override".into(),
                NODE_NAME.into(),
            ]);
            // Unless the caller sets its own (the bench keeps the default).
            if !extra.contains(&"--sync-period") {
                args.extend([
                    "--sync-period".into(),
                    format!("{}ms", SYNC_PERIOD.as_millis()),
                ]);
            }
        } else {
            args.extend([
                "--manifests".into(),
                self.manifests().to_string_lossy().into_owned(),
                // The kubelet stand-in's pods run on node-1.
                "--hostname-override".into(),
                NODE_NAME.into(),
                "--service-cidr".into(),
                SERVICE_CIDRS.into(),
                "--node-ip".into(),
                NODE_IPS.into(),
            ]);
        }
        args.extend(["--uplinks", UPLINK, "--pod-interfaces", "vpod*"].map(String::from));
        self.agent.start(&args)
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.pid()
    }

    /// Stops the agent with SIGTERM, as a DaemonSet rollout would.
    pub fn stop_agent(&mut self) -> Result<()> {
        self.agent.stop()
    }

    /// The agent's log so far, for failure messages.
    pub fn agent_log(&self) -> String {
        self.agent.log()
    }

    /// Runs the `svc-agent` CLI against this cluster's agent.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        self.agent.cli(args)
    }

    /// Writes a manifest file atomically (as `kubectl apply` replaces an
    /// object whole).
    pub fn write(&self, file: &str, text: &str) -> Result<()> {
        let tmp = self.manifests().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.manifests().join(file))?;
        Ok(())
    }

    pub fn remove(&self, file: &str) -> Result<()> {
        std::fs::remove_file(self.manifests().join(file))?;
        Ok(())
    }

    /// Starts pod `name` (number `n`, see `Sandbox::add_pod`) serving
    /// `ports`, without publishing anything: with an API server, the test
    /// publishes the EndpointSlices itself.
    pub fn start_pod(&mut self, name: &str, n: u8, ports: &[u16]) -> Result<&Pod> {
        let pod = self.sb.add_pod(name, n)?;
        pod.serve_ports(ports)?;
        Ok(self.sb.pod(name))
    }

    /// GETs `http://127.0.0.1:{port}{path}` from the node namespace (the
    /// agent's health and metrics listeners): status code and body.
    pub fn node_get(&self, port: u16, path: &str) -> Result<(u16, String)> {
        self.agent.node_get(port, path)
    }

    /// The frontends in the agent's pinned maps, as "addr/PROTO" → sorted
    /// backends ("ip:port"), read from outside the agent.
    pub fn frontends(&self) -> Result<BTreeMap<String, Vec<String>>> {
        self.agent.frontends()
    }

    /// The kubelet's part: starts pod `name` (number `n`, see
    /// `Sandbox::add_pod`) serving `ports` and publishes its Pod object.
    pub fn run_pod(
        &mut self,
        name: &str,
        n: u8,
        labels: &[(&str, &str)],
        ports: &[(&str, u16)],
    ) -> Result<()> {
        let pod = self.sb.add_pod(name, n)?;
        let numbers: Vec<u16> = ports.iter().map(|(_, p)| *p).collect();
        pod.serve_ports(&numbers)?;
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let ports: Vec<(String, u16)> = ports.iter().map(|(n, p)| (n.to_string(), *p)).collect();
        self.publish_pod(name, &labels, &ports, true)
    }

    /// Writes pod `name`'s object with the given readiness.
    pub fn publish_pod(
        &self,
        name: &str,
        labels: &BTreeMap<&str, &str>,
        ports: &[(String, u16)],
        ready: bool,
    ) -> Result<()> {
        let pod = self.sb.pod(name);
        let container_ports: Vec<_> = ports
            .iter()
            .map(|(n, p)| {
                let mut port = json!({"containerPort": p});
                if !n.is_empty() {
                    port["name"] = json!(n);
                }
                port
            })
            .collect();
        let object = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "pod-server", "ports": container_ports}]},
            "status": {
                "phase": "Running",
                "podIP": pod.ipv4.to_string(),
                "podIPs": [{"ip": pod.ipv4.to_string()}, {"ip": pod.ipv6.to_string()}],
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
            }
        });
        self.write(
            &format!("pod-{name}.json"),
            &serde_json::to_string_pretty(&object)?,
        )
    }

    /// The kubelet's part of deleting a pod: its object goes first, then
    /// (after the agent has had time to drop it) its namespace.
    pub fn delete_pod(&mut self, name: &str) -> Result<()> {
        self.remove(&format!("pod-{name}.json"))?;
        Ok(())
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.sb.pod(name)
    }

    /// Polls `done` every 20 ms until it holds or `timeout` passes.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl FnMut() -> bool,
    ) -> Result<()> {
        self.agent.wait_for(what, timeout, done)
    }

    /// Waits until `get services` shows a line containing every needle.
    pub fn wait_for_service(&self, needles: &[&str]) -> Result<()> {
        self.wait_for(
            &format!("a service line with {needles:?}"),
            Duration::from_secs(10),
            || {
                self.cli(&["get", "services", "-A", "-o", "wide"])
                    .is_ok_and(|out| out.lines().any(|l| needles.iter().all(|n| l.contains(n))))
            },
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.agent.kill();
        // Before the namespace goes: the stand-in's sockets live in it.
        self.api = None;
        // While the namespace (the programs' interfaces) still exists.
        self.agent.teardown();
    }
}

/// Reads a pinned map's keys count, to watch the dataplane from outside.
pub fn pinned_map_len(path: &Path) -> Result<usize> {
    let map = aya::maps::MapData::from_pin(path)?;
    let map = aya::maps::Map::HashMap(map);
    let hm: aya::maps::HashMap<_, svc_common::ServiceKey, svc_common::ServiceValue> =
        aya::maps::HashMap::try_from(map)?;
    Ok(hm.keys().filter(|k| k.is_ok()).count())
}
