//! Listening sockets: the syntax of a listen address, binding every
//! address the plan names (TCP, IPv4 and IPv6, Unix sockets,
//! PROXY-protocol listeners, the admin listener), and taking over sockets
//! passed by systemd socket activation or by the supervisor.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::proxy::TrustList;

/// Waitress's default port, for a listen address written without one.
pub const DEFAULT_PORT: u16 = 8080;

/// A TCP address as a setting names it: a host (name, address or `*`) and
/// a port. Names are resolved when binding, to all their addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// Accepts `host:port`, `[v6]:port`, `*:port`, a bare host (port
    /// 8080) and a bare `:port` (every IPv4 address).
    pub fn parse(entry: &str) -> Result<HostPort, String> {
        let entry = entry.trim();
        let bad = |why: &str| format!("`{entry}` is not a valid listen address: {why}");
        if entry.is_empty() {
            return Err(bad("it is empty"));
        }
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs a closing `]`"))?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(bad("the part in brackets is not an IPv6 address"));
            }
            match after {
                "" => (host.to_owned(), None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host.to_owned(), Some(port)),
                    None => return Err(bad("expected `:PORT` after the `]`")),
                },
            }
        } else if entry.matches(':').count() > 1 {
            return Err(bad("write IPv6 addresses in brackets, as [::1]:8080"));
        } else {
            match entry.split_once(':') {
                Some((host, port)) => (host.to_owned(), Some(port)),
                None => (entry.to_owned(), None),
            }
        };
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| bad("the port must be a number from 0 to 65535"))?,
        };
        let host = if host.is_empty() {
            "0.0.0.0".to_owned()
        } else {
            host
        };
        Ok(HostPort { host, port })
    }
}

/// Where the server accepts connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenSpec {
    Tcp(HostPort),
    Unix { path: PathBuf, perms: u32 },
}

/// Every socket to listen on, as the settings describe them.
#[derive(Debug, Clone)]
pub struct ListenPlan {
    /// The app's listeners (no duplicates).
    pub app: Vec<ListenSpec>,
    /// Listeners whose connections start with a PROXY protocol header.
    pub proxy_protocol: Vec<HostPort>,
    /// The load balancers allowed to connect to those.
    pub proxy_protocol_trusted: Arc<TrustList>,
    /// The admin listener's addresses (probes and metrics).
    pub admin: Vec<HostPort>,
    /// Which address families `*` and host names resolve to.
    pub ipv4: bool,
    pub ipv6: bool,
    /// The `listen()` backlog of each app listener.
    pub backlog: i32,
}

