//! The channel between the supervisor and one worker: a Unix socket pair
//! the worker inherits. The supervisor asks, the worker answers, one
//! request at a time:
//!
//! ```text
//! supervisor: metrics\n          worker: 1234\n<1234 bytes of exposition>
//! supervisor: livez\n            worker: 3\nok\n  (or "stuck: ...")
//! supervisor: readyz\n           worker: 6\nready\n (or "not ready: ...")
//! ```
//!
//! Answers are length-prefixed so an exposition can hold any byte. Only
//! maitred's own processes are on either end.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

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

/// A worker's answer: whether it is positive (a probe that passes) and
/// its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub ok: bool,
    pub text: String,
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
        let Some(ask) = Ask::from_word(line.trim()) else {
            continue;
        };
        let a = answer(ask).await;
        let flag = if a.ok { '+' } else { '-' };
        let head = format!("{flag}{}\n", a.text.len());
        if write.write_all(head.as_bytes()).await.is_err()
            || write.write_all(a.text.as_bytes()).await.is_err()
        {
            return;
        }
    }
}

/// The supervisor side of one worker's channel.
pub struct Channel {
    stream: Mutex<BufReader<UnixStream>>,
}

impl Channel {
    pub fn new(stream: UnixStream) -> Channel {
        Channel {
            stream: Mutex::new(BufReader::new(stream)),
        }
    }

    /// Asks and waits up to `within` for the answer. A channel that timed
    /// out mid-answer is out of step; the caller then treats the worker as
    /// unresponsive, which it is.
    pub async fn ask(&self, ask: Ask, within: Duration) -> std::io::Result<Answer> {
        let mut stream = self.stream.lock().await;
        let exchange = async {
            stream
                .get_mut()
                .write_all(format!("{}\n", ask.word()).as_bytes())
                .await?;
            let mut head = String::new();
            stream.read_line(&mut head).await?;
            let head = head.trim();
            let (ok, len) = match head.split_at_checked(1) {
                Some(("+", len)) => (true, len),
                Some(("-", len)) => (false, len),
                _ => return Err(bad(format!("malformed answer header {head:?}"))),
            };
            let len: usize = len
                .parse()
                .map_err(|_| bad(format!("malformed answer length {len:?}")))?;
            if len > MAX_ANSWER {
                return Err(bad(format!("answer of {len} bytes")));
            }
            let mut body = vec![0u8; len];
            stream.read_exact(&mut body).await?;
            let text = String::from_utf8(body).map_err(|_| bad("answer is not UTF-8".into()))?;
            Ok(Answer { ok, text })
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
