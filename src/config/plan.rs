//! The plan: the settings turned, once, into the values maitred runs on.
//!
//! [`Plan::build`] is the one place a setting's text is interpreted and the
//! one place settings are checked: it returns every problem it finds, each
//! naming its key, or a plan in which every listener, trust list, format,
//! timeout and limit is already a typed value. Nothing after it parses a
//! setting or has a "cannot happen" error path. Each part goes to the
//! module that acts on it, handed out by the process wiring
//! ([`crate::process`]) alone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tracing_subscriber::filter::Directive;

use super::values::ByteSize;
use super::{
    MAX_CONNECTION_LIMIT, MAX_HEADER_SIZE, MAX_TIMEOUT, MAX_WORKERS, Problem, Settings, registry,
};
use crate::access::AccessFormat;
use crate::listen::{HostPort, ListenPlan, ListenSpec};
use crate::proxy::{Header, HeaderSet, ProxyConfig, TrustList};
use crate::scheme::Scheme;

/// Everything maitred does, decided before it does any of it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub app: AppPlan,
    pub listen: ListenPlan,
    /// Worker processes; 1 serves in this process, more run a supervisor.
    pub workers: usize,
    pub pool: PoolPlan,
    pub environ: EnvironPlan,
    pub gateway: GatewayPlan,
    pub connections: ConnectionPlan,
    pub drain: DrainPlan,
    pub log: LogPlan,
    /// Settings that are valid but probably not what was meant; logged at
    /// start-up.
    pub warnings: Vec<String>,
}

/// Which application to serve, and the Python it needs.
#[derive(Debug, Clone)]
pub struct AppPlan {
    /// `None` serves the built-in demo page.
    pub target: Option<AppTarget>,
    /// The target is a factory, called without arguments.
    pub call: bool,
    /// Directories put first on `sys.path`.
    pub app_dirs: Vec<PathBuf>,
    /// The `virtualenv` setting (`$VIRTUAL_ENV` is consulted when unset).
    pub virtualenv: Option<PathBuf>,
}

/// `module:callable` (or Waitress's `module.callable`), checked to be
/// Python dotted names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppTarget {
    /// As written, which is what `pkgutil.resolve_name` takes.
    pub text: String,
    pub module: String,
    pub attr: String,
}

impl AppTarget {
    pub fn parse(target: &str) -> Result<AppTarget, String> {
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
        Ok(AppTarget {
            text: target.to_owned(),
            module: module.to_owned(),
            attr: attr.to_owned(),
        })
    }
}

/// The Python threads and what bounds their work.
#[derive(Debug, Clone)]
pub struct PoolPlan {
    pub threads: usize,
    /// Requests allowed to wait for a thread.
    pub max_queue: usize,
    /// Pending response bytes above which the app's thread waits.
    pub outbuf_high_water: usize,
    /// Pending response bytes above which they go to a spool file.
    pub outbuf_overflow: usize,
    pub expose_tracebacks: bool,
}

/// The environ entries every request shares, and the scheme the rest of
/// the request path judges ports and labels by.
#[derive(Debug, Clone)]
pub struct EnvironPlan {
    /// `wsgi.url_scheme` unless a trusted proxy says otherwise.
    pub scheme: Scheme,
    pub server_name: String,
    pub server_software: String,
    /// `url_prefix`, normalised: `/app`, or empty for the root.
    pub script_name: String,
}

/// The rules the gateway applies to each request.
#[derive(Debug, Clone)]
pub struct GatewayPlan {
    pub proxy: ProxyConfig,
    /// 404 for paths outside `url_prefix`.
    pub url_prefix_strict: bool,
    pub max_body: u64,
    /// Request bodies above this are spooled to a temporary file.
    pub inbuf_overflow: usize,
    /// The `Server` header; `None` when `ident` is empty.
    pub server_header: Option<HeaderValue>,
    /// Who signs the error pages maitred writes.
    pub ident: String,
    /// Longest pause between two pieces of a request body.
    pub body_timeout: Timeout,
    /// Longest a request may take to get its response head from the app.
    pub request_timeout: Option<Timeout>,
}

/// A timeout and the name of the setting that sets it, so messages name
/// what can be changed and cannot drift from the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout {
    pub after: Duration,
    /// The key within its table, e.g. `channel_timeout`.
    pub name: &'static str,
}

/// The timers of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Nothing moved in either direction for this long.
    pub channel: Timeout,
    /// A request head still incomplete this long after its first byte.
    pub header: Timeout,
}

