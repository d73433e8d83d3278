//! Prometheus metrics: every series maitred exposes, registered in one
//! registry, with the handles the request path needs resolved ahead of
//! time so recording costs a few atomic operations and no allocation.
//!
//! Names follow the OpenTelemetry HTTP semantic conventions as Prometheus
//! spells them (`http_server_*`), Prometheus's naming rules (base units,
//! `_total` on counters), and the `maitred_` prefix for what is specific to
//! this server. No label takes a value a client chooses: methods are
//! normalised (unknown ones become `_OTHER`), status codes are three
//! digits, exception types are capped. `docs/metrics.md` lists them all; a
//! test keeps it in step with a live scrape.
//!
//! This module depends on nothing else in maitred: families labelled by a
//! domain enum (gateway reasons, forwarding headers, connection timers) are
//! [`Family`]s, and the enum supplies its label values through
//! [`LabelSet`]. Start-up seeds each one so its series exist from the start.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, OnceLock, PoisonError, RwLock};
use std::time::Instant;

use http::Version;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `Content-Type` of a scrape. Prometheus 3 refuses a missing or
/// malformed one, so it is spelled out rather than taken from the encoder
/// (which leaves out the charset).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenTelemetry's boundaries for `http.server.request.duration`, plus 30
/// and 60 s: WSGI apps often run up against timeouts of that order.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
];
/// Body sizes: 256 B to 64 MiB in steps of 4.
pub const SIZE_BUCKETS: [f64; 10] = [
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];
/// Time waiting for a Python thread: from half a millisecond (an idle pool)
/// to 30 s (an overloaded one).
pub const QUEUE_WAIT_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// `http_request_method` values: RFC 9110's methods and PATCH, then
/// `_OTHER` for any other token (OpenTelemetry's rule).
pub const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
];
/// `url_scheme` values.
pub const SCHEMES: [&str; 3] = ["http", "https", "_OTHER"];
/// `network_protocol_version` values (maitred speaks HTTP/1.x).
pub const VERSIONS: [&str; 2] = ["1.0", "1.1"];
/// Distinct exception types counted by name before the rest become `_OTHER`.
pub const EXCEPTION_TYPES_MAX: usize = 50;

pub fn method_index(method: &str) -> usize {
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|m| *m == method)
        .unwrap_or(METHODS.len() - 1)
}

pub fn scheme_index(scheme: &str) -> usize {
    match scheme {
        "http" => 0,
        "https" => 1,
        _ => 2,
    }
}

pub fn version_index(version: Version) -> usize {
    usize::from(version != Version::HTTP_10)
}

/// A closed set of label values: a domain enum (why the gateway answered,
/// which forwarding header was not believed) that names itself. Each
/// value's series exists, at 0, from the moment its family is seeded, so
/// dashboards and alerts see a zero rather than a gap.
pub trait LabelSet: Copy + 'static {
    /// How many values there are.
    const COUNT: usize;
    /// Every value, in the order of [`LabelSet::index`].
    fn all() -> Vec<Self>;
    /// Its position in [`LabelSet::all`].
    fn index(self) -> usize;
    /// Its label values, in the order of its family's label names.
    fn label_values(self) -> Vec<String>;
}

/// A field-less enum that is one label: its values and each one's label
/// value are all a [`LabelSet`] needs.
pub trait Label: Copy + PartialEq + 'static {
    /// Every value.
    const ALL: &'static [Self];
    fn label(self) -> &'static str;
}

impl<T: Label> LabelSet for T {
    const COUNT: usize = T::ALL.len();

    fn all() -> Vec<Self> {
        T::ALL.to_vec()
    }

    fn index(self) -> usize {
        T::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }

    fn label_values(self) -> Vec<String> {
        vec![self.label().to_owned()]
    }
}

/// Two label sets counted together (a header and why it was refused).
impl<A: LabelSet, B: LabelSet> LabelSet for (A, B) {
    const COUNT: usize = A::COUNT * B::COUNT;

    fn all() -> Vec<Self> {
        A::all()
            .into_iter()
            .flat_map(|a| B::all().into_iter().map(move |b| (a, b)))
            .collect()
    }

    fn index(self) -> usize {
        self.0.index() * B::COUNT + self.1.index()
    }

