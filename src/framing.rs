//! Request framing, checked on the bytes of a connection before hyper
//! parses them: the places where a front end and maitred could disagree
//! about where one request ends and the next begins (RFC 9112).
//!
//! - Every line of a head, every chunk-size line and every trailer line ends
//!   in CRLF: a bare LF or a bare CR is refused (CVE-2019-16785 in Waitress
//!   was a front end and a back end splitting lines differently). The
//!   `allow_bare_lf` setting relaxes this one rule.
//! - `Transfer-Encoding`, across all its lines, is exactly one `chunked`
//!   coding; it is refused on HTTP/1.0 and together with `Content-Length`.
//! - `Host`: one field (required on HTTP/1.1) whose value is `uri-host
//!   [":" port]`, unless the target is in absolute form, which wins.
//!
//! [`Scanner`] follows one connection's byte stream, heads line by line and
//! bodies by their length or their chunks, so it knows where each head
//! starts. It is pure: `connection::Watched` feeds it every read and acts
//! on what it finds.

use memchr::{memchr, memchr2};

/// Why a request is refused before hyper or the app sees it. As an error
/// it ends the read of a body whose framing broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.detail())]
pub enum Violation {
    /// A line ends in LF alone, or a CR is not followed by LF.
    BareLineEnding,
    /// An HTTP/1.1 request without `Host`.
    MissingHost,
    /// More than one `Host` field.
    DuplicateHost,
    /// A `Host` value that is not `uri-host [":" port]`.
    InvalidHost,
    /// A `Transfer-Encoding` list with an empty or malformed element.
    MalformedTransferEncoding,
    /// `chunked` more than once.
    RepeatedChunked,
    /// `chunked` present but not the final coding.
    ChunkedNotLast,
    /// A transfer coding maitred does not implement (anything but chunked).
    UnsupportedTransferCoding,
    /// `Transfer-Encoding` and `Content-Length` in one request.
    TransferEncodingWithContentLength,
    /// `Transfer-Encoding` in an HTTP/1.0 request.
    TransferEncodingInHttp10,
}

impl Violation {
    /// The text of the error page.
    pub fn detail(self) -> &'static str {
        match self {
            Violation::BareLineEnding => "Bare CR or LF found in HTTP message",
            Violation::MissingHost => "Missing Host header",
            Violation::DuplicateHost => "Duplicate header: Host",
            Violation::InvalidHost => "Invalid Host header",
            Violation::MalformedTransferEncoding => {
                "Transfer-Encoding is invalid: the list has an empty or malformed element"
            }
            Violation::RepeatedChunked => {
                "Transfer-Encoding is invalid. Multiple chunked encodings requested."
            }
            Violation::ChunkedNotLast => {
                "Transfer-Encoding is invalid: chunked must be the final coding"
            }
            Violation::UnsupportedTransferCoding => "Transfer-Encoding requested is not supported.",
            Violation::TransferEncodingWithContentLength => {
                "Transfer-Encoding and Content-Length cannot both be given"
            }
            Violation::TransferEncodingInHttp10 => "Transfer-Encoding is not allowed in HTTP/1.0",
        }
    }
}

/// A head refused before hyper sees it, to be answered by the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusedHead {
    pub violation: Violation,
    /// The request line said HTTP/1.0 (the answer uses the same version).
    pub http10: bool,
}

/// What to do with the bytes just scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass them all on.
    Pass,
    /// Pass on only the first `keep` bytes, then end of input: the head
    /// that follows is refused, and answered once the requests before it
    /// are.
    Refuse { keep: usize, head: RefusedHead },
    /// A request body's framing broke (a chunk-size or trailer line): fail
    /// the read, which fails the body being read.
    Fail(Violation),
}

/// Where in the stream the scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a request line (empty lines are allowed, RFC 9112 §2.2).
    Start,
    /// In a head, after its request line.
    Headers,
    /// This many body bytes still to come.
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data; `true` once the CR has been seen.
    ChunkEnd(bool),
    Trailers,
    /// Nothing more is checked: what follows is a head hyper refuses (its
    /// request line or length is not one it accepts), so the connection
    /// ends there.
    Opaque,
}

