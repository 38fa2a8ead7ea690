//! The desired state, kept up to date from one sync to the next. A
//! Service's frontends are computed again only when the Service, one of
//! its EndpointSlices or the node changed, so a sync costs time in
//! proportion to what changed, not to the size of the cluster. `model`
//! decides what each Service wants; this module remembers and merges.
//!
//! "Unchanged" is judged by identity first (a reflector's store hands out
//! the same `Arc` until the object changes), then by value (a manifest
//! source parses every object afresh).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{
    dataplane::Frontend,
    model::{self, Desired, Node, Problem, SliceIndex, Target, service_key},
};

/// A Service's namespace and name, owned.
type ServiceName = (String, String);

#[derive(Default)]
pub struct DesiredState {
    /// The node the frontends were computed for.
    node: Option<Node>,
    /// What each Service was computed from, by namespace, then name.
    services: HashMap<String, HashMap<String, Memo>>,
    desired: Desired,
    /// Frontends that more than one Service names, with every claimant.
    /// The first in `service_key` order holds it (its target is in
    /// `desired`), as in `model::desired`.
    shared: BTreeMap<Frontend, BTreeSet<ServiceName>>,
}

/// One Service's inputs at its last computation, and what came of them.
struct Memo {
    service: Arc<Service>,
    slices: Vec<Arc<EndpointSlice>>,
    frontends: Vec<Frontend>,
    problems: Vec<Problem>,
}

/// What an `update` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// Frontends whose target may differ: added, removed or recomputed.
    pub changed: BTreeSet<Frontend>,
    /// How many Services were computed again.
    pub recomputed: usize,
}

impl DesiredState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// What the Services' frontends leave out, and why (`model::problems`).
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.services
            .values()
            .flat_map(|s| s.values())
            .flat_map(|m| &m.problems)
    }

    /// Brings the state up to date with `services` (all of them, not just
    /// the changed ones) and their slices in `index`.
    pub fn update(&mut self, services: &[Arc<Service>], index: &SliceIndex, node: &Node) -> Update {
        let mut update = Update::default();
        if self.node.as_ref() != Some(node) {
            // NodePorts and endpoint locality depend on the node: start over.
            update.changed.extend(self.desired.keys().copied());
            *self = Self {
                node: Some(node.clone()),
                ..Self::default()
            };
        }
        // Claimants to compute again: they name a frontend whose holder
        // let go of it.
        let mut reclaim = BTreeSet::new();

        let present: HashSet<(&str, &str)> = services.iter().map(|s| service_key(s)).collect();
        let gone: Vec<ServiceName> = self
            .services
            .iter()
            .flat_map(|(ns, names)| names.keys().map(move |name| (ns.as_str(), name.as_str())))
            .filter(|key| !present.contains(key))
            .map(|(ns, name)| (ns.to_string(), name.to_string()))
            .collect();
        for name in &gone {
            self.withdraw(name, &mut update.changed, &mut reclaim);
        }

        for svc in services {
            let own = index.of(svc);
            if self.unchanged(svc, own) {
                continue;
            }
            let (ns, name) = service_key(svc);
            self.withdraw(&(ns.into(), name.into()), &mut update.changed, &mut reclaim);
            self.compute(svc, own, node, &mut update.changed);
            update.recomputed += 1;
        }

        if !reclaim.is_empty() {
            let by_name: HashMap<(&str, &str), &Arc<Service>> =
                services.iter().map(|s| (service_key(s), s)).collect();
            for (ns, name) in &reclaim {
                if let Some(svc) = by_name.get(&(ns.as_str(), name.as_str())) {
                    self.compute(svc, index.of(svc), node, &mut update.changed);
                    update.recomputed += 1;
                }
            }
        }
        update
    }

    /// Whether `svc` and its slices are what its frontends were computed
    /// from.
    fn unchanged(&self, svc: &Arc<Service>, own: &[&Arc<EndpointSlice>]) -> bool {
        let (ns, name) = service_key(svc);
        let Some(memo) = self.services.get(ns).and_then(|s| s.get(name)) else {
            return false;
        };
        same(&memo.service, svc)
            && memo.slices.len() == own.len()
            && memo.slices.iter().zip(own).all(|(a, b)| same(a, b))
    }

    /// Computes `svc`'s frontends and claims them.
    fn compute(
        &mut self,
        svc: &Arc<Service>,
        own: &[&Arc<EndpointSlice>],
        node: &Node,
        changed: &mut BTreeSet<Frontend>,
    ) {
        let targets = model::frontends(svc, own, node);
        let memo = Memo {
            service: svc.clone(),
            slices: own.iter().map(|s| Arc::clone(s)).collect(),
            frontends: targets.iter().map(|(fe, _)| *fe).collect(),
            problems: model::problems(svc),
        };
        let (ns, name) = service_key(svc);
        let claimant: ServiceName = (ns.into(), name.into());
        for (fe, target) in targets {
            self.claim(fe, target, &claimant, changed);
        }
        self.services
            .entry(claimant.0)
            .or_default()
            .insert(claimant.1, memo);
    }

    /// `claimant` names `fe`: it holds it unless a Service earlier in
    /// `service_key` order does.
    fn claim(
        &mut self,
        fe: Frontend,
        target: Target,
        claimant: &ServiceName,
        changed: &mut BTreeSet<Frontend>,
    ) {
        let holder = self.desired.get(&fe).map(holder_of);
        if let Some(holder) = holder.filter(|h| h != claimant) {
            let claimants = self.shared.entry(fe).or_default();
            claimants.insert(holder.clone());
            claimants.insert(claimant.clone());
            if *claimant > holder {
                return;
            }
        }
        self.desired.insert(fe, target);
        changed.insert(fe);
    }

    /// Forgets what `name` was computed from and gives up its frontends;
    /// a frontend another Service also names goes into `reclaim`'s care.
    fn withdraw(
        &mut self,
        name: &ServiceName,
        changed: &mut BTreeSet<Frontend>,
        reclaim: &mut BTreeSet<ServiceName>,
    ) {
        let Some(memo) = self
            .services
            .get_mut(&name.0)
            .and_then(|s| s.remove(&name.1))
        else {
            return;
        };
        if self.services.get(&name.0).is_some_and(|s| s.is_empty()) {
            self.services.remove(&name.0);
        }
        for fe in memo.frontends {
            let held = self.desired.get(&fe).is_some_and(|t| holder_of(t) == *name);
            if held {
                self.desired.remove(&fe);
                changed.insert(fe);
            }
            if let Some(claimants) = self.shared.get_mut(&fe) {
                claimants.remove(name);
                if held && let Some(next) = claimants.first() {
                    reclaim.insert(next.clone());
                }
                if claimants.len() < 2 {
                    self.shared.remove(&fe);
                }
            }
        }
    }
}

