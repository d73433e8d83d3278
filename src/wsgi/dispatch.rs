//! Handing jobs to the Python threads with as few thread wake-ups as the
//! application allows.
//!
//! A wake-up costs two context switches and, when the woken thread then
//! needs the GIL, a GIL hand-over too; at tens of thousands of requests per
//! second that is most of the cost of a request. So:
//!
//! - a thread that finishes a job takes the next one without releasing the
//!   GIL, and sleeps only when the queue is empty;
//! - a submitted job wakes a sleeping thread only when no thread is awake:
//!   an awake thread will reach the job by itself;
//! - an awake thread may be blocked rather than busy (an app waiting on a
//!   database or `time.sleep`), so a watchdog on the I/O side wakes one
//!   more thread when queued jobs have seen no job taken for [`STALL`], or
//!   when the oldest has waited [`OVERDUE`] (an app that blocks briefly in
//!   every request keeps jobs moving, slower than its threads could). An
//!   I/O-bound app thus gets the threads it needs within milliseconds,
//!   while a CPU-bound one keeps running on one thread with the GIL
//!   uncontended: waking more threads for it only adds GIL hand-overs,
//!   which raised the 99th-percentile latency of the stream benchmark from
//!   4 to 17 ms when the rule woke threads for any wait over 1 ms. The
//!   price: while every awake thread runs a long request, a new one waits
//!   up to about [`STALL`] for a thread to be woken.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::Thread;
use std::time::Duration;

use pyo3::prelude::*;

use super::pool::Job;

/// How long queued jobs may see no job taken before another thread is
/// woken.
pub const STALL: Duration = Duration::from_millis(1);

/// How long the oldest queued job may wait, however busy the awake
/// threads are, before another thread is woken.
pub const OVERDUE: Duration = Duration::from_millis(10);

/// Rounds of busy-waiting (1, 2, 4, ... spin hints) and then of yielding
/// the CPU before a thread with an empty queue goes to sleep. Measured on
/// 2 cores under wrk: without the yield a thread sleeps and is woken for
/// nearly every request (1.8 context switches per request, a quarter less
/// throughput); more than one yield gained nothing and cost a system call
/// per request when the I/O thread was the bottleneck.
const SPIN_ROUNDS: u32 = 6;
const YIELD_ROUNDS: u32 = 1;

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// `max_queue` requests are already waiting.
    QueueFull,
    /// The pool has shut down.
    Stopped,
}

pub struct Dispatch {
    state: Mutex<State>,
    watchdog: AtomicBool,
    max_queue: usize,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Requests among `jobs` (`close()` jobs do not count against
    /// `max_queue`).
    calls: usize,
    /// Sleeping threads, most recently active last: it is woken first,
    /// its caches still warm.
    idle: Vec<Arc<Parker>>,
    /// Threads awake (running a job or about to look for one).
    awake: usize,
    /// Jobs taken so far: the watchdog's measure of progress.
    taken: u64,
    closed: bool,
}

/// One thread's sleeping place.
pub struct Parker {
    thread: Thread,
    notified: AtomicBool,
}

impl Parker {
    /// For the calling thread.
    pub fn current() -> Arc<Parker> {
        Arc::new(Parker {
            thread: std::thread::current(),
            notified: AtomicBool::new(false),
        })
    }

    fn wait(&self) {
        while !self.notified.swap(false, Ordering::Acquire) {
            std::thread::park();
        }
    }

