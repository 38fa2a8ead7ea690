//! The service network the API server is configured with: its service CIDRs
//! and nodePort range, and the address arithmetic allocation needs.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
    str::FromStr,
};

use anyhow::{Context as _, Result, anyhow, bail};

/// The service network: one or two CIDRs (at most one per family, first is
/// the primary family) and the nodePort range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceNetwork {
    pub cidrs: Vec<Cidr>,
    pub node_ports: RangeInclusive<u16>,
}

impl ServiceNetwork {
    /// Checks what the API server checks of its flags: one or two CIDRs, of
    /// different families, and a non-empty nodePort range.
    pub fn new(cidrs: Vec<Cidr>, node_ports: RangeInclusive<u16>) -> Result<Self> {
        match cidrs.as_slice() {
            [_] => {}
            [a, b] if a.family() != b.family() => {}
            [_, _] => bail!(
                "service CIDRs {} and {} are of the same family",
                cidrs[0],
                cidrs[1]
            ),
            _ => bail!("expected one or two service CIDRs, got {}", cidrs.len()),
        }
        if node_ports.is_empty() {
            bail!("empty nodePort range");
        }
        Ok(Self { cidrs, node_ports })
    }

    pub(super) fn cidr(&self, family: Family) -> Option<&Cidr> {
        self.cidrs.iter().find(|c| c.family() == family)
    }

    pub(super) fn primary(&self) -> Family {
        self.cidrs.first().map_or(Family::V4, Cidr::family)
    }

    pub(super) fn dual_stack(&self) -> bool {
        self.cidr(Family::V4).is_some() && self.cidr(Family::V6).is_some()
    }

    /// As `net.PortRange` prints it.
    pub(super) fn port_range(&self) -> String {
        format!("{}-{}", self.node_ports.start(), self.node_ports.end())
    }

    pub(super) fn port_in_range(&self, port: i32) -> bool {
        u16::try_from(port).is_ok_and(|p| self.node_ports.contains(&p))
    }
}

/// A CIDR, e.g. "10.96.0.0/16" or "fd00:96::/112". Parsing masks the host
/// bits, as Go's `ParseCIDR` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = ip.to_canonical();
        Family::of(&ip) == self.family() && number(&ip) & !self.host_mask() == self.network()
    }

    pub(super) fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    pub(super) fn host_mask(&self) -> u128 {
        let host_bits = self.family().bits() - u32::from(self.prefix);
        u128::MAX.checked_shr(128 - host_bits).unwrap_or(0)
    }

    fn network(&self) -> u128 {
        number(&self.addr) & !self.host_mask()
    }

    /// The addresses the allocator may hand out, as numbers: never the
    /// network address, nor IPv4's broadcast address (ipallocator.go).
    pub(super) fn usable(&self) -> Option<(u128, u128)> {
        let first = self.network().checked_add(1)?;
        let mut last = self.network() | self.host_mask();
        if self.family() == Family::V4 {
            last = last.checked_sub(1)?;
        }
        (first <= last).then_some((first, last))
    }

    pub(super) fn can_allocate(&self, ip: &IpAddr) -> bool {
        let n = number(&ip.to_canonical());
        self.contains(ip)
            && self
                .usable()
                .is_some_and(|(first, last)| (first..=last).contains(&n))
    }
}

impl FromStr for Cidr {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| anyhow!("{s:?}: expected ADDRESS/PREFIX"))?;
        let addr: IpAddr = addr
            .parse()
            .with_context(|| format!("{s:?}: bad address"))?;
        let prefix: u8 = prefix
            .parse()
            .with_context(|| format!("{s:?}: bad prefix length"))?;
        if u32::from(prefix) > Family::of(&addr).bits() {
            bail!("{s:?}: prefix length out of range");
        }
        let cidr = Cidr { addr, prefix };
        Ok(Cidr {
            addr: address(cidr.family(), cidr.network()),
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    pub(super) fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// An `ipFamilies` entry; None for a value the API server does not support.
    pub(super) fn parse(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }

    /// As `ipFamilies` and the API server's messages spell it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub(super) fn other(self) -> Self {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }

    fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// An address as a number, so that both families share the range arithmetic.
pub(super) fn number(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(*a).into(),
        IpAddr::V6(a) => u128::from(*a),
    }
}

/// The inverse of [`number`]; `n` must fit the family.
pub(super) fn address(family: Family, n: u128) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::from(n as u32).into(),
        Family::V6 => Ipv6Addr::from(n).into(),
    }
}

/// Parses an address as Go's `ParseIP` does as far as it matters here: an
/// IPv4-mapped IPv6 address is an IPv4 address.
pub(super) fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_display_contains() {
        let c: Cidr = "10.96.1.7/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.96.0.0/16");
        assert!(c.contains(&"10.96.255.255".parse().unwrap()));
        assert!(!c.contains(&"10.97.0.0".parse().unwrap()));
        assert!(!c.contains(&"fd00::1".parse().unwrap()));
        let c6: Cidr = "fd00:96::/112".parse().unwrap();
        assert_eq!(c6.to_string(), "fd00:96::/112");
        assert!(c6.contains(&"fd00:96::ffff".parse().unwrap()));
        assert!(!c6.contains(&"fd00:96::1:0".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains(&"1.2.3.4".parse().unwrap())
        );
        let err = ServiceNetwork::new(vec![c, "10.1.0.0/16".parse().unwrap()], 30000..=32767);
        assert!(err.is_err());
    }
}
