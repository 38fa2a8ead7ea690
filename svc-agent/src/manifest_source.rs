//! A manifests directory as the agent's source, for clusters without an
//! API server (the local sandbox, the demo): the agent itself does what the
//! API server and the EndpointSlice controller would (admission with
//! defaults, validation and allocation; slices from Pods and selectors).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Service;
use log::warn;
use notify::Watcher as _;
use tokio::sync::mpsc;

use crate::{
    agent::Inputs,
    apiserver::{self, Allocations, ServiceNetwork},
    desired_state::{Changed, Listed},
    endpoints, manifests,
    model::Problem,
};

pub struct ManifestSource {
    dir: PathBuf,
    network: ServiceNetwork,
    allocations_file: PathBuf,
    allocations: Allocations,
    /// What the allocations file holds.
    saved_allocations: Allocations,
    /// Last admitted version of each Service, by "ns/name".
    admitted: BTreeMap<String, Service>,
    _watcher: notify::RecommendedWatcher,
}

impl ManifestSource {
    /// Watches `dir`; `changed` gets a message after every file event.
    pub fn start(
        dir: &Path,
        network: ServiceNetwork,
        state_dir: &Path,
        changed: mpsc::UnboundedSender<()>,
    ) -> Result<Self> {
        let allocations_file = state_dir.join("allocations.json");
        let allocations = Allocations::load(&allocations_file)?;
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if ev.is_ok() {
                let _ = changed.send(());
            }
        })?;
        std::fs::create_dir_all(dir)?;
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            network,
            allocations_file,
            saved_allocations: allocations.clone(),
            allocations,
            admitted: BTreeMap::new(),
            _watcher: watcher,
        })
    }

    pub fn read(&mut self) -> Inputs {
        let objects = manifests::read_dir(&self.dir);
        for e in &objects.errors {
            warn!("manifests: {e}");
        }
        let admission = apiserver::admit(
            objects.services,
            &self.admitted,
            &self.network,
            &mut self.allocations,
        );
        self.admitted = admission
            .admitted
            .iter()
            .map(|s| (crate::agent::key(s), s.clone()))
            .collect();
        // Written (and fsynced) only when it changed: most syncs are
        // endpoint changes that allocate nothing.
        if self.allocations != self.saved_allocations {
            match self.allocations.save(&self.allocations_file) {
                Ok(()) => self.saved_allocations = self.allocations.clone(),
                Err(e) => warn!("saving allocations: {e:#}"),
            }
        }
        let mut slices = endpoints::endpoint_slices(&admission.admitted, &objects.pods);
        slices.extend(objects.endpoint_slices);
        let services = admission.admitted.into_iter().map(Arc::new).collect();
        let slices: Vec<_> = slices.into_iter().map(Arc::new).collect();
        Inputs {
            // Each read is whole: what did not change is found equal.
            changed: Changed::Everything,
            objects: Arc::new(Listed::new(services, &slices)),
            node: None,
            problems: admission
                .rejections
                .into_iter()
                .map(|r| Problem {
                    namespace: r.namespace,
                    name: r.name,
                    reason: "Invalid".into(),
                    message: r.message,
                })
                .collect(),
        }
    }
}
