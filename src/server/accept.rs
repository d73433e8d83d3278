//! Accepting connections within the connection limit and serving each with
//! hyper: the socket wrapped in its timers, the idlest connection closed to
//! make room at the limit, a lingering close at the end, and PROXY-protocol
//! headers read before HTTP starts.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::config::plan::Timeout;
use crate::connection::{Registry, Timeouts, Watched};
use crate::framing::Scanner;
use crate::gateway::policy::{GatewayReason, GatewayResponse};
use crate::gateway::service::{self, Shared};
use crate::metrics::{self, Label};
use crate::proxy::TrustList;
use crate::wsgi::environ::Peer;

/// Why a connection was closed before any request was read from it (the
/// `reason` label of `maitred_connections_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectedConnection {
    /// A PROXY-protocol listener was reached by a peer not in
    /// `proxy_protocol.trusted`.
    ProxyProtocolUntrusted,
    /// The PROXY header was missing, malformed or too slow.
    ProxyProtocolInvalid,
    /// `accept()` failed (typically out of file descriptors).
    AcceptError,
}

impl RejectedConnection {
    fn count(self) {
        metrics::get().connections_rejected.inc(self);
    }
}

impl Label for RejectedConnection {
    const ALL: &'static [Self] = &[
        RejectedConnection::ProxyProtocolUntrusted,
        RejectedConnection::ProxyProtocolInvalid,
        RejectedConnection::AcceptError,
    ];
    fn label(self) -> &'static str {
        match self {
            RejectedConnection::ProxyProtocolUntrusted => "proxy_protocol_untrusted",
            RejectedConnection::ProxyProtocolInvalid => "proxy_protocol_invalid",
            RejectedConnection::AcceptError => "accept_error",
        }
    }
}

/// What every accept loop and connection task shares.
#[derive(Clone)]
pub struct AcceptContext {
    pub shared: Arc<Shared>,
    pub builder: http1::Builder,
    /// `connection_limit` slots.
    pub limit: Arc<Semaphore>,
    pub registry: Arc<Registry>,
    pub timeouts: Timeouts,
    /// What the framing scanner of each connection needs.
    pub allow_bare_lf: bool,
    pub max_head: usize,
    /// Becomes true when the listeners must close (drain).
    pub stop: watch::Receiver<bool>,
}

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
    ProxyProtocol(TcpListener, Arc<TrustList>),
}

enum Accepted {
    Tcp(TcpStream, Peer),
    Unix(UnixStream),
    /// Still to read its PROXY header.
    ProxyProtocol(TcpStream, SocketAddr, SocketAddr),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Option<Accepted>> {
        Ok(Some(match self {
            Listener::Tcp(l) => {
                let (stream, remote) = l.accept().await?;
                let local = stream.local_addr()?;
                Accepted::Tcp(stream, Peer::Tcp { remote, local })
            }
            Listener::Unix(l) => Accepted::Unix(l.accept().await?.0),
            Listener::ProxyProtocol(l, trusted) => {
                let (stream, remote) = l.accept().await?;
                if !trusted.trusts_ip(remote.ip()) {
                    RejectedConnection::ProxyProtocolUntrusted.count();
                    tracing::warn!(
                        "refused a connection from {remote} on a PROXY protocol listener: \
                         not in proxy_protocol.trusted"
                    );
                    return Ok(None);
                }
                let local = stream.local_addr()?;
                Accepted::ProxyProtocol(stream, remote, local)
            }
        }))
    }
}

/// How long to back off when `accept` fails (typically out of file
/// descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub async fn accept_loop(listener: Listener, ctx: AcceptContext) {
    let mut stop = ctx.stop.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let accepted = match accepted {
            Ok(Some(a)) => a,
            Ok(None) => continue,
            Err(e) => {
                RejectedConnection::AcceptError.count();
                tracing::error!("server accept() failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // One connection at a time is held here; while it waits for a
        // slot, later ones wait in the kernel backlog, as in Waitress.
        metrics::get().connections_accepted.inc();
        let permit = match Arc::clone(&ctx.limit).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                metrics::get().connection_limit_reached.inc();
                // At the limit: idle keep-alive connections must not starve
                // new ones, so the longest-idle one is closed to make room.
                // If every connection is busy, this one waits for the first
                // to finish.
                match wait_for_slot(&ctx, &mut stop).await {
                    Some(permit) => permit,
                    None => return,
                }
            }
        };
        match accepted {
            Accepted::Tcp(stream, peer) => {
                let _ = stream.set_nodelay(true);
                spawn_connection(stream, peer, &ctx, permit);
            }
            Accepted::Unix(stream) => {
                spawn_connection(stream, Peer::Unix, &ctx, permit);
            }
            Accepted::ProxyProtocol(stream, remote, local) => {
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                // The header is read on the connection's own task, so a slow
                // balancer cannot hold up accepting.
                tokio::spawn(async move {
                    let mut stream = stream;
                    match read_proxy_header(&mut stream, ctx.timeouts.header).await {
                        Ok((source, rest)) => {
                            let remote = source.unwrap_or(remote);
                            let stream = Prefixed::new(rest, stream);
                            let peer = Peer::Tcp { remote, local };
                            spawn_connection(stream, peer, &ctx, permit);
                        }
                        Err(e) => {
                            RejectedConnection::ProxyProtocolInvalid.count();
                            tracing::warn!("closed a connection from {remote}: {e}");
                        }
                    }
                });
            }
        }
    }
}

