//! Validation: `ValidateService` on create and update, and the checks
//! `ValidateServiceUpdate` adds against what the Service already holds.
use std::{collections::BTreeSet, net::IpAddr};

use k8s_openapi::{
    api::core::v1::{ClientIPConfig, ServicePort, ServiceSpec, SessionAffinityConfig},
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use super::{
    field::{Val, duplicate, forbidden, go_list, invalid, not_supported, quote, required},
    formats::{
        IP_MSG, dns1035_label, dns1123_label, dns1123_subdomain, non_special_ip, port_name,
        port_num,
    },
    network::{Cidr, Family, parse_ip},
    service::{
        CLUSTER_IP, EXTERNAL_NAME, LOAD_BALANCER, NODE_PORT, NONE, PREFER_DUAL_STACK,
        REQUIRE_DUAL_STACK, SINGLE_STACK, externally_accessible, is_headless, needs_health_check,
        opt, type_of,
    },
};

const TRAFFIC_POLICIES: [&str; 2] = ["Cluster", "Local"];

/// `ValidateService`. The checks run in the API server's order, since a
/// rejection lists all their errors in that order.
pub(super) fn validate(meta: &ObjectMeta, spec: &ServiceSpec) -> Vec<String> {
    let mut errs = validate_meta(meta);
    let ty = type_of(spec);
    let ports = spec.ports.as_deref().unwrap_or_default();
    let headless = is_headless(spec);
    if ports.is_empty() && !headless && ty != EXTERNAL_NAME {
        errs.push(required("spec.ports", ""));
    }
    match ty {
        LOAD_BALANCER | NODE_PORT if headless => errs.push(invalid(
            "spec.clusterIPs[0]",
            Val::str(NONE),
            &format!("may not be set to 'None' for {ty} services"),
        )),
        EXTERNAL_NAME => errs.extend(validate_external_name(spec)),
        _ => {}
    }
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        errs.extend(validate_port(p, i, ports.len() > 1, &mut names));
    }
    errs.extend(validate_session_affinity(spec));
    errs.extend(validate_cluster_ips(spec));
    errs.extend(validate_external_ips(spec));
    const TYPES: [&str; 4] = [CLUSTER_IP, EXTERNAL_NAME, LOAD_BALANCER, NODE_PORT];
    match opt(&spec.type_) {
        None => errs.push(required("spec.type", "")),
        Some(t) if !TYPES.contains(&t) => {
            errs.push(not_supported("spec.type", Val::str(t), &TYPES))
        }
        Some(_) => {}
    }
    errs.extend(validate_port_combinations(ty, ports));
    errs.extend(validate_load_balancer_fields(ty, spec));
    errs.extend(validate_external_traffic_policy(spec));
    match spec.internal_traffic_policy.as_deref() {
        None if [CLUSTER_IP, NODE_PORT, LOAD_BALANCER].contains(&ty) => {
            errs.push(required("spec.internalTrafficPolicy", ""))
        }
        Some(p) if !TRAFFIC_POLICIES.contains(&p) => errs.push(not_supported(
            "spec.internalTrafficPolicy",
            Val::str(p),
            &TRAFFIC_POLICIES,
        )),
        _ => {}
    }
    errs
}

/// `ValidateObjectMeta` as far as a Service's name and namespace go.
fn validate_meta(meta: &ObjectMeta) -> Vec<String> {
    let mut errs = vec![];
    match opt(&meta.name) {
        None => errs.push(required(
            "metadata.name",
            "name or generateName is required",
        )),
        Some(name) => {
            let msgs = dns1035_label(name);
            errs.extend(
                msgs.into_iter()
                    .map(|m| invalid("metadata.name", Val::str(name), &m)),
            );
        }
    }
    if let Some(ns) = opt(&meta.namespace) {
        let msgs = dns1123_label(ns);
        errs.extend(
            msgs.into_iter()
                .map(|m| invalid("metadata.namespace", Val::str(ns), &m)),
        );
    }
    errs
}

