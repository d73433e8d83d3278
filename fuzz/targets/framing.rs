//! Targets `framing` (the request-stream scanner on arbitrary bytes, read
//! in arbitrary pieces) and `host_and_te` (the Host and Transfer-Encoding
//! rules, on heads built from the input and checked against a model).

use maitred::framing::{HeadFacts, HeadQueue, Scanner, Verdict, Violation, valid_host};

use super::{Rng, first_byte, split};

/// Large enough that no line of a fuzz input is left to hyper as too long
/// (which the scanner can only notice when a line spans reads).
const NO_LINE_LIMIT: usize = usize::MAX;

/// The first verdict that is not `Pass`.
#[derive(Debug)]
struct Refusal {
    verdict: Verdict,
    /// Where in the stream the read that gave it started.
    read_start: usize,
    /// Where in the stream the bytes passed on end (`read_start + keep`).
    at: usize,
}

/// How scanning a stream read in `pieces` ended, and the facts of the
/// heads passed on, taken after every read (as the gateway takes them
/// while hyper reads the requests).
#[derive(Debug)]
struct Scan {
    refusal: Option<Refusal>,
    facts: Vec<HeadFacts>,
}

fn scan(scanner: &mut Scanner, pieces: &[&[u8]]) -> Scan {
    let heads = HeadQueue::default();
    let mut facts = Vec::new();
    let mut read_start = 0;
    for piece in pieces {
        let verdict = scanner.scan(piece, &heads);
        while let Some(f) = heads.pop() {
            facts.push(f);
        }
        let keep = match verdict {
            Verdict::Pass => {
                read_start += piece.len();
                continue;
            }
            Verdict::Refuse { keep, .. } | Verdict::Fail { keep, .. } => keep,
        };
        assert!(
            keep <= piece.len(),
            "keep {keep} beyond the {} bytes scanned",
            piece.len()
        );
        let refusal = Refusal {
            verdict,
            read_start,
            at: read_start + keep,
        };
        return Scan {
            refusal: Some(refusal),
            facts,
        };
    }
    Scan {
        refusal: None,
        facts,
    }
}

/// What a refusal means for the stream, whatever the reads were: which
/// violation, whether it refuses a head (or fails a body), and the
/// version and method the answer is written for.
fn meaning(v: &Verdict) -> (Option<Violation>, bool, bool, bool) {
    match v {
        Verdict::Pass => (None, false, false, false),
        Verdict::Refuse { head, .. } => {
            (Some(head.violation), true, head.http10, head.head_request)
        }
        Verdict::Fail { violation, .. } => (Some(*violation), false, false, false),
    }
}

/// `framing`: the first byte holds the settings (bit 0: allow_bare_lf) and
/// seeds how the rest is cut into reads. Properties: no panic; `keep`
/// never exceeds the bytes scanned; the stream read whole (the quick path
/// where it applies), one byte at a time (the line by line path) or in
/// pieces gives the same refusal, for the same version and method; what
/// is passed on ends at the same place (or at the start of the read that
/// found the problem, when the refused head or broken line began in an
/// earlier one: those bytes are hyper's already; or before or after empty
/// lines that precede a request line); and every head passed
/// on has the same facts (a read may lose them, past eight heads or when
/// the scanner stops following the stream, but never change them).
pub fn framing(data: &[u8]) {
    let (settings, stream) = first_byte(data);
    let allow_bare_lf = settings & 1 != 0;
    let scanner = || Scanner::new(allow_bare_lf, NO_LINE_LIMIT);

    let whole = scan(&mut scanner(), &[stream]);
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    let trickled = scan(&mut scanner(), &bytes);
    let mut rng = Rng::new(data);
    let pieces = split(stream, &mut rng);
    let in_pieces = scan(&mut scanner(), &pieces);
    let runs = [
        ("whole", &whole, &[stream][..]),
        ("one byte at a time", &trickled, &bytes[..]),
        ("in pieces", &in_pieces, &pieces[..]),
    ];
    for (how, split_scan, reads) in &runs[1..] {
        let describe = || {
            format!(
                "whole: {whole:?}, {how}: {split_scan:?}, reads {:?}",
                reads.iter().map(|r| r.len()).collect::<Vec<_>>()
            )
        };
        let (w, s) = (&whole.refusal, &split_scan.refusal);
        let answer = |r: &Refusal| meaning(&r.verdict);
        assert_eq!(
            w.as_ref().map(answer),
            s.as_ref().map(answer),
            "{}",
            describe()
        );
        if let (Some(w), Some(s)) = (w, s) {
            // Empty lines before a request line are nothing (RFC 9112
            // §2.2): they may go to hyper or not.
            let between = &stream[w.at.min(s.at)..w.at.max(s.at)];
            let only_empty_lines = between.iter().all(|b| b"\r\n".contains(b));
            assert!(
                s.at == w.at || (s.at == s.read_start && w.at < s.read_start) || only_empty_lines,
                "passed on up to {}, in the whole stream up to {}; {}",
                s.at,
                w.at,
                describe()
            );
        }
    }
    // Byte by byte, no read holds more than one head: no facts are lost
    // but to the scanner giving up, after which none are added.
    for (how, other, _) in [&runs[0], &runs[2]] {
        assert!(
            trickled.facts.starts_with(&other.facts),
            "facts read {how}: {:?}, one byte at a time: {:?}",
            other.facts,
            trickled.facts
        );
    }

    // A line limit: long lines are left to hyper; nothing else changes
    // the rules above, but the scanner must stay within its input.
    scan(&mut Scanner::new(allow_bare_lf, 64), &pieces);

    for line in stream.split(|&b| b == b'\n') {
        check_host(line);
    }
}

