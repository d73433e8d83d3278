//! The life of one maitred process, from a [`Plan`] to an exit code.
//!
//! With `workers = N` (and not itself a worker) the process is a
//! supervisor ([`crate::workers`]) and never starts Python. Otherwise the
//! order matters: Python and the app first (an app that does not import
//! stops start-up with its traceback), then the sockets, so the "Serving
//! on" line means the server really is ready; then serving until a stop
//! request, and the drain ([`crate::server`]).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use pyo3::{Py, PyAny};

use crate::access::AccessLog;
use crate::budget;
use crate::config::{Loaded, Plan};
use crate::connection::ConnectionTimeout;
use crate::gateway::policy::GatewayReason;
use crate::gateway::service::{Health, Shared};
use crate::interpreter::{self, StartError, Startup};
use crate::listen::{self, Bound};
use crate::metrics::{self, Metrics};
use crate::proxy::{Disbelief, Header};
use crate::server::{self, RejectedConnection};
use crate::signals::StopRequests;
use crate::workers::Relaunch;
use crate::{admin, workers, wsgi};

/// Exit status when Python, the app or a socket cannot be set up.
pub const EXIT_FAILURE: u8 = 1;

/// Why the process could not serve.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Python or the app (a bad virtualenv is a setting: exit 2).
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Bind(#[from] listen::BindError),
    /// The Python threads could not be started.
    #[error("{0}")]
    Pool(String),
    /// What a supervisor or worker process said went wrong.
    #[error("{0}")]
    Workers(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Start(StartError::BadSetting(_)) => crate::cli::EXIT_CONFIG,
            _ => EXIT_FAILURE,
        }
    }

    fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Failure {
        move |source| Failure::Io { what, source }
    }
}

/// What the process was handed when it started: sockets from systemd, or
/// (for a worker) the supervisor's listeners and control socket.
pub struct Handover {
    activated: Vec<OwnedFd>,
    inherited: Option<workers::Inherited>,
}

impl Handover {
    /// Claims the descriptors. Call first thing in `main`, while the process
    /// has one thread and has opened nothing else.
    pub fn take() -> Result<Handover, String> {
        let activated = listen::take_activated_sockets();
        let inherited = workers::take_inherited()?;
        Ok(Handover {
            activated,
            inherited,
        })
    }
}

/// Logs what loading the settings noticed, once logging is up.
pub fn report_start(notices: &[String], loaded: &Loaded) {
    for notice in notices.iter().chain(&loaded.plan.warnings) {
        tracing::warn!("{notice}");
    }
    for var in &loaded.skipped_env {
        tracing::debug!("ignored {var}: a Kubernetes service link, not a setting");
    }
    if let Some(file) = &loaded.file {
        tracing::info!("settings file: {}", file.display());
    }
}

/// What [`crate::host`] decided about this process: how Python starts, and
/// how a supervisor starts its workers (an error only matters if there are
/// workers to start).
pub struct Origin {
    pub startup: Startup,
    pub relaunch: Result<Relaunch, String>,
}

