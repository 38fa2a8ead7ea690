//! Socket-level load balancing for the node's own processes (hostNetwork
//! pods, kubelet probes, node daemons): their packets never cross XDP or
//! the pod veths' tcx hook, so the translation happens on the socket, in
//! cgroup v2 hooks, before the kernel routes anything.
//!
//! * `connect4/6`, `sendmsg4/6` (unconnected UDP): a frontend (a service
//!   IP, a NodePort on a node address or on loopback, a load-balancer IP,
//!   an externalIP) becomes one of its backends, chosen from the same
//!   `SERVICES` slots the packet programs use, picked the same way
//!   (`lb::pick_backend`: the frontend's Maglev table, or `1 + hash %
//!   count`) with the hash of the socket cookie and the frontend (one
//!   socket keeps one backend per frontend while the set is unchanged), or
//!   the client's recent backend under `sessionAffinity: ClientIP`. A frontend without
//!   backends refuses: `connect`/`sendmsg` fail with `ECONNREFUSED`
//!   (`bpf_set_retval(-ECONNREFUSED)`, then "reject": the kernel keeps an
//!   error a program set instead of its default EPERM), as kube-proxy's
//!   REJECT rule makes them. A client outside `loadBalancerSourceRanges`
//!   (the node's address, see `node_addr`) gets EPERM; a slot or backend
//!   missing mid-update, EHOSTUNREACH.
//! * Each translation is remembered in `SOCK_REVERSE` (socket cookie and
//!   backend → the address the application asked for), so `recvmsg4/6`
//!   (the source of a UDP reply) and `getpeername4/6` show the frontend,
//!   never the backend.
//!
//! Sockets of the node's network namespace are translated; pods' too if
//! the agent says so (`SOCK_LB_CONFIG`, `--socket-lb-scope all`), except
//! where a pod's socket cannot decide as the tcx path would: frontends
//! with affinity or source ranges (the pod's address, their key, is not
//! known at connect; the node's is), connected UDP (pinned for the
//! socket's life to a backend that may go, and the agent destroys such
//! sockets only in its own namespace: per packet, tcx moves the flow
//! itself), and loopback (a pod's own, not the node's). Those stay with
//! tcx. Connected UDP sockets of the node whose backend goes away are the
//! agent's business (it destroys them through `sock_diag`, so the
//! application sees `ECONNABORTED` and reconnects).
use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use core::ptr::{read_volatile, write_volatile};
use svc_common::{
    DropReason, NodePortKey, PROTO_TCP, PROTO_UDP, ServiceKey, ServiceValue, SockRevKey,
    SockRevValue, service_flags,
};

use crate::{
    lb::{self, count_drop},
    maps::{BACKENDS, NODE_PORTS, SERVICES, SNAT_CONFIG, SOCK_LB_CONFIG, SOCK_REVERSE},
};

/// What a cgroup hook returns: go on (with the address as the program left
/// it), or fail the syscall (with `bpf_set_retval`'s error, else EPERM).
const PROCEED: i32 = 1;
const REJECT: i32 = 0;

const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;
const EPERM: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn svc_connect4(ctx: SockAddrContext) -> i32 {
    forward(&ctx, false, true)
}

#[cgroup_sock_addr(connect6)]
pub fn svc_connect6(ctx: SockAddrContext) -> i32 {
    forward(&ctx, true, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn svc_sendmsg4(ctx: SockAddrContext) -> i32 {
    forward(&ctx, false, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn svc_sendmsg6(ctx: SockAddrContext) -> i32 {
    forward(&ctx, true, false)
}

/// Whose socket a hook runs for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Not one the hooks translate.
    Out,
    /// The node's own network namespace.
    Node,
    /// Another one (a pod's), with `--socket-lb-scope all`.
    Pod,
}

#[cgroup_sock_addr(recvmsg4)]
pub fn svc_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, false)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn svc_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, true)
}

#[cgroup_sock_addr(getpeername4)]
pub fn svc_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, false)
}

#[cgroup_sock_addr(getpeername6)]
pub fn svc_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, true)
}