/// An ExternalName Service is a DNS alias: it names a host and has no
/// addresses of its own.
fn validate_external_name(spec: &ServiceSpec) -> Vec<String> {
    let mut errs = vec![];
    for (field, set) in [
        (
            "spec.clusterIPs",
            spec.cluster_ips.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        (
            "spec.ipFamilies",
            spec.ip_families.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        ("spec.ipFamilyPolicy", spec.ip_family_policy.is_some()),
    ] {
        if set {
            errs.push(forbidden(field, "may not be set for ExternalName services"));
        }
    }
    // The value (a CNAME) may have a trailing dot to denote it as fully qualified.
    let cname = spec.external_name.as_deref().unwrap_or("");
    let cname = cname.strip_suffix('.').unwrap_or(cname);
    if cname.is_empty() {
        errs.push(required("spec.externalName", ""));
    } else {
        let msgs = dns1123_subdomain(cname);
        errs.extend(
            msgs.iter()
                .map(|m| invalid("spec.externalName", Val::str(cname), m)),
        );
    }
    errs
}

/// `validateServicePort`. `names` collects the port names seen so far, which
/// must be unique within the Service.
fn validate_port(
    p: &ServicePort,
    i: usize,
    require_name: bool,
    names: &mut BTreeSet<String>,
) -> Vec<String> {
    let mut errs = vec![];
    let path = |field: &str| format!("spec.ports[{i}].{field}");
    match opt(&p.name) {
        None if require_name => errs.push(required(&path("name"), "")),
        None => {}
        Some(name) => {
            let msgs = dns1123_label(name);
            errs.extend(
                msgs.iter()
                    .map(|m| invalid(&path("name"), Val::str(name), m)),
            );
            if !names.insert(name.to_owned()) {
                errs.push(duplicate(&path("name"), Val::str(name)));
            }
        }
    }
    if let Some(msg) = port_num(p.port) {
        errs.push(invalid(&path("port"), Val::Int(p.port.into()), msg));
    }
    const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];
    match opt(&p.protocol) {
        None => errs.push(required(&path("protocol"), "")),
        Some(proto) if !PROTOCOLS.contains(&proto) => errs.push(not_supported(
            &path("protocol"),
            Val::str(proto),
            &PROTOCOLS,
        )),
        Some(_) => {}
    }
    match &p.target_port {
        Some(IntOrString::Int(n)) => errs
            .extend(port_num(*n).map(|m| invalid(&path("targetPort"), Val::Int((*n).into()), m))),
        Some(IntOrString::String(s)) => {
            let msgs = port_name(s);
            errs.extend(
                msgs.iter()
                    .map(|m| invalid(&path("targetPort"), Val::str(s), m)),
            );
        }
        None => {}
    }
    errs
}

fn validate_session_affinity(spec: &ServiceSpec) -> Vec<String> {
    match opt(&spec.session_affinity) {
        None => vec![required("spec.sessionAffinity", "")],
        Some(a) if !["ClientIP", NONE].contains(&a) => vec![not_supported(
            "spec.sessionAffinity",
            Val::str(a),
            &["ClientIP", NONE],
        )],
        Some("ClientIP") => validate_affinity_config(spec.session_affinity_config.as_ref()),
        Some(_) if spec.session_affinity_config.is_some() => vec![forbidden(
            "spec.sessionAffinityConfig",
            "must not be set when session affinity is None",
        )],
        Some(_) => vec![],
    }
}

/// `validateClientIPAffinityConfig`.
fn validate_affinity_config(cfg: Option<&SessionAffinityConfig>) -> Vec<String> {
    let detail = "when session affinity type is ClientIP";
    match cfg.map(|c| c.client_ip.as_ref()) {
        None => vec![required("spec.sessionAffinityConfig", detail)],
        Some(None) => vec![required("spec.sessionAffinityConfig.clientIP", detail)],
        Some(Some(ClientIPConfig {
            timeout_seconds: None,
        })) => {
            vec![required(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                detail,
            )]
        }
        Some(Some(ClientIPConfig {
            timeout_seconds: Some(t),
        })) if !(1..=86400).contains(t) => {
            vec![invalid(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                Val::Int((*t).into()),
                "must be greater than 0 and less than 86400",
            )]
        }
        Some(Some(_)) => vec![],
    }
}

/// `ValidateServiceClusterIPsRelatedFields`.
fn validate_cluster_ips(spec: &ServiceSpec) -> Vec<String> {
    let mut errs = vec![];
    if type_of(spec) == EXTERNAL_NAME {
        return errs;
    }
    let ips = spec.cluster_ips.as_deref().unwrap_or_default();
    let shown = || Val::strings(ips);
    // normalizeClusterIPs has already filled clusterIPs from a lone clusterIP.
    match opt(&spec.cluster_ip) {
        Some(ip) if ips[0] != ip => errs.push(invalid(
            "spec.clusterIPs",
            shown(),
            "first value must match `clusterIP`",
        )),
        None if !ips.is_empty() => errs.push(invalid(
            "spec.clusterIPs",
            shown(),
            "must be empty when `clusterIP` is not specified",
        )),
        _ => {}
    }
    let mut seen = BTreeSet::new();
    for (i, fam) in spec.ip_families.iter().flatten().enumerate() {
        let path = format!("spec.ipFamilies[{i}]");
        if Family::parse(fam).is_none() {
            errs.push(not_supported(&path, Val::str(fam), &["IPv4", "IPv6"]));
        }
        if !seen.insert(fam) {
            errs.push(duplicate(&path, Val::str(fam)));
        }
    }
    if let Some(p) = &spec.ip_family_policy {
        const POLICIES: [&str; 3] = [PREFER_DUAL_STACK, REQUIRE_DUAL_STACK, SINGLE_STACK];
        if !POLICIES.contains(&p.as_str()) {
            errs.push(not_supported("spec.ipFamilyPolicy", Val::str(p), &POLICIES));
        }
    }
    let mut bad_ips = false;
    for (i, ip) in ips.iter().enumerate() {
        if i == 0 && ip == NONE {
            if ips.len() > 1 {
                bad_ips = true;
                errs.push(invalid(
                    "spec.clusterIPs",
                    shown(),
                    "'None' must be the first and only value",
                ));
            }
            continue;
        }
        if parse_ip(ip).is_none() {
            bad_ips = true;
            errs.push(invalid(
                &format!("spec.clusterIPs[{i}]"),
                Val::str(ip),
                IP_MSG,
            ));
        }
    }
    if ips.len() > 2 {
        errs.push(invalid(
            "spec.clusterIPs",
            shown(),
            "may only hold up to 2 values",
        ));
    }
    // Past a malformed address the remaining checks would only add noise.
    if bad_ips {
        return errs;
    }
    let parsed: Vec<IpAddr> = ips.iter().filter_map(|ip| parse_ip(ip)).collect();
    if ips.len() > 1 {
        let dual = parsed.iter().any(IpAddr::is_ipv4) && parsed.iter().any(IpAddr::is_ipv6);
        if !dual {
            let msg = "may specify no more than one IP for each IP family";
            errs.push(invalid("spec.clusterIPs", shown(), msg));
        }
    }
    if !is_headless(spec) {
        for (i, (ip, fam)) in parsed
            .iter()
            .zip(spec.ip_families.iter().flatten())
            .enumerate()
        {
            let want = match fam.as_str() {
                "IPv4" if ip.is_ipv6() => "IPv4",
                "IPv6" if ip.is_ipv4() => "IPv6",
                _ => continue,
            };
            let msg = format!("expected an {want} value as indicated by `ipFamilies[{i}]`");
            errs.push(invalid(
                &format!("spec.clusterIPs[{i}]"),
                Val::str(&ips[i]),
                &msg,
            ));
        }
    }
    errs
}

fn validate_external_ips(spec: &ServiceSpec) -> Vec<String> {
    let mut errs = vec![];
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        let path = format!("spec.externalIPs[{i}]");
        match parse_ip(ip) {
            None => errs.push(invalid(&path, Val::str(ip), IP_MSG)),
            Some(addr) => errs.extend(non_special_ip(&addr).into_iter().map(|m| {
                let m = m.replace("{ip}", ip);
                invalid(&path, Val::str(ip), &m)
            })),
        }
    }
    errs
}

