//! The pool of Python threads and the queue that feeds it.
//!
//! A thread keeps the GIL from one job to the next while there is work and
//! releases it when it goes to sleep, so idle threads cost nothing; how
//! jobs reach threads, and when a sleeping one is woken, is
//! [`super::dispatch`]'s business.
//!
//! **Stuck threads.** Python code cannot be interrupted safely, so a
//! request that outlives `request_timeout` keeps its thread after its
//! client got the 504, possibly forever (an app blocked on a lock, or on a
//! socket without a timeout). Such a thread counts as *stuck*: the pool
//! stops counting on it and starts a replacement, so that `threads`
//! threads stay available to everyone else. Replacements are bounded: the
//! pool never has more than twice `threads` threads, stuck ones included.
//! Past that cap, requests wait in the queue as they would without
//! replacements, and `/livez` reports the pool as degraded, so that an
//! orchestrator restarts a process that has lost more threads than it can
//! make up for. A stuck thread whose request does return rejoins the pool
//! while the pool is short of threads, and exits otherwise, so the pool
//! shrinks back to its size. A watcher thread (`maitred-py-watch`,
//! started by the first request that has a deadline) looks for stuck
//! threads every [`WATCH_TICK`]; a thread with a request in hand only
//! writes that request's deadline where the watcher can see it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::dispatch::Dispatch;
pub use super::dispatch::SubmitError;
use super::outbuf;
use super::{Call, worker};
use crate::config::plan::{EnvironPlan, PoolPlan};
use crate::metrics;

/// How often the watcher looks for threads whose request has passed its
/// deadline.
pub const WATCH_TICK: Duration = Duration::from_millis(100);

