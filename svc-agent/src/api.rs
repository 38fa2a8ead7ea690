//! The agent's local socket: how `svc-agent get` and `describe` ask the
//! running agent what it serves. One JSON request per connection, one JSON
//! response back.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{
    agent::key,
    model::{self, SliceIndex},
    view::{EventView, ServiceView},
};

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// All services, or one namespace's.
    GetServices {
        namespace: Option<String>,
    },
    DescribeService {
        namespace: String,
        name: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Services(Vec<ServiceView>),
    /// The service if the agent admitted it; the events about the name
    /// either way (a never-admitted service has only its rejections).
    Service {
        view: Option<Box<ServiceView>>,
        events: Vec<EventView>,
    },
}

/// What the daemon publishes for the socket to answer from: the inputs of
/// its last sync, shared with it (publishing copies no object). The views
/// are built when the CLI asks, not at every sync.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Admitted services.
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    /// Events by "ns/name", of admitted services and of never-admitted ones.
    pub events: BTreeMap<String, Vec<EventView>>,
}

impl Snapshot {
    pub fn answer(&self, req: Request) -> Response {
        let index = SliceIndex::new(&self.slices);
        let view = |svc: &Arc<Service>| ServiceView {
            service: (**svc).clone(),
            endpoints: model::port_endpoints(svc, &index),
            events: self.events.get(&key(svc)).cloned().unwrap_or_default(),
        };
        match req {
            Request::GetServices { namespace } => {
                let mut views: Vec<ServiceView> = self
                    .services
                    .iter()
                    .filter(|s| namespace.is_none() || s.metadata.namespace == namespace)
                    .map(view)
                    .collect();
                views.sort_by_cached_key(|v| key(&v.service));
                Response::Services(views)
            }
            Request::DescribeService { namespace, name } => {
                let view = self
                    .services
                    .iter()
                    .find(|s| {
                        s.metadata.namespace.as_deref() == Some(namespace.as_str())
                            && s.metadata.name.as_deref() == Some(name.as_str())
                    })
                    .map(|s| Box::new(view(s)));
                let events = self
                    .events
                    .get(&format!("{namespace}/{name}"))
                    .cloned()
                    .unwrap_or_default();
                Response::Service { view, events }
            }
        }
    }
}

/// Serves `snapshot` on `path` until the task is dropped.
pub async fn serve(path: &Path, snapshot: Arc<Mutex<Snapshot>>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket file left by an agent that died: nobody listens on it.
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("listening on {}", path.display()))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if tokio::io::BufReader::new(read)
                .read_line(&mut line)
                .await
                .is_err()
            {
                return;
            }
            let Ok(req) = serde_json::from_str::<Request>(&line) else {
                return;
            };
            let resp = snapshot.lock().unwrap().answer(req);
            if let Ok(mut bytes) = serde_json::to_vec(&resp) {
                bytes.push(b'\n');
                let _ = write.write_all(&bytes).await;
            }
        });
    }
}

/// Asks the agent listening on `path`.
pub fn ask(path: &Path, req: &Request) -> Result<Response> {
    let mut stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => bail!(
            "no svc-agent is running (cannot connect to {}: {e}); start one with `svc-agent run`, \
             or point --socket at the one that runs",
            path.display()
        ),
    };
    let mut bytes = serde_json::to_vec(req)?;
    bytes.push(b'\n');
    stream.write_all(&bytes)?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).context("reading the agent's answer")
}
