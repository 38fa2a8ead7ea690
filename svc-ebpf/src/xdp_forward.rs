//! Forwarding a translated packet from XDP itself: when it came in on an
//! uplink the agent allows (`XDP_FORWARD`), a FIB lookup for its new
//! destination, and if the route leaves through such an uplink too, the
//! Ethernet addresses are set, the TTL or hop limit decremented, and the
//! packet sent: `XDP_TX` out of the interface it came in on, or
//! redirected to another. Anything else (a pod's veth,
//! no neighbour entry yet, TTL running out, a packet too big) goes to the
//! stack, which knows how to handle it.
use core::{
    mem::{size_of, zeroed},
    ptr::{read_unaligned, write_unaligned},
};

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use svc_common::csum::Diff;

use crate::{
    lb::Rewrite,
    maps::XDP_FORWARD,
    packet::{Flow, ptr_at, words},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

// A subprogram of its own: the lookup's 64-byte parameters stay in its
// frame, not in the program's.
#[inline(never)]
pub fn forward(ctx: &XdpContext, flow: &Flow, rw: &Rewrite) -> u32 {
    // Uplinks that forward do so both ways: where the packet came in says
    // whether a lookup is worth its cost at all.
    let ingress = ctx.ingress_ifindex() as u32;
    if XDP_FORWARD.get_ptr(&ingress).is_none() {
        return xdp_action::XDP_PASS;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    // SAFETY: an all-integer C struct, valid when zeroed.
    let mut params: bpf_fib_lookup = unsafe { zeroed() };
    params.l4_protocol = flow.proto;
    params.sport = rw.src_port;
    params.dport = rw.dst_port;
    params.ifindex = ingress;
    if flow.is_v6 {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = words(&rw.src);
        params.__bindgen_anon_4.ipv6_dst = words(&rw.dst);
    } else {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = words(&rw.src)[3];
        params.__bindgen_anon_4.ipv4_dst = words(&rw.dst)[3];
    }
    // SAFETY: ctx is the program's context; params a valid local.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || XDP_FORWARD.get_ptr(&params.ifindex).is_none() {
        return xdp_action::XDP_PASS;
    }
    if decrement_ttl(data, end, flow).is_none() {
        return xdp_action::XDP_PASS;
    }
    let Some(eth) = ptr_at::<[u8; 12]>(data, end, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: the lookup filled both MACs; ptr_at checked the bounds.
    unsafe {
        let macs = params.__bindgen_anon_6.__bindgen_anon_2;
        let mut addrs = [0u8; 12];
        addrs[..6].copy_from_slice(&macs.dmac);
        addrs[6..].copy_from_slice(&macs.smac);
        write_unaligned(eth, addrs);
    }
    if params.ifindex == ingress {
        xdp_action::XDP_TX
    } else {
        // SAFETY: a plain helper call.
        unsafe { bpf_redirect(params.ifindex, 0) as u32 }
    }
}

/// A router's part: one hop fewer, with the IPv4 header checksum updated.
/// None when the packet must not be forwarded (the stack then sends the
/// ICMP time exceeded).
#[inline(always)]
fn decrement_ttl(data: usize, end: usize, flow: &Flow) -> Option<()> {
    if flow.is_v6 {
        let hop_limit: *mut u8 = ptr_at(data, end, flow.l3_off + 7)?;
        // SAFETY: ptr_at checked the bounds.
        unsafe {
            let h = *hop_limit;
            if h <= 1 {
                return None;
            }
            *hop_limit = h - 1;
        }
    } else {
        // TTL and protocol share a 16-bit word of the header checksum.
        let word: *mut [u8; 2] = ptr_at(data, end, flow.l3_off + 8)?;
        let check: *mut u16 = ptr_at(data, end, flow.l3_off + 10)?;
        // SAFETY: ptr_at checked the bounds.
        unsafe {
            let old = read_unaligned(word);
            if old[0] <= 1 {
                return None;
            }
            let new = [old[0] - 1, old[1]];
            write_unaligned(word, new);
            let diff = Diff::new().word(u16::from_ne_bytes(old), u16::from_ne_bytes(new));
            write_unaligned(check, diff.apply_full(read_unaligned(check)));
        }
    }
    Some(())
}
