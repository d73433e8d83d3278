//! The path of one request through the I/O side: refuse what must be
//! refused, receive the whole body (spooling large ones to disk), queue the
//! call for a Python thread, and turn its reply into a hyper response.

use std::convert::Infallible;
use std::io::{Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, SERVER, TRANSFER_ENCODING, VIA,
};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use super::body::ResponseBody;
use super::policy::{self, GatewayReason, GatewayResponse};
use super::record::Record;
use crate::access::AccessLog;
use crate::budget::Held;
use crate::config::plan::{EnvironPlan, GatewayPlan};
use crate::connection::{Evicted, RequestGuard, TimedOut};
use crate::framing::{HeadFacts, Violation};
use crate::metrics;
use crate::proxy::{Disbelief, HeaderSet, ProxyVerdict};
use crate::wsgi::environ::{self, Peer, RequestHead};
use crate::wsgi::{AppBody, Call, Pool, Reply, RequestBody, SubmitError};

/// What every request on every connection shares.
pub struct Shared {
    pub pool: Pool,
    pub health: Health,
    /// The rules from the settings.
    pub plan: GatewayPlan,
    /// The scheme and mount point requests are judged by.
    pub environ: EnvironPlan,
    /// The access log's writer, when `log.access` is on.
    pub access: Option<AccessLog>,
}

/// Whether the server is ready for traffic; read by the admin probes.
#[derive(Debug, Default)]
pub struct Health {
    pub ready: AtomicBool,
}

/// Serves one request. `facts` is what the framing scanner learned of its
/// head (`None` when it has not: the fields are then looked up).
pub async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    peer: Peer,
    guard: RequestGuard,
    facts: Option<HeadFacts>,
) -> Result<Response<ResponseBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let mut record = Record::begin(&parts, &peer, shared.environ.scheme, shared.access.as_ref());
    let mut response = serve_request(parts, body, &shared, peer, facts, &mut record).await;
    // The connection is busy, and the request's record open, until the
    // response body has been sent (or dropped): both travel with the body.
    let status = response.status();
    response.body_mut().attach(guard, record, status);
    Ok(response)
}

