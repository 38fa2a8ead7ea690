//! The agent library: everything the daemon does, usable from tests.
pub mod apiserver;
pub mod dataplane;
pub mod endpoints;
pub mod kubectl;
pub mod static_services;
pub mod view;
