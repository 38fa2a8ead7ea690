//! Batched map operations: many entries per bpf(2) call instead of one
//! (or two, for iteration) per entry. aya 0.16 has no batch API, so this
//! module issues `BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH` and
//! `BPF_MAP_DELETE_BATCH` itself, on the fd of an aya [`HashMap`].
//!
//! Hash and LRU hash maps support all three (Linux 5.6 and later); LPM
//! tries support none, so those stay per key. Only the syscalls live
//! here: what to batch is the dataplane's business.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{HashMap, IterableMap as _, MapData},
};
use aya_obj::generated::bpf_cmd;

/// Entries read per `BPF_MAP_LOOKUP_BATCH` call: large enough that the
/// syscalls cost little, small enough that the buffers stay small (a
/// `MAGLEV` value is 1 KiB).
const LOOKUP_CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`. The kernel zero-fills what we
/// do not pass (we pass this struct's size), as the batch commands want.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const _: () =
    assert!(size_of::<BatchAttr>() == size_of::<aya_obj::generated::bpf_attr__bindgen_ty_3>());

/// Runs batch command `cmd`. Returns the kernel's `count` (how many
/// entries it handled, also on error) and the error, if any.
fn batch(cmd: bpf_cmd, attr: &mut BatchAttr) -> (usize, Option<io::Error>) {
    // SAFETY: `attr` is a valid `batch` attr of the size we pass; the
    // pointers in it are the callers' buffers, each sized for `count`
    // entries of the map's key and value sizes (checked by aya when the
    // typed `HashMap` was made), and the batch tokens for a key each.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    let err = (ret < 0).then(io::Error::last_os_error);
    (attr.count as usize, err)
}

fn map_fd<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> u32 {
    map.map().fd().as_fd().as_raw_fd() as u32
}

/// Hands every entry of `map` to `visit`, a batch (parallel slices of
/// keys and values) at a time. Entries added or removed meanwhile may or
/// may not be seen, as with a per-key iteration.
pub fn visit<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    mut visit: impl FnMut(&[K], &[V]),
) -> io::Result<()> {
    let mut chunk = LOOKUP_CHUNK;
    let mut keys: Vec<K> = Vec::with_capacity(chunk);
    let mut values: Vec<V> = Vec::with_capacity(chunk);
    // The position between calls: a bucket number for hash maps, but the
    // kernel may write up to a key's size.
    let token_len = size_of::<K>().max(size_of::<u64>());
    let (mut token_in, mut token_out) = (vec![0u8; token_len], vec![0u8; token_len]);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map_fd(map),
            ..BatchAttr::default()
        };
        let (count, err) = batch(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
        let done = match err {
            None => false,
            // The end: the entries of this last call still count.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // A bucket holds more entries than fit: try again, larger.
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && count == 0 => {
                chunk *= 2;
                keys.reserve(chunk);
                values.reserve(chunk);
                continue;
            }
            Some(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Some(e) => return Err(e),
        };
        let count = count.min(chunk);
        // SAFETY: the kernel wrote `count` keys and values (at most the
        // capacity it was given); every byte pattern is a valid `Pod`.
        unsafe {
            keys.set_len(count);
            values.set_len(count);
        }
        visit(&keys, &values);
        keys.clear();
        values.clear();
        if done {
            return Ok(());
        }
        std::mem::swap(&mut token_in, &mut token_out);
        first = false;
    }
}

/// Every entry of `map`.
pub fn entries<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> io::Result<Vec<(K, V)>> {
    let mut all = Vec::new();
    visit(map, |k, v| {
        all.extend(k.iter().copied().zip(v.iter().copied()))
    })?;
    Ok(all)
}

/// Every key of `map`.
pub fn keys<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> io::Result<Vec<K>> {
    let mut all = Vec::new();
    visit(map, |k, _| all.extend_from_slice(k))?;
    Ok(all)
}

/// A batch update that stopped: the first `written` entries are in the
/// map, the rest not.
#[derive(Debug)]
pub struct UpdateError {
    pub written: usize,
    pub error: io::Error,
}

impl std::fmt::Display for UpdateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.error.raw_os_error() == Some(libc::E2BIG) {
            write!(f, "map full after {} entries of the batch", self.written)
        } else {
            write!(
                f,
                "batch update stopped after {} entries: {}",
                self.written, self.error
            )
        }
    }
}

impl std::error::Error for UpdateError {}

/// Creates or replaces `keys[i]` with `values[i]`, in order.
pub fn update<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    keys: &[K],
    values: &[V],
) -> Result<(), UpdateError> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut written = 0;
    while written < keys.len() {
        let mut attr = BatchAttr {
            keys: keys[written..].as_ptr() as u64,
            values: values[written..].as_ptr() as u64,
            count: (keys.len() - written).min(u32::MAX as usize) as u32,
            map_fd: map_fd(map),
            ..BatchAttr::default()
        };
        let (count, err) = batch(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr);
        written += count;
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            // E2BIG: the map is full.
            Some(error) => return Err(UpdateError { written, error }),
        }
    }
    Ok(())
}

/// Deletes `keys` from `map`; keys already gone are skipped. Returns how
/// many were deleted.
pub fn delete<K: Pod, V: Pod>(map: &mut HashMap<MapData, K, V>, keys: &[K]) -> io::Result<usize> {
    let (mut next, mut deleted) = (0, 0);
    while next < keys.len() {
        let mut attr = BatchAttr {
            keys: keys[next..].as_ptr() as u64,
            count: (keys.len() - next).min(u32::MAX as usize) as u32,
            map_fd: map_fd(map),
            ..BatchAttr::default()
        };
        let (count, err) = batch(bpf_cmd::BPF_MAP_DELETE_BATCH, &mut attr);
        deleted += count;
        next += count;
        match err {
            None => {}
            // The kernel stops at a key that is not there: skip it.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => next += 1,
            Some(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Some(e) => return Err(e),
        }
    }
    Ok(deleted)
}
