//! The agent library: everything the daemon does, usable from tests.
pub mod agent;
pub mod api;
pub mod apiserver;
pub mod dataplane;
pub mod endpoints;
pub mod kubectl;
pub mod manifests;
pub mod model;
pub mod netif;
pub mod reconcile;
pub mod view;
