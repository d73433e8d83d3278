//! The app's CPython: starting it the way `python` itself would start
//! (virtualenv included) when maitred embeds it, joining it when maitred
//! runs inside it as an extension module ([`Startup`]), finding the
//! application, and reporting which Python is running.
//!
//! The interpreter is configured through `PyConfig` rather than pyo3's
//! default initialisation for three reasons: `executable` must point at the
//! virtualenv's `python` so CPython's own `getpath` applies `pyvenv.cfg`
//! (site-packages, `include-system-site-packages`, `sys.prefix`) exactly as
//! the venv's interpreter would; `sys.executable` must be a real Python so
//! apps that spawn subprocesses or use `multiprocessing` keep working; and
//! Python must not install its own signal handlers, because SIGTERM and
//! SIGINT belong to the server's drain logic.

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyModule};

use crate::config::plan::AppPlan;

/// The facts about the running Python that start-up reports.
#[derive(Debug, Clone)]
pub struct PythonInfo {
    pub version: String,
    pub prefix: String,
    pub base_prefix: String,
    pub executable: String,
    /// The `libpython` the dynamic loader actually mapped.
    pub library: Option<PathBuf>,
    pub virtualenv: Option<PathBuf>,
    /// Started by maitred (the binary), not joined (the extension module).
    pub embedded: bool,
}

/// Who starts Python (see [`crate::host`]).
#[derive(Debug, Clone)]
pub enum Startup {
    /// maitred starts the linked-in CPython, with this `sys.argv`.
    Embedded { argv: Vec<std::ffi::OsString> },
    /// Python is running already, and maitred was called from it with the
    /// GIL released: its virtualenv and `sys.argv` are what they are.
    Running,
}

impl Startup {
    /// Embedded, with this process's own command line as `sys.argv`.
    pub fn embedded() -> Startup {
        Startup::Embedded {
            argv: std::env::args_os().collect(),
        }
    }
}

/// Why the server cannot start Python or load the app. The variants map to
/// exit codes: a bad setting is 2, everything else 1.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    BadSetting(String),
    #[error("{0}")]
    Python(String),
    #[error("{0}")]
    App(String),
}

/// The directory of the build interpreter's shared library, recorded by
/// `build.rs`, so a mismatch with the loaded one can be reported.
const BUILD_LIBDIR: &str = env!("BUILD_PYTHON_LIBDIR");
const BUILD_EXECUTABLE: &str = env!("BUILD_PYTHON_EXECUTABLE");
const BUILD_VERSION: &str = env!("BUILD_PYTHON_VERSION");

/// `major.minor` of the CPython the binary was built against.
pub fn build_python_version() -> &'static str {
    BUILD_VERSION
}

