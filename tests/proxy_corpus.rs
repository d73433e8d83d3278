//! The decision corpus: every case a request with forwarding headers can
//! be in, run through the production path (the settings turned into a
//! plan, `proxy::resolve` and then the environ builder) and checked
//! against the environ the app must see.
//!
//! Cases 1-31 are the cases of Waitress's own `test_proxy_headers.py`,
//! restated here (setup as there: peer 127.0.0.1, `Host: 192.168.1.1:80`,
//! `SERVER_NAME` localhost, `SERVER_PORT` 8080, scheme http, one hop,
//! untrusted headers cleared). Where maitred deliberately differs the case
//! says so. The rest cover trust lists, the walk, spoofing attempts, IPv6,
//! RFC 7239 details and `X-Forwarded-Prefix`.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue, Uri, Version};

use maitred::config::{Plan, Problem, Proxy, Settings};
use maitred::proxy::{Forwarding, Header, HeaderSet, Malformed, TrustList, resolve};
use maitred::wsgi::environ::{self, Entry, Peer, RequestHead};

/// Marks a key that must not be in the environ.
const ABSENT: &str = "<absent>";

struct Case {
    name: &'static str,
    trusted: &'static [&'static str],
    count: Option<u32>,
    headers: &'static [&'static str],
    clear: bool,
    /// An IP address, or "unix".
    peer: &'static str,
    request: &'static [(&'static str, &'static str)],
    expect: Expect,
}

enum Expect {
    Env(&'static [(&'static str, &'static str)]),
    /// Refused; the header named in the 400.
    Malformed(&'static str),
}

use Expect::{Env, Malformed as Bad};

const fn case(
    name: &'static str,
    trusted: &'static [&'static str],
    headers: &'static [&'static str],
    request: &'static [(&'static str, &'static str)],
    expect: Expect,
) -> Case {
    Case {
        name,
        trusted,
        count: None,
        headers,
        clear: true,
        peer: "127.0.0.1",
        request,
        expect,
    }
}

const fn counted(mut c: Case, count: u32) -> Case {
    c.count = Some(count);
    c
}

const fn from(mut c: Case, peer: &'static str) -> Case {
    c.peer = peer;
    c
}

const fn keep_untrusted(mut c: Case) -> Case {
    c.clear = false;
    c
}

