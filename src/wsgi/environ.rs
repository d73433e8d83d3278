//! The CGI part of the WSGI environ, computed from a parsed request.
//!
//! Everything here is plain Rust over the request head, run on the I/O
//! thread before the request is queued, so the Python thread only turns
//! finished strings into dict entries. The rules are Waitress's
//! (`task.py:get_environment`), with the deviations noted where they occur.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, Uri, Version};

use crate::config::plan::EnvironPlan;
use crate::proxy::{Header, HeaderSet, ProxyVerdict};

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
///
/// All text lives in one buffer and the entries are spans into it, so a
/// request's environ costs two allocations, not one per string: it is
/// built on the I/O thread and freed on a Python thread, and every
/// allocation that crosses threads costs the allocator more than a local
/// one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CgiVars {
    text: String,
    entries: Vec<(Key, Span)>,
    /// The path lies outside `url_prefix` (passed through unchanged).
    pub outside_prefix: bool,
}

/// A byte range of [`CgiVars::text`].
type Span = (u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Var(Var),
    /// An `HTTP_*` name, itself a span of the text.
    Header(Span),
}

/// One environ entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry<'a> {
    Var(Var, &'a str),
    Header(&'a str, &'a str),
}

impl CgiVars {
    fn with_capacity(text: usize, entries: usize) -> CgiVars {
        CgiVars {
            text: String::with_capacity(text),
            entries: Vec::with_capacity(entries),
            outside_prefix: false,
        }
    }

    fn span(&self, (start, end): Span) -> &str {
        self.text.get(start as usize..end as usize).unwrap_or("")
    }

    /// Appends text written by `write` and returns its span.
    fn write(&mut self, write: impl FnOnce(&mut String)) -> Span {
        let start = self.text.len();
        write(&mut self.text);
        // Heads are bounded by max_request_header_size (far below 4 GiB).
        (
            u32::try_from(start).unwrap_or(u32::MAX),
            u32::try_from(self.text.len()).unwrap_or(u32::MAX),
        )
    }

    fn var(&mut self, var: Var, value: &str) {
        let span = self.write(|t| t.push_str(value));
        self.entries.push((Key::Var(var), span));
    }

    fn var_with(&mut self, var: Var, write: impl FnOnce(&mut String)) {
        let span = self.write(write);
        self.entries.push((Key::Var(var), span));
    }

    /// `var` with the value `of` already has (which must have been set).
    fn alias(&mut self, var: Var, of: Var) {
        let span = self.entries.iter().rev().find_map(|(k, v)| match k {
            Key::Var(x) if *x == of => Some(*v),
            _ => None,
        });
        if let Some(span) = span {
            self.entries.push((Key::Var(var), span));
        }
    }

    /// A header entry; `name` is the wire name (`user-agent`).
    fn header(&mut self, name: &str, write: impl FnOnce(&mut String)) {
        let key = self.write(|t| push_header_key(t, name));
        let value = self.write(write);
        self.entries.push((Key::Header(key), value));
    }

    /// Appends `sep` and more text to the value of the entry just added
    /// (whose value ends the text, as the last one written).
    fn extend_last(&mut self, sep: &str, bytes: &[u8]) {
        self.text.push_str(sep);
        push_latin1(&mut self.text, bytes);
        let end = u32::try_from(self.text.len()).unwrap_or(u32::MAX);
        if let Some((_, (_, last_end))) = self.entries.last_mut() {
            *last_end = end;
        }
    }

    #[cfg(test)]
    pub fn get(&self, var: Var) -> Option<&str> {
        self.entries.iter().find_map(|(k, v)| match k {
            Key::Var(x) if *x == var => Some(self.span(*v)),
            _ => None,
        })
    }

    /// Every entry, in the order the environ gets them.
    pub fn iter(&self) -> impl Iterator<Item = Entry<'_>> {
        self.entries.iter().map(|(k, v)| match k {
            Key::Var(var) => Entry::Var(*var, self.span(*v)),
            Key::Header(key) => Entry::Header(self.span(*key), self.span(*v)),
        })
    }

    #[cfg(test)]
    pub fn header_value(&self, key: &str) -> Option<&str> {
        self.iter().find_map(|e| match e {
            Entry::Header(k, v) if k == key => Some(v),
            _ => None,
        })
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

/// What one request looks like to the environ builder.
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub uri: &'a Uri,
    pub version: Version,
    pub headers: &'a HeaderMap,
    /// Decoded body length when the request had a body (Content-Length or
    /// chunked); `None` when it had no body framing at all.
    pub body_len: Option<u64>,
}

