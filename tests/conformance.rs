//! The HTTP/1.1 conformance corpus (`tests/conformance/corpus.json`)
//! against the real binary serving `tests/apps/conformance.py`.
//!
//! Each vector is a raw request (one or several, pipelined) sent on a fresh
//! connection, with the outcome it must have: the statuses of the responses
//! in order (a 100 Continue counts as its own), how many times the app ran,
//! and whether the connection is still open afterwards. Every vector is run
//! and every mismatch reported together, as one table.
//!
//! A vector marked `pending` is one where maitred is known to differ from
//! the expectation (the RFC's or a decided behaviour); its mismatch is
//! listed but does not fail the test, and it failing to differ does, so the
//! mark is removed once maitred changes. docs/http-conformance.md explains
//! the corpus and `bench/differential.py` sends the same vectors to
//! Waitress and Gunicorn.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// The classes of vectors the corpus must cover.
const CLASSES: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "chunked",
    "header-syntax",
    "request-line",
    "host",
    "connection",
    "expect",
    "desync",
];

/// Once the expected responses are in, how long the connection must stay
/// quiet to count as open.
const QUIET: Duration = Duration::from_millis(150);
/// The longest a vector may take: reached only when a server sends fewer
/// responses than expected, or keeps open a connection expected to close.
const DEADLINE: Duration = Duration::from_secs(5);
/// How long the sender waits at each of a vector's `pause_after` offsets.
const PAUSE: Duration = Duration::from_millis(100);
/// Connections at once.
const WORKERS: usize = 6;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    class: String,
    name: String,
    /// The bytes to send, one latin-1 byte per character.
    raw: String,
    expect: Outcome,
    rfc: String,
    note: String,
    /// Which final responses (counted from 0) answer a HEAD: they have no
    /// body whatever their headers say.
    #[serde(default)]
    head_responses: Vec<usize>,
    /// Offsets in `raw` where the sender pauses, so the server reads the
    /// parts separately.
    #[serde(default)]
    pause_after: Vec<usize>,
    /// Where the RFC leaves the choice open (or maitred deliberately
    /// departs from it): which choice maitred makes, and why, in one line.
    #[serde(default)]
    choice: Option<String>,
    /// Why maitred is known to differ from the expectation.
    #[serde(default)]
    pending: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Outcome {
    /// One per response: its status, 0 for bytes that are not a response,
    /// -1 for a response cut short.
    statuses: Vec<i32>,
    app_calls: i64,
    open: bool,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let statuses: Vec<String> = self.statuses.iter().map(i32::to_string).collect();
        let statuses = if statuses.is_empty() {
            "-".to_owned()
        } else {
            statuses.join(",")
        };
        let open = if self.open { "open" } else { "closed" };
        write!(f, "{statuses} calls={} {open}", self.app_calls)
    }
}

impl Vector {
    fn bytes(&self) -> Vec<u8> {
        self.raw
            .chars()
            .map(|c| {
                u8::try_from(u32::from(c))
                    .unwrap_or_else(|_| panic!("{}: {c:?} is not a latin-1 byte", self.name))
            })
            .collect()
    }
}

fn corpus() -> Vec<Vector> {
    let path = common::project_dir()
        .join("tests")
        .join("conformance")
        .join("corpus.json");
    let text = std::fs::read_to_string(&path).expect("read tests/conformance/corpus.json");
    serde_json::from_str(&text).expect("tests/conformance/corpus.json parses")
}

#[test]
fn the_corpus_is_complete_and_well_formed() {
    let vectors = corpus();
    assert!(
        vectors.len() >= 150,
        "at least 150 vectors, found {}",
        vectors.len()
    );
    let mut names = BTreeSet::new();
    for v in &vectors {
        assert!(names.insert(v.name.as_str()), "duplicate name {}", v.name);
        assert!(
            CLASSES.contains(&v.class.as_str()),
            "{}: unknown class {}",
            v.name,
            v.class
        );
        assert!(v.rfc.starts_with("RFC "), "{}: rfc {:?}", v.name, v.rfc);
        assert!(!v.note.is_empty(), "{}: a note says why", v.name);
        let len = v.bytes().len();
        assert!(
            v.pause_after.windows(2).all(|w| w[0] < w[1])
                && v.pause_after.iter().all(|&p| p > 0 && p < len),
            "{}: pause_after must be increasing offsets inside raw",
            v.name
        );
        if let Some(choice) = &v.choice {
            assert!(
                choice.contains("maitred"),
                "{}: a choice says which one maitred makes",
                v.name
            );
        }
    }
    for class in CLASSES {
        assert!(
            vectors.iter().any(|v| v.class == class),
            "no vector of class {class}"
        );
    }
}

