//! `start_response` and `write()`: the application's half of a response.
//!
//! One [`StartResponse`] exists per request. It validates what the app
//! passes (PEP 3333 plus Waitress's checks: latin-1 only, no CR/LF, no
//! hop-by-hop headers), remembers the status and headers until the first
//! non-empty body chunk, then hands the response head to the connection and
//! streams the rest through an [`Outbuf`]. Headers count as sent at that
//! first chunk, which is what the `exc_info` rules of PEP 3333 key on.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pyo3::exceptions::{PyAssertionError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};
use tokio::sync::oneshot;

use super::head_memo;
use super::outbuf::{self, Outbuf, Stop};
use super::{AppBody, AppResponse, FileBody, Reply};

/// A validated status line from the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: u16,
    /// `None` when it is the code's standard reason phrase (the usual
    /// case, which then costs no allocation).
    pub reason: Option<String>,
}

/// Headers that describe one connection rather than the message; an app
/// setting them would fight the server over framing (PEP 3333 forbids them).
/// As `HeaderName`s, so checking one is a comparison of parsed names.
const HOP_BY_HOP: [HeaderName; 9] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    HeaderName::from_static("trailers"),
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

fn has_forbidden_char(text: &str) -> bool {
    // Field values allow HTAB, SP, visible ASCII and obs-text (latin-1);
    // CR and LF would allow response splitting.
    text.chars()
        .any(|c| (c < ' ' && c != '\t') || c == '\x7f' || u32::from(c) > 0xff)
}

/// Checks a status string such as `"200 OK"`.
pub fn parse_status(text: &str) -> Result<Status, String> {
    if has_forbidden_char(text) {
        return Err(format!(
            "status {text:?} contains a control character or a character outside latin-1"
        ));
    }
    let bytes = text.as_bytes();
    let well_formed = bytes.len() >= 3
        && bytes[..3].iter().all(u8::is_ascii_digit)
        && (bytes.len() == 3 || bytes[3] == b' ');
    if !well_formed {
        return Err(format!(
            "status {text:?} is not a three-digit code followed by a reason, such as \"200 OK\""
        ));
    }
    let code: u16 = text[..3]
        .parse()
        .map_err(|_| format!("status {text:?} has no numeric code"))?;
    if code < 200 {
        return Err(format!(
            "status {text:?}: 1xx codes are interim responses and cannot be a WSGI response"
        ));
    }
    let reason = text.get(4..).unwrap_or("");
    let standard = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|c| c.canonical_reason())
        == Some(reason);
    Ok(Status {
        code,
        reason: (!standard).then(|| reason.to_owned()),
    })
}

/// Checks one header pair and converts it for the wire (latin-1 bytes).
pub fn parse_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let header_name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("header name {name:?} is not a valid HTTP token"))?;
    if HOP_BY_HOP.contains(&header_name) {
        return Err(format!(
            "header {name:?} is hop-by-hop; a WSGI application must not set it (PEP 3333), \
             the server manages the connection"
        ));
    }
    if has_forbidden_char(value) {
        return Err(format!(
            "value of header {name:?} contains CR, LF, another control character, \
             or a character outside latin-1: {value:?}"
        ));
    }
    let header_value = if value.is_ascii() {
        HeaderValue::from_str(value)
    } else {
        let latin1: Vec<u8> = value.chars().map(|c| c as u8).collect();
        HeaderValue::from_bytes(&latin1)
    }
    .map_err(|_| format!("value of header {name:?} is not valid: {value:?}"))?;
    Ok((header_name, header_value))
}

/// The app's Content-Length, if it declared one.
pub fn declared_length(headers: &[(HeaderName, HeaderValue)]) -> Result<Option<u64>, String> {
    let mut found = None;
    for (name, value) in headers {
        if name != http::header::CONTENT_LENGTH {
            continue;
        }
        let digits = value.as_bytes().trim_ascii();
        let n = parse_digits(digits).ok_or_else(|| {
            format!(
                "Content-Length {:?} is not a non-negative integer",
                String::from_utf8_lossy(digits)
            )
        })?;
        if found.is_some_and(|prev| prev != n) {
            return Err("Content-Length is given twice with different values".to_owned());
        }
        found = Some(n);
    }
    Ok(found)
}

/// A non-empty run of ASCII digits as a number; `None` for anything else,
/// including a value too large for a `u64`.
fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

