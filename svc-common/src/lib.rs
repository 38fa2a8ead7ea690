//! Types shared by the kernel programs (`svc-ebpf`) and the agent.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding fields, so
//! the layout is identical on both sides and no uninitialised byte ever
//! reaches a hash-map key (the kernel hashes all `key_size` bytes).
//!
//! Addresses are always 16 bytes: IPv4 is stored IPv4-mapped
//! (`::ffff:a.b.c.d`), so one set of maps and one code path serve both
//! families. Ports are stored in network byte order, exactly as they appear
//! in the packet, so the kernel never swaps bytes on the hot path.
#![no_std]

pub mod csum;
pub mod maps;

pub use maps::*;