/// Which virtualenv to use: the setting, else `$VIRTUAL_ENV`.
fn virtualenv(app: &AppPlan) -> Result<Option<PathBuf>, StartError> {
    let (dir, origin) = match (&app.virtualenv, std::env::var_os("VIRTUAL_ENV")) {
        (Some(dir), _) => (dir.clone(), "virtualenv"),
        (None, Some(dir)) if !dir.is_empty() => (PathBuf::from(dir), "VIRTUAL_ENV"),
        _ => return Ok(None),
    };
    let cfg = dir.join("pyvenv.cfg");
    let text = std::fs::read_to_string(&cfg).map_err(|e| {
        StartError::BadSetting(format!(
            "{origin}: {} is not a virtualenv ({} cannot be read: {e}); \
             create one with `python3 -m venv {}`",
            dir.display(),
            cfg.display(),
            dir.display()
        ))
    })?;
    if let Some(found) = venv_version(&text) {
        if found != BUILD_VERSION {
            return Err(StartError::BadSetting(format!(
                "{origin}: {} was created by Python {found}, but this maitred embeds Python \
                 {BUILD_VERSION}; recreate the virtualenv with python{BUILD_VERSION}",
                dir.display()
            )));
        }
    }
    // Same version is not enough: a venv made by another 3.11 (Debian's,
    // say) sets `home` to that installation, and CPython would then pair
    // this binary's libpython with that installation's standard library.
    if let (Some(home), Some(ours)) = (venv_home(&text), Path::new(BUILD_EXECUTABLE).parent()) {
        let same = std::fs::canonicalize(&home).ok() == std::fs::canonicalize(ours).ok();
        if !same && Path::new(BUILD_EXECUTABLE).exists() {
            return Err(StartError::BadSetting(format!(
                "{origin}: {} was created by the Python in {home}, but this maitred embeds \
                 {BUILD_EXECUTABLE}; their standard libraries and compiled packages may not \
                 match. Recreate it with `{BUILD_EXECUTABLE} -m venv {}`",
                dir.display(),
                dir.display()
            )));
        }
    }
    let python = dir.join("bin").join("python");
    if !python.exists() {
        return Err(StartError::BadSetting(format!(
            "{origin}: {} has no bin/python; recreate it with `python{BUILD_VERSION} -m venv`",
            dir.display()
        )));
    }
    // Absolute, so getpath's search does not depend on the working directory.
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    Ok(Some(dir))
}

/// The `home` of a `pyvenv.cfg`: the bin directory of the Python that made it.
fn venv_home(cfg: &str) -> Option<String> {
    cfg.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "home").then(|| value.trim().to_owned())
    })
}

/// `major.minor` from a `pyvenv.cfg` (`version = 3.11.7` or `version_info`).
fn venv_version(cfg: &str) -> Option<String> {
    cfg.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        matches!(key.trim(), "version" | "version_info").then(|| {
            let mut parts = value.trim().split('.');
            format!(
                "{}.{}",
                parts.next().unwrap_or(""),
                parts.next().unwrap_or("")
            )
        })
    })
}

fn c_string(what: &str, text: &str) -> Result<CString, StartError> {
    CString::new(text)
        .map_err(|_| StartError::BadSetting(format!("{what} contains a NUL byte: {text:?}")))
}

/// Starts CPython for the process (or joins the running one) and leaves
/// the GIL released, so the worker threads can take it. Must be called
/// before any other Python use; a second embedded start is refused.
pub fn initialize(app: &AppPlan, startup: &Startup) -> Result<PythonInfo, StartError> {
    let started = match startup {
        Startup::Embedded { argv } => Some(start_embedded(app, argv)?),
        Startup::Running => None,
    };
    let mut info = Python::attach(|py| {
        let sys = py.import("sys")?;
        let info = PythonInfo {
            version: sys
                .getattr("version")?
                .extract::<String>()?
                .replace('\n', " "),
            prefix: sys.getattr("prefix")?.extract()?,
            base_prefix: sys.getattr("base_prefix")?.extract()?,
            executable: sys.getattr("executable")?.extract()?,
            library: loaded_libpython(),
            virtualenv: None,
            embedded: started.is_some(),
        };
        setup_sys_path(py, &app.app_dirs)?;
        watch_gc(py)?;
        Ok::<_, PyErr>(info)
    })
    .map_err(|e| StartError::Python(format!("cannot set up Python: {e}")))?;
    info.virtualenv = match started {
        Some(venv) => venv,
        None => running_virtualenv(app.virtualenv.as_deref(), &info)?,
    };
    Ok(info)
}

