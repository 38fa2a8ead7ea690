//! The desired state, kept up to date from one sync to the next. A
//! Service's frontends are computed again only when the Service, one of
//! its EndpointSlices or the node changed, so a sync costs time in
//! proportion to what changed, not to the size of the cluster (as
//! kube-proxy's change trackers do). `model` decides what each Service
//! wants; this module remembers and merges.
//!
//! The source says which Services may have changed (`Changed`), and hands
//! them out with their slices (`Objects`). Even a Service named as changed
//! is computed again only if it or its slices differ from last time: by
//! identity first (a reflector's store hands out the same `Arc` until the
//! object changes), then by value (a manifest source parses every object
//! afresh).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{
    dataplane::Frontend,
    model::{self, Desired, Node, Problem, SliceIndex, Target, service_key},
    service_health::{self, ServiceHealth},
};

/// A Service's namespace and name.
pub type ServiceName = (String, String);

/// Where a sync finds Services and their EndpointSlices.
pub trait Objects {
    /// Every Service's name.
    fn names(&self) -> Vec<ServiceName>;
    /// A Service and its own EndpointSlices (sorted by name); None once
    /// it is gone.
    fn get(&self, name: &ServiceName) -> Option<(Arc<Service>, Vec<Arc<EndpointSlice>>)>;
}

/// Which Services may have changed since the last update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// Any of them (the first sync, a relist, a manifest directory).
    Everything,
    Only(BTreeSet<ServiceName>),
}

impl Changed {
    pub fn none() -> Self {
        Changed::Only(BTreeSet::new())
    }

    /// Adds what `other` says changed.
    pub fn merge(&mut self, other: Changed) {
        match (&mut *self, other) {
            (Changed::Everything, _) => {}
            (_, Changed::Everything) => *self = Changed::Everything,
            (Changed::Only(a), Changed::Only(mut b)) => a.append(&mut b),
        }
    }
}

/// Services and slices listed whole, as a manifest source reads them.
pub struct Listed {
    services: HashMap<ServiceName, Arc<Service>>,
    slices: HashMap<ServiceName, Vec<Arc<EndpointSlice>>>,
}

impl Listed {
    pub fn new(services: Vec<Arc<Service>>, slices: &[Arc<EndpointSlice>]) -> Self {
        let index = SliceIndex::new(slices);
        let slices = services
            .iter()
            .map(|s| {
                (
                    owned(s),
                    index.of(s).iter().map(|s| Arc::clone(s)).collect(),
                )
            })
            .collect();
        let services = services.into_iter().map(|s| (owned(&s), s)).collect();
        Self { services, slices }
    }
}

impl Objects for Listed {
    fn names(&self) -> Vec<ServiceName> {
        self.services.keys().cloned().collect()
    }
    fn get(&self, name: &ServiceName) -> Option<(Arc<Service>, Vec<Arc<EndpointSlice>>)> {
        let svc = self.services.get(name)?;
        Some((
            svc.clone(),
            self.slices.get(name).cloned().unwrap_or_default(),
        ))
    }
}

fn owned(svc: &Service) -> ServiceName {
    let (ns, name) = service_key(svc);
    (ns.into(), name.into())
}

#[derive(Default)]
pub struct DesiredState {
    /// The node the frontends were computed for.
    node: Option<Node>,
    /// What each Service was computed from.
    services: HashMap<ServiceName, Memo>,
    desired: Desired,
    /// Frontends that more than one Service names, with every claimant.
    /// The first in `service_key` order holds it (its target is in
    /// `desired`), as in `model::desired`.
    shared: BTreeMap<Frontend, BTreeSet<ServiceName>>,
    /// The Services that have problems, and theirs.
    problems: BTreeMap<ServiceName, Vec<Problem>>,
    /// The Services that have a health check port, and its state.
    health_checks: BTreeMap<ServiceName, (u16, ServiceHealth)>,
}

/// One Service's inputs at its last computation, and its frontends.
struct Memo {
    service: Arc<Service>,
    slices: Vec<Arc<EndpointSlice>>,
    frontends: Vec<Frontend>,
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

    /// Whether an update for `node` has to look at every Service.
    pub fn node_differs(&self, node: &Node) -> bool {
        self.node.as_ref() != Some(node)
    }

