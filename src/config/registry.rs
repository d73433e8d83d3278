//! The list of settings: for each, its TOML key, how it is written on the
//! command line, the Waitress spelling of its flag, and a one-line meaning.
//!
//! Each setting has one name in every layer, derived from its dotted TOML
//! key: `limits.max_request_body_size` is `[limits] max_request_body_size`
//! in the file, `MAITRED_LIMITS__MAX_REQUEST_BODY_SIZE` in the environment
//! and `--limits-max-request-body-size` on the command line (Waitress's
//! `--max-request-body-size` is an alias). The command line, the
//! environment-variable names, provenance messages, `config defaults` and
//! the documentation table are all derived from this table, so a setting is
//! added in exactly two places: the [`Settings`](super::Settings) struct and
//! here. A unit test fails if the two disagree.

/// How a setting is written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `--flag` sets true, `--no-flag` sets false.
    Switch,
    /// `--flag VALUE` or `--flag=VALUE`.
    Value,
    /// Repeatable `--flag VALUE`; each value may itself hold several items
    /// separated by commas or spaces.
    List,
}

/// Whether the behaviour behind a setting exists yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Implemented,
    /// Parsed and validated, but setting it is refused at start-up until the
    /// named work lands, so nobody believes it took effect.
    Pending(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Dotted TOML key, e.g. `limits.max_request_body_size`.
    pub key: &'static str,
    /// Other accepted flag spellings (Waitress's, where they differ).
    pub aliases: &'static [&'static str],
    pub kind: Kind,
    pub value_name: &'static str,
    pub help: &'static str,
    /// A value to show, commented out, for settings unset by default.
    pub example: Option<&'static str>,
    pub status: Availability,
    /// Printed as `<redacted>` by `config show`.
    pub secret: bool,
}

pub const ENV_PREFIX: &str = "MAITRED_";

impl Setting {
    /// `limits-max-request-body-size` for `limits.max_request_body_size`.
    pub fn flag(&self) -> String {
        self.key.replace(['.', '_'], "-")
    }

    pub fn env_var(&self) -> String {
        env_var(self.key)
    }

    /// The table it lives in (`limits`), or `None` at the top level.
    pub fn table(&self) -> Option<&'static str> {
        self.key.rsplit_once('.').map(|(t, _)| t)
    }

    /// The key within its table (`max_request_body_size`).
    pub fn leaf(&self) -> &'static str {
        self.key.rsplit_once('.').map_or(self.key, |(_, l)| l)
    }
}

/// `MAITRED_LIMITS__MAX_REQUEST_BODY_SIZE` for `limits.max_request_body_size`
/// (any dotted key, known or not, so typos can be named too).
pub fn env_var(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

const fn setting(
    key: &'static str,
    kind: Kind,
    value_name: &'static str,
    help: &'static str,
) -> Setting {
    Setting {
        key,
        aliases: &[],
        kind,
        value_name,
        help,
        example: None,
        status: Availability::Implemented,
        secret: false,
    }
}

const fn aliased(mut s: Setting, aliases: &'static [&'static str]) -> Setting {
    s.aliases = aliases;
    s
}

const fn example(mut s: Setting, value: &'static str) -> Setting {
    s.example = Some(value);
    s
}

#[allow(dead_code)] // for settings whose behaviour lands later
const fn pending(mut s: Setting, work: &'static str) -> Setting {
    s.status = Availability::Pending(work);
    s
}

use Kind::{List, Switch, Value};

