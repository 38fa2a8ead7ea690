//! The DaemonSet deployment (`deploy/`): what `kubectl kustomize` renders is
//! exactly the expected objects, each a valid object of its type (no
//! misspelled or misplaced field), wired together as kube-proxy's
//! replacement needs, and consistent with the agent's real command line.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

const NAMESPACE: &str = "svc-proxy-system";
const HEALTHZ_PORT: i32 = 10256;

/// Every object of the rendered kustomization, parsed into its type.
#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
    /// (kind, namespace, name) of each object, in order.
    ids: Vec<(String, Option<String>, String)>,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests lives in the workspace")
        .to_path_buf()
}

/// `kubectl kustomize deploy/`, as YAML.
fn render() -> String {
    let dir = workspace_root().join("deploy");
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("running kubectl kustomize (is the kubectl client installed?)");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kustomize output is UTF-8")
}

/// Parses `value` as a `T`, and checks that serializing it again gives back
/// the same JSON: k8s-openapi ignores unknown fields, so this is what catches
/// a misspelled or misplaced one.
fn typed<T: DeserializeOwned + Serialize>(value: &Value, what: &str) -> T {
    let obj: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{what} does not parse as its type: {e}"));
    let again = serde_json::to_value(&obj).expect("serializing back");
    let mut differences = Vec::new();
    diff(value, &again, String::new(), &mut differences);
    assert!(
        differences.is_empty(),
        "{what} has fields its type does not read (misspelled or misplaced?):\n{}",
        differences.join("\n")
    );
    obj
}

/// Where `rendered` and `read` (the same object after a round trip through
/// its type) differ, as JSON pointers.
fn diff(rendered: &Value, read: &Value, path: String, out: &mut Vec<String>) {
    match (rendered, read) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => diff(v, w, format!("{path}/{k}"), out),
                    None => out.push(format!("{path}/{k}: not a field here")),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}/{k}: added by the round trip"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                diff(v, w, format!("{path}/{i}"), out);
            }
        }
        (a, b) if a != b => out.push(format!("{path}: {a} read as {b}")),
        _ => {}
    }
}

fn objects() -> Objects {
    use serde::Deserialize as _;
    let yaml = render();
    let mut objects = Objects::default();
    for doc in serde_yaml_ng::Deserializer::from_str(&yaml) {
        let value = Value::deserialize(doc).expect("kustomize output is YAML");
        if value.is_null() {
            continue; // an empty document
        }
        let field = |path: &str| value.pointer(path).and_then(Value::as_str);
        let kind = field("/kind").expect("an object without kind").to_string();
        let name = field("/metadata/name").expect("an object without name");
        let namespace = field("/metadata/namespace").map(str::to_string);
        let what = format!("{kind} {name}");
        match kind.as_str() {
            "Namespace" => objects.namespaces.push(typed(&value, &what)),
            "ServiceAccount" => objects.service_accounts.push(typed(&value, &what)),
            "ClusterRole" => objects.cluster_roles.push(typed(&value, &what)),
            "ClusterRoleBinding" => objects.cluster_role_bindings.push(typed(&value, &what)),
            "ConfigMap" => objects.config_maps.push(typed(&value, &what)),
            "DaemonSet" => objects.daemon_sets.push(typed(&value, &what)),
            other => panic!("unexpected kind {other} ({what}) in deploy/"),
        }
        objects.ids.push((kind, namespace, name.to_string()));
    }
    objects
}

fn set<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    items.into_iter().map(str::to_string).collect()
}

fn daemon_set(objects: &Objects) -> &DaemonSet {
    objects.daemon_sets.first().expect("a DaemonSet")
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod template spec")
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let containers = &pod_spec(ds).containers;
    assert_eq!(containers.len(), 1, "one container, the agent");
    &containers[0]
}

