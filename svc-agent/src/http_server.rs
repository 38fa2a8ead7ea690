//! The agent's two HTTP listeners, as kube-proxy has them:
//!
//! * health (`--healthz-bind-address`, default `0.0.0.0:10256`):
//!   `/healthz` and `/livez`;
//! * metrics (`--metrics-bind-address`, default `127.0.0.1:10249`):
//!   `/metrics` and `/proxyMode`.
//!
//! Health answers from shared state; metrics are rendered by the agent's
//! loop, which owns the maps, and handed back through a oneshot channel.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, header};
use hyper_util::rt::TokioIo;
use log::warn;
use tokio::sync::{mpsc, oneshot};

use crate::health::{Health, Reply};

/// What `/proxyMode` answers (kube-proxy answers "iptables", "ipvs", ...).
pub const PROXY_MODE: &str = "ebpf";

/// Health state and how often each endpoint answered what, shared between
/// the loop (which updates it) and the health listener.
#[derive(Debug)]
pub struct SharedHealth {
    pub health: Health,
    /// (path, status) → count, for `kubeproxy_proxy_healthz_total` and
    /// `kubeproxy_proxy_livez_total`.
    pub answered: BTreeMap<(&'static str, u16), u64>,
}

pub type HealthHandle = Arc<Mutex<SharedHealth>>;

/// A request for the metrics text, answered by the agent's loop.
pub type MetricsRequest = oneshot::Sender<String>;

/// Binds both listeners (so a taken port fails the start, loudly) and
/// serves them in the background.
pub async fn start(
    healthz: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    health: HealthHandle,
    metrics_tx: mpsc::Sender<MetricsRequest>,
) -> Result<()> {
    if let Some(addr) = healthz {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the health listener on {addr}"))?;
        tokio::spawn(serve(listener, move |req| {
            let health = health.clone();
            async move { health_answer(&req, &health) }
        }));
    }
    if let Some(addr) = metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener on {addr}"))?;
        tokio::spawn(serve(listener, move |req| {
            let tx = metrics_tx.clone();
            async move { metrics_answer(&req, &tx).await }
        }));
    }
    Ok(())
}

type Answer = Response<Full<Bytes>>;

async fn serve<F, Fut>(listener: tokio::net::TcpListener, handler: F)
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send,
{
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("http accept: {e}");
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn health_answer<B>(req: &Request<B>, shared: &HealthHandle) -> Answer {
    let path: &'static str = match req.uri().path() {
        "/healthz" => "/healthz",
        "/livez" => "/livez",
        _ => return text(StatusCode::NOT_FOUND, "404 page not found\n"),
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let now = SystemTime::now();
    let mut shared = shared.lock().unwrap();
    let Reply { status, body } = if path == "/healthz" {
        shared.health.healthz(now)
    } else {
        shared.health.livez(now)
    };
    *shared.answered.entry((path, status)).or_default() += 1;
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("X-Content-Type-Options", "nosniff")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, ""))
}

async fn metrics_answer<B>(req: &Request<B>, tx: &mpsc::Sender<MetricsRequest>) -> Answer {
    match req.uri().path() {
        "/proxyMode" => text(StatusCode::OK, PROXY_MODE),
        "/metrics" => {
            let (reply, answer) = oneshot::channel();
            if tx.send(reply).await.is_err() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping\n");
            }
            match answer.await {
                Ok(body) => Response::builder()
                    .header(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "")),
                Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping\n"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

fn text(status: StatusCode, body: &str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
