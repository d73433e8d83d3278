//! Several worker processes (`workers = N`): a supervisor that owns the
//! listening sockets and the admin listener, and N copies of maitred that
//! each run their own interpreter and Python threads on the inherited
//! sockets (the kernel spreads connections among them, as with Gunicorn).
//!
//! The supervisor
//! - starts the workers and waits until each is ready; a worker that exits
//!   during start-up (an app that does not import) stops start-up with its
//!   exit code;
//! - restarts a worker that dies, with a back-off when it keeps dying;
//! - forwards SIGTERM/SIGINT so every worker drains as a single process
//!   does, closes its own copies of the listeners when they do (after
//!   `shutdown_delay`), and exits once they have all exited;
//! - answers `/livez`, `/readyz` and `/metrics` by asking the workers over
//!   a private socket pair ([`control`]) and merging their expositions
//!   ([`merge`]) into one scrape, so Prometheus needs one target per pod.
//!
//! The supervisor never starts Python: it stays small, and a crashed
//! interpreter can only take one worker with it.

pub mod control;
pub mod merge;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::admin::{self, Probes};
use crate::config::plan::DrainPlan;
use crate::listen::{self, Bound, ListenPlan, SocketFiles};
use crate::signals::{StopRequest, StopRequests};
use control::{Answer, Ask, Channel};
use merge::Exposition;

/// Set in a worker's environment: its index.
const WORKER_ENV: &str = "_MAITRED_WORKER";
/// Set in a worker's environment: the kinds of the inherited listeners
/// (descriptors 3, 4, ...), comma-separated; the control socket follows.
const LISTENERS_ENV: &str = "_MAITRED_LISTENERS";
/// The first inherited descriptor, as in systemd's convention.
const FIRST_FD: RawFd = 3;

/// How long a worker gets to answer the supervisor.
const ASK_WITHIN: Duration = Duration::from_secs(3);
/// How long the supervisor waits for a starting worker's readiness answer
/// before asking again (it keeps its loop responsive to signals).
const READY_WITHIN: Duration = Duration::from_millis(100);
/// How often the supervisor reads every worker's metrics, bounding what a
/// worker that dies can take with it.
const REFRESH: Duration = Duration::from_secs(5);
/// A worker that lived shorter than this before dying is restarted after
/// a growing delay.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What a worker process inherited from its supervisor.
pub struct Inherited {
    pub index: usize,
    listeners: Vec<(OwnedFd, String)>,
    control: OwnedFd,
}

/// Takes the descriptors a supervisor passed, if this process is a
/// worker. Like systemd's sockets, this must run first thing in `main`,
/// before any other thread exists or any descriptor is opened. A hand-over
/// that is present but broken is an error: carrying on would make this
/// process a second supervisor, binding the same addresses again.
pub fn take_inherited() -> Result<Option<Inherited>, String> {
    let Some(index) = std::env::var_os(WORKER_ENV) else {
        return Ok(None);
    };
    let kinds = std::env::var_os(LISTENERS_ENV);
    // SAFETY: called at the start of `main` (the caller's contract), while
    // the process has a single thread, so nothing reads the environment
    // concurrently. Removed so the app's own subprocesses do not inherit
    // the role.
    unsafe {
        std::env::remove_var(WORKER_ENV);
        std::env::remove_var(LISTENERS_ENV);
    }
    let broken = |why: String| {
        format!(
            "{WORKER_ENV} is set, so this process expects to be a worker started by a \
             maitred supervisor, but {why}. Do not set {WORKER_ENV} or {LISTENERS_ENV} \
             yourself: run maitred with `workers = N` instead."
        )
    };
    let index: usize = index
        .to_str()
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| broken(format!("its value {index:?} is not a worker number")))?;
    let kinds: Vec<String> = kinds
        .and_then(|k| k.into_string().ok())
        .ok_or_else(|| broken(format!("{LISTENERS_ENV} is missing")))?
        .split(',')
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    let mut fds = Vec::new();
    for i in 0..=kinds.len() {
        let fd = RawFd::try_from(i)
            .ok()
            .and_then(|i| FIRST_FD.checked_add(i))
            .ok_or_else(|| broken(format!("{} listeners is too many", kinds.len())))?;
        // SAFETY: the supervisor placed an open descriptor at each of
        // these numbers before exec (`spawn` below); nothing in this
        // process has claimed them yet, as this runs before any other
        // code, so each OwnedFd is the sole owner. FD_CLOEXEC keeps them
        // from leaking into the app's subprocesses.
        unsafe {
            if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == -1 {
                let cause = std::io::Error::last_os_error();
                return Err(broken(format!(
                    "descriptor {fd} was not handed over ({cause})"
                )));
            }
            fds.push(OwnedFd::from_raw_fd(fd));
        }
    }
    // The loop pushed one more descriptor than there are listeners.
    let control = fds
        .pop()
        .ok_or_else(|| broken("no control socket was handed over".into()))?;
    Ok(Some(Inherited {
        index,
        listeners: fds.into_iter().zip(kinds).collect(),
        control,
    }))
}

