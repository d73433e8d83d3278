//! Faults from the application, under load, against the real binary: an
//! app that raises, one that blocks forever past `request_timeout`, a
//! response iterable whose `close()` raises, and an app that ends its
//! worker process with `os._exit()`. In each, a few clients send ordinary
//! requests in a loop while the faulty ones happen; every ordinary request
//! must get its 200 (with `os._exit`, only those in flight on the dying
//! worker may fail), the faulty ones get their 500 or 504, and the
//! metrics count each case. The app is `tests/apps/faults.py`.

mod common;

use std::collections::BTreeSet;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Conn, IO_TIMEOUT, Server, eventually, read_response, server};

const THREADS: &str = "maitred_python_threads";
const STUCK: &str = "maitred_python_threads_stuck";
const REPLACEMENTS: &str = "maitred_python_thread_replacements_total";
const TIMED_OUT: &str =
    "maitred_gateway_responses_total{http_response_status_code=\"504\",reason=\"request_timeout\"}";
const APP_ERRORS: &str =
    "maitred_gateway_responses_total{http_response_status_code=\"500\",reason=\"app_error\"}";

fn exceptions(type_name: &str) -> String {
    format!("maitred_app_exceptions_total{{exception_type=\"{type_name}\"}}")
}

/// Waits until every series has its value, or fails with the scrape.
fn settle(s: &Server, within: Duration, want: &[(&str, f64)]) {
    let mut last = String::new();
    let reached = eventually(within, || {
        last = s.scrape();
        want.iter()
            .all(|(series, v)| common::metric_value(&last, series) == Some(*v))
    });
    assert!(reached, "never reached {want:?}:\n{last}\n{}", s.log());
}

/// A client on one keep-alive connection, opening another when the
/// server closed it or the request failed.
#[derive(Default)]
struct Client {
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    /// One request: its status and body, or why no response came.
    fn get(&mut self, addr: &str, path: &str) -> Result<(u16, Vec<u8>), String> {
        let result = self.exchange(addr, path);
        if !matches!(&result, Ok((_, _, true))) {
            self.conn = None;
        }
        result.map(|(status, body, _)| (status, body))
    }

    fn exchange(&mut self, addr: &str, path: &str) -> Result<(u16, Vec<u8>, bool), String> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let c = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
                c.set_read_timeout(Some(IO_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                c.set_write_timeout(Some(IO_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                c.set_nodelay(true).map_err(|e| e.to_string())?;
                self.conn.insert(BufReader::new(c))
            }
        };
        // One write: a request in pieces would wait on delayed ACKs.
        let request = format!("GET {path} HTTP/1.1\r\nHost: faults\r\n\r\n");
        conn.get_mut()
            .write_all(request.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let r = read_response(conn).map_err(|e| format!("{e:?}"))?;
        let reusable = r.header("connection") != Some("close");
        Ok((r.status, r.body, reusable))
    }
}

/// What one ordinary request got, and when it was answered.
struct Outcome {
    at: Instant,
    result: Result<(u16, Vec<u8>), String>,
}

/// Pause between one client's requests: a steady load that leaves the
/// two cores of a CI machine to the server and the other tests.
const PACE: Duration = Duration::from_millis(2);

/// Clients sending `path` in a loop until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Vec<Outcome>>>,
}

impl Load {
    fn start(addr: &str, clients: usize, path: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let addr = addr.to_owned();
                std::thread::spawn(move || {
                    let mut client = Client::default();
                    let mut outcomes = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let result = client.get(&addr, path);
                        outcomes.push(Outcome {
                            at: Instant::now(),
                            result,
                        });
                        std::thread::sleep(PACE);
                    }
                    outcomes
                })
            })
            .collect();
        Load { stop, clients }
    }

    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        self.clients
            .into_iter()
            .flat_map(|c| c.join().expect("a load client"))
            .collect()
    }
}

/// Every ordinary request got 200 with `body`, and there were at least
/// `min` of them.
fn all_ok(outcomes: &[Outcome], body: &[u8], min: usize, s: &Server) {
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match &o.result {
            Ok((200, b)) if b == body => None,
            Ok((status, b)) => Some(format!("{status} {}", String::from_utf8_lossy(b))),
            Err(e) => Some(e.clone()),
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} ordinary requests failed: {:?}\n{}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)],
        s.log()
    );
    assert!(
        outcomes.len() >= min,
        "only {} ordinary requests",
        outcomes.len()
    );
}

/// Sends a request on its own connection without waiting for the answer.
fn send(s: &Server, path: &str) -> Conn {
    let mut c = Conn::open(s);
    c.send_str(&format!("GET {path} HTTP/1.1\r\nHost: faults\r\n\r\n"));
    c
}

/// Requests that have reached `/block` so far.
fn entered(s: &Server) -> u32 {
    let r = s.get("/entered");
    assert_eq!(r.status, 200, "/entered: {}", r.text());
    r.text().parse().expect("a count")
}

