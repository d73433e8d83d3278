//! Trusted proxies: deciding, for one request, what its forwarding headers
//! mean, and whether to believe them.
//!
//! Everything here is a pure function of the peer address, the request's
//! forwarding headers and the settings ([`resolve`]); the environ builder
//! applies the [`ProxyVerdict`]. Waitress's model is the baseline (same option
//! names, same count rule, same outcome in the environ), extended with trust
//! lists of addresses and CIDR ranges, RFC 7239 parsing that handles quoted
//! strings and IPv6, validation of every address and port, and
//! `X-Forwarded-Prefix`.
//!
//! How many proxy hops are believed:
//! - `proxy.count = N`: the last N entries of each header (Waitress's rule).
//! - a trust list of addresses and no count: walk the chain from the right,
//!   skipping trusted proxies; the first address that is not trusted is the
//!   client (uvicorn's rule). This becomes a count, so both modes share one
//!   windowing rule for every header.
//! - `*` and no count: one hop, as in Waitress (walking a chain in which
//!   every address is trusted would hand the client's own first entry back
//!   to it).

pub mod forwarded;
pub mod protocol;

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::metrics::Label;
use crate::scheme::Scheme;
use forwarded::{Node, parse_forwarded, parse_node, unquote};

/// The forwarding headers maitred understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    For,
    Host,
    Proto,
    Port,
    By,
    Prefix,
    Forwarded,
}

impl Header {
    pub const ALL: [Header; 7] = [
        Header::For,
        Header::Host,
        Header::Proto,
        Header::Port,
        Header::By,
        Header::Prefix,
        Header::Forwarded,
    ];

