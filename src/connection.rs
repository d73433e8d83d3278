//! One connection as the rest of the server sees it: whether a request is
//! in progress, since when it has been idle, the timers that follow from
//! that, and the registry through which connections are closed (the
//! idlest first when the connection limit is reached, all of them on
//! drain).
//!
//! At the connection limit a newcomer is admitted at once by taking the
//! slot of the most expendable connections ([`Registry::evict`]): one that
//! never sent a request, then one idle after its requests, then one whose
//! client is stalling a request (trickling a body, not reading a
//! response). The evicted connection's slot passes to the newcomer
//! ([`ConnState::take_slot`]), so admission never waits for a close.
//!
//! Timers (all reset by progress, checked only while the connection waits
//! on its client, so a slow app is never timed out, as in Waitress):
//! - `channel_timeout`: nothing moved in either direction for that long
//!   (an idle keep-alive connection, a response the client stopped reading);
//! - `header_timeout`: a request head started arriving that long ago and is
//!   still not complete (slowloris);
//! - the body timeout is applied by the service, between body frames.
//!
//! hyper's own head timer is not used: it also runs while a keep-alive
//! connection sits idle, so it could not tell the two apart.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::budget;
pub use crate::config::plan::Timeouts;
use crate::framing::{HeadQueue, RefusedHead, Scanner, Verdict, Violation};
use crate::metrics::{self, Label};

/// The error a connection's read or write ends with when one of its timers
/// fires; the request path reads which setting it was from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} {}", self.what(), self.timeout.name)]
pub struct TimedOut {
    pub which: ConnectionTimeout,
    pub timeout: crate::config::plan::Timeout,
}

impl TimedOut {
    fn what(&self) -> &'static str {
        match self.which {
            ConnectionTimeout::Header => "request head not complete within",
            ConnectionTimeout::Channel => "no progress for longer than",
        }
    }

    /// The timeout behind an I/O error, if a connection timer caused it.
    pub fn of(err: &io::Error) -> Option<&TimedOut> {
        err.get_ref()?.downcast_ref::<TimedOut>()
    }
}

/// The error a connection's read or write ends with when an eviction took
/// its slot while its client stalled a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client stalled its request while the server was at connection_limit")]
pub struct Evicted;

impl Evicted {
    /// Whether an I/O error is this one.
    pub fn is(err: &io::Error) -> bool {
        err.get_ref().is_some_and(|e| e.is::<Evicted>())
    }
}

/// Which timer closed a connection (the `timeout` label of
/// `maitred_connection_timeouts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionTimeout {
    Header,
    Channel,
}

impl Label for ConnectionTimeout {
    const ALL: &'static [Self] = &[ConnectionTimeout::Header, ConnectionTimeout::Channel];
    fn label(self) -> &'static str {
        match self {
            ConnectionTimeout::Header => "header",
            ConnectionTimeout::Channel => "channel",
        }
    }
}

/// A process-wide sequence of idle transitions: which connection became
/// idle first only needs an order, not a clock (and reading the clock per
/// request shows in profiles).
static IDLE_ORDER: AtomicU64 = AtomicU64::new(0);

fn idle_order() -> u64 {
    IDLE_ORDER.fetch_add(1, Ordering::Relaxed)
}

/// How often the eviction marks advance: the least time a connection must
/// have been idle to be closed to make room for a new one.
pub const EVICTION_TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// A mark in the idle order: connections idle since before it have been
/// idle at least since the mark was taken.
fn idle_mark() -> u64 {
    IDLE_ORDER.load(Ordering::Relaxed)
}

/// Who holds a connection's slot of `connection_limit`.
const SLOT_HELD: u8 = 0;
/// An eviction took it for a newcomer: the connection must not give it back.
const SLOT_TAKEN: u8 = 1;
/// The connection gave it back as it ended.
const SLOT_RELEASED: u8 = 2;

