//! `map-batch`: the agent's map writes and reads per key (one or two
//! bpf(2) calls an entry) next to batched (`svc_agent::map_batch`: many
//! entries a call), at 10k and 100k Services x 10 endpoints, on dataplanes
//! loaded with maps of their own (pinned on a private bpffs, so the
//! per-key side can open them as aya maps).
//!
//! * writes: every backend and frontend with `set_backend` and
//!   `set_service`, against `set_backends` and `add_services`;
//! * reads: `SERVICES`, `BACKENDS` and `MAGLEV` keys with aya's
//!   iterators (what `dump` did), against batched, and `dump` itself;
//! * conntrack: all entries with aya's iterator, against `conntrack()`.
//!
//! The shared workload (`Plan`) and map readers are what the map-batch
//! tests compare with, too.
use std::{net::Ipv4Addr, time::Instant};

use anyhow::{Context as _, Result};
use aya::{
    Pod,
    maps::{HashMap, Map, MapData},
};
use svc_agent::{
    dataplane::{Capacity, Dataplane, Endpoint, Frontend, NewService, Pins, Protocol, Settings},
    maglev::LoadBalancing,
    map_batch,
};
use svc_common::{
    BACKENDS_MAP, Backend, CONNTRACK_MAP, CT_FORWARD, FlowKey, MAGLEV_MAP, MaglevChunk, MaglevKey,
    NatEntry, PROTO_TCP, SERVICES_MAP, ServiceKey, ServiceValue, service_flags,
};

use super::{Ctx, Row, count_label, median, report::table};
use crate::bpffs::Bpffs;

/// `n` frontends with `eps` backends each, as the agent would program
/// them: every other one with a Maglev table (all, in the benchmark),
/// some NodePorts and some with session affinity.
pub struct Plan {
    pub backends: Vec<(u32, Endpoint)>,
    pub services: Vec<PlannedService>,
    /// Every table (any valid one does: the map cost is the same).
    pub table: Vec<u16>,
}

pub struct PlannedService {
    pub frontend: Frontend,
    pub service_id: u32,
    pub settings: Settings,
    pub backend_ids: Vec<u32>,
    pub maglev: bool,
}

impl Plan {
    /// For `dp`'s table size; one frontend in `maglev_every` gets a table.
    pub fn new(n: u32, eps: u32, maglev_every: u32, dp: &Dataplane) -> Self {
        let backends = (0..n * eps)
            .map(|b| {
                let addr = Ipv4Addr::from(0x0a80_0000 + b); // 10.128.0.0 upwards
                let ep = Endpoint {
                    addr: (addr, 8080).into(),
                    local: b % 2 == 0,
                };
                (b + 1, ep)
            })
            .collect();
        let services = (0..n)
            .map(|i| {
                let node_port = i % 50 == 0;
                let (flags, affinity_timeout_s) = match i % 7 {
                    0 => (service_flags::AFFINITY, 10_800),
                    _ => (0, 0),
                };
                let port = if node_port {
                    30_000 + (i / 50) % 2000
                } else {
                    80
                };
                PlannedService {
                    frontend: Frontend {
                        // 10.97.0.0 upwards
                        addr: (Ipv4Addr::from(0x0a61_0000 + i), port as u16).into(),
                        proto: Protocol::Tcp,
                    },
                    service_id: i,
                    settings: Settings {
                        flags: flags
                            | if node_port {
                                service_flags::NODE_PORT
                            } else {
                                0
                            },
                        affinity_timeout_s,
                    },
                    backend_ids: (i * eps + 1..=(i + 1) * eps).collect(),
                    maglev: i % maglev_every == 0,
                }
            })
            .collect();
        let size = dp.load_balancing().table_size().map_or(0, |m| m.get());
        let table = (0..size).map(|e| 1 + (e % eps) as u16).collect();
        Self {
            backends,
            services,
            table,
        }
    }

