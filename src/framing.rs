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

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use memchr::memchr;

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
    /// More than one `Content-Length` field (a list in one field hyper
    /// refuses itself).
    DuplicateContentLength,
    /// A request target that is not one of the four forms RFC 9112 §3.2
    /// allows for its method: a fragment, a byte outside the URI grammar,
    /// `*` other than for OPTIONS, an authority other than for CONNECT.
    InvalidTarget,
    /// A chunk size that is not hex digits.
    InvalidChunkSize,
    /// A chunk extension outside RFC 9112 §7.1.1's grammar (including
    /// whitespace after the size with no `;`).
    InvalidChunkExtension,
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
            Violation::DuplicateContentLength => "Duplicate header: Content-Length",
            Violation::InvalidTarget => "Invalid request target",
            Violation::InvalidChunkSize => "Invalid chunk size",
            Violation::InvalidChunkExtension => "Invalid chunk extension",
        }
    }
}

/// What a head's lines said that the request path needs as well, found
/// while the scanner read them, so the gateway need not look the fields up
/// again (each lookup in hyper's header map costs about as much as reading
/// a whole short head).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadFacts(u8);

impl HeadFacts {
    const FRAMED: u8 = 1;
    const REPEATED_CONTENT_TYPE: u8 = 1 << 1;
    const CLOSE: u8 = 1 << 2;
    const KEEP_ALIVE: u8 = 1 << 3;

    /// `Content-Length` or `Transfer-Encoding` is present.
    pub fn framed(self) -> bool {
        self.0 & Self::FRAMED != 0
    }

    /// More than one `Content-Type` field.
    pub fn repeated_content_type(self) -> bool {
        self.0 & Self::REPEATED_CONTENT_TYPE != 0
    }

    /// A `Connection` field has the `close` token.
    pub fn close(self) -> bool {
        self.0 & Self::CLOSE != 0
    }

    /// A `Connection` field has the `keep-alive` token.
    pub fn keep_alive(self) -> bool {
        self.0 & Self::KEEP_ALIVE != 0
    }
}

/// The facts of the heads the scanner has passed on whose requests the
/// gateway has not taken yet, oldest first. Eight fit (a client pipelining
/// more in one read is rare); past that the facts are given up for the
/// connection's life, and the gateway looks the fields up itself.
///
/// The scanner and the gateway run on the connection's one task, so the
/// atomics (needed because the connection state is shared with the
/// registry) are never contended and need no ordering.
#[derive(Debug, Default)]
pub struct HeadQueue {
    packed: AtomicU64,
    /// How many are queued; `LOST` once they have been given up.
    len: AtomicU8,
}

impl HeadQueue {
    const LOST: u8 = u8::MAX;

    fn push(&self, facts: HeadFacts) {
        let len = self.len.load(Ordering::Relaxed);
        if len >= 8 {
            self.len.store(Self::LOST, Ordering::Relaxed);
            return;
        }
        let packed = self.packed.load(Ordering::Relaxed) | u64::from(facts.0) << (8 * len);
        self.packed.store(packed, Ordering::Relaxed);
        self.len.store(len + 1, Ordering::Relaxed);
    }

    /// Stops the facts for the rest of the connection: the stream is one
    /// the scanner no longer follows.
    fn give_up(&self) {
        self.len.store(Self::LOST, Ordering::Relaxed);
    }

    /// The facts of the next request's head, if the scanner has them.
    pub fn pop(&self) -> Option<HeadFacts> {
        let len = self.len.load(Ordering::Relaxed);
        if len == 0 || len == Self::LOST {
            return None;
        }
        let packed = self.packed.load(Ordering::Relaxed);
        self.packed.store(packed >> 8, Ordering::Relaxed);
        self.len.store(len - 1, Ordering::Relaxed);
        Some(HeadFacts(packed as u8))
    }
}

