//! Connections and the server's life: the connection limit and its idle
//! eviction, the timeouts (head, body, keep-alive, request), the request
//! queue, signals and the graceful drain, the admin probes, backlog and
//! systemd socket activation. Everything on 127.0.0.1, bounded in time.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Conn, eventually, server};

fn refuses_connections(addr: &str) -> bool {
    matches!(
        TcpStream::connect(addr),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused
    )
}

/// A connection with `GET /sleep?SECONDS` sent on it.
fn sleeping(s: &common::Server, seconds: &str) -> Conn {
    let mut c = Conn::open(s);
    c.send_str(&format!("GET /sleep?{seconds} HTTP/1.1\r\nHost: t\r\n\r\n"));
    c
}

const GET_LIST: &str = "GET /list HTTP/1.1\r\nHost: t\r\n\r\n";

// ---------------------------------------------------------------- signals

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let mut s = server()
        .args(["--shutdown-delay=0", "behaviours:app"])
        .start();
    let mut c = sleeping(&s, "0.5");
    std::thread::sleep(Duration::from_millis(150));
    s.signal("TERM");
    let r = c.response();
    assert_eq!(r.text(), "slept 0.5\n");
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "draining: no more requests on it"
    );
    assert!(c.is_closed());
    let status = s.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(s.log().contains("every request finished"), "{}", s.log());
}

#[test]
fn sigint_drains_like_sigterm_and_idle_connections_close_at_once() {
    let mut s = server()
        .args(["--shutdown-delay=0", "behaviours:app"])
        .start();
    let mut idle = Conn::open(&s);
    idle.send_str(GET_LIST);
    assert_eq!(idle.response().status, 200);
    s.signal("INT");
    assert!(idle.is_closed(), "an idle keep-alive connection closes");
    let status = s.wait_exit(Duration::from_secs(5)).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", s.log());
}

#[test]
fn readiness_fails_at_once_and_listeners_close_after_shutdown_delay() {
    let mut s = server()
        .args(["--shutdown-delay=2", "behaviours:app"])
        .start();
    assert_eq!(s.admin_get("/readyz"), (200, "ready\n".to_owned()));
    let addr = s.addr();
    let signalled = Instant::now();
    s.signal("TERM");
    assert!(
        eventually(Duration::from_secs(1), || s.admin_get("/readyz").0 == 503),
        "readiness fails at once"
    );
    // Load balancers are still catching up: new connections are served.
    assert_eq!(s.get("/list").text(), "one,two");
    assert_eq!(s.admin_get("/livez").0, 200, "still alive while draining");
    assert!(
        eventually(Duration::from_secs(5), || refuses_connections(&addr)),
        "the listeners close"
    );
    let closed_after = signalled.elapsed();
    assert!(
        closed_after >= Duration::from_millis(1900),
        "not before shutdown_delay: {closed_after:?}"
    );
    let status = s.wait_exit(Duration::from_secs(5)).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", s.log());
}

