//! ICMP errors about translated flows: destination unreachable (IPv4's
//! fragmentation needed among them), packet too big, time exceeded and
//! parameter problem.
//!
//! An error quotes the packet it is about (its IP header and at least 8
//! bytes of L4) as that packet stood where the error was raised: already
//! translated. Its sender acts on it (lowers the path MTU, gives up a
//! connection) only if the quote shows the packet as it sent it, inside an
//! error addressed to it. So the quoted addresses and ports are translated
//! back with the flow's conntrack entry (`lb::quoted_original`), and the
//! outer addresses with them: the error goes to the quoted packet's
//! original source, and when the quoted packet's destination raised it
//! (a backend's port unreachable), it comes from the original destination.
//!
//! Checksums, all updated incrementally: the quoted IPv4 header's, the
//! quoted TCP or UDP checksum when the quote reaches it (UDP's always lies
//! in the first 8 bytes, TCP's at offset 16 only in longer quotes, which
//! Linux sends), the ICMP checksum (ICMPv6's covers the outer addresses
//! too) and the outer IPv4 header's.
//!
//! The same direct writes serve XDP and tc. In tc the skb's checksum state
//! needs no helper: ICMP errors carry full checksums (the kernel computes
//! them in software, never leaving `CHECKSUM_PARTIAL`), and every changed
//! byte is compensated by a checksum inside the packet, so the sum over the
//! whole packet, which a `CHECKSUM_COMPLETE` skb->csum holds, stays the same.
use core::ptr::{read_unaligned, write_unaligned};

use svc_common::{PROTO_UDP, csum::Diff};

use crate::{
    lb::{self, Rewrite},
    maps::{QUOTED, REWRITE},
    packet::{self, Flow, ICMP_HDR_LEN, ptr_at, v4_part},
};

/// What `translate` did to a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not an error about a flow of ours: left as it was.
    Untouched,
    /// Translated; its destination address is the one it had.
    Translated,
    /// Translated to another destination address (an error about a reply,
    /// sent to the frontend, now goes to the backend): a packet the stack
    /// has already routed must be routed again.
    Readdressed,
    /// Cut short half way (cannot happen once parsed; the verifier wants
    /// every access checked): the packet must be dropped.
    Failed,
}

/// Translates `outer`, an ICMP (ICMPv6) packet in `[data, end)`, if it is
/// an error about a flow of ours. A subprogram of its own: the quoted
/// flow lives in a scratch map, its new tuple in `REWRITE`.
#[inline(never)]
pub fn translate(data: usize, end: usize, outer: &Flow) -> Outcome {
    // (The whole header: a one-byte bounds check confuses the verifier.)
    let Some(header) = ptr_at::<[u8; ICMP_HDR_LEN]>(data, end, outer.l4_off) else {
        return Outcome::Untouched;
    };
    // SAFETY: ptr_at checked the bounds.
    if !is_error(outer.is_v6, unsafe { (*header)[0] }) {
        return Outcome::Untouched;
    }
    let (Some(quoted), Some(to)) = (QUOTED.get_ptr_mut(0), REWRITE.get_ptr_mut(0)) else {
        return Outcome::Untouched;
    };
    // SAFETY: this CPU's slots, used by one packet at a time.
    let (quoted, to) = unsafe { (&mut *quoted, &mut *to) };
    let l3_off = outer.l4_off + ICMP_HDR_LEN;
    if !packet::parse_quoted(data, end, l3_off, outer.is_v6, quoted)
        || !lb::quoted_original(quoted, to)
    {
        return Outcome::Untouched;
    }
    match rewrite(data, end, outer, quoted, to) {
        Some(true) => Outcome::Readdressed,
        Some(false) => Outcome::Translated,
        None => Outcome::Failed,
    }
}

/// The ICMP and ICMPv6 types that quote an offending packet.
#[inline(always)]
fn is_error(is_v6: bool, ty: u8) -> bool {
    if is_v6 {
        // Destination unreachable, packet too big, time exceeded,
        // parameter problem.
        (1..=4).contains(&ty)
    } else {
        // Destination unreachable, time exceeded, parameter problem.
        ty == 3 || ty == 11 || ty == 12
    }
}

