//! Header parsing shared by both programs. Reads only; never writes.
//!
//! Anything not handled returns `None` and the caller passes the packet on
//! untouched: non-IP, IP fragments, IPv6 extension headers, protocols other
//! than TCP and UDP, and headers cut short by the end of the buffer.
use core::mem::size_of;

use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};
use svc_common::{PROTO_TCP, PROTO_UDP, ipv4_mapped};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
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

/// No header we touch starts further in than this (Ethernet, a VLAN tag,
/// IPv4 with 40 bytes of options, then the TCP checksum).
const MAX_HEADER_OFFSET: usize = 128;

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

/// Parses the packet in `[data, end)`. A subprogram of its own (see
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

    let (is_v6, proto, src, dst, l4_off, l4_len) = match ether_type {
        ETH_P_IP => {
            let ip: *const Ipv4Hdr = ptr_at(data, end, l3_off)?;
            // SAFETY: ptr_at checked the bounds; Ipv4Hdr is all bytes (align 1).
            let ip = unsafe { &*ip };
            let ihl = usize::from(ip.vihl & 0x0f) * 4;
            // More-fragments set or a non-zero offset: not ours to touch.
            let frag = be16(ip.frags) & 0x3fff;
            if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || frag != 0 {
                return None;
            }
            let l4_len = be16(ip.tot_len).checked_sub(ihl as u16)?;
            (
                false,
                ip.proto,
                ipv4_mapped(ip.src_addr),
                ipv4_mapped(ip.dst_addr),
                l3_off + ihl,
                l4_len,
            )
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = ptr_at(data, end, l3_off)?;
            // SAFETY: as above; Ipv6Hdr is all bytes too.
            let ip = unsafe { &*ip };
            // Extension headers (fragments among them) are passed on.
            (
                true,
                ip.next_hdr as u8,
                ip.src_addr,
                ip.dst_addr,
                l3_off + Ipv6Hdr::LEN,
                be16(ip.payload_len),
            )
        }
        _ => return None,
    };

    let l4_hdr_len = match proto {
        PROTO_TCP => TcpHdr::LEN,
        PROTO_UDP => UdpHdr::LEN,
        _ => return None,
    };
    if usize::from(l4_len) < l4_hdr_len {
        return None;
    }
    // The whole fixed L4 header must be present: it holds the checksum.
    let present = match proto {
        PROTO_TCP => ptr_at::<TcpHdr>(data, end, l4_off).is_some(),
        _ => ptr_at::<UdpHdr>(data, end, l4_off).is_some(),
    };
    if !present {
        return None;
    }
    let ports: [u8; 4] = read(data, end, l4_off)?;
    let tcp_flags = if proto == PROTO_TCP {
        read::<[u8; 1]>(data, end, l4_off + 13)?[0]
    } else {
        0
    };
    Some(Flow {
        l3_off,
        l4_off,
        is_v6,
        proto,
        src,
        dst,
        src_port: u16::from_ne_bytes([ports[0], ports[1]]),
        dst_port: u16::from_ne_bytes([ports[2], ports[3]]),
        l4_len,
        tcp_flags,
    })
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
