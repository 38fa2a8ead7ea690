//! Header parsing shared by both programs. Reads only; never writes.
//!
//! Anything not handled returns `None` and the caller passes the packet on
//! untouched: non-IP, IP fragments, IPv6 extension headers, protocols other
//! than TCP, UDP and ICMP, and headers cut short by the end of the buffer.
use core::mem::size_of;

use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};
use svc_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, ipv4_mapped};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;

/// The parts of a TCP/UDP packet the translator needs. Offsets are from the
/// start of the Ethernet header; ports are in network byte order.
pub struct Flow {
    pub l3_off: usize,
    pub l4_off: usize,
    pub is_v6: bool,
    pub proto: u8,
    /// Addresses as stored in the maps (IPv4-mapped for IPv4).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP/UDP length as the pseudo-header counts it.
    pub l4_len: u16,
    /// TCP's flags byte (FIN, SYN, RST, ...); 0 for UDP.
    pub tcp_flags: u8,
}

/// Bits of [`Flow::tcp_flags`].
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

impl Flow {
    /// ICMP in IPv4, ICMPv6 in IPv6 (whose errors `icmp` translates).
    #[inline(always)]
    pub fn is_icmp(&self) -> bool {
        self.proto == if self.is_v6 { PROTO_ICMPV6 } else { PROTO_ICMP }
    }

    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        self.l4_off + if self.proto == PROTO_TCP { 16 } else { 6 }
    }

    /// Offset of the source (`dst == false`) or destination address.
    #[inline(always)]
    pub fn addr_off(&self, dst: bool) -> usize {
        match (self.is_v6, dst) {
            (false, false) => self.l3_off + 12,
            (false, true) => self.l3_off + 16,
            (true, false) => self.l3_off + 8,
            (true, true) => self.l3_off + 24,
        }
    }

    /// Offset of the source (`dst == false`) or destination port.
    #[inline(always)]
    pub fn port_off(&self, dst: bool) -> usize {
        self.l4_off + if dst { 2 } else { 0 }
    }
}

/// No header we touch starts further in than this: the TCP checksum of a
/// packet an ICMP error quotes, behind Ethernet, a VLAN tag, IPv4 with 40
/// bytes of options, ICMP and the quoted IPv4 header with options
/// (14 + 4 + 60 + 8 + 60 + 16 = 162).
const MAX_HEADER_OFFSET: usize = 192;

/// A pointer to a `T` at `off`, if the whole `T` lies before `end`. This is
/// the bounds check the verifier wants to see before every access; the
/// explicit cap on `off` matters when it was computed in another
/// subprogram, where the verifier no longer knows its range.
#[inline(always)]
pub fn ptr_at<T>(data: usize, end: usize, off: usize) -> Option<*mut T> {
    if off > MAX_HEADER_OFFSET {
        return None;
    }
    let start = data.checked_add(off)?;
    if start.checked_add(size_of::<T>())? > end {
        return None;
    }
    Some(start as *mut T)
}

