//! `initIPFamilyFields`: settles a Service's ipFamilyPolicy and ipFamilies
//! against the cluster's service network before addresses are allocated.
use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::{
    field::{Val, invalid},
    network::{Family, ServiceNetwork, parse_ip},
    service::{
        NONE, PREFER_DUAL_STACK, REQUIRE_DUAL_STACK, SINGLE_STACK, ip_families, is_headless,
    },
};

/// Settles ipFamilyPolicy and ipFamilies. `user` is the spec as given,
/// `patched` tells whether `spec` got its clusterIPs from `held` (what the
/// Service holds), and `prev` is its last admitted version.
pub(super) fn init_families(
    spec: &mut ServiceSpec,
    user: &ServiceSpec,
    patched: bool,
    held: &[IpAddr],
    prev: Option<&Service>,
    net: &ServiceNetwork,
) -> Result<(), Vec<String>> {
    let headless = is_headless(spec);
    let selectorless = spec.selector.as_ref().is_none_or(BTreeMap::is_empty);
    if spec.ip_family_policy.is_none() {
        // An update keeps the policy it had; a create infers one.
        let old = prev.and_then(|p| p.spec.as_ref()?.ip_family_policy.clone());
        let default = if headless && selectorless {
            REQUIRE_DUAL_STACK
        } else {
            SINGLE_STACK
        };
        spec.ip_family_policy = Some(old.unwrap_or_else(|| default.into()));
    }
    let policy = spec.ip_family_policy.clone().unwrap_or_default();
    let mut ips = spec.cluster_ips.take().unwrap_or_default();
    let mut fams = ip_families(spec);
    let held_fams: Vec<Family> = held.iter().map(Family::of).collect();
    let mut errs = vec![];
    if policy == SINGLE_STACK {
        // Setting SingleStack on an unchanged dual-stack Service is how one
        // releases its secondary address.
        if patched && ips.len() > 1 {
            ips.truncate(1);
        }
        if fams.len() > 1 && fams == held_fams {
            fams.truncate(1);
        }
        if ips.len() == 2 {
            let msg = "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified";
            errs.push(invalid("spec.ipFamilyPolicy", Val::str(&policy), msg));
        }
        if fams.len() == 2 {
            let msg = "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified";
            errs.push(invalid("spec.ipFamilyPolicy", Val::str(&policy), msg));
        }
    }
    // Addresses asked for without their families name them.
    for (i, ip) in ips.iter().enumerate() {
        if ip == NONE {
            break;
        }
        let Some(fam) = parse_ip(ip).map(|ip| Family::of(&ip)) else {
            continue;
        };
        if i >= fams.len() {
            if net.cidr(fam).is_some() {
                fams.push(fam);
            } else {
                let msg = format!("{} is not configured on this cluster", fam.name());
                errs.push(invalid(
                    &format!("spec.clusterIPs[{i}]"),
                    Val::strings(&ips),
                    &msg,
                ));
            }
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let done = |spec: &mut ServiceSpec, fams: Vec<Family>, ips: Vec<String>| {
        spec.ip_families = Some(fams.iter().map(|f| f.name().to_owned()).collect());
        spec.cluster_ips = (!ips.is_empty()).then_some(ips);
        Ok(())
    };
    if headless && selectorless {
        // Headless without a selector may name families the cluster lacks:
        // no address is allocated, and endpoints are managed by hand.
        if fams.is_empty() {
            fams.push(net.primary());
        }
        if fams.len() < 2 && policy != SINGLE_STACK {
            fams.push(fams[0].other());
        }
        return done(spec, fams, ips);
    }
    if policy == REQUIRE_DUAL_STACK && !net.dual_stack() {
        let msg = "this cluster is not configured for dual-stack services";
        errs.push(invalid("spec.ipFamilyPolicy", Val::str(&policy), msg));
    }
    for (i, fam) in fams.iter().enumerate() {
        if net.cidr(*fam).is_none() {
            let path = format!("spec.ipFamilies[{i}]");
            errs.push(invalid(
                &path,
                Val::str(fam.name()),
                "not configured on this cluster",
            ));
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    if fams.is_empty() {
        fams.push(net.primary());
    }
    // The API server never upgrades or downgrades a PreferDualStack Service
    // on its own after the cluster's families change: it keeps what it has.
    let keep = policy == PREFER_DUAL_STACK
        && patched
        && user.ip_families.as_ref().is_none_or(Vec::is_empty);
    if policy != SINGLE_STACK && fams.len() == 1 && net.dual_stack() && !keep {
        fams.push(fams[0].other());
    }
    done(spec, fams, ips)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::apiserver::{Allocations, admit, test_support::*};

    #[test]
    fn families_not_configured() {
        let net = v4();
        assert_eq!(
            rejected(simple("s", "  ipFamilies: [IPv6]"), &net),
            "Service \"s\" is invalid: spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster"
        );
        assert_eq!(
            rejected(simple("s", "  ipFamilyPolicy: RequireDualStack"), &net),
            "Service \"s\" is invalid: spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": \
             this cluster is not configured for dual-stack services"
        );
        assert_eq!(
            rejected(simple("s", "  clusterIP: \"fd00:96::10\""), &net),
            "Service \"s\" is invalid: spec.clusterIPs[0]: Invalid value: []string{\"fd00:96::10\"}: \
             IPv6 is not configured on this cluster"
        );
        assert_eq!(
            rejected(simple("s", "  ipFamilies: [IPv4, IPv6]"), &dual()),
            "Service \"s\" is invalid: spec.ipFamilyPolicy: Invalid value: \"SingleStack\": \
             must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified"
        );
    }

    #[test]
    fn headless_services() {
        let with_selector = simple("h", "  clusterIP: None");
        let selectorless =
            svc("metadata: {name: manual}\nspec: {clusterIP: None, ports: [{port: 80}]}");
        let mut alloc = Allocations::default();
        let out = admit(
            vec![with_selector, selectorless],
            &BTreeMap::new(),
            &v4(),
            &mut alloc,
        );
        assert_eq!(out.rejections, vec![]);
        let s = spec(&out.admitted[0]);
        assert_eq!(
            (s.cluster_ip.as_deref(), ips(&out.admitted[0])),
            (Some("None"), vec!["None".into()])
        );
        assert_eq!(s.ip_family_policy.as_deref(), Some("SingleStack"));
        assert_eq!(s.ip_families, Some(vec!["IPv4".into()]));
        // Without a selector it defaults to both families, configured or not.
        let s = spec(&out.admitted[1]);
        assert_eq!(s.ip_family_policy.as_deref(), Some("RequireDualStack"));
        assert_eq!(s.ip_families, Some(vec!["IPv4".into(), "IPv6".into()]));
        assert_eq!(alloc, Allocations::default());
        assert_eq!(
            rejected(
                svc(
                    "metadata: {name: n}\nspec: {type: NodePort, clusterIP: None, ports: [{port: 80}]}"
                ),
                &v4()
            ),
            "Service \"n\" is invalid: spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for NodePort services"
        );
    }
}