/// What the lines of one head have said so far.
#[derive(Debug, Default, Clone)]
struct Head {
    http10: bool,
    absolute_form: bool,
    hosts: u32,
    host_valid: bool,
    transfer_encoding: Codings,
    content_length: ContentLength,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ContentLength {
    #[default]
    Absent,
    Value(u64),
    /// Not digits, or lines that disagree: hyper refuses the request.
    Invalid,
}

/// The `Transfer-Encoding` list, element by element across its lines.
#[derive(Debug, Default, Clone, Copy)]
struct Codings {
    present: bool,
    malformed: bool,
    chunked: u32,
    unsupported: bool,
    /// The last element seen was `chunked`.
    chunked_last: bool,
}

/// Follows one connection's request stream. Heads longer than `max_line`
/// bytes per line are left to hyper (which answers 431).
#[derive(Debug)]
pub struct Scanner {
    state: State,
    allow_bare_lf: bool,
    max_line: usize,
    /// The current line, when it started in an earlier read.
    carry: Vec<u8>,
    head: Head,
}

/// The end of a line found in a buffer.
enum LineEnd {
    /// The line ends before index `.0`; the next starts at `.1`.
    At(usize, usize),
    /// Not in this buffer (a CR at the very end waits for its LF).
    NotYet,
    Bare,
}

impl Scanner {
    pub fn new(allow_bare_lf: bool, max_line: usize) -> Scanner {
        Scanner {
            state: State::Start,
            allow_bare_lf,
            max_line,
            carry: Vec::new(),
            head: Head::default(),
        }
    }

    /// Scans the next bytes the connection read.
    pub fn scan(&mut self, bytes: &[u8]) -> Verdict {
        // Where the head being read started, in `bytes` (0 when it started
        // in an earlier read: those bytes are hyper's already).
        let mut head_start = 0;
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            match self.state {
                State::Opaque => return Verdict::Pass,
                State::Body(left) => {
                    let n = left.min(rest.len() as u64);
                    at += n as usize;
                    self.state = match left - n {
                        0 => State::Start,
                        more => State::Body(more),
                    };
                    head_start = at;
                }
                State::ChunkData(left) => {
                    let n = left.min(rest.len() as u64);
                    at += n as usize;
                    self.state = match left - n {
                        0 => State::ChunkEnd(false),
                        more => State::ChunkData(more),
                    };
                }
                State::ChunkEnd(seen_cr) => {
                    let byte = rest[0];
                    at += 1;
                    self.state = match (seen_cr, byte) {
                        (false, b'\r') => State::ChunkEnd(true),
                        (true, b'\n') => State::ChunkSize,
                        (false, b'\n') if self.allow_bare_lf => State::ChunkSize,
                        (false, b'\n') => return Verdict::Fail(Violation::BareLineEnding),
                        // hyper refuses a chunk not followed by its CRLF.
                        _ => State::Opaque,
                    };
                }
                State::Start | State::Headers | State::ChunkSize | State::Trailers => {
                    let in_head = matches!(self.state, State::Start | State::Headers);
                    if self.state == State::Start && self.carry.is_empty() {
                        head_start = at;
                    }
                    let http10 = self.state == State::Headers && self.head.http10;
                    let fail = |violation| {
                        if in_head {
                            Verdict::Refuse {
                                keep: head_start,
                                head: RefusedHead { violation, http10 },
                            }
                        } else {
                            Verdict::Fail(violation)
                        }
                    };
                    let (end, next) = match self.line_end(rest) {
                        LineEnd::At(end, next) => (end, next),
                        LineEnd::Bare => return fail(Violation::BareLineEnding),
                        LineEnd::NotYet => {
                            if self.carry.len() + rest.len() > self.max_line {
                                self.state = State::Opaque;
                                return Verdict::Pass;
                            }
                            self.carry.extend_from_slice(rest);
                            return Verdict::Pass;
                        }
                    };
                    let outcome = if self.carry.is_empty() {
                        self.line(&rest[..end])
                    } else {
                        let mut line = std::mem::take(&mut self.carry);
                        line.extend_from_slice(&rest[..end]);
                        // A CR carried at the end belongs to the line end.
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                        let outcome = self.line(&line);
                        line.clear();
                        self.carry = line;
                        outcome
                    };
                    at += next;
                    if let Err(violation) = outcome {
                        return fail(violation);
                    }
                    if self.state == State::Start {
                        // A head ended here (or an empty line before one).
                        head_start = at;
                    }
                }
            }
        }
        Verdict::Pass
    }