#[test]
fn maitred_answers_the_corpus_as_expected() {
    let vectors = corpus();
    let server = common::server().arg("conformance:app").start();
    let started = Instant::now();
    let outcomes: Vec<Mutex<Option<Outcome>>> = vectors.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(v) = vectors.get(i) else { break };
                    let outcome = record(&server, v);
                    *outcomes[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
                }
            });
        }
    });
    let elapsed = started.elapsed();

    let mut failures = Vec::new();
    let mut known = Vec::new();
    let mut fixed = Vec::new();
    for (v, outcome) in vectors.iter().zip(outcomes) {
        let got = outcome
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .expect("every vector ran");
        let row = format!("| {} | {} | {} | {} |", v.class, v.name, v.expect, got);
        match (&v.pending, got == v.expect) {
            (None, true) => {}
            (None, false) => failures.push(row),
            (Some(why), false) => known.push(format!("{row} {why}")),
            (Some(_), true) => fixed.push(row),
        }
    }
    let header = "| class | vector | expected | maitred |\n|---|---|---|---|";
    if !known.is_empty() {
        eprintln!(
            "{} pending vectors (known differences):\n{header}\n{}",
            known.len(),
            known.join("\n")
        );
    }
    eprintln!("{} vectors in {elapsed:.1?}", vectors.len());
    let mut report = String::new();
    if !failures.is_empty() {
        report += &format!(
            "{} of {} vectors are not answered as expected:\n{header}\n{}\n",
            failures.len(),
            vectors.len(),
            failures.join("\n")
        );
    }
    if !fixed.is_empty() {
        report += &format!(
            "{} pending vectors now match their expectation; remove their `pending` mark:\n{header}\n{}\n",
            fixed.len(),
            fixed.join("\n")
        );
    }
    assert!(report.is_empty(), "{report}\nserver log:\n{}", server.log());
}

/// Sends one vector on a new connection and records what came back.
fn record(server: &common::Server, v: &Vector) -> Outcome {
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let port = stream.local_addr().expect("local address").port();
    // Counted while this connection is open, so no other connection can
    // have the same client port.
    let before = calls(server, port);
    send(&mut stream, &v.bytes(), &v.pause_after);
    let (statuses, open) = read_responses(&mut stream, v);
    let after = calls(server, port);
    let _ = stream.shutdown(Shutdown::Both);
    Outcome {
        statuses,
        app_calls: after - before,
        open,
    }
}

/// How many times the app ran for requests from this client port.
fn calls(server: &common::Server, port: u16) -> i64 {
    let r = server.get(&format!("/__calls?port={port}"));
    assert_eq!(r.status, 200, "/__calls: {}", r.text());
    r.text().trim().parse().expect("a count")
}

/// Writes the vector, pausing at the given offsets. The server may close
/// before it has read everything: that is part of the outcome.
fn send(stream: &mut TcpStream, data: &[u8], pause_after: &[usize]) {
    let mut start = 0;
    for &end in pause_after.iter().chain(std::iter::once(&data.len())) {
        if stream.write_all(&data[start..end]).is_err() {
            return;
        }
        start = end;
        if end < data.len() {
            std::thread::sleep(PAUSE);
        }
    }
}

