//! The WSGI environ as the app sees it, checked key by key against PEP 3333
//! and Waitress's values.

mod common;

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;

use common::{Conn, server};
use serde_json::{Value, json};

fn behaviours() -> common::Server {
    server().arg("behaviours:app").start()
}

fn environ_of(s: &common::Server, raw_request: impl AsRef<[u8]>) -> Value {
    let mut c = Conn::open(s);
    c.send(raw_request.as_ref());
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn cgi_variables() {
    let s = behaviours();
    let mut c = Conn::open(&s);
    let client_port = c.reader.get_ref().local_addr().expect("addr").port();
    c.send_str(
        "GET /environ?a=%20b&c HTTP/1.1\r\nHost: example.com:9000\r\nUser-Agent: t/1\r\n\r\n",
    );
    let env = c.response().json();
    let port = s.addr().rsplit(':').next().expect("port").to_owned();
    assert_eq!(env["REQUEST_METHOD"], "GET");
    assert_eq!(env["SCRIPT_NAME"], "");
    assert_eq!(env["PATH_INFO"], "/environ");
    assert_eq!(env["QUERY_STRING"], "a=%20b&c", "raw, not decoded");
    assert_eq!(env["REQUEST_URI"], "/environ?a=%20b&c");
    assert_eq!(env["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(
        env["SERVER_NAME"], "maitred.invalid",
        "never taken from Host"
    );
    assert_eq!(env["SERVER_PORT"], port.as_str());
    assert_eq!(env["SERVER_SOFTWARE"], "maitred");
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(env["REMOTE_HOST"], "127.0.0.1");
    assert_eq!(env["REMOTE_PORT"], client_port.to_string());
    assert_eq!(env["HTTP_HOST"], "example.com:9000");
    assert_eq!(env["HTTP_USER_AGENT"], "t/1");
    assert!(
        env.get("CONTENT_TYPE").is_none(),
        "only when the client sent it"
    );
    assert!(
        env.get("CONTENT_LENGTH").is_none(),
        "only when there is a body"
    );
}

#[test]
fn wsgi_keys() {
    let s = behaviours();
    let env = s.json("/environ");
    assert_eq!(env["wsgi.version"], json!([1, 0]));
    assert_eq!(env["wsgi.url_scheme"], "http");
    assert_eq!(env["wsgi.multithread"], true);
    assert_eq!(env["wsgi.multiprocess"], false);
    assert_eq!(env["wsgi.run_once"], false);
    assert_eq!(env["wsgi.input_terminated"], true);
    assert_eq!(env["wsgi.input"], "BytesIO");
    assert_eq!(env["wsgi.errors"], "ErrorStream");
    assert_eq!(env["wsgi.file_wrapper"], "type");

    let s = server()
        .args([
            "--threads=1",
            "--url-scheme=https",
            "--server-name=app.internal",
            "behaviours:app",
        ])
        .start();
    let env = s.json("/environ");
    assert_eq!(
        env["wsgi.multithread"], false,
        "one thread: no concurrent calls"
    );
    assert_eq!(env["wsgi.url_scheme"], "https");
    assert_eq!(env["SERVER_NAME"], "app.internal");
}

#[test]
fn process_environment_does_not_leak_into_the_environ() {
    // Granian copies os.environ (secrets included) into every environ.
    let s = server()
        .env("SECRET_TOKEN", "hunter2")
        .arg("behaviours:app")
        .start();
    let env = s.json("/environ");
    assert!(env.get("SECRET_TOKEN").is_none());
    assert!(!env.to_string().contains("hunter2"));
}

#[test]
fn path_info_is_decoded_latin1_and_query_is_raw() {
    let s = behaviours();
    let env = environ_of(
        &s,
        "GET /caf%C3%A9/a%2Fb//x?q=%C3%A9 HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    // PEP 3333 native strings: the decoded bytes, each as one latin-1 char.
    assert_eq!(env["PATH_INFO"], "/caf\u{c3}\u{a9}/a/b//x");
    assert_eq!(env["QUERY_STRING"], "q=%C3%A9");
    let env = environ_of(&s, "GET //double//slash HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(
        env["PATH_INFO"], "/double//slash",
        "leading slashes collapse (Waitress)"
    );
    let env = environ_of(
        &s,
        "GET http://other.example:81/p/q?z=1 HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(env["PATH_INFO"], "/p/q", "absolute form: only the path");
    assert_eq!(env["QUERY_STRING"], "z=1");
}

#[test]
fn headers_become_http_keys() {
    let s = behaviours();
    let env = environ_of(
        &s,
        b"GET /environ HTTP/1.1\r\nHost: t\r\nX-Multi: a\r\nX-Multi: b\r\nX_Multi: spoof\r\n\
          Cookie: a=1\r\nCookie: b=2\r\nContent-Type: text/plain\r\nX-Latin: caf\xe9\r\n\r\n",
    );
    assert_eq!(env["HTTP_X_MULTI"], "a, b", "repeats joined with ', '");
    assert_eq!(env["HTTP_COOKIE"], "a=1; b=2", "cookies joined with '; '");
    assert_eq!(env["CONTENT_TYPE"], "text/plain");
    assert!(env.get("HTTP_CONTENT_TYPE").is_none());
    assert_eq!(env["HTTP_X_LATIN"], "caf\u{e9}", "obs-text is latin-1");
    let text = env.to_string();
    assert!(
        !text.contains("spoof"),
        "underscore names cannot pose as dash names"
    );
}

#[test]
fn untrusted_forwarding_headers_are_removed_by_default() {
    let request = "GET /environ HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 6.6.6.6\r\n\
                   X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Port: 1\r\n\
                   X-Forwarded-By: x\r\nForwarded: for=6.6.6.6\r\n\r\n";
    let env = environ_of(&behaviours(), request);
    for key in [
        "HTTP_X_FORWARDED_FOR",
        "HTTP_X_FORWARDED_PROTO",
        "HTTP_X_FORWARDED_HOST",
        "HTTP_X_FORWARDED_PORT",
        "HTTP_X_FORWARDED_BY",
        "HTTP_FORWARDED",
    ] {
        assert!(env.get(key).is_none(), "{key} must not reach the app");
    }
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(env["wsgi.url_scheme"], "http");

    let kept = server()
        .args(["--no-clear-untrusted-proxy-headers", "behaviours:app"])
        .start();
    let env = environ_of(&kept, request);
    assert_eq!(env["HTTP_X_FORWARDED_FOR"], "6.6.6.6");
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.1", "kept, but not believed");
}

#[test]
fn url_prefix_sets_script_name_like_waitress() {
    let s = server()
        .args(["--url-prefix=app/", "behaviours:app"])
        .start();
    let cases = [
        ("/app/x/y", "/x/y"),
        ("/app", ""),
        ("/app/", "/"),
        ("/application", "/application"),
        ("/other", "/other"),
        ("/%61pp/z", "/z"),
    ];
    for (path, expected) in cases {
        let env = environ_of(&s, format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
        assert_eq!(env["SCRIPT_NAME"], "/app", "{path}");
        assert_eq!(env["PATH_INFO"], expected, "{path}");
    }
}

const INPUT_BODY: &str = "abcdef\nline2\nline3\nlast";

/// What every `wsgi.input` method must return on INPUT_BODY, in the order
/// the /input endpoint calls them (values from io.BytesIO).
fn expected_input() -> Value {
    json!({
        "read3": "abc",
        "readline": "def\n",
        "readline_limit": "li",
        "readlines_hint": ["ne2\n"],
        "iter": ["line3\n", "last"],
        "read_rest": "",
        "read_past_end": "",
        "content_length": "23",
    })
}

fn post_input(s: &common::Server) -> Value {
    environ_of(
        s,
        format!(
            "POST /input HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{INPUT_BODY}",
            INPUT_BODY.len()
        ),
    )
}

#[test]
fn wsgi_input_methods_agree_in_memory() {
    let mut v = post_input(&behaviours());
    assert_eq!(v["type"], "BytesIO");
    v.as_object_mut().map(|o| o.remove("type"));
    assert_eq!(v, expected_input());
}

#[test]
fn wsgi_input_methods_agree_when_spooled_to_disk() {
    let s = server()
        .args(["--inbuf-overflow=8", "behaviours:app"])
        .start();
    let mut v = post_input(&s);
    assert_eq!(v["type"], "BufferedReader", "spooled past inbuf_overflow");
    v.as_object_mut().map(|o| o.remove("type"));
    assert_eq!(v, expected_input());

    // A large upload arrives whole and seekable.
    let body: String = (0..20_000).map(|i| format!("{i:05}\n")).collect();
    let env = environ_of(
        &s,
        format!(
            "POST /input-size HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(env["len"], 120_000);
    assert_eq!(env["first_line_len"], 6);
    assert_eq!(env["content_length"], "120000");
}

#[test]
fn empty_and_bodiless_requests() {
    let s = behaviours();
    let env = environ_of(
        &s,
        "POST /input HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(env["content_length"], "0");
    assert_eq!(env["read_rest"], "");
    let env = environ_of(&s, "GET /input HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(env["content_length"], Value::Null);
}

#[test]
fn unix_socket_requests() {
    let dir = common::scratch_dir("unix");
    let path = dir.path().join("m.sock");
    let s = server()
        .no_listen()
        .args([
            format!("--unix-socket={}", path.display()),
            "--unix-socket-perms=660".into(),
            "behaviours:app".into(),
        ])
        .start();
    assert_eq!(s.urls(), [format!("http://unix:{}", path.display())]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    let mut stream = UnixStream::connect(&path).expect("connect");
    stream
        .write_all(b"GET /environ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut reader = BufReader::new(stream);
    let env = common::read_response(&mut reader).expect("response").json();
    assert_eq!(env["REMOTE_ADDR"], "localhost");
    assert_eq!(env["SERVER_PORT"], "80");
    assert_eq!(env["REMOTE_PORT"], "");
}

#[test]
fn http10_requests() {
    let s = behaviours();
    let env = environ_of(&s, "GET /environ HTTP/1.0\r\n\r\n");
    assert_eq!(env["SERVER_PROTOCOL"], "HTTP/1.0");
    assert!(env.get("HTTP_HOST").is_none());
}