#[test]
fn an_app_that_raises_gets_500s_and_other_requests_are_unaffected() {
    let s = server().args(["--threads=2", "faults:app"]).start();
    let load = Load::start(&s.addr(), 3, "/ok");
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let r = s.get("/raise");
        assert_eq!(r.status, 500, "raise {i}: {}", r.text());
        assert!(
            r.text().contains("unexpected internal server error"),
            "{}",
            r.text()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let outcomes = load.finish();
    all_ok(&outcomes, b"ok", 20, &s);
    settle(
        &s,
        Duration::from_secs(5),
        &[
            (&exceptions("faults.Boom"), 20.0),
            (APP_ERRORS, 20.0),
            (THREADS, 2.0),
        ],
    );
    assert!(s.log().contains("Exception while serving /raise"));
    assert_eq!(s.admin_get("/livez").0, 200);
}

#[test]
fn threads_stuck_past_request_timeout_are_replaced_and_the_pool_shrinks_back() {
    // Two threads, both blocked forever by the app, two seconds apart:
    // without replacements, every request after the second one would
    // wait for a thread that never comes, and get 504.
    let s = server()
        .args(["--threads=2", "--limits-request-timeout=3", "faults:app"])
        .start();
    let load = Load::start(&s.addr(), 3, "/ok");
    std::thread::sleep(Duration::from_millis(300));
    let mut a = send(&s, "/block?a");
    assert!(eventually(Duration::from_secs(10), || entered(&s) == 1));
    // Until the first blocked request is counted as stuck (3 s), one
    // thread serves everyone; then the blocked one is replaced. The
    // second blocks its thread meanwhile.
    std::thread::sleep(Duration::from_secs(2));
    // A thread is free for it: it enters the app at once (the 504 and the
    // stuck count below show it did).
    let mut b = send(&s, "/block?b");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(a.response().status, 504);
    assert_eq!(b.response().status, 504);
    // Both are stuck now; ordinary requests go on with the replacements.
    std::thread::sleep(Duration::from_secs(1));
    let outcomes = load.finish();
    all_ok(&outcomes, b"ok", 30, &s);
    settle(
        &s,
        Duration::from_secs(1),
        &[
            (STUCK, 2.0),
            (REPLACEMENTS, 2.0),
            (THREADS, 4.0),
            (TIMED_OUT, 2.0),
        ],
    );
    assert!(s.log().contains("counted as stuck"), "{}", s.log());
    assert_eq!(s.admin_get("/livez").0, 200, "replaced: not degraded");

    // The app lets go: the stuck threads leave, the pool is back to two.
    assert_eq!(s.get("/release?a").status, 200);
    assert_eq!(s.get("/release?b").status, 200);
    settle(
        &s,
        Duration::from_secs(10),
        &[(STUCK, 0.0), (THREADS, 2.0), (REPLACEMENTS, 2.0)],
    );
    assert!(s.log().contains("it exits"), "{}", s.log());
    for _ in 0..5 {
        assert_eq!(s.get("/ok").status, 200);
    }
    assert_eq!(s.admin_get("/livez").0, 200);
}

#[test]
fn past_the_cap_requests_wait_and_livez_fails_until_stuck_threads_return() {
    let s = server()
        .args(["--threads=1", "--limits-request-timeout=2", "faults:app"])
        .start();
    // The only thread is stuck, and replaced: requests are served.
    let mut a = send(&s, "/block?a");
    assert_eq!(a.response().status, 504);
    assert_eq!(s.get("/ok").status, 200, "{}", s.log());
    settle(
        &s,
        Duration::from_secs(5),
        &[(STUCK, 1.0), (THREADS, 2.0), (REPLACEMENTS, 1.0)],
    );
    assert_eq!(s.admin_get("/livez").0, 200);

    // The replacement gets stuck too (for 8 s): at twice `threads` no
    // more are started, requests wait as they would without
    // replacements, and /livez fails.
    let mut b = send(&s, "/block?b:8");
    assert_eq!(b.response().status, 504);
    settle(&s, Duration::from_secs(5), &[(STUCK, 2.0)]);
    let (status, text) = s.admin_get("/livez");
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("degraded"), "{text}");
    assert_eq!(s.get("/ok").status, 504, "no thread to run it");
    settle(
        &s,
        Duration::from_secs(1),
        &[(THREADS, 2.0), (REPLACEMENTS, 1.0), (TIMED_OUT, 3.0)],
    );

    // The second comes back after its 8 s: the pool is short, so it
    // rejoins; /livez passes again.
    settle(&s, Duration::from_secs(10), &[(STUCK, 1.0), (THREADS, 2.0)]);
    assert!(s.log().contains("it rejoins the pool"), "{}", s.log());
    assert_eq!(s.get("/ok").status, 200);
    assert_eq!(s.admin_get("/livez").0, 200);

    // The first is released: the pool has its thread without it.
    assert_eq!(s.get("/release?a").status, 200);
    settle(&s, Duration::from_secs(10), &[(STUCK, 0.0), (THREADS, 1.0)]);
    assert!(s.log().contains("it exits"), "{}", s.log());
    assert_eq!(s.get("/ok").status, 200);
    assert_eq!(s.admin_get("/livez").0, 200);
}

