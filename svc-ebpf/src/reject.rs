//! Refusing a flow to a frontend that has no endpoints at all, as
//! kube-proxy's REJECT rule does, so that the client learns at once
//! (`ECONNREFUSED`) instead of waiting out its timeouts: a TCP segment
//! gets a reset, a UDP datagram an ICMP (ICMPv6) port unreachable, both
//! from the frontend's address, made by the program that saw the packet.
//!
//! `build` writes the whole reply frame into a per-CPU scratch buffer
//! (`REPLY`, not the 512-byte stack), every checksum computed from
//! scratch. Each hook then makes its packet exactly that long and copies
//! the reply in: XDP sends it back out of the uplink (`XDP_TX`); tc hands
//! it to the pod's end of the veth (`bpf_redirect_peer`: straight to its
//! ingress, never through the node end's transmit path, which would
//! "complete" a `CHECKSUM_PARTIAL` skb's checksum at the request's offset,
//! inside the reply).
//!
//! Not answered, only dropped (and counted as `NoBackend`): a reset (never
//! answered, RFC 793); sources that are no single host (multicast,
//! broadcast, unspecified; RFC 1122 3.2.2); and, to keep the reply's
//! layout fixed, VLAN-tagged frames and IPv4 packets with options.
use core::ptr::{copy_nonoverlapping, null_mut};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_F_RECOMPUTE_CSUM, TC_ACT_SHOT, xdp_action},
    helpers::{
        bpf_csum_diff, bpf_redirect_peer, bpf_skb_store_bytes, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
};
use svc_common::{
    DropReason, PROTO_TCP,
    csum::{fold, pseudo_header},
};

use crate::{
    lb::count_drop,
    maps::REPLY,
    packet::{Flow, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, ptr_at, read},
};

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const TCP_LEN: usize = 20;
/// ICMP and ICMPv6 headers: type, code, checksum, 4 unused bytes.
const ICMP_LEN: usize = 8;
/// How much of the datagram after its IP header an ICMP error quotes
/// (RFC 792): its UDP header, which names the socket.
const QUOTED_L4: usize = 8;

/// The reply frames' lengths, one per (family, protocol).
const TCP4: usize = ETH_LEN + IPV4_LEN + TCP_LEN;
const TCP6: usize = ETH_LEN + IPV6_LEN + TCP_LEN;
const ICMP4: usize = ETH_LEN + IPV4_LEN + ICMP_LEN + IPV4_LEN + QUOTED_L4;
const ICMP6: usize = ETH_LEN + IPV6_LEN + ICMP_LEN + IPV6_LEN + QUOTED_L4;
/// The scratch buffer's size: the longest reply.
pub const REPLY_MAX: usize = ICMP6;

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const TTL: u8 = 64;

/// `svc_xdp`'s refusal: the reply goes back out of the uplink.
#[inline(never)]
pub fn xdp(ctx: &XdpContext, flow: &Flow) -> u32 {
    let len = build(ctx.data(), ctx.data_end(), flow);
    if len == 0 {
        count_drop(DropReason::NoBackend);
        return xdp_action::XDP_DROP;
    }
    // Grown at the front, or cut at the end, to exactly `len`.
    let have = ctx.data_end() - ctx.data();
    // SAFETY: helpers on the program's own context; both only move
    // the packet's bounds, re-read below.
    let rc = unsafe {
        if len > have {
            bpf_xdp_adjust_head(ctx.ctx, -((len - have) as i32))
        } else if len < have {
            bpf_xdp_adjust_tail(ctx.ctx, -((have - len) as i32))
        } else {
            0
        }
    };
    let copied = rc == 0
        && match len {
            TCP4 => copy_out::<TCP4>(ctx.data(), ctx.data_end()),
            TCP6 => copy_out::<TCP6>(ctx.data(), ctx.data_end()),
            ICMP4 => copy_out::<ICMP4>(ctx.data(), ctx.data_end()),
            ICMP6 => copy_out::<ICMP6>(ctx.data(), ctx.data_end()),
            _ => false,
        };
    if !copied {
        count_drop(DropReason::RewriteFailed);
        return xdp_action::XDP_DROP;
    }
    count_drop(DropReason::Rejected);
    xdp_action::XDP_TX
}