    /// Finds where the line at the start of `rest` ends, continuing a
    /// carried line if there is one.
    fn line_end(&self, rest: &[u8]) -> LineEnd {
        // A CR that ended the previous read.
        if self.carry.last() == Some(&b'\r') {
            return match rest[0] {
                b'\n' => LineEnd::At(0, 1),
                _ if self.allow_bare_lf => LineEnd::At(0, 0),
                _ => LineEnd::Bare,
            };
        }
        match memchr2(b'\r', b'\n', rest) {
            None => LineEnd::NotYet,
            Some(i) if rest[i] == b'\n' => {
                if self.allow_bare_lf {
                    LineEnd::At(i, i + 1)
                } else {
                    LineEnd::Bare
                }
            }
            Some(i) => match rest.get(i + 1) {
                Some(b'\n') => LineEnd::At(i, i + 2),
                None => LineEnd::NotYet,
                // hyper refuses a bare CR too; refuse it the same way.
                Some(_) => LineEnd::Bare,
            },
        }
    }

    /// One complete line, without its line ending.
    fn line(&mut self, line: &[u8]) -> Result<(), Violation> {
        match self.state {
            State::Start => {
                if !line.is_empty() {
                    self.head = Head::default();
                    self.state = match request_line(line) {
                        Some((http10, absolute_form)) => {
                            self.head.http10 = http10;
                            self.head.absolute_form = absolute_form;
                            State::Headers
                        }
                        None => State::Opaque,
                    };
                }
                Ok(())
            }
            State::Headers if line.is_empty() => self.end_of_head(),
            State::Headers => {
                self.header(line);
                Ok(())
            }
            State::ChunkSize => {
                self.state = match chunk_size(line) {
                    Some(0) => State::Trailers,
                    Some(size) => State::ChunkData(size),
                    None => State::Opaque,
                };
                Ok(())
            }
            State::Trailers => {
                if line.is_empty() {
                    self.state = State::Start;
                }
                Ok(())
            }
            State::Body(_) | State::ChunkData(_) | State::ChunkEnd(_) | State::Opaque => Ok(()),
        }
    }

    /// A header line: only the fields that decide framing are looked at.
    fn header(&mut self, line: &[u8]) {
        let Some(colon) = memchr(b':', line) else {
            return; // hyper refuses a line without a colon
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                self.head.hosts += 1;
                self.head.host_valid = valid_host(value);
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let parsed = digits(value);
                self.head.content_length = match (self.head.content_length, parsed) {
                    (ContentLength::Absent, Some(n)) => ContentLength::Value(n),
                    (ContentLength::Value(a), Some(b)) if a == b => ContentLength::Value(a),
                    _ => ContentLength::Invalid,
                };
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                self.head.transfer_encoding.add(value);
            }
            _ => {}
        }
    }

    /// The empty line that ends a head: its framing rules, then where its
    /// body ends.
    fn end_of_head(&mut self) -> Result<(), Violation> {
        let head = &self.head;
        let te = head.transfer_encoding;
        let verdict = if te.present {
            if head.http10 {
                Err(Violation::TransferEncodingInHttp10)
            } else {
                te.verdict()
            }
        } else {
            Ok(())
        };
        verdict?;
        if te.present && head.content_length != ContentLength::Absent {
            return Err(Violation::TransferEncodingWithContentLength);
        }
        match head.hosts {
            0 if !head.http10 => return Err(Violation::MissingHost),
            0 | 1 => {}
            _ => return Err(Violation::DuplicateHost),
        }
        if head.hosts == 1 && !head.host_valid && !head.absolute_form {
            return Err(Violation::InvalidHost);
        }
        self.state = if te.present {
            State::ChunkSize
        } else {
            match head.content_length {
                ContentLength::Absent | ContentLength::Value(0) => State::Start,
                ContentLength::Value(n) => State::Body(n),
                ContentLength::Invalid => State::Opaque,
            }
        };
        Ok(())
    }
}

