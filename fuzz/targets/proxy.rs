//! Targets `proxy_forwarded` (RFC 7239 and X-Forwarded-* parsing, and the
//! trust decision) and `proxy_protocol` (PROXY v1/v2 headers).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue};
use maitred::config::{Plan, Proxy, Settings};
use maitred::proxy::forwarded::{Element, Node, NodeName, parse_forwarded, parse_node, unquote};
use maitred::proxy::protocol::{self, Parsed};
use maitred::proxy::{Forwarding, Header, ProxyConfig, ProxyVerdict, resolve};
use maitred::scheme::Scheme;

/// Trust lists to choose from: every peer, and address lists that make
/// `resolve` walk the chain.
const TRUSTED: [&[&str]; 4] = [
    &["*"],
    &["10.0.0.0/8"],
    &["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"],
    &["unix", "127.0.0.1"],
];

/// `None` is a Unix-socket peer.
const PEERS: [Option<IpAddr>; 6] = [
    Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
    Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9))),
    Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5))),
    Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5))),
    None,
];

/// The headers `proxy.headers` may list together: any set of the
/// X-Forwarded-* headers, or `Forwarded` (with or without the prefix).
fn trusted_headers(choice: u8) -> Vec<String> {
    let names = if choice & 0x80 != 0 {
        let mut names = vec![Header::Forwarded];
        if choice & 1 != 0 {
            names.push(Header::Prefix);
        }
        names
    } else {
        [
            Header::For,
            Header::Host,
            Header::Proto,
            Header::Port,
            Header::By,
            Header::Prefix,
        ]
        .into_iter()
        .enumerate()
        .filter(|(i, _)| choice & (1 << i) != 0)
        .map(|(_, h)| h)
        .collect()
    };
    names.into_iter().map(|h| h.lower().to_owned()).collect()
}

/// The trusted-proxy part of a plan, built through `Plan::build` as the
/// server builds it (so only configurations it accepts are used), once
/// per distinct choice.
fn proxy_config(headers: u8, trusted: u8, count: u8, clear: bool) -> Arc<ProxyConfig> {
    /// Headers, trust list, count, clear_untrusted.
    type Choice = (u8, u8, u8, bool);
    static PLANS: OnceLock<Mutex<HashMap<Choice, Arc<ProxyConfig>>>> = OnceLock::new();
    let key = (headers, trusted, count, clear);
    let mut plans = PLANS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let config = plans.entry(key).or_insert_with(|| {
        let settings = Settings {
            listen: vec!["127.0.0.1:0".into()],
            admin_listen: Vec::new(),
            proxy: Proxy {
                trusted: TRUSTED[usize::from(trusted)]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
                count: (count > 0).then_some(u32::from(count)),
                headers: trusted_headers(headers),
                clear_untrusted: clear,
                log_untrusted: false,
            },
            ..Settings::default()
        };
        let plan = Plan::build(&settings).unwrap_or_else(|e| panic!("a valid plan: {e:?}"));
        Arc::new(plan.gateway.proxy)
    });
    Arc::clone(config)
}

/// `proxy_forwarded`: the first line chooses the configuration and the
/// peer (one byte each: trusted headers, trust list, count, peer, flags);
/// every other line is a request header `name: value`. Properties: no
/// panic; every piece of text the verdict carries is what the environ
/// can hold; headers that are not believed change nothing; the
/// `Forwarded` and node parsers round-trip what they accept.
pub fn proxy_forwarded(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let config_line = lines.next().unwrap_or_default();
    let pick = |i: usize| config_line.get(i).copied().unwrap_or(0);
    let cfg = proxy_config(pick(0), pick(1) % 4, pick(2) % 4, pick(4) & 1 != 0);
    let peer = PEERS[usize::from(pick(3)) % PEERS.len()];
    let scheme = if pick(4) & 2 != 0 {
        Scheme::Https
    } else {
        Scheme::Http
    };

    let mut headers = HeaderMap::new();
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        // The parsers on their own, on every value as sent.
        let text: String = value.as_bytes().iter().map(|&b| char::from(b)).collect();
        check_parsers(&text);
        headers.append(name, value);
    }

    let forwarding = Forwarding::from_headers(&headers);
    let verdict = resolve(peer, &forwarding, &cfg, scheme);
    if let Ok(v) = &verdict {
        check_verdict(v);
    }
    // What the server calls: the same verdict (it skips the header scan
    // for untrusted peers, so `removed_present` may differ).
    let served = cfg.verdict(peer, &headers, scheme);
    assert_eq!(
        without_removed_present(&served),
        without_removed_present(&verdict),
        "ProxyConfig::verdict and resolve disagree"
    );
    if !cfg.trusted.trusts_peer(peer) {
        let v = verdict
            .as_ref()
            .expect("an untrusted peer's headers are ignored");
        assert_eq!(
            ProxyVerdict {
                remove: v.remove,
                removed_present: v.removed_present,
                ..ProxyVerdict::default()
            },
            *v,
            "an untrusted peer changed the request"
        );
    } else {
        // Headers that are not believed change nothing: the verdict on the
        // believed headers alone is the same.
        let mut believed = HeaderMap::new();
        for (name, value) in &headers {
            if Header::from_name(name.as_str()).is_some_and(|h| cfg.headers.contains(h)) {
                believed.append(name.clone(), value.clone());
            }
        }
        let alone = resolve(peer, &Forwarding::from_headers(&believed), &cfg, scheme);
        assert_eq!(
            without_removed_present(&alone),
            without_removed_present(&verdict),
            "a header that is not believed changed the verdict"
        );
    }
}