/// Renders a bound address the way users type it.
pub fn display_addr(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// A bound socket, before the runtime adopts it.
pub enum Bound {
    Tcp(std::net::TcpListener, SocketAddr),
    Unix {
        listener: std::os::unix::net::UnixListener,
        path: PathBuf,
        /// maitred created the socket file (and removes it on exit); a
        /// socket from systemd belongs to systemd.
        owned: bool,
    },
    /// A TCP listener whose connections start with a PROXY protocol header
    /// from one of the trusted load balancers.
    ProxyProtocol(std::net::TcpListener, SocketAddr, Arc<TrustList>),
}

/// The socket files maitred created for its listeners (not systemd's),
/// removed when this is dropped, or earlier with [`SocketFiles::remove`]
/// once the listeners are closed.
pub struct SocketFiles(Vec<PathBuf>);

impl SocketFiles {
    pub fn of(listeners: &[Bound]) -> SocketFiles {
        SocketFiles(
            listeners
                .iter()
                .filter_map(|b| match b {
                    Bound::Unix {
                        path, owned: true, ..
                    } => Some(path.clone()),
                    _ => None,
                })
                .collect(),
        )
    }

    pub fn remove(&mut self) {
        for path in self.0.drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for SocketFiles {
    fn drop(&mut self) {
        self.remove();
    }
}

impl Bound {
    /// `http://127.0.0.1:8080` or `http://unix:/run/app.sock`: the form
    /// Waitress prints in its "Serving on" line, which tools scrape.
    pub fn url(&self) -> String {
        match self {
            Bound::Tcp(_, addr) | Bound::ProxyProtocol(_, addr, _) => {
                format!("http://{}", display_addr(addr))
            }
            Bound::Unix { path, .. } => format!("http://unix:{}", path.display()),
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

/// How a listener is described to a worker process that inherits it.
impl Bound {
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Bound::Tcp(l, _) | Bound::ProxyProtocol(l, _, _) => l.as_raw_fd(),
            Bound::Unix { listener, .. } => listener.as_raw_fd(),
        }
    }

    /// `tcp`, `unix` or `proxy`: what [`inherit`] needs besides the socket.
    pub fn kind(&self) -> &'static str {
        match self {
            Bound::Tcp(..) => "tcp",
            Bound::Unix { .. } => "unix",
            Bound::ProxyProtocol(..) => "proxy",
        }
    }
}

/// A listener handed down by the supervisor (see [`Bound::kind`]). A Unix
/// socket's file belongs to the supervisor, which removes it.
pub fn inherit(fd: OwnedFd, kind: &str, plan: &ListenPlan) -> Result<Bound, BindError> {
    match adopt(fd, "a socket from the supervisor")? {
        Bound::Tcp(listener, addr) if kind == "proxy" => Ok(Bound::ProxyProtocol(
            listener,
            addr,
            Arc::clone(&plan.proxy_protocol_trusted),
        )),
        bound => Ok(bound),
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

/// Sockets passed by systemd socket activation (`sd_listen_fds(3)`):
/// descriptors 3 to 3+`LISTEN_FDS`-1, when `LISTEN_PID` is this process.
/// The variables are removed so child processes do not take them for
/// theirs. Must be called first thing in `main`, before any other thread
/// exists and before anything else can open or claim a descriptor.
pub fn take_activated_sockets() -> Vec<OwnedFd> {
    const FIRST: i32 = 3;
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if !ours || count <= 0 {
        return Vec::new();
    }
    // SAFETY: called at the start of `main` (the caller's contract), while
    // the process has a single thread, so no other thread can be reading
    // the environment concurrently.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let mut fds = Vec::new();
    for fd in FIRST..FIRST.saturating_add(count) {
        // SAFETY: fcntl and fstat accept any integer and only report on it.
        // When both succeed, `fd` is an open socket that systemd passed to
        // this process (LISTEN_PID is ours), which nothing in the process
        // has claimed yet (this runs before any other code), so the OwnedFd
        // becomes its only owner.
        let owned = unsafe {
            if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == -1 {
                continue;
            }
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) == -1 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
                continue;
            }
            OwnedFd::from_raw_fd(fd)
        };
        fds.push(owned);
    }
    fds
}

/// Binds every listener the plan names. Names resolve to all their
/// addresses; `*` means every address of the enabled families, each IPv6
/// socket being IPv6-only so it can coexist with the IPv4 one (as Waitress).
/// Sockets from systemd replace the app's listeners.
pub fn bind(plan: &ListenPlan, activated: Vec<OwnedFd>) -> Result<Vec<Bound>, BindError> {
    let mut bound = Vec::new();
    let specs: &[ListenSpec] = if activated.is_empty() {
        &plan.app
    } else {
        for fd in activated {
            bound.push(adopt(fd, "a socket from systemd")?);
        }
        &[]
    };
    for spec in specs {
        match spec {
            ListenSpec::Tcp(at) => {
                for addr in resolve(at, plan)? {
                    if bound
                        .iter()
                        .any(|b| matches!(b, Bound::Tcp(_, a) | Bound::ProxyProtocol(_, a, _) if *a == addr))
                    {
                        continue;
                    }
                    let (listener, local) = bind_tcp(addr, plan.backlog, "")?;
                    bound.push(Bound::Tcp(listener, local));
                }
            }
            ListenSpec::Unix { path, perms } => {
                let listener = bind_unix(path, *perms, plan.backlog)?;
                bound.push(Bound::Unix {
                    listener,
                    path: path.clone(),
                    owned: true,
                });
            }
        }
    }
    for at in &plan.proxy_protocol {
        for addr in resolve(at, plan)? {
            let (listener, local) = bind_tcp(addr, plan.backlog, "")?;
            bound.push(Bound::ProxyProtocol(
                listener,
                local,
                Arc::clone(&plan.proxy_protocol_trusted),
            ));
        }
    }
    Ok(bound)
}

/// A listening socket this process was given, as a listener of the kind
/// it is; `from` names the giver (systemd, the supervisor) for errors.
fn adopt(fd: OwnedFd, from: &str) -> Result<Bound, BindError> {
    let socket = Socket::from(fd);
    let what = || from.to_owned();
    socket
        .set_nonblocking(true)
        .map_err(|e| bind_error(what(), e))?;
    let local = socket.local_addr().map_err(|e| bind_error(what(), e))?;
    if let Some(addr) = local.as_socket() {
        return Ok(Bound::Tcp(socket.into(), addr));
    }
    let path = local
        .as_pathname()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("(unnamed)"));
    Ok(Bound::Unix {
        listener: socket.into(),
        path,
        owned: false,
    })
}

/// The admin listener's backlog: probes and scrapes need few.
const ADMIN_BACKLOG: i32 = 64;

/// Binds the admin listener(s).
pub fn bind_admin(
    plan: &ListenPlan,
) -> Result<Vec<(std::net::TcpListener, SocketAddr)>, BindError> {
    let mut out = Vec::new();
    for at in &plan.admin {
        for addr in resolve(at, plan)? {
            out.push(bind_tcp(addr, ADMIN_BACKLOG, " (admin)")?);
        }
    }
    Ok(out)
}

fn resolve(at: &HostPort, plan: &ListenPlan) -> Result<Vec<SocketAddr>, BindError> {
    let HostPort { host, port } = at;
    let (port, ipv4, ipv6) = (*port, plan.ipv4, plan.ipv6);
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
    let addrs: Vec<SocketAddr> = (host.as_str(), port)
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

/// A listening TCP socket on `addr` and the address it got; `role` is
/// added to the address in errors.
fn bind_tcp(
    addr: SocketAddr,
    backlog: i32,
    role: &str,
) -> Result<(std::net::TcpListener, SocketAddr), BindError> {
    let what = || format!("{}{role}", display_addr(&addr));
    let listen = || -> std::io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(backlog)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    let listener = listen().map_err(|e| bind_error(what(), e))?;
    let local = listener.local_addr().map_err(|e| bind_error(what(), e))?;
    Ok((listener, local))
}

fn bind_unix(
    path: &Path,
    perms: u32,
    backlog: i32,
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
    socket.listen(backlog).map_err(|e| bind_error(what(), e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| bind_error(what(), e))?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(host: &str, port: u16) -> Result<HostPort, String> {
        Ok(HostPort {
            host: host.into(),
            port,
        })
    }

    #[test]
    fn listen_entries() {
        assert_eq!(HostPort::parse("127.0.0.1:0"), at("127.0.0.1", 0));
        assert_eq!(HostPort::parse("[::1]:9000"), at("::1", 9000));
        assert_eq!(HostPort::parse("[::]"), at("::", 8080));
        assert_eq!(HostPort::parse("*:80"), at("*", 80));
        assert_eq!(HostPort::parse("localhost"), at("localhost", 8080));
        assert_eq!(HostPort::parse(":81"), at("0.0.0.0", 81));
        let err = |entry| HostPort::parse(entry).expect_err("invalid");
        assert!(err("::1:80").contains("brackets"));
        assert!(err("host:http").contains("port"));
        assert!(HostPort::parse("[nope]:80").is_err());
        assert!(HostPort::parse("host:70000").is_err());
    }

    #[test]
    fn addresses_display_as_typed() {
        let v6: SocketAddr = "[::1]:80".parse().expect("addr");
        assert_eq!(display_addr(&v6), "[::1]:80");
        let v4: SocketAddr = "10.0.0.1:8080".parse().expect("addr");
        assert_eq!(display_addr(&v4), "10.0.0.1:8080");
    }
}