/// `svc_tc`'s refusal: the reply goes to the pod's end of the veth.
#[inline(never)]
pub fn tc(ctx: &TcContext, flow: &Flow) -> i32 {
    let len = build(ctx.data(), ctx.data_end(), flow);
    if len == 0 {
        count_drop(DropReason::NoBackend);
        return TC_ACT_SHOT;
    }
    // The explicit bound on `len` is what the verifier checks the copy
    // against. RECOMPUTE_CSUM keeps a CHECKSUM_COMPLETE skb's sum right.
    let copied = len <= REPLY_MAX
        && ctx.skb.change_tail(len as u32, 0).is_ok()
        && REPLY.get_ptr(0).is_some_and(|reply| {
            // SAFETY: `len` bytes of the scratch buffer, into the packet,
            // whose length is now `len`.
            unsafe {
                bpf_skb_store_bytes(
                    ctx.as_ptr() as *mut __sk_buff,
                    0,
                    reply as *const _,
                    len as u32,
                    u64::from(BPF_F_RECOMPUTE_CSUM),
                ) == 0
            }
        });
    if !copied {
        count_drop(DropReason::RewriteFailed);
        return TC_ACT_SHOT;
    }
    count_drop(DropReason::Rejected);
    // SAFETY: reading the context's ifindex; a plain helper call.
    unsafe {
        let ifindex = (*(ctx.as_ptr() as *const __sk_buff)).ifindex;
        bpf_redirect_peer(ifindex, 0) as i32
    }
}

/// Copies the reply into the packet `[data, end)`, which the caller made
/// exactly `N` bytes long.
#[inline(always)]
fn copy_out<const N: usize>(data: usize, end: usize) -> bool {
    let (Some(dst), Some(src)) = (ptr_at::<[u8; N]>(data, end, 0), REPLY.get_ptr(0)) else {
        return false;
    };
    // SAFETY: ptr_at checked that N bytes lie in the packet; the buffer
    // holds REPLY_MAX >= N bytes.
    unsafe { copy_nonoverlapping(src as *const u8, dst as *mut u8, N) };
    true
}

/// Writes the refusal of the packet `[data, end)` into `REPLY`; returns
/// its length, or 0 when it is not to be answered.
#[inline(never)]
fn build(data: usize, end: usize, flow: &Flow) -> usize {
    let Some(buf) = REPLY.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, used by one packet at a time.
    let buf = unsafe { &mut *buf };
    let ip_len = if flow.is_v6 { IPV6_LEN } else { IPV4_LEN };
    let tcp = flow.proto == PROTO_TCP;
    if flow.l3_off != ETH_LEN || flow.l4_off != ETH_LEN + ip_len || !single_host(flow) {
        return 0;
    }
    let l4 = ETH_LEN + ip_len;
    let l4_len = if tcp {
        TCP_LEN
    } else {
        ICMP_LEN + ip_len + QUOTED_L4
    };

    // Ethernet: back to where the frame came from.
    let Some([d0, d1, d2, d3, d4, d5, s0, s1, s2, s3, s4, s5]) = read::<[u8; 12]>(data, end, 0)
    else {
        return 0;
    };
    put(buf, 0, [s0, s1, s2, s3, s4, s5, d0, d1, d2, d3, d4, d5]);

    // IP: from the frontend to the client.
    let proto = match (tcp, flow.is_v6) {
        (true, _) => PROTO_TCP,
        (false, false) => PROTO_ICMP,
        (false, true) => PROTO_ICMPV6,
    };
    let pseudo = if flow.is_v6 {
        put(buf, 12, 0x86ddu16.to_be_bytes());
        let [len_hi, len_lo] = (l4_len as u16).to_be_bytes();
        // Version, traffic class and flow label 0, payload length, next
        // header, hop limit.
        put(buf, 14, [0x60, 0, 0, 0, len_hi, len_lo, proto, TTL]);
        put(buf, 22, flow.dst);
        put(buf, 38, flow.src);
        pseudo_header(&flow.dst, &flow.src, proto, l4_len as u16)
    } else {
        put(buf, 12, 0x0800u16.to_be_bytes());
        let [len_hi, len_lo] = ((IPV4_LEN + l4_len) as u16).to_be_bytes();
        // Version and header length, TOS, total length, id 0, don't
        // fragment, TTL, protocol, checksum (below).
        put(
            buf,
            14,
            [0x45, 0, len_hi, len_lo, 0, 0, 0x40, 0, TTL, proto, 0, 0],
        );
        let (src, dst) = (part::<4, 16>(&flow.dst, 12), part::<4, 16>(&flow.src, 12));
        put(buf, 26, src);
        put(buf, 30, dst);
        let check = checksum(buf, ETH_LEN, IPV4_LEN, 0);
        put(buf, 24, check);
        pseudo_header(&src, &dst, proto, l4_len as u16)
    };

    if tcp {
        if !tcp_reset(data, end, flow, buf, l4) {
            return 0;
        }
        let check = checksum(buf, l4, TCP_LEN, pseudo);
        put(buf, l4 + 16, check);
    } else {
        // Port unreachable, then the start of the datagram, as received.
        let (kind, code) = if flow.is_v6 { (1, 4) } else { (3, 3) };
        put(buf, l4, [kind, code, 0, 0, 0, 0, 0, 0]);
        let quoted = if flow.is_v6 {
            read::<[u8; IPV6_LEN + QUOTED_L4]>(data, end, ETH_LEN)
                .map(|q| put(buf, l4 + ICMP_LEN, q))
        } else {
            read::<[u8; IPV4_LEN + QUOTED_L4]>(data, end, ETH_LEN)
                .map(|q| put(buf, l4 + ICMP_LEN, q))
        };
        if quoted.is_none() {
            return 0;
        }
        // ICMPv6 covers a pseudo-header, ICMP does not.
        let seed = if flow.is_v6 { pseudo } else { 0 };
        let check = checksum(buf, l4, l4_len, seed);
        put(buf, l4 + 2, check);
    }
    l4 + l4_len
}

