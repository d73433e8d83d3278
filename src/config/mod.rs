//! Settings: the one typed struct every part of maitred takes its behaviour
//! from, and the rules that decide whether a combination of values is valid.
//!
//! Loading (defaults < TOML file < `MAITRED_*` environment < flags) lives in
//! [`load`]; the list of settings with their flags and help text lives in
//! [`registry`]. This module owns the shape of the settings and their
//! semantic checks, written as pure functions so they test without a process.

pub mod load;
pub mod registry;
pub mod render;
pub mod values;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use load::load;
use values::{ByteSize, Seconds};

/// Everything maitred can be told. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `MODULE:CALLABLE` of the WSGI application; unset serves the demo app.
    #[serde(deserialize_with = "values::opt_string")]
    pub app: Option<String>,
    /// The target is a factory: call it (without arguments) to get the app.
    #[serde(deserialize_with = "values::bool")]
    pub call: bool,
    /// Extra directories put on `sys.path` (the current directory always is).
    #[serde(deserialize_with = "values::list")]
    pub app_dir: Vec<String>,
    /// Virtualenv whose packages the app imports; defaults to `$VIRTUAL_ENV`.
    #[serde(deserialize_with = "values::opt_string")]
    pub virtualenv: Option<String>,

    /// `HOST:PORT` addresses to listen on (`[::1]:8080`, `*:8080`).
    #[serde(deserialize_with = "values::list")]
    pub listen: Vec<String>,
    /// Listen on this Unix socket path instead of TCP.
    #[serde(deserialize_with = "values::opt_string")]
    pub unix_socket: Option<String>,
    /// Octal permissions of the Unix socket file.
    #[serde(deserialize_with = "values::string")]
    pub unix_socket_perms: String,
    /// Let `*` in `listen` resolve to IPv4 addresses.
    #[serde(deserialize_with = "values::bool")]
    pub ipv4: bool,
    /// Let `*` in `listen` resolve to IPv6 addresses.
    #[serde(deserialize_with = "values::bool")]
    pub ipv6: bool,
    /// `listen()` backlog of each TCP or Unix listener.
    #[serde(deserialize_with = "values::usize")]
    pub backlog: usize,

    /// Python threads running the application (per worker process).
    #[serde(deserialize_with = "values::usize")]
    pub threads: usize,
    /// Worker processes, each with its own interpreter and threads; more
    /// than 1 runs a supervisor in front of them.
    #[serde(deserialize_with = "values::usize")]
    pub workers: usize,
    /// Default `wsgi.url_scheme`.
    #[serde(deserialize_with = "values::string")]
    pub url_scheme: String,
    /// Mount point of the app: becomes `SCRIPT_NAME`.
    #[serde(deserialize_with = "values::string")]
    pub url_prefix: String,
    /// Answer 404 for paths outside `url_prefix` instead of passing them on.
    #[serde(deserialize_with = "values::bool")]
    pub url_prefix_strict: bool,
    /// `Server` header and `SERVER_SOFTWARE`; empty omits the header.
    #[serde(deserialize_with = "values::string")]
    pub ident: String,
    /// `SERVER_NAME` in the environ (never taken from the `Host` header).
    #[serde(deserialize_with = "values::string")]
    pub server_name: String,
    /// Put the traceback into the body of 500 responses.
    #[serde(deserialize_with = "values::bool")]
    pub expose_tracebacks: bool,

    /// After SIGTERM/SIGINT: how long to keep serving (readiness already
    /// failing) before the listeners close.
    pub shutdown_delay: Seconds,
    /// After the listeners close: how long requests in flight get to finish.
    pub graceful_timeout: Seconds,

    /// Addresses of the admin listener (probes, metrics); empty disables it.
    #[serde(deserialize_with = "values::list")]
    pub admin_listen: Vec<String>,

    pub limits: Limits,
    pub proxy: Proxy,
    pub proxy_protocol: ProxyProtocol,
    pub log: Log,
}

/// Listeners that sit behind a TCP load balancer speaking the PROXY
/// protocol (AWS NLB, HAProxy), and which balancers may speak it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyProtocol {
    /// Extra listeners on which every connection starts with a PROXY header.
    #[serde(deserialize_with = "values::list")]
    pub listen: Vec<String>,
    /// Peers allowed to send it (IPs, CIDR ranges, `*`).
    #[serde(deserialize_with = "values::list")]
    pub trusted: Vec<String>,
}

