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

use crate::access::{AccessLog, Entry};
use crate::metrics::{self, Exchange};
use crate::wsgi::environ::Peer;

pub struct Record {
    exchange: Exchange,
    access: Option<Pending>,
}

/// An access-log line waiting for its response to finish.
struct Pending {
    log: AccessLog,
    entry: Entry,
}

impl Record {
    /// Starts the record of a request whose head hyper has just parsed.
    pub fn begin(
        parts: &Parts,
        peer: &Peer,
        default_scheme: &str,
        log: Option<&AccessLog>,
    ) -> Record {
        let exchange =
            metrics::get().exchange(parts.method.as_str(), parts.version, default_scheme);
        let access = log.map(|log| {
            let peer_ip = match peer {
                Peer::Tcp { remote, .. } => Some(remote.ip()),
                Peer::Unix => None,
            };
            Pending {
                log: log.clone(),
                entry: Entry {
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
            }
        });
        Record { exchange, access }
    }

    /// What trusted proxies said about the client and the scheme.
    pub fn forwarded(&mut self, client: Option<&str>, scheme: Option<&str>) {
        if let Some(scheme) = scheme {
            self.exchange.set_scheme(scheme);
        }
        if let (Some(pending), Some(client)) = (&mut self.access, client) {
            pending.entry.client = client.to_owned();
        }
    }

    pub fn request_body(&mut self, bytes: u64) {
        self.exchange.set_request_body(bytes);
        if let Some(pending) = &mut self.access {
            pending.entry.request_body = bytes;
        }
    }

    /// The response is over; `sent` body bytes went to the connection.
    pub fn finish(self, status: StatusCode, sent: u64) {
        let took = self.exchange.finish(status, sent);
        if let Some(Pending { log, mut entry }) = self.access {
            entry.status = status.as_u16();
            entry.response_body = sent;
            entry.duration = took;
            log.log(entry);
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
