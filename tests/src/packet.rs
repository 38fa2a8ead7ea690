//! Crafting test packets from scratch.
//!
//! Checksums here are computed from the finished bytes with a plain
//! big-endian one's-complement sum, independently of the (native-order,
//! incremental) arithmetic in `svc-common` that the programs use. A test
//! compares a program's output byte for byte with `Spec::build` of the
//! packet it should have produced.
use std::net::{IpAddr, SocketAddr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// How the L4 checksum field is filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Csum {
    /// A complete checksum, as on the wire.
    Full,
    /// `CHECKSUM_PARTIAL`: the folded pseudo-header sum only, as a local
    /// socket leaves it for offload.
    Partial,
    /// Zero: "no checksum" (UDP only).
    Zero,
}

/// Fragmentation, for the cases the programs must leave alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frag {
    None,
    /// IPv4 first fragment (More Fragments set).
    V4First,
    /// IPv4 later fragment (offset 185 * 8 bytes).
    V4Later,
    /// IPv6 Fragment extension header.
    V6Header,
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
    pub vlan: Option<u16>,
    /// IPv4 options, a multiple of 4 bytes.
    pub ip_options: Vec<u8>,
    pub payload: Vec<u8>,
    pub csum: Csum,
    pub frag: Frag,
    /// TCP's flags byte (PSH|ACK unless set).
    pub tcp_flags: u8,
}

/// TCP flags for `Spec::tcp_flags`.
pub const PSH_ACK: u8 = 0x18;
pub const FIN_ACK: u8 = 0x11;
pub const SYN: u8 = 0x02;

impl Spec {
    pub fn new(proto: u8, src: &str, dst: &str) -> Self {
        Self {
            src: src.parse().expect("src addr"),
            dst: dst.parse().expect("dst addr"),
            proto,
            vlan: None,
            ip_options: Vec::new(),
            payload: b"hello, service".to_vec(),
            csum: Csum::Full,
            frag: Frag::None,
            tcp_flags: PSH_ACK,
        }
    }

    pub fn tcp(src: &str, dst: &str) -> Self {
        Self::new(TCP, src, dst)
    }

    pub fn udp(src: &str, dst: &str) -> Self {
        Self::new(UDP, src, dst)
    }

    pub fn with_dst(&self, dst: SocketAddr) -> Self {
        Self {
            dst,
            ..self.clone()
        }
    }

    pub fn with_src(&self, src: SocketAddr) -> Self {
        Self {
            src,
            ..self.clone()
        }
    }

    /// The reply a server would send: addresses and ports swapped.
    pub fn reply(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            ..self.clone()
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let l4 = self.l4();
        let mut pkt = Vec::new();
        pkt.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
        let ether_type: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86dd };
        if let Some(vid) = self.vlan {
            pkt.extend_from_slice(&0x8100u16.to_be_bytes());
            pkt.extend_from_slice(&vid.to_be_bytes());
        }
        pkt.extend_from_slice(&ether_type.to_be_bytes());
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let ihl = 20 + self.ip_options.len();
                assert!(
                    ihl <= 60 && ihl.is_multiple_of(4),
                    "bad IPv4 options length"
                );
                let frag: u16 = match self.frag {
                    Frag::None => 0x4000, // DF
                    Frag::V4First => 0x2000,
                    Frag::V4Later => 185,
                    Frag::V6Header => panic!("IPv6 fragment header on IPv4"),
                };
                let mut ip = vec![0x40 | (ihl / 4) as u8, 0];
                ip.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
                ip.extend_from_slice(&[0x12, 0x34]);
                ip.extend_from_slice(&frag.to_be_bytes());
                ip.extend_from_slice(&[64, self.proto, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend_from_slice(&self.ip_options);
                let c = checksum(&ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                pkt.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let ext = if self.frag == Frag::V6Header { 8 } else { 0 };
                pkt.extend_from_slice(&[0x60, 0, 0, 0]);
                pkt.extend_from_slice(&((ext + l4.len()) as u16).to_be_bytes());
                let next = if ext > 0 { 44 } else { self.proto };
                pkt.extend_from_slice(&[next, 64]);
                pkt.extend_from_slice(&s.octets());
                pkt.extend_from_slice(&d.octets());
                if ext > 0 {
                    // Next header, reserved, offset 0 + More Fragments, id.
                    pkt.extend_from_slice(&[self.proto, 0, 0, 1, 0, 0, 0x12, 0x34]);
                }
            }
            _ => panic!("mixed address families"),
        }
        pkt.extend_from_slice(&l4);
        pkt
    }

