//! Watch streams: one JSON event per line over a chunked response, fed
//! from the store's change log by a task per stream.
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use serde_json::{Value, json};
use tokio::{sync::mpsc, time::Instant};

use super::{
    Shared,
    selector::Filter,
    status::ApiError,
    store::{Change, ResourceType, Store},
};

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Since {
    /// resourceVersion "" or "0": every current object as ADDED, then
    /// live changes.
    Now,
    /// Every change after this resourceVersion, then live changes.
    After(u64),
}

#[derive(Debug, Clone)]
pub(crate) struct WatchParams {
    pub rt: ResourceType,
    pub filter: Filter,
    pub since: Since,
    pub bookmarks: bool,
    /// sendInitialEvents=true (streaming lists): current objects as ADDED,
    /// then a bookmark marked `k8s.io/initial-events-end`.
    pub initial_events: bool,
    pub timeout: Option<Duration>,
}

/// Starts the stream's task; the body it returns ends when the task does.
pub(crate) fn start(shared: Arc<Shared>, params: WatchParams) -> ChannelBody {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(run(shared, params, tx));
    ChannelBody(rx)
}

async fn run(shared: Arc<Shared>, p: WatchParams, tx: mpsc::Sender<Bytes>) {
    // Subscribed before the first read, so no write can slip in between.
    let mut changed = shared.changed.subscribe();
    let first = shared.read(|s| (first_events(s, &p), s.rv(), s.epoch()));
    let (events, mut cursor, epoch) = match first {
        (Ok(events), rv, epoch) => (events, rv, epoch),
        (Err(e), ..) => {
            // A watch from a compacted resourceVersion is still a 200
            // response; its only event is the 410 Status. (kube-runtime
            // relists on that, but would retry forever on an HTTP 410.)
            let _ = send(&tx, &json!({"type": "ERROR", "object": e.to_json()})).await;
            return;
        }
    };
    for event in &events {
        if send(&tx, event).await.is_err() {
            return;
        }
    }
    let deadline = p.timeout.map(|t| Instant::now() + t);
    // (A zero period would make interval_at panic.)
    let period = shared.bookmark_interval().max(Duration::from_millis(10));
    let mut bookmarks = tokio::time::interval_at(Instant::now() + period, period);
    // A slow reader gets one bookmark when it catches up, not a burst.
    bookmarks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let events = tokio::select! {
            changed = changed.changed() => {
                if changed.is_err() {
                    return;
                }
                let next = shared.read(|s| {
                    (s.epoch() == epoch).then(|| (later_events(s, &p, cursor), s.rv()))
                });
                // expire_watches() or stop(): end the stream cleanly.
                let Some((events, rv)) = next else { return };
                cursor = rv;
                events
            }
            _ = bookmarks.tick(), if p.bookmarks => vec![bookmark(p.rt, cursor, false)],
            _ = until(deadline) => return,
            _ = tx.closed() => return,
        };
        for event in &events {
            if send(&tx, event).await.is_err() {
                return;
            }
        }
    }
}

async fn send(tx: &mpsc::Sender<Bytes>, event: &Value) -> Result<(), ()> {
    let mut line = event.to_string().into_bytes();
    line.push(b'\n');
    tx.send(line.into()).await.map_err(drop)
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn first_events(s: &Store, p: &WatchParams) -> Result<Vec<Value>, ApiError> {
    if let (Since::After(after), false) = (p.since, p.initial_events) {
        return Ok(s
            .changes_after(after)?
            .iter()
            .filter_map(|c| event_for(c, p))
            .collect());
    }
    let (rv, objects) = s.snapshot(p.rt, None)?;
    let mut events: Vec<Value> = objects
        .into_values()
        .filter(|o| p.filter.matches(o))
        .map(|o| json!({"type": "ADDED", "object": o}))
        .collect();
    if p.initial_events {
        events.push(bookmark(p.rt, rv, true));
    }
    Ok(events)
}

fn later_events(s: &Store, p: &WatchParams, cursor: u64) -> Vec<Value> {
    match s.changes_after(cursor) {
        Ok(changes) => changes.iter().filter_map(|c| event_for(c, p)).collect(),
        // Only expire() drops history, and it also ends the stream first.
        Err(e) => vec![json!({"type": "ERROR", "object": e.to_json()})],
    }
}

/// As the real watch cache does it: with selectors, an object that starts
/// matching is ADDED and one that stops matching is DELETED (as it was
/// before, at the change's resourceVersion).
fn event_for(c: &Change, p: &WatchParams) -> Option<Value> {
    if c.rt != p.rt {
        return None;
    }
    let was = c.prev.as_ref().filter(|o| p.filter.matches(o));
    let is = c.cur.as_ref().filter(|o| p.filter.matches(o));
    let (kind, object) = match (was, is) {
        (None, Some(cur)) => ("ADDED", cur.clone()),
        (Some(_), Some(cur)) => ("MODIFIED", cur.clone()),
        (Some(prev), None) => {
            let mut gone = prev.clone();
            gone["metadata"]["resourceVersion"] = json!(c.rv.to_string());
            ("DELETED", gone)
        }
        (None, None) => return None,
    };
    Some(json!({"type": kind, "object": object}))
}

fn bookmark(rt: ResourceType, rv: u64, initial_events_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({
        "type": "BOOKMARK",
        "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": metadata},
    })
}

/// A response body fed by a channel: hyper sends it chunked, flushing each
/// event as it comes.
pub(crate) struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;

    use super::*;

    fn params(labels: &str) -> WatchParams {
        WatchParams {
            rt: ResourceType::of::<Service>(),
            filter: Filter::parse(Some(labels), None).unwrap(),
            since: Since::After(1),
            bookmarks: false,
            initial_events: false,
            timeout: None,
        }
    }

    fn types(store: &Store, p: &WatchParams) -> Vec<String> {
        first_events(store, p)
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["type"].as_str().unwrap(),
                    e["object"]["metadata"]["resourceVersion"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn selectors_turn_updates_into_adds_and_deletes() {
        let rt = ResourceType::of::<Service>();
        let mut s = Store::new([rt]);
        let svc =
            |labels: Value| json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}});
        s.upsert(rt, svc(json!({}))).unwrap(); // 2: ADDED
        s.upsert(rt, svc(json!({"app": "x"}))).unwrap(); // 3: MODIFIED
        s.upsert(rt, svc(json!({"skip": ""}))).unwrap(); // 4: leaves the selection
        s.upsert(rt, svc(json!({"skip": "", "b": "1"}))).unwrap(); // 5: still out
        s.upsert(rt, svc(json!({}))).unwrap(); // 6: back in
        s.delete(rt, "ns", "a").unwrap(); // 7
        assert_eq!(
            types(&s, &params("!skip")),
            ["ADDED 2", "MODIFIED 3", "DELETED 4", "ADDED 6", "DELETED 7"]
        );
        assert_eq!(types(&s, &params("")).len(), 6);

        let mut from_now = params("!skip");
        from_now.since = Since::Now;
        assert!(types(&s, &from_now).is_empty());
        from_now.initial_events = true;
        let events = first_events(&s, &from_now).unwrap();
        assert_eq!(events[0]["type"], "BOOKMARK");
        assert_eq!(
            events[0]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
        );
    }
}