    /// The maps a dataplane needs for it.
    pub fn capacity(n: u32, eps: u32) -> Capacity {
        let d = Capacity::default();
        Capacity {
            frontends: (n + 64).max(d.frontends),
            service_slots: (n * (1 + eps) + 64).max(d.service_slots),
            backends: (n * eps + 64).max(d.backends),
            conntrack: d.conntrack,
        }
    }

    fn maglev(&self, s: &PlannedService) -> Option<&[u16]> {
        s.maglev.then_some(&self.table[..])
    }

    /// Everything with `set_backend` and `set_service`, one at a time.
    pub fn write_per_key(&self, dp: &mut Dataplane) -> Result<()> {
        for &(id, ep) in &self.backends {
            dp.set_backend(id, ep)?;
        }
        for s in &self.services {
            dp.set_service(
                &s.frontend,
                s.service_id,
                s.settings,
                &s.backend_ids,
                self.maglev(s),
            )?;
        }
        Ok(())
    }

    /// Everything with `set_backends` and `add_services`.
    pub fn write_batched(&self, dp: &mut Dataplane) -> Result<()> {
        dp.set_backends(&self.backends)?;
        let services: Vec<NewService<'_>> = self
            .services
            .iter()
            .map(|s| NewService {
                frontend: s.frontend,
                service_id: s.service_id,
                settings: s.settings,
                backend_ids: &s.backend_ids,
                maglev: self.maglev(s),
            })
            .collect();
        dp.add_services(&services)
    }
}

/// A dataplane with maps of its own pinned under `pins` (Maglev tables
/// of the default size, as `Dataplane::load` sets).
pub fn load(pins: &Pins, capacity: Capacity) -> Result<Dataplane> {
    let mut dp = Dataplane::load_pinned(pins, capacity)
        .context("loading the eBPF programs (needs root and a BPF-capable kernel)")?;
    dp.set_load_balancing(LoadBalancing::default())?;
    Ok(dp)
}

/// The pinned hash map `name` of a dataplane, as an aya map.
pub fn open<K: Pod, V: Pod>(pins: &Pins, name: &str) -> Result<HashMap<MapData, K, V>> {
    let path = pins.maps_dir().join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map = if name == CONNTRACK_MAP {
        Map::LruHashMap(data)
    } else {
        Map::HashMap(data)
    };
    Ok(HashMap::try_from(map)?)
}

/// What `SERVICES`, `BACKENDS` and `MAGLEV` hold (tables by key only, as
/// `dump` reads them).
#[derive(Debug, PartialEq, Eq)]
pub struct Raw {
    pub services: Vec<(ServiceKey, ServiceValue)>,
    pub backends: Vec<(u32, Backend)>,
    pub maglev: Vec<MaglevKey>,
}

impl Raw {
    /// In a canonical order (the maps' order is their hashing's).
    pub fn sorted(mut self) -> Self {
        self.services.sort_by_key(|(k, _)| *k);
        self.backends.sort_by_key(|(k, _)| *k);
        self.maglev.sort();
        self
    }
}

/// Per key: aya's iterators (a get-next-key and a lookup per entry).
pub fn read_per_key(pins: &Pins) -> Result<Raw> {
    let services: HashMap<_, ServiceKey, ServiceValue> = open(pins, SERVICES_MAP)?;
    let backends: HashMap<_, u32, Backend> = open(pins, BACKENDS_MAP)?;
    let maglev: HashMap<_, MaglevKey, MaglevChunk> = open(pins, MAGLEV_MAP)?;
    Ok(Raw {
        services: services.iter().collect::<Result<_, _>>()?,
        backends: backends.iter().collect::<Result<_, _>>()?,
        maglev: maglev.keys().collect::<Result<_, _>>()?,
    })
}

