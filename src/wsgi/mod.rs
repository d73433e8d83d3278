//! WSGI: running the application on a pool of Python threads.
//!
//! The I/O side hands over a [`Call`]: the finished CGI variables, the
//! complete request body (in memory or spooled to a file) and a channel for
//! the [`Reply`]. A pool thread builds the environ, calls the app, and sends
//! back the response head with a body that is either complete, streaming
//! through an [`outbuf::Outbuf`], or a file the I/O side reads itself. No
//! socket is ever touched with the GIL held.

mod dispatch;
pub mod environ;
mod head_memo;
pub mod outbuf;
mod pool;
mod start_response;
mod streams;
mod worker;

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use tokio::sync::oneshot;

pub use environ::CgiVars;
pub use pool::{DeferredClose, Liveness, Pool, SubmitError};

/// One request for the application.
pub struct Call {
    pub cgi: CgiVars,
    pub body: RequestBody,
    pub reply: oneshot::Sender<Reply>,
    /// A HEAD request: the connection drops the body unread, which is not
    /// a client disconnect worth logging.
    pub head: bool,
    /// The request target, for log messages.
    pub uri: http::Uri,
    /// When the call was handed to the pool (for the queue-wait metric).
    pub queued_at: std::time::Instant,
    /// When the client stops waiting (`request_timeout` after `queued_at`):
    /// a thread still running the call then counts as stuck, and the pool
    /// starts another in its place (see `wsgi::pool`).
    pub deadline: Option<std::time::Instant>,
}

/// A request body, fully received before the app is called, so a slow
/// upload never holds a Python thread.
#[derive(Debug)]
pub enum RequestBody {
    Memory(Bytes),
    /// Spooled past `inbuf_overflow`; positioned at the start.
    File(File),
}

/// What the app produced, once the response head is known.
pub enum Reply {
    Response(AppResponse),
    /// The app failed before any of its response was sent; `detail` is the
    /// text for the 500 body (the traceback with `expose_tracebacks`).
    Failed {
        detail: String,
    },
}

pub struct AppResponse {
    pub status: u16,
    /// A reason phrase other than the code's standard one.
    pub reason: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The app's Content-Length, or the file's length for a file body.
    pub content_length: Option<u64>,
    pub body: AppBody,
}

pub enum AppBody {
    /// Everything the app produced (a list, or a generator that finished
    /// before producing data).
    Full(Vec<Bytes>),
    Stream(Arc<outbuf::Outbuf>),
    File(FileBody),
}

/// A regular file from `wsgi.file_wrapper`, read by the I/O side.
pub struct FileBody {
    pub file: File,
    pub offset: u64,
    pub len: u64,
    /// Calls the app iterable's `close()` once the body is done with.
    pub close: DeferredClose,
}