/// Runs the process to the end; returns its exit code.
pub fn run(plan: &Plan, handover: Handover, origin: &Origin) -> Result<u8, Failure> {
    raise_fd_limit(plan.connections.limit);
    seed(metrics::get());
    budget::BODIES.set_limit(plan.connections.buffer_memory);
    let Handover {
        activated,
        inherited,
    } = handover;
    if inherited.is_none() && plan.workers > 1 {
        let relaunch = origin.relaunch.clone().map_err(Failure::Workers)?;
        return workers::supervise(&plan.listen, plan.workers, &plan.drain, activated, relaunch)
            .map_err(Failure::Workers);
    }
    let app = start_python(plan, &origin.startup)?;
    let shared = Arc::new(shared(plan, app)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("maitred-io")
        .enable_all()
        .build()
        .map_err(Failure::io("cannot start the I/O runtime"))?;
    let code = runtime.block_on(serve(plan, Arc::clone(&shared), activated, inherited));
    if let Some(log) = &shared.access {
        log.flush(Duration::from_secs(2));
    }
    // Tasks may still wait on Python (a liveness probe, a file read); the
    // process exits without waiting for them or finalizing the interpreter,
    // as Waitress's daemon threads do.
    runtime.shutdown_background();
    code
}

/// Creates every series of the families labelled by domain types, so each
/// reads 0 before its first event.
pub fn seed(m: &Metrics) {
    m.gateway_responses.seed::<GatewayReason>();
    m.proxy_headers_rejected.seed::<(Header, Disbelief)>();
    m.connections_rejected.seed::<RejectedConnection>();
    m.connection_timeouts.seed::<ConnectionTimeout>();
}

/// Starts Python and imports the app (or the demo). Once per process.
pub fn start_python(plan: &Plan, startup: &Startup) -> Result<Py<PyAny>, Failure> {
    let python = interpreter::initialize(&plan.app, startup)?;
    tracing::info!(
        "maitred {} running Python {} (sys.prefix {}, executable {})",
        env!("CARGO_PKG_VERSION"),
        python.version,
        python.prefix,
        python.executable,
    );
    match (&python.library, python.embedded) {
        (Some(lib), _) => tracing::info!("Python library: {}", lib.display()),
        (None, true) => tracing::warn!("could not tell which libpython is loaded"),
        // A Python built without a shared library: its interpreter is in
        // its executable, which is what runs maitred's extension module.
        (None, false) => tracing::info!("Python library: linked into {}", python.executable),
    }
    if let Some(warning) = python.library_mismatch() {
        tracing::warn!("{warning}");
    }
    if let Some(venv) = &python.virtualenv {
        tracing::info!(
            "virtualenv: {} (base Python {})",
            venv.display(),
            python.base_prefix
        );
    }
    let app = interpreter::load_app(&plan.app)?;
    tracing::info!(
        "app: {} on {} Python thread(s)",
        app.label,
        plan.pool.threads
    );
    metrics::get().describe(
        plan.connections.limit,
        plan.pool.max_queue,
        plan.pool.threads,
        python
            .version
            .split_whitespace()
            .next()
            .unwrap_or("unknown"),
    );
    Ok(app.app)
}

/// The app's Python threads and the access log: everything the request
/// path shares.
pub fn shared(plan: &Plan, app: Py<PyAny>) -> Result<Shared, Failure> {
    let pool = wsgi::Pool::start(app, &plan.pool, &plan.environ).map_err(Failure::Pool)?;
    let access = plan
        .log
        .access
        .map(AccessLog::start)
        .transpose()
        .map_err(Failure::io("cannot start the access log writer"))?;
    Ok(Shared {
        pool,
        health: Health::default(),
        plan: plan.gateway.clone(),
        environ: plan.environ.clone(),
        access,
    })
}

/// Binds (or, in a worker, adopts) the listeners, serves the admin
/// listener or the supervisor's questions, and the app until it drains.
async fn serve(
    plan: &Plan,
    shared: Arc<Shared>,
    activated: Vec<OwnedFd>,
    inherited: Option<workers::Inherited>,
) -> Result<u8, Failure> {
    let stops =
        StopRequests::from_signals().map_err(Failure::io("cannot install the signal handlers"))?;
    let local = Arc::new(admin::Local(Arc::clone(&shared)));
    // A worker serves the supervisor's sockets and answers its questions;
    // the supervisor has the admin listener and announces the listeners.
    let listeners: Vec<Bound> = match inherited {
        Some(inherited) => {
            let index = inherited.index;
            let (listeners, control) = inherited
                .into_parts(&plan.listen)
                .map_err(Failure::Workers)?;
            let control = tokio::net::UnixStream::from_std(control)
                .map_err(Failure::io("cannot use the control socket"))?;
            tokio::spawn(workers::control::serve(control, move |ask| {
                let local = Arc::clone(&local);
                async move { workers::control::answer(&*local, ask).await }
            }));
            tracing::info!(
                "worker {index} (pid {}) serving {} listener(s)",
                std::process::id(),
                listeners.len()
            );
            listeners
        }
        None => {
            metrics::get().workers.set(1);
            let listeners = listen::bind(&plan.listen, activated)?;
            let admin = listen::bind_admin(&plan.listen)?;
            for listener in &listeners {
                tracing::info!("{}", listener.announcement());
            }
            admin::start(admin, &local).map_err(Failure::io("cannot serve the admin listener"))?;
            listeners
        }
    };
    server::serve(listeners, shared, &plan.connections, &plan.drain, stops)
        .await
        .map_err(Failure::io("server failed"))
}

/// Raises the soft limit on open files to the hard limit, so the
/// connection limit, not a default of 1024 descriptors, bounds how many
/// clients are served (as servers such as nginx and Granian do).
fn raise_fd_limit(connection_limit: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed,
    // which lives on this stack frame for the duration of the calls.
    let known = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                }
            }
            true
        }
    };
    if known {
        tracing::info!("open-file limit: {}", limit.rlim_cur);
    }
    // Each connection is one descriptor, plus listeners, spool files and
    // Python's own files.
    const SPARE: u64 = 64;
    let needed = u64::try_from(connection_limit)
        .unwrap_or(u64::MAX)
        .saturating_add(SPARE);
    if known && limit.rlim_cur < needed {
        tracing::warn!(
            "the open-file limit ({}) is below connection_limit ({connection_limit}) plus \
             {SPARE} spare: accept() will fail before the limit is reached; raise \
             `ulimit -n` (LimitNOFILE= under systemd) or lower connection_limit",
            limit.rlim_cur
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(scrape: &str, series: &str) -> Option<f64> {
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn seeded_families_read_zero_before_anything_happens() {
        let m = Metrics::new();
        seed(&m);
        let s = m.render();
        for series in [
            "maitred_connections_rejected_total{reason=\"accept_error\"}",
            "maitred_connection_timeouts_total{timeout=\"header\"}",
            "maitred_gateway_responses_total{http_response_status_code=\"503\",reason=\"queue_full\"}",
            "maitred_gateway_responses_total{http_response_status_code=\"431\",reason=\"headers_too_large\"}",
            "maitred_proxy_headers_rejected_total{header=\"forwarded\",reason=\"malformed\"}",
        ] {
            assert_eq!(value(&s, series), Some(0.0), "{series} in\n{s}");
        }
        let gateway = s
            .lines()
            .filter(|l| l.starts_with("maitred_gateway_responses_total{"))
            .count();
        assert_eq!(gateway, GatewayReason::ALL.len());
        let proxy = s
            .lines()
            .filter(|l| l.starts_with("maitred_proxy_headers_rejected_total{"))
            .count();
        assert_eq!(proxy, Header::ALL.len() * 3);
    }

    #[test]
    fn domain_counters_land_on_their_labels() {
        let m = Metrics::new();
        seed(&m);
        m.proxy_headers_rejected
            .inc((Header::Proto, Disbelief::NotListed));
        m.gateway_responses.inc(GatewayReason::RequestTimeout);
        m.connections_rejected
            .inc(RejectedConnection::ProxyProtocolInvalid);
        m.connection_timeouts.inc(ConnectionTimeout::Channel);
        let s = m.render();
        for series in [
            "maitred_proxy_headers_rejected_total{header=\"x-forwarded-proto\",reason=\"not_in_proxy_headers\"}",
            "maitred_gateway_responses_total{http_response_status_code=\"504\",reason=\"request_timeout\"}",
            "maitred_connections_rejected_total{reason=\"proxy_protocol_invalid\"}",
            "maitred_connection_timeouts_total{timeout=\"channel\"}",
        ] {
            assert_eq!(value(&s, series), Some(1.0), "{series}");
        }
        assert_eq!(
            value(
                &s,
                "maitred_proxy_headers_rejected_total{header=\"x-forwarded-proto\",reason=\"malformed\"}"
            ),
            Some(0.0),
            "its neighbour in the index"
        );
    }
}
