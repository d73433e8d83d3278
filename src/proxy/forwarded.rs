//! Parsing what proxies write: RFC 7239 `Forwarded` elements and the
//! address entries of `X-Forwarded-For`.
//!
//! Both are parsed completely before anything is applied, so a malformed
//! header is refused as a whole. The parser follows RFC 7239's grammar
//! strictly (as Waitress does: no whitespace inside an element), but unlike
//! Waitress it understands quoted strings containing `,` or `;` and keeps
//! values' case.

use std::net::IpAddr;

/// One `forwarded-element`: the parameters one proxy recorded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub for_: Option<String>,
    pub by: Option<String>,
    pub host: Option<String>,
    pub proto: Option<String>,
    /// Parameters this parser does not know (extensions), by name.
    pub unknown: Vec<String>,
    /// The element as sent, for rewriting the header to the trusted part.
    pub raw: String,
}

/// tchar of RFC 9110 §5.6.2.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Splits `text` on `sep` outside quoted strings; `None` if a quote is not
/// closed.
fn split_outside_quotes(text: &str, sep: char) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if in_quotes {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_quotes = false,
                _ => {}
            }
        } else if c == '"' {
            in_quotes = true;
        } else if c == sep {
            parts.push(&text[start..i]);
            start = i + 1;
        }
    }
    if in_quotes {
        return None;
    }
    parts.push(&text[start..]);
    Some(parts)
}

/// A token or a quoted-string, unquoted. Waitress's `undquote`: a value
/// starting or ending with `"` must be a complete quoted-string.
pub fn unquote(value: &str) -> Result<String, String> {
    if let Some(inner) = value.strip_prefix('"') {
        let Some(inner) = inner.strip_suffix('"') else {
            return Err("an opening quote is not closed".into());
        };
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(escaped) => out.push(escaped),
                    None => return Err("a quoted string ends in a backslash".into()),
                },
                '"' => return Err("a quote inside a quoted string is not escaped".into()),
                c => out.push(c),
            }
        }
        Ok(out)
    } else if value.ends_with('"') {
        Err("a closing quote has no opening quote".into())
    } else {
        Ok(value.to_owned())
    }
}

/// Parses a whole `Forwarded` field value (several header lines already
/// joined with `,`).
pub fn parse_forwarded(value: &str) -> Result<Vec<Element>, String> {
    let elements = split_outside_quotes(value, ',').ok_or("a quoted string is not closed")?;
    let mut out = Vec::new();
    for raw in elements {
        // Optional whitespace is allowed around list separators only.
        let raw = raw.trim_matches([' ', '\t']);
        if raw.is_empty() {
            continue;
        }
        out.push(parse_element(raw)?);
    }
    Ok(out)
}

fn parse_element(raw: &str) -> Result<Element, String> {
    let mut element = Element {
        raw: raw.to_owned(),
        ..Element::default()
    };
    let pairs = split_outside_quotes(raw, ';').ok_or("a quoted string is not closed")?;
    for pair in pairs {
        if pair.is_empty() {
            continue; // `;;`, as Waitress tolerates
        }
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not name=value"))?;
        if name.is_empty() || !name.chars().all(is_tchar) {
            return Err(format!(
                "`{name}` is not a parameter name (no spaces are allowed)"
            ));
        }
        let quoted = value.starts_with('"');
        // RFC 7239 wants `host=example.com:8080` and `for="[::1]"` quoted;
        // proxies and Waitress's own tests send them bare, so `:` and
        // brackets are accepted in an unquoted value too.
        let bare = |c: char| is_tchar(c) || matches!(c, ':' | '[' | ']');
        if value.is_empty() || (!quoted && !value.chars().all(bare)) {
            return Err(format!(
                "the value of `{name}` is not a token or a quoted string"
            ));
        }
        let value = unquote(value)?;
        let slot = match name.to_ascii_lowercase().as_str() {
            "for" => &mut element.for_,
            "by" => &mut element.by,
            "host" => &mut element.host,
            "proto" => &mut element.proto,
            other => {
                element.unknown.push(other.to_owned());
                continue;
            }
        };
        if slot.is_some() {
            return Err(format!("`{name}` appears twice in one element"));
        }
        *slot = Some(value);
    }
    Ok(element)
}

/// The node a proxy names as its client: an address, `unknown`, or an
/// obfuscated identifier (`_hidden`), each with an optional port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: NodeName,
    /// Numeric or obfuscated (`_p1`) port, as sent.
    pub port: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeName {
    Ip(IpAddr),
    Unknown,
    Obfuscated(String),
}

impl NodeName {
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            NodeName::Ip(ip) => Some(*ip),
            _ => None,
        }
    }

    /// What goes into REMOTE_ADDR: an IPv4-mapped IPv6 address as IPv4,
    /// like direct peers.
    pub fn to_remote_addr(&self) -> String {
        match self {
            NodeName::Ip(ip) => ip.to_canonical().to_string(),
            NodeName::Unknown => "unknown".to_owned(),
            NodeName::Obfuscated(id) => id.clone(),
        }
    }
}