const ANY: &[&str] = &["*"];
const XFF: &[&str] = &["x-forwarded-for"];
const FWD: &[&str] = &["forwarded"];
const XALL: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
];
const XFHP: &[&str] = &["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];
const TEN: &[&str] = &["10.0.0.0/8"];

#[rustfmt::skip]
const CASES: &[Case] = &[
    // ---- Waitress's test_proxy_headers.py ----
    case("w01 untrusted proto is ignored and removed", &[], &[], &[("x-forwarded-proto", "https")],
        Env(&[("wsgi.url_scheme", "http"), ("HTTP_X_FORWARDED_PROTO", ABSENT)])),
    from(case("w02 trusted peer's proto is believed", &["192.168.1.1"], &["x-forwarded-proto"],
        &[("x-forwarded-proto", "https"), ("x-foo", "foo")],
        Env(&[("wsgi.url_scheme", "https"), ("SERVER_PORT", "443"), ("SERVER_NAME", "localhost"),
              ("REMOTE_ADDR", "192.168.1.1"), ("HTTP_X_FOO", "foo")])), "192.168.1.1"),
    from(case("w03 a URL as proto is malformed", &["192.168.1.1"], &["x-forwarded-proto"],
        &[("x-forwarded-proto", "http://p02n3e.com?url=http")], Bad("X-Forwarded-Proto")), "192.168.1.1"),
    case("w04 Forwarded trusted, X-Forwarded-For removed", ANY, FWD,
        &[("x-forwarded-for", "[2001:db8::1]"), ("forwarded", "For=198.51.100.2;host=example.com:8080;proto=https")],
        Env(&[("HTTP_X_FORWARDED_FOR", ABSENT), ("REMOTE_ADDR", "198.51.100.2"), ("SERVER_NAME", "example.com"),
              ("HTTP_HOST", "example.com:8080"), ("SERVER_PORT", "8080"), ("wsgi.url_scheme", "https")])),
    keep_untrusted(case("w05 only X-Forwarded-By trusted, not clearing: all kept, none used", ANY, &["x-forwarded-by"],
        &[("x-forwarded-for", "192.0.2.1"), ("x-forwarded-by", "proxy"), ("x-forwarded-proto", "https"), ("x-forwarded-host", "example.org")],
        Env(&[("HTTP_X_FORWARDED_FOR", "192.0.2.1"), ("HTTP_X_FORWARDED_BY", "proxy"), ("HTTP_X_FORWARDED_PROTO", "https"),
              ("HTTP_X_FORWARDED_HOST", "example.org"), ("REMOTE_ADDR", "127.0.0.1"), ("wsgi.url_scheme", "http")]))),
    case("w06 only X-Forwarded-By trusted, clearing: only it remains", ANY, &["x-forwarded-by"],
        &[("x-forwarded-for", "192.0.2.1"), ("x-forwarded-by", "proxy"), ("x-forwarded-proto", "https"), ("x-forwarded-host", "example.org")],
        Env(&[("HTTP_X_FORWARDED_FOR", ABSENT), ("HTTP_X_FORWARDED_BY", "proxy"), ("HTTP_X_FORWARDED_PROTO", ABSENT),
              ("HTTP_X_FORWARDED_HOST", ABSENT)])),
    from(case("w07 a peer that is not the trusted one: all removed", &["192.168.1.1"], XALL,
        &[("x-forwarded-for", "192.0.2.1"), ("x-forwarded-proto", "https"), ("x-forwarded-host", "example.org")],
        Env(&[("HTTP_X_FORWARDED_FOR", ABSENT), ("HTTP_X_FORWARDED_PROTO", ABSENT), ("HTTP_X_FORWARDED_HOST", ABSENT),
              ("REMOTE_ADDR", "192.168.1.255")])), "192.168.1.255"),
    case("w08 X-Forwarded-For IPv4", ANY, XFF, &[("x-forwarded-for", "192.0.2.1")], Env(&[("REMOTE_ADDR", "192.0.2.1")])),
    // Waitress keeps the text "2001:db8::0"; maitred writes addresses in canonical form.
    case("w09 X-Forwarded-For IPv6 (canonical form)", ANY, XFF, &[("x-forwarded-for", "2001:db8::0")],
        Env(&[("REMOTE_ADDR", "2001:db8::"), ("REMOTE_HOST", "2001:db8::")])),
    counted(case("w10 two hops: the second from the right, header rewritten", ANY, XFF,
        &[("x-forwarded-for", "192.0.2.1, 198.51.100.2, 203.0.113.1")],
        Env(&[("REMOTE_ADDR", "198.51.100.2"), ("HTTP_X_FORWARDED_FOR", "198.51.100.2, 203.0.113.1")])), 2),
    counted(case("w11 Forwarded, two hops", ANY, FWD,
        &[("forwarded", "For=192.0.2.1;host=fake.com, For=198.51.100.2;host=example.com:8080, For=203.0.113.1")],
        Env(&[("REMOTE_ADDR", "198.51.100.2"), ("SERVER_NAME", "example.com"), ("HTTP_HOST", "example.com:8080"),
              ("SERVER_PORT", "8080"), ("HTTP_FORWARDED", "For=198.51.100.2;host=example.com:8080, For=203.0.113.1")])), 2),
    counted(case("w12 Forwarded with quoted IPv6 and port", ANY, FWD,
        &[("forwarded", r#"for="[2001:db8::1]:3821";host="example.com:8443";proto="https", for=192.0.2.1;host="example.internal:8080""#)],
        Env(&[("REMOTE_ADDR", "2001:db8::1"), ("REMOTE_PORT", "3821"), ("SERVER_NAME", "example.com"),
              ("HTTP_HOST", "example.com:8443"), ("SERVER_PORT", "8443"), ("wsgi.url_scheme", "https")])), 2),
    counted(case("w13 Forwarded fields from different elements", ANY, FWD,
        &[("forwarded", r#"for="[2001:db8::1]";proto="https", for=192.0.2.1;host="example.org""#)],
        Env(&[("REMOTE_ADDR", "2001:db8::1"), ("SERVER_NAME", "example.org"), ("HTTP_HOST", "example.org"),
              ("SERVER_PORT", "443"), ("wsgi.url_scheme", "https")])), 2),
    counted(case("w14 X-Forwarded-For/Proto/Host, host with port", ANY, XFHP,
        &[("x-forwarded-for", "192.0.2.1, 198.51.100.2, 203.0.113.1"), ("x-forwarded-proto", "http"), ("x-forwarded-host", "example.com:8080")],
        Env(&[("REMOTE_ADDR", "198.51.100.2"), ("SERVER_NAME", "example.com"), ("HTTP_HOST", "example.com:8080"), ("SERVER_PORT", "8080")])), 2),
    counted(case("w15 host without port: the scheme's port", ANY, XFHP,
        &[("x-forwarded-for", "192.0.2.1, 198.51.100.2, 203.0.113.1"), ("x-forwarded-proto", "http"), ("x-forwarded-host", "example.com")],
        Env(&[("HTTP_HOST", "example.com"), ("SERVER_PORT", "80")])), 2),
    counted(case("w16 X-Forwarded-Port joins a port-less host", ANY, XALL,
        &[("x-forwarded-for", "192.0.2.1, 198.51.100.2, 203.0.113.1"), ("x-forwarded-proto", "http"),
          ("x-forwarded-host", "example.com"), ("x-forwarded-port", "8080")],
        Env(&[("HTTP_HOST", "example.com:8080"), ("SERVER_PORT", "8080")])), 2),
    counted(case("w17 two hosts, two hops: the first of the window", ANY, XALL,
        &[("x-forwarded-for", "192.0.2.1, 198.51.100.2, 203.0.113.1"), ("x-forwarded-proto", "http"),
          ("x-forwarded-host", "example.com, example.org"), ("x-forwarded-port", "8080")],
        Env(&[("SERVER_NAME", "example.com"), ("HTTP_HOST", "example.com:8080"), ("HTTP_X_FORWARDED_HOST", "example.com, example.org")])), 2),
    counted(case("w18 two hosts, one hop: the last, headers rewritten", ANY, XALL,
        &[("x-forwarded-for", "192.0.2.1, 198.51.100.2, 203.0.113.1"), ("x-forwarded-proto", "http"),
          ("x-forwarded-host", "example.com, example.org"), ("x-forwarded-port", "8080")],
        Env(&[("REMOTE_ADDR", "203.0.113.1"), ("SERVER_NAME", "example.org"), ("HTTP_HOST", "example.org:8080"),
              ("HTTP_X_FORWARDED_FOR", "203.0.113.1"), ("HTTP_X_FORWARDED_HOST", "example.org")])), 1),
    case("w19 Forwarded for with port", ANY, FWD, &[("forwarded", "For=198.51.100.2:5858;host=example.com:8080;proto=https")],
        Env(&[("REMOTE_ADDR", "198.51.100.2"), ("REMOTE_PORT", "5858"), ("SERVER_NAME", "example.com"),
              ("HTTP_HOST", "example.com:8080"), ("SERVER_PORT", "8080"), ("wsgi.url_scheme", "https")])),
    case("w20 Forwarded empty pair and obfuscated by", ANY, FWD, &[("forwarded", "For=198.51.100.2;;proto=https;by=_unused")],
        Env(&[("REMOTE_ADDR", "198.51.100.2"), ("wsgi.url_scheme", "https")])),
    case("w21 Forwarded space before =", ANY, FWD, &[("forwarded", "For=198.51.100.2; proto =https")], Bad("Forwarded")),
    case("w22 Forwarded space after =", ANY, FWD, &[("forwarded", "For= \"198.51.100.2\"; proto =https")], Bad("Forwarded")),
    case("w23 Forwarded without a value", ANY, FWD, &[("forwarded", "For")], Bad("Forwarded")),
    case("w24 Forwarded unknown parameter is ignored", ANY, FWD, &[("forwarded", "For=198.51.100.2;proto=https;unknown=\"yolo\"")],
        Env(&[("REMOTE_ADDR", "198.51.100.2"), ("wsgi.url_scheme", "https")])),
    case("w25 trusted peer, headers not trusted: nothing applied, both removed", ANY, &[],
        &[("x-forwarded-for", "192.0.2.1"), ("forwarded", "for=198.51.100.2")],
        Env(&[("REMOTE_ADDR", "127.0.0.1"), ("HTTP_HOST", "192.168.1.1:80"), ("HTTP_X_FORWARDED_FOR", ABSENT), ("HTTP_FORWARDED", ABSENT)])),
    case("w26 two protos", ANY, &["x-forwarded-proto"], &[("x-forwarded-proto", "http, https")], Bad("X-Forwarded-Proto")),
    case("w27 two ports", ANY, &["x-forwarded-port"], &[("x-forwarded-port", "443, 80")], Bad("X-Forwarded-Port")),
    case("w28 https with port 80 keeps the port in Host", ANY, &["x-forwarded-port", "x-forwarded-host", "x-forwarded-proto"],
        &[("x-forwarded-port", "80"), ("x-forwarded-proto", "https"), ("x-forwarded-host", "example.com")],
        Env(&[("HTTP_HOST", "example.com:80"), ("SERVER_PORT", "80"), ("wsgi.url_scheme", "https")])),
    case("w29 http with port 443 keeps the port in Host", ANY, &["x-forwarded-port", "x-forwarded-host", "x-forwarded-proto"],
        &[("x-forwarded-port", "443"), ("x-forwarded-proto", "http"), ("x-forwarded-host", "example.com")],
        Env(&[("HTTP_HOST", "example.com:443"), ("SERVER_PORT", "443"), ("wsgi.url_scheme", "http")])),
    case("w30 unclosed quote in X-Forwarded-For", ANY, XFF, &[("x-forwarded-for", "\"foo")], Bad("X-Forwarded-For")),
    case("w31 unclosed quote in X-Forwarded-Host", ANY, &["x-forwarded-host"], &[("x-forwarded-host", "\"foo")], Bad("X-Forwarded-Host")),

    // ---- trust lists and CIDR ranges ----
    from(case("t01 CIDR: a peer inside is trusted; the original peer is kept", TEN, XFF, &[("x-forwarded-for", "203.0.113.9")],
        Env(&[("REMOTE_ADDR", "203.0.113.9"), ("maitred.peer_addr", "10.1.2.3"), ("maitred.peer_port", "5000")])), "10.1.2.3"),
    from(case("t02 CIDR: a peer outside is not", TEN, XFF, &[("x-forwarded-for", "203.0.113.9")],
        Env(&[("REMOTE_ADDR", "11.0.0.1"), ("HTTP_X_FORWARDED_FOR", ABSENT), ("maitred.peer_addr", ABSENT)])), "11.0.0.1"),
    from(case("t03 IPv6 range", &["fd00::/8"], XFF, &[("x-forwarded-for", "2001:db8::5")],
        Env(&[("REMOTE_ADDR", "2001:db8::5")])), "fd12::1"),
    from(case("t04 an IPv4-mapped peer matches its IPv4 range", TEN, XFF, &[("x-forwarded-for", "203.0.113.9")],
        Env(&[("REMOTE_ADDR", "203.0.113.9")])), "::ffff:10.0.0.5"),
    from(case("t05 several entries", &["192.168.0.0/16", "10.0.0.1"], XFF, &[("x-forwarded-for", "203.0.113.9")],
        Env(&[("REMOTE_ADDR", "203.0.113.9")])), "10.0.0.1"),
    from(case("t06 unix trusts Unix-socket peers", &["unix"], XFF, &[("x-forwarded-for", "203.0.113.3")],
        Env(&[("REMOTE_ADDR", "203.0.113.3"), ("maitred.peer_addr", "localhost")])), "unix"),
    case("t07 unix does not trust loopback TCP", &["unix"], XFF, &[("x-forwarded-for", "203.0.113.3")],
        Env(&[("REMOTE_ADDR", "127.0.0.1"), ("HTTP_X_FORWARDED_FOR", ABSENT)])),
    case("t08 localhost trusts 127.0.0.1", &["localhost"], XFF, &[("x-forwarded-for", "203.0.113.3")],
        Env(&[("REMOTE_ADDR", "203.0.113.3")])),
    from(case("t09 localhost trusts ::1", &["localhost"], XFF, &[("x-forwarded-for", "203.0.113.3")],
        Env(&[("REMOTE_ADDR", "203.0.113.3")])), "::1"),
    from(case("t10 localhost trusts Unix sockets (Waitress's meaning)", &["localhost"], XFF, &[("x-forwarded-for", "203.0.113.3")],
        Env(&[("REMOTE_ADDR", "203.0.113.3")])), "unix"),
    from(case("t11 * trusts Unix sockets too", ANY, XFF, &[("x-forwarded-for", "203.0.113.3")],
        Env(&[("REMOTE_ADDR", "203.0.113.3")])), "unix"),
    from(case("t12 a trusted peer with no forwarding headers changes nothing", TEN, XFF, &[],
        Env(&[("REMOTE_ADDR", "10.0.0.9"), ("maitred.peer_addr", ABSENT), ("wsgi.url_scheme", "http")])), "10.0.0.9"),

    // ---- the walk (trust list, no count) ----
    from(case("k01 skips trusted proxies from the right", TEN, XFF, &[("x-forwarded-for", "203.0.113.1, 10.0.0.2, 10.0.0.3")],
        Env(&[("REMOTE_ADDR", "203.0.113.1"), ("HTTP_X_FORWARDED_FOR", "203.0.113.1, 10.0.0.2, 10.0.0.3")])), "10.0.0.4"),
    from(case("k02 ignores what the client prepended", TEN, XFF, &[("x-forwarded-for", "6.6.6.6, 203.0.113.1, 10.0.0.2")],
        Env(&[("REMOTE_ADDR", "203.0.113.1"), ("HTTP_X_FORWARDED_FOR", "203.0.113.1, 10.0.0.2")])), "10.0.0.4"),
    from(case("k03 every hop trusted: the leftmost", TEN, XFF, &[("x-forwarded-for", "10.0.0.1, 10.0.0.2")],
        Env(&[("REMOTE_ADDR", "10.0.0.1")])), "10.0.0.4"),
    from(case("k04 a client naming a trusted address before itself gains nothing", TEN, XFF,
        &[("x-forwarded-for", "10.9.9.9, 198.51.100.7")], Env(&[("REMOTE_ADDR", "198.51.100.7")])), "10.0.0.1"),
    from(counted(case("k05 a count overrides the walk", TEN, XFF, &[("x-forwarded-for", "203.0.113.1, 10.0.0.2")],
        Env(&[("REMOTE_ADDR", "10.0.0.2")])), 1), "10.0.0.1"),
    case("k06 * without a count believes one hop", ANY, XFF, &[("x-forwarded-for", "1.1.1.1, 2.2.2.2")],
        Env(&[("REMOTE_ADDR", "2.2.2.2"), ("HTTP_X_FORWARDED_FOR", "2.2.2.2")])),
    from(case("k07 mixed IPv6 and IPv4 chain", &["fd00::/8", "10.0.0.0/8"], XFF, &[("x-forwarded-for", "2001:db8::9, fd00::2")],
        Env(&[("REMOTE_ADDR", "2001:db8::9")])), "10.0.0.1"),
    from(case("k08 unknown stops the walk", TEN, XFF, &[("x-forwarded-for", "203.0.113.1, unknown")],
        Env(&[("REMOTE_ADDR", "unknown")])), "10.0.0.1"),
    from(case("k09 the walk uses the same window for hosts", TEN, XFHP,
        &[("x-forwarded-for", "203.0.113.1, 10.0.0.2"), ("x-forwarded-host", "outer.example, inner.internal"), ("x-forwarded-proto", "https")],
        Env(&[("REMOTE_ADDR", "203.0.113.1"), ("SERVER_NAME", "outer.example"), ("HTTP_HOST", "outer.example"), ("SERVER_PORT", "443")])), "10.0.0.3"),
    from(case("k10 Forwarded walk", TEN, FWD, &[("forwarded", "for=203.0.113.1;proto=https, for=10.0.0.2;proto=http")],
        Env(&[("REMOTE_ADDR", "203.0.113.1"), ("wsgi.url_scheme", "https")])), "10.0.0.3"),
    from(case("k11 Forwarded element without for stops the walk", TEN, FWD, &[("forwarded", "for=203.0.113.1, proto=https")],
        Env(&[("REMOTE_ADDR", "10.0.0.3"), ("wsgi.url_scheme", "https")])), "10.0.0.3"),
    from(case("k12 garbage before the untrusted hop is the client's business", TEN, XFF,
        &[("x-forwarded-for", "<script>, 203.0.113.5, 10.0.0.2")], Env(&[("REMOTE_ADDR", "203.0.113.5")])), "10.0.0.3"),
    from(case("k13 garbage where the walk must look is refused", TEN, XFF,
        &[("x-forwarded-for", "203.0.113.5, not-an-address")], Bad("X-Forwarded-For")), "10.0.0.3"),

    // ---- addresses in X-Forwarded-For ----
    case("a01 address with port", ANY, XFF, &[("x-forwarded-for", "203.0.113.1:4711")],
        Env(&[("REMOTE_ADDR", "203.0.113.1"), ("REMOTE_PORT", "4711")])),
    case("a02 quoted bracketed IPv6 with port (Waitress keeps the brackets)", ANY, XFF, &[("x-forwarded-for", "\"[2001:db8::1]:99\"")],
        Env(&[("REMOTE_ADDR", "2001:db8::1"), ("REMOTE_PORT", "99")])),
    case("a03 IPv4-mapped IPv6 (Waitress splits it as host:port)", ANY, XFF, &[("x-forwarded-for", "::ffff:192.0.2.1")],
        Env(&[("REMOTE_ADDR", "192.0.2.1"), ("REMOTE_PORT", "5000")])),
    case("a04 a non-address is refused", ANY, XFF, &[("x-forwarded-for", "garbage!")], Bad("X-Forwarded-For")),
    case("a05 a host name is refused", ANY, XFF, &[("x-forwarded-for", "evil.example.com")], Bad("X-Forwarded-For")),
    case("a06 empty leaves the peer", ANY, XFF, &[("x-forwarded-for", "")], Env(&[("REMOTE_ADDR", "127.0.0.1")])),
    counted(case("a07 garbage outside the window is ignored", ANY, XFF, &[("x-forwarded-for", "<script>, 203.0.113.5")],
        Env(&[("REMOTE_ADDR", "203.0.113.5"), ("HTTP_X_FORWARDED_FOR", "203.0.113.5")])), 1),
    case("a08 several header lines are one list", ANY, XFF, &[("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", "203.0.113.2")],
        Env(&[("REMOTE_ADDR", "203.0.113.2")])),
    case("a09 quoted address", ANY, XFF, &[("x-forwarded-for", "\"203.0.113.4\"")], Env(&[("REMOTE_ADDR", "203.0.113.4")])),
    case("a10 unknown", ANY, XFF, &[("x-forwarded-for", "unknown")], Env(&[("REMOTE_ADDR", "unknown")])),
    case("a11 obfuscated", ANY, XFF, &[("x-forwarded-for", "_gateway")], Env(&[("REMOTE_ADDR", "_gateway")])),
    case("a12 an out-of-range port is refused", ANY, XFF, &[("x-forwarded-for", "203.0.113.1:70000")], Bad("X-Forwarded-For")),
    counted(case("a13 a count larger than the chain takes the leftmost", ANY, XFF, &[("x-forwarded-for", "203.0.113.1")],
        Env(&[("REMOTE_ADDR", "203.0.113.1")])), 3),

    // ---- spoofing attempts ----
    case("s01 an underscore name cannot pose as X-Forwarded-For", ANY, XFF, &[("x_forwarded_for", "6.6.6.6")],
        Env(&[("REMOTE_ADDR", "127.0.0.1"), ("HTTP_X_FORWARDED_FOR", ABSENT)])),
    case("s02 nor override the real one", ANY, XFF, &[("x-forwarded-for", "203.0.113.1"), ("x_forwarded_for", "6.6.6.6")],
        Env(&[("REMOTE_ADDR", "203.0.113.1"), ("HTTP_X_FORWARDED_FOR", "203.0.113.1")])),
    case("s03 entries a client injected before the proxy's are outside the window", ANY, XFF,
        &[("x-forwarded-for", "6.6.6.6, 7.7.7.7, 203.0.113.8")], Env(&[("REMOTE_ADDR", "203.0.113.8"), ("HTTP_X_FORWARDED_FOR", "203.0.113.8")])),
    case("s04 a duplicated proto is two values, refused", ANY, &["x-forwarded-proto"],
        &[("x-forwarded-proto", "http"), ("x-forwarded-proto", "https")], Bad("X-Forwarded-Proto")),
    case("s05 a duplicated port is refused", ANY, &["x-forwarded-port"],
        &[("x-forwarded-port", "80"), ("x-forwarded-port", "8080")], Bad("X-Forwarded-Port")),
    case("s06 an untrusted peer's headers never apply", &["10.0.0.1"], XALL,
        &[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "https"), ("x-forwarded-host", "evil.example")],
        Env(&[("REMOTE_ADDR", "127.0.0.1"), ("wsgi.url_scheme", "http"), ("SERVER_NAME", "localhost"), ("HTTP_HOST", "192.168.1.1:80")])),
    case("s07 a host carrying a path is refused", ANY, &["x-forwarded-host"], &[("x-forwarded-host", "evil.example/path")], Bad("X-Forwarded-Host")),
    case("s08 a host carrying credentials is refused", ANY, &["x-forwarded-host"], &[("x-forwarded-host", "user@evil.example")], Bad("X-Forwarded-Host")),
    case("s09 a host with a space is refused", ANY, &["x-forwarded-host"], &[("x-forwarded-host", "\"a b\"")], Bad("X-Forwarded-Host")),
    case("s10 Forwarded from an untrusted peer is removed", &["10.0.0.1"], FWD, &[("forwarded", "for=1.2.3.4;proto=https")],
        Env(&[("HTTP_FORWARDED", ABSENT), ("wsgi.url_scheme", "http")])),
    case("s11 X-Forwarded-For is removed when Forwarded is the trusted one", ANY, FWD,
        &[("x-forwarded-for", "6.6.6.6"), ("forwarded", "for=203.0.113.1")],
        Env(&[("REMOTE_ADDR", "203.0.113.1"), ("HTTP_X_FORWARDED_FOR", ABSENT)])),
    keep_untrusted(case("s12 not clearing keeps untrusted headers but never applies them", &["10.0.0.1"], XFF,
        &[("x-forwarded-for", "1.2.3.4")], Env(&[("HTTP_X_FORWARDED_FOR", "1.2.3.4"), ("REMOTE_ADDR", "127.0.0.1")]))),

    // ---- proto, port, host ----
    case("p01 proto is case-insensitive", ANY, &["x-forwarded-proto"], &[("x-forwarded-proto", "HTTPS")],
        Env(&[("wsgi.url_scheme", "https"), ("SERVER_PORT", "443")])),
    case("p02 an unknown proto is refused", ANY, &["x-forwarded-proto"], &[("x-forwarded-proto", "ftp")], Bad("X-Forwarded-Proto")),
    case("p03 a port that is not a number is refused (Waitress takes it)", ANY, &["x-forwarded-port"], &[("x-forwarded-port", "abc")], Bad("X-Forwarded-Port")),
    case("p04 an out-of-range port is refused", ANY, &["x-forwarded-port"], &[("x-forwarded-port", "70000")], Bad("X-Forwarded-Port")),
    case("p05 a port alone sets SERVER_PORT only", ANY, &["x-forwarded-port"], &[("x-forwarded-port", "8443")],
        Env(&[("SERVER_PORT", "8443"), ("HTTP_HOST", "192.168.1.1:80")])),
    case("p06 a host's port must be a number", ANY, &["x-forwarded-host"], &[("x-forwarded-host", "example.com:abc")], Bad("X-Forwarded-Host")),
    case("p07 bracketed IPv6 host with port", ANY, &["x-forwarded-host"], &[("x-forwarded-host", "[2001:db8::1]:8443")],
        Env(&[("SERVER_NAME", "[2001:db8::1]"), ("HTTP_HOST", "[2001:db8::1]:8443"), ("SERVER_PORT", "8443")])),
    case("p08 bracketed IPv6 host, https default port", ANY, &["x-forwarded-host", "x-forwarded-proto"],
        &[("x-forwarded-host", "[2001:db8::1]"), ("x-forwarded-proto", "https")],
        Env(&[("SERVER_NAME", "[2001:db8::1]"), ("HTTP_HOST", "[2001:db8::1]"), ("SERVER_PORT", "443")])),
    case("p09 proto alone leaves Host", ANY, &["x-forwarded-proto"], &[("x-forwarded-proto", "https")],
        Env(&[("HTTP_HOST", "192.168.1.1:80"), ("SERVER_NAME", "localhost"), ("SERVER_PORT", "443")])),
    counted(case("p10 host list rewritten to the window", ANY, &["x-forwarded-host"],
        &[("x-forwarded-host", "a.example, b.example, c.example")],
        Env(&[("SERVER_NAME", "b.example"), ("HTTP_X_FORWARDED_HOST", "b.example, c.example")])), 2),
    case("p11 a host's port beats X-Forwarded-Port", ANY, &["x-forwarded-host", "x-forwarded-port"],
        &[("x-forwarded-host", "example.com:9000"), ("x-forwarded-port", "8080")],
        Env(&[("SERVER_PORT", "9000"), ("HTTP_HOST", "example.com:9000")])),
    case("p12 only X-Forwarded-By trusted: kept, no effect", ANY, &["x-forwarded-by"], &[("x-forwarded-by", "proxy-1")],
        Env(&[("HTTP_X_FORWARDED_BY", "proxy-1"), ("REMOTE_ADDR", "127.0.0.1")])),

    // ---- RFC 7239 Forwarded ----
    case("f01 a quoted comma in an extension is not a separator", ANY, FWD, &[("forwarded", "for=192.0.2.60;ext=\"x,y\"")],
        Env(&[("REMOTE_ADDR", "192.0.2.60")])),
    case("f02 several header lines are one list", ANY, FWD, &[("forwarded", "for=192.0.2.1"), ("forwarded", "for=198.51.100.2")],
        Env(&[("REMOTE_ADDR", "198.51.100.2"), ("HTTP_FORWARDED", "for=198.51.100.2")])),
    counted(case("f03 obfuscated node", ANY, FWD, &[("forwarded", "for=_hidden, for=198.51.100.2")],
        Env(&[("REMOTE_ADDR", "_hidden")])), 2),
    case("f04 unknown node", ANY, FWD, &[("forwarded", "for=unknown")], Env(&[("REMOTE_ADDR", "unknown")])),
    case("f05 parameter names are case-insensitive", ANY, FWD, &[("forwarded", "FOR=192.0.2.1;PROTO=https")],
        Env(&[("REMOTE_ADDR", "192.0.2.1"), ("wsgi.url_scheme", "https")])),
    case("f06 an unknown proto is refused", ANY, FWD, &[("forwarded", "for=192.0.2.1;proto=gopher")], Bad("Forwarded Proto=")),
    case("f07 by is parsed and not used", ANY, FWD, &[("forwarded", "for=192.0.2.1;by=203.0.113.43")],
        Env(&[("REMOTE_ADDR", "192.0.2.1")])),
    case("f08 obfuscated node with obfuscated port", ANY, FWD, &[("forwarded", "for=\"_hidden:_p1\"")],
        Env(&[("REMOTE_ADDR", "_hidden"), ("REMOTE_PORT", "_p1")])),
    case("f09 whitespace around list commas is fine", ANY, FWD, &[("forwarded", "for=192.0.2.1 ,  for=198.51.100.3")],
        Env(&[("REMOTE_ADDR", "198.51.100.3")])),
    case("f10 bad syntax anywhere is refused", ANY, FWD, &[("forwarded", "for=a b, for=198.51.100.3")], Bad("Forwarded")),
    case("f11 a bad node outside the window is ignored", ANY, FWD, &[("forwarded", "for=notanode, for=198.51.100.3")],
        Env(&[("REMOTE_ADDR", "198.51.100.3")])),
    case("f12 a bad node inside the window is refused", ANY, FWD, &[("forwarded", "for=notanode")], Bad("Forwarded")),
    case("f13 a repeated parameter is refused", ANY, FWD, &[("forwarded", "for=192.0.2.1;for=192.0.2.2")], Bad("Forwarded")),
    case("f14 an unclosed quote is refused", ANY, FWD, &[("forwarded", "for=\"192.0.2.1")], Bad("Forwarded")),
    case("f15 a quoted host with a port", ANY, FWD, &[("forwarded", "for=192.0.2.1;host=\"example.com:8443\";proto=https")],
        Env(&[("HTTP_HOST", "example.com:8443"), ("SERVER_PORT", "8443"), ("SERVER_NAME", "example.com")])),

    // ---- X-Forwarded-Prefix ----
    case("x01 prefix becomes SCRIPT_NAME", ANY, &["x-forwarded-for", "x-forwarded-prefix"], &[("x-forwarded-prefix", "/team")],
        Env(&[("SCRIPT_NAME", "/team")])),
    case("x02 trailing slash dropped", ANY, &["x-forwarded-prefix"], &[("x-forwarded-prefix", "/team/")], Env(&[("SCRIPT_NAME", "/team")])),
    case("x03 not a path: refused", ANY, &["x-forwarded-prefix"], &[("x-forwarded-prefix", "team")], Bad("X-Forwarded-Prefix")),
    case("x04 not trusted: removed, no effect", ANY, XFF, &[("x-forwarded-prefix", "/team")],
        Env(&[("SCRIPT_NAME", ""), ("HTTP_X_FORWARDED_PREFIX", ABSENT)])),
    case("x05 from an untrusted peer: removed", &["10.0.0.1"], &["x-forwarded-prefix"], &[("x-forwarded-prefix", "/team")],
        Env(&[("SCRIPT_NAME", ""), ("HTTP_X_FORWARDED_PREFIX", ABSENT)])),
    case("x06 two prefixes are refused", ANY, &["x-forwarded-prefix"], &[("x-forwarded-prefix", "/a, /b")], Bad("X-Forwarded-Prefix")),
    case("x07 prefix works with Forwarded", ANY, &["forwarded", "x-forwarded-prefix"],
        &[("forwarded", "for=192.0.2.1"), ("x-forwarded-prefix", "/api")], Env(&[("SCRIPT_NAME", "/api"), ("REMOTE_ADDR", "192.0.2.1")])),
];

/// The plan a case's settings make (scheme http, no url_prefix).
fn plan(c: &Case) -> Plan {
    let settings = Settings {
        proxy: Proxy {
            trusted: c.trusted.iter().map(|s| (*s).to_owned()).collect(),
            count: c.count,
            headers: c.headers.iter().map(|s| (*s).to_owned()).collect(),
            clear_untrusted: c.clear,
            log_untrusted: false,
        },
        ..Settings::default()
    };
    Plan::build(&settings).unwrap_or_else(|e| panic!("{}: bad settings {e:?}", c.name))
}

/// Runs a case through resolve and the environ builder; the environ as a
/// map of the keys the cases talk about.
fn run(c: &Case) -> Result<std::collections::HashMap<String, String>, Malformed> {
    let mut headers = HeaderMap::new();
    headers.append("host", HeaderValue::from_static("192.168.1.1:80"));
    for (name, value) in c.request {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    let (peer, peer_ip) = match c.peer {
        "unix" => (Peer::Unix, None),
        ip => {
            let ip: IpAddr = ip.parse().expect("peer");
            let peer = Peer::Tcp {
                remote: SocketAddr::new(ip, 5000),
                local: "0.0.0.0:8080".parse().expect("local"),
            };
            (peer, Some(ip))
        }
    };
    let plan = plan(c);
    let verdict = resolve(
        peer_ip,
        &Forwarding::from_headers(&headers),
        &plan.gateway.proxy,
        plan.environ.scheme,
    )?;
    let uri: Uri = "/".parse().expect("uri");
    let head = RequestHead {
        method: "GET",
        uri: &uri,
        version: Version::HTTP_11,
        headers: &headers,
        body_len: None,
    };
    let cgi = environ::cgi_vars(&head, &peer, &plan.environ, &verdict);
    // The template entries every request starts with (as the worker's).
    let mut env: std::collections::HashMap<String, String> = [
        ("wsgi.url_scheme", "http"),
        ("SERVER_NAME", "localhost"),
        ("SCRIPT_NAME", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for entry in cgi.iter() {
        match entry {
            Entry::Var(var, value) => {
                env.insert(var.name().to_owned(), value.to_owned());
            }
            Entry::Header(key, value) => {
                env.insert(key.to_owned(), value.to_owned());
            }
        }
    }
    Ok(env)
}

#[test]
fn corpus() {
    assert!(CASES.len() >= 80, "{} cases", CASES.len());
    let mut names = std::collections::HashSet::new();
    let mut failures = Vec::new();
    for c in CASES {
        assert!(
            names.insert(c.name.split(' ').next()),
            "duplicate id in {}",
            c.name
        );
        match (&c.expect, run(c)) {
            (Env(expected), Ok(env)) => {
                for (key, want) in *expected {
                    let got = env.get(*key).map(String::as_str).unwrap_or(ABSENT);
                    if got != *want {
                        failures.push(format!("{}: {key} = {got:?}, expected {want:?}", c.name));
                    }
                }
            }
            (Env(_), Err(m)) => failures.push(format!(
                "{}: refused ({} {}), expected an environ",
                c.name, m.header, m.reason
            )),
            (Bad(header), Err(m)) => {
                if m.header != *header {
                    failures.push(format!(
                        "{}: refused for {}, expected {header}",
                        c.name, m.header
                    ));
                }
            }
            (Bad(header), Ok(_)) => {
                failures.push(format!("{}: accepted, expected {header} refused", c.name))
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn malformed_bodies_name_the_header() {
    let m = Malformed {
        header: "X-Forwarded-Proto",
        reason: String::new(),
        value: String::new(),
    };
    assert_eq!(m.detail(), "Header \"X-Forwarded-Proto\" malformed.");
}

#[test]
fn configuration_rules() {
    let proxy = |trusted: &[&str], count: Option<u32>, headers: &[&str]| Settings {
        proxy: Proxy {
            trusted: trusted.iter().map(|s| (*s).to_owned()).collect(),
            count,
            headers: headers.iter().map(|s| (*s).to_owned()).collect(),
            clear_untrusted: true,
            log_untrusted: false,
        },
        ..Settings::default()
    };
    let problems = |s: Settings| -> Vec<Problem> { Plan::build(&s).err().unwrap_or_default() };
    assert_eq!(
        problems(proxy(&["10.0.0.300/8"], None, &[]))[0].key,
        "proxy.trusted"
    );
    assert!(
        problems(proxy(&["10.0.0.300/8"], None, &[]))[0]
            .message
            .contains("`10.0.0.300/8` is not an IP address, a CIDR range")
    );
    let unknown = &problems(proxy(&["*"], None, &["x-real-ip"]))[0];
    assert_eq!(unknown.key, "proxy.headers");
    assert!(
        unknown.message.ends_with(
            "use x-forwarded-for, x-forwarded-host, x-forwarded-proto, x-forwarded-port, \
             x-forwarded-by, x-forwarded-prefix or forwarded"
        ),
        "{}",
        unknown.message
    );
    assert!(
        problems(proxy(&["*"], None, &["forwarded", "x-forwarded-for"]))[0]
            .message
            .contains("cannot be combined")
    );
    assert_eq!(problems(proxy(&[], Some(2), &[]))[0].key, "proxy.count");
    assert_eq!(
        problems(proxy(&[], None, &["x-forwarded-for"]))[0].key,
        "proxy.headers"
    );
    assert_eq!(problems(proxy(&["*"], Some(0), &[]))[0].key, "proxy.count");
    // Waitress's implicit default: only X-Forwarded-Proto.
    let plan = Plan::build(&proxy(&["10.0.0.1"], None, &[])).expect("valid");
    assert_eq!(plan.gateway.proxy.headers, HeaderSet::of(&[Header::Proto]));
    // `forwarded` with the prefix header is allowed.
    assert!(Plan::build(&proxy(&["*"], None, &["forwarded", "x-forwarded-prefix"])).is_ok());
    // Host bits of a CIDR are normalised, IPv4-mapped entries are unwrapped.
    let t = TrustList::parse(&["10.1.2.3/8".into(), "::ffff:192.0.2.1".into()]).expect("valid");
    assert!(t.trusts_ip("10.200.0.1".parse().expect("ip")));
    assert!(t.trusts_ip("192.0.2.1".parse().expect("ip")));
}