/// Copies a `T` out of the packet. Only for align-1 types (byte arrays and
/// network-types headers), so the unaligned packet address is fine.
#[inline(always)]
pub fn read<T: Copy>(data: usize, end: usize, off: usize) -> Option<T> {
    let p: *const T = ptr_at(data, end, off)?;
    // SAFETY: ptr_at checked that all of T lies inside the packet.
    Some(unsafe { p.read_unaligned() })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parses the packet in `[data, end)`: a TCP or UDP packet, or an ICMP
/// (ICMPv6) message whose first 8 bytes are there (ports and flags then
/// stay 0; `icmp` looks further). A subprogram of its own (see
/// `lb::decide`), so its temporaries never add to the callers' frames.
#[inline(never)]
pub fn parse(data: usize, end: usize) -> Option<Flow> {
    // EtherType sits in the last two bytes of the Ethernet header, and again
    // in the last two of an 802.1Q tag.
    const ETH_LEN: usize = 14;
    const VLAN_LEN: usize = 4;
    let mut ether_type = be16(read(data, end, ETH_LEN - 2)?);
    let mut l3_off = ETH_LEN;
    if ether_type == ETH_P_8021Q {
        ether_type = be16(read(data, end, ETH_LEN + VLAN_LEN - 2)?);
        l3_off += VLAN_LEN;
    }
    let is_v6 = match ether_type {
        ETH_P_IP => false,
        ETH_P_IPV6 => true,
        _ => return None,
    };
    let mut flow = ip_header(data, end, l3_off, is_v6)?;
    let l4_hdr_len = match flow.proto {
        PROTO_TCP => TcpHdr::LEN,
        PROTO_UDP => UdpHdr::LEN,
        PROTO_ICMP if !is_v6 => ICMP_HDR_LEN,
        PROTO_ICMPV6 if is_v6 => ICMP_HDR_LEN,
        _ => return None,
    };
    if usize::from(flow.l4_len) < l4_hdr_len {
        return None;
    }
    // The whole fixed L4 header must be present: it holds the checksum.
    let present = match flow.proto {
        PROTO_TCP => ptr_at::<TcpHdr>(data, end, flow.l4_off).is_some(),
        PROTO_UDP => ptr_at::<UdpHdr>(data, end, flow.l4_off).is_some(),
        _ => ptr_at::<[u8; ICMP_HDR_LEN]>(data, end, flow.l4_off).is_some(),
    };
    if !present {
        return None;
    }
    if flow.is_icmp() {
        return Some(flow);
    }
    read_ports(data, end, &mut flow)?;
    if flow.proto == PROTO_TCP {
        flow.tcp_flags = read::<[u8; 1]>(data, end, flow.l4_off + 13)?[0];
    }
    Some(flow)
}

/// ICMP's and ICMPv6's fixed header: type, code, checksum, 4 more bytes.
pub const ICMP_HDR_LEN: usize = 8;

/// The TCP or UDP packet an ICMP error quotes, its IP header at `l3_off`:
/// the header whole, then at least the first 8 bytes of L4 (all an error
/// must quote; ports and UDP's checksum are in them). Fragments are left
/// alone, as by `parse`. Fills `out` in place (it lives in a scratch map).
/// A subprogram of its own, as `parse`.
#[inline(never)]
pub fn parse_quoted(data: usize, end: usize, l3_off: usize, is_v6: bool, out: &mut Flow) -> bool {
    let Some(flow) = ip_header(data, end, l3_off, is_v6) else {
        return false;
    };
    if flow.proto != PROTO_TCP && flow.proto != PROTO_UDP {
        return false;
    }
    // Ports read through the pointer that was checked: a second pointer
    // to the same bytes would be a new one to the verifier, unchecked.
    let Some(l4) = ptr_at::<[u8; 8]>(data, end, flow.l4_off) else {
        return false;
    };
    // SAFETY: ptr_at checked the bounds; a byte array has align 1.
    let l4 = unsafe { l4.read_unaligned() };
    *out = Flow {
        src_port: u16::from_ne_bytes([l4[0], l4[1]]),
        dst_port: u16::from_ne_bytes([l4[2], l4[3]]),
        ..flow
    };
    true
}

/// The IP header at `l3_off`: the `Flow` up to its L4 offset and length
/// (ports and flags 0). None for fragments, IPv4 headers that are not,
/// and headers cut short.
#[inline(always)]
fn ip_header(data: usize, end: usize, l3_off: usize, is_v6: bool) -> Option<Flow> {
    let (proto, src, dst, l4_off, l4_len) = if is_v6 {
        let ip: *const Ipv6Hdr = ptr_at(data, end, l3_off)?;
        // SAFETY: ptr_at checked the bounds; Ipv6Hdr is all bytes (align 1).
        let ip = unsafe { &*ip };
        // Extension headers (fragments among them) are passed on.
        (
            ip.next_hdr as u8,
            ip.src_addr,
            ip.dst_addr,
            l3_off + Ipv6Hdr::LEN,
            be16(ip.payload_len),
        )
    } else {
        let ip: *const Ipv4Hdr = ptr_at(data, end, l3_off)?;
        // SAFETY: as above; Ipv4Hdr is all bytes too.
        let ip = unsafe { &*ip };
        let ihl = usize::from(ip.vihl & 0x0f) * 4;
        // More-fragments set or a non-zero offset: not ours to touch.
        let frag = be16(ip.frags) & 0x3fff;
        if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || frag != 0 {
            return None;
        }
        (
            ip.proto,
            ipv4_mapped(ip.src_addr),
            ipv4_mapped(ip.dst_addr),
            l3_off + ihl,
            be16(ip.tot_len).checked_sub(ihl as u16)?,
        )
    };
    Some(Flow {
        l3_off,
        l4_off,
        is_v6,
        proto,
        src,
        dst,
        src_port: 0,
        dst_port: 0,
        l4_len,
        tcp_flags: 0,
    })
}

/// Fills in the ports, the first 4 bytes of TCP and UDP alike.
#[inline(always)]
fn read_ports(data: usize, end: usize, flow: &mut Flow) -> Option<()> {
    let ports: [u8; 4] = read(data, end, flow.l4_off)?;
    flow.src_port = u16::from_ne_bytes([ports[0], ports[1]]);
    flow.dst_port = u16::from_ne_bytes([ports[2], ports[3]]);
    Some(())
}

/// The IPv4 address inside an IPv4-mapped one.
#[inline(always)]
pub fn v4_part(a: &[u8; 16]) -> [u8; 4] {
    [a[12], a[13], a[14], a[15]]
}

/// Address bytes as four words in memory order: what the csum and FIB
/// helpers take.
#[inline(always)]
pub fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