    /// The header name as it appears on the wire (lower case, as hyper
    /// stores it) and in the `proxy.headers` setting.
    pub fn lower(self) -> &'static str {
        match self {
            Header::For => "x-forwarded-for",
            Header::Host => "x-forwarded-host",
            Header::Proto => "x-forwarded-proto",
            Header::Port => "x-forwarded-port",
            Header::By => "x-forwarded-by",
            Header::Prefix => "x-forwarded-prefix",
            Header::Forwarded => "forwarded",
        }
    }

    /// The name used in messages (Waitress's spelling).
    pub fn name(self) -> &'static str {
        match self {
            Header::For => "X-Forwarded-For",
            Header::Host => "X-Forwarded-Host",
            Header::Proto => "X-Forwarded-Proto",
            Header::Port => "X-Forwarded-Port",
            Header::By => "X-Forwarded-By",
            Header::Prefix => "X-Forwarded-Prefix",
            Header::Forwarded => "Forwarded",
        }
    }

    pub fn from_name(name: &str) -> Option<Header> {
        Header::ALL
            .into_iter()
            .find(|h| h.lower().eq_ignore_ascii_case(name))
    }

    /// `x-forwarded-for, ..., x-forwarded-prefix or forwarded`: every name
    /// `proxy.headers` takes, for messages.
    pub fn known_names() -> String {
        let names: Vec<&str> = Header::ALL.iter().map(|h| h.lower()).collect();
        match names.split_last() {
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of forwarding headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderSet(u8);

impl HeaderSet {
    pub const NONE: HeaderSet = HeaderSet(0);
    pub const ALL: HeaderSet = HeaderSet(0x7f);

    pub fn of(headers: &[Header]) -> HeaderSet {
        HeaderSet(headers.iter().fold(0, |acc, h| acc | h.bit()))
    }
    pub fn contains(self, h: Header) -> bool {
        self.0 & h.bit() != 0
    }
    pub fn insert(&mut self, h: Header) {
        self.0 |= h.bit();
    }
    pub fn minus(self, other: HeaderSet) -> HeaderSet {
        HeaderSet(self.0 & !other.0)
    }
    pub fn and(self, other: HeaderSet) -> HeaderSet {
        HeaderSet(self.0 & other.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Header> {
        Header::ALL.into_iter().filter(move |h| self.contains(*h))
    }

    /// Trusts `Forwarded` together with an `X-Forwarded-*` header that
    /// says the same things: the two could disagree, and Waitress refuses
    /// the combination. (`X-Forwarded-Prefix` has no `Forwarded` form.)
    pub fn mixes_forwarded_with_x_forwarded(self) -> bool {
        let x_forwarded = HeaderSet::of(&[
            Header::For,
            Header::Host,
            Header::Proto,
            Header::Port,
            Header::By,
        ]);
        self.contains(Header::Forwarded) && !self.and(x_forwarded).is_empty()
    }

    /// The forwarding headers a request carries. One pass over the header
    /// names with a prefix test, so asking costs next to nothing when
    /// there are none.
    pub fn present_in(headers: &HeaderMap) -> HeaderSet {
        let mut set = HeaderSet::NONE;
        for name in headers.keys() {
            let name = name.as_str();
            if name.starts_with("x-forwarded-") || name == "forwarded" {
                if let Some(h) = Header::from_name(name) {
                    set.insert(h);
                }
            }
        }
        set
    }
}

/// Which peers may speak for the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustList {
    any: bool,
    unix: bool,
    nets: Vec<IpNet>,
}

impl TrustList {
    /// Entries are IP addresses, CIDR ranges (IPv4 or IPv6), `*` (every
    /// peer), `unix` (connections on a Unix socket) or `localhost` (Unix
    /// sockets and loopback: Waitress used `localhost` for Unix sockets,
    /// people write it meaning loopback; both are meant here).
    pub fn parse(entries: &[String]) -> Result<TrustList, String> {
        let mut list = TrustList::default();
        for entry in entries {
            let entry = entry.trim();
            match entry {
                "*" => list.any = true,
                "unix" => list.unix = true,
                "localhost" => {
                    list.unix = true;
                    list.nets
                        .push("127.0.0.0/8".parse().map_err(|_| "internal")?);
                    list.nets.push("::1/128".parse().map_err(|_| "internal")?);
                }
                _ => {
                    let net = match entry.parse::<IpAddr>() {
                        Ok(ip) => IpNet::from(ip.to_canonical()),
                        Err(_) => entry.parse::<IpNet>().map_err(|_| {
                            format!(
                                "`{entry}` is not an IP address, a CIDR range (10.0.0.0/8, fd00::/8), \
                                 `*`, `unix` or `localhost`"
                            )
                        })?,
                    };
                    list.nets.push(net.trunc());
                }
            }
        }
        Ok(list)
    }

    pub fn is_empty(&self) -> bool {
        !self.any && !self.unix && self.nets.is_empty()
    }

    /// `*` alone (or with `unix`): every TCP peer, no addresses to walk by.
    fn wildcard_only(&self) -> bool {
        self.any && self.nets.is_empty()
    }

    pub fn trusts_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.any || self.nets.iter().any(|n| n.contains(&ip))
    }

    /// `None` is a Unix-socket peer.
    pub fn trusts_peer(&self, peer: Option<IpAddr>) -> bool {
        match peer {
            Some(ip) => self.trusts_ip(ip),
            None => self.unix || self.any,
        }
    }
}

/// The trusted-proxy rules, built from already-parsed settings.
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    pub trusted: TrustList,
    pub count: Option<u32>,
    pub headers: HeaderSet,
    pub clear_untrusted: bool,
    pub log_untrusted: bool,
}

impl ProxyConfig {
    /// With peers trusted but no headers named, only X-Forwarded-Proto is
    /// believed: Waitress's (deprecated) default.
    pub fn new(
        trusted: TrustList,
        count: Option<u32>,
        mut headers: HeaderSet,
        clear_untrusted: bool,
        log_untrusted: bool,
    ) -> ProxyConfig {
        if !trusted.is_empty() && headers.is_empty() {
            headers.insert(Header::Proto);
        }
        ProxyConfig {
            trusted,
            count,
            headers,
            clear_untrusted,
            log_untrusted,
        }
    }
}

/// Why a forwarding header was not believed (the `reason` label of
/// `maitred_proxy_headers_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disbelief {
    /// Sent by a peer not in `proxy.trusted`.
    UntrustedPeer,
    /// Sent by a trusted peer, but not one of `proxy.headers`.
    NotListed,
    /// From a trusted peer but unparsable: the request got 400.
    Malformed,
}

impl Label for Disbelief {
    const ALL: &'static [Self] = &[
        Disbelief::UntrustedPeer,
        Disbelief::NotListed,
        Disbelief::Malformed,
    ];
    fn label(self) -> &'static str {
        match self {
            Disbelief::UntrustedPeer => "untrusted_peer",
            Disbelief::NotListed => "not_in_proxy_headers",
            Disbelief::Malformed => "malformed",
        }
    }
}

