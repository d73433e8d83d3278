//! `workers = N`: several worker processes behind a supervisor, against
//! the real binary. Connections are spread over the workers, one scrape
//! covers them all, a worker that dies is replaced without counters going
//! backwards, an app that does not import stops start-up, and SIGTERM
//! drains every worker.

mod common;

use std::collections::BTreeSet;
use std::io::{BufReader, Write};
use std::time::{Duration, Instant};

use common::{read_response, server};

fn value(scrape: &str, series: &str) -> f64 {
    common::metric_value(scrape, series).unwrap_or_else(|| panic!("no {series} in\n{scrape}"))
}

const OK_GETS: &str = "http_server_request_duration_seconds_count{http_request_method=\"GET\",http_response_status_code=\"200\",network_protocol_version=\"1.1\",url_scheme=\"http\"}";

/// The pids of the workers, from their "is ready" lines.
fn worker_pids(s: &common::Server) -> Vec<u32> {
    s.log()
        .lines()
        .filter(|l| l.contains(") is ready"))
        .filter_map(|l| l.split("(pid ").nth(1)?.split(')').next()?.parse().ok())
        .collect()
}

fn pid_serving(s: &common::Server) -> u32 {
    s.get("/pid").text().parse().expect("a pid")
}

#[test]
fn workers_share_the_listeners_and_scrape_as_one() {
    let s = server()
        .args(["--workers=2", "--threads=1", "behaviours:app"])
        .start();
    assert!(
        s.log().contains("supervising 2 worker processes"),
        "{}",
        s.log()
    );
    let workers: BTreeSet<u32> = worker_pids(&s).into_iter().collect();
    assert_eq!(workers.len(), 2, "{}", s.log());
    assert!(!workers.contains(&s.pid()), "the supervisor runs no app");
    // Connections land on both workers (the kernel spreads accepts; a few
    // dozen connections reach both in practice).
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 2 && Instant::now() < deadline {
        seen.insert(pid_serving(&s));
    }
    assert_eq!(seen, workers, "both workers serve");
    for _ in 0..10 {
        assert_eq!(s.get("/environ").status, 200);
    }
    std::thread::sleep(Duration::from_millis(100));
    let m = s.scrape();
    let gets = value(&m, OK_GETS);
    assert!(gets >= 12.0, "{gets}");
    assert_eq!(value(&m, "maitred_workers"), 2.0);
    assert_eq!(value(&m, "maitred_python_threads"), 2.0);
    assert_eq!(value(&m, "maitred_worker_restarts_total"), 0.0);
    // One build_info series with value 1, not one per worker.
    let build: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("maitred_build_info{"))
        .collect();
    assert_eq!(build.len(), 1, "{build:?}");
    assert!(build[0].ends_with(" 1"), "{build:?}");
    assert_eq!(
        m.matches("# TYPE http_server_request_duration_seconds histogram")
            .count(),
        1
    );
    // Probes answer for the pod.
    assert_eq!(s.admin_get("/livez").0, 200);
    let (status, text) = s.admin_get("/readyz");
    assert_eq!((status, text.trim()), (200, "ready (2 of 2 workers)"));
}

#[test]
fn a_worker_that_dies_is_replaced_and_counters_never_go_backwards() {
    let s = server()
        .args(["--workers=2", "--threads=1", "behaviours:app"])
        .start();
    for _ in 0..20 {
        assert_eq!(s.get("/environ").status, 200);
    }
    // Let the supervisor's periodic read (every 5 s) see the counts.
    std::thread::sleep(Duration::from_millis(5500));
    let before = value(&s.scrape(), OK_GETS);
    assert!(before >= 20.0, "{before}");
    // A worker dies mid-request, as on a segfault: the client sees the
    // connection close, the supervisor restarts the worker.
    let mut c = s.connect();
    c.write_all(b"GET /crash HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    let mut r = BufReader::new(c);
    assert!(
        read_response(&mut r).is_err(),
        "no response from a dead worker"
    );
    assert!(
        s.wait_for_log("exited (exit status 70)", Duration::from_secs(10)),
        "{}",
        s.log()
    );
    assert!(
        s.wait_for_log("restarting it in", Duration::from_secs(1)),
        "{}",
        s.log()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while worker_pids(&s).len() < 3 {
        assert!(Instant::now() < deadline, "no replacement:\n{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = s.scrape();
    assert!(value(&m, OK_GETS) >= before, "a counter went backwards");
    assert_eq!(value(&m, "maitred_worker_restarts_total"), 1.0);
    assert_eq!(value(&m, "maitred_workers"), 2.0);
    // And the pod keeps serving.
    for _ in 0..10 {
        assert_eq!(s.get("/environ").status, 200);
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(value(&s.scrape(), OK_GETS) >= before + 10.0);
}

#[test]
fn an_app_that_does_not_import_stops_startup_with_its_traceback() {
    let out = server()
        .args(["--workers=2", "no_such_module_here:app"])
        .run();
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("ModuleNotFoundError"), "{}", out.stderr);
    assert!(
        out.stderr.contains("exited during start-up"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_failed_startup_removes_the_supervisors_socket_file() {
    let dir = common::scratch_dir("workers-sock");
    let sock = dir.path().join("app.sock");
    let out = server()
        .no_listen()
        .args([
            "--workers=2".to_owned(),
            format!("--unix-socket={}", sock.display()),
            "no_such_module_here:app".to_owned(),
        ])
        .run();
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(!sock.exists(), "the socket file was left behind");
}

#[test]
fn a_broken_worker_hand_over_stops_instead_of_starting_a_second_supervisor() {
    let out = server()
        .env("_MAITRED_WORKER", "0")
        .args(["--workers=2", "behaviours:app"])
        .run();
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("_MAITRED_LISTENERS is missing"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("workers = N"),
        "says what to do: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("supervising"),
        "it went on as a supervisor: {}",
        out.stderr
    );
}

#[test]
fn sigterm_drains_every_worker() {
    let mut s = server()
        .args([
            "--workers=2",
            "--threads=1",
            "--shutdown-delay=1s",
            "behaviours:app",
        ])
        .start();
    let addr = s.addr();
    // A request in flight on each worker when the signal comes.
    let inflight: Vec<_> = (0..2)
        .map(|_| {
            let mut c = s.connect();
            c.write_all(b"GET /sleep?2 HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("send");
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    s.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.admin_get("/readyz").0, 503, "readiness fails at once");
    for c in inflight {
        let mut r = BufReader::new(c);
        let resp = read_response(&mut r).expect("in-flight request finishes");
        assert_eq!(resp.status, 200);
    }
    let status = s.wait_exit(Duration::from_secs(20)).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(s.log().contains("every worker has exited"), "{}", s.log());
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "the listener is closed"
    );
}

#[test]
fn a_stop_signal_during_startup_is_not_held_until_the_workers_are_ready() {
    let mut child = common::maitred_command()
        .args([
            "--listen=127.0.0.1:0",
            "--admin-listen=127.0.0.1:0",
            "--workers=2",
            "slow_import:app",
        ])
        .current_dir(common::apps_dir())
        .env("SLOW_IMPORT_SECONDS", "60")
        .env("NO_COLOR", "1")
        .env_remove("VIRTUAL_ENV")
        .env_remove("MAITRED_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn maitred");
    std::thread::sleep(Duration::from_millis(1500));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exited = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(exited.is_some(), "SIGTERM during start-up was ignored");
}