impl Codings {
    /// Adds the elements of one `Transfer-Encoding` line.
    fn add(&mut self, value: &[u8]) {
        self.present = true;
        for element in value.split(|&b| b == b',') {
            let element = trim(element);
            if element.is_empty() {
                self.malformed = true;
                continue;
            }
            // `token *( OWS ";" OWS transfer-parameter )`: a coding with
            // parameters is not one maitred implements.
            let (coding, params) = match memchr(b';', element) {
                Some(i) => (trim(&element[..i]), true),
                None => (element, false),
            };
            if coding.is_empty() || !coding.iter().all(|&b| is_tchar(b)) {
                self.malformed = true;
                continue;
            }
            let chunked = !params && coding.eq_ignore_ascii_case(b"chunked");
            if chunked {
                self.chunked += 1;
            } else {
                self.unsupported = true;
            }
            self.chunked_last = chunked;
        }
    }

    /// RFC 9112 §6.1 and §7, strictly: exactly one `chunked`, last.
    fn verdict(self) -> Result<(), Violation> {
        if self.malformed {
            Err(Violation::MalformedTransferEncoding)
        } else if self.chunked > 1 {
            Err(Violation::RepeatedChunked)
        } else if self.chunked == 1 && !self.chunked_last {
            Err(Violation::ChunkedNotLast)
        } else if self.unsupported || self.chunked == 0 {
            Err(Violation::UnsupportedTransferCoding)
        } else {
            Ok(())
        }
    }
}

/// `METHOD SP target SP HTTP/1.x`: whether it is HTTP/1.0, and whether the
/// target is in absolute form. `None` for a line hyper refuses.
fn request_line(line: &[u8]) -> Option<(bool, bool)> {
    let method_end = memchr(b' ', line)?;
    let rest = &line[method_end + 1..];
    let target_end = memchr(b' ', rest)?;
    let (target, version) = (&rest[..target_end], &rest[target_end + 1..]);
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => return None,
    };
    // `scheme "://"`; an origin-form target starts with `/`.
    let absolute_form = target.first().is_some_and(u8::is_ascii_alphabetic)
        && memchr(b':', target).is_some_and(|i| target[i..].starts_with(b"://"));
    Some((http10, absolute_form))
}

/// A chunk-size line's size (`1*HEXDIG [ chunk-ext ]`); `None` when the
/// line is one hyper refuses.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let hex = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// `Host` (RFC 9110 §7.2, RFC 3986 §3.2.2): empty, or `uri-host [":" port]`
/// where `uri-host` is a bracketed IPv6 or IPvFuture literal or a reg-name
/// (which covers IPv4), and the port is digits. Stricter than RFC 3986 in
/// one way: a comma, a sub-delimiter there, is refused, because a list of
/// hosts is what a front end and an app are most likely to read differently.
pub fn valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        Some(b'[') => {
            let Some(close) = memchr(b']', value) else {
                return false;
            };
            if !valid_ip_literal(&value[1..close]) {
                return false;
            }
            match &value[close + 1..] {
                [] => return true,
                [b':', port @ ..] => (&[][..], port),
                _ => return false,
            }
        }
        _ => match memchr(b':', value) {
            Some(i) => (&value[..i], &value[i + 1..]),
            None => (value, &[][..]),
        },
    };
    port.iter().all(u8::is_ascii_digit) && valid_reg_name(host)
}