fn holder_of(target: &Target) -> ServiceName {
    (
        target.service.namespace.clone(),
        target.service.name.clone(),
    )
}

/// The same object: the same allocation, or equal.
fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(
        ns: &str,
        name: &str,
        ip: &str,
        external: &[&str],
        node_port: Option<u16>,
    ) -> Arc<Service> {
        let kind = if node_port.is_some() {
            "NodePort"
        } else {
            "ClusterIP"
        };
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns},
                "spec": {"type": kind, "clusterIP": ip, "externalIPs": external,
                         "ports": [{"name": "http", "port": 80, "nodePort": node_port}]}
            }))
            .unwrap(),
        )
    }

    fn slice(ns: &str, service: &str, name: &str, ips: &[String]) -> Arc<EndpointSlice> {
        let endpoints: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns,
                             "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": endpoints
            }))
            .unwrap(),
        )
    }

    fn node(ip: &str) -> Node {
        Node {
            name: "node-a".into(),
            ips: vec![ip.parse().unwrap()],
            zone: None,
        }
    }

    /// A tiny deterministic generator (the tests must not depend on a
    /// crate for randomness).
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn follows_every_change_exactly_as_computing_from_scratch_would() {
        let mut rng = Lcg(7);
        let mut state = DesiredState::new();
        let mut services: BTreeMap<String, Arc<Service>> = BTreeMap::new();
        let mut slices: BTreeMap<String, Arc<EndpointSlice>> = BTreeMap::new();
        let mut node_ip = "192.0.2.1";
        let mut before = Desired::new();
        for round in 0..400 {
            let n = rng.below(8);
            let name = format!("s{n}");
            match rng.below(6) {
                // A Service appears or changes: its own clusterIP, maybe a
                // shared externalIP (several Services claim it), maybe a
                // NodePort (several may claim the same one too).
                0 | 1 => {
                    let ext = ["203.0.113.1", "203.0.113.2"];
                    let external: Vec<&str> =
                        ext.iter().copied().take(rng.below(3) as usize).collect();
                    let node_port =
                        [None, Some(30080), Some(30000 + n as u16)][rng.below(3) as usize];
                    let svc = service("ns", &name, &format!("10.96.0.{n}"), &external, node_port);
                    services.insert(name, svc);
                }
                2 => {
                    services.remove(&name);
                }
                // A slice appears, changes or goes (a Service may have two).
                3 | 4 => {
                    let part = rng.below(2);
                    let ips: Vec<String> = (0..rng.below(4))
                        .map(|i| format!("10.244.{n}.{}", i + 10 * part))
                        .collect();
                    slices.insert(
                        format!("{name}-{part}"),
                        slice("ns", &name, &format!("{name}-{part}"), &ips),
                    );
                }
                _ => {
                    if rng.below(4) == 0 {
                        node_ip = if node_ip == "192.0.2.1" {
                            "192.0.2.2"
                        } else {
                            "192.0.2.1"
                        };
                    } else {
                        slices.remove(&format!("{name}-{}", rng.below(2)));
                    }
                }
            }
            let svcs: Vec<Arc<Service>> = services.values().cloned().collect();
            // The inputs come in another order each time, as a store's do.
            let mut sl: Vec<Arc<EndpointSlice>> = slices.values().cloned().collect();
            let turn = round % sl.len().max(1);
            sl.rotate_left(turn);
            let index = SliceIndex::new(&sl);
            let update = state.update(&svcs, &index, &node(node_ip));
            let scratch = model::desired(&svcs, &index, &node(node_ip));
            assert_eq!(state.desired(), &scratch, "round {round}");
            for fe in before.keys().chain(scratch.keys()) {
                if before.get(fe) != scratch.get(fe) {
                    assert!(
                        update.changed.contains(fe),
                        "round {round}: {fe:?} not reported"
                    );
                }
            }
            let problems: Vec<Problem> = state.problems().cloned().collect();
            assert!(problems.is_empty(), "{problems:?}");
            before = scratch;
        }
    }

    #[test]
    fn only_what_changed_is_computed_again() {
        let svcs: Vec<Arc<Service>> = (0..100)
            .map(|i| service("ns", &format!("s{i}"), &format!("10.96.1.{i}"), &[], None))
            .collect();
        let mut slices: Vec<Arc<EndpointSlice>> = (0..100)
            .map(|i| {
                slice(
                    "ns",
                    &format!("s{i}"),
                    &format!("s{i}-0"),
                    &[format!("10.244.1.{i}")],
                )
            })
            .collect();
        let mut state = DesiredState::new();
        let first = state.update(&svcs, &SliceIndex::new(&slices), &node("192.0.2.1"));
        assert_eq!((first.recomputed, first.changed.len()), (100, 100));

        // Nothing new: nothing computed, nothing to write.
        let again = state.update(&svcs, &SliceIndex::new(&slices), &node("192.0.2.1"));
        assert_eq!(again, Update::default());
        // Equal copies (a manifest source reads afresh) count as unchanged.
        let copies: Vec<Arc<Service>> = svcs.iter().map(|s| Arc::new((**s).clone())).collect();
        assert_eq!(
            state.update(&copies, &SliceIndex::new(&slices), &node("192.0.2.1")),
            Update::default()
        );

        // One slice gains an endpoint: one Service, one frontend.
        slices[42] = slice(
            "ns",
            "s42",
            "s42-0",
            &["10.244.1.42".into(), "10.244.2.42".into()],
        );
        let one = state.update(&svcs, &SliceIndex::new(&slices), &node("192.0.2.1"));
        let fe = Frontend {
            addr: "10.96.1.42:80".parse().unwrap(),
            proto: crate::dataplane::Protocol::Tcp,
        };
        assert_eq!((one.recomputed, one.changed), (1, BTreeSet::from([fe])));
        assert_eq!(state.desired()[&fe].backends.len(), 2);

        // Another node: everything again.
        let moved = state.update(&svcs, &SliceIndex::new(&slices), &node("192.0.2.9"));
        assert_eq!(moved.recomputed, 100);
    }
}
