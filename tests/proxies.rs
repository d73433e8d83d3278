//! Real proxies in front of maitred: nginx in one- and two-hop chains and
//! HAProxy speaking the PROXY protocol, each on its own loopback address so
//! every hop is told apart (client 127.0.0.5/.6, nginx 127.0.0.2 and .3,
//! HAProxy 127.0.0.4, maitred 127.0.0.1). The app reports the environ it
//! received. nginx and HAProxy come from Debian's packages, installed by
//! ./scripts/test.sh; each test starts and stops its own processes.

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::server;
use serde_json::Value;

/// A proxy process, stopped when dropped.
struct Proxy {
    child: Child,
    name: &'static str,
    log: std::path::PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary(name: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin"] {
        let path = format!("{dir}/{name}");
        if Path::new(&path).exists() {
            return path;
        }
    }
    panic!(
        "{name} is not installed: ./scripts/test.sh installs it (apt-get install nginx-light haproxy)"
    );
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_listening(proxy: &mut Proxy, addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        if let Ok(Some(status)) = proxy.child.try_wait() {
            let log = std::fs::read_to_string(&proxy.log).unwrap_or_default();
            panic!("{} exited ({status}):\n{log}", proxy.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} is not listening on {addr}", proxy.name);
}

/// nginx listening on `ip:port`, proxying to `upstream` from `ip`, with the
/// given extra directives in its location.
fn nginx(dir: &Path, ip: &str, port: u16, upstream: &str, location: &str) -> Proxy {
    let root = dir.join(format!("nginx-{ip}"));
    std::fs::create_dir_all(&root).expect("nginx dir");
    let r = root.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {r}/nginx.pid;\n\
         error_log {r}/error.log info;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {r}/body;\n  proxy_temp_path {r}/proxy;\n\
         fastcgi_temp_path {r}/fastcgi;\n  uwsgi_temp_path {r}/uwsgi;\n  scgi_temp_path {r}/scgi;\n\
         server {{\n    listen {ip}:{port};\n    {location}\n    location / {{\n      proxy_pass http://{upstream};\n\
         proxy_bind {ip};\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
         proxy_set_header Host $http_host;\n\
         proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         proxy_set_header X-Forwarded-Proto $scheme;\n      proxy_set_header X-Forwarded-Host $host;\n\
         proxy_set_header X-Forwarded-Port $server_port;\n    }}\n  }}\n}}\n"
    );
    let path = root.join("nginx.conf");
    std::fs::write(&path, conf).expect("nginx.conf");
    let log = root.join("error.log");
    let child = Command::new(binary("nginx"))
        .args(["-c"])
        .arg(&path)
        .args(["-p"])
        .arg(&root)
        .args(["-e"])
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let mut proxy = Proxy {
        child,
        name: "nginx",
        log,
    };
    wait_listening(&mut proxy, &format!("{ip}:{port}"));
    proxy
}

/// HAProxy in TCP mode on `ip:port`, passing connections to `upstream`
/// with a PROXY header (`send-proxy` or `send-proxy-v2`).
fn haproxy(dir: &Path, ip: &str, port: u16, upstream: &str, send: &str) -> Proxy {
    let root = dir.join(format!("haproxy-{ip}"));
    std::fs::create_dir_all(&root).expect("haproxy dir");
    let conf = format!(
        "global\n  maxconn 64\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\n\
         frontend fe\n  bind {ip}:{port}\n  default_backend be\n\n\
         backend be\n  server maitred {upstream} {send} source {ip}\n"
    );
    let path = root.join("haproxy.cfg");
    std::fs::write(&path, conf).expect("haproxy.cfg");
    let log = root.join("haproxy.log");
    let out = std::fs::File::create(&log).expect("log");
    let child = Command::new(binary("haproxy"))
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start haproxy");
    let mut proxy = Proxy {
        child,
        name: "haproxy",
        log,
    };
    wait_listening(&mut proxy, &format!("{ip}:{port}"));
    proxy
}