/// What the service, the socket wrapper and the registry share.
#[derive(Debug)]
pub struct ConnState {
    busy: AtomicBool,
    /// A request is in progress and the connection is waiting on its client
    /// (a body still arriving, a response not being read): the client, not
    /// the app, is what it waits for.
    waiting_on_client: AtomicBool,
    /// See [`SLOT_HELD`].
    slot: AtomicU8,
    /// The client has sent something (a connection still waiting for its
    /// first byte has cost nothing but a socket).
    spoke: AtomicBool,
    /// Closed by the drain (requests still arriving get answered), not by
    /// an eviction (closed now).
    draining: AtomicBool,
    /// Requests begun on this connection: a head timer started before the
    /// latest one began belongs to a head that has since been parsed.
    requests: AtomicU64,
    /// [`idle_order`] when the connection last became idle.
    idle_since: AtomicU64,
    close: Notify,
    close_requested: AtomicBool,
    /// hyper has tried to write since it last flushed: part of a response
    /// may still sit in its buffer.
    unflushed: AtomicBool,
    /// Response bytes handed to hyper since it last flushed (counted in
    /// the memory budget, [`budget::BODIES`], too).
    unsent: AtomicU64,
    /// What the framing scanner learned of each head hyper has not yet
    /// handed to the gateway.
    pub heads: HeadQueue,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            busy: AtomicBool::new(false),
            waiting_on_client: AtomicBool::new(false),
            slot: AtomicU8::new(SLOT_HELD),
            spoke: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(idle_order()),
            close: Notify::new(),
            close_requested: AtomicBool::new(false),
            unflushed: AtomicBool::new(false),
            unsent: AtomicU64::new(0),
            heads: HeadQueue::default(),
        }
    }

    /// Whether the connection can be dropped without losing anything: no
    /// request in hand and every response byte handed to the kernel. A
    /// partial head (slowloris) or an idle keep-alive connection can; hyper's
    /// own graceful shutdown would keep waiting on a partial head.
    pub fn can_drop_now(&self) -> bool {
        !self.is_busy() && !self.unflushed.load(Ordering::Relaxed)
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// A request head has been parsed; returns a guard that marks the
    /// connection idle again when the response is over (or abandoned).
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.busy.store(true, Ordering::Release);
        RequestGuard(Arc::clone(self))
    }

    /// `n` response bytes went to hyper, to be sent.
    pub fn handed_over(&self, n: u64) {
        self.unsent.fetch_add(n, Ordering::Relaxed);
        budget::BODIES.take(n);
    }

    /// Everything handed over has reached the kernel (or never will).
    fn flushed(&self) {
        budget::BODIES.give_back(self.unsent.swap(0, Ordering::Relaxed));
    }

    /// The client's first byte has arrived.
    pub fn spoke(&self) {
        self.spoke.store(true, Ordering::Relaxed);
    }

    /// No request has begun on this connection yet.
    pub fn never_used(&self) -> bool {
        self.requests.load(Ordering::Relaxed) == 0
    }

    /// Closed by the drain rather than an eviction.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Takes this connection's slot for a newcomer: true when the slot was
    /// still the connection's. The connection is asked to close, and will
    /// not give the slot back.
    fn take_slot(&self) -> bool {
        let taken = self
            .slot
            .compare_exchange(SLOT_HELD, SLOT_TAKEN, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if taken {
            self.request_close();
        }
        taken
    }

    /// The connection is ending: true when its slot is still its own to
    /// give back (false when an eviction took it).
    pub fn release_slot(&self) -> bool {
        self.slot
            .compare_exchange(
                SLOT_HELD,
                SLOT_RELEASED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// The slot went to a newcomer: reads and writes end, so a request
    /// whose client stalls is cut off rather than waited for.
    pub fn is_evicted(&self) -> bool {
        self.slot.load(Ordering::Relaxed) == SLOT_TAKEN
    }

    /// Asks the connection to close: at once if idle, after its current
    /// response otherwise.
    pub fn request_close(&self) {
        self.close_requested.store(true, Ordering::Relaxed);
        self.close.notify_one();
    }

    /// Resolves when a close has been requested.
    pub async fn closing(&self) {
        if self.close_requested.load(Ordering::Relaxed) {
            return;
        }
        self.close.notified().await;
    }
}

/// Held for as long as a request is in progress.
#[derive(Debug)]
pub struct RequestGuard(Arc<ConnState>);

impl RequestGuard {
    /// `n` bytes of the response went to hyper, to be sent.
    pub fn handed_over(&self, n: u64) {
        self.0.handed_over(n);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // Release: whoever sees `busy` false also sees the new idle order,
        // so a connection that has just finished a request is not taken
        // for one idle since before it.
        self.0.idle_since.store(idle_order(), Ordering::Relaxed);
        self.0.waiting_on_client.store(false, Ordering::Relaxed);
        self.0.busy.store(false, Ordering::Release);
    }
}

/// Every open client connection.
#[derive(Debug, Default)]
pub struct Registry {
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    marks: Mutex<Marks>,
    /// Woken when the last connection goes.
    emptied: Notify,
    /// The drain has begun: connections registered now are draining too.
    draining: AtomicBool,
}

/// How expendable a connection is when a newcomer needs its slot, most
/// first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Expendable {
    /// Never sent a byte: a flood's connections, or a client that opened
    /// one too many.
    Silent,
    /// Never finished a request head (slowloris).
    NeverUsed,
    /// Idle after its requests for at least one tick.
    IdleAfterUse,
    /// A request in progress whose client has stalled it (for at least one
    /// tick since it began): a trickled body, an unread response.
    StalledOnClient,
}

/// [`idle_mark`] at the last two times an eviction moved them on, at least
/// [`EVICTION_TICK`] apart: a connection idle since before `older` has been
/// idle for at least one tick. They move only when an eviction is tried,
/// so a server below its connection limit does no work for them.
#[derive(Debug, Default)]
struct Marks {
    older: u64,
    newer: u64,
    moved: Option<Instant>,
}

/// Removes a connection from the registry when its task ends.
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
    pub state: Arc<ConnState>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.state.flushed();
        let empty = {
            let mut conns = self.registry.lock();
            conns.remove(&self.id);
            conns.is_empty()
        };
        if empty {
            self.registry.emptied.notify_waiters();
        }
        metrics::get().connections_active.dec();
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn register(self: &Arc<Self>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::new());
        if self.draining.load(Ordering::Relaxed) {
            state.draining.store(true, Ordering::Relaxed);
            state.request_close();
        }
        self.lock().insert(id, Arc::clone(&state));
        metrics::get().connections_active.inc();
        Registration {
            registry: Arc::clone(self),
            id,
            state,
        }
    }

    /// How expendable `c` is, and its place in line (oldest first); `None`
    /// when it is not to be evicted. `older` is the mark a tick old (see
    /// [`idle_mark`]).
    fn expendable(c: &ConnState, older: u64) -> Option<(Expendable, u64)> {
        if c.close_requested.load(Ordering::Relaxed) || c.slot.load(Ordering::Relaxed) != SLOT_HELD
        {
            return None;
        }
        let since = c.idle_since.load(Ordering::Relaxed);
        let tier = if !c.is_busy() {
            if c.never_used() && !c.spoke.load(Ordering::Relaxed) {
                Expendable::Silent
            } else if c.never_used() {
                Expendable::NeverUsed
            } else if since < older {
                // A keep-alive connection between two requests of a busy
                // client is not idle in any useful sense: closing it would
                // race with its next request.
                Expendable::IdleAfterUse
            } else {
                return None;
            }
        } else if c.waiting_on_client.load(Ordering::Relaxed) && since < older {
            Expendable::StalledOnClient
        } else {
            return None;
        };
        Some((tier, since))
    }

    /// Takes the slots of up to `wanted` of the most expendable connections
    /// (see [`Expendable`]), asking each to close; returns how many it
    /// took, which the caller adds to the connection limit's free slots.
    /// Returns 0 when no connection qualifies: the newcomer then waits for
    /// one to end or to qualify (as in Waitress, in the kernel backlog).
    /// One look over every connection finds a batch, so a flood costs one
    /// scan per batch, not one per connection.
    pub fn evict(&self, wanted: usize) -> usize {
        let older = self.tick_mark();
        self.evict_before(older, wanted)
    }

    /// The mark at least one [`EVICTION_TICK`] old, moving the marks on
    /// when a tick has passed.
    fn tick_mark(&self) -> u64 {
        {
            let mut marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if marks
                .moved
                .is_none_or(|at| now.duration_since(at) >= EVICTION_TICK)
            {
                marks.older = marks.newer;
                marks.newer = idle_mark();
                marks.moved = Some(now);
            }
            marks.older
        }
    }

    /// [`Registry::evict`] with `older` as the mark a tick old.
    fn evict_before(&self, older: u64, wanted: usize) -> usize {
        let conns = self.lock();
        let mut candidates: Vec<((Expendable, u64), &Arc<ConnState>)> = conns
            .values()
            .filter_map(|c| Self::expendable(c, older).map(|key| (key, c)))
            .collect();
        let wanted = wanted.min(candidates.len());
        if wanted == 0 {
            return 0;
        }
        if wanted < candidates.len() {
            candidates.select_nth_unstable_by_key(wanted - 1, |(key, _)| *key);
        }
        let mut taken = 0;
        for (_, c) in &candidates[..wanted] {
            if c.take_slot() {
                taken += 1;
            }
        }
        metrics::get().connections_evicted.inc_by(taken as u64);
        taken
    }

    /// Asks every connection to close (drain): busy ones after their
    /// current response, idle ones once they have stayed idle a moment (a
    /// request already on its way is answered, with `Connection: close`).
    /// Connections registered from now on are draining from the start.
    pub fn close_all(&self) {
        self.draining.store(true, Ordering::Relaxed);
        for c in self.lock().values() {
            c.draining.store(true, Ordering::Relaxed);
            c.request_close();
        }
    }

    pub fn open(&self) -> usize {
        self.lock().len()
    }

    /// Resolves once no connection is open.
    pub async fn all_closed(&self) {
        loop {
            // Registered before looking, so a close in between still wakes.
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.lock().is_empty() {
                return;
            }
            emptied.await;
        }
    }

    /// Connections with a request in progress.
    pub fn busy(&self) -> usize {
        self.lock().values().filter(|c| c.is_busy()).count()
    }
}

