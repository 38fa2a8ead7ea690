//! Calibration for `cargo xtask bench`: the empty programs plus one hit in
//! a map shaped like `CONNTRACK` (same key, value and map type), the floor
//! of the real programs' per-packet work. An object of its own: the empty
//! one must stay map-free (the sandbox attaches it with iproute2).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, map, xdp},
    maps::LruHashMap,
    programs::{TcContext, XdpContext},
};
use svc_common::{FlowKey, NatEntry};

#[map]
static CALIBRATION_CT: LruHashMap<FlowKey, NatEntry> = LruHashMap::with_max_entries(1024, 0);

/// A miss on the first run inserts the key; every repeat after that is a
/// hit, as an established flow's lookup is.
#[inline(always)]
fn one_lookup() {
    let key = FlowKey::default();
    if CALIBRATION_CT.get_ptr(&key).is_none() {
        let _ = CALIBRATION_CT.insert(&key, &NatEntry::default(), 0);
    }
}

#[xdp]
pub fn baseline_xdp_lookup(_ctx: XdpContext) -> u32 {
    one_lookup();
    xdp_action::XDP_PASS
}

#[classifier]
pub fn baseline_tc_lookup(_ctx: TcContext) -> i32 {
    one_lookup();
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
