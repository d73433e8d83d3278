//! The server's life: listening, serving until a signal, and the drain.
//!
//! On SIGTERM or SIGINT:
//! 1. readiness (`/readyz`) fails at once, so load balancers stop sending;
//! 2. the server keeps serving for `shutdown_delay`, while Kubernetes
//!    removes the pod from its endpoints (requests still arrive meanwhile);
//! 3. the listeners close (new connections are refused) and every
//!    connection is asked to close: idle ones at once, busy ones after
//!    their current response, which says `Connection: close`;
//! 4. the process exits 0 once every connection is gone, or 1 with a count
//!    of the requests cut when `graceful_timeout` passes or a second signal
//!    arrives. SIGQUIT exits at once.

mod accept;
pub mod listen;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{Semaphore, watch};

use crate::config::Settings;
use crate::connection::{Registry, Timeouts};
use crate::gateway::service::Shared;
use accept::{AcceptContext, Listener, accept_loop};
pub use listen::Bound;
use listen::SocketFiles;

/// hyper's per-connection settings, derived once.
pub fn http1_builder(settings: &Settings) -> http1::Builder {
    let max_head = settings.limits.max_request_header_size.as_usize();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper's head timer also runs while a keep-alive connection waits,
        // so it cannot be header_timeout; `connection::Watched` keeps both.
        .header_read_timeout(None)
        .max_header_size(max_head)
        .max_headers(settings.limits.max_request_headers)
        .max_buf_size(max_head.saturating_add(64 * 1024).max(400 * 1024))
        .title_case_headers(true)
        // A client that shuts down its sending side after the request
        // (`nc -N`, some HTTP/1.0 tools) still gets its response.
        .half_close(true);
    // Not `pipeline_flush`: it holds writes back while unread bytes sit in
    // the read buffer, and after a read error (a malformed chunked body, an
    // oversized head) those bytes are never consumed, so the error response
    // would never be written.
    builder
}

/// How the server behaves over its life, from the settings.
pub struct Plan {
    pub connection_limit: usize,
    pub timeouts: Timeouts,
    pub shutdown_delay: Duration,
    pub graceful_timeout: Duration,
}

/// SIGTERM, SIGINT and SIGQUIT, installed once so no signal is missed
/// between the phases of the drain.
struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// The next SIGTERM or SIGINT; SIGQUIT ends the process at once.
    async fn next(&mut self, registry: &Registry) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.quit.recv() => {
                tracing::warn!(
                    "SIGQUIT received: exiting at once, {} request(s) cut",
                    registry.busy()
                );
                std::process::exit(1);
            }
        }
    }
}

/// Serves until a signal, drains, and returns the exit code.
pub async fn serve(
    listeners: Vec<Bound>,
    shared: Arc<Shared>,
    builder: http1::Builder,
    plan: Plan,
) -> std::io::Result<u8> {
    let mut signals = Signals::install()?;
    let registry = Arc::new(Registry::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = AcceptContext {
        shared: Arc::clone(&shared),
        builder,
        limit: Arc::new(Semaphore::new(plan.connection_limit)),
        registry: Arc::clone(&registry),
        timeouts: plan.timeouts,
        stop: stop_rx,
    };
    let mut socket_files = SocketFiles::of(&listeners);
    for bound in listeners {
        let listener = match bound {
            Bound::Tcp(l, _) => Listener::Tcp(TcpListener::from_std(l)?),
            Bound::Unix { listener, .. } => Listener::Unix(UnixListener::from_std(listener)?),
            Bound::ProxyProtocol(l, _, trusted) => {
                Listener::ProxyProtocol(TcpListener::from_std(l)?, trusted)
            }
        };
        tokio::spawn(accept_loop(listener, ctx.clone()));
    }
    shared.health.ready.store(true, Ordering::Release);

    let first = signals.next(&registry).await;
    shared.health.ready.store(false, Ordering::Release);
    tracing::info!(
        "{first} received: readiness fails from now on; the listeners close in {}s \
         (signal again to exit at once)",
        plan.shutdown_delay.as_secs_f64()
    );
    let interrupted = tokio::select! {
        _ = tokio::time::sleep(plan.shutdown_delay) => None,
        again = signals.next(&registry) => Some(again),
    };

    let _ = stop_tx.send(true);
    socket_files.remove();
    if let Some(again) = interrupted {
        return Ok(cut(&registry, &format!("{again} received again")));
    }
    registry.close_all();
    tracing::info!(
        "listeners closed; waiting up to {}s for {} connection(s) with {} request(s) in flight",
        plan.graceful_timeout.as_secs_f64(),
        registry.open(),
        registry.busy()
    );
    tokio::select! {
        _ = all_closed(&registry) => {
            tracing::info!("every request finished; exiting");
            Ok(0)
        }
        _ = tokio::time::sleep(plan.graceful_timeout) => Ok(cut(&registry, "graceful_timeout passed")),
        again = signals.next(&registry) => Ok(cut(&registry, &format!("{again} received again"))),
    }
}

async fn all_closed(registry: &Registry) {
    while registry.open() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cut(registry: &Registry, why: &str) -> u8 {
    tracing::warn!("{why}: exiting with {} request(s) cut", registry.busy());
    1
}
