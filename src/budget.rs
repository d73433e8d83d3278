//! The memory budget for bodies: request bodies kept in memory, response
//! output waiting in memory for its connection, and response bytes handed
//! to hyper and not yet written to the socket, over every connection of
//! the process.
//!
//! Each per-request limit (`inbuf_overflow`, `outbuf_overflow`, hyper's
//! write buffer) is small, but thousands of connections each holding one
//! (a flood of uploads, clients that never read their responses) would add
//! up to gigabytes. Past `limits.buffer_memory`, request bodies and pending
//! output go to temporary files instead, and a connection whose client has
//! stopped reading while its response holds memory is cut
//! (see `connection::Watched`). The budget is a soft bound: a piece is let
//! in whole when the budget had room before it.

use std::sync::atomic::{AtomicU64, Ordering};

/// A count of bytes against a limit.
#[derive(Debug)]
pub struct Budget {
    held: AtomicU64,
    limit: AtomicU64,
}

/// The process's budget; no limit until [`Budget::set_limit`] is called.
pub static BODIES: Budget = Budget::new();

impl Budget {
    pub const fn new() -> Self {
        Budget {
            held: AtomicU64::new(0),
            limit: AtomicU64::new(u64::MAX),
        }
    }

    /// Sets the limit (at start-up, from the plan).
    pub fn set_limit(&self, bytes: u64) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether the budget is spent: memory then goes only to what cannot
    /// go elsewhere.
    pub fn exhausted(&self) -> bool {
        self.held() >= self.limit.load(Ordering::Relaxed)
    }

    /// Counts `n` bytes, room or not (give them back with [`Budget::give_back`]).
    pub fn take(&self, n: u64) {
        self.held.fetch_add(n, Ordering::Relaxed);
    }

    pub fn give_back(&self, n: u64) {
        if n > 0 {
            self.held.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new()
    }
}

/// Bytes one owner holds of a budget, given back when it is dropped.
#[derive(Debug)]
pub struct Held {
    budget: &'static Budget,
    bytes: u64,
}

impl Default for Held {
    fn default() -> Self {
        Held::of(&BODIES)
    }
}

impl Held {
    pub fn of(budget: &'static Budget) -> Self {
        Held { budget, bytes: 0 }
    }

    /// Counts `n` more bytes if the budget has room.
    pub fn try_grow(&mut self, n: u64) -> bool {
        if self.budget.exhausted() {
            return false;
        }
        self.grow(n);
        true
    }

    /// Counts `n` more bytes, room or not.
    pub fn grow(&mut self, n: u64) {
        self.budget.take(n);
        self.bytes += n;
    }

    /// Gives back `n` of the bytes held (at most all of them).
    pub fn shrink(&mut self, n: u64) {
        let n = n.min(self.bytes);
        self.bytes -= n;
        self.budget.give_back(n);
    }

    /// Gives back everything held.
    pub fn clear(&mut self) {
        self.shrink(self.bytes);
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_take_room_while_there_is_some_and_give_it_back_when_dropped() {
        static B: Budget = Budget::new();
        B.set_limit(100);
        let mut a = Held::of(&B);
        assert!(a.try_grow(60));
        // The budget had room before the piece: it is let in whole.
        assert!(a.try_grow(60));
        assert_eq!(B.held(), 120);
        assert!(B.exhausted());
        let mut b = Held::of(&B);
        assert!(!b.try_grow(1));
        b.grow(10);
        assert_eq!(B.held(), 130);
        a.shrink(1000);
        assert_eq!(a.bytes(), 0);
        assert_eq!(B.held(), 10);
        assert!(b.try_grow(1));
        drop(b);
        assert_eq!(B.held(), 0);
    }
}
