//! Shared harness for the integration tests: start the real `maitred`
//! binary on 127.0.0.1 (port 0), find its address in the "Serving on" log
//! line, and speak raw HTTP to it.
//!
//! Each test binary includes this module, so not every helper is used by
//! every binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary this crate builds.
pub const BIN: &str = env!("CARGO_BIN_EXE_maitred");

/// Names a virtualenv with maitred installed from a wheel: the tests then
/// run its `maitred` command (scripts/test-pythons.sh sets it, once per
/// CPython version).
pub const VENV_ENV: &str = "MAITRED_TEST_VENV";
/// Names another maitred binary to test (an older build, say).
pub const BIN_ENV: &str = "MAITRED_TEST_BIN";

/// The virtualenv of [`VENV_ENV`], if set.
pub fn installed_venv() -> Option<PathBuf> {
    std::env::var_os(VENV_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The `maitred` under test: [`BIN_ENV`], else the installed one of
/// [`VENV_ENV`], else this crate's binary.
pub fn bin() -> PathBuf {
    if let Some(other) = std::env::var_os(BIN_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(other);
    }
    match installed_venv() {
        Some(venv) => venv.join("bin").join("maitred"),
        None => PathBuf::from(BIN),
    }
}

/// `major.minor` of the Python the app runs on: the installed venv's, or
/// the one the binary embeds.
pub fn python_version() -> String {
    let Some(venv) = installed_venv() else {
        return "3.11".into();
    };
    let out = Command::new(venv.join("bin").join("python"))
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .expect("run the test venv's python");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A command for the `maitred` under test. The harness's own variables are
/// removed: maitred reads every `MAITRED_*` variable as a setting.
pub fn maitred_command() -> Command {
    let mut cmd = Command::new(bin());
    cmd.env_remove(VENV_ENV).env_remove(BIN_ENV);
    cmd
}

/// How long a server gets to start (Python import included).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default socket timeout: long enough for a loaded CI box, short enough
/// that a hang fails the test instead of the whole run.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

pub fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("apps")
}

pub fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory under `target/`, removed when dropped.
pub fn scratch_dir(name: &str) -> tempfile::TempDir {
    let base = project_dir().join("target").join("test-scratch");
    std::fs::create_dir_all(&base).expect("create target/test-scratch");
    tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(base)
        .expect("create scratch dir")
}

pub struct ServerBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    env_remove: Vec<String>,
    cwd: PathBuf,
    listen: bool,
    listeners: usize,
    /// A program that starts maitred for the test (given maitred's path
    /// and arguments after its own).
    launcher: Vec<String>,
    /// A Python to run `-m maitred` with, in place of the `maitred` command.
    module_of: Option<PathBuf>,
}

pub fn server() -> ServerBuilder {
    ServerBuilder {
        args: Vec::new(),
        env: Vec::new(),
        env_remove: vec![
            "VIRTUAL_ENV".into(),
            "MAITRED_CONFIG".into(),
            "RUST_LOG".into(),
        ],
        cwd: apps_dir(),
        listen: true,
        listeners: 1,
        launcher: Vec::new(),
        module_of: None,
    }
}

impl ServerBuilder {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self.env_remove.retain(|r| r != k);
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = dir.into();
        self
    }

    /// How many "Serving on" lines to wait for.
    pub fn listeners(mut self, n: usize) -> Self {
        self.listeners = n;
        self
    }

    /// Do not add `--listen 127.0.0.1:0` (the test gives its own address).
    pub fn no_listen(mut self) -> Self {
        self.listen = false;
        self
    }

    /// Starts maitred through `program args... BIN maitred-args...`.
    pub fn launched_by<I, S>(mut self, program_and_args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.launcher = program_and_args.into_iter().map(Into::into).collect();
        self
    }

    /// Starts maitred as `python -m maitred` with this Python (which must
    /// have maitred installed).
    pub fn python_module_of(mut self, python: impl Into<PathBuf>) -> Self {
        self.module_of = Some(python.into());
        self
    }

    fn command(&self) -> Command {
        let mut cmd = match self.launcher.split_first() {
            _ if self.module_of.is_some() => {
                let mut cmd =
                    Command::new(self.module_of.as_deref().unwrap_or(Path::new("python3")));
                cmd.args(["-m", "maitred"])
                    .env_remove(VENV_ENV)
                    .env_remove(BIN_ENV);
                cmd
            }
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args)
                    .arg(bin())
                    .env_remove(VENV_ENV)
                    .env_remove(BIN_ENV);
                cmd
            }
            None => maitred_command(),
        };
        if self.listen {
            cmd.arg("--listen=127.0.0.1:0");
        }
        // Tests run in parallel: never the fixed default admin port. The
        // `config` subcommands bind nothing and report settings as given.
        let inspects_config = self.args.iter().any(|a| a == "config");
        if !inspects_config && !self.args.iter().any(|a| a.starts_with("--admin-listen")) {
            cmd.arg("--admin-listen=127.0.0.1:0");
        }
        cmd.args(&self.args).current_dir(&self.cwd);
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.env("NO_COLOR", "1");
        cmd
    }

    /// Starts the server and waits until it listens.
    pub fn start(self) -> Server {
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn maitred");
        let log = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let reader = BufReader::new(pipe);
                for line in reader.lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let mut server = Server {
            child,
            log,
            urls: Vec::new(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let urls = server.serving_urls();
            if urls.len() >= self.listeners {
                server.urls = urls;
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "maitred exited ({status}) before serving:\n{}",
                    server.log()
                );
            }
            if Instant::now() > deadline {
                panic!("maitred did not start in time:\n{}", server.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs to completion (for start-up failures and subcommands).
    pub fn run(self) -> Finished {
        let mut cmd = self.command();
        cmd.stdin(Stdio::null());
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn maitred");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("maitred did not exit in time");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("collect output");
        Finished {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

pub struct Server {
    child: Child,
    log: Arc<Mutex<String>>,
    urls: Vec<String>,
}

impl Server {
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn serving_urls(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.split("Serving on ").nth(1))
            .map(until_quote)
            .collect()
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// `127.0.0.1:PORT` of the first TCP listener.
    pub fn addr(&self) -> String {
        self.urls
            .iter()
            .find_map(|u| {
                u.strip_prefix("http://")
                    .filter(|a| !a.starts_with("unix:"))
            })
            .expect("a TCP listener")
            .to_owned()
    }

    /// `127.0.0.1:PORT` of the admin listener.
    pub fn admin_addr(&self) -> String {
        self.log()
            .lines()
            .find_map(|l| {
                l.split("Admin listener (/livez, /readyz, /metrics) on http://")
                    .nth(1)
            })
            .map(until_quote)
            .expect("an admin listener")
    }

    /// GET on the admin listener: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.admin_addr()).expect("connect admin");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut r = BufReader::new(s);
        let resp = read_response(&mut r).expect("admin response");
        (resp.status, resp.text())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr()).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s
    }

    /// Sends raw bytes on a new connection and reads until the server
    /// closes it.
    pub fn exchange(&self, raw: &[u8]) -> Vec<u8> {
        let mut s = self.connect();
        s.write_all(raw).expect("send");
        read_to_close(&mut s)
    }

    /// One request, one parsed response (on a fresh connection).
    pub fn get(&self, path: &str) -> Response {
        let mut s = self.connect();
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).expect("send");
        let mut r = BufReader::new(s);
        read_response(&mut r).expect("response")
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The events recorded by `tests/apps/behaviours.py` (close() calls...).
    pub fn events(&self) -> Vec<String> {
        self.json("/events")
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until the behaviours app has recorded `event`.
    pub fn wait_event(&self, event: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.events().iter().any(|e| e == event) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// JSON from an app endpoint.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}\n{}", r.text(), self.log());
        serde_json::from_slice(&r.body).expect("json body")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one series in a Prometheus scrape, written exactly as the
/// exposition writes it (labels in alphabetical order).
pub fn metric_value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

impl Server {
    /// `/metrics` from the admin listener.
    pub fn scrape(&self) -> String {
        let (status, body) = self.admin_get("/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// A value as it ends a text log line or sits inside a JSON one.
fn until_quote(text: &str) -> String {
    text.trim().split('"').next().unwrap_or("").to_owned()
}

pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read failed: {e} after {:?}", String::from_utf8_lossy(&out)),
        }
    }
    out
}

/// True when the peer has closed: a read returns EOF (or a reset).
pub fn is_closed(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 1];
    let closed = match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    };
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    closed
}

pub fn half_close(s: &TcpStream) {
    s.shutdown(Shutdown::Write).expect("shutdown");
}

#[derive(Debug, Clone)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Sizes of the chunks, for chunked responses.
    pub chunks: Option<Vec<usize>>,
    /// The body ended by the connection closing, not by its framing.
    pub close_delimited: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .headers
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .collect();
        names.sort();
        names
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

#[derive(Debug)]
pub enum ReadError {
    /// The connection closed before a status line.
    Closed,
    /// The connection closed in the middle of the message.
    Truncated(String),
    Io(std::io::Error),
}

fn read_line<R: BufRead>(r: &mut R) -> Result<Option<String>, ReadError> {
    let mut raw = Vec::new();
    let n = r.read_until(b'\n', &mut raw).map_err(ReadError::Io)?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(
        raw.iter()
            .map(|&b| char::from(b))
            .collect::<String>()
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
    ))
}

/// Reads one response. `head_request` must be true for a HEAD, whose
/// response has no body whatever its headers say.
pub fn read_response_to<R: BufRead>(r: &mut R, head_request: bool) -> Result<Response, ReadError> {
    let status_line = loop {
        match read_line(r)? {
            None => return Err(ReadError::Closed),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_owned();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ReadError::Truncated(format!("bad status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or("").to_owned();
    let mut headers = Vec::new();
    loop {
        match read_line(r)? {
            None => return Err(ReadError::Truncated("in headers".into())),
            Some(l) if l.is_empty() => break,
            Some(l) => {
                let (k, v) = l.split_once(':').unwrap_or((&l, ""));
                headers.push((k.to_owned(), v.trim().to_owned()));
            }
        }
    }
    let mut resp = Response {
        version,
        status,
        reason,
        headers,
        body: Vec::new(),
        chunks: None,
        close_delimited: false,
    };
    if status == 100 {
        return Ok(resp);
    }
    let no_body = head_request || status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
        return Ok(resp);
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut sizes = Vec::new();
        loop {
            let line =
                read_line(r)?.ok_or_else(|| ReadError::Truncated("before chunk size".into()))?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| ReadError::Truncated(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    let l =
                        read_line(r)?.ok_or_else(|| ReadError::Truncated("in trailers".into()))?;
                    if l.is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0u8; size];
            r.read_exact(&mut chunk)
                .map_err(|_| ReadError::Truncated(format!("in a chunk of {size}")))?;
            resp.body.extend_from_slice(&chunk);
            sizes.push(size);
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)
                .map_err(|_| ReadError::Truncated("after a chunk".into()))?;
        }
        resp.chunks = Some(sizes);
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| ReadError::Truncated("bad length".into()))?;
        let mut body = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match r.read(&mut body[got..]) {
                Ok(0) => {
                    resp.body = body[..got].to_vec();
                    return Err(ReadError::Truncated(format!(
                        "body: {got} of {len} bytes: {:?}",
                        String::from_utf8_lossy(&resp.body)
                    )));
                }
                Ok(n) => got += n,
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
        resp.body = body;
    } else {
        r.read_to_end(&mut resp.body).map_err(ReadError::Io)?;
        resp.close_delimited = true;
    }
    Ok(resp)
}

pub fn read_response<R: BufRead>(r: &mut R) -> Result<Response, ReadError> {
    read_response_to(r, false)
}

/// A connection that sends requests and reads responses in order.
pub struct Conn {
    pub reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(server: &Server) -> Conn {
        Conn {
            reader: BufReader::new(server.connect()),
        }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.reader.get_mut().write_all(raw).expect("send");
    }

    pub fn send_str(&mut self, raw: &str) {
        self.send(raw.as_bytes());
    }

    pub fn response(&mut self) -> Response {
        read_response(&mut self.reader).expect("a response")
    }

    pub fn try_response(&mut self) -> Result<Response, ReadError> {
        read_response(&mut self.reader)
    }

    pub fn head_response(&mut self) -> Response {
        read_response_to(&mut self.reader, true).expect("a response")
    }

    /// True when the server has closed the connection (nothing buffered
    /// and EOF from the socket).
    pub fn is_closed(&mut self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        is_closed(self.reader.get_mut(), Duration::from_secs(5))
    }
}

/// Polls `check` every 20 ms until it holds or `within` passes.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