#[rustfmt::skip]
pub static SETTINGS: &[Setting] = &[
    example(setting("app", Value, "MODULE:CALLABLE", "WSGI application to serve (also the positional argument); unset serves the built-in demo page"), "\"myproject.wsgi:application\""),
    setting("call", Switch, "", "Call the target (a factory, without arguments) to get the application"),
    example(setting("app_dir", List, "DIR", "Extra directories put on sys.path before installed packages; the current directory is always on it"), "[\"/srv/app\"]"),
    example(setting("virtualenv", Value, "DIR", "Virtualenv whose packages the app imports; unset uses $VIRTUAL_ENV if set"), "\"/srv/app/.venv\""),
    setting("listen", List, "HOST:PORT", "Addresses to listen on: HOST:PORT, [IPV6]:PORT or *:PORT (every address); repeatable"),
    example(setting("unix_socket", Value, "PATH", "Listen on this Unix socket instead of TCP"), "\"/run/maitred/app.sock\""),
    setting("unix_socket_perms", Value, "OCTAL", "Octal permissions of the Unix socket file"),
    setting("ipv4", Switch, "", "Let `*` and host names in listen resolve to IPv4 addresses"),
    setting("ipv6", Switch, "", "Let `*` and host names in listen resolve to IPv6 addresses"),
    setting("backlog", Value, "N", "listen() backlog of each listener"),
    setting("threads", Value, "N", "Python threads running the application (in each worker process)"),
    setting("workers", Value, "N", "Worker processes, each with its own Python interpreter and threads, sharing the listeners; a supervisor restarts those that die and serves one /metrics for all. 1: a single process"),
    setting("url_scheme", Value, "SCHEME", "Default wsgi.url_scheme: http or https"),
    setting("url_prefix", Value, "PATH", "Mount point of the app; becomes SCRIPT_NAME (paths outside it pass unchanged)"),
    setting("url_prefix_strict", Switch, "", "Answer 404 for paths outside url_prefix instead of passing them through unchanged (Waitress)"),
    setting("ident", Value, "NAME", "Server header and SERVER_SOFTWARE; empty omits the header"),
    setting("server_name", Value, "NAME", "SERVER_NAME in the environ (never taken from Host)"),
    setting("expose_tracebacks", Switch, "", "Put the traceback into the body of 500 responses (never in production)"),
    setting("allow_bare_lf", Switch, "", "Accept a bare LF (no CR) as a line ending in request heads (hyper refuses one in chunk lines either way); off, such requests get 400, because a front end that splits lines differently can smuggle a request past it"),
    setting("shutdown_delay", Value, "DURATION", "After SIGTERM/SIGINT, keep serving this long (readiness already failing) so load balancers stop sending, then close the listeners"),
    setting("graceful_timeout", Value, "DURATION", "After the listeners close, how long requests in flight get to finish before the process exits anyway"),
    setting("admin_listen", List, "HOST:PORT", "Admin listener for /livez, /healthz, /readyz and /metrics (Prometheus), apart from the app listeners; empty disables it"),
    aliased(setting("limits.max_request_header_size", Value, "SIZE", "Largest request line plus headers; larger gets 431"), &["max-request-header-size"]),
    setting("limits.max_request_headers", Value, "N", "Most header fields in one request; more get 431"),
    aliased(setting("limits.max_request_body_size", Value, "SIZE", "Largest request body; larger gets 413, checked as it arrives"), &["max-request-body-size"]),
    aliased(setting("limits.inbuf_overflow", Value, "SIZE", "Request bodies above this are spooled to a temporary file"), &["inbuf-overflow"]),
    aliased(setting("limits.outbuf_overflow", Value, "SIZE", "Pending response bytes above this wait in a temporary file"), &["outbuf-overflow"]),
    aliased(setting("limits.outbuf_high_watermark", Value, "SIZE", "The app's thread waits while more than this is waiting to be sent"), &["outbuf-high-watermark"]),
    setting("limits.buffer_memory", Value, "SIZE", "Memory that request bodies and responses waiting to be sent may take over all connections together; past it, bodies and pending output go to temporary files, and a connection whose client has stopped reading its response is cut"),
    aliased(setting("limits.connection_limit", Value, "N", "Open connections at which maitred stops accepting"), &["connection-limit"]),
    aliased(setting("limits.channel_timeout", Value, "DURATION", "A connection waiting this long on its client with nothing moving (idle keep-alive, an unread response) is closed"), &["channel-timeout"]),
    setting("limits.header_timeout", Value, "DURATION", "From a request head's first byte to its last; slower heads (slowloris) are cut off"),
    setting("limits.body_timeout", Value, "DURATION", "Longest pause between two pieces of a request body; a stalled upload gets 408"),
    example(setting("limits.request_timeout", Value, "DURATION", "Longest a request may wait for and run in the app before its response starts; then the client gets 504 (the Python thread cannot be stopped: it counts as stuck and another starts in its place); unset: no limit"), "\"30s\""),
    setting("limits.max_queue", Value, "N", "Requests waiting for a Python thread; more get 503 with Retry-After"),
    aliased(setting("proxy.trusted", List, "ADDR", "Peers whose forwarding headers are believed: IPs, CIDR ranges, * (any), unix (Unix-socket peers), localhost (loopback and Unix sockets)"), &["trusted-proxy"]),
    example(aliased(setting("proxy.count", Value, "N", "Proxy hops to believe; unset walks the chain past trusted addresses (one hop for *)"), &["trusted-proxy-count"]), "2"),
    aliased(setting("proxy.headers", List, "HEADER", "Forwarding headers believed from trusted peers: x-forwarded-for, -host, -proto, -port, -by, -prefix, or forwarded; unset with a trusted peer means x-forwarded-proto only (Waitress)"), &["trusted-proxy-headers"]),
    aliased(setting("proxy.clear_untrusted", Switch, "", "Remove forwarding headers that are not trusted before the app sees them"), &["clear-untrusted-proxy-headers"]),
    aliased(setting("proxy.log_untrusted", Switch, "", "Log the untrusted forwarding headers that were removed"), &["log-untrusted-proxy-headers"]),
    setting("proxy_protocol.listen", List, "HOST:PORT", "Extra listeners where every connection starts with a PROXY protocol (v1 or v2) header, as from AWS NLB or HAProxy"),
    setting("proxy_protocol.trusted", List, "ADDR", "Load balancers allowed to connect to those listeners: IPs, CIDR ranges or *"),
    setting("log.level", Value, "LEVEL", "error, warn, info, debug, trace, or a tracing filter such as maitred=debug (RUST_LOG wins)"),
    setting("log.format", Value, "FORMAT", "Server and application log format on stderr: text or json"),
    setting("log.access", Switch, "", "Write an access log line per request to stdout (off by default, as in Waitress)"),
    setting("log.access_format", Value, "FORMAT", "Access log format: combined (Apache/nginx) or json (one object per line, OpenTelemetry attribute names)"),
];

