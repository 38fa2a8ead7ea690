//! The per-Service health check listeners (kube-proxy's
//! healthCheckNodePort servers), each test in a network namespace of its
//! own: what probes get over IPv4 and IPv6, counts and proxy health
//! changing under a live connection, a closed port being free again, and
//! a taken port being retried. Run as root.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use svc_agent::service_health::{Family, ServiceHealth, ServiceHealthServers, answer};
use tests::netns::NetNs;

const WEB: u16 = 32100;
const IDLE: u16 = 32101;

fn health(name: &str, local_ipv4: usize, local_ipv6: usize) -> ServiceHealth {
    ServiceHealth {
        namespace: "shop".into(),
        name: name.into(),
        local_ipv4,
        local_ipv6,
    }
}

fn ports(list: &[(u16, ServiceHealth)]) -> BTreeMap<u16, ServiceHealth> {
    list.iter().cloned().collect()
}

/// Runs `test` in a fresh namespace, on a thread inside it with a tokio
/// runtime whose workers (created by that thread) are inside it too. The
/// test may block that thread (curl, a blocking client): the listeners run
/// on the workers.
fn scenario(
    tag: &str,
    test: impl AsyncFnOnce(&NetNs, &mut ServiceHealthServers) -> Result<()> + Send,
) -> Result<()> {
    let ns = NetNs::new(tag)?;
    ns.enter(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut servers = ServiceHealthServers::new();
            test(&ns, &mut servers).await
        })
    })
}

/// A reply as a client sees it; header names lowercased.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.as_str())
    }
}

/// `curl -i` from inside the namespace.
fn curl(ns: &NetNs, host: &str, port: u16, extra: &[&str]) -> Result<Reply> {
    let url = format!("http://{host}:{port}/healthz");
    let mut argv = vec!["curl", "-sS", "-i", "--max-time", "5"];
    argv.extend_from_slice(extra);
    argv.push(&url);
    let out = ns.run(&argv)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .with_context(|| format!("no end of headers in {out:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {out:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_string(),
    })
}

/// One HTTP/1.1 connection kept open across requests, from the calling
/// thread (inside the namespace).
struct KeepAlive(BufReader<TcpStream>);

impl KeepAlive {
    fn connect(addr: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Self(BufReader::new(stream)))
    }

    fn get(&mut self) -> Result<Reply> {
        self.0
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: probe\r\n\r\n")?;
        let mut line = String::new();
        self.0.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut headers = BTreeMap::new();
        loop {
            line.clear();
            self.0.read_line(&mut line)?;
            let Some((k, v)) = line.trim_end().split_once(':') else {
                break;
            };
            headers.insert(k.to_ascii_lowercase(), v.trim().to_string());
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|l: &String| l.parse().ok())
            .context("no content-length")?;
        let mut body = vec![0; len];
        self.0.read_exact(&mut body)?;
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8(body)?,
        })
    }

    /// Whether the server closed the connection.
    fn closed(&mut self) -> bool {
        let mut byte = [0];
        matches!(self.0.read(&mut byte), Ok(0) | Err(_))
    }
}

