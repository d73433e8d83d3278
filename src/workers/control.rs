//! The channel between the supervisor and one worker: a Unix socket pair
//! the worker inherits. The supervisor asks, the worker answers, in order:
//!
//! ```text
//! supervisor: 7 metrics\n        worker: +7 1234\n<1234 bytes of exposition>
//! supervisor: 8 livez\n          worker: +8 3\nok\n       (- and "stuck: ...")
//! supervisor: 9 readyz\n         worker: +9 6\nready\n    (- and "not ready: ...")
//! ```
//!
//! Every question carries a sequence number that its answer repeats, so an
//! answer that arrives after its question timed out (a worker still
//! importing its app, or overloaded) is recognised and skipped instead of
//! being taken for the answer to the next question. Answers are
//! length-prefixed so an exposition can hold any byte. Only maitred's own
//! processes are on either end.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

pub use crate::admin::Answer;
use crate::admin::Probes;

/// What the supervisor can ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Metrics,
    Livez,
    Readyz,
}

impl Ask {
    fn word(self) -> &'static str {
        match self {
            Ask::Metrics => "metrics",
            Ask::Livez => "livez",
            Ask::Readyz => "readyz",
        }
    }

    fn from_word(word: &str) -> Option<Ask> {
        [Ask::Metrics, Ask::Livez, Ask::Readyz]
            .into_iter()
            .find(|a| a.word() == word)
    }
}

/// How a worker answers a question: as its admin listener would answer
/// a client, were it a single process.
pub async fn answer<P: Probes>(probes: &P, ask: Ask) -> Answer {
    match ask {
        Ask::Metrics => Answer {
            ok: true,
            text: probes.metrics().await,
        },
        Ask::Livez => probes.livez().await,
        Ask::Readyz => probes.readyz().await,
    }
}

/// Longest answer accepted; an exposition is a few tens of KiB.
const MAX_ANSWER: usize = 16 << 20;

/// The worker side: answers until the supervisor closes its end.
pub async fn serve<F, Fut>(stream: UnixStream, answer: F)
where
    F: Fn(Ask) -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some((seq, word)) = line.trim().split_once(' ') else {
            continue;
        };
        let (Ok(seq), Some(ask)) = (seq.parse::<u64>(), Ask::from_word(word)) else {
            continue;
        };
        let a = answer(ask).await;
        let flag = if a.ok { '+' } else { '-' };
        let head = format!("{flag}{seq} {}\n", a.text.len());
        if write.write_all(head.as_bytes()).await.is_err()
            || write.write_all(a.text.as_bytes()).await.is_err()
        {
            return;
        }
    }
}

/// The supervisor side of one worker's channel.
pub struct Channel {
    inner: Mutex<Inner>,
}

struct Inner {
    stream: BufReader<UnixStream>,
    next: u64,
}

impl Channel {
    pub fn new(stream: UnixStream) -> Channel {
        Channel {
            inner: Mutex::new(Inner {
                stream: BufReader::new(stream),
                next: 0,
            }),
        }
    }

    /// Asks and waits up to `within` for the answer, waiting for another
    /// question on the same channel included. A channel that timed out
    /// mid-answer is out of step; the caller then treats the worker as
    /// unresponsive, which it is.
    pub async fn ask(&self, ask: Ask, within: Duration) -> std::io::Result<Answer> {
        let exchange = async {
            let mut inner = self.inner.lock().await;
            let seq = inner.next;
            inner.next += 1;
            let stream = &mut inner.stream;
            stream
                .get_mut()
                .write_all(format!("{seq} {}\n", ask.word()).as_bytes())
                .await?;
            loop {
                let mut head = String::new();
                if stream.read_line(&mut head).await? == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the worker closed its control socket",
                    ));
                }
                // Anything else is the rest of an answer whose reading was
                // cut short by a timeout: skip to the next header (no body
                // line starts with `+` or `-` and a number).
                let Ok((answer_seq, ok, len)) = parse_head(head.trim()) else {
                    continue;
                };
                let mut body = vec![0u8; len];
                stream.read_exact(&mut body).await?;
                // An answer to an earlier question that timed out.
                if answer_seq < seq {
                    continue;
                }
                if answer_seq > seq {
                    return Err(bad(format!("answer {answer_seq} to question {seq}")));
                }
                let text =
                    String::from_utf8(body).map_err(|_| bad("answer is not UTF-8".into()))?;
                return Ok(Answer { ok, text });
            }
        };
        match tokio::time::timeout(within, exchange).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no answer to {} within {}s",
                    ask.word(),
                    within.as_secs_f64()
                ),
            )),
        }
    }
}

/// `+12 345`: (sequence, positive, body length).
fn parse_head(head: &str) -> std::io::Result<(u64, bool, usize)> {
    let malformed = || bad(format!("malformed answer header {head:?}"));
    let (ok, rest) = match head.split_at_checked(1) {
        Some(("+", rest)) => (true, rest),
        Some(("-", rest)) => (false, rest),
        _ => return Err(malformed()),
    };
    let (seq, len) = rest.split_once(' ').ok_or_else(malformed)?;
    let seq = seq.parse().map_err(|_| malformed())?;
    let len: usize = len.parse().map_err(|_| malformed())?;
    if len > MAX_ANSWER {
        return Err(bad(format!("answer of {len} bytes")));
    }
    Ok((seq, ok, len))
}

fn bad(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn questions_get_their_answers() {
        let (a, b) = UnixStream::pair().expect("pair");
        tokio::spawn(serve(b, |ask| async move {
            match ask {
                Ask::Metrics => Answer {
                    ok: true,
                    text: "# TYPE x counter\nx 1\n".into(),
                },
                Ask::Livez => Answer {
                    ok: true,
                    text: "ok\n".into(),
                },
                Ask::Readyz => Answer {
                    ok: false,
                    text: "not ready: draining\n".into(),
                },
            }
        }));
        let ch = Channel::new(a);
        let t = Duration::from_secs(5);
        let m = ch.ask(Ask::Metrics, t).await.expect("metrics");
        assert_eq!(m.text, "# TYPE x counter\nx 1\n");
        assert!(ch.ask(Ask::Livez, t).await.expect("livez").ok);
        let r = ch.ask(Ask::Readyz, t).await.expect("readyz");
        assert_eq!((r.ok, r.text.as_str()), (false, "not ready: draining\n"));
    }

    #[tokio::test]
    async fn a_late_answer_is_not_taken_for_the_next_one() {
        let (a, b) = UnixStream::pair().expect("pair");
        let slow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = std::sync::Arc::clone(&slow);
        tokio::spawn(serve(b, move |ask| {
            let slow = flag.swap(false, std::sync::atomic::Ordering::SeqCst);
            async move {
                if slow {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Answer {
                    ok: true,
                    text: format!("{ask:?}"),
                }
            }
        }));
        let ch = Channel::new(a);
        let late = ch.ask(Ask::Readyz, Duration::from_millis(50)).await;
        assert_eq!(
            late.expect_err("too slow").kind(),
            std::io::ErrorKind::TimedOut
        );
        let m = ch
            .ask(Ask::Metrics, Duration::from_secs(5))
            .await
            .expect("metrics");
        assert_eq!(m.text, "Metrics", "not the late answer to readyz");
        assert!(!slow.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_silent_worker_times_out() {
        let (a, _b) = UnixStream::pair().expect("pair");
        let ch = Channel::new(a);
        let err = ch
            .ask(Ask::Livez, Duration::from_millis(50))
            .await
            .expect_err("no answer");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }
}