/// What the ports may not share: a ClusterIP Service has no nodePorts, and
/// no two ports may have the same (protocol, nodePort) or (protocol, port).
fn validate_port_combinations(ty: &str, ports: &[ServicePort]) -> Vec<String> {
    let mut errs = vec![];
    if ty == CLUSTER_IP {
        for (i, p) in ports.iter().enumerate() {
            if p.node_port.is_some_and(|n| n != 0) {
                let path = format!("spec.ports[{i}].nodePort");
                errs.push(forbidden(
                    &path,
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }
    let mut node_ports = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        if let Some(np) = p.node_port.filter(|n| *n != 0)
            && !node_ports.insert((p.protocol.clone(), np))
        {
            errs.push(duplicate(
                &format!("spec.ports[{i}].nodePort"),
                Val::Int(np.into()),
            ));
        }
    }
    let mut pairs = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let protocol = p.protocol.as_deref().unwrap_or("");
        if !pairs.insert((protocol, p.port)) {
            // The API server prints its internal struct with Go's %#v.
            let key = format!(
                "core.ServicePort{{Name:\"\", Protocol:{}, AppProtocol:(*string)(nil), Port:{}, \
                 TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
                quote(protocol),
                p.port
            );
            errs.push(duplicate(&format!("spec.ports[{i}]"), Val::Go(key)));
        }
    }
    errs
}

/// The fields that only a LoadBalancer Service may set.
fn validate_load_balancer_fields(ty: &str, spec: &ServiceSpec) -> Vec<String> {
    let mut errs = vec![];
    let lb_only = "may only be used when `type` is 'LoadBalancer'";
    let ranges = spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default();
    if !ranges.is_empty() {
        if ty != LOAD_BALANCER {
            errs.push(forbidden("spec.LoadBalancerSourceRanges", lb_only));
        }
        for (i, r) in ranges.iter().enumerate() {
            if r.trim().parse::<Cidr>().is_err() {
                let msg = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
                errs.push(invalid(
                    &format!("spec.LoadBalancerSourceRanges[{i}]"),
                    Val::str(r.trim()),
                    msg,
                ));
            }
        }
    }
    if ty != LOAD_BALANCER {
        if spec.allocate_load_balancer_node_ports.is_some() {
            errs.push(forbidden("spec.allocateLoadBalancerNodePorts", lb_only));
        }
        if spec.load_balancer_class.is_some() {
            errs.push(forbidden("spec.loadBalancerClass", lb_only));
        }
    }
    errs
}

/// `validateServiceExternalTrafficPolicy`, with the health check nodePort
/// that only a Local policy uses.
fn validate_external_traffic_policy(spec: &ServiceSpec) -> Vec<String> {
    let mut errs = vec![];
    let etp = opt(&spec.external_traffic_policy);
    if !externally_accessible(spec) {
        if let Some(p) = etp {
            let msg = "may only be set for externally-accessible services";
            errs.push(invalid("spec.externalTrafficPolicy", Val::str(p), msg));
        }
    } else {
        match etp {
            None => errs.push(required("spec.externalTrafficPolicy", "")),
            Some(p) if !TRAFFIC_POLICIES.contains(&p) => errs.push(not_supported(
                "spec.externalTrafficPolicy",
                Val::str(p),
                &TRAFFIC_POLICIES,
            )),
            Some(_) => {}
        }
    }
    // A missing healthCheckNodePort is allocated later, so only a given one is checked.
    if let Some(hc) = spec.health_check_node_port.filter(|n| *n != 0) {
        if !needs_health_check(spec) {
            let msg = "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'";
            errs.push(invalid(
                "spec.healthCheckNodePort",
                Val::Int(hc.into()),
                msg,
            ));
        } else if let Some(msg) = port_num(hc) {
            errs.push(invalid(
                "spec.healthCheckNodePort",
                Val::Int(hc.into()),
                msg,
            ));
        }
    }
    errs
}

/// `validateUpgradeDowngradeClusterIPs` and `validateUpgradeDowngradeIPFamilies`,
/// the old object being what the Service holds. `user` is the Service as
/// given, `spec` the one with allocated values patched in.
pub(super) fn update_errors(
    user: &ServiceSpec,
    spec: &ServiceSpec,
    held: &[IpAddr],
) -> Vec<String> {
    if type_of(spec) == EXTERNAL_NAME {
        return vec![];
    }
    let mut errs = cluster_ips_update_errors(user, spec, held);
    // A headless Service may change families: it has no addresses to keep.
    if !is_headless(spec) {
        errs.extend(families_update_errors(user, spec, held));
    }
    errs
}

fn cluster_ips_update_errors(
    user: &ServiceSpec,
    spec: &ServiceSpec,
    held: &[IpAddr],
) -> Vec<String> {
    let mut errs = vec![];
    let old: Vec<String> = held.iter().map(IpAddr::to_string).collect();
    let new = spec.cluster_ips.clone().unwrap_or_default();
    let same = |a: &str, b: &str| a == b || parse_ip(a).is_some_and(|a| parse_ip(b) == Some(a));
    let changed = |i: usize| {
        invalid(
            &format!("spec.clusterIPs[{i}]"),
            Val::strings(&new),
            "may not change once set",
        )
    };
    if old.len() == new.len() {
        errs.extend(
            (0..old.len())
                .filter(|i| !same(&old[*i], &new[*i]))
                .map(changed),
        );
    } else if !new.is_empty() && !same(&old[0], &new[0]) {
        errs.push(changed(0));
    }
    errs.extend(release_error(old.len(), new.len(), user, "clusterIP"));
    errs
}

fn families_update_errors(user: &ServiceSpec, spec: &ServiceSpec, held: &[IpAddr]) -> Vec<String> {
    let mut errs = vec![];
    let old: Vec<&str> = held.iter().map(|ip| Family::of(ip).name()).collect();
    let new: Vec<String> = user.ip_families.clone().unwrap_or_default();
    // The API server reports every changed family at index 0.
    if old.len() == new.len() {
        let val = Val::Go(format!("[]core.IPFamily{}", go_list(&new)));
        for (o, n) in old.iter().zip(&new) {
            if o != n {
                errs.push(invalid(
                    "spec.ipFamilies[0]",
                    val.clone(),
                    "may not change once set",
                ));
            }
        }
    } else if !new.is_empty() && new[0] != old[0] {
        let ips = Val::strings(spec.cluster_ips.as_deref().unwrap_or_default());
        errs.push(invalid(
            "spec.ipFamilies[0]",
            ips,
            "may not change once set",
        ));
    }
    errs.extend(release_error(old.len(), new.len(), user, "ipFamily"));
    errs
}

/// Going from two values to one releases the secondary, which a Service
/// must ask for by setting SingleStack.
fn release_error(old: usize, new: usize, user: &ServiceSpec, what: &str) -> Option<String> {
    let policy = opt(&user.ip_family_policy);
    (old > new && new == 1 && policy != Some(SINGLE_STACK)).then(|| {
        let msg = format!("must be set to 'SingleStack' when releasing the secondary {what}");
        invalid(
            "spec.ipFamilyPolicy",
            policy.map_or(Val::Null, Val::str),
            &msg,
        )
    })
}

#[cfg(test)]
mod tests {
    use crate::apiserver::test_support::*;

    #[test]
    fn cluster_ip_validation() {
        let net = v4();
        assert_eq!(
            rejected(simple("s", "  clusterIP: not-an-ip"), &net),
            "Service \"s\" is invalid: spec.clusterIPs[0]: Invalid value: \"not-an-ip\": \
             must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
        );
        assert_eq!(
            rejected(simple("s", "  clusterIP: 10.0.0.1"), &net),
            "Service \"s\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.0.0.1\"}: \
             failed to allocate IP 10.0.0.1: the provided IP (10.0.0.1) is not in the valid range. \
             The range of valid IPs is 10.96.0.0/16"
        );
        // Neither the network nor the broadcast address is in the valid range.
        for ip in ["10.96.0.0", "10.96.255.255"] {
            let msg = rejected(simple("s", &format!("  clusterIP: {ip}")), &net);
            assert!(
                msg.ends_with("is not in the valid range. The range of valid IPs is 10.96.0.0/16"),
                "{msg}"
            );
        }
        assert_eq!(
            rejected(
                simple("s", "  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.20]"),
                &net
            ),
            "Service \"s\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.96.0.20\"}: \
             first value must match `clusterIP`"
        );
        assert_eq!(
            rejected(simple("s", "  clusterIPs: [10.96.0.20]"), &net),
            "Service \"s\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.96.0.20\"}: \
             must be empty when `clusterIP` is not specified"
        );
        let three = "  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, \"fd00:96::10\", 10.96.0.11]\n  \
                     ipFamilyPolicy: RequireDualStack";
        assert_eq!(
            rejected(simple("s", three), &dual()),
            "Service \"s\" is invalid: spec.clusterIPs: Invalid value: \
             []string{\"10.96.0.10\", \"fd00:96::10\", \"10.96.0.11\"}: may only hold up to 2 values"
        );
        let same = "  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, 10.96.0.11]\n  ipFamilyPolicy: PreferDualStack";
        assert_eq!(
            rejected(simple("s", same), &dual()),
            "Service \"s\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.96.0.10\", \"10.96.0.11\"}: \
             may specify no more than one IP for each IP family"
        );
    }

    #[test]
    fn port_validation() {
        let net = v4();
        let ports = |p: &str| svc(&format!("metadata: {{name: s}}\nspec:\n  ports: {p}"));
        assert_eq!(
            rejected(ports("[{name: http, port: 80}, {port: 81}]"), &net),
            "Service \"s\" is invalid: spec.ports[1].name: Required value"
        );
        assert_eq!(
            rejected(
                ports("[{name: http, port: 80}, {name: http, port: 81}]"),
                &net
            ),
            "Service \"s\" is invalid: spec.ports[1].name: Duplicate value: \"http\""
        );
        assert_eq!(
            rejected(ports("[{port: 80, protocol: ICMP}]"), &net),
            "Service \"s\" is invalid: spec.ports[0].protocol: Unsupported value: \"ICMP\": \
             supported values: \"SCTP\", \"TCP\", \"UDP\""
        );
        assert_eq!(
            rejected(ports("[{port: 70000, targetPort: 8080}]"), &net),
            "Service \"s\" is invalid: spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
        // Several errors are joined as the API server joins them; the
        // defaulted targetPort inherits the bad port.
        assert_eq!(
            rejected(ports("[{port: 0}]"), &net),
            "Service \"s\" is invalid: [spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive, \
             spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive]"
        );
        assert_eq!(
            rejected(ports("[{name: a, port: 443}, {name: b, port: 443}]"), &net),
            "Service \"s\" is invalid: spec.ports[1]: Duplicate value: core.ServicePort{Name:\"\", Protocol:\"TCP\", \
             AppProtocol:(*string)(nil), Port:443, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:\"\"}, \
             NodePort:0}"
        );
        assert_eq!(
            rejected(ports("[]"), &net),
            "Service \"s\" is invalid: spec.ports: Required value"
        );
    }

    #[test]
    fn external_name_validation() {
        let net = v4();
        assert_eq!(
            rejected(svc("metadata: {name: e}\nspec: {type: ExternalName}"), &net),
            "Service \"e\" is invalid: spec.externalName: Required value"
        );
        assert_eq!(
            rejected(
                svc("metadata: {name: e}\nspec: {type: ExternalName, externalName: Not_Valid}"),
                &net
            ),
            "Service \"e\" is invalid: spec.externalName: Invalid value: \"Not_Valid\": a lowercase RFC 1123 \
             subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end \
             with an alphanumeric character (e.g. 'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        );
        assert_eq!(
            rejected(
                svc(
                    "metadata: {name: e}\nspec: {type: ExternalName, externalName: a.example, clusterIP: 10.96.0.9}"
                ),
                &net
            ),
            "Service \"e\" is invalid: spec.clusterIPs: Forbidden: may not be set for ExternalName services"
        );
    }
}
