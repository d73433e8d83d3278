//! Starting and stopping: the waitress-serve command line, configuration
//! errors (exit 2, naming key, value and source), app loading errors
//! (exit 1 with the traceback), the demo page and listeners. Signals and
//! the drain are in `lifecycle.rs`.

mod common;

use common::server;

#[test]
fn without_an_app_the_demo_page_is_served() {
    let s = server().start();
    let r = s.get("/some/path?x=1");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let page = r.text();
    assert!(
        page.contains(&format!("maitred {}", env!("CARGO_PKG_VERSION"))),
        "{page}"
    );
    let python = format!("Python {}", common::python_version());
    assert!(page.contains(&python), "{page}");
    assert!(
        page.contains("PATH_INFO") && page.contains("/some/path"),
        "environ shown: {page}"
    );
    assert!(s.log().contains("app: the built-in demo app"));
}

#[test]
fn startup_reports_python_and_app() {
    let s = server().arg("behaviours:app").start();
    let log = s.log();
    let running = format!("running Python {}", common::python_version());
    assert!(log.contains(&running), "{log}");
    assert!(log.contains("sys.prefix"), "{log}");
    assert!(log.contains("Python library: "), "{log}");
    assert!(
        log.contains("app: behaviours:app on 4 Python thread(s)"),
        "{log}"
    );
    assert!(
        log.contains(&format!("Serving on http://{}", s.addr())),
        "{log}"
    );
}

#[test]
fn flags_take_both_waitress_spellings() {
    let s = server()
        .no_listen()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--ident=both-forms",
            "behaviours:app",
        ])
        .start();
    assert_eq!(s.get("/list").header("server"), Some("both-forms"));
    assert!(s.log().contains("on 2 Python thread(s)"));

    let s = server()
        .no_listen()
        .args(["--host=127.0.0.1", "--port=0", "behaviours:app"])
        .start();
    assert_eq!(s.get("/list").status, 200);
}

#[test]
fn several_listeners_each_serve() {
    let s = server()
        .no_listen()
        .listeners(2)
        .args([
            "--listen=127.0.0.1:0",
            "--listen=127.0.0.2:0",
            "--listen=127.0.0.1:0",
            "behaviours:app",
        ])
        .start();
    // The repeated entry is dropped, as Waitress drops duplicate pairs.
    assert_eq!(s.urls().len(), 2, "{}", s.log());
    for url in s.urls() {
        let addr = url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        use std::io::Write;
        stream
            .write_all(b"GET /list HTTP/1.0\r\n\r\n")
            .expect("send");
        assert!(String::from_utf8_lossy(&common::read_to_close(&mut stream)).ends_with("one,two"));
    }
}

#[test]
fn ipv6_loopback_when_available() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    let s = server()
        .no_listen()
        .args(["--listen=[::1]:0", "behaviours:app"])
        .start();
    let url = &s.urls()[0];
    assert!(url.starts_with("http://[::1]:"), "{url}");
    let env = {
        let addr = url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        use std::io::Write;
        stream
            .write_all(b"GET /environ HTTP/1.0\r\n\r\n")
            .expect("send");
        let raw = common::read_to_close(&mut stream);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let body = text.split("\r\n\r\n").nth(1).expect("body").to_owned();
        serde_json::from_str::<serde_json::Value>(&body).expect("json")
    };
    assert_eq!(env["REMOTE_ADDR"], "::1");
}

#[test]
fn call_flag_treats_the_target_as_a_factory() {
    let s = server().args(["--call", "behaviours:factory"]).start();
    assert_eq!(s.get("/list").text(), "one,two");
}

#[test]
fn app_dir_adds_an_import_directory() {
    let dir = common::scratch_dir("appdir");
    std::fs::write(
        dir.path().join("elsewhere.py"),
        "def app(environ, start_response):\n    start_response('200 OK', [('Content-Length', '9')])\n    return [b'elsewhere']\n",
    )
    .expect("write app");
    let s = server()
        .args([
            format!("--app-dir={}", dir.path().display()),
            "elsewhere:app".into(),
        ])
        .start();
    assert_eq!(s.get("/").text(), "elsewhere");
}

#[test]
fn waitress_style_dotted_target_works() {
    let s = server().arg("behaviours.app").start();
    assert_eq!(s.get("/list").text(), "one,two");
}

#[test]
fn an_app_that_fails_to_import_stops_startup_with_its_traceback() {
    let out = server().arg("no_such_module:app").run();
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cannot import the app `no_such_module:app`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("ModuleNotFoundError: No module named 'no_such_module'"),
        "{}",
        out.stderr
    );

    let dir = common::scratch_dir("broken");
    std::fs::write(
        dir.path().join("broken.py"),
        "import json\nraise RuntimeError('import-time failure')\n",
    )
    .expect("write");
    let out = server().cwd(dir.path()).arg("broken:app").run();
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.contains("Traceback (most recent call last)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("RuntimeError: import-time failure"),
        "{}",
        out.stderr
    );

    let out = server().arg("behaviours:no_such_name").run();
    assert_eq!(out.code(), Some(1));
    assert!(out.stderr.contains("AttributeError"), "{}", out.stderr);
}