/// The request's path, to the app's response or one maitred wrote itself.
async fn serve_request(
    parts: Parts,
    body: Incoming,
    shared: &Arc<Shared>,
    peer: Peer,
    facts: Option<HeadFacts>,
    record: &mut Record,
) -> Response<ResponseBody> {
    let shared = &**shared;
    let framed = facts.map_or_else(|| has_body(&parts), HeadFacts::framed);
    let declared = body.size_hint().exact().filter(|_| framed);
    if let Err(refused) = policy::check_head(
        &parts.method,
        &parts.headers,
        facts,
        declared,
        shared.plan.max_body,
    ) {
        return reject(shared, parts.version, refused);
    }
    // Forwarding headers are judged before the body is read: a malformed
    // one from a trusted proxy refuses the request as a whole.
    let verdict = match forwarding(shared, &peer, &parts.headers) {
        Ok(verdict) => verdict,
        Err(refused) => return reject(shared, parts.version, refused),
    };
    record.forwarded(verdict.remote_addr.as_deref(), verdict.url_scheme);
    // A body's reading state lives on the heap, so requests without one
    // (most) carry a smaller future.
    let received = if body.is_end_stream() {
        Ok(Received {
            body: RequestBody::Memory(Bytes::new()),
            len: 0,
            framed,
            held: Held::default(),
        })
    } else {
        Box::pin(receive(body, framed, shared)).await
    };
    let received = match received {
        Ok(received) => received,
        Err(refused) => return reject(shared, parts.version, refused),
    };
    record.request_body(received.len);
    // The body's share of the memory budget is given back once the app has
    // answered (it has read the body by then, as a rule).
    let _body_memory = received.held;
    let head = RequestHead {
        method: parts.method.as_str(),
        uri: &parts.uri,
        version: parts.version,
        headers: &parts.headers,
        body_len: received.framed.then_some(received.len),
    };
    let cgi = environ::cgi_vars(&head, &peer, &shared.environ, &verdict);
    if shared.plan.url_prefix_strict && cgi.outside_prefix {
        let detail = format!(
            "The path is outside the application's mount point {}",
            shared.environ.script_name
        );
        return reject(
            shared,
            parts.version,
            GatewayResponse::new(GatewayReason::OutsidePrefix, detail),
        );
    }
    let (tx, rx) = oneshot::channel();
    let queued_at = Instant::now();
    let call = Call {
        cgi,
        body: received.body,
        reply: tx,
        head: parts.method == Method::HEAD,
        uri: parts.uri.clone(),
        queued_at,
        // A thread still running the call once its client has had the 504
        // counts as stuck: the pool starts another in its place.
        deadline: shared
            .plan
            .request_timeout
            .map(|limit| queued_at + limit.after),
    };
    match shared.pool.submit(call) {
        Ok(()) => {}
        Err(SubmitError::QueueFull) => {
            let detail = "All threads are busy and the queue is full; retry shortly";
            let refused = GatewayResponse::new(GatewayReason::QueueFull, detail).retry_after(1);
            return reject(shared, parts.version, refused);
        }
        Err(SubmitError::Stopped) => {
            let refused =
                GatewayResponse::new(GatewayReason::ShuttingDown, "The server is shutting down");
            return reject(shared, parts.version, refused);
        }
    }
    let reply = match shared.plan.request_timeout {
        None => rx.await,
        // Boxed: the timer is only there when request_timeout is set, and
        // inline it would enlarge every request's future.
        Some(limit) => match Box::pin(tokio::time::timeout(limit.after, rx)).await {
            Ok(reply) => reply,
            Err(_) => {
                // Dropping `rx` tells the worker: a request still queued is
                // skipped; one running finishes unheard and is closed.
                tracing::warn!(
                    "{} got no response within {} ({}s): answered 504; \
                     the Python thread running it continues until the app returns",
                    parts.uri,
                    limit.name,
                    limit.after.as_secs_f64()
                );
                let detail = format!(
                    "The application did not respond within {}s",
                    limit.after.as_secs_f64()
                );
                return reject(
                    shared,
                    parts.version,
                    GatewayResponse::new(GatewayReason::RequestTimeout, detail),
                );
            }
        },
    };
    let reply = match reply {
        Ok(reply) => reply,
        // The worker dropped the channel without answering: an internal
        // failure already logged on the Python side.
        Err(_) => {
            return reject(
                shared,
                parts.version,
                GatewayResponse::new(
                    GatewayReason::InternalError,
                    "The server encountered an unexpected internal server error",
                ),
            );
        }
    };
    respond(shared, parts, facts, reply)
}

/// Applies the trusted-proxy rules, logging what Waitress logs.
fn forwarding(
    shared: &Shared,
    peer: &Peer,
    headers: &http::HeaderMap,
) -> Result<ProxyVerdict, GatewayResponse> {
    let proxy = &shared.plan.proxy;
    let peer_ip = match peer {
        Peer::Tcp { remote, .. } => Some(remote.ip()),
        Peer::Unix => None,
    };
    let shown = || peer_ip.map_or_else(|| "unix".to_owned(), |ip| ip.to_canonical().to_string());
    let present = HeaderSet::present_in(headers);
    if !present.is_empty() {
        let (ignored, trusted_peer) = proxy.disbelieved(peer_ip, present);
        let why = if trusted_peer {
            Disbelief::NotListed
        } else {
            Disbelief::UntrustedPeer
        };
        for h in ignored.iter() {
            metrics::get().proxy_headers_rejected.inc((h, why));
        }
    }
    match proxy.verdict(peer_ip, headers, shared.environ.scheme) {
        Ok(verdict) => {
            if proxy.log_untrusted && !verdict.removed_present.is_empty() {
                tracing::warn!(
                    "Removed untrusted headers ({}). Untrusted remote IP: {}",
                    crate::proxy::names(verdict.removed_present),
                    shown()
                );
            }
            for note in &verdict.notes {
                tracing::warn!("{note} (from {})", shown());
            }
            Ok(verdict)
        }
        Err(m) => {
            metrics::get()
                .proxy_headers_rejected
                .inc((m.source(), Disbelief::Malformed));
            tracing::warn!(
                "Malformed proxy header \"{}\" from \"{}\": {} value: {}",
                m.header,
                shown(),
                m.reason,
                m.value
            );
            Err(GatewayResponse::new(GatewayReason::BadRequest, m.detail()))
        }
    }
}