    fn label_values(self) -> Vec<String> {
        let mut values = self.0.label_values();
        values.extend(self.1.label_values());
        values
    }
}

/// A counter family labelled by one [`LabelSet`], resolved to one counter
/// per value the first time it is seeded or counted, so counting is an
/// index and an atomic add.
pub struct Family {
    vec: IntCounterVec,
    /// Which label set it was resolved with, and its counters.
    children: OnceLock<(TypeId, Vec<IntCounter>)>,
}

impl Family {
    fn new(vec: IntCounterVec) -> Family {
        Family {
            vec,
            children: OnceLock::new(),
        }
    }

    fn children<L: LabelSet>(&self) -> &[IntCounter] {
        let (kind, children) = self.children.get_or_init(|| {
            let children = L::all()
                .into_iter()
                .map(|l| self.vec.with_label_values(&l.label_values()))
                .collect();
            (TypeId::of::<L>(), children)
        });
        debug_assert_eq!(
            *kind,
            TypeId::of::<L>(),
            "a family is counted with one label set"
        );
        children
    }

    /// Creates every series of `L` at 0.
    pub fn seed<L: LabelSet>(&self) {
        self.children::<L>();
    }

    pub fn inc<L: LabelSet>(&self, value: L) {
        if let Some(counter) = self.children::<L>().get(value.index()) {
            counter.inc();
        }
    }
}

pub struct Metrics {
    registry: Registry,
    http: HttpSeries,
    pub connections_active: IntGauge,
    pub connections_accepted: IntCounter,
    /// Connections closed before any request was read, by reason.
    pub connections_rejected: Family,
    pub connections_evicted: IntCounter,
    /// Connections closed by a timer, by timer.
    pub connection_timeouts: Family,
    pub connection_limit: IntGauge,
    pub connection_limit_reached: IntCounter,
    pub python_threads: IntGauge,
    pub python_threads_busy: IntGauge,
    /// Threads still in the app past `request_timeout`, and the threads
    /// started to replace them.
    pub python_threads_stuck: IntGauge,
    pub python_thread_replacements: IntCounter,
    pub queue_depth: IntGauge,
    pub queue_limit: IntGauge,
    pub queue_wait: Histogram,
    /// Responses maitred wrote itself, by reason and status.
    pub gateway_responses: Family,
    exceptions: ExceptionTypes,
    /// Forwarding headers not believed, by header and reason.
    pub proxy_headers_rejected: Family,
    gc_collections: Vec<IntCounter>,
    gc_collected: Vec<IntCounter>,
    gc_uncollectable: Vec<IntCounter>,
    build_info: IntGaugeVec,
    pub access_log_dropped: IntCounter,
    pub workers: IntGauge,
    pub worker_restarts: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

// Metric definitions are constants of this file: a name the crate refuses
// or a duplicate is a bug, found by the unit tests and at start-up (the
// metrics are built before the server listens), never by a client.
const DEFINED: &str = "metric definitions in metrics.rs are valid and unique";

fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect(DEFINED);
    collector
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).expect(DEFINED))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect(DEFINED))
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, Histogram::with_opts(opts).expect(DEFINED))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect(DEFINED),
    )
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, HistogramVec::new(opts, labels).expect(DEFINED))
}

