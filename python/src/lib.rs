//! `maitred._maitred`: maitred as a CPython extension module. The `maitred`
//! command of a `pip install` is `python -m maitred` (`maitred/__main__.py`),
//! which calls [`run`] with its command line; from there on it is the same
//! code as the binary's, hosted by the Python that imported it (see
//! `maitred::host`).

use std::ffi::OsString;
use std::path::PathBuf;

use maitred::host::{self, Host, Launch};
use pyo3::prelude::*;

/// The same allocator as the binary's, for the same reasons (see
/// `src/main.rs`); it serves the Rust side only, as there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs maitred with `argv` (the program name first) in this Python and
/// returns its exit code. The GIL is released for the whole run: the
/// server's own threads take it to run the app.
#[pyfunction]
fn run(py: Python<'_>, argv: Vec<OsString>) -> PyResult<u8> {
    let sys = py.import("sys")?;
    let executable: PathBuf = sys.getattr("executable")?.extract()?;
    let version: String = py
        .import("platform")?
        .call_method0("python_version")?
        .extract()?;
    let launch = Launch {
        host: Host::Extension {
            executable,
            version,
        },
        args: argv,
    };
    Ok(py.detach(|| host::main(&launch)))
}

#[pymodule]
fn _maitred(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
