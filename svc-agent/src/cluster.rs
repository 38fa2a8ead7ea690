//! The Kubernetes API as the agent's source: reflectors of Services,
//! EndpointSlices and this agent's Node, and Events on Services.
//!
//! As kube-proxy does, Services and EndpointSlices are watched with the
//! label selector that leaves out what another proxy owns
//! (`service.kubernetes.io/service-proxy-name`) and headless Services
//! (`service.kubernetes.io/headless`, which the EndpointSlice controller
//! also puts on their slices): adding such a label looks like a deletion.
//!
//! The reflectors' stores change only on events: while the API server is
//! unreachable the watchers back off and retry, the stores keep their last
//! content, and so the dataplane stays as it was. A relist (after a 410
//! Gone, or a reconnect) replaces a store's content atomically once the
//! whole list has arrived.
use std::{
    fmt::Debug,
    path::Path,
    sync::{
        Arc,
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
        reflector::{self, Store},
        watcher,
    },
};
use log::{info, warn};
use serde::de::DeserializeOwned;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::model::{HEADLESS_LABEL, Problem, SERVICE_PROXY_NAME_LABEL};

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
    services: Store<Service>,
    slices: Store<EndpointSlice>,
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
        let (services, t1) = reflect(Api::all(client.clone()), proxied.clone(), &changed);
        let (slices, t2) = reflect(Api::all(client.clone()), proxied, &changed);
        let (nodes, t3) = reflect(
            Api::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
            &changed,
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
            services,
            slices,
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

    /// The stores' objects, shared with them (nothing is copied; an
    /// object the store has not replaced is the same `Arc` as last time).
    pub fn services(&self) -> Vec<Arc<Service>> {
        self.services.state()
    }

    pub fn slices(&self) -> Vec<Arc<EndpointSlice>> {
        self.slices.state()
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
        let Some(svc) = self.services.state().into_iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(&problem.namespace)
                && s.metadata.name.as_deref() == Some(&problem.name)
        }) else {
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

/// A reflector whose objects lose their managedFields (large, and never
/// read here) before they are stored.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: &mpsc::UnboundedSender<()>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&());
    let changed = changed.clone();
    let stream = watcher(api, config)
        .modify(|o| o.managed_fields_mut().clear())
        .default_backoff()
        .reflect(writer);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // Log the first failure of a run and the recovery, not every retry.
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    if failing {
                        info!("watching {kind}: connected again");
                        failing = false;
                    }
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
    });
    (reader, task)
}
