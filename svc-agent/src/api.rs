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

use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::{
    agent::key,
    desired_state::{Objects, ServiceName},
    model,
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

/// What the daemon publishes for the socket to answer from: the objects
/// of its last sync, shared with its source (publishing copies nothing).
/// The views are built when the CLI asks, not at every sync.
#[derive(Default)]
pub struct Snapshot {
    /// Admitted Services and their slices (None before the first sync).
    pub objects: Option<Arc<dyn Objects + Send + Sync>>,
    /// Events by "ns/name", of admitted services and of never-admitted ones.
    pub events: BTreeMap<String, Vec<EventView>>,
}

impl Snapshot {
    pub fn answer(&self, req: Request) -> Response {
        let view = |name: &ServiceName| {
            let (svc, slices) = self.objects.as_ref()?.get(name)?;
            let own: Vec<&Arc<EndpointSlice>> = slices.iter().collect();
            Some(ServiceView {
                endpoints: model::port_endpoints(&svc, &own),
                events: self.events.get(&key(&svc)).cloned().unwrap_or_default(),
                service: (*svc).clone(),
            })
        };
        match req {
            Request::GetServices { namespace } => {
                let mut names = self.objects.as_ref().map(|o| o.names()).unwrap_or_default();
                names.retain(|(ns, _)| namespace.as_ref().is_none_or(|n| n == ns));
                names.sort();
                Response::Services(names.iter().filter_map(view).collect())
            }
            Request::DescribeService { namespace, name } => {
                let events = self
                    .events
                    .get(&format!("{namespace}/{name}"))
                    .cloned()
                    .unwrap_or_default();
                let view = view(&(namespace, name)).map(Box::new);
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
