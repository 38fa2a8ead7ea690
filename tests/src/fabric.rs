//! Two nodes on one network, a router and a host outside: the topology of
//! a small cluster, in network namespaces, for NodePort, LoadBalancer and
//! externalTrafficPolicy tests. Only the wiring: agents and the API server
//! are `multi_node`'s.
//!
//! ```text
//!  external ns              router ns                      bridge ns      node-K ns (K = 1, 2)
//!  eth0 198.51.100.2  <-->  r-ext 198.51.100.1                            up0 192.0.2.K
//!       2001:db8:1::2             2001:db8:1::1                               2001:db8::K
//!                           r-fab 192.0.2.254   <-->  br0: br-router,    (default via the router)
//!                                 2001:db8::fe             br-node1,     vpodN <--> eth0 10.244.K.N
//!                                                          br-node2                   fd00:244:K::N
//! ```
//!
//! Each node routes its own pods' /32 and /128 to their veths (as
//! `sandbox` does), the other node's pod range (10.244.J.0/24,
//! fd00:244:J::/64) to the other node, and everything else to the router.
//! The router knows the two networks it sits on and nothing else: no pod
//! range, no service range. The outside reaches services only through node
//! addresses, and through the prefixes a test routes to a node with
//! [`Fabric::route_to_node`] (LoadBalancer IPs and externalIPs, as a load
//! balancer or a BGP announcement would).
//!
//! Every forwarding namespace has rp_filter off (flows may be asymmetric:
//! replies that skip the node a request came in by), and every host has
//! IPv6 duplicate address detection off.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result, bail};

use crate::{
    netns::NetNs,
    sandbox::{Pod, UPLINK, add_pod_to, host},
};

/// The router's address on the node network: the nodes' default gateway.
pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
/// The router's address on the outside network: the client's gateway.
pub const ROUTER_EXTERNAL_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const ROUTER_EXTERNAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The external client.
pub const EXTERNAL_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const EXTERNAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// The external client's interface, in `Fabric::external`.
pub const EXTERNAL_IF: &str = "eth0";
/// The router's interfaces: to the outside, to the node network.
pub const ROUTER_EXTERNAL_IF: &str = "r-ext";
pub const ROUTER_FABRIC_IF: &str = "r-fab";
/// The bridge, in `Fabric::bridge`.
pub const BRIDGE: &str = "br0";
/// How many nodes `Fabric::new` makes.
pub const NODES: usize = 2;

/// One node: a namespace with the uplink `up0` into the bridge, and its pods.
pub struct Node {
    /// The Node object's name: "node-1", "node-2".
    pub name: String,
    pub ns: NetNs,
    /// The uplink's addresses (the Node's InternalIPs).
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub pods: Vec<Pod>,
    /// The bridge port the uplink's peer is, in `Fabric::bridge`.
    pub bridge_port: String,
    index: usize,
}

pub struct Fabric {
    /// Before the other namespaces, so pods and their servers go first.
    pub nodes: Vec<Node>,
    pub router: NetNs,
    pub external: NetNs,
    pub bridge: NetNs,
    tag: String,
}

/// The pod range of node `index` (0-based): 10.244.(index+1).0/24 and
/// fd00:244:(index+1)::/64.
pub fn pod_cidrs(index: usize) -> (String, String) {
    let k = index + 1;
    (format!("10.244.{k}.0/24"), format!("fd00:244:{k}::/64"))
}

/// The fabric addresses of node `index` (0-based): 192.0.2.(index+1) and
/// 2001:db8::(index+1).
pub fn node_addrs(index: usize) -> (Ipv4Addr, Ipv6Addr) {
    let k = index as u8 + 1;
    (
        Ipv4Addr::new(192, 0, 2, k),
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, k.into()),
    )
}

/// Turns off what would drop asymmetric flows (rp_filter) and turns on
/// forwarding. `default` as well as `all`: interfaces created afterwards
/// take their own setting from it, and the stricter of `all` and the
/// interface's applies.
fn make_router(ns: &NetNs) -> Result<()> {
    ns.run(&[
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ])?;
    Ok(())
}

/// `ip -6` for an IPv6 address or prefix, `ip` otherwise.
fn ip_family(addr: &str) -> &'static [&'static str] {
    if addr.contains(':') {
        &["ip", "-6"]
    } else {
        &["ip"]
    }
}