#[test]
fn probes_get_kube_proxys_answers_and_counts_change_live() -> Result<()> {
    scenario("hc-live", async |ns, servers| {
        let web = health("web", 2, 1);
        let idle = health("idle", 0, 0);
        servers
            .sync(ports(&[(WEB, web.clone()), (IDLE, idle.clone())]), true)
            .await;
        assert_eq!(servers.ports(), [WEB, IDLE]);

        // IPv4 and IPv6 probes on one listener, each told its family's count.
        let r = curl(ns, "127.0.0.1", WEB, &[])?;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, answer(&web, Family::Ipv4, true).body);
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.header("x-content-type-options"), "nosniff");
        assert_eq!(r.header("x-load-balancing-endpoint-weight"), "2");
        let r = curl(ns, "[::1]", WEB, &[])?;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, answer(&web, Family::Ipv6, true).body);
        assert_eq!(r.header("x-load-balancing-endpoint-weight"), "1");
        // Any method, any path: the same answer, as kube-proxy gives.
        let r = curl(ns, "127.0.0.1", WEB, &["-X", "POST"])?;
        assert_eq!(r.status, 200);

        let r = curl(ns, "127.0.0.1", IDLE, &[])?;
        assert_eq!(r.status, 503);
        assert_eq!(r.body, answer(&idle, Family::Ipv4, true).body);
        assert_eq!(r.header("x-load-balancing-endpoint-weight"), "0");

        // New counts and proxy health reach a connection opened before
        // them: the listener was kept, not rebound.
        let mut conn = KeepAlive::connect(&format!("127.0.0.1:{WEB}"))?;
        assert_eq!(conn.get()?.body, answer(&web, Family::Ipv4, true).body);
        let more = health("web", 5, 1);
        servers
            .sync(ports(&[(WEB, more.clone()), (IDLE, idle.clone())]), true)
            .await;
        let r = conn.get()?;
        assert_eq!(
            (r.status, r.body),
            (200, answer(&more, Family::Ipv4, true).body)
        );
        servers
            .sync(ports(&[(WEB, more.clone()), (IDLE, idle.clone())]), false)
            .await;
        let r = conn.get()?;
        assert_eq!(r.status, 503);
        assert_eq!(r.body, answer(&more, Family::Ipv4, false).body);
        assert!(
            r.body.contains("\"serviceProxyHealthy\": false"),
            "{}",
            r.body
        );
        assert_eq!(r.header("x-load-balancing-endpoint-weight"), "5");
        // Everything gone: the count drops to zero, still no rebind.
        servers
            .sync(ports(&[(WEB, health("web", 0, 0)), (IDLE, idle)]), true)
            .await;
        assert_eq!(conn.get()?.status, 503);
        Ok(())
    })
}

#[test]
fn a_closed_port_is_free_again() -> Result<()> {
    scenario("hc-close", async |ns, servers| {
        let web = health("web", 1, 1);
        let idle = health("idle", 0, 0);
        servers
            .sync(ports(&[(WEB, web.clone()), (IDLE, idle.clone())]), true)
            .await;
        let mut conn = KeepAlive::connect(&format!("[::1]:{IDLE}"))?;
        assert_eq!(conn.get()?.status, 503);

        servers.sync(ports(&[(WEB, web.clone())]), true).await;
        assert_eq!(servers.ports(), [WEB]);
        ensure!(
            curl(ns, "127.0.0.1", IDLE, &[]).is_err(),
            "port {IDLE} still answers"
        );
        // Its open connections are closed with it.
        ensure!(conn.closed(), "a connection to the closed port stays open");
        // Free for anyone, on either family (the dual-stack listener is gone).
        drop(TcpListener::bind(("0.0.0.0", IDLE)).context("binding the freed port (IPv4)")?);
        drop(TcpListener::bind(("::", IDLE)).context("binding the freed port (IPv6)")?);
        // The port kept serves on.
        assert_eq!(curl(ns, "127.0.0.1", WEB, &[])?.status, 200);

        // And it can come back.
        servers.sync(ports(&[(WEB, web), (IDLE, idle)]), true).await;
        assert_eq!(curl(ns, "127.0.0.1", IDLE, &[])?.status, 503);
        Ok(())
    })
}

#[test]
fn a_taken_port_is_retried_at_the_next_sync() -> Result<()> {
    scenario("hc-taken", async |ns, servers| {
        let web = health("web", 1, 0);
        let squatter = TcpListener::bind(("0.0.0.0", WEB))?;
        // Logged, not fatal; the other port is served.
        servers
            .sync(
                ports(&[(WEB, web.clone()), (IDLE, health("idle", 0, 0))]),
                true,
            )
            .await;
        assert_eq!(servers.ports(), [IDLE]);

        drop(squatter);
        servers
            .sync(
                ports(&[(WEB, web.clone()), (IDLE, health("idle", 0, 0))]),
                true,
            )
            .await;
        assert_eq!(servers.ports(), [WEB, IDLE]);
        let r = curl(ns, "127.0.0.1", WEB, &[])?;
        if r.status != 200 {
            bail!("after the retry: {r:?}");
        }
        assert_eq!(r.body, answer(&web, Family::Ipv4, true).body);
        Ok(())
    })
}
