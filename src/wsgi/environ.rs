//! The CGI part of the WSGI environ, computed from a parsed request.
//!
//! Everything here is plain Rust over the request head, run on the I/O
//! thread before the request is queued, so the Python thread only turns
//! finished strings into dict entries. The rules are Waitress's
//! (`task.py:get_environment`), with the deviations noted where they occur.

use std::net::SocketAddr;

use http::{HeaderMap, Uri, Version};

use crate::proxy::{Header, Outcome};

/// Per-request environ keys. Keys that are the same for every request
/// (`SERVER_NAME`, `SCRIPT_NAME`, `wsgi.*`) live in the worker's template
/// dict instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    RequestMethod,
    PathInfo,
    QueryString,
    RequestUri,
    ContentType,
    ContentLength,
    ServerPort,
    ServerProtocol,
    RemoteAddr,
    RemoteHost,
    RemotePort,
    /// Overrides of template entries, set only when a trusted proxy says so.
    UrlScheme,
    ServerName,
    ScriptName,
    /// The connection's own peer, kept when a proxy rewrote REMOTE_ADDR.
    PeerAddr,
    PeerPort,
}

impl Var {
    pub const ALL: [Var; 16] = [
        Var::RequestMethod,
        Var::PathInfo,
        Var::QueryString,
        Var::RequestUri,
        Var::ContentType,
        Var::ContentLength,
        Var::ServerPort,
        Var::ServerProtocol,
        Var::RemoteAddr,
        Var::RemoteHost,
        Var::RemotePort,
        Var::UrlScheme,
        Var::ServerName,
        Var::ScriptName,
        Var::PeerAddr,
        Var::PeerPort,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Var::RequestMethod => "REQUEST_METHOD",
            Var::PathInfo => "PATH_INFO",
            Var::QueryString => "QUERY_STRING",
            Var::RequestUri => "REQUEST_URI",
            Var::ContentType => "CONTENT_TYPE",
            Var::ContentLength => "CONTENT_LENGTH",
            Var::ServerPort => "SERVER_PORT",
            Var::ServerProtocol => "SERVER_PROTOCOL",
            Var::RemoteAddr => "REMOTE_ADDR",
            Var::RemoteHost => "REMOTE_HOST",
            Var::RemotePort => "REMOTE_PORT",
            Var::UrlScheme => "wsgi.url_scheme",
            Var::ServerName => "SERVER_NAME",
            Var::ScriptName => "SCRIPT_NAME",
            Var::PeerAddr => "maitred.peer_addr",
            Var::PeerPort => "maitred.peer_port",
        }
    }
}

/// The environ entries of one request: fixed CGI keys and `HTTP_*` keys.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CgiVars {
    pub vars: Vec<(Var, String)>,
    pub headers: Vec<(String, String)>,
    /// The path lies outside `url_prefix` (passed through unchanged).
    pub outside_prefix: bool,
}

impl CgiVars {
    pub fn get(&self, var: Var) -> Option<&str> {
        self.vars
            .iter()
            .find(|(v, _)| *v == var)
            .map(|(_, s)| s.as_str())
    }

    #[cfg(test)]
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, s)| s.as_str())
    }
}

/// Which end of which socket a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp {
        remote: SocketAddr,
        local: SocketAddr,
    },
    Unix,
}

/// The settings that shape the environ.
#[derive(Debug, Clone)]
pub struct EnvironConfig {
    /// Normalised `url_prefix` (`/app` or empty).
    pub script_name: String,
    /// Port reported for Unix-socket requests, which have none.
    pub unix_port: &'static str,
}

/// What one request looks like to the environ builder.
pub struct Head<'a> {
    pub method: &'a str,
    pub uri: &'a Uri,
    pub version: Version,
    pub headers: &'a HeaderMap,
    /// Decoded body length when the request had a body (Content-Length or
    /// chunked); `None` when it had no body framing at all.
    pub body_len: Option<u64>,
}