impl Metrics {
    /// A fresh set of every family (the process uses [`get`]; tests make
    /// their own).
    pub fn new() -> Metrics {
        let r = Registry::new();
        let http = HttpSeries::new(&r);

        let connections_active = gauge(
            &r,
            "maitred_connections_active",
            "Open client connections (idle keep-alive ones included).",
        );
        let connections_accepted = counter(
            &r,
            "maitred_connections_accepted_total",
            "Client connections accepted.",
        );
        let connections_rejected = Family::new(counter_vec(
            &r,
            "maitred_connections_rejected_total",
            "Connections closed before any request was read, by reason.",
            &["reason"],
        ));
        let connections_evicted = counter(
            &r,
            "maitred_connections_evicted_total",
            "Idle connections closed to make room for a new one at connection_limit.",
        );
        let connection_timeouts = Family::new(counter_vec(
            &r,
            "maitred_connection_timeouts_total",
            "Connections closed by a timer: header (header_timeout) or channel (channel_timeout).",
            &["timeout"],
        ));
        let connection_limit = gauge(
            &r,
            "maitred_connection_limit",
            "The connection_limit setting: open connections at which maitred stops accepting.",
        );
        let connection_limit_reached = counter(
            &r,
            "maitred_connection_limit_reached_total",
            "New connections that found connection_limit reached (an idle one was closed, or they waited).",
        );

        let python_threads = gauge(
            &r,
            "maitred_python_threads",
            "Python threads running the application.",
        );
        let python_threads_busy = gauge(
            &r,
            "maitred_python_threads_busy",
            "Python threads running a request.",
        );
        let python_threads_stuck = gauge(
            &r,
            "maitred_python_threads_stuck",
            "Python threads still running a request past request_timeout (its client got 504).",
        );
        let python_thread_replacements = counter(
            &r,
            "maitred_python_thread_replacements_total",
            "Python threads started to stand in for threads stuck past request_timeout.",
        );
        let queue_depth = gauge(
            &r,
            "maitred_request_queue_depth",
            "Requests received and waiting for a Python thread.",
        );
        let queue_limit = gauge(
            &r,
            "maitred_request_queue_limit",
            "The limits.max_queue setting: waiting requests beyond which maitred answers 503.",
        );
        let queue_wait = histogram(
            &r,
            "maitred_request_queue_wait_seconds",
            "Time from a request being queued to a Python thread taking it.",
            &QUEUE_WAIT_BUCKETS,
        );

        let gateway_responses = Family::new(counter_vec(
            &r,
            "maitred_gateway_responses_total",
            "Responses maitred wrote itself instead of the application's, by reason.",
            &["reason", "http_response_status_code"],
        ));

        let exceptions = ExceptionTypes::new(counter_vec(
            &r,
            "maitred_app_exceptions_total",
            "Exceptions raised by the application (its call, its iterable or close()), by type.",
            &["exception_type"],
        ));

        let proxy_headers_rejected = Family::new(counter_vec(
            &r,
            "maitred_proxy_headers_rejected_total",
            "Forwarding headers not believed, by header and reason.",
            &["header", "reason"],
        ));

        let generations = ["0", "1", "2"];
        let per_generation = |name: &str, help: &str| -> Vec<IntCounter> {
            let v = counter_vec(&r, name, help, &["generation"]);
            generations
                .iter()
                .map(|g| v.with_label_values(&[*g]))
                .collect()
        };
        let gc_collections = per_generation(
            "cpython_gc_collections_total",
            "Garbage collections run by the Python interpreter, by generation.",
        );
        let gc_collected = per_generation(
            "cpython_gc_collected_objects_total",
            "Objects the Python garbage collector freed, by generation.",
        );
        let gc_uncollectable = per_generation(
            "cpython_gc_uncollectable_objects_total",
            "Objects the Python garbage collector found uncollectable, by generation.",
        );

        let build_info = IntGaugeVec::new(
            Opts::new(
                "maitred_build_info",
                "Always 1; the labels say which maitred and which Python run.",
            ),
            &["version", "python_version"],
        )
        .expect(DEFINED);
        let build_info = register(&r, build_info);

        let access_log_dropped = counter(
            &r,
            "maitred_access_log_dropped_total",
            "Access log entries dropped because the writer could not keep up (stdout blocked).",
        );

        let workers = gauge(
            &r,
            "maitred_workers",
            "Worker processes serving (1 for a single process without a supervisor).",
        );
        let worker_restarts = counter(
            &r,
            "maitred_worker_restarts_total",
            "Worker processes the supervisor restarted after they exited.",
        );

        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect(DEFINED);

        Metrics {
            registry: r,
            http,
            connections_active,
            connections_accepted,
            connections_rejected,
            connections_evicted,
            connection_timeouts,
            connection_limit,
            connection_limit_reached,
            python_threads,
            python_threads_busy,
            python_threads_stuck,
            python_thread_replacements,
            queue_depth,
            queue_limit,
            queue_wait,
            gateway_responses,
            exceptions,
            proxy_headers_rejected,
            gc_collections,
            gc_collected,
            gc_uncollectable,
            build_info,
            access_log_dropped,
            workers,
            worker_restarts,
        }
    }

