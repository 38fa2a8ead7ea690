//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and
//! Reliable Software Network Load Balancer", NSDI 2016, section 3.4): how
//! a new flow picks its backend, so that adding or removing one of N
//! backends moves about 1/N of new flows and leaves the others where they
//! would have gone.
//!
//! Each frontend with a choice to make gets a lookup table of a prime size
//! M; the kernel indexes it with the flow's hash (`hash % M`) and finds a
//! slot number (`1..=N`, as in `SERVICES`). The table is filled from the
//! backends' own permutations of the M entries, taken in turns, so each
//! backend owns `floor(M/N)` or `ceil(M/N)` entries, and a backend joining
//! or leaving takes or frees entries while most of the others' stay put.
//!
//! Everything here depends on the backends' addresses and ports only, not
//! on their order, their ids or the node: every node builds the same table
//! for the same endpoints, so a flow that ECMP moves to another node still
//! meets the same backend there.
use std::net::SocketAddr;

use anyhow::{Result, bail};

/// How new flows pick their backend (`--load-balancing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadBalancing {
    /// A Maglev table of this many entries per frontend.
    Maglev(TableSize),
    /// Slot `1 + hash % N`: a change in N sends most new flows elsewhere.
    Hash,
}

impl Default for LoadBalancing {
    fn default() -> Self {
        LoadBalancing::Maglev(TableSize::DEFAULT)
    }
}

impl std::fmt::Display for LoadBalancing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadBalancing::Maglev(m) => write!(f, "Maglev tables of {m} entries"),
            LoadBalancing::Hash => f.write_str("hash modulo the backend count"),
        }
    }
}

impl LoadBalancing {
    pub fn table_size(self) -> Option<TableSize> {
        match self {
            LoadBalancing::Maglev(size) => Some(size),
            LoadBalancing::Hash => None,
        }
    }

    /// Whether a frontend with `backends` backends gets a table: only when
    /// there is a choice (two or more) and each backend can own an entry.
    pub fn has_table(self, backends: usize) -> bool {
        self.table_size()
            .is_some_and(|m| backends >= 2 && backends <= m.get() as usize)
    }
}

/// A table size: a prime (so that every skip below M walks all M entries),
/// at most `MAX`. Entries spread evenly when M is well above 100 times the
/// backend count (each backend then owns about M/N entries, give or take
/// one: within 1% of its share).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableSize(u32);

impl TableSize {
    /// Two kernel chunks (see `svc_common::MAGLEV_CHUNK_SLOTS`), nearly full:
    /// even for services of up to about ten backends.
    pub const DEFAULT: TableSize = TableSize(1021);
    /// The largest prime below 2^16: 128 KiB of table per frontend.
    pub const MAX: u32 = 65_521;

    pub fn new(size: u32) -> Result<Self> {
        if size > Self::MAX {
            bail!("a Maglev table size is at most {}, not {size}", Self::MAX);
        }
        if !is_prime(size) {
            bail!(
                "a Maglev table size must be a prime, such as 1021, 4093, 16381 or 65521; {size} is not"
            );
        }
        Ok(Self(size))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl std::str::FromStr for TableSize {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s.trim().parse()?)
    }
}