/// The socket, with the inactivity and head timers applied to every read
/// and write that has to wait.
///
/// The clock is read only when an operation has to wait: progress just
/// bumps a counter, and the next wait (microseconds later, in the same
/// poll of the connection) dates it. The timer itself is re-armed only
/// when it would fire too late, or when it fires early because progress
/// moved the deadline on, so a busy connection costs no timer-wheel work
/// per request.
pub struct Watched<S> {
    io: S,
    timeouts: Timeouts,
    state: Arc<ConnState>,
    /// Checks the request framing of every byte read (see [`framing`]).
    scanner: Scanner,
    /// A head refused before hyper saw it; reads end there.
    refused: Option<RefusedHead>,
    /// hyper read up to the refused head and asked for more: it wants the
    /// next request, which the connection answers itself.
    refused_reached: bool,
    /// A body's framing broke after the bytes already passed on: the next
    /// read fails with it.
    broken_body: Option<Violation>,
    /// When the latest progress was dated.
    last_activity: Instant,
    /// A read or write succeeded since `last_activity` was last set.
    undated: bool,
    head: HeadTimer,
    timer: Pin<Box<Sleep>>,
    /// A timeout has been reported (and counted) already.
    timed_out: bool,
}

/// The head timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadTimer {
    /// No head is being received.
    Idle,
    /// A head started arriving with request number `.0` next, in one
    /// read so far, and has not been dated yet.
    Started(u64),
    /// ... and its first byte came at `.1`.
    Since(u64, Instant),
}

