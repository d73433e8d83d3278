//! One Python thread: builds each request's environ, calls the app, and
//! feeds what the app returns to the connection.
//!
//! Per-thread state is built once: interned environ keys, a template dict
//! holding the entries every request shares (copied per request, which is
//! one C-level dict copy), and the thread's `wsgi.errors` stream.

use std::cell::Cell;
use std::fs::File;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use super::dispatch::{Dispatch, Parker};
use super::environ::{Entry, Var};
use super::outbuf::Stop;
use super::pool::{Crew, DeferredClose, Job, Slot, ThreadPlan};
use super::start_response::{
    ClientDisconnected, Responders, StartResponse, chunk_bytes, wait_for_room,
};
use super::streams::{ErrorStream, FileWrapper};
use super::{Call, CgiVars, FileBody, RequestBody};
use crate::interpreter::format_exception;

/// Header-name keys kept interned per thread; beyond this, rare names are
/// built per request so odd clients cannot grow the cache without bound.
const HEADER_KEY_CACHE: usize = 256;

/// Environ entries a request's dict has room for without growing: the
/// template's, the CGI variables and a typical browser's headers. The
/// template is created this large because copying a dict copies its table
/// size; growing it per request showed as 2% of the instructions.
const ENVIRON_ROOM: isize = 40;

unsafe extern "C" {
    /// CPython's `_PyDict_NewPresized` (Include/cpython/dictobject.h,
    /// exported by every libpython 3.x maitred supports).
    fn _PyDict_NewPresized(minused: pyo3::ffi::Py_ssize_t) -> *mut pyo3::ffi::PyObject;
}

/// An empty dict with room for `room` entries.
fn presized_dict(py: Python<'_>, room: isize) -> PyResult<Bound<'_, PyDict>> {
    // SAFETY: the GIL is held (`py`), and `_PyDict_NewPresized` takes a
    // plain integer and returns either a new reference to a dict or NULL
    // with an exception set, which `from_owned_ptr_or_err` turns into a
    // `PyErr` (taking ownership of the reference otherwise).
    let dict = unsafe { Bound::from_owned_ptr_or_err(py, _PyDict_NewPresized(room))? };
    Ok(dict.cast_into::<PyDict>()?)
}

const GENERIC_500: &str = "The server encountered an unexpected internal server error";

pub(super) fn thread_main(crew: Arc<Crew>, ready: Option<Sender<Result<(), String>>>) {
    Python::attach(|py| {
        let mut worker = match Worker::new(py, &crew) {
            Ok(w) => w,
            Err(e) => {
                let why = format!(
                    "cannot set up a Python thread:\n{}",
                    format_exception(py, &e)
                );
                crew.not_started(&why);
                match ready {
                    Some(ready) => {
                        let _ = ready.send(Err(why));
                    }
                    None => tracing::error!("{why}"),
                }
                return;
            }
        };
        let mut member = crew.enlist(Arc::clone(&worker.deadline.slot));
        if let Some(ready) = ready {
            let _ = ready.send(Ok(()));
        }
        let me = Parker::current();
        while let Some(job) = crew.dispatch.take(py, &me) {
            // Python objects released off the GIL (large response bodies
            // shared with the I/O thread) wait in pyo3's pending-decref
            // pool, which is emptied whenever a thread attaches. A busy
            // thread keeps the GIL from one job to the next and never
            // re-attaches, so it empties the pool itself: without this a
            // server that is never idle would keep every such body alive.
            Python::attach(|_| ());
            match job {
                Job::Call(call) => {
                    crate::metrics::get()
                        .queue_wait
                        .observe(call.queued_at.elapsed().as_secs_f64());
                    // The client left, or gave up (request_timeout), while
                    // the request waited: running the app would be wasted.
                    if call.reply.is_closed() {
                        continue;
                    }
                    // With a deadline, the watcher can see when this thread
                    // is still in the app past it (see `pool`).
                    let watched = call.deadline.map(|at| {
                        worker.deadline.arm(crew.deadline(at));
                        crew.watch();
                        (call.queued_at, call.uri.clone())
                    });
                    // A bug in maitred must cost one request, not a thread:
                    // the reply channel drops and the client gets a 500.
                    crew.busy.fetch_add(1, Ordering::AcqRel);
                    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| worker.run(py, call)));
                    crew.busy.fetch_sub(1, Ordering::AcqRel);
                    if ran.is_err() {
                        tracing::error!(
                            "internal error while running a request; see the panic message above"
                        );
                    }
                    if let Some((queued_at, uri)) = watched
                        && worker.deadline.was_stuck()
                    {
                        let leave = member.returned();
                        tracing::warn!(
                            "the Python thread stuck in {uri} got out of the app after {:.1}s; {}",
                            queued_at.elapsed().as_secs_f64(),
                            if leave {
                                "the pool has its threads without it: it exits"
                            } else {
                                "it rejoins the pool"
                            }
                        );
                        if leave {
                            break;
                        }
                    }
                }
                Job::Close(iterable, _) => {
                    let closed = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        worker.close(py, iterable.bind(py), &"(file response)");
                    }));
                    if closed.is_err() {
                        tracing::error!(
                            "internal error while closing a file response; see the panic message above"
                        );
                    }
                }
            }
        }
        drop(member);
    });
}

