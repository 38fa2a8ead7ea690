//! How the API server reads a Service's fields, shared by defaulting,
//! validation and allocation: the enumerated values it knows and the
//! predicates its code keeps asking.
use k8s_openapi::{api::core::v1::ServiceSpec, apimachinery::pkg::apis::meta::v1::ObjectMeta};

use super::network::Family;

pub(super) const NONE: &str = "None";
pub(super) const CLUSTER_IP: &str = "ClusterIP";
pub(super) const NODE_PORT: &str = "NodePort";
pub(super) const LOAD_BALANCER: &str = "LoadBalancer";
pub(super) const EXTERNAL_NAME: &str = "ExternalName";
pub(super) const SINGLE_STACK: &str = "SingleStack";
pub(super) const PREFER_DUAL_STACK: &str = "PreferDualStack";
pub(super) const REQUIRE_DUAL_STACK: &str = "RequireDualStack";

/// Some("") counts as absent, as Go's zero values do.
pub(super) fn opt(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// The namespace a request for the object would have named.
pub(super) fn namespace(meta: &ObjectMeta) -> &str {
    opt(&meta.namespace).unwrap_or("default")
}

pub(super) fn type_of(spec: &ServiceSpec) -> &str {
    spec.type_.as_deref().unwrap_or("")
}

pub(super) fn is_headless(spec: &ServiceSpec) -> bool {
    spec.cluster_ips
        .as_deref()
        .is_some_and(|ips| ips.len() == 1 && ips[0] == NONE)
}

pub(super) fn externally_accessible(spec: &ServiceSpec) -> bool {
    let ty = type_of(spec);
    ty == LOAD_BALANCER
        || ty == NODE_PORT
        || (ty == CLUSTER_IP && spec.external_ips.as_ref().is_some_and(|v| !v.is_empty()))
}

pub(super) fn needs_health_check(spec: &ServiceSpec) -> bool {
    type_of(spec) == LOAD_BALANCER && spec.external_traffic_policy.as_deref() == Some("Local")
}

/// The families `ipFamilies` names, less any unsupported value (validation
/// reports those).
pub(super) fn ip_families(spec: &ServiceSpec) -> Vec<Family> {
    spec.ip_families
        .iter()
        .flatten()
        .filter_map(|f| Family::parse(f))
        .collect()
}
