//! Settings: what maitred can be told, in the shape users write it, and
//! the [`Plan`] they are turned into.
//!
//! Loading (defaults < TOML file < `MAITRED_*` environment < flags) lives in
//! [`load`]; the list of settings with their flags and help text lives in
//! [`registry`]; what `config show/defaults` print lives in [`render`].
//! [`plan`] checks the loaded settings and parses them, once, into the
//! typed values the rest of maitred runs on.

pub mod load;
pub mod plan;
pub mod registry;
pub mod render;
pub mod values;

use serde::{Deserialize, Serialize};

pub use load::{Layers, LoadError, Loaded, load};
pub use plan::Plan;
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
    /// Accept a bare LF as a line ending in request heads and chunked
    /// framing (off: refused with 400, see `framing`).
    #[serde(deserialize_with = "values::bool")]
    pub allow_bare_lf: bool,

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
    /// Memory for request bodies and unsent responses over all
    /// connections; past it they go to temporary files, and a connection
    /// whose client stops reading is cut.
    pub buffer_memory: ByteSize,
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
            backlog: 4096,
            threads: 4,
            workers: 1,
            url_scheme: "http".to_owned(),
            url_prefix: String::new(),
            url_prefix_strict: false,
            ident: "maitred".to_owned(),
            server_name: "maitred.invalid".to_owned(),
            expose_tracebacks: false,
            allow_bare_lf: false,
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
            buffer_memory: ByteSize(32 << 20),
            connection_limit: 1024,
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

/// `url_prefix` normalised as Waitress does: one leading slash, no
/// trailing slash, empty for the root.
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
    fn defaults_match_waitress() {
        let s = Settings::default();
        assert_eq!(s.threads, 4);
        assert_eq!(s.listen, vec![DEFAULT_LISTEN]);
        assert_eq!(s.limits.connection_limit, 1024);
        assert_eq!(s.limits.inbuf_overflow, ByteSize(524_288));
        assert_eq!(s.limits.outbuf_high_watermark, ByteSize(16_777_216));
        assert_eq!(s.limits.max_request_header_size, ByteSize(262_144));
        assert_eq!(s.limits.max_request_body_size, ByteSize(1_073_741_824));
    }

    #[test]
    fn prefixes_normalise_like_waitress() {
        assert_eq!(normalize_prefix("app/"), "/app");
        assert_eq!(normalize_prefix("//app//"), "/app");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/a/b"), "/a/b");
    }
}
