//! HTTP/1.x semantics on the wire: keep-alive, pipelining, 100-continue,
//! HEAD, chunked bodies both ways, limits and the responses maitred writes
//! itself. Waitress's behaviour is the reference unless a test says it
//! deliberately differs.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Conn, server};

fn behaviours() -> common::Server {
    server().arg("behaviours:app").start()
}

#[test]
fn http11_keeps_the_connection_and_pipelines_in_order() {
    let s = behaviours();
    let mut c = Conn::open(&s);
    let mut batch = String::new();
    for i in 0..10 {
        batch.push_str(&format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\nbody-{i}",
            format!("body-{i}").len()
        ));
    }
    c.send_str(&batch);
    for i in 0..10 {
        let r = c.response();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("body-{i}"));
        assert_eq!(
            r.header("connection"),
            None,
            "1.1 keep-alive needs no header"
        );
    }
    c.send_str("GET /list HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let r = c.response();
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed());
}

#[test]
fn http10_closes_unless_keep_alive_is_asked_and_length_known() {
    let s = behaviours();
    // Default 1.0: close.
    let mut c = Conn::open(&s);
    c.send_str("GET /list HTTP/1.0\r\n\r\n");
    let r = c.response();
    assert_eq!(r.version, "HTTP/1.0");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed());

    // Keep-Alive with a known length: Waitress's exact spelling, reusable.
    let mut c = Conn::open(&s);
    c.send_str("GET /list HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    let r = c.response();
    assert_eq!(r.header("connection"), Some("Keep-Alive"));
    assert_eq!(r.header("content-length"), Some("7"));
    c.send_str("GET /list HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.response().text(), "one,two");

    // Keep-Alive but no length (a generator): body ends at close.
    let mut c = Conn::open(&s);
    c.send_str("GET /generator HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    let r = c.response();
    assert_eq!(r.header("connection"), Some("close"));
    assert!(r.close_delimited);
    assert_eq!(r.text(), "0123456789".repeat(3));
}

#[test]
fn connection_tokens_are_parsed_not_compared_whole() {
    let s = behaviours();
    let mut c = Conn::open(&s);
    c.send_str("GET /list HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, close\r\n\r\n");
    assert_eq!(c.response().header("connection"), Some("close"));
    assert!(c.is_closed());
}

#[test]
fn generator_responses_are_chunked_on_http11_and_keep_the_connection() {
    let s = behaviours();
    let mut c = Conn::open(&s);
    c.send_str("GET /generator HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.response();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "0123456789".repeat(3));
    // Deliberately better than Waitress, which closes after every chunked
    // response: the framing is unambiguous, so the connection is reused.
    c.send_str("GET /list HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response().text(), "one,two");
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let s = behaviours();
    let mut c = Conn::open(&s);
    c.send_str(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = c.response();
    assert_eq!(
        (interim.version.as_str(), interim.status),
        ("HTTP/1.1", 100)
    );
    c.send_str("hello");
    let r = c.response();
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
}

#[test]
fn expect_100_continue_with_the_body_already_sent() {
    // Waitress's functional test: the body arrives with the head.
    let s = behaviours();
    let mut c = Conn::open(&s);
    c.send_str(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
    );
    assert_eq!(c.response().status, 100);
    assert_eq!(c.response().text(), "hello");
}

#[test]
fn expect_100_continue_without_a_body_does_not_hang() {
    // Waitress hangs here (its notes §5.4); maitred answers normally and
    // the next pipelined request is its own request.
    let s = behaviours();
    let mut c = Conn::open(&s);
    c.send_str(
        "GET /list HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\r\n\
         GET /list HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let first = c.response();
    assert_eq!((first.status, first.text().as_str()), (200, "one,two"));
    assert_eq!(c.response().status, 200);
}

#[test]
fn head_responses_carry_headers_but_no_body() {
    // Waitress sends the body on HEAD (a bug in its notes); maitred does not.
    let s = behaviours();
    let mut c = Conn::open(&s);
    c.send_str("HEAD /head-body HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.head_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("10"));
    // The next response starts right away: no stray body bytes before it.
    c.send_str("GET /list HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response().text(), "one,two");
}

#[test]
fn chunked_request_bodies_are_decoded() {
    let s = behaviours();
    let mut c = Conn::open(&s);
    c.send_str("POST /input HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    // Sent in pieces, with an extension and a trailer.
    for piece in [
        "4;ext=1\r\nabc\n\r\n",
        "6\r\nline2\n\r\n",
        "5\r\nrest.\r\n",
        "0\r\nX-Trailer: 1\r\n\r\n",
    ] {
        c.send_str(piece);
        std::thread::sleep(Duration::from_millis(10));
    }
    let v = c.response().json();
    assert_eq!(v["content_length"], "15", "decoded length");
    assert_eq!(v["read3"], "abc");
}

#[test]
fn malformed_chunked_framing_gets_400_and_close() {
    let s = behaviours();
    for (bad, why) in [
        ("zz\r\nhello\r\n0\r\n\r\n", "chunk size"),
        ("5\r\nhelloXX0\r\n\r\n", "not terminated"),
    ] {
        let mut c = Conn::open(&s);
        c.send_str(&format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{bad}"
        ));
        let r = c.response();
        assert_eq!(r.status, 400, "{why}: {}", r.text());
        assert_eq!(r.header("connection"), Some("close"));
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        // Waitress's wording for a size that is not hex; hyper's parser
        // names what else broke.
        assert!(
            r.text()
                .starts_with("Bad Request\r\n\r\nInvalid chunk size")
                || r.text()
                    .starts_with("Bad Request\r\n\r\nMalformed request body"),
            "{}",
            r.text()
        );
        assert!(
            c.is_closed(),
            "{why}: framing is in doubt, so the connection closes"
        );
    }
}

#[test]
fn content_length_and_transfer_encoding_together_are_refused() {
    // RFC 9112 §6.1 lets a server reject the pair (and requires the close
    // either way): a front end that framed it by Content-Length would see a
    // different request from maitred's.
    let s = behaviours();
    let mut c = Conn::open(&s);
    c.send_str(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\n",
    );
    let r = c.response();
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .contains("Transfer-Encoding and Content-Length cannot both be given"),
        "{}",
        r.text()
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed());
}

#[test]
fn transfer_encoding_on_http10_is_refused() {
    let s = behaviours();
    let raw = s.exchange(
        b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.0 400"),
        "{text}"
    );
}

#[test]
fn declared_body_over_the_limit_gets_413_without_reading_it() {
    let s = server()
        .args(["--max-request-body-size=1000", "behaviours:app"])
        .start();
    let mut c = Conn::open(&s);
    c.send_str(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\nExpect: 100-continue\r\n\r\n",
    );
    let r = c.response();
    assert_eq!(
        r.status, 413,
        "no 100 Continue is sent for a body that will be refused"
    );
    assert_eq!(
        r.text(),
        "Payload Too Large\r\n\r\nexceeds max_body of 1000\r\n\r\n(generated by maitred)"
    );
    assert!(c.is_closed());
    // At the limit is fine.
    let mut c = Conn::open(&s);
    c.send_str(&format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n{}",
        "a".repeat(1000)
    ));
    assert_eq!(c.response().status, 200);
}

#[test]
fn chunked_body_over_the_limit_gets_413_while_streaming() {
    let s = server()
        .args(["--max-request-body-size=1000", "behaviours:app"])
        .start();
    let mut c = Conn::open(&s);
    c.send_str("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    // 600 + 600 > 1000: refused after the second chunk, without waiting for
    // the end of the body (which never comes).
    let chunk = format!("258\r\n{}\r\n", "a".repeat(600));
    c.send_str(&chunk);
    c.send_str(&chunk);
    let r = c.response();
    assert_eq!(r.status, 413);
    assert!(c.is_closed());
}

#[test]
fn header_limit_is_enforced_below_eight_kib() {
    let s = server()
        .args(["--max-request-header-size=1000", "behaviours:app"])
        .start();
    // A complete head over the limit.
    let raw = s.exchange(
        format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
            "a".repeat(1100)
        )
        .as_bytes(),
    );
    assert!(
        String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    // Waitress's TooLargeTests: garbage after a request is the next head; it
    // never ends, but passing the limit is enough to answer 431 at once.
    let mut c = Conn::open(&s);
    c.send_str(&format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello{}",
        "a".repeat(1050)
    ));
    assert_eq!(c.response().text(), "hello");
    let r = c.response();
    assert_eq!(r.status, 431);
    assert!(c.is_closed());
    // Under the limit works.
    assert_eq!(s.get("/list").status, 200);
}

#[test]
fn lower_case_methods_and_duplicate_hosts_are_refused() {
    let s = behaviours();
    let mut c = Conn::open(&s);
    c.send_str("get /list HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Malformed HTTP method \"get\""));
    assert!(c.is_closed());

    let mut c = Conn::open(&s);
    c.send_str("GET /list HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Duplicate header: Host"));
    // Exactly the headers Waitress's tests expect on a generated error.
    assert_eq!(
        r.header_names(),
        vec![
            "connection",
            "content-length",
            "content-type",
            "date",
            "server"
        ]
    );
}

#[test]
fn malformed_heads_are_refused_by_the_parser() {
    let s = behaviours();
    for raw in [
        "GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n",
        "GET / HTTP/1.1\r\n Host: folded\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello",
        "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ] {
        let out = s.exchange(raw.as_bytes());
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "{raw:?} -> {text:?}");
    }
}

#[test]
fn server_and_date_headers() {
    let s = behaviours();
    let r = s.get("/list");
    assert_eq!(r.header("server"), Some("maitred"));
    assert!(r.header("date").is_some_and(|d| d.ends_with(" GMT")));
    // An app's own Server header wins; maitred identifies itself with Via.
    let r = s.get("/app-server-header");
    assert_eq!(r.header("server"), Some("custom/1.0"));
    assert_eq!(r.header("via"), Some("maitred"));

    let quiet = server().args(["--ident=", "behaviours:app"]).start();
    let r = quiet.get("/list");
    assert_eq!(r.header("server"), None, "empty ident omits the header");
    let r = server()
        .args(["--ident=waitress", "behaviours:app"])
        .start()
        .get("/list");
    assert_eq!(r.header("server"), Some("waitress"));
}

#[test]
fn status_line_follows_the_request_version_and_reason() {
    let s = behaviours();
    let mut c = Conn::open(&s);
    c.send_str("GET /custom-reason HTTP/1.0\r\n\r\n");
    let r = c.response();
    assert_eq!(r.version, "HTTP/1.0");
    assert_eq!((r.status, r.reason.as_str()), (299, "Custom Thing"));
}

#[test]
fn clients_that_half_close_still_get_their_response() {
    let s = behaviours();
    let mut stream = s.connect();
    stream
        .write_all(b"GET /list HTTP/1.0\r\n\r\n")
        .expect("send");
    common::half_close(&stream);
    let raw = common::read_to_close(&mut stream);
    assert!(String::from_utf8_lossy(&raw).ends_with("one,two"));
}

#[test]
fn leading_empty_lines_before_a_request_are_ignored() {
    let s = behaviours();
    let raw = s.exchange(b"\r\n\r\nGET /list HTTP/1.0\r\n\r\n");
    assert!(String::from_utf8_lossy(&raw).ends_with("one,two"));
}

#[test]
fn idle_keep_alive_connections_close_after_channel_timeout() {
    let s = server()
        .args(["--channel-timeout=1", "behaviours:app"])
        .start();
    let mut c = Conn::open(&s);
    c.send_str("GET /list HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response().status, 200);
    let idle_since = std::time::Instant::now();
    assert!(c.is_closed(), "closed while idle");
    let waited = idle_since.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "not before the timeout: {waited:?}"
    );
    assert!(waited < Duration::from_secs(4), "soon after it: {waited:?}");
}

#[test]
fn a_head_trickled_byte_by_byte_is_cut_off() {
    // Waitress resets its timer on every byte; maitred bounds the whole
    // head with header_timeout, while channel_timeout (progress) never fires.
    let s = server()
        .args(["--limits-header-timeout=1", "behaviours:app"])
        .start();
    let mut stream = s.connect();
    let started = std::time::Instant::now();
    let head = b"GET /list HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for byte in head {
        if stream.write_all(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    let closed_after = started.elapsed();
    assert!(
        common::is_closed(&mut stream, Duration::from_secs(3)),
        "slowloris head is cut off"
    );
    assert!(closed_after < Duration::from_secs(6), "{closed_after:?}");
}

#[test]
fn connect_is_refused_with_405() {
    let s = behaviours();
    let raw = s.exchange(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 405 Method Not Allowed"),
        "{text}"
    );
}

#[test]
fn header_count_limit_is_a_setting() {
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET /list HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{many}\r\n");
    let default = behaviours();
    assert!(
        String::from_utf8_lossy(&default.exchange(request.as_bytes())).starts_with("HTTP/1.1 431")
    );
    let raised = server()
        .args(["--limits-max-request-headers=200", "behaviours:app"])
        .start();
    assert!(
        String::from_utf8_lossy(&raised.exchange(request.as_bytes())).starts_with("HTTP/1.1 200")
    );
}

#[test]
fn a_stalled_request_body_times_out_with_408() {
    let s = server()
        .args([
            "--channel-timeout=1",
            "--connection-limit=1",
            "behaviours:app",
        ])
        .start();
    let mut c = Conn::open(&s);
    c.send_str("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab");
    let started = std::time::Instant::now();
    let r = c.response();
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(c.is_closed());
    // The only connection slot is free again.
    assert_eq!(s.get("/list").status, 200);
}

#[test]
fn a_client_that_stops_reading_is_dropped_after_channel_timeout() {
    // One Python thread, a small buffer, an endless response nobody reads:
    // the app thread waits for room until the connection times out, then
    // the app is stopped and closed and the thread serves others again.
    let s = server()
        .args([
            "--threads=1",
            "--outbuf-high-watermark=256KiB",
            "--channel-timeout=1",
            "behaviours:app",
        ])
        .start();
    let mut stalled = s.connect();
    stalled
        .write_all(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    assert!(
        s.wait_event("closed:endless", Duration::from_secs(10)),
        "{}",
        s.log()
    );
    assert_eq!(s.get("/list").text(), "one,two");
    drop(stalled);
}

#[test]
fn framing_refusals_use_the_usual_error_page_and_are_counted() {
    let s = behaviours();
    let counted = |reason: &str, status: u16| {
        common::metric_value(
            &s.scrape(),
            &format!(
                "maitred_gateway_responses_total{{http_response_status_code=\"{status}\",reason=\"{reason}\"}}"
            ),
        )
        .unwrap_or(-1.0)
    };
    for (raw, status, reason, detail) in [
        (
            &b"GET /echo HTTP/1.1\nHost: t\n\n"[..],
            400,
            "bare_lf",
            "Bare CR or LF found in HTTP message",
        ),
        (
            b"GET /echo HTTP/1.1\r\nHost: a b\r\n\r\n",
            400,
            "host",
            "Invalid Host header",
        ),
        (
            b"GET /echo HTTP/1.1\r\n\r\n",
            400,
            "host",
            "Missing Host header",
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: cow, chunked\r\n\r\n0\r\n\r\n",
            501,
            "transfer_coding",
            "Transfer-Encoding requested is not supported.",
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\n",
            400,
            "transfer_encoding",
            "Transfer-Encoding is invalid",
        ),
    ] {
        let before = counted(reason, status);
        let mut c = Conn::open(&s);
        c.send(raw);
        let r = c.response();
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(raw));
        assert!(r.text().contains(detail), "{}", r.text());
        assert!(r.text().ends_with("(generated by maitred)"), "{}", r.text());
        assert_eq!(r.header("connection"), Some("close"));
        assert_eq!(r.header("server"), Some("maitred"));
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert!(r.header("date").is_some());
        assert!(c.is_closed(), "the connection closes after a refusal");
        assert_eq!(counted(reason, status), before + 1.0, "{reason}");
    }
    assert!(
        s.events().iter().all(|e| !e.starts_with("closed:")),
        "the app ran for none of them"
    );
}

#[test]
fn allow_bare_lf_restores_the_lenient_line_endings() {
    let raw = b"GET /echo HTTP/1.1\nHost: t\n\n";
    let strict = behaviours();
    assert!(
        String::from_utf8_lossy(&strict.exchange(raw)).starts_with("HTTP/1.1 400 "),
        "refused by default"
    );
    let lenient = server().args(["--allow-bare-lf", "behaviours:app"]).start();
    let mut c = Conn::open(&lenient);
    c.send(raw);
    assert_eq!(c.response().status, 200);
    // In chunk-size lines hyper's own parser refuses a bare LF either way,
    // as it did before the setting existed.
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n",
    );
    assert_eq!(c.response().status, 400);
}

#[test]
fn a_request_smuggled_after_a_body_is_refused_after_the_first_is_answered() {
    let s = behaviours();
    let mut c = Conn::open(&s);
    // The body's own LF is data; the head after it is the smuggled one.
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab\ncGET /echo HTTP/1.1\nHost: t\n\n");
    let first = c.response();
    assert_eq!((first.status, first.text().as_str()), (200, "ab\nc"));
    let second = c.response();
    assert_eq!(second.status, 400);
    assert!(c.is_closed());
}