/// `connect` and `sendmsg`: a frontend becomes a backend.
#[inline(always)]
fn forward(ctx: &SockAddrContext, v6: bool, connect: bool) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY (every ctx access): the kernel hands a valid bpf_sock_addr;
    // the verifier rewrites each field access into the real one.
    let proto = unsafe { read_volatile(&raw const (*sa).protocol) };
    if proto != u32::from(PROTO_TCP) && proto != u32::from(PROTO_UDP) {
        return PROCEED;
    }
    let proto = proto as u8;
    let scope = scope(ctx);
    if scope == Scope::Out {
        return PROCEED;
    }
    let (dst, port) = read_addr(sa, v6);
    if scope == Scope::Pod && is_loopback(&dst) {
        return PROCEED;
    }
    let Some((frontend, svc)) = lookup_frontend(&dst, port, proto) else {
        return PROCEED;
    };
    // What only the packet path gets right for a pod (see the top).
    let per_packet = service_flags::AFFINITY | service_flags::SOURCE_RANGES;
    if scope == Scope::Pod && (svc.flags & per_packet != 0 || (connect && proto == PROTO_UDP)) {
        return PROCEED;
    }
    if svc.backend_count == 0 {
        count_drop(DropReason::Rejected);
        return reject(ECONNREFUSED);
    }
    let v4_frontend = is_v4_mapped(&frontend.addr);
    let client = node_addr(v4_frontend);
    if svc.flags & service_flags::SOURCE_RANGES != 0 && !lb::source_allowed(svc.service_id, &client)
    {
        count_drop(DropReason::SourceRangeDenied);
        return reject(EPERM);
    }
    // SAFETY: a helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(backend_id) = choose_backend(&frontend, &svc, &client, cookie) else {
        count_drop(DropReason::MissingBackend);
        return reject(EHOSTUNREACH);
    };
    // SAFETY: plain integers; a racing update gives a stale but whole value.
    let Some(backend) = (unsafe { BACKENDS.get(&backend_id) }) else {
        count_drop(DropReason::MissingBackend);
        return reject(EHOSTUNREACH);
    };
    let (addr, bport) = (backend.addr, backend.port);
    // An IPv4 socket can only be sent to an IPv4 backend (a v4 frontend
    // never has another kind; this is the verifier-visible guarantee).
    if !v6 && !is_v4_mapped(&addr) {
        return PROCEED;
    }
    let key = SockRevKey {
        cookie,
        addr,
        port: bport,
        _pad: [0; 6],
    };
    let value = SockRevValue {
        addr: dst,
        port,
        _pad: 0,
        service_id: svc.service_id,
    };
    // Best effort: without it only getpeername/recvmsg show the backend.
    let _ = SOCK_REVERSE.insert(&key, &value, 0);
    write_addr(sa, v6, &addr, bport);
    PROCEED
}

/// `recvmsg` (a UDP datagram's source) and `getpeername`: a backend this
/// socket was sent to in a frontend's place shows as that frontend.
#[inline(always)]
fn reverse(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    let (addr, port) = read_addr(sa, v6);
    // SAFETY: a helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevKey {
        cookie,
        addr,
        port,
        _pad: [0; 6],
    };
    // SAFETY: plain integers.
    if let Some(orig) = unsafe { SOCK_REVERSE.get(&key) } {
        let (a, p) = (orig.addr, orig.port);
        if v6 || is_v4_mapped(&a) {
            write_addr(sa, v6, &a, p);
        }
    }
    // recvmsg and getpeername programs must return 1.
    PROCEED
}

/// Whose socket this is (a node's one until the agent has said which
/// namespace is the node's).
#[inline(always)]
fn scope(ctx: &SockAddrContext) -> Scope {
    let Some(cfg) = SOCK_LB_CONFIG.get(0) else {
        return Scope::Node;
    };
    // SAFETY: a helper on the program's own context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if cfg.node_netns_cookie == 0 || netns == cfg.node_netns_cookie {
        Scope::Node
    } else if cfg.pods != 0 {
        Scope::Pod
    } else {
        Scope::Out
    }
}

