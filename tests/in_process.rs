//! The server run in-process through the library: the real embedded Python
//! and real sockets on 127.0.0.1 port 0, with stop requests sent over a
//! channel instead of signals, and tokio's paused clock where the waiting
//! is the point (the drain's delays pass in no real time).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use maitred::config::{Plan, Settings};
use maitred::gateway::service::Shared;
use maitred::listen::{self, Bound};
use maitred::process;
use maitred::server;
use maitred::signals::{StopRequest, StopRequests};
use pyo3::{Py, PyAny, Python};

/// A plan on 127.0.0.1 port 0, without the admin listener, serving the
/// demo page; `adjust` changes the settings first.
fn plan(adjust: impl FnOnce(&mut Settings)) -> Plan {
    let mut settings = Settings {
        listen: vec!["127.0.0.1:0".into()],
        admin_listen: Vec::new(),
        threads: 1,
        ..Settings::default()
    };
    adjust(&mut settings);
    Plan::build(&settings).expect("a valid plan")
}

/// What a server needs, over the one interpreter a process can have.
fn shared(plan: &Plan) -> Arc<Shared> {
    static APP: OnceLock<Py<PyAny>> = OnceLock::new();
    let app = APP.get_or_init(|| {
        process::start_python(plan, &maitred::interpreter::Startup::embedded())
            .expect("Python and the demo app")
    });
    let app = Python::attach(|py| app.clone_ref(py));
    Arc::new(process::shared(plan, app).expect("the Python threads"))
}

/// The listener the plan names, and its address.
fn bind(plan: &Plan) -> (Vec<Bound>, SocketAddr) {
    let bound = listen::bind(&plan.listen, Vec::new()).expect("bind");
    let addr = match &bound[..] {
        [Bound::Tcp(_, addr)] => *addr,
        _ => panic!("one TCP listener expected"),
    };
    (bound, addr)
}

fn get(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
}

#[test]
fn serves_and_drains_when_asked_to_stop() {
    let plan = plan(|s| s.shutdown_delay = maitred::config::values::Seconds::from_secs(0));
    let shared = shared(&plan);
    let (listeners, addr) = bind(&plan);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (stop, stops) = StopRequests::channel();
    let served = runtime.spawn({
        let shared = Arc::clone(&shared);
        let plan = plan.clone();
        async move { server::serve(listeners, shared, &plan.connections, &plan.drain, stops).await }
    });
    let response = get(addr);
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("maitred"), "{response}");
    assert!(shared.health.ready.load(Ordering::Acquire));

    stop.send(StopRequest::Term).expect("the server listens");
    let code = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(15), served).await })
        .expect("drained in time")
        .expect("the task ran")
        .expect("no I/O error");
    assert_eq!(code, 0, "nothing was in flight");
    assert!(!shared.health.ready.load(Ordering::Acquire));
    assert!(
        TcpStream::connect(addr).is_err(),
        "the listener is closed after the drain"
    );
}

/// Runs a server with paused time, sends `stops` once it is ready, and
/// returns its exit code and how much (virtual) time the drain took.
fn drain_in_paused_time(plan: &Plan, stops_to_send: &[StopRequest]) -> (u8, Duration) {
    let shared = shared(plan);
    let (listeners, _) = bind(plan);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (stop, stops) = StopRequests::channel();
        let serving = {
            let shared = Arc::clone(&shared);
            let plan = plan.clone();
            tokio::spawn(async move {
                server::serve(listeners, shared, &plan.connections, &plan.drain, stops).await
            })
        };
        while !shared.health.ready.load(Ordering::Acquire) {
            tokio::task::yield_now().await;
        }
        let started = tokio::time::Instant::now();
        for s in stops_to_send {
            stop.send(*s).expect("the server listens");
        }
        let code = serving.await.expect("ran").expect("no I/O error");
        (code, started.elapsed())
    })
}

#[test]
fn with_no_connection_the_drain_takes_shutdown_delay_and_no_more() {
    let hour = maitred::config::values::Seconds::from_secs(3600);
    let plan = plan(|s| {
        s.shutdown_delay = hour;
        s.graceful_timeout = hour;
    });
    let (code, took) = drain_in_paused_time(&plan, &[StopRequest::Term]);
    assert_eq!(code, 0);
    // The listeners stay open for shutdown_delay; with nothing open the
    // wait for connections ends at once rather than after graceful_timeout.
    assert!(
        took >= Duration::from_secs(3600) && took < Duration::from_secs(3601),
        "{took:?}"
    );
}

#[test]
fn a_second_stop_request_or_sigquit_ends_the_drain_at_once() {
    let hour = maitred::config::values::Seconds::from_secs(3600);
    let plan = plan(|s| s.shutdown_delay = hour);
    let (code, took) = drain_in_paused_time(&plan, &[StopRequest::Interrupt, StopRequest::Term]);
    assert_eq!((code, took), (1, Duration::ZERO));
    let (code, took) = drain_in_paused_time(&plan, &[StopRequest::Quit]);
    assert_eq!((code, took), (1, Duration::ZERO));
}

/// Sends `request` over an in-memory connection and returns everything
/// the server wrote before it closed.
fn exchange_in_memory(plan: &Plan, request: &'static [u8]) -> String {
    let shared = shared(plan);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server_side) = tokio::io::duplex(64 * 1024);
        let peer = maitred::wsgi::environ::Peer::Unix;
        let serving = tokio::spawn({
            let connections = plan.connections;
            async move { server::serve_stream(server_side, peer, shared, &connections).await }
        });
        client.write_all(request).await.expect("send");
        client.shutdown().await.expect("half-close");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(15), client.read_to_end(&mut out))
            .await
            .expect("the server closes")
            .expect("read");
        serving.await.expect("served");
        String::from_utf8_lossy(&out).into_owned()
    })
}

#[test]
fn an_in_memory_connection_gets_the_framing_refusal_after_the_valid_request() {
    let plan = plan(|_| {});
    let out = exchange_in_memory(
        &plan,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\nHost: a\n\n",
    );
    let first = out
        .find("HTTP/1.1 200 OK")
        .expect("the valid request is served");
    let second = out.find("HTTP/1.1 400 Bad Request").expect("then refused");
    assert!(first < second, "{out}");
    assert!(
        out.ends_with("Bare CR or LF found in HTTP message\r\n\r\n(generated by maitred)"),
        "{out}"
    );
}
