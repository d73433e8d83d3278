//! The pool of Python threads and the queue that feeds it.
//!
//! Each thread holds the GIL only while it runs a request: it waits for the
//! next job with the GIL released, so idle threads cost nothing and busy
//! ones hand the GIL over at the interpreter's usual switch points.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use pyo3::prelude::*;

use super::Call;
use super::worker;

/// What a pool thread can be asked to do.
pub(super) enum Job {
    Call(Call),
    /// Call `close()` on a response iterable whose body was sent by the
    /// I/O side (a `wsgi.file_wrapper` file), now that it is done.
    Close(Py<PyAny>),
}

/// Settings the workers need, fixed at start-up.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub threads: usize,
    /// Requests allowed to wait for a thread.
    pub max_queue: usize,
    pub output: super::outbuf::Limits,
    pub expose_tracebacks: bool,
    pub url_scheme: String,
    pub server_name: String,
    pub server_software: String,
    pub script_name: String,
}

pub struct Pool {
    jobs: Sender<Job>,
    /// Requests submitted and not yet taken by a thread.
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    /// Threads still running their loop (they only stop if the pool does).
    alive: Arc<AtomicUsize>,
    /// Threads running a request right now.
    busy: Arc<AtomicUsize>,
    threads: usize,
    gil_probe: Arc<AtomicBool>,
    _threads: Vec<JoinHandle<()>>,
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_queue` requests are already waiting.
    QueueFull,
    /// The pool has shut down.
    Stopped,
}

/// What `/livez` learns about the Python side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// Explains what is wrong.
    Stuck(String),
}

impl Pool {
    /// Starts the threads and waits until each has built its per-thread
    /// state, so a failure there stops start-up instead of the first request.
    pub fn start(app: Py<PyAny>, config: PoolConfig) -> Result<Pool, String> {
        // Unbounded as a channel: requests are bounded by `queued` below,
        // and `close()` jobs must never be refused.
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let queued = Arc::new(AtomicUsize::new(0));
        let alive = Arc::new(AtomicUsize::new(0));
        let busy = Arc::new(AtomicUsize::new(0));
        let config = Arc::new(config);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::with_capacity(config.threads);
        for i in 0..config.threads {
            let app = Python::attach(|py| app.clone_ref(py));
            let ctx = worker::ThreadContext {
                app,
                config: Arc::clone(&config),
                queue: queue.clone(),
                jobs: jobs.clone(),
                ready: ready_tx.clone(),
                queued: Arc::clone(&queued),
                alive: Arc::clone(&alive),
                busy: Arc::clone(&busy),
            };
            let handle = std::thread::Builder::new()
                .name(format!("maitred-py-{i}"))
                .spawn(move || worker::thread_main(ctx))
                .map_err(|e| format!("cannot start Python thread {i}: {e}"))?;
            threads.push(handle);
        }
        drop(ready_tx);
        for _ in 0..config.threads {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err("a Python thread exited during start-up".to_owned()),
            }
        }
        Ok(Pool {
            jobs,
            queued,
            max_queue: config.max_queue,
            alive,
            busy,
            threads: config.threads,
            gil_probe: Arc::new(AtomicBool::new(false)),
            _threads: threads,
        })
    }

    /// Queues a request, unless `max_queue` requests are already waiting.
    /// A refused call (and its reply channel) is dropped.
    pub fn submit(&self, call: Call) -> Result<(), Refused> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::QueueFull);
        }
        self.jobs.send(Job::Call(call)).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            Refused::Stopped
        })
    }

    /// Requests waiting for a thread.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Threads running a request.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    /// Whether every Python thread is still running and the GIL can be
    /// taken within `within` (a thread holding it without pause, e.g. in a
    /// C extension's loop, would block every request). The check never
    /// goes through the request queue. While an earlier probe is still
    /// waiting for the GIL, the answer is "stuck" without starting another,
    /// so a wedged interpreter cannot pile up waiting probes.
    pub async fn liveness(&self, within: Duration) -> Liveness {
        let alive = self.alive.load(Ordering::Acquire);
        if alive < self.threads {
            return Liveness::Stuck(format!(
                "{alive} of {} Python threads are running",
                self.threads
            ));
        }
        if self.gil_probe.swap(true, Ordering::AcqRel) {
            return Liveness::Stuck("an earlier check is still waiting for the GIL".into());
        }
        let probe = Arc::clone(&self.gil_probe);
        let attached = tokio::task::spawn_blocking(move || {
            Python::attach(|_| ());
            probe.store(false, Ordering::Release);
        });
        match tokio::time::timeout(within, attached).await {
            Ok(_) => Liveness::Alive,
            Err(_) => Liveness::Stuck(format!(
                "the GIL could not be taken within {}s",
                within.as_secs_f64()
            )),
        }
    }
}

pub(super) type JobQueue = Receiver<Job>;

/// Runs an iterable's `close()` on a pool thread when dropped, which is when
/// the I/O side has finished sending (or abandoned) the body.
pub struct DeferredClose {
    iterable: Option<Py<PyAny>>,
    jobs: Sender<Job>,
}

impl DeferredClose {
    pub(super) fn new(iterable: Py<PyAny>, jobs: Sender<Job>) -> Self {
        DeferredClose {
            iterable: Some(iterable),
            jobs,
        }
    }
}

impl Drop for DeferredClose {
    fn drop(&mut self) {
        if let Some(iterable) = self.iterable.take() {
            // If the pool is gone the process is exiting; the object is then
            // released by pyo3's deferred reference counting.
            let _ = self.jobs.send(Job::Close(iterable));
        }
    }
}