impl<S> Watched<S> {
    pub fn new(io: S, timeouts: Timeouts, state: Arc<ConnState>, scanner: Scanner) -> Self {
        let now = Instant::now();
        Watched {
            io,
            timeouts,
            state,
            scanner,
            refused: None,
            refused_reached: false,
            broken_body: None,
            last_activity: now,
            undated: false,
            head: HeadTimer::Idle,
            timer: Box::pin(tokio::time::sleep_until(now + timeouts.channel.after)),
            timed_out: false,
        }
    }

    /// The head the connection must answer itself, once hyper is done: one
    /// refused by the framing rules that hyper has reached.
    pub fn refused_head(&self) -> Option<RefusedHead> {
        self.refused.filter(|_| self.refused_reached)
    }

    /// The socket, when the connection is done with the timers.
    pub fn into_inner(self) -> S {
        self.io
    }

    fn deadline(&self) -> (Instant, ConnectionTimeout) {
        let idle = (
            self.last_activity + self.timeouts.channel.after,
            ConnectionTimeout::Channel,
        );
        match self.head {
            HeadTimer::Since(_, start) if start + self.timeouts.header.after < idle.0 => (
                start + self.timeouts.header.after,
                ConnectionTimeout::Header,
            ),
            _ => idle,
        }
    }

    /// The error a timeout ends the connection with, counted once.
    fn expired(&mut self, which: ConnectionTimeout) -> io::Error {
        if !self.timed_out {
            self.timed_out = true;
            metrics::get().connection_timeouts.inc(which);
        }
        let timeout = match which {
            ConnectionTimeout::Header => self.timeouts.header,
            ConnectionTimeout::Channel => self.timeouts.channel,
        };
        io::Error::new(io::ErrorKind::TimedOut, TimedOut { which, timeout })
    }

