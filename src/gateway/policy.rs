//! Protocol decisions, as pure functions over request and response heads:
//! which requests maitred refuses before the app sees them, whether a
//! connection stays open, and the text of the responses maitred writes
//! itself. hyper owns parsing and framing; these are the rules on top that
//! make maitred behave like Waitress where its users rely on it.

use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, SERVER};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

use crate::framing::{HeadFacts, Violation};
use crate::metrics::LabelSet;

/// Why maitred answers a request itself; each reason has one status. The
/// labels are those of `maitred_gateway_responses_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayReason {
    /// A malformed request (head, body framing or forwarding header).
    BadRequest,
    /// A path outside `url_prefix` with `url_prefix_strict`.
    OutsidePrefix,
    /// `CONNECT`.
    MethodNotAllowed,
    /// The body stopped arriving.
    BodyTimeout,
    /// The body is larger than `max_request_body_size`.
    BodyTooLarge,
    /// A request target longer than hyper accepts.
    UriTooLong,
    /// The head is larger than `max_request_header_size`, or has more than
    /// `max_request_headers` fields.
    HeadersTooLarge,
    /// The application failed before its response started.
    AppError,
    /// maitred itself failed (e.g. it could not spool a body).
    InternalError,
    /// Every Python thread is busy and `max_queue` requests are waiting.
    QueueFull,
    /// The Python threads have stopped.
    ShuttingDown,
    /// No response within `request_timeout`.
    RequestTimeout,
    /// A missing, repeated or malformed `Host`.
    BadHost,
    /// A malformed `Transfer-Encoding` list, or one with `Content-Length`
    /// or on HTTP/1.0.
    BadTransferEncoding,
    /// A transfer coding other than `chunked`.
    UnsupportedTransferCoding,
    /// A line ending in LF alone, or a CR alone, in a head or chunk line.
    BareLineEnding,
}

impl GatewayReason {
    pub const ALL: [GatewayReason; 16] = [
        GatewayReason::BadRequest,
        GatewayReason::OutsidePrefix,
        GatewayReason::MethodNotAllowed,
        GatewayReason::BodyTimeout,
        GatewayReason::BodyTooLarge,
        GatewayReason::UriTooLong,
        GatewayReason::HeadersTooLarge,
        GatewayReason::AppError,
        GatewayReason::InternalError,
        GatewayReason::QueueFull,
        GatewayReason::ShuttingDown,
        GatewayReason::RequestTimeout,
        GatewayReason::BadHost,
        GatewayReason::BadTransferEncoding,
        GatewayReason::UnsupportedTransferCoding,
        GatewayReason::BareLineEnding,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            GatewayReason::BadRequest
            | GatewayReason::BadHost
            | GatewayReason::BadTransferEncoding
            | GatewayReason::BareLineEnding => StatusCode::BAD_REQUEST,
            GatewayReason::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            GatewayReason::OutsidePrefix => StatusCode::NOT_FOUND,
            GatewayReason::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayReason::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayReason::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayReason::UriTooLong => StatusCode::URI_TOO_LONG,
            GatewayReason::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayReason::AppError | GatewayReason::InternalError => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            GatewayReason::QueueFull | GatewayReason::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayReason::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            GatewayReason::BadRequest => "bad_request",
            GatewayReason::OutsidePrefix => "outside_prefix",
            GatewayReason::MethodNotAllowed => "method_not_allowed",
            GatewayReason::BodyTimeout => "body_timeout",
            GatewayReason::BodyTooLarge => "body_too_large",
            GatewayReason::UriTooLong => "uri_too_long",
            GatewayReason::HeadersTooLarge => "headers_too_large",
            GatewayReason::AppError => "app_error",
            GatewayReason::InternalError => "internal_error",
            GatewayReason::QueueFull => "queue_full",
            GatewayReason::ShuttingDown => "shutting_down",
            GatewayReason::RequestTimeout => "request_timeout",
            GatewayReason::BadHost => "host",
            GatewayReason::BadTransferEncoding => "transfer_encoding",
            GatewayReason::UnsupportedTransferCoding => "transfer_coding",
            GatewayReason::BareLineEnding => "bare_lf",
        }
    }

    /// Why a request that broke the framing rules is refused.
    pub fn of_violation(violation: Violation) -> GatewayReason {
        match violation {
            Violation::BareLineEnding => GatewayReason::BareLineEnding,
            Violation::MissingHost | Violation::DuplicateHost | Violation::InvalidHost => {
                GatewayReason::BadHost
            }
            Violation::UnsupportedTransferCoding => GatewayReason::UnsupportedTransferCoding,
            Violation::DuplicateContentLength
            | Violation::InvalidTarget
            | Violation::InvalidChunkSize
            | Violation::InvalidChunkExtension => GatewayReason::BadRequest,
            Violation::MalformedTransferEncoding
            | Violation::RepeatedChunked
            | Violation::ChunkedNotLast
            | Violation::TransferEncodingWithContentLength
            | Violation::TransferEncodingInHttp10 => GatewayReason::BadTransferEncoding,
        }
    }

    /// Counts one response maitred wrote itself for this reason.
    pub fn count(self) {
        crate::metrics::get().gateway_responses.inc(self);
    }

    /// What hyper answered on its own when it could not parse a request
    /// head (it writes those responses itself), if it answered at all.
    pub fn of_parse_error(err: &hyper::Error) -> Option<GatewayReason> {
        if !err.is_parse() || err.is_parse_version_h2() || err.is_parse_status() {
            return None;
        }
        if err.is_parse_too_large() {
            // hyper has no accessor telling the two apart; its message does.
            return Some(if err.to_string().contains("URI") {
                GatewayReason::UriTooLong
            } else {
                GatewayReason::HeadersTooLarge
            });
        }
        Some(GatewayReason::BadRequest)
    }
}