/// A value seen last time and its Python string: a request that repeats it
/// (the same method, protocol, client address, Host, User-Agent) shares
/// the immutable string instead of building a new one.
/// The string is compared through its own UTF-8 text, which CPython
/// keeps in place for ASCII, so remembering costs no copy.
#[derive(Default)]
struct Recent(Option<Py<PyString>>);

impl Recent {
    fn get<'py>(&mut self, py: Python<'py>, value: &str) -> Bound<'py, PyString> {
        if let Some(string) = &self.0 {
            let string = string.bind(py);
            if string.to_str().is_ok_and(|text| text == value) {
                return string.clone();
            }
        }
        let string = PyString::new(py, value);
        // Long values (a cookie, a token) are rarely repeated; keeping
        // them would hold up to a header's size per header per thread.
        if value.len() <= RECENT_MAX {
            self.0 = Some(string.clone().unbind());
        }
        string
    }
}

/// Longest value [`Recent`] remembers.
const RECENT_MAX: usize = 256;

/// Which [`Recent`] remembers `var`, for CGI variables whose value
/// usually repeats from one request to the next. REMOTE_HOST carries
/// REMOTE_ADDR's text (set just before it), so it shares that one and with
/// it the string.
fn remembered_as(var: Var) -> Option<Var> {
    match var {
        Var::RemoteHost => Some(Var::RemoteAddr),
        Var::RequestMethod
        | Var::ServerProtocol
        | Var::RemoteAddr
        | Var::ServerPort
        | Var::QueryString
        | Var::ContentType
        | Var::UrlScheme
        | Var::ServerName
        | Var::ScriptName
        | Var::PeerAddr => Some(var),
        _ => None,
    }
}

/// A list or tuple body's non-empty chunks.
fn collect_chunks<'py>(
    len: usize,
    items: impl Iterator<Item = Bound<'py, PyAny>>,
) -> PyResult<Vec<bytes::Bytes>> {
    let mut chunks = Vec::with_capacity(len);
    for item in items {
        let chunk = chunk_bytes(&item)?;
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
    }
    Ok(chunks)
}

/// The deadline of the request in hand, where the pool's watcher sees it.
/// It applies until the response starts, as `request_timeout` does: a
/// response that has started may stream for as long as it needs.
struct Deadline {
    slot: Arc<Slot>,
    armed: Cell<bool>,
    /// The watcher counted the thread as stuck before the deadline was
    /// lifted.
    stuck: Cell<bool>,
}

