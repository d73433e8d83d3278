//! The server's life: serving connections until asked to stop, and the
//! drain. The stop requests come in as a value ([`StopRequests`]), so the
//! caller decides where they come from (the process's signals, or a test).
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
//!
//! "Every connection is gone" is awaited ([`Registry::all_closed`]), not
//! polled.

mod accept;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};

use crate::config::plan::{ConnectionPlan, DrainPlan};
use crate::connection::Registry;
use crate::gateway::service::Shared;
use crate::listen::{Bound, SocketFiles};
use crate::signals::{StopRequest, StopRequests};
use crate::wsgi::environ::Peer;
use accept::{AcceptContext, Listener, accept_loop};
pub use accept::{RejectedConnection, Stream};

/// hyper's per-connection settings, derived once.
pub fn http1_builder(plan: &ConnectionPlan) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper's head timer also runs while a keep-alive connection waits,
        // so it cannot be header_timeout; `connection::Watched` keeps both.
        .header_read_timeout(None)
        .max_header_size(plan.max_head)
        .max_headers(plan.max_headers)
        .max_buf_size(plan.max_head.saturating_add(64 * 1024).max(400 * 1024))
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

/// Serves until a stop request, drains, and returns the exit code.
pub async fn serve(
    listeners: Vec<Bound>,
    shared: Arc<Shared>,
    connections: &ConnectionPlan,
    drain: &DrainPlan,
    mut stops: StopRequests,
) -> std::io::Result<u8> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = AcceptContext::new(
        Arc::clone(&shared),
        connections,
        Arc::new(Semaphore::new(connections.limit)),
        (connections.limit / 64).max(1),
        stop_rx,
    );
    let registry = Arc::clone(&ctx.registry);
    let mut socket_files = SocketFiles::of(&listeners);
    let mut accepting = Vec::new();
    for bound in listeners {
        let listener = match bound {
            Bound::Tcp(l, _) => Listener::Tcp(TcpListener::from_std(l)?),
            Bound::Unix { listener, .. } => Listener::Unix(UnixListener::from_std(listener)?),
            Bound::ProxyProtocol(l, _, trusted) => {
                Listener::ProxyProtocol(TcpListener::from_std(l)?, trusted)
            }
        };
        accepting.push(tokio::spawn(accept_loop(listener, ctx.clone())));
    }
    shared.health.ready.store(true, Ordering::Release);

    let first = stops.next().await;
    if first.is_immediate() {
        return Ok(quit(&registry));
    }
    shared.health.ready.store(false, Ordering::Release);
    tracing::info!(
        "{} received: readiness fails from now on; the listeners close in {}s \
         (signal again to exit at once)",
        first.name(),
        drain.shutdown_delay.as_secs_f64()
    );
    let interrupted = tokio::select! {
        _ = tokio::time::sleep(drain.shutdown_delay) => None,
        again = stops.next() => Some(again),
    };

    // Each accept loop drops its listener as it returns: once they have,
    // new connections are refused.
    let _ = stop_tx.send(true);
    for task in accepting {
        let _ = task.await;
    }
    socket_files.remove();
    if let Some(again) = interrupted {
        return Ok(again_before_done(&registry, again));
    }
    registry.close_all();
    tracing::info!(
        "listeners closed; waiting up to {}s for {} connection(s) with {} request(s) in flight",
        drain.graceful_timeout.after.as_secs_f64(),
        registry.open(),
        registry.busy()
    );
    tokio::select! {
        _ = registry.all_closed() => {
            tracing::info!("every request finished; exiting");
            Ok(0)
        }
        _ = tokio::time::sleep(drain.graceful_timeout.after) => {
            Ok(cut(&registry, &format!("{} passed", drain.graceful_timeout.name)))
        }
        again = stops.next() => Ok(again_before_done(&registry, again)),
    }
}

/// Serves one connection over any byte stream, as the accept loop serves a
/// socket, and returns when it has closed: for tests and fuzzing, where
/// the client is in memory.
pub async fn serve_stream<S: Stream>(
    stream: S,
    peer: Peer,
    shared: Arc<Shared>,
    connections: &ConnectionPlan,
) {
    let limit = Arc::new(Semaphore::new(1));
    let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
        return;
    };
    let (_stop_tx, stop) = watch::channel(false);
    let ctx = AcceptContext::new(shared, connections, limit, 1, stop);
    let _ = accept::spawn_connection(stream, peer, &ctx, permit).await;
}

/// A second stop request during the drain ends it at once.
fn again_before_done(registry: &Registry, again: StopRequest) -> u8 {
    if again.is_immediate() {
        return quit(registry);
    }
    cut(registry, &format!("{} received again", again.name()))
}

fn quit(registry: &Registry) -> u8 {
    tracing::warn!(
        "SIGQUIT received: exiting at once, {} request(s) cut",
        registry.busy()
    );
    1
}

fn cut(registry: &Registry, why: &str) -> u8 {
    tracing::warn!("{why}: exiting with {} request(s) cut", registry.busy());
    1
}