#[test]
fn renders_exactly_the_expected_objects_each_valid_for_its_type() {
    let objects = objects();
    let ids: BTreeSet<(String, Option<String>, String)> = objects.ids.iter().cloned().collect();
    assert_eq!(ids.len(), objects.ids.len(), "duplicate objects");
    let ns = || Some(NAMESPACE.to_string());
    let expected: BTreeSet<(String, Option<String>, String)> = [
        ("Namespace", None, NAMESPACE),
        ("ServiceAccount", ns(), "svc-agent"),
        ("ClusterRole", None, "svc-agent"),
        ("ClusterRoleBinding", None, "svc-agent"),
        ("ConfigMap", ns(), "svc-agent-config"),
        ("DaemonSet", ns(), "svc-agent"),
    ]
    .into_iter()
    .map(|(k, ns, n)| (k.to_string(), ns, n.to_string()))
    .collect();
    assert_eq!(ids, expected);
}

#[test]
fn the_service_account_may_read_services_and_write_events() {
    let objects = objects();
    let binding = &objects.cluster_role_bindings[0];
    let role = &objects.cluster_roles[0];
    let sa = &objects.service_accounts[0];

    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && Some(&s.name) == sa.metadata.name.as_ref()
            && s.namespace.as_deref() == Some(NAMESPACE)),
        "the binding names the agent's ServiceAccount in {NAMESPACE}: {subjects:?}"
    );

    // (API group, resource) -> verbs granted.
    let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "unexpected rule {rule:?}"
        );
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                granted
                    .entry((group.clone(), resource.clone()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    let read = set(["get", "list", "watch"]);
    let write_events = set(["create", "patch"]);
    for (group, resource) in [
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("", "nodes"),
    ] {
        let verbs = granted
            .get(&(group.to_string(), resource.to_string()))
            .unwrap_or_else(|| panic!("no rule for {resource} in {group:?}"));
        assert!(verbs.is_superset(&read), "{resource}: {verbs:?}");
        assert!(!verbs.contains("*"), "{resource}: no wildcard: {verbs:?}");
    }
    for group in ["", "events.k8s.io"] {
        let verbs = granted
            .get(&(group.to_string(), "events".to_string()))
            .unwrap_or_else(|| panic!("no rule for events in {group:?}"));
        assert!(verbs.is_superset(&write_events), "events: {verbs:?}");
    }
    // Least privilege: nothing beyond what the agent uses.
    let allowed: BTreeSet<(String, String)> = [
        ("", "services"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
        ("", "events"),
        ("events.k8s.io", "events"),
    ]
    .into_iter()
    .map(|(g, r)| (g.to_string(), r.to_string()))
    .collect();
    let extra: Vec<_> = granted.keys().filter(|k| !allowed.contains(*k)).collect();
    assert!(
        extra.is_empty(),
        "grants beyond the agent's needs: {extra:?}"
    );
}

#[test]
fn the_daemon_set_runs_on_every_node_in_the_host_network() {
    let objects = objects();
    let ds = daemon_set(&objects);
    let spec = ds.spec.as_ref().unwrap();
    let pod = pod_spec(ds);
    let c = agent_container(ds);

    // Every node, before anything else, in the node's network.
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.dns_policy.as_deref(),
        Some("Default"),
        "node DNS: cluster DNS is a Service, which this pod must not depend on"
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("svc-agent"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint: {tolerations:?}"
    );

    // One node at a time.
    let strategy = spec.update_strategy.as_ref().expect("an update strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.as_ref()),
        Some(&IntOrString::Int(1))
    );

    // The selector selects the template.
    let selector = spec.selector.match_labels.as_ref().expect("matchLabels");
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    for (k, v) in selector {
        assert_eq!(labels.and_then(|l| l.get(k)), Some(v), "label {k}");
    }

    // kustomize's images: entry rewrote the image name.
    let image = c.image.as_deref().expect("an image");
    assert_ne!(image, "svc-agent", "kustomize rewrites the image");
    assert!(
        image.ends_with("/svc-agent:0.1.0"),
        "image {image}: the kustomization's newName/newTag"
    );

    // Probes on kube-proxy's health port.
    let http = |probe: Option<&k8s_openapi::api::core::v1::Probe>, what: &str| {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an httpGet {what}"));
        (get.path.clone(), get.port.clone())
    };
    assert_eq!(
        http(c.liveness_probe.as_ref(), "livenessProbe"),
        (Some("/livez".into()), IntOrString::Int(HEALTHZ_PORT))
    );
    assert_eq!(
        http(c.readiness_probe.as_ref(), "readinessProbe"),
        (Some("/healthz".into()), IntOrString::Int(HEALTHZ_PORT))
    );

    // Which Node: the downward API.
    let node_name = c
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME in env");
    assert_eq!(
        node_name
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName")
    );
    // Settings from the ConfigMap.
    assert!(
        c.env_from.as_deref().unwrap_or_default().iter().any(|e| e
            .config_map_ref
            .as_ref()
            .is_some_and(|r| r.name == "svc-agent-config" && r.optional != Some(true))),
        "envFrom the svc-agent-config ConfigMap"
    );

    // Privileged, with the host's bpffs shared both ways, and the state
    // that must outlive the pod on the host.
    assert_eq!(
        c.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );
    let volumes: BTreeMap<&str, &str> = pod
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|v| {
            let host = v.host_path.as_ref().unwrap_or_else(|| {
                panic!("volume {} is a hostPath", v.name);
            });
            (v.name.as_str(), host.path.as_str())
        })
        .collect();
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    let mount_of = |host_path: &str| {
        mounts
            .iter()
            .find(|m| volumes.get(m.name.as_str()) == Some(&host_path))
            .unwrap_or_else(|| panic!("no mount of the host's {host_path}"))
    };
    let bpffs = mount_of("/sys/fs/bpf");
    assert_eq!(bpffs.mount_path, "/sys/fs/bpf");
    assert_eq!(bpffs.mount_propagation.as_deref(), Some("Bidirectional"));
    for path in ["/sys/fs/cgroup", "/var/lib/svc-agent", "/run/svc-agent"] {
        assert_eq!(mount_of(path).mount_path, path);
    }
    for path in ["/var/lib/svc-agent", "/run/svc-agent", "/sys/fs/bpf"] {
        assert_ne!(mount_of(path).read_only, Some(true), "{path} is written to");
    }
}

/// `svc-agent run --help`, whitespace collapsed (clap may wrap lines).
fn run_help() -> String {
    let bin = tests::cluster::agent_binary().expect("the svc-agent binary");
    let out = Command::new(&bin)
        .args(["run", "--help"])
        // No inherited SVC_AGENT_* value may show up in the help text.
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("running {} run --help: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} run --help failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `help` lists the flag `--name` (not merely a longer flag that
/// starts with it).
fn lists_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        !help[i + flag.len()..]
            .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

#[test]
fn settings_and_args_are_ones_the_agent_accepts() {
    let objects = objects();
    let help = run_help();
    let ds = daemon_set(&objects);
    let c = agent_container(ds);

    // Every environment variable given to the agent, from the ConfigMap
    // (envFrom) or the DaemonSet (env), is one that `run` reads.
    let config = objects
        .config_maps
        .iter()
        .find(|cm| cm.metadata.name.as_deref() == Some("svc-agent-config"))
        .expect("the svc-agent-config ConfigMap");
    let mut vars: Vec<&str> = config
        .data
        .as_ref()
        .expect("settings in svc-agent-config")
        .keys()
        .map(String::as_str)
        .collect();
    assert!(vars.contains(&"SVC_AGENT_UPLINKS"));
    assert!(vars.contains(&"SVC_AGENT_POD_INTERFACES"));
    vars.extend(
        c.env
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|e| e.name.as_str()),
    );
    let unknown: Vec<&str> = vars
        .iter()
        .copied()
        .filter(|v| !help.contains(&format!("[env: {v}=")))
        .collect();
    assert!(
        unknown.is_empty(),
        "environment variables `svc-agent run` does not read (no `[env: NAME=]` in its --help): \
         {unknown:?}\n--help: {help}"
    );

    // The args: the `run` subcommand, then flags it lists.
    let args = c.args.as_deref().unwrap_or_default();
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "args {args:?}"
    );
    assert!(c.command.is_none(), "the image's entrypoint is svc-agent");
    for arg in &args[1..] {
        assert!(arg.starts_with("--"), "a flag, --name=value: {arg}");
        let flag = arg.split('=').next().unwrap();
        assert!(
            lists_flag(&help, flag),
            "`svc-agent run --help` does not list {flag}\n--help: {help}"
        );
    }
}
