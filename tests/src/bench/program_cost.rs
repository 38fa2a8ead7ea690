//! What the programs cost per packet, measured with BPF_PROG_TEST_RUN
//! against empty programs of the same type (`BASELINE_OBJECT`).
//!
//! * `costs`: the hit path of both programs at one service (IPv4 and
//!   IPv6) and the miss path; the egress program on non-ICMP traffic.
//! * `program_cost`: four paths of both programs at 1, 1k, 10k and 100k
//!   services: a new flow, an established flow, a miss, and a reply.
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, TestRun as _, TestRunOptions,
    programs::{SchedClassifier, Xdp},
};
use svc_agent::{
    CALIBRATION_OBJECT,
    dataplane::{BASELINE_OBJECT, Dataplane, Frontend, Protocol, Settings},
};
use svc_common::MAX_SERVICES;

use super::{Ctx, Row, count_label, median, plot, report::table};
use crate::{
    packet::Spec,
    progtest::{Action, Fixture, Hook},
};

/// Runs per measurement and repeats inside the kernel per run (`costs`).
const RUNS: usize = 9;
const REPEAT: u32 = 200_000;

/// The hit path of each program against an empty program (one service).
pub fn costs(ctx: &mut Ctx) -> Result<()> {
    ctx.section("BPF_PROG_TEST_RUN, one service (costs)");
    ctx.line(format!(
        "ns per packet (median of {RUNS} runs x {REPEAT} repeats)"
    ));
    // The kernel reruns the program on the buffer the previous run left,
    // so a frontend whose backend is itself keeps every repeat on the hit
    // path (service lookup, conntrack hit, rewrite and checksum update).
    let mut f = Fixture::new();
    f.services(&[
        "10.96.0.10:80/tcp=10.96.0.10:80",
        "[fd00:96::10]:80/tcp=[fd00:96::10]:80",
    ]);
    let mut base = Ebpf::load(BASELINE_OBJECT)?;
    let packets = [
        (
            "IPv4 TCP hit",
            Spec::tcp("192.0.2.2:40000", "10.96.0.10:80").build(),
        ),
        (
            "IPv6 TCP hit",
            Spec::tcp("[2001:db8::2]:40000", "[fd00:96::10]:80").build(),
        ),
        (
            "IPv4 TCP miss",
            Spec::tcp("192.0.2.2:40000", "10.244.1.21:80").build(),
        ),
    ];
    ctx.line(format!(
        "{:<6} {:<14} {:>10} {:>10} {:>8}",
        "hook", "packet", "program", "empty", "ratio"
    ));
    let mut rows = Vec::new();
    for hook in [Hook::Xdp, Hook::Tc] {
        for (name, pkt) in &packets {
            let mut prog = Vec::new();
            let mut empty = Vec::new();
            for _ in 0..RUNS {
                // Interleaved, so drift affects both alike.
                prog.push(f.run_repeat(hook, pkt, REPEAT)?.2.as_nanos() as f64);
                empty.push(baseline_run(&mut base, hook, pkt, REPEAT)?.as_nanos() as f64);
            }
            let (p, e) = (median(prog), median(empty));
            ctx.line(format!(
                "{:<6} {:<14} {:>10.1} {:>10.1} {:>7.2}x",
                format!("{hook:?}"),
                name,
                p,
                e,
                p / e
            ));
            rows.push(vec![
                format!("{hook:?}"),
                name.to_string(),
                format!("{p:.1}"),
                format!("{e:.1}"),
                format!("{:.2}x", p / e),
            ]);
        }
    }
    ctx.report.markdown(&table(
        &["hook", "packet", "program ns", "empty ns", "ratio"],
        &rows,
    ));
    egress_costs(ctx, &mut f, &mut base)
}