    fn notify(&self) {
        self.notified.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

impl Dispatch {
    /// `threads` start awake: each looks at the queue before sleeping.
    pub fn new(max_queue: usize, threads: usize) -> Dispatch {
        Dispatch {
            state: Mutex::new(State {
                awake: threads,
                ..State::default()
            }),
            watchdog: AtomicBool::new(false),
            max_queue,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a request unless `max_queue` are waiting already.
    pub fn submit_call(self: &Arc<Self>, job: Job) -> Result<(), SubmitError> {
        self.push(job, true)
    }

    /// Queues work that must not be refused (an iterable's `close()`).
    pub fn submit(self: &Arc<Self>, job: Job) {
        let _ = self.push(job, false);
    }

    fn push(self: &Arc<Self>, job: Job, bounded: bool) -> Result<(), SubmitError> {
        let mut state = self.lock();
        if state.closed {
            return Err(SubmitError::Stopped);
        }
        if bounded {
            if state.calls >= self.max_queue {
                return Err(SubmitError::QueueFull);
            }
            state.calls += 1;
        }
        state.jobs.push_back(job);
        let wake = if state.awake == 0 {
            pop_idle(&mut state)
        } else {
            None
        };
        let sleeping = !state.idle.is_empty();
        drop(state);
        match wake {
            Some(parker) => parker.notify(),
            None if sleeping => self.arm_watchdog(),
            None => {}
        }
        Ok(())
    }

    /// The next job for the calling Python thread, sleeping (with the GIL
    /// released) while there is none. `None` once the pool is closed.
    pub fn take(&self, py: Python<'_>, me: &Arc<Parker>) -> Option<Job> {
        let mut round = 0;
        loop {
            {
                let mut state = self.lock();
                if let Some(job) = state.jobs.pop_front() {
                    if matches!(job, Job::Call(_)) {
                        state.calls -= 1;
                    }
                    state.taken += 1;
                    return Some(job);
                }
                if state.closed {
                    return None;
                }
                // Under load the next request is usually microseconds
                // away: a short spin, then a few yields to the I/O thread
                // that is producing it, are cheaper than sleeping.
                if round < SPIN_ROUNDS + YIELD_ROUNDS {
                    drop(state);
                    if round < SPIN_ROUNDS {
                        for _ in 0..(1 << round) {
                            std::hint::spin_loop();
                        }
                    } else {
                        std::thread::yield_now();
                    }
                    round += 1;
                    continue;
                }
                state.awake -= 1;
                state.idle.push(Arc::clone(me));
            }
            // Whoever wakes this thread has counted it awake again.
            py.detach(|| me.wait());
            round = 0;
        }
    }

    /// A thread starts taking jobs again (a new one, or one back from a
    /// request the pool had stopped counting on): it is awake.
    pub fn join(&self) {
        self.lock().awake += 1;
    }

    /// An awake thread stops taking jobs (stuck in the app, or gone). If
    /// it was the last one awake while jobs wait, a sleeping thread takes
    /// over at once rather than after the watchdog's delay.
    pub fn leave(&self) {
        let mut state = self.lock();
        state.awake = state.awake.saturating_sub(1);
        let wake = if state.awake == 0 && !state.jobs.is_empty() {
            pop_idle(&mut state)
        } else {
            None
        };
        drop(state);
        if let Some(parker) = wake {
            parker.notify();
        }
    }

    /// Whether the pool has shut down.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Requests waiting for a thread.
    pub fn queued(&self) -> usize {
        self.lock().calls
    }

    /// The watchdog's look at the queue: wakes another thread when queued
    /// jobs have seen no job taken since `seen` (and waited [`STALL`]), or
    /// the oldest has waited [`OVERDUE`]. False when no job waits while a
    /// thread sleeps, the state the watchdog exists for.
    fn watch(&self, seen: &mut u64) -> bool {
        let mut state = self.lock();
        let stalled = state.taken == *seen;
        *seen = state.taken;
        if state.idle.is_empty() {
            return false;
        }
        let Some(waited) = state.jobs.front().map(|job| job.since().elapsed()) else {
            return false;
        };
        if (stalled && waited >= STALL) || waited >= OVERDUE {
            if let Some(parker) = pop_idle(&mut state) {
                drop(state);
                parker.notify();
            }
        }
        true
    }

    /// Starts the stall watchdog unless it runs already. It lives on the
    /// I/O runtime (submissions come from there); without one, as in unit
    /// tests or a `close()` dropped elsewhere, the job waits for an awake
    /// thread.
    fn arm_watchdog(self: &Arc<Self>) {
        if self.watchdog.load(Ordering::Relaxed) || self.watchdog.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(watchdog(Arc::clone(self)));
            }
            Err(_) => self.watchdog.store(false, Ordering::Release),
        }
    }

    /// Refuses further jobs, drops those still queued (their clients get
    /// an error at once instead of waiting for a thread that will not
    /// come) and wakes every thread so it can exit. Called when the last
    /// Python thread has left its loop.
    pub fn close(&self) {
        let (idle, jobs) = {
            let mut state = self.lock();
            state.closed = true;
            state.calls = 0;
            (
                std::mem::take(&mut state.idle),
                std::mem::take(&mut state.jobs),
            )
        };
        drop(jobs);
        for p in idle {
            p.notify();
        }
    }
}

/// Wakes another thread whenever queued jobs make no progress for
/// [`STALL`] or the oldest has waited [`OVERDUE`]; ends when nothing waits.
async fn watchdog(d: Arc<Dispatch>) {
    let mut seen = d.lock().taken;
    loop {
        tokio::time::sleep(STALL).await;
        if d.watch(&mut seen) {
            continue;
        }
        d.watchdog.store(false, Ordering::Release);
        // A submission between the check and the store saw the flag still
        // set and did not start a watchdog: look again.
        if d.watch(&mut seen) && !d.watchdog.swap(true, Ordering::AcqRel) {
            continue;
        }
        return;
    }
}

/// A sleeping thread to wake, most recently active first, counted awake.
fn pop_idle(state: &mut State) -> Option<Arc<Parker>> {
    let parker = state.idle.pop()?;
    state.awake += 1;
    Some(parker)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn close_job(py: Python<'_>) -> Job {
        Job::Close(py.None(), std::time::Instant::now())
    }

    /// Threads that take jobs and count them.
    fn workers(
        d: &Arc<Dispatch>,
        n: usize,
        per_job: Duration,
    ) -> (Vec<std::thread::JoinHandle<()>>, Arc<AtomicUsize>) {
        let done = Arc::new(AtomicUsize::new(0));
        let handles = (0..n)
            .map(|_| {
                let d = Arc::clone(d);
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    Python::attach(|py| {
                        let me = Parker::current();
                        while let Some(job) = d.take(py, &me) {
                            drop(job);
                            // Blocking without the GIL, as an app waiting
                            // on I/O does.
                            py.detach(|| std::thread::sleep(per_job));
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
            })
            .collect();
        (handles, done)
    }

    /// A request with nothing in it, answered through `reply`.
    fn call_job(reply: tokio::sync::oneshot::Sender<crate::wsgi::Reply>) -> Job {
        Job::Call(crate::wsgi::Call {
            cgi: Default::default(),
            body: crate::wsgi::RequestBody::Memory(Default::default()),
            reply,
            head: false,
            uri: http::Uri::default(),
            queued_at: std::time::Instant::now(),
            deadline: None,
        })
    }

    fn shut_down(d: &Dispatch, handles: Vec<std::thread::JoinHandle<()>>) {
        d.close();
        for h in handles {
            h.join().expect("worker");
        }
    }

    /// Runs `jobs` jobs blocking `per_job` each on `threads` threads that
    /// have gone to sleep first, on a runtime so that the watchdog runs;
    /// how long they took.
    async fn time_jobs(
        d: &Arc<Dispatch>,
        threads: usize,
        jobs: usize,
        per_job: Duration,
    ) -> Duration {
        let (handles, done) = workers(d, threads, per_job);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        Python::attach(|py| {
            for _ in 0..jobs {
                d.submit(close_job(py));
            }
        });
        while done.load(Ordering::SeqCst) < jobs {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took = started.elapsed();
        shut_down(d, handles);
        took
    }

    fn wait_for(done: &AtomicUsize, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while done.load(Ordering::SeqCst) < n {
            assert!(std::time::Instant::now() < deadline, "jobs not done");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn max_queue_bounds_requests_but_not_close_jobs() {
        Python::initialize();
        let d = Arc::new(Dispatch::new(2, 0));
        Python::attach(|py| {
            let call = || {
                let (tx, _rx) = tokio::sync::oneshot::channel();
                call_job(tx)
            };
            assert!(d.submit_call(call()).is_ok());
            assert!(d.submit_call(call()).is_ok());
            assert_eq!(d.submit_call(call()), Err(SubmitError::QueueFull));
            d.submit(close_job(py));
            assert_eq!(d.queued(), 2);
        });
        d.close();
        Python::attach(|py| assert_eq!(d.submit_call(close_job(py)), Err(SubmitError::Stopped)));
    }

    #[test]
    fn closing_answers_the_queued_calls_at_once() {
        Python::initialize();
        let d = Arc::new(Dispatch::new(10, 0));
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let call = call_job(tx);
        assert!(d.submit_call(call).is_ok());
        d.close();
        assert_eq!(d.queued(), 0);
        assert!(
            matches!(
                rx.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Closed)
            ),
            "the queued call still waits"
        );
    }

    #[test]
    fn an_idle_pool_is_woken_and_drains_the_queue() {
        Python::initialize();
        let d = Arc::new(Dispatch::new(1000, 2));
        let (handles, done) = workers(&d, 2, Duration::ZERO);
        // Let both threads go to sleep first.
        std::thread::sleep(Duration::from_millis(50));
        Python::attach(|py| {
            for _ in 0..100 {
                d.submit(close_job(py));
            }
        });
        wait_for(&done, 100);
        shut_down(&d, handles);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_app_that_blocks_briefly_in_every_job_gets_more_threads() {
        Python::initialize();
        let d = Arc::new(Dispatch::new(10_000, 4));
        // 400 jobs of 0.4 ms each: one thread keeps jobs moving (no 1 ms
        // without progress) but needs 160 ms; once jobs wait OVERDUE,
        // more threads share the work.
        let took = time_jobs(&d, 4, 400, Duration::from_micros(400)).await;
        assert!(
            took < Duration::from_millis(140),
            "{took:?}: the jobs ran on one thread"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn blocked_threads_get_help_from_the_watchdog() {
        Python::initialize();
        let d = Arc::new(Dispatch::new(1000, 4));
        // Each job blocks its thread for 50 ms; 8 jobs on one thread would
        // take 400 ms, on four about 100 ms.
        let took = time_jobs(&d, 4, 8, Duration::from_millis(50)).await;
        assert!(
            took < Duration::from_millis(300),
            "{took:?}: the watchdog did not add threads"
        );
    }
}
