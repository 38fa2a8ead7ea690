//! Maglev consistent hashing on the real programs (BPF_PROG_TEST_RUN):
//! where thousands of distinct new flows go before and after one of N
//! backends leaves (or an (N+1)-th joins) through the agent's reconciler,
//! against hash-modulo balancing. Conntrack is cleared between rounds, so
//! the same packets are new flows again; every rewritten packet is
//! compared byte for byte with one built from scratch.
use std::net::{Ipv4Addr, SocketAddr};

use svc_agent::maglev::LoadBalancing;
use tests::{
    packet::{Spec, diff},
    progtest::{Action, Fixture, HOOKS, Hook},
};

const VIP: &str = "10.96.0.50:80";
const N: u8 = 10;
const FLOWS: u16 = 4000;
/// The backend that leaves: one in the middle, so the slots after it move.
const LEAVING: usize = 3;

fn backends(n: u8) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([10, 244, 5, 10 + i], 8080)))
        .collect()
}

fn service(backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends.iter().map(ToString::to_string).collect();
    format!("{VIP}/tcp={}", list.join(","))
}

/// Distinct client flows: 200 client addresses, 20 ports each.
fn flows() -> Vec<Spec> {
    (0..FLOWS)
        .map(|i| {
            let client = SocketAddr::from(([198, 51, 100, 1 + (i % 200) as u8], 20000 + i / 200));
            Spec::tcp(&client.to_string(), VIP)
        })
        .collect()
}

/// Where each flow goes as a new flow: its packet must come out DNATed to
/// one of `backends`, exactly.
fn assign(f: &mut Fixture, hook: Hook, flows: &[Spec], backends: &[SocketAddr]) -> Vec<SocketAddr> {
    f.dp.clear_conntrack().unwrap();
    flows
        .iter()
        .map(|s| {
            let (action, out) = f.run(hook, &s.build());
            assert_eq!(action, Action::Pass, "{hook:?} {s:?}");
            // Ethernet (14) + IPv4 (20): destination address and port.
            let addr = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
            let to = SocketAddr::from((addr, u16::from_be_bytes([out[36], out[37]])));
            assert!(backends.contains(&to), "{hook:?} {s:?}: sent to {to}");
            let want = s.with_dst(to).build();
            assert!(out == want, "{hook:?} {s:?}: {}", diff(&out, &want));
            to
        })
        .collect()
}

/// Shares of flows that changed backend between two rounds: all of them,
/// and those whose first backend is in `stayed` (in both rounds' sets).
fn moved(before: &[SocketAddr], after: &[SocketAddr], stayed: &[SocketAddr]) -> (f64, f64) {
    let pairs = || before.iter().zip(after);
    let share = |n: usize, of: usize| n as f64 / of as f64;
    let all = share(pairs().filter(|(a, b)| a != b).count(), before.len());
    let theirs = pairs().filter(|(a, _)| stayed.contains(a));
    let of_stayed = share(
        theirs.clone().filter(|(a, b)| a != b).count(),
        theirs.count(),
    );
    (all, of_stayed)
}

struct Shares {
    /// One of N left: all flows, and those of the N-1 that stayed.
    removed: (f64, f64),
    /// An (N+1)-th joined: all flows, and the share it got.
    added: (f64, f64),
}

/// One backend leaves, then (from the N again) one joins.
fn measure(hook: Hook, lb: LoadBalancing) -> Shares {
    let mut f = Fixture::new();
    f.dp.set_load_balancing(lb).unwrap();
    let all = backends(N);
    let flows = flows();
    f.services(&[&service(&all)]);
    let first = assign(&mut f, hook, &flows, &all);
    // Every backend gets its share (10% each, give or take sampling).
    for b in &all {
        let n = first.iter().filter(|a| *a == b).count();
        assert!(
            (300..=500).contains(&n),
            "{hook:?} {lb:?}: {b} got {n} of {FLOWS}"
        );
    }

    let mut rest = all.clone();
    rest.remove(LEAVING);
    f.services(&[&service(&rest)]);
    let removed = moved(&first, &assign(&mut f, hook, &flows, &rest), &rest);

    let mut more = all.clone();
    let joining = SocketAddr::from(([10, 244, 5, 200], 8080));
    more.push(joining);
    f.services(&[&service(&more)]);
    let after = assign(&mut f, hook, &flows, &more);
    let joined = after.iter().filter(|a| **a == joining).count() as f64 / f64::from(FLOWS);
    let added = (moved(&first, &after, &all).0, joined);
    println!(
        "{hook:?}, {lb}: 1 of {N} backends removed: {:.1}% of new flows moved ({:.1}% of the other backends' flows); \
         1 added: {:.1}% moved, {:.1}% to the new one",
        removed.0 * 100.0,
        removed.1 * 100.0,
        added.0 * 100.0,
        added.1 * 100.0
    );
    Shares { removed, added }
}

