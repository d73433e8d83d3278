//! The response output buffer between an app thread and its connection.
//!
//! The Python thread pushes body chunks as the app yields them; the
//! connection's task takes them as the socket accepts them. The app thread
//! only ever waits when more than the high-water mark is pending, so a slow
//! client costs memory up to that mark, never a Python thread for the length
//! of a download. When the connection goes away the producer learns it at
//! its next push and stops iterating (and the app's `close()` runs).
//!
//! Chunks taken together are coalesced into one write (up to
//! [`COALESCE_LIMIT`]), so an app that yields many small pieces costs one
//! HTTP chunk per socket write rather than one per `yield`.
//!
//! Pending bytes beyond `overflow` (Waitress's `outbuf_overflow`) go to an
//! anonymous temporary file instead of memory, so a slow client costs at
//! most `overflow` bytes of RAM while up to the high-water mark is pending.
//! Order is kept: once spooling starts, later chunks follow the spooled ones.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::budget::{self, Held};
use bytes::{Bytes, BytesMut};

/// Largest frame built by joining queued chunks; bigger chunks pass as they
/// are, without a copy.
pub const COALESCE_LIMIT: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    /// The app finished; what is queued is the rest of the body.
    Finished,
    /// The app failed after the headers were sent: the client must see a
    /// truncated response, so the connection is cut, not ended cleanly.
    Aborted,
    /// The connection wants no more; pushes fail so the app stops.
    Stopped(Stop),
}

/// A queued piece of the body: in memory, or a run of bytes in the spool.
#[derive(Debug)]
enum Piece {
    Memory(Bytes),
    Spooled(u64),
}

/// The temporary file holding spooled bytes between `read_at` and `write_at`.
#[derive(Debug)]
struct Spool {
    file: File,
    read_at: u64,
    write_at: u64,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Piece>,
    /// All pending bytes, memory and spool (what the high-water mark counts).
    queued: usize,
    in_memory: usize,
    /// `in_memory`, counted against the memory budget.
    held: Held,
    spool: Option<Spool>,
    spool_failed: bool,
    end: End,
    waker: Option<Waker>,
}

/// The two sizes that bound a response's pending output.
#[derive(Debug, Clone, Copy)]
pub struct OutbufLimits {
    /// Above this many pending bytes the producer waits.
    pub high_water: usize,
    /// Above this many pending bytes in memory, more go to a spool file.
    pub overflow: usize,
}

#[derive(Debug)]
pub struct Outbuf {
    state: Mutex<State>,
    room: Condvar,
    high_water: usize,
    overflow: usize,
    /// The producer and the consumer can each notice the app writing past
    /// its Content-Length; only one should say so.
    pub overrun: Overrun,
}

/// The warning for an app that writes more than its Content-Length (the
/// rest is dropped, as in Waitress), logged at most once per response by
/// whichever side notices first: the connection, which cuts the excess
/// off, or the app's thread, which stops iterating once the connection has
/// sent the declared length.
#[derive(Debug, Default)]
pub struct Overrun(AtomicBool);

impl Overrun {
    pub fn warn(&self, declared: u64, uri: &http::Uri) {
        if !self.0.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "application-written content exceeded the number of bytes specified by \
                 Content-Length header ({declared}) while serving {uri}; the rest is dropped"
            );
        }
    }
}

/// Why the producer should stop producing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The connection went away before the body was complete.
    ClientGone,
    /// The connection has sent the whole declared Content-Length and needs
    /// nothing more (the app need not be iterated to exhaustion).
    BodyComplete,
}

/// What the consumer gets from one poll.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Data(Bytes),
    End,
    Aborted,
}

impl Outbuf {
    pub fn with_limits(limits: OutbufLimits) -> Self {
        Self::new(limits.high_water, limits.overflow)
    }

