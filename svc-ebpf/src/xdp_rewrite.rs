//! Applying a rewrite in XDP: direct writes to packet memory, checksums
//! updated incrementally by hand (XDP has no skb, so no csum helpers).
//!
//! XDP cannot see `skb->ip_summed`. On a physical NIC every L4 checksum is
//! full. On a virtual uplink (a veth) it may also be partial
//! (`CHECKSUM_PARTIAL`: the field holds the folded pseudo-header sum), from
//! a local socket whose skb crossed the veth. There, and only there (the
//! agent lists such uplinks in `VIRTUAL_UPLINKS`), the partial kind is
//! recognised by value: the field equals the pseudo-header sum of the
//! packet as it stands. It then gets only the pseudo-header change
//! (addresses), since the kernel sums the L4 bytes, new port included, when
//! it completes the checksum. On such an uplink a full checksum equals that
//! value by chance about once in 65536 packets and is then mis-updated; the
//! sender's retransmission (new timestamps, so a new checksum) recovers it.
use core::ptr::{read_unaligned, write_unaligned};

use svc_common::{
    PROTO_UDP,
    csum::{Diff, pseudo_header},
};

use aya_ebpf::programs::XdpContext;

use crate::{
    lb::Rewrite,
    maps::VIRTUAL_UPLINKS,
    packet::{Flow, ptr_at, v4_part},
};

// A BPF subprogram of its own: its locals get their own frame instead of
// adding to the caller's (the whole chain must fit in 512 bytes).
///
/// Returns whether the packet now carries a complete L4 checksum: a
/// partial one is only right for the stack, which finishes it; XDP must
/// not send such a packet out itself.
#[inline(never)]
pub fn apply(ctx: &XdpContext, flow: &Flow, rw: &Rewrite) -> Result<bool, ()> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let l4_csum: *mut u16 = ptr_at(data, end, flow.l4_csum_off()).ok_or(())?;
    // SAFETY (all accesses below): each pointer came from ptr_at, which
    // checked that the whole value lies inside the packet.
    let check = unsafe { read_unaligned(l4_csum) };

    // Partial or full is judged on the packet as it arrived. The sum first:
    // a full checksum rarely equals it, so the uplink's map lookup is
    // mostly skipped.
    let partial = holds_pseudo_header_sum(flow, check)
        && VIRTUAL_UPLINKS
            .get_ptr(&(ctx.ingress_ifindex() as u32))
            .is_some();

    // Addresses change the pseudo-header (both kinds of checksum), ports
    // only the L4 bytes (full checksums only).
    let mut addr_diff = Diff::new();
    if rw.src != flow.src {
        addr_diff = addr_diff.add(rewrite_addr(ctx, flow, false, &flow.src, &rw.src)?);
    }
    if rw.dst != flow.dst {
        addr_diff = addr_diff.add(rewrite_addr(ctx, flow, true, &flow.dst, &rw.dst)?);
    }
    let mut port_diff = Diff::new();
    if flow.src_port != rw.src_port {
        let port: *mut u16 = ptr_at(data, end, flow.port_off(false)).ok_or(())?;
        unsafe { write_unaligned(port, rw.src_port) };
        port_diff = port_diff.word(flow.src_port, rw.src_port);
    }
    if flow.dst_port != rw.dst_port {
        let port: *mut u16 = ptr_at(data, end, flow.port_off(true)).ok_or(())?;
        unsafe { write_unaligned(port, rw.dst_port) };
        port_diff = port_diff.word(flow.dst_port, rw.dst_port);
    }

    let new_check = if check == 0 && flow.proto == PROTO_UDP {
        // UDP without a checksum stays without one.
        0
    } else if partial {
        addr_diff.apply_partial(check)
    } else {
        let full = addr_diff.add(port_diff).apply_full(check);
        // A computed UDP checksum of 0 is sent as 0xffff (RFC 768).
        if full == 0 && flow.proto == PROTO_UDP {
            0xffff
        } else {
            full
        }
    };
    unsafe { write_unaligned(l4_csum, new_check) };
    Ok(!partial)
}

/// Writes one address (source or destination) and updates the IPv4 header
/// checksum; returns the change, for the L4 checksum's pseudo-header part.
#[inline(always)]
fn rewrite_addr(
    ctx: &XdpContext,
    flow: &Flow,
    dst: bool,
    old: &[u8; 16],
    new: &[u8; 16],
) -> Result<Diff, ()> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if flow.is_v6 {
        let addr: *mut [u8; 16] = ptr_at(data, end, flow.addr_off(dst)).ok_or(())?;
        // SAFETY: ptr_at checked the bounds.
        unsafe { write_unaligned(addr, *new) };
        Ok(Diff::new().bytes(old, new))
    } else {
        let addr: *mut [u8; 4] = ptr_at(data, end, flow.addr_off(dst)).ok_or(())?;
        let ip_csum: *mut u16 = ptr_at(data, end, flow.l3_off + 10).ok_or(())?;
        let diff = Diff::new().bytes(&v4_part(old), &v4_part(new));
        // SAFETY: ptr_at checked the bounds.
        unsafe {
            write_unaligned(addr, v4_part(new));
            write_unaligned(ip_csum, diff.apply_full(read_unaligned(ip_csum)));
        }
        Ok(diff)
    }
}

/// Whether `check` is the packet's own pseudo-header sum: what a partial
/// checksum field holds.
#[inline(always)]
fn holds_pseudo_header_sum(flow: &Flow, check: u16) -> bool {
    let sum = if flow.is_v6 {
        pseudo_header(&flow.src, &flow.dst, flow.proto, flow.l4_len)
    } else {
        pseudo_header(
            &v4_part(&flow.src),
            &v4_part(&flow.dst),
            flow.proto,
            flow.l4_len,
        )
    };
    check == sum
}
