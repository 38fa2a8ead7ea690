//! Network namespaces owned by a test, removed when dropped or when the
//! process is interrupted.
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::{
        Mutex, Once,
        atomic::{AtomicU32, Ordering},
    },
};

use anyhow::{Context as _, Result, bail};

/// Namespaces alive in this process, for the interrupt handler.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `svc-<tag>-<pid>-<n>`: unique across parallel tests and
    /// processes, and recognisably ours.
    pub fn new(tag: &str) -> Result<Self> {
        HANDLER.call_once(install_interrupt_cleanup);
        let name = format!(
            "svc-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(Command::new("ip").args(["netns", "add", &name]))?;
        LIVE.lock().unwrap().push(name.clone());
        let ns = Self { name };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `argv` inside the namespace; fails with its stderr if it fails.
    pub fn run(&self, argv: &[&str]) -> Result<String> {
        let mut cmd = self.command(argv[0]);
        cmd.args(&argv[1..]);
        let out = sh(&mut cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a thread that has entered this namespace, so interface
    /// names resolve here (e.g. when attaching programs).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).with_context(|| format!("opening {path}"))?;
                // SAFETY: setns on a valid namespace fd affects only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns {path}: {}", std::io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veths in it (and so their
        // peers) and everything attached to them.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        LIVE.lock().unwrap().retain(|n| n != &self.name);
    }
}

fn install_interrupt_cleanup() {
    let _ = ctrlc::set_handler(|| {
        for name in LIVE.lock().map(|l| l.clone()).unwrap_or_default() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
        std::process::exit(130);
    });
}

/// Runs a command to completion; an error carries its stderr.
pub fn sh(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