    /// The settings and versions the dashboards compare against.
    pub fn describe(
        &self,
        connection_limit: usize,
        max_queue: usize,
        threads: usize,
        python_version: &str,
    ) {
        self.connection_limit.set(as_gauge(connection_limit));
        self.queue_limit.set(as_gauge(max_queue));
        self.python_threads.set(as_gauge(threads));
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), python_version])
            .set(1);
    }

    /// An exception from the app; `type_name` is its qualified class name.
    pub fn app_exception(&self, type_name: &str) {
        self.exceptions.count(type_name);
    }

    /// One garbage collection of `generation` (0–2) as the interpreter
    /// reports it.
    pub fn gc_collection(&self, generation: usize, collected: u64, uncollectable: u64) {
        if let (Some(c), Some(o), Some(u)) = (
            self.gc_collections.get(generation),
            self.gc_collected.get(generation),
            self.gc_uncollectable.get(generation),
        ) {
            c.inc();
            o.inc_by(collected);
            u.inc_by(uncollectable);
        }
    }

    /// Starts the record of one request; see [`Exchange`].
    pub fn exchange(&'static self, method: &str, version: Version, scheme: &str) -> Exchange {
        let mut exchange = Exchange {
            metrics: self,
            started: Instant::now(),
            method: method_index(method),
            version: version_index(version),
            scheme: scheme_index(scheme),
            request_body: 0,
            active: false,
        };
        exchange.set_active(true);
        exchange
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!("encoding the metrics failed: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A count as a gauge's value (a count beyond `i64` saturates).
pub fn as_gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The `http_server_*` families, with a cache of resolved children keyed
/// by a packed label set, so the request path neither hashes label strings
/// nor allocates once a combination has been seen.
struct HttpSeries {
    duration: HistogramVec,
    request_size: HistogramVec,
    response_size: HistogramVec,
    /// `http_server_active_requests`, one gauge per method and scheme.
    active: Vec<IntGauge>,
    resolved: RwLock<HashMap<u32, [Histogram; 3]>>,
}

impl HttpSeries {
    fn new(r: &Registry) -> HttpSeries {
        let labels = [
            "http_request_method",
            "http_response_status_code",
            "url_scheme",
            "network_protocol_version",
        ];
        let duration = histogram_vec(
            r,
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests, from the parsed head to the last response byte handed to the socket.",
            &DURATION_BUCKETS,
            &labels,
        );
        let request_size = histogram_vec(
            r,
            "http_server_request_body_size_bytes",
            "Size of HTTP server request bodies (after chunked decoding).",
            &SIZE_BUCKETS,
            &labels,
        );
        let response_size = histogram_vec(
            r,
            "http_server_response_body_size_bytes",
            "Size of HTTP server response bodies as sent.",
            &SIZE_BUCKETS,
            &labels,
        );
        let active_vec = IntGaugeVec::new(
            Opts::new(
                "http_server_active_requests",
                "HTTP server requests in progress (queued, in the app, or sending their response).",
            ),
            &["http_request_method", "url_scheme"],
        )
        .expect(DEFINED);
        let active_vec = register(r, active_vec);
        let active = METHODS
            .iter()
            .flat_map(|m| {
                let active_vec = &active_vec;
                SCHEMES
                    .iter()
                    .map(move |s| active_vec.with_label_values(&[*m, *s]))
            })
            .collect();
        HttpSeries {
            duration,
            request_size,
            response_size,
            active,
            resolved: RwLock::new(HashMap::new()),
        }
    }

    fn active(&self, method: usize, scheme: usize) -> &IntGauge {
        &self.active[method * SCHEMES.len() + scheme]
    }

    fn observe(&self, e: &Exchange, status: http::StatusCode, seconds: f64, response_body: u64) {
        let key = u32::from(status.as_u16())
            | (e.version as u32) << 10
            | (e.scheme as u32) << 11
            | (e.method as u32) << 13;
        let record = |h: &[Histogram; 3]| {
            h[0].observe(seconds);
            h[1].observe(e.request_body as f64);
            h[2].observe(response_body as f64);
        };
        if let Some(h) = self
            .resolved
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return record(h);
        }
        let labels = [
            METHODS[e.method],
            status.as_str(),
            SCHEMES[e.scheme],
            VERSIONS[e.version],
        ];
        let h = [
            self.duration.with_label_values(&labels),
            self.request_size.with_label_values(&labels),
            self.response_size.with_label_values(&labels),
        ];
        record(&h);
        self.resolved
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, h);
    }
}