/// Properties of `valid_host` that follow from RFC 3986's grammar,
/// whatever the implementation.
fn check_host(value: &[u8]) {
    if !valid_host(value) {
        return;
    }
    let shown = String::from_utf8_lossy(value);
    assert!(
        value.iter().all(|&b| (0x21..0x7f).contains(&b)),
        "valid Host {shown:?} has a control, space or non-ASCII byte"
    );
    assert!(
        !value.iter().any(|b| b",/?#@\"<>\\^`{|}".contains(b)),
        "valid Host {shown:?} has a delimiter"
    );
    let (host, port) = match value.first() {
        Some(b'[') => {
            let close = value
                .iter()
                .position(|&b| b == b']')
                .expect("closed literal");
            let literal = &value[1..close];
            let is_v6 =
                std::str::from_utf8(literal).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
            let is_future = matches!(literal.first(), Some(b'v' | b'V'));
            assert!(is_v6 || is_future, "valid Host {shown:?}: bad IP literal");
            (&value[..=close], &value[close + 1..])
        }
        _ => match value.iter().position(|&b| b == b':') {
            Some(i) => (&value[..i], &value[i..]),
            None => (value, &[][..]),
        },
    };
    assert!(
        !host.starts_with(b"[") || !host[1..host.len() - 1].contains(&b'['),
        "valid Host {shown:?}"
    );
    if let Some(digits) = port.strip_prefix(b":") {
        assert!(
            digits.iter().all(u8::is_ascii_digit),
            "valid Host {shown:?}: the port is not digits"
        );
    } else {
        assert!(port.is_empty(), "valid Host {shown:?}: junk after the host");
    }
    if !value.starts_with(b"[") {
        assert!(
            !host.contains(&b'[') && !host.contains(&b']'),
            "valid Host {shown:?}: bracket in a name"
        );
        // Percent signs start two hex digits.
        let mut i = 0;
        while let Some(p) = host[i..].iter().position(|&b| b == b'%') {
            let at = i + p;
            assert!(
                host.get(at + 1..at + 3)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)),
                "valid Host {shown:?}: bad percent-encoding"
            );
            i = at + 3;
        }
    }
}

/// One head built by `host_and_te`, and what RFC 9112 (as maitred applies
/// it) says about it.
struct Head {
    http10: bool,
    /// HEAD rather than POST.
    head_request: bool,
    absolute_form: bool,
    /// Header lines, without line endings.
    fields: Vec<Vec<u8>>,
}