impl Inherited {
    /// The inherited listeners, ready for the server, and the control
    /// socket for [`control::serve`].
    pub fn into_parts(
        self,
        plan: &ListenPlan,
    ) -> Result<(Vec<Bound>, std::os::unix::net::UnixStream), String> {
        let mut bound = Vec::new();
        for (fd, kind) in self.listeners {
            bound.push(listen::inherit(fd, &kind, plan).map_err(|e| e.to_string())?);
        }
        let control = std::os::unix::net::UnixStream::from(self.control);
        control
            .set_nonblocking(true)
            .map_err(|e| format!("control socket: {e}"))?;
        Ok((bound, control))
    }
}

/// One running worker, as the supervisor knows it.
struct Worker {
    pid: u32,
    channel: Arc<Channel>,
    started: Instant,
    ready: bool,
    /// Its latest exposition, kept for when it dies.
    last: Option<Exposition>,
}

/// How a worker is started: the supervisor's own program and arguments
/// (see [`crate::host`]); the worker learns it is one from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relaunch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// The supervisor's state, shared with the admin listener.
pub struct Supervisor {
    count: usize,
    workers: Mutex<HashMap<usize, Worker>>,
    /// Counters and histograms of workers that have exited.
    retired: Mutex<Exposition>,
    draining: AtomicBool,
    relaunch: Relaunch,
}

impl Supervisor {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Worker>> {
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The workers `which` picks, as (index, pid, channel): taken under the
    /// lock, asked without it.
    fn snapshot(&self, which: impl Fn(&Worker) -> bool) -> Vec<Asked> {
        self.lock()
            .iter()
            .filter(|(_, w)| which(w))
            .map(|(i, w)| (*i, w.pid, Arc::clone(&w.channel)))
            .collect()
    }

    /// Changes worker `index` if it is still the process `pid` (an answer
    /// from a worker that has since been replaced must not touch its
    /// replacement).
    fn update(&self, index: usize, pid: u32, change: impl FnOnce(&mut Worker)) {
        if let Some(w) = self.lock().get_mut(&index).filter(|w| w.pid == pid) {
            change(w);
        }
    }
}

impl Probes for Supervisor {
    /// Live when every ready worker is (a worker being restarted is the
    /// supervisor's business, not a reason to restart the pod).
    async fn livez(&self) -> Answer {
        let asked = self.snapshot(|w| w.ready);
        if asked.is_empty() {
            return Answer {
                ok: false,
                text: "stuck: no worker is running\n".into(),
            };
        }
        for (i, _, answer) in ask_all(asked, Ask::Livez, ASK_WITHIN).await {
            match answer {
                Ok(a) if a.ok => {}
                Ok(a) => {
                    return Answer {
                        ok: false,
                        text: format!("worker {i}: {}", a.text),
                    };
                }
                Err(e) => {
                    return Answer {
                        ok: false,
                        text: format!("stuck: worker {i} does not answer: {e}\n"),
                    };
                }
            }
        }
        Answer {
            ok: true,
            text: "ok\n".into(),
        }
    }

