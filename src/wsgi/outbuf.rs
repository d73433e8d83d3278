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

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

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
    /// The connection is gone; pushes fail so the app stops.
    ConsumerGone,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Bytes>,
    queued: usize,
    end: End,
    waker: Option<Waker>,
}

#[derive(Debug)]
pub struct Outbuf {
    state: Mutex<State>,
    room: Condvar,
    high_water: usize,
}

/// The client is gone; the producer should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnected;

/// What the consumer gets from one poll.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Data(Bytes),
    End,
    Aborted,
}

impl Outbuf {
    pub fn new(high_water: usize) -> Self {
        Outbuf {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued: 0,
                end: End::Open,
                waker: None,
            }),
            room: Condvar::new(),
            high_water,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves only plain data behind, so
        // the state is still consistent enough to drain or abandon.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a chunk. Never blocks; call [`Outbuf::is_full`] and
    /// [`Outbuf::wait_for_room`] (with the GIL released) to apply
    /// back-pressure.
    pub fn push(&self, chunk: Bytes) -> Result<(), Disconnected> {
        let waker = {
            let mut st = self.lock();
            if st.end == End::ConsumerGone {
                return Err(Disconnected);
            }
            st.queued += chunk.len();
            st.queue.push_back(chunk);
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
    pub fn wait_for_room(&self) -> Result<(), Disconnected> {
        let mut st = self.lock();
        while st.queued > self.high_water && st.end != End::ConsumerGone {
            st = self.room.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        if st.end == End::ConsumerGone {
            Err(Disconnected)
        } else {
            Ok(())
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
    pub fn disconnect(&self) {
        let mut st = self.lock();
        if matches!(st.end, End::Open | End::Finished) {
            st.end = End::ConsumerGone;
        }
        st.queue.clear();
        st.queued = 0;
        drop(st);
        self.room.notify_all();
    }

    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        let mut st = self.lock();
        if let Some(first) = st.queue.pop_front() {
            let frame = if first.len() >= COALESCE_LIMIT
                || st
                    .queue
                    .front()
                    .is_none_or(|c| first.len() + c.len() > COALESCE_LIMIT)
            {
                first
            } else {
                let mut joined = BytesMut::with_capacity(COALESCE_LIMIT.min(st.queued));
                joined.extend_from_slice(&first);
                while let Some(next) = st.queue.front() {
                    if joined.len() + next.len() > COALESCE_LIMIT {
                        break;
                    }
                    joined.extend_from_slice(next);
                    st.queue.pop_front();
                }
                joined.freeze()
            };
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
            End::ConsumerGone => Poll::Ready(Next::End),
            End::Open => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
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
        let buf = Outbuf::new(1 << 20);
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
        let buf = Outbuf::new(1 << 20);
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
        let buf = Arc::new(Outbuf::new(10));
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
        let buf = Arc::new(Outbuf::new(1));
        buf.push(Bytes::from_static(b"abc")).expect("open");
        let producer = {
            let buf = Arc::clone(&buf);
            std::thread::spawn(move || buf.wait_for_room())
        };
        std::thread::sleep(Duration::from_millis(20));
        buf.disconnect();
        assert_eq!(producer.join().expect("thread"), Err(Disconnected));
        assert_eq!(buf.push(Bytes::from_static(b"x")), Err(Disconnected));
    }

    #[test]
    fn abort_is_reported_after_queued_data() {
        let buf = Outbuf::new(100);
        buf.push(Bytes::from_static(b"partial")).expect("open");
        buf.abort();
        assert!(matches!(poll(&buf), Poll::Ready(Next::Data(_))));
        assert_eq!(poll(&buf), Poll::Ready(Next::Aborted));
    }
}