impl Label for Header {
    const ALL: &'static [Self] = &Header::ALL;
    fn label(self) -> &'static str {
        self.lower()
    }
}

/// What the proxy headers of one request change. Fields left `None` keep
/// the value the connection gave.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProxyVerdict {
    pub remote_addr: Option<String>,
    pub remote_port: Option<String>,
    pub url_scheme: Option<Scheme>,
    pub server_name: Option<String>,
    pub server_port: Option<String>,
    pub http_host: Option<String>,
    /// From `X-Forwarded-Prefix`: put in front of `SCRIPT_NAME`.
    pub prefix: Option<String>,
    /// Trusted headers rewritten to the part that was believed.
    pub rewrite: Vec<(Header, String)>,
    /// Headers to drop from the environ.
    pub remove: HeaderSet,
    /// Which of the dropped headers the request actually carried.
    pub removed_present: HeaderSet,
    /// Things worth a log line (unknown `Forwarded` parameters).
    pub notes: Vec<String>,
}

/// A forwarding header from a trusted peer that cannot be understood. The
/// request is refused with 400; nothing of it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// Waitress's names: the header, or `Forwarded Proto=` for a bad proto.
    pub header: &'static str,
    pub reason: String,
    pub value: String,
}

impl Malformed {
    /// Which header it was (`Forwarded Proto=` is the Forwarded header).
    pub fn source(&self) -> Header {
        Header::ALL
            .into_iter()
            .find(|h| h.name() == self.header)
            .unwrap_or(Header::Forwarded)
    }

    /// The body text, as Waitress writes it.
    pub fn detail(&self) -> String {
        format!("Header \"{}\" malformed.", self.header)
    }
}

fn malformed(header: &'static str, reason: impl Into<String>, value: &str) -> Malformed {
    Malformed {
        header,
        reason: reason.into(),
        value: value.to_owned(),
    }
}

/// The forwarding headers of a request, each header's lines joined with
/// `,` (RFC 9110 §5.3), as latin-1 text.
#[derive(Debug, Default, Clone)]
pub struct Forwarding {
    values: [Option<String>; 7],
}

impl Forwarding {
    pub fn from_headers(headers: &HeaderMap) -> Forwarding {
        let mut f = Forwarding::default();
        for h in Header::ALL {
            let mut lines = headers.get_all(h.lower()).iter().peekable();
            if lines.peek().is_none() {
                continue;
            }
            let joined: Vec<String> = lines
                .map(|v| v.as_bytes().iter().map(|&b| char::from(b)).collect())
                .collect();
            f.values[h as usize] = Some(joined.join(","));
        }
        f
    }

    fn get(&self, h: Header) -> Option<&str> {
        self.values[h as usize].as_deref()
    }

    fn present(&self) -> HeaderSet {
        let mut set = HeaderSet::NONE;
        for h in Header::ALL {
            if self.get(h).is_some() {
                set.insert(h);
            }
        }
        set
    }
}

impl ProxyConfig {
    /// The forwarding headers in `present` that are not believed, and why:
    /// all of them from a peer that is not trusted; from a trusted peer,
    /// those not listed in `proxy.headers`.
    pub fn disbelieved(&self, peer: Option<IpAddr>, present: HeaderSet) -> (HeaderSet, bool) {
        if self.trusted.trusts_peer(peer) {
            (present.minus(self.headers), true)
        } else {
            (present, false)
        }
    }

    /// [`resolve`] for a request as hyper parsed it. A request from a peer
    /// that is not trusted needs no header scan unless removals are logged,
    /// which keeps the common case (no proxy) free.
    pub fn verdict(
        &self,
        peer: Option<IpAddr>,
        headers: &HeaderMap,
        scheme: Scheme,
    ) -> Result<ProxyVerdict, Malformed> {
        if !self.trusted.trusts_peer(peer) && !self.log_untrusted {
            let remove = if self.clear_untrusted {
                HeaderSet::ALL
            } else {
                HeaderSet::NONE
            };
            return Ok(ProxyVerdict {
                remove,
                ..ProxyVerdict::default()
            });
        }
        resolve(peer, &Forwarding::from_headers(headers), self, scheme)
    }
}

