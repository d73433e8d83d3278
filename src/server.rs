//! Listening sockets and connections: binding what the settings ask for,
//! accepting within the connection limit, serving each connection with
//! hyper, and stopping on a signal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};

use crate::config::{ListenSpec, Settings, display_addr};
use crate::gateway::service::{self, Shared};
use crate::idle::Idle;
use crate::proxy::TrustList;
use crate::wsgi::environ::Peer;

/// A bound socket, before the runtime adopts it.
pub enum Bound {
    Tcp(std::net::TcpListener, SocketAddr),
    Unix(std::os::unix::net::UnixListener, PathBuf),
    /// A TCP listener whose connections start with a PROXY protocol header
    /// from one of the trusted load balancers.
    ProxyProtocol(std::net::TcpListener, SocketAddr, Arc<TrustList>),
}

impl Bound {
    /// `http://127.0.0.1:8080` or `http://unix:/run/app.sock`: the form
    /// Waitress prints in its "Serving on" line, which tools scrape.
    pub fn url(&self) -> String {
        match self {
            Bound::Tcp(_, addr) | Bound::ProxyProtocol(_, addr, _) => {
                format!("http://{}", display_addr(addr))
            }
            Bound::Unix(_, path) => format!("http://unix:{}", path.display()),
        }
    }

