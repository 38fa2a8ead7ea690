//! Routing again an ICMP error the node itself sent, caught at tcx egress,
//! whose translation gave it another destination. The node raises errors
//! about the packets it forwards towards their source address, which for a
//! reply is the frontend (reverse NAT happened before routing): the stack
//! routed the error towards the frontend (the default route, as a rule),
//! while it now belongs to the backend. A FIB lookup finds the backend's
//! interface, and the neighbour subsystem its link-layer address.
use core::{
    mem::{size_of, zeroed},
    ptr::{null_mut, read_unaligned},
};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        __sk_buff, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_SHOT, bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};

use crate::packet::{Flow, ptr_at, words};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

// A subprogram of its own: the lookup's 64-byte parameters stay in its
// frame, not in the program's.
/// Sends the packet (`flow`: where its headers are) out of the interface
/// its new destination is routed through; drops it if there is none.
#[inline(never)]
pub fn redirect(ctx: &TcContext, flow: &Flow) -> i32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    // SAFETY: an all-integer C struct, valid when zeroed.
    let mut params: bpf_fib_lookup = unsafe { zeroed() };
    params.l4_protocol = flow.proto;
    // As if it arrived on the interface it was leaving by (the node
    // forwards, so the lookup is allowed there).
    // SAFETY: the program's context is an __sk_buff.
    params.ifindex = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex };
    // The addresses as they are now, read back from the packet.
    // SAFETY (both arms): ptr_at checked the bounds.
    if flow.is_v6 {
        let (Some(src), Some(dst)) = (
            ptr_at::<[u8; 16]>(data, end, flow.addr_off(false)),
            ptr_at::<[u8; 16]>(data, end, flow.addr_off(true)),
        ) else {
            return TC_ACT_SHOT;
        };
        params.family = AF_INET6;
        unsafe {
            params.__bindgen_anon_3.ipv6_src = words(&read_unaligned(src));
            params.__bindgen_anon_4.ipv6_dst = words(&read_unaligned(dst));
        }
    } else {
        let (Some(src), Some(dst)) = (
            ptr_at::<u32>(data, end, flow.addr_off(false)),
            ptr_at::<u32>(data, end, flow.addr_off(true)),
        ) else {
            return TC_ACT_SHOT;
        };
        params.family = AF_INET;
        unsafe {
            params.__bindgen_anon_3.ipv4_src = read_unaligned(src);
            params.__bindgen_anon_4.ipv4_dst = read_unaligned(dst);
        }
    }
    // SAFETY: ctx is the program's context; params a valid local.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    // Without a neighbour entry yet, the redirect resolves it.
    let routed =
        rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) || rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH);
    if !routed {
        return TC_ACT_SHOT;
    }
    // SAFETY: no parameters: the helper looks up the next hop itself.
    unsafe { bpf_redirect_neigh(params.ifindex, null_mut(), 0, 0) as i32 }
}