    /// Bytes moved: the client is not stalling the request (if any).
    fn progress(&mut self) {
        self.undated = true;
        if self.state.waiting_on_client.load(Ordering::Relaxed) {
            self.state.waiting_on_client.store(false, Ordering::Relaxed);
        }
    }

    fn note_read(&mut self) {
        self.progress();
        self.forget_parsed_head();
        if self.state.is_busy() {
            return;
        }
        match self.head {
            HeadTimer::Idle => {
                self.head = HeadTimer::Started(self.state.requests.load(Ordering::Relaxed));
            }
            // A head that takes more than one read without ever waiting
            // (a client whose next byte is always already there) is dated
            // now, so the check in `poll_read` can see it.
            HeadTimer::Started(n) => self.head = HeadTimer::Since(n, Instant::now()),
            HeadTimer::Since(..) => {}
        }
    }

    /// Stops the head timer once its head has been parsed: while a request
    /// is in progress, and after it (a request that never made a read wait
    /// would otherwise leave its timer running into the idle time that
    /// follows, cutting keep-alive connections at `header_timeout`).
    fn forget_parsed_head(&mut self) {
        let begun = match self.head {
            HeadTimer::Idle => return,
            HeadTimer::Started(n) | HeadTimer::Since(n, _) => n,
        };
        if self.state.is_busy() || self.state.requests.load(Ordering::Relaxed) != begun {
            self.head = HeadTimer::Idle;
        }
    }

    /// Gives undated progress and an undated head start the time `now`.
    fn date(&mut self, now: Instant) {
        if self.undated {
            self.undated = false;
            self.last_activity = now;
        }
        if let HeadTimer::Started(n) = self.head {
            self.head = HeadTimer::Since(n, now);
        }
    }

    /// hyper writes only when it has output, and flushes the socket only
    /// once all of it is written: from here until that flush, something
    /// may be unsent.
    fn note_output_pending(&self) {
        self.state.unflushed.store(true, Ordering::Relaxed);
    }

