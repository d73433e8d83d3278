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

use crate::config::plan::{ConnectionPlan, Timeout};
use crate::connection::{ConnState, ConnectionTimeout, Registry, Timeouts, Watched};
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
    /// How many slots one eviction frees at once (see `Registry::evict`).
    pub eviction_batch: usize,
    pub registry: Arc<Registry>,
    pub timeouts: Timeouts,
    /// What the framing scanner of each connection needs.
    pub allow_bare_lf: bool,
    pub max_head: usize,
    /// Becomes true when the listeners must close (drain).
    pub stop: watch::Receiver<bool>,
}

impl AcceptContext {
    /// What every connection accepted under `connections` is served with.
    pub fn new(
        shared: Arc<Shared>,
        connections: &ConnectionPlan,
        limit: Arc<Semaphore>,
        eviction_batch: usize,
        stop: watch::Receiver<bool>,
    ) -> Self {
        AcceptContext {
            shared,
            builder: super::http1_builder(connections),
            limit,
            eviction_batch,
            registry: Arc::new(Registry::default()),
            timeouts: connections.timeouts,
            allow_bare_lf: connections.allow_bare_lf,
            max_head: connections.max_head,
            stop,
        }
    }
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
            _ = stop.changed() => {
                drain_backlog(listener, &ctx);
                return;
            }
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
        let permit = match admit(&ctx, &mut stop).await {
            Some(permit) => permit,
            None => return,
        };
        serve_accepted(accepted, &ctx, permit);
        // The new connection's task runs before the next accept: under a
        // flood the backlog would otherwise be admitted in one long run
        // while the connections already in take no step, and an ordinary
        // client's request, arrived but not yet read, would find its
        // connection evicted by the flood behind it.
        tokio::task::yield_now().await;
    }
}

/// Takes every connection the kernel has already completed for this
/// listener, before it closes: closing it with them queued would reset
/// them, and their clients would lose requests they had every reason to
/// think accepted. They are served like the rest (the drain has them
/// answer with `Connection: close`), over the connection limit if need be:
/// it no longer matters once nothing new is accepted.
fn drain_backlog(listener: Listener, ctx: &AcceptContext) {
    let slot = || {
        Arc::clone(&ctx.limit).try_acquire_owned().or_else(|_| {
            ctx.limit.add_permits(1);
            Arc::clone(&ctx.limit).try_acquire_owned()
        })
    };
    let tcp = |stream: std::net::TcpStream| {
        stream.set_nonblocking(true)?;
        TcpStream::from_std(stream)
    };
    let mut taken = 0;
    match listener {
        Listener::Tcp(l) => {
            let Ok(l) = l.into_std() else { return };
            while let Ok((stream, remote)) = l.accept() {
                let (Ok(stream), Ok(permit)) = (tcp(stream), slot()) else {
                    continue;
                };
                let Ok(local) = stream.local_addr() else {
                    continue;
                };
                serve_accepted(
                    Accepted::Tcp(stream, Peer::Tcp { remote, local }),
                    ctx,
                    permit,
                );
                taken += 1;
            }
        }
        Listener::Unix(l) => {
            let Ok(l) = l.into_std() else { return };
            while let Ok((stream, _)) = l.accept() {
                let stream = stream
                    .set_nonblocking(true)
                    .and_then(|()| UnixStream::from_std(stream));
                let (Ok(stream), Ok(permit)) = (stream, slot()) else {
                    continue;
                };
                serve_accepted(Accepted::Unix(stream), ctx, permit);
                taken += 1;
            }
        }
        Listener::ProxyProtocol(l, trusted) => {
            let Ok(l) = l.into_std() else { return };
            while let Ok((stream, remote)) = l.accept() {
                if !trusted.trusts_ip(remote.ip()) {
                    RejectedConnection::ProxyProtocolUntrusted.count();
                    continue;
                }
                let (Ok(stream), Ok(permit)) = (tcp(stream), slot()) else {
                    continue;
                };
                let Ok(local) = stream.local_addr() else {
                    continue;
                };
                serve_accepted(Accepted::ProxyProtocol(stream, remote, local), ctx, permit);
                taken += 1;
            }
        }
    }
    if taken > 0 {
        metrics::get().connections_accepted.inc_by(taken);
        tracing::debug!("took {taken} queued connection(s) off a closing listener");
    }
}

