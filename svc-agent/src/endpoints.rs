//! The EndpointSlice controller of kube-controller-manager, as a pure function.
//!
//! Without an API server nobody turns Pods into EndpointSlices, so the agent
//! does it itself. This follows `k8s.io/endpointslice` (reconciler.go,
//! utils.go, util/controller_utils.go) for a controller starting from no
//! existing slices: pods are grouped by address type and by the port set
//! they resolve to, at most 100 endpoints (the controller's default
//! `--max-endpoints-per-slice`) per slice. Slice names are derived from a hash
//! instead of `generateName`, so that the same input always gives the same
//! output.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

// The label that ties a slice to its Service, and the one set (empty) on
// the slices of a Service without a cluster IP.
use crate::model::{HEADLESS_LABEL, SERVICE_NAME_LABEL};

/// The label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`] on the slices built here.
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// The controller's default `--max-endpoints-per-slice`.
const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// EndpointSlices for every Service with a selector, built from the Pods, as the EndpointSlice controller would.
/// Services without a selector get none (their slices, if any, come from the user).
pub fn endpoint_slices(services: &[Service], pods: &[Pod]) -> Vec<EndpointSlice> {
    let mut slices: Vec<EndpointSlice> = services
        .iter()
        .flat_map(|svc| slices_for_service(svc, pods))
        .collect();
    slices.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    slices
}

/// A resolved endpoint port, as a comparable key: (name, port, protocol, appProtocol).
type PortKey = (Option<String>, i32, String, Option<String>);

fn slices_for_service(svc: &Service, pods: &[Pod]) -> Vec<EndpointSlice> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    // ExternalName Services get nothing (kubernetes/kubernetes#105986).
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    // An empty selector is the same as none: the API server drops `{}`
    // (omitempty), and the controller skips a nil selector.
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let Some(svc_name) = svc.metadata.name.as_deref() else {
        return Vec::new();
    };
    let namespace = namespace_of(&svc.metadata);

    let members: Vec<&Pod> = pods
        .iter()
        .filter(|pod| namespace_of(&pod.metadata) == namespace)
        .filter(|pod| {
            let labels = pod.metadata.labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .filter(|pod| should_be_in_endpoints(pod))
        .collect();

    let mut slices = Vec::new();
    for address_type in address_types(spec) {
        // Pods that resolve to different port sets go into different slices.
        let mut groups: BTreeMap<Vec<PortKey>, Vec<Endpoint>> = BTreeMap::new();
        for pod in &members {
            let endpoint = pod_to_endpoint(pod, svc_name, spec, address_type);
            // As in the controller, a pod without an address of this family
            // registers its port set but adds no endpoint (so no slice).
            let group = groups.entry(endpoint_ports(spec, pod)).or_default();
            if !endpoint.addresses.is_empty() {
                group.push(endpoint);
            }
        }
        groups.retain(|_, endpoints| !endpoints.is_empty());
        if groups.is_empty() {
            // The controller keeps one placeholder slice per address type,
            // with no endpoints and no ports.
            groups.insert(Vec::new(), Vec::new());
        }
        for (ports, mut endpoints) in groups {
            endpoints.sort_by_key(|ep| {
                (
                    ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()),
                    target_name(ep),
                )
            });
            let mut chunks: Vec<Vec<Endpoint>> = endpoints
                .chunks(MAX_ENDPOINTS_PER_SLICE)
                .map(<[Endpoint]>::to_vec)
                .collect();
            if chunks.is_empty() {
                chunks.push(Vec::new());
            }
            for (index, endpoints) in chunks.into_iter().enumerate() {
                slices.push(EndpointSlice {
                    metadata: ObjectMeta {
                        name: Some(format!(
                            "{svc_name}-{}",
                            name_suffix(address_type, &ports, index)
                        )),
                        namespace: Some(namespace.to_string()),
                        labels: Some(slice_labels(svc, svc_name, spec)),
                        ..Default::default()
                    },
                    address_type: address_type.to_string(),
                    endpoints,
                    ports: Some(ports.iter().map(endpoint_port).collect()),
                });
            }
        }
    }
    slices
}

/// Objects without a namespace are taken to be in "default", as kubectl would put them.
fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// ShouldPodBeInEndpoints (terminating pods included): not finished, and has an IP.
fn should_be_in_endpoints(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return false;
    }
    !pod_ips(pod).is_empty()
}

