//! Observability against the real binary: the `/metrics` scrape after a
//! mixed workload (every family moves when it should and passes
//! `promtool check metrics`), the Grafana dashboard and the Prometheus
//! rules (every metric they query exists in a live scrape; promtool checks
//! and unit-tests the rules), `docs/metrics.md` against the scrape, and the
//! access log in both formats.
//!
//! promtool comes from Debian's prometheus package, unpacked by
//! `scripts/tools.sh` (the README's test command runs it first).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{IO_TIMEOUT, read_response, server};

fn promtool() -> PathBuf {
    let path = common::project_dir().join("target/tools/bin/promtool");
    assert!(
        path.exists(),
        "{} is missing: run ./scripts/tools.sh (the README's test command does)",
        path.display()
    );
    path
}

fn scrape(s: &common::Server) -> String {
    s.scrape()
}

fn must(scrape: &str, series: &str) -> f64 {
    common::metric_value(scrape, series)
        .unwrap_or_else(|| panic!("no series {series} in\n{scrape}"))
}

/// Family name → type, from the `# TYPE` lines.
fn families(scrape: &str) -> BTreeMap<String, String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect()
}

/// Every series name a query may select: families, and a histogram's
/// `_bucket`, `_sum` and `_count`.
fn selectable(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (name, kind) in families(scrape) {
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
        names.insert(name);
    }
    names
}

/// Label names seen on a family's series (`le` left out).
fn label_names(scrape: &str, family: &str, kind: &str) -> BTreeSet<String> {
    let series: Vec<String> = if kind == "histogram" {
        vec![format!("{family}_bucket"), format!("{family}_count")]
    } else {
        vec![family.to_owned()]
    };
    let mut labels = BTreeSet::new();
    for line in scrape.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        if !series.iter().any(|s| s == name) {
            continue;
        }
        let inside = rest.split_once('}').map_or("", |(i, _)| i);
        for pair in inside.split("\",") {
            if let Some((k, _)) = pair.split_once('=') {
                if k != "le" {
                    labels.insert(k.trim().to_owned());
                }
            }
        }
    }
    labels
}

fn raw(s: &common::Server, request: &str) -> common::Response {
    let mut c = s.connect();
    c.write_all(request.as_bytes()).expect("send");
    let mut r = BufReader::new(c);
    read_response(&mut r).expect("response")
}

/// The server of the mixed workload: small limits so refusals are easy to
/// provoke, loopback trusted for X-Forwarded-For only.
fn workload_server() -> common::Server {
    server()
        .args([
            "--threads=2",
            "--max-request-body-size=1000",
            "--trusted-proxy=127.0.0.1",
            "--trusted-proxy-headers=x-forwarded-for",
            "behaviours:app",
        ])
        .start()
}

