//! The list of settings: for each, its TOML key, its flag, the Waitress
//! spelling of that flag, and a one-line meaning.
//!
//! The command line, the environment-variable names, provenance messages and
//! the documentation checks are all derived from this table, so a setting is
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
pub enum Status {
    Implemented,
    /// Parsed and validated, but setting it is refused at start-up until the
    /// named work lands, so nobody believes it took effect.
    Pending(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Dotted TOML key, e.g. `limits.max_request_body_size`.
    pub key: &'static str,
    /// Long flag without the dashes.
    pub flag: &'static str,
    /// Other accepted flag spellings (Waitress's, where they differ).
    pub aliases: &'static [&'static str],
    pub kind: Kind,
    pub value_name: &'static str,
    pub help: &'static str,
    pub status: Status,
}

pub const ENV_PREFIX: &str = "MAITRED_";

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
    flag: &'static str,
    kind: Kind,
    value_name: &'static str,
    help: &'static str,
) -> Setting {
    Setting {
        key,
        flag,
        aliases: &[],
        kind,
        value_name,
        help,
        status: Status::Implemented,
    }
}

const fn aliased(mut s: Setting, aliases: &'static [&'static str]) -> Setting {
    s.aliases = aliases;
    s
}

const fn pending(mut s: Setting, work: &'static str) -> Setting {
    s.status = Status::Pending(work);
    s
}

use Kind::{List, Switch, Value};

const PROXY_WORK: &str = "trusted-proxy support";

#[rustfmt::skip]
pub static SETTINGS: &[Setting] = &[
    setting("app", "app", Value, "MODULE:CALLABLE", "WSGI application to serve (also the positional argument); unset serves the built-in demo page"),
    setting("call", "call", Switch, "", "Call the target (a factory, without arguments) to get the application"),
    setting("app_dir", "app-dir", List, "DIR", "Extra directory to put on sys.path; the current directory always is"),
    setting("virtualenv", "virtualenv", Value, "DIR", "Virtualenv whose packages the app imports [default: $VIRTUAL_ENV]"),
    setting("listen", "listen", List, "HOST:PORT", "Address to listen on: HOST:PORT, [IPV6]:PORT or *:PORT; repeatable"),
    setting("unix_socket", "unix-socket", Value, "PATH", "Listen on this Unix socket instead of TCP"),
    setting("unix_socket_perms", "unix-socket-perms", Value, "OCTAL", "Octal permissions of the Unix socket file"),
    setting("ipv4", "ipv4", Switch, "", "Let `*` in listen resolve to IPv4 addresses"),
    setting("ipv6", "ipv6", Switch, "", "Let `*` in listen resolve to IPv6 addresses"),
    setting("backlog", "backlog", Value, "N", "listen() backlog of each listener"),
    setting("threads", "threads", Value, "N", "Python threads running the application"),
    setting("url_scheme", "url-scheme", Value, "SCHEME", "Default wsgi.url_scheme: http or https"),
    setting("url_prefix", "url-prefix", Value, "PATH", "Mount point of the app; becomes SCRIPT_NAME"),
    setting("ident", "ident", Value, "NAME", "Server header and SERVER_SOFTWARE; empty omits the header"),
    setting("server_name", "server-name", Value, "NAME", "SERVER_NAME in the environ (never taken from Host)"),
    setting("expose_tracebacks", "expose-tracebacks", Switch, "", "Put the traceback into the body of 500 responses"),
    setting("limits.max_request_header_size", "max-request-header-size", Value, "SIZE", "Largest request line plus headers; larger gets 431"),
    setting("limits.max_request_headers", "max-request-headers", Value, "N", "Most header fields in one request; more get 431"),
    setting("limits.max_request_body_size", "max-request-body-size", Value, "SIZE", "Largest request body; larger gets 413"),
    setting("limits.inbuf_overflow", "inbuf-overflow", Value, "SIZE", "Request bodies above this are spooled to a temporary file"),
    setting("limits.outbuf_overflow", "outbuf-overflow", Value, "SIZE", "Pending response bytes above this are spooled to a temporary file"),
    setting("limits.outbuf_high_watermark", "outbuf-high-watermark", Value, "SIZE", "The app thread blocks while more than this waits to be sent"),
    setting("limits.connection_limit", "connection-limit", Value, "N", "Open connections at which maitred stops accepting"),
    setting("limits.channel_timeout", "channel-timeout", Value, "DURATION", "Close a connection idle this long with no request in flight"),
    pending(aliased(setting("proxy.trusted", "proxy-trusted", List, "ADDR", "Proxy addresses whose forwarding headers are trusted"), &["trusted-proxy"]), PROXY_WORK),
    pending(aliased(setting("proxy.count", "proxy-count", Value, "N", "Number of trusted proxy hops"), &["trusted-proxy-count"]), PROXY_WORK),
    pending(aliased(setting("proxy.headers", "proxy-headers", List, "HEADER", "Forwarding headers believed from trusted proxies"), &["trusted-proxy-headers"]), PROXY_WORK),
    aliased(setting("proxy.clear_untrusted", "proxy-clear-untrusted", Switch, "", "Remove untrusted forwarding headers before the app sees them"), &["clear-untrusted-proxy-headers"]),
    pending(aliased(setting("proxy.log_untrusted", "proxy-log-untrusted", Switch, "", "Log untrusted forwarding headers that were removed"), &["log-untrusted-proxy-headers"]), PROXY_WORK),
    setting("log.level", "log-level", Value, "LEVEL", "error, warn, info, debug, trace, or a tracing filter"),
    setting("log.format", "log-format", Value, "FORMAT", "text or json"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use std::collections::BTreeSet;

    /// Every leaf key of the serialized defaults, dotted.
    fn struct_keys() -> BTreeSet<String> {
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
    fn flags_are_unique() {
        let mut seen = BTreeSet::new();
        for s in SETTINGS {
            for f in std::iter::once(&s.flag).chain(s.aliases) {
                assert!(seen.insert(*f), "flag --{f} used twice");
                if s.kind == Kind::Switch {
                    assert!(seen.insert(Box::leak(format!("no-{f}").into_boxed_str())));
                }
            }
        }
        for (f, _) in WAITRESS_NO_OPS {
            assert!(seen.insert(*f), "no-op flag --{f} collides");
        }
    }

    #[test]
    fn env_var_names_nest_with_double_underscore() {
        assert_eq!(
            env_var("limits.max_request_body_size"),
            "MAITRED_LIMITS__MAX_REQUEST_BODY_SIZE"
        );
        assert_eq!(env_var("threads"), "MAITRED_THREADS");
    }
}