impl Fabric {
    /// The router, the external client, the bridge and two nodes, wired
    /// and routed; no pods yet.
    pub fn new(tag: &str) -> Result<Self> {
        let bridge = host(&format!("{tag}-br"))?;
        let router = host(&format!("{tag}-rtr"))?;
        let external = host(&format!("{tag}-ext"))?;
        let mut fabric = Self {
            nodes: Vec::new(),
            router,
            external,
            bridge,
            tag: tag.to_string(),
        };
        fabric.wire_bridge()?;
        fabric.wire_router()?;
        for index in 0..NODES {
            let node = fabric.wire_node(index)?;
            fabric.nodes.push(node);
        }
        Ok(fabric)
    }

    /// br0, a plain learning switch: no STP (ports forward at once), no
    /// multicast snooping (IPv6 neighbour discovery is multicast and there
    /// is no querier), no addresses.
    fn wire_bridge(&self) -> Result<()> {
        let br = &self.bridge;
        br.run(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        br.run(&[
            "ip",
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        br.run(&["ip", "link", "set", BRIDGE, "up"])?;
        Ok(())
    }

    /// Plugs `port` (just created in the bridge namespace) into br0.
    fn plug(&self, port: &str) -> Result<()> {
        self.bridge
            .run(&["ip", "link", "set", port, "master", BRIDGE])?;
        self.bridge.run(&["ip", "link", "set", port, "up"])?;
        Ok(())
    }

    fn wire_router(&self) -> Result<()> {
        let (r, ext) = (&self.router, &self.external);
        make_router(r)?;
        r.run(&[
            "ip",
            "link",
            "add",
            ROUTER_FABRIC_IF,
            "type",
            "veth",
            "peer",
            "name",
            "br-router",
            "netns",
            self.bridge.name(),
        ])?;
        self.plug("br-router")?;
        r.run(&[
            "ip",
            "link",
            "add",
            ROUTER_EXTERNAL_IF,
            "type",
            "veth",
            "peer",
            "name",
            EXTERNAL_IF,
            "netns",
            ext.name(),
        ])?;
        for (dev, v4, v6) in [
            (ROUTER_FABRIC_IF, ROUTER_V4, ROUTER_V6),
            (ROUTER_EXTERNAL_IF, ROUTER_EXTERNAL_V4, ROUTER_EXTERNAL_V6),
        ] {
            r.run(&["ip", "addr", "add", &format!("{v4}/24"), "dev", dev])?;
            r.run(&[
                "ip",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
            r.run(&["ip", "link", "set", dev, "up"])?;
        }
        ext.run(&[
            "ip",
            "addr",
            "add",
            &format!("{EXTERNAL_V4}/24"),
            "dev",
            EXTERNAL_IF,
        ])?;
        ext.run(&[
            "ip",
            "addr",
            "add",
            &format!("{EXTERNAL_V6}/64"),
            "dev",
            EXTERNAL_IF,
            "nodad",
        ])?;
        ext.run(&["ip", "link", "set", EXTERNAL_IF, "up"])?;
        ext.run(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &ROUTER_EXTERNAL_V4.to_string(),
        ])?;
        ext.run(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &ROUTER_EXTERNAL_V6.to_string(),
        ])?;
        Ok(())
    }

    fn wire_node(&self, index: usize) -> Result<Node> {
        let name = format!("node-{}", index + 1);
        let ns = host(&format!("{}-n{}", self.tag, index + 1))?;
        make_router(&ns)?;
        let (ipv4, ipv6) = node_addrs(index);
        let port = format!("br-node{}", index + 1);
        ns.run(&[
            "ip",
            "link",
            "add",
            UPLINK,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            self.bridge.name(),
        ])?;
        self.plug(&port)?;
        ns.run(&["ip", "addr", "add", &format!("{ipv4}/24"), "dev", UPLINK])?;
        ns.run(&[
            "ip",
            "addr",
            "add",
            &format!("{ipv6}/64"),
            "dev",
            UPLINK,
            "nodad",
        ])?;
        ns.run(&["ip", "link", "set", UPLINK, "up"])?;
        ns.run(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &ROUTER_V4.to_string(),
        ])?;
        ns.run(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &ROUTER_V6.to_string(),
        ])?;
        for other in (0..NODES).filter(|&o| o != index) {
            let (v4, v6) = pod_cidrs(other);
            let (via4, via6) = node_addrs(other);
            ns.run(&["ip", "route", "add", &v4, "via", &via4.to_string()])?;
            ns.run(&["ip", "-6", "route", "add", &v6, "via", &via6.to_string()])?;
        }
        Ok(Node {
            name,
            ns,
            ipv4,
            ipv6,
            pods: Vec::new(),
            bridge_port: port,
            index,
        })
    }

    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    /// Adds pod number `n` (1 < n < 255) on node `node_index`:
    /// 10.244.(node_index+1).n and fd00:244:(node_index+1)::n, wired as
    /// `Sandbox::add_pod` wires its pods. Its server is not started.
    pub fn add_pod(&mut self, node_index: usize, name: &str, n: u8) -> Result<&mut Pod> {
        if self.pods().any(|p| p.name == name) {
            bail!("there is already a pod {name}");
        }
        let tag = format!("{}-n{}", self.tag, node_index + 1);
        let node = self
            .nodes
            .get_mut(node_index)
            .with_context(|| format!("no node {node_index}"))?;
        let k = node.index as u8 + 1;
        add_pod_to(&node.ns, &mut node.pods, &tag, k, name, n)
    }

    /// Every pod, on whichever node.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }

    /// Pod `name`, on whichever node (panics if there is none: a test bug).
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    pub fn pod_mut(&mut self, name: &str) -> &mut Pod {
        self.nodes
            .iter_mut()
            .flat_map(|n| n.pods.iter_mut())
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Routes `prefix` (IPv4 or IPv6, e.g. "203.0.113.10/32") in the router
    /// via node `node_index`'s fabric address, as a load balancer or a BGP
    /// announcement would. Replaces any route the router had for it, so
    /// calling it again moves the prefix to another node.
    pub fn route_to_node(&self, prefix: &str, node_index: usize) -> Result<()> {
        let node = self
            .nodes
            .get(node_index)
            .with_context(|| format!("no node {node_index}"))?;
        let via: IpAddr = if prefix.contains(':') {
            node.ipv6.into()
        } else {
            node.ipv4.into()
        };
        let mut argv = ip_family(prefix).to_vec();
        let via = via.to_string();
        argv.extend(["route", "replace", prefix, "via", &via]);
        self.router.run(&argv)?;
        Ok(())
    }

    /// Removes the router's route for `prefix` (the announcement is
    /// withdrawn).
    pub fn unroute(&self, prefix: &str) -> Result<()> {
        let mut argv = ip_family(prefix).to_vec();
        argv.extend(["route", "del", prefix]);
        self.router.run(&argv)?;
        Ok(())
    }

    /// Turns tx checksum offload on or off on both ends of every veth: the
    /// node uplinks and their bridge ports, the router's two links, and
    /// every pod's veth. Off, every sender computes full checksums in
    /// software and every receiver verifies them, so a wrong checksum is a
    /// dropped packet.
    /// Makes the switch's ports take frames that the nodes' XDP programs
    /// send out themselves (`XDP_TX`, redirects) at once: a veth accepts
    /// them only if it runs XDP itself (with GRO alone they wait up to a
    /// second here), so each port gets an empty XDP program, written to
    /// `scratch` first. A physical switch port needs nothing of the kind.
    pub fn let_ports_take_xdp_frames(&self, scratch: &std::path::Path) -> Result<()> {
        let object = scratch.join("baseline-xdp.o");
        std::fs::write(&object, svc_agent::dataplane::BASELINE_OBJECT)?;
        let object = object.to_string_lossy();
        for node in &self.nodes {
            self.bridge.run(&[
                "ip",
                "link",
                "set",
                "dev",
                &node.bridge_port,
                "xdp",
                "obj",
                &object,
                "sec",
                "xdp",
            ])?;
        }
        Ok(())
    }

    pub fn set_tx_checksum(&self, on: bool) -> Result<()> {
        let state = if on { "on" } else { "off" };
        let mut ends: Vec<(&NetNs, &str)> = vec![
            (&self.router, ROUTER_FABRIC_IF),
            (&self.bridge, "br-router"),
            (&self.router, ROUTER_EXTERNAL_IF),
            (&self.external, EXTERNAL_IF),
        ];
        for node in &self.nodes {
            ends.push((&node.ns, UPLINK));
            ends.push((&self.bridge, &node.bridge_port));
            for p in &node.pods {
                ends.push((&node.ns, &p.node_veth));
                ends.push((&p.ns, "eth0"));
            }
        }
        for (ns, dev) in ends {
            ns.run(&["ethtool", "-K", dev, "tx", state])?;
        }
        Ok(())
    }
}

impl Node {
    /// The node's index in `Fabric::nodes` (0 for node-1).
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }
}