/// A head refused before hyper sees it, to be answered by the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusedHead {
    pub violation: Violation,
    /// The request line said HTTP/1.0 (the answer uses the same version).
    pub http10: bool,
    /// A HEAD request: the answer has no body (RFC 9110 §9.3.2).
    pub head_request: bool,
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
    /// A request body's framing broke (a chunk-size or trailer line): pass
    /// on the first `keep` bytes (the body before it), then fail the read,
    /// which fails the body being read.
    Fail { keep: usize, violation: Violation },
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
#[derive(Debug, Default, Clone, Copy)]
struct Head {
    http10: bool,
    head_request: bool,
    absolute_form: bool,
    hosts: u32,
    host_valid: bool,
    content_types: u8,
    /// Of [`HeadFacts`]: the `Connection` tokens seen.
    connection: u8,
    transfer_encoding: Codings,
    content_length: ContentLength,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ContentLength {
    #[default]
    Absent,
    Value(u64),
    /// Not digits: hyper refuses the request.
    Invalid,
    /// More than one field.
    Repeated,
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
    /// The last valid `Host` value: a connection's requests nearly always
    /// repeat it, and comparing costs less than checking again.
    known_host: KnownHost,
}

/// A short `Host` value kept inline.
#[derive(Debug)]
struct KnownHost {
    bytes: [u8; 64],
    len: usize,
}

impl Default for KnownHost {
    fn default() -> Self {
        KnownHost {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl KnownHost {
    fn is(&self, value: &[u8]) -> bool {
        self.len == value.len() && self.bytes[..self.len] == *value
    }

    fn remember(&mut self, value: &[u8]) {
        if let Some(slot) = self.bytes.get_mut(..value.len()) {
            slot.copy_from_slice(value);
            self.len = value.len();
        }
    }
}

/// What the quick path made of the bytes.
enum Quick {
    /// A whole head of this many bytes; the state says what follows it.
    Done(usize),
    Refused(Violation),
    /// Not a case for the quick path.
    GaveUp,
}

/// The end of a line found in a buffer.
enum LineEnd {
    /// The line ends before index `.0`; the next starts at `.1`.
    At(usize, usize),
    /// Not in this buffer (a CR at the very end waits for its LF).
    NotYet,
    /// A bare CR or LF; the line's bytes in this buffer end before `.0`.
    Bare(usize),
}

impl Scanner {
    pub fn new(allow_bare_lf: bool, max_line: usize) -> Scanner {
        Scanner {
            state: State::Start,
            allow_bare_lf,
            max_line,
            carry: Vec::new(),
            head: Head::default(),
            known_host: KnownHost::default(),
        }
    }

    /// Scans the next bytes the connection read; the facts of each head it
    /// passes go to `heads`.
    pub fn scan(&mut self, bytes: &[u8], heads: &HeadQueue) -> Verdict {
        let verdict = self.scan_bytes(bytes, heads);
        if self.state == State::Opaque {
            heads.give_up();
        }
        verdict
    }

    fn scan_bytes(&mut self, bytes: &[u8], heads: &HeadQueue) -> Verdict {
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
                    self.state = match (seen_cr, byte) {
                        (false, b'\r') => State::ChunkEnd(true),
                        (true, b'\n') => State::ChunkSize,
                        (false, b'\n') if self.allow_bare_lf => State::ChunkSize,
                        (false, b'\n') => {
                            return Verdict::Fail {
                                keep: at,
                                violation: Violation::BareLineEnding,
                            };
                        }
                        // hyper refuses a chunk not followed by its CRLF.
                        _ => State::Opaque,
                    };
                    at += 1;
                }
                State::Start if self.carry.is_empty() => {
                    head_start = at;
                    match self.whole_head(rest) {
                        Quick::Done(len) => {
                            heads.push(self.head.facts());
                            at += len;
                        }
                        Quick::Refused(violation) => {
                            return Verdict::Refuse {
                                keep: head_start,
                                head: self.head.refused(violation),
                            };
                        }
                        // Read it line by line, from its start.
                        Quick::GaveUp => {
                            let next = self.next_line(bytes, &mut at, &mut head_start, heads);
                            if let Some(verdict) = next {
                                return verdict;
                            }
                        }
                    }
                }
                State::Start | State::Headers | State::ChunkSize | State::Trailers => {
                    let next = self.next_line(bytes, &mut at, &mut head_start, heads);
                    if let Some(verdict) = next {
                        return verdict;
                    }
                }
            }
        }
        Verdict::Pass
    }

