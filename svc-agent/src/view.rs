//! What the agent tells its CLI about services: the payload of the local
//! socket's answers, and the input of the kubectl-style formatting.
use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Service;
use serde::{Deserialize, Serialize};

/// One Service as the agent serves it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceView {
    /// The Service as admitted: defaults applied and the clusterIP(s) and
    /// nodePorts the agent allocated filled in, as the API server would
    /// return it. `metadata.creationTimestamp` is set (first admission).
    pub service: Service,
    /// Ready endpoints of each service port, in `spec.ports` order.
    pub endpoints: Vec<PortEndpoints>,
    /// Events about this Service, oldest first (rejections among them).
    pub events: Vec<EventView>,
}

/// The ready endpoints behind one service port.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortEndpoints {
    /// The service port's name ("" when unnamed).
    pub port_name: String,
    /// Endpoint addresses with the resolved target port, sorted.
    pub addresses: Vec<SocketAddr>,
}

/// A Kubernetes-style event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventView {
    /// "Normal" or "Warning".
    pub type_: String,
    /// CamelCase reason, e.g. "Invalid" or "ClusterIPAllocated".
    pub reason: String,
    pub message: String,
    /// Unix seconds of the first and the latest occurrence.
    pub first_seen: u64,
    pub last_seen: u64,
    pub count: u32,
    /// The reporting component, e.g. "svc-agent".
    pub source: String,
}