/// Names of the headers in a set, for log lines.
pub fn names(set: HeaderSet) -> String {
    set.iter().map(Header::name).collect::<Vec<_>>().join(", ")
}

/// Decides what a request's forwarding headers mean. `peer` is the
/// connection's address, `None` for a Unix socket; `scheme` is the one the
/// request has unless a trusted proxy says otherwise.
pub fn resolve(
    peer: Option<IpAddr>,
    req: &Forwarding,
    cfg: &ProxyConfig,
    scheme: Scheme,
) -> Result<ProxyVerdict, Malformed> {
    let mut out = ProxyVerdict::default();
    if !cfg.trusted.trusts_peer(peer) {
        if cfg.clear_untrusted {
            out.remove = HeaderSet::ALL;
            out.removed_present = req.present();
        }
        return Ok(out);
    }
    let trusted = cfg.headers;
    if cfg.clear_untrusted {
        out.remove = HeaderSet::ALL.minus(trusted);
        out.removed_present = req.present().and(out.remove);
    }

    let mut client: Option<Node> = None;
    let mut host: Option<String> = None;
    let mut proto: Option<(String, &'static str)> = None;
    let mut port: Option<String> = None;

    let forwarded = req
        .get(Header::Forwarded)
        .filter(|_| trusted.contains(Header::Forwarded));
    if let Some(value) = forwarded {
        // The syntax must hold throughout (element boundaries depend on
        // it); addresses are checked only in the part that is believed,
        // since what a client writes before the first trusted proxy is its
        // own business.
        let elements = parse_forwarded(value).map_err(|r| malformed("Forwarded", r, value))?;
        let for_node = |e: &forwarded::Element| e.for_.as_deref().map(parse_node).transpose();
        let count = hops(cfg, &elements, for_node).map_err(|r| malformed("Forwarded", r, value))?;
        let window = last(&elements, count);
        out.rewrite.push((
            Header::Forwarded,
            join_raw(window.iter().map(|e| e.raw.as_str())),
        ));
        // Newest to oldest: the oldest element in the window that names a
        // value wins, field by field (Waitress).
        for element in window.iter().rev() {
            if let Some(node) = for_node(element).map_err(|r| malformed("Forwarded", r, value))? {
                client = Some(node);
            }
            if let Some(h) = &element.host {
                host = Some(h.clone());
            }
            if let Some(p) = &element.proto {
                proto = Some((p.clone(), "Forwarded Proto="));
            }
            for name in &element.unknown {
                out.notes.push(format!("Unknown Forwarded token: {name}"));
            }
        }
    } else {
        let chain = req
            .get(Header::For)
            .filter(|_| trusted.contains(Header::For));
        let entries: Vec<&str> = chain.map(|v| v.split(',').collect()).unwrap_or_default();
        let count = hops(cfg, &entries, |e| entry_node(e))
            .map_err(|r| malformed("X-Forwarded-For", r, chain.unwrap_or("")))?;
        if let Some(value) = chain {
            let window = last(&entries, count);
            out.rewrite
                .push((Header::For, window.join(",").trim().to_owned()));
            client = entry_node(window[0]).map_err(|r| malformed("X-Forwarded-For", r, value))?;
        }
        if let Some(value) = req
            .get(Header::Host)
            .filter(|_| trusted.contains(Header::Host))
        {
            let entries: Vec<&str> = value.split(',').collect();
            let window = last(&entries, count);
            out.rewrite
                .push((Header::Host, window.join(",").trim().to_owned()));
            let first =
                unquote(window[0].trim()).map_err(|r| malformed("X-Forwarded-Host", r, value))?;
            host = Some(first).filter(|h| !h.is_empty());
        }
        if let Some(value) = req
            .get(Header::Proto)
            .filter(|_| trusted.contains(Header::Proto))
        {
            let p = single_value(value).map_err(|r| malformed("X-Forwarded-Proto", r, value))?;
            proto = Some((p, "X-Forwarded-Proto"));
        }
        if let Some(value) = req
            .get(Header::Port)
            .filter(|_| trusted.contains(Header::Port))
        {
            let p = single_value(value).map_err(|r| malformed("X-Forwarded-Port", r, value))?;
            if !is_port(&p) {
                return Err(malformed("X-Forwarded-Port", "not a port number", value));
            }
            port = Some(p);
        }
    }

    if let Some(value) = req
        .get(Header::Prefix)
        .filter(|_| trusted.contains(Header::Prefix))
    {
        let p = single_value(value).map_err(|r| malformed("X-Forwarded-Prefix", r, value))?;
        if !p.starts_with('/') || p.chars().any(|c| c.is_control() || c == ' ') {
            return Err(malformed(
                "X-Forwarded-Prefix",
                "not a path starting with /",
                value,
            ));
        }
        let p = p.trim_end_matches('/');
        out.prefix = Some(p.to_owned());
    }

    // Applying, in Waitress's order (proxy_headers.py, after parsing).
    let scheme = match proto {
        Some((p, header)) => {
            let p = p.to_ascii_lowercase();
            let Some(forwarded_scheme) = Scheme::parse(&p) else {
                return Err(malformed(header, "not http or https", &p));
            };
            if port.is_none() {
                port = Some(forwarded_scheme.default_port_text().to_owned());
            }
            out.url_scheme = Some(forwarded_scheme);
            forwarded_scheme
        }
        None => scheme,
    };
    if let Some(h) = host {
        if h.chars()
            .any(|c| c.is_control() || c == ' ' || c == '/' || c == '@')
        {
            return Err(malformed(host_header(forwarded), "not a host name", &h));
        }
        match h.rsplit_once(':').filter(|_| !h.ends_with(']')) {
            Some((name, p)) => {
                if !is_port(p) {
                    return Err(malformed(
                        host_header(forwarded),
                        "the port is not a number",
                        &h,
                    ));
                }
                // The port in the forwarded host beats X-Forwarded-Port and
                // the scheme's default.
                port = Some(p.to_owned());
                out.server_name = Some(name.trim().to_owned());
                out.http_host = Some(h.clone());
            }
            None => {
                out.server_name = Some(h.clone());
                out.http_host = Some(match &port {
                    Some(p) if p != scheme.default_port_text() => format!("{h}:{p}"),
                    _ => h,
                });
            }
        }
    }
    out.server_port = port;
    if let Some(node) = client {
        out.remote_addr = Some(node.name.to_remote_addr());
        out.remote_port = node.port;
    }
    Ok(out)
}

fn host_header(forwarded: Option<&str>) -> &'static str {
    if forwarded.is_some() {
        "Forwarded"
    } else {
        "X-Forwarded-Host"
    }
}