    /// The quick path for the common case: a whole head, every line ended
    /// by CRLF, at the start of `buf`. The bytes are read 16 at a time,
    /// once: a comparison gives the CRs and LFs of each block as two bit
    /// masks, every LF must follow a CR (the CR mask moved one bit on) and
    /// every CR precede an LF, and only the lines that matter are looked
    /// at. Anything else (a head that does not end in this read, a bare CR
    /// or LF, a request line hyper refuses, the lenient setting) is left to
    /// the line by line path, which decides; nothing is changed then but
    /// the head's facts, which that path starts afresh.
    fn whole_head(&mut self, buf: &[u8]) -> Quick {
        if self.allow_bare_lf || buf.len() < BLOCK {
            return Quick::GaveUp;
        }
        let mut line_start = 0;
        let mut request_seen = false;
        // The CR mask of the block before, moved on to this one.
        let mut cr_before = 0u32;
        let mut base = 0;
        while base < buf.len() {
            // The last block overlaps the one before it; the bytes already
            // seen are shifted out (zeros come in: neither CR nor LF).
            let (block, skip) = match buf.get(base..base + BLOCK) {
                Some(block) => (block, 0),
                None => (&buf[buf.len() - BLOCK..], base + BLOCK - buf.len()),
            };
            let (cr, lf) = cr_lf_masks(block);
            let (cr, lf) = (cr >> skip, lf >> skip);
            let width = BLOCK - skip;
            // An LF expected after each CR; bits where none came are bare
            // CRs (the one after the last byte is looked at next block).
            let expected = (cr << 1) | cr_before;
            let bare_cr = expected & !lf & ((1 << width) - 1);
            let mut lfs = lf;
            while lfs != 0 {
                let bit = lfs & lfs.wrapping_neg();
                lfs &= lfs - 1;
                if expected & bit == 0 || bare_cr & (bit - 1) != 0 {
                    return Quick::GaveUp; // a bare LF, or a bare CR before it
                }
                let at = base + bit.trailing_zeros() as usize;
                let line = &buf[line_start..at - 1];
                line_start = at + 1;
                if !request_seen {
                    if line.is_empty() {
                        continue; // empty lines before a request are allowed
                    }
                    match request_line(line) {
                        Ok(request) => self.head.reset(request),
                        Err(Some(violation)) => {
                            self.head.reset_refused(line);
                            return Quick::Refused(violation);
                        }
                        Err(None) => return Quick::GaveUp,
                    }
                    request_seen = true;
                } else if line.is_empty() {
                    return match self.end_of_head() {
                        Ok(()) => Quick::Done(line_start),
                        Err(violation) => Quick::Refused(violation),
                    };
                } else {
                    self.header(line);
                }
            }
            if bare_cr != 0 {
                return Quick::GaveUp;
            }
            cr_before = cr >> (width - 1);
            base += width;
        }
        Quick::GaveUp
    }

