//! What the Kubernetes API server does to a Service when it is created or
//! updated, for standalone mode (Services read from manifests, no API
//! server): defaulting (`SetDefaults_Service`), validation
//! (`ValidateService`, `ValidateServiceUpdate`) and allocation of clusterIPs
//! and nodePorts (`pkg/registry/core/service/storage/alloc.go`), with
//! rejections worded as the API server words them. Pure functions, plus a
//! small JSON state file that keeps allocations stable across restarts.
//!
//! The allocation a Service holds in [`Allocations`] plays the part of the
//! stored object's allocated fields: a manifest that leaves `clusterIP` or a
//! `nodePort` out keeps what it was given before (the API server patches them
//! in from the old object), and changing an allocated clusterIP is refused
//! ("may not change once set").
mod allocations;
mod allocator;
mod defaults;
mod families;
mod field;
mod formats;
mod network;
mod service;
#[cfg(test)]
mod test_support;
mod validation;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::{
    api::core::v1::Service, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};

pub use allocations::{Allocations, HEALTH_CHECK_KEY, port_key};
pub use network::{Cidr, ServiceNetwork};

use allocator::{Failure, State, allocate_ips, allocate_node_ports};
use defaults::set_defaults;
use families::init_families;
use field::{aggregate, quote};
use service::{EXTERNAL_NAME, namespace, opt, type_of};
use validation::{update_errors, validate};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub namespace: String,
    pub name: String,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Admission {
    pub admitted: Vec<Service>,
    pub rejections: Vec<Rejection>,
}

/// Admits the desired Services (as read from manifests, in a stable order).
///
/// `previous` holds each Service's last admitted version (key "ns/name"): a
/// Service that fails validation keeps its previous admitted version in
/// `admitted` (the API server would have rejected the update, so the old
/// object stays), or is absent if it never was admitted. Allocations for
/// Services that no longer exist are released.
pub fn admit(
    desired: Vec<Service>,
    previous: &BTreeMap<String, Service>,
    net: &ServiceNetwork,
    allocations: &mut Allocations,
) -> Admission {
    let keys: Vec<String> = desired.iter().map(key).collect();
    let live: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
    allocations.release_all_but(&live);
    // If the state file was lost, what was admitted still holds its addresses.
    for k in &live {
        if let Some(prev) = previous.get(*k)
            && !allocations.holds_any(k)
        {
            allocations.record(k, prev);
        }
    }
    allocations.forget_outside(net);

    let mut state = State::new(net, allocations, &desired);
    let mut out = Admission::default();
    let mut seen = BTreeSet::new();
    for (svc, key) in desired.into_iter().zip(keys) {
        let namespace = namespace(&svc.metadata).to_owned();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let message = if !seen.insert(key.clone()) {
            // The first manifest created it; a second one cannot create it again.
            format!("services {} already exists", quote(&name))
        } else {
            match admit_one(svc, &key, previous.get(&key), &mut state) {
                Ok(svc) => {
                    out.admitted.push(svc);
                    continue;
                }
                Err(message) => {
                    // A rejected update leaves the stored object as it was.
                    out.admitted.extend(previous.get(&key).cloned());
                    message
                }
            }
        };
        out.rejections.push(Rejection {
            namespace,
            name,
            message,
        });
    }
    out
}

/// "namespace/name", with the namespace defaulted.
fn key(svc: &Service) -> String {
    format!(
        "{}/{}",
        namespace(&svc.metadata),
        svc.metadata.name.as_deref().unwrap_or("")
    )
}

/// Create or update one Service. On success the stored allocations are
/// updated; on failure nothing changes and the API server's message is
/// returned.
fn admit_one(
    mut svc: Service,
    key: &str,
    prev: Option<&Service>,
    st: &mut State,
) -> Result<Service, String> {
    set_defaults(&mut svc);
    let name = svc.metadata.name.clone().unwrap_or_default();
    let invalid_object =
        |errs: Vec<String>| format!("Service {} is invalid: {}", quote(&name), aggregate(errs));
    let mut spec = svc.spec.take().unwrap_or_default();
    // normalizeClusterIPs: an old-style manifest sets only the singular field.
    if let Some(ip) = spec.cluster_ip.as_ref().filter(|ip| !ip.is_empty())
        && spec.cluster_ips.as_ref().is_none_or(Vec::is_empty)
    {
        spec.cluster_ips = Some(vec![ip.clone()]);
    }
    let user = spec.clone();
    let held_ips = st
        .allocations
        .cluster_ips
        .get(key)
        .cloned()
        .unwrap_or_default();
    let held_ports = st
        .allocations
        .node_ports
        .get(key)
        .cloned()
        .unwrap_or_default();

    // patchAllocatedValues: a manifest without a clusterIP keeps the one allocated.
    let patched = !held_ips.is_empty()
        && type_of(&spec) != EXTERNAL_NAME
        && opt(&spec.cluster_ip).is_none()
        && spec.cluster_ips.as_ref().is_none_or(Vec::is_empty);
    if patched {
        spec.cluster_ip = Some(held_ips[0].to_string());
        spec.cluster_ips = Some(held_ips.iter().map(IpAddr::to_string).collect());
    }

    // Update checks compare with what the Service holds; a create has nothing to compare.
    let mut errs = if held_ips.is_empty() {
        vec![]
    } else {
        update_errors(&user, &spec, &held_ips)
    };
    errs.extend(validate(&svc.metadata, &spec));
    if !errs.is_empty() {
        return Err(invalid_object(errs));
    }
    let fail = |e: Failure| match e {
        Failure::Invalid(errs) => invalid_object(errs),
        Failure::Internal(msg) => msg,
    };
    let ips = if type_of(&spec) == EXTERNAL_NAME {
        vec![]
    } else {
        init_families(&mut spec, &user, patched, &held_ips, prev, st.net)
            .map_err(invalid_object)?;
        allocate_ips(&mut spec, key, &held_ips, st).map_err(fail)?
    };
    let ports = allocate_node_ports(&mut spec, key, &held_ports, st).map_err(fail)?;

    st.commit(key, ips, ports);
    svc.spec = Some(spec);
    // A manifest's status.loadBalancer stands for what a load-balancer
    // controller writes through the status subresource (there is none
    // here); without one, the status stays what it was.
    let lb_status = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref());
    if lb_status.is_none_or(|lb| lb.ingress.as_ref().is_none_or(|i| i.is_empty())) {
        svc.status = prev.and_then(|p| p.status.clone());
    }
    svc.metadata.creation_timestamp = prev
        .and_then(|p| p.metadata.creation_timestamp.clone())
        .or_else(now);
    Ok(svc)
}

