//! Makes the maps equal to the desired state, changing only what differs,
//! in an order that never lets a packet find a reference to something
//! missing: new backends are written before any service slot points at
//! them, and a backend is deleted only after no slot points at it.
//!
//! Ids: each distinct backend endpoint has a backend id, each frontend a
//! service id (the index of its counters); both are reused once freed.
//!
//! A frontend with a choice of backends gets a Maglev table (`maglev`)
//! when the dataplane is configured for them, rewritten with its backends.
//!
//! A frontend that cannot be written (a full map, no free id) is reported
//! and keeps what it had; the others are still programmed.
//!
//! An `apply` looks at every frontend (`Scope::All`) or only at those that
//! may have changed (`Scope::Only`): the reconciler counts each backend's
//! users, so it knows which backends a change left unused without going
//! through every frontend.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Result, bail};
use svc_common::MAX_SERVICES;

use crate::{
    dataplane::{Dataplane, Endpoint, Frontend, NewService, Settings, SourceRange},
    maglev::{self, LoadBalancing},
    model::{Desired, Target},
};

/// The map operations the reconciler needs; the dataplane implements
/// them, and the unit tests record them.
pub trait Maps {
    /// Whether (and how big) Maglev tables are.
    fn load_balancing(&self) -> LoadBalancing;
    fn set_backend(&mut self, id: u32, ep: Endpoint) -> Result<()>;
    /// Many backends at once (the dataplane writes them in one batch).
    fn set_backends(&mut self, backends: &[(u32, Endpoint)]) -> Result<()> {
        for (id, ep) in backends {
            self.set_backend(*id, *ep)?;
        }
        Ok(())
    }
    fn remove_backend(&mut self, id: u32) -> Result<()>;
    fn set_service(
        &mut self,
        fe: &Frontend,
        service_id: u32,
        settings: Settings,
        backends: &[u32],
        maglev: Option<&[u16]>,
    ) -> Result<()>;
    /// Many frontends that are in no map yet, at once (the dataplane
    /// writes them in three batches, see `Dataplane::add_services`).
    fn add_services(&mut self, new: &[NewService]) -> Result<()> {
        for n in new {
            self.set_service(
                &n.frontend,
                n.service_id,
                n.settings,
                n.backend_ids,
                n.maglev,
            )?;
        }
        Ok(())
    }
    fn remove_service(&mut self, fe: &Frontend) -> Result<()>;
    /// How many service ids there are (ids are `0..service_ids()`).
    fn service_ids(&self) -> u32 {
        MAX_SERVICES
    }
    fn set_source_ranges(
        &mut self,
        service_id: u32,
        add: &[SourceRange],
        remove: &[SourceRange],
    ) -> Result<()>;
}

impl Maps for Dataplane {
    fn service_ids(&self) -> u32 {
        self.capacity().frontends
    }
    fn load_balancing(&self) -> LoadBalancing {
        Dataplane::load_balancing(self)
    }
    fn set_backend(&mut self, id: u32, ep: Endpoint) -> Result<()> {
        Dataplane::set_backend(self, id, ep)
    }
    fn set_backends(&mut self, backends: &[(u32, Endpoint)]) -> Result<()> {
        Dataplane::set_backends(self, backends)
    }
    fn add_services(&mut self, new: &[NewService]) -> Result<()> {
        Dataplane::add_services(self, new)
    }
    fn remove_backend(&mut self, id: u32) -> Result<()> {
        Dataplane::remove_backend(self, id)
    }
    fn set_service(
        &mut self,
        fe: &Frontend,
        service_id: u32,
        settings: Settings,
        backends: &[u32],
        maglev: Option<&[u16]>,
    ) -> Result<()> {
        Dataplane::set_service(self, fe, service_id, settings, backends, maglev)
    }
    fn remove_service(&mut self, fe: &Frontend) -> Result<()> {
        Dataplane::remove_service(self, fe)
    }
    fn set_source_ranges(
        &mut self,
        service_id: u32,
        add: &[SourceRange],
        remove: &[SourceRange],
    ) -> Result<()> {
        Dataplane::set_source_ranges(self, service_id, add, remove)
    }
}

/// What one frontend's slots hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Programmed {
    pub service_id: u32,
    pub settings: Settings,
    pub backend_ids: Vec<u32>,
    /// loadBalancerSourceRanges, sorted.
    pub source_ranges: Vec<SourceRange>,
    /// Whether it has a (whole) Maglev table, built from its backends.
    pub maglev: bool,
}