/// Inside a running Python the virtualenv is the one that Python runs in:
/// it cannot be changed any more, so a `virtualenv` setting naming another
/// one is an error rather than something silently ignored. `VIRTUAL_ENV`
/// is not consulted (an activated venv may not be the one whose `maitred`
/// was run, and the one that runs is the one that counts).
fn running_virtualenv(
    wanted: Option<&Path>,
    python: &PythonInfo,
) -> Result<Option<PathBuf>, StartError> {
    let prefix = Path::new(&python.prefix);
    if let Some(wanted) = wanted {
        let same = std::fs::canonicalize(wanted).ok() == std::fs::canonicalize(prefix).ok();
        if !same {
            return Err(StartError::BadSetting(format!(
                "virtualenv: {} is not the environment this maitred runs in ({}); \
                 run {}/bin/maitred (pip install maitred there), or leave virtualenv unset",
                wanted.display(),
                prefix.display(),
                wanted.display()
            )));
        }
    }
    Ok((python.prefix != python.base_prefix).then(|| prefix.to_path_buf()))
}

/// Starts the linked-in CPython, as the venv's `python` would start;
/// returns the virtualenv used.
fn start_embedded(
    app: &AppPlan,
    args: &[std::ffi::OsString],
) -> Result<Option<PathBuf>, StartError> {
    // SAFETY: Py_IsInitialized may be called at any time, before or after
    // initialisation, without the GIL.
    if unsafe { ffi::Py_IsInitialized() } != 0 {
        return Err(StartError::Python("Python is already initialized".into()));
    }
    let venv = virtualenv(app)?;
    let executable = match &venv {
        Some(dir) => Some(
            dir.join("bin")
                .join("python")
                .to_string_lossy()
                .into_owned(),
        ),
        None if Path::new(BUILD_EXECUTABLE).exists() => Some(BUILD_EXECUTABLE.to_owned()),
        // Relocated binary (e.g. copied into an image with a different
        // layout): let CPython's getpath find its prefix on its own.
        None => None,
    };
    let executable = executable
        .map(|e| c_string("the Python executable path", &e))
        .transpose()?;
    // Bytes, not str: arguments need not be UTF-8 (PyConfig decodes them
    // with the locale, as `python` does).
    let argv: Vec<CString> = args
        .iter()
        .map(|a| {
            CString::new(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str()))
                .map_err(|_| StartError::BadSetting("an argument contains a NUL byte".into()))
        })
        .collect::<Result<_, _>>()?;
    let mut argv_ptrs: Vec<*const std::os::raw::c_char> = argv.iter().map(|a| a.as_ptr()).collect();

    // SAFETY: this is the documented PyConfig start-up sequence
    // (https://docs.python.org/3/c-api/init_config.html). It runs only when
    // Python is not yet initialised (checked above), on the main thread,
    // before any other Python API call, and pyo3 never initialises Python
    // on its own (its auto-initialize feature is off). `config` lives in a
    // MaybeUninit that `PyConfig_InitPythonConfig` fully initialises before
    // any field is read; every field is accessed through the raw pointer
    // `cfg`, so no Rust reference aliases the struct CPython writes to. The
    // strings passed are NUL-terminated CStrings that outlive the calls, and
    // CPython copies them. `PyConfig_Clear` frees what the config owns,
    // exactly once. `PyEval_SaveThread` releases the GIL the initialising
    // thread holds and detaches its thread state, which stays registered:
    // when this thread later enters Python through `Python::attach` (to
    // import the app), `PyGILState_Ensure` re-attaches that same state.
    unsafe {
        let mut config = MaybeUninit::<ffi::PyConfig>::uninit();
        let cfg = config.as_mut_ptr();
        ffi::PyConfig_InitPythonConfig(cfg);
        (*cfg).install_signal_handlers = 0;
        (*cfg).parse_argv = 0;
        let mut status = ffi::PyConfig_SetBytesArgv(
            cfg,
            argv_ptrs.len() as ffi::Py_ssize_t,
            argv_ptrs.as_mut_ptr(),
        );
        if ffi::PyStatus_Exception(status) == 0 {
            if let Some(exe) = &executable {
                status =
                    ffi::PyConfig_SetBytesString(cfg, &raw mut (*cfg).executable, exe.as_ptr());
            }
        }
        if ffi::PyStatus_Exception(status) == 0 {
            status = ffi::Py_InitializeFromConfig(cfg);
        }
        ffi::PyConfig_Clear(cfg);
        if ffi::PyStatus_Exception(status) != 0 {
            let msg = if status.err_msg.is_null() {
                "unknown error".to_owned()
            } else {
                CStr::from_ptr(status.err_msg)
                    .to_string_lossy()
                    .into_owned()
            };
            return Err(StartError::Python(format!("cannot start Python: {msg}")));
        }
        ffi::PyEval_SaveThread();
    }
    Ok(venv)
}