impl Deadline {
    fn arm(&self, at: u64) {
        self.slot.arm(at);
        self.armed.set(true);
    }

    /// The response has started, or the request is over.
    fn lift(&self) {
        if self.armed.replace(false) && self.slot.disarm() {
            self.stuck.set(true);
        }
    }

    /// Lifts the deadline at the end of a request: whether the thread was
    /// counted as stuck meanwhile.
    fn was_stuck(&self) -> bool {
        self.lift();
        self.stuck.replace(false)
    }
}

/// How a response left the app's thread.
enum Delivery {
    Sent,
    /// `close()` will run when the I/O side is done (file responses).
    Deferred,
    Disconnected,
}

struct Worker {
    app: Py<PyAny>,
    config: Arc<ThreadPlan>,
    dispatch: Arc<Dispatch>,
    template: Py<PyDict>,
    keys: Vec<Py<PyString>>,
    /// Interned `HTTP_*` keys, with the last value seen under each.
    /// FNV rather than the default SipHash: the keys are short and the
    /// lookup runs once per request header, where SipHash cost more than
    /// the dict insert it serves. Flooding is not a concern because the
    /// map never holds more than `HEADER_KEY_CACHE` names.
    header_keys: fnv::FnvHashMap<String, (Py<PyString>, Recent)>,
    /// The last value of each CGI variable worth remembering.
    recent: Vec<Recent>,
    bytes_io: Py<PyAny>,
    io_open: Py<PyAny>,
    responders: Responders,
    deadline: Deadline,
}

impl Worker {
    fn new(py: Python<'_>, crew: &Crew) -> PyResult<Self> {
        let config = &crew.config;
        let template = presized_dict(py, ENVIRON_ROOM)?;
        template.set_item("wsgi.version", PyTuple::new(py, [1, 0])?)?;
        template.set_item("wsgi.url_scheme", config.environ.scheme.as_str())?;
        template.set_item("wsgi.errors", Bound::new(py, ErrorStream::new())?)?;
        template.set_item("wsgi.multithread", config.threads > 1)?;
        template.set_item("wsgi.multiprocess", false)?;
        template.set_item("wsgi.run_once", false)?;
        template.set_item("wsgi.input_terminated", true)?;
        template.set_item("wsgi.file_wrapper", py.get_type::<FileWrapper>())?;
        template.set_item("SERVER_SOFTWARE", &config.environ.server_software)?;
        template.set_item("SERVER_NAME", &config.environ.server_name)?;
        template.set_item("SCRIPT_NAME", &config.environ.script_name)?;
        let keys = Var::ALL
            .iter()
            .map(|v| PyString::intern(py, v.name()).unbind())
            .collect();
        let io = py.import("io")?;
        Ok(Worker {
            app: crew.app.clone_ref(py),
            config: Arc::clone(config),
            dispatch: Arc::clone(&crew.dispatch),
            template: template.unbind(),
            keys,
            header_keys: fnv::FnvHashMap::default(),
            recent: Var::ALL.iter().map(|_| Recent::default()).collect(),
            bytes_io: io.getattr("BytesIO")?.unbind(),
            io_open: io.getattr("open")?.unbind(),
            responders: Responders::default(),
            deadline: Deadline {
                slot: Arc::new(Slot::default()),
                armed: Cell::new(false),
                stuck: Cell::new(false),
            },
        })
    }

