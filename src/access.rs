//! The access log: one line per request, in Apache's `combined` format or
//! as one JSON object per line, on stdout (server logs go to stderr).
//!
//! Off by default, as in Waitress (which leaves it to middleware). When it
//! is on, the request path only fills an [`AccessEntry`] and hands it to a
//! bounded channel; a dedicated thread formats and writes, batching lines
//! into one write while the channel has more. A full channel (stdout
//! blocked, e.g. a stalled log shipper) drops entries and counts them in
//! `maitred_access_log_dropped_total` rather than slowing requests down.

use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use http::{HeaderValue, Version};

/// Entries waiting for the writer; beyond this they are dropped.
const QUEUE: usize = 16 * 1024;

/// The two formats `log.access_format` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessFormat {
    /// Apache/nginx `combined`.
    Combined,
    /// One JSON object per line with OpenTelemetry attribute names.
    Json,
}

impl AccessFormat {
    pub fn parse(name: &str) -> Option<AccessFormat> {
        match name {
            "combined" => Some(AccessFormat::Combined),
            "json" => Some(AccessFormat::Json),
            _ => None,
        }
    }
}

/// One finished request, as the log shows it.
#[derive(Debug, Clone)]
pub struct AccessEntry {
    /// When the request head had been received.
    pub time: SystemTime,
    /// The client after trusted-proxy resolution (`REMOTE_ADDR`).
    pub client: String,
    /// The connection's own peer (`None` on a Unix socket).
    pub peer: Option<IpAddr>,
    pub method: http::Method,
    /// The request target as sent (path and query).
    pub target: String,
    pub version: Version,
    pub status: u16,
    pub request_body: u64,
    /// Response body bytes handed to the connection.
    pub response_body: u64,
    /// From the parsed head until the last body byte was handed over.
    pub duration: Duration,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
}

enum Message {
    AccessEntry(Box<AccessEntry>),
    /// Write everything queued so far, then answer.
    Flush(Sender<()>),
}

/// The request side's handle on the writer thread.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: Sender<Message>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("access::Message")
    }
}

impl AccessLog {
    /// Starts the writer thread, writing to stdout.
    pub fn start(format: AccessFormat) -> std::io::Result<AccessLog> {
        Self::start_with(format, std::io::stdout())
    }