/// Feeds `cpython_gc_*` from `gc.callbacks`, installed before the app is
/// imported so its import-time collections count too.
fn watch_gc(py: Python<'_>) -> PyResult<()> {
    let callback = pyo3::wrap_pyfunction!(gc_callback, py)?;
    py.import("gc")?
        .getattr("callbacks")?
        .call_method1("append", (callback,))?;
    Ok(())
}

/// Called by CPython at the start and stop of every collection; the
/// `stop` call carries the generation and what was collected.
#[pyfunction]
fn gc_callback(phase: &str, info: &Bound<'_, pyo3::types::PyDict>) -> PyResult<()> {
    if phase != "stop" {
        return Ok(());
    }
    let field = |name: &str| -> PyResult<u64> {
        Ok(match info.get_item(name)? {
            Some(v) => v.extract().unwrap_or(0),
            None => 0,
        })
    };
    let generation = usize::try_from(field("generation")?).unwrap_or(usize::MAX);
    crate::metrics::get().gc_collection(generation, field("collected")?, field("uncollectable")?);
    Ok(())
}

/// Waitress appends the working directory to `sys.path`; `--app-dir`
/// directories go first because naming one is an explicit wish to import
/// from it ahead of installed packages.
fn setup_sys_path(py: Python<'_>, app_dirs: &[PathBuf]) -> PyResult<()> {
    let path = py.import("sys")?.getattr("path")?.cast_into::<PyList>()?;
    for (i, dir) in app_dirs.iter().enumerate() {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
        path.insert(i, dir.to_string_lossy())?;
    }
    if let Ok(cwd) = std::env::current_dir() {
        let cwd = cwd.to_string_lossy().into_owned();
        if !path.contains(&cwd)? {
            path.append(cwd)?;
        }
    }
    Ok(())
}

/// The path of the `libpython` mapped into this process, from
/// `/proc/self/maps`: the one fact that shows which Python really runs.
fn loaded_libpython() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            Path::new(path)
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libpython"))
        })
        .map(PathBuf::from)
}

impl PythonInfo {
    /// The library mapped differs from the one the build used (for example
    /// `LD_LIBRARY_PATH` points elsewhere): worth a loud warning, since a
    /// different patch release may not match the standard library.
    pub fn library_mismatch(&self) -> Option<String> {
        // Inside a running Python its library is the right one by
        // definition; the build's only matters for the binary.
        if !self.embedded {
            return None;
        }
        let lib = self.library.as_ref()?;
        let dir = lib.parent()?;
        if BUILD_LIBDIR.is_empty() {
            return None;
        }
        let same = std::fs::canonicalize(dir).ok() == std::fs::canonicalize(BUILD_LIBDIR).ok();
        (!same).then(|| {
            format!(
                "loaded {} but maitred was built against the library in {BUILD_LIBDIR}",
                lib.display()
            )
        })
    }
}

/// The application object and how to describe it in logs.
pub struct LoadedApp {
    pub app: Py<PyAny>,
    pub label: String,
}

const DEMO_SOURCE: &str = include_str!("demo.py");

