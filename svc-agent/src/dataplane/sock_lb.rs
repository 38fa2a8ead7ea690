//! Where the socket hooks attach: a cgroup v2 directory, and the network
//! namespace whose sockets they translate.
use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};

/// The cgroup v2 directory whose processes (and their descendants') get
/// socket-level load balancing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockLbTarget {
    pub cgroup: PathBuf,
    /// Asked for explicitly (`--cgroup-path`): a failure to attach is an
    /// error. Otherwise (the default path) the agent warns and runs
    /// without socket-level load balancing.
    pub explicit: bool,
    /// Translate the sockets of every network namespace (pods' too, whose
    /// packets then reach the pod veths already addressed to a backend),
    /// or only the node's own.
    pub all_namespaces: bool,
}

impl SockLbTarget {
    /// The cgroup2 root where the agent looks by default.
    pub const DEFAULT: &str = "/sys/fs/cgroup";

    /// The directory to attach to: `cgroup` itself if it is on a cgroup2
    /// filesystem, else its `unified/` (systemd's hybrid layout mounts the
    /// cgroup2 hierarchy there, under cgroup v1 controllers).
    pub fn resolve(&self) -> Result<PathBuf> {
        if is_cgroup2(&self.cgroup) {
            return Ok(self.cgroup.clone());
        }
        let unified = self.cgroup.join("unified");
        if is_cgroup2(&unified) {
            return Ok(unified);
        }
        bail!(
            "{} is not a cgroup v2 directory (nor is {})",
            self.cgroup.display(),
            unified.display()
        )
    }
}

fn is_cgroup2(path: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC }
}

/// The cookie of this thread's network namespace (`SO_NETNS_COOKIE`,
/// Linux 5.14): what `bpf_get_netns_cookie` returns for its sockets.
pub fn netns_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: i32 = 71;
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!(
            "getsockopt(SO_NETNS_COOKIE): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(cookie)
}
