//! A node in a box: a node namespace whose uplink leads to an "external"
//! namespace, and pod namespaces hanging off it by veths, wired the way a
//! routed CNI (Calico-style) does it.
//!
//! ```text
//!   external ns            node ns                       pod ns (one each)
//!   eth0 192.0.2.2  <-->  up0 192.0.2.1      vpodN <-->  eth0 10.244.1.N
//!        2001:db8::2          2001:db8::1    (10.244.1.1,      fd00:244:1::N
//!   routes service and                        fe80::1)
//!   pod ranges to node
//! ```
//!
//! Each pod has a /32 (/128) address and a default route to the node side
//! of its veth; the node routes each pod address to its veth and forwards.
//! The external namespace routes the service CIDRs to the node, as a
//! cluster that advertises service IPs (BGP) would.
use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, Ipv6Addr},
    process::{Child, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::{NetNs, sh};

pub const UPLINK: &str = "up0";
pub const SERVICE_CIDR_V4: &str = "10.96.0.0/16";
pub const SERVICE_CIDR_V6: &str = "fd00:96::/112";
pub const EXTERNAL_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const EXTERNAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

pub struct Sandbox {
    pub node: NetNs,
    pub external: NetNs,
    pub pods: Vec<Pod>,
}

pub struct Pod {
    pub name: String,
    pub ns: NetNs,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The node side of the pod's veth (where the tc program goes).
    pub node_veth: String,
    servers: Vec<Child>,
}

/// A namespace set up as a host: IPv6 duplicate address detection off (it
/// only delays the first packets of a test), loopback up.
pub(crate) fn host(tag: &str) -> Result<NetNs> {
    let ns = NetNs::new(tag)?;
    ns.run(&[
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
    ])?;
    Ok(ns)
}

impl Sandbox {
    pub fn new(tag: &str) -> Result<Self> {
        let node = host(&format!("{tag}-node"))?;
        let external = host(&format!("{tag}-ext"))?;
        node.run(&[
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ])?;
        node.run(&[
            "ip",
            "link",
            "add",
            UPLINK,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            external.name(),
        ])?;
        node.run(&["ip", "addr", "add", "192.0.2.1/24", "dev", UPLINK])?;
        node.run(&[
            "ip",
            "addr",
            "add",
            "2001:db8::1/64",
            "dev",
            UPLINK,
            "nodad",
        ])?;
        node.run(&["ip", "link", "set", UPLINK, "up"])?;
        external.run(&["ip", "addr", "add", "192.0.2.2/24", "dev", "eth0"])?;
        external.run(&[
            "ip",
            "addr",
            "add",
            "2001:db8::2/64",
            "dev",
            "eth0",
            "nodad",
        ])?;
        external.run(&["ip", "link", "set", "eth0", "up"])?;
        for cidr in [SERVICE_CIDR_V4, "10.244.0.0/16"] {
            external.run(&["ip", "route", "add", cidr, "via", "192.0.2.1"])?;
        }
        for cidr in [SERVICE_CIDR_V6, "fd00:244::/32"] {
            external.run(&["ip", "-6", "route", "add", cidr, "via", "2001:db8::1"])?;
        }
        Ok(Self {
            node,
            external,
            pods: Vec::new(),
        })
    }

    /// Adds pod number `n` (1 < n < 255): 10.244.1.n and fd00:244:1::n.
    pub fn add_pod(&mut self, name: &str, n: u8) -> Result<&mut Pod> {
        let tag = self.tag();
        add_pod_to(&self.node, &mut self.pods, &tag, 1, name, n)
    }

    /// Loads a dataplane (maps of its own, nothing pinned) and attaches it
    /// as the agent would: XDP and tcx egress on the uplink, tcx ingress
    /// and egress on every pod veth.
    pub fn attach_dataplane(&self) -> Result<svc_agent::dataplane::Dataplane> {
        self.attach_dataplane_with(true)
    }

    /// Like `attach_dataplane`, with or without the egress program (which
    /// only translates ICMP errors the node sends: its cost on everything
    /// else is measured against `false`).
    pub fn attach_dataplane_with(&self, egress: bool) -> Result<svc_agent::dataplane::Dataplane> {
        let veths: Vec<&str> = self.pods.iter().map(|p| p.node_veth.as_str()).collect();
        self.node.enter(|| {
            let mut dp = svc_agent::dataplane::Dataplane::load()?;
            dp.attach_xdp(UPLINK)?;
            if egress {
                dp.attach_tc_egress(UPLINK)?;
            }
            for veth in &veths {
                dp.attach_tc(veth)?;
                if egress {
                    dp.attach_tc_egress(veth)?;
                }
            }
            Ok(dp)
        })
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Turns tx checksum offload on or off on both ends of every veth.
    /// Off, every sender computes full checksums in software and every
    /// receiver verifies them, so a wrong checksum is a dropped packet.
    pub fn set_tx_checksum(&self, on: bool) -> Result<()> {
        let state = if on { "on" } else { "off" };
        let mut ends: Vec<(&NetNs, &str)> = vec![(&self.node, UPLINK), (&self.external, "eth0")];
        for p in &self.pods {
            ends.push((&self.node, &p.node_veth));
            ends.push((&p.ns, "eth0"));
        }
        for (ns, dev) in ends {
            ns.run(&["ethtool", "-K", dev, "tx", state])?;
        }
        Ok(())
    }

    fn tag(&self) -> String {
        // "svc-<tag>-node-<pid>-<n>" -> "<tag>"
        let name = self.node.name();
        let rest = name.strip_prefix("svc-").unwrap_or(name);
        rest.split("-node-").next().unwrap_or(rest).to_string()
    }
}

/// Wires pod number `n` (1 < n < 255, not taken in `pods`) to `node` the
/// way a routed CNI does, in the node's pod range `k`: 10.244.k.n and
/// fd00:244:k::n (the IPv6 address ends in the same digits: pod 21 is
/// ::21). The node side of its veth, `vpodN`, holds 10.244.k.1/32 and
/// fe80::1 (the pod's default gateway), and the node routes the pod's /32
/// and /128 to it. The pod's namespace is named after `tag`.
pub(crate) fn add_pod_to<'a>(
    node: &NetNs,
    pods: &'a mut Vec<Pod>,
    tag: &str,
    k: u8,
    name: &str,
    n: u8,
) -> Result<&'a mut Pod> {
    if n < 2 || n == 255 || pods.iter().any(|p| p.ipv4.octets()[3] == n) {
        bail!("pod number {n} is reserved or taken");
    }
    let ns = host(&format!("{tag}-pod{n}"))?;
    let ipv4 = Ipv4Addr::new(10, 244, k, n);
    let last = u16::from_str_radix(&n.to_string(), 16).expect("decimal digits are hex");
    let ipv6 = Ipv6Addr::new(0xfd00, 0x244, k.into(), 0, 0, 0, 0, last);
    let gateway = Ipv4Addr::new(10, 244, k, 1).to_string();
    let veth = format!("vpod{n}");
    node.run(&[
        "ip",
        "link",
        "add",
        &veth,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])?;
    node.run(&["ip", "addr", "add", &format!("{gateway}/32"), "dev", &veth])?;
    node.run(&["ip", "addr", "add", "fe80::1/64", "dev", &veth, "nodad"])?;
    node.run(&["ip", "link", "set", &veth, "up"])?;
    node.run(&["ip", "route", "add", &format!("{ipv4}/32"), "dev", &veth])?;
    node.run(&[
        "ip",
        "-6",
        "route",
        "add",
        &format!("{ipv6}/128"),
        "dev",
        &veth,
    ])?;
    ns.run(&["ip", "addr", "add", &format!("{ipv4}/32"), "dev", "eth0"])?;
    ns.run(&[
        "ip",
        "addr",
        "add",
        &format!("{ipv6}/128"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    ns.run(&["ip", "link", "set", "eth0", "up"])?;
    ns.run(&["ip", "route", "add", &gateway, "dev", "eth0"])?;
    ns.run(&[
        "ip", "route", "add", "default", "via", &gateway, "dev", "eth0",
    ])?;
    ns.run(&[
        "ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
    ])?;
    pods.push(Pod {
        name: name.to_string(),
        ns,
        ipv4,
        ipv6,
        node_veth: veth,
        servers: Vec::new(),
    });
    Ok(pods.last_mut().unwrap())
}

impl Pod {
    /// Starts the pod's server on `port` (HTTP over TCP and UDP, v4 and
    /// v6), answering with the pod's name; returns once it listens.
    pub fn serve(&mut self, port: u16) -> Result<()> {
        self.serve_ports(&[port])
    }

    /// Like `serve`, on several ports at once.
    pub fn serve_ports(&mut self, ports: &[u16]) -> Result<()> {
        let ports: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
        let mut args = vec![self.name.clone()];
        args.extend(ports);
        self.start("pod_server.py", &args)
    }

    /// Starts a bulk TCP server on `port` (`assets/bulk.py`: see
    /// `bulk_transfer`); returns once it listens.
    pub fn serve_bulk(&mut self, port: u16) -> Result<()> {
        self.start("bulk.py", &["serve".to_string(), port.to_string()])
    }

    /// Runs `assets/<script>` in the pod until the pod goes; returns once
    /// it printed "ready".
    fn start(&mut self, script: &str, args: &[String]) -> Result<()> {
        let path = format!("{}/assets/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = self
            .ns
            .command("python3")
            .arg("-u")
            .arg(path)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {script}"))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        self.servers.push(child);
        if line.trim() != "ready" {
            bail!("{script} in {} did not start: {line:?}", self.name);
        }
        Ok(())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for mut child in self.servers.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Which way `bulk_transfer` moves its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bulk {
    /// From the server to the client.
    Get,
    /// From the client to the server.
    Put,
}

/// Moves `bytes` over one TCP connection from inside `ns` to a
/// `Pod::serve_bulk` server at `addr:port`; returns how many arrived.
/// Fails if the transfer stalls for 15 seconds.
pub fn bulk_transfer(
    ns: &NetNs,
    way: Bulk,
    addr: std::net::IpAddr,
    port: u16,
    bytes: u64,
) -> Result<u64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/bulk.py");
    let verb = match way {
        Bulk::Get => "get",
        Bulk::Put => "put",
    };
    let out = sh(ns.command("python3").args([
        script,
        verb,
        &addr.to_string(),
        &port.to_string(),
        &bytes.to_string(),
    ]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("bulk {verb}: unexpected output {text:?}"))
}

/// `http://addr:port/`, with IPv6 literals bracketed.
pub fn url(addr: std::net::IpAddr, port: u16) -> String {
    format!("http://{}/", std::net::SocketAddr::new(addr, port))
}

/// Who answers `n` requests (HTTP over TCP, or the UDP client) from
/// `ns` to `addr:port`; panics, naming the request, if any fails.
pub fn answers(
    ns: &NetNs,
    addr: std::net::IpAddr,
    port: u16,
    udp: bool,
    n: usize,
) -> std::collections::BTreeSet<String> {
    (0..n)
        .map(|i| {
            let r = if udp {
                udp_ask(ns, addr, port)
            } else {
                http_get(ns, addr, port)
            };
            r.unwrap_or_else(|e| panic!("request {i} to {addr}:{port} failed: {e:#}"))
        })
        .collect()
}

/// One HTTP GET with curl from inside `ns`; returns the body.
pub fn http_get(ns: &NetNs, addr: std::net::IpAddr, port: u16) -> Result<String> {
    http_get_path(ns, addr, port, "/")
}

/// One HTTP GET of `path` (starting with '/') from inside `ns`; returns the
/// body. The pod server answers `/client` with the client address it saw.
pub fn http_get_path(ns: &NetNs, addr: std::net::IpAddr, port: u16, path: &str) -> Result<String> {
    let url = format!("http://{}{path}", std::net::SocketAddr::new(addr, port));
    let out = sh(ns.command("curl").args(["-sS", "--max-time", "5", &url]))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One UDP request from inside `ns` (a short Python client: socat would
/// wait out its timeout after the answer, UDP having no end of stream).
pub fn udp_ask(ns: &NetNs, addr: std::net::IpAddr, port: u16) -> Result<String> {
    udp_ask_from(ns, addr, port, 0)
}

/// Like `udp_ask`, from a fixed source port (0: any), so that repeated
/// calls are one and the same flow.
pub fn udp_ask_from(
    ns: &NetNs,
    addr: std::net::IpAddr,
    port: u16,
    src_port: u16,
) -> Result<String> {
    udp_request(ns, addr, port, src_port, "ping")
}

/// One UDP datagram `payload` from inside `ns`, from `src_port` (0: any);
/// returns the answer. The pod server answers `client` with the client
/// address it saw, anything else with its name.
pub fn udp_request(
    ns: &NetNs,
    addr: std::net::IpAddr,
    port: u16,
    src_port: u16,
    payload: &str,
) -> Result<String> {
    const CLIENT: &str = "import socket, sys\n\
        a = (sys.argv[1], int(sys.argv[2]))\n\
        s = socket.socket(socket.AF_INET6 if ':' in a[0] else socket.AF_INET, socket.SOCK_DGRAM)\n\
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        s.bind(('', int(sys.argv[3])))\n\
        s.settimeout(3)\n\
        s.sendto(sys.argv[4].encode(), a)\n\
        print(s.recv(65535).decode().strip())\n";
    let out = sh(ns.command("python3").args([
        "-c",
        CLIENT,
        &addr.to_string(),
        &port.to_string(),
        &src_port.to_string(),
        payload,
    ]))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// How one `curl_try` ended.
#[derive(Debug)]
pub struct CurlTry {
    /// curl's exit code: 0 answered; 7 could not connect (refused, or no
    /// route: see `log`); 28 timed out.
    pub code: i32,
    pub took: std::time::Duration,
    /// curl's verbose log (stderr): "connect to ... failed: Connection
    /// refused" tells a refusal from an unreachable network.
    pub log: String,
}

/// One HTTP GET with curl from inside `ns`, given up after `max_time`.
pub fn curl_try(
    ns: &NetNs,
    addr: std::net::IpAddr,
    port: u16,
    max_time: std::time::Duration,
) -> Result<CurlTry> {
    let url = url(addr, port);
    let max_time = format!("{:.1}", max_time.as_secs_f64());
    let started = std::time::Instant::now();
    let out = ns
        .command("curl")
        .args([
            "-sS",
            "-v",
            "-o",
            "/dev/null",
            "--max-time",
            &max_time,
            &url,
        ])
        .output()
        .context("running curl")?;
    let took = started.elapsed();
    Ok(CurlTry {
        code: out.status.code().context("curl was killed by a signal")?,
        took,
        log: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// One request over a connected UDP socket (python3) from inside `ns`,
/// given up after `timeout`: the answer, or the error the socket reported
/// (`ECONNREFUSED` once an ICMP port unreachable came back), or
/// `timeout`; and how long the exchange took.
pub fn udp_connected(
    ns: &NetNs,
    addr: std::net::IpAddr,
    port: u16,
    timeout: std::time::Duration,
) -> Result<(String, std::time::Duration)> {
    const CLIENT: &str = "import errno, socket, sys, time\n\
        a = (sys.argv[1], int(sys.argv[2]))\n\
        s = socket.socket(socket.AF_INET6 if ':' in a[0] else socket.AF_INET, socket.SOCK_DGRAM)\n\
        s.settimeout(float(sys.argv[3]))\n\
        s.connect(a)\n\
        t = time.monotonic()\n\
        try:\n    s.send(b'ping')\n    out = s.recv(65535).decode().strip()\n\
        except socket.timeout:\n    out = 'timeout'\n\
        except OSError as e:\n    out = errno.errorcode.get(e.errno, str(e.errno))\n\
        print(out, time.monotonic() - t)\n";
    let out = sh(ns.command("python3").args([
        "-c",
        CLIENT,
        &addr.to_string(),
        &port.to_string(),
        &timeout.as_secs_f64().to_string(),
    ]))?;
    let out = String::from_utf8_lossy(&out.stdout);
    let (answer, secs) = out
        .trim()
        .rsplit_once(' ')
        .with_context(|| format!("the UDP client's output: {out:?}"))?;
    let secs: f64 = secs.parse().context("the UDP client's time")?;
    Ok((answer.to_string(), std::time::Duration::from_secs_f64(secs)))
}