/// The egress program on what nearly all of its traffic is: anything but
/// ICMP, which it lets go after one look at the IP protocol.
fn egress_costs(ctx: &mut Ctx, f: &mut Fixture, base: &mut Ebpf) -> Result<()> {
    ctx.line(String::new());
    ctx.line(format!(
        "tc egress (ICMP errors only) on other traffic: ns per packet (median of {RUNS} runs x {REPEAT} repeats)"
    ));
    let packets = [
        (
            "IPv4 TCP",
            Spec::tcp("10.244.1.21:80", "192.0.2.2:40000").build(),
        ),
        (
            "IPv6 TCP",
            Spec::tcp("[fd00:244:1::21]:80", "[2001:db8::2]:40000").build(),
        ),
        (
            "IPv4 UDP",
            Spec::udp("10.244.1.21:53", "192.0.2.2:40000").build(),
        ),
    ];
    let mut rows = Vec::new();
    for (name, pkt) in &packets {
        let mut prog = Vec::new();
        let mut empty = Vec::new();
        for _ in 0..RUNS {
            prog.push(f.run_repeat(Hook::TcEgress, pkt, REPEAT)?.2.as_nanos() as f64);
            empty.push(baseline_run(base, Hook::TcEgress, pkt, REPEAT)?.as_nanos() as f64);
        }
        let (p, e) = (median(prog), median(empty));
        ctx.line(format!(
            "{:<8} {:<14} {:>10.1} {:>10.1} {:>+8.1}",
            "TcEgress",
            name,
            p,
            e,
            p - e
        ));
        rows.push(vec![
            name.to_string(),
            format!("{p:.1}"),
            format!("{e:.1}"),
            format!("{:+.1}", p - e),
        ]);
    }
    ctx.report.markdown(&table(
        &["packet (tc egress)", "program ns", "empty ns", "added ns"],
        &rows,
    ));
    Ok(())
}

/// One BPF_PROG_TEST_RUN of the empty program of `hook`'s type.
pub fn baseline_run(base: &mut Ebpf, hook: Hook, pkt: &[u8], repeat: u32) -> Result<Duration> {
    baseline_program_run(base, hook, "", pkt, repeat)
}

/// The same with one hit in a conntrack-shaped LRU hash map
/// (`baseline_*_lookup` in `CALIBRATION_OBJECT`): what one map lookup of
/// ours costs.
pub fn lookup_run(cal: &mut Ebpf, hook: Hook, pkt: &[u8], repeat: u32) -> Result<Duration> {
    baseline_program_run(cal, hook, "_lookup", pkt, repeat)
}

fn baseline_program_run(
    base: &mut Ebpf,
    hook: Hook,
    suffix: &str,
    pkt: &[u8],
    repeat: u32,
) -> Result<Duration> {
    let opts = TestRunOptions {
        data_in: Some(pkt),
        repeat,
        ..TestRunOptions::default()
    };
    let result = match hook {
        Hook::Xdp => {
            let name = format!("baseline_xdp{suffix}");
            let p: &mut Xdp = base.program_mut(&name).context(name.clone())?.try_into()?;
            if p.fd().is_err() {
                p.load()?;
            }
            p.test_run(opts)?
        }
        Hook::Tc | Hook::TcEgress => {
            let name = format!("baseline_tc{suffix}");
            let p: &mut SchedClassifier =
                base.program_mut(&name).context(name.clone())?.try_into()?;
            if p.fd().is_err() {
                p.load()?;
            }
            p.test_run(opts)?
        }
    };
    Ok(result.duration)
}

/// The frontend whose backend is itself: every repeat of a packet to it
/// stays on the established path (and its reply on the reply path).
const EST_FRONTEND: &str = "10.96.0.10:80";
/// The frontend new flows go to, with `NEW_BACKENDS` backends (pods'
/// addresses from `NEW_BACKEND` on), and so a Maglev table that each new
/// flow reads (with the dataplane's default load balancing).
const NEW_FRONTEND: &str = "10.96.0.11:80";
const NEW_BACKEND: &str = "10.244.1.21:80";
const NEW_BACKENDS: u8 = 10;

/// Programs `n` services straight into the maps: the two probed frontends,
/// then fillers 10.97.x.y:80 -> 10.245.x.y:8080 (one backend each).
/// Service ids wrap at `MAX_SERVICES` (they only index the statistics).
fn program_services(dp: &mut Dataplane, n: usize) -> Result<()> {
    let frontend = |addr: &str| -> Result<Frontend> {
        Ok(Frontend {
            addr: addr.parse()?,
            proto: Protocol::Tcp,
        })
    };
    dp.set_backend(1, EST_FRONTEND.parse::<std::net::SocketAddr>()?)?;
    dp.set_service(&frontend(EST_FRONTEND)?, 0, Settings::default(), &[1], None)?;
    // NEW_BACKEND and the addresses after it.
    let new_backends: Vec<std::net::SocketAddr> = (0..NEW_BACKENDS)
        .map(|k| ([10, 244, 1, 21 + k], 80).into())
        .collect();
    // Ids above the fillers'.
    let ids: Vec<u32> = (0..u32::from(NEW_BACKENDS))
        .map(|k| 2_000_000 + k)
        .collect();
    for (id, b) in ids.iter().zip(&new_backends) {
        dp.set_backend(*id, *b)?;
    }
    let table = dp
        .load_balancing()
        .table_size()
        .map(|m| svc_agent::maglev::table(&new_backends, m));
    dp.set_service(
        &frontend(NEW_FRONTEND)?,
        1,
        Settings::default(),
        &ids,
        table.as_deref(),
    )?;
    // (The two probed frontends count among the n.)
    for i in 0..n.saturating_sub(2) as u32 {
        let id = 3 + i;
        let backend = std::net::SocketAddr::from((std::net::Ipv4Addr::from(0x0af5_0000 + i), 8080));
        dp.set_backend(id, backend)?;
        let fe = Frontend {
            addr: (std::net::Ipv4Addr::from(0x0a61_0000 + i), 80).into(),
            proto: Protocol::Tcp,
        };
        dp.set_service(
            &fe,
            (2 + i) % MAX_SERVICES,
            Settings::default(),
            &[id],
            None,
        )
        .with_context(|| format!("filler service {i} of {n}"))?;
    }
    Ok(())
}