    /// The line by line path: takes the next line at `at` (or carries it to
    /// the next read). `Some` when the scan ends here.
    fn next_line(
        &mut self,
        bytes: &[u8],
        at: &mut usize,
        head_start: &mut usize,
        heads: &HeadQueue,
    ) -> Option<Verdict> {
        let was_headers = self.state == State::Headers;
        let rest = &bytes[*at..];
        let in_head = matches!(self.state, State::Start | State::Headers);
        if self.state == State::Start && self.carry.is_empty() {
            *head_start = *at;
        }
        let keep = if in_head { *head_start } else { *at };
        // A request line refused by `line` has already set what the answer
        // needs from it (its version, whether it is a HEAD).
        let fail = |scanner: &mut Scanner, violation| {
            Some(if in_head {
                Verdict::Refuse {
                    keep,
                    head: scanner.head.refused(violation),
                }
            } else {
                Verdict::Fail { keep, violation }
            })
        };
        let (end, next) = match self.line_end(rest) {
            LineEnd::At(end, next) => (end, next),
            LineEnd::Bare(end) => {
                if self.state == State::Start {
                    // The request line itself, up to its bare line end,
                    // with what earlier reads carried of it: the answer
                    // is the same however the reads fell.
                    let mut line = self.carry.clone();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    line.extend_from_slice(&rest[..end]);
                    self.head.reset_refused(&line);
                }
                return fail(self, Violation::BareLineEnding);
            }
            LineEnd::NotYet => {
                if self.carry.len() + rest.len() > self.max_line {
                    self.state = State::Opaque;
                } else {
                    self.carry.extend_from_slice(rest);
                }
                return Some(Verdict::Pass);
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
        if let Err(violation) = outcome {
            return fail(self, violation);
        }
        *at += next;
        if was_headers && self.state != State::Headers && self.state != State::Opaque {
            heads.push(self.head.facts());
        }
        if self.state == State::Start {
            // A head ended here (or an empty line before one).
            *head_start = *at;
        }
        None
    }

    /// Finds where the line at the start of `rest` ends, continuing a
    /// carried line if there is one.
    fn line_end(&self, rest: &[u8]) -> LineEnd {
        // A CR that ended the previous read. A bare CR is refused even with
        // `allow_bare_lf`, as when it comes in one read with what follows.
        if self.carry.last() == Some(&b'\r') {
            return match rest[0] {
                b'\n' => LineEnd::At(0, 1),
                _ => LineEnd::Bare(0),
            };
        }
        match rest.iter().position(|&b| b == b'\r' || b == b'\n') {
            None => LineEnd::NotYet,
            Some(i) if rest[i] == b'\n' => {
                if self.allow_bare_lf {
                    LineEnd::At(i, i + 1)
                } else {
                    LineEnd::Bare(i)
                }
            }
            Some(i) => match rest.get(i + 1) {
                Some(b'\n') => LineEnd::At(i, i + 2),
                None => LineEnd::NotYet,
                // hyper refuses a bare CR too; refuse it the same way.
                Some(_) => LineEnd::Bare(i),
            },
        }
    }

    /// One complete line, without its line ending.
    fn line(&mut self, line: &[u8]) -> Result<(), Violation> {
        match self.state {
            State::Start => {
                if !line.is_empty() {
                    match request_line(line) {
                        Ok(request) => {
                            self.head.reset(request);
                            self.state = State::Headers;
                        }
                        Err(Some(violation)) => {
                            self.head.reset_refused(line);
                            return Err(violation);
                        }
                        Err(None) => self.state = State::Opaque,
                    }
                }
                Ok(())
            }
            State::Headers if line.is_empty() => self.end_of_head(),
            State::Headers => {
                self.header(line);
                Ok(())
            }
            State::ChunkSize => {
                self.state = match chunk_size(line)? {
                    0 => State::Trailers,
                    size => State::ChunkData(size),
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
    /// A field name is followed by its colon with nothing between (hyper
    /// refuses anything else), so a prefix decides which field it is, and
    /// the first letter rules out most lines at once.
    fn header(&mut self, line: &[u8]) {
        let value = |name: &[u8]| {
            let prefix = line.get(..name.len())?;
            starts_with_field(prefix, name).then(|| trim(&line[name.len()..]))
        };
        match line.first().map(|b| b | 0x20) {
            Some(b'h') => {
                if let Some(host) = value(b"host:") {
                    self.head.hosts += 1;
                    self.head.host_valid = self.known_host.is(host) || {
                        let valid = valid_host(host);
                        if valid {
                            self.known_host.remember(host);
                        }
                        valid
                    };
                }
            }
            Some(b'c') => {
                if let Some(length) = value(b"content-length:") {
                    self.head.content_length = match (self.head.content_length, digits(length)) {
                        (ContentLength::Absent, Some(n)) => ContentLength::Value(n),
                        (ContentLength::Absent, None) => ContentLength::Invalid,
                        _ => ContentLength::Repeated,
                    };
                } else if value(b"content-type:").is_some() {
                    self.head.content_types = self.head.content_types.saturating_add(1);
                } else if let Some(tokens) = value(b"connection:") {
                    self.head.connection |= connection_tokens(tokens);
                }
            }
            Some(b't') => {
                if let Some(codings) = value(b"transfer-encoding:") {
                    self.head.transfer_encoding.add(codings);
                }
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
        if head.content_length == ContentLength::Repeated {
            return Err(Violation::DuplicateContentLength);
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
                ContentLength::Invalid | ContentLength::Repeated => State::Opaque,
            }
        };
        Ok(())
    }
}

impl Head {
    /// What the gateway needs to know of a head the scanner passed.
    fn facts(&self) -> HeadFacts {
        let mut facts = self.connection;
        if self.transfer_encoding.present || self.content_length != ContentLength::Absent {
            facts |= HeadFacts::FRAMED;
        }
        if self.content_types > 1 {
            facts |= HeadFacts::REPEATED_CONTENT_TYPE;
        }
        HeadFacts(facts)
    }

    /// A new head, as its request line says.
    fn reset(&mut self, request: RequestLine) {
        *self = Head {
            http10: request.http10,
            head_request: request.head,
            absolute_form: request.absolute_form,
            ..Head::default()
        };
    }

    /// A new head whose request line is refused: what little the answer
    /// needs from it (its version, whether it is a HEAD).
    fn reset_refused(&mut self, line: &[u8]) {
        *self = Head {
            http10: line.ends_with(b" HTTP/1.0"),
            head_request: line.starts_with(b"HEAD "),
            ..Head::default()
        };
    }

    fn refused(&self, violation: Violation) -> RefusedHead {
        RefusedHead {
            violation,
            http10: self.http10,
            head_request: self.head_request,
        }
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

/// Whether `prefix` is `name`, a lower-case field name and its colon, in
/// any case. Eight bytes are compared at a time: OR-ing 0x20 into the
/// letters' bytes (and only theirs) makes them lower case, so the other
/// bytes still have to match exactly. `name` is a constant, so the masks
/// fold away.
#[inline(always)]
fn starts_with_field(prefix: &[u8], name: &[u8]) -> bool {
    debug_assert_eq!(prefix.len(), name.len());
    let mut i = 0;
    while i < name.len() {
        let n = (name.len() - i).min(8);
        let (mut got, mut want, mut letters) = (0u64, 0u64, 0u64);
        let mut j = n;
        while j > 0 {
            j -= 1;
            got = got << 8 | u64::from(prefix[i + j]);
            want = want << 8 | u64::from(name[i + j]);
            letters = (letters << 8) | (u64::from(name[i + j].is_ascii_lowercase()) * 0x20);
        }
        if got | letters != want {
            return false;
        }
        i += n;
    }
    true
}

/// What a request line says that framing needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RequestLine {
    http10: bool,
    /// The method is HEAD.
    head: bool,
    absolute_form: bool,
}

/// The `close` and `keep-alive` tokens of a `Connection` value, as
/// [`HeadFacts`] bits. A value with a byte that is not visible ASCII has no
/// tokens, as the gateway reads it from hyper's map (`to_str` refuses it).
fn connection_tokens(value: &[u8]) -> u8 {
    if !value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return 0;
    }
    value.split(|&b| b == b',').fold(0, |bits, token| {
        let token = trim(token);
        if token.eq_ignore_ascii_case(b"close") {
            bits | HeadFacts::CLOSE
        } else if token.eq_ignore_ascii_case(b"keep-alive") {
            bits | HeadFacts::KEEP_ALIVE
        } else {
            bits
        }
    })
}

/// `METHOD SP request-target SP HTTP/1.x` (RFC 9112 §3). `Err(None)` for a
/// line hyper refuses itself (another version, or not three parts);
/// `Err(Some)` for a target maitred refuses: each method has its forms
/// (§3.2), and each form its bytes (RFC 3986): an origin-form path and
/// query, `*` only for OPTIONS, an authority only (and always) for
/// CONNECT, an absolute URI without a fragment.
fn request_line(line: &[u8]) -> Result<RequestLine, Option<Violation>> {
    let rest = line
        .len()
        .checked_sub(9)
        .and_then(|end| line.get(..end))
        .ok_or(None)?;
    let http10 = match &line[rest.len()..] {
        b" HTTP/1.1" => false,
        b" HTTP/1.0" => true,
        _ => return Err(None),
    };
    let method_end = rest.iter().position(|&b| b == b' ').ok_or(None)?;
    let (method, target) = (&rest[..method_end], &rest[method_end + 1..]);
    let mut absolute_form = false;
    let valid = match target.first() {
        // The usual case, a path: every byte of it a path or query byte.
        Some(b'/') => method != b"CONNECT" && uri_bytes(target, PATH_QUERY),
        _ if method == b"CONNECT" => authority_form(target),
        _ if target == b"*" => method == b"OPTIONS",
        Some(b) if b.is_ascii_alphabetic() => {
            absolute_form = memchr(b':', target).is_some_and(|i| target[i..].starts_with(b"://"));
            absolute_form && uri_bytes(target, ABSOLUTE_URI)
        }
        _ => false,
    };
    if !valid {
        return Err(Some(Violation::InvalidTarget));
    }
    Ok(RequestLine {
        http10,
        head: method == b"HEAD",
        absolute_form,
    })
}

/// Whether every byte of `target` is in `allowed`, and every `%` starts a
/// two-digit hex escape.
fn uri_bytes(target: &[u8], allowed: &[bool; 256]) -> bool {
    let mut i = 0;
    while i < target.len() {
        let b = target[i];
        if b == b'%' {
            let hex = target.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
        } else if allowed[usize::from(b)] {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// CONNECT's target: `uri-host ":" port`, the port present.
fn authority_form(target: &[u8]) -> bool {
    let Some(colon) = target.iter().rposition(|&b| b == b':') else {
        return false;
    };
    let port = &target[colon + 1..];
    !port.is_empty() && valid_host(target) && !target.starts_with(b":")
}

/// RFC 3986 bytes: unreserved and sub-delims, plus `extra`.
const fn uri_table(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

/// `absolute-path [ "?" query ]`: pchar (with `:` and `@`), `/` and `?`.
static PATH_QUERY: &[bool; 256] = &uri_table(b":@/?");
/// `absolute-URI`: the gen-delims but `#` too (a fragment is never sent).
static ABSOLUTE_URI: &[bool; 256] = &uri_table(b":@/?[]");

/// Bytes per block of the quick path.
const BLOCK: usize = 16;

/// The CRs and LFs of a 16-byte block, bit `i` for byte `i`.
#[cfg(target_arch = "x86_64")]
fn cr_lf_masks(block: &[u8]) -> (u32, u32) {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };
    assert!(block.len() >= BLOCK);
    // SAFETY: `block` holds at least 16 bytes (asserted; every caller passes
    // exactly 16), and `_mm_loadu_si128` reads 16 bytes from any address,
    // aligned or not. The intrinsics need SSE2, which is part of every
    // x86_64 CPU (the architecture's baseline, always enabled for the
    // target), so the instructions exist wherever this code runs.
    unsafe {
        let bytes = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
        let cr = _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\r' as i8)));
        let lf = _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\n' as i8)));
        // The masks have 16 bits: sign-preserving casts cannot lose any.
        (cr as u32, lf as u32)
    }
}

/// The CRs and LFs of a 16-byte block, bit `i` for byte `i` (the portable
/// version, for other architectures).
#[cfg(not(target_arch = "x86_64"))]
fn cr_lf_masks(block: &[u8]) -> (u32, u32) {
    block[..BLOCK]
        .iter()
        .enumerate()
        .fold((0, 0), |(cr, lf), (i, &b)| {
            (
                cr | (u32::from(b == b'\r') << i),
                lf | (u32::from(b == b'\n') << i),
            )
        })
}

/// A chunk-size line's size (`1*HEXDIG [ chunk-ext ]`); `None` when the
/// line is one hyper refuses.
fn chunk_size(line: &[u8]) -> Result<u64, Violation> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    // Leading zeros are allowed, and do not count against the 15 digits
    // that fit in 60 bits (hyper's limit is lower still).
    let zeros = line[..digits].iter().take_while(|&&b| b == b'0').count();
    if digits == 0 || digits - zeros > 15 {
        return Err(Violation::InvalidChunkSize);
    }
    let size = line[zeros..digits].iter().fold(0u64, |n, &b| {
        n << 4 | u64::from(char::from(b).to_digit(16).unwrap_or(0))
    });
    if !chunk_extensions(&line[digits..]) {
        return Err(Violation::InvalidChunkExtension);
    }
    Ok(size)
}

/// `*( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )` (RFC
/// 9112 §7.1.1), where a value is a token or a quoted string.
fn chunk_extensions(mut rest: &[u8]) -> bool {
    let token = |s: &[u8]| s.iter().take_while(|&&b| is_tchar(b)).count();
    while !rest.is_empty() {
        rest = trim_start(rest);
        let Some(after) = rest.strip_prefix(b";") else {
            return false; // whitespace or anything else not starting an extension
        };
        rest = trim_start(after);
        let name = token(rest);
        if name == 0 {
            return false;
        }
        rest = &rest[name..];
        let before_value = trim_start(rest);
        if let Some(after) = before_value.strip_prefix(b"=") {
            rest = trim_start(after);
            let len = if rest.first() == Some(&b'"') {
                match quoted_string(rest) {
                    Some(len) => len,
                    None => return false,
                }
            } else {
                token(rest)
            };
            if len == 0 {
                return false;
            }
            rest = &rest[len..];
        }
    }
    true
}

/// The length of the quoted string at the start of `s` (RFC 9110 §5.6.4).
fn quoted_string(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(i + 1),
            b'\\' => {
                let next = *s.get(i + 1)?;
                if !(next == b'\t' || next == b' ' || (0x21..=0x7e).contains(&next) || next >= 0x80)
                {
                    return None;
                }
                i += 2;
            }
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
    None
}

/// `Host` (RFC 9110 §7.2, RFC 3986 §3.2.2): empty, or `uri-host [":" port]`
/// where `uri-host` is a bracketed IPv6 or IPvFuture literal or a reg-name
/// (which covers IPv4), and the port is digits. Stricter than RFC 3986 in
/// one way: a comma, a sub-delimiter there, is refused, because a list of
/// hosts is what a front end and an app are most likely to read differently.
pub fn valid_host(value: &[u8]) -> bool {
    // Most hosts are a name or an address and maybe a port: one pass over
    // the bytes, the slower rules only for what else there is.
    let mut colon = None;
    let mut plain = true;
    for (i, &b) in value.iter().enumerate() {
        if b == b':' {
            if colon.is_some() {
                plain = false;
                break;
            }
            colon = Some(i);
        } else if !(REG_NAME[usize::from(b)] || (colon.is_some() && b.is_ascii_digit())) {
            plain = false;
            break;
        }
    }
    if plain {
        // A name (digits are name bytes too) and, after a colon, digits.
        return colon.is_none_or(|c| value[c + 1..].iter().all(u8::is_ascii_digit));
    }
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
        let b = name[i];
        if b == b'%' {
            let hex = name.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
        } else if REG_NAME[usize::from(b)] {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// The bytes a reg-name takes as they are: unreserved and sub-delims
/// other than `,` (RFC 3986 §2.2, §2.3).
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

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

/// Optional whitespace (SP, HTAB) trimmed from the start.
fn trim_start(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    s
}

/// Optional whitespace (SP, HTAB) trimmed from both ends.
#[inline]
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

    /// Scans with a queue nobody reads.
    trait ScanAlone {
        fn scan_alone(&mut self, bytes: &[u8]) -> Verdict;
    }

    impl ScanAlone for Scanner {
        fn scan_alone(&mut self, bytes: &[u8]) -> Verdict {
            self.scan(bytes, &HeadQueue::default())
        }
    }

    fn violation(v: Verdict) -> Option<Violation> {
        match v {
            Verdict::Pass => None,
            Verdict::Refuse { head, .. } => Some(head.violation),
            Verdict::Fail { violation, .. } => Some(violation),
        }
    }

    /// The violation found in `bytes`, which must be the same whether they
    /// come in one read or one byte at a time.
    fn refused(bytes: &[u8]) -> Option<Violation> {
        let whole = violation(strict().scan_alone(bytes));
        let mut s = strict();
        let trickled = bytes
            .iter()
            .find_map(|b| violation(s.scan_alone(std::slice::from_ref(b))));
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
            assert!(
                matches!(
                    strict().scan_alone(&request),
                    Verdict::Fail {
                        violation: Violation::BareLineEnding,
                        ..
                    }
                ),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_bare_cr_is_refused_however_the_reads_fall_even_when_lenient() {
        // Found by fuzzing: split after the CR, it used to end the line.
        for lenient in [false, true] {
            let request = b"GET / HTTP/1.1\r\nX: a\rb\r\nHost: a\r\n\r\n";
            let whole = Scanner::new(lenient, 1024).scan_alone(request);
            let mut s = Scanner::new(lenient, 1024);
            let cut = request.iter().position(|&b| b == b'b').expect("b");
            let split = violation(s.scan_alone(&request[..cut]))
                .or_else(|| violation(s.scan_alone(&request[cut..])));
            assert_eq!(
                violation(whole),
                Some(Violation::BareLineEnding),
                "{lenient}"
            );
            assert_eq!(split, Some(Violation::BareLineEnding), "{lenient}");
        }
    }

    #[test]
    fn the_setting_restores_bare_lf() {
        let mut lenient = Scanner::new(true, 1024);
        assert_eq!(
            lenient.scan_alone(b"GET / HTTP/1.1\nHost: a\n\nGET / HTTP/1.1\r\nHost: a\n\r\n"),
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
            strict().scan_alone(&stream),
            Verdict::Refuse {
                keep: first.len(),
                head: RefusedHead {
                    violation: Violation::BareLineEnding,
                    http10: false,
                    head_request: false
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
            strict().scan_alone(&chunked),
            Verdict::Refuse {
                keep: kept,
                head: RefusedHead {
                    violation: Violation::InvalidHost,
                    http10: false,
                    head_request: false
                }
            }
        );
    }

    #[test]
    fn the_answer_keeps_the_requests_version() {
        match strict().scan_alone(b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n") {
            Verdict::Refuse { head, .. } => assert!(head.http10),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refused_request_line_is_answered_alike_however_the_reads_fall() {
        // Found by fuzzing: a refused request line that spanned reads was
        // answered as HTTP/1.1 and not HEAD, only its last read's bytes
        // looked at (a 400 with a body to a HEAD request).
        for (request, http10, head_request) in [
            (&b"HEAD /# HTTP/1.1\r\nHost: a\r\n\r\n"[..], false, true),
            (b"GET /# HTTP/1.0\r\n\r\n", true, false),
            (b"HEAD / HTTP/1.1\nHost: a\r\n\r\n", false, true),
            (b"GET /abcdefgh HTTP/1.0\n\n", true, false),
            (b"HEAD / HTTP/1.0\rX\r\n\r\n", true, true),
        ] {
            let shown = String::from_utf8_lossy(request);
            let whole = strict().scan_alone(request);
            let mut s = strict();
            let trickled = request
                .iter()
                .map(|b| s.scan_alone(std::slice::from_ref(b)))
                .find(|v| *v != Verdict::Pass);
            for verdict in [Some(whole), trickled] {
                match verdict {
                    Some(Verdict::Refuse { head, .. }) => {
                        assert_eq!(
                            (head.http10, head.head_request),
                            (http10, head_request),
                            "{shown:?}"
                        );
                    }
                    other => panic!("{shown:?}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn the_quick_path_and_the_line_path_agree() {
        // The line path alone: bytes fed one at a time never hold a whole
        // head, so the quick path always gives up.
        let samples: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: b c\r\n\r\n",
            b"\r\n\r\nGET /abcdefgh HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept: */*\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nx\nyGET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: 1\r\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        ];
        for sample in samples {
            let quick = violation(strict().scan_alone(sample));
            let mut s = strict();
            let slow = sample
                .iter()
                .find_map(|b| violation(s.scan_alone(std::slice::from_ref(b))));
            assert_eq!(quick, slow, "{:?}", String::from_utf8_lossy(sample));
            // Split at every point: the same outcome.
            for cut in 0..sample.len() {
                let mut s = strict();
                let (a, b) = sample.split_at(cut);
                let split = violation(s.scan_alone(a)).or_else(|| violation(s.scan_alone(b)));
                assert_eq!(split, quick, "{cut} {:?}", String::from_utf8_lossy(sample));
            }
        }
    }

    #[test]
    fn blocks_find_each_cr_and_lf() {
        let (cr, lf) = cr_lf_masks(b"a\r\nb\r\x8d\x8a\n\x0c\x0e\r\r\x00\xff\n\n");
        assert_eq!(cr, 1 << 1 | 1 << 4 | 1 << 10 | 1 << 11);
        assert_eq!(lf, 1 << 2 | 1 << 7 | 1 << 14 | 1 << 15);
    }

    #[test]
    fn field_names_match_in_any_case_and_nothing_else() {
        for got in [&b"host:"[..], b"HOST:", b"Host:", b"hOsT:"] {
            assert!(starts_with_field(got, b"host:"), "{got:?}");
        }
        for got in [&b"host;"[..], b"hosT\x1a", b"h\x0fst:", b"Hos :"] {
            assert!(!starts_with_field(got, b"host:"), "{got:?}");
        }
        assert!(starts_with_field(
            b"Transfer-Encoding:",
            b"transfer-encoding:"
        ));
        assert!(!starts_with_field(
            b"Transfer\rEncoding:",
            b"transfer-encoding:"
        ));
        assert!(starts_with_field(b"CONTENT-LENGTH:", b"content-length:"));
    }

    #[test]
    fn each_head_passed_leaves_its_facts_in_order() {
        let heads = HeadQueue::default();
        let mut s = strict();
        let stream = b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n\
            POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Type: a\r\ncontent-type: b\r\n\r\nx\
            GET /3 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(s.scan(stream, &heads), Verdict::Pass);
        let first = heads.pop().expect("the first head");
        assert!(first.close() && first.keep_alive() && !first.framed());
        let second = heads.pop().expect("the second");
        assert!(second.framed() && second.repeated_content_type() && !second.close());
        let third = heads.pop().expect("the third");
        assert!(third.keep_alive() && !third.close() && !third.framed());
        assert_eq!(heads.pop(), None);
        // Split across reads, one byte at a time: the same facts.
        let mut s = strict();
        for b in stream {
            assert_eq!(s.scan(std::slice::from_ref(b), &heads), Verdict::Pass);
        }
        assert_eq!(
            [heads.pop(), heads.pop(), heads.pop()],
            [Some(first), Some(second), Some(third)]
        );
    }

    #[test]
    fn too_many_heads_at_once_give_up_the_facts() {
        let heads = HeadQueue::default();
        let one = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(strict().scan(&one.repeat(9), &heads), Verdict::Pass);
        assert_eq!(heads.pop(), None, "nine do not fit: none are trusted");
        let heads = HeadQueue::default();
        let mut s = strict();
        assert_eq!(s.scan(b"GET / HTTP/9.9\r\n\r\n", &heads), Verdict::Pass);
        assert_eq!(heads.pop(), None);
    }

    #[test]
    fn heads_hyper_refuses_are_left_to_it() {
        let mut s = strict();
        assert_eq!(s.scan_alone(b"GET / HTTP/2.0\r\n\r\n"), Verdict::Pass);
        assert_eq!(s.state, State::Opaque);
        let mut s = Scanner::new(false, 8);
        assert_eq!(s.scan_alone(b"GET /aaaaaaaaaaaaaaaaa"), Verdict::Pass);
        assert_eq!(s.state, State::Opaque);
    }
}
