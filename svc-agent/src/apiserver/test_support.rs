//! What the unit tests of every submodule share: networks, Services from
//! YAML, and shorthands over what `admit` returns.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::{Admission, Allocations, ServiceNetwork, admit, key};

pub(super) fn v4() -> ServiceNetwork {
    ServiceNetwork::new(vec!["10.96.0.0/16".parse().unwrap()], 30000..=32767).unwrap()
}

pub(super) fn dual() -> ServiceNetwork {
    let cidrs = vec![
        "10.96.0.0/16".parse().unwrap(),
        "fd00:96::/112".parse().unwrap(),
    ];
    ServiceNetwork::new(cidrs, 30000..=32767).unwrap()
}

/// A Service from YAML, as the manifests directory holds them.
pub(super) fn svc(yaml: &str) -> Service {
    serde_yaml_ng::from_str(yaml).unwrap()
}

pub(super) fn simple(name: &str, extra: &str) -> Service {
    svc(&format!(
        "metadata: {{name: {name}}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: 80}}]\n{extra}"
    ))
}

pub(super) fn spec(s: &Service) -> &ServiceSpec {
    s.spec.as_ref().unwrap()
}

pub(super) fn ips(s: &Service) -> Vec<String> {
    spec(s).cluster_ips.clone().unwrap_or_default()
}

pub(super) fn node_ports(s: &Service) -> Vec<i32> {
    spec(s)
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.node_port)
        .collect()
}

/// Admits with no history and returns the only rejection's message.
pub(super) fn rejected(s: Service, net: &ServiceNetwork) -> String {
    let out = admit(vec![s], &BTreeMap::new(), net, &mut Allocations::default());
    assert!(out.admitted.is_empty(), "{:?}", out.admitted);
    assert_eq!(out.rejections.len(), 1);
    out.rejections[0].message.clone()
}

/// The `previous` argument of the next `admit`: what this one admitted.
pub(super) fn previous(out: &Admission) -> BTreeMap<String, Service> {
    out.admitted.iter().map(|s| (key(s), s.clone())).collect()
}