/// How many hops to believe: the configured count, one for `*`, or the
/// position of the first untrusted address walking from the right (every
/// entry if all are trusted). Entries are parsed only as far as the walk goes.
fn hops<T>(
    cfg: &ProxyConfig,
    chain: &[T],
    node: impl Fn(&T) -> Result<Option<Node>, String>,
) -> Result<usize, String> {
    if let Some(n) = cfg.count {
        return Ok(n as usize);
    }
    if cfg.trusted.wildcard_only() {
        return Ok(1);
    }
    for (i, item) in chain.iter().rev().enumerate() {
        let ip = node(item)?.and_then(|n| n.name.ip());
        if !ip.is_some_and(|ip| cfg.trusted.trusts_ip(ip)) {
            return Ok(i + 1);
        }
    }
    Ok(chain.len().max(1))
}

/// The last `count` entries (all of them if there are fewer).
fn last<T>(entries: &[T], count: usize) -> &[T] {
    &entries[entries.len().saturating_sub(count.max(1))..]
}

fn join_raw<'a>(parts: impl Iterator<Item = &'a str>) -> String {
    parts.collect::<Vec<_>>().join(", ")
}

/// An X-Forwarded-For entry: `None` when empty (Waitress ignores it).
fn entry_node(entry: &str) -> Result<Option<Node>, String> {
    let entry = unquote(entry.trim())?;
    if entry.is_empty() {
        return Ok(None);
    }
    parse_node(&entry).map(Some)
}

/// A header that must hold one value (proto, port, prefix): unquoted, and
/// no list (two proxies disagreeing, or a client adding its own).
fn single_value(value: &str) -> Result<String, String> {
    let v = unquote(value.trim())?;
    if v.contains(',') {
        return Err("holds more than one value".into());
    }
    Ok(v.trim().to_owned())
}

fn is_port(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && text.parse::<u16>().is_ok()
}