/// Batched.
pub fn read_batched(pins: &Pins) -> Result<Raw> {
    let services: HashMap<_, ServiceKey, ServiceValue> = open(pins, SERVICES_MAP)?;
    let backends: HashMap<_, u32, Backend> = open(pins, BACKENDS_MAP)?;
    let maglev: HashMap<_, MaglevKey, MaglevChunk> = open(pins, MAGLEV_MAP)?;
    Ok(Raw {
        services: map_batch::entries(&services)?,
        backends: map_batch::entries(&backends)?,
        maglev: map_batch::keys(&maglev)?,
    })
}

/// `n` distinct flows (forward entries, no partners), last seen at
/// `last_seen_s(i)`.
pub fn flows(n: u32, last_seen_s: impl Fn(u32) -> u32) -> Vec<(FlowKey, NatEntry)> {
    (0..n)
        .map(|i| {
            let client = svc_common::ipv4_mapped(Ipv4Addr::from(0xc612_0000 + i / 1000).octets());
            let key = FlowKey {
                src_addr: client,
                dst_addr: svc_common::ipv4_mapped([10, 97, 0, 1]),
                src_port: (20_000 + (i % 1000) as u16).to_be(),
                dst_port: 80u16.to_be(),
                proto: PROTO_TCP,
                direction: CT_FORWARD,
                _pad: [0; 2],
            };
            let entry = NatEntry {
                src_addr: client,
                dst_addr: svc_common::ipv4_mapped([10, 128, 0, 1]),
                src_port: key.src_port,
                dst_port: 8080u16.to_be(),
                backend_id: 1,
                service_id: 0,
                last_seen_s: last_seen_s(i),
                ..NatEntry::default()
            };
            (key, entry)
        })
        .collect()
}

/// Writes `flows` into the pinned conntrack map, one at a time (the
/// programs are what write it in production).
pub fn seed_conntrack(pins: &Pins, flows: &[(FlowKey, NatEntry)]) -> Result<()> {
    let mut ct: HashMap<_, FlowKey, NatEntry> = open(pins, CONNTRACK_MAP)?;
    for (k, v) in flows {
        ct.insert(k, v, 0)?;
    }
    Ok(())
}

/// Milliseconds `f` took, and its result.
fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let start = Instant::now();
    let r = f()?;
    Ok((start.elapsed().as_secs_f64() * 1e3, r))
}

/// The median of `rounds` timings of `f`.
fn timed_median<T>(rounds: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    let mut ms = Vec::new();
    for _ in 0..rounds {
        ms.push(timed(&mut f)?.0);
    }
    Ok(median(ms))
}

/// One comparison: per key and batched, in ms.
struct Pair {
    what: String,
    per_key: f64,
    batched: f64,
}

impl Pair {
    fn ratio(&self) -> f64 {
        self.per_key / self.batched
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.what.clone(),
            format!("{:.1}", self.per_key),
            format!("{:.1}", self.batched),
            format!("{:.1}x", self.ratio()),
        ]
    }
}

