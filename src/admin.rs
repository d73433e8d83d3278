//! The admin listener: health probes for orchestrators, on its own
//! address (loopback by default), apart from the app.
//!
//! - `/livez` (alias `/healthz`): the process serves and its Python side is
//!   responsive: every Python thread is running and the GIL can be taken
//!   within [`GIL_WITHIN`]. A failing liveness probe restarts the pod, so
//!   this checks for a wedged interpreter, not a busy one.
//! - `/readyz`: the app is imported and the server is not draining.
//! - `/metrics`: the Prometheus text exposition (see [`crate::metrics`]).
//!
//! Requests here never enter the Python queue, the proxy logic or the app,
//! and are not counted against `connection_limit`. Where the answers come
//! from is a [`Probes`] implementation: [`Local`] for this process, or
//! (with several worker processes) the supervisor, which asks the workers
//! (see `crate::workers`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::gateway::service::Shared;
use crate::wsgi::Liveness;

/// How long `/livez` waits for the GIL before calling the process stuck.
pub const GIL_WITHIN: Duration = Duration::from_secs(2);
/// Admin connections served at once; probes need few.
const MAX_CONNECTIONS: usize = 64;

/// A probe's answer: whether it passes, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub ok: bool,
    pub text: String,
}

/// Where the admin listener gets its answers.
pub trait Probes: Send + Sync + 'static {
    /// `/livez`: the process can still serve.
    fn livez(&self) -> impl Future<Output = Answer> + Send;
    /// `/readyz`: the process wants traffic.
    fn readyz(&self) -> impl Future<Output = Answer> + Send;
    /// `/metrics`: the text exposition.
    fn metrics(&self) -> impl Future<Output = String> + Send;
}

/// This process's own answers, from its Python pool and health flag.
#[derive(Clone)]
pub struct Local(pub Arc<Shared>);

impl Probes for Local {
    async fn livez(&self) -> Answer {
        livez(&self.0).await
    }

    async fn readyz(&self) -> Answer {
        readyz(&self.0)
    }

    async fn metrics(&self) -> String {
        metrics(&self.0)
    }
}

/// This process's liveness: its Python threads run and the GIL can be
/// taken.
async fn livez(shared: &Shared) -> Answer {
    match shared.pool.liveness(GIL_WITHIN).await {
        Liveness::Alive => Answer {
            ok: true,
            text: "ok\n".into(),
        },
        Liveness::Stuck(why) => Answer {
            ok: false,
            text: format!("stuck: {why}\n"),
        },
    }
}

fn readyz(shared: &Shared) -> Answer {
    if shared.health.ready.load(Ordering::Acquire) {
        Answer {
            ok: true,
            text: "ready\n".into(),
        }
    } else {
        Answer {
            ok: false,
            text: "not ready: draining\n".into(),
        }
    }
}

/// This process's exposition.
fn metrics(shared: &Shared) -> String {
    let m = crate::metrics::get();
    // Gauges that mirror counters kept elsewhere are read at scrape
    // time, so the request path does not update them twice.
    m.queue_depth
        .set(crate::metrics::as_gauge(shared.pool.queued()));
    m.python_threads_busy
        .set(crate::metrics::as_gauge(shared.pool.busy()));
    m.render()
}

/// Announces each admin listener and serves it. Call within the runtime.
pub fn start<P: Probes>(
    listeners: Vec<(std::net::TcpListener, std::net::SocketAddr)>,
    probes: &Arc<P>,
) -> std::io::Result<()> {
    for (listener, addr) in listeners {
        tracing::info!(
            "Admin listener (/livez, /readyz, /metrics) on http://{}",
            crate::listen::display_addr(&addr)
        );
        let listener = TcpListener::from_std(listener)?;
        tokio::spawn(run(listener, Arc::clone(probes)));
    }
    Ok(())
}

async fn run<P: Probes>(listener: TcpListener, probes: Arc<P>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("admin accept() failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let probes = Arc::clone(&probes);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let probes = Arc::clone(&probes);
                async move { Ok::<_, Infallible>(route(&req, &*probes).await) }
            });
            let conn = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("admin connection ended: {e}");
            }
            drop(permit);
        });
    }
}

async fn route<P: Probes>(req: &Request<Incoming>, probes: &P) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    let probe = |a: Answer| {
        let status = if a.ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        text(status, &a.text)
    };
    match req.uri().path() {
        "/livez" | "/healthz" => probe(probes.livez().await),
        "/readyz" => probe(probes.readyz().await),
        "/metrics" => {
            let mut response = text(StatusCode::OK, "");
            *response.body_mut() = Full::new(Bytes::from(probes.metrics().await));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /livez, /healthz, /readyz, /metrics\n",
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}
