//! `maitred`: a production WSGI server.
//!
//! Start-up order matters: settings first (bad ones exit 2 before anything
//! happens), then logging, then Python and the app (an app that does not
//! import exits 1 with its traceback), then the sockets, so that the
//! "Serving on" line means the server really is ready.

mod access;
mod admin;
mod cli;
mod config;
mod connection;
mod gateway;
mod interpreter;
mod logging;
mod metrics;
mod proxy;
mod server;
mod workers;
mod wsgi;

use std::process::ExitCode;
use std::sync::Arc;

use ::http::HeaderValue;

use crate::cli::{Action, Format};
use crate::config::Settings;
use crate::interpreter::StartError;
use crate::wsgi::environ::EnvironConfig;

/// mimalloc instead of glibc's allocator: requests allocate and free many
/// small buffers, often on different threads (a response built on a Python
/// thread is freed on the I/O thread), which glibc's arenas handle poorly
/// (see docs/performance.md). Python keeps its own allocator for objects.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a configuration mistake (as clap uses for usage errors).
const EXIT_CONFIG: u8 = 2;
/// Exit status when Python, the app or a socket cannot be set up.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    // Before anything else: systemd's sockets must be claimed while the
    // process has one thread and no other descriptors.
    let activated = server::listen::take_activated_sockets();
    let inherited = match workers::take_inherited() {
        Ok(inherited) => inherited,
        Err(e) => {
            eprintln!("maitred: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let invocation = match cli::parse(std::env::args_os()) {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("maitred: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match invocation.action {
        Action::ConfigDefaults => {
            print!("{}", config::render::defaults_toml());
            return ExitCode::SUCCESS;
        }
        Action::ConfigDocs => {
            print!("{}", config::render::docs_table());
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let loaded = match config::load(&invocation) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("maitred: invalid configuration:");
            for problem in &e.problems {
                eprintln!("  {}", problem.replace('\n', "\n    "));
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match invocation.action {
        Action::ConfigShow(Format::Toml) => {
            let text = config::render::show_toml(
                &loaded.settings,
                &loaded.figment,
                loaded.file.as_deref(),
            );
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Action::ConfigShow(Format::Json) => {
            print!(
                "{}",
                config::render::show_json(&loaded.settings, &loaded.figment)
            );
            return ExitCode::SUCCESS;
        }
        Action::ConfigCheck => {
            for notice in &invocation.notices {
                eprintln!("maitred: note: {notice}");
            }
            for var in &loaded.skipped_env {
                eprintln!(
                    "maitred: note: ignored {var} (a Kubernetes service link, not a setting)"
                );
            }
            match &loaded.file {
                Some(file) => println!(
                    "The configuration is valid (settings file {}).",
                    file.display()
                ),
                None => println!("The configuration is valid (no settings file)."),
            }
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let settings = loaded.settings;
    logging::init(&settings.log);
    for notice in &invocation.notices {
        tracing::warn!("{notice}");
    }
    for var in &loaded.skipped_env {
        tracing::debug!("ignored {var}: a Kubernetes service link, not a setting");
    }
    if let Some(file) = &loaded.file {
        tracing::info!("settings file: {}", file.display());
    }
    raise_fd_limit(settings.limits.connection_limit);
    match run(settings, activated, inherited) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(msg)) => {
            tracing::error!("{msg}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Other(msg)) => {
            tracing::error!("{msg}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

enum Failure {
    Config(String),
    Other(String),
}

impl From<StartError> for Failure {
    fn from(e: StartError) -> Self {
        match e {
            StartError::BadSetting(m) => Failure::Config(m),
            StartError::Python(m) | StartError::App(m) => Failure::Other(m),
        }
    }
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
                    tracing::debug!("open-file limit raised to {}", limit.rlim_cur);
                }
            }
            true
        }
    };
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

fn run(
    settings: Settings,
    activated: Vec<std::os::fd::OwnedFd>,
    inherited: Option<workers::Inherited>,
) -> Result<(), Failure> {
    if inherited.is_none() && settings.workers > 1 {
        let code = workers::supervise(&settings, activated).map_err(Failure::Other)?;
        std::process::exit(i32::from(code));
    }
    let worker = inherited.as_ref().map(|i| i.index);
    let python = interpreter::initialize(&settings)?;
    tracing::info!(
        "maitred {} running Python {} (sys.prefix {}, executable {})",
        env!("CARGO_PKG_VERSION"),
        python.version,
        python.prefix,
        python.executable,
    );
    match &python.library {
        Some(lib) => tracing::info!("Python library: {}", lib.display()),
        None => tracing::warn!("could not tell which libpython is loaded"),
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
    let app = interpreter::load_app(&settings)?;
    tracing::info!(
        "app: {} on {} Python thread(s)",
        app.label,
        settings.threads
    );

    let pool = wsgi::Pool::start(
        app.app,
        wsgi::PoolConfig {
            threads: settings.threads,
            max_queue: settings.limits.max_queue,
            output: wsgi::outbuf::Limits {
                high_water: settings.limits.outbuf_high_watermark.as_usize(),
                overflow: settings.limits.outbuf_overflow.as_usize(),
            },
            expose_tracebacks: settings.expose_tracebacks,
            url_scheme: settings.url_scheme.clone(),
            server_name: settings.server_name.clone(),
            server_software: if settings.ident.is_empty() {
                "maitred".to_owned()
            } else {
                settings.ident.clone()
            },
            script_name: settings.script_name(),
        },
    )
    .map_err(Failure::Other)?;

    // Validated with the other settings; an error here would be a bug.
    let proxy = proxy::ProxyConfig::from_settings(&settings.proxy, &settings.url_scheme)
        .map_err(|p| Failure::Config(format!("proxy settings: {p:?}")))?;
    if !settings.proxy.trusted.is_empty() && settings.proxy.headers.is_empty() {
        tracing::warn!(
            "proxy.trusted is set but proxy.headers is not: only X-Forwarded-Proto is believed \
             (Waitress's old default); list the headers your proxy sets"
        );
    }
    // The ident was checked to be printable ASCII with the other settings.
    let server_header = (!settings.ident.is_empty())
        .then(|| HeaderValue::from_str(&settings.ident))
        .transpose()
        .map_err(|_| {
            Failure::Config(format!(
                "ident: {:?} is not a valid header value",
                settings.ident
            ))
        })?;
    let access = if settings.log.access {
        // Validated with the other settings.
        let format = access::Format::parse(&settings.log.access_format).ok_or_else(|| {
            Failure::Config("log.access_format: must be `combined` or `json`".into())
        })?;
        let log = access::AccessLog::start(format)
            .map_err(|e| Failure::Other(format!("cannot start the access log writer: {e}")))?;
        Some(log)
    } else {
        None
    };
    metrics::get().describe(
        settings.limits.connection_limit,
        settings.limits.max_queue,
        settings.threads,
        python
            .version
            .split_whitespace()
            .next()
            .unwrap_or("unknown"),
    );
    let shared = Arc::new(gateway::service::Shared {
        pool,
        health: gateway::service::Health::default(),
        body_timeout: settings.limits.body_timeout.0,
        request_timeout: settings.limits.request_timeout.map(|t| t.0),
        environ: EnvironConfig {
            script_name: settings.script_name(),
            unix_port: if settings.url_scheme == "https" {
                "443"
            } else {
                "80"
            },
        },
        proxy,
        url_prefix_strict: settings.url_prefix_strict,
        max_body: settings.limits.max_request_body_size.0,
        inbuf_overflow: settings.limits.inbuf_overflow.as_usize(),
        server: server_header,
        ident: settings.ident.clone(),
        access: access.clone(),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("maitred-io")
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(format!("cannot start the I/O runtime: {e}")))?;
    // A worker serves the supervisor's sockets and answers its questions;
    // the supervisor has the admin listener and announces the listeners.
    let (listeners, admin, control) = match inherited {
        Some(inherited) => {
            let (listeners, control) = inherited.into_parts(&settings).map_err(Failure::Other)?;
            (listeners, Vec::new(), Some(control))
        }
        None => {
            metrics::get().workers.set(1);
            let listeners = server::listen::bind(&settings, activated)
                .map_err(|e| Failure::Other(e.to_string()))?;
            let admin =
                server::listen::bind_admin(&settings).map_err(|e| Failure::Other(e.to_string()))?;
            (listeners, admin, None)
        }
    };
    match worker {
        Some(index) => tracing::info!(
            "worker {index} (pid {}) serving {} listener(s)",
            std::process::id(),
            listeners.len()
        ),
        None => {
            for listener in &listeners {
                tracing::info!("{}", listener.announcement());
            }
        }
    }
    for (_, addr) in &admin {
        tracing::info!(
            "Admin listener (/livez, /readyz, /metrics) on http://{}",
            config::display_addr(addr)
        );
    }
    let builder = server::http1_builder(&settings);
    let plan = server::Plan {
        connection_limit: settings.limits.connection_limit,
        timeouts: connection::Timeouts {
            channel: settings.limits.channel_timeout.0,
            header: settings.limits.header_timeout.0,
        },
        shutdown_delay: settings.shutdown_delay.0,
        graceful_timeout: settings.graceful_timeout.0,
    };
    let code = runtime
        .block_on(async {
            for (listener, _) in admin {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                tokio::spawn(admin::run(
                    listener,
                    admin::Backend::Local(Arc::clone(&shared)),
                ));
            }
            if let Some(control) = control {
                let control = tokio::net::UnixStream::from_std(control)?;
                // A worker answers its supervisor as the admin listener
                // of a single process would answer a client.
                let local = admin::Backend::Local(Arc::clone(&shared));
                tokio::spawn(workers::control::serve(control, move |ask| {
                    let local = local.clone();
                    async move { local.answer(ask).await }
                }));
            }
            server::serve(listeners, shared, builder, plan).await
        })
        .map_err(|e| Failure::Other(format!("server failed: {e}")))?;
    if let Some(log) = &access {
        log.flush(std::time::Duration::from_secs(2));
    }
    // Python's threads are parked in the job queue; the process exits
    // without finalizing the interpreter, as Waitress's daemon threads do.
    std::process::exit(i32::from(code))
}
