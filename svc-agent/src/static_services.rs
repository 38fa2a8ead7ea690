//! Services given on the command line, for the development loop
//! (`cargo xtask run -- run --service ...`) before any Kubernetes source is
//! wired in. Pure parsing and id assignment; the dataplane does the rest.
//!
//! Syntax: `FRONTEND/PROTO=BACKEND[,BACKEND...]`, addresses as Rust's
//! `SocketAddr` writes them, e.g. `10.96.0.10:80/tcp=10.244.1.2:8080` or
//! `[fd00:96::10]:80/udp=[fd00:244:1::2]:8080,[fd00:244:1::3]:8080`.
use std::{collections::BTreeMap, net::SocketAddr};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::dataplane::{Dataplane, Frontend};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticService {
    pub frontend: Frontend,
    pub backends: Vec<SocketAddr>,
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
            .map(|b| b.parse().with_context(|| format!("backend {b:?}")))
            .collect::<Result<Vec<SocketAddr>>>()?;
        if backends
            .iter()
            .any(|b| b.is_ipv4() != frontend.addr.is_ipv4())
        {
            bail!("{s:?}: backends must be of the frontend's address family");
        }
        Ok(Self { frontend, backends })
    }
}

/// The desired map contents for a set of static services: backend ids
/// (one per distinct endpoint, from 1) and each frontend's slots, with
/// service ids from 0 in the given order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub backends: BTreeMap<SocketAddr, u32>,
    pub services: Vec<(Frontend, u32, Vec<u32>)>,
}

pub fn plan(services: &[StaticService]) -> Result<Plan> {
    let mut plan = Plan::default();
    for (service_id, svc) in (0u32..).zip(services) {
        if plan.services.iter().any(|(f, _, _)| *f == svc.frontend) {
            bail!("frontend {:?} given twice", svc.frontend);
        }
        let mut ids = Vec::with_capacity(svc.backends.len());
        for b in &svc.backends {
            let next = plan.backends.len() as u32 + 1;
            ids.push(*plan.backends.entry(*b).or_insert(next));
        }
        plan.services.push((svc.frontend, service_id, ids));
    }
    Ok(plan)
}

/// Writes a plan: backends before the services that reference them.
pub fn apply(dp: &mut Dataplane, plan: &Plan) -> Result<()> {
    for (addr, id) in &plan.backends {
        dp.set_backend(*id, *addr)?;
    }
    for (frontend, service_id, ids) in &plan.services {
        dp.set_service(frontend, *service_id, 0, ids)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::Protocol;

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
        assert_eq!(s.backends, vec!["[fd00:244:1::2]:5353".parse().unwrap()]);
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
    fn plan_shares_backend_ids_and_rejects_duplicates() {
        let a: StaticService = "10.96.0.10:80/tcp=10.244.1.2:80,10.244.1.3:80"
            .parse()
            .unwrap();
        let b: StaticService = "10.96.0.11:80/tcp=10.244.1.3:80".parse().unwrap();
        let p = plan(&[a.clone(), b]).unwrap();
        assert_eq!(p.backends.len(), 2);
        assert_eq!(p.services[0].2, vec![1, 2]);
        assert_eq!(p.services[1], (p.services[1].0, 1, vec![2]));
        assert!(plan(&[a.clone(), a]).is_err());
    }
}