    /// Ready while not draining and at least one worker serves.
    async fn readyz(&self) -> Answer {
        if self.draining.load(Ordering::Acquire) {
            return Answer {
                ok: false,
                text: "not ready: draining\n".into(),
            };
        }
        let ready = self.lock().values().filter(|w| w.ready).count();
        if ready == 0 {
            return Answer {
                ok: false,
                text: "not ready: no worker is ready\n".into(),
            };
        }
        Answer {
            ok: true,
            text: format!("ready ({ready} of {} workers)\n", self.count),
        }
    }

    /// One exposition for the supervisor and every worker, living or
    /// retired.
    async fn metrics(&self) -> String {
        // Ask first, then combine under the lock, matching answers to
        // workers by pid: a worker that exits (and is retired) while the
        // others are asked must count once, through `retired`, and an
        // answer from it must not be credited to its replacement.
        let asked = self.snapshot(|_| true);
        let mut fresh: HashMap<u32, Exposition> = HashMap::new();
        for (i, pid, answer) in ask_all(asked, Ask::Metrics, ASK_WITHIN).await {
            match answer {
                Ok(a) => {
                    fresh.insert(pid, Exposition::parse(&a.text));
                }
                Err(e) => tracing::debug!("worker {i} (pid {pid}) gave no metrics: {e}"),
            }
        }
        let m = crate::metrics::get();
        let mut workers = self.lock();
        m.workers.set(crate::metrics::as_gauge(workers.len()));
        let mut total = Exposition::parse(&m.render());
        total.absorb(&self.retired.lock().unwrap_or_else(PoisonError::into_inner));
        for w in workers.values_mut() {
            if let Some(e) = fresh.remove(&w.pid) {
                w.last = Some(e);
            }
            // A worker too busy to answer counts with what it said last
            // (its gauges are then stale, its counters only behind).
            if let Some(last) = &w.last {
                total.absorb(last);
            }
        }
        drop(workers);
        total.render()
    }
}

impl Supervisor {
    /// A worker has exited: its counters join the retired ones (under the
    /// same lock order as [`Supervisor::metrics`]: workers, then retired).
    fn retire(&self, index: usize) -> Option<Worker> {
        let mut workers = self.lock();
        let worker = workers.remove(&index)?;
        if let Some(last) = &worker.last {
            self.retired
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .absorb(&last.retained());
        }
        drop(workers);
        Some(worker)
    }
}

/// Runs the supervisor of `count` workers until they have drained;
/// returns the exit code.
pub fn supervise(
    listen: &ListenPlan,
    count: usize,
    drain: &DrainPlan,
    activated: Vec<OwnedFd>,
    relaunch: Relaunch,
) -> Result<u8, String> {
    let listeners = listen::bind(listen, activated).map_err(|e| e.to_string())?;
    let admin = listen::bind_admin(listen).map_err(|e| e.to_string())?;
    // One thread: the death signal asked for each worker (PR_SET_PDEATHSIG)
    // is tied to the thread that started it, which must outlive them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the supervisor's runtime: {e}"))?;
    runtime.block_on(async {
        let stops = StopRequests::from_signals().map_err(|e| e.to_string())?;
        run(count, drain, listeners, admin, stops, relaunch).await
    })
}

/// A worker exited: which, which incarnation, how.
struct Exit {
    index: usize,
    pid: u32,
    status: std::io::Result<ExitStatus>,
}

async fn run(
    count: usize,
    drain: &DrainPlan,
    listeners: Vec<Bound>,
    admin: Vec<(std::net::TcpListener, std::net::SocketAddr)>,
    mut stops: StopRequests,
    relaunch: Relaunch,
) -> Result<u8, String> {
    let sup = Arc::new(Supervisor {
        count,
        workers: Mutex::new(HashMap::new()),
        retired: Mutex::new(Exposition::default()),
        draining: AtomicBool::new(false),
        relaunch,
    });
    let (exits_tx, mut exits) = mpsc::unbounded_channel::<Exit>();
    // Removed however `run` returns, start-up failures included.
    let socket_files = SocketFiles::of(&listeners);

    // Start-up: every worker must come up, or none stays.
    for index in 0..count {
        spawn(&sup, index, &listeners, &exits_tx)?;
    }
    // Like a single process, start-up has no time limit: an app may take
    // long to import, and an orchestrator's start-up probe bounds it.
    // A stop signal during start-up goes straight to the drain below.
    let stopped_early: Option<StopRequest> = loop {
        tokio::select! {
            stop = stops.next() => {
                if stop.is_immediate() {
                    kill_all(&sup, stop.signal());
                    return Ok(1);
                }
                break Some(stop);
            }
            exit = exits.recv() => {
                let Some(exit) = exit else { return Err("lost track of the workers".into()) };
                let code = exit_code(&exit.status);
                tracing::error!(
                    "worker {} (pid {}) exited during start-up ({}); stopping",
                    exit.index, exit.pid, describe(&exit.status)
                );
                kill_all(&sup, libc::SIGKILL);
                return Ok(if code == 0 { 1 } else { code });
            }
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                poll_ready(&sup).await;
                if sup.lock().values().all(|w| w.ready) {
                    break None;
                }
            }
        }
    };
    if stopped_early.is_none() {
        for listener in &listeners {
            tracing::info!("{}", listener.announcement());
        }
    }
    admin::start(admin, &sup).map_err(|e| e.to_string())?;
    tracing::info!("supervising {count} worker processes");
    tokio::spawn(refresh(Arc::clone(&sup)));

