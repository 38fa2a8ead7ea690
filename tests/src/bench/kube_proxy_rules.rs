//! kube-proxy's rulesets, rendered as pure functions in the exact layouts
//! its iptables and nftables proxiers write on a full sync (Kubernetes
//! v1.3x, `pkg/proxy/iptables/proxier.go` and `pkg/proxy/nftables/proxier.go`),
//! for ClusterIP and NodePort Services with `Cluster` traffic policy, so the benchmarks
//! load into a namespace exactly what kube-proxy would, and traffic walks
//! the same chains.
//!
//! * iptables: the jump rules kube-proxy ensures one by one (`-I PREROUTING
//!   ... -j KUBE-SERVICES`, ...), then one `iptables-restore --noflush`
//!   input with `*filter` and `*nat`: `KUBE-SERVICES` matches each
//!   ClusterIP and port in turn (a linear list) and jumps to the Service's
//!   `KUBE-SVC-<hash>`, which picks a `KUBE-SEP-<hash>` per endpoint with
//!   `-m statistic --mode random --probability 1/n, 1/(n-1), ...`; each
//!   SEP chain DNATs. Above 1000 endpoints kube-proxy drops the per-rule
//!   comments of the SVC and SEP chains ("large cluster mode").
//! * nftables: one `nft -f` transaction for table `ip kube-proxy`: the
//!   `services` chain looks the destination up in the `service-ips`
//!   verdict map (one hash lookup, whatever the count), which jumps to
//!   `service-<hash>-ns/name/proto/port`, whose `numgen random mod n vmap`
//!   jumps to `endpoint-<hash>-...__ip/port`, which DNATs.
//!
//! Chain names are hashed as kube-proxy hashes them (sha256, base32); the
//! unit tests check them against the names in kube-proxy's own tests.
use std::{fmt::Write as _, net::Ipv4Addr, net::SocketAddrV4};

/// One port of a ClusterIP Service and its endpoints (kube-proxy's
/// ServicePortName plus what it programs for it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The port's name ("" for a single unnamed port).
    pub port_name: String,
    /// "tcp", "udp" or "sctp".
    pub protocol: &'static str,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// The NodePort, if the Service has one.
    pub node_port: Option<u16>,
    pub endpoints: Vec<SocketAddrV4>,
}

impl ServicePort {
    /// `ns/name:port`, as kube-proxy's ServicePortName.String() writes it.
    pub fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }
}

/// What kube-proxy knows about the node and cluster that shows in rules.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// `--cluster-cidr` (the local-traffic detector): traffic to a
    /// ClusterIP from outside it is masqueraded.
    pub cluster_cidr: String,
    /// The Service CIDR (nftables drops traffic to unallocated ClusterIPs).
    pub service_cidr: String,
    /// The node's addresses that accept NodePorts (nftables `nodeport-ips`).
    pub node_ips: Vec<Ipv4Addr>,
    /// `--masquerade-bit` 14.
    pub masquerade_mark: &'static str,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            cluster_cidr: "10.244.0.0/16".into(),
            service_cidr: "10.96.0.0/16".into(),
            node_ips: vec![Ipv4Addr::new(192, 0, 2, 1)],
            masquerade_mark: "0x4000",
        }
    }
}

/// Above this many endpoints in total kube-proxy (iptables) leaves the
/// comments out of the SVC and SEP rules.
pub const LARGE_CLUSTER_ENDPOINTS_THRESHOLD: usize = 1000;

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().try_into().expect("sha256 is 32 bytes")
}