    /// The TCP or UDP segment, checksum filled per `self.csum`.
    fn l4(&self) -> Vec<u8> {
        let mut seg = Vec::new();
        seg.extend_from_slice(&self.src.port().to_be_bytes());
        seg.extend_from_slice(&self.dst.port().to_be_bytes());
        let field = if self.proto == TCP {
            seg.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
            seg.extend_from_slice(&0x0a0b_0c0du32.to_be_bytes()); // ack
            seg.extend_from_slice(&[0x50, self.tcp_flags, 0xff, 0xff, 0, 0, 0, 0]);
            16
        } else {
            seg.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            seg.extend_from_slice(&[0, 0]);
            6
        };
        seg.extend_from_slice(&self.payload);
        let pseudo = self.pseudo_header(seg.len());
        let value = match self.csum {
            Csum::Zero => 0,
            Csum::Partial => fold(sum(&pseudo)),
            Csum::Full => {
                let c = !fold(sum(&pseudo) + sum(&seg));
                if c == 0 && self.proto == UDP {
                    0xffff
                } else {
                    c
                }
            }
        };
        seg[field..field + 2].copy_from_slice(&value.to_be_bytes());
        seg
    }

    fn pseudo_header(&self, l4_len: usize) -> Vec<u8> {
        pseudo_header(self.src.ip(), self.dst.ip(), self.proto, l4_len)
    }
}

/// TCP flag bits, for the refusals below.
const FIN: u8 = 0x01;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

impl Spec {
    /// The TCP reset that refuses this segment, as RFC 793 makes it:
    /// from its destination back to its source (MACs swapped, TTL or hop
    /// limit 64, IPv4 id 0 and don't fragment). To a segment with an ACK:
    /// RST with seq = its ack; to one without: RST|ACK acknowledging its
    /// payload, SYN and FIN. No options, window 0.
    pub fn reset(&self) -> Vec<u8> {
        self.assert_plain();
        let (seq, ack) = (0x0102_0304u32, 0x0a0b_0c0du32); // as `l4` writes them
        let (reply_seq, reply_ack, flags) = if self.tcp_flags & ACK != 0 {
            (ack, 0, RST)
        } else {
            let occupied = self.payload.len() as u32
                + u32::from(self.tcp_flags & SYN != 0)
                + u32::from(self.tcp_flags & FIN != 0);
            (0, seq.wrapping_add(occupied), RST | ACK)
        };
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&self.dst.port().to_be_bytes());
        tcp.extend_from_slice(&self.src.port().to_be_bytes());
        tcp.extend_from_slice(&reply_seq.to_be_bytes());
        tcp.extend_from_slice(&reply_ack.to_be_bytes());
        tcp.extend_from_slice(&[0x50, flags, 0, 0, 0, 0, 0, 0]);
        let pseudo = pseudo_header(self.dst.ip(), self.src.ip(), TCP, tcp.len());
        let c = !fold(sum(&pseudo) + sum(&tcp));
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        self.answer(TCP, &tcp)
    }

    /// The ICMP (IPv4: type 3 code 3) or ICMPv6 (type 1 code 4) port
    /// unreachable that refuses this datagram, quoting its IP header and
    /// the first 8 bytes after it; from its destination back to its
    /// source as in `reset`.
    pub fn port_unreachable(&self) -> Vec<u8> {
        self.assert_plain();
        let pkt = self.build();
        let ip_len = if self.src.is_ipv4() { 20 } else { 40 };
        let (proto, kind, code) = if self.src.is_ipv4() {
            (1, 3, 3)
        } else {
            (58, 1, 4)
        };
        let mut icmp = vec![kind, code, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&pkt[14..14 + ip_len + 8]);
        let c = if self.src.is_ipv4() {
            checksum(&icmp)
        } else {
            let pseudo = pseudo_header(self.dst.ip(), self.src.ip(), proto, icmp.len());
            !fold(sum(&pseudo) + sum(&icmp))
        };
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        self.answer(proto, &icmp)
    }

    /// Refusals are built for untagged frames without IP options or
    /// extension headers only (the programs drop the others).
    fn assert_plain(&self) {
        assert!(
            self.vlan.is_none() && self.ip_options.is_empty() && self.frag == Frag::None,
            "no refusal for {self:?}"
        );
    }

    /// A frame from this packet's destination back to its source carrying
    /// `l4` (of protocol `proto`), as a refusal is sent.
    fn answer(&self, proto: u8, l4: &[u8]) -> Vec<u8> {
        let ip = IpFields {
            src: self.dst.ip(),
            dst: self.src.ip(),
            proto,
            tos: 0,
            // No id, don't fragment.
            id_frag: [0, 0, 0x40, 0],
        };
        ip.frame([0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02], l4)
    }
}