#[test]
fn drain_under_load_finishes_every_accepted_request() {
    // 24 requests of 0.4 s on 4 threads: about 2.4 s of work, most of it
    // still queued when SIGTERM arrives.
    let mut s = server()
        .args(["--threads=4", "--shutdown-delay=0", "behaviours:app"])
        .start();
    let addr = s.addr();
    let mut conns: Vec<Conn> = (0..24).map(|_| Conn::open(&s)).collect();
    for c in &mut conns {
        c.send_str("GET /sleep?0.4 HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    s.signal("TERM");
    assert!(
        eventually(Duration::from_secs(1), || refuses_connections(&addr)),
        "new connections are refused once the listeners close"
    );
    assert!(
        signalled.elapsed() < Duration::from_millis(1500),
        "refused while requests are still in flight"
    );
    for (i, c) in conns.iter_mut().enumerate() {
        let r = c.response();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.header("connection"), Some("close"), "request {i}");
    }
    let status = s.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", s.log());
}

#[test]
fn graceful_timeout_cuts_what_is_left_and_exits_1() {
    let mut s = server()
        .args([
            "--shutdown-delay=0",
            "--graceful-timeout=1",
            "behaviours:app",
        ])
        .start();
    let _in_flight = sleeping(&s, "5");
    std::thread::sleep(Duration::from_millis(200));
    let signalled = Instant::now();
    s.signal("TERM");
    let status = s.wait_exit(Duration::from_secs(4)).expect("exits");
    assert_eq!(status.code(), Some(1));
    assert!(signalled.elapsed() < Duration::from_secs(3));
    let log = s.log();
    assert!(
        log.contains("graceful_timeout passed: exiting with 1 request(s) cut"),
        "{log}"
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    for delay in ["0", "30"] {
        // Once during the drain, once during shutdown_delay.
        let mut s = server()
            .args([&format!("--shutdown-delay={delay}"), "behaviours:app"])
            .start();
        let _in_flight = sleeping(&s, "5");
        std::thread::sleep(Duration::from_millis(200));
        s.signal("TERM");
        std::thread::sleep(Duration::from_millis(300));
        s.signal("INT");
        let status = s.wait_exit(Duration::from_secs(3)).expect("exits");
        assert_eq!(status.code(), Some(1), "delay {delay}");
        assert!(
            s.log()
                .contains("SIGINT received again: exiting with 1 request(s) cut"),
            "{}",
            s.log()
        );
    }
}

#[test]
fn sigquit_exits_at_once() {
    let mut s = server().arg("behaviours:app").start();
    let _in_flight = sleeping(&s, "5");
    std::thread::sleep(Duration::from_millis(200));
    s.signal("QUIT");
    let status = s.wait_exit(Duration::from_secs(3)).expect("exits");
    assert_eq!(status.code(), Some(1));
    assert!(s.log().contains("SIGQUIT received"), "{}", s.log());
}

#[test]
fn a_unix_socket_file_is_removed_when_the_listeners_close() {
    let dir = common::scratch_dir("drain-unix");
    let path = dir.path().join("m.sock");
    let mut s = server()
        .no_listen()
        .args([
            format!("--unix-socket={}", path.display()),
            "--shutdown-delay=0".into(),
            "behaviours:app".into(),
        ])
        .start();
    assert!(path.exists());
    s.signal("TERM");
    let status = s.wait_exit(Duration::from_secs(5)).expect("exits");
    assert_eq!(status.code(), Some(0));
    assert!(!path.exists(), "socket file removed");
}

// ------------------------------------------------------- connection limit

#[test]
fn at_the_limit_the_idlest_keep_alive_connection_makes_room() {
    let s = server()
        .args(["--connection-limit=2", "behaviours:app"])
        .start();
    let mut oldest = Conn::open(&s);
    oldest.send_str(GET_LIST);
    assert_eq!(oldest.response().status, 200);
    std::thread::sleep(Duration::from_millis(50));
    let mut recent = Conn::open(&s);
    recent.send_str(GET_LIST);
    assert_eq!(recent.response().status, 200);

    // Both slots hold idle keep-alive connections; a newcomer is served
    // at once, and the longest-idle connection is the one closed.
    let started = Instant::now();
    let mut newcomer = Conn::open(&s);
    newcomer.send_str(GET_LIST);
    assert_eq!(newcomer.response().status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(oldest.is_closed(), "the idlest connection was closed");
    recent.send_str(GET_LIST);
    assert_eq!(recent.response().status, 200, "the other one still serves");
}

#[test]
fn at_the_limit_with_every_connection_busy_newcomers_wait_in_the_backlog() {
    let s = server()
        .args(["--connection-limit=1", "behaviours:app"])
        .start();
    let mut busy = sleeping(&s, "1");
    std::thread::sleep(Duration::from_millis(100));
    let mut waiting = Conn::open(&s);
    waiting.send_str(GET_LIST);
    waiting
        .reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    assert!(
        waiting.try_response().is_err(),
        "not served while the only slot is busy"
    );
    waiting
        .reader
        .get_ref()
        .set_read_timeout(Some(common::IO_TIMEOUT))
        .expect("timeout");
    // The busy connection finishes and stays open, idle: the waiting one
    // takes its slot rather than waiting for channel_timeout.
    assert_eq!(busy.response().text(), "slept 1.0\n");
    let started = Instant::now();
    assert_eq!(waiting.response().text(), "one,two");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(busy.is_closed(), "evicted once idle");
}

#[test]
fn the_backlog_setting_reaches_the_listen_call() {
    let s = server().args(["--backlog=77", "behaviours:app"]).start();
    let port = s.addr().rsplit(':').next().expect("port").to_owned();
    // For a listening socket, `ss` shows the backlog as Send-Q.
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) is installed by scripts/test.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    let send_q: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(send_q, ["77"], "{text}");
}

// --------------------------------------------------------------- timeouts

#[test]
fn a_stalled_upload_gets_408_after_body_timeout() {
    let s = server()
        .args(["--limits-body-timeout=1", "behaviours:app"])
        .start();
    let mut c = Conn::open(&s);
    c.send_str("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\npart");
    let started = Instant::now();
    let r = c.response();
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(r.text().contains("body_timeout"), "{}", r.text());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(c.is_closed(), "framing is in doubt: closed");
}

#[test]
fn a_slow_but_steady_upload_is_not_cut_by_body_timeout() {
    let s = server()
        .args(["--limits-body-timeout=1", "behaviours:app"])
        .start();
    let mut c = Conn::open(&s);
    c.send_str("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n");
    for piece in ["ab", "cd", "ef"] {
        std::thread::sleep(Duration::from_millis(600));
        c.send_str(piece);
    }
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "abcdef");
}

#[test]
fn the_app_gets_504_after_request_timeout_and_the_server_goes_on() {
    let s = server()
        .args([
            "--threads=1",
            "--limits-request-timeout=1",
            "behaviours:app",
        ])
        .start();
    let started = Instant::now();
    let r = s.get("/sleep?2");
    assert_eq!(r.status, 504, "{}", r.text());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1900),
        "{took:?}"
    );
    assert!(
        s.wait_for_log(
            "got no response within request_timeout",
            Duration::from_secs(2)
        ),
        "{}",
        s.log()
    );
    // The only Python thread finishes the abandoned call, then serves again.
    assert_eq!(s.get("/list").text(), "one,two");
}