impl std::fmt::Display for TableSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The table for `backends` (slot k is `backends[k - 1]`): M slot numbers.
/// Callers give at least one backend (see `LoadBalancing::has_table`).
pub fn table(backends: &[SocketAddr], size: TableSize) -> Vec<u16> {
    let m = size.get();
    // Each backend's permutation of the entries: offset, offset + skip,
    // offset + 2 skip, ... (mod M). M prime and 0 < skip < M: all M.
    struct Walk {
        slot: u16,
        next: u32,
        skip: u32,
    }
    impl Walk {
        /// `next = (next + skip) % m`, without a division (the fill's
        /// inner loop; next and skip are both below m).
        fn step(&mut self, m: u32) {
            self.next += self.skip;
            if self.next >= m {
                self.next -= m;
            }
        }
    }
    let mut walks: Vec<(Vec<u8>, Walk)> = backends
        .iter()
        .zip(1u16..)
        .map(|(addr, slot)| {
            let id = identity(addr);
            let offset = (hash(&id, OFFSET_SEED) % u64::from(m)) as u32;
            let skip = (hash(&id, SKIP_SEED) % u64::from(m - 1)) as u32 + 1;
            let walk = Walk {
                slot,
                next: offset,
                skip,
            };
            (id, walk)
        })
        .collect();
    // Turns are taken in the order of the backends' identities, not their
    // slots, so the table does not depend on how the slots are ordered.
    walks.sort_by(|a, b| a.0.cmp(&b.0));

    let mut entries = vec![0u16; m as usize];
    let mut filled = 0;
    'fill: loop {
        for (_, w) in &mut walks {
            // The backend's next preferred entry still free (one exists
            // within M steps, since its walk covers every entry).
            while entries[w.next as usize] != 0 {
                w.step(m);
            }
            entries[w.next as usize] = w.slot;
            w.step(m);
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    entries
}

/// What a backend is, for the table: its address (IPv4-mapped) and port,
/// as the maps store them.
fn identity(addr: &SocketAddr) -> Vec<u8> {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    let mut id = ip.octets().to_vec();
    id.extend_from_slice(&addr.port().to_be_bytes());
    id
}

const OFFSET_SEED: u64 = 0x6f66_6673_6574_0000; // "offset"
const SKIP_SEED: u64 = 0x736b_6970_0000_0000; // "skip"

/// FNV-1a from a seeded basis, then murmur3's 64-bit finaliser so that
/// every input bit reaches every output bit. Written out (not std's
/// hasher, whose output may change between releases): every node and
/// every agent version must build the same tables.
fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 244, (i / 200) as u8, (i % 200) as u8 + 1], 8080)))
            .collect()
    }

    /// Which backend each entry names.
    fn owners(backends: &[SocketAddr], table: &[u16]) -> Vec<SocketAddr> {
        table
            .iter()
            .map(|&s| backends[usize::from(s) - 1])
            .collect()
    }

    fn size(m: u32) -> TableSize {
        TableSize::new(m).unwrap()
    }

    /// Share of the entries whose backend differs, and of those of
    /// backends in both sets.
    fn moved(before: &[SocketAddr], after: &[SocketAddr], both: &[SocketAddr]) -> (f64, f64) {
        let m = before.len() as f64;
        let changed = before.iter().zip(after).filter(|(a, b)| a != b);
        let all = changed.clone().count() as f64 / m;
        let kept = changed.filter(|(a, _)| both.contains(a)).count() as f64 / m;
        (all, kept)
    }

    #[test]
    fn each_backend_owns_its_share_give_or_take_one() {
        for (n, m) in [
            (1, 1021),
            (2, 1021),
            (3, 1021),
            (10, 1021),
            (100, 1021),
            (1021, 1021),
            (7, 65521),
            (1000, 65521),
        ] {
            let t = table(&backends(n), size(m));
            assert_eq!(t.len(), m as usize);
            let mut owned = vec![0u32; usize::from(n)];
            for &slot in &t {
                assert!((1..=n).contains(&slot), "slot {slot} of {n}");
                owned[usize::from(slot) - 1] += 1;
            }
            let (lo, hi) = (m / u32::from(n), m.div_ceil(u32::from(n)));
            assert!(
                owned.iter().all(|&k| (lo..=hi).contains(&k)),
                "n={n} m={m}: {owned:?}"
            );
        }
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth_and_the_others_stay() {
        // (n, m, bound on the survivors' entries that move): the bigger
        // M is against N, the fewer (the paper's trade-off).
        for (n, m, survivors_max) in [(3, 1021, 0.02), (10, 1021, 0.05), (10, 65521, 0.01)] {
            let all = backends(n);
            let before = owners(&all, &table(&all, size(m)));
            for gone in 0..usize::from(n) {
                let mut rest = all.clone();
                rest.remove(gone);
                let after = owners(&rest, &table(&rest, size(m)));
                let (moved, of_survivors) = moved(&before, &after, &rest);
                // Every entry of the one that left moves, and few others.
                let share = 1.0 / f64::from(n);
                assert!(
                    moved >= share * 0.9 && moved <= share + survivors_max,
                    "n={n} m={m} -{gone}: {moved:.4} moved"
                );
                assert!(
                    of_survivors <= survivors_max,
                    "n={n} m={m} -{gone}: {of_survivors:.4} of survivors' entries moved"
                );
            }
        }
    }

    #[test]
    fn adding_one_to_n_moves_about_one_in_n_plus_one() {
        for (n, m, others_max) in [(3, 1021, 0.02), (10, 1021, 0.05), (10, 65521, 0.01)] {
            let old = backends(n);
            let before = owners(&old, &table(&old, size(m)));
            let joining: SocketAddr = "10.245.0.1:8080".parse().unwrap();
            let mut new = old.clone();
            new.insert(0, joining);
            let after = owners(&new, &table(&new, size(m)));
            let (moved, _) = moved(&before, &after, &old);
            // Entries that went to one of the old backends, not the new.
            let among_old = before
                .iter()
                .zip(&after)
                .filter(|(a, b)| a != b && **b != joining)
                .count() as f64
                / f64::from(m);
            let share = 1.0 / f64::from(n + 1);
            assert!(
                moved >= share * 0.9 && moved <= share + others_max,
                "n={n} m={m}: {moved:.4} moved"
            );
            assert!(among_old <= others_max, "n={n} m={m}: {among_old:.4}");
        }
    }

    #[test]
    fn the_table_depends_on_the_backends_not_their_slots() {
        let b = backends(10);
        let mut reversed = b.clone();
        reversed.reverse();
        assert_eq!(
            owners(&b, &table(&b, size(1021))),
            owners(&reversed, &table(&reversed, size(1021)))
        );
    }

    #[test]
    fn every_node_and_version_builds_the_same_table() {
        // Pinned: a change here changes which backend every node picks.
        let b: Vec<SocketAddr> = ["10.244.1.21:8080", "10.244.1.22:8080", "[fd00::1]:80"]
            .map(|a| a.parse().unwrap())
            .to_vec();
        assert_eq!(table(&b, size(13)), [1, 1, 3, 1, 2, 3, 1, 2, 2, 1, 3, 3, 2]);
    }

    #[test]
    fn table_sizes_are_primes_up_to_the_maximum() {
        for ok in [2, 13, 1021, 4093, 16381, 65521] {
            assert_eq!(TableSize::new(ok).unwrap().get(), ok);
        }
        for bad in [0, 1, 1000, 1024, 65535, 65537, 131071] {
            assert!(TableSize::new(bad).is_err(), "{bad}");
        }
        assert_eq!("1021".parse::<TableSize>().unwrap(), TableSize::DEFAULT);
        assert!("many".parse::<TableSize>().is_err());
    }

    #[test]
    fn only_frontends_with_a_choice_get_a_table() {
        let lb = LoadBalancing::Maglev(size(13));
        assert!(!lb.has_table(0) && !lb.has_table(1));
        assert!(lb.has_table(2) && lb.has_table(13));
        // More backends than entries: some would own none.
        assert!(!lb.has_table(14));
        assert!(!LoadBalancing::Hash.has_table(10));
    }
}