impl LabelSet for GatewayReason {
    const COUNT: usize = GatewayReason::ALL.len();
    fn all() -> Vec<Self> {
        GatewayReason::ALL.to_vec()
    }
    fn index(self) -> usize {
        self as usize
    }
    fn label_values(self) -> Vec<String> {
        vec![self.label().to_owned(), self.status().as_str().to_owned()]
    }
}

/// A response maitred gives instead of calling the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayResponse {
    pub reason: GatewayReason,
    pub status: StatusCode,
    pub detail: String,
    /// Seconds for a `Retry-After` header (503).
    pub retry_after: Option<u32>,
}

impl GatewayResponse {
    pub fn new(reason: GatewayReason, detail: impl Into<String>) -> Self {
        GatewayResponse {
            reason,
            status: reason.status(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The refusal of a request that broke the framing rules.
    pub fn of_violation(violation: Violation) -> Self {
        GatewayResponse::new(GatewayReason::of_violation(violation), violation.detail())
    }

    /// The body of the page, in Waitress's format.
    pub fn body(&self, ident: &str) -> String {
        error_body(self.status, &self.detail, ident)
    }

    /// The page's headers, in the order they are sent (the `Date` follows
    /// them): the same for every response maitred writes itself, whether
    /// hyper writes it or the connection does.
    pub fn headers(
        &self,
        body_len: usize,
        server: Option<&HeaderValue>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = vec![
            (CONNECTION, HeaderValue::from_static("close")),
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (CONTENT_LENGTH, HeaderValue::from(body_len)),
        ];
        if let Some(server) = server {
            headers.push((SERVER, server.clone()));
        }
        if let Some(seconds) = self.retry_after {
            headers.push((RETRY_AFTER, HeaderValue::from(seconds)));
        }
        headers
    }

    /// The whole response as bytes, for a refusal the connection writes
    /// itself because hyper never had the request. The answer to a HEAD
    /// has the headers only (RFC 9110 §9.3.2), as hyper writes it.
    pub fn to_bytes(
        &self,
        http10: bool,
        head_request: bool,
        ident: &str,
        server: Option<&HeaderValue>,
    ) -> Vec<u8> {
        let body = self.body(ident);
        let mut out = Vec::with_capacity(256 + body.len());
        out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in self.headers(body.len(), server) {
            out.extend_from_slice(title_case(name.as_str()).as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        if !head_request {
            out.extend_from_slice(body.as_bytes());
        }
        out
    }
}

/// Checks the request head before the body is read. `crate::framing` has
/// already refused bad line endings, `Transfer-Encoding` and `Host`, and
/// hyper anything else it cannot parse or frame (a bad Content-Length, an
/// oversized head).
pub fn check_head(
    method: &Method,
    headers: &HeaderMap,
    facts: Option<HeadFacts>,
    declared_body: Option<u64>,
    max_body: u64,
) -> Result<(), GatewayResponse> {
    // Methods are case-sensitive tokens; Waitress refuses lower-case ones
    // because `get` is nearly always a broken client, not an extension.
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(GatewayResponse::new(
            GatewayReason::BadRequest,
            format!("Malformed HTTP method \"{}\"", method.as_str()),
        ));
    }
    // A 2xx answer to CONNECT turns the connection into a tunnel, which a
    // WSGI app cannot serve (Waitress passes it on and garbles PATH_INFO).
    if method == Method::CONNECT {
        return Err(GatewayResponse::new(
            GatewayReason::MethodNotAllowed,
            "CONNECT is not supported by a WSGI server",
        ));
    }
    // Two Content-Type headers let a front end and the app disagree
    // about the body (a repeated Host is refused with the framing rules).
    let repeated_content_type = facts.map_or_else(
        || headers.get_all(CONTENT_TYPE).iter().nth(1).is_some(),
        HeadFacts::repeated_content_type,
    );
    if repeated_content_type {
        return Err(GatewayResponse::new(
            GatewayReason::BadRequest,
            "Duplicate header: Content-Type",
        ));
    }
    if let Some(len) = declared_body {
        if len > max_body {
            return Err(body_too_large(max_body));
        }
    }
    Ok(())
}

pub fn body_too_large(max_body: u64) -> GatewayResponse {
    GatewayResponse::new(
        GatewayReason::BodyTooLarge,
        format!("exceeds max_body of {max_body}"),
    )
}

/// Does the request ask for the connection to stay open? `facts` has the
/// `Connection` tokens when the framing scanner read the head; otherwise
/// they are read from the header map.
pub fn client_keep_alive(version: Version, headers: &HeaderMap, facts: Option<HeadFacts>) -> bool {
    let has_token = |token: &str| {
        headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    let close = facts.map_or_else(|| has_token("close"), HeadFacts::close);
    if close {
        return false;
    }
    match version {
        Version::HTTP_10 => facts.map_or_else(|| has_token("keep-alive"), HeadFacts::keep_alive),
        _ => true,
    }
}

/// The `Connection` header maitred puts on an app response, if any.
///
/// HTTP/1.0 keeps the connection only when the client asked and the body
/// length is known; the `Keep-Alive` spelling is Waitress's (its tests and
/// some old clients compare it exactly). HTTP/1.1 needs a header only to
/// announce a close.
pub fn connection_header(
    version: Version,
    client_keep_alive: bool,
    length_known: bool,
) -> Option<HeaderValue> {
    match version {
        Version::HTTP_10 if client_keep_alive && length_known => {
            Some(HeaderValue::from_static("Keep-Alive"))
        }
        Version::HTTP_10 => Some(HeaderValue::from_static("close")),
        _ if !client_keep_alive => Some(HeaderValue::from_static("close")),
        _ => None,
    }
}

/// The body of a response maitred generates itself, in Waitress's format
/// (clients and tests match on it):
/// `"<Reason>\r\n\r\n<detail>\r\n\r\n(generated by <ident>)"`.
pub fn error_body(status: StatusCode, detail: &str, ident: &str) -> String {
    let reason = status.canonical_reason().unwrap_or("Error");
    let by = if ident.is_empty() { "server" } else { ident };
    format!("{reason}\r\n\r\n{detail}\r\n\r\n(generated by {by})")
}

/// `content-type` to `Content-Type`, for messages.
pub fn title_case(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    #[test]
    fn lower_case_methods_are_refused() {
        let m = Method::from_bytes(b"get").expect("token");
        let err = check_head(&m, &HeaderMap::new(), None, None, 10).expect_err("refused");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.detail, "Malformed HTTP method \"get\"");
        assert!(check_head(&Method::GET, &HeaderMap::new(), None, None, 10).is_ok());
        let ext = Method::from_bytes(b"PURGE").expect("token");
        assert!(check_head(&ext, &HeaderMap::new(), None, None, 10).is_ok());
    }

    #[test]
    fn connect_is_refused() {
        let err =
            check_head(&Method::CONNECT, &HeaderMap::new(), None, None, 10).expect_err("refused");
        assert_eq!(err.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn duplicate_content_type_is_refused() {
        let h = headers(&[("content-type", "a"), ("content-type", "b")]);
        let err = check_head(&Method::POST, &h, None, None, 10).expect_err("refused");
        assert_eq!(err.detail, "Duplicate header: Content-Type");
    }

    #[test]
    fn declared_bodies_over_the_limit_get_413() {
        let err =
            check_head(&Method::POST, &HeaderMap::new(), None, Some(11), 10).expect_err("big");
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(err.detail, "exceeds max_body of 10");
        assert!(check_head(&Method::POST, &HeaderMap::new(), None, Some(10), 10).is_ok());
    }

    /// The facts the framing scanner finds give the answers the header map
    /// gives.
    #[test]
    fn the_scanners_facts_agree_with_the_header_map() {
        use crate::framing::{HeadQueue, Scanner};
        for fields in [
            &[][..],
            &[("Connection", "close")],
            &[("connection", "Keep-Alive")],
            &[("Connection", "keep-alive, close")],
            &[("Connection", "foo"), ("Connection", " CLOSE ")],
            &[("Connection", "keep-alive"), ("Content-Type", "a")],
            &[("Content-Type", "a"), ("content-type", "b")],
            &[("Content-Length", "0")],
        ] {
            for version in [Version::HTTP_10, Version::HTTP_11] {
                let line = if version == Version::HTTP_10 {
                    "HTTP/1.0"
                } else {
                    "HTTP/1.1"
                };
                let mut raw = format!("GET / {line}\r\nHost: a\r\n");
                for (name, value) in fields {
                    raw.push_str(&format!("{name}: {value}\r\n"));
                }
                raw.push_str("\r\n");
                let queue = HeadQueue::default();
                Scanner::new(false, 1024).scan(raw.as_bytes(), &queue);
                let facts = queue.pop().expect("facts");
                let map = headers(fields);
                assert_eq!(
                    client_keep_alive(version, &map, Some(facts)),
                    client_keep_alive(version, &map, None),
                    "{raw:?}"
                );
                let with = check_head(&Method::GET, &map, Some(facts), None, 10).is_ok();
                let without = check_head(&Method::GET, &map, None, None, 10).is_ok();
                assert_eq!(with, without, "{raw:?}");
            }
        }
    }

    #[test]
    fn keep_alive_rules() {
        let v10 = Version::HTTP_10;
        let v11 = Version::HTTP_11;
        assert!(!client_keep_alive(v10, &headers(&[]), None));
        assert!(client_keep_alive(
            v10,
            &headers(&[("connection", "Keep-Alive")]),
            None
        ));
        assert!(client_keep_alive(v11, &headers(&[]), None));
        assert!(!client_keep_alive(
            v11,
            &headers(&[("connection", "close")]),
            None
        ));
        // Tokens, not whole values (a Waitress bug the notes record).
        assert!(!client_keep_alive(
            v11,
            &headers(&[("connection", "keep-alive, close")]),
            None
        ));
        assert_eq!(
            connection_header(v10, true, true),
            Some(HeaderValue::from_static("Keep-Alive"))
        );
        assert_eq!(
            connection_header(v10, true, false),
            Some(HeaderValue::from_static("close"))
        );
        assert_eq!(
            connection_header(v10, false, true),
            Some(HeaderValue::from_static("close"))
        );
        assert_eq!(connection_header(v11, true, false), None);
        assert_eq!(
            connection_header(v11, false, true),
            Some(HeaderValue::from_static("close"))
        );
    }

    #[test]
    fn a_refusal_written_by_the_connection_has_the_usual_headers() {
        let refused = GatewayResponse::of_violation(Violation::UnsupportedTransferCoding);
        let server = HeaderValue::from_static("maitred");
        let bytes = refused.to_bytes(false, false, "maitred", Some(&server));
        let text = String::from_utf8(bytes).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        let lines: Vec<&str> = head.lines().collect();
        assert_eq!(lines[0], "HTTP/1.1 501 Not Implemented");
        assert_eq!(
            &lines[1..5],
            [
                "Connection: close",
                "Content-Type: text/plain; charset=utf-8",
                &format!("Content-Length: {}", body.len()),
                "Server: maitred"
            ]
        );
        assert!(lines[5].starts_with("Date: ") && lines[5].ends_with(" GMT"));
        assert_eq!(
            body,
            "Not Implemented\r\n\r\nTransfer-Encoding requested is not supported.\r\n\r\n(generated by maitred)"
        );
        let text = String::from_utf8(
            GatewayResponse::of_violation(Violation::MissingHost).to_bytes(true, false, "", None),
        )
        .expect("ascii");
        assert!(text.starts_with("HTTP/1.0 400 Bad Request\r\n"), "{text}");
        assert!(!text.contains("Server:"), "{text}");
        let head = GatewayResponse::of_violation(Violation::InvalidHost)
            .to_bytes(false, true, "maitred", None);
        let head = String::from_utf8(head).expect("ascii");
        assert!(head.ends_with("\r\n\r\n"), "no body for a HEAD: {head}");
        assert!(head.contains("Content-Length: 60\r\n"), "{head}");
    }

    #[test]
    fn error_bodies_use_waitress_format() {
        assert_eq!(
            error_body(
                StatusCode::PAYLOAD_TOO_LARGE,
                "exceeds max_body of 10",
                "maitred"
            ),
            "Payload Too Large\r\n\r\nexceeds max_body of 10\r\n\r\n(generated by maitred)"
        );
        assert!(error_body(StatusCode::BAD_REQUEST, "x", "").ends_with("(generated by server)"));
    }
}
