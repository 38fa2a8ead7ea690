//! Defaulting: what the API server fills in before it validates a Service.
use k8s_openapi::{api::core::v1::Service, apimachinery::pkg::util::intstr::IntOrString};

use super::service::{
    CLUSTER_IP, LOAD_BALANCER, NODE_PORT, NONE, externally_accessible, namespace, opt, type_of,
};

/// `SetDefaults_Service`, plus the namespace the request would have named.
pub(super) fn set_defaults(svc: &mut Service) {
    svc.metadata.namespace = Some(namespace(&svc.metadata).into());
    let spec = svc.spec.get_or_insert_default();
    if opt(&spec.session_affinity).is_none() {
        spec.session_affinity = Some(NONE.into());
    }
    match spec.session_affinity.as_deref() {
        Some(NONE) => spec.session_affinity_config = None,
        Some("ClientIP") => {
            let cfg = spec.session_affinity_config.get_or_insert_default();
            let ip = cfg.client_ip.get_or_insert_default();
            ip.timeout_seconds.get_or_insert(10800);
        }
        _ => {}
    }
    if opt(&spec.type_).is_none() {
        spec.type_ = Some(CLUSTER_IP.into());
    }
    for p in spec.ports.iter_mut().flatten() {
        if opt(&p.protocol).is_none() {
            p.protocol = Some("TCP".into());
        }
        match &p.target_port {
            None | Some(IntOrString::Int(0)) => p.target_port = Some(IntOrString::Int(p.port)),
            Some(IntOrString::String(s)) if s.is_empty() => {
                p.target_port = Some(IntOrString::Int(p.port))
            }
            _ => {}
        }
    }
    if externally_accessible(spec) && opt(&spec.external_traffic_policy).is_none() {
        spec.external_traffic_policy = Some("Cluster".into());
    }
    if spec.internal_traffic_policy.is_none()
        && [CLUSTER_IP, NODE_PORT, LOAD_BALANCER].contains(&type_of(spec))
    {
        spec.internal_traffic_policy = Some("Cluster".into());
    }
    if type_of(spec) == LOAD_BALANCER {
        spec.allocate_load_balancer_node_ports.get_or_insert(true);
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::IpAddr};

    use super::*;
    use crate::apiserver::{Allocations, admit, key, network::number, test_support::*};

    #[test]
    fn defaults_applied() {
        let lb = svc(
            "metadata: {name: lb}\nspec:\n  type: LoadBalancer\n  ports: [{port: 443, targetPort: https}]",
        );
        let np = svc(
            "metadata: {name: np, namespace: web}\nspec:\n  type: NodePort\n  ports: [{port: 80}]",
        );
        let ext =
            svc("metadata: {name: ext}\nspec: {type: ExternalName, externalName: example.com.}");
        let mut alloc = Allocations::default();
        let out = admit(
            vec![simple("a", ""), lb, np, ext],
            &BTreeMap::new(),
            &v4(),
            &mut alloc,
        );
        assert_eq!(out.rejections, vec![]);
        let [a, lb, np, ext] = out.admitted.as_slice() else {
            panic!("{out:?}")
        };

        assert_eq!(a.metadata.namespace.as_deref(), Some("default"));
        assert!(a.metadata.creation_timestamp.is_some());
        let s = spec(a);
        assert_eq!(s.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(s.session_affinity.as_deref(), Some("None"));
        assert_eq!(s.ip_family_policy.as_deref(), Some("SingleStack"));
        assert_eq!(s.ip_families, Some(vec!["IPv4".to_string()]));
        assert_eq!(s.internal_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(s.external_traffic_policy, None);
        let port = &s.ports.as_ref().unwrap()[0];
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
        assert_eq!(port.target_port, Some(IntOrString::Int(80)));
        assert_eq!(port.node_port, None);
        let ip: IpAddr = s.cluster_ip.as_deref().unwrap().parse().unwrap();
        assert_eq!(s.cluster_ips, Some(vec![ip.to_string()]));
        // Dynamic allocation: in the range, above the static band, never the
        // network address nor the first address (the `kubernetes` Service's).
        assert!(v4().cidrs[0].contains(&ip));
        assert!(number(&ip) >= number(&"10.96.1.1".parse().unwrap()), "{ip}");
        assert_eq!(alloc.cluster_ips[&key(a)], vec![ip]);

        let s = spec(lb);
        assert_eq!(s.allocate_load_balancer_node_ports, Some(true));
        assert_eq!(s.external_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(
            s.ports.as_ref().unwrap()[0].target_port,
            Some(IntOrString::String("https".into()))
        );
        assert_eq!(node_ports(lb).len(), 1);
        assert_eq!(spec(np).external_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(key(np), "web/np");

        let s = spec(ext);
        assert_eq!(
            (
                s.cluster_ip.clone(),
                s.cluster_ips.clone(),
                s.ip_families.clone()
            ),
            (None, None, None)
        );
        assert_eq!(s.ip_family_policy, None);
        assert_eq!(s.internal_traffic_policy, None);
        assert!(!alloc.cluster_ips.contains_key("default/ext"));
    }
}
