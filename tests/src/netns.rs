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

/// Commands that undo what this process set up (delete a namespace,
/// unmount a bpffs, ...), run by the interrupt handler; keyed by an id so
/// the normal teardown can take its own entry back.
static LIVE: Mutex<Vec<(u32, Vec<String>)>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Registers `argv` to be run if the process is interrupted; returns the
/// id to `forget` it by once torn down normally.
pub fn on_interrupt(argv: &[&str]) -> u32 {
    HANDLER.call_once(install_interrupt_cleanup);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    LIVE.lock()
        .unwrap()
        .push((id, argv.iter().map(|s| s.to_string()).collect()));
    id
}

pub fn forget(id: u32) {
    LIVE.lock().unwrap().retain(|(i, _)| *i != id);
}

pub struct NetNs {
    name: String,
    cleanup: u32,
}

impl NetNs {
    /// Creates `svc-<tag>-<pid>-<n>`: unique across parallel tests and
    /// processes, and recognisably ours.
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!(
            "svc-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(Command::new("ip").args(["netns", "add", &name]))?;
        let cleanup = on_interrupt(&["ip", "netns", "del", &name]);
        let ns = Self { name, cleanup };
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
        forget(self.cleanup);
    }
}

fn install_interrupt_cleanup() {
    let _ = ctrlc::set_handler(|| {
        let undo = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
        for (_, argv) in undo.iter().rev() {
            let _ = Command::new(&argv[0]).args(&argv[1..]).output();
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