fn obfuscated(text: &str) -> bool {
    text.len() > 1
        && text.starts_with('_')
        && text[1..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn port(text: &str) -> Option<String> {
    let numeric = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    let numeric = numeric && text.parse::<u16>().is_ok();
    (numeric || obfuscated(text)).then(|| text.to_owned())
}

/// Parses a node in any spelling proxies use: `192.0.2.1`, `192.0.2.1:80`,
/// `[2001:db8::1]`, `[2001:db8::1]:80`, a bare `2001:db8::1` (as in
/// X-Forwarded-For), `::ffff:192.0.2.1`, `unknown`, `_hidden`, `_h:_p`.
pub fn parse_node(text: &str) -> Result<Node, String> {
    let bad = || format!("`{text}` is not an address, `unknown` or an obfuscated `_identifier`");
    // A whole address first: a bare IPv6 address contains colons that
    // must not be mistaken for a port separator (Waitress's bug with
    // `::ffff:192.0.2.1`).
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Node {
            name: NodeName::Ip(ip),
            port: None,
        });
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
        let ip: std::net::Ipv6Addr = inside.parse().map_err(|_| bad())?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').and_then(port).ok_or_else(bad)?),
        };
        return Ok(Node {
            name: NodeName::Ip(IpAddr::V6(ip)),
            port,
        });
    }
    let (name, port_text) = match text.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (text, None),
    };
    let name = if name.eq_ignore_ascii_case("unknown") {
        NodeName::Unknown
    } else if obfuscated(name) {
        NodeName::Obfuscated(name.to_owned())
    } else {
        match name.parse::<std::net::Ipv4Addr>() {
            Ok(v4) => NodeName::Ip(IpAddr::V4(v4)),
            Err(_) => return Err(bad()),
        }
    };
    let port = match port_text {
        None => None,
        Some(p) => Some(port(p).ok_or_else(bad)?),
    };
    Ok(Node { name, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_with_quoted_separators() {
        let els =
            parse_forwarded(r#"for="[2001:db8::1]:3821";host="a,b;c", FOR=192.0.2.1;Proto=HTTPS"#)
                .expect("valid");
        assert_eq!(els.len(), 2);
        assert_eq!(els[0].for_.as_deref(), Some("[2001:db8::1]:3821"));
        assert_eq!(els[0].host.as_deref(), Some("a,b;c"));
        assert_eq!(
            els[1].for_.as_deref(),
            Some("192.0.2.1"),
            "names are case-insensitive"
        );
        assert_eq!(
            els[1].proto.as_deref(),
            Some("HTTPS"),
            "values keep their case"
        );
        assert_eq!(els[0].raw, r#"for="[2001:db8::1]:3821";host="a,b;c""#);
    }

    #[test]
    fn strict_grammar() {
        for bad in [
            "for",
            "for= 1.2.3.4",
            "for =1.2.3.4",
            "for=1.2.3.4; proto=http",
            "for=\"unclosed",
            "for=a\"",
            "for=1.2.3.4;for=5.6.7.8",
            "for=1.2.3.4 x",
            "=x",
        ] {
            assert!(parse_forwarded(bad).is_err(), "{bad:?}");
        }
        let ok = parse_forwarded("for=1.2.3.4;;proto=http,,  for=5.6.7.8").expect("valid");
        assert_eq!(ok.len(), 2);
        let ext = parse_forwarded("for=1.2.3.4;secret=x").expect("extensions allowed");
        assert_eq!(ext[0].unknown, ["secret"]);
    }

    #[test]
    fn quoted_strings() {
        assert_eq!(unquote(r#""a\"b""#), Ok("a\"b".into()));
        assert_eq!(unquote("plain"), Ok("plain".into()));
        assert!(unquote("\"open").is_err());
        assert!(unquote("close\"").is_err());
    }

    #[test]
    fn nodes() {
        let ip = |s: &str| NodeName::Ip(s.parse().expect("ip"));
        assert_eq!(parse_node("192.0.2.1").map(|n| n.name), Ok(ip("192.0.2.1")));
        assert_eq!(
            parse_node("192.0.2.1:8080").map(|n| n.port),
            Ok(Some("8080".into()))
        );
        assert_eq!(
            parse_node("2001:db8::1").map(|n| n.name),
            Ok(ip("2001:db8::1"))
        );
        assert_eq!(
            parse_node("[2001:db8::1]:99").map(|n| (n.name, n.port)),
            Ok((ip("2001:db8::1"), Some("99".into())))
        );
        let mapped = parse_node("::ffff:192.0.2.1").expect("mapped");
        assert_eq!(
            (mapped.name.to_remote_addr(), mapped.port),
            ("192.0.2.1".into(), None)
        );
        assert_eq!(parse_node("unknown").map(|n| n.name), Ok(NodeName::Unknown));
        assert_eq!(
            parse_node("_hidden:_p1").map(|n| (n.name, n.port)),
            Ok((NodeName::Obfuscated("_hidden".into()), Some("_p1".into())))
        );
        for bad in [
            "",
            "evil.example",
            "1.2.3.4:99999",
            "[::1",
            "[1.2.3.4]",
            "1.2.3.4:x",
            "_",
            "<script>",
        ] {
            assert!(parse_node(bad).is_err(), "{bad:?}");
        }
    }
}
