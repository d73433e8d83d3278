//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a TCP load
//! balancer such as AWS NLB or HAProxy puts in front of a connection to say
//! who the client is.
//!
//! [`parse`] is a pure function over the bytes received so far; the server
//! reads until it answers, then serves HTTP on the rest of the stream.
//! Spec: <https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt>.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1 headers are at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// v2 headers may carry TLVs; more than this is refused rather than buffered.
pub const V2_MAX: usize = 16 + 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A complete header of `len` bytes. `source` is the client, or `None`
    /// when the balancer speaks for itself (v2 LOCAL, v1 UNKNOWN, or an
    /// address family other than TCP over IPv4/IPv6): the connection's own
    /// peer then stays the peer.
    Done {
        source: Option<SocketAddr>,
        len: usize,
    },
}

pub fn parse(buf: &[u8]) -> Result<Parsed, String> {
    // Decide the version as soon as the first bytes allow.
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if buf.len() < 16 {
            Ok(Parsed::Incomplete)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if buf.len() < 6 {
            Ok(Parsed::Incomplete)
        } else {
            parse_v1(buf)
        };
    }
    Err("the connection does not start with a PROXY protocol header".into())
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, String> {
    let Some(end) = buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err("PROXY v1 header longer than 107 bytes".into())
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| "PROXY v1 header is not ASCII")?;
    let parts: Vec<&str> = line.split(' ').collect();
    let len = end + 2;
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(Parsed::Done { source: None, len }),
        [
            "PROXY",
            family @ ("TCP4" | "TCP6"),
            src,
            _dst,
            sport,
            _dport,
        ] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| format!("PROXY v1: bad source address {src:?}"))?;
            if (*family == "TCP4") != ip.is_ipv4() {
                return Err(format!("PROXY v1: {src} is not a {family} address"));
            }
            let port = v1_port(sport)?;
            Ok(Parsed::Done {
                source: Some(SocketAddr::new(ip, port)),
                len,
            })
        }
        _ => Err(format!("PROXY v1 header not understood: {line:?}")),
    }
}

fn v1_port(text: &str) -> Result<u16, String> {
    // No leading zeros, no signs: the spec's exact form.
    let ok = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    ok.then(|| text.parse().ok())
        .flatten()
        .ok_or_else(|| format!("PROXY v1: bad port {text:?}"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, String> {
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(format!(
            "PROXY v2: unsupported version {}",
            version_command >> 4
        ));
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        other => return Err(format!("PROXY v2: unknown command {other}")),
    };
    let family = buf[13];
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if len > V2_MAX {
        return Err(format!("PROXY v2 header of {len} bytes is too long"));
    }
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let addr = &buf[16..len];
    if local {
        return Ok(Parsed::Done { source: None, len });
    }
    let source = match family {
        // TCP over IPv4: src(4) dst(4) sport(2) dport(2).
        0x11 => {
            let a = addr
                .get(..12)
                .ok_or("PROXY v2: IPv4 address block too short")?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([a[8], a[9]]),
            ))
        }
        // TCP over IPv6: src(16) dst(16) sport(2) dport(2).
        0x21 => {
            let a = addr
                .get(..36)
                .ok_or("PROXY v2: IPv6 address block too short")?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // UNSPEC, UDP, Unix: nothing maitred can use as an HTTP peer.
        _ => None,
    };
    Ok(Parsed::Done { source, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addr: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(0x20 | command);
        b.push(family);
        b.extend_from_slice(&(addr.len() as u16).to_be_bytes());
        b.extend_from_slice(addr);
        b
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Ok(Parsed::Done {
                source: Some("192.0.2.7:56324".parse().expect("addr")),
                len: 41
            })
        );
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 80\r\n";
        assert_eq!(
            parse(h).map(|p| match p {
                Parsed::Done { source, .. } => source,
                Parsed::Incomplete => None,
            }),
            Ok(Some("[2001:db8::7]:4000".parse().expect("addr")))
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Ok(Parsed::Done {
                source: None,
                len: 15
            })
        );
    }

    #[test]
    fn v1_partial_and_bad() {
        assert_eq!(parse(b"PRO"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(Parsed::Incomplete));
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
            b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse(&[b'P'; 200]).is_err());
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend_from_slice(&[b'1'; 120]);
        assert!(parse(&long).is_err(), "no CRLF within 107 bytes");
    }

    #[test]
    fn v2_proxy_and_local() {
        let mut a = vec![192, 0, 2, 7, 10, 0, 0, 1];
        a.extend_from_slice(&56324u16.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        a.extend_from_slice(&[0x04, 0x00, 0x01, 0xff]); // a TLV, skipped
        let h = v2(1, 0x11, &a);
        assert_eq!(
            parse(&h),
            Ok(Parsed::Done {
                source: Some("192.0.2.7:56324".parse().expect("addr")),
                len: h.len()
            })
        );
        assert_eq!(parse(&h[..20]), Ok(Parsed::Incomplete));
        assert_eq!(parse(&h[..5]), Ok(Parsed::Incomplete));
        let local = v2(0, 0x00, &[]);
        assert_eq!(
            parse(&local),
            Ok(Parsed::Done {
                source: None,
                len: 16
            })
        );

        let mut a6 = [0u8; 36];
        a6[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().expect("v6").octets());
        a6[32..34].copy_from_slice(&4000u16.to_be_bytes());
        let h6 = v2(1, 0x21, &a6);
        assert!(
            matches!(parse(&h6), Ok(Parsed::Done { source: Some(s), .. }) if s.port() == 4000 && s.is_ipv6())
        );
    }

    #[test]
    fn v2_bad() {
        let mut h = v2(1, 0x11, &[1, 2, 3]);
        assert!(parse(&h).is_err(), "address block too short");
        h = v2(1, 0x11, &[0; 12]);
        h[12] = 0x31;
        assert!(parse(&h).is_err(), "version 3");
        h[12] = 0x25;
        assert!(parse(&h).is_err(), "command 5");
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(parse(&huge).is_err());
    }
}