/// The environ entries of a request, with what trusted proxies said
/// (`outcome`) applied.
pub fn cgi_vars(head: &Head<'_>, peer: &Peer, cfg: &EnvironConfig, outcome: &Outcome) -> CgiVars {
    let mut vars = Vec::with_capacity(12);
    vars.push((Var::RequestMethod, head.method.to_owned()));
    let (path, inside) = path_info(head.uri.path(), &cfg.script_name);
    vars.push((Var::PathInfo, path));
    vars.push((Var::QueryString, head.uri.query().unwrap_or("").to_owned()));
    vars.push((Var::RequestUri, head.uri.to_string()));
    vars.push((Var::ServerProtocol, protocol(head.version).to_owned()));
    let (addr, port, server_port) = match peer {
        Peer::Tcp { remote, local } => (
            remote.ip().to_canonical().to_string(),
            remote.port().to_string(),
            local.port().to_string(),
        ),
        // Waitress reports "localhost" and the string "None"; the port of a
        // Unix socket is reported as the scheme's default so code that
        // rebuilds URLs from SERVER_PORT gets a sensible answer.
        Peer::Unix => (
            "localhost".to_owned(),
            String::new(),
            cfg.unix_port.to_owned(),
        ),
    };
    if outcome.remote_addr.is_some() {
        vars.push((Var::PeerAddr, addr.clone()));
        vars.push((Var::PeerPort, port.clone()));
    }
    let remote_addr = outcome.remote_addr.clone().unwrap_or(addr);
    vars.push((Var::RemoteHost, remote_addr.clone()));
    vars.push((Var::RemoteAddr, remote_addr));
    vars.push((Var::RemotePort, outcome.remote_port.clone().unwrap_or(port)));
    vars.push((
        Var::ServerPort,
        outcome.server_port.clone().unwrap_or(server_port),
    ));
    if let Some(scheme) = &outcome.url_scheme {
        vars.push((Var::UrlScheme, scheme.clone()));
    }
    if let Some(name) = &outcome.server_name {
        vars.push((Var::ServerName, name.clone()));
    }
    if let Some(prefix) = &outcome.prefix {
        vars.push((Var::ScriptName, format!("{prefix}{}", cfg.script_name)));
    }
    if let Some(len) = head.body_len {
        vars.push((Var::ContentLength, len.to_string()));
    }
    let mut headers: Vec<(String, String)> = Vec::with_capacity(head.headers.keys_len());
    let mut rewritten = crate::proxy::HeaderSet::NONE;
    for (name, value) in head.headers {
        let name = name.as_str();
        match name {
            "content-type" => {
                vars.push((Var::ContentType, latin1(value.as_bytes())));
                continue;
            }
            // CONTENT_LENGTH is the decoded length, set above. The body is
            // de-chunked before the app sees it, so Transfer-Encoding would
            // only mislead (Waitress drops it too).
            "content-length" | "transfer-encoding" => continue,
            "host" if outcome.http_host.is_some() => continue,
            _ => {}
        }
        // `X_Forwarded_For` must not be able to pose as `X-Forwarded-For`
        // once both become HTTP_X_FORWARDED_FOR, so names with underscores
        // are dropped, as Waitress and nginx do.
        if name.contains('_') {
            continue;
        }
        if let Some(h) = Header::from_name(name) {
            if outcome.remove.contains(h) {
                continue;
            }
            if let Some((_, v)) = outcome.rewrite.iter().find(|(r, _)| *r == h) {
                // A rewritten header replaces all its lines, once.
                if !rewritten.contains(h) {
                    rewritten.insert(h);
                    headers.push((header_key(name), v.clone()));
                }
                continue;
            }
        }
        let key = header_key(name);
        let value = latin1(value.as_bytes());
        match headers.iter_mut().find(|(k, _)| *k == key) {
            Some((_, joined)) => {
                // Cookie pairs are separated by "; " (RFC 6265 §5.4); ", "
                // would merge two cookies into one value.
                joined.push_str(if name == "cookie" { "; " } else { ", " });
                joined.push_str(&value);
            }
            None => headers.push((key, value)),
        }
    }
    if let Some(host) = &outcome.http_host {
        headers.push(("HTTP_HOST".to_owned(), host.clone()));
    }
    CgiVars {
        vars,
        headers,
        outside_prefix: !inside,
    }
}