/// The paths measured, in table order.
const PATHS: [&str; 4] = ["new flow", "established", "miss", "reply"];

/// Per hook and path: ns per packet at each size, and the empty program's.
struct Costs {
    /// [hook][path][size]
    prog: [[Vec<f64>; 4]; 2],
    /// [hook][size]: the empty program, repeated like the established path.
    empty: [Vec<f64>; 2],
    /// [hook][size]: the empty program plus one conntrack-shaped lookup.
    lookup: [Vec<f64>; 2],
    /// [hook][size]: new flow's single-run median minus the established
    /// flow's single-run median (both repeat = 1), and the single-run
    /// medians themselves (new, established, empty).
    new_delta: [Vec<f64>; 2],
    singles: [Vec<(f64, f64, f64)>; 2],
}

pub fn program_cost(ctx: &mut Ctx) -> Result<()> {
    ctx.section("Program cost at 1 to 100k services (BPF_PROG_TEST_RUN)");
    let sizes = [1usize, 1_000, 10_000, 100_000];
    let runs = ctx.pick(9, 5);
    let repeat: u32 = ctx.pick(200_000, 50_000);
    let singles: usize = ctx.pick(20_000, 3_000);
    ctx.line(format!(
        "sizes {:?}; repeated paths: median of {runs} runs x {repeat} repeats; new flows: median of {singles} single runs (repeat = 1), each with a fresh source port",
        sizes.map(count_label)
    ));
    let mut base = Ebpf::load(BASELINE_OBJECT)?;
    let mut cal = Ebpf::load(CALIBRATION_OBJECT)?;
    let mut c = Costs {
        prog: Default::default(),
        empty: Default::default(),
        lookup: Default::default(),
        new_delta: Default::default(),
        singles: Default::default(),
    };
    let est = Spec::tcp("192.0.2.2:40000", EST_FRONTEND).build();
    let reply = Spec::tcp(EST_FRONTEND, "192.0.2.2:40000").build();
    let miss = Spec::tcp("192.0.2.2:40000", NEW_BACKEND).build();
    // Every size loaded at once, and measured round-robin, so drift on a
    // shared machine affects all sizes alike.
    let mut fixtures = Vec::new();
    for &n in &sizes {
        let mut f = Fixture::new();
        let t = std::time::Instant::now();
        program_services(&mut f.dp, n)?;
        ctx.line(format!(
            "{} services programmed in {:.2} s",
            count_label(n),
            t.elapsed().as_secs_f64()
        ));
        for hook in [Hook::Xdp, Hook::Tc] {
            // The first packet creates the flow's conntrack entries; from
            // then on the packet is established and its reply a reply.
            let (action, out) = f.run(hook, &est);
            if action == Action::Drop || out.len() != est.len() {
                bail!("{hook:?} dropped or mangled the established-path packet");
            }
            if f.run(hook, &reply).0 == Action::Drop {
                bail!("{hook:?} dropped the reply-path packet");
            }
        }
        fixtures.push(f);
    }
    // [size][hook][path] samples; [size][hook] empty samples.
    let mut samples = vec![[(); 2].map(|_| <[Vec<f64>; 4]>::default()); sizes.len()];
    let mut empty = vec![[Vec::new(), Vec::new()]; sizes.len()];
    let mut lookup = vec![[Vec::new(), Vec::new()]; sizes.len()];
    for _ in 0..runs {
        for (si, f) in fixtures.iter_mut().enumerate() {
            for (hi, hook) in [Hook::Xdp, Hook::Tc].into_iter().enumerate() {
                let s = &mut samples[si][hi];
                s[1].push(f.run_repeat(hook, &est, repeat)?.2.as_nanos() as f64);
                s[2].push(f.run_repeat(hook, &miss, repeat)?.2.as_nanos() as f64);
                s[3].push(f.run_repeat(hook, &reply, repeat)?.2.as_nanos() as f64);
                empty[si][hi].push(baseline_run(&mut base, hook, &est, repeat)?.as_nanos() as f64);
                lookup[si][hi].push(lookup_run(&mut cal, hook, &est, repeat)?.as_nanos() as f64);
            }
        }
    }
    // New flows: BPF_PROG_TEST_RUN repeats one packet, and after its
    // first run the flow is established. So each new flow is a run of its
    // own (repeat = 1) with a source port never used before; the
    // established flow and the empty program are timed the same way,
    // interleaved, to take out the per-run overhead.
    let mut single = vec![[(); 2].map(|_| (Vec::new(), Vec::new(), Vec::new())); sizes.len()];
    let n_sizes = fixtures.len();
    for i in 0..singles as u32 {
        // Sizes in a rotating order, so none is always first.
        for k in 0..n_sizes {
            let si = (k + i as usize) % n_sizes;
            let f = &mut fixtures[si];
            for (hi, hook) in [Hook::Xdp, Hook::Tc].into_iter().enumerate() {
                // 198.18.x.0/24 per size and hook: never seen before.
                let src_net = 0xc612_0000u32 + ((si as u32 * 2 + hi as u32) << 8);
                let src = std::net::Ipv4Addr::from(src_net + (i / 60_000));
                let port = 1024 + (i % 60_000) as u16;
                let mut spec = Spec::tcp(&format!("{src}:{port}"), NEW_FRONTEND);
                spec.tcp_flags = 0x02; // SYN
                let pkt = spec.build();
                let (code, _, d) = f.run_repeat(hook, &pkt, 1)?;
                if i == 0 && matches!((hook, code), (Hook::Xdp, 1) | (Hook::Tc, 2)) {
                    bail!("{hook:?} dropped a new flow");
                }
                let (n1, e1, z1) = &mut single[si][hi];
                n1.push(d.as_nanos() as f64);
                e1.push(f.run_repeat(hook, &est, 1)?.2.as_nanos() as f64);
                z1.push(baseline_run(&mut base, hook, &est, 1)?.as_nanos() as f64);
            }
        }
    }
    for si in 0..sizes.len() {
        for hi in 0..2 {
            let (n1, e1, z1) = std::mem::take(&mut single[si][hi]);
            let (n1, e1, z1) = (median(n1), median(e1), median(z1));
            let s = std::mem::take(&mut samples[si][hi]);
            let est_ns = median(s[1].clone());
            // The new flow's extra work over an established one, on top of
            // the established flow's repeated cost.
            c.prog[hi][0].push(est_ns + (n1 - e1));
            for (p, v) in s.into_iter().enumerate().skip(1) {
                c.prog[hi][p].push(median(v));
            }
            c.empty[hi].push(median(std::mem::take(&mut empty[si][hi])));
            c.lookup[hi].push(median(std::mem::take(&mut lookup[si][hi])));
            c.new_delta[hi].push(n1 - e1);
            c.singles[hi].push((n1, e1, z1));
        }
    }
    drop(fixtures);

    // Tables.
    let hooks = ["XDP", "tc"];
    let mut rows = Vec::new();
    for (hi, hook) in hooks.iter().enumerate() {
        for (p, path) in PATHS.iter().enumerate() {
            let v = &c.prog[hi][p];
            let mut row = vec![hook.to_string(), path.to_string()];
            row.extend(v.iter().map(|x| format!("{x:.1}")));
            row.push(format!("{:.2}x", v[0] / c.empty[hi][0]));
            row.push(format!("{:.2}", v[v.len() - 1] / v[0]));
            rows.push(row);
        }
        let mut row = vec![hook.to_string(), "empty program".to_string()];
        row.extend(c.empty[hi].iter().map(|x| format!("{x:.1}")));
        row.extend(["1.00x".to_string(), "-".to_string()]);
        rows.push(row);
        // Calibration: what one lookup of ours costs, for the floor.
        let mut row = vec![hook.to_string(), "empty + 1 lookup".to_string()];
        row.extend(c.lookup[hi].iter().map(|x| format!("{x:.1}")));
        let l = &c.lookup[hi];
        row.extend([
            format!("{:.2}x", l[0] / c.empty[hi][0]),
            format!("{:.2}", l[l.len() - 1] / l[0]),
        ]);
        rows.push(row);
    }
    let mut header: Vec<String> = vec!["hook".into(), "path".into()];
    header.extend(
        sizes
            .iter()
            .map(|n| format!("{} svc (ns)", count_label(*n))),
    );
    header.extend(["x empty (1 svc)".into(), "100k / 1".into()]);
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    ctx.line(String::new());
    for r in std::iter::once(header.clone()).chain(rows.iter().cloned()) {
        ctx.line(format!(
            "{:<5} {:<14} {}",
            r[0],
            r[1],
            r[2..]
                .iter()
                .map(|c| format!("{c:>14}"))
                .collect::<String>()
        ));
    }
    let mut single_rows = Vec::new();
    for (hi, hook) in hooks.iter().enumerate() {
        for (si, &n) in sizes.iter().enumerate() {
            let (n1, e1, z1) = c.singles[hi][si];
            single_rows.push(vec![
                hook.to_string(),
                count_label(n),
                format!("{n1:.0}"),
                format!("{e1:.0}"),
                format!("{z1:.0}"),
                format!("{:.0}", c.new_delta[hi][si]),
            ]);
        }
    }
    let md = format!(
        "ns per packet. *Established*: a flow whose conntrack entry exists (a frontend whose backend is itself, so every repeat of the packet stays on this path: service lookup, conntrack hit, backend check, rewrite). *Reply*: the backend's answer, found in conntrack and translated back. *Miss*: a packet to no service (service lookup and reply lookup, both missing). Repeated paths: median of {runs} runs of {repeat} repeats each.\n\n\
        *New flow*: BPF_PROG_TEST_RUN runs one packet `repeat` times and the first run creates the conntrack entries, so a new flow cannot be repeated. Each new flow (to a frontend of 10 backends, with a Maglev table) is therefore its own run with repeat = 1 and a source port never used before ({singles} of them); the established packet and the empty program are run the same way (repeat = 1), interleaved. A single run carries the timer's and the call's overhead, which the established single runs carry too: the new flow's figure is `established (repeated) + median(new, repeat 1) - median(established, repeat 1)`.\n\n\
        *Empty + 1 lookup*: the empty program plus one hit in a map shaped like `CONNTRACK` (40-byte key, LRU hash), a calibration of what each map lookup adds (the established path makes at least two: the frontend and the flow).\n\n\
        Service counts include the two probed frontends; the others are fillers with one backend each, written straight into the maps (`Dataplane::set_service`), service ids wrapping at {MAX_SERVICES}.\n\n{}\n\
        Single runs (repeat = 1), medians in ns:\n\n{}",
        table(&header_refs, &rows),
        table(
            &[
                "hook",
                "services",
                "new flow",
                "established",
                "empty",
                "new - established"
            ],
            &single_rows
        )
    );
    ctx.report.markdown(&md);

    // Plots: one per hook.
    let xs: Vec<f64> = sizes.iter().map(|n| *n as f64).collect();
    for (hi, hook) in hooks.iter().enumerate() {
        let mut series: Vec<(String, Vec<(f64, f64)>)> = PATHS
            .iter()
            .enumerate()
            .map(|(p, path)| {
                (
                    format!("{hook} {path}"),
                    xs.iter()
                        .copied()
                        .zip(c.prog[hi][p].iter().copied())
                        .collect(),
                )
            })
            .collect();
        series.push((
            format!("{hook} empty program"),
            xs.iter()
                .copied()
                .zip(c.empty[hi].iter().copied())
                .collect(),
        ));
        let file = format!("program-cost-{}.png", hook.to_lowercase());
        let path = super::report::out_dir().join(&file);
        std::fs::create_dir_all(super::report::out_dir())?;
        plot::log_x_lines(
            &path,
            &format!("{hook} program: ns per packet against services"),
            "services",
            "ns per packet",
            &series,
        )?;
        ctx.report.plot(&format!("{hook} program cost"), &file);
    }

    // Summary rows: one per path, both hooks.
    for (p, path) in PATHS.iter().enumerate() {
        let cell = |hi: usize| {
            let v = &c.prog[hi][p];
            format!(
                "{} {:.0} ns at 1 svc ({:.1}x empty), {:.0} ns at 100k",
                hooks[hi],
                v[0],
                v[0] / c.empty[hi][0],
                v[v.len() - 1],
            )
        };
        ctx.report.row(Row {
            area: "program cost".into(),
            measure: format!("{path}, ns/packet (BPF_PROG_TEST_RUN)"),
            ours: format!("{}; {}", cell(0), cell(1)),
            iptables: "-".into(),
            nftables: "-".into(),
            baseline: format!(
                "empty program: XDP {:.0} ns, tc {:.0} ns",
                c.empty[0][0], c.empty[1][0]
            ),
        });
    }
    Ok(())
}