/// `status.podIPs`, or `status.podIP` when the list is absent (older writers).
fn pod_ips(pod: &Pod) -> Vec<&str> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let ips: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|ip| ip.ip.as_str())
        .filter(|ip| !ip.is_empty())
        .collect();
    if !ips.is_empty() {
        return ips;
    }
    status
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
        .into_iter()
        .collect()
}

/// getAddressTypesForService: `spec.ipFamilies`, else the family of the
/// cluster IP, else (headless, not yet defaulted) both.
fn address_types(spec: &ServiceSpec) -> BTreeSet<&'static str> {
    let mut types: BTreeSet<&'static str> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|family| match family.as_str() {
            "IPv4" => Some("IPv4"),
            "IPv6" => Some("IPv6"),
            _ => None,
        })
        .collect();
    if types.is_empty() {
        match spec.cluster_ip.as_deref() {
            Some(ip) if !ip.is_empty() && ip != "None" => {
                types.insert(if ip.contains(':') { "IPv6" } else { "IPv4" });
            }
            _ => types.extend(["IPv4", "IPv6"]),
        }
    }
    types
}

/// getEndpointPorts: one port per service port that resolves on this pod, in
/// `spec.ports` order (the same order for every pod, so it can serve as a key).
fn endpoint_ports(spec: &ServiceSpec, pod: &Pod) -> Vec<PortKey> {
    spec.ports
        .iter()
        .flatten()
        .filter_map(|sp| {
            let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
            let port = find_port(pod, sp.port, sp.target_port.as_ref(), &protocol)?;
            let name = sp.name.clone().filter(|n| !n.is_empty());
            Some((name, port, protocol, sp.app_protocol.clone()))
        })
        .collect()
}

/// FindPort: a numeric targetPort as is, a named one looked up in the pod's
/// containers (and sidecars: init containers with restartPolicy Always) by
/// name and protocol.
fn find_port(pod: &Pod, port: i32, target: Option<&IntOrString>, protocol: &str) -> Option<i32> {
    let name = match target {
        // The API server defaults an absent (or zero) targetPort to the port;
        // YAML read from disk has not been through it.
        None => return Some(port),
        Some(IntOrString::Int(0)) => return Some(port),
        Some(IntOrString::Int(n)) => return Some(*n),
        Some(IntOrString::String(s)) if s.is_empty() => return Some(port),
        Some(IntOrString::String(s)) => s,
    };
    let spec = pod.spec.as_ref()?;
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name.as_str())
                && p.protocol.as_deref().unwrap_or("TCP") == protocol
        })
        .map(|p| p.container_port)
}

fn endpoint_port((name, port, protocol, app_protocol): &PortKey) -> EndpointPort {
    EndpointPort {
        name: name.clone(),
        port: Some(*port),
        protocol: Some(protocol.clone()),
        app_protocol: app_protocol.clone(),
    }
}

/// podToEndpoint, without the Node lookup (so no zone).
fn pod_to_endpoint(pod: &Pod, svc_name: &str, spec: &ServiceSpec, address_type: &str) -> Endpoint {
    let want_v6 = address_type == "IPv6";
    let addresses = pod_ips(pod)
        .into_iter()
        // Parse and print again to normalise the text, as the controller does.
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .filter(|ip| ip.is_ipv6() == want_v6)
        .map(|ip| ip.to_string())
        .collect();

    let serving = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    let terminating = pod.metadata.deletion_timestamp.is_some();
    // A terminating endpoint is never "ready", unless the Service asks for
    // not-ready addresses to be published.
    let ready = spec.publish_not_ready_addresses == Some(true) || (serving && !terminating);

    let pod_spec = pod.spec.as_ref();
    // ShouldSetHostname: the pod asked for a DNS name under this Service.
    let hostname = pod_spec
        .filter(|s| s.subdomain.as_deref() == Some(svc_name))
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty());

    Endpoint {
        addresses,
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some(namespace_of(&pod.metadata).to_string()),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        node_name: pod_spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        hostname,
        ..Default::default()
    }
}

fn target_name(ep: &Endpoint) -> Option<String> {
    ep.target_ref.as_ref().and_then(|r| r.name.clone())
}

/// The Service's own labels (minus the reserved ones), then the reserved
/// ones as setEndpointSliceLabels sets them.
fn slice_labels(svc: &Service, svc_name: &str, spec: &ServiceSpec) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = svc
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| {
            ![SERVICE_NAME_LABEL, MANAGED_BY_LABEL, HEADLESS_LABEL].contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if matches!(spec.cluster_ip.as_deref(), None | Some("" | "None")) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    labels.insert(SERVICE_NAME_LABEL.into(), svc_name.into());
    labels.insert(MANAGED_BY_LABEL.into(), CONTROLLER_NAME.into());
    labels
}