/// RFC 4648 base32 with padding (Go's base32.StdEncoding).
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    for chunk in data.chunks(5) {
        let mut buf = [0u8; 5];
        buf[..chunk.len()].copy_from_slice(chunk);
        let bits = buf.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        let chars = (chunk.len() * 8).div_ceil(5);
        for i in 0..8 {
            if i < chars {
                out.push(ALPHABET[((bits >> (35 - i * 5)) & 31) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hash16(s: &str) -> String {
    base32(&sha256(s.as_bytes()))[..16].to_string()
}

/// `KUBE-SVC-<hash>`: portProtoHash(servicePortName, protocol).
pub fn iptables_svc_chain(sp: &ServicePort) -> String {
    format!(
        "KUBE-SVC-{}",
        hash16(&format!("{}{}", sp.port_name_string(), sp.protocol))
    )
}

/// `KUBE-EXT-<hash>`: where NodePort (external) traffic goes first.
pub fn iptables_ext_chain(sp: &ServicePort) -> String {
    iptables_svc_chain(sp).replacen("KUBE-SVC-", "KUBE-EXT-", 1)
}

/// `KUBE-SEP-<hash>` of one endpoint ("ip:port").
pub fn iptables_sep_chain(sp: &ServicePort, ep: SocketAddrV4) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&format!("{}{}{ep}", sp.port_name_string(), sp.protocol))
    )
}

/// `%0.10f` of 1/n, as kube-proxy's computeProbability.
pub fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// The jump rules kube-proxy ensures outside the restore (iptablesJumpChains
/// and the kubelet's KUBE-FIREWALL), each as `(table, chain to create,
/// arguments of iptables -I)`, in its order.
pub fn iptables_jump_rules() -> Vec<(&'static str, &'static str, Vec<String>)> {
    let new = ["-m", "conntrack", "--ctstate", "NEW"];
    let jumps: [(&str, &str, &str, &str, bool); 14] = [
        (
            "filter",
            "KUBE-EXTERNAL-SERVICES",
            "INPUT",
            "kubernetes externally-visible service portals",
            true,
        ),
        (
            "filter",
            "KUBE-EXTERNAL-SERVICES",
            "FORWARD",
            "kubernetes externally-visible service portals",
            true,
        ),
        (
            "filter",
            "KUBE-NODEPORTS",
            "INPUT",
            "kubernetes health check service ports",
            false,
        ),
        (
            "filter",
            "KUBE-SERVICES",
            "FORWARD",
            "kubernetes service portals",
            true,
        ),
        (
            "filter",
            "KUBE-SERVICES",
            "OUTPUT",
            "kubernetes service portals",
            true,
        ),
        (
            "filter",
            "KUBE-FORWARD",
            "FORWARD",
            "kubernetes forwarding rules",
            false,
        ),
        (
            "filter",
            "KUBE-PROXY-FIREWALL",
            "INPUT",
            "kubernetes load balancer firewall",
            true,
        ),
        (
            "filter",
            "KUBE-PROXY-FIREWALL",
            "OUTPUT",
            "kubernetes load balancer firewall",
            true,
        ),
        (
            "filter",
            "KUBE-PROXY-FIREWALL",
            "FORWARD",
            "kubernetes load balancer firewall",
            true,
        ),
        (
            "nat",
            "KUBE-SERVICES",
            "OUTPUT",
            "kubernetes service portals",
            false,
        ),
        (
            "nat",
            "KUBE-SERVICES",
            "PREROUTING",
            "kubernetes service portals",
            false,
        ),
        (
            "nat",
            "KUBE-POSTROUTING",
            "POSTROUTING",
            "kubernetes postrouting rules",
            false,
        ),
        ("filter", "KUBE-FIREWALL", "INPUT", "", false),
        ("filter", "KUBE-FIREWALL", "OUTPUT", "", false),
    ];
    jumps
        .iter()
        .map(|&(table, dst, src, comment, ct_new)| {
            let mut args: Vec<String> = vec!["-I".into(), src.into()];
            if ct_new {
                args.extend(new.iter().map(|s| s.to_string()));
            }
            if !comment.is_empty() {
                args.extend(["-m", "comment", "--comment", comment].map(String::from));
            }
            args.extend(["-j".to_string(), dst.to_string()]);
            (table, dst, args)
        })
        .collect()
}

/// The `iptables-restore --noflush` input of a full sync.
pub fn iptables_restore(services: &[ServicePort], node: &NodeConfig) -> String {
    let mark = node.masquerade_mark;
    let total_endpoints: usize = services.iter().map(|s| s.endpoints.len()).sum();
    let large = total_endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD;
    let mut filter_chains = String::new();
    let mut filter_rules = String::new();
    let mut nat_chains = String::new();
    let mut nat_rules = String::new();
    for c in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
    ] {
        writeln!(filter_chains, ":{c} - [0:0]").unwrap();
    }
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        writeln!(nat_chains, ":{c} - [0:0]").unwrap();
    }
    writeln!(
        nat_rules,
        "-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN"
    )
    .unwrap();
    writeln!(nat_rules, "-A KUBE-POSTROUTING -j MARK --xor-mark {mark}").unwrap();
    writeln!(nat_rules, "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully").unwrap();
    writeln!(nat_rules, "-A KUBE-MARK-MASQ -j MARK --or-mark {mark}").unwrap();
    // localhostNodePorts (the default, IPv4).
    writeln!(filter_chains, ":KUBE-FIREWALL - [0:0]").unwrap();
    writeln!(filter_rules, "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP").unwrap();

    for sp in services {
        let name = sp.port_name_string();
        let proto = sp.protocol;
        let svc_chain = iptables_svc_chain(sp);
        let ip = sp.cluster_ip;
        let port = sp.port;
        if sp.endpoints.is_empty() {
            writeln!(filter_rules, "-A KUBE-SERVICES -m comment --comment \"{name} has no endpoints\" -m {proto} -p {proto} -d {ip} --dport {port} -j REJECT").unwrap();
            continue;
        }
        writeln!(nat_rules, "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {ip} --dport {port} -j {svc_chain}").unwrap();
        writeln!(nat_rules, "-A {svc_chain} -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {ip} --dport {port} ! -s {} -j KUBE-MARK-MASQ", node.cluster_cidr).unwrap();
        writeln!(nat_chains, ":{svc_chain} - [0:0]").unwrap();
        if let Some(node_port) = sp.node_port {
            // Cluster policy: masqueraded, in case the endpoint is on
            // another node, then on to the Service's chain.
            let ext = iptables_ext_chain(sp);
            writeln!(nat_rules, "-A KUBE-NODEPORTS -m comment --comment {name} -m {proto} -p {proto} --dport {node_port} -j {ext}").unwrap();
            writeln!(nat_chains, ":{ext} - [0:0]").unwrap();
            writeln!(nat_rules, "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ").unwrap();
            writeln!(nat_rules, "-A {ext} -j {svc_chain}").unwrap();
        }
        let n = sp.endpoints.len();
        for (i, ep) in sp.endpoints.iter().enumerate() {
            let sep = iptables_sep_chain(sp, *ep);
            let mut line = format!("-A {svc_chain}");
            if !large {
                write!(line, " -m comment --comment \"{name} -> {ep}\"").unwrap();
            }
            if i < n - 1 {
                write!(
                    line,
                    " -m statistic --mode random --probability {}",
                    probability(n - i)
                )
                .unwrap();
            }
            writeln!(nat_rules, "{line} -j {sep}").unwrap();
        }
        for ep in &sp.endpoints {
            let sep = iptables_sep_chain(sp, *ep);
            writeln!(nat_chains, ":{sep} - [0:0]").unwrap();
            let head = if large {
                format!("-A {sep}")
            } else {
                format!("-A {sep} -m comment --comment {name}")
            };
            writeln!(nat_rules, "{head} -s {} -j KUBE-MARK-MASQ", ep.ip()).unwrap();
            writeln!(
                nat_rules,
                "{head} -m {proto} -p {proto} -j DNAT --to-destination {ep}"
            )
            .unwrap();
        }
    }
    writeln!(nat_rules, "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS").unwrap();
    writeln!(
        filter_rules,
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
    )
    .unwrap();
    writeln!(filter_rules, "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT").unwrap();
    writeln!(filter_rules, "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT").unwrap();
    format!("*filter\n{filter_chains}{filter_rules}COMMIT\n*nat\n{nat_chains}{nat_rules}COMMIT\n")
}