#[test]
fn request_timeout_also_covers_time_spent_queued() {
    let s = server()
        .args([
            "--threads=1",
            "--limits-request-timeout=1",
            "behaviours:app",
        ])
        .start();
    let mut running = sleeping(&s, "0.8");
    std::thread::sleep(Duration::from_millis(100));
    let mut queued = sleeping(&s, "0.8");
    assert_eq!(running.response().status, 200);
    assert_eq!(queued.response().status, 504);
}

#[test]
fn idle_keep_alive_is_closed_after_channel_timeout_but_a_slow_app_is_not() {
    let s = server()
        .args(["--channel-timeout=1", "behaviours:app"])
        .start();
    let mut c = Conn::open(&s);
    // The app takes twice channel_timeout: Waitress does not time out a
    // connection waiting on the app, neither does maitred.
    c.send_str("GET /sleep?2 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response().status, 200);
    let idle_from = Instant::now();
    assert!(c.is_closed());
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(3),
        "{idle:?}"
    );
}

#[test]
fn slowloris_connections_are_cut_while_normal_requests_go_on() {
    const ATTACKERS: usize = 300;
    let s = server()
        .args([
            "--limits-header-timeout=2",
            "--connection-limit=100",
            "behaviours:app",
        ])
        .start();
    let addr = s.addr();
    let started = Instant::now();
    let cut = Arc::new(AtomicUsize::new(0));
    let ready = Arc::new(Barrier::new(2));
    let attack = {
        let (addr, cut, ready) = (addr.clone(), Arc::clone(&cut), Arc::clone(&ready));
        std::thread::spawn(move || {
            let head = b"GET /list HTTP/1.1\r\nHost: t\r\nX-Slow: ";
            let mut socks: Vec<(TcpStream, usize)> = (0..ATTACKERS)
                .map(|_| {
                    let s = TcpStream::connect(&addr).expect("attacker connects");
                    s.set_nonblocking(true).expect("nonblocking");
                    (s, 0)
                })
                .collect();
            ready.wait();
            // One byte per connection every 200 ms, for at most 6 s: far
            // longer than header_timeout, each byte well within it.
            let stop = Instant::now() + Duration::from_secs(6);
            while !socks.is_empty() && Instant::now() < stop {
                socks.retain_mut(|(sock, sent)| {
                    let byte = head.get(*sent).copied().unwrap_or(b'a');
                    let mut probe = [0u8; 64];
                    let closed = match sock.read(&mut probe) {
                        Ok(_) => true,
                        Err(e) => e.kind() != ErrorKind::WouldBlock,
                    } || sock.write(&[byte]).is_err();
                    *sent += 1;
                    if closed {
                        cut.fetch_add(1, Ordering::Relaxed);
                    }
                    !closed
                });
                std::thread::sleep(Duration::from_millis(200));
            }
            socks.len()
        })
    };
    ready.wait();
    // Meanwhile ordinary clients, each on a new connection, keep getting
    // answers promptly.
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let begun = Instant::now();
        let r = s.get("/list");
        assert_eq!(r.status, 200);
        assert!(
            begun.elapsed() < Duration::from_secs(1),
            "a normal request waited {:?} behind the attack",
            begun.elapsed()
        );
        served += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let survivors = attack.join().expect("attacker thread");
    assert_eq!(survivors, 0, "every trickling connection was cut");
    assert_eq!(cut.load(Ordering::Relaxed), ATTACKERS);
    assert!(served >= 20, "only {served} normal requests served");
}