/// How long the watcher waits before trying again to start a replacement
/// thread that could not start.
const RETRY_START: Duration = Duration::from_secs(1);

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
    crew: Arc<Crew>,
    gil_probe: Arc<AtomicBool>,
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
        let config = Arc::new(ThreadPlan {
            threads: plan.threads,
            output: outbuf::OutbufLimits {
                high_water: plan.outbuf_high_water,
                overflow: plan.outbuf_overflow,
            },
            expose_tracebacks: plan.expose_tracebacks,
            environ: environ.clone(),
        });
        let crew = Arc::new(Crew {
            app,
            dispatch: Arc::new(Dispatch::new(plan.max_queue, plan.threads)),
            config,
            busy: AtomicUsize::new(0),
            threads: plan.threads,
            cap: plan.threads.saturating_mul(2),
            epoch: Instant::now(),
            members: Mutex::new(Members {
                live: plan.threads,
                ..Members::default()
            }),
            watching: AtomicBool::new(false),
            named: AtomicUsize::new(0),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for i in 0..plan.threads {
            if let Err(e) = crew.start_thread(Some(ready_tx.clone())) {
                return Err(format!("cannot start Python thread {i}: {e}"));
            }
        }
        drop(ready_tx);
        for _ in 0..plan.threads {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err("a Python thread exited during start-up".to_owned()),
            }
        }
        Ok(Pool {
            crew,
            gil_probe: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Queues a request, unless `max_queue` requests are already waiting.
    /// A refused call (and its reply channel) is dropped.
    pub fn submit(&self, call: Call) -> Result<(), SubmitError> {
        self.crew.dispatch.submit_call(Job::Call(call))
    }

    /// Requests waiting for a thread.
    pub fn queued(&self) -> usize {
        self.crew.dispatch.queued()
    }

    /// Threads running a request (stuck ones included).
    pub fn busy(&self) -> usize {
        self.crew.busy.load(Ordering::Acquire)
    }

    /// Threads in the pool: `threads`, plus replacements for stuck ones
    /// while those are still stuck.
    pub fn running(&self) -> usize {
        self.crew.lock().live
    }

    /// Threads still running a request past its deadline.
    pub fn stuck(&self) -> usize {
        self.crew.lock().stuck
    }

    /// Whether the pool has its threads and the GIL can be taken within
    /// `within` (a thread holding it without pause, e.g. in a C extension's
    /// loop, would block every request). The pool is short of threads when
    /// one died, or when stuck threads outnumber the replacements it may
    /// start (degraded). The check never goes through the request queue.
    /// While an earlier probe is still waiting for the GIL, the answer is
    /// "stuck" without starting another, so a wedged interpreter cannot
    /// pile up waiting probes.
    pub async fn liveness(&self, within: Duration) -> Liveness {
        if let Some(why) = self.crew.shortfall() {
            return Liveness::Stuck(why);
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

/// The threads of a pool and what they share.
pub(super) struct Crew {
    pub app: Py<PyAny>,
    pub config: Arc<ThreadPlan>,
    pub dispatch: Arc<Dispatch>,
    /// Threads running a request.
    pub busy: AtomicUsize,
    /// The `threads` setting: how many threads the pool keeps available.
    threads: usize,
    /// Most threads at once, stuck ones included.
    cap: usize,
    /// Deadlines in [`Slot`]s count nanoseconds from here.
    epoch: Instant,
    members: Mutex<Members>,
    /// Whether the watcher has been started.
    watching: AtomicBool,
    /// Numbers for thread names.
    named: AtomicUsize,
}

#[derive(Default)]
struct Members {
    /// Threads in their loop, or starting.
    live: usize,
    /// Of those, threads running a request past its deadline.
    stuck: usize,
    /// The slot of each thread in its loop.
    slots: Vec<Arc<Slot>>,
    /// When a replacement last failed to start, and why.
    start_failed: Option<(Instant, String)>,
    /// Whether stuck threads outnumber the replacements allowed (logged
    /// when it changes).
    degraded: bool,
}

impl Members {
    /// Threads that take requests.
    fn available(&self) -> usize {
        self.live.saturating_sub(self.stuck)
    }
}

/// What a thread is running, as the watcher sees it: nothing ([`IDLE`]),
/// a request with a deadline (nanoseconds after the crew's epoch), or a
/// request past it ([`STUCK`], set by the watcher).
#[derive(Default)]
pub(super) struct Slot(AtomicU64);

const IDLE: u64 = 0;
const STUCK: u64 = u64::MAX;

impl Slot {
    /// The thread starts a request due by `at` (from [`Crew::deadline`]).
    pub(super) fn arm(&self, at: u64) {
        self.0.store(at, Ordering::Release);
    }

    /// The thread is done with its request; whether the watcher had
    /// counted it as stuck meanwhile.
    pub(super) fn disarm(&self) -> bool {
        self.0.swap(IDLE, Ordering::AcqRel) == STUCK
    }

    /// Marks a request past its deadline as stuck (once).
    fn flag_if_due(&self, now: u64) -> bool {
        let at = self.0.load(Ordering::Acquire);
        at != IDLE
            && at != STUCK
            && at <= now
            && self
                .0
                .compare_exchange(at, STUCK, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

/// A thread's place in the pool, from the moment its state is built until
/// it leaves its loop.
pub(super) struct Member {
    crew: Arc<Crew>,
    slot: Arc<Slot>,
    /// Still counted in `live` (a thread that leaves after being stuck
    /// has been uncounted already).
    counted: bool,
}

impl Member {
    /// This thread, counted as stuck, is back from its request. It rejoins
    /// the pool while the pool is short of threads; otherwise the pool has
    /// its threads without it, and it must leave (true).
    pub(super) fn returned(&mut self) -> bool {
        let crew = &self.crew;
        let mut m = crew.lock();
        m.stuck = m.stuck.saturating_sub(1);
        metrics::get()
            .python_threads_stuck
            .set(metrics::as_gauge(m.stuck));
        let leave = m.available() > crew.threads;
        if leave {
            m.live -= 1;
            self.counted = false;
            metrics::get().python_threads.set(metrics::as_gauge(m.live));
        } else {
            crew.dispatch.join();
        }
        crew.note_degraded(&mut m);
        leave
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let crew = &self.crew;
        let mut m = crew.lock();
        m.slots.retain(|s| !Arc::ptr_eq(s, &self.slot));
        if self.counted {
            m.live = m.live.saturating_sub(1);
            metrics::get().python_threads.set(metrics::as_gauge(m.live));
        }
        // The last thread out closes the queue, so requests still waiting
        // get an answer at once.
        if m.live == 0 {
            crew.dispatch.close();
        }
    }
}

impl Crew {
    fn lock(&self) -> MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `at` as a [`Slot`] holds it.
    pub(super) fn deadline(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos)
            .unwrap_or(STUCK - 1)
            .clamp(1, STUCK - 1)
    }

    /// Starts one thread, counted in `live` (and awake in the dispatch)
    /// already. `ready` hears whether it could set itself up.
    fn start_thread(
        self: &Arc<Self>,
        ready: Option<std::sync::mpsc::Sender<Result<(), String>>>,
    ) -> std::io::Result<()> {
        let n = self.named.fetch_add(1, Ordering::Relaxed);
        let crew = Arc::clone(self);
        std::thread::Builder::new()
            .name(format!("maitred-py-{n}"))
            .spawn(move || worker::thread_main(crew, ready))
            .map(drop)
    }

    /// A started thread has built its state and enters the pool, showing
    /// the watcher its deadlines in `slot`.
    pub(super) fn enlist(self: &Arc<Self>, slot: Arc<Slot>) -> Member {
        let mut m = self.lock();
        m.slots.push(Arc::clone(&slot));
        m.start_failed = None;
        drop(m);
        Member {
            crew: Arc::clone(self),
            slot,
            counted: true,
        }
    }

    /// A started thread could not build its state and ends.
    pub(super) fn not_started(&self, why: &str) {
        let mut m = self.lock();
        m.live = m.live.saturating_sub(1);
        m.start_failed = Some((Instant::now(), why.to_owned()));
        metrics::get().python_threads.set(metrics::as_gauge(m.live));
        self.dispatch.leave();
        if m.live == 0 {
            self.dispatch.close();
        }
    }

    /// Starts the watcher unless it runs already.
    pub(super) fn watch(self: &Arc<Self>) {
        if self.watching.load(Ordering::Relaxed) || self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let crew = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name("maitred-py-watch".into())
            .spawn(move || {
                while !crew.dispatch.is_closed() {
                    std::thread::sleep(WATCH_TICK);
                    crew.check(Instant::now());
                }
            });
        if let Err(e) = started {
            tracing::error!("cannot start the thread that watches for stuck Python threads: {e}");
            self.watching.store(false, Ordering::Release);
        }
    }

    /// Counts the threads whose request has passed its deadline as stuck,
    /// and starts threads while fewer than `threads` are available and the
    /// cap allows.
    fn check(self: &Arc<Self>, now: Instant) {
        let mut m = self.lock();
        let due = self.deadline(now);
        let flagged = m.slots.iter().filter(|s| s.flag_if_due(due)).count();
        if flagged > 0 {
            m.stuck += flagged;
            for _ in 0..flagged {
                self.dispatch.leave();
            }
            metrics::get()
                .python_threads_stuck
                .set(metrics::as_gauge(m.stuck));
        }
        let retry_later = m
            .start_failed
            .as_ref()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) < RETRY_START);
        let wanted = if retry_later {
            0
        } else {
            let short = self.threads.saturating_sub(m.available());
            short.min(self.cap.saturating_sub(m.live))
        };
        if flagged > 0 {
            tracing::warn!(
                "{flagged} Python thread(s) still in the app past request_timeout: \
                 counted as stuck ({} stuck in all); starting {wanted} replacement(s) \
                 ({} threads, at most {})",
                m.stuck,
                m.live + wanted,
                self.cap
            );
        }
        if wanted > 0 {
            m.live += wanted;
            metrics::get().python_threads.set(metrics::as_gauge(m.live));
        }
        self.note_degraded(&mut m);
        drop(m);
        for _ in 0..wanted {
            self.dispatch.join();
            match self.start_thread(None) {
                Ok(()) => metrics::get().python_thread_replacements.inc(),
                Err(e) => {
                    let why = format!("cannot start a Python thread: {e}");
                    tracing::error!("{why}");
                    self.not_started(&why);
                }
            }
        }
    }

    /// Logs when stuck threads start or stop outnumbering the
    /// replacements allowed.
    fn note_degraded(&self, m: &mut Members) {
        let degraded = m.available() < self.threads && m.live >= self.cap && m.stuck > 0;
        if degraded == m.degraded {
            return;
        }
        m.degraded = degraded;
        if degraded {
            tracing::error!(
                "{} Python threads are stuck in requests past request_timeout and the pool \
                 has its most threads ({}): {} of {} available, requests wait for them, and \
                 /livez fails until stuck threads return",
                m.stuck,
                self.cap,
                m.available(),
                self.threads
            );
        } else {
            tracing::info!(
                "the Python pool has {} threads available again",
                self.threads
            );
        }
    }

    /// Why the pool has fewer than `threads` threads available, if it
    /// does and no replacement is on its way.
    fn shortfall(&self) -> Option<String> {
        let m = self.lock();
        let available = m.available();
        if available >= self.threads {
            return None;
        }
        if m.stuck == 0 {
            return Some(format!(
                "{} of {} Python threads are running",
                m.live, self.threads
            ));
        }
        if m.live >= self.cap {
            return Some(format!(
                "degraded: {} Python threads are stuck in requests past request_timeout and \
                 no more can be started (at most {}); {available} of {} available",
                m.stuck, self.cap, self.threads
            ));
        }
        m.start_failed
            .as_ref()
            .map(|(_, why)| format!("a stuck Python thread cannot be replaced: {why}"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wsgi::{Reply, RequestBody};
    use tokio::sync::oneshot;

    /// An app that blocks (without the GIL) on `gate` for each "block"
    /// queued in `modes`, and answers at once otherwise.
    const APP: &std::ffi::CStr = c"
import threading
gate = threading.Event()
modes = []

def app(environ, start_response):
    mode = modes.pop(0) if modes else 'ok'
    if mode == 'block':
        gate.wait()
    if mode == 'stream':
        return stream(start_response)
    start_response('200 OK', [('Content-Length', '2')])
    return [b'ok']

def stream(start_response):
    start_response('200 OK', [])
    yield b'o'
    gate.wait()
    yield b'k'
";

    fn start(threads: usize) -> (Pool, Py<PyModule>) {
        Python::initialize();
        let module = Python::attach(|py| {
            PyModule::from_code(py, APP, c"stuck_app.py", c"stuck_app")
                .expect("the test app")
                .unbind()
        });
        let app = Python::attach(|py| module.getattr(py, "app").expect("app"));
        let plan = PoolPlan {
            threads,
            max_queue: 100,
            outbuf_high_water: 1 << 20,
            outbuf_overflow: 1 << 20,
            expose_tracebacks: false,
        };
        let environ = EnvironPlan {
            scheme: crate::scheme::Scheme::Http,
            server_name: "test".into(),
            server_software: "test".into(),
            script_name: String::new(),
        };
        let pool = Pool::start(app, &plan, &environ).expect("pool");
        (pool, module)
    }

    fn submit(pool: &Pool, deadline: Option<Duration>) -> oneshot::Receiver<Reply> {
        let (reply, rx) = oneshot::channel();
        let queued_at = Instant::now();
        let call = Call {
            cgi: Default::default(),
            body: RequestBody::Memory(Default::default()),
            reply,
            head: false,
            uri: http::Uri::default(),
            queued_at,
            deadline: deadline.map(|d| queued_at + d),
        };
        assert!(pool.submit(call).is_ok());
        rx
    }

    fn next_mode(module: &Py<PyModule>, mode: &str) {
        Python::attach(|py| {
            let modes = module.getattr(py, "modes").expect("modes");
            modes.call_method1(py, "append", (mode,)).expect("append");
        });
    }

    /// Lets every call blocked in the test app return.
    fn open_gate(module: &Py<PyModule>) {
        Python::attach(|py| {
            let gate = module.getattr(py, "gate").expect("gate");
            gate.call_method0(py, "set").expect("set");
        });
    }

    fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn answered(mut rx: oneshot::Receiver<Reply>) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match rx.try_recv() {
                Ok(Reply::Response(r)) => return r.status,
                Ok(Reply::Failed { detail }) => panic!("failed: {detail}"),
                Err(oneshot::error::TryRecvError::Empty) => {
                    assert!(Instant::now() < deadline, "no answer");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_thread_stuck_past_its_deadline_is_replaced_up_to_the_cap_and_leaves_when_it_returns() {
        let (pool, module) = start(1);
        assert_eq!((pool.running(), pool.stuck()), (1, 0));

        next_mode(&module, "block");
        let _first = submit(&pool, Some(Duration::from_millis(100)));
        eventually("the blocked thread counts as stuck", || pool.stuck() == 1);
        assert_eq!(pool.running(), 2, "a replacement was started");
        assert_eq!(pool.crew.shortfall(), None);
        assert_eq!(answered(submit(&pool, None)), 200, "the replacement serves");

        next_mode(&module, "block");
        let _second = submit(&pool, Some(Duration::from_millis(100)));
        eventually("the replacement counts as stuck too", || pool.stuck() == 2);
        assert_eq!(pool.running(), 2, "no more than twice `threads`");
        let why = pool.crew.shortfall().expect("degraded");
        assert!(why.starts_with("degraded:"), "{why}");
        // A request now waits, as it would without replacements.
        let waiting = submit(&pool, None);

        open_gate(&module);
        assert_eq!(answered(waiting), 200);
        eventually("the pool shrinks back to its size", || {
            pool.stuck() == 0 && pool.running() == 1
        });
        assert_eq!(pool.crew.shortfall(), None);
        assert_eq!(answered(submit(&pool, None)), 200);
    }

    #[test]
    fn calls_without_a_deadline_are_never_counted_as_stuck() {
        let (pool, module) = start(1);
        next_mode(&module, "block");
        let _blocked = submit(&pool, None);
        std::thread::sleep(WATCH_TICK * 3);
        assert_eq!((pool.running(), pool.stuck()), (1, 0));
        open_gate(&module);
        assert_eq!(answered(submit(&pool, None)), 200);
    }

    #[test]
    fn a_response_that_has_started_may_outlive_its_deadline() {
        let (pool, module) = start(1);
        next_mode(&module, "stream");
        let streaming = submit(&pool, Some(Duration::from_millis(50)));
        assert_eq!(answered(streaming), 200, "the head went out");
        std::thread::sleep(WATCH_TICK * 3);
        assert_eq!((pool.running(), pool.stuck()), (1, 0));
        open_gate(&module);
        assert_eq!(answered(submit(&pool, None)), 200);
    }

    #[test]
    fn a_slot_is_flagged_once_and_only_when_due() {
        let slot = Slot::default();
        assert!(!slot.flag_if_due(u64::MAX - 1), "an idle slot");
        slot.arm(100);
        assert!(!slot.flag_if_due(99));
        assert!(slot.flag_if_due(100));
        assert!(!slot.flag_if_due(200), "flagged once");
        assert!(slot.disarm(), "the thread learns it was stuck");
        slot.arm(100);
        assert!(!slot.disarm(), "done in time");
    }
}