/// The maps' content as the reconciler knows it.
#[derive(Debug)]
pub struct Reconciler {
    backends: BTreeMap<Endpoint, u32>,
    frontends: BTreeMap<Frontend, Programmed>,
    /// Backend ids not in use (ids start at 1).
    backend_ids: IdPool,
    /// Service ids not in use.
    service_ids: IdPool,
    /// Each backend id in `backends`, with how many frontends' slots
    /// name it.
    uses: HashMap<u32, Uses>,
}

#[derive(Debug)]
struct Uses {
    addr: Endpoint,
    frontends: usize,
}

/// Which frontends an `apply` looks at.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// Every frontend, desired or programmed (the first sync, and after
    /// the maps were read back).
    All,
    /// Only these; the others are as they were programmed.
    Only(&'a BTreeSet<Frontend>),
}

/// Counts of what one `apply` changed, and the frontends it could not
/// program, with why.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub backends_added: usize,
    pub backends_removed: usize,
    pub frontends_set: usize,
    pub frontends_removed: usize,
    pub failed: Vec<(Frontend, String)>,
}

impl Default for Reconciler {
    /// Empty maps.
    fn default() -> Self {
        Self::adopt(BTreeMap::new(), BTreeMap::new())
    }
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

impl Reconciler {
    /// Starts from maps that already hold state (pinned by an earlier
    /// agent), so the first `apply` changes only what differs.
    pub fn adopt(
        backends: BTreeMap<u32, Endpoint>,
        frontends: BTreeMap<Frontend, Programmed>,
    ) -> Self {
        let mut uses: HashMap<u32, Uses> = backends
            .iter()
            .map(|(id, addr)| {
                (
                    *id,
                    Uses {
                        addr: *addr,
                        frontends: 0,
                    },
                )
            })
            .collect();
        for id in frontends.values().flat_map(|p| &p.backend_ids) {
            if let Some(u) = uses.get_mut(id) {
                u.frontends += 1;
            }
        }
        Self {
            backend_ids: IdPool::new(backends.keys().copied(), 1),
            service_ids: IdPool::new(frontends.values().map(|p| p.service_id), 0),
            backends: backends.into_iter().map(|(id, addr)| (addr, id)).collect(),
            frontends,
            uses,
        }
    }

    pub fn frontends(&self) -> &BTreeMap<Frontend, Programmed> {
        &self.frontends
    }

    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    /// How many entries the maps hold differently from what this
    /// reconciler wrote: backends and frontends missing, extra or changed
    /// (someone else wrote to the maps, or a write was lost).
    pub fn drift(
        &self,
        backends: &BTreeMap<u32, Endpoint>,
        frontends: &BTreeMap<Frontend, Programmed>,
    ) -> usize {
        // (Each id is believed for one address only, so what matches is
        // found once, and the rest of `backends` is extra.)
        let matching = self
            .backends
            .iter()
            .filter(|(addr, id)| backends.get(id) == Some(addr))
            .count();
        let backends_differing = (self.backends.len() - matching) + (backends.len() - matching);
        backends_differing + differing(&self.frontends, frontends)
    }

    /// Makes every frontend's slots what `desired` says.
    pub fn apply(&mut self, desired: &Desired, maps: &mut impl Maps) -> Result<Changes> {
        self.apply_to(desired, Scope::All, maps)
    }

