//! Internet checksum arithmetic (RFC 1071, RFC 1624), shared by the XDP
//! program and the tests that check it.
//!
//! Words are 16-bit values read from packet bytes in *native* byte order and
//! written back the same way: the one's-complement sum is independent of
//! byte order (RFC 1071, section 2(B)), so nothing here ever swaps bytes.
//!
//! Two kinds of L4 checksum field reach a translator:
//! * a full checksum, `~fold(pseudo-header + L4 bytes)`, updated with
//!   RFC 1624 equation 3: `HC' = ~(~HC + ~m + m')`;
//! * a partial one (`CHECKSUM_PARTIAL`, from a local socket over a veth):
//!   the field holds `fold(pseudo-header)` uncomplemented and the rest is
//!   summed later, so only pseudo-header changes (addresses) may be added,
//!   as `P' = P + ~m + m'`, and port changes must not be.

/// Folds a 32-bit one's-complement accumulator to 16 bits. Two folds always
/// suffice for a `u32` (the first leaves at most `0x1fffe`).
#[inline(always)]
pub const fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// One 16-bit word from two bytes, in native order (see module docs).
#[inline(always)]
pub const fn word(b0: u8, b1: u8) -> u16 {
    u16::from_ne_bytes([b0, b1])
}

/// An accumulated difference `sum(~m + m')` over replaced words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Diff(u32);

impl Diff {
    pub const fn new() -> Self {
        Self(0)
    }

    /// Records that word `old` becomes `new`.
    #[inline(always)]
    pub const fn word(self, old: u16, new: u16) -> Self {
        // At most ~40 words are ever recorded (an ICMPv6 error's quoted
        // and outer addresses), so a u32 cannot overflow.
        Self(self.0 + (!old) as u32 + new as u32)
    }

    /// Records that the first `N` bytes (`N` even) change from `old` to `new`.
    #[inline(always)]
    pub fn bytes<const N: usize>(self, old: &[u8; N], new: &[u8; N]) -> Self {
        let mut d = self;
        let mut i = 0;
        while i + 1 < N {
            d = d.word(word(old[i], old[i + 1]), word(new[i], new[i + 1]));
            i += 2;
        }
        d
    }

    /// Both differences together.
    #[inline(always)]
    pub const fn add(self, other: Diff) -> Self {
        Self(self.0 + other.0)
    }

    /// The difference as a 32-bit one's-complement sum (folded), what the
    /// kernel's checksum helpers take as a precomputed difference.
    #[inline(always)]
    pub const fn value(self) -> u32 {
        fold(self.0) as u32
    }

    /// Applies the difference to a full checksum field (RFC 1624 eqn. 3).
    #[inline(always)]
    pub const fn apply_full(self, check: u16) -> u16 {
        !fold((!check) as u32 + fold(self.0) as u32)
    }

    /// Applies the difference to a partial (pseudo-header only) field.
    #[inline(always)]
    pub const fn apply_partial(self, check: u16) -> u16 {
        fold(check as u32 + fold(self.0) as u32)
    }
}

/// One's-complement sum of the TCP/UDP pseudo-header, folded, not
/// complemented: what Linux leaves in the field of a `CHECKSUM_PARTIAL`
/// packet. `N` is 4 (IPv4) or 16 (IPv6) address bytes.
#[inline(always)]
pub fn pseudo_header<const N: usize>(src: &[u8; N], dst: &[u8; N], proto: u8, l4_len: u16) -> u16 {
    let len = l4_len.to_be_bytes();
    let mut acc = word(0, proto) as u32 + word(len[0], len[1]) as u32;
    let mut i = 0;
    while i + 1 < N {
        acc += word(src[i], src[i + 1]) as u32 + word(dst[i], dst[i + 1]) as u32;
        i += 2;
    }
    fold(acc)
}