pub fn protocol(version: Version) -> &'static str {
    if version == Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    }
}

/// `user-agent` becomes `HTTP_USER_AGENT`.
pub fn header_key(name: &str) -> String {
    let mut key = String::with_capacity(5 + name.len());
    key.push_str("HTTP_");
    key.extend(name.chars().map(|c| match c {
        '-' => '_',
        c => c.to_ascii_uppercase(),
    }));
    key
}

/// PEP 3333 "native strings" carry bytes as latin-1: each byte one char.
pub fn latin1(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.is_ascii() => s.to_owned(),
        _ => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

/// Percent-decodes the path, collapses its leading slashes and applies the
/// `url_prefix` the way Waitress does: a path outside the prefix passes
/// through unchanged (no 404), with SCRIPT_NAME still set to the prefix.
/// The flag says whether the path was inside the prefix.
pub fn path_info(raw_path: &str, script_name: &str) -> (String, bool) {
    let decoded = percent_decode(raw_path.as_bytes());
    let start = decoded
        .iter()
        .position(|&b| b != b'/')
        .unwrap_or(decoded.len());
    let path: &[u8] = if start > 1 {
        &decoded[start - 1..]
    } else {
        &decoded
    };
    let prefix = script_name.as_bytes();
    let (path, inside): (&[u8], bool) = if prefix.is_empty() {
        (path, true)
    } else if path == prefix {
        (b"", true)
    } else if path.starts_with(prefix) && path.get(prefix.len()) == Some(&b'/') {
        (&path[prefix.len()..], true)
    } else {
        (path, false)
    };
    (latin1(path), inside)
}

/// `%41` becomes `A`; malformed escapes stay as they are
/// (`urllib.parse.unquote_to_bytes` behaves the same).
pub fn percent_decode(input: &[u8]) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            if let (Some(h), Some(l)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cfg() -> EnvironConfig {
        EnvironConfig {
            script_name: String::new(),
            unix_port: "80",
        }
    }

    /// What the proxy stage gives a request from an untrusted peer.
    fn untrusted() -> Outcome {
        Outcome {
            remove: crate::proxy::HeaderSet::ALL,
            ..Outcome::default()
        }
    }

    fn tcp() -> Peer {
        Peer::Tcp {
            remote: "[::ffff:192.0.2.7]:5555".parse().expect("addr"),
            local: "127.0.0.1:8080".parse().expect("addr"),
        }
    }

    fn build(uri: &str, headers: &[(&str, &[u8])], outcome: &Outcome) -> CgiVars {
        let uri: Uri = uri.parse().expect("uri");
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_bytes(value).expect("value"),
            );
        }
        let head = Head {
            method: "GET",
            uri: &uri,
            version: Version::HTTP_11,
            headers: &map,
            body_len: None,
        };
        cgi_vars(&head, &tcp(), &cfg(), outcome)
    }

    #[test]
    fn basic_cgi_variables() {
        let env = build("/a%20b/c?x=%20y", &[], &untrusted());
        assert_eq!(env.get(Var::PathInfo), Some("/a b/c"));
        assert_eq!(env.get(Var::QueryString), Some("x=%20y"), "query stays raw");
        assert_eq!(env.get(Var::RequestUri), Some("/a%20b/c?x=%20y"));
        assert_eq!(
            env.get(Var::RemoteAddr),
            Some("192.0.2.7"),
            "v4-mapped shown as v4"
        );
        assert_eq!(env.get(Var::RemotePort), Some("5555"));
        assert_eq!(env.get(Var::ServerPort), Some("8080"));
        assert_eq!(env.get(Var::ServerProtocol), Some("HTTP/1.1"));
        assert_eq!(env.get(Var::ContentLength), None, "no body framing, no key");
    }

    #[test]
    fn headers_join_drop_underscores_and_proxy_headers() {
        let env = build(
            "/",
            &[
                ("x-a", b"1"),
                ("x-a", b"2"),
                ("x_a", b"spoof"),
                ("cookie", b"a=1"),
                ("cookie", b"b=2"),
                ("x-forwarded-for", b"6.6.6.6"),
                ("forwarded", b"for=6.6.6.6"),
                ("content-type", b"text/plain"),
                ("transfer-encoding", b"chunked"),
                ("x-latin", b"caf\xe9"),
            ],
            &untrusted(),
        );
        assert_eq!(env.header("HTTP_X_A"), Some("1, 2"));
        assert_eq!(env.header("HTTP_COOKIE"), Some("a=1; b=2"));
        assert_eq!(env.header("HTTP_X_FORWARDED_FOR"), None);
        assert_eq!(env.header("HTTP_FORWARDED"), None);
        assert_eq!(env.header("HTTP_TRANSFER_ENCODING"), None);
        assert_eq!(env.header("HTTP_CONTENT_TYPE"), None);
        assert_eq!(env.get(Var::ContentType), Some("text/plain"));
        assert_eq!(env.header("HTTP_X_LATIN"), Some("café"));
        assert_eq!(
            env.headers.iter().filter(|(k, _)| k == "HTTP_X_A").count(),
            1
        );
    }

    #[test]
    fn proxy_headers_kept_when_clearing_is_off() {
        let env = build("/", &[("x-forwarded-for", b"1.2.3.4")], &Outcome::default());
        assert_eq!(env.header("HTTP_X_FORWARDED_FOR"), Some("1.2.3.4"));
    }

    #[test]
    fn path_info_follows_waitress() {
        assert_eq!(path_info("//x//y", "").0, "/x//y");
        assert_eq!(path_info("/a%2Fb", "").0, "/a/b");
        assert_eq!(path_info("/caf%E9", "").0, "/café");
        assert_eq!(path_info("/bad%zz", "").0, "/bad%zz");
        assert_eq!(path_info("*", "").0, "*");
        // Waitress's url_prefix table (notes §3).
        assert_eq!(path_info("/app/x/y", "/app").0, "/x/y");
        assert_eq!(path_info("/app", "/app").0, "");
        assert_eq!(path_info("/app/", "/app").0, "/");
        assert_eq!(path_info("/application", "/app").0, "/application");
        assert_eq!(path_info("/other", "/app").0, "/other");
        assert_eq!(path_info("/%61pp/z", "/app").0, "/z");
    }

    #[test]
    fn absolute_form_uses_only_the_path() {
        let env = build("http://other:81/p/q?z=1", &[], &untrusted());
        assert_eq!(env.get(Var::PathInfo), Some("/p/q"));
        assert_eq!(env.get(Var::QueryString), Some("z=1"));
        assert_eq!(env.get(Var::RequestUri), Some("http://other:81/p/q?z=1"));
    }

    #[test]
    fn unix_peers() {
        let uri: Uri = "/".parse().expect("uri");
        let head = Head {
            method: "POST",
            uri: &uri,
            version: Version::HTTP_10,
            headers: &HeaderMap::new(),
            body_len: Some(0),
        };
        let env = cgi_vars(&head, &Peer::Unix, &cfg(), &untrusted());
        assert_eq!(env.get(Var::RemoteAddr), Some("localhost"));
        assert_eq!(env.get(Var::ServerPort), Some("80"));
        assert_eq!(env.get(Var::ServerProtocol), Some("HTTP/1.0"));
        assert_eq!(env.get(Var::ContentLength), Some("0"));
    }
}