/// Whether the request carries body framing at all (Content-Length or
/// chunked): that decides whether CONTENT_LENGTH appears in the environ.
fn has_body(parts: &Parts) -> bool {
    parts.headers.contains_key(CONTENT_LENGTH) || parts.headers.contains_key(TRANSFER_ENCODING)
}

struct Received {
    body: RequestBody,
    len: u64,
    framed: bool,
    /// The memory budget the body takes while the request lasts.
    held: Held,
}

/// Reads the whole body, in memory up to `inbuf_overflow` (and while the
/// memory budget has room) and in an anonymous temporary file beyond,
/// enforcing `max_request_body_size` as
/// bytes arrive (so a chunked upload cannot grow past it).
async fn receive(
    mut body: Incoming,
    framed: bool,
    shared: &Shared,
) -> Result<Received, GatewayResponse> {
    let plan = &shared.plan;
    // The first piece is kept as hyper hands it over (no copy); a body in
    // several pieces is gathered in `memory`.
    let mut first: Option<Bytes> = None;
    let mut memory = BytesMut::new();
    let mut spool: Option<tokio::fs::File> = None;
    let mut len: u64 = 0;
    let mut held = Held::default();
    loop {
        let frame = match tokio::time::timeout(plan.body_timeout.after, body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => return Err(body_stopped(plan.body_timeout.name)),
        };
        let frame = frame.map_err(body_error)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers: Waitress discards them too
        };
        len += data.len() as u64;
        if len > plan.max_body {
            return Err(policy::body_too_large(plan.max_body));
        }
        if spool.is_none()
            && first.is_none()
            && memory.is_empty()
            && len <= plan.inbuf_overflow as u64
            && held.try_grow(len)
        {
            first = Some(data);
            continue;
        }
        if let Some(piece) = first.take() {
            memory.extend_from_slice(&piece);
        }
        if spool.is_none()
            && (memory.len() + data.len() > plan.inbuf_overflow
                || !held.try_grow(data.len() as u64))
        {
            let mut file = tokio::fs::File::from_std(tempfile::tempfile().map_err(spool_failed)?);
            file.write_all(&memory).await.map_err(spool_failed)?;
            memory = BytesMut::new();
            held.clear();
            spool = Some(file);
        }
        match &mut spool {
            Some(file) => file.write_all(&data).await.map_err(spool_failed)?,
            None => memory.extend_from_slice(&data),
        }
    }
    let body = match spool {
        None => RequestBody::Memory(first.unwrap_or_else(|| memory.freeze())),
        Some(mut file) => {
            file.flush().await.map_err(spool_failed)?;
            let mut file = file.into_std().await;
            file.seek(SeekFrom::Start(0)).map_err(spool_failed)?;
            RequestBody::File(file)
        }
    };
    Ok(Received {
        body,
        len,
        framed,
        held,
    })
}

fn body_error(err: hyper::Error) -> GatewayResponse {
    // hyper's own message is generic ("error reading a body from
    // connection"); the innermost cause says what was wrong, e.g. "Invalid
    // chunk size line: missing size digit".
    let mut cause: &dyn std::error::Error = &err;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    if let Some(io) = cause.downcast_ref::<std::io::Error>() {
        if let Some(timed_out) = TimedOut::of(io) {
            return body_stopped(timed_out.timeout.name);
        }
        if Evicted::is(io) {
            return GatewayResponse::new(
                GatewayReason::BodyTimeout,
                "The request body arrived too slowly while the server was at its connection limit",
            );
        }
        // The chunked framing broke a rule hyper does not check.
        if let Some(violation) = io.get_ref().and_then(|e| e.downcast_ref::<Violation>()) {
            return GatewayResponse::of_violation(*violation);
        }
    }
    GatewayResponse::new(
        GatewayReason::BadRequest,
        format!("Malformed request body: {cause}"),
    )
}

/// The 408 for a body that stopped arriving; `timeout` names the setting.
fn body_stopped(timeout: &str) -> GatewayResponse {
    GatewayResponse::new(
        GatewayReason::BodyTimeout,
        format!("The request body stopped arriving ({timeout})"),
    )
}