// ------------------------------------------------------------------ queue

/// With `--threads=1 --limits-max-queue=1`: a request of `seconds` on the
/// only thread and a short one waiting in the queue, in that order.
fn saturate(s: &common::Server, seconds: &str) -> (Conn, Conn) {
    let running = sleeping(s, seconds);
    std::thread::sleep(Duration::from_millis(200));
    let queued = sleeping(s, "0.1");
    std::thread::sleep(Duration::from_millis(200));
    (running, queued)
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let s = server()
        .args(["--threads=1", "--limits-max-queue=1", "behaviours:app"])
        .start();
    let (mut running, mut queued) = saturate(&s, "1");

    let started = Instant::now();
    let r = s.get("/list");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(started.elapsed() < Duration::from_millis(500), "at once");

    assert_eq!(running.response().status, 200);
    assert_eq!(queued.response().status, 200);
    assert_eq!(s.get("/list").status, 200, "room again");
}

// ----------------------------------------------------------------- probes

#[test]
fn probes_answer_apart_from_the_app_and_its_queue() {
    let s = server()
        .args(["--threads=1", "--limits-max-queue=1", "behaviours:app"])
        .start();
    assert_eq!(s.admin_get("/livez"), (200, "ok\n".to_owned()));
    assert_eq!(s.admin_get("/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(s.admin_get("/readyz"), (200, "ready\n".to_owned()));
    assert_eq!(s.admin_get("/list").0, 404, "the app is not on it");
    assert_ne!(s.admin_addr(), s.addr());

    // The only thread busy and the queue full: probes still answer at once.
    let (mut running, mut queued) = saturate(&s, "1.5");
    let started = Instant::now();
    assert_eq!(s.admin_get("/livez").0, 200);
    assert_eq!(s.admin_get("/readyz").0, 200);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(running.response().status, 200);
    assert_eq!(queued.response().status, 200);
}

#[test]
fn livez_fails_while_the_interpreter_is_wedged() {
    let s = server().arg("behaviours:app").start();
    let mut c = Conn::open(&s);
    // Holds the GIL for 4 s, longer than the probe's 2 s allowance.
    c.send_str("GET /hold-gil?4 HTTP/1.1\r\nHost: t\r\n\r\n");
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = s.admin_get("/livez");
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("stuck:"), "{body}");
    assert_eq!(s.admin_get("/readyz").0, 200, "readiness is another matter");
    assert_eq!(c.response().status, 200);
    assert_eq!(s.admin_get("/livez").0, 200, "alive again");
}

#[test]
fn an_empty_admin_listen_disables_the_admin_listener() {
    let s = server().args(["--admin-listen=", "behaviours:app"]).start();
    assert!(!s.log().contains("Admin listener"), "{}", s.log());
    assert_eq!(s.get("/list").status, 200);
}

// ------------------------------------------------------ socket activation

fn activated(kind: &str) -> common::ServerBuilder {
    let wrapper = common::apps_dir().join("socket_activation.py");
    server().no_listen().launched_by([
        env!("BUILD_PYTHON_EXECUTABLE").to_owned(),
        wrapper.display().to_string(),
        kind.to_owned(),
    ])
}

#[test]
fn systemd_socket_activation_serves_the_inherited_tcp_socket() {
    let mut s = activated("tcp")
        // Ignored in favour of the inherited socket, as with gunicorn.
        .args([
            "--listen=127.0.0.1:1",
            "--shutdown-delay=0",
            "behaviours:app",
        ])
        .start();
    assert_eq!(s.urls().len(), 1, "{}", s.log());
    assert_ne!(s.addr(), "127.0.0.1:1");
    assert_eq!(s.get("/list").text(), "one,two");
    let python = s.get("/python").json();
    assert_eq!(
        python["listen_fds"],
        serde_json::Value::Null,
        "not left for the app"
    );
    s.signal("TERM");
    assert_eq!(
        s.wait_exit(Duration::from_secs(5)).and_then(|x| x.code()),
        Some(0)
    );
}

#[test]
fn systemd_socket_activation_keeps_the_unix_socket_file_it_does_not_own() {
    let dir = common::scratch_dir("activated-unix");
    let path = dir.path().join("a.sock");
    let mut s = activated(&format!("unix:{}", path.display()))
        .args(["--shutdown-delay=0", "behaviours:app"])
        .start();
    assert_eq!(s.urls(), [format!("http://unix:{}", path.display())]);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    stream
        .write_all(b"GET /list HTTP/1.0\r\n\r\n")
        .expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    assert!(String::from_utf8_lossy(&raw).ends_with("one,two"));
    s.signal("TERM");
    assert_eq!(
        s.wait_exit(Duration::from_secs(5)).and_then(|x| x.code()),
        Some(0)
    );
    assert!(path.exists(), "systemd's socket file is left alone");
}

// -------------------------------------------------------------- listeners

#[test]
fn a_star_listen_serves_ipv4_and_ipv6_on_one_port() {
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let s = server()
        .no_listen()
        .listeners(if ipv6 { 2 } else { 1 })
        .args([format!("--listen=*:{port}"), "behaviours:app".into()])
        .start();
    let mut expected = vec![format!("http://0.0.0.0:{port}")];
    let mut targets = vec![format!("127.0.0.1:{port}")];
    if ipv6 {
        // An IPv6-only socket beside the IPv4 one, as Waitress binds them.
        expected.push(format!("http://[::]:{port}"));
        targets.push(format!("[::1]:{port}"));
    }
    assert_eq!(s.urls(), expected.as_slice());
    for target in targets {
        let mut stream = TcpStream::connect(&target).expect("connect");
        stream
            .write_all(b"GET /list HTTP/1.0\r\n\r\n")
            .expect("send");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read");
        assert!(
            String::from_utf8_lossy(&raw).ends_with("one,two"),
            "{target}"
        );
    }
}
