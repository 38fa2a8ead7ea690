//! Test support: a sandbox of network namespaces that stands in for a node,
//! its pods and the world outside it, and a packet crafter for the
//! packet-level tests.
//!
//! Safety rules (DEVELOPERS.md): every namespace and veth is created here,
//! under a name unique to the process and test, and removed on drop and on
//! Ctrl-C/SIGTERM. Veths are created directly inside their namespaces, so
//! the root namespace never holds one, never routes a packet of ours, and
//! no program is attached to any of its interfaces.
pub mod apiserver_standin;
pub mod bench;
pub mod bpffs;
pub mod cgroup;
pub mod cluster;
pub mod fabric;
pub mod load;
pub mod multi_node;
pub mod netns;
pub mod packet;
pub mod progtest;
pub mod sandbox;
pub mod static_services;
