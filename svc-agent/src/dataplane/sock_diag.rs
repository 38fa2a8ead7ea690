//! Connected UDP sockets of this network namespace, listed and destroyed
//! through `NETLINK_SOCK_DIAG` (what `ss -K` does; the kernel needs
//! `CONFIG_INET_DIAG_DESTROY`, and the caller `CAP_NET_ADMIN`).
//!
//! The socket hooks turn a UDP `connect()` to a frontend into a connection
//! to one backend, for the socket's whole life: unlike a packet flow, it
//! cannot be moved. When that backend leaves the frontend, the agent
//! destroys such sockets: the kernel aborts them (`udp_abort`: the next
//! `recv`/`send` fails with `ECONNABORTED` and the socket is disconnected),
//! so the application connects again, to a backend that exists, instead of
//! sending into the void.
use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    ptr::read_unaligned,
};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
/// A connected UDP socket's `sk_state`.
const TCP_ESTABLISHED: u32 = 1;
const IPPROTO_UDP: u8 = 17;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    ty: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InetDiagSockId {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub ifindex: u32,
    pub cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// `struct inet_diag_msg`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

const _: () = assert!(size_of::<NlMsgHdr>() == 16);
const _: () = assert!(size_of::<InetDiagSockId>() == 48);
const _: () = assert!(size_of::<InetDiagReqV2>() == 56);
const _: () = assert!(size_of::<InetDiagMsg>() == 72);

/// A connected UDP socket.
#[derive(Clone, Copy, Debug)]
pub struct UdpSocket {
    family: u8,
    id: InetDiagSockId,
}

impl UdpSocket {
    /// The peer's address as the maps store it (IPv4-mapped for IPv4).
    pub fn peer(&self) -> [u8; 16] {
        if i32::from(self.family) == libc::AF_INET {
            let d = self.id.dst;
            svc_common::ipv4_mapped([d[0], d[1], d[2], d[3]])
        } else {
            self.id.dst
        }
    }

    /// The peer's port, network byte order (as the maps store it).
    pub fn peer_port(&self) -> u16 {
        u16::from_ne_bytes(self.id.dport)
    }

    /// The socket cookie (`bpf_get_socket_cookie`'s).
    pub fn cookie(&self) -> u64 {
        u64::from(self.id.cookie[0]) | (u64::from(self.id.cookie[1]) << 32)
    }
}

/// Every connected UDP socket (IPv4 and IPv6) of this network namespace.
pub fn connected_udp() -> io::Result<Vec<UdpSocket>> {
    let nl = open()?;
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let req = InetDiagReqV2 {
            family,
            protocol: IPPROTO_UDP,
            states: 1 << TCP_ESTABLISHED,
            ..InetDiagReqV2::default()
        };
        send(&nl, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, &req)?;
        receive(&nl, |ty, payload| {
            if ty == SOCK_DIAG_BY_FAMILY && payload.len() >= size_of::<InetDiagMsg>() {
                // SAFETY: the payload holds at least one inet_diag_msg.
                let msg: InetDiagMsg = unsafe { read_unaligned(payload.as_ptr().cast()) };
                out.push(UdpSocket {
                    family: msg.family,
                    id: msg.id,
                });
            }
        })?;
    }
    Ok(out)
}

/// Destroys one socket; one that is already gone is no error.
pub fn destroy(sock: &UdpSocket) -> io::Result<()> {
    let nl = open()?;
    let req = InetDiagReqV2 {
        family: sock.family,
        protocol: IPPROTO_UDP,
        states: u32::MAX,
        id: sock.id,
        ..InetDiagReqV2::default()
    };
    send(&nl, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, &req)?;
    match receive(&nl, |_, _| {}) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

fn open() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(nl: &OwnedFd, ty: u16, flags: u16, req: &InetDiagReqV2) -> io::Result<()> {
    #[repr(C)]
    struct Msg {
        hdr: NlMsgHdr,
        req: InetDiagReqV2,
    }
    let msg = Msg {
        hdr: NlMsgHdr {
            len: size_of::<Msg>() as u32,
            ty,
            flags,
            seq: 1,
            pid: 0,
        },
        req: *req,
    };
    // SAFETY: sends the bytes of a repr(C) struct without padding; an
    // unconnected netlink socket sends to the kernel.
    let n = unsafe { libc::send(nl.as_raw_fd(), (&raw const msg).cast(), size_of::<Msg>(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads answers until the end of a dump or an acknowledgement, handing
/// each message's type and payload to `each`; an error answer is returned.
fn receive(nl: &OwnedFd, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: reads into our buffer, within its length.
        let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let data = &buf[..n as usize];
        let mut off = 0;
        while off + size_of::<NlMsgHdr>() <= data.len() {
            // SAFETY: a whole header lies at `off` (checked above).
            let hdr: NlMsgHdr = unsafe { read_unaligned(data[off..].as_ptr().cast()) };
            let len = hdr.len as usize;
            if len < size_of::<NlMsgHdr>() || off + len > data.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink message",
                ));
            }
            let payload = &data[off + size_of::<NlMsgHdr>()..off + len];
            match hdr.ty {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let code = payload
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
                ty => each(ty, payload),
            }
            off += (len + 3) & !3;
        }
    }
}