/// One HTTP request, from its parsed head until its response is over: the
/// active-requests gauge counts it meanwhile, and [`Exchange::finish`]
/// records its duration and sizes.
pub struct Exchange {
    metrics: &'static Metrics,
    started: Instant,
    method: usize,
    version: usize,
    scheme: usize,
    request_body: u64,
    active: bool,
}

impl Exchange {
    fn set_active(&mut self, on: bool) {
        if self.active != on {
            let gauge = self.metrics.http.active(self.method, self.scheme);
            if on {
                gauge.inc()
            } else {
                gauge.dec()
            }
            self.active = on;
        }
    }

    /// The scheme the proxy headers established.
    pub fn set_scheme(&mut self, scheme: &str) {
        let scheme = scheme_index(scheme);
        if scheme != self.scheme {
            let was_active = self.active;
            self.set_active(false);
            self.scheme = scheme;
            self.set_active(was_active);
        }
    }

    pub fn set_request_body(&mut self, bytes: u64) {
        self.request_body = bytes;
    }

    /// The response is over: `response_body` bytes of it were sent.
    /// Returns the request's duration.
    pub fn finish(mut self, status: http::StatusCode, response_body: u64) -> std::time::Duration {
        let took = self.started.elapsed();
        self.metrics
            .http
            .observe(&self, status, took.as_secs_f64(), response_body);
        self.set_active(false);
        took
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.set_active(false);
    }
}

/// `maitred_app_exceptions_total`, with at most [`EXCEPTION_TYPES_MAX`]
/// type names; later ones are counted as `_OTHER`.
struct ExceptionTypes {
    vec: IntCounterVec,
    seen: RwLock<HashMap<String, IntCounter>>,
    other: IntCounter,
    full: AtomicBool,
}

impl ExceptionTypes {
    fn new(vec: IntCounterVec) -> ExceptionTypes {
        // Present from the start, so "no exceptions" reads as 0.
        let other = vec.with_label_values(&["_OTHER"]);
        ExceptionTypes {
            vec,
            seen: RwLock::new(HashMap::new()),
            other,
            full: AtomicBool::new(false),
        }
    }

    fn count(&self, type_name: &str) {
        if let Some(c) = self
            .seen
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(type_name)
        {
            return c.inc();
        }
        if self.full.load(Ordering::Relaxed) {
            return self.other.inc();
        }
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= EXCEPTION_TYPES_MAX {
            self.full.store(true, Ordering::Relaxed);
            return self.other.inc();
        }
        let c = seen
            .entry(type_name.to_owned())
            .or_insert_with(|| self.vec.with_label_values(&[type_name]));
        c.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(m: &Metrics) -> String {
        m.render()
    }

    fn value(scrape: &str, series: &str) -> Option<f64> {
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn methods_are_normalised() {
        assert_eq!(METHODS[method_index("GET")], "GET");
        assert_eq!(METHODS[method_index("PATCH")], "PATCH");
        assert_eq!(METHODS[method_index("PROPFIND")], "_OTHER");
        assert_eq!(METHODS[method_index("get")], "_OTHER");
        assert_eq!(SCHEMES[scheme_index("wss")], "_OTHER");
    }

    /// A label set of the kind the domain modules define.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Colour {
        Red,
        Green,
    }

    impl Label for Colour {
        const ALL: &'static [Self] = &[Colour::Red, Colour::Green];
        fn label(self) -> &'static str {
            match self {
                Colour::Red => "red",
                Colour::Green => "green",
            }
        }
    }

    #[test]
    fn unlabelled_families_are_present_before_anything_happens() {
        let m = Box::leak(Box::new(Metrics::new()));
        let s = scrape(m);
        for series in [
            "maitred_app_exceptions_total{exception_type=\"_OTHER\"}",
            "cpython_gc_collections_total{generation=\"2\"}",
            "http_server_active_requests{http_request_method=\"_OTHER\",url_scheme=\"https\"}",
        ] {
            assert_eq!(value(&s, series), Some(0.0), "{series} in\n{s}");
        }
        assert!(s.contains("# TYPE process_resident_memory_bytes gauge"));
    }