/// What a connection may cost.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionPlan {
    /// Open connections at which maitred stops accepting.
    pub limit: usize,
    pub timeouts: Timeouts,
    /// Largest request line plus headers.
    pub max_head: usize,
    pub max_headers: usize,
    /// Accept a bare LF as a line ending (see `framing`).
    pub allow_bare_lf: bool,
    /// The memory budget for bodies (see `budget`).
    pub buffer_memory: u64,
}

/// How the process stops.
#[derive(Debug, Clone, Copy)]
pub struct DrainPlan {
    /// After a stop signal, keep serving (readiness failing) this long.
    pub shutdown_delay: Duration,
    /// Then how long requests in flight get to finish.
    pub graceful_timeout: Timeout,
}

/// Server logs and the access log.
#[derive(Debug, Clone)]
pub struct LogPlan {
    /// The `log.level` filter's directives (`RUST_LOG`, when set and
    /// valid, wins).
    pub level: Vec<Directive>,
    pub format: LogFormat,
    /// `None` when the access log is off.
    pub access: Option<AccessFormat>,
}

/// How server logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Collects problems while the plan is built, so one start-up reports them
/// all.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn problem(&mut self, key: &'static str, message: impl Into<String>) {
        debug_assert!(registry::by_key(key).is_some(), "{key} is not a setting");
        self.problems.push(Problem::new(key, message));
    }

    fn require(&mut self, key: &'static str, ok: bool, message: impl Into<String>) {
        if !ok {
            self.problem(key, message);
        }
    }

    /// The value, or `None` with the error recorded against `key`.
    fn check<T>(&mut self, key: &'static str, parsed: Result<T, String>) -> Option<T> {
        parsed.map_err(|e| self.problem(key, e)).ok()
    }

    /// A timeout must be longer than zero and at most [`MAX_TIMEOUT`].
    fn timeout(&mut self, key: &'static str, after: Duration) -> Timeout {
        self.require(
            key,
            !after.is_zero() && after <= MAX_TIMEOUT,
            "must be longer than 0s and at most 7 days",
        );
        let name = key.rsplit_once('.').map_or(key, |(_, leaf)| leaf);
        Timeout { after, name }
    }
}

