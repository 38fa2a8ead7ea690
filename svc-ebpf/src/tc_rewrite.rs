//! Parsing and rewriting in tc. The skb helpers know the skb's checksum
//! state (`CHECKSUM_PARTIAL` from local sockets is the common case on pod
//! veths), so the L4 checksum is always updated through
//! `bpf_l4_csum_replace`, with `BPF_F_PSEUDO_HDR` for the address change.
use aya_ebpf::{
    bindings::{BPF_F_IPV6, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use svc_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_UDP};

use crate::{
    lb::Rewrite,
    packet::{self, ETH_P_IP, ETH_P_IPV6, Flow, words},
};

/// Enough bytes for Ethernet, a VLAN tag, IPv4 with options and TCP.
const HEADERS_MAX: u32 = 14 + 4 + 60 + 20;

/// Enough bytes for an ICMP error up to the quoted TCP checksum (see
/// `icmp`): Ethernet, a VLAN tag, IPv4 with options, ICMP, the quoted
/// IPv4 header with options and 20 bytes of TCP.
pub const QUOTE_HEADERS_MAX: u32 = 14 + 4 + 60 + 8 + 60 + 20;

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Option<Flow> {
    pull(ctx, HEADERS_MAX)?;
    packet::parse(ctx.data(), ctx.data_end())
}

/// Makes the first `max` bytes (or all, if fewer) linear and writable
/// for direct access: headers may extend past the skb's linear part (some
/// GSO or paged skbs). Invalidates packet pointers taken before.
#[inline(always)]
pub fn pull(ctx: &TcContext, max: u32) -> Option<()> {
    let want = if ctx.len() < max { ctx.len() } else { max };
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        ctx.pull_data(want).ok()?;
    }
    Some(())
}

/// Whether the packet may be ICMP (ICMPv6), from the skb's protocol and
/// one byte of the IP header: all the egress program looks at before
/// letting every other packet go.
#[inline(always)]
pub fn maybe_icmp(ctx: &TcContext) -> bool {
    const ETH_LEN: usize = 14;
    let (data, end) = (ctx.data(), ctx.data_end());
    // skb->protocol holds the EtherType in network byte order.
    let (proto_off, icmp) = match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_IP => (ETH_LEN + 9, PROTO_ICMP),
        ETH_P_IPV6 => (ETH_LEN + 6, PROTO_ICMPV6),
        _ => return false,
    };
    // SAFETY: ptr_at checked the bounds.
    packet::ptr_at::<u8>(data, end, proto_off).is_some_and(|p| unsafe { *p } == icmp)
}

// A BPF subprogram of its own: its locals get their own frame instead of
// adding to the caller's (the whole chain must fit in 512 bytes).
#[inline(never)]
pub fn apply(ctx: &TcContext, flow: &Flow, rw: &Rewrite) -> Result<(), ()> {
    // For UDP: leave a zero checksum alone and never produce one.
    let mangled = if flow.proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    if rw.src != flow.src {
        rewrite_addr(ctx, flow, false, &flow.src, &rw.src, mangled)?;
    }
    if rw.dst != flow.dst {
        rewrite_addr(ctx, flow, true, &flow.dst, &rw.dst, mangled)?;
    }
    for (dst, old, new) in [
        (false, flow.src_port, rw.src_port),
        (true, flow.dst_port, rw.dst_port),
    ] {
        if old != new {
            ctx.l4_csum_replace(
                flow.l4_csum_off(),
                u64::from(old),
                u64::from(new),
                mangled | 2,
            )
            .map_err(|_| ())?;
            ctx.store(flow.port_off(dst), &new, 0).map_err(|_| ())?;
        }
    }
    Ok(())
}

/// Rewrites the source (`dst == false`) or destination address, with the
/// IPv4 header checksum and the L4 checksum's pseudo-header part.
#[inline(always)]
fn rewrite_addr(
    ctx: &TcContext,
    flow: &Flow,
    dst: bool,
    old: &[u8; 16],
    new: &[u8; 16],
    mangled: u64,
) -> Result<(), ()> {
    let csum_off = flow.l4_csum_off();
    let addr_off = flow.addr_off(dst);
    if flow.is_v6 {
        let mut from = words(old);
        let mut to = words(new);
        // SAFETY: both buffers are 16 bytes on the stack.
        let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
        if diff < 0 {
            return Err(());
        }
        // Size 0: `to` is a precomputed difference. BPF_F_IPV6 keeps a
        // CHECKSUM_COMPLETE skb->csum right for IPv6 (kernel >= 6.16).
        let flags = u64::from(BPF_F_PSEUDO_HDR | BPF_F_IPV6) | mangled;
        ctx.l4_csum_replace(csum_off, 0, diff as u64, flags)
            .map_err(|_| ())?;
        ctx.store(addr_off, new, 0).map_err(|_| ())?;
    } else {
        let from = u64::from(words(old)[3]);
        let to = u64::from(words(new)[3]);
        ctx.l3_csum_replace(flow.l3_off + 10, from, to, 4)
            .map_err(|_| ())?;
        ctx.l4_csum_replace(
            csum_off,
            from,
            to,
            u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
        )
        .map_err(|_| ())?;
        let v4: [u8; 4] = [new[12], new[13], new[14], new[15]];
        ctx.store(addr_off, &v4, 0).map_err(|_| ())?;
    }
    Ok(())
}
