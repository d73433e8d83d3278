//! The pool of Python threads and the queue that feeds it.
//!
//! Each thread holds the GIL only while it runs a request: it waits for the
//! next job with the GIL released, so idle threads cost nothing and busy
//! ones hand the GIL over at the interpreter's usual switch points.

use std::sync::Arc;
use std::thread::JoinHandle;

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
    pub output: super::outbuf::Limits,
    pub expose_tracebacks: bool,
    pub url_scheme: String,
    pub server_name: String,
    pub server_software: String,
    pub script_name: String,
}

pub struct Pool {
    jobs: Sender<Job>,
    _threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts the threads and waits until each has built its per-thread
    /// state, so a failure there stops start-up instead of the first request.
    pub fn start(app: Py<PyAny>, config: PoolConfig) -> Result<Pool, String> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
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
            _threads: threads,
        })
    }

    /// Queues a request. Fails only when the pool has shut down, in which
    /// case the call (and its reply channel) is dropped.
    pub fn submit(&self, call: Call) -> bool {
        self.jobs.send(Job::Call(call)).is_ok()
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