/// A slot for a new connection: a free one, or at the limit the slot of
/// the most expendable connection, taken at once (see `Registry::evict`).
/// Only when every connection is busy serving does the newcomer wait.
/// `None` when the listeners are closing.
async fn admit(
    ctx: &AcceptContext,
    stop: &mut watch::Receiver<bool>,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = Arc::clone(&ctx.limit).try_acquire_owned() {
        return Some(permit);
    }
    metrics::get().connection_limit_reached.inc();
    loop {
        let freed = ctx.registry.evict(ctx.eviction_batch);
        if freed > 0 {
            // The evicted connections' slots, passed on (they will not
            // give them back themselves).
            ctx.limit.add_permits(freed);
        }
        tokio::select! {
            p = Arc::clone(&ctx.limit).acquire_owned() => return p.ok(),
            _ = stop.changed() => return None,
            // One that was busy may have finished its request, and the
            // eviction marks move on once a tick.
            _ = tokio::time::sleep(crate::connection::EVICTION_TICK) => {}
        }
    }
}

/// Starts serving an accepted connection on its own task.
fn serve_accepted(accepted: Accepted, ctx: &AcceptContext, permit: OwnedSemaphorePermit) {
    match accepted {
        Accepted::Tcp(stream, peer) => {
            let _ = stream.set_nodelay(true);
            spawn_connection(stream, peer, ctx, permit);
        }
        Accepted::Unix(stream) => {
            spawn_connection(stream, Peer::Unix, ctx, permit);
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

/// A client's byte stream, which can say when it has something to read
/// before any buffer is given to it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send + '_;
}

impl Stream for TcpStream {
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send + '_ {
        TcpStream::readable(self)
    }
}

impl Stream for UnixStream {
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send + '_ {
        UnixStream::readable(self)
    }
}

impl<S: Stream> Stream for Prefixed<S> {
    async fn readable(&self) -> std::io::Result<()> {
        if self.prefix.is_empty() {
            self.io.readable().await
        } else {
            Ok(())
        }
    }
}

/// In memory (tests, fuzzing): always worth a read.
impl Stream for tokio::io::DuplexStream {
    async fn readable(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// After the drain began, an idle connection stays open this long more: a
/// request its client sent as the drain began (a keep-alive client sends
/// the next one as soon as it has the last answer) is answered, with
/// `Connection: close`, rather than lost to the close.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Most bytes one read of the first head takes.
const HEAD_READ: usize = 1024;

/// Reads the connection's first request head, up to its empty line, into
/// a buffer that grows with it, before hyper (whose buffer starts at 8 KiB)
/// is given the connection: a client trickling a head (slowloris) costs
/// the bytes it has sent, not a buffer per connection. `None` when the
/// connection is to close (evicted, `header_timeout`, gone).
async fn first_head<S: Stream>(
    stream: &mut S,
    state: &ConnState,
    timeouts: Timeouts,
    max_head: usize,
) -> Option<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + timeouts.header.after;
    let mut head = Vec::new();
    let mut chunk = [0u8; HEAD_READ];
    loop {
        let read = tokio::select! {
            read = stream.read(&mut chunk) => read,
            _ = state.closing(), if !state.is_draining() => return None,
            _ = tokio::time::sleep_until(deadline) => {
                crate::metrics::get().connection_timeouts.inc(ConnectionTimeout::Header);
                return None;
            }
        };
        let n = match read {
            Ok(0) if head.is_empty() => return None,
            // hyper has what there is, and says what is wrong with it.
            Ok(0) => return Some(head),
            Ok(n) => n,
            Err(_) => return None,
        };
        // Where the empty line could start, counting the bytes before.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if head.len() >= max_head || ends_head(&head[from..]) {
            return Some(head);
        }
    }
}

/// Whether `bytes` hold the end of a head: an empty line, after CRLF or,
/// as hyper also reads it, after LF.
fn ends_head(bytes: &[u8]) -> bool {
    memchr::memmem::find(bytes, b"\n\r\n").is_some()
        || memchr::memmem::find(bytes, b"\n\n").is_some()
}

/// What ends a connection's wait for its first byte.
enum FirstByte {
    Arrived,
    /// Evicted, drained, timed out or failed: close it.
    Gone,
}