pub fn map_batch(ctx: &mut Ctx) -> Result<()> {
    ctx.section("Map writes and reads, per key and batched (map-batch)");
    // BENCH_MAP_BATCH_SIZES=1000,100000 (comma-separated): other sizes.
    let sizes: Vec<u32> = match std::env::var("BENCH_MAP_BATCH_SIZES") {
        Ok(v) => v
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()
            .context("BENCH_MAP_BATCH_SIZES")?,
        Err(_) => ctx.pick(vec![10_000, 100_000], vec![10_000]),
    };
    const EPS: u32 = 10;
    let flows_n = ctx.pick(100_000, 10_000);
    let rounds = ctx.pick(5, 3);
    let mut pairs: Vec<(u32, Pair)> = Vec::new();
    for &n in &sizes {
        let fs = Bpffs::new("bench-batch")?;
        let capacity = Plan::capacity(n, EPS);
        let (per_key_pins, batched_pins) = (fs.pins("per-key"), fs.pins("batched"));
        let mut per_key = load(&per_key_pins, capacity)?;
        let mut batched = load(&batched_pins, capacity)?;
        let plan = Plan::new(n, EPS, 1, &batched);
        let label = count_label(n as usize);
        ctx.line(format!(
            "{label} Services x {EPS} endpoints, Maglev tables of {} entries:",
            plan.table.len()
        ));
        let (w_key, ()) = timed(|| plan.write_per_key(&mut per_key))?;
        let (w_batch, ()) = timed(|| plan.write_batched(&mut batched))?;
        let write = Pair {
            what: format!("write {label} x {EPS}: backends, slots, tables, heads"),
            per_key: w_key,
            batched: w_batch,
        };
        // Same content both ways (the tests check it entry by entry).
        let (a, b) = (read_per_key(&per_key_pins)?, read_per_key(&batched_pins)?);
        ctx.line(format!(
            "  {} SERVICES entries, {} backends, {} MAGLEV chunks (per key) / {} / {} / {} (batched)",
            a.services.len(),
            a.backends.len(),
            a.maglev.len(),
            b.services.len(),
            b.backends.len(),
            b.maglev.len()
        ));
        let read = Pair {
            what: format!("read {label} x {EPS}: SERVICES, BACKENDS, MAGLEV keys"),
            per_key: timed_median(rounds, || read_per_key(&batched_pins))?,
            batched: timed_median(rounds, || read_batched(&batched_pins))?,
        };
        let dump = Pair {
            what: format!("`dump()` {label} x {EPS} (per key: reads above + building)"),
            per_key: read.per_key,
            batched: timed_median(rounds, || batched.dump())?,
        };
        drop(per_key);
        let flows = flows(flows_n, |_| 0);
        let (seed_ms, ()) = timed(|| seed_conntrack(&batched_pins, &flows))?;
        let ct: HashMap<_, FlowKey, NatEntry> = open(&batched_pins, CONNTRACK_MAP)?;
        let conntrack = Pair {
            what: format!("read conntrack, {} entries", count_label(flows_n as usize)),
            per_key: timed_median(rounds, || Ok(ct.iter().collect::<Result<Vec<_>, _>>()?))?,
            batched: timed_median(rounds, || batched.conntrack())?,
        };
        ctx.line(format!(
            "  ({} conntrack entries seeded per key in {seed_ms:.0} ms; {} read back)",
            flows.len(),
            batched.conntrack()?.len()
        ));
        for p in [write, read, dump, conntrack] {
            ctx.line(format!(
                "  {:<62} per key {:>9.1} ms   batched {:>8.1} ms   {:>5.1}x",
                p.what,
                p.per_key,
                p.batched,
                p.ratio()
            ));
            pairs.push((n, p));
        }
    }
    let rows: Vec<Vec<String>> = pairs.iter().map(|(_, p)| p.cells()).collect();
    ctx.report.markdown(
        "Each side on a dataplane of its own (maps sized for the Services, pinned on a private bpffs). \
         Writes: `set_backend` + `set_service` per frontend against `set_backends` + `add_services` \
         (three batches: slots, tables, heads). Reads: aya's iterators (a get-next-key and a lookup \
         per entry) against `BPF_MAP_LOOKUP_BATCH`; reads are the median of several rounds, writes one run.",
    );
    ctx.report.markdown(&table(
        &["measurement", "per key ms", "batched ms", "speedup"],
        &rows,
    ));
    for (n, p) in &pairs {
        // The summary keeps the largest size's rows.
        if Some(n) != sizes.iter().max() {
            continue;
        }
        ctx.report.row(Row {
            area: "control plane".into(),
            measure: format!("map {} (per key -> batched)", p.what),
            ours: format!(
                "{:.0} -> {:.0} ms ({:.1}x)",
                p.per_key,
                p.batched,
                p.ratio()
            ),
            iptables: "-".into(),
            nftables: "-".into(),
            baseline: "per key".into(),
        });
    }
    Ok(())
}