/// Now, to the second, as the API server stores timestamps.
fn now() -> Option<Time> {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let seconds = i64::try_from(since_epoch.as_secs()).ok()?;
    Timestamp::from_second(seconds).ok().map(Time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::*;

    #[test]
    fn invalid_update_keeps_previous_version() {
        let mut alloc = Allocations::default();
        let first = admit(vec![simple("web", "")], &BTreeMap::new(), &v4(), &mut alloc);
        let prev = previous(&first);
        let state = alloc.clone();
        let bad =
            svc("metadata: {name: web}\nspec:\n  ports: [{name: http, port: 80}, {port: 81}]");
        let out = admit(vec![bad], &prev, &v4(), &mut alloc);
        assert_eq!(
            out.rejections[0].message,
            "Service \"web\" is invalid: spec.ports[1].name: Required value"
        );
        assert_eq!(out.admitted, first.admitted);
        assert_eq!(alloc, state);

        // An allocated clusterIP cannot be changed by an update.
        let moved = simple("web", "  clusterIP: 10.96.0.20");
        let out = admit(vec![moved], &prev, &v4(), &mut alloc);
        assert_eq!(
            out.rejections[0].message,
            "Service \"web\" is invalid: spec.clusterIPs[0]: Invalid value: []string{\"10.96.0.20\"}: \
             may not change once set"
        );
        assert_eq!(out.admitted, first.admitted);
        assert_eq!(alloc, state);

        // The previous admission's creationTimestamp survives a valid update.
        let ts = Time(Timestamp::from_second(1_700_000_000).unwrap());
        let mut prev = prev;
        prev.get_mut("default/web")
            .unwrap()
            .metadata
            .creation_timestamp = Some(ts.clone());
        let out = admit(
            vec![simple("web", "  sessionAffinity: ClientIP")],
            &prev,
            &v4(),
            &mut alloc,
        );
        assert_eq!(out.rejections, vec![]);
        assert_eq!(out.admitted[0].metadata.creation_timestamp, Some(ts));
        let affinity = spec(&out.admitted[0]).session_affinity_config.clone();
        assert_eq!(
            affinity.and_then(|c| c.client_ip?.timeout_seconds),
            Some(10800)
        );
        assert_eq!(ips(&out.admitted[0]), ips(&first.admitted[0]));
    }

    #[test]
    fn never_admitted_invalid_service_is_absent() {
        let out = admit(
            vec![simple("Bad_Name", "")],
            &BTreeMap::new(),
            &v4(),
            &mut Allocations::default(),
        );
        assert_eq!(out.admitted, vec![]);
        assert_eq!(
            out.rejections[0].message,
            "Service \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a DNS-1035 label must \
             consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end \
             with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is \
             '[a-z]([-a-z0-9]*[a-z0-9])?')"
        );
    }

    #[test]
    fn release_on_deletion() {
        let mut alloc = Allocations::default();
        let first = admit(
            vec![simple("a", "  type: NodePort")],
            &BTreeMap::new(),
            &v4(),
            &mut alloc,
        );
        let ip = ips(&first.admitted[0])[0].clone();
        let port = node_ports(&first.admitted[0])[0];
        assert!(!alloc.cluster_ips.is_empty() && !alloc.node_ports.is_empty());
        let out = admit(vec![], &previous(&first), &v4(), &mut alloc);
        assert_eq!(out, Admission::default());
        assert_eq!(alloc, Allocations::default());
        // What a deleted Service held can be had by another.
        let taker = simple(
            "b",
            &format!(
                "  type: NodePort\n  clusterIP: {ip}\n  ports: [{{port: 80, nodePort: {port}}}]"
            ),
        );
        let out = admit(vec![taker], &BTreeMap::new(), &v4(), &mut alloc);
        assert_eq!(out.rejections, vec![]);
    }

    #[test]
    fn duplicate_manifest_rejected() {
        let out = admit(
            vec![simple("a", ""), simple("a", "")],
            &BTreeMap::new(),
            &v4(),
            &mut Allocations::default(),
        );
        assert_eq!(out.admitted.len(), 1);
        assert_eq!(out.rejections[0].message, "services \"a\" already exists");
        // Even when it existed before, it is listed once.
        let prev = previous(&out);
        let out = admit(
            vec![simple("a", ""), simple("a", "")],
            &prev,
            &v4(),
            &mut Allocations::default(),
        );
        assert_eq!(out.admitted.len(), 1);
    }
}