/// The IP header fields a generated packet (a refusal, an ICMP error) is
/// built with; TTL and hop limit are 64.
struct IpFields {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    /// IPv4 only: TOS, and the id and fragment words.
    tos: u8,
    id_frag: [u8; 4],
}

impl IpFields {
    /// The Ethernet frame (destination and source MACs in `macs`) holding
    /// this IP header and `l4`, the IPv4 header checksum computed.
    fn frame(&self, macs: [u8; 12], l4: &[u8]) -> Vec<u8> {
        let mut pkt = macs.to_vec();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                pkt.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut ip = vec![0x45, self.tos];
                ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
                ip.extend_from_slice(&self.id_frag);
                ip.extend_from_slice(&[64, self.proto, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                let c = checksum(&ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                pkt.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                pkt.extend_from_slice(&0x86ddu16.to_be_bytes());
                pkt.extend_from_slice(&[0x60, 0, 0, 0]);
                pkt.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                pkt.extend_from_slice(&[self.proto, 64]);
                pkt.extend_from_slice(&s.octets());
                pkt.extend_from_slice(&d.octets());
            }
            _ => panic!("mixed address families"),
        }
        pkt.extend_from_slice(l4);
        pkt
    }
}

/// The TCP/UDP (ICMPv6) pseudo-header of a segment of `l4_len` bytes.
fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, l4_len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(l4_len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(l4_len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed address families"),
    }
    p
}

/// The ICMP errors a router or host sends about a packet, in both
/// families (`IcmpError`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpKind {
    /// IPv4 destination unreachable, fragmentation needed; IPv6 packet too
    /// big. Both carry the next hop's MTU.
    TooBig { mtu: u16 },
    /// Time exceeded in transit (TTL or hop limit ran out).
    TimeExceeded,
    /// Destination unreachable, port unreachable.
    PortUnreachable,
    /// Not an error: an echo request, whose data happens to look like a
    /// quoted packet. The programs must leave it alone.
    Echo,
}

impl IcmpKind {
    pub const ALL: [IcmpKind; 3] = [
        IcmpKind::TooBig { mtu: 1280 },
        IcmpKind::TimeExceeded,
        IcmpKind::PortUnreachable,
    ];

    /// Type, code and the 4 bytes after the checksum.
    fn header(self, v6: bool) -> (u8, u8, [u8; 4]) {
        match (self, v6) {
            (IcmpKind::TooBig { mtu }, false) => {
                let m = mtu.to_be_bytes();
                (3, 4, [0, 0, m[0], m[1]])
            }
            (IcmpKind::TooBig { mtu }, true) => (2, 0, u32::from(mtu).to_be_bytes()),
            (IcmpKind::TimeExceeded, false) => (11, 0, [0; 4]),
            (IcmpKind::TimeExceeded, true) => (3, 0, [0; 4]),
            (IcmpKind::PortUnreachable, false) => (3, 3, [0; 4]),
            (IcmpKind::PortUnreachable, true) => (1, 4, [0; 4]),
            (IcmpKind::Echo, false) => (8, 0, [0x12, 0x34, 0, 1]),
            (IcmpKind::Echo, true) => (128, 0, [0x12, 0x34, 0, 1]),
        }
    }
}

/// An ICMP (ICMPv6) error from `src` to `dst` about the packet `about`,
/// quoting its IP packet: all of it, or its first `quote` bytes. Built
/// from scratch like `Spec`, checksums included.
#[derive(Clone, Debug)]
pub struct IcmpError {
    pub kind: IcmpKind,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub about: Spec,
    pub quote: Option<usize>,
}

impl IcmpError {
    pub fn new(kind: IcmpKind, src: IpAddr, dst: IpAddr, about: Spec) -> Self {
        Self {
            kind,
            src,
            dst,
            about,
            quote: None,
        }
    }

    /// The quoted length RFC 792 asks for at least: the IP header and 8
    /// bytes of L4 (Linux quotes as much as fits in 576 or 1280 bytes).
    pub fn minimal_quote(&self) -> usize {
        let ip = if self.about.dst.is_ipv4() {
            20 + self.about.ip_options.len()
        } else {
            40
        };
        ip + 8
    }

