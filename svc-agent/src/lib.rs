//! The agent library: everything the daemon does, usable from tests.
pub mod agent;
pub mod api;
pub mod apiserver;
pub mod cluster;
pub mod dataplane;
pub mod endpoints;
pub mod health;
pub mod http_server;
pub mod kubectl;
pub mod manifest_source;
pub mod manifests;
pub mod metrics;
pub mod model;
pub mod netif;
pub mod reconcile;
pub mod service_health;
pub mod view;
