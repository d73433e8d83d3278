//! The two objects the environ lends the app besides its input:
//! `wsgi.errors`, which writes to the server log, and `wsgi.file_wrapper`,
//! which lets the server send a real file without Python in the loop.

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::PyString;

/// `wsgi.errors`: a text stream whose lines go to the log (target
/// `wsgi.errors`, level WARN). Partial lines wait for their newline or a
/// `flush()`. One stream exists per worker thread, so lines from
/// concurrent requests never interleave mid-line.
#[pyclass(module = "maitred", name = "ErrorStream", frozen)]
pub struct ErrorStream {
    pending: Mutex<String>,
}

impl ErrorStream {
    pub fn new() -> Self {
        ErrorStream {
            pending: Mutex::new(String::new()),
        }
    }

    fn emit(line: &str) {
        tracing::warn!(target: "wsgi.errors", "{}", line.trim_end_matches('\r'));
    }
}

#[pymethods]
impl ErrorStream {
    fn write(&self, text: &Bound<'_, PyAny>) -> PyResult<usize> {
        let text = text
            .cast::<PyString>()
            .map_err(|_| pyo3::exceptions::PyTypeError::new_err("wsgi.errors.write() takes a str"))?
            .to_cow()?;
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pending.push_str(&text);
        while let Some(end) = pending.find('\n') {
            Self::emit(&pending[..end]);
            pending.drain(..=end);
        }
        Ok(text.chars().count())
    }

    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            self.write(&line?)?;
        }
        Ok(())
    }

    fn flush(&self) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !pending.is_empty() {
            Self::emit(&pending);
            pending.clear();
        }
    }

    fn writable(&self) -> bool {
        true
    }
}

/// `wsgi.file_wrapper(filelike, block_size=8192)`.
///
/// Iterating it reads `block_size` pieces, so it works under any middleware.
/// When an app returns one unchanged and the file is a regular file, the
/// server instead sends the file itself from the I/O side (see
/// `worker::file_source`), and `close()` runs once the body has gone out.
#[pyclass(module = "maitred", name = "FileWrapper", frozen, subclass)]
pub struct FileWrapper {
    #[pyo3(get)]
    filelike: Py<PyAny>,
    #[pyo3(get)]
    blksize: usize,
}

impl FileWrapper {
    pub fn filelike_ref<'py>(&self, py: Python<'py>) -> &Bound<'py, PyAny> {
        self.filelike.bind(py)
    }
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, block_size = 8192))]
    fn new(filelike: Py<PyAny>, block_size: usize) -> Self {
        FileWrapper {
            filelike,
            blksize: block_size.max(1),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1(pyo3::intern!(py, "read"), (self.blksize,))?;
        Ok(if data.is_truthy()? { Some(data) } else { None })
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let filelike = self.filelike.bind(py);
        if filelike.hasattr(pyo3::intern!(py, "close"))? {
            filelike.call_method0(pyo3::intern!(py, "close"))?;
        }
        Ok(())
    }
}