    /// The start-up line. PROXY-protocol listeners are announced
    /// differently so tools looking for "Serving on" find only the plain
    /// HTTP ones.
    pub fn announcement(&self) -> String {
        match self {
            Bound::ProxyProtocol(..) => {
                format!("Accepting PROXY protocol connections on {}", self.url())
            }
            _ => format!("Serving on {}", self.url()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {what}: {cause}")]
pub struct BindError {
    what: String,
    cause: String,
}

fn bind_error(what: impl Into<String>, cause: impl std::fmt::Display) -> BindError {
    BindError {
        what: what.into(),
        cause: cause.to_string(),
    }
}

/// Binds every listener the settings name. Names resolve to all their
/// addresses; `*` means every address of the enabled families, each IPv6
/// socket being IPv6-only so it can coexist with the IPv4 one (as Waitress).
pub fn bind(settings: &Settings) -> Result<Vec<Bound>, BindError> {
    let mut bound = Vec::new();
    for spec in settings.listen_specs() {
        match spec {
            ListenSpec::Tcp { host, port } => {
                for addr in resolve(&host, port, settings.ipv4, settings.ipv6)? {
                    if bound
                        .iter()
                        .any(|b| matches!(b, Bound::Tcp(_, a) | Bound::ProxyProtocol(_, a, _) if *a == addr))
                    {
                        continue;
                    }
                    let listener = bind_tcp(addr, settings.backlog)
                        .map_err(|e| bind_error(display_addr(&addr), e))?;
                    let local = listener
                        .local_addr()
                        .map_err(|e| bind_error(display_addr(&addr), e))?;
                    bound.push(Bound::Tcp(listener, local));
                }
            }
            ListenSpec::Unix { path, perms } => {
                let listener = bind_unix(&path, perms, settings.backlog)?;
                bound.push(Bound::Unix(listener, path));
            }
        }
    }
    let pp = &settings.proxy_protocol;
    if !pp.listen.is_empty() {
        let trusted = Arc::new(
            TrustList::parse(&pp.trusted).map_err(|e| bind_error("proxy_protocol.trusted", e))?,
        );
        for entry in &pp.listen {
            let (host, port) =
                crate::config::parse_listen(entry).map_err(|e| bind_error(entry.clone(), e))?;
            for addr in resolve(&host, port, settings.ipv4, settings.ipv6)? {
                let listener = bind_tcp(addr, settings.backlog)
                    .map_err(|e| bind_error(display_addr(&addr), e))?;
                let local = listener
                    .local_addr()
                    .map_err(|e| bind_error(display_addr(&addr), e))?;
                bound.push(Bound::ProxyProtocol(listener, local, Arc::clone(&trusted)));
            }
        }
    }
    Ok(bound)
}

fn resolve(host: &str, port: u16, ipv4: bool, ipv6: bool) -> Result<Vec<SocketAddr>, BindError> {
    let what = || format!("{host}:{port}");
    if host == "*" {
        let mut addrs = Vec::new();
        if ipv4 {
            addrs.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        }
        if ipv6 {
            addrs.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
        }
        return Ok(addrs);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| bind_error(what(), format!("cannot resolve the host name: {e}")))?
        .filter(|a| (a.is_ipv4() && ipv4) || (a.is_ipv6() && ipv6))
        .collect();
    if addrs.is_empty() {
        return Err(bind_error(
            what(),
            "the name has no address of an enabled family",
        ));
    }
    Ok(addrs)
}

fn bind_tcp(addr: SocketAddr, backlog: usize) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn bind_unix(
    path: &Path,
    perms: u32,
    backlog: usize,
) -> Result<std::os::unix::net::UnixListener, BindError> {
    let what = || format!("unix:{}", path.display());
    // A socket file left by an earlier run is removed, as Waitress does;
    // anything else at that path is someone else's file and is left alone.
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| bind_error(what(), e))?;
        }
        Ok(_) => {
            return Err(bind_error(what(), "the path exists and is not a socket"));
        }
        Err(_) => {}
    }
    let socket =
        Socket::new(Domain::UNIX, Type::STREAM, None).map_err(|e| bind_error(what(), e))?;
    let addr = SockAddr::unix(path).map_err(|e| bind_error(what(), e))?;
    socket.bind(&addr).map_err(|e| bind_error(what(), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(perms))
        .map_err(|e| bind_error(what(), format!("cannot set permissions: {e}")))?;
    socket
        .listen(i32::try_from(backlog).unwrap_or(i32::MAX))
        .map_err(|e| bind_error(what(), e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| bind_error(what(), e))?;
    Ok(socket.into())
}

/// hyper's per-connection settings, derived once.
pub fn http1_builder(settings: &Settings) -> http1::Builder {
    let max_head = settings.limits.max_request_header_size.as_usize();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper's head timer runs from the moment a connection waits for a
        // request until the head is complete, so a head trickled byte by
        // byte is cut off too; `idle::Idle` covers the rest of the
        // connection's life.
        .header_read_timeout(settings.limits.channel_timeout.0)
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

/// Serves every listener until SIGTERM or SIGINT, then stops accepting,
/// lets in-flight requests finish for up to `drain` and returns.
pub async fn serve(
    listeners: Vec<Bound>,
    shared: Arc<Shared>,
    builder: http1::Builder,
    connection_limit: usize,
    idle_timeout: Duration,
    drain: Duration,
) -> std::io::Result<()> {
    let limit = Arc::new(Semaphore::new(connection_limit));
    let (stop_tx, stop_rx) = watch::channel(false);
    for bound in listeners {
        let ctx = AcceptContext {
            shared: Arc::clone(&shared),
            idle_timeout,
            builder: builder.clone(),
            limit: Arc::clone(&limit),
            stop: stop_rx.clone(),
        };
        let listener = match bound {
            Bound::Tcp(l, _) => Listener::Tcp(TcpListener::from_std(l)?),
            Bound::Unix(l, _) => Listener::Unix(UnixListener::from_std(l)?),
            Bound::ProxyProtocol(l, _, trusted) => {
                Listener::ProxyProtocol(TcpListener::from_std(l)?, trusted)
            }
        };
        tokio::spawn(accept_loop(listener, ctx));
    }

    let signal = wait_for_signal().await?;
    tracing::info!("{signal} received: no longer accepting; finishing open requests");
    let _ = stop_tx.send(true);
    let all = u32::try_from(connection_limit).unwrap_or(u32::MAX);
    let drained = tokio::select! {
        permits = limit.acquire_many(all) => permits.is_ok(),
        _ = tokio::time::sleep(drain) => false,
        second = wait_for_signal() => {
            tracing::warn!("{} received again: exiting at once", second.unwrap_or("signal"));
            false
        }
    };
    if drained {
        tracing::info!("all connections closed; exiting");
    } else {
        let open = connection_limit - limit.available_permits();
        tracing::warn!("exiting with {open} connection(s) still open");
    }
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        _ = int.recv() => Ok("SIGINT"),
        _ = quit.recv() => {
            tracing::warn!("SIGQUIT received: exiting at once");
            std::process::exit(1);
        }
    }
}

#[derive(Clone)]
struct AcceptContext {
    shared: Arc<Shared>,
    /// `channel_timeout`: inactivity allowed while waiting on the client.
    idle_timeout: Duration,
    builder: http1::Builder,
    limit: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

/// How long to back off when `accept` fails (typically out of file
/// descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
    ProxyProtocol(TcpListener, Arc<TrustList>),
}

impl Listener {
    /// Accepts one connection and serves it on its own task.
    async fn accept_and_spawn(
        &self,
        ctx: &AcceptContext,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> std::io::Result<()> {
        match self {
            Listener::Tcp(l) => {
                let (stream, remote) = l.accept().await?;
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr()?;
                spawn_connection(stream, Peer::Tcp { remote, local }, ctx, permit);
            }
            Listener::Unix(l) => {
                let (stream, _) = l.accept().await?;
                spawn_connection(stream, Peer::Unix, ctx, permit);
            }
            Listener::ProxyProtocol(l, trusted) => {
                let (stream, remote) = l.accept().await?;
                if !trusted.trusts_ip(remote.ip()) {
                    tracing::warn!(
                        "refused a connection from {remote} on a PROXY protocol listener: \
                         not in proxy_protocol.trusted"
                    );
                    return Ok(());
                }
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr()?;
                let ctx = ctx.clone();
                // The header is read on the connection's own task, so a slow
                // balancer cannot hold up accepting.
                tokio::spawn(async move {
                    let mut stream = stream;
                    match read_proxy_header(&mut stream, ctx.idle_timeout).await {
                        Ok((source, rest)) => {
                            let remote = source.unwrap_or(remote);
                            let stream = Prefixed::new(rest, stream);
                            spawn_connection(stream, Peer::Tcp { remote, local }, &ctx, permit);
                        }
                        Err(e) => tracing::warn!("closed a connection from {remote}: {e}"),
                    }
                });
            }
        }
        Ok(())
    }
}

/// Reads a PROXY protocol header; returns the client it names (if any)
/// and the bytes that followed it.
async fn read_proxy_header(
    stream: &mut tokio::net::TcpStream,
    timeout: Duration,
) -> Result<(Option<SocketAddr>, bytes::Bytes), String> {
    use crate::proxy::protocol::{self, Parsed};
    let mut buf = bytes::BytesMut::with_capacity(256);
    let deadline = tokio::time::Instant::now() + timeout;
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
            Err(_) => return Err("no PROXY header within channel_timeout".into()),
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

async fn accept_loop(listener: Listener, ctx: AcceptContext) {
    // Its own receiver: `ctx.stop` is only cloned for each connection.
    let mut stop = ctx.stop.clone();
    loop {
        // Waiting for a permit before accepting leaves surplus connections
        // in the kernel backlog, as Waitress's connection_limit does.
        let permit = tokio::select! {
            p = Arc::clone(&ctx.limit).acquire_owned() => p,
            _ = stop.changed() => return,
        };
        let Ok(permit) = permit else { return };
        let accepted = tokio::select! {
            a = listener.accept_and_spawn(&ctx, permit) => a,
            _ = stop.changed() => return,
        };
        if let Err(e) = accepted {
            tracing::error!("server accept() failed: {e}");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
    }
}

fn spawn_connection<S>(
    stream: S,
    peer: Peer,
    ctx: &AcceptContext,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::clone(&ctx.shared);
    let builder = ctx.builder.clone();
    let mut stop = ctx.stop.clone();
    let stream = Idle::new(stream, ctx.idle_timeout);
    tokio::spawn(async move {
        // Boxed so the service future is Unpin, which taking the socket
        // back from hyper (`poll_without_shutdown`) requires.
        let service = hyper::service::service_fn(move |req| {
            Box::pin(service::handle(req, Arc::clone(&shared), peer))
        });
        let mut conn = builder.serve_connection(TokioIo::new(stream), service);
        let mut stopping = Box::pin(async move {
            let _ = stop.changed().await;
        });
        let mut stopped = false;
        let result = std::future::poll_fn(|cx| {
            if !stopped && stopping.as_mut().poll(cx).is_ready() {
                stopped = true;
                // Idle connections close now; busy ones after their
                // current response, which then says `Connection: close`.
                Pin::new(&mut conn).graceful_shutdown();
            }
            conn.poll_without_shutdown(cx)
        })
        .await;
        if let Err(e) = &result {
            tracing::debug!("connection ended with an error: {e}");
        }
        // Also after errors: a refused body or an app's short response still
        // has bytes the client must be able to read before the close.
        linger(conn.into_parts().io.into_inner()).await;
        drop(permit);
    });
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