    /// What the Services' frontends leave out, and why (`model::problems`).
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.values().flatten()
    }

    /// The health check ports to serve (`service_health`).
    pub fn health_checks(&self) -> BTreeMap<u16, ServiceHealth> {
        service_health::health_check_ports(self.health_checks.values().cloned())
    }

    /// Brings the state up to date with the Services `changed` names (all
    /// of them if the node changed), as `objects` has them now.
    pub fn update(
        &mut self,
        changed: &Changed,
        objects: &(impl Objects + ?Sized),
        node: &Node,
    ) -> Update {
        let mut update = Update::default();
        let mut everything = *changed == Changed::Everything;
        if self.node_differs(node) {
            // NodePorts and endpoint locality depend on the node: start over.
            update.changed.extend(self.desired.keys().copied());
            *self = Self {
                node: Some(node.clone()),
                ..Self::default()
            };
            everything = true;
        }
        let candidates: BTreeSet<ServiceName> = match changed {
            Changed::Only(names) if !everything => names.clone(),
            _ => {
                // Those known here too: one may be gone.
                let mut all: BTreeSet<ServiceName> = objects.names().into_iter().collect();
                all.extend(self.services.keys().cloned());
                all
            }
        };
        // Claimants to compute again: they name a frontend whose holder
        // let go of it.
        let mut reclaim = BTreeSet::new();
        for name in &candidates {
            let current = objects.get(name);
            if let (Some((svc, slices)), Some(memo)) = (&current, self.services.get(name))
                && memo.computed_from(svc, slices)
            {
                continue;
            }
            self.withdraw(name, &mut update.changed, &mut reclaim);
            if let Some((svc, slices)) = current {
                self.compute(name, svc, slices, node, &mut update.changed);
                update.recomputed += 1;
            }
        }
        for name in reclaim {
            if let Some((svc, slices)) = objects.get(&name) {
                self.compute(&name, svc, slices, node, &mut update.changed);
                update.recomputed += 1;
            }
        }
        update
    }

    /// Computes the Service's frontends and claims them.
    fn compute(
        &mut self,
        name: &ServiceName,
        svc: Arc<Service>,
        slices: Vec<Arc<EndpointSlice>>,
        node: &Node,
        changed: &mut BTreeSet<Frontend>,
    ) {
        let own: Vec<&Arc<EndpointSlice>> = slices.iter().collect();
        let targets = model::frontends(&svc, &own, node);
        let problems = model::problems(&svc);
        if !problems.is_empty() {
            self.problems.insert(name.clone(), problems);
        }
        if let Some(check) = service_health::health_check(&svc, &own, &node.name) {
            self.health_checks.insert(name.clone(), check);
        }
        let frontends = targets.iter().map(|(fe, _)| *fe).collect();
        for (fe, target) in targets {
            self.claim(fe, target, name, changed);
        }
        let memo = Memo {
            service: svc,
            slices,
            frontends,
        };
        self.services.insert(name.clone(), memo);
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
        self.problems.remove(name);
        self.health_checks.remove(name);
        let Some(memo) = self.services.remove(name) else {
            return;
        };
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

impl Memo {
    /// Whether these are the inputs the frontends were computed from.
    fn computed_from(&self, svc: &Arc<Service>, slices: &[Arc<EndpointSlice>]) -> bool {
        same(&self.service, svc)
            && self.slices.len() == slices.len()
            && self.slices.iter().zip(slices).all(|(a, b)| same(a, b))
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
                    services.insert(name.clone(), svc);
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
                    let slice_name = format!("{name}-{part}");
                    slices.insert(slice_name.clone(), slice("ns", &name, &slice_name, &ips));
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
            let sl: Vec<Arc<EndpointSlice>> = slices.values().cloned().collect();
            let objects = Listed::new(svcs.clone(), &sl);
            // Told what changed (as a watch does), or that anything may have.
            let changed = if rng.below(5) == 0 {
                Changed::Everything
            } else {
                Changed::Only(BTreeSet::from([("ns".to_string(), name)]))
            };
            let update = state.update(&changed, &objects, &node(node_ip));
            let scratch = model::desired(&svcs, &SliceIndex::new(&sl), &node(node_ip));
            assert_eq!(state.desired(), &scratch, "round {round}");
            for fe in before.keys().chain(scratch.keys()) {
                if before.get(fe) != scratch.get(fe) {
                    assert!(
                        update.changed.contains(fe),
                        "round {round}: {fe:?} not reported"
                    );
                }
            }
            assert_eq!(state.problems().count(), 0);
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
        let node_a = node("192.0.2.1");
        let mut state = DesiredState::new();
        let first = state.update(
            &Changed::Everything,
            &Listed::new(svcs.clone(), &slices),
            &node_a,
        );
        assert_eq!((first.recomputed, first.changed.len()), (100, 100));

        // Nothing new: nothing computed, nothing to write, even when told
        // that anything may have changed.
        let objects = Listed::new(svcs.clone(), &slices);
        assert_eq!(
            state.update(&Changed::Everything, &objects, &node_a),
            Update::default()
        );
        // Equal copies (a manifest source reads afresh) count as unchanged.
        let copies: Vec<Arc<Service>> = svcs.iter().map(|s| Arc::new((**s).clone())).collect();
        let objects = Listed::new(copies, &slices);
        assert_eq!(
            state.update(&Changed::Everything, &objects, &node_a),
            Update::default()
        );

        // One slice gains an endpoint: one Service, one frontend.
        slices[42] = slice(
            "ns",
            "s42",
            "s42-0",
            &["10.244.1.42".into(), "10.244.2.42".into()],
        );
        let objects = Listed::new(svcs.clone(), &slices);
        let s42 = Changed::Only(BTreeSet::from([("ns".to_string(), "s42".to_string())]));
        let one = state.update(&s42, &objects, &node_a);
        let fe = Frontend {
            addr: "10.96.1.42:80".parse().unwrap(),
            proto: crate::dataplane::Protocol::Tcp,
        };
        assert_eq!((one.recomputed, one.changed), (1, BTreeSet::from([fe])));
        assert_eq!(state.desired()[&fe].backends.len(), 2);

        // The Service goes.
        let gone: Vec<Arc<Service>> = svcs
            .iter()
            .filter(|s| !Arc::ptr_eq(s, &svcs[42]))
            .cloned()
            .collect();
        let objects = Listed::new(gone, &slices);
        let update = state.update(&s42, &objects, &node_a);
        assert_eq!(
            (update.recomputed, update.changed),
            (0, BTreeSet::from([fe]))
        );
        assert!(!state.desired().contains_key(&fe));

        // Another node: everything again.
        let moved = state.update(&Changed::none(), &objects, &node("192.0.2.9"));
        assert_eq!(moved.recomputed, 99);
    }
}