enum Phase {
    /// Nothing sent yet; the head goes out with the first chunk or at the end.
    Waiting(oneshot::Sender<Reply>),
    /// Head sent, body streaming.
    Streaming(Arc<Outbuf>),
    /// The connection wants no more body (it left, or has the whole
    /// declared length).
    Stopped(Stop),
    /// Response complete, or failed.
    Done,
}

#[pyclass(module = "maitred", name = "StartResponse")]
pub struct StartResponse {
    status: Option<Status>,
    headers: Vec<(HeaderName, HeaderValue)>,
    content_length: Option<u64>,
    phase: Phase,
    limits: outbuf::OutbufLimits,
    /// Request URI, for log messages.
    uri: http::Uri,
}

pyo3::create_exception!(
    maitred,
    ClientDisconnected,
    pyo3::exceptions::PyConnectionAbortedError,
    "Raised by write() when the client has gone away."
);

impl Drop for StartResponse {
    /// However the request ended (even by a panic), a body still open must
    /// end, or its connection would wait for the rest forever.
    fn drop(&mut self) {
        if let Phase::Streaming(outbuf) = &self.phase {
            outbuf.abort();
        }
    }
}

thread_local! {
    /// The `write` of the responder this thread is serving (by address),
    /// which `start_response` returns instead of binding a new method
    /// object on every call. Holding `write` keeps the responder alive, so
    /// its address cannot be taken by another object meanwhile.
    static CURRENT_WRITE: RefCell<Option<(usize, Py<PyAny>)>> = const { RefCell::new(None) };
}

/// A Python thread's source of responders. The last request's responder
/// and its `write` are reset and reused when, once that request is over,
/// nothing but this thread holds either (their reference counts show it,
/// and only code holding the GIL could add one). An app that kept
/// `start_response` or `write` keeps that object to itself, and the next
/// request gets a new one. This saves creating, binding and freeing both
/// objects per request.
#[derive(Default)]
pub struct Responders {
    spare: Option<(Py<StartResponse>, Py<PyAny>)>,
}

impl Responders {
    /// A responder for a new request, made current on this thread.
    pub fn take<'py>(
        &mut self,
        py: Python<'py>,
        fresh: StartResponse,
    ) -> PyResult<Bound<'py, StartResponse>> {
        let (responder, write) = match self.spare.take() {
            Some((responder, write)) => {
                let responder = responder.into_bound(py);
                *exclusive(&responder)? = fresh;
                (responder, write)
            }
            None => {
                let responder = Bound::new(py, fresh)?;
                let write = responder.getattr(pyo3::intern!(py, "write"))?.unbind();
                (responder, write)
            }
        };
        CURRENT_WRITE.set(Some((address(&responder), write)));
        Ok(responder)
    }

    /// Ends the current request's use of `responder`, keeping it for the
    /// next request when nothing else holds it.
    pub fn give_back(&mut self, responder: Bound<'_, StartResponse>) {
        let Some((current, write)) = CURRENT_WRITE.take() else {
            return;
        };
        // Two references to the responder (this one and the bound
        // method's `self`), one to the method (this one): nobody else's.
        let unshared = current == address(&responder)
            && references(responder.as_any()) == 2
            && references(write.bind(responder.py())) == 1;
        if unshared {
            self.spare = Some((responder.unbind(), write));
        }
    }
}

/// The object's reference count: exact while the GIL is held, on the
/// GIL-enabled CPython 3.11 that maitred embeds.
fn references(obj: &Bound<'_, PyAny>) -> isize {
    // SAFETY: `obj` holds a reference, so the pointer is to a live object,
    // and the `Bound` proves the GIL is held, so no other thread changes
    // the count while it is read.
    unsafe { pyo3::ffi::Py_REFCNT(obj.as_ptr()) }
}

fn address(responder: &Bound<'_, StartResponse>) -> usize {
    responder.as_ptr() as usize
}

impl StartResponse {
    pub fn new(
        reply: oneshot::Sender<Reply>,
        limits: outbuf::OutbufLimits,
        uri: http::Uri,
    ) -> Self {
        StartResponse {
            status: None,
            headers: Vec::new(),
            content_length: None,
            phase: Phase::Waiting(reply),
            limits,
            uri,
        }
    }

    pub fn has_status(&self) -> bool {
        self.status.is_some()
    }