fn run_workload(s: &common::Server) {
    for _ in 0..3 {
        assert_eq!(s.get("/environ").status, 200);
    }
    assert_eq!(s.get("/gc").status, 200);
    // An exception from the app: 500 from the gateway, counted by type.
    assert_eq!(s.get("/error-before").status, 500);
    assert_eq!(s.get("/app-error").status, 500);
    // Too large a body: 413 before the app.
    let big = "x".repeat(2000);
    let r = raw(
        s,
        &format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
            big.len()
        ),
    );
    assert_eq!(r.status, 413);
    // A head hyper cannot parse: 400 from hyper itself.
    let r = s.exchange(b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n");
    assert!(
        r.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&r)
    );
    // A trusted proxy's header that is not listed, and a malformed one.
    let r = raw(
        s,
        "GET /environ HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["REMOTE_ADDR"], "203.0.113.9");
    let r = raw(
        s,
        "GET /environ HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: not-an-address\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    // An unknown method and a HEAD.
    let r = raw(
        s,
        "PROPFIND /environ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let mut c = s.connect();
    c.write_all(b"HEAD /environ HTTP/1.0\r\n\r\n")
        .expect("send");
    let mut r = BufReader::new(c);
    assert_eq!(
        common::read_response_to(&mut r, true).expect("HEAD").status,
        200
    );
}

#[test]
fn a_mixed_workload_moves_every_family_and_passes_promtool() {
    let s = workload_server();
    run_workload(&s);
    // Responses are recorded when hyper drops their body, just after the
    // client has them: give the last one a moment.
    std::thread::sleep(Duration::from_millis(100));
    let m = scrape(&s);

    let ok = "http_request_method=\"GET\",http_response_status_code=\"200\",network_protocol_version=\"1.1\",url_scheme=\"http\"";
    assert!(
        must(
            &m,
            &format!("http_server_request_duration_seconds_count{{{ok}}}")
        ) >= 5.0
    );
    assert!(
        must(
            &m,
            &format!("http_server_response_body_size_bytes_sum{{{ok}}}")
        ) > 0.0
    );
    let other = "http_request_method=\"_OTHER\",http_response_status_code=\"200\",network_protocol_version=\"1.1\",url_scheme=\"http\"";
    assert_eq!(
        must(
            &m,
            &format!("http_server_request_duration_seconds_count{{{other}}}")
        ),
        1.0
    );
    let head = "http_request_method=\"HEAD\",http_response_status_code=\"200\",network_protocol_version=\"1.0\",url_scheme=\"http\"";
    assert_eq!(
        must(
            &m,
            &format!("http_server_request_duration_seconds_count{{{head}}}")
        ),
        1.0
    );
    // The scheme a trusted proxy did not get to set stays http; 413s are
    // in the duration histogram too.
    let refused = "http_request_method=\"POST\",http_response_status_code=\"413\",network_protocol_version=\"1.1\",url_scheme=\"http\"";
    assert_eq!(
        must(
            &m,
            &format!("http_server_request_body_size_bytes_count{{{refused}}}")
        ),
        1.0
    );
    assert_eq!(
        must(
            &m,
            "http_server_active_requests{http_request_method=\"GET\",url_scheme=\"http\"}"
        ),
        0.0
    );

    let gw = |reason: &str, code: u16| {
        must(
            &m,
            &format!(
                "maitred_gateway_responses_total{{http_response_status_code=\"{code}\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(gw("app_error", 500), 2.0);
    assert_eq!(gw("body_too_large", 413), 1.0);
    // The unparsable head (hyper) and the malformed X-Forwarded-For.
    assert_eq!(gw("bad_request", 400), 2.0);
    assert_eq!(gw("queue_full", 503), 0.0);

    assert_eq!(
        must(
            &m,
            "maitred_app_exceptions_total{exception_type=\"ValueError\"}"
        ),
        1.0
    );
    assert_eq!(
        must(
            &m,
            "maitred_app_exceptions_total{exception_type=\"behaviours.AppSpecificError\"}"
        ),
        1.0
    );
    assert_eq!(
        must(
            &m,
            "maitred_proxy_headers_rejected_total{header=\"x-forwarded-proto\",reason=\"not_in_proxy_headers\"}"
        ),
        1.0
    );
    assert_eq!(
        must(
            &m,
            "maitred_proxy_headers_rejected_total{header=\"x-forwarded-for\",reason=\"malformed\"}"
        ),
        1.0
    );
    assert!(must(&m, "maitred_connections_accepted_total") >= 12.0);
    assert_eq!(must(&m, "maitred_python_threads"), 2.0);
    assert_eq!(must(&m, "maitred_connection_limit"), 1024.0);
    assert_eq!(must(&m, "maitred_request_queue_limit"), 100.0);
    assert!(must(&m, "maitred_request_queue_wait_seconds_count") >= 9.0);
    assert!(must(&m, "cpython_gc_collections_total{generation=\"2\"}") >= 1.0);
    assert!(must(&m, "process_resident_memory_bytes") > 1e6);
    let build = m
        .lines()
        .find(|l| l.starts_with("maitred_build_info{"))
        .expect("build info");
    assert!(build.contains("python_version=\"3.11."), "{build}");
    assert!(build.ends_with("} 1"), "{build}");
    // Nothing a client chose became a label value.
    assert!(!m.contains("PROPFIND") && !m.contains("not-an-address") && !m.contains("/environ"));

    let mut check = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(m.as_bytes())
        .expect("feed promtool");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn saturation_shows_while_it_happens() {
    let s = server()
        .args([
            "--threads=1",
            "--limits-max-queue=1",
            "--connection-limit=3",
            "--limits-header-timeout=1",
            "behaviours:app",
        ])
        .start();
    // One request runs, one waits, the third is refused with 503.
    let sleepers: Vec<_> = (0..2)
        .map(|i| {
            let mut c = s.connect();
            c.write_all(b"GET /sleep?1.5 HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("send");
            if i == 0 {
                std::thread::sleep(Duration::from_millis(300));
            }
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let m = scrape(&s);
    assert_eq!(must(&m, "maitred_python_threads_busy"), 1.0);
    assert_eq!(must(&m, "maitred_request_queue_depth"), 1.0);
    assert_eq!(must(&m, "maitred_connections_active"), 2.0);
    assert_eq!(
        must(
            &m,
            "http_server_active_requests{http_request_method=\"GET\",url_scheme=\"http\"}"
        ),
        2.0
    );
    let r = raw(&s, "GET /environ HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 503);
    let mut sleepers = sleepers;
    for c in &sleepers {
        c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut r = BufReader::new(c.try_clone().expect("clone"));
        assert_eq!(read_response(&mut r).expect("slept").status, 200);
    }
    // Both sleepers' connections stay open, idle; a third fills the
    // connection limit (3); a fourth makes room by closing the idlest.
    let mut third = s.connect();
    third
        .write_all(b"GET /environ HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    let mut r = BufReader::new(third.try_clone().expect("clone"));
    assert_eq!(read_response(&mut r).expect("response").status, 200);
    let newcomer = s.connect();
    assert!(
        common::is_closed(&mut sleepers[0], Duration::from_secs(5)),
        "the idlest connection is evicted"
    );
    drop(newcomer);
    // A head that never completes is cut off by header_timeout.
    let mut slow = s.connect();
    slow.write_all(b"GET / HTTP/1.1\r\nHost:").expect("send");
    assert!(
        common::is_closed(&mut slow, Duration::from_secs(5)),
        "slow head cut off"
    );
    std::thread::sleep(Duration::from_millis(100));
    let m = scrape(&s);
    assert_eq!(
        must(
            &m,
            "maitred_gateway_responses_total{http_response_status_code=\"503\",reason=\"queue_full\"}"
        ),
        1.0
    );
    assert!(
        must(&m, "maitred_connection_limit_reached_total") >= 1.0,
        "{m}\n{}",
        s.log()
    );
    assert!(must(&m, "maitred_connections_evicted_total") >= 1.0);
    assert_eq!(
        must(&m, "maitred_connection_timeouts_total{timeout=\"header\"}"),
        1.0
    );
    assert_eq!(must(&m, "maitred_python_threads_busy"), 0.0);
    assert_eq!(must(&m, "maitred_request_queue_depth"), 0.0);
    // Queue wait: the second sleeper waited about as long as the first ran.
    let waited = must(&m, "maitred_request_queue_wait_seconds_bucket{le=\"0.5\"}");
    let all = must(&m, "maitred_request_queue_wait_seconds_count");
    assert!(
        waited < all,
        "one request waited over 0.5 s: {waited} of {all}"
    );
}

/// Grafana variables replaced by values PromQL accepts, as Grafana would.
fn substitute(expr: &str) -> String {
    let mut out = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    // ${var}, ${var:format} and $var → a plain value.
    while let Some(start) = out.find("${") {
        let end = out[start..].find('}').map_or(out.len(), |e| start + e + 1);
        out.replace_range(start..end, "x");
    }
    while let Some(start) = out.find('$') {
        let len = out[start + 1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(out.len() - start - 1);
        out.replace_range(start..start + 1 + len, "x");
    }
    out
}

struct Names(BTreeSet<String>);

impl promql_parser::util::ExprVisitor for Names {
    type Error = std::convert::Infallible;
    fn pre_visit(&mut self, e: &promql_parser::parser::Expr) -> Result<bool, Self::Error> {
        use promql_parser::parser::Expr;
        match e {
            Expr::VectorSelector(v) => {
                if let Some(n) = &v.name {
                    self.0.insert(n.clone());
                }
            }
            Expr::MatrixSelector(m) => {
                if let Some(n) = &m.vs.name {
                    self.0.insert(n.clone());
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

fn metric_names(expr: &str, origin: &str) -> BTreeSet<String> {
    let parsed = promql_parser::parser::parse(expr)
        .unwrap_or_else(|e| panic!("{origin}: not PromQL ({e}): {expr}"));
    let mut names = Names(BTreeSet::new());
    promql_parser::util::walk_expr(&mut names, &parsed).expect("walk");
    names.0
}

/// Every panel, including those inside collapsed rows.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    while let Some(p) = stack.pop() {
        if let Some(inner) = p["panels"].as_array() {
            stack.extend(inner.iter());
        }
        out.push(p);
    }
    out
}

fn dashboard_exprs() -> Vec<(String, String)> {
    let dir = common::project_dir().join("dashboards");
    let mut exprs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("dashboards/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read dashboard");
        let d: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let name = file.display().to_string();
        assert!(
            d["uid"].is_string() && d["title"].is_string(),
            "{name}: uid and title"
        );
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .map(|l| l.iter().filter_map(|v| v["name"].as_str()).collect())
            .unwrap_or_default();
        for var in ["datasource", "job", "instance"] {
            assert!(vars.contains(&var), "{name}: no `{var}` variable");
        }
        let mut ids = BTreeSet::new();
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or("?");
            assert!(
                ids.insert(p["id"].to_string()),
                "{name}: panel id {} twice",
                p["id"]
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{name}: panel {title:?} datasource"
            );
            assert!(
                p["fieldConfig"]["defaults"]["unit"].is_string(),
                "{name}: panel {title:?} has no unit"
            );
            assert!(
                p["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{name}: panel {title:?} has no description"
            );
            for t in p["targets"].as_array().into_iter().flatten() {
                let Some(expr) = t["expr"].as_str() else {
                    continue;
                };
                for f in ["rate(", "increase("] {
                    for (i, _) in expr.match_indices(f) {
                        let window = &expr[i..];
                        let close = window.find(')').unwrap_or(window.len());
                        assert!(
                            window[..close].contains("[$__rate_interval]"),
                            "{name}: panel {title:?}: {f} without $__rate_interval: {expr}"
                        );
                    }
                }
                exprs.push((format!("{name}: panel {title:?}"), expr.to_owned()));
            }
        }
    }
    exprs
}

fn rules_file() -> PathBuf {
    common::project_dir().join("deploy/prometheus/rules.yaml")
}

/// (origin, expression) of every rule, and the names recording rules define.
fn rule_exprs() -> (Vec<(String, String)>, BTreeSet<String>) {
    let text = std::fs::read_to_string(rules_file()).expect("deploy/prometheus/rules.yaml");
    let doc: serde_json::Value = serde_norway::from_str(&text).expect("rules.yaml is YAML");
    let mut exprs = Vec::new();
    let mut recorded = BTreeSet::new();
    for group in doc["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["record"]
                .as_str()
                .or_else(|| rule["alert"].as_str())
                .expect("record or alert")
                .to_owned();
            if let Some(r) = rule["record"].as_str() {
                recorded.insert(r.to_owned());
            }
            let expr = rule["expr"].as_str().expect("expr").to_owned();
            exprs.push((format!("rules.yaml: {name}"), expr));
        }
    }
    (exprs, recorded)
}

#[test]
fn dashboards_and_rules_query_only_metrics_the_server_exposes() {
    let s = workload_server();
    run_workload(&s);
    std::thread::sleep(Duration::from_millis(100));
    let exposed = selectable(&scrape(&s));
    let (rules, recorded) = rule_exprs();
    let mut checked = 0;
    for (origin, expr) in dashboard_exprs().into_iter().chain(rules) {
        for name in metric_names(&substitute(&expr), &origin) {
            // `up` is Prometheus's own series for every scrape target.
            let known = exposed.contains(&name) || recorded.contains(&name) || name == "up";
            assert!(
                known,
                "{origin} queries `{name}`, which maitred does not expose"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} metric references found");
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let rules = rules_file();
    let tests = common::project_dir().join("deploy/prometheus/rules.test.yaml");
    for args in [
        vec!["check".into(), "rules".into(), rules.display().to_string()],
        vec!["test".into(), "rules".into(), tests.display().to_string()],
    ] {
        let out = Command::new(promtool())
            .args(&args)
            .output()
            .expect("run promtool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {}: {text}", args.join(" "));
        assert!(
            text.contains("SUCCESS"),
            "promtool {}: {text}",
            args.join(" ")
        );
    }
}

/// `| `name` | type | `label`, `label` | meaning |` rows of docs/metrics.md.
fn documented() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let text = std::fs::read_to_string(common::project_dir().join("docs/metrics.md"))
        .expect("docs/metrics.md");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() < 4 || !cells[0].starts_with('`') {
            continue;
        }
        let name = cells[0].trim_matches('`').to_owned();
        let labels = cells[2]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_owned())
            .filter(|l| !l.is_empty() && l != "—" && l != "-")
            .collect();
        out.insert(name, (cells[1].to_owned(), labels));
    }
    out
}

#[test]
fn docs_metrics_md_matches_the_live_scrape() {
    let s = workload_server();
    run_workload(&s);
    std::thread::sleep(Duration::from_millis(100));
    let m = scrape(&s);
    let live = families(&m);
    let docs = documented();
    let live_names: BTreeSet<&String> = live.keys().collect();
    let doc_names: BTreeSet<&String> = docs.keys().collect();
    assert_eq!(
        live_names, doc_names,
        "docs/metrics.md and the scrape list different metrics"
    );
    for (name, kind) in &live {
        let (doc_kind, doc_labels) = &docs[name];
        assert_eq!(doc_kind, kind, "docs/metrics.md: type of {name}");
        assert_eq!(
            doc_labels,
            &label_names(&m, name, kind),
            "docs/metrics.md: labels of {name}"
        );
    }
}

/// Access-log lines in the server's output (stdout and stderr are merged
/// by the harness; server log lines carry a level, access lines do not).
fn access_lines(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter(|l| !l.contains(" INFO ") && !l.contains(" WARN ") && !l.contains(" ERROR "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn access_log_is_off_by_default() {
    let s = server().arg("behaviours:app").start();
    assert_eq!(s.get("/environ?quiet=1").status, 200);
    std::thread::sleep(Duration::from_millis(200));
    assert!(access_lines(&s.log(), "quiet=1").is_empty(), "{}", s.log());
}

#[test]
fn access_log_combined_shows_the_resolved_client_and_bytes_sent() {
    let s = server()
        .args([
            "--log-access",
            "--trusted-proxy=127.0.0.1",
            "--trusted-proxy-headers=x-forwarded-for",
            "behaviours:app",
        ])
        .start();
    let r = raw(
        &s,
        "GET /environ?combined=1 HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 198.51.100.4\r\nUser-Agent: probe/1 \"quoted\"\r\nReferer: http://ref.example/\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let len = r.body.len();
    assert!(s.wait_for_log("combined=1", Duration::from_secs(5)));
    let lines = access_lines(&s.log(), "combined=1");
    assert_eq!(lines.len(), 1, "{}", s.log());
    let line = &lines[0];
    assert!(line.starts_with("198.51.100.4 - - ["), "{line}");
    assert!(
        line.contains("+0000] \"GET /environ?combined=1 HTTP/1.1\" 200 "),
        "{line}"
    );
    assert!(
        line.ends_with(&format!(
            " 200 {len} \"http://ref.example/\" \"probe/1 \\\"quoted\\\"\""
        )),
        "{line}"
    );
    // A refusal is logged too, with the gateway's status.
    let r = raw(&s, "CONNECT x:1 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 405);
    assert!(s.wait_for_log("\"CONNECT x:1 HTTP/1.1\" 405", Duration::from_secs(5)));
}

#[test]
fn access_log_json_measures_the_whole_response() {
    let s = server()
        .args([
            "--log-access",
            "--log-access-format=json",
            "--log-format=json",
            "behaviours:app",
        ])
        .start();
    // 50 chunks 50 ms apart: the app returns at once, the body takes
    // about 2.5 s; the logged duration must cover the body.
    let mut c = s.connect();
    c.write_all(b"GET /slow-stream?json=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("send");
    let body = common::read_to_close(&mut c);
    assert!(body.starts_with(b"HTTP/1.1 200"));
    assert!(s.wait_for_log("json=1", Duration::from_secs(5)));
    let line = s
        .log()
        .lines()
        .find(|l| l.contains("\"url.query\":\"json=1\""))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no access line in\n{}", s.log()));
    let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(v["http.request.method"], "GET");
    assert_eq!(v["url.path"], "/slow-stream");
    assert_eq!(v["http.response.status_code"], 200);
    assert_eq!(v["client.address"], "127.0.0.1");
    assert_eq!(v["http.response.body.size"], 250);
    let took = v["http.server.request.duration"]
        .as_f64()
        .expect("duration");
    assert!((2.0..30.0).contains(&took), "duration {took}");
    assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
}