/// Waits for a connection slot at the limit, closing the idlest idle
/// connection to make one. `None` when the listeners are closing.
async fn wait_for_slot(
    ctx: &AcceptContext,
    stop: &mut watch::Receiver<bool>,
) -> Option<OwnedSemaphorePermit> {
    loop {
        // One asked to close is gone within microseconds; if none was idle
        // long enough (or the one asked has not closed), the next round
        // asks another.
        ctx.registry.evict();
        tokio::select! {
            p = Arc::clone(&ctx.limit).acquire_owned() => return p.ok(),
            _ = stop.changed() => return None,
            // One that was busy may have finished its request, and the
            // eviction marks move on once a tick.
            _ = tokio::time::sleep(crate::connection::EVICTION_TICK) => {}
        }
    }
}

/// Reads a PROXY protocol header; returns the client it names (if any)
/// and the bytes that followed it.
async fn read_proxy_header(
    stream: &mut tokio::net::TcpStream,
    timeout: Timeout,
) -> Result<(Option<SocketAddr>, bytes::Bytes), String> {
    use crate::proxy::protocol::{self, Parsed};
    let mut buf = bytes::BytesMut::with_capacity(256);
    let deadline = tokio::time::Instant::now() + timeout.after;
    loop {
        match protocol::parse(&buf)? {
            Parsed::Done { source, len } => return Ok((source, buf.split_off(len).freeze())),
            Parsed::Incomplete => {}
        }
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) => return Err("the connection closed before a PROXY header".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("reading the PROXY header failed: {e}")),
            Err(_) => return Err(format!("no PROXY header within {}", timeout.name)),
        }
    }
}

/// A stream with bytes already read from it put back in front.
struct Prefixed<S> {
    prefix: bytes::Bytes,
    io: S,
}

impl<S> Prefixed<S> {
    fn new(prefix: bytes::Bytes, io: S) -> Self {
        Prefixed { prefix, io }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves one connection on its own task, which ends when it closes.
pub(super) fn spawn_connection<S>(
    stream: S,
    peer: Peer,
    ctx: &AcceptContext,
    permit: OwnedSemaphorePermit,
) -> tokio::task::JoinHandle<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::clone(&ctx.shared);
    let ctx_shared = Arc::clone(&ctx.shared);
    let builder = ctx.builder.clone();
    let registration = ctx.registry.register();
    let state = Arc::clone(&registration.state);
    let scanner = Scanner::new(ctx.allow_bare_lf, ctx.max_head);
    let io = Watched::new(stream, ctx.timeouts, Arc::clone(&state), scanner);
    tokio::spawn(async move {
        let service_state = Arc::clone(&state);
        // Boxed so the service future is Unpin, which taking the socket
        // back from hyper (`poll_without_shutdown`) requires.
        let service = hyper::service::service_fn(move |req| {
            // Marked busy as soon as hyper has the head, before the future
            // first runs, so an eviction never takes a request in hand.
            let guard = service_state.begin();
            let facts = service_state.heads.pop();
            Box::pin(service::handle(
                req,
                Arc::clone(&shared),
                peer,
                guard,
                facts,
            ))
        });
        let mut conn = builder.serve_connection(TokioIo::new(io), service);
        let close_state = Arc::clone(&state);
        let mut closing = Box::pin(async move { close_state.closing().await });
        let mut closed = false;
        let result = std::future::poll_fn(|cx| {
            if closed || closing.as_mut().poll(cx).is_ready() {
                if state.can_drop_now() {
                    // Idle, or in the middle of a head: nothing to lose.
                    return Poll::Ready(Ok(()));
                }
                if !closed {
                    // Busy: closes after the current response, which then
                    // says `Connection: close`.
                    Pin::new(&mut conn).graceful_shutdown();
                }
                closed = true;
            }
            conn.poll_without_shutdown(cx)
        })
        .await;
        if let Err(e) = &result {
            // hyper answers an unparsable head itself (400, 414, 431).
            if let Some(reason) = GatewayReason::of_parse_error(e) {
                reason.count();
            }
            tracing::debug!("connection ended with an error: {e}");
        }
        let mut io = conn.into_parts().io.into_inner();
        // A head the framing rules refused: hyper served the requests before
        // it and then found the input ended; the answer is written here.
        if let Some(refused) = io.refused_head() {
            let plan = &ctx_shared.plan;
            let answer = GatewayResponse::of_violation(refused.violation);
            answer.reason.count();
            let bytes = answer.to_bytes(
                refused.http10,
                refused.head_request,
                &plan.ident,
                plan.server_header.as_ref(),
            );
            if let Err(e) = io.write_all(&bytes).await {
                tracing::debug!("could not answer a refused head: {e}");
            }
        }
        // The connection no longer serves anyone: its slot is free even
        // while the close lingers.
        drop(registration);
        drop(permit);
        // Also after errors: a refused body or an app's short response still
        // has bytes the client must be able to read before the close.
        linger(io.into_inner()).await;
    })
}

/// Longest a closing connection waits for the client to stop sending.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes read and discarded while lingering.
const LINGER_BYTES: usize = 1 << 20;

/// Closes a connection without destroying the response just sent.
///
/// When maitred closes a connection whose client is still sending (a
/// refused upload, requests pipelined after a `Connection: close`), closing
/// the socket with unread input makes the kernel send a reset, and the
/// client may lose the response before reading it. So: send FIN, read and
/// discard until the client closes too (or a bound is hit), then close,
/// as nginx's lingering close does.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    if io.shutdown().await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    let mut buf = vec![0u8; 16 * 1024];
    let mut discarded = 0;
    while discarded < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => return,
        }
    }
}
