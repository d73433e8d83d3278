//! The signals that stop maitred, turned into [`StopRequest`]s. Installed
//! once per process, in one place, for a single server and for the
//! supervisor of `workers = N` alike; the server and the supervisor take
//! the requests as a value ([`StopRequests`]) and decide what they mean.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// A request to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// SIGTERM: drain (the orchestrator's way).
    Term,
    /// SIGINT: drain (Ctrl-C).
    Interrupt,
    /// SIGQUIT: stop at once.
    Quit,
}

impl StopRequest {
    pub fn name(self) -> &'static str {
        match self {
            StopRequest::Term => "SIGTERM",
            StopRequest::Interrupt => "SIGINT",
            StopRequest::Quit => "SIGQUIT",
        }
    }

    /// The signal number, for passing the request on to workers.
    pub fn signal(self) -> libc::c_int {
        match self {
            StopRequest::Term => libc::SIGTERM,
            StopRequest::Interrupt => libc::SIGINT,
            StopRequest::Quit => libc::SIGQUIT,
        }
    }

    /// Ends the process without a drain.
    pub fn is_immediate(self) -> bool {
        self == StopRequest::Quit
    }
}

/// Where stop requests come from: the process's signals, or (in tests) a
/// sender held by the test.
pub struct StopRequests {
    rx: mpsc::UnboundedReceiver<StopRequest>,
}

impl StopRequests {
    /// Installs the handlers for SIGTERM, SIGINT and SIGQUIT (which from
    /// then on no longer end the process by themselves) and forwards each
    /// signal as it arrives. Call from within the runtime, once.
    pub fn from_signals() -> std::io::Result<StopRequests> {
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut quit = signal(SignalKind::quit())?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let stop = tokio::select! {
                    _ = term.recv() => StopRequest::Term,
                    _ = interrupt.recv() => StopRequest::Interrupt,
                    _ = quit.recv() => StopRequest::Quit,
                };
                if tx.send(stop).is_err() {
                    return;
                }
            }
        });
        Ok(StopRequests { rx })
    }

    /// Requests sent by hand: for tests and for embedding.
    pub fn channel() -> (mpsc::UnboundedSender<StopRequest>, StopRequests) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, StopRequests { rx })
    }

    /// The next request; pending forever once no request can come.
    pub async fn next(&mut self) -> StopRequest {
        match self.rx.recv().await {
            Some(stop) => stop,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_arrive_in_order_and_then_never() {
        let (tx, mut stops) = StopRequests::channel();
        tx.send(StopRequest::Term).expect("open");
        tx.send(StopRequest::Quit).expect("open");
        drop(tx);
        assert_eq!(stops.next().await, StopRequest::Term);
        assert_eq!(stops.next().await, StopRequest::Quit);
        let none = tokio::time::timeout(std::time::Duration::from_millis(20), stops.next());
        assert!(none.await.is_err(), "no sender left: nothing more comes");
    }

    #[test]
    fn only_quit_skips_the_drain() {
        assert!(StopRequest::Quit.is_immediate());
        assert!(!StopRequest::Term.is_immediate() && !StopRequest::Interrupt.is_immediate());
        assert_eq!(StopRequest::Interrupt.signal(), libc::SIGINT);
    }
}