    /// Makes the slots of the frontends in `scope` what `desired` says
    /// (removing those it no longer has).
    pub fn apply_to(
        &mut self,
        desired: &Desired,
        scope: Scope,
        maps: &mut impl Maps,
    ) -> Result<Changes> {
        let mut changes = Changes::default();
        let balancing = maps.load_balancing();
        let targets: Vec<(&Frontend, &Target)> = match scope {
            Scope::All => desired.iter().collect(),
            Scope::Only(fes) => fes
                .iter()
                .filter_map(|fe| desired.get_key_value(fe))
                .collect(),
        };
        // Backends whose last user went, and new ones: candidates to go.
        let mut released = Vec::new();

        // 1. Backends that are new get ids and are written first.
        let wanted: BTreeSet<Endpoint> = targets
            .iter()
            .flat_map(|(_, t)| t.backends.iter().copied())
            .collect();
        let mut unwritable = BTreeMap::new();
        let new: Vec<Endpoint> = wanted
            .iter()
            .filter(|a| !self.backends.contains_key(a))
            .copied()
            .collect();
        let mut batch = Vec::new();
        for addr in new {
            match self.backend_ids.take(u32::MAX) {
                Ok(id) => batch.push((id, addr)),
                Err(e) => {
                    unwritable.insert(addr, format!("backend {addr}: {e:#}"));
                }
            }
        }
        // One batch; if that fails (a full map), one by one, to know which.
        if !batch.is_empty() && maps.set_backends(&batch).is_err() {
            batch.retain(|(id, addr)| match maps.set_backend(*id, *addr) {
                Ok(()) => true,
                Err(e) => {
                    unwritable.insert(*addr, format!("backend {addr}: {e:#}"));
                    self.backend_ids.give(*id);
                    false
                }
            });
        }
        for (id, addr) in batch {
            self.backends.insert(addr, id);
            let frontends = 0;
            self.uses.insert(id, Uses { addr, frontends });
            released.push(id);
            changes.backends_added += 1;
        }

        // 2. Frontends no longer wanted go (first, so their service ids are
        //    free for newcomers).
        let stale: Vec<Frontend> = match scope {
            Scope::All => self.frontends.keys().copied().collect(),
            Scope::Only(fes) => fes.iter().copied().collect(),
        };
        let stale = stale
            .into_iter()
            .filter(|fe| !desired.contains_key(fe) && self.frontends.contains_key(fe));
        for fe in stale.collect::<Vec<_>>() {
            maps.remove_service(&fe)?;
            if let Some(old) = self.forget(&fe, &mut released) {
                // Its id may go to a newcomer: its ranges must not.
                maps.set_source_ranges(old.service_id, &[], &old.source_ranges)?;
            }
            changes.frontends_removed += 1;
        }

        // 3. Frontends whose slots differ are (re)written; many new ones
        //    at once in batches.
        let mut fresh: Vec<(Frontend, Programmed, Option<Vec<u16>>)> = Vec::new();
        for (fe, target) in targets {
            let backend_ids: Result<Vec<u32>, String> = target
                .backends
                .iter()
                .map(|a| {
                    self.backends.get(a).copied().ok_or_else(|| {
                        unwritable
                            .get(a)
                            .cloned()
                            .unwrap_or_else(|| format!("backend {a} has no id"))
                    })
                })
                .collect();
            let backend_ids = match backend_ids {
                Ok(ids) => ids,
                Err(e) => {
                    changes.failed.push((*fe, e));
                    continue;
                }
            };
            let service_id = match self.frontends.get(fe) {
                Some(p) => p.service_id,
                None => match self.service_ids.take(maps.service_ids() - 1) {
                    Ok(id) => id,
                    Err(e) => {
                        changes
                            .failed
                            .push((*fe, format!("no free service id: {e:#}")));
                        continue;
                    }
                },
            };
            let want = Programmed {
                service_id,
                settings: target.settings,
                maglev: balancing.has_table(backend_ids.len()),
                backend_ids,
                source_ranges: target.source_ranges.clone(),
            };
            let old = self.frontends.get(fe);
            if old == Some(&want) {
                continue;
            }
            // Built from the backends' addresses (in slot order), only for
            // a frontend that is written.
            let table = balancing.table_size().filter(|_| want.maglev).map(|size| {
                let addrs: Vec<_> = target.backends.iter().map(|b| b.addr).collect();
                maglev::table(&addrs, size)
            });
            if old.is_none() && want.source_ranges.is_empty() {
                fresh.push((*fe, want, table));
                continue;
            }
            let had = old.map_or(&[][..], |o| o.source_ranges.as_slice());
            let is_new = old.is_none();
            match write_frontend(maps, fe, &want, had, table.as_deref()) {
                Ok(()) => {
                    self.record(*fe, want, &mut released);
                    changes.frontends_set += 1;
                }
                Err(e) => {
                    if is_new {
                        self.service_ids.give(want.service_id);
                    }
                    changes.failed.push((*fe, format!("{e:#}")));
                }
            }
        }
        let news: Vec<NewService> = fresh
            .iter()
            .map(|(fe, want, table)| NewService {
                frontend: *fe,
                service_id: want.service_id,
                settings: want.settings,
                backend_ids: &want.backend_ids,
                maglev: table.as_deref(),
            })
            .collect();
        // Few are written one by one (each checks what the map holds
        // first); if the batches fail, each is finished one by one.
        let batched = news.len() >= BATCH_FROM && maps.add_services(&news).is_ok();
        drop(news);
        for (fe, want, table) in fresh {
            let written = if batched {
                Ok(())
            } else {
                write_frontend(maps, &fe, &want, &[], table.as_deref())
            };
            match written {
                Ok(()) => {
                    self.record(fe, want, &mut released);
                    changes.frontends_set += 1;
                }
                Err(e) => {
                    self.service_ids.give(want.service_id);
                    changes.failed.push((fe, format!("{e:#}")));
                }
            }
        }

        // 4. Backends nothing points at any more go last (a frontend that
        //    failed above still points at its old ones: they stay).
        if let Scope::All = scope {
            released = self.uses.keys().copied().collect();
        }
        let mut unused: Vec<(Endpoint, u32)> = released
            .into_iter()
            .filter_map(|id| {
                let u = self.uses.get(&id)?;
                (u.frontends == 0 && !wanted.contains(&u.addr)).then_some((u.addr, id))
            })
            .collect();
        unused.sort();
        unused.dedup();
        for (addr, id) in unused {
            maps.remove_backend(id)?;
            self.backends.remove(&addr);
            self.uses.remove(&id);
            self.backend_ids.give(id);
            changes.backends_removed += 1;
        }
        Ok(changes)
    }