    #[test]
    fn a_seeded_family_has_every_series_at_zero_and_counts_by_index() {
        let m = Box::leak(Box::new(Metrics::new()));
        m.connection_timeouts.seed::<Colour>();
        let s = scrape(m);
        for colour in ["red", "green"] {
            let series = format!("maitred_connection_timeouts_total{{timeout=\"{colour}\"}}");
            assert_eq!(value(&s, &series), Some(0.0), "{series} in\n{s}");
        }
        m.connection_timeouts.inc(Colour::Green);
        let s = scrape(m);
        assert_eq!(
            value(&s, "maitred_connection_timeouts_total{timeout=\"green\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&s, "maitred_connection_timeouts_total{timeout=\"red\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn a_pair_of_label_sets_indexes_every_combination_once() {
        let all = <(Colour, Colour)>::all();
        assert_eq!(all.len(), <(Colour, Colour)>::COUNT);
        for (i, pair) in all.into_iter().enumerate() {
            assert_eq!(pair.index(), i, "{pair:?}");
        }
        assert_eq!(
            (Colour::Green, Colour::Red).label_values(),
            vec!["green", "red"]
        );
        let m = Box::leak(Box::new(Metrics::new()));
        m.proxy_headers_rejected.inc((Colour::Green, Colour::Red));
        assert_eq!(
            value(
                &scrape(m),
                "maitred_proxy_headers_rejected_total{header=\"green\",reason=\"red\"}"
            ),
            Some(1.0)
        );
    }

    #[test]
    fn an_exchange_records_duration_sizes_and_activity() {
        let m: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let active =
            "http_server_active_requests{http_request_method=\"POST\",url_scheme=\"https\"}";
        let mut e = m.exchange("POST", Version::HTTP_11, "http");
        e.set_scheme("https");
        e.set_request_body(5000);
        assert_eq!(value(&scrape(m), active), Some(1.0));
        e.finish(http::StatusCode::CREATED, 300);
        let s = scrape(m);
        assert_eq!(value(&s, active), Some(0.0));
        let labels = "http_request_method=\"POST\",http_response_status_code=\"201\",network_protocol_version=\"1.1\",url_scheme=\"https\"";
        assert_eq!(
            value(
                &s,
                &format!("http_server_request_duration_seconds_count{{{labels}}}")
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &s,
                &format!("http_server_request_body_size_bytes_sum{{{labels}}}")
            ),
            Some(5000.0)
        );
        assert_eq!(
            value(
                &s,
                &format!("http_server_response_body_size_bytes_bucket{{{labels},le=\"256\"}}")
            ),
            Some(0.0),
        );
        // A second request with the same labels reuses the resolved children.
        m.exchange("POST", Version::HTTP_11, "https")
            .finish(http::StatusCode::CREATED, 10);
        assert_eq!(
            value(
                &scrape(m),
                &format!("http_server_request_duration_seconds_count{{{labels}}}")
            ),
            Some(2.0)
        );
        // Dropped without finishing (a connection torn down): no longer active.
        drop(m.exchange("POST", Version::HTTP_10, "https"));
        assert_eq!(value(&scrape(m), active), Some(0.0));
    }

    #[test]
    fn exception_types_are_capped() {
        let m = Box::leak(Box::new(Metrics::new()));
        for i in 0..EXCEPTION_TYPES_MAX + 5 {
            m.app_exception(&format!("app.Error{i}"));
        }
        m.app_exception("app.Error0");
        let s = scrape(m);
        assert_eq!(
            value(
                &s,
                "maitred_app_exceptions_total{exception_type=\"app.Error0\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                &s,
                "maitred_app_exceptions_total{exception_type=\"_OTHER\"}"
            ),
            Some(5.0)
        );
        let distinct = s
            .lines()
            .filter(|l| l.starts_with("maitred_app_exceptions_total{"))
            .count();
        assert_eq!(distinct, EXCEPTION_TYPES_MAX + 1);
    }

    #[test]
    fn garbage_collections_land_on_their_generation() {
        let m = Box::leak(Box::new(Metrics::new()));
        m.gc_collection(1, 7, 0);
        m.gc_collection(9, 7, 0);
        let s = scrape(m);
        assert_eq!(
            value(&s, "cpython_gc_collections_total{generation=\"1\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&s, "cpython_gc_collected_objects_total{generation=\"1\"}"),
            Some(7.0)
        );
    }
}