    pub fn new(high_water: usize, overflow: usize) -> Self {
        Outbuf {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued: 0,
                in_memory: 0,
                held: Held::default(),
                spool: None,
                spool_failed: false,
                end: End::Open,
                waker: None,
            }),
            room: Condvar::new(),
            high_water,
            overflow,
            overrun: Overrun::default(),
        }
    }

    /// Whether pushing `len` more bytes would write to the spool file (the
    /// caller then releases the GIL around the push).
    pub fn would_spool(&self, len: usize) -> bool {
        let st = self.lock();
        matches!(st.queue.back(), Some(Piece::Spooled(_)))
            || st.in_memory + len > self.overflow
            || budget::BODIES.exhausted()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves only plain data behind, so
        // the state is still consistent enough to drain or abandon.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a chunk. Never blocks; call [`Outbuf::is_full`] and
    /// [`Outbuf::wait_for_room`] (with the GIL released) to apply
    /// back-pressure.
    pub fn push(&self, chunk: Bytes) -> Result<(), Stop> {
        let waker = {
            let mut st = self.lock();
            if let End::Stopped(why) = st.end {
                return Err(why);
            }
            st.queued += chunk.len();
            let spooling = matches!(st.queue.back(), Some(Piece::Spooled(_)));
            let to_spool = spooling
                || st.in_memory + chunk.len() > self.overflow
                || !st.held.try_grow(chunk.len() as u64);
            if to_spool && spool(&mut st, &chunk) {
                match st.queue.back_mut() {
                    Some(Piece::Spooled(run)) => *run += chunk.len() as u64,
                    _ => st.queue.push_back(Piece::Spooled(chunk.len() as u64)),
                }
            } else {
                if st.held.bytes() < (st.in_memory + chunk.len()) as u64 {
                    // The spool failed: memory it is, budget or not.
                    let short = (st.in_memory + chunk.len()) as u64 - st.held.bytes();
                    st.held.grow(short);
                }
                st.in_memory += chunk.len();
                st.queue.push_back(Piece::Memory(chunk));
            }
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    pub fn is_full(&self) -> bool {
        self.lock().queued > self.high_water
    }

    /// Blocks until the pending bytes drop to the high-water mark or the
    /// consumer goes away.
    pub fn wait_for_room(&self) -> Result<(), Stop> {
        let mut st = self.lock();
        while st.queued > self.high_water && !matches!(st.end, End::Stopped(_)) {
            st = self.room.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        match st.end {
            End::Stopped(why) => Err(why),
            _ => Ok(()),
        }
    }

    pub fn finish(&self) {
        self.close(End::Finished);
    }

    pub fn abort(&self) {
        self.close(End::Aborted);
    }

    fn close(&self, end: End) {
        let waker = {
            let mut st = self.lock();
            if st.end != End::Open {
                return;
            }
            st.end = end;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Called by the consumer when the connection no longer wants the body.
    pub fn stop(&self, why: Stop) {
        let mut st = self.lock();
        if matches!(st.end, End::Open | End::Finished) {
            st.end = End::Stopped(why);
        }
        st.queue.clear();
        st.queued = 0;
        st.in_memory = 0;
        st.held.clear();
        st.spool = None;
        drop(st);
        self.room.notify_all();
    }

    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        let mut st = self.lock();
        let frame = match st.queue.pop_front() {
            Some(Piece::Memory(first)) => Some(coalesce(&mut st, first)),
            Some(Piece::Spooled(run)) => match unspool(&mut st, run) {
                Ok(data) => Some(data),
                Err(e) => {
                    tracing::error!("reading the response spool failed: {e}");
                    st.end = End::Aborted;
                    st.queue.clear();
                    None
                }
            },
            None => None,
        };
        if let Some(frame) = frame {
            let was_full = st.queued > self.high_water;
            st.queued -= frame.len();
            let now_room = st.queued <= self.high_water;
            drop(st);
            if was_full && now_room {
                self.room.notify_all();
            }
            return Poll::Ready(Next::Data(frame));
        }
        match st.end {
            End::Finished => Poll::Ready(Next::End),
            End::Aborted => Poll::Ready(Next::Aborted),
            End::Stopped(_) => Poll::Ready(Next::End),
            End::Open => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Joins `first` with the in-memory chunks behind it, up to the limit.
fn coalesce(st: &mut State, first: Bytes) -> Bytes {
    let joinable = |piece: Option<&Piece>, len: usize| matches!(piece, Some(Piece::Memory(next)) if len + next.len() <= COALESCE_LIMIT);
    let frame = if first.len() >= COALESCE_LIMIT || !joinable(st.queue.front(), first.len()) {
        first
    } else {
        let mut joined = BytesMut::with_capacity(COALESCE_LIMIT.min(st.in_memory));
        joined.extend_from_slice(&first);
        while joinable(st.queue.front(), joined.len()) {
            if let Some(Piece::Memory(next)) = st.queue.pop_front() {
                joined.extend_from_slice(&next);
            }
        }
        joined.freeze()
    };
    st.in_memory -= frame.len();
    st.held.shrink(frame.len() as u64);
    frame
}

/// Appends a chunk to the spool file, creating it on first use. Returns
/// false (keep the chunk in memory) if the file cannot be written; the
/// failure is logged once per response.
fn spool(st: &mut State, chunk: &[u8]) -> bool {
    if st.spool_failed {
        return false;
    }
    if st.spool.is_none() {
        match tempfile::tempfile() {
            Ok(file) => {
                st.spool = Some(Spool {
                    file,
                    read_at: 0,
                    write_at: 0,
                })
            }
            Err(e) => {
                tracing::warn!("cannot create a response spool file, buffering in memory: {e}");
                st.spool_failed = true;
                return false;
            }
        }
    }
    let Some(spool) = st.spool.as_mut() else {
        return false;
    };
    match spool.file.write_all_at(chunk, spool.write_at) {
        Ok(()) => {
            spool.write_at += chunk.len() as u64;
            true
        }
        Err(e) => {
            tracing::warn!("cannot write the response spool file, buffering in memory: {e}");
            st.spool_failed = true;
            false
        }
    }
}

/// Reads the next piece of a spooled run (the file was just written, so
/// this is a page-cache copy, cheap enough for the I/O thread).
fn unspool(st: &mut State, run: u64) -> std::io::Result<Bytes> {
    let spool = st
        .spool
        .as_mut()
        .ok_or_else(|| std::io::Error::other("spooled data without a spool file"))?;
    let want = run.min(COALESCE_LIMIT as u64);
    let mut buf = vec![0u8; want as usize];
    spool.file.read_exact_at(&mut buf, spool.read_at)?;
    spool.read_at += want;
    if run > want {
        st.queue.push_front(Piece::Spooled(run - want));
    } else if spool.read_at == spool.write_at {
        // Drained: reuse the file from the start rather than let it grow.
        spool.read_at = 0;
        spool.write_at = 0;
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Waker;
    use std::time::Duration;

    fn poll(buf: &Outbuf) -> Poll<Next> {
        let mut cx = Context::from_waker(Waker::noop());
        buf.poll_next(&mut cx)
    }

    #[test]
    fn small_chunks_are_coalesced_and_order_kept() {
        let buf = Outbuf::new(1 << 20, usize::MAX);
        for i in 0..100 {
            buf.push(Bytes::from(format!("chunk {i:03}\n")))
                .expect("open");
        }
        buf.finish();
        let Poll::Ready(Next::Data(all)) = poll(&buf) else {
            panic!("expected data")
        };
        assert_eq!(all.len(), 1000);
        assert!(all.starts_with(b"chunk 000\n") && all.ends_with(b"chunk 099\n"));
        assert_eq!(poll(&buf), Poll::Ready(Next::End));
    }

    #[test]
    fn large_chunks_pass_without_joining() {
        let buf = Outbuf::new(1 << 20, usize::MAX);
        let big = Bytes::from(vec![7u8; COALESCE_LIMIT]);
        buf.push(big.clone()).expect("open");
        buf.push(Bytes::from_static(b"tail")).expect("open");
        let Poll::Ready(Next::Data(first)) = poll(&buf) else {
            panic!()
        };
        assert_eq!(first.as_ptr(), big.as_ptr(), "no copy");
        assert_eq!(
            poll(&buf),
            Poll::Ready(Next::Data(Bytes::from_static(b"tail")))
        );
        assert!(poll(&buf).is_pending(), "open and empty waits");
    }

    #[test]
    fn producer_blocks_above_high_water_until_drained() {
        let buf = Arc::new(Outbuf::new(10, usize::MAX));
        buf.push(Bytes::from(vec![0u8; 25])).expect("open");
        assert!(buf.is_full());
        let producer = {
            let buf = Arc::clone(&buf);
            std::thread::spawn(move || buf.wait_for_room())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!producer.is_finished(), "waits while full");
        assert!(matches!(poll(&buf), Poll::Ready(Next::Data(_))));
        assert_eq!(producer.join().expect("thread"), Ok(()));
    }

    #[test]
    fn disconnect_releases_a_blocked_producer_and_fails_pushes() {
        let buf = Arc::new(Outbuf::new(1, usize::MAX));
        buf.push(Bytes::from_static(b"abc")).expect("open");
        let producer = {
            let buf = Arc::clone(&buf);
            std::thread::spawn(move || buf.wait_for_room())
        };
        std::thread::sleep(Duration::from_millis(20));
        buf.stop(Stop::ClientGone);
        assert_eq!(producer.join().expect("thread"), Err(Stop::ClientGone));
        assert_eq!(buf.push(Bytes::from_static(b"x")), Err(Stop::ClientGone));
    }

    #[test]
    fn bytes_beyond_the_overflow_go_through_the_spool_in_order() {
        let buf = Outbuf::new(1 << 20, 10);
        let pieces: Vec<Bytes> = (0..20)
            .map(|i| Bytes::from(format!("piece-{i:02};")))
            .collect();
        for p in &pieces {
            buf.push(p.clone()).expect("open");
        }
        buf.finish();
        assert!(buf.lock().spool.is_some(), "spooled past 10 bytes");
        assert!(buf.lock().in_memory <= 10);
        let mut out = Vec::new();
        loop {
            match poll(&buf) {
                Poll::Ready(Next::Data(d)) => out.extend_from_slice(&d),
                Poll::Ready(Next::End) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(out, pieces.concat());
        assert_eq!(buf.lock().queued, 0);
    }

    #[test]
    fn spooling_continues_until_drained_then_reuses_the_file() {
        let buf = Outbuf::new(1 << 20, 4);
        buf.push(Bytes::from_static(b"abcdef")).expect("open");
        assert_eq!(
            poll(&buf),
            Poll::Ready(Next::Data(Bytes::from_static(b"abcdef")))
        );
        let spool = buf.lock().spool.as_ref().map(|s| (s.read_at, s.write_at));
        assert_eq!(spool, Some((0, 0)), "offsets reset once drained");
        buf.push(Bytes::from_static(b"ab")).expect("open");
        assert_eq!(
            poll(&buf),
            Poll::Ready(Next::Data(Bytes::from_static(b"ab")))
        );
    }

    #[test]
    fn abort_is_reported_after_queued_data() {
        let buf = Outbuf::new(100, usize::MAX);
        buf.push(Bytes::from_static(b"partial")).expect("open");
        buf.abort();
        assert!(matches!(poll(&buf), Poll::Ready(Next::Data(_))));
        assert_eq!(poll(&buf), Poll::Ready(Next::Aborted));
    }
}