    /// Notes what `fe`'s slots now hold, counting its backends' users.
    fn record(&mut self, fe: Frontend, programmed: Programmed, released: &mut Vec<u32>) {
        for id in &programmed.backend_ids {
            if let Some(u) = self.uses.get_mut(id) {
                u.frontends += 1;
            }
        }
        if let Some(old) = self.frontends.insert(fe, programmed) {
            self.release(&old.backend_ids, released);
        }
    }

    /// Notes that `fe` is gone from the maps.
    fn forget(&mut self, fe: &Frontend, released: &mut Vec<u32>) -> Option<Programmed> {
        let old = self.frontends.remove(fe)?;
        self.release(&old.backend_ids, released);
        self.service_ids.give(old.service_id);
        Some(old)
    }

    fn release(&mut self, ids: &[u32], released: &mut Vec<u32>) {
        for id in ids {
            if let Some(u) = self.uses.get_mut(id) {
                u.frontends = u.frontends.saturating_sub(1);
                if u.frontends == 0 {
                    released.push(*id);
                }
            }
        }
    }
}

/// How many new frontends make it worth writing them in batches.
const BATCH_FROM: usize = 16;

/// Writes one frontend's slots, with its source ranges: new ones before
/// the head that enables them, stale ones (`had` but not wanted) after,
/// so a client allowed throughout is never refused.
fn write_frontend(
    maps: &mut impl Maps,
    fe: &Frontend,
    want: &Programmed,
    had: &[SourceRange],
    table: Option<&[u16]>,
) -> Result<()> {
    let add: Vec<SourceRange> = want
        .source_ranges
        .iter()
        .filter(|r| !had.contains(r))
        .copied()
        .collect();
    let remove: Vec<SourceRange> = had
        .iter()
        .filter(|r| !want.source_ranges.contains(r))
        .copied()
        .collect();
    maps.set_source_ranges(want.service_id, &add, &[])?;
    maps.set_service(fe, want.service_id, want.settings, &want.backend_ids, table)?;
    maps.set_source_ranges(want.service_id, &[], &remove)
}

/// How many keys are missing from, extra in, or valued differently in `b`.
fn differing<K: Ord, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> usize {
    let changed_or_missing = a.iter().filter(|(k, v)| b.get(k) != Some(v)).count();
    let extra = b.keys().filter(|k| !a.contains_key(k)).count();
    changed_or_missing + extra
}

/// The ids not in use, kept across applies: taking one or giving one
/// back costs O(log n), not a pass over every id in use.
#[derive(Debug)]
struct IdPool {
    /// Unused ids below `next`, as ranges: first id → last id.
    free: BTreeMap<u32, u32>,
    /// Every id from here up is unused.
    next: u32,
}

impl IdPool {
    /// The pool of ids from `min` up, but for `used`.
    fn new(used: impl Iterator<Item = u32>, min: u32) -> Self {
        let used: BTreeSet<u32> = used.filter(|id| *id >= min).collect();
        let mut free = BTreeMap::new();
        let mut next = min;
        for id in used {
            if id > next {
                free.insert(next, id - 1);
            }
            // (u32::MAX in use: no id is left above it.)
            next = id.saturating_add(1);
        }
        Self { free, next }
    }

