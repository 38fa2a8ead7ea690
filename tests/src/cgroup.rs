//! A cgroup v2 directory of a test's own, for the agent's socket hooks
//! (`--cgroup-path`): only the processes a test moves into it are
//! translated, so nothing else on the machine is affected.
//!
//! It is `svc-test-<pid>-<n>` under the host's cgroup2 mount
//! (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid v1/v2
//! host), bind-mounted at `/run/svc-sandbox/cgroup-svc-test-<pid>-<n>`:
//! `ip netns exec` remounts `/sys`, so inside it (where the agent and the
//! clients run) only that path reaches the cgroup. A bind mount, not a
//! second cgroup2 mount: mounting cgroup2 anew would reapply its global
//! mount options (nsdelegate, memory_recursiveprot, ...) to the host.
//! Removed on drop and on interrupt (`netns::on_interrupt`).
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::{self, NetNs, sh};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct TestCgroup {
    /// The cgroup in the host's hierarchy.
    host_path: PathBuf,
    /// Its bind mount, visible inside `ip netns exec`.
    mount: PathBuf,
    /// The cgroup2 root, where leftover processes go back to.
    root: PathBuf,
    cleanup: Option<u32>,
}

/// The host's cgroup2 mount point, from /proc/self/mounts.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mut found: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then_some(point)
        })
        .collect();
    // The conventional places first; never one of our own bind mounts.
    found.retain(|p| !p.starts_with("/run/svc-sandbox"));
    found.sort_by_key(|p| match *p {
        "/sys/fs/cgroup" => 0,
        "/sys/fs/cgroup/unified" => 1,
        _ => 2,
    });
    match found.first() {
        Some(p) => Ok(PathBuf::from(p)),
        None => bail!("no cgroup2 filesystem mounted (the socket hooks need cgroup v2)"),
    }
}

impl TestCgroup {
    pub fn new() -> Result<Self> {
        let root = cgroup2_root()?;
        let name = format!(
            "svc-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let host_path = root.join(&name);
        std::fs::create_dir(&host_path)
            .with_context(|| format!("creating cgroup {}", host_path.display()))?;
        let mount = PathBuf::from("/run/svc-sandbox").join(format!("cgroup-{name}"));
        let made = std::fs::create_dir_all(&mount)
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                sh(Command::new("mount")
                    .arg("--bind")
                    .arg(&host_path)
                    .arg(&mount))
                .map(drop)
            });
        if let Err(e) = made {
            let _ = std::fs::remove_dir(&mount);
            let _ = std::fs::remove_dir(&host_path);
            return Err(e);
        }
        let script = teardown_script(&root, &host_path, &mount);
        let cleanup = netns::on_interrupt(&["sh", "-c", &script]);
        Ok(Self {
            host_path,
            mount,
            root,
            cleanup: Some(cleanup),
        })
    }

    /// The cgroup in the host's hierarchy.
    pub fn host_path(&self) -> &Path {
        &self.host_path
    }

    /// Moves this whole process (every thread, and the children it starts
    /// from now on) into the cgroup; the teardown moves it back out.
    pub fn enter(&self) -> Result<()> {
        std::fs::write(
            self.host_path.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .with_context(|| format!("moving into {}", self.host_path.display()))
    }

    /// The cgroup as seen inside `ip netns exec` (for `--cgroup-path`).
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// `argv` run in `ns`, moved into this cgroup first (a shell writes
    /// its pid to `cgroup.procs`, then execs `argv`). It fails instead if
    /// the cgroup is no longer mounted there (torn down by an interrupt).
    pub fn command(&self, ns: &NetNs, argv: &[&str]) -> Command {
        let mut cmd = ns.command("sh");
        cmd.arg("-c")
            .arg(r#"[ -e "$0/cgroup.events" ] && echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.mount)
            .args(argv);
        cmd
    }
}

/// Moves leftover processes back to the root, unmounts, removes both
/// directories (rmdir only: never a recursive removal inside cgroupfs).
fn teardown_script(root: &Path, host_path: &Path, mount: &Path) -> String {
    format!(
        "for p in $(cat '{cg}/cgroup.procs' 2>/dev/null); do echo $p > '{root}/cgroup.procs'; done; \
         umount -l '{mnt}'; rmdir '{mnt}'; \
         for i in 1 2 3 4 5 6 7 8 9 10; do rmdir '{cg}' 2>/dev/null && break; sleep 0.1; done",
        cg = host_path.display(),
        root = root.display(),
        mnt = mount.display(),
    )
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let Some(cleanup) = self.cleanup.take() else {
            return;
        };
        let script = teardown_script(&self.root, &self.host_path, &self.mount);
        let _ = Command::new("sh").arg("-c").arg(&script).output();
        netns::forget(cleanup);
    }
}
