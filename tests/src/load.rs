//! A client in a loop: requests a service from a pod in the background,
//! so a test can change things underneath and then check that no request
//! failed. Bounded in count (2000 requests) and per request (3 s).
use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{cluster::Cluster, netns::NetNs, sandbox::url};

/// Requests in a loop from a background thread, counting failures.
pub struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Result<String, String>>>>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    /// Starts requesting `http://ip:port/` from `client`.
    pub fn start(client: &NetNs, ip: IpAddr, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ns_name = client.name().to_string();
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                // Bounded: at most 2000 requests.
                for _ in 0..2000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let out = std::process::Command::new("ip")
                        .args(["netns", "exec", &ns_name, "curl", "-sS", "--max-time", "3"])
                        .arg(url(ip, port))
                        .output();
                    let r = match out {
                        Ok(o) if o.status.success() => {
                            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
                        }
                        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    seen.lock().unwrap().push(r);
                }
            })
        };
        Self {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Answers since the last call.
    pub fn take(&self) -> Vec<Result<String, String>> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    /// Waits until a request succeeds with an answer in `want` only (and
    /// asserts nothing failed meanwhile).
    pub fn wait_until_only(
        &self,
        c: &Cluster,
        want: &[&str],
        log: &mut Vec<Result<String, String>>,
    ) {
        let start = log.len();
        let waited = c.wait_for(
            &format!("only {want:?} to answer"),
            Duration::from_secs(15),
            || {
                log.extend(self.take());
                // Four fresh answers in a row, all from `want`.
                log.len() >= start + 4
                    && log[log.len() - 4..]
                        .iter()
                        .all(|r| r.as_ref().is_ok_and(|n| want.contains(&n.as_str())))
            },
        );
        if let Err(e) = waited {
            panic!(
                "{e:#}\nlast answers: {:?}",
                &log[log.len().saturating_sub(4)..]
            );
        }
    }

    pub fn finish(mut self) -> Vec<Result<String, String>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.take()
    }
}

pub fn assert_no_failures(log: &[Result<String, String>]) {
    let failed: Vec<_> = log.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        log.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(log.len() > 10, "too few requests to tell: {}", log.len());
}