impl Head {
    fn bytes(&self) -> Vec<u8> {
        let target: &[u8] = if self.absolute_form {
            b"http://example.com/x"
        } else {
            b"/x"
        };
        let version: &[u8] = if self.http10 {
            b"HTTP/1.0"
        } else {
            b"HTTP/1.1"
        };
        let mut out = if self.head_request {
            b"HEAD ".to_vec()
        } else {
            b"POST ".to_vec()
        };
        out.extend_from_slice(target);
        out.push(b' ');
        out.extend_from_slice(version);
        out.extend_from_slice(b"\r\n");
        for f in &self.fields {
            out.extend_from_slice(f);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The values of the fields named `name` (case-insensitively; the name
    /// is everything before the first colon, the value is trimmed of
    /// spaces and tabs).
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields.iter().filter_map(move |f| {
            let colon = f.iter().position(|&b| b == b':')?;
            f[..colon]
                .eq_ignore_ascii_case(name.as_bytes())
                .then(|| trim_ows(&f[colon + 1..]))
        })
    }

    /// What the model expects: the violation, or how the body is framed.
    fn expected(&self) -> Result<Body, Violation> {
        let te: Vec<&[u8]> = self.values("transfer-encoding").collect();
        let cl: Vec<&[u8]> = self.values("content-length").collect();
        let hosts: Vec<&[u8]> = self.values("host").collect();
        if !te.is_empty() {
            if self.http10 {
                return Err(Violation::TransferEncodingInHttp10);
            }
            transfer_codings(&te)?;
            if !cl.is_empty() {
                return Err(Violation::TransferEncodingWithContentLength);
            }
        }
        if cl.len() > 1 {
            return Err(Violation::DuplicateContentLength);
        }
        match hosts.len() {
            0 if !self.http10 => return Err(Violation::MissingHost),
            0 | 1 => {}
            _ => return Err(Violation::DuplicateHost),
        }
        if let [host] = hosts[..] {
            if !self.absolute_form && !model_host(host) {
                return Err(Violation::InvalidHost);
            }
        }
        if !te.is_empty() {
            return Ok(Body::Chunked);
        }
        let length = |v: &[u8]| {
            (!v.is_empty() && v.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(v).ok()?.parse().ok())
                .flatten()
        };
        Ok(match cl[..] {
            [] => Body::Length(0),
            [v] => length(v).map_or(Body::Unknown, Body::Length),
            _ => unreachable!("refused above"),
        })
    }

    /// The facts of the head, as (framed, repeated Content-Type,
    /// `Connection: close`, `Connection: keep-alive`).
    fn facts(&self) -> (bool, bool, bool, bool) {
        let framed = self.values("transfer-encoding").next().is_some()
            || self.values("content-length").next().is_some();
        let repeated_content_type = self.values("content-type").count() > 1;
        // Tokens of the values that are visible ASCII (what hyper's
        // `to_str` accepts), case-insensitively, around optional spaces.
        let has = |token: &str| {
            self.values("connection").any(|v| {
                v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
                    && v.split(|&b| b == b',')
                        .any(|t| trim_ows(t).eq_ignore_ascii_case(token.as_bytes()))
            })
        };
        (
            framed,
            repeated_content_type,
            has("close"),
            has("keep-alive"),
        )
    }
}

fn facts(f: &HeadFacts) -> (bool, bool, bool, bool) {
    (
        f.framed(),
        f.repeated_content_type(),
        f.close(),
        f.keep_alive(),
    )
}

enum Body {
    Length(u64),
    Chunked,
    /// A Content-Length hyper refuses: the scanner stops checking.
    Unknown,
}

/// RFC 9112 §6.1, strictly: a list of codings, each a token optionally
/// followed by parameters, and the codings as a whole exactly one
/// `chunked`, last.
fn transfer_codings(lines: &[&[u8]]) -> Result<(), Violation> {
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    let mut codings: Vec<(Vec<u8>, bool)> = Vec::new();
    let mut malformed = false;
    for line in lines {
        for element in line.split(|&b| b == b',') {
            let element = trim_ows(element);
            let (coding, has_params) = match element.iter().position(|&b| b == b';') {
                Some(i) => (trim_ows(&element[..i]), true),
                None => (element, false),
            };
            if coding.is_empty() || !coding.iter().all(tchar) {
                malformed = true;
                continue;
            }
            codings.push((coding.to_ascii_lowercase(), has_params));
        }
    }
    let is_chunked = |(c, params): &(Vec<u8>, bool)| c == b"chunked" && !params;
    let chunked = codings.iter().filter(|c| is_chunked(c)).count();
    if malformed {
        Err(Violation::MalformedTransferEncoding)
    } else if chunked > 1 {
        Err(Violation::RepeatedChunked)
    } else if chunked == 1 && !codings.last().is_some_and(is_chunked) {
        Err(Violation::ChunkedNotLast)
    } else if chunked == 0 || codings.len() > 1 {
        Err(Violation::UnsupportedTransferCoding)
    } else {
        Ok(())
    }
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().take_while(|b| b" \t".contains(b)).count();
    let s = &s[start..];
    let end = s.len() - s.iter().rev().take_while(|b| b" \t".contains(b)).count();
    &s[..end]
}

/// RFC 3986 §3.2.2 `host [":" port]`, without `,` in a reg-name or an
/// IPvFuture literal (maitred's one deliberate narrowing).
fn model_host(value: &[u8]) -> bool {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    let sub_delim = |b: u8| b"!$&'()*+;=".contains(&b);
    let reg_name = |name: &[u8]| {
        let mut rest = name;
        while let Some((&b, tail)) = rest.split_first() {
            if b == b'%' {
                match tail {
                    [h, l, more @ ..] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                        rest = more;
                        continue;
                    }
                    _ => return false,
                }
            }
            if !unreserved(b) && !sub_delim(b) {
                return false;
            }
            rest = tail;
        }
        true
    };
    let port_ok = |port: &[u8]| port.iter().all(u8::is_ascii_digit);
    if let Some(rest) = value.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let (literal, after) = (&rest[..close], &rest[close + 1..]);
        let literal_ok = match literal {
            [b'v' | b'V', future @ ..] => match future.iter().position(|&b| b == b'.') {
                Some(dot) => {
                    dot > 0
                        && future[..dot].iter().all(u8::is_ascii_hexdigit)
                        && future.len() > dot + 1
                        && future[dot + 1..]
                            .iter()
                            .all(|&b| unreserved(b) || sub_delim(b) || b == b':')
                }
                None => false,
            },
            _ => {
                std::str::from_utf8(literal).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
            }
        };
        return literal_ok
            && match after {
                [] => true,
                [b':', port @ ..] => port_ok(port),
                _ => false,
            };
    }
    match value.iter().position(|&b| b == b':') {
        Some(i) => reg_name(&value[..i]) && port_ok(&value[i + 1..]),
        None => reg_name(value),
    }
}

