//! Batched map operations (`svc_agent::map_batch`) against per-key ones,
//! on real maps of dataplanes loaded with pins on a private bpffs: batched
//! reads return exactly what aya's per-key iteration returns, batched
//! writes leave exactly what `set_backend`/`set_service` leave, and a
//! batched delete removes exactly the keys given.
use std::collections::BTreeSet;

use aya::maps::HashMap;
use svc_agent::{
    dataplane::{self, Endpoint, NewService},
    map_batch,
};
use svc_common::{
    CONNTRACK_MAP, CtTimeouts, FlowKey, NODE_PORTS_MAP, NatEntry, NodePortKey, NodePortTarget,
};
use tests::{
    bench::map_batch::{Plan, Raw, flows, load, open, read_batched, read_per_key, seed_conntrack},
    bpffs::Bpffs,
};

const SERVICES: u32 = 2_000;
const EPS: u32 = 5;
const FLOWS: u32 = 5_000;

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn flow_entries(v: Vec<(FlowKey, NatEntry)>) -> Vec<([u8; 40], NatEntry)> {
    let mut v: Vec<_> = v
        .into_iter()
        .map(|(k, e)| {
            let mut bytes = [0u8; 40];
            bytes[..16].copy_from_slice(&k.src_addr);
            bytes[16..32].copy_from_slice(&k.dst_addr);
            bytes[32..34].copy_from_slice(&k.src_port.to_ne_bytes());
            bytes[34..36].copy_from_slice(&k.dst_port.to_ne_bytes());
            bytes[36] = k.proto;
            bytes[37] = k.direction;
            (bytes, e)
        })
        .collect();
    v.sort_by_key(|(k, _)| *k);
    v
}

#[test]
fn batched_reads_return_what_per_key_iteration_returns() {
    let fs = Bpffs::new("batch-read").unwrap();
    let pins = fs.pins("svc-agent");
    let mut dp = load(&pins, Plan::capacity(SERVICES, EPS)).unwrap();
    let plan = Plan::new(SERVICES, EPS, 2, &dp);
    plan.write_per_key(&mut dp).unwrap();

    let per_key = read_per_key(&pins).unwrap().sorted();
    let batched = read_batched(&pins).unwrap().sorted();
    assert_eq!(
        per_key.services.len(),
        (SERVICES * (1 + EPS)) as usize,
        "every slot and head"
    );
    assert_eq!(per_key.backends.len(), (SERVICES * EPS) as usize);
    assert_eq!(per_key.maglev.len(), SERVICES as usize / 2 * 2, "2 chunks");
    assert_eq!(batched, per_key);

    // dump (batched) and dump_pinned see every frontend and backend.
    let (backends, frontends) = dp.dump().unwrap();
    assert_eq!(backends.len(), (SERVICES * EPS) as usize);
    assert_eq!(frontends.len(), SERVICES as usize);
    for s in &plan.services {
        let p = &frontends[&s.frontend];
        assert_eq!(p.backend_ids, s.backend_ids);
        assert_eq!(p.maglev, s.maglev);
        assert_eq!(p.settings, s.settings);
    }
    assert_eq!(
        dataplane::dump_pinned(&pins).unwrap(),
        (backends, frontends)
    );

    // Conntrack: per key against conntrack() and conntrack_pinned().
    seed_conntrack(&pins, &flows(FLOWS, |i| i)).unwrap();
    let ct: HashMap<_, FlowKey, NatEntry> = open(&pins, CONNTRACK_MAP).unwrap();
    let per_key = flow_entries(ct.iter().collect::<Result<_, _>>().unwrap());
    assert_eq!(per_key.len(), FLOWS as usize);
    assert_eq!(flow_entries(dp.conntrack().unwrap()), per_key);
    assert_eq!(
        flow_entries(dataplane::conntrack_pinned(&pins).unwrap()),
        per_key
    );
}

/// Everything each map of `pins` that the writes touch holds.
fn contents(pins: &dataplane::Pins) -> (Raw, Vec<(NodePortKey, [u8; 32])>) {
    let node_ports: HashMap<_, NodePortKey, NodePortTarget> = open(pins, NODE_PORTS_MAP).unwrap();
    let node_ports = node_ports
        .iter()
        .map(|e| {
            let (k, v) = e.unwrap();
            let mut addrs = [0u8; 32];
            addrs[..16].copy_from_slice(&v.addr_v4);
            addrs[16..].copy_from_slice(&v.addr_v6);
            (k, addrs)
        })
        .collect();
    (read_per_key(pins).unwrap().sorted(), sorted(node_ports))
}

