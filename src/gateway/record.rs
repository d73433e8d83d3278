//! What is remembered about one request until its response is over: its
//! metrics exchange and, with the access log on, the fields of its log
//! line. The record rides with the response body and is finished when
//! hyper drops that body, which is when the last byte has been handed to
//! the connection (or the client has gone), so durations are end to end.

use std::net::IpAddr;
use std::time::SystemTime;

use http::StatusCode;
use http::header::{REFERER, USER_AGENT};
use http::request::Parts;

use crate::access::{AccessEntry, AccessLog};
use crate::metrics::{self, Exchange};
use crate::scheme::Scheme;
use crate::wsgi::environ::Peer;

pub struct Record {
    /// `None` once finished.
    exchange: Option<Exchange>,
    /// Boxed: it is large, rare (the access log is off by default), and the
    /// record travels by value with every response.
    access: Option<Box<Pending>>,
}

/// The status recorded for a request whose client went away before its
/// response was under way (nginx's convention; no response was sent).
pub const CLIENT_CLOSED: u16 = 499;

/// An access-log line waiting for its response to finish.
struct Pending {
    log: AccessLog,
    entry: AccessEntry,
}

impl Record {
    /// Starts the record of a request whose head hyper has just parsed.
    /// `scheme` is the request's unless trusted proxies say otherwise
    /// (see [`Record::forwarded`]).
    pub fn begin(parts: &Parts, peer: &Peer, scheme: Scheme, log: Option<&AccessLog>) -> Record {
        let exchange =
            metrics::get().exchange(parts.method.as_str(), parts.version, scheme.as_str());
        let access = log.map(|log| {
            let peer_ip = match peer {
                Peer::Tcp { remote, .. } => Some(remote.ip()),
                Peer::Unix => None,
            };
            Box::new(Pending {
                log: log.clone(),
                entry: AccessEntry {
                    time: SystemTime::now(),
                    client: client_of(peer_ip),
                    peer: peer_ip,
                    method: parts.method.clone(),
                    target: parts.uri.to_string(),
                    version: parts.version,
                    status: 0,
                    request_body: 0,
                    response_body: 0,
                    duration: std::time::Duration::ZERO,
                    referer: parts.headers.get(REFERER).cloned(),
                    user_agent: parts.headers.get(USER_AGENT).cloned(),
                },
            })
        });
        Record {
            exchange: Some(exchange),
            access,
        }
    }

    /// What trusted proxies said about the client and the scheme.
    pub fn forwarded(&mut self, client: Option<&str>, scheme: Option<Scheme>) {
        if let (Some(scheme), Some(exchange)) = (scheme, &mut self.exchange) {
            exchange.set_scheme(scheme.as_str());
        }
        if let (Some(pending), Some(client)) = (&mut self.access, client) {
            pending.entry.client = client.to_owned();
        }
    }

    pub fn request_body(&mut self, bytes: u64) {
        if let Some(exchange) = &mut self.exchange {
            exchange.set_request_body(bytes);
        }
        if let Some(pending) = &mut self.access {
            pending.entry.request_body = bytes;
        }
    }

    /// The response is over; `sent` body bytes went to the connection.
    pub fn finish(mut self, status: StatusCode, sent: u64) {
        self.close(status, sent);
    }

    fn close(&mut self, status: StatusCode, sent: u64) {
        let Some(exchange) = self.exchange.take() else {
            return;
        };
        let took = exchange.finish(status, sent);
        if let Some(pending) = self.access.take() {
            let Pending { log, mut entry } = *pending;
            entry.status = status.as_u16();
            entry.response_body = sent;
            entry.duration = took;
            log.log(entry);
        }
    }
}

impl Drop for Record {
    /// A request dropped before its response existed: hyper gave up on it
    /// because the client went away while it was read, queued or in the
    /// app. It still counts, as 499.
    fn drop(&mut self) {
        if let Ok(status) = StatusCode::from_u16(CLIENT_CLOSED) {
            self.close(status, 0);
        }
    }
}

/// `REMOTE_ADDR` before proxies are consulted: the peer's address, or
/// `localhost` on a Unix socket (Waitress's value).
fn client_of(peer: Option<IpAddr>) -> String {
    peer.map_or_else(
        || "localhost".to_owned(),
        |ip| ip.to_canonical().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(scrape: &str, series: &str) -> f64 {
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    #[test]
    fn a_record_dropped_unfinished_counts_as_499_once() {
        let series = "http_server_request_duration_seconds_count{http_request_method=\"DELETE\",http_response_status_code=\"499\",network_protocol_version=\"1.1\",url_scheme=\"http\"}";
        let before = count(&metrics::get().render(), series);
        let (parts, ()) = http::Request::delete("/gone")
            .body(())
            .expect("request")
            .into_parts();
        let peer = Peer::Unix;
        drop(Record::begin(&parts, &peer, Scheme::Http, None));
        assert_eq!(count(&metrics::get().render(), series), before + 1.0);
        // A finished one is not counted again when dropped.
        let finished = Record::begin(&parts, &peer, Scheme::Http, None);
        finished.finish(StatusCode::NO_CONTENT, 0);
        assert_eq!(count(&metrics::get().render(), series), before + 1.0);
    }
}
