//! The response body hyper sends: whatever the app produced, held to the
//! Content-Length the response declares.
//!
//! The length rules are Waitress's, kept in this one place: bytes beyond the
//! declared length are dropped with a warning (the response stays valid and
//! the connection stays open); a body that ends short is reported as an
//! error, which makes hyper close the connection so the client can tell the
//! response is incomplete.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::task::JoinHandle;

use super::record::Record;
use crate::connection::RequestGuard;
use crate::wsgi::outbuf::{Next, Outbuf, Overrun, Stop};
use crate::wsgi::{DeferredClose, FileBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How much of a file one blocking read fetches.
const FILE_READ: u64 = 128 * 1024;

pub struct ResponseBody {
    source: Source,
    /// Declared length still to send, when one was declared.
    remaining: Option<u64>,
    declared: u64,
    /// For bodies without an outbuf (which carries its own).
    overrun: Overrun,
    /// An error waiting for hyper to flush what came before it (see
    /// `poll_frame`).
    failure: Option<BodyError>,
    /// Request URI, for the warnings.
    uri: http::Uri,
    /// Marks the connection idle again when the response is over.
    guard: Option<RequestGuard>,
    /// The request's metrics and access-log record, finished on drop.
    record: Option<(Record, http::StatusCode)>,
    /// Body bytes handed to hyper so far.
    sent: u64,
}

enum Source {
    Full(VecDeque<Bytes>),
    Stream(StreamSource),
    /// Boxed: large, and rare next to the other two.
    File(Box<FileSource>),
}

/// Consumer end of an [`Outbuf`]; dropping it tells the app thread to stop,
/// and whether that is because the client left or because the declared
/// length has been sent (hyper then drops the body without polling again).
struct StreamSource {
    outbuf: Arc<Outbuf>,
    complete: bool,
}

impl Drop for StreamSource {
    fn drop(&mut self) {
        self.outbuf.stop(if self.complete {
            Stop::BodyComplete
        } else {
            Stop::ClientGone
        });
    }
}

struct FileSource {
    file: Arc<File>,
    offset: u64,
    left: u64,
    reading: Option<JoinHandle<std::io::Result<Vec<u8>>>>,
    _close: DeferredClose,
}

#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the application failed after the response had started")]
    AppFailed,
    #[error("the application sent {sent} bytes, fewer than its Content-Length of {declared}")]
    Short { sent: u64, declared: u64 },
    #[error("reading the response file failed: {0}")]
    File(#[from] std::io::Error),
    #[error("the response file ended early")]
    FileShrunk,
}

impl ResponseBody {
    fn new(source: Source, declared: Option<u64>, uri: http::Uri) -> Self {
        ResponseBody {
            source,
            remaining: declared,
            declared: declared.unwrap_or(0),
            overrun: Overrun::default(),
            failure: None,
            uri,
            guard: None,
            record: None,
            sent: 0,
        }
    }

    /// Keeps the connection marked busy until this body is done with, and
    /// finishes `record` with `status` then. In place: the response is a
    /// few hundred bytes, and every move of it is a copy.
    pub fn attach(&mut self, guard: RequestGuard, record: Record, status: http::StatusCode) {
        self.guard = Some(guard);
        self.record = Some((record, status));
    }

    pub fn full(chunks: Vec<Bytes>, declared: Option<u64>, uri: http::Uri) -> Self {
        Self::new(Source::Full(chunks.into()), declared, uri)
    }

    pub fn text(body: String) -> Self {
        let len = body.len() as u64;
        Self::full(vec![Bytes::from(body)], Some(len), http::Uri::default())
    }

    pub fn stream(outbuf: Arc<Outbuf>, declared: Option<u64>, uri: http::Uri) -> Self {
        let source = StreamSource {
            outbuf,
            complete: false,
        };
        Self::new(Source::Stream(source), declared, uri)
    }

    pub fn file(body: FileBody, uri: http::Uri) -> Self {
        let FileBody {
            file,
            offset,
            len,
            close,
        } = body;
        let source = FileSource {
            file: Arc::new(file),
            offset,
            left: len,
            reading: None,
            _close: close,
        };
        Self::new(Source::File(Box::new(source)), Some(len), uri)
    }

    fn poll_source(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        match &mut self.source {
            Source::Full(chunks) => Poll::Ready(chunks.pop_front().map(Ok)),
            Source::Stream(stream) => match ready!(stream.outbuf.poll_next(cx)) {
                Next::Data(data) => Poll::Ready(Some(Ok(data))),
                Next::End => Poll::Ready(None),
                Next::Aborted => Poll::Ready(Some(Err(BodyError::AppFailed))),
            },
            Source::File(file) => file.poll_read(cx),
        }
    }
}

impl FileSource {
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let reading = self.reading.get_or_insert_with(|| {
            let file = Arc::clone(&self.file);
            let (offset, want) = (self.offset, self.left.min(FILE_READ));
            // Disk reads block; they run on tokio's blocking pool so the
            // I/O thread keeps serving, and never with the GIL.
            tokio::task::spawn_blocking(move || {
                let mut buf = vec![0; want as usize];
                let n = file.read_at(&mut buf, offset)?;
                buf.truncate(n);
                Ok(buf)
            })
        });
        let result = ready!(Pin::new(reading).poll(cx));
        self.reading = None;
        let buf = match result {
            Ok(Ok(buf)) => buf,
            Ok(Err(e)) => return Poll::Ready(Some(Err(BodyError::File(e)))),
            Err(join) => {
                return Poll::Ready(Some(Err(BodyError::File(std::io::Error::other(join)))));
            }
        };
        if buf.is_empty() {
            return Poll::Ready(Some(Err(BodyError::FileShrunk)));
        }
        self.offset += buf.len() as u64;
        self.left -= buf.len() as u64;
        Poll::Ready(Some(Ok(Bytes::from(buf))))
    }
}