    fn run(&mut self, py: Python<'_>, call: Call) {
        let Call {
            cgi,
            body,
            reply,
            head,
            uri,
            queued_at: _,
            deadline: _,
        } = call;
        let fresh = StartResponse::new(reply, self.config.output, uri.clone());
        let responder = match self.responders.take(py, fresh) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot create start_response: {}", format_exception(py, &e));
                return;
            }
        };
        self.serve(py, &responder, cgi, body, head, &uri);
        self.responders.give_back(responder);
    }

    /// The request's life from the environ to closing its input.
    fn serve(
        &mut self,
        py: Python<'_>,
        responder: &Bound<'_, StartResponse>,
        cgi: CgiVars,
        body: RequestBody,
        head: bool,
        uri: &http::Uri,
    ) {
        // Most requests have no body; their reader holds nothing to free.
        let holds_data = !matches!(&body, RequestBody::Memory(bytes) if bytes.is_empty());
        let input = match self.input(py, body) {
            Ok(input) => input,
            Err(e) => return self.failed(py, responder, &e, uri),
        };
        let result = self
            .environ(py, cgi, &input)
            .and_then(|environ| self.app.bind(py).call1((environ, responder)));
        match result {
            Err(e) => self.failed(py, responder, &e, uri),
            Ok(iterable) => {
                let sent = self.send_body(py, responder, &iterable);
                self.deadline.lift();
                let deferred = match sent {
                    Ok(Delivery::Deferred) => true,
                    Ok(Delivery::Sent) => false,
                    Ok(Delivery::Disconnected) => {
                        // A stuck request's client had its 504 long ago;
                        // its thread's return is logged on its own.
                        if !head && !self.deadline.stuck.get() {
                            tracing::info!("Client disconnected while serving {uri}");
                        }
                        false
                    }
                    Err(e) => {
                        self.failed(py, responder, &e, uri);
                        false
                    }
                };
                if !deferred {
                    self.close(py, &iterable, uri);
                }
            }
        }
        // Waitress closes the request body when the request is over; a
        // spooled one would otherwise hold its file until Python's garbage
        // collector found the environ.
        if holds_data && let Err(e) = input.call_method0(pyo3::intern!(py, "close")) {
            tracing::warn!("closing wsgi.input failed: {}", format_exception(py, &e));
        }
    }

    fn environ<'py>(
        &mut self,
        py: Python<'py>,
        cgi: CgiVars,
        input: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let environ = self.template.bind(py).copy()?;
        for entry in cgi.iter() {
            match entry {
                Entry::Var(var, value) => {
                    let key = self.keys[var as usize].bind(py);
                    match remembered_as(var) {
                        Some(slot) => {
                            environ.set_item(key, self.recent[slot as usize].get(py, value))?
                        }
                        None => environ.set_item(key, value)?,
                    }
                }
                Entry::Header(key, value) => self.header(py, &environ, key, value)?,
            }
        }
        environ.set_item(pyo3::intern!(py, "wsgi.input"), input)?;
        Ok(environ)
    }

    /// Sets an `HTTP_*` entry, reusing the interned key and, when the
    /// value is the one this header had last time (the same Host, the same
    /// browser's Accept), the string object too.
    fn header(
        &mut self,
        py: Python<'_>,
        environ: &Bound<'_, PyDict>,
        key: &str,
        value: &str,
    ) -> PyResult<()> {
        if let Some((k, recent)) = self.header_keys.get_mut(key) {
            return environ.set_item(k.bind(py), recent.get(py, value));
        }
        let interned = PyString::intern(py, key);
        if self.header_keys.len() < HEADER_KEY_CACHE {
            let mut recent = Recent::default();
            let v = recent.get(py, value);
            self.header_keys
                .insert(key.to_owned(), (interned.clone().unbind(), recent));
            return environ.set_item(interned, v);
        }
        environ.set_item(interned, value)
    }

    /// `wsgi.input`: a `BytesIO` over an in-memory body, or the spooled
    /// file opened in binary mode. Both are the standard library's own
    /// readers, so `read`, `readline`, `readlines` and iteration agree.
    fn input<'py>(&self, py: Python<'py>, body: RequestBody) -> PyResult<Bound<'py, PyAny>> {
        match body {
            // No argument at all for the usual empty body: cheaper to call.
            RequestBody::Memory(bytes) if bytes.is_empty() => self.bytes_io.bind(py).call0(),
            RequestBody::Memory(bytes) => self.bytes_io.bind(py).call1((PyBytes::new(py, &bytes),)),
            RequestBody::File(file) => {
                // Python takes ownership of the descriptor on success. On a
                // failure the descriptor may or may not have been closed by
                // CPython, so it is deliberately leaked rather than risk
                // closing a number that another thread has reused.
                let fd = OwnedFd::from(file).into_raw_fd();
                self.io_open.bind(py).call1((fd, "rb"))
            }
        }
    }

    fn send_body(
        &self,
        py: Python<'_>,
        responder: &Bound<'_, StartResponse>,
        iterable: &Bound<'_, PyAny>,
    ) -> PyResult<Delivery> {
        let gone = |r: Result<(), Stop>| match r {
            Ok(()) | Err(Stop::BodyComplete) => Delivery::Sent,
            Err(Stop::ClientGone) => Delivery::Disconnected,
        };
        // A list or tuple is the whole body: send it in one piece, with a
        // Content-Length, so even HTTP/1.0 clients can keep the connection.
        // Read in place: no iterator object, and room for every chunk.
        let whole = if let Ok(list) = iterable.cast_exact::<PyList>() {
            Some(collect_chunks(list.len(), list.iter())?)
        } else if let Ok(tuple) = iterable.cast_exact::<PyTuple>() {
            Some(collect_chunks(tuple.len(), tuple.iter())?)
        } else {
            None
        };
        if let Some(chunks) = whole {
            return Ok(gone(responder.borrow_mut().finish(py, chunks)?));
        }
        if let Ok(wrapper) = iterable.cast::<FileWrapper>() {
            // Without a status the generic path raises the usual error; the
            // fast path hands close() to the I/O side and must not start.
            let ready = {
                let r = responder.borrow();
                r.has_status() && !r.headers_sent()
            };
            if ready {
                if let Some((file, offset, size)) = self.file_source(py, wrapper.get())? {
                    let declared = responder.borrow().declared_length();
                    // Waitress's rule: a declared length shorter than the
                    // file caps it; a longer one is corrected to the file.
                    let len = declared.map_or(size, |d| d.min(size));
                    let close =
                        DeferredClose::new(iterable.clone().unbind(), Arc::clone(&self.dispatch));
                    let body = FileBody {
                        file,
                        offset,
                        len,
                        close,
                    };
                    return Ok(match responder.borrow_mut().send_file(body)? {
                        Ok(()) => Delivery::Deferred,
                        Err(_) => {
                            tracing::info!("Client disconnected before a file response");
                            Delivery::Deferred
                        }
                    });
                }
            }
        }
        for item in iterable.try_iter()? {
            let chunk = chunk_bytes(&item?)?;
            if chunk.is_empty() {
                continue;
            }
            let emitted = responder.borrow_mut().emit(py, chunk)?;
            // The head went out with the first chunk.
            self.deadline.lift();
            // A complete body ends the iteration early without it being a
            // disconnect: the declared length has gone out.
            if let Err(why) = emitted.and_then(|full| wait_for_room(py, full)) {
                return Ok(gone(Err(why)));
            }
        }
        Ok(gone(responder.borrow_mut().finish(py, Vec::new())?))
    }

    /// A regular binary file behind a file wrapper, as an independent
    /// descriptor positioned where the app left the Python file object.
    fn file_source(
        &self,
        py: Python<'_>,
        wrapper: &FileWrapper,
    ) -> PyResult<Option<(File, u64, u64)>> {
        let filelike = wrapper.filelike_ref(py);
        // Text files report opaque tell() cookies, and objects without a
        // descriptor cannot be read from Rust: both take the generic path.
        if filelike.hasattr(pyo3::intern!(py, "encoding"))? {
            return Ok(None);
        }
        let fd = filelike
            .call_method0(pyo3::intern!(py, "fileno"))
            .and_then(|f| f.extract::<i32>());
        let pos = filelike
            .call_method0(pyo3::intern!(py, "tell"))
            .and_then(|p| p.extract::<u64>());
        let (Ok(fd), Ok(pos)) = (fd, pos) else {
            return Ok(None);
        };
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) accepts any integer: for one that
        // is not an open descriptor it fails with -1 and touches nothing.
        // On success it returns a new descriptor that nothing else in the
        // process knows about, so the OwnedFd below becomes its sole owner
        // and closes it exactly once. (`os.dup` is not used: the app could
        // have replaced it, and then it would decide what Rust owns.)
        let file = unsafe {
            let dup = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0);
            if dup < 0 {
                return Ok(None);
            }
            File::from(OwnedFd::from_raw_fd(dup))
        };
        match file.metadata() {
            Ok(meta) if meta.is_file() => {
                let size = meta.len().saturating_sub(pos);
                Ok(Some((file, pos, size)))
            }
            _ => Ok(None),
        }
    }

    fn failed(
        &self,
        py: Python<'_>,
        responder: &Bound<'_, StartResponse>,
        err: &PyErr,
        uri: &http::Uri,
    ) {
        if err.is_instance_of::<ClientDisconnected>(py) {
            tracing::info!("Client disconnected while serving {uri}");
            responder.borrow_mut().fail(String::new());
            return;
        }
        count_exception(py, err);
        let traceback = format_exception(py, err);
        tracing::error!(target: "maitred::app", "Exception while serving {uri}\n{traceback}");
        let detail = if self.config.expose_tracebacks {
            traceback
        } else {
            GENERIC_500.to_owned()
        };
        responder.borrow_mut().fail(detail);
    }

    /// PEP 3333: the iterable's `close()` runs once the response is over,
    /// however it ended.
    fn close(&self, py: Python<'_>, iterable: &Bound<'_, PyAny>, uri: &dyn std::fmt::Display) {
        if iterable.is_exact_instance_of::<PyList>() || iterable.is_exact_instance_of::<PyTuple>() {
            return;
        }
        let close = pyo3::intern!(py, "close");
        match iterable.hasattr(close) {
            Ok(true) => {
                if let Err(e) = iterable.call_method0(close) {
                    count_exception(py, &e);
                    tracing::error!(
                        target: "maitred::app",
                        "Exception in close() of the response to {uri}\n{}",
                        format_exception(py, &e)
                    );
                }
            }
            Ok(false) => {}
            Err(e) => tracing::error!(target: "maitred::app", "{}", format_exception(py, &e)),
        }
    }
}

/// Counts an exception from the app by its qualified type name
/// (`maitred_app_exceptions_total`).
fn count_exception(py: Python<'_>, err: &PyErr) {
    let ty = err.get_type(py);
    match ty.fully_qualified_name() {
        Ok(name) => crate::metrics::get().app_exception(&name.to_string_lossy()),
        Err(_) => crate::metrics::get().app_exception("_OTHER"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_value_shares_its_string_and_a_new_one_does_not() {
        Python::initialize();
        Python::attach(|py| {
            let mut recent = Recent::default();
            let a = recent.get(py, "127.0.0.1");
            let b = recent.get(py, "127.0.0.1");
            assert!(a.is(&b), "the same value is the same object");
            let c = recent.get(py, "10.0.0.7");
            assert_eq!(c.to_str().expect("str"), "10.0.0.7");
            assert!(!c.is(&a));
            assert_eq!(
                recent.get(py, "127.0.0.1").to_str().expect("str"),
                "127.0.0.1"
            );
            let long = "x".repeat(RECENT_MAX + 1);
            let d = recent.get(py, &long);
            assert_eq!(d.to_str().expect("str"), long);
            assert!(!recent.get(py, &long).is(&d), "long values are not kept");
        });
    }
}