    let mut backoff: HashMap<usize, Duration> = HashMap::new();
    // Workers waiting out their back-off: (when, index).
    let mut pending: Vec<(tokio::time::Instant, usize)> = Vec::new();
    let first = loop {
        if let Some(sig) = stopped_early {
            break sig;
        }
        let next_respawn = pending.iter().map(|(at, _)| *at).min();
        tokio::select! {
            exit = exits.recv() => {
                let Some(exit) = exit else { return Err("lost track of the workers".into()) };
                let Some(worker) = sup.retire(exit.index) else { continue };
                crate::metrics::get().worker_restarts.inc();
                let lived = worker.started.elapsed();
                let delay = if lived >= STABLE_AFTER {
                    backoff.remove(&exit.index);
                    Duration::ZERO
                } else {
                    let d = backoff
                        .get(&exit.index)
                        .map_or(Duration::from_millis(500), |d| (*d * 2).min(MAX_BACKOFF));
                    backoff.insert(exit.index, d);
                    d
                };
                tracing::warn!(
                    "worker {} (pid {}) exited ({}) after {:.1}s; restarting it in {:.1}s",
                    exit.index,
                    exit.pid,
                    describe(&exit.status),
                    lived.as_secs_f64(),
                    delay.as_secs_f64()
                );
                pending.push((tokio::time::Instant::now() + delay, exit.index));
            }
            () = sleep_until(next_respawn), if next_respawn.is_some() => {
                let now = tokio::time::Instant::now();
                let (due, later): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(at, _)| *at <= now);
                pending = later;
                for (_, index) in due {
                    if let Err(e) = spawn(&sup, index, &listeners, &exits_tx) {
                        tracing::error!("cannot restart worker {index}: {e}");
                        pending.push((now + MAX_BACKOFF, index));
                    }
                }
            }
            () = tokio::time::sleep(Duration::from_millis(200)) => poll_ready(&sup).await,
            stop = stops.next() => {
                if stop.is_immediate() {
                    tracing::warn!("SIGQUIT received: stopping the workers at once");
                    kill_all(&sup, stop.signal());
                    return Ok(1);
                }
                break stop;
            }
        }
    };

    // Drain: the workers each run the single-process drain. The
    // supervisor starts no worker from here on, so it lets go of its copies
    // of the listening sockets at once: a socket then closes when the last
    // worker closes its own, and never outlives them with a backlog nobody
    // accepts (connections queued there would be reset). A Unix socket's
    // file stays until shutdown_delay, as long as the workers accept on it.
    sup.draining.store(true, Ordering::Release);
    tracing::info!(
        "{} received: draining the workers (signal again to stop them at once)",
        first.name()
    );
    kill_all(&sup, first.signal());
    drop(listeners);
    let give_up_after =
        drain.shutdown_delay + drain.graceful_timeout.after + Duration::from_secs(5);
    let shutdown_delay = tokio::time::sleep(drain.shutdown_delay);
    tokio::pin!(shutdown_delay);
    let give_up = tokio::time::sleep(give_up_after);
    tokio::pin!(give_up);
    let mut socket_files = Some(socket_files);
    let mut failed = false;
    while !sup.lock().is_empty() {
        tokio::select! {
            exit = exits.recv() => {
                let Some(exit) = exit else { break };
                if exit_code(&exit.status) != 0 {
                    failed = true;
                }
                sup.retire(exit.index);
            }
            () = &mut shutdown_delay, if socket_files.is_some() => {
                drop(socket_files.take());
            }
            () = &mut give_up => {
                tracing::warn!(
                    "the workers did not finish within shutdown_delay + {}; killing them",
                    drain.graceful_timeout.name
                );
                kill_all(&sup, libc::SIGKILL);
                return Ok(1);
            }
            stop = stops.next() => {
                kill_all(&sup, stop.signal());
                if stop.is_immediate() {
                    return Ok(1);
                }
            }
        }
    }
    tracing::info!("every worker has exited");
    Ok(u8::from(failed))
}