#[test]
fn a_target_that_is_not_callable_is_refused() {
    let out = server().arg("behaviours:not_callable").run();
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.contains("is a int, not a WSGI callable"),
        "{}",
        out.stderr
    );
}

#[test]
fn configuration_errors_exit_2_naming_key_value_and_source() {
    let out = server().args(["--threads=many", "behaviours:app"]).run();
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stderr.contains(
            "threads: invalid value string \"many\", expected a whole number (from flag --threads)"
        ),
        "{}",
        out.stderr
    );

    let out = server()
        .env("MAITRED_THREADS", "0")
        .arg("behaviours:app")
        .run();
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stderr.contains(
            "threads: must be at least 1 (value 0, from environment variable MAITRED_THREADS)"
        ),
        "{}",
        out.stderr
    );

    let dir = common::scratch_dir("config");
    let file = dir.path().join("m.toml");
    std::fs::write(
        &file,
        "threds = 3\n[limits]\nmax_request_body_size = \"lots\"\n",
    )
    .expect("write");
    let out = server()
        .args([format!("--config={}", file.display())])
        .run();
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stderr.contains("threds: unknown setting"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("did you mean `threads`?"),
        "{}",
        out.stderr
    );

    std::fs::write(&file, "[limits]\nmax_request_body_size = \"lots\"\n").expect("write");
    let out = server().env("MAITRED_CONFIG", file.to_string_lossy()).run();
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stderr
            .contains("limits.max_request_body_size: invalid value string \"lots\""),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!(
            "{} (key `limits.max_request_body_size`)",
            file.display()
        )),
        "{}",
        out.stderr
    );

    let out = server().args(["--config=/nonexistent/maitred.toml"]).run();
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stderr
            .contains("/nonexistent/maitred.toml (given by --config) does not exist"),
        "{}",
        out.stderr
    );
}

#[test]
fn values_beyond_sane_bounds_are_configuration_errors() {
    for (flag, key) in [
        (
            "--connection-limit=18446744073709551615",
            "limits.connection_limit",
        ),
        (
            "--channel-timeout=18446744073709551615",
            "limits.channel_timeout",
        ),
        (
            "--limits-max-request-headers=0",
            "limits.max_request_headers",
        ),
    ] {
        let out = server().args([flag, "behaviours:app"]).run();
        assert_eq!(out.code(), Some(2), "{flag}: {}", out.stderr);
        assert!(out.stderr.contains(key), "{flag}: {}", out.stderr);
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = server().args(["--no-such-flag"]).run();
    assert_eq!(out.code(), Some(2));
    assert!(out.stderr.contains("--no-such-flag"));
    let out = server()
        .no_listen()
        .args(["--port=1", "--listen=127.0.0.1:1"])
        .run();
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stderr
            .contains("--host/--port cannot be combined with --listen"),
        "{}",
        out.stderr
    );
    let out = server().args(["not-a-target"]).run();
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stderr.contains("write MODULE:CALLABLE"),
        "{}",
        out.stderr
    );
}

#[test]
fn help_and_version() {
    let out = server().no_listen().arg("--help").run();
    assert_eq!(out.code(), Some(0));
    for flag in [
        "--listen",
        "--host",
        "--port",
        "--unix-socket",
        "--unix-socket-perms",
        "--threads",
        "--url-scheme",
        "--ident",
        "--expose-tracebacks",
        "--call",
        "--max-request-header-size",
        "--max-request-body-size",
        "--inbuf-overflow",
        "--outbuf-overflow",
        "--outbuf-high-watermark",
        "--channel-timeout",
        "--connection-limit",
        "--url-prefix",
        "--app-dir",
        "--config",
    ] {
        assert!(out.stdout.contains(flag), "--help lists {flag}");
    }
    let out = server().no_listen().arg("--version").run();
    let version = out.stdout.trim();
    let hosted = if common::installed_venv().is_some() {
        "(extension module)"
    } else {
        "(embedded)"
    };
    assert!(
        version.starts_with(&format!(
            "maitred {} with Python {}",
            env!("CARGO_PKG_VERSION"),
            common::python_version()
        )) && version.ends_with(hosted),
        "{version}"
    );
}

#[test]
fn waitress_asyncore_flags_are_accepted_with_a_warning() {
    let s = server()
        .args(["--asyncore-use-poll", "--recv-bytes=8192", "behaviours:app"])
        .start();
    assert_eq!(s.get("/list").status, 200);
    assert!(
        s.log()
            .contains("--asyncore-use-poll tunes waitress's asyncore loop and has no effect")
    );
}

#[test]
fn a_port_in_use_stops_startup_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = server()
        .no_listen()
        .args([format!("--listen={addr}"), "behaviours:app".into()])
        .run();
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("cannot listen on {addr}")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("Address already in use"),
        "{}",
        out.stderr
    );
}