/// Sizes, counts and timeouts that bound what one client can cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Request line plus headers; larger heads get 431.
    pub max_request_header_size: ByteSize,
    /// Header fields in one request; more get 431.
    #[serde(deserialize_with = "values::usize")]
    pub max_request_headers: usize,
    /// Request body; larger bodies get 413, checked while reading.
    pub max_request_body_size: ByteSize,
    /// Request bodies above this are spooled to a temporary file.
    pub inbuf_overflow: ByteSize,
    /// Pending response bytes above this are spooled to a temporary file.
    pub outbuf_overflow: ByteSize,
    /// The app's thread blocks while more than this is waiting to be sent.
    pub outbuf_high_watermark: ByteSize,
    /// Open connections at which maitred stops accepting.
    #[serde(deserialize_with = "values::usize")]
    pub connection_limit: usize,
    /// Idle time after which a connection with no request in flight is closed.
    pub channel_timeout: Seconds,
    /// Time from a request head's first byte to its last.
    pub header_timeout: Seconds,
    /// Longest pause between two pieces of a request body.
    pub body_timeout: Seconds,
    /// Longest the app may take to start its response before the client
    /// gets 504 (unset: no limit). The Python thread cannot be stopped.
    #[serde(deserialize_with = "values::opt_seconds")]
    pub request_timeout: Option<Seconds>,
    /// Requests waiting for a Python thread; more get 503.
    #[serde(deserialize_with = "values::usize")]
    pub max_queue: usize,
}

/// Which proxies are trusted to tell maitred about the original client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Proxy {
    /// Peers whose forwarding headers are believed.
    #[serde(deserialize_with = "values::list")]
    pub trusted: Vec<String>,
    /// How many proxy hops to trust.
    #[serde(deserialize_with = "values::opt_u32")]
    pub count: Option<u32>,
    /// Which forwarding headers are believed from trusted peers.
    #[serde(deserialize_with = "values::list")]
    pub headers: Vec<String>,
    /// Remove forwarding headers that are not trusted before the app sees them.
    #[serde(deserialize_with = "values::bool")]
    pub clear_untrusted: bool,
    /// Log the untrusted forwarding headers that were removed.
    #[serde(deserialize_with = "values::bool")]
    pub log_untrusted: bool,
}

/// Server and application logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `error`, `warn`, `info`, `debug` or `trace`, or a `tracing` filter.
    #[serde(deserialize_with = "values::string")]
    pub level: String,
    /// `text` or `json`.
    #[serde(deserialize_with = "values::string")]
    pub format: String,
    /// Write an access log line per request to stdout.
    #[serde(deserialize_with = "values::bool")]
    pub access: bool,
    /// `combined` or `json`.
    #[serde(deserialize_with = "values::string")]
    pub access_format: String,
}

/// Waitress's default `listen`, kept so `waitress-serve` users get the same
/// address by default.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_PORT: u16 = 8080;

/// Larger request heads are a typo, not a need (browsers send a few KiB).
pub const MAX_HEADER_SIZE: u64 = 64 << 20;

/// More worker processes than this is a typo (each holds an interpreter).
pub const MAX_WORKERS: usize = 64;

/// Far above what one process can hold open, far below where counters and
/// semaphores overflow.
pub const MAX_CONNECTION_LIMIT: usize = 1_000_000;
/// Longest accepted timeout: longer ones are a typo, and unbounded ones
/// overflow deadline arithmetic.
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

impl Default for Settings {
    fn default() -> Self {
        Settings {
            app: None,
            call: false,
            app_dir: Vec::new(),
            virtualenv: None,
            listen: vec![DEFAULT_LISTEN.to_owned()],
            unix_socket: None,
            unix_socket_perms: "600".to_owned(),
            ipv4: true,
            ipv6: true,
            backlog: 1024,
            threads: 4,
            workers: 1,
            url_scheme: "http".to_owned(),
            url_prefix: String::new(),
            url_prefix_strict: false,
            ident: "maitred".to_owned(),
            server_name: "maitred.invalid".to_owned(),
            expose_tracebacks: false,
            shutdown_delay: Seconds::from_secs(5),
            graceful_timeout: Seconds::from_secs(30),
            limits: Limits::default(),
            admin_listen: vec!["127.0.0.1:9180".to_owned()],
            proxy: Proxy::default(),
            proxy_protocol: ProxyProtocol::default(),
            log: Log::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_header_size: ByteSize(256 << 10),
            max_request_headers: 100,
            max_request_body_size: ByteSize(1 << 30),
            inbuf_overflow: ByteSize(512 << 10),
            outbuf_overflow: ByteSize(1 << 20),
            outbuf_high_watermark: ByteSize(16 << 20),
            connection_limit: 100,
            channel_timeout: Seconds::from_secs(120),
            header_timeout: Seconds::from_secs(30),
            body_timeout: Seconds::from_secs(60),
            request_timeout: None,
            max_queue: 100,
        }
    }
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy {
            trusted: Vec::new(),
            count: None,
            headers: Vec::new(),
            // Waitress 3 strips spoofable forwarding headers by default, even
            // with no proxy configured; an app must never see a client's
            // self-declared X-Forwarded-For as if a proxy had sent it.
            clear_untrusted: true,
            log_untrusted: false,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".to_owned(),
            format: "text".to_owned(),
            // Waitress leaves access logging to middleware (TransLogger).
            access: false,
            access_format: "combined".to_owned(),
        }
    }
}