fn spool_failed(err: std::io::Error) -> GatewayResponse {
    tracing::error!("cannot spool a request body to a temporary file: {err}");
    GatewayResponse::new(
        GatewayReason::InternalError,
        "The request body could not be stored",
    )
}

/// A response maitred writes itself. It always closes the connection:
/// after a refusal the rest of the request may not have been read, so the
/// byte stream cannot be trusted for another request.
pub fn reject(
    shared: &Shared,
    version: Version,
    refused: GatewayResponse,
) -> Response<ResponseBody> {
    refused.reason.count();
    let body = policy::error_body(refused.status, &refused.detail, &shared.plan.ident);
    let mut response = Response::new(ResponseBody::text(body));
    *response.status_mut() = refused.status;
    // hyper decides keep-alive from the response's version; it must be the
    // request's or a 1.0 close would gain a `keep-alive` token.
    *response.version_mut() = version;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(len) = response.body().size_hint().exact() {
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let Some(server) = &shared.plan.server_header {
        response.headers_mut().insert(SERVER, server.clone());
    }
    if let Some(seconds) = refused.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Takes the request's parts to move its URI into the body (for log lines)
/// instead of copying it.
fn respond(
    shared: &Shared,
    req: Parts,
    facts: Option<HeadFacts>,
    reply: Reply,
) -> Response<ResponseBody> {
    let app = match reply {
        Reply::Response(app) => app,
        Reply::Failed { detail } => {
            return reject(
                shared,
                req.version,
                GatewayResponse::new(GatewayReason::AppError, detail),
            );
        }
    };
    let Ok(status) = StatusCode::from_u16(app.status) else {
        // start_response validated it; reaching this is a maitred bug.
        return reject(
            shared,
            req.version,
            GatewayResponse::new(
                GatewayReason::InternalError,
                "invalid status from application",
            ),
        );
    };
    // RFC 9110 §8.6: no Content-Length on a 204; on a 304 only the one the
    // app declared (it describes the representation, not this message).
    let length_allowed = status != StatusCode::NO_CONTENT;
    let derive_length = length_allowed && status != StatusCode::NOT_MODIFIED;
    let (body, length) = match app.body {
        AppBody::Full(chunks) => {
            let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
            let length = app.content_length.or(derive_length.then_some(total));
            (ResponseBody::full(chunks, length, req.uri), length)
        }
        AppBody::Stream(outbuf) => (
            ResponseBody::stream(outbuf, app.content_length, req.uri),
            app.content_length,
        ),
        AppBody::File(file) => {
            let len = file.len;
            (ResponseBody::file(file, req.uri), Some(len))
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.version_mut() = req.version;
    if let Some(reason) = &app.reason {
        // Latin-1 on the wire, like header values (start_response has
        // checked every char fits in a byte).
        let latin1: Vec<u8> = reason.chars().map(|c| c as u8).collect();
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(latin1) {
            response.extensions_mut().insert(reason);
        }
    }
    let headers = response.headers_mut();
    let mut app_server = false;
    let mut app_length = None;
    for (name, value) in app.headers {
        if name == CONTENT_LENGTH {
            app_length.get_or_insert(value);
            continue; // set below from the decided length
        }
        app_server |= name == SERVER;
        headers.append(name, value);
    }
    if let Some(len) = length.filter(|_| length_allowed) {
        // The app's own value when it is exactly the decided length in
        // canonical digits (the usual case), which saves building one.
        let mut digits = itoa::Buffer::new();
        let value = app_length
            .filter(|v| v.as_bytes() == digits.format(len).as_bytes())
            .unwrap_or_else(|| HeaderValue::from(len));
        headers.insert(CONTENT_LENGTH, value);
    }
    // Waitress's rule: the app's own Server header wins, and the gateway
    // identifies itself with Via instead.
    if let Some(server) = &shared.plan.server_header {
        if app_server {
            headers.append(VIA, server.clone());
        } else {
            headers.insert(SERVER, server.clone());
        }
    }
    let keep_alive = policy::client_keep_alive(req.version, &req.headers, facts);
    let length_known = length.is_some() || req.method == Method::HEAD;
    if let Some(value) = policy::connection_header(req.version, keep_alive, length_known) {
        headers.insert(CONNECTION, value);
    }
    response
}