/// nftables chain-name base: `HASH-ns/name/proto/port` (hashAndTruncate).
fn nft_name_base(name: &str) -> String {
    // knftables.NameLengthMax (256) minus the longest prefix (16).
    const MAX: usize = 256 - 16;
    let mut out = format!("{}-{name}", &base32(&sha256(name.as_bytes()))[..8]);
    if out.len() > MAX {
        out.truncate(MAX - 3);
        out.push_str("...");
    }
    out
}

fn nft_service_base(sp: &ServicePort) -> String {
    nft_name_base(&format!(
        "{}/{}/{}/{}",
        sp.namespace, sp.name, sp.protocol, sp.port_name
    ))
}

/// `service-<hash>-ns/name/proto/port`.
pub fn nft_service_chain(sp: &ServicePort) -> String {
    format!("service-{}", nft_service_base(sp))
}

/// `external-<hash>-ns/name/proto/port`: where NodePort traffic goes first.
pub fn nft_external_chain(sp: &ServicePort) -> String {
    format!("external-{}", nft_service_base(sp))
}

/// `endpoint-<hash>-ns/name/proto/port__ip/port`.
pub fn nft_endpoint_chain(sp: &ServicePort, ep: SocketAddrV4) -> String {
    format!(
        "endpoint-{}",
        nft_name_base(&format!(
            "{}/{}/{}/{}__{}/{}",
            sp.namespace,
            sp.name,
            sp.protocol,
            sp.port_name,
            ep.ip(),
            ep.port()
        ))
    )
}