/// A semantic problem with one setting, before provenance is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, as in the TOML file.
    pub key: &'static str,
    pub message: String,
}

impl Problem {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        Problem {
            key,
            message: message.into(),
        }
    }
}

/// Where the server accepts connections, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenSpec {
    /// A host (name, address or `*`) and port, resolved at bind time.
    Tcp {
        host: String,
        port: u16,
    },
    Unix {
        path: PathBuf,
        perms: u32,
    },
}

impl Settings {
    /// Checks everything that types alone cannot, returning every problem
    /// found rather than the first, so one start-up shows them all.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.threads == 0 {
            problems.push(Problem::new("threads", "must be at least 1"));
        }
        if self.threads > 1024 {
            problems.push(Problem::new("threads", "must be at most 1024"));
        }
        if self.workers == 0 || self.workers > MAX_WORKERS {
            problems.push(Problem::new(
                "workers",
                format!("must be between 1 and {MAX_WORKERS}"),
            ));
        }
        if http::HeaderValue::from_str(&self.ident).is_err() || !self.ident.is_ascii() {
            problems.push(Problem::new(
                "ident",
                "must be printable ASCII: it is sent as the Server header",
            ));
        }
        if !matches!(self.url_scheme.as_str(), "http" | "https") {
            problems.push(Problem::new("url_scheme", "must be `http` or `https`"));
        }
        if let Err(e) = parse_octal_perms(&self.unix_socket_perms) {
            problems.push(Problem::new("unix_socket_perms", e));
        }
        if self.unix_socket.is_none() {
            if self.listen.is_empty() {
                problems.push(Problem::new(
                    "listen",
                    "is empty: give at least one HOST:PORT, or set unix_socket",
                ));
            }
            for entry in &self.listen {
                if let Err(e) = parse_listen(entry) {
                    problems.push(Problem::new("listen", e));
                }
            }
        }
        if !self.ipv4 && !self.ipv6 {
            problems.push(Problem::new("ipv4", "ipv4 and ipv6 cannot both be off"));
        }
        if self.backlog == 0 {
            problems.push(Problem::new("backlog", "must be at least 1"));
        }
        if let Some(app) = &self.app {
            if let Err(e) = parse_app_target(app) {
                problems.push(Problem::new("app", e));
            }
        }
        let limits = &self.limits;
        if limits.max_request_header_size.0 < 64 {
            problems.push(Problem::new(
                "limits.max_request_header_size",
                "must be at least 64 bytes: no request line fits in less",
            ));
        }
        if limits.max_request_header_size.0 > MAX_HEADER_SIZE {
            problems.push(Problem::new(
                "limits.max_request_header_size",
                format!("must be at most {}", values::ByteSize(MAX_HEADER_SIZE)),
            ));
        }
        if limits.max_request_headers == 0 || limits.max_request_headers > 10_000 {
            problems.push(Problem::new(
                "limits.max_request_headers",
                "must be between 1 and 10000",
            ));
        }
        if limits.connection_limit == 0 || limits.connection_limit > MAX_CONNECTION_LIMIT {
            problems.push(Problem::new(
                "limits.connection_limit",
                format!("must be between 1 and {MAX_CONNECTION_LIMIT}"),
            ));
        }
        if limits.outbuf_high_watermark.0 == 0 {
            problems.push(Problem::new(
                "limits.outbuf_high_watermark",
                "must be at least 1 byte",
            ));
        }
        let timeouts = [
            ("limits.channel_timeout", Some(limits.channel_timeout)),
            ("limits.header_timeout", Some(limits.header_timeout)),
            ("limits.body_timeout", Some(limits.body_timeout)),
            ("limits.request_timeout", limits.request_timeout),
            ("graceful_timeout", Some(self.graceful_timeout)),
        ];
        for (key, value) in timeouts {
            if value.is_some_and(|t| t.0.is_zero() || t.0 > MAX_TIMEOUT) {
                problems.push(Problem::new(
                    key,
                    "must be longer than 0s and at most 7 days",
                ));
            }
        }
        if self.shutdown_delay.0 > MAX_TIMEOUT {
            problems.push(Problem::new("shutdown_delay", "must be at most 7 days"));
        }
        if limits.max_queue == 0 || limits.max_queue > MAX_CONNECTION_LIMIT {
            problems.push(Problem::new(
                "limits.max_queue",
                format!("must be between 1 and {MAX_CONNECTION_LIMIT}"),
            ));
        }
        for entry in &self.admin_listen {
            if let Err(e) = parse_listen(entry) {
                problems.push(Problem::new("admin_listen", e));
            }
        }
        if let Err(proxy_problems) =
            crate::proxy::ProxyConfig::from_settings(&self.proxy, &self.url_scheme)
        {
            problems.extend(
                proxy_problems
                    .into_iter()
                    .map(|(key, message)| Problem { key, message }),
            );
        }
        let pp = &self.proxy_protocol;
        if let Err(e) = crate::proxy::TrustList::parse(&pp.trusted) {
            problems.push(Problem::new("proxy_protocol.trusted", e));
        }
        if !pp.listen.is_empty() && pp.trusted.is_empty() {
            problems.push(Problem::new(
                "proxy_protocol.trusted",
                "is empty: list the load balancers allowed to send PROXY headers (or `*`)",
            ));
        }
        for entry in &pp.listen {
            if let Err(e) = parse_listen(entry) {
                problems.push(Problem::new("proxy_protocol.listen", e));
            }
        }
        if self.url_prefix_strict && self.script_name().is_empty() {
            problems.push(Problem::new(
                "url_prefix_strict",
                "needs a url_prefix: with none every path is inside it",
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            problems.push(Problem::new("log.format", "must be `text` or `json`"));
        }
        if crate::access::Format::parse(&self.log.access_format).is_none() {
            problems.push(Problem::new(
                "log.access_format",
                "must be `combined` or `json`",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(Problem::new(
                "log.level",
                format!("is not a level or filter: {e}"),
            ));
        }
        problems
    }

    /// The listeners to bind. Call only after [`Settings::validate`] passed.
    pub fn listen_specs(&self) -> Vec<ListenSpec> {
        if let Some(path) = &self.unix_socket {
            let perms = parse_octal_perms(&self.unix_socket_perms).unwrap_or(0o600);
            return vec![ListenSpec::Unix {
                path: PathBuf::from(path),
                perms,
            }];
        }
        let mut specs: Vec<ListenSpec> = Vec::new();
        for entry in &self.listen {
            if let Ok((host, port)) = parse_listen(entry) {
                let spec = ListenSpec::Tcp { host, port };
                if !specs.contains(&spec) {
                    specs.push(spec);
                }
            }
        }
        specs
    }

    /// `url_prefix` normalised as Waitress does: one leading slash, no
    /// trailing slash, empty for the root.
    pub fn script_name(&self) -> String {
        normalize_prefix(&self.url_prefix)
    }
}

/// Splits a `listen` entry into host and port. Accepts `host:port`,
/// `[v6]:port`, `*:port`, a bare host (port 8080) and a bare `:port`.
pub fn parse_listen(entry: &str) -> Result<(String, u16), String> {
    let entry = entry.trim();
    let bad = |why: &str| format!("`{entry}` is not a valid listen address: {why}");
    if entry.is_empty() {
        return Err(bad("it is empty"));
    }
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address needs a closing `]`"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
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
    Ok((host, port))
}

/// Renders a bound address the way users type it.
pub fn display_addr(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

pub fn parse_octal_perms(text: &str) -> Result<u32, String> {
    let digits = text.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 && !digits.is_empty() => Ok(mode),
        _ => Err(format!(
            "`{text}` is not an octal file mode such as 600 or 660"
        )),
    }
}

/// Validates `module:callable` (or Waitress's `module.callable`) syntax.
pub fn parse_app_target(target: &str) -> Result<(String, String), String> {
    let ident_path = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|part| {
                let mut chars = part.chars();
                matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
                    && chars.all(|c| c.is_alphanumeric() || c == '_')
            })
    };
    let (module, attr) = match target.split_once(':') {
        Some((m, a)) => (m, a),
        None => match target.rsplit_once('.') {
            Some((m, a)) => (m, a),
            None => {
                return Err(format!(
                    "`{target}` is not an app target: write MODULE:CALLABLE, e.g. myapp.wsgi:application"
                ));
            }
        },
    };
    if !ident_path(module) || !ident_path(attr) {
        return Err(format!(
            "`{target}` is not an app target: write MODULE:CALLABLE with Python dotted names, e.g. myapp.wsgi:application"
        ));
    }
    Ok((module.to_owned(), attr.to_owned()))
}

pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_waitress() {
        let s = Settings::default();
        assert!(s.validate().is_empty(), "{:?}", s.validate());
        assert_eq!(s.threads, 4);
        assert_eq!(s.limits.connection_limit, 100);
        assert_eq!(s.limits.inbuf_overflow, ByteSize(524_288));
        assert_eq!(s.limits.outbuf_high_watermark, ByteSize(16_777_216));
        assert_eq!(s.limits.max_request_header_size, ByteSize(262_144));
        assert_eq!(s.limits.max_request_body_size, ByteSize(1_073_741_824));
        assert_eq!(
            s.listen_specs(),
            vec![ListenSpec::Tcp {
                host: "0.0.0.0".into(),
                port: 8080
            }]
        );
    }

    #[test]
    fn listen_entries() {
        assert_eq!(parse_listen("127.0.0.1:0"), Ok(("127.0.0.1".into(), 0)));
        assert_eq!(parse_listen("[::1]:9000"), Ok(("::1".into(), 9000)));
        assert_eq!(parse_listen("[::]"), Ok(("::".into(), 8080)));
        assert_eq!(parse_listen("*:80"), Ok(("*".into(), 80)));
        assert_eq!(parse_listen("localhost"), Ok(("localhost".into(), 8080)));
        assert_eq!(parse_listen(":81"), Ok(("0.0.0.0".into(), 81)));
        assert!(parse_listen("::1:80").unwrap_err().contains("brackets"));
        assert!(parse_listen("host:http").unwrap_err().contains("port"));
        assert!(parse_listen("[nope]:80").is_err());
        assert!(parse_listen("host:70000").is_err());
    }

    #[test]
    fn duplicate_listeners_collapse() {
        let s = Settings {
            listen: vec!["127.0.0.1:80".into(), "127.0.0.1:80".into()],
            ..Settings::default()
        };
        assert_eq!(s.listen_specs().len(), 1);
    }

    #[test]
    fn unix_socket_replaces_tcp() {
        let s = Settings {
            unix_socket: Some("/tmp/x.sock".into()),
            unix_socket_perms: "660".into(),
            ..Settings::default()
        };
        assert_eq!(
            s.listen_specs(),
            vec![ListenSpec::Unix {
                path: "/tmp/x.sock".into(),
                perms: 0o660
            }]
        );
    }

    #[test]
    fn semantic_problems_name_their_key() {
        let s = Settings {
            threads: 0,
            url_scheme: "ftp".into(),
            unix_socket_perms: "9x".into(),
            ident: "caf\u{e9}".into(),
            ..Settings::default()
        };
        let keys: Vec<_> = s.validate().iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            vec!["threads", "ident", "url_scheme", "unix_socket_perms"]
        );
    }

    #[test]
    fn app_targets() {
        assert_eq!(
            parse_app_target("pkg.mod:app"),
            Ok(("pkg.mod".into(), "app".into()))
        );
        assert_eq!(
            parse_app_target("pkg.mod.app"),
            Ok(("pkg.mod".into(), "app".into()))
        );
        assert_eq!(
            parse_app_target("mod:factory.attr"),
            Ok(("mod".into(), "factory.attr".into()))
        );
        assert!(parse_app_target("app").is_err());
        assert!(parse_app_target("my-app:app").is_err());
        assert!(parse_app_target("mod:").is_err());
    }

    #[test]
    fn prefixes_normalise_like_waitress() {
        assert_eq!(normalize_prefix("app/"), "/app");
        assert_eq!(normalize_prefix("//app//"), "/app");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/a/b"), "/a/b");
    }

    #[test]
    fn octal_modes() {
        assert_eq!(parse_octal_perms("600"), Ok(0o600));
        assert_eq!(parse_octal_perms("0o660"), Ok(0o660));
        assert!(parse_octal_perms("800").is_err());
        assert!(parse_octal_perms("").is_err());
    }
}