    /// The lowest unused id up to `max`.
    fn take(&mut self, max: u32) -> Result<u32> {
        if let Some((&first, &last)) = self.free.first_key_value()
            && first <= max
        {
            self.free.remove(&first);
            if first < last {
                self.free.insert(first + 1, last);
            }
            return Ok(first);
        }
        if self.next > max || self.next == u32::MAX {
            bail!("all ids up to {max} are in use");
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    fn give(&mut self, id: u32) {
        if id.checked_add(1) == Some(self.next) {
            self.next = id;
            // Shrink past free ranges just below, so `free` stays small.
            while let Some((&first, &last)) = self.free.last_key_value()
                && last + 1 == self.next
            {
                self.free.remove(&first);
                self.next = first;
            }
        } else if id < self.next {
            self.free.insert(id, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        dataplane::Protocol,
        maglev::TableSize,
        model::{ServicePortName, Target},
    };
    use std::net::SocketAddr;

    /// Records operations and checks, like the kernel would, that no slot
    /// ever names a backend that does not exist.
    #[derive(Default)]
    struct FakeMaps {
        ops: Vec<String>,
        backends: BTreeMap<u32, Endpoint>,
        services: BTreeMap<Frontend, Vec<u32>>,
        ranges: BTreeSet<(u32, SourceRange)>,
        tables: BTreeMap<Frontend, Vec<u16>>,
        /// Writes of this backend fail, as into a full map.
        refuse: Option<SocketAddr>,
        /// Maglev tables of this size (none: `LoadBalancing::Hash`).
        maglev: Option<TableSize>,
    }

    impl Maps for FakeMaps {
        fn load_balancing(&self) -> LoadBalancing {
            self.maglev
                .map_or(LoadBalancing::Hash, LoadBalancing::Maglev)
        }
        fn set_backend(&mut self, id: u32, ep: Endpoint) -> Result<()> {
            let addr = ep.addr;
            if self.refuse == Some(addr) {
                bail!("map full");
            }
            self.ops.push(format!("+backend {id} {addr}"));
            self.backends.insert(id, ep);
            Ok(())
        }
        fn remove_backend(&mut self, id: u32) -> Result<()> {
            self.ops.push(format!("-backend {id}"));
            assert!(
                self.services.values().all(|ids| !ids.contains(&id)),
                "backend {id} deleted while referenced"
            );
            self.backends.remove(&id);
            Ok(())
        }
        fn set_service(
            &mut self,
            fe: &Frontend,
            sid: u32,
            _: Settings,
            ids: &[u32],
            maglev: Option<&[u16]>,
        ) -> Result<()> {
            let with = if maglev.is_some() { " maglev" } else { "" };
            self.ops
                .push(format!("+service {} #{sid} {ids:?}{with}", fe.addr));
            assert!(
                ids.iter().all(|id| self.backends.contains_key(id)),
                "dangling slot"
            );
            self.services.insert(*fe, ids.to_vec());
            match maglev {
                Some(t) => {
                    let size = self.maglev.expect("a table without tables configured");
                    assert_eq!(t.len(), size.get() as usize);
                    assert!(t.iter().all(|&s| s >= 1 && usize::from(s) <= ids.len()));
                    self.tables.insert(*fe, t.to_vec())
                }
                None => self.tables.remove(fe),
            };
            Ok(())
        }
        fn remove_service(&mut self, fe: &Frontend) -> Result<()> {
            self.ops.push(format!("-service {}", fe.addr));
            self.services.remove(fe);
            self.tables.remove(fe);
            Ok(())
        }
        fn set_source_ranges(
            &mut self,
            service_id: u32,
            add: &[SourceRange],
            remove: &[SourceRange],
        ) -> Result<()> {
            for r in add {
                self.ops
                    .push(format!("+range #{service_id} {}/{}", r.0, r.1));
                self.ranges.insert((service_id, *r));
            }
            for r in remove {
                self.ops
                    .push(format!("-range #{service_id} {}/{}", r.0, r.1));
                self.ranges.remove(&(service_id, *r));
            }
            Ok(())
        }
    }

    fn fe(addr: &str) -> Frontend {
        Frontend {
            addr: addr.parse().unwrap(),
            proto: Protocol::Tcp,
        }
    }

    fn desired(entries: &[(&str, &[&str])]) -> Desired {
        entries
            .iter()
            .map(|(f, bs)| {
                let target = Target {
                    service: ServicePortName {
                        namespace: "default".into(),
                        name: (*f).into(),
                        port: String::new(),
                    },
                    backends: bs
                        .iter()
                        .map(|b| Endpoint::from(b.parse::<SocketAddr>().unwrap()))
                        .collect(),
                    settings: Settings::default(),
                    source_ranges: Vec::new(),
                };
                (fe(f), target)
            })
            .collect()
    }

    #[test]
    fn writes_backends_first_and_deletes_them_last() {
        let mut r = Reconciler::default();
        let mut m = FakeMaps::default();
        r.apply(
            &desired(&[("10.96.0.10:80", &["10.244.1.21:80", "10.244.1.22:80"])]),
            &mut m,
        )
        .unwrap();
        assert_eq!(
            m.ops,
            [
                "+backend 1 10.244.1.21:80",
                "+backend 2 10.244.1.22:80",
                "+service 10.96.0.10:80 #0 [1, 2]"
            ]
        );
        m.ops.clear();
        // Replace one backend: the new one is written before the slot moves
        // to it, the old one deleted after.
        r.apply(
            &desired(&[("10.96.0.10:80", &["10.244.1.22:80", "10.244.1.23:80"])]),
            &mut m,
        )
        .unwrap();
        assert_eq!(
            m.ops,
            [
                "+backend 3 10.244.1.23:80",
                "+service 10.96.0.10:80 #0 [2, 3]",
                "-backend 1"
            ]
        );
    }

    #[test]
    fn unchanged_state_writes_nothing() {
        let mut r = Reconciler::default();
        let mut m = FakeMaps::default();
        let d = desired(&[
            ("10.96.0.10:80", &["10.244.1.21:80"]),
            ("10.96.0.11:80", &["10.244.1.21:80"]),
        ]);
        r.apply(&d, &mut m).unwrap();
        m.ops.clear();
        assert!(r.apply(&d, &mut m).unwrap().is_empty());
        assert!(m.ops.is_empty());
    }

    #[test]
    fn shared_backends_share_an_id_and_ids_are_reused() {
        let mut r = Reconciler::default();
        let mut m = FakeMaps::default();
        r.apply(
            &desired(&[
                ("10.96.0.10:80", &["10.244.1.21:80"]),
                ("10.96.0.11:80", &["10.244.1.21:80"]),
            ]),
            &mut m,
        )
        .unwrap();
        assert_eq!(m.backends.len(), 1);
        assert_eq!(r.frontends()[&fe("10.96.0.11:80")].service_id, 1);
        // The first service goes; its id is free for the next newcomer.
        r.apply(
            &desired(&[
                ("10.96.0.11:80", &["10.244.1.21:80"]),
                ("10.96.0.12:80", &[]),
            ]),
            &mut m,
        )
        .unwrap();
        assert_eq!(r.frontends()[&fe("10.96.0.12:80")].service_id, 0);
        assert_eq!(r.frontends()[&fe("10.96.0.11:80")].service_id, 1);
        assert!(m.services.contains_key(&fe("10.96.0.12:80")));
        assert!(!m.services.contains_key(&fe("10.96.0.10:80")));
    }

    #[test]
    fn adopting_existing_maps_changes_only_the_difference() {
        let d = desired(&[("10.96.0.10:80", &["10.244.1.21:80"])]);
        let mut first = Reconciler::default();
        let mut m = FakeMaps::default();
        first.apply(&d, &mut m).unwrap();
        let backends = m.backends.clone();
        let mut r = Reconciler::adopt(backends, first.frontends().clone());
        m.ops.clear();
        assert!(r.apply(&d, &mut m).unwrap().is_empty());
        r.apply(&desired(&[]), &mut m).unwrap();
        assert_eq!(m.ops, ["-service 10.96.0.10:80", "-backend 1"]);
    }

    #[test]
    fn a_frontend_that_cannot_be_written_keeps_its_backends_and_the_rest_proceeds() {
        let mut r = Reconciler::default();
        let mut m = FakeMaps::default();
        r.apply(&desired(&[("10.96.0.10:80", &["10.244.1.21:80"])]), &mut m)
            .unwrap();
        m.refuse = Some("10.244.1.22:80".parse().unwrap());
        m.ops.clear();
        // .10 moves to a backend that cannot be written; .11 is new.
        let c = r
            .apply(
                &desired(&[
                    ("10.96.0.10:80", &["10.244.1.22:80"]),
                    ("10.96.0.11:80", &["10.244.1.23:80"]),
                ]),
                &mut m,
            )
            .unwrap();
        assert_eq!(c.failed.len(), 1);
        assert_eq!(c.failed[0].0, fe("10.96.0.10:80"));
        assert!(c.failed[0].1.contains("map full"), "{}", c.failed[0].1);
        // .10 still points at its old backend, which was not deleted.
        assert_eq!(m.services[&fe("10.96.0.10:80")], vec![1]);
        assert!(m.backends.contains_key(&1));
        assert_eq!(
            m.ops,
            // (id 2 went to the failed write, and is free again next time)
            ["+backend 3 10.244.1.23:80", "+service 10.96.0.11:80 #1 [3]"]
        );
        // Once the write succeeds, it converges and the old one goes.
        m.refuse = None;
        let c = r
            .apply(
                &desired(&[
                    ("10.96.0.10:80", &["10.244.1.22:80"]),
                    ("10.96.0.11:80", &["10.244.1.23:80"]),
                ]),
                &mut m,
            )
            .unwrap();
        assert!(c.failed.is_empty());
        assert_eq!(m.services[&fe("10.96.0.10:80")], vec![2]);
        assert!(!m.backends.contains_key(&1));
    }

    #[test]
    fn source_ranges_are_added_before_the_head_and_removed_after_and_with_the_frontend() {
        let mut r = Reconciler::default();
        let mut m = FakeMaps::default();
        let range = |s: &str| -> SourceRange {
            let (a, p) = s.split_once('/').unwrap();
            (a.parse().unwrap(), p.parse().unwrap())
        };
        let mut d = desired(&[("203.0.113.9:80", &["10.244.1.21:80"])]);
        d.values_mut().next().unwrap().source_ranges = vec![range("198.51.100.0/24")];
        r.apply(&d, &mut m).unwrap();
        m.ops.clear();
        d.values_mut().next().unwrap().source_ranges = vec![range("192.0.2.0/24")];
        r.apply(&d, &mut m).unwrap();
        assert_eq!(
            m.ops,
            [
                "+range #0 192.0.2.0/24",
                "+service 203.0.113.9:80 #0 [1]",
                "-range #0 198.51.100.0/24"
            ]
        );
        m.ops.clear();
        r.apply(&desired(&[]), &mut m).unwrap();
        assert!(m.ranges.is_empty(), "{:?}", m.ranges);
        assert_eq!(
            m.ops[..2],
            ["-service 203.0.113.9:80", "-range #0 192.0.2.0/24"]
        );
    }

    #[test]
    fn drift_counts_entries_that_differ_from_what_was_written() {
        let mut r = Reconciler::default();
        let mut m = FakeMaps::default();
        r.apply(
            &desired(&[
                ("10.96.0.10:80", &["10.244.1.21:80"]),
                ("10.96.0.11:80", &["10.244.1.21:80"]),
            ]),
            &mut m,
        )
        .unwrap();
        let mut backends = m.backends.clone();
        let mut frontends = r.frontends().clone();
        assert_eq!(r.drift(&backends, &frontends), 0);
        backends.insert(9, "10.244.1.99:80".parse::<SocketAddr>().unwrap().into()); // extra
        frontends.remove(&fe("10.96.0.10:80")); // missing
        frontends.get_mut(&fe("10.96.0.11:80")).unwrap().backend_ids = vec![]; // changed
        assert_eq!(r.drift(&backends, &frontends), 3);
    }

    #[test]
    fn maglev_tables_follow_the_backends_and_go_with_the_frontend() {
        let mut r = Reconciler::default();
        let mut m = FakeMaps {
            maglev: Some(TableSize::new(13).unwrap()),
            ..FakeMaps::default()
        };
        let three = ["10.244.1.21:80", "10.244.1.22:80", "10.244.1.23:80"];
        r.apply(&desired(&[("10.96.0.10:80", &three)]), &mut m)
            .unwrap();
        assert_eq!(
            m.ops.last().unwrap(),
            "+service 10.96.0.10:80 #0 [1, 2, 3] maglev"
        );
        assert!(r.frontends()[&fe("10.96.0.10:80")].maglev);
        // The table is the pure function's, of the backends in slot order.
        let addrs: Vec<SocketAddr> = three.iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(
            m.tables[&fe("10.96.0.10:80")],
            maglev::table(&addrs, TableSize::new(13).unwrap())
        );
        // One backend left: no choice, no table.
        m.ops.clear();
        r.apply(&desired(&[("10.96.0.10:80", &three[..1])]), &mut m)
            .unwrap();
        assert_eq!(m.ops[0], "+service 10.96.0.10:80 #0 [1]");
        assert!(m.tables.is_empty());
        // Two again, then the frontend goes, with its table.
        r.apply(&desired(&[("10.96.0.10:80", &three[..2])]), &mut m)
            .unwrap();
        assert_eq!(m.tables.len(), 1);
        r.apply(&desired(&[]), &mut m).unwrap();
        assert!(m.tables.is_empty() && m.services.is_empty());
    }

    #[test]
    fn a_missing_table_is_drift_and_is_written_again() {
        let mut r = Reconciler::default();
        let mut m = FakeMaps {
            maglev: Some(TableSize::new(13).unwrap()),
            ..FakeMaps::default()
        };
        let d = desired(&[("10.96.0.10:80", &["10.244.1.21:80", "10.244.1.22:80"])]);
        r.apply(&d, &mut m).unwrap();
        // The maps read back without the table (a dump reports a flagged
        // frontend without its whole table as having none).
        let mut frontends = r.frontends().clone();
        frontends.get_mut(&fe("10.96.0.10:80")).unwrap().maglev = false;
        assert_eq!(r.drift(&m.backends, &frontends), 1);
        let mut r = Reconciler::adopt(m.backends.clone(), frontends);
        m.ops.clear();
        r.apply(&d, &mut m).unwrap();
        assert_eq!(m.ops, ["+service 10.96.0.10:80 #0 [1, 2] maglev"]);
    }

    /// What the fake maps hold, by address: each frontend's backends.
    fn content(m: &FakeMaps) -> BTreeMap<Frontend, Vec<SocketAddr>> {
        m.services
            .iter()
            .map(|(fe, ids)| (*fe, ids.iter().map(|id| m.backends[id].addr).collect()))
            .collect()
    }

    #[test]
    fn a_change_touches_only_its_frontends_and_frees_a_backend_with_its_last_user() {
        let (a, b) = ("10.96.0.10:80", "10.96.0.11:80");
        let shared = "10.244.1.21:80";
        let mut r = Reconciler::default();
        let mut m = FakeMaps::default();
        r.apply(
            &desired(&[(a, &[shared]), (b, &[shared, "10.244.1.22:80"])]),
            &mut m,
        )
        .unwrap();
        m.ops.clear();
        // b drops the shared backend: a still uses it, so it stays.
        let d = desired(&[(a, &[shared]), (b, &["10.244.1.22:80"])]);
        let changed = BTreeSet::from([fe(b)]);
        r.apply_to(&d, Scope::Only(&changed), &mut m).unwrap();
        assert_eq!(m.ops, ["+service 10.96.0.11:80 #1 [2]"]);
        // a goes too: now nothing uses it.
        m.ops.clear();
        let d = desired(&[(b, &["10.244.1.22:80"])]);
        let changed = BTreeSet::from([fe(a)]);
        r.apply_to(&d, Scope::Only(&changed), &mut m).unwrap();
        assert_eq!(m.ops, ["-service 10.96.0.10:80", "-backend 1"]);
        // A frontend outside the scope is left as it is, even if it differs.
        m.ops.clear();
        let d = desired(&[(b, &["10.244.1.23:80"])]);
        r.apply_to(&d, Scope::Only(&BTreeSet::new()), &mut m)
            .unwrap();
        assert!(m.ops.is_empty());
    }

    #[test]
    fn changes_applied_one_scope_at_a_time_end_where_whole_syncs_do() {
        let mut seed = 11u64;
        let mut below = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let (mut scoped, mut whole) = (Reconciler::default(), Reconciler::default());
        let (mut scoped_maps, mut whole_maps) = (FakeMaps::default(), FakeMaps::default());
        let mut state: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for round in 0..300 {
            let mut changed = BTreeSet::new();
            for _ in 0..=below(3) {
                let f = format!("10.96.0.{}:80", below(6));
                match below(3) {
                    0 => {
                        state.remove(&f);
                    }
                    _ => {
                        let backends = (0..below(4))
                            .map(|_| format!("10.244.1.{}:80", below(8)))
                            .collect::<BTreeSet<_>>();
                        state.insert(f.clone(), backends.into_iter().collect());
                    }
                }
                changed.insert(fe(&f));
            }
            let entries: Vec<(&str, Vec<&str>)> = state
                .iter()
                .map(|(f, bs)| (f.as_str(), bs.iter().map(String::as_str).collect()))
                .collect();
            let entries: Vec<(&str, &[&str])> =
                entries.iter().map(|(f, bs)| (*f, bs.as_slice())).collect();
            let d = desired(&entries);
            scoped
                .apply_to(&d, Scope::Only(&changed), &mut scoped_maps)
                .unwrap();
            whole.apply(&d, &mut whole_maps).unwrap();
            assert_eq!(content(&scoped_maps), content(&whole_maps), "round {round}");
            let used: BTreeSet<SocketAddr> = content(&whole_maps).into_values().flatten().collect();
            let held: BTreeSet<SocketAddr> =
                scoped_maps.backends.values().map(|e| e.addr).collect();
            assert_eq!(held, used, "round {round}: unused backends left behind");
        }
    }

    #[test]
    fn free_ids_fill_gaps_lowest_first() {
        let mut ids = IdPool::new([1, 2, 4].into_iter(), 1);
        let taken: Vec<u32> = (0..3).map(|_| ids.take(10).unwrap()).collect();
        assert_eq!(taken, [3, 5, 6]);
        ids.give(2);
        ids.give(6);
        assert_eq!((ids.take(10).unwrap(), ids.take(10).unwrap()), (2, 6));
        // Given back from the top: the pool shrinks instead of growing.
        for id in [6, 5, 4] {
            ids.give(id);
        }
        assert_eq!((ids.next, ids.free.len()), (4, 0));
        // A stray id far up costs one range, not one entry per gap.
        let mut sparse = IdPool::new([1, u32::MAX - 1].into_iter(), 1);
        assert_eq!((sparse.free.len(), sparse.take(10).unwrap()), (1, 2));
        assert_eq!(IdPool::new([].into_iter(), 0).take(10).unwrap(), 0);
        let mut full = IdPool::new([0].into_iter(), 0);
        assert_eq!(full.take(1).unwrap(), 1);
        assert!(full.take(1).is_err());
        assert!(
            IdPool::new([u32::MAX].into_iter(), u32::MAX)
                .take(u32::MAX)
                .is_err()
        );
    }
}
