//! The Kubernetes API as the agent's source: reflectors of Services,
//! EndpointSlices and this agent's Node, and Events on Services.
//!
//! As kube-proxy does, Services and EndpointSlices are watched with the
//! label selector that leaves out what another proxy owns
//! (`service.kubernetes.io/service-proxy-name`) and headless Services
//! (`service.kubernetes.io/headless`, which the EndpointSlice controller
//! also puts on their slices): adding such a label looks like a deletion.
//!
//! Each event also names the Service it concerns (an EndpointSlice's is
//! its `kubernetes.io/service-name` label), so a sync computes only those
//! again, as kube-proxy's change trackers do; a relist names them all.
//!
//! The reflectors' stores change only on events: while the API server is
//! unreachable the watchers back off and retry, the stores keep their last
//! content, and so the dataplane stays as it was. A relist (after a 410
//! Gone, or a reconnect) replaces a store's content atomically once the
//! whole list has arrived.
use std::{
    collections::{BTreeSet, HashMap},
    fmt::Debug,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use log::{info, warn};
use serde::de::DeserializeOwned;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    desired_state::{Changed, Objects, ServiceName},
    model::{HEADLESS_LABEL, Problem, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL},
};

/// kube-proxy's selector for what it implements.
pub fn proxied_selector() -> String {
    format!("!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}")
}

/// A client from a kubeconfig file, or, without one, the in-cluster
/// service account (or `$KUBECONFIG`, as kube's inference does).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("no --kubeconfig and no in-cluster configuration")?,
    };
    Ok(Client::try_from(config)?)
}

pub struct ClusterSource {
    objects: ClusterObjects,
    /// Which Services the events since the last sync concern.
    changed: Arc<Mutex<Changed>>,
    nodes: Store<Node>,
    node_name: String,
    recorder: Recorder,
    /// Set once every store holds a complete first list, so the first sync
    /// never mistakes "not listed yet" for "deleted".
    ready: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ClusterSource {
    /// Starts the three reflectors; `changed` gets a message after every
    /// event that may have changed a store.
    pub fn start(client: Client, node_name: String, changed: mpsc::UnboundedSender<()>) -> Self {
        let proxied = watcher::Config::default().labels(&proxied_selector());
        // Until the first lists are complete, anything may change.
        let pending = Arc::new(Mutex::new(Changed::Everything));
        let note = |pending: &Mutex<Changed>, what: Changed| lock(pending).merge(what);

        let (services, writer) = reflector::store();
        let t1 = reflect(
            Api::all(client.clone()),
            proxied.clone(),
            writer,
            &changed,
            {
                let pending = pending.clone();
                move |event: &watcher::Event<Service>| match event {
                    watcher::Event::Apply(s) | watcher::Event::Delete(s) => {
                        note(&pending, Changed::Only(BTreeSet::from([name_of(s)])));
                    }
                    watcher::Event::InitDone => note(&pending, Changed::Everything),
                    watcher::Event::Init | watcher::Event::InitApply(_) => {}
                }
            },
        );
        let (slices, writer) = reflector::store();
        let owners = Arc::new(Mutex::new(SliceOwners::default()));
        let t2 = reflect(Api::all(client.clone()), proxied, writer, &changed, {
            let (pending, owners, slices) = (pending.clone(), owners.clone(), slices.clone());
            move |event: &watcher::Event<EndpointSlice>| match event {
                watcher::Event::Apply(s) => {
                    let concerned = lock(&owners).set(s, owner_of(s));
                    note(&pending, Changed::Only(concerned));
                }
                watcher::Event::Delete(s) => {
                    let concerned = lock(&owners).set(s, None);
                    note(&pending, Changed::Only(concerned));
                }
                // The store was replaced whole (reflect applies an event
                // before passing it on): so are the owners, from it.
                watcher::Event::InitDone => {
                    *lock(&owners) = SliceOwners::of(&slices.state());
                    note(&pending, Changed::Everything);
                }
                watcher::Event::Init | watcher::Event::InitApply(_) => {}
            }
        });
        let (nodes, writer) = reflector::store();
        let t3 = reflect(
            Api::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
            writer,
            &changed,
            // The agent compares what it uses of the Node at every sync.
            |_: &watcher::Event<Node>| {},
        );
        let reporter = Reporter {
            controller: "svc-agent".into(),
            instance: Some(node_name.clone()),
        };
        let ready = Arc::new(AtomicBool::new(false));
        let t4 = tokio::spawn({
            let (services, slices, nodes) = (services.clone(), slices.clone(), nodes.clone());
            let ready = ready.clone();
            async move {
                let listed = services.wait_until_ready().await.is_ok()
                    && slices.wait_until_ready().await.is_ok()
                    && nodes.wait_until_ready().await.is_ok();
                if listed {
                    info!("first lists complete");
                    ready.store(true, Ordering::Release);
                    let _ = changed.send(());
                }
            }
        });
        Self {
            objects: ClusterObjects {
                services,
                slices,
                owners,
            },
            changed: pending,
            nodes,
            node_name,
            recorder: Recorder::new(client, reporter),
            ready,
            tasks: vec![t1, t2, t3, t4],
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The Services and slices, as the stores hold them now.
    pub fn objects(&self) -> ClusterObjects {
        self.objects.clone()
    }

    /// Which Services the events since the last call concern.
    pub fn take_changed(&self) -> Changed {
        std::mem::replace(&mut *lock(&self.changed), Changed::none())
    }

    pub fn node(&self) -> Option<Node> {
        self.nodes
            .state()
            .iter()
            .find(|n| n.name_any() == self.node_name)
            .map(|n| (**n).clone())
    }

    /// Publishes a Warning Event on the Service a problem is about, in the
    /// background (an unreachable API server must not hold up a sync).
    pub fn publish(&self, problem: &Problem) {
        let name = ObjectRef::new(&problem.name).within(&problem.namespace);
        let Some(svc) = self.objects.services.get(&name) else {
            return;
        };
        let reference = svc.object_ref(&());
        let event = Event {
            type_: EventType::Warning,
            reason: problem.reason.clone(),
            note: Some(problem.message.clone()),
            action: "Programming".into(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!("publishing an event: {e}");
            }
        });
    }
}

impl Drop for ClusterSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A reflector into `writer`'s store whose objects lose their
/// managedFields (large, and never read here) before they are stored;
/// `on_event` sees each event once the store holds it.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    changed: &mpsc::UnboundedSender<()>,
    mut on_event: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let kind = K::kind(&());
    let changed = changed.clone();
    let stream = watcher(api, config)
        .modify(|o| o.managed_fields_mut().clear())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // Log the first failure of a run and the recovery, not every retry.
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if failing {
                        info!("watching {kind}: connected again");
                        failing = false;
                    }
                    on_event(&event);
                    if changed.send(()).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if !failing {
                        warn!("watching {kind}: {e}; retrying with backoff");
                        failing = true;
                    }
                }
            }
        }
    })
}