    pub fn build(&self) -> Vec<u8> {
        assert!(self.about.vlan.is_none(), "quoting a tagged frame");
        let offending = self.about.build();
        let mut quoted = offending[14..].to_vec();
        if let Some(n) = self.quote {
            quoted.truncate(n);
        }
        let v6 = self.src.is_ipv6();
        let (ty, code, rest) = self.kind.header(v6);
        let mut icmp = vec![ty, code, 0, 0];
        icmp.extend_from_slice(&rest);
        icmp.extend_from_slice(&quoted);

        // ICMPv6's checksum covers a pseudo-header, ICMP's does not.
        let (proto, pseudo) = if v6 {
            (58, sum(&pseudo_header(self.src, self.dst, 58, icmp.len())))
        } else {
            (1, 0)
        };
        let c = !fold(pseudo + sum(&icmp));
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let ip = IpFields {
            src: self.src,
            dst: self.dst,
            proto,
            // Linux sends errors with TOS 0xc0 (internetwork control).
            tos: 0xc0,
            id_frag: [0x56, 0x78, 0, 0],
        };
        ip.frame([0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01], &icmp)
    }
}

/// Big-endian one's-complement sum of `bytes`, unfolded.
fn sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn checksum(bytes: &[u8]) -> u16 {
    !fold(sum(bytes))
}

/// Where the source and destination of a built packet differ from
/// another's, for readable assertion messages.
pub fn diff(got: &[u8], want: &[u8]) -> String {
    if got.len() != want.len() {
        return format!("length {} != {}", got.len(), want.len());
    }
    got.iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| format!("@{i}: {a:02x} != {b:02x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_checksums_verify_to_zero() {
        // A correct checksum makes the sum over header + field all ones.
        let s = Spec::tcp("10.0.0.1:1234", "10.96.0.10:80");
        let pkt = s.build();
        let ip = &pkt[14..34];
        assert_eq!(fold(sum(ip)), 0xffff);
        let seg = &pkt[34..];
        assert_eq!(fold(sum(&s.pseudo_header(seg.len())) + sum(seg)), 0xffff);
    }

    #[test]
    fn refusals_verify_and_go_back_where_the_packet_came_from() {
        let syn = Spec {
            tcp_flags: SYN,
            ..Spec::tcp("10.0.0.1:1234", "10.96.0.10:80")
        };
        let rst = syn.reset();
        assert_eq!(rst.len(), 14 + 20 + 20);
        assert_eq!(&rst[0..6], &syn.build()[6..12], "back to the sender's MAC");
        assert_eq!(fold(sum(&rst[14..34])), 0xffff);
        let pseudo = pseudo_header(syn.dst.ip(), syn.src.ip(), TCP, 20);
        assert_eq!(fold(sum(&pseudo) + sum(&rst[34..])), 0xffff);
        // RST|ACK acknowledging the SYN and its 14 bytes of payload.
        assert_eq!(rst[47], RST | ACK);
        assert_eq!(&rst[42..46], &(0x0102_0304u32 + 15).to_be_bytes());

        let udp = Spec::udp("[2001:db8::2]:5353", "[fd00:96::10]:53");
        let icmp = udp.port_unreachable();
        assert_eq!(icmp.len(), 14 + 40 + 8 + 48);
        let pseudo = pseudo_header(udp.dst.ip(), udp.src.ip(), 58, 56);
        assert_eq!(fold(sum(&pseudo) + sum(&icmp[54..])), 0xffff);
        assert_eq!(&icmp[62..], &udp.build()[14..62], "quotes the request");
        let icmp4 = Spec::udp("10.0.0.1:5353", "10.96.0.10:53").port_unreachable();
        assert_eq!(fold(sum(&icmp4[34..])), 0xffff);
    }

    #[test]
    fn icmp_error_checksums_verify_to_zero() {
        for (src, dst, about) in [
            (
                "192.0.2.254",
                "10.0.0.1",
                Spec::udp("10.0.0.1:1234", "10.96.0.10:80"),
            ),
            (
                "2001:db8::fe",
                "fd00::1",
                Spec::tcp("[fd00::1]:1234", "[fd00::2]:80"),
            ),
        ] {
            let src: IpAddr = src.parse().unwrap();
            let dst: IpAddr = dst.parse().unwrap();
            for kind in IcmpKind::ALL {
                let pkt = IcmpError::new(kind, src, dst, about.clone()).build();
                let (ip, icmp) = if src.is_ipv4() {
                    assert_eq!(fold(sum(&pkt[14..34])), 0xffff);
                    (&pkt[14..34], &pkt[34..])
                } else {
                    (&pkt[14..54], &pkt[54..])
                };
                // The quote is the offending packet's IP packet, whole.
                assert_eq!(&icmp[8..], &about.build()[14..]);
                let pseudo = if src.is_ipv6() {
                    let mut p = ip[8..40].to_vec();
                    p.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
                    p.extend_from_slice(&[0, 0, 0, 58]);
                    sum(&p)
                } else {
                    0
                };
                assert_eq!(fold(pseudo + sum(icmp)), 0xffff, "{kind:?} from {src}");
            }
        }
    }

    #[test]
    fn known_ipv4_header_checksum() {
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr), 0xb861);
    }
}
