//! Services written as one-line specs, for the packet-level tests and the
//! benchmarks: they reach the maps through the agent's own reconciler, so
//! the fixtures are provisioned exactly as the agent provisions.
//!
//! Syntax: `FRONTEND/PROTO=BACKEND[,BACKEND...]`, addresses as Rust's
//! `SocketAddr` writes them, e.g. `10.96.0.10:80/tcp=10.244.1.2:8080` or
//! `[fd00:96::10]:80/udp=[fd00:244:1::2]:8080,[fd00:244:1::3]:8080`. A
//! backend on another node ends in `@remote`: `10.244.2.5:8080@remote`.
//! Without backends (`10.96.0.10:80/tcp=`) a frontend has no endpoints at
//! all, so it refuses new flows.
use std::net::SocketAddr;

use anyhow::{Context as _, Result, anyhow, bail};
use svc_agent::{
    dataplane::{Dataplane, Endpoint, Frontend, Settings},
    model::{Desired, ServicePortName, Target, reject_flag},
    reconcile::Reconciler,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticService {
    pub frontend: Frontend,
    pub backends: Vec<Endpoint>,
}

impl std::str::FromStr for StaticService {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (front, backs) = s
            .split_once('=')
            .ok_or_else(|| anyhow!("{s:?}: expected FRONTEND/PROTO=BACKEND[,BACKEND...]"))?;
        let (addr, proto) = front
            .rsplit_once('/')
            .ok_or_else(|| anyhow!("{front:?}: expected ADDR:PORT/PROTO"))?;
        let frontend = Frontend {
            addr: addr.parse().with_context(|| format!("frontend {addr:?}"))?,
            proto: proto.parse()?,
        };
        let backends = backs
            .split(',')
            .filter(|b| !b.is_empty())
            .map(|b| {
                let (addr, local) = match b.strip_suffix("@remote") {
                    Some(a) => (a, false),
                    None => (b, true),
                };
                let addr: SocketAddr = addr.parse().with_context(|| format!("backend {b:?}"))?;
                Ok(Endpoint { addr, local })
            })
            .collect::<Result<Vec<Endpoint>>>()?;
        if backends
            .iter()
            .any(|b| b.addr.is_ipv4() != frontend.addr.is_ipv4())
        {
            bail!("{s:?}: backends must be of the frontend's address family");
        }
        Ok(Self { frontend, backends })
    }
}

/// The desired state for `services`: each frontend with its backends.
pub fn desired(services: &[StaticService]) -> Result<Desired> {
    let mut out = Desired::new();
    for svc in services {
        let mut backends = svc.backends.clone();
        backends.sort();
        backends.dedup();
        let target = Target {
            service: ServicePortName {
                namespace: "static".into(),
                name: svc.frontend.addr.to_string(),
                port: String::new(),
            },
            // A frontend listed without backends has no endpoints
            // anywhere: it refuses, as the agent's model decides.
            settings: Settings {
                flags: reject_flag(&backends, !backends.is_empty()),
                ..Settings::default()
            },
            backends,
            source_ranges: Vec::new(),
        };
        if out.insert(svc.frontend, target).is_some() {
            bail!("frontend {:?} given twice", svc.frontend);
        }
    }
    Ok(out)
}

/// Programs `services` into a fresh dataplane through the reconciler:
/// backend ids from 1 in address order, service ids from 0 in frontend
/// order (addresses, IPv4 first, then TCP before UDP).
pub fn apply(dp: &mut Dataplane, services: &[StaticService]) -> Result<Reconciler> {
    let mut reconciler = Reconciler::default();
    reconciler.apply(&desired(services)?, dp)?;
    Ok(reconciler)
}

#[cfg(test)]
mod tests {
    use super::*;
    use svc_agent::dataplane::Protocol;

    #[test]
    fn parses_v4_and_v6() {
        let s: StaticService = "10.96.0.10:80/tcp=10.244.1.2:8080,10.244.1.3:8080"
            .parse()
            .unwrap();
        assert_eq!(s.frontend.addr, "10.96.0.10:80".parse().unwrap());
        assert_eq!(s.frontend.proto, Protocol::Tcp);
        assert_eq!(s.backends.len(), 2);
        let s: StaticService = "[fd00:96::10]:53/UDP=[fd00:244:1::2]:5353".parse().unwrap();
        assert_eq!(s.frontend.proto, Protocol::Udp);
        let b: SocketAddr = "[fd00:244:1::2]:5353".parse().unwrap();
        assert_eq!(s.backends, vec![Endpoint::from(b)]);
        let s: StaticService = "10.96.0.10:80/tcp=10.244.2.2:80@remote".parse().unwrap();
        assert!(!s.backends[0].local);
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "10.96.0.10:80=10.244.1.2:80",
            "10.96.0.10:80/icmp=10.244.1.2:80",
            "10.96.0.10/tcp=10.244.1.2:80",
            "10.96.0.10:80/tcp=[fd00::1]:80",
        ] {
            assert!(bad.parse::<StaticService>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn desired_sorts_backends_and_rejects_duplicates() {
        let a: StaticService = "10.96.0.10:80/tcp=10.244.1.3:80,10.244.1.2:80"
            .parse()
            .unwrap();
        let d = desired(std::slice::from_ref(&a)).unwrap();
        let want: Vec<Endpoint> = ["10.244.1.2:80", "10.244.1.3:80"]
            .map(|b| b.parse::<SocketAddr>().unwrap().into())
            .to_vec();
        assert_eq!(d[&a.frontend].backends, want);
        assert!(desired(&[a.clone(), a]).is_err());
    }
}