/// The stores' Services and EndpointSlices, shared (cloning copies
/// handles, not objects).
#[derive(Clone)]
pub struct ClusterObjects {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    owners: Arc<Mutex<SliceOwners>>,
}

impl Objects for ClusterObjects {
    fn names(&self) -> Vec<ServiceName> {
        self.services.state().iter().map(|s| name_of(s)).collect()
    }

    fn get(&self, name: &ServiceName) -> Option<(Arc<Service>, Vec<Arc<EndpointSlice>>)> {
        let svc = self
            .services
            .get(&ObjectRef::new(&name.1).within(&name.0))?;
        let slice_names = lock(&self.owners).slices.get(name).cloned();
        let slices = slice_names
            .into_iter()
            .flatten()
            .filter_map(|slice| self.slices.get(&ObjectRef::new(&slice).within(&name.0)))
            .collect();
        Some((svc, slices))
    }
}

/// Which Service each EndpointSlice belongs to, both ways, kept from the
/// events (a store cannot be searched by label).
#[derive(Default)]
struct SliceOwners {
    /// By Service: its slices' names (sorted, as `Objects::get` promises).
    slices: HashMap<ServiceName, BTreeSet<String>>,
    /// By slice (namespace, name): its Service.
    owner: HashMap<(String, String), ServiceName>,
}

impl SliceOwners {
    fn of(slices: &[Arc<EndpointSlice>]) -> Self {
        let mut owners = Self::default();
        for s in slices {
            owners.set(s, owner_of(s));
        }
        owners
    }

    /// Records `slice` as `owner`'s (None: gone); returns the Services
    /// concerned: the owner it had and the one it has.
    fn set(&mut self, slice: &EndpointSlice, owner: Option<ServiceName>) -> BTreeSet<ServiceName> {
        let (ns, name) = service_key_of(&slice.metadata);
        let key = (ns.to_string(), name.to_string());
        let mut concerned = BTreeSet::new();
        if let Some(old) = self.owner.remove(&key) {
            if let Some(names) = self.slices.get_mut(&old) {
                names.remove(&key.1);
                if names.is_empty() {
                    self.slices.remove(&old);
                }
            }
            concerned.insert(old);
        }
        if let Some(owner) = owner {
            self.slices
                .entry(owner.clone())
                .or_default()
                .insert(key.1.clone());
            self.owner.insert(key, owner.clone());
            concerned.insert(owner);
        }
        concerned
    }
}

fn service_key_of(meta: &kube::api::ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default(),
    )
}

fn name_of(svc: &Service) -> ServiceName {
    let (ns, name) = service_key_of(&svc.metadata);
    (ns.into(), name.into())
}

/// The Service an EndpointSlice is labelled as belonging to.
fn owner_of(slice: &EndpointSlice) -> Option<ServiceName> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    let (ns, _) = service_key_of(&slice.metadata);
    (!service.is_empty()).then(|| (ns.into(), service.clone()))
}

/// A poisoned lock (a panicked holder) still holds consistent data here.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(name: &str, service: &str) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": []
        }))
        .unwrap()
    }

    fn names(v: &[&str]) -> BTreeSet<ServiceName> {
        v.iter()
            .map(|n| ("ns".to_string(), n.to_string()))
            .collect()
    }

    #[test]
    fn a_slice_event_concerns_the_service_it_had_and_the_one_it_has() {
        let mut owners = SliceOwners::default();
        let a1 = slice("a-1", "a");
        assert_eq!(owners.set(&a1, owner_of(&a1)), names(&["a"]));
        let a2 = slice("a-2", "a");
        owners.set(&a2, owner_of(&a2));
        assert_eq!(owners.slices[&("ns".into(), "a".into())].len(), 2);
        // Relabelled to another Service: both are concerned.
        let moved = slice("a-2", "b");
        assert_eq!(owners.set(&moved, owner_of(&moved)), names(&["a", "b"]));
        assert_eq!(
            owners.slices[&("ns".into(), "a".into())],
            BTreeSet::from(["a-1".to_string()])
        );
        // Deleted: its last owner is.
        assert_eq!(owners.set(&moved, None), names(&["b"]));
        assert!(!owners.slices.contains_key(&("ns".into(), "b".into())));
        let rebuilt = SliceOwners::of(&[Arc::new(a1), Arc::new(slice("c-1", "c"))]);
        assert_eq!(rebuilt.owner.len(), 2);
    }
}