    pub fn headers_sent(&self) -> bool {
        !matches!(self.phase, Phase::Waiting(_))
    }

    /// Takes the head for sending; errors if the app never called
    /// `start_response`.
    fn take_head(&mut self) -> PyResult<(Status, Vec<(HeaderName, HeaderValue)>)> {
        let status = self.status.clone().ok_or_else(|| {
            PyRuntimeError::new_err(
                "the application produced body data before calling start_response()",
            )
        })?;
        Ok((status, std::mem::take(&mut self.headers)))
    }

    fn send_head(&mut self, body: AppBody) -> PyResult<Result<(), Stop>> {
        if !matches!(self.phase, Phase::Waiting(_)) {
            return Err(PyRuntimeError::new_err("response head sent twice"));
        }
        // Checked before the reply channel is consumed, so a missing
        // start_response still leaves the channel for the 500.
        let (status, headers) = self.take_head()?;
        let Phase::Waiting(reply) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Err(PyRuntimeError::new_err("response head sent twice"));
        };
        let response = AppResponse {
            status: status.code,
            reason: status.reason,
            headers,
            content_length: self.content_length,
            body,
        };
        Ok(reply
            .send(Reply::Response(response))
            .map_err(|_| Stop::ClientGone))
    }

    /// Sends one body chunk, sending the head first if this is the first.
    /// Returns the buffer to wait on when it is over the high-water mark.
    pub fn emit(
        &mut self,
        py: Python<'_>,
        chunk: Bytes,
    ) -> PyResult<Result<Option<Arc<Outbuf>>, Stop>> {
        if let Phase::Waiting(_) = self.phase {
            let outbuf = Arc::new(Outbuf::with_limits(self.limits));
            if let Err(gone) = self.send_head(AppBody::Stream(Arc::clone(&outbuf)))? {
                return Ok(Err(gone));
            }
            self.phase = Phase::Streaming(outbuf);
        }
        let outbuf = match &self.phase {
            Phase::Streaming(outbuf) => Arc::clone(outbuf),
            Phase::Stopped(why) => return Ok(Err(*why)),
            Phase::Waiting(_) | Phase::Done => return Ok(Err(Stop::ClientGone)),
        };
        if let Err(why) = push(py, &outbuf, chunk) {
            self.stopped(&outbuf, why);
            return Ok(Err(why));
        }
        Ok(Ok(outbuf.is_full().then_some(outbuf)))
    }

    /// Records that the connection wants no more, logging once if the app
    /// is writing past its Content-Length.
    fn stopped(&mut self, outbuf: &Outbuf, why: Stop) {
        if why == Stop::BodyComplete {
            outbuf
                .overrun
                .warn(self.content_length.unwrap_or(0), &self.uri);
        }
        self.phase = Phase::Stopped(why);
    }

    /// Ends the response with everything the app produced: a complete body
    /// when nothing was sent yet (so the length is known), otherwise the
    /// end of the stream.
    pub fn finish(&mut self, py: Python<'_>, rest: Vec<Bytes>) -> PyResult<Result<(), Stop>> {
        let outbuf = match &self.phase {
            Phase::Waiting(_) => return self.send_head(AppBody::Full(rest)),
            Phase::Streaming(outbuf) => Arc::clone(outbuf),
            Phase::Stopped(why) => return Ok(Err(*why)),
            Phase::Done => return Ok(Err(Stop::ClientGone)),
        };
        for chunk in rest {
            if let Err(why) = push(py, &outbuf, chunk) {
                self.stopped(&outbuf, why);
                return Ok(Err(why));
            }
        }
        self.phase = Phase::Done;
        outbuf.finish();
        Ok(Ok(()))
    }

    pub fn send_file(&mut self, file: FileBody) -> PyResult<Result<(), Stop>> {
        self.content_length = Some(file.len);
        self.send_head(AppBody::File(file))
    }

    /// The app's declared Content-Length (for deciding a file's length).
    pub fn declared_length(&self) -> Option<u64> {
        self.content_length
    }

    /// The app failed. Before the head went out the client gets a 500 with
    /// `detail`; after, the connection is cut so the truncation shows.
    pub fn fail(&mut self, detail: String) {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Waiting(reply) => {
                // The receiver may be gone if the client left; nothing to do.
                let _ = reply.send(Reply::Failed { detail });
            }
            Phase::Streaming(outbuf) => outbuf.abort(),
            Phase::Stopped(_) | Phase::Done => {}
        }
    }
}