/// Five characters from the alphabet `generateName` uses, derived from what
/// makes the slice distinct within its Service. FNV-1a is written out because
/// std's hashers are not guaranteed stable across releases, and names must be.
fn name_suffix(address_type: &str, ports: &[PortKey], index: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut text = format!("{address_type}\0{index}");
    for (name, port, protocol, app_protocol) in ports {
        let name = name.as_deref().unwrap_or("");
        let app_protocol = app_protocol.as_deref().unwrap_or("");
        text.push_str(&format!("\0{name}\0{port}\0{protocol}\0{app_protocol}"));
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (0..5)
        .map(|_| {
            let c = ALPHABET[(hash % ALPHABET.len() as u64) as usize] as char;
            hash /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodIP, PodSpec, PodStatus, ServicePort,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn port(name: &str, port: i32, target: IntOrString, protocol: &str) -> ServicePort {
        ServicePort {
            name: (!name.is_empty()).then(|| name.to_string()),
            port,
            target_port: Some(target),
            protocol: Some(protocol.to_string()),
            ..Default::default()
        }
    }

    fn named(name: &str) -> IntOrString {
        IntOrString::String(name.to_string())
    }

    /// A single-stack IPv4 ClusterIP Service in "default" selecting app=<name>.
    fn svc(name: &str, ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: labels(&[("app", name)]),
                cluster_ip: Some("10.96.0.10".into()),
                ip_families: Some(vec!["IPv4".into()]),
                ports: Some(ports),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A running pod in "default" with app=<app>, node "node-1", and
    /// container ports given as (name, port, protocol).
    fn pod(name: &str, app: &str, ips: &[&str], ready: bool, ports: &[(&str, i32, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                labels: labels(&[("app", app)]),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-1".into()),
                containers: vec![Container {
                    name: "main".into(),
                    ports: Some(
                        ports
                            .iter()
                            .map(|(n, p, proto)| ContainerPort {
                                name: Some(n.to_string()),
                                container_port: *p,
                                protocol: Some(proto.to_string()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: ips.first().map(|ip| ip.to_string()),
                pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn addresses(slice: &EndpointSlice) -> Vec<&str> {
        slice
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.iter().map(String::as_str))
            .collect()
    }

    fn port_numbers(slice: &EndpointSlice) -> Vec<i32> {
        slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port)
            .collect()
    }

    fn conditions(ep: &Endpoint) -> (Option<bool>, Option<bool>, Option<bool>) {
        let c = ep.conditions.as_ref().unwrap();
        (c.ready, c.serving, c.terminating)
    }

    #[test]
    fn selector_match_and_namespace_isolation() {
        let s = svc("web", vec![port("http", 80, IntOrString::Int(8080), "TCP")]);
        let mut other_ns = pod("web-2", "web", &["10.0.0.2"], true, &[]);
        other_ns.metadata.namespace = Some("other".into());
        let pods = [
            pod("web-1", "web", &["10.0.0.1"], true, &[]),
            pod("db-1", "db", &["10.0.0.3"], true, &[]),
            other_ns,
        ];
        let slices = endpoint_slices(&[s], &pods);
        assert_eq!(slices.len(), 1);
        let slice = &slices[0];
        assert_eq!(addresses(slice), ["10.0.0.1"]);
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(slice.metadata.namespace.as_deref(), Some("default"));
        let name = slice.metadata.name.as_deref().unwrap();
        assert!(
            name.starts_with("web-") && name.len() == "web-".len() + 5,
            "{name}"
        );
        let l = slice.metadata.labels.as_ref().unwrap();
        assert_eq!(l[SERVICE_NAME_LABEL], "web");
        assert_eq!(l[MANAGED_BY_LABEL], CONTROLLER_NAME);
        assert!(!l.contains_key(HEADLESS_LABEL));
        let ports = slice.ports.as_ref().unwrap();
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
        let ep = &slice.endpoints[0];
        let target = ep.target_ref.as_ref().unwrap();
        assert_eq!(target.kind.as_deref(), Some("Pod"));
        assert_eq!(target.name.as_deref(), Some("web-1"));
        assert_eq!(target.namespace.as_deref(), Some("default"));
        assert_eq!(target.uid.as_deref(), Some("uid-web-1"));
        assert_eq!(ep.node_name.as_deref(), Some("node-1"));
    }

    #[test]
    fn numeric_and_defaulted_target_ports() {
        let mut unnamed = port("", 443, IntOrString::Int(0), "TCP");
        unnamed.target_port = None;
        let s = svc(
            "web",
            vec![port("http", 80, IntOrString::Int(8080), "TCP"), unnamed],
        );
        let slices = endpoint_slices(&[s], &[pod("web-1", "web", &["10.0.0.1"], true, &[])]);
        assert_eq!(slices.len(), 1);
        assert_eq!(port_numbers(&slices[0]), [8080, 443]);
        assert_eq!(slices[0].ports.as_ref().unwrap()[1].name, None);
    }

    #[test]
    fn same_port_name_different_numbers_split_slices() {
        let s = svc("web", vec![port("http", 80, named("http"), "TCP")]);
        let pods = [
            pod(
                "web-1",
                "web",
                &["10.0.0.1"],
                true,
                &[("http", 8080, "TCP")],
            ),
            pod(
                "web-2",
                "web",
                &["10.0.0.2"],
                true,
                &[("http", 9090, "TCP")],
            ),
            pod(
                "web-3",
                "web",
                &["10.0.0.3"],
                true,
                &[("http", 8080, "TCP")],
            ),
        ];
        let slices = endpoint_slices(std::slice::from_ref(&s), &pods);
        assert_eq!(slices.len(), 2);
        let by_port: BTreeMap<i32, Vec<&str>> = slices
            .iter()
            .map(|sl| (port_numbers(sl)[0], addresses(sl)))
            .collect();
        assert_eq!(by_port[&8080], ["10.0.0.1", "10.0.0.3"]);
        assert_eq!(by_port[&9090], ["10.0.0.2"]);
        assert_ne!(slices[0].metadata.name, slices[1].metadata.name);
        // Deterministic: same input, same names and order.
        assert_eq!(endpoint_slices(&[s], &pods), slices);
    }

    #[test]
    fn pod_missing_named_port_contributes_no_port_for_it() {
        let s = svc(
            "web",
            vec![
                port("http", 80, named("http"), "TCP"),
                port("metrics", 9000, IntOrString::Int(9000), "TCP"),
            ],
        );
        let pods = [
            pod(
                "web-1",
                "web",
                &["10.0.0.1"],
                true,
                &[("http", 8080, "TCP")],
            ),
            pod(
                "web-2",
                "web",
                &["10.0.0.2"],
                true,
                &[("other", 8080, "TCP")],
            ),
        ];
        let slices = endpoint_slices(&[s], &pods);
        assert_eq!(slices.len(), 2);
        let by_addr: BTreeMap<&str, Vec<i32>> = slices
            .iter()
            .map(|sl| (addresses(sl)[0], port_numbers(sl)))
            .collect();
        assert_eq!(by_addr["10.0.0.1"], [8080, 9000]);
        assert_eq!(by_addr["10.0.0.2"], [9000]);
    }

    #[test]
    fn not_ready_and_terminating_conditions() {
        let s = svc("web", vec![port("http", 80, IntOrString::Int(8080), "TCP")]);
        let mut terminating = pod("web-3", "web", &["10.0.0.3"], true, &[]);
        terminating.metadata.deletion_timestamp =
            Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let mut terminating_unready = pod("web-4", "web", &["10.0.0.4"], false, &[]);
        terminating_unready.metadata.deletion_timestamp =
            terminating.metadata.deletion_timestamp.clone();
        let pods = [
            pod("web-1", "web", &["10.0.0.1"], true, &[]),
            pod("web-2", "web", &["10.0.0.2"], false, &[]),
            terminating,
            terminating_unready,
        ];
        let slices = endpoint_slices(&[s], &pods);
        assert_eq!(slices.len(), 1);
        let eps = &slices[0].endpoints;
        assert_eq!(conditions(&eps[0]), (Some(true), Some(true), Some(false)));
        assert_eq!(conditions(&eps[1]), (Some(false), Some(false), Some(false)));
        assert_eq!(conditions(&eps[2]), (Some(false), Some(true), Some(true)));
        assert_eq!(conditions(&eps[3]), (Some(false), Some(false), Some(true)));
    }

    #[test]
    fn publish_not_ready_addresses_marks_everything_ready() {
        let mut s = svc("web", vec![port("http", 80, IntOrString::Int(8080), "TCP")]);
        s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let mut terminating = pod("web-2", "web", &["10.0.0.2"], true, &[]);
        terminating.metadata.deletion_timestamp =
            Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let pods = [pod("web-1", "web", &["10.0.0.1"], false, &[]), terminating];
        let slices = endpoint_slices(&[s], &pods);
        let eps = &slices[0].endpoints;
        assert_eq!(conditions(&eps[0]), (Some(true), Some(false), Some(false)));
        assert_eq!(conditions(&eps[1]), (Some(true), Some(true), Some(true)));
    }

    #[test]
    fn pods_without_ip_or_finished_leave_a_placeholder() {
        let s = svc("web", vec![port("http", 80, IntOrString::Int(8080), "TCP")]);
        let mut succeeded = pod("web-2", "web", &["10.0.0.2"], false, &[]);
        succeeded.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut failed = pod("web-3", "web", &["10.0.0.3"], false, &[]);
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let pods = [pod("web-1", "web", &[], true, &[]), succeeded, failed];
        let slices = endpoint_slices(&[s], &pods);
        assert_eq!(slices.len(), 1);
        assert!(slices[0].endpoints.is_empty());
        // The controller's placeholder has no ports either.
        assert_eq!(slices[0].ports, Some(Vec::new()));
        assert_eq!(slices[0].address_type, "IPv4");
    }

    #[test]
    fn dual_stack_and_single_stack_ipv6() {
        let ports = vec![port("http", 80, IntOrString::Int(8080), "TCP")];
        let mut dual = svc("dual", ports.clone());
        dual.spec.as_mut().unwrap().ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
        let mut v6 = svc("v6", ports.clone());
        v6.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into()]);
        let dual_pod = pod("dual-1", "dual", &["10.0.0.1", "fd00:0::1"], true, &[]);
        let mut v6_pod = dual_pod.clone();
        v6_pod.metadata.name = Some("v6-1".into());
        v6_pod.metadata.labels = labels(&[("app", "v6")]);

        let slices = endpoint_slices(&[dual, v6], &[dual_pod, v6_pod]);
        let summary: Vec<(&str, &str, Vec<&str>)> = slices
            .iter()
            .map(|s| {
                let svc = s.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL].as_str();
                (svc, s.address_type.as_str(), addresses(s))
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            summary,
            [
                ("dual", "IPv4", vec!["10.0.0.1"]),
                ("dual", "IPv6", vec!["fd00::1"]),
                ("v6", "IPv6", vec!["fd00::1"]),
            ]
        );
    }

    #[test]
    fn families_without_ip_families_and_pod_ip_fallback() {
        let ports = vec![port("http", 80, IntOrString::Int(8080), "TCP")];
        let mut headless = svc("headless", ports.clone());
        let spec = headless.spec.as_mut().unwrap();
        spec.ip_families = None;
        spec.cluster_ip = Some("None".into());
        let mut by_cluster_ip = svc("byip", ports);
        let spec = by_cluster_ip.spec.as_mut().unwrap();
        spec.ip_families = None;
        spec.cluster_ip = Some("fd00:96::10".into());
        // Only the legacy single podIP is set.
        let mut p = pod("p", "headless", &[], true, &[]);
        p.status.as_mut().unwrap().pod_ip = Some("fd00::7".into());

        let slices = endpoint_slices(&[headless, by_cluster_ip], &[p]);
        let types: Vec<(&str, &str, usize)> = slices
            .iter()
            .map(|s| {
                let svc = s.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL].as_str();
                (svc, s.address_type.as_str(), s.endpoints.len())
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            types,
            [
                ("byip", "IPv6", 0),
                ("headless", "IPv4", 0),
                ("headless", "IPv6", 1),
            ]
        );
        let headless_slice = slices
            .iter()
            .find(|s| s.address_type == "IPv6" && !s.endpoints.is_empty());
        let l = headless_slice.unwrap().metadata.labels.as_ref().unwrap();
        assert_eq!(l.get(HEADLESS_LABEL).map(String::as_str), Some(""));
    }

    #[test]
    fn selectorless_empty_selector_and_external_name_get_nothing() {
        let ports = vec![port("http", 80, IntOrString::Int(8080), "TCP")];
        let mut none = svc("web", ports.clone());
        none.spec.as_mut().unwrap().selector = None;
        let mut empty = svc("web", ports.clone());
        empty.spec.as_mut().unwrap().selector = Some(BTreeMap::new());
        let mut external = svc("web", ports);
        let spec = external.spec.as_mut().unwrap();
        spec.type_ = Some("ExternalName".into());
        spec.external_name = Some("example.com".into());
        let pods = [pod("web-1", "web", &["10.0.0.1"], true, &[])];
        assert!(endpoint_slices(&[none, empty, external], &pods).is_empty());
    }

    #[test]
    fn named_port_resolution_respects_protocol() {
        let s = svc(
            "dns",
            vec![
                port("dns", 53, named("dns"), "UDP"),
                port("dns-tcp", 53, named("dns"), "TCP"),
                port("sctp", 53, named("dns"), "SCTP"),
            ],
        );
        let p = pod(
            "dns-1",
            "dns",
            &["10.0.0.1"],
            true,
            &[("dns", 5353, "TCP"), ("dns", 53, "UDP")],
        );
        let slices = endpoint_slices(&[s], &[p]);
        assert_eq!(slices.len(), 1);
        let ports: Vec<(Option<&str>, Option<i32>, Option<&str>)> = slices[0]
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.port, p.protocol.as_deref()))
            .collect();
        assert_eq!(
            ports,
            [
                (Some("dns"), Some(53), Some("UDP")),
                (Some("dns-tcp"), Some(5353), Some("TCP")),
            ]
        );
    }

    #[test]
    fn sidecar_named_ports_are_found() {
        let s = svc("web", vec![port("http", 80, named("proxy"), "TCP")]);
        let mut p = pod("web-1", "web", &["10.0.0.1"], true, &[]);
        let sidecar = |policy: &str, number| Container {
            name: format!("sidecar-{policy}"),
            restart_policy: Some(policy.into()),
            ports: Some(vec![ContainerPort {
                name: Some("proxy".into()),
                container_port: number,
                ..Default::default()
            }]),
            ..Default::default()
        };
        // A plain init container's port is not looked at, a sidecar's is.
        p.spec.as_mut().unwrap().init_containers =
            Some(vec![sidecar("Never", 1), sidecar("Always", 15001)]);
        let slices = endpoint_slices(&[s], &[p]);
        assert_eq!(port_numbers(&slices[0]), [15001]);
    }

    #[test]
    fn no_pods_gives_one_placeholder_per_family() {
        let mut s = svc("web", vec![port("http", 80, IntOrString::Int(8080), "TCP")]);
        s.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
        let slices = endpoint_slices(&[s], &[]);
        let types: BTreeSet<&str> = slices.iter().map(|s| s.address_type.as_str()).collect();
        assert_eq!(types, BTreeSet::from(["IPv4", "IPv6"]));
        assert!(
            slices
                .iter()
                .all(|s| s.endpoints.is_empty() && s.ports == Some(Vec::new()))
        );
        assert_ne!(slices[0].metadata.name, slices[1].metadata.name);
    }

    #[test]
    fn endpoints_sorted_by_address_and_split_at_100() {
        let s = svc("web", vec![port("http", 80, IntOrString::Int(8080), "TCP")]);
        let pods: Vec<Pod> = (1..=150)
            .rev()
            .map(|i| {
                pod(
                    &format!("web-{i}"),
                    "web",
                    &[&format!("10.0.{}.{}", i / 100, i % 100)],
                    true,
                    &[],
                )
            })
            .collect();
        let slices = endpoint_slices(&[s], &pods);
        assert_eq!(slices.len(), 2);
        let mut all: Vec<IpAddr> = Vec::new();
        let mut sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
        sizes.sort();
        assert_eq!(sizes, [50, 100]);
        for slice in &slices {
            let addrs: Vec<IpAddr> = addresses(slice)
                .iter()
                .map(|a| a.parse().unwrap())
                .collect();
            assert!(addrs.windows(2).all(|w| w[0] < w[1]), "unsorted: {addrs:?}");
            all.extend(addrs);
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 150);
    }

    #[test]
    fn hostname_set_when_subdomain_names_the_service() {
        let s = svc("web", vec![port("http", 80, IntOrString::Int(8080), "TCP")]);
        let mut p = pod("web-1", "web", &["10.0.0.1"], true, &[]);
        let spec = p.spec.as_mut().unwrap();
        spec.hostname = Some("web-1".into());
        spec.subdomain = Some("web".into());
        let mut q = pod("web-2", "web", &["10.0.0.2"], true, &[]);
        q.spec.as_mut().unwrap().hostname = Some("web-2".into());
        let slices = endpoint_slices(&[s], &[p, q]);
        let hostnames: Vec<Option<&str>> = slices[0]
            .endpoints
            .iter()
            .map(|e| e.hostname.as_deref())
            .collect();
        assert_eq!(hostnames, [Some("web-1"), None]);
    }
}