/// The frontend (slot 0) for a destination: itself, or for a loopback
/// address the NodePort's node-address frontend of that family.
#[inline(always)]
fn lookup_frontend(dst: &[u8; 16], port: u16, proto: u8) -> Option<(ServiceKey, ServiceValue)> {
    let key = ServiceKey::new(*dst, port, proto, 0);
    // SAFETY: plain integers.
    if let Some(svc) = unsafe { SERVICES.get(&key) } {
        return Some((key, *svc));
    }
    if !is_loopback(dst) {
        return None;
    }
    let np = NodePortKey {
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: plain integers.
    let target = unsafe { NODE_PORTS.get(&np) }?;
    let addr = if is_v4_mapped(dst) {
        target.addr_v4
    } else {
        target.addr_v6
    };
    if addr == [0; 16] {
        return None;
    }
    let key = ServiceKey::new(addr, port, proto, 0);
    // SAFETY: plain integers.
    let svc = *unsafe { SERVICES.get(&key) }?;
    if svc.flags & service_flags::NODE_PORT == 0 {
        return None;
    }
    Some((key, svc))
}

/// The backend of a new socket (or datagram): the packet programs' choice,
/// with the slot the socket's cookie hashes to.
#[inline(always)]
fn choose_backend(
    frontend: &ServiceKey,
    svc: &ServiceValue,
    client: &[u8; 16],
    cookie: u64,
) -> Option<u32> {
    lb::pick_backend(frontend, svc, client, mix(cookie, svc.service_id))
}

/// The node's address of a family (from the SNAT settings, which the agent
/// keeps as the node's first address of each), as the client address of
/// node-local sockets: kube-proxy sees their packets leave from it.
#[inline(always)]
fn node_addr(v4: bool) -> [u8; 16] {
    match SNAT_CONFIG.get(0) {
        Some(cfg) if v4 => cfg.addr_v4,
        Some(cfg) => cfg.addr_v6,
        None => [0; 16],
    }
}

/// The murmur3 finaliser over the socket cookie and the service id.
#[inline(always)]
fn mix(cookie: u64, service_id: u32) -> u32 {
    let mut h = (cookie as u32) ^ ((cookie >> 32) as u32).rotate_left(16);
    h ^= service_id.wrapping_mul(0x9e37_79b1);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// `bpf_set_retval` makes the rejected syscall fail with `errno` instead
/// of the default EPERM (the kernel keeps an error value a program set).
#[inline(always)]
fn reject(errno: i32) -> i32 {
    // SAFETY: a helper with an integer argument.
    unsafe { bpf_set_retval(-errno) };
    REJECT
}

/// Byte by byte (no memcmp in BPF).
#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    zero_prefix(a, 10) && a[10] == 0xff && a[11] == 0xff
}

/// 127.0.0.0/8 (IPv4-mapped) or ::1.
#[inline(always)]
fn is_loopback(a: &[u8; 16]) -> bool {
    (is_v4_mapped(a) && a[12] == 127) || (zero_prefix(a, 15) && a[15] == 1)
}

/// Whether the first `n` (at most 16) bytes are zero.
#[inline(always)]
fn zero_prefix(a: &[u8; 16], n: usize) -> bool {
    let mut i = 0;
    while i < n && i < 16 {
        if a[i] != 0 {
            return false;
        }
        i += 1;
    }
    true
}

/// The context's address and port as the maps store them (IPv4-mapped;
/// port in network byte order). Every field is read as the 4-byte word the
/// verifier allows.
#[inline(always)]
fn read_addr(sa: *mut bpf_sock_addr, v6: bool) -> ([u8; 16], u16) {
    // SAFETY: see `forward`.
    unsafe {
        let port = read_volatile(&raw const (*sa).user_port) as u16;
        if v6 {
            let w0 = read_volatile(&raw const (*sa).user_ip6[0]).to_ne_bytes();
            let w1 = read_volatile(&raw const (*sa).user_ip6[1]).to_ne_bytes();
            let w2 = read_volatile(&raw const (*sa).user_ip6[2]).to_ne_bytes();
            let w3 = read_volatile(&raw const (*sa).user_ip6[3]).to_ne_bytes();
            (
                [
                    w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3], w2[0], w2[1], w2[2],
                    w2[3], w3[0], w3[1], w3[2], w3[3],
                ],
                port,
            )
        } else {
            let w = read_volatile(&raw const (*sa).user_ip4).to_ne_bytes();
            (svc_common::ipv4_mapped(w), port)
        }
    }
}

/// Writes an address and port (as the maps store them) into the context.
/// For an IPv4 hook the address must be IPv4-mapped (callers check).
#[inline(always)]
fn write_addr(sa: *mut bpf_sock_addr, v6: bool, a: &[u8; 16], port: u16) {
    // SAFETY: see `forward`; 4-byte writes, as the verifier requires.
    unsafe {
        if v6 {
            write_volatile(
                &raw mut (*sa).user_ip6[0],
                u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            );
            write_volatile(
                &raw mut (*sa).user_ip6[1],
                u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            );
            write_volatile(
                &raw mut (*sa).user_ip6[2],
                u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            );
            write_volatile(
                &raw mut (*sa).user_ip6[3],
                u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
            );
        } else {
            write_volatile(
                &raw mut (*sa).user_ip4,
                u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
            );
        }
        write_volatile(&raw mut (*sa).user_port, u32::from(port));
    }
}