/// The reset's TCP header (checksum left 0) at `l4`, as RFC 793 makes it:
/// to a segment with an ACK, seq = its ack; to one without, RST|ACK
/// acknowledging all it occupied. False: the segment is not answered
/// (a reset, a bad header length).
#[inline(always)]
fn tcp_reset(data: usize, end: usize, flow: &Flow, buf: &mut [u8; REPLY_MAX], l4: usize) -> bool {
    // Sequence and acknowledgment numbers, data offset, flags.
    let Some([s0, s1, s2, s3, a0, a1, a2, a3, data_off, flags]) =
        read::<[u8; 10]>(data, end, flow.l4_off + 4)
    else {
        return false;
    };
    let header_len = usize::from(data_off >> 4) * 4;
    let l4_len = usize::from(flow.l4_len);
    if flags & TCP_RST != 0 || header_len < TCP_LEN || header_len > l4_len {
        return false;
    }
    let (seq, ack, reply_flags) = if flags & TCP_ACK != 0 {
        ([a0, a1, a2, a3], [0; 4], TCP_RST)
    } else {
        // SYN and FIN take a sequence number each.
        let occupied = (l4_len - header_len)
            + usize::from(flags & TCP_SYN != 0)
            + usize::from(flags & TCP_FIN != 0);
        let ack = u32::from_be_bytes([s0, s1, s2, s3]).wrapping_add(occupied as u32);
        ([0; 4], ack.to_be_bytes(), TCP_RST | TCP_ACK)
    };
    put(buf, l4, flow.dst_port.to_ne_bytes());
    put(buf, l4 + 2, flow.src_port.to_ne_bytes());
    put(buf, l4 + 4, seq);
    put(buf, l4 + 8, ack);
    // Header length 20, flags, window 0, checksum, urgent pointer 0.
    put(buf, l4 + 12, [0x50, reply_flags, 0, 0, 0, 0, 0, 0]);
    true
}

/// Whether the source is one host, which may be answered (RFC 1122
/// 3.2.2: no ICMP error to multicast, broadcast or unspecified sources;
/// no reset either, to the same effect).
#[inline(always)]
fn single_host(flow: &Flow) -> bool {
    if flow.is_v6 {
        let [first, ..] = flow.src;
        first != 0xff && flow.src != [0; 16]
    } else {
        // 224.0.0.0/4 multicast, 240.0.0.0/4 with the broadcast address,
        // and 0.0.0.0.
        let v4 = part::<4, 16>(&flow.src, 12);
        let [first, ..] = v4;
        first < 224 && v4 != [0; 4]
    }
}

/// The one's-complement checksum of `len` bytes of `buf` from `off`
/// (`len` a multiple of 4), plus `seed`, in memory order.
#[inline(always)]
fn checksum(buf: &[u8; REPLY_MAX], off: usize, len: usize, seed: u16) -> [u8; 2] {
    let Some(region) = buf.get(off..off + len) else {
        return [0; 2];
    };
    // SAFETY: the helper only reads `len` bytes of the buffer (there is
    // no `from`), whatever its pointer type says.
    let sum = unsafe {
        bpf_csum_diff(
            null_mut(),
            0,
            region.as_ptr() as *mut u32,
            len as u32,
            u32::from(seed),
        )
    };
    (!fold(sum as u32)).to_ne_bytes()
}

/// Writes `bytes` into `buf` at `off` (always in bounds: callers pass
/// offsets of the fixed layouts above).
#[inline(always)]
fn put<const N: usize>(buf: &mut [u8; REPLY_MAX], off: usize, bytes: [u8; N]) {
    if let Some(dst) = buf.get_mut(off..off + N) {
        dst.copy_from_slice(&bytes);
    }
}

/// `N` bytes of `a` from `at`.
#[inline(always)]
fn part<const N: usize, const M: usize>(a: &[u8; M], at: usize) -> [u8; N] {
    let mut out = [0; N];
    if let Some(src) = a.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}
