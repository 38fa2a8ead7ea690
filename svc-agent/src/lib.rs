//! The agent library: everything the daemon does, usable from tests.
pub mod dataplane;
pub mod static_services;
