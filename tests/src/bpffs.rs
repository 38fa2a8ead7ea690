//! A private bpffs for a dataplane loaded with pinned maps, so a test or
//! benchmark can open its maps from outside (per-key reads to compare
//! with, conntrack entries to seed) without touching /sys/fs/bpf.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};
use svc_agent::dataplane::Pins;

use crate::netns::{self, sh};

/// A bpffs mounted under /run/svc-sandbox, unmounted (also on interrupt)
/// when dropped.
pub struct Bpffs {
    pub dir: PathBuf,
    cleanup: u32,
}

impl Bpffs {
    pub fn new(tag: &str) -> Result<Self> {
        let dir = PathBuf::from(format!("/run/svc-sandbox/{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        sh(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir))
            .context("mounting bpffs (needs root)")?;
        let cleanup = netns::on_interrupt(&["umount", "-l", &dir.to_string_lossy()]);
        Ok(Self { dir, cleanup })
    }

    /// Pins for one dataplane, in a directory of its own.
    pub fn pins(&self, name: &str) -> Pins {
        Pins {
            dir: self.dir.join(name),
        }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
        netns::forget(self.cleanup);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