#[test]
fn a_close_that_raises_is_counted_and_leaves_the_response_and_the_thread_intact() {
    // One thread: every request after a failing close() runs on the same
    // thread, so it must have survived.
    let s = server().args(["--threads=1", "faults:app"]).start();
    let body = std::fs::read(common::apps_dir().join("faults.py")).expect("faults.py");
    let load = Load::start(&s.addr(), 2, "/ok");
    std::thread::sleep(Duration::from_millis(300));
    for path in ["/close-raises", "/close-raises-file"] {
        for i in 0..10 {
            std::thread::sleep(Duration::from_millis(100));
            let r = s.get(path);
            assert_eq!(r.status, 200, "{path} {i}: {}", r.text());
            assert!(r.body == body, "{path} {i}: the body is not intact");
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let outcomes = load.finish();
    all_ok(&outcomes, b"ok", 20, &s);
    settle(
        &s,
        Duration::from_secs(5),
        &[
            (&exceptions("faults.CloseFault"), 20.0),
            (APP_ERRORS, 0.0),
            (THREADS, 1.0),
        ],
    );
    let log = s.log();
    assert!(
        log.contains("Exception in close() of the response to /close-raises"),
        "{log}"
    );
    assert!(
        log.contains("Exception in close() of the response to (file response)"),
        "{log}"
    );
    assert_eq!(s.admin_get("/livez").0, 200, "the thread is alive");
    assert_eq!(s.get("/ok").status, 200);
}

/// The pid in a `/pid` answer.
fn pid_of(o: &Outcome) -> Option<u32> {
    match &o.result {
        Ok((200, body)) => String::from_utf8_lossy(body).parse().ok(),
        _ => None,
    }
}

#[test]
fn a_worker_that_calls_os_exit_is_replaced_while_the_other_keeps_serving() {
    let s = server()
        .args(["--workers=2", "--threads=2", "faults:app"])
        .start();
    let pid = |s: &Server| -> u32 { s.get("/pid").text().parse().expect("a pid") };
    let mut workers = BTreeSet::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            workers.insert(pid(&s));
            workers.len() == 2
        }),
        "both workers serve"
    );
    const CLIENTS: usize = 4;
    let load = Load::start(&s.addr(), CLIENTS, "/pid");
    std::thread::sleep(Duration::from_millis(500));
    // The app ends its worker in mid-request: that request gets no
    // response.
    let exited_at = Instant::now();
    let mut dying = send(&s, "/exit");
    assert!(
        dying.try_response().is_err(),
        "a response from a dead worker"
    );
    assert!(
        s.wait_for_log("exited (exit status 3)", Duration::from_secs(10)),
        "{}",
        s.log()
    );
    let dead: u32 = s
        .log()
        .lines()
        .find(|l| l.contains("exited (exit status 3)"))
        .and_then(|l| l.split("(pid ").nth(1)?.split(')').next()?.parse().ok())
        .expect("the dead worker's pid");
    assert!(workers.contains(&dead), "{dead} {workers:?}");
    let survivor = workers.iter().copied().find(|p| *p != dead);
    let survivor = survivor.expect("the other worker");
    // The supervisor starts another, which serves from the same listeners.
    let mut replaced_at = None;
    assert!(
        eventually(Duration::from_secs(20), || {
            let p = pid(&s);
            replaced_at = Some(Instant::now());
            !workers.contains(&p)
        }),
        "no replacement:\n{}",
        s.log()
    );
    let replaced_at = replaced_at.expect("replaced");
    std::thread::sleep(Duration::from_millis(500));
    let outcomes = load.finish();

    let failed: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| match &o.result {
            Ok((200, _)) => None,
            Ok((status, _)) => panic!("an ordinary request got {status}"),
            Err(e) => Some(e),
        })
        .collect();
    eprintln!(
        "os._exit: {} of {} ordinary requests failed: {failed:?}",
        failed.len(),
        outcomes.len()
    );
    // Each client has one request in flight at most: only those that
    // were on the dying worker can have failed.
    assert!(failed.len() <= CLIENTS, "{failed:?}\n{}", s.log());
    assert!(outcomes.len() - failed.len() >= 40, "{}", outcomes.len());
    // The other worker served while the dead one was being replaced.
    let meanwhile = outcomes
        .iter()
        .filter(|o| o.at > exited_at && o.at < replaced_at && pid_of(o) == Some(survivor))
        .count();
    assert!(meanwhile > 0, "the other worker served nothing meanwhile");
    settle(
        &s,
        Duration::from_secs(5),
        &[
            ("maitred_worker_restarts_total", 1.0),
            ("maitred_workers", 2.0),
        ],
    );
    assert_eq!(s.admin_get("/livez").0, 200);
}