/// Reads responses until the server closes the connection, or, once the
/// expected number of responses is in, until [`QUIET`] passes with nothing
/// more (a connection expected to close is given until [`DEADLINE`]).
/// Returns the statuses and whether the connection is still open.
fn read_responses(stream: &mut TcpStream, v: &Vector) -> (Vec<i32>, bool) {
    let want = v.expect.statuses.len();
    let started = Instant::now();
    let mut statuses = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut finals = 0;
    let mut garbage = false;
    let mut closed = false;
    let mut quiet_since: Option<Instant> = None;
    let mut chunk = [0u8; 65536];
    loop {
        while !buf.is_empty() && !garbage {
            let no_body = v.head_responses.contains(&finals);
            match parse_response(&buf, no_body, closed) {
                Parsed::More => break,
                Parsed::Garbage => {
                    statuses.push(0);
                    garbage = true;
                    buf.clear();
                }
                Parsed::Response { status, used } => {
                    statuses.push(status);
                    if !(100..200).contains(&status) {
                        finals += 1;
                    }
                    buf.drain(..used);
                }
            }
        }
        if closed {
            break;
        }
        let now = Instant::now();
        let spent = now - started;
        if spent >= DEADLINE {
            break;
        }
        let complete = statuses.len() >= want && buf.is_empty();
        let wait = if complete && v.expect.open {
            let since = *quiet_since.get_or_insert(now);
            match QUIET.checked_sub(now - since) {
                Some(left) if !left.is_zero() => left,
                _ => break,
            }
        } else {
            DEADLINE - spent
        };
        stream
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .expect("read timeout");
        match stream.read(&mut chunk) {
            Ok(0) => closed = true,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                quiet_since = None;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                closed = true
            }
            Err(e) => panic!("{}: read failed: {e}", v.name),
        }
    }
    if !buf.is_empty() && !garbage {
        statuses.push(-1);
    }
    (statuses, !closed)
}

enum Parsed {
    /// Not all of the response has arrived.
    More,
    /// The bytes are not an HTTP response.
    Garbage,
    /// A response (or one cut short by the close: status -1), and how many
    /// bytes it took.
    Response { status: i32, used: usize },
}

/// The response at the start of `buf`. `no_body`: it answers a HEAD.
/// `at_eof`: nothing more will arrive.
fn parse_response(buf: &[u8], no_body: bool, at_eof: bool) -> Parsed {
    let cut = |at_eof: bool| {
        if at_eof {
            Parsed::Response {
                status: -1,
                used: buf.len(),
            }
        } else {
            Parsed::More
        }
    };
    let Some(end) = find(buf, b"\r\n\r\n", 0) else {
        let prefix = &b"HTTP/"[..buf.len().min(5)];
        return if buf.starts_with(prefix) && !at_eof {
            Parsed::More
        } else {
            Parsed::Garbage
        };
    };
    let head: String = buf[..end].iter().map(|&b| char::from(b)).collect();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let Some(status) = parts
        .next()
        .filter(|s| version.starts_with("HTTP/") && s.len() == 3)
        .and_then(|s| s.parse::<i32>().ok())
    else {
        return Parsed::Garbage;
    };
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let mut at = end + 4;
    if (100..200).contains(&status) || status == 204 || status == 304 || no_body {
        return Parsed::Response { status, used: at };
    }
    if header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
        loop {
            let Some(eol) = find(buf, b"\r\n", at) else {
                return cut(at_eof);
            };
            let line: String = buf[at..eol].iter().map(|&b| char::from(b)).collect();
            let size_text = line.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size_text, 16) else {
                return Parsed::Garbage;
            };
            at = eol + 2;
            if size == 0 {
                loop {
                    let Some(eol) = find(buf, b"\r\n", at) else {
                        return cut(at_eof);
                    };
                    let empty = eol == at;
                    at = eol + 2;
                    if empty {
                        return Parsed::Response { status, used: at };
                    }
                }
            }
            if buf.len() < at + size + 2 {
                return cut(at_eof);
            }
            at += size + 2;
        }
    }
    if let Some(length) = header("content-length") {
        let Ok(length) = length.parse::<usize>() else {
            return Parsed::Garbage;
        };
        return if buf.len() >= at + length {
            Parsed::Response {
                status,
                used: at + length,
            }
        } else {
            cut(at_eof)
        };
    }
    // Delimited by the close.
    if at_eof {
        Parsed::Response {
            status,
            used: buf.len(),
        }
    } else {
        Parsed::More
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}