/// `host_and_te`: the first byte chooses the request line (bit 0:
/// HTTP/1.0, bit 1: absolute-form target, bit 2: HEAD) and seeds the
/// reads; every
/// other line of the input is a header field of one request head (a bare
/// CR in it is dropped). The scanner must find exactly the violation the
/// model above finds, for the same version and method; the facts the
/// gateway gets of a head that passes are the model's; and when the head
/// passes, with its body framed as
/// the model says, a second head with a bare LF that follows it must be
/// refused exactly where it starts (the scanner kept its place).
pub fn host_and_te(data: &[u8]) {
    let (choice, rest) = first_byte(data);
    let head = Head {
        http10: choice & 1 != 0,
        absolute_form: choice & 2 != 0,
        head_request: choice & 4 != 0,
        fields: rest
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| l.iter().copied().filter(|&b| b != b'\r').collect())
            .collect(),
    };
    // Lines that are not fields (no colon) are left to hyper; so are
    // obsolete line folding and whitespace before the colon: the model
    // does not cover them.
    if head.fields.iter().any(|f| {
        let colon = f.iter().position(|&b| b == b':');
        colon.is_none_or(|c| c == 0 || f[..c].iter().any(|b| b" \t".contains(b)))
    }) {
        return;
    }
    let mut stream = head.bytes();
    let head_len = stream.len();
    let expected = head.expected();
    let mut next_at = None;
    match &expected {
        Ok(Body::Length(n)) if *n <= 4096 => {
            stream.resize(head_len + *n as usize, b'\n');
            next_at = Some(stream.len());
        }
        Ok(Body::Chunked) => {
            stream.extend_from_slice(b"3\r\na\nb\r\n0\r\nX: y\r\n\r\n");
            next_at = Some(stream.len());
        }
        _ => {}
    }
    if next_at.is_some() {
        stream.extend_from_slice(b"GET / HTTP/1.1\nHost: a\n\n");
    }
    let mut rng = Rng::new(data);
    let reads = split(&stream, &mut rng);
    for pieces in [vec![&stream[..]], reads] {
        let Scan {
            refusal,
            facts: got,
        } = scan(&mut Scanner::new(false, NO_LINE_LIMIT), &pieces);
        let shown = String::from_utf8_lossy(&stream);
        if matches!(expected, Ok(Body::Length(_) | Body::Chunked)) {
            let got: Vec<_> = got.iter().map(facts).collect();
            assert_eq!(got, [head.facts()], "the head's facts in {shown:?}");
        }
        match (&expected, refusal) {
            (Err(violation), Some(r)) if matches!(r.verdict, Verdict::Refuse { .. }) => {
                assert_eq!(
                    meaning(&r.verdict),
                    (Some(*violation), true, head.http10, head.head_request),
                    "{shown:?}"
                );
                // The only head starts at 0: nothing before it is kept.
                assert_eq!(r.at, r.read_start, "keep is not 0: {shown:?}");
            }
            (Err(violation), other) => {
                panic!("expected {violation:?}, the scanner found {other:?} in {shown:?}")
            }
            (Ok(_), found) => match next_at {
                Some(next) => {
                    let Some(r) = found else {
                        panic!("the second head's bare LF was not found in {shown:?}");
                    };
                    assert_eq!(
                        meaning(&r.verdict),
                        (Some(Violation::BareLineEnding), true, false, false),
                        "{shown:?}"
                    );
                    assert!(
                        r.at == next || (r.at == r.read_start && r.read_start > next),
                        "the second head starts at {next}, refused at {}: {shown:?}",
                        r.at
                    );
                }
                None => assert!(
                    found.is_none(),
                    "the head passes, the scanner found {found:?} in {shown:?}"
                ),
            },
        }
    }
}