#[test]
fn maglev_moves_about_one_in_n_new_flows_where_hashing_moves_most() {
    let one_in_n = 1.0 / f64::from(N);
    let one_in_n1 = 1.0 / f64::from(N + 1);
    for hook in HOOKS {
        let maglev = measure(hook, LoadBalancing::default());
        let hash = measure(hook, LoadBalancing::Hash);
        // Maglev: the leaving backend's flows move, and few others (the
        // default 1021-entry table moves about 3% of the rest for N = 10).
        let (all, others) = maglev.removed;
        assert!(
            all >= 0.8 * one_in_n && all <= one_in_n + 0.05,
            "{hook:?}: {all:.3}"
        );
        assert!(others <= 0.06, "{hook:?}: {others:.3} of the others' flows");
        let (all, joined) = maglev.added;
        assert!(
            (0.8 * one_in_n1..=1.2 * one_in_n1).contains(&joined),
            "{hook:?}: {joined:.3}"
        );
        assert!(all <= one_in_n1 + 0.05, "{hook:?}: {all:.3}");
        // Modulo: the slots shift, most flows move.
        assert!(hash.removed.0 >= 0.5, "{hook:?}: {:.3}", hash.removed.0);
        assert!(hash.removed.1 >= 0.5, "{hook:?}: {:.3}", hash.removed.1);
        assert!(hash.added.0 >= 0.5, "{hook:?}: {:.3}", hash.added.0);
    }
}

#[test]
fn another_table_size_drops_the_tables_and_adopting_writes_them_again() {
    use svc_agent::{maglev::TableSize, reconcile::Reconciler};
    use tests::static_services::{self, StaticService};
    // As an agent restarted with another --maglev-table-size: the old
    // tables go, the maps read back show none, and the reconciler that
    // adopts them writes new ones.
    let all = backends(N);
    let specs = [service(&all), format!("10.96.0.51:80/tcp={}", all[0])];
    let mut f = Fixture::new();
    f.services(&[&specs[0], &specs[1]]);
    let tables = |f: &Fixture| -> Vec<bool> {
        let (_, frontends) = f.dp.dump().unwrap();
        frontends.values().map(|p| p.maglev).collect()
    };
    // Only the frontend with a choice has one.
    assert_eq!(tables(&f), [true, false]);

    let bigger = LoadBalancing::Maglev(TableSize::new(4093).unwrap());
    f.dp.set_load_balancing(bigger).unwrap();
    assert_eq!(tables(&f), [false, false]);
    // Meanwhile new flows are hashed modulo the count: still served.
    let flows = &flows()[..200];
    assign(&mut f, Hook::Tc, flows, &all);

    let (backends, frontends) = f.dp.dump().unwrap();
    let mut reconciler = Reconciler::adopt(backends, frontends);
    let parsed: Vec<StaticService> = specs.iter().map(|s| s.parse().unwrap()).collect();
    let changes = reconciler
        .apply(&static_services::desired(&parsed).unwrap(), &mut f.dp)
        .unwrap();
    assert_eq!(changes.frontends_set, 1);
    assert_eq!(tables(&f), [true, false]);
    let spread = assign(&mut f, Hook::Tc, flows, &all);
    assert!(all.iter().all(|b| spread.contains(b)));

    f.dp.set_load_balancing(LoadBalancing::Hash).unwrap();
    assert_eq!(tables(&f), [false, false]);
}