/// The `nft -f` transaction of kube-proxy's first full sync (IPv4): the
/// table, its base chains (added and deleted once, then added with their
/// hooks and flushed), sets and maps, the dispatch rules, then per Service
/// its chains (ensured: added and flushed), rules and map elements.
pub fn nft_ruleset(services: &[ServicePort], node: &NodeConfig) -> String {
    const T: &str = "ip kube-proxy";
    let mark = node.masquerade_mark;
    let mut o = String::new();
    let mut line = |s: String| {
        o.push_str(&s);
        o.push('\n');
    };
    line(format!(
        "add table {T} {{ comment \"rules for kube-proxy\" ; }}"
    ));
    // (name, type, hook, priority)
    let base = [
        ("filter-prerouting-pre-dnat", "filter", "prerouting", "-110"),
        ("filter-output-pre-dnat", "filter", "output", "-110"),
        ("filter-input", "filter", "input", "0"),
        ("filter-forward", "filter", "forward", "0"),
        ("filter-output", "filter", "output", "0"),
        ("nat-prerouting", "nat", "prerouting", "-100"),
        ("nat-output", "nat", "output", "-100"),
        ("nat-postrouting", "nat", "postrouting", "100"),
    ];
    for (name, ..) in base {
        line(format!("add chain {T} {name}"));
        line(format!("delete chain {T} {name}"));
    }
    for (name, ty, hook, prio) in base {
        line(format!(
            "add chain {T} {name} {{ type {ty} hook {hook} priority {prio} ; }}"
        ));
        line(format!("flush chain {T} {name}"));
    }
    let mut ensured: Vec<&str> = Vec::new();
    let mut ensure = |line: &mut dyn FnMut(String), chain: &'static str| {
        if !ensured.contains(&chain) {
            ensured.push(chain);
            line(format!("add chain {T} {chain}"));
            line(format!("flush chain {T} {chain}"));
        }
    };
    let jumps = [
        ("nodeport-endpoints-check", "filter-input", "ct state new "),
        ("service-endpoints-check", "filter-input", "ct state new "),
        ("service-endpoints-check", "filter-forward", "ct state new "),
        ("service-endpoints-check", "filter-output", "ct state new "),
        (
            "firewall-check",
            "filter-prerouting-pre-dnat",
            "ct state new ",
        ),
        ("firewall-check", "filter-output-pre-dnat", "ct state new "),
        ("services", "nat-output", ""),
        ("services", "nat-prerouting", ""),
        ("masquerading", "nat-postrouting", ""),
        ("cluster-ips-check", "filter-forward", "ct state new "),
        ("cluster-ips-check", "filter-output", "ct state new "),
    ];
    for (dst, src, extra) in jumps {
        ensure(&mut line, dst);
        line(format!("add rule {T} {src} {extra}jump {dst}"));
    }
    for chain in [
        "services",
        "cluster-ips-check",
        "masquerading",
        "mark-for-masquerade",
    ] {
        ensure(&mut line, chain);
    }
    line(format!(
        "add rule {T} mark-for-masquerade mark set mark or {mark}"
    ));
    line(format!(
        "add rule {T} masquerading mark and {mark} == 0 return"
    ));
    line(format!(
        "add rule {T} masquerading mark set mark xor {mark}"
    ));
    line(format!("add rule {T} masquerading masquerade fully-random"));
    line(format!(
        "add set {T} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
    ));
    line(format!(
        "add rule {T} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
    ));
    line(format!(
        "add rule {T} cluster-ips-check ip daddr {{ {} }} drop comment \"Drop traffic to unallocated ClusterIPs\"",
        node.service_cidr
    ));
    line(format!(
        "add set {T} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}"
    ));
    line(format!("flush set {T} nodeport-ips"));
    for ip in &node.node_ips {
        line(format!("add element {T} nodeport-ips {{ {ip} }}"));
    }
    line(format!(
        "add map {T} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
    ));
    line(format!(
        "add map {T} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}"
    ));
    line(format!(
        "add chain {T} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}"
    ));
    line(format!("flush chain {T} reject-chain"));
    line(format!("add rule {T} reject-chain reject"));
    line(format!(
        "add rule {T} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
    ));
    line(format!(
        "add rule {T} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"
    ));
    line(format!(
        "add map {T} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}"
    ));
    ensure(&mut line, "firewall-check");
    line(format!(
        "add rule {T} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips"
    ));
    line(format!(
        "add map {T} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    ));
    line(format!(
        "add map {T} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}"
    ));
    line(format!(
        "add rule {T} services ip daddr . meta l4proto . th dport vmap @service-ips"
    ));
    line(format!(
        "add rule {T} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"
    ));
    for (kind, name) in [
        ("set", "cluster-ips"),
        ("map", "service-ips"),
        ("map", "firewall-ips"),
        ("map", "no-endpoint-services"),
        ("map", "no-endpoint-nodeports"),
        ("map", "service-nodeports"),
    ] {
        line(format!("flush {kind} {T} {name}"));
    }
    for sp in services {
        let proto = sp.protocol;
        let ip = sp.cluster_ip;
        let port = sp.port;
        if sp.endpoints.is_empty() {
            line(format!("add element {T} cluster-ips {{ {ip} }}"));
            line(format!(
                "add element {T} no-endpoint-services {{ {ip} . {proto} . {port} comment \"{}\" : goto reject-chain }}",
                sp.port_name_string()
            ));
            continue;
        }
        let svc = nft_service_chain(sp);
        let eps: Vec<String> = sp
            .endpoints
            .iter()
            .map(|ep| nft_endpoint_chain(sp, *ep))
            .collect();
        let ext = sp.node_port.map(|_| nft_external_chain(sp));
        for chain in eps.iter().chain([&svc]).chain(&ext) {
            line(format!("add chain {T} {chain}"));
            line(format!("flush chain {T} {chain}"));
        }
        if let (Some(node_port), Some(ext)) = (sp.node_port, &ext) {
            line(format!(
                "add element {T} service-nodeports {{ {proto} . {node_port} : goto {ext} }}"
            ));
            line(format!("add rule {T} {ext} jump mark-for-masquerade"));
            line(format!("add rule {T} {ext} goto {svc}"));
        }
        line(format!("add element {T} cluster-ips {{ {ip} }}"));
        line(format!(
            "add element {T} service-ips {{ {ip} . {proto} . {port} : goto {svc} }}"
        ));
        line(format!(
            "add rule {T} {svc} ip daddr {ip} ip saddr != {} jump mark-for-masquerade",
            node.cluster_cidr
        ));
        let vmap: Vec<String> = eps
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{i} : goto {c}"))
            .collect();
        line(format!(
            "add rule {T} {svc} numgen random mod {} vmap {{ {} }}",
            eps.len(),
            vmap.join(" , ")
        ));
        for (ep, chain) in sp.endpoints.iter().zip(&eps) {
            line(format!(
                "add rule {T} {chain} ip saddr {} jump mark-for-masquerade",
                ep.ip()
            ));
            line(format!(
                "add rule {T} {chain} meta l4proto {proto} dnat to {ep}"
            ));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    //! Expected names and lines are copied from kube-proxy's own tests
    //! (TestOverallIPTablesRules, TestOverallNFTablesRules: cluster CIDR
    //! 10.0.0.0/8, service CIDR 172.30.0.0/16).
    use super::*;

    fn svc(ns: &str, name: &str, ip: [u8; 4], eps: &[&str]) -> ServicePort {
        ServicePort {
            namespace: ns.into(),
            name: name.into(),
            port_name: "p80".into(),
            protocol: "tcp",
            cluster_ip: ip.into(),
            port: 80,
            node_port: None,
            endpoints: eps.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    fn upstream_node() -> NodeConfig {
        NodeConfig {
            cluster_cidr: "10.0.0.0/8".into(),
            service_cidr: "172.30.0.0/16".into(),
            node_ips: vec![Ipv4Addr::new(192, 168, 0, 2)],
            masquerade_mark: "0x4000",
        }
    }

    #[test]
    fn base32_is_rfc4648_with_padding() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY======");
        assert_eq!(base32(b"fo"), "MZXQ====");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI======");
    }

    #[test]
    fn iptables_chain_names_hash_as_kube_proxy() {
        let s1 = svc("ns1", "svc1", [172, 30, 0, 41], &["10.180.0.1:80"]);
        assert_eq!(iptables_svc_chain(&s1), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(
            iptables_sep_chain(&s1, s1.endpoints[0]),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        let s4 = svc(
            "ns4",
            "svc4",
            [172, 30, 0, 44],
            &["10.180.0.4:80", "10.180.0.5:80"],
        );
        assert_eq!(iptables_svc_chain(&s4), "KUBE-SVC-4SW47YFZTEDKD3PK");
        assert_eq!(
            iptables_sep_chain(&s4, s4.endpoints[0]),
            "KUBE-SEP-UKSFD7AGPMPPLUHC"
        );
        assert_eq!(
            iptables_sep_chain(&s4, s4.endpoints[1]),
            "KUBE-SEP-C6EBXVWJJZMIWKLZ"
        );
    }

    #[test]
    fn node_ports_go_through_the_external_chain_as_kube_proxy_writes_it() {
        // TestOverallIPTablesRules / TestOverallNFTablesRules: svc2 is a
        // NodePort Service (3001) with Cluster policy.
        let svc2 = ServicePort {
            node_port: Some(3001),
            ..svc("ns2", "svc2", [172, 30, 0, 42], &["10.180.0.2:80"])
        };
        let rules = iptables_restore(std::slice::from_ref(&svc2), &upstream_node());
        for line in [
            ":KUBE-EXT-GNZBNJ2PO5MGZ6GT - [0:0]",
            "-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT",
            "-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment \"masquerade traffic for ns2/svc2:p80 external destinations\" -j KUBE-MARK-MASQ",
            "-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -j KUBE-SVC-GNZBNJ2PO5MGZ6GT",
        ] {
            assert!(
                rules.contains(&format!("{line}\n")),
                "missing {line}\n{rules}"
            );
        }
        let nft = nft_ruleset(&[svc2], &upstream_node());
        for line in [
            "add chain ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80",
            "add element ip kube-proxy service-nodeports { tcp . 3001 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }",
            "add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 jump mark-for-masquerade",
            "add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 goto service-42NFTM6N-ns2/svc2/tcp/p80",
        ] {
            assert!(nft.contains(&format!("{line}\n")), "missing {line}\n{nft}");
        }
    }

    #[test]
    fn iptables_restore_has_kube_proxys_lines_in_order() {
        let s4 = svc(
            "ns4",
            "svc4",
            [172, 30, 0, 44],
            &["10.180.0.4:80", "10.180.0.5:80"],
        );
        let out = iptables_restore(std::slice::from_ref(&s4), &upstream_node());
        let want = [
            "*filter",
            ":KUBE-SERVICES - [0:0]",
            "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "COMMIT",
            "*nat",
            ":KUBE-SERVICES - [0:0]",
            ":KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]",
            ":KUBE-SEP-UKSFD7AGPMPPLUHC - [0:0]",
            ":KUBE-SEP-C6EBXVWJJZMIWKLZ - [0:0]",
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
            "-A KUBE-SERVICES -m comment --comment \"ns4/svc4:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK",
            "-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment \"ns4/svc4:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
            "-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment \"ns4/svc4:p80 -> 10.180.0.4:80\" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC",
            "-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment \"ns4/svc4:p80 -> 10.180.0.5:80\" -j KUBE-SEP-C6EBXVWJJZMIWKLZ",
            "-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ",
            "-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80",
            "-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ",
            "-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80",
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
            "COMMIT",
        ];
        let lines: Vec<&str> = out.lines().collect();
        let mut at = 0;
        for w in want {
            let found = lines[at..].iter().position(|l| *l == w);
            let Some(i) = found else {
                panic!("{w:?} missing or out of order in:\n{out}");
            };
            at += i + 1;
        }
        assert_eq!(lines.last(), Some(&"COMMIT"));
    }

    #[test]
    fn probabilities_are_one_over_the_remaining_count() {
        assert_eq!(probability(2), "0.5000000000");
        assert_eq!(probability(3), "0.3333333333");
        let s = svc(
            "ns",
            "s",
            [10, 96, 0, 1],
            &["10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:80"],
        );
        let out = iptables_restore(&[s], &NodeConfig::default());
        let picks: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SVC-") && l.contains("KUBE-SEP-"))
            .collect();
        assert_eq!(picks.len(), 3);
        assert!(picks[0].contains("--probability 0.3333333333"));
        assert!(picks[1].contains("--probability 0.5000000000"));
        assert!(!picks[2].contains("statistic"));
    }

    #[test]
    fn large_clusters_drop_the_svc_and_sep_comments() {
        let services: Vec<ServicePort> = (0..=LARGE_CLUSTER_ENDPOINTS_THRESHOLD)
            .map(|i| {
                let i = i as u32;
                let ep = format!("10.1.{}.{}:80", i >> 8, i & 255);
                ServicePort {
                    name: format!("s{i}"),
                    cluster_ip: Ipv4Addr::from(0x0a60_0000 + i),
                    ..svc("ns", "x", [0, 0, 0, 0], &[ep.as_str()])
                }
            })
            .collect();
        let out = iptables_restore(&services, &NodeConfig::default());
        let sep = iptables_sep_chain(&services[0], services[0].endpoints[0]);
        let svc_chain = iptables_svc_chain(&services[0]);
        assert!(out.contains(&format!("-A {sep} -s 10.1.0.0 -j KUBE-MARK-MASQ\n")));
        assert!(out.contains(&format!("-A {svc_chain} -j {sep}\n")));
        // KUBE-SERVICES keeps its comments.
        assert!(out.contains("--comment \"ns/s0:p80 cluster IP\""));
    }

    #[test]
    fn jump_rules_are_kube_proxys() {
        let rules = iptables_jump_rules();
        assert_eq!(rules.len(), 14);
        let prerouting = rules
            .iter()
            .find(|(t, _, a)| *t == "nat" && a[1] == "PREROUTING")
            .unwrap();
        assert_eq!(
            prerouting.2.join(" "),
            "-I PREROUTING -m comment --comment kubernetes service portals -j KUBE-SERVICES"
        );
        let forward = rules
            .iter()
            .find(|(t, d, a)| *t == "filter" && *d == "KUBE-SERVICES" && a[1] == "FORWARD")
            .unwrap();
        assert_eq!(
            forward.2.join(" "),
            "-I FORWARD -m conntrack --ctstate NEW -m comment --comment kubernetes service portals -j KUBE-SERVICES"
        );
    }

    #[test]
    fn nft_chain_names_hash_as_kube_proxy() {
        let s1 = svc("ns1", "svc1", [172, 30, 0, 41], &["10.180.0.1:80"]);
        assert_eq!(nft_service_chain(&s1), "service-ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(
            nft_endpoint_chain(&s1, s1.endpoints[0]),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    #[test]
    fn nft_ruleset_has_kube_proxys_lines() {
        let s1 = svc("ns1", "svc1", [172, 30, 0, 41], &["10.180.0.1:80"]);
        let s4 = svc(
            "ns4",
            "svc4",
            [172, 30, 0, 44],
            &["10.180.0.4:80", "10.180.0.5:80"],
        );
        let out = nft_ruleset(&[s1, s4], &upstream_node());
        for want in [
            "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }",
            "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }",
            "add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }",
            "add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }",
            "add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check",
            "add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check",
            "add rule ip kube-proxy nat-prerouting jump services",
            "add rule ip kube-proxy nat-postrouting jump masquerading",
            "add rule ip kube-proxy masquerading masquerade fully-random",
            "add rule ip kube-proxy cluster-ips-check ip daddr { 172.30.0.0/16 } drop comment \"Drop traffic to unallocated ClusterIPs\"",
            "add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }",
            "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips",
            "add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
            "add element ip kube-proxy nodeport-ips { 192.168.0.2 }",
            "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade",
            "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }",
            "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade",
            "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80",
            "add element ip kube-proxy cluster-ips { 172.30.0.41 }",
            "add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }",
            "add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 , 1 : goto endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 }",
        ] {
            assert!(
                out.lines().any(|l| l == want),
                "{want:?} missing in:\n{out}"
            );
        }
        // Every chain a rule or element names is added before it is used.
        let pos = |needle: &str| out.find(needle).unwrap();
        assert!(
            pos("add chain ip kube-proxy service-ULMVA6XW")
                < pos("add element ip kube-proxy service-ips { 172.30.0.41")
        );
    }
}