    fn start_with<W: Write + Send + 'static>(
        format: AccessFormat,
        out: W,
    ) -> std::io::Result<AccessLog> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        std::thread::Builder::new()
            .name("maitred-access".into())
            .spawn(move || write_loop(format, out, rx))?;
        Ok(AccessLog { tx })
    }

    /// Queues one entry; never blocks.
    pub fn log(&self, entry: AccessEntry) {
        match self.tx.try_send(Message::AccessEntry(Box::new(entry))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => crate::metrics::get().access_log_dropped.inc(),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Waits (up to `within`) until every entry queued so far is written,
    /// so lines are not lost when the process exits.
    pub fn flush(&self, within: Duration) {
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        if self.tx.send_timeout(Message::Flush(ack_tx), within).is_ok() {
            let _ = ack_rx.recv_timeout(within);
        }
    }
}

fn write_loop<W: Write>(format: AccessFormat, out: W, rx: Receiver<Message>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    let mut failed = false;
    while let Ok(first) = rx.recv() {
        let mut acks = Vec::new();
        let mut next = Some(first);
        // Everything already queued goes out in one write.
        while let Some(message) = next {
            match message {
                Message::AccessEntry(entry) => {
                    line.clear();
                    match format {
                        AccessFormat::Combined => combined(&entry, &mut line),
                        AccessFormat::Json => json(&entry, &mut line),
                    }
                    line.push('\n');
                    if let Err(e) = out.write_all(line.as_bytes()) {
                        report(&mut failed, &e);
                    }
                }
                Message::Flush(ack) => acks.push(ack),
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            report(&mut failed, &e);
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

/// A broken stdout is reported once, not per line.
fn report(failed: &mut bool, e: &std::io::Error) {
    if !*failed {
        *failed = true;
        tracing::error!("cannot write the access log to stdout: {e}");
    }
}

/// `10.0.0.7 - - [24/Nov/2026:00:27:23 +0000] "GET /x HTTP/1.1" 200 512 "-" "curl/8"`
pub fn combined(e: &AccessEntry, out: &mut String) {
    use std::fmt::Write as _;
    let (y, mo, d, h, mi, s, _) = civil(e.time);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    escape_into(out, e.client.as_bytes());
    let _ = write!(
        out,
        " - - [{d:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02} +0000] \"",
        MONTHS[usize::from(mo - 1)]
    );
    escape_into(out, e.method.as_str().as_bytes());
    out.push(' ');
    escape_into(out, e.target.as_bytes());
    let _ = write!(out, " {}\" {} ", protocol(e.version), e.status);
    if e.response_body == 0 {
        out.push('-');
    } else {
        let _ = write!(out, "{}", e.response_body);
    }
    for header in [&e.referer, &e.user_agent] {
        out.push_str(" \"");
        match header {
            Some(v) => escape_into(out, v.as_bytes()),
            None => out.push('-'),
        }
        out.push('"');
    }
}

/// One JSON object with OpenTelemetry attribute names.
pub fn json(e: &AccessEntry, out: &mut String) {
    let (path, query) = match e.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (e.target.as_str(), None),
    };
    let text = |v: &Option<HeaderValue>| {
        v.as_ref()
            .map(|v| serde_json::Value::String(latin1(v.as_bytes())))
    };
    let mut object = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        object.insert(k.to_owned(), v);
    };
    put("timestamp", rfc3339(e.time).into());
    put("client.address", e.client.clone().into());
    if let Some(peer) = e.peer {
        put(
            "network.peer.address",
            peer.to_canonical().to_string().into(),
        );
    }
    put("http.request.method", e.method.as_str().into());
    put("url.path", path.into());
    if let Some(q) = query {
        put("url.query", q.into());
    }
    put(
        "network.protocol.version",
        protocol(e.version).trim_start_matches("HTTP/").into(),
    );
    put("http.response.status_code", e.status.into());
    put("http.request.body.size", e.request_body.into());
    put("http.response.body.size", e.response_body.into());
    put(
        "http.server.request.duration",
        serde_json::Number::from_f64(e.duration.as_secs_f64())
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
    );
    if let Some(ua) = text(&e.user_agent) {
        put("user_agent.original", ua);
    }
    if let Some(referer) = text(&e.referer) {
        put("http.request.header.referer", referer);
    }
    out.push_str(&serde_json::Value::Object(object).to_string());
}

fn protocol(v: Version) -> &'static str {
    if v == Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    }
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Apache's escaping for logged request data: `"` and `\` are
/// backslash-escaped, bytes outside printable ASCII become `\xHH`, so a
/// client cannot forge a line or a field.
fn escape_into(out: &mut String, bytes: &[u8]) {
    use std::fmt::Write as _;
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

/// UTC calendar fields of a time: (year, month, day, hour, minute,
/// second, millisecond). Howard Hinnant's days-to-civil algorithm.
fn civil(t: SystemTime) -> (i64, u8, u8, u8, u8, u8, u16) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Every field below is bounded by the arithmetic above (day ≤ 31,
    // month ≤ 12, rem < 86400), so the narrowing casts cannot truncate.
    (
        year,
        month as u8,
        day as u8,
        (rem / 3600) as u8,
        (rem % 3600 / 60) as u8,
        (rem % 60) as u8,
        since.subsec_millis() as u16,
    )
}

/// `2026-11-24T00:27:23.600Z`
fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn entry() -> AccessEntry {
        AccessEntry {
            // 2026-11-24T00:27:23.600Z
            time: UNIX_EPOCH + Duration::from_millis(1_795_480_043_600),
            client: "10.0.0.7".into(),
            peer: Some("127.0.0.1".parse().expect("ip")),
            method: http::Method::GET,
            target: "/x?q=1".into(),
            version: Version::HTTP_11,
            status: 200,
            request_body: 0,
            response_body: 512,
            duration: Duration::from_millis(12),
            referer: None,
            user_agent: Some(HeaderValue::from_static("curl/8")),
        }
    }

    #[test]
    fn calendar_fields() {
        assert_eq!(civil(UNIX_EPOCH), (1970, 1, 1, 0, 0, 0, 0));
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(civil(leap), (2000, 2, 29, 0, 0, 0, 0));
        assert_eq!(rfc3339(entry().time), "2026-11-24T00:27:23.600Z");
    }

    #[test]
    fn combined_format() {
        let mut line = String::new();
        combined(&entry(), &mut line);
        assert_eq!(
            line,
            "10.0.0.7 - - [24/Nov/2026:00:27:23 +0000] \"GET /x?q=1 HTTP/1.1\" 200 512 \"-\" \"curl/8\""
        );
    }

    #[test]
    fn combined_escapes_what_a_client_controls() {
        let mut e = entry();
        e.target = "/a\"b\\c".into();
        e.response_body = 0;
        e.user_agent = Some(HeaderValue::from_bytes(b"evil\" \xff").expect("value"));
        let mut line = String::new();
        combined(&e, &mut line);
        assert!(
            line.contains("\"GET /a\\\"b\\\\c HTTP/1.1\" 200 - "),
            "{line}"
        );
        assert!(line.ends_with("\"evil\\\" \\xff\""), "{line}");
    }

    #[test]
    fn json_uses_otel_names() {
        let mut line = String::new();
        json(&entry(), &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["client.address"], "10.0.0.7");
        assert_eq!(v["network.peer.address"], "127.0.0.1");
        assert_eq!(v["url.path"], "/x");
        assert_eq!(v["url.query"], "q=1");
        assert_eq!(v["http.response.status_code"], 200);
        assert_eq!(v["http.response.body.size"], 512);
        assert_eq!(v["network.protocol.version"], "1.1");
        assert_eq!(v["user_agent.original"], "curl/8");
        assert_eq!(v["http.server.request.duration"], 0.012);
        assert_eq!(v["timestamp"], "2026-11-24T00:27:23.600Z");
        assert!(v.get("http.request.header.referer").is_none());
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_writer_thread_writes_every_line_before_a_flush_returns() {
        let sink = Shared::default();
        let log = AccessLog::start_with(AccessFormat::Combined, sink.clone()).expect("start");
        for status in [200, 404, 500] {
            log.log(AccessEntry { status, ..entry() });
        }
        log.flush(Duration::from_secs(5));
        let text = String::from_utf8(sink.0.lock().expect("lock").clone()).expect("utf-8");
        let statuses: Vec<&str> = text
            .lines()
            .map(|l| l.split('"').nth(2).unwrap_or("").trim())
            .collect();
        assert_eq!(statuses, ["200 512", "404 512", "500 512"], "{text}");
    }
}
