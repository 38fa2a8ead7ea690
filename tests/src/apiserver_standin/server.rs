//! Listening and connections: a listener bound inside the network
//! namespace, TLS, HTTP/1.1, and a way to drop it all at once.
use std::{
    convert::Infallible,
    fs::File,
    net::{IpAddr, TcpListener},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use tokio::{runtime::Handle, task::JoinHandle, task::JoinSet};
use tokio_rustls::TlsAcceptor;

use super::{Shared, http};

/// Binds `ip`:`port` (0: any free port) in the network namespace `netns`
/// refers to. A socket stays in the namespace it was made in, so the
/// listener can then be served from any thread.
pub(crate) fn bind_in(netns: &File, ip: IpAddr, port: u16) -> Result<TcpListener> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd affects only this
            // short-lived thread.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            // std sets SO_REUSEADDR, so the port can be bound again after
            // stop() even while closed connections linger in TIME_WAIT.
            let addr = std::net::SocketAddr::new(ip, port);
            let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .join()
        .map_err(|_| anyhow!("the bind thread panicked"))?
    })
}

/// A listener being served, and its connections.
pub(crate) struct Serving {
    accept: JoinHandle<()>,
    live: Arc<AtomicUsize>,
}

impl Serving {
    pub fn spawn(
        runtime: &Handle,
        listener: TcpListener,
        tls: Arc<ServerConfig>,
        shared: Arc<Shared>,
    ) -> Result<Self> {
        let listener = {
            let _in_runtime = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let live = Arc::new(AtomicUsize::new(0));
        let accept = runtime.spawn(accept_loop(
            listener,
            TlsAcceptor::from(tls),
            shared,
            live.clone(),
        ));
        Ok(Self { accept, live })
    }

    /// Closes the listener and every connection; returns once they are
    /// closed (within a bound), so the caller can count on refused
    /// connections from then on. Blocks briefly: callable from sync code
    /// and from another runtime alike.
    pub fn shut(self) {
        self.accept.abort();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(self.accept.is_finished() && self.live.load(Ordering::SeqCst) == 0)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    live: Arc<AtomicUsize>,
) {
    // Owned here so that aborting this task drops (aborts) every
    // connection along with the listener.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    // Watch events are small writes that must go out now.
                    let _ = tcp.set_nodelay(true);
                    let guard = LiveGuard::new(&live);
                    let conn = serve_connection(tcp, acceptor.clone(), shared.clone());
                    connections.spawn(async move {
                        conn.await;
                        drop(guard);
                    });
                }
                // Out of file descriptors and the like: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn serve_connection(tcp: tokio::net::TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
    else {
        return;
    };
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(http::handle(shared, req).await) }
    });
    // An error here is a client going away or speaking nonsense: nothing
    // to do but close.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

/// Counts a connection as open until its task (finished or aborted) is
/// dropped.
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Self(live.clone())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