/// The environ entries of a request, with what trusted proxies said
/// (`verdict`) applied.
pub fn cgi_vars(
    head: &RequestHead<'_>,
    peer: &Peer,
    cfg: &EnvironPlan,
    verdict: &ProxyVerdict,
) -> CgiVars {
    let uri = head.uri;
    let mut env = CgiVars::with_capacity(
        128 + 2 * uri.path().len() + 3 * head.headers.keys_len() * 24,
        16 + head.headers.keys_len(),
    );
    env.var(Var::RequestMethod, head.method);
    let (path, inside) = path_info(uri.path(), &cfg.script_name);
    env.var(Var::PathInfo, &path);
    env.outside_prefix = !inside;
    env.var(Var::QueryString, uri.query().unwrap_or(""));
    env.var_with(Var::RequestUri, |t| push_request_uri(t, uri));
    env.var(Var::ServerProtocol, protocol(head.version));
    // Waitress reports "localhost" and the string "None" for a Unix
    // socket; its port is reported as the scheme's default so code that
    // rebuilds URLs from SERVER_PORT gets a sensible answer.
    let push_addr = |t: &mut String| match peer {
        Peer::Tcp { remote, .. } => push_ip(t, remote.ip()),
        Peer::Unix => t.push_str("localhost"),
    };
    let push_port = |t: &mut String| {
        if let Peer::Tcp { remote, .. } = peer {
            push_u64(t, u64::from(remote.port()));
        }
    };
    if verdict.remote_addr.is_some() {
        env.var_with(Var::PeerAddr, push_addr);
        env.var_with(Var::PeerPort, push_port);
    }
    match &verdict.remote_addr {
        Some(addr) => env.var(Var::RemoteAddr, addr),
        None => env.var_with(Var::RemoteAddr, push_addr),
    }
    // Waitress sets REMOTE_HOST to the address too (no reverse lookup).
    env.alias(Var::RemoteHost, Var::RemoteAddr);
    match &verdict.remote_port {
        Some(port) => env.var(Var::RemotePort, port),
        None => env.var_with(Var::RemotePort, push_port),
    }
    match (&verdict.server_port, peer) {
        (Some(port), _) => env.var(Var::ServerPort, port),
        (None, Peer::Tcp { local, .. }) => {
            env.var_with(Var::ServerPort, |t| push_u64(t, u64::from(local.port())));
        }
        (None, Peer::Unix) => env.var(Var::ServerPort, cfg.scheme.default_port_text()),
    }
    if let Some(scheme) = verdict.url_scheme {
        env.var(Var::UrlScheme, scheme.as_str());
    }
    if let Some(name) = &verdict.server_name {
        env.var(Var::ServerName, name);
    }
    if let Some(prefix) = &verdict.prefix {
        env.var_with(Var::ScriptName, |t| {
            t.push_str(prefix);
            t.push_str(&cfg.script_name);
        });
    }
    if let Some(len) = head.body_len {
        env.var_with(Var::ContentLength, |t| push_u64(t, len));
    }
    // `HTTP_HOST` other than the `Host` header: a trusted proxy's, or else
    // an absolute-form target's authority, which RFC 9112 §3.2.2 says wins
    // over `Host` (without userinfo, which is not part of a host).
    let authority = uri.authority().map(|a| {
        a.as_str()
            .rsplit_once('@')
            .map_or(a.as_str(), |(_, host)| host)
    });
    let host = verdict.http_host.as_deref().or(authority);
    let mut rewritten = HeaderSet::NONE;
    // The header whose entry was added last through the joining path
    // below: HeaderMap yields a header's lines one after another, and all
    // lines of a name take the same path, so a line of the same name
    // continues that entry.
    let mut joining: Option<&str> = None;
    for (name, value) in head.headers {
        let name = name.as_str();
        match name {
            "content-type" => {
                env.var_with(Var::ContentType, |t| push_latin1(t, value.as_bytes()));
                continue;
            }
            // CONTENT_LENGTH is the decoded length, set above. The body is
            // de-chunked before the app sees it, so Transfer-Encoding would
            // only mislead (Waitress drops it too).
            "content-length" | "transfer-encoding" => continue,
            "host" if host.is_some() => continue,
            _ => {}
        }
        // `X_Forwarded_For` must not be able to pose as `X-Forwarded-For`
        // once both become HTTP_X_FORWARDED_FOR, so names with underscores
        // are dropped, as Waitress and nginx do.
        if name.contains('_') {
            continue;
        }
        if let Some(h) = Header::from_name(name) {
            if verdict.remove.contains(h) {
                continue;
            }
            if let Some((_, v)) = verdict.rewrite.iter().find(|(r, _)| *r == h) {
                // A rewritten header replaces all its lines, once.
                if !rewritten.contains(h) {
                    rewritten.insert(h);
                    env.header(name, |t| t.push_str(v));
                }
                continue;
            }
        }
        // A header's lines are joined into one value. Cookie pairs are
        // separated by "; " (RFC 6265 §5.4); ", " would merge two cookies
        // into one.
        if joining == Some(name) {
            let sep = if name == "cookie" { "; " } else { ", " };
            env.extend_last(sep, value.as_bytes());
        } else {
            env.header(name, |t| push_latin1(t, value.as_bytes()));
            joining = Some(name);
        }
    }
    if let Some(host) = host {
        env.header("host", |t| t.push_str(host));
    }
    env
}

pub fn protocol(version: Version) -> &'static str {
    if version == Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    }
}

