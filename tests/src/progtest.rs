//! Running the programs on crafted packets with BPF_PROG_TEST_RUN.
//!
//! The fixture programs the maps through the agent's own code
//! (`static_services`, `Dataplane`), the way Katran's tester provisions
//! through its control-plane API; the benchmarks reuse it with the same
//! packets.
use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::{TestRun as _, TestRunOptions};
use svc_agent::{dataplane::Dataplane, reconcile::Reconciler};

use crate::static_services::{self, StaticService};

/// The attach points. XDP and tc ingress translate service traffic and
/// must behave alike (`HOOKS`); tc egress only translates ICMP errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
    TcEgress,
}

pub const HOOKS: [Hook; 2] = [Hook::Xdp, Hook::Tc];

/// A program's verdict, mapped from XDP_* / TC_ACT_* codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
    /// XDP_TX: sent back out of the interface it came in on.
    Tx,
    /// TC_ACT_REDIRECT: sent to the interface the program chose.
    Redirect,
    Other(u32),
}

impl Hook {
    fn action(self, code: u32) -> Action {
        match (self, code) {
            (Hook::Xdp, 2) | (Hook::Tc | Hook::TcEgress, 0) => Action::Pass,
            (Hook::Xdp, 1) | (Hook::Tc | Hook::TcEgress, 2) => Action::Drop,
            (Hook::Xdp, 3) => Action::Tx,
            (Hook::Tc | Hook::TcEgress, 7) => Action::Redirect,
            (_, c) => Action::Other(c),
        }
    }
}

pub struct Fixture {
    pub dp: Dataplane,
    /// What `services` programmed, so a later call changes only what
    /// differs, as the agent does.
    reconciler: Reconciler,
}

impl Fixture {
    /// Loads the dataplane (not attached anywhere). Fails loudly without
    /// root or BPF: these tests never skip.
    ///
    /// XDP test runs see loopback as their ingress interface; it is marked
    /// virtual, like the sandbox's veth uplinks, so XDP expects partial
    /// checksums as well as full ones.
    pub fn new() -> Self {
        let mut dp = Dataplane::load()
            .context("loading the eBPF programs (needs root and a BPF-capable kernel)")
            .unwrap();
        dp.set_virtual_uplink(loopback(), true).unwrap();
        Self {
            dp,
            reconciler: Reconciler::default(),
        }
    }

    /// Makes the services exactly those given as `FRONTEND/PROTO=BACKEND,...`
    /// through the agent's reconciler (see `static_services::apply` for
    /// the ids the first call gives).
    pub fn services(&mut self, specs: &[&str]) -> &mut Self {
        let parsed: Vec<StaticService> = specs.iter().map(|s| s.parse().unwrap()).collect();
        let desired = static_services::desired(&parsed).unwrap();
        let changes = self.reconciler.apply(&desired, &mut self.dp).unwrap();
        assert!(changes.failed.is_empty(), "{:?}", changes.failed);
        self
    }

    /// Runs one packet through `hook`'s program; returns the verdict and
    /// the packet as the program left it.
    pub fn run(&mut self, hook: Hook, pkt: &[u8]) -> (Action, Vec<u8>) {
        let (code, out, _) = self.run_repeat(hook, pkt, 1).unwrap();
        (hook.action(code), out)
    }

    /// Runs `pkt` `repeat` times in the kernel; also returns the kernel's
    /// mean time per run.
    pub fn run_repeat(
        &mut self,
        hook: Hook,
        pkt: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, Duration)> {
        let mut out = vec![0u8; pkt.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        };
        let r = match hook {
            Hook::Xdp => self.dp.xdp_program()?.test_run(opts),
            Hook::Tc => self.dp.tc_program()?.test_run(opts),
            Hook::TcEgress => self.dp.tc_egress_program()?.test_run(opts),
        }
        .context("BPF_PROG_TEST_RUN")?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out, r.duration))
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// The ingress interface of XDP test runs.
pub fn loopback() -> u32 {
    svc_agent::netif::index("lo").expect("a loopback interface")
}
