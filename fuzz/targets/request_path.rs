//! Target `request_path`: arbitrary bytes as one client connection,
//! served by the whole server (framing scanner, timers, hyper, the
//! gateway, the environ, the embedded Python app and back) over an
//! in-memory stream, without sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use maitred::config::plan::ConnectionPlan;
use maitred::config::values::{ByteSize, Seconds};
use maitred::config::{Plan, Settings};
use maitred::gateway::service::Shared;
use maitred::wsgi::environ::Peer;
use maitred::{process, server};
use pyo3::Python;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::first_byte;

/// The app: see stub_app.py.
const STUB_APP: &str = include_str!("stub_app.py");
const STUB_MODULE: &str = "maitred_fuzz_stub";

/// Longest one input may take, from the first byte written to the close.
/// The server's own timers are 1 s and its lingering close 2 s, so a
/// connection still open after this is one the server failed to close.
const DEADLINE: Duration = Duration::from_secs(20);

/// Panics anywhere in the process (tokio catches those of the connection
/// task; this counts them all).
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// One server configuration, with its own Python threads.
struct Server {
    shared: Arc<Shared>,
    connections: ConnectionPlan,
}

/// What every input shares: Python (once per process), one runtime, and
/// the server configurations the first byte chooses from.
struct World {
    runtime: tokio::runtime::Runtime,
    servers: Vec<Server>,
}

/// The peers the first byte chooses from: a Unix socket, loopback, an
/// address inside the trusted ranges, one outside, and IPv6.
fn peers() -> [Peer; 5] {
    let tcp = |remote: &str, local: &str| Peer::Tcp {
        remote: remote.parse::<SocketAddr>().expect("address"),
        local: local.parse::<SocketAddr>().expect("address"),
    };
    [
        Peer::Unix,
        tcp("127.0.0.1:50000", "127.0.0.1:8080"),
        tcp("10.9.8.7:40000", "10.0.0.1:8080"),
        tcp("203.0.113.9:4000", "192.0.2.1:443"),
        tcp("[2001:db8::7]:4000", "[2001:db8::1]:8080"),
    ]
}

fn settings(app_dir: &str) -> [Settings; 3] {
    let base = || {
        let mut s = Settings {
            listen: vec!["127.0.0.1:0".into()],
            admin_listen: Vec::new(),
            threads: 1,
            app: Some(format!("{STUB_MODULE}:app")),
            app_dir: vec![app_dir.to_owned()],
            ..Settings::default()
        };
        let l = &mut s.limits;
        l.channel_timeout = Seconds::from_secs(1);
        l.header_timeout = Seconds::from_secs(1);
        l.body_timeout = Seconds::from_secs(1);
        l.max_request_body_size = ByteSize(64 << 10);
        // Bodies above 4 KiB are spooled to a temporary file.
        l.inbuf_overflow = ByteSize(4 << 10);
        l.max_request_header_size = ByteSize(8 << 10);
        l.max_request_headers = 20;
        l.outbuf_overflow = ByteSize(32 << 10);
        l.outbuf_high_watermark = ByteSize(64 << 10);
        s
    };
    // Waitress's defaults: strict framing, no proxies, untrusted
    // forwarding headers removed.
    let strict = base();
    // Behind X-Forwarded-* proxies, bare LF allowed, mounted under /app.
    let mut forwarded = base();
    forwarded.allow_bare_lf = true;
    forwarded.proxy.trusted = vec!["127.0.0.1".into(), "10.0.0.0/8".into()];
    forwarded.proxy.headers = [
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-forwarded-prefix",
    ]
    .map(String::from)
    .to_vec();
    forwarded.url_prefix = "/app".into();
    forwarded.url_scheme = "https".into();
    forwarded.ident = String::new();
    forwarded.expose_tracebacks = true;
    // Behind RFC 7239 proxies (any peer), strictly mounted under /app,
    // one request at a time, a request timeout.
    let mut rfc7239 = base();
    rfc7239.proxy.trusted = vec!["*".into()];
    rfc7239.proxy.headers = vec!["forwarded".into(), "x-forwarded-prefix".into()];
    rfc7239.proxy.count = Some(2);
    rfc7239.proxy.clear_untrusted = false;
    rfc7239.url_prefix = "/app".into();
    rfc7239.url_prefix_strict = true;
    rfc7239.limits.max_queue = 1;
    rfc7239.limits.request_timeout = Some(Seconds::from_secs(5));
    [strict, forwarded, rfc7239]
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
        // The app's module, written where Python imports it from; removed
        // once imported.
        let dir = std::env::temp_dir().join(format!("maitred-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for the stub app");
        std::fs::write(dir.join(format!("{STUB_MODULE}.py")), STUB_APP).expect("the stub app");
        let plans = settings(&dir.to_string_lossy())
            .map(|s| Plan::build(&s).unwrap_or_else(|e| panic!("a valid plan: {e:?}")));
        let app = process::start_python(&plans[0], &maitred::interpreter::Startup::embedded())
            .expect("Python and the stub app");
        let _ = std::fs::remove_dir_all(&dir);
        let servers = plans
            .iter()
            .map(|plan| {
                let app = Python::attach(|py| app.clone_ref(py));
                Server {
                    shared: Arc::new(process::shared(plan, app).expect("the Python threads")),
                    connections: plan.connections,
                }
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        World { runtime, servers }
    })
}

/// `request_path`: the first byte chooses the server configuration (of
/// three) and the peer (of five); the rest is what the client sends
/// before it shuts down its sending side. Properties: no panic anywhere;
/// the server closes the connection (within its timeouts); whatever it
/// writes starts with an HTTP/1.x status line; the app never sees an
/// environ that breaks PEP 3333 (the stub app answers 599 if it does).
pub fn request_path(data: &[u8]) {
    let world = world();
    let (choice, request) = first_byte(data);
    let server = &world.servers[usize::from(choice) % world.servers.len()];
    let peers = peers();
    let peer = peers[usize::from(choice) / world.servers.len() % peers.len()];
    let panics = PANICS.load(Ordering::SeqCst);

    let out = world.runtime.block_on(async {
        let (client, server_side) = tokio::io::duplex(64 * 1024);
        let shared = Arc::clone(&server.shared);
        let connections = server.connections;
        let serving = tokio::spawn(async move {
            server::serve_stream(server_side, peer, shared, &connections).await
        });
        let (mut from_server, mut to_server) = tokio::io::split(client);
        let send = async {
            // The server may stop reading (a refused request): not an error.
            let _ = to_server.write_all(request).await;
            let _ = to_server.shutdown().await;
        };
        let mut out = Vec::new();
        let receive = from_server.read_to_end(&mut out);
        let exchange = async {
            let ((), read) = tokio::join!(send, receive);
            read.expect("reading from an in-memory stream");
            serving.await
        };
        let result = tokio::time::timeout(DEADLINE, exchange).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the connection task failed: {e}"),
            Err(_) => panic!(
                "the server did not close the connection within {DEADLINE:?}; it wrote {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
        out
    });

    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        panics,
        "something panicked while serving"
    );
    let shown = || String::from_utf8_lossy(&out);
    assert!(
        out.is_empty() || out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
        "the answer does not start with a status line: {:?}",
        shown()
    );
    let violation = [&b"HTTP/1.1 599 "[..], b"HTTP/1.0 599 "]
        .iter()
        .any(|status| {
            out.starts_with(status)
                || out
                    .windows(status.len() + 1)
                    .any(|w| w[0] == b'\n' && &w[1..] == *status)
        });
    assert!(!violation, "the app saw a broken environ: {:?}", shown());
}