/// One's-complement sum of `bytes` (odd length padded with a zero byte),
/// folded. For host-side code and tests; the kernel side only ever updates.
pub fn sum(bytes: &[u8]) -> u16 {
    let (pairs, rest) = bytes.as_chunks::<2>();
    let mut acc: u64 = pairs.iter().map(|&[a, b]| word(a, b) as u64).sum();
    if let [last] = rest {
        acc += word(*last, 0) as u64;
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// A full checksum of `bytes`, as written in an IPv4 header.
pub fn checksum(bytes: &[u8]) -> u16 {
    !sum(bytes)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// A small deterministic generator, so the tests need no crate.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u8 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u8
        }
        fn bytes<const N: usize>(&mut self) -> [u8; N] {
            core::array::from_fn(|_| self.next())
        }
    }

    /// Full L4 checksum from scratch: ~(pseudo-header + segment), with the
    /// checksum field itself (at `field`) taken as zero.
    fn l4_full(src: &[u8], dst: &[u8], proto: u8, seg: &[u8], field: usize) -> u16 {
        let mut s = seg.to_vec();
        s[field] = 0;
        s[field + 1] = 0;
        // Pseudo-header built as bytes, independently of `pseudo_header`.
        let mut p = Vec::new();
        p.extend_from_slice(src);
        p.extend_from_slice(dst);
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        let total = fold(sum(&p) as u32 + sum(&s) as u32);
        !total
    }

    fn set(seg: &mut [u8], field: usize, v: u16) {
        seg[field..field + 2].copy_from_slice(&v.to_ne_bytes());
    }

    #[test]
    fn fold_handles_carries() {
        assert_eq!(fold(0x0001_ffff), 0x0001);
        assert_eq!(fold(0xffff_ffff), 0xffff);
        assert_eq!(fold(0), 0);
    }

    #[test]
    fn ipv4_header_checksum_matches_reference() {
        // Example header from RFC 1071 discussions (checksum 0xb861).
        let hdr: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr).to_ne_bytes(), [0xb8, 0x61]);
    }

    #[test]
    fn full_update_equals_recomputation_v4_and_v6() {
        let mut rng = Lcg(7);
        for round in 0..2000 {
            let v6 = round % 2 == 1;
            let alen = if v6 { 16 } else { 4 };
            let src: [u8; 16] = rng.bytes();
            let dst: [u8; 16] = rng.bytes();
            let new_dst: [u8; 16] = rng.bytes();
            let len = 20 + (rng.next() as usize % 64);
            let mut seg: Vec<u8> = (0..len).map(|_| rng.next()).collect();
            let field = 16; // TCP checksum offset
            let before = l4_full(&src[..alen], &dst[..alen], 6, &seg, field);
            set(&mut seg, field, before);
            // DNAT: destination address and port change.
            let old_port = [seg[2], seg[3]];
            let new_port: [u8; 2] = rng.bytes();
            seg[2..4].copy_from_slice(&new_port);
            let mut old_a = [0u8; 16];
            let mut new_a = [0u8; 16];
            old_a[..alen].copy_from_slice(&dst[..alen]);
            new_a[..alen].copy_from_slice(&new_dst[..alen]);
            let d = Diff::new().bytes(&old_a, &new_a).word(
                word(old_port[0], old_port[1]),
                word(new_port[0], new_port[1]),
            );
            let updated = d.apply_full(before);
            let expect = l4_full(&src[..alen], &new_dst[..alen], 6, &seg, field);
            assert_eq!(updated, expect, "round {round}");
        }
    }

    #[test]
    fn partial_update_tracks_the_pseudo_header_only() {
        let mut rng = Lcg(11);
        for _ in 0..2000 {
            let src: [u8; 4] = rng.bytes();
            let dst: [u8; 4] = rng.bytes();
            let new_dst: [u8; 4] = rng.bytes();
            let len: u16 = 8 + rng.next() as u16;
            let p = pseudo_header(&src, &dst, 17, len);
            let updated = Diff::new().bytes(&dst, &new_dst).apply_partial(p);
            assert_eq!(updated, pseudo_header(&src, &new_dst, 17, len));
        }
    }
}
