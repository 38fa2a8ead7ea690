//! Service DNAT and reverse NAT, in the kernel.
//!
//! One translation core (`packet` parses, `lb` decides) used at two attach
//! points, each with the writer that suits it:
//! * `svc_xdp`, on the node's uplinks: rewrites packet memory directly and
//!   updates checksums by hand (`xdp_rewrite`), then sends what it can out
//!   of an uplink itself (`xdp_forward`);
//! * `svc_tc`, tcx ingress on the node side of pod veths: rewrites through
//!   the skb helpers, which know the skb's checksum state (`tc_rewrite`).
//!
//! New flows to a frontend without endpoints are refused where they enter
//! (`reject`), as kube-proxy's REJECT rule refuses them.
//!
//! ICMP errors about translated flows are translated back (`icmp`) where
//! they are seen: from outside in `svc_xdp`, from pods in `svc_tc`, and
//! those the node itself sends (a packet too big for the next link) in
//! `svc_tc_egress`, tcx egress on pod veths and uplinks, which lets every
//! other packet go after one look at its IP protocol.
#![no_std]
#![no_main]

mod icmp;
mod lb;
mod maps;
mod packet;
// Refusing flows to frontends without endpoints (TCP reset, ICMP).
mod reject;
mod reroute;
// Socket-level load balancing for the node's own processes (cgroup hooks).
mod sock;
mod tc_rewrite;
mod xdp_forward;
mod xdp_rewrite;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use aya_log_ebpf::warn;

use crate::{
    icmp::Outcome,
    lb::{Origin, Verdict},
    packet::Flow,
};

#[xdp]
pub fn svc_xdp(ctx: XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let Some(flow) = packet::parse(data, data_end) else {
        return xdp_action::XDP_PASS;
    };
    if flow.is_icmp() {
        // Translated or not, the stack takes it from here.
        return match icmp::translate(data, data_end, &flow) {
            Outcome::Failed => {
                lb::count_drop(svc_common::DropReason::RewriteFailed);
                xdp_action::XDP_DROP
            }
            _ => xdp_action::XDP_PASS,
        };
    }
    let Some(rw) = maps::REWRITE.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's slot, used by one packet at a time.
    let rw = unsafe { &mut *rw };
    let verdict = match lb::decide(&flow, (data_end - data) as u32, Origin::Uplink, rw) {
        Verdict::Snat if !lb::snat(&flow, rw) => Verdict::Drop,
        Verdict::Snat => Verdict::Rewrite,
        Verdict::Track => lb::track(&flow, rw),
        v => v,
    };
    match verdict {
        Verdict::Pass | Verdict::Snat | Verdict::Track => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Reject => reject::xdp(&ctx, &flow),
        Verdict::Rewrite => match xdp_rewrite::apply(&ctx, &flow, rw) {
            Ok(true) => xdp_forward::forward(&ctx, &flow, rw),
            Ok(false) => xdp_action::XDP_PASS,
            Err(()) => {
                lb::count_drop(svc_common::DropReason::RewriteFailed);
                warn!(&ctx, "svc_xdp: rewrite failed, packet dropped");
                xdp_action::XDP_DROP
            }
        },
    }
}

#[classifier]
pub fn svc_tc(ctx: TcContext) -> i32 {
    let Some(flow) = tc_rewrite::parse(&ctx) else {
        return TC_ACT_OK;
    };
    if flow.is_icmp() {
        return tc_icmp(&ctx, &flow, false);
    }
    let Some(rw) = maps::REWRITE.get_ptr_mut(0) else {
        return TC_ACT_OK;
    };
    // SAFETY: this CPU's slot, used by one packet at a time.
    let rw = unsafe { &mut *rw };
    let verdict = match lb::decide(&flow, ctx.len(), Origin::Pod, rw) {
        Verdict::Track => lb::track(&flow, rw),
        v => v,
    };
    match verdict {
        // Only traffic from uplinks is SNATed.
        Verdict::Pass | Verdict::Snat | Verdict::Track => TC_ACT_OK,
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::Reject => reject::tc(&ctx, &flow),
        Verdict::Rewrite => match tc_rewrite::apply(&ctx, &flow, rw) {
            Ok(()) => TC_ACT_OK,
            Err(()) => {
                lb::count_drop(svc_common::DropReason::RewriteFailed);
                warn!(&ctx, "svc_tc: rewrite failed, packet dropped");
                TC_ACT_SHOT
            }
        },
    }
}

/// tcx egress: only ICMP errors the node sends about translated flows are
/// of interest here; everything else leaves after one look.
#[classifier]
pub fn svc_tc_egress(ctx: TcContext) -> i32 {
    if !tc_rewrite::maybe_icmp(&ctx) {
        return TC_ACT_OK;
    }
    match tc_rewrite::parse(&ctx) {
        Some(flow) if flow.is_icmp() => tc_icmp(&ctx, &flow, true),
        _ => TC_ACT_OK,
    }
}

/// An ICMP packet in tc. At egress the stack has routed it already, so an
/// error that now goes elsewhere is routed again (`reroute`); at ingress
/// routing comes after.
#[inline(always)]
fn tc_icmp(ctx: &TcContext, flow: &Flow, egress: bool) -> i32 {
    if tc_rewrite::pull(ctx, tc_rewrite::QUOTE_HEADERS_MAX).is_none() {
        return TC_ACT_OK;
    }
    match icmp::translate(ctx.data(), ctx.data_end(), flow) {
        Outcome::Untouched | Outcome::Translated => TC_ACT_OK,
        Outcome::Readdressed if egress => reroute::redirect(ctx, flow),
        Outcome::Readdressed => TC_ACT_OK,
        Outcome::Failed => {
            lb::count_drop(svc_common::DropReason::RewriteFailed);
            warn!(ctx, "svc_tc: ICMP error translation failed, packet dropped");
            TC_ACT_SHOT
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program; the verifier rejects any path that
    // could get here.
    loop {}
}

/// GPL-compatible, so GPL-only helpers may be called.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
