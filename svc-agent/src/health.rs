//! kube-proxy's health contract, served on `--healthz-bind-address`:
//! `/healthz` (used by load balancers for externalTrafficPolicy Cluster
//! Services and by the DaemonSet's readiness probe) and `/livez`.
//!
//! The rules are kube-proxy's: the proxy is unhealthy when a change has
//! been waiting longer than the timeout (twice the sync period) without a
//! successful sync; `/healthz` is also unhealthy while the Node is being
//! deleted or is tainted for deletion by the cluster autoscaler, so load
//! balancers drain it first. Bodies are byte-compatible with kube-proxy's,
//! times in Go's `time.Time.String()` form.
use std::time::{Duration, SystemTime};

use k8s_openapi::{api::core::v1::Node, jiff};

/// The cluster autoscaler's taint on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

#[derive(Debug)]
pub struct Health {
    timeout: Duration,
    /// When the oldest change not yet programmed arrived.
    oldest_pending: Option<SystemTime>,
    last_updated: Option<SystemTime>,
    node_eligible: bool,
}

/// An HTTP answer: status code and JSON body.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Health {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            oldest_pending: None,
            last_updated: None,
            node_eligible: true,
        }
    }

    /// A change arrived that the dataplane does not reflect yet.
    pub fn queued(&mut self, now: SystemTime) {
        self.oldest_pending.get_or_insert(now);
    }

    /// Everything queued so far is programmed.
    pub fn updated(&mut self, now: SystemTime) {
        self.oldest_pending = None;
        self.last_updated = Some(now);
    }

    pub fn last_updated(&self) -> Option<SystemTime> {
        self.last_updated
    }

    pub fn oldest_pending(&self) -> Option<SystemTime> {
        self.oldest_pending
    }

    /// Records whether this agent's Node may still take traffic.
    pub fn set_node(&mut self, node: Option<&Node>) {
        self.node_eligible = node_eligible(node);
    }

    /// What `/livez` says (no pending change older than the timeout),
    /// without building its body.
    pub fn is_healthy(&self, now: SystemTime) -> bool {
        self.oldest_pending.is_none_or(|t| {
            now.duration_since(t)
                .is_ok_and(|waited| waited < self.timeout)
        })
    }

    pub fn healthz(&self, now: SystemTime) -> Reply {
        let healthy = self.is_healthy(now) && self.node_eligible;
        // As kube-proxy does: a healthy proxy reports "now" as its last
        // update (older releases ran a sync loop at a fixed interval, and
        // clients expect a recent time when all is well).
        let last = if healthy {
            Some(now)
        } else {
            self.last_updated
        };
        Reply {
            status: if healthy { 200 } else { 503 },
            body: format!(
                r#"{{"lastUpdated": "{}","currentTime": "{}", "nodeEligible": {}}}"#,
                go_time(last),
                go_time(Some(now)),
                self.node_eligible
            ),
        }
    }

    pub fn livez(&self, now: SystemTime) -> Reply {
        let healthy = self.is_healthy(now);
        let last = if healthy {
            Some(now)
        } else {
            self.last_updated
        };
        Reply {
            status: if healthy { 200 } else { 503 },
            body: format!(
                r#"{{"lastUpdated": "{}","currentTime": "{}"}}"#,
                go_time(last),
                go_time(Some(now))
            ),
        }
    }
}

/// A Node takes traffic unless it is being deleted or the autoscaler
/// marked it for deletion. An unknown Node (not created yet, or no API
/// server in manifests mode) is eligible.
pub fn node_eligible(node: Option<&Node>) -> bool {
    let Some(node) = node else { return true };
    let deleting = node.metadata.deletion_timestamp.is_some();
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    !deleting && !tainted
}

/// Go's `time.Time.String()` in UTC, e.g.
/// `2024-01-24 10:08:52.185337064 +0000 UTC` (trailing zeros of the
/// fraction dropped); `None` is Go's zero time.
fn go_time(t: Option<SystemTime>) -> String {
    let Some(ts) = t.and_then(|t| jiff::Timestamp::try_from(t).ok()) else {
        return "0001-01-01 00:00:00 +0000 UTC".into();
    };
    ts.strftime("%Y-%m-%d %H:%M:%S%.f +0000 UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn times_read_like_go() {
        assert_eq!(
            go_time(Some(at(1_706_090_932, 185_337_064))),
            "2024-01-24 10:08:52.185337064 +0000 UTC"
        );
        assert_eq!(
            go_time(Some(at(1_706_090_932, 500_000_000))),
            "2024-01-24 10:08:52.5 +0000 UTC"
        );
        assert_eq!(
            go_time(Some(at(1_706_090_932, 0))),
            "2024-01-24 10:08:52 +0000 UTC"
        );
        assert_eq!(go_time(None), "0001-01-01 00:00:00 +0000 UTC");
    }

    #[test]
    fn healthy_until_a_change_waits_longer_than_the_timeout() {
        let mut h = Health::new(Duration::from_secs(60));
        let t0 = at(1_000_000, 0);
        let r = h.healthz(t0);
        assert_eq!(r.status, 200);
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            body,
            json!({"lastUpdated": "1970-01-12 13:46:40 +0000 UTC",
                   "currentTime": "1970-01-12 13:46:40 +0000 UTC", "nodeEligible": true})
        );

        h.updated(t0);
        h.queued(t0 + Duration::from_secs(1));
        // A later change does not reset the clock of the oldest one.
        h.queued(t0 + Duration::from_secs(50));
        assert_eq!(h.healthz(t0 + Duration::from_secs(60)).status, 200);
        let stale = h.healthz(t0 + Duration::from_secs(61));
        assert_eq!(stale.status, 503);
        assert!(
            stale
                .body
                .contains(r#""lastUpdated": "1970-01-12 13:46:40 +0000 UTC""#),
            "{}",
            stale.body
        );
        assert_eq!(h.livez(t0 + Duration::from_secs(61)).status, 503);
        h.updated(t0 + Duration::from_secs(62));
        assert_eq!(h.healthz(t0 + Duration::from_secs(62)).status, 200);
    }

    #[test]
    fn a_node_being_deleted_fails_healthz_but_not_livez() {
        let mut h = Health::new(Duration::from_secs(60));
        let now = at(1_000_000, 0);
        let tainted: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "spec": {"taints": [{"key": TO_BE_DELETED_TAINT, "effect": "NoSchedule"}]}
        }))
        .unwrap();
        h.set_node(Some(&tainted));
        let r = h.healthz(now);
        assert_eq!(r.status, 503);
        assert!(r.body.ends_with(r#""nodeEligible": false}"#), "{}", r.body);
        assert_eq!(h.livez(now).status, 200);

        let deleting: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "deletionTimestamp": "2026-11-29T12:00:00Z"}
        }))
        .unwrap();
        assert!(!node_eligible(Some(&deleting)));
        assert!(node_eligible(None));
        h.set_node(None);
        assert_eq!(h.healthz(now).status, 200);
    }
}