/// Starts worker `index` on the listeners.
fn spawn(
    sup: &Arc<Supervisor>,
    index: usize,
    listeners: &[Bound],
    exits: &mpsc::UnboundedSender<Exit>,
) -> Result<(), String> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| format!("cannot create a control socket: {e}"))?;
    // Everything that can fail happens before the worker exists, so a
    // failure never leaves an unsupervised worker behind.
    ours.set_nonblocking(true)
        .map_err(|e| format!("control socket: {e}"))?;
    let channel =
        tokio::net::UnixStream::from_std(ours).map_err(|e| format!("control socket: {e}"))?;
    let mut fds: Vec<RawFd> = listeners.iter().map(Bound::raw_fd).collect();
    fds.push(theirs.as_raw_fd());
    if fds.len() > MAX_HANDED_OVER {
        return Err(format!(
            "{} listeners: at most {} can be handed to workers",
            fds.len() - 1,
            MAX_HANDED_OVER - 1
        ));
    }
    // SAFETY: getpid takes no arguments and cannot fail.
    let supervisor = unsafe { libc::getpid() };
    let kinds: Vec<&str> = listeners.iter().map(Bound::kind).collect();
    let mut cmd = tokio::process::Command::new(&sup.relaunch.program);
    cmd.args(&sup.relaunch.args)
        .env(WORKER_ENV, index.to_string())
        .env(LISTENERS_ENV, kinds.join(","))
        .kill_on_drop(false);
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: it uses fcntl, dup2,
    // close, prctl and setpgid only, allocates nothing (a fixed array on
    // the stack), and reads only the captured vector (the child's own
    // copy after fork).
    unsafe {
        cmd.pre_exec(move || place_fds(&fds, supervisor));
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start worker {index}: {e}"))?;
    drop(theirs);
    let pid = child.id().unwrap_or(0);
    sup.lock().insert(
        index,
        Worker {
            pid,
            channel: Arc::new(Channel::new(channel)),
            started: Instant::now(),
            ready: false,
            last: None,
        },
    );
    let exits = exits.clone();
    tokio::spawn(async move {
        let status = child.wait().await;
        let _ = exits.send(Exit { index, pid, status });
    });
    Ok(())
}

/// Listeners plus the control socket that fit the child's fixed table.
const MAX_HANDED_OVER: usize = 64;