/// `*( unreserved / pct-encoded / sub-delims )` without `,`.
fn valid_reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' => {
                let hex = name.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// The inside of `[...]`: an IPv6 address, or `v` HEXDIG `.` followed by
/// unreserved, sub-delims or `:` (IPvFuture).
fn valid_ip_literal(inside: &[u8]) -> bool {
    if let [b'v' | b'V', rest @ ..] = inside {
        let Some(dot) = memchr(b'.', rest) else {
            return false;
        };
        let (version, address) = (&rest[..dot], &rest[dot + 1..]);
        return !version.is_empty()
            && version.iter().all(u8::is_ascii_hexdigit)
            && !address.is_empty()
            && address
                .iter()
                .all(|&b| b == b':' || (b != b'%' && valid_reg_name(&[b])));
    }
    std::str::from_utf8(inside).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
}

/// A Content-Length value: digits only.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Optional whitespace (SP, HTAB) trimmed from both ends.
fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> Scanner {
        Scanner::new(false, 64 * 1024)
    }

    fn violation(v: Verdict) -> Option<Violation> {
        match v {
            Verdict::Pass => None,
            Verdict::Refuse { head, .. } => Some(head.violation),
            Verdict::Fail(violation) => Some(violation),
        }
    }

    /// The violation found in `bytes`, which must be the same whether they
    /// come in one read or one byte at a time.
    fn refused(bytes: &[u8]) -> Option<Violation> {
        let whole = violation(strict().scan(bytes));
        let mut s = strict();
        let trickled = bytes
            .iter()
            .find_map(|b| violation(s.scan(std::slice::from_ref(b))));
        assert_eq!(whole, trickled, "{:?}", String::from_utf8_lossy(bytes));
        whole
    }

    #[test]
    fn ordinary_requests_pass() {
        for request in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\nHost: example.com:8080\r\nX-A: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab\ncd",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n3;x=y\r\na\nb\r\n0\r\nT: 1\r\n\r\n",
            b"GET http://other/ HTTP/1.1\r\nHost: not a host\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [v1.fe]\r\n\r\n",
        ] {
            assert_eq!(refused(request), None, "{:?}", String::from_utf8_lossy(request));
        }
    }

    #[test]
    fn bare_line_endings_are_refused_anywhere_in_a_head() {
        for request in [
            &b"GET / HTTP/1.1\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
            b"GET / HTTP/1.1\rHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\rb\r\nHost: a\r\n\r\n",
            b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(
                refused(request),
                Some(Violation::BareLineEnding),
                "{:?}",
                String::from_utf8_lossy(request)
            );
        }
    }

    #[test]
    fn bare_line_endings_in_chunk_lines_fail_the_body() {
        for body in [
            &b"3\na\r\n0\r\n\r\n"[..],
            b"1\r\na\n0\r\n\r\n",
            b"0\r\nT: 1\n\r\n",
        ] {
            let mut request =
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            request.extend_from_slice(body);
            assert_eq!(
                strict().scan(&request),
                Verdict::Fail(Violation::BareLineEnding),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_setting_restores_bare_lf() {
        let mut lenient = Scanner::new(true, 1024);
        assert_eq!(
            lenient.scan(b"GET / HTTP/1.1\nHost: a\n\nGET / HTTP/1.1\r\nHost: a\n\r\n"),
            Verdict::Pass
        );
    }

    #[test]
    fn host_rules() {
        let host = |value: &str| format!("GET / HTTP/1.1\r\nHost: {value}\r\n\r\n");
        for bad in [
            "a b",
            "a, b",
            "a,b",
            "user@a",
            "a/b",
            "a:b",
            "[::1",
            "[::1]x",
            "[nope]",
            "caf\u{e9}",
        ] {
            assert_eq!(
                refused(host(bad).as_bytes()),
                Some(Violation::InvalidHost),
                "{bad}"
            );
        }
        for good in [
            "a",
            "a.b-c_d~e",
            "10.0.0.1:80",
            "a:",
            "%41b",
            "[::ffff:1.2.3.4]:443",
        ] {
            assert_eq!(refused(host(good).as_bytes()), None, "{good}");
        }
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nX: a\r\n\r\n"),
            Some(Violation::MissingHost)
        );
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"),
            Some(Violation::DuplicateHost)
        );
        assert_eq!(
            refused(b"GET http://a/ HTTP/1.1\r\n\r\n"),
            Some(Violation::MissingHost),
            "absolute form still needs Host on 1.1"
        );
    }

    #[test]
    fn transfer_encoding_is_exactly_one_final_chunked() {
        let te = |lines: &[&str]| {
            let mut r = String::from("POST / HTTP/1.1\r\nHost: a\r\n");
            for l in lines {
                r.push_str(&format!("Transfer-Encoding: {l}\r\n"));
            }
            r.push_str("\r\n0\r\n\r\n");
            refused(r.as_bytes())
        };
        use Violation::*;
        assert_eq!(te(&["chunked"]), None);
        assert_eq!(te(&[" CHUNKED "]), None);
        assert_eq!(te(&["cow, chunked"]), Some(UnsupportedTransferCoding));
        assert_eq!(te(&["cow", "chunked"]), Some(UnsupportedTransferCoding));
        assert_eq!(te(&["gzip, chunked"]), Some(UnsupportedTransferCoding));
        assert_eq!(te(&["cow"]), Some(UnsupportedTransferCoding));
        assert_eq!(te(&["chunked;q=1"]), Some(UnsupportedTransferCoding));
        assert_eq!(te(&["chunked, chunked"]), Some(RepeatedChunked));
        assert_eq!(te(&["chunked", "chunked"]), Some(RepeatedChunked));
        assert_eq!(te(&["chunked, gzip"]), Some(ChunkedNotLast));
        assert_eq!(te(&[",chunked"]), Some(MalformedTransferEncoding));
        assert_eq!(te(&["chunked,"]), Some(MalformedTransferEncoding));
        assert_eq!(te(&[""]), Some(MalformedTransferEncoding));
        assert_eq!(te(&["chun ked"]), Some(MalformedTransferEncoding));
        assert_eq!(
            refused(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            Some(TransferEncodingInHttp10)
        );
        assert_eq!(
            refused(
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            Some(TransferEncodingWithContentLength)
        );
    }

    #[test]
    fn a_refused_head_keeps_the_requests_before_it() {
        let first = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab\nc";
        let mut stream = first.to_vec();
        stream.extend_from_slice(b"GET / HTTP/1.1\nHost: a\n\n");
        assert_eq!(
            strict().scan(&stream),
            Verdict::Refuse {
                keep: first.len(),
                head: RefusedHead {
                    violation: Violation::BareLineEnding,
                    http10: false
                }
            },
            "the body's LF is data; the smuggled head is refused"
        );
        let mut chunked =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                .to_vec();
        let kept = chunked.len();
        chunked.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n");
        assert_eq!(
            strict().scan(&chunked),
            Verdict::Refuse {
                keep: kept,
                head: RefusedHead {
                    violation: Violation::InvalidHost,
                    http10: false
                }
            }
        );
    }

    #[test]
    fn the_answer_keeps_the_requests_version() {
        match strict().scan(b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n") {
            Verdict::Refuse { head, .. } => assert!(head.http10),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn heads_hyper_refuses_are_left_to_it() {
        let mut s = strict();
        assert_eq!(s.scan(b"GET / HTTP/2.0\r\n\r\n"), Verdict::Pass);
        assert_eq!(s.state, State::Opaque);
        let mut s = Scanner::new(false, 8);
        assert_eq!(s.scan(b"GET /aaaaaaaaaaaaaaaaa"), Verdict::Pass);
        assert_eq!(s.state, State::Opaque);
    }
}
