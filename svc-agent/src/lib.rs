//! The agent library: everything the daemon does, usable from tests.
pub mod agent;
pub mod api;
pub mod apiserver;
pub mod cluster;
pub mod conntrack;
pub mod dataplane;
pub mod desired_state;
pub mod endpoints;
pub mod health;
pub mod http_server;
pub mod kubectl;
pub mod maglev;
pub mod manifest_source;
pub mod manifests;
pub mod map_batch;
pub mod metrics;
pub mod model;
pub mod netif;
pub mod reconcile;
pub mod service_health;
pub mod view;

/// The benchmarks' calibration programs (`svc-ebpf/src/bin/calibration.rs`):
/// the empty programs plus one conntrack-shaped map lookup. Never loaded
/// by the agent.
pub static CALIBRATION_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/calibration"));
