//! Parsing and rewriting in tc. The skb helpers know the skb's checksum
//! state (`CHECKSUM_PARTIAL` from local sockets is the common case on pod
//! veths), so the L4 checksum is always updated through
//! `bpf_l4_csum_replace`, with `BPF_F_PSEUDO_HDR` for the address change.
use core::ptr::{read_unaligned, write_unaligned};

use aya_ebpf::{
    bindings::{BPF_F_IPV6, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use svc_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_UDP, csum::Diff};

use crate::{
    lb::Rewrite,
    packet::{self, ETH_P_IP, ETH_P_IPV6, Flow, v4_part},
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
///
/// Addresses, ports and the IPv4 header checksum are written straight into
/// the packet (`parse` made the headers linear; the verifier unclones a
/// cloned skb before a program that writes). Only the L4 checksum goes
/// through `bpf_l4_csum_replace`, which keeps the skb's checksum state
/// right: at most two calls, one for the addresses (pseudo-header) and one
/// for the ports, each with the summed difference.
#[inline(never)]
pub fn apply(ctx: &TcContext, flow: &Flow, rw: &Rewrite) -> Result<(), ()> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let mut addr_diff = Diff::new();
    if rw.src != flow.src {
        addr_diff = addr_diff.add(rewrite_addr(data, end, flow, false, &rw.src)?);
    }
    if rw.dst != flow.dst {
        addr_diff = addr_diff.add(rewrite_addr(data, end, flow, true, &rw.dst)?);
    }
    let mut port_diff = Diff::new();
    let mut ports_changed = false;
    for (dst, old, new) in [
        (false, flow.src_port, rw.src_port),
        (true, flow.dst_port, rw.dst_port),
    ] {
        if old != new {
            let port: *mut u16 = packet::ptr_at(data, end, flow.port_off(dst)).ok_or(())?;
            // SAFETY: ptr_at checked the bounds.
            unsafe { write_unaligned(port, new) };
            port_diff = port_diff.word(old, new);
            ports_changed = true;
        }
    }
    // Packet pointers are stale from here on (the helper may move data).
    // For UDP: leave a zero checksum alone and never produce one.
    let mangled = if flow.proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    if rw.src != flow.src || rw.dst != flow.dst {
        // Size 0: `to` is a precomputed difference. BPF_F_IPV6 keeps a
        // CHECKSUM_COMPLETE skb->csum right for IPv6 (kernel >= 6.16).
        let v6 = if flow.is_v6 { BPF_F_IPV6 } else { 0 };
        let flags = u64::from(BPF_F_PSEUDO_HDR | v6) | mangled;
        ctx.l4_csum_replace(flow.l4_csum_off(), 0, u64::from(addr_diff.value()), flags)
            .map_err(|_| ())?;
    }
    if ports_changed {
        ctx.l4_csum_replace(flow.l4_csum_off(), 0, u64::from(port_diff.value()), mangled)
            .map_err(|_| ())?;
    }
    Ok(())
}

/// Writes the source (`dst == false`) or destination address, and for
/// IPv4 updates the header checksum; returns the change, for the L4
/// checksum's pseudo-header part.
#[inline(always)]
fn rewrite_addr(
    data: usize,
    end: usize,
    flow: &Flow,
    dst: bool,
    new: &[u8; 16],
) -> Result<Diff, ()> {
    let old = if dst { &flow.dst } else { &flow.src };
    if flow.is_v6 {
        let addr: *mut [u8; 16] = packet::ptr_at(data, end, flow.addr_off(dst)).ok_or(())?;
        // SAFETY: ptr_at checked the bounds.
        unsafe { write_unaligned(addr, *new) };
        Ok(Diff::new().bytes(old, new))
    } else {
        let addr: *mut [u8; 4] = packet::ptr_at(data, end, flow.addr_off(dst)).ok_or(())?;
        let ip_csum: *mut u16 = packet::ptr_at(data, end, flow.l3_off + 10).ok_or(())?;
        let diff = Diff::new().bytes(&v4_part(old), &v4_part(new));
        // SAFETY: ptr_at checked the bounds.
        unsafe {
            write_unaligned(addr, v4_part(new));
            write_unaligned(ip_csum, diff.apply_full(read_unaligned(ip_csum)));
        }
        Ok(diff)
    }
}