/// Queues a chunk; a push that writes to the spool file does so without the
/// GIL, so disk writes never stall the app's other threads.
fn push(py: Python<'_>, outbuf: &Arc<Outbuf>, chunk: Bytes) -> Result<(), Stop> {
    if outbuf.would_spool(chunk.len()) {
        let outbuf = Arc::clone(outbuf);
        py.detach(move || outbuf.push(chunk))
    } else {
        outbuf.push(chunk)
    }
}

/// Waits (without the GIL) while the client is slower than the app.
pub fn wait_for_room(py: Python<'_>, outbuf: Option<Arc<Outbuf>>) -> Result<(), Stop> {
    match outbuf {
        Some(buf) => py.detach(move || buf.wait_for_room()),
        None => Ok(()),
    }
}

/// A body chunk as `Bytes`. Small chunks are copied, because keeping a
/// Python object alive costs a deferred decref later; large ones are
/// shared with Python without a copy.
pub fn chunk_bytes(item: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    const SHARE_ABOVE: usize = 16 * 1024;
    let bytes = item.cast::<PyBytes>().map_err(|_| {
        let kind = item
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        PyTypeError::new_err(format!(
            "WSGI response body items must be bytes, not {kind} (PEP 3333)"
        ))
    })?;
    let data = bytes.as_bytes();
    if data.len() <= SHARE_ABOVE {
        Ok(Bytes::copy_from_slice(data))
    } else {
        Ok(Bytes::from_owner(
            bytes.extract::<pyo3::pybacked::PyBackedBytes>()?,
        ))
    }
}

fn as_str<'a, 'py>(what: &str, obj: &'a Bound<'py, PyAny>) -> PyResult<&'a Bound<'py, PyString>> {
    obj.cast::<PyString>().map_err(|_| {
        let kind = obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        PyTypeError::new_err(format!("{what} must be a str, not {kind}"))
    })
}

fn py_str<'a>(what: &str, obj: &'a Bound<'_, PyAny>) -> PyResult<std::borrow::Cow<'a, str>> {
    as_str(what, obj)?.to_cow()
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let exc_info = exc_info.filter(|e| !e.is_none());
        // Read the state and let go of it before running any Python code
        // (exc_info's __getitem__, the header iterable), which may call back
        // into this object.
        let (sent, has_status) = {
            let this = exclusive(slf)?;
            (this.headers_sent(), this.status.is_some())
        };
        match exc_info {
            // PEP 3333: once the head is out, the only thing left is to
            // re-raise the error, which cuts the connection.
            Some(exc) if sent => return Err(PyErr::from_value(exc.get_item(1)?)),
            None if has_status => {
                return Err(PyAssertionError::new_err(
                    "start_response() called a second time without exc_info",
                ));
            }
            _ => {}
        }
        let status = py_str("status", status)?;
        let status = head_memo::with(|memo| memo.status(&status)).map_err(PyValueError::new_err)?;
        let mut parsed = Vec::new();
        let mut add = |item: Bound<'py, PyAny>| -> PyResult<()> {
            let (name, value): (Bound<'py, PyAny>, Bound<'py, PyAny>) =
                item.extract().map_err(|_| {
                    PyTypeError::new_err("each header must be a (name, value) tuple of str")
                })?;
            let name = as_str("a header name", &name)?;
            let value = py_str("a header value", &value)?;
            let header = head_memo::with(|memo| memo.header(name, &value))?;
            parsed.push(header.map_err(PyValueError::new_err)?);
            Ok(())
        };
        // PEP 3333 asks for a list; other iterables are accepted too, but
        // a plain list is read in place, without an iterator object.
        if let Ok(list) = headers.cast_exact::<PyList>() {
            for item in list.iter() {
                add(item)?;
            }
        } else {
            for item in headers.try_iter()? {
                add(item?)?;
            }
        }
        let length = declared_length(&parsed).map_err(PyValueError::new_err)?;
        {
            let mut this = exclusive(slf)?;
            this.status = Some(status);
            this.headers = parsed;
            this.content_length = length;
        }
        let current = CURRENT_WRITE.with_borrow(|current| match current {
            Some((responder, write)) if *responder == address(slf) => Some(write.clone_ref(py)),
            _ => None,
        });
        match current {
            Some(write) => Ok(write.into_bound(py)),
            // A responder called from another thread, or kept from an
            // earlier request.
            None => slf.getattr(pyo3::intern!(py, "write")),
        }
    }

    /// The legacy `write()` callable returned by `start_response`.
    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let chunk = chunk_bytes(data)?;
        if chunk.is_empty() {
            return Ok(());
        }
        let waited = {
            let mut this = exclusive(slf)?;
            if this.status.is_none() {
                return Err(PyRuntimeError::new_err(
                    "write() called before start_response()",
                ));
            }
            this.emit(py, chunk)?
        };
        // An exception stops the app's own loop; a complete body is not an
        // error for it, so only a vanished client raises.
        let stopped = |why: Stop| match why {
            Stop::ClientGone => Err(ClientDisconnected::new_err("client disconnected")),
            Stop::BodyComplete => Ok(()),
        };
        match waited {
            Err(why) => stopped(why),
            Ok(outbuf) => wait_for_room(py, outbuf).or_else(stopped),
        }
    }
}