/// GET `path` from `from` (a loopback source address) to `to`; the JSON
/// environ the app saw.
fn environ_via(from: &str, to: &str, path: &str, extra_headers: &str) -> Value {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local: SocketAddr = format!("{from}:0").parse().expect("local");
    socket.bind(&local.into()).expect("bind the client address");
    let remote: SocketAddr = to.parse().expect("remote");
    socket.connect(&remote.into()).expect("connect");
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(common::IO_TIMEOUT))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: app.example:8080\r\n{extra_headers}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut reader = BufReader::new(stream);
    let r = common::read_response(&mut reader).expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn maitred_port(s: &common::Server) -> u16 {
    s.addr()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

#[test]
fn one_nginx_in_front() {
    let dir = common::scratch_dir("nginx1");
    let s = server()
        .args([
            "--trusted-proxy=127.0.0.2",
            "--trusted-proxy-headers=x-forwarded-for x-forwarded-proto x-forwarded-host x-forwarded-port",
            "behaviours:app",
        ])
        .start();
    let port = free_port("127.0.0.2");
    let _nginx = nginx(dir.path(), "127.0.0.2", port, &s.addr(), "");
    let env = environ_via(
        "127.0.0.5",
        &format!("127.0.0.2:{port}"),
        "/environ",
        "X-Forwarded-For: 6.6.6.6\r\n",
    );
    assert_eq!(
        env["REMOTE_ADDR"], "127.0.0.5",
        "the real client, not the spoofed entry"
    );
    assert_eq!(
        env["HTTP_X_FORWARDED_FOR"], "127.0.0.5",
        "rewritten to the trusted part"
    );
    assert_eq!(env["maitred.peer_addr"], "127.0.0.2");
    assert_eq!(env["wsgi.url_scheme"], "http");
    assert_eq!(env["SERVER_NAME"], "app.example");
    assert_eq!(env["SERVER_PORT"], port.to_string());
    assert_eq!(env["HTTP_HOST"], format!("app.example:{port}"));

    // The same client straight to maitred: untrusted, so its forwarding
    // headers are removed and nothing changes.
    let env = environ_via(
        "127.0.0.5",
        &s.addr(),
        "/environ",
        "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n",
    );
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.5");
    assert_eq!(env["wsgi.url_scheme"], "http");
    assert!(env.get("HTTP_X_FORWARDED_FOR").is_none());
    assert_eq!(env["SERVER_PORT"], maitred_port(&s).to_string());
}

#[test]
fn two_nginx_hops_by_trust_list_and_by_count() {
    let dir = common::scratch_dir("nginx2");
    let inner_port = free_port("127.0.0.3");
    let outer_port = free_port("127.0.0.2");
    let headers = "--trusted-proxy-headers=x-forwarded-for x-forwarded-proto x-forwarded-host";
    // Trust list of both proxies, no count: the walk finds the client.
    let walk = server()
        .args([
            "--trusted-proxy=127.0.0.2",
            "--trusted-proxy=127.0.0.3",
            headers,
            "behaviours:app",
        ])
        .start();
    // Waitress's way: trust the last proxy and count two hops.
    let count = server()
        .args([
            "--trusted-proxy=127.0.0.3",
            "--trusted-proxy-count=2",
            headers,
            "behaviours:app",
        ])
        .start();
    for s in [&walk, &count] {
        let _inner = nginx(dir.path(), "127.0.0.3", inner_port, &s.addr(), "");
        let _outer = nginx(
            dir.path(),
            "127.0.0.2",
            outer_port,
            &format!("127.0.0.3:{inner_port}"),
            "",
        );
        let env = environ_via(
            "127.0.0.5",
            &format!("127.0.0.2:{outer_port}"),
            "/environ",
            "X-Forwarded-For: 6.6.6.6, 10.0.0.1\r\n",
        );
        assert_eq!(env["REMOTE_ADDR"], "127.0.0.5", "{env}");
        assert_eq!(env["HTTP_X_FORWARDED_FOR"], "127.0.0.5, 127.0.0.2");
        assert_eq!(env["maitred.peer_addr"], "127.0.0.3");
        assert_eq!(env["SERVER_NAME"], "app.example");
    }
}

#[test]
fn nginx_sending_forwarded_and_a_prefix() {
    let dir = common::scratch_dir("nginx-fwd");
    let s = server()
        .args([
            "--trusted-proxy=127.0.0.2",
            "--trusted-proxy-headers=forwarded x-forwarded-prefix",
            "behaviours:app",
        ])
        .start();
    let port = free_port("127.0.0.2");
    // RFC 7239 as nginx can send it, and a location that strips /team
    // (a Kubernetes ingress path rewrite) announcing it as the prefix.
    let location = format!(
        "location /team/ {{ proxy_pass http://{}/; proxy_bind 127.0.0.2; \
         proxy_set_header X-Forwarded-Prefix /team; \
         proxy_set_header Forwarded \"for=\\\"$remote_addr:$remote_port\\\";proto=https;host=\\\"$http_host\\\"\"; }}",
        s.addr()
    );
    let _nginx = nginx(dir.path(), "127.0.0.2", port, &s.addr(), &location);
    let env = environ_via(
        "127.0.0.5",
        &format!("127.0.0.2:{port}"),
        "/team/environ",
        "",
    );
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.5");
    assert!(
        env["REMOTE_PORT"]
            .as_str()
            .is_some_and(|p| p.parse::<u16>().is_ok())
    );
    assert_eq!(env["wsgi.url_scheme"], "https");
    // host= carries the Host the client sent, port included.
    assert_eq!(env["HTTP_HOST"], "app.example:8080", "{env}");
    assert_eq!(env["SERVER_PORT"], "8080");
    assert_eq!(env["SCRIPT_NAME"], "/team");
    assert_eq!(env["PATH_INFO"], "/environ");
    assert!(
        env.get("HTTP_X_FORWARDED_FOR").is_none(),
        "X-Forwarded-* untrusted in forwarded mode"
    );
}

/// The PROXY-protocol listener's address, from its start-up line.
fn proxy_protocol_addr(s: &common::Server) -> String {
    s.log()
        .lines()
        .find_map(|l| {
            l.split("Accepting PROXY protocol connections on http://")
                .nth(1)
        })
        .map(|a| a.trim().to_owned())
        .expect("a PROXY protocol listener")
}

#[test]
fn haproxy_with_proxy_protocol_v2_and_v1() {
    let dir = common::scratch_dir("haproxy");
    let s = server()
        .args([
            "--proxy-protocol-listen=127.0.0.1:0",
            "--proxy-protocol-trusted=127.0.0.4",
            "behaviours:app",
        ])
        .start();
    let pp = proxy_protocol_addr(&s);
    for (send, client) in [("send-proxy-v2", "127.0.0.6"), ("send-proxy", "127.0.0.7")] {
        let port = free_port("127.0.0.4");
        let _haproxy = haproxy(dir.path(), "127.0.0.4", port, &pp, send);
        let env = environ_via(client, &format!("127.0.0.4:{port}"), "/environ", "");
        assert_eq!(env["REMOTE_ADDR"], client, "{send}: the client HAProxy saw");
        assert!(
            env["REMOTE_PORT"].as_str().is_some_and(|p| p != "0"),
            "{send}"
        );
    }

    // A peer that is not a trusted balancer is turned away, and plain HTTP
    // on the PROXY listener is closed without an answer.
    let mut direct = TcpStream::connect(&pp).expect("connect");
    direct
        .write_all(b"GET /environ HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    assert!(common::read_to_close(&mut direct).is_empty());
    assert!(s.wait_for_log("not in proxy_protocol.trusted", Duration::from_secs(5)));
}

#[test]
fn a_malformed_header_from_a_trusted_proxy_is_a_400_naming_it() {
    let s = server()
        .args([
            "--trusted-proxy=127.0.0.1",
            "--trusted-proxy-headers=x-forwarded-proto",
            "behaviours:app",
        ])
        .start();
    let mut c = common::Conn::open(&s);
    c.send_str(
        "GET /environ HTTP/1.1\r\nHost: t\r\nX-Forwarded-Proto: http://p02n3e.com?url=http\r\n\r\n",
    );
    let r = c.response();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        "Bad Request\r\n\r\nHeader \"X-Forwarded-Proto\" malformed.\r\n\r\n(generated by maitred)"
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(s.wait_for_log(
        "Malformed proxy header \"X-Forwarded-Proto\" from \"127.0.0.1\": not http or https value: http://p02n3e.com?url=http",
        Duration::from_secs(5)
    ), "{}", s.log());
}

#[test]
fn removed_untrusted_headers_are_logged_when_asked() {
    let s = server()
        .args(["--log-untrusted-proxy-headers", "behaviours:app"])
        .start();
    let env = environ_via(
        "127.0.0.5",
        &s.addr(),
        "/environ",
        "X-Forwarded-For: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\n",
    );
    assert!(env.get("HTTP_X_FORWARDED_FOR").is_none() && env.get("HTTP_FORWARDED").is_none());
    assert!(s.wait_for_log(
        "Removed untrusted headers (X-Forwarded-For, Forwarded). Untrusted remote IP: 127.0.0.5",
        Duration::from_secs(5)
    ), "{}", s.log());
}

#[test]
fn strict_url_prefix_answers_404_outside_it() {
    let s = server()
        .args(["--url-prefix=/app", "--url-prefix-strict", "behaviours:app"])
        .start();
    assert_eq!(s.get("/app/environ").status, 200);
    let r = s.get("/application");
    assert_eq!(r.status, 404);
    assert!(
        r.text()
            .contains("outside the application's mount point /app"),
        "{}",
        r.text()
    );
    // Without the setting, Waitress's pass-through.
    let s = server()
        .args(["--url-prefix=/app", "behaviours:app"])
        .start();
    assert_eq!(s.get("/other").status, 200);
}

#[test]
fn forwarded_prefix_and_url_prefix_combine() {
    let s = server()
        .args([
            "--trusted-proxy=127.0.0.1",
            "--trusted-proxy-headers=x-forwarded-prefix",
            "--url-prefix=/app",
            "behaviours:app",
        ])
        .start();
    let env = environ_via(
        "127.0.0.1",
        &s.addr(),
        "/app/x",
        "X-Forwarded-Prefix: /team\r\n",
    );
    assert_eq!(env["SCRIPT_NAME"], "/team/app");
    assert_eq!(env["PATH_INFO"], "/x");
}