/// Waitress flags that tune its asyncore loop and have no counterpart here.
/// They are accepted so a `waitress-serve` command line keeps working, and a
/// warning says they do nothing.
pub static WAITRESS_NO_OPS: &[(&str, Kind)] = &[
    ("recv-bytes", Value),
    ("send-bytes", Value),
    ("asyncore-loop-timeout", Value),
    ("asyncore-use-poll", Switch),
    ("cleanup-interval", Value),
    ("log-socket-errors", Switch),
    ("channel-request-lookahead", Value),
];

pub fn by_key(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

/// The tables, in the order the settings list them (top level first).
pub fn tables() -> Vec<Option<&'static str>> {
    let mut tables: Vec<Option<&'static str>> = vec![None];
    for s in SETTINGS {
        if !tables.contains(&s.table()) {
            tables.push(s.table());
        }
    }
    tables
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use std::collections::BTreeSet;

    /// Every leaf key of the serialized defaults, dotted.
    pub fn struct_keys() -> BTreeSet<String> {
        fn walk(prefix: &str, value: &serde_json::Value, out: &mut BTreeSet<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&key, v, out);
                    }
                }
                _ => {
                    out.insert(prefix.to_owned());
                }
            }
        }
        let mut out = BTreeSet::new();
        let value = serde_json::to_value(Settings::default()).expect("settings serialize");
        walk("", &value, &mut out);
        out
    }

    #[test]
    fn registry_matches_the_settings_struct() {
        let registry: BTreeSet<String> = SETTINGS.iter().map(|s| s.key.to_owned()).collect();
        assert_eq!(registry, struct_keys());
    }

    #[test]
    fn top_level_settings_come_before_tables() {
        // TOML output depends on it: a key after a [table] belongs to it.
        let first_nested = SETTINGS.iter().position(|s| s.table().is_some());
        let last_top = SETTINGS.iter().rposition(|s| s.table().is_none());
        assert!(last_top < first_nested);
    }

    #[test]
    fn flags_are_unique() {
        let mut seen = BTreeSet::new();
        for s in SETTINGS {
            let mut spellings = vec![s.flag()];
            spellings.extend(s.aliases.iter().map(|a| (*a).to_owned()));
            for f in spellings {
                if s.kind == Kind::Switch {
                    assert!(seen.insert(format!("no-{f}")), "--no-{f} used twice");
                }
                assert!(seen.insert(f.clone()), "--{f} used twice");
            }
        }
        for (f, _) in WAITRESS_NO_OPS {
            assert!(seen.insert((*f).to_owned()), "no-op flag --{f} collides");
        }
        for cli_only in ["config", "host", "port", "help", "version"] {
            assert!(!seen.contains(cli_only), "--{cli_only} is reserved");
        }
    }

    #[test]
    fn names_are_derived_from_the_key() {
        let s = by_key("limits.max_request_body_size").expect("setting");
        assert_eq!(s.flag(), "limits-max-request-body-size");
        assert_eq!(s.env_var(), "MAITRED_LIMITS__MAX_REQUEST_BODY_SIZE");
        assert_eq!(s.aliases, ["max-request-body-size"]);
        assert_eq!(
            (s.table(), s.leaf()),
            (Some("limits"), "max_request_body_size")
        );
        assert_eq!(env_var("threads"), "MAITRED_THREADS");
    }

    #[test]
    fn unset_defaults_have_an_example() {
        let defaults = serde_json::to_value(Settings::default()).expect("serialize");
        for s in SETTINGS {
            let mut v = &defaults;
            for part in s.key.split('.') {
                v = &v[part];
            }
            if v.is_null() {
                assert!(
                    s.example.is_some(),
                    "{} is unset by default but has no example",
                    s.key
                );
            }
        }
    }
}