use std::future::Future;

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(failure) = this.failure.take() {
            return Poll::Ready(Some(Err(failure.into())));
        }
        loop {
            let failure = match ready!(this.poll_source(cx)) {
                Some(Ok(mut data)) => {
                    if let Some(remaining) = &mut this.remaining {
                        if data.len() as u64 > *remaining {
                            data.truncate(*remaining as usize);
                            // A stream shares the warning with its producer,
                            // which may notice the excess first.
                            let overrun = match &this.source {
                                Source::Stream(s) => &s.outbuf.overrun,
                                _ => &this.overrun,
                            };
                            overrun.warn(this.declared, &this.uri);
                        }
                        *remaining -= data.len() as u64;
                        if *remaining == 0 {
                            if let Source::Stream(stream) = &mut this.source {
                                stream.complete = true;
                            }
                        }
                    }
                    if data.is_empty() {
                        continue;
                    }
                    this.sent += data.len() as u64;
                    if let Some(guard) = &this.guard {
                        guard.handed_over(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => e,
                None => {
                    if let Some(remaining) = this.remaining.filter(|r| *r > 0) {
                        let sent = this.declared - remaining;
                        tracing::warn!(
                            "application returned too few bytes ({sent}) for specified \
                             Content-Length ({}) while serving {}; closing the connection",
                            this.declared,
                            this.uri
                        );
                        this.remaining = Some(0);
                        BodyError::Short {
                            sent,
                            declared: this.declared,
                        }
                    } else {
                        return Poll::Ready(None);
                    }
                }
            };
            // A body error makes hyper drop the connection at once, losing
            // whatever it has buffered but not yet written (possibly the
            // whole head). Yielding once first lets hyper's write loop flush
            // it; the error is reported on the next poll, so the client
            // gets every byte produced and then a visibly incomplete
            // message.
            this.failure = Some(failure);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Full(chunks) => chunks.is_empty() && self.remaining.unwrap_or(0) == 0,
            _ => self.remaining == Some(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some((record, status)) = self.record.take() {
            record.finish(status, self.sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn uri() -> http::Uri {
        http::Uri::from_static("/t")
    }

    async fn collect(body: ResponseBody) -> Result<Vec<u8>, String> {
        body.collect()
            .await
            .map(|c| c.to_bytes().to_vec())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn longer_than_declared_is_truncated() {
        let body = ResponseBody::full(
            vec![Bytes::from_static(b"abcd"), Bytes::from_static(b"efgh")],
            Some(6),
            uri(),
        );
        assert_eq!(collect(body).await, Ok(b"abcdef".to_vec()));
    }

    #[tokio::test]
    async fn shorter_than_declared_is_an_error() {
        let body = ResponseBody::full(vec![Bytes::from_static(b"abc")], Some(10), uri());
        let err = collect(body).await.expect_err("short");
        assert!(err.contains("fewer than its Content-Length of 10"), "{err}");
    }

    #[tokio::test]
    async fn undeclared_length_passes_everything() {
        let outbuf = Arc::new(Outbuf::new(1024, usize::MAX));
        outbuf.push(Bytes::from_static(b"xy")).expect("open");
        outbuf.finish();
        let body = ResponseBody::stream(outbuf, None, uri());
        assert_eq!(collect(body).await, Ok(b"xy".to_vec()));
    }

    #[tokio::test]
    async fn aborted_stream_is_an_error() {
        let outbuf = Arc::new(Outbuf::new(1024, usize::MAX));
        outbuf.push(Bytes::from_static(b"xy")).expect("open");
        outbuf.abort();
        let body = ResponseBody::stream(Arc::clone(&outbuf), None, uri());
        assert!(collect(body).await.is_err());
    }

    #[tokio::test]
    async fn dropping_a_stream_disconnects_the_producer() {
        let outbuf = Arc::new(Outbuf::new(1024, usize::MAX));
        drop(ResponseBody::stream(Arc::clone(&outbuf), None, uri()));
        assert_eq!(
            outbuf.push(Bytes::from_static(b"late")),
            Err(Stop::ClientGone)
        );
    }

    #[tokio::test]
    async fn a_stream_that_sent_its_declared_length_reports_completion() {
        let outbuf = Arc::new(Outbuf::new(1024, usize::MAX));
        outbuf.push(Bytes::from_static(b"abc")).expect("open");
        let mut body = ResponseBody::stream(Arc::clone(&outbuf), Some(3), uri());
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"abc")));
        drop(body); // as hyper does once the length is out
        assert_eq!(
            outbuf.push(Bytes::from_static(b"more")),
            Err(Stop::BodyComplete)
        );
    }
}
