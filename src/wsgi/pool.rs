//! The pool of Python threads and the queue that feeds it.
//!
//! A thread keeps the GIL from one job to the next while there is work and
//! releases it when it goes to sleep, so idle threads cost nothing; how
//! jobs reach threads, and when a sleeping one is woken, is
//! [`super::dispatch`]'s business.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::prelude::*;

use super::dispatch::Dispatch;
pub use super::dispatch::SubmitError;
use super::outbuf;
use super::{Call, worker};
use crate::config::plan::{EnvironPlan, PoolPlan};

impl Job {
    /// When it was queued.
    pub(super) fn since(&self) -> std::time::Instant {
        match self {
            Job::Call(call) => call.queued_at,
            Job::Close(_, at) => *at,
        }
    }
}

/// What a pool thread can be asked to do.
pub(super) enum Job {
    Call(Call),
    /// Call `close()` on a response iterable whose body was sent by the
    /// I/O side (a `wsgi.file_wrapper` file), now that it is done.
    Close(Py<PyAny>, std::time::Instant),
}

/// What the Python threads need to know, fixed at start-up.
#[derive(Debug)]
pub(super) struct ThreadPlan {
    pub threads: usize,
    pub output: outbuf::OutbufLimits,
    pub expose_tracebacks: bool,
    /// The entries of every environ.
    pub environ: EnvironPlan,
}

pub struct Pool {
    dispatch: Arc<Dispatch>,
    /// Threads still running their loop (they only stop if the pool does).
    alive: Arc<AtomicUsize>,
    /// Threads running a request right now.
    busy: Arc<AtomicUsize>,
    threads: usize,
    gil_probe: Arc<AtomicBool>,
    _threads: Vec<JoinHandle<()>>,
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
    pub fn start(app: Py<PyAny>, plan: &PoolPlan, environ: &EnvironPlan) -> Result<Pool, String> {
        let dispatch = Arc::new(Dispatch::new(plan.max_queue, plan.threads));
        let alive = Arc::new(AtomicUsize::new(0));
        let busy = Arc::new(AtomicUsize::new(0));
        let config = Arc::new(ThreadPlan {
            threads: plan.threads,
            output: outbuf::OutbufLimits {
                high_water: plan.outbuf_high_water,
                overflow: plan.outbuf_overflow,
            },
            expose_tracebacks: plan.expose_tracebacks,
            environ: environ.clone(),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::with_capacity(config.threads);
        for i in 0..config.threads {
            let app = Python::attach(|py| app.clone_ref(py));
            let ctx = worker::ThreadContext {
                app,
                config: Arc::clone(&config),
                dispatch: Arc::clone(&dispatch),
                ready: ready_tx.clone(),
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
            dispatch,
            alive,
            busy,
            threads: config.threads,
            gil_probe: Arc::new(AtomicBool::new(false)),
            _threads: threads,
        })
    }

    /// Queues a request, unless `max_queue` requests are already waiting.
    /// A refused call (and its reply channel) is dropped.
    pub fn submit(&self, call: Call) -> Result<(), SubmitError> {
        self.dispatch.submit_call(Job::Call(call))
    }

    /// Requests waiting for a thread.
    pub fn queued(&self) -> usize {
        self.dispatch.queued()
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

/// Runs an iterable's `close()` on a pool thread when dropped, which is when
/// the I/O side has finished sending (or abandoned) the body.
pub struct DeferredClose {
    iterable: Option<Py<PyAny>>,
    dispatch: Arc<Dispatch>,
}

impl DeferredClose {
    pub(super) fn new(iterable: Py<PyAny>, dispatch: Arc<Dispatch>) -> Self {
        DeferredClose {
            iterable: Some(iterable),
            dispatch,
        }
    }
}

impl Drop for DeferredClose {
    fn drop(&mut self) {
        if let Some(iterable) = self.iterable.take() {
            self.dispatch
                .submit(Job::Close(iterable, std::time::Instant::now()));
        }
    }
}