/// In the child after fork: moves the inherited descriptors to 3, 4, ...
/// (without close-on-exec) and asks for SIGTERM if the supervisor dies.
/// Allocates nothing (the caller checked `fds.len()`).
fn place_fds(fds: &[RawFd], supervisor: libc::pid_t) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    let count = RawFd::try_from(fds.len()).unwrap_or(RawFd::MAX);
    let above = fds.iter().copied().max().unwrap_or(0).max(FIRST_FD + count);
    // First out of the way (a source may sit where another must go), then
    // into place; dup2 clears close-on-exec on the new descriptor.
    let mut moved = [0 as RawFd; MAX_HANDED_OVER];
    if fds.len() > moved.len() {
        return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
    }
    for (i, fd) in fds.iter().enumerate() {
        // SAFETY: fcntl on descriptors this process holds.
        moved[i] = check(unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, above + 1) })?;
    }
    for (i, fd) in moved.iter().take(fds.len()).enumerate() {
        let target = FIRST_FD + RawFd::try_from(i).unwrap_or(0);
        // SAFETY: dup2/close on descriptors this process holds.
        check(unsafe { libc::dup2(*fd, target) })?;
        check(unsafe { libc::close(*fd) })?;
    }
    // SAFETY: prctl with PR_SET_PDEATHSIG and setpgid take integers only.
    // A process group of its own keeps a terminal's Ctrl-C from reaching
    // the workers directly: the supervisor forwards signals, once.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) })?;
    check(unsafe { libc::setpgid(0, 0) })?;
    // The supervisor may have died before the death signal was asked for;
    // then none would ever come.
    // SAFETY: getppid takes no arguments and cannot fail.
    if unsafe { libc::getppid() } != supervisor {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// Asks workers not yet ready whether they are now.
async fn poll_ready(sup: &Supervisor) {
    let pending = sup.snapshot(|w| !w.ready);
    // A worker still importing its app answers nothing yet; the question
    // is asked again on the next round (late answers are skipped by their
    // sequence number).
    for (i, pid, answer) in ask_all(pending, Ask::Readyz, READY_WITHIN).await {
        if answer.is_ok_and(|a| a.ok) {
            sup.update(i, pid, |w| {
                w.ready = true;
                tracing::info!("worker {i} (pid {pid}) is ready");
            });
        }
    }
}

/// Reads every worker's metrics now and then, so a worker that dies takes
/// at most a few seconds of counts with it.
async fn refresh(sup: Arc<Supervisor>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        let asked = sup.snapshot(|w| w.ready);
        for (i, pid, answer) in ask_all(asked, Ask::Metrics, ASK_WITHIN).await {
            if let Ok(a) = answer {
                let e = Exposition::parse(&a.text);
                sup.update(i, pid, |w| w.last = Some(e));
            }
        }
    }
}

/// A worker to ask: (index, pid, channel).
type Asked = (usize, u32, Arc<Channel>);

/// Asks every worker in `asked` at once, so that answering takes as long
/// as the slowest worker rather than the sum of them; the answers in the
/// order given. A question whose task failed counts as an error answer,
/// so that worker is never taken for one that answered well.
async fn ask_all(
    asked: Vec<Asked>,
    ask: Ask,
    within: Duration,
) -> Vec<(usize, u32, std::io::Result<Answer>)> {
    let tasks: Vec<_> = asked
        .into_iter()
        .map(|(i, pid, ch)| {
            (
                i,
                pid,
                tokio::spawn(async move { ch.ask(ask, within).await }),
            )
        })
        .collect();
    let mut answers = Vec::with_capacity(tasks.len());
    for (i, pid, task) in tasks {
        let answer = task.await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
        answers.push((i, pid, answer));
    }
    answers
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

fn kill_all(sup: &Supervisor, sig: libc::c_int) {
    for w in sup.lock().values() {
        // 0 (a pid the spawn could not learn) would signal the
        // supervisor's own process group.
        if w.pid == 0 {
            continue;
        }
        if let Ok(pid) = libc::pid_t::try_from(w.pid) {
            // SAFETY: kill takes two integers and touches no memory of this
            // process. (The pid is a worker not yet seen to exit; in the
            // instant between its reaping and its removal from the map the
            // signal is aimed at a pid the kernel has only just freed.)
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }
}

fn exit_code(status: &std::io::Result<ExitStatus>) -> u8 {
    match status {
        Ok(s) => s.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1),
        Err(_) => 1,
    }
}

fn describe(status: &std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => s.to_string(),
        },
        Err(e) => format!("unknown status: {e}"),
    }
}