/// Writes the quoted packet's original tuple `to` and the outer addresses
/// that go with it, with every checksum. Some(whether the outer
/// destination changed).
#[inline(never)]
fn rewrite(data: usize, end: usize, outer: &Flow, quoted: &Flow, to: &Rewrite) -> Option<bool> {
    let v6 = outer.is_v6;
    // The quoted packet: addresses (its pseudo-header), then ports.
    let pseudo = write_addr(data, end, quoted.addr_off(false), v6, &quoted.src, &to.src)?.add(
        write_addr(data, end, quoted.addr_off(true), v6, &quoted.dst, &to.dst)?,
    );
    let ports = write_port(
        data,
        end,
        quoted.port_off(false),
        quoted.src_port,
        to.src_port,
    )?
    .add(write_port(
        data,
        end,
        quoted.port_off(true),
        quoted.dst_port,
        to.dst_port,
    )?);
    // Every change inside the ICMP message, for its checksum.
    let mut icmp = pseudo.add(ports);
    if !v6 {
        icmp = icmp.add(update_csum(data, end, quoted.l3_off + 10, pseudo, false)?);
    }
    if ptr_at::<u16>(data, end, quoted.l4_csum_off()).is_some() {
        let udp = quoted.proto == PROTO_UDP;
        let l4 = update_csum(data, end, quoted.l4_csum_off(), pseudo.add(ports), udp)?;
        icmp = icmp.add(l4);
    }

    // The error goes back to the quoted packet's sender, from its
    // destination if that raised it, both as they originally were.
    let readdressed = outer.dst == quoted.src && to.src != quoted.src;
    let mut addrs = Diff::new();
    if readdressed {
        addrs = write_addr(data, end, outer.addr_off(true), v6, &outer.dst, &to.src)?;
    }
    if outer.src == quoted.dst {
        let src = write_addr(data, end, outer.addr_off(false), v6, &outer.src, &to.dst)?;
        addrs = addrs.add(src);
    }
    if v6 {
        // ICMPv6's pseudo-header.
        icmp = icmp.add(addrs);
    } else {
        update_csum(data, end, outer.l3_off + 10, addrs, false)?;
    }
    update_csum(data, end, outer.l4_off + 2, icmp, false)?;
    Some(readdressed)
}

/// Writes address `new` over `old` at `off` (4 bytes of it for IPv4);
/// returns the change for the checksums.
#[inline(always)]
fn write_addr(
    data: usize,
    end: usize,
    off: usize,
    v6: bool,
    old: &[u8; 16],
    new: &[u8; 16],
) -> Option<Diff> {
    if old == new {
        return Some(Diff::new());
    }
    // SAFETY (both arms): ptr_at checked the bounds.
    if v6 {
        let addr: *mut [u8; 16] = ptr_at(data, end, off)?;
        unsafe { write_unaligned(addr, *new) };
        Some(Diff::new().bytes(old, new))
    } else {
        let addr: *mut [u8; 4] = ptr_at(data, end, off)?;
        unsafe { write_unaligned(addr, v4_part(new)) };
        Some(Diff::new().bytes(&v4_part(old), &v4_part(new)))
    }
}

#[inline(always)]
fn write_port(data: usize, end: usize, off: usize, old: u16, new: u16) -> Option<Diff> {
    if old == new {
        return Some(Diff::new());
    }
    let port: *mut u16 = ptr_at(data, end, off)?;
    // SAFETY: ptr_at checked the bounds.
    unsafe { write_unaligned(port, new) };
    Some(Diff::new().word(old, new))
}

/// Applies `diff` to the full checksum at `off` (for UDP: a zero, "no
/// checksum", stays zero and a computed zero is sent as 0xffff); returns
/// the field's own change, which the checksums around it must count.
#[inline(always)]
fn update_csum(data: usize, end: usize, off: usize, diff: Diff, udp: bool) -> Option<Diff> {
    let field: *mut u16 = ptr_at(data, end, off)?;
    // SAFETY: ptr_at checked the bounds.
    let old = unsafe { read_unaligned(field) };
    if udp && old == 0 {
        return Some(Diff::new());
    }
    let mut new = diff.apply_full(old);
    if udp && new == 0 {
        new = 0xffff;
    }
    unsafe { write_unaligned(field, new) };
    Some(Diff::new().word(old, new))
}
