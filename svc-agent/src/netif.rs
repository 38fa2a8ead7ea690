//! The network interfaces of the agent's namespace (through libc, which
//! asks the kernel over netlink, so it is right inside `ip netns exec`).
use std::{collections::BTreeMap, ffi::CStr, net::IpAddr};

/// Interface name -> index.
pub fn list() -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry,
    // freed below with if_freenameindex.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return out;
        }
        let mut p = head;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = CStr::from_ptr((*p).if_name).to_string_lossy().into_owned();
            out.insert(name, (*p).if_index);
            p = p.add(1);
        }
        libc::if_freenameindex(head);
    }
    out
}

/// The global (not link-local, not loopback) addresses of `interfaces`.
pub fn addresses(interfaces: &[String]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs fills a linked list freed with freeifaddrs; each
    // ifa_addr is read according to its sa_family.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let ifa = &*p;
            p = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            let name = CStr::from_ptr(ifa.ifa_name).to_string_lossy();
            if !interfaces.iter().any(|i| glob_match(i, &name)) {
                continue;
            }
            let ip = match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes())
                }
                libc::AF_INET6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::from(sa.sin6_addr.s6_addr)
                }
                _ => continue,
            };
            let link_local = matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local());
            if !ip.is_loopback() && !link_local && !out.contains(&ip) {
                out.push(ip);
            }
        }
        libc::freeifaddrs(head);
    }
    out
}

/// The index of interface `name`, if it exists.
pub fn index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid C string; returns 0 when there is no such interface.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Whether `iface` is a virtual device (veth, bridge, tun, ...), told by
/// its driver reporting no bus, as `ethtool -i` shows. Only virtual devices
/// hand XDP packets with partial checksums; physical NICs (virtio-net
/// included, which turns guest checksum offload off under XDP) never do.
pub fn is_virtual(iface: &str) -> std::io::Result<bool> {
    // struct ethtool_drvinfo, and the ifreq that points at it.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        counts: [u32; 5],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;

    // SAFETY: all-zero is valid for both structs (integers, bytes, null).
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req: IfReq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.name.len() {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    req.name[..name.len()].copy_from_slice(name);
    req.data = &mut info;
    // SAFETY: a datagram socket for the ioctl, closed below; the ioctl
    // writes at most sizeof(DrvInfo) into `info`.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL as _, &mut req);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            // No ethtool at all (loopback, some tunnels): not a NIC either.
            return match err.raw_os_error() {
                Some(libc::EOPNOTSUPP) => Ok(true),
                _ => Err(err),
            };
        }
    }
    Ok(info.bus_info[0] == 0)
}

/// Lets `iface` accept IPv4 packets whose source is a local address. The
/// reply to a NodePort connection is reverse-NATed by tc on the backend's
/// veth to come *from the node's own address*, before routing; without
/// this, routing drops it as a martian (iptables-based proxies undo their
/// DNAT after routing instead).
pub fn accept_local_source(iface: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/net/ipv4/conf/{iface}/accept_local"), "1")
}

/// Shell-style glob: `*` any run of characters, `?` any one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("veth*", "veth1234"));
        assert!(glob_match("vpod?", "vpod7"));
        assert!(glob_match("eth0", "eth0"));
        assert!(!glob_match("veth*", "eth0"));
        assert!(!glob_match("vpod?", "vpod10"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn loopback_is_virtual() {
        assert!(is_virtual("lo").unwrap());
        assert_eq!(index("lo"), list().get("lo").copied());
        assert!(index("no-such-if0").is_none());
    }

    #[test]
    fn loopback_is_listed() {
        assert!(list().contains_key("lo"));
        assert!(
            addresses(&["lo".into()]).is_empty(),
            "loopback is not a node address"
        );
    }
}
