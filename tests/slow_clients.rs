//! A slow client must never hold a Python thread: uploads are received
//! before the app is called, and downloads are buffered up to the
//! high-water mark. Each test runs with one Python thread, so any thread
//! held by a slow client would stall every other request.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{Conn, server};

fn one_thread(extra: &[&str]) -> common::Server {
    server()
        .arg("--threads=1")
        .args(extra.iter().copied())
        .arg("behaviours:app")
        .start()
}

#[test]
fn a_stalled_upload_does_not_hold_the_python_thread() {
    let s = one_thread(&[]);
    let mut uploader = Conn::open(&s);
    uploader.send_str("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n");
    uploader.send(&[b'u'; 1000]);

    let started = Instant::now();
    assert_eq!(s.get("/list").text(), "one,two");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served while the upload stalls"
    );

    uploader.send(&[b'u'; 99_000]);
    let r = uploader.response();
    assert_eq!(r.body.len(), 100_000);
}

#[test]
fn a_client_that_does_not_read_does_not_hold_the_python_thread() {
    let s = one_thread(&[]);
    // 8 MB is under the 16 MiB default high-water mark: the app finishes
    // producing it although the client reads nothing yet.
    let mut reader = s.connect();
    reader
        .write_all(b"GET /big?8000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    assert!(
        s.wait_event("closed:big", Duration::from_secs(10)),
        "the app never finished: {}",
        s.log()
    );
    assert_eq!(s.get("/list").text(), "one,two");

    let mut buffered = std::io::BufReader::new(reader);
    let r = common::read_response(&mut buffered).expect("response");
    assert_eq!(r.body.len(), 8_000_000);
}

#[test]
fn the_high_water_mark_bounds_what_a_slow_client_can_pile_up() {
    // With a small mark the app thread waits (without the GIL) for the
    // client, keeping memory bounded; it resumes as the client reads.
    let s = server()
        .args([
            "--threads=2",
            "--outbuf-high-watermark=256KiB",
            "behaviours:app",
        ])
        .start();
    let mut reader = s.connect();
    reader
        .write_all(b"GET /big?8000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !s.events().iter().any(|e| e == "big-done"),
        "the producer must be held back by the mark"
    );
    // The other thread still serves, and the waiting one holds no GIL.
    assert_eq!(s.get("/list").text(), "one,two");

    let mut buffered = std::io::BufReader::new(reader);
    let r = common::read_response(&mut buffered).expect("response");
    assert_eq!(r.body.len(), 8_000_000);
    // Once the declared length is out, the app is stopped and closed (its
    // generator need not run to exhaustion).
    assert!(s.wait_event("closed:big", Duration::from_secs(5)));
    assert!(!s.log().contains("Client disconnected"), "{}", s.log());
}

#[test]
fn python_threads_run_requests_concurrently() {
    // Waitress's SleepyThreadTests: a sleeping request does not delay a
    // quick one on another connection.
    let s = server().args(["--threads=2", "behaviours:app"]).start();
    let mut sleepy = Conn::open(&s);
    sleepy.send_str("GET /sleep?1.0 HTTP/1.1\r\nHost: t\r\n\r\n");
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    assert_eq!(s.get("/list").text(), "one,two");
    assert!(started.elapsed() < Duration::from_millis(800));
    assert_eq!(sleepy.response().text(), "slept 1.0\n");
}

/// Deleted temporary files the server process holds open.
fn open_temp_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|target| target.to_string_lossy().ends_with("(deleted)"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn pending_output_past_outbuf_overflow_is_spooled_to_disk() {
    let s = server()
        .args(["--threads=1", "--outbuf-overflow=64KiB", "behaviours:app"])
        .start();
    let before = open_temp_files(s.pid());
    let mut reader = s.connect();
    reader
        .write_all(b"GET /big?8000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    assert!(
        s.wait_event("closed:big", Duration::from_secs(10)),
        "the app never finished"
    );
    assert_eq!(
        open_temp_files(s.pid()),
        before + 1,
        "one spool file for the stalled response"
    );
    let mut buffered = std::io::BufReader::new(reader);
    let r = common::read_response(&mut buffered).expect("response");
    assert_eq!(r.body.len(), 8_000_000);
    assert!(r.body.iter().all(|&b| b == b'x'));
}