impl Plan {
    /// Checks everything that types alone cannot and builds the plan, or
    /// returns every problem found (in the order of the settings, roughly),
    /// each naming its key.
    pub fn build(s: &Settings) -> Result<Plan, Vec<Problem>> {
        let mut c = Checker::default();
        c.require("threads", s.threads != 0, "must be at least 1");
        c.require("threads", s.threads <= 1024, "must be at most 1024");
        c.require(
            "workers",
            (1..=MAX_WORKERS).contains(&s.workers),
            format!("must be between 1 and {MAX_WORKERS}"),
        );
        let server_header = match HeaderValue::from_str(&s.ident) {
            Ok(value) if s.ident.is_ascii() => (!s.ident.is_empty()).then_some(value),
            _ => {
                c.problem(
                    "ident",
                    "must be printable ASCII: it is sent as the Server header",
                );
                None
            }
        };
        let scheme = Scheme::parse(&s.url_scheme);
        if scheme.is_none() {
            c.problem("url_scheme", "must be `http` or `https`");
        }
        let perms = c.check("unix_socket_perms", parse_octal_perms(&s.unix_socket_perms));
        let app_listeners = app_listeners(&mut c, s, perms);
        c.require("ipv4", s.ipv4 || s.ipv6, "ipv4 and ipv6 cannot both be off");
        c.require("backlog", s.backlog != 0, "must be at least 1");
        let target = s
            .app
            .as_ref()
            .and_then(|app| c.check("app", AppTarget::parse(app)));

        let limits = &s.limits;
        let max_head = limits.max_request_header_size;
        c.require(
            "limits.max_request_header_size",
            max_head.0 >= 64,
            "must be at least 64 bytes: no request line fits in less",
        );
        c.require(
            "limits.max_request_header_size",
            max_head.0 <= MAX_HEADER_SIZE,
            format!("must be at most {}", ByteSize(MAX_HEADER_SIZE)),
        );
        c.require(
            "limits.max_request_headers",
            (1..=10_000).contains(&limits.max_request_headers),
            "must be between 1 and 10000",
        );
        c.require(
            "limits.connection_limit",
            (1..=MAX_CONNECTION_LIMIT).contains(&limits.connection_limit),
            format!("must be between 1 and {MAX_CONNECTION_LIMIT}"),
        );
        c.require(
            "limits.outbuf_high_watermark",
            limits.outbuf_high_watermark.0 != 0,
            "must be at least 1 byte",
        );
        c.require(
            "limits.buffer_memory",
            limits.buffer_memory.0 >= 1 << 20,
            "must be at least 1MiB (it is shared by every connection)",
        );
        let timeouts = Timeouts {
            channel: c.timeout("limits.channel_timeout", limits.channel_timeout.0),
            header: c.timeout("limits.header_timeout", limits.header_timeout.0),
        };
        let body_timeout = c.timeout("limits.body_timeout", limits.body_timeout.0);
        let request_timeout = limits
            .request_timeout
            .map(|t| c.timeout("limits.request_timeout", t.0));
        let graceful_timeout = c.timeout("graceful_timeout", s.graceful_timeout.0);
        c.require(
            "shutdown_delay",
            s.shutdown_delay.0 <= MAX_TIMEOUT,
            "must be at most 7 days",
        );
        c.require(
            "limits.max_queue",
            (1..=MAX_CONNECTION_LIMIT).contains(&limits.max_queue),
            format!("must be between 1 and {MAX_CONNECTION_LIMIT}"),
        );
        let admin = host_ports(&mut c, "admin_listen", &s.admin_listen);
        let (proxy, proxy_warning) = proxy(&mut c, s);
        let pp = &s.proxy_protocol;
        let pp_trusted = c
            .check("proxy_protocol.trusted", TrustList::parse(&pp.trusted))
            .unwrap_or_default();
        c.require(
            "proxy_protocol.trusted",
            pp.listen.is_empty() || !pp.trusted.is_empty(),
            "is empty: list the load balancers allowed to send PROXY headers (or `*`)",
        );
        let pp_listen = host_ports(&mut c, "proxy_protocol.listen", &pp.listen);
        let script_name = super::normalize_prefix(&s.url_prefix);
        c.require(
            "url_prefix_strict",
            !s.url_prefix_strict || !script_name.is_empty(),
            "needs a url_prefix: with none every path is inside it",
        );
        let format = match s.log.format.as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => {
                c.problem("log.format", "must be `text` or `json`");
                None
            }
        };
        let access_format = AccessFormat::parse(&s.log.access_format);
        if access_format.is_none() {
            c.problem("log.access_format", "must be `combined` or `json`");
        }
        let level = c.check("log.level", log_directives(&s.log.level));

        let (Some(scheme), Some(format), Some(access_format), Some(level), true) =
            (scheme, format, access_format, level, c.problems.is_empty())
        else {
            return Err(c.problems);
        };
        Ok(Plan {
            app: AppPlan {
                target,
                call: s.call,
                app_dirs: s.app_dir.iter().map(PathBuf::from).collect(),
                virtualenv: s.virtualenv.as_ref().map(PathBuf::from),
            },
            listen: ListenPlan {
                app: app_listeners,
                proxy_protocol: pp_listen,
                proxy_protocol_trusted: Arc::new(pp_trusted),
                admin,
                ipv4: s.ipv4,
                ipv6: s.ipv6,
                backlog: i32::try_from(s.backlog).unwrap_or(i32::MAX),
            },
            workers: s.workers,
            pool: PoolPlan {
                threads: s.threads,
                max_queue: limits.max_queue,
                outbuf_high_water: limits.outbuf_high_watermark.as_usize(),
                outbuf_overflow: limits.outbuf_overflow.as_usize(),
                expose_tracebacks: s.expose_tracebacks,
            },
            environ: EnvironPlan {
                scheme,
                server_name: s.server_name.clone(),
                server_software: if s.ident.is_empty() {
                    "maitred".to_owned()
                } else {
                    s.ident.clone()
                },
                script_name,
            },
            gateway: GatewayPlan {
                proxy,
                url_prefix_strict: s.url_prefix_strict,
                max_body: limits.max_request_body_size.0,
                inbuf_overflow: limits.inbuf_overflow.as_usize(),
                server_header,
                ident: s.ident.clone(),
                body_timeout,
                request_timeout,
            },
            connections: ConnectionPlan {
                limit: limits.connection_limit,
                timeouts,
                max_head: max_head.as_usize(),
                max_headers: limits.max_request_headers,
                allow_bare_lf: s.allow_bare_lf,
                buffer_memory: limits.buffer_memory.0,
            },
            drain: DrainPlan {
                shutdown_delay: s.shutdown_delay.0,
                graceful_timeout,
            },
            log: LogPlan {
                level,
                format,
                access: s.log.access.then_some(access_format),
            },
            warnings: proxy_warning.into_iter().collect(),
        })
    }
}