/// Imports the configured app (or the demo), calling it first when it is a
/// factory. Import errors carry the full Python traceback.
pub fn load_app(plan: &AppPlan) -> Result<LoadedApp, StartError> {
    Python::attach(|py| {
        let (app, label) = match &plan.target {
            None => {
                let code = c_string("the demo app", DEMO_SOURCE)?;
                let module = PyModule::from_code(py, &code, c"<maitred-demo>", c"maitred_demo")
                    .map_err(|e| StartError::App(format_exception(py, &e)))?;
                module
                    .setattr("MAITRED_VERSION", env!("CARGO_PKG_VERSION"))
                    .map_err(|e| StartError::App(format_exception(py, &e)))?;
                let app = module
                    .getattr("app")
                    .map_err(|e| StartError::App(format_exception(py, &e)))?;
                (app, "the built-in demo app".to_owned())
            }
            Some(target) => {
                let target = &target.text;
                // pkgutil.resolve_name is what waitress-serve uses: it takes
                // both `pkg.mod:obj.attr` and `pkg.mod.obj`.
                let app = py
                    .import("pkgutil")
                    .and_then(|m| m.call_method1("resolve_name", (target,)))
                    .map_err(|e| {
                        StartError::App(format!(
                            "cannot import the app `{target}`:\n{}",
                            format_exception(py, &e)
                        ))
                    })?;
                (app, target.clone())
            }
        };
        let app = if plan.call {
            app.call0().map_err(|e| {
                StartError::App(format!(
                    "calling the app factory `{label}` (--call) failed:\n{}",
                    format_exception(py, &e)
                ))
            })?
        } else {
            app
        };
        if !app.is_callable() {
            let kind = app
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "object".into());
            let hint = if app.is_instance_of::<PyModule>() {
                "; name the callable inside it, as MODULE:CALLABLE"
            } else if plan.call {
                ""
            } else {
                "; if it is a factory, add --call"
            };
            return Err(StartError::App(format!(
                "the app `{label}` is a {kind}, not a WSGI callable{hint}"
            )));
        }
        Ok(LoadedApp {
            app: app.unbind(),
            label,
        })
    })
}

/// `traceback.format_exception` output, or the exception's text if even
/// that fails.
pub fn format_exception(py: Python<'_>, err: &PyErr) -> String {
    let formatted = py.import("traceback").and_then(|tb| {
        // The traceback travels with the PyErr, not necessarily on the
        // exception object, so all three parts are passed explicitly.
        let lines = tb.call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )?;
        lines.extract::<Vec<String>>()
    });
    match formatted {
        Ok(lines) => lines.concat().trim_end().to_owned(),
        Err(_) => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(prefix: &Path, base: &Path) -> PythonInfo {
        PythonInfo {
            version: "3.13.0".into(),
            prefix: prefix.to_string_lossy().into_owned(),
            base_prefix: base.to_string_lossy().into_owned(),
            executable: String::new(),
            library: None,
            virtualenv: None,
            embedded: false,
        }
    }

    #[test]
    fn inside_a_running_python_the_virtualenv_is_its_own() {
        let venv = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        let python = running(venv.path(), Path::new("/usr"));
        let found = running_virtualenv(None, &python).expect("no setting");
        assert_eq!(found.as_deref(), Some(venv.path()));
        let found = running_virtualenv(Some(venv.path()), &python).expect("the same venv");
        assert_eq!(found.as_deref(), Some(venv.path()));
        let err = running_virtualenv(Some(other.path()), &python).expect_err("another venv");
        assert!(
            matches!(&err, StartError::BadSetting(m) if m.contains("bin/maitred")),
            "{err}"
        );
        let system = running(Path::new("/usr"), Path::new("/usr"));
        assert_eq!(running_virtualenv(None, &system).expect("no venv"), None);
    }

    #[test]
    fn venv_version_reads_both_spellings() {
        assert_eq!(
            venv_version("home = /usr/bin\nversion = 3.11.7\n").as_deref(),
            Some("3.11")
        );
        assert_eq!(
            venv_version("version_info = 3.12.1.final.0\n").as_deref(),
            Some("3.12")
        );
        assert_eq!(venv_version("home = /x\n"), None);
    }
}