    /// Called when an operation has to wait: `Ready(Err)` once a deadline
    /// has passed.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        // Its client is not reading the response it holds memory for, and
        // the memory budget is spent: the connection is cut rather than
        // held.
        if self.state.unsent.load(Ordering::Relaxed) > 0 && budget::BODIES.exhausted() {
            metrics::get().connections_evicted.inc();
            return Poll::Ready(io::Error::new(io::ErrorKind::ConnectionAborted, Evicted));
        }
        if self.state.is_busy() {
            // A request in progress that an eviction cut off: its client
            // is what it waits for, and its slot has gone to a newcomer.
            if self.state.is_evicted() {
                return Poll::Ready(io::Error::new(io::ErrorKind::ConnectionAborted, Evicted));
            }
            self.state.waiting_on_client.store(true, Ordering::Relaxed);
        }
        self.forget_parsed_head();
        self.date(Instant::now());
        loop {
            let (deadline, _) = self.deadline();
            // A timer set for later than the deadline would fire too late;
            // one set earlier fires, finds the deadline moved on, and is
            // set again below.
            if self.timer.deadline() > deadline {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            self.forget_parsed_head();
            self.date(now);
            let (deadline, why) = self.deadline();
            if now >= deadline {
                return Poll::Ready(self.expired(why));
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

/// Most bytes one read takes from the socket (see `poll_read`).
const READ_LIMIT: usize = 8 * 1024 - 1;

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(violation) = self.broken_body {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, violation)));
        }
        if self.refused.is_some() {
            // End of input where the refused head begins.
            self.refused_reached = true;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = {
            let mut limited = buf.take(READ_LIMIT);
            let polled = Pin::new(&mut self.io).poll_read(cx, &mut limited);
            let n = limited.filled().len();
            // SAFETY: `limited` views the unfilled part of `buf`, and the
            // read initialized its first `n` bytes.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            polled
        };
        match polled {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    let this = &mut *self;
                    match this
                        .scanner
                        .scan(&buf.filled()[before..], &this.state.heads)
                    {
                        Verdict::Pass => {}
                        Verdict::Refuse { keep, head } => {
                            buf.set_filled(before + keep);
                            self.refused = Some(head);
                            self.refused_reached = keep == 0;
                        }
                        Verdict::Fail { keep, violation } => {
                            self.broken_body = Some(violation);
                            if keep == 0 {
                                let err = io::Error::new(io::ErrorKind::InvalidData, violation);
                                return Poll::Ready(Err(err));
                            }
                            buf.set_filled(before + keep);
                        }
                    }
                }
                if buf.filled().len() > before {
                    self.note_read();
                    // A client that always has the next byte ready never
                    // makes a read wait, so the head deadline is also
                    // checked here (a head already dated is a head that
                    // has waited before: only then is the clock read).
                    if let HeadTimer::Since(_, start) = self.head {
                        if start.elapsed() >= self.timeouts.header.after {
                            return Poll::Ready(Err(self.expired(ConnectionTimeout::Header)));
                        }
                    }
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_expired(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.note_output_pending();
        match Pin::new(&mut self.io).poll_write(cx, data) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.progress();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_expired(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.note_output_pending();
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.progress();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_expired(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending => self.poll_expired(cx).map(Err),
            Poll::Ready(Ok(())) => {
                self.state.unflushed.store(false, Ordering::Relaxed);
                self.state.flushed();
                Poll::Ready(Ok(()))
            }
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::config::plan::Timeout;

    const T: Timeouts = Timeouts {
        channel: Timeout {
            after: Duration::from_secs(5),
            name: "channel_timeout",
        },
        header: Timeout {
            after: Duration::from_secs(2),
            name: "header_timeout",
        },
    };

    fn watched<S>(io: S) -> (Watched<S>, Arc<ConnState>) {
        let state = Arc::new(ConnState::new());
        let scanner = Scanner::new(false, 64 * 1024);
        (Watched::new(io, T, Arc::clone(&state), scanner), state)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_after_channel_timeout() {
        let (_client, server) = tokio::io::duplex(64);
        let (mut w, _) = watched(server);
        let started = Instant::now();
        let err = w.read(&mut [0u8; 8]).await.expect_err("times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), T.channel.after);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_times_out_after_header_timeout() {
        let (mut client, server) = tokio::io::duplex(64);
        let (mut w, _) = watched(server);
        let started = Instant::now();
        let mut buf = [0u8; 1];
        let result = loop {
            client.write_all(b"x").await.expect("write");
            match w.read_exact(&mut buf).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                Err(e) => break e,
            }
            // Progress every 500 ms keeps channel_timeout away; only the
            // head timer can stop this.
            if started.elapsed() > Duration::from_secs(10) {
                panic!("never timed out");
            }
        };
        assert_eq!(result.kind(), io::ErrorKind::TimedOut);
        assert!(
            started.elapsed() <= T.header.after + Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_is_not_cut_by_the_last_heads_timer() {
        let (mut client, server) = tokio::io::duplex(64);
        let (mut w, state) = watched(server);
        let started = Instant::now();
        // A request arrives and is answered without the server ever
        // waiting on a read while it was busy.
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 27];
        w.read_exact(&mut buf).await.expect("head");
        drop(state.begin());
        // Then the connection idles: only channel_timeout may end it.
        let err = w.read(&mut [0u8; 8]).await.expect_err("times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("channel_timeout"), "{err}");
        assert_eq!(started.elapsed(), T.channel.after);
    }

    #[tokio::test]
    async fn reading_ends_where_a_refused_head_begins() {
        let (mut client, server) = tokio::io::duplex(256);
        let (mut w, _) = watched(server);
        let first = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut stream = first.to_vec();
        stream.extend_from_slice(b"GET /2 HTTP/1.1\nHost: a\n\n");
        client.write_all(&stream).await.expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let n = w.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, first, "hyper gets the first request only");
        let refused = w.refused_head().expect("the second is refused");
        assert_eq!(refused.violation, crate::framing::Violation::BareLineEnding);
    }

    #[tokio::test]
    async fn a_broken_chunk_line_fails_the_read() {
        let (mut client, server) = tokio::io::duplex(256);
        let (mut w, _) = watched(server);
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc")
            .await
            .expect("write");
        // The head comes through first, so hyper has a request to answer
        // (the gateway does, when the body's read fails).
        let mut buf = [0u8; 256];
        let n = w.read(&mut buf).await.expect("the head");
        assert!(buf[..n].ends_with(b"chunked\r\n\r\n"), "{:?}", &buf[..n]);
        let err = w.read(&mut buf).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(w.refused_head().is_none(), "the gateway answers this one");
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_has_no_head_timer() {
        let (mut client, server) = tokio::io::duplex(64);
        let (mut w, state) = watched(server);
        let _guard = state.begin();
        let mut buf = [0u8; 1];
        for _ in 0..8 {
            client.write_all(b"x").await.expect("write");
            w.read_exact(&mut buf)
                .await
                .expect("body bytes are not a head");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_times_out_the_writer() {
        let (_client, server) = tokio::io::duplex(16);
        let (mut w, _) = watched(server);
        let err = w.write_all(&[0u8; 64]).await.expect_err("stuck write");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn unflushed_output_keeps_a_connection_from_being_dropped() {
        let (mut client, server) = tokio::io::duplex(4);
        let (mut w, state) = watched(server);
        assert!(state.can_drop_now(), "fresh and idle");
        // More than the pipe holds: the write waits on the client.
        let pending = tokio::time::timeout(Duration::from_millis(10), w.write_all(b"response"));
        assert!(pending.await.is_err());
        assert!(!state.can_drop_now(), "part of a response is unsent");
        let mut buf = [0u8; 8];
        client.read_exact(&mut buf[..4]).await.expect("read");
        w.write_all(b"onse").await.expect("rest");
        w.flush().await.expect("flush");
        assert!(state.can_drop_now(), "flushed");
        let guard = state.begin();
        assert!(!state.can_drop_now(), "a request in hand");
        drop(guard);
        assert!(state.can_drop_now());
    }

    #[tokio::test]
    async fn all_closed_wakes_when_the_last_connection_goes() {
        let registry = Arc::new(Registry::default());
        registry.all_closed().await;
        let first = registry.register();
        let second = registry.register();
        let waiter = tokio::spawn({
            let registry = Arc::clone(&registry);
            async move { registry.all_closed().await }
        });
        tokio::task::yield_now().await;
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one connection is still open");
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the last close")
            .expect("the waiter ran");
    }

    #[test]
    fn the_most_expendable_connections_give_up_their_slots() {
        let registry = Arc::new(Registry::default());
        // Used once, idle since.
        let used_early = registry.register();
        drop(used_early.state.begin());
        let never_used = registry.register();
        // Busy, its client stalling (a trickled body).
        let stalled = registry.register();
        let _stalled_request = stalled.state.begin();
        stalled
            .state
            .waiting_on_client
            .store(true, Ordering::Relaxed);
        // Busy in the app: never evicted.
        let in_app = registry.register();
        let _in_app_request = in_app.state.begin();
        let mark = idle_mark();
        // Idle after use, but only just (within the tick): not yet.
        let used_late = registry.register();
        drop(used_late.state.begin());
        let never_used_late = registry.register();

        let taken = |r: &Registration| r.state.is_evicted();
        // Never-used connections first, those that never said a word before
        // those with a head under way, oldest first, whatever their age.
        never_used.state.spoke();
        assert_eq!(registry.evict_before(mark, 1), 1);
        assert!(taken(&never_used_late) && !taken(&never_used));
        assert_eq!(registry.evict_before(mark, 1), 1);
        assert!(taken(&never_used));
        // Then idle after use (for a tick), then stalled on the client.
        assert_eq!(registry.evict_before(mark, 5), 2);
        assert!(taken(&used_early) && taken(&stalled));
        assert!(!taken(&used_late), "idle for less than a tick");
        assert!(!taken(&in_app), "the app's requests are never cut");
        assert_eq!(registry.evict_before(mark, 5), 0, "nothing left to take");
        // A slot taken is not given back by its connection; others are.
        assert!(!never_used.state.release_slot());
        assert!(used_late.state.release_slot());
        assert!(
            !used_late.state.take_slot(),
            "a released slot cannot be taken"
        );
        assert_eq!(registry.open(), 6);
        drop(never_used);
        assert_eq!(registry.open(), 5);
    }

    #[test]
    fn the_drain_marks_every_connection_and_every_later_one() {
        let registry = Arc::new(Registry::default());
        let before = registry.register();
        registry.close_all();
        let after = registry.register();
        assert!(before.state.is_draining() && after.state.is_draining());
        assert!(after.state.close_requested.load(Ordering::Relaxed));
    }
}