/// The app's listeners: the Unix socket, or every `listen` entry once.
fn app_listeners(c: &mut Checker, s: &Settings, perms: Option<u32>) -> Vec<ListenSpec> {
    if let Some(path) = &s.unix_socket {
        return vec![ListenSpec::Unix {
            path: PathBuf::from(path),
            perms: perms.unwrap_or(0o600),
        }];
    }
    c.require(
        "listen",
        !s.listen.is_empty(),
        "is empty: give at least one HOST:PORT, or set unix_socket",
    );
    let mut specs = Vec::new();
    for at in host_ports(c, "listen", &s.listen) {
        let spec = ListenSpec::Tcp(at);
        if !specs.contains(&spec) {
            specs.push(spec);
        }
    }
    specs
}

fn host_ports(c: &mut Checker, key: &'static str, entries: &[String]) -> Vec<HostPort> {
    entries
        .iter()
        .filter_map(|entry| c.check(key, HostPort::parse(entry)))
        .collect()
}

/// The `[proxy]` table, with Waitress's rules, and a warning when peers are
/// trusted without naming the headers they set.
fn proxy(c: &mut Checker, s: &Settings) -> (ProxyConfig, Option<String>) {
    let p = &s.proxy;
    let trusted = c
        .check("proxy.trusted", TrustList::parse(&p.trusted))
        .unwrap_or_default();
    let mut headers = HeaderSet::NONE;
    for name in &p.headers {
        match Header::from_name(name.trim()) {
            Some(h) => headers.insert(h),
            None => c.problem(
                "proxy.headers",
                format!(
                    "`{name}` is not a forwarding header maitred knows; use {}",
                    Header::known_names()
                ),
            ),
        }
    }
    c.require(
        "proxy.headers",
        !headers.mixes_forwarded_with_x_forwarded(),
        "`forwarded` cannot be combined with x-forwarded-* headers: trust one or the other \
         (as in Waitress)",
    );
    if p.trusted.is_empty() {
        c.require(
            "proxy.count",
            p.count.is_none(),
            "has no effect without proxy.trusted",
        );
        c.require(
            "proxy.headers",
            p.headers.is_empty(),
            "has no effect without proxy.trusted",
        );
    }
    c.require("proxy.count", p.count != Some(0), "must be at least 1");
    let warning = (!p.trusted.is_empty() && p.headers.is_empty()).then(|| {
        "proxy.trusted is set but proxy.headers is not: only X-Forwarded-Proto is believed \
         (Waitress's old default); list the headers your proxy sets"
            .to_owned()
    });
    let config = ProxyConfig::new(
        trusted,
        p.count,
        headers,
        p.clear_untrusted,
        p.log_untrusted,
    );
    (config, warning)
}

/// A `tracing` filter (`info`, `maitred=debug,warn`), parsed as
/// `EnvFilter` parses one: comma-separated directives.
fn log_directives(spec: &str) -> Result<Vec<Directive>, String> {
    spec.split(',')
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse::<Directive>()
                .map_err(|e| format!("is not a level or filter: {e}"))
        })
        .collect()
}

