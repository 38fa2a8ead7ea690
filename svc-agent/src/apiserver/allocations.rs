//! The allocations that must survive restarts, and the JSON state file that
//! keeps them: they play the part of the stored objects' allocated fields.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::IpAddr,
    path::Path,
};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Service, ServicePort};
use serde::{Deserialize, Serialize};

use super::network::{ServiceNetwork, parse_ip};

/// Allocations that must survive restarts, keyed by "namespace/name".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocations {
    /// Each Service's clusterIPs, primary family first.
    #[serde(default)]
    pub cluster_ips: BTreeMap<String, Vec<IpAddr>>,
    /// Each Service's nodePorts by [`port_key`], plus its health check
    /// nodePort under [`HEALTH_CHECK_KEY`].
    #[serde(default)]
    pub node_ports: BTreeMap<String, BTreeMap<String, u16>>,
}

/// The key of a Service's health check nodePort in [`Allocations::node_ports`];
/// port keys always hold a '/', so it cannot collide with one.
pub const HEALTH_CHECK_KEY: &str = "healthCheckNodePort";

/// A Service port's key in [`Allocations::node_ports`]: "name/PROTOCOL", or
/// "port/PROTOCOL" when unnamed (only a Service's single port may be).
pub fn port_key(port: &ServicePort) -> String {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match port.name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => format!("{name}/{protocol}"),
        None => format!("{}/{protocol}", port.port),
    }
}

impl Allocations {
    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the state file through a temporary file and a rename, so a
    /// crash leaves either the old state or the new one, never half of one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let mut file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec_pretty(self)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
    }

    pub(super) fn holds_any(&self, key: &str) -> bool {
        self.cluster_ips.contains_key(key) || self.node_ports.contains_key(key)
    }

    /// Releases what Services no longer desired hold.
    pub(super) fn release_all_but(&mut self, live: &BTreeSet<&str>) {
        self.cluster_ips.retain(|k, _| live.contains(k.as_str()));
        self.node_ports.retain(|k, _| live.contains(k.as_str()));
    }

    /// Forgets what fell out of the service CIDRs or the nodePort range (after
    /// a change of either), so that it is re-allocated rather than kept.
    pub(super) fn forget_outside(&mut self, net: &ServiceNetwork) {
        for ips in self.cluster_ips.values_mut() {
            ips.retain(|ip| net.cidrs.iter().any(|c| c.can_allocate(ip)));
        }
        for ports in self.node_ports.values_mut() {
            ports.retain(|_, p| net.node_ports.contains(p));
        }
        self.cluster_ips.retain(|_, v| !v.is_empty());
        self.node_ports.retain(|_, v| !v.is_empty());
    }

    /// Replaces what `key` holds. A Service that holds nothing has no entry,
    /// so that the state file lists only what is taken.
    pub(super) fn set(&mut self, key: &str, ips: Vec<IpAddr>, ports: BTreeMap<String, u16>) {
        self.cluster_ips.remove(key);
        self.node_ports.remove(key);
        if !ips.is_empty() {
            self.cluster_ips.insert(key.into(), ips);
        }
        if !ports.is_empty() {
            self.node_ports.insert(key.into(), ports);
        }
    }

    /// Records what an admitted Service holds, read back from its fields.
    pub(super) fn record(&mut self, key: &str, svc: &Service) {
        let Some(spec) = &svc.spec else { return };
        let ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .filter_map(|ip| parse_ip(ip))
            .collect();
        let mut ports: BTreeMap<String, u16> = BTreeMap::new();
        for p in spec.ports.iter().flatten() {
            if let Some(np) = p
                .node_port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0)
            {
                ports.insert(port_key(p), np);
            }
        }
        if let Some(hc) = spec
            .health_check_node_port
            .and_then(|n| u16::try_from(n).ok())
        {
            ports.insert(HEALTH_CHECK_KEY.into(), hc);
        }
        self.set(key, ips, ports);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::{admit, test_support::*};

    #[test]
    fn allocation_stable_across_calls_and_restarts() {
        let desired = || vec![simple("a", "  type: NodePort"), simple("b", "")];
        let mut alloc = Allocations::default();
        let first = admit(desired(), &BTreeMap::new(), &v4(), &mut alloc);
        assert_eq!(first.rejections, vec![]);
        let again = admit(desired(), &previous(&first), &v4(), &mut alloc);
        assert_eq!(again.admitted, first.admitted);

        // A restart: the state comes back from the file, the previous objects do not.
        let dir = std::env::temp_dir().join(format!("apiserver-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("allocations.json");
        assert_eq!(Allocations::load(&path).unwrap(), Allocations::default());
        alloc.save(&path).unwrap();
        let mut loaded = Allocations::load(&path).unwrap();
        assert_eq!(loaded, alloc);
        // A newcomer listed first does not displace anything that was admitted.
        let mut with_new = vec![simple("c", "  type: NodePort")];
        with_new.extend(desired());
        let restarted = admit(with_new, &BTreeMap::new(), &v4(), &mut loaded);
        assert_eq!(restarted.rejections, vec![]);
        for (before, after) in first.admitted.iter().zip(&restarted.admitted[1..]) {
            assert_eq!(ips(before), ips(after));
            assert_eq!(node_ports(before), node_ports(after));
        }
        assert_ne!(ips(&restarted.admitted[0]), ips(&first.admitted[0]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