#[test]
fn batched_writes_leave_what_per_key_writes_leave() {
    let fs = Bpffs::new("batch-write").unwrap();
    let capacity = Plan::capacity(SERVICES, EPS);
    let (key_pins, batch_pins) = (fs.pins("per-key"), fs.pins("batched"));
    let mut per_key = load(&key_pins, capacity).unwrap();
    let mut batched = load(&batch_pins, capacity).unwrap();
    let plan = Plan::new(SERVICES, EPS, 2, &batched);
    plan.write_per_key(&mut per_key).unwrap();
    plan.write_batched(&mut batched).unwrap();

    assert_eq!(batched.dump().unwrap(), per_key.dump().unwrap());
    let (want, want_node_ports) = contents(&key_pins);
    let (have, have_node_ports) = contents(&batch_pins);
    assert_eq!(have, want, "SERVICES, BACKENDS, MAGLEV");
    assert_eq!(want_node_ports.len(), 2000 / 50, "the plan's NodePorts");
    assert_eq!(have_node_ports, want_node_ports, "NODE_PORTS");

    // A later set_service on a batched frontend sees it as written.
    let s = &plan.services[4];
    assert!(s.maglev, "a table to remove");
    let fewer = &s.backend_ids[..2];
    for dp in [&mut per_key, &mut batched] {
        dp.set_service(&s.frontend, s.service_id, s.settings, fewer, None)
            .unwrap();
    }
    assert_eq!(contents(&batch_pins), contents(&key_pins));

    // What the batched writes refuse, before writing anything.
    let ep: Endpoint = "10.128.9.9:80"
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .into();
    assert!(batched.set_backends(&[(7, ep), (0, ep)]).is_err());
    let new = |service_id| NewService {
        frontend: dataplane::Frontend {
            addr: "10.99.0.1:80".parse().unwrap(),
            proto: dataplane::Protocol::Udp,
        },
        service_id,
        settings: Default::default(),
        backend_ids: &[1],
        maglev: None,
    };
    assert!(
        batched.add_services(&[new(4000), new(4001)]).is_err(),
        "twice"
    );
    assert!(batched.add_services(&[new(u32::MAX)]).is_err(), "id range");
    assert_eq!(contents(&batch_pins), contents(&key_pins));
}

#[test]
fn batched_delete_removes_exactly_the_keys_given() {
    let fs = Bpffs::new("batch-delete").unwrap();
    let pins = fs.pins("svc-agent");
    let mut dp = load(&pins, Default::default()).unwrap();
    dp.set_ct_timeouts(CtTimeouts::default()).unwrap();
    // Every third flow stale (last seen at 0), the rest seen just now.
    const NOW: u32 = 100_000;
    assert!(NOW > CtTimeouts::default().tcp_established_s);
    let all = flows(FLOWS, |i| if i % 3 == 0 { 0 } else { NOW });
    seed_conntrack(&pins, &all).unwrap();
    let mut ct: HashMap<_, FlowKey, NatEntry> = open(&pins, CONNTRACK_MAP).unwrap();

    // Some keys, with keys that are not there among them (skipped).
    let absent = flows(FLOWS + 10, |_| 0).split_off(FLOWS as usize);
    let mut doomed: Vec<FlowKey> = Vec::new();
    for (i, (k, _)) in all.iter().enumerate().filter(|(i, _)| i % 5 == 1) {
        doomed.push(*k);
        if i % 50 == 1 {
            doomed.push(absent[i % 10].0);
        }
    }
    doomed.push(absent[0].0);
    let given: usize = all.iter().enumerate().filter(|(i, _)| i % 5 == 1).count();
    assert_eq!(map_batch::delete(&mut ct, &doomed).unwrap(), given);
    let left = flow_entries(dp.conntrack().unwrap());
    let want = flow_entries(
        all.iter()
            .enumerate()
            .filter(|(i, _)| i % 5 != 1)
            .map(|(_, e)| *e)
            .collect(),
    );
    assert_eq!(left, want);

    // expire_conntrack: exactly the stale ones still there.
    let stale: BTreeSet<usize> = (0..FLOWS as usize)
        .filter(|i| i % 3 == 0 && i % 5 != 1)
        .collect();
    let (seen, deleted) = dp.expire_conntrack(NOW).unwrap();
    assert_eq!((seen, deleted), (want.len(), stale.len()));
    let want = flow_entries(
        all.iter()
            .enumerate()
            .filter(|(i, _)| i % 5 != 1 && !stale.contains(i))
            .map(|(_, e)| *e)
            .collect(),
    );
    assert_eq!(flow_entries(dp.conntrack().unwrap()), want);

    assert_eq!(dp.clear_conntrack().unwrap(), want.len());
    assert!(dp.conntrack().unwrap().is_empty());
}