/// An octal file mode such as `600`, `0660` or `0o660`.
pub fn parse_octal_perms(text: &str) -> Result<u32, String> {
    let digits = text.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 && !digits.is_empty() => Ok(mode),
        _ => Err(format!(
            "`{text}` is not an octal file mode such as 600 or 660"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(s: &Settings) -> Vec<&'static str> {
        match Plan::build(s) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.iter().map(|p| p.key).collect(),
        }
    }

    #[test]
    fn the_defaults_make_a_plan_like_waitress() {
        let plan = Plan::build(&Settings::default()).expect("the defaults are valid");
        assert_eq!(plan.pool.threads, 4);
        assert_eq!(plan.connections.limit, 1024);
        assert_eq!(plan.gateway.inbuf_overflow, 524_288);
        assert_eq!(plan.pool.outbuf_high_water, 16_777_216);
        assert_eq!(plan.connections.max_head, 262_144);
        assert_eq!(plan.gateway.max_body, 1_073_741_824);
        assert_eq!(plan.environ.scheme, Scheme::Http);
        assert_eq!(
            plan.listen.app,
            vec![ListenSpec::Tcp(HostPort {
                host: "0.0.0.0".into(),
                port: 8080
            })]
        );
        assert_eq!(
            plan.gateway.server_header,
            Some(HeaderValue::from_static("maitred"))
        );
        assert!(plan.log.access.is_none());
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn timeouts_carry_the_name_of_their_setting() {
        let plan = Plan::build(&Settings::default()).expect("valid");
        let names = [
            plan.connections.timeouts.channel.name,
            plan.connections.timeouts.header.name,
            plan.gateway.body_timeout.name,
            plan.drain.graceful_timeout.name,
        ];
        assert_eq!(
            names,
            [
                "channel_timeout",
                "header_timeout",
                "body_timeout",
                "graceful_timeout"
            ]
        );
        assert_eq!(
            plan.connections.timeouts.channel.after,
            Duration::from_secs(120)
        );
    }

    #[test]
    fn duplicate_listeners_collapse() {
        let s = Settings {
            listen: vec!["127.0.0.1:80".into(), "127.0.0.1:80".into()],
            ..Settings::default()
        };
        assert_eq!(Plan::build(&s).expect("valid").listen.app.len(), 1);
    }

    #[test]
    fn unix_socket_replaces_tcp() {
        let s = Settings {
            unix_socket: Some("/tmp/x.sock".into()),
            unix_socket_perms: "660".into(),
            ..Settings::default()
        };
        assert_eq!(
            Plan::build(&s).expect("valid").listen.app,
            vec![ListenSpec::Unix {
                path: "/tmp/x.sock".into(),
                perms: 0o660
            }]
        );
    }

    #[test]
    fn problems_name_their_key_in_settings_order() {
        let s = Settings {
            threads: 0,
            url_scheme: "ftp".into(),
            unix_socket_perms: "9x".into(),
            ident: "caf\u{e9}".into(),
            ..Settings::default()
        };
        assert_eq!(
            keys(&s),
            vec!["threads", "ident", "url_scheme", "unix_socket_perms"]
        );
    }

    #[test]
    fn an_empty_ident_sends_no_server_header() {
        let s = Settings {
            ident: String::new(),
            ..Settings::default()
        };
        let plan = Plan::build(&s).expect("valid");
        assert_eq!(plan.gateway.server_header, None);
        assert_eq!(plan.environ.server_software, "maitred");
    }

    #[test]
    fn proxy_rules() {
        let proxy = |trusted: &[&str], count: Option<u32>, headers: &[&str]| Settings {
            proxy: super::super::Proxy {
                trusted: trusted.iter().map(|s| (*s).to_owned()).collect(),
                count,
                headers: headers.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            },
            ..Settings::default()
        };
        assert_eq!(keys(&proxy(&["*"], Some(0), &[])), vec!["proxy.count"]);
        assert_eq!(
            keys(&proxy(&[], Some(2), &["x-forwarded-for"])),
            vec!["proxy.count", "proxy.headers"]
        );
        let plan = Plan::build(&proxy(&["10.0.0.1"], None, &[])).expect("valid");
        assert_eq!(plan.gateway.proxy.headers, HeaderSet::of(&[Header::Proto]));
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    }

    #[test]
    fn app_targets() {
        let parsed = AppTarget::parse("pkg.mod:app").expect("valid");
        assert_eq!(
            (parsed.module.as_str(), parsed.attr.as_str()),
            ("pkg.mod", "app")
        );
        let parsed = AppTarget::parse("pkg.mod.app").expect("valid");
        assert_eq!(
            (parsed.module.as_str(), parsed.attr.as_str()),
            ("pkg.mod", "app")
        );
        assert_eq!(parsed.text, "pkg.mod.app");
        let parsed = AppTarget::parse("mod:factory.attr").expect("valid");
        assert_eq!(parsed.attr, "factory.attr");
        assert!(AppTarget::parse("app").is_err());
        assert!(AppTarget::parse("my-app:app").is_err());
        assert!(AppTarget::parse("mod:").is_err());
    }

    #[test]
    fn octal_modes() {
        assert_eq!(parse_octal_perms("600"), Ok(0o600));
        assert_eq!(parse_octal_perms("0o660"), Ok(0o660));
        assert!(parse_octal_perms("800").is_err());
        assert!(parse_octal_perms("").is_err());
    }
}