/// Waits, without a buffer, for the client's first byte: a connection
/// that never sends one (an idle flood) costs a socket and a small task,
/// not the buffers hyper gives every connection it serves.
async fn first_byte<S: Stream>(stream: &S, state: &ConnState, timeouts: Timeouts) -> FirstByte {
    tokio::select! {
        ready = stream.readable() => match ready {
            Ok(()) => FirstByte::Arrived,
            Err(_) => FirstByte::Gone,
        },
        _ = state.closing() => {
            if state.is_draining() {
                // Drained before a byte came: a request may be on its way.
                match tokio::time::timeout(DRAIN_GRACE, stream.readable()).await {
                    Ok(Ok(())) => FirstByte::Arrived,
                    _ => FirstByte::Gone,
                }
            } else {
                FirstByte::Gone
            }
        }
        _ = tokio::time::sleep(timeouts.channel.after) => {
            crate::metrics::get().connection_timeouts.inc(ConnectionTimeout::Channel);
            FirstByte::Gone
        }
    }
}

/// Serves one connection on its own task, which ends when it closes.
pub(super) fn spawn_connection<S: Stream>(
    stream: S,
    peer: Peer,
    ctx: &AcceptContext,
    permit: OwnedSemaphorePermit,
) -> tokio::task::JoinHandle<()> {
    let shared = Arc::clone(&ctx.shared);
    let builder = ctx.builder.clone();
    let registration = ctx.registry.register();
    let state = Arc::clone(&registration.state);
    let timeouts = ctx.timeouts;
    let scanner = Scanner::new(ctx.allow_bare_lf, ctx.max_head);
    let max_head = ctx.max_head;
    tokio::spawn(async move {
        let mut stream = stream;
        let head = match first_byte(&stream, &state, timeouts).await {
            FirstByte::Arrived => {
                state.spoke();
                first_head(&mut stream, &state, timeouts, max_head).await
            }
            FirstByte::Gone => None,
        };
        let served = match head {
            Some(head) => {
                let stream = Prefixed::new(bytes::Bytes::from(head), stream);
                let io = Watched::new(stream, timeouts, Arc::clone(&state), scanner);
                Some(serve(io, peer, shared, builder, &state).await)
            }
            None => None,
        };
        // The connection no longer serves anyone: its slot is free even
        // while the close lingers (unless an eviction passed it on).
        drop(registration);
        if state.release_slot() {
            drop(permit);
        } else {
            permit.forget();
        }
        // Also after errors: a refused body or an app's short response still
        // has bytes the client must be able to read before the close. An
        // evicted connection has nothing owed to it.
        if let Some(io) = served.filter(|_| !state.is_evicted()) {
            linger(io).await;
        }
    })
}

/// hyper serves the connection until it ends, is closed by the drain
/// (after its request in progress, or after a moment idle) or by an
/// eviction (at once); a head the framing rules refused is answered last.
/// Returns the socket, for the lingering close.
async fn serve<S: Stream>(
    io: Watched<Prefixed<S>>,
    peer: Peer,
    shared: Arc<Shared>,
    builder: http1::Builder,
    state: &Arc<ConnState>,
) -> S {
    let service_state = Arc::clone(state);
    let service_shared = Arc::clone(&shared);
    // Boxed so the service future is Unpin, which taking the socket back
    // from hyper (`poll_without_shutdown`) requires.
    let service = hyper::service::service_fn(move |req| {
        // Marked busy as soon as hyper has the head, before the future
        // first runs, so an eviction never takes a request in hand.
        let guard = service_state.begin();
        let facts = service_state.heads.pop();
        Box::pin(service::handle(
            req,
            Arc::clone(&service_shared),
            peer,
            guard,
            facts,
        ))
    });
    let mut conn = builder.serve_connection(TokioIo::new(io), service);
    let close_state = Arc::clone(state);
    let mut closing = Box::pin(async move { close_state.closing().await });
    let mut close_asked = false;
    let mut told_hyper = false;
    // Idle when the drain began: how long it may stay idle still.
    let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let result = std::future::poll_fn(|cx| {
        if close_asked || closing.as_mut().poll(cx).is_ready() {
            close_asked = true;
            let idle = state.can_drop_now();
            if idle && !state.is_draining() {
                // Evicted while idle, or in the middle of a head: nothing
                // to lose.
                return Poll::Ready(Ok(()));
            }
            if idle && !told_hyper {
                let grace = grace.get_or_insert_with(|| Box::pin(tokio::time::sleep(DRAIN_GRACE)));
                if grace.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(()));
                }
            } else if !told_hyper {
                // A request in hand: the connection closes after its
                // response, which says `Connection: close`.
                Pin::new(&mut conn).graceful_shutdown();
                told_hyper = true;
            }
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
        let plan = &shared.plan;
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
    io.into_inner().io
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