fn without_removed_present<E: Clone>(v: &Result<ProxyVerdict, E>) -> Result<ProxyVerdict, E> {
    v.clone().map(|mut v| {
        v.removed_present = Default::default();
        v
    })
}

/// Environ values: no line breaks, no NUL (they become CGI variables and
/// header values).
fn environ_safe(what: &str, text: &str) {
    assert!(
        !text.contains(['\r', '\n', '\0']),
        "{what} holds a line break or NUL: {text:?}"
    );
}

fn check_verdict(v: &ProxyVerdict) {
    if let Some(addr) = &v.remote_addr {
        environ_safe("REMOTE_ADDR", addr);
        let node =
            parse_node(addr).unwrap_or_else(|e| panic!("REMOTE_ADDR {addr:?} is not a node: {e}"));
        assert!(node.port.is_none(), "REMOTE_ADDR {addr:?} carries a port");
    }
    if let Some(port) = &v.remote_port {
        assert!(
            port.parse::<u16>().is_ok() || port.starts_with('_'),
            "REMOTE_PORT {port:?}"
        );
    }
    if let Some(port) = &v.server_port {
        assert!(
            !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()),
            "SERVER_PORT {port:?} is not a port number"
        );
        assert!(port.parse::<u16>().is_ok(), "SERVER_PORT {port:?}");
    }
    for (what, text) in [("SERVER_NAME", &v.server_name), ("HTTP_HOST", &v.http_host)] {
        if let Some(text) = text {
            environ_safe(what, text);
            assert!(
                !text.contains([' ', '/', '@']),
                "{what} {text:?} is not a host"
            );
        }
    }
    if let Some(prefix) = &v.prefix {
        environ_safe("the prefix", prefix);
        assert!(
            prefix.is_empty() || (prefix.starts_with('/') && !prefix.ends_with('/')),
            "prefix {prefix:?}"
        );
    }
    for (header, value) in &v.rewrite {
        environ_safe(header.name(), value);
    }
}

/// `unquote`, `parse_forwarded` and `parse_node` on one header value.
fn check_parsers(text: &str) {
    if let Ok(unquoted) = unquote(text) {
        if text.starts_with('"') {
            assert!(unquoted.len() + 2 <= text.len(), "{text:?} -> {unquoted:?}");
        } else {
            assert_eq!(unquoted, text, "an unquoted value changed");
        }
    }
    if let Ok(elements) = parse_forwarded(text) {
        for e in &elements {
            assert!(text.contains(&e.raw), "{:?} is not part of {text:?}", e.raw);
            assert!(!e.raw.is_empty() && e.raw.trim_matches([' ', '\t']) == e.raw);
        }
        // The raw elements are what a rewritten header is made of: they
        // must parse back to the same elements.
        let joined = elements
            .iter()
            .map(|e| e.raw.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        assert_eq!(
            parse_forwarded(&joined).as_ref(),
            Ok(&elements),
            "{text:?} rewritten as {joined:?}"
        );
        for e in &elements {
            check_element_nodes(e);
        }
    }
    for entry in text.split(',') {
        if let Ok(node) = parse_node(entry.trim()) {
            check_node_round_trip(&node);
        }
    }
}

fn check_element_nodes(e: &Element) {
    for node in [&e.for_, &e.by].into_iter().flatten() {
        if let Ok(node) = parse_node(node) {
            check_node_round_trip(&node);
        }
    }
}

/// A node written back in the canonical spelling parses to the same node.
fn check_node_round_trip(node: &Node) {
    let name = match &node.name {
        NodeName::Ip(IpAddr::V6(ip)) if node.port.is_some() => format!("[{ip}]"),
        NodeName::Ip(ip) => ip.to_string(),
        NodeName::Unknown => "unknown".to_owned(),
        NodeName::Obfuscated(id) => id.clone(),
    };
    let text = match &node.port {
        Some(port) => format!("{name}:{port}"),
        None => name,
    };
    assert_eq!(
        parse_node(&text).as_ref(),
        Ok(node),
        "{node:?} written as {text:?}"
    );
}

/// `proxy_protocol`: the bytes a PROXY-protocol listener reads, parsed as
/// the server parses them, on a buffer that grows. Properties: no panic;
/// a header's length is within the input and the limits; the answer on a
/// prefix of the input never contradicts the answer on all of it
/// (incomplete until done, an error stays an error, the same header).
pub fn proxy_protocol(data: &[u8]) {
    let whole = protocol::parse(data);
    if let Ok(Parsed::Done { len, source }) = whole {
        assert!(len <= data.len(), "header of {len} bytes in {}", data.len());
        assert!(len <= protocol::V2_MAX, "header of {len} bytes");
        if data.starts_with(b"PROXY ") {
            assert!(len <= 107, "v1 header of {len} bytes");
        }
        assert_eq!(
            protocol::parse(&data[..len]),
            Ok(Parsed::Done { len, source }),
            "the header alone parses differently"
        );
    }
    // The server parses after every read; any prefix is a possible buffer.
    for end in 0..data.len().min(2048) {
        let prefix = protocol::parse(&data[..end]);
        match (&prefix, &whole) {
            (Ok(Parsed::Incomplete), _) => {}
            (Ok(Parsed::Done { .. }), _) => {
                assert_eq!(&prefix, &whole, "done at {end} bytes, then not the same");
                break;
            }
            (Err(_), Err(_)) => break,
            (Err(e), _) => panic!("refused at {end} bytes ({e}), accepted with more: {whole:?}"),
        }
    }
}