/// The object, mutably; an app calling start_response or write() from
/// inside one of them gets an exception rather than a panic.
fn exclusive<'py>(slf: &Bound<'py, StartResponse>) -> PyResult<PyRefMut<'py, StartResponse>> {
    slf.try_borrow_mut()
        .map_err(|_| PyRuntimeError::new_err("start_response() or write() called re-entrantly"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(
            parse_status("200 OK"),
            Ok(Status {
                code: 200,
                reason: None
            })
        );
        assert_eq!(parse_status("299").map(|s| s.code), Ok(299));
        assert_eq!(
            parse_status("404 Not Found Here").map(|s| s.reason),
            Ok(Some("Not Found Here".into()))
        );
        assert_eq!(
            parse_status("200 ").map(|s| s.reason),
            Ok(Some(String::new())),
            "an empty reason is the app's choice"
        );
        assert!(parse_status("200 OK\r\nX: y").is_err());
        assert!(parse_status("20 OK").is_err());
        assert!(parse_status("200OK").is_err());
        assert!(parse_status("abc OK").is_err());
        assert!(parse_status("100 Continue").unwrap_err().contains("1xx"));
        assert!(parse_status("200 \u{20ac}").is_err(), "non-latin-1");
    }

    #[test]
    fn headers() {
        let (n, v) = parse_header("X-Caf", "caf\u{e9}").expect("latin-1 ok");
        assert_eq!(n.as_str(), "x-caf");
        assert_eq!(v.as_bytes(), b"caf\xe9");
        assert!(parse_header("X-Bad", "a\r\nSet-Cookie: x").is_err());
        assert!(parse_header("X-Euro", "\u{20ac}").is_err());
        assert!(parse_header("Bad Name", "v").is_err());
        assert!(
            parse_header("Connection", "close")
                .unwrap_err()
                .contains("hop-by-hop")
        );
        assert!(parse_header("Transfer-Encoding", "chunked").is_err());
        for name in [
            "Keep-Alive",
            "TRAILERS",
            "te",
            "Upgrade",
            "Proxy-Authorization",
        ] {
            assert!(parse_header(name, "x").is_err(), "{name} is hop-by-hop");
        }
        assert!(parse_header("Trailer-Ish", "x").is_ok());
        assert!(parse_header("X-Tab", "a\tb").is_ok());
    }

    #[test]
    fn content_length_declarations() {
        let h = |v: &str| parse_header("Content-Length", v).expect("header");
        assert_eq!(declared_length(&[h("12")]), Ok(Some(12)));
        assert_eq!(declared_length(&[]), Ok(None));
        assert!(declared_length(&[h("-1")]).is_err());
        assert!(declared_length(&[h("1e3")]).is_err());
        assert!(declared_length(&[h("3"), h("4")]).is_err());
        assert_eq!(declared_length(&[h("3"), h("3")]), Ok(Some(3)));
        assert_eq!(declared_length(&[h(" 7 ")]), Ok(Some(7)));
        assert!(declared_length(&[h("")]).is_err());
        assert!(declared_length(&[h("+1")]).is_err());
        assert!(declared_length(&[h("18446744073709551616")]).is_err());
        assert_eq!(
            declared_length(&[h("18446744073709551615")]),
            Ok(Some(u64::MAX))
        );
    }
}