/// `user-agent` becomes `HTTP_USER_AGENT`.
fn push_header_key(out: &mut String, name: &str) {
    out.push_str("HTTP_");
    out.extend(name.chars().map(|c| match c {
        '-' => '_',
        c => c.to_ascii_uppercase(),
    }));
}

/// PEP 3333 "native strings" carry bytes as latin-1: each byte one char.
pub fn latin1(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    push_latin1(&mut out, bytes);
    out
}

fn push_latin1(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.is_ascii() => out.push_str(s),
        _ => out.extend(bytes.iter().map(|&b| char::from(b))),
    }
}

/// The request target as sent (`Uri`'s Display, without its allocation).
fn push_request_uri(out: &mut String, uri: &Uri) {
    if let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) {
        out.push_str(scheme);
        out.push_str("://");
        out.push_str(authority.as_str());
    }
    if let Some(pq) = uri.path_and_query() {
        out.push_str(pq.as_str());
    } else if uri.authority().is_none() {
        out.push('/');
    } else {
        // `CONNECT host:port` (refused before this point, kept exact).
        out.push_str(uri.authority().map_or("", |a| a.as_str()));
    }
}

/// Decimal digits without `core::fmt` (this runs for every request).
fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// An address as `REMOTE_ADDR` shows it: IPv4-mapped IPv6 as IPv4.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
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

    fn cfg() -> EnvironPlan {
        EnvironPlan {
            scheme: crate::scheme::Scheme::Http,
            server_name: "localhost".into(),
            server_software: "maitred".into(),
            script_name: String::new(),
        }
    }

    /// What the proxy stage gives a request from an untrusted peer.
    fn untrusted() -> ProxyVerdict {
        ProxyVerdict {
            remove: HeaderSet::ALL,
            ..ProxyVerdict::default()
        }
    }

    fn tcp() -> Peer {
        Peer::Tcp {
            remote: "[::ffff:192.0.2.7]:5555".parse().expect("addr"),
            local: "127.0.0.1:8080".parse().expect("addr"),
        }
    }

    fn build(uri: &str, headers: &[(&str, &[u8])], verdict: &ProxyVerdict) -> CgiVars {
        let uri: Uri = uri.parse().expect("uri");
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_bytes(value).expect("value"),
            );
        }
        let head = RequestHead {
            method: "GET",
            uri: &uri,
            version: Version::HTTP_11,
            headers: &map,
            body_len: None,
        };
        cgi_vars(&head, &tcp(), &cfg(), verdict)
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
        assert_eq!(env.header_value("HTTP_X_A"), Some("1, 2"));
        assert_eq!(env.header_value("HTTP_COOKIE"), Some("a=1; b=2"));
        assert_eq!(env.header_value("HTTP_X_FORWARDED_FOR"), None);
        assert_eq!(env.header_value("HTTP_FORWARDED"), None);
        assert_eq!(env.header_value("HTTP_TRANSFER_ENCODING"), None);
        assert_eq!(env.header_value("HTTP_CONTENT_TYPE"), None);
        assert_eq!(env.get(Var::ContentType), Some("text/plain"));
        assert_eq!(env.header_value("HTTP_X_LATIN"), Some("café"));
        assert_eq!(
            env.iter()
                .filter(|e| matches!(e, Entry::Header("HTTP_X_A", _)))
                .count(),
            1
        );
    }

    #[test]
    fn proxy_headers_kept_when_clearing_is_off() {
        let env = build(
            "/",
            &[("x-forwarded-for", b"1.2.3.4")],
            &ProxyVerdict::default(),
        );
        assert_eq!(env.header_value("HTTP_X_FORWARDED_FOR"), Some("1.2.3.4"));
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
        let env = build(
            "http://other:81/p/q?z=1",
            &[("host", b"ignored")],
            &untrusted(),
        );
        assert_eq!(
            env.header_value("HTTP_HOST"),
            Some("other:81"),
            "the target wins"
        );
        assert_eq!(env.get(Var::PathInfo), Some("/p/q"));
        assert_eq!(env.get(Var::QueryString), Some("z=1"));
        assert_eq!(env.get(Var::RequestUri), Some("http://other:81/p/q?z=1"));
    }

    #[test]
    fn unix_peers() {
        let uri: Uri = "/".parse().expect("uri");
        let head = RequestHead {
            method: "POST",
            uri: &uri,
            version: Version::HTTP_10,
            headers: &HeaderMap::new(),
            body_len: Some(0),
        };
        let env = cgi_vars(&head, &Peer::Unix, &cfg(), &untrusted());
        assert_eq!(env.get(Var::RemoteAddr), Some("localhost"));
        assert_eq!(env.get(Var::ServerPort), Some("80"));
        let https = EnvironPlan {
            scheme: crate::scheme::Scheme::Https,
            ..cfg()
        };
        let env = cgi_vars(&head, &Peer::Unix, &https, &untrusted());
        assert_eq!(env.get(Var::ServerPort), Some("443"), "the scheme's port");
        assert_eq!(env.get(Var::ServerProtocol), Some("HTTP/1.0"));
        assert_eq!(env.get(Var::ContentLength), Some("0"));
    }
}
