//! One scrape for all worker processes: the text expositions of the
//! workers (and the supervisor's own) merged series by series.
//!
//! The rules follow from what each series means for the pod as a whole:
//! counters, histograms and most gauges add up (requests, connections,
//! busy threads, memory, the connection limits of all workers together);
//! a few gauges describe one fact shared by all and take the maximum
//! (`maitred_build_info`, `process_max_fds`) or the minimum
//! (`process_start_time_seconds`).
//!
//! Counters must never go backwards when a worker is replaced, so the
//! last exposition seen from a worker that exits is kept as "retired":
//! its counters and histograms stay in the sum, its gauges are dropped.
//! Counts a worker made after its last exposition was read are lost if it
//! dies; the supervisor reads every worker every few seconds to keep that
//! window small.

use std::collections::HashMap;

/// A parsed exposition: families in order, each with its samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    families: Vec<ParsedFamily>,
}

#[derive(Debug, Clone, PartialEq)]
struct ParsedFamily {
    name: String,
    kind: String,
    help: Option<String>,
    /// `name{labels}` → value, in first-seen order.
    samples: Vec<(String, f64)>,
}

/// How a gauge combines across processes.
fn combine(family: &str, kind: &str, a: f64, b: f64) -> f64 {
    if kind != "gauge" {
        return a + b;
    }
    match family {
        "maitred_build_info" | "process_max_fds" => a.max(b),
        "process_start_time_seconds" => {
            if a == 0.0 {
                b
            } else if b == 0.0 {
                a
            } else {
                a.min(b)
            }
        }
        _ => a + b,
    }
}

impl Exposition {
    /// Parses the text format as the `prometheus` crate writes it. Lines
    /// that do not parse are skipped: an exposition is maitred's own
    /// output, never a client's.
    pub fn parse(text: &str) -> Exposition {
        let mut out = Exposition::default();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut help: HashMap<String, String> = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                if let Some((name, text)) = rest.split_once(' ') {
                    help.insert(name.to_owned(), text.to_owned());
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some((name, kind)) = rest.split_once(' ') {
                    index.insert(name.to_owned(), out.families.len());
                    out.families.push(ParsedFamily {
                        name: name.to_owned(),
                        kind: kind.to_owned(),
                        help: help.remove(name),
                        samples: Vec::new(),
                    });
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Some(value) = parse_value(value) else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            let family = index
                .get(name)
                .or_else(|| {
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s).and_then(|base| index.get(base)))
                })
                .copied();
            if let Some(i) = family {
                out.families[i].samples.push((series.to_owned(), value));
            }
        }
        out
    }

    /// Adds `other` into this exposition by the rules above; families and
    /// series new to this one are appended.
    pub fn absorb(&mut self, other: &Exposition) {
        for theirs in &other.families {
            let mine = match self.families.iter().position(|f| f.name == theirs.name) {
                Some(i) => &mut self.families[i],
                None => {
                    self.families.push(ParsedFamily {
                        samples: Vec::new(),
                        ..theirs.clone()
                    });
                    self.families.last_mut().expect("just pushed")
                }
            };
            if mine.help.is_none() {
                mine.help.clone_from(&theirs.help);
            }
            for (series, value) in &theirs.samples {
                match mine.samples.iter_mut().find(|(s, _)| s == series) {
                    Some((_, v)) => *v = combine(&mine.name, &mine.kind, *v, *value),
                    None => mine.samples.push((series.clone(), *value)),
                }
            }
        }
    }

    /// The part that must outlive a worker: counters and histograms.
    pub fn retained(&self) -> Exposition {
        Exposition {
            families: self
                .families
                .iter()
                .filter(|f| f.kind != "gauge")
                .cloned()
                .collect(),
        }
    }

    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(32 * 1024);
        for f in &self.families {
            if let Some(help) = &f.help {
                let _ = writeln!(out, "# HELP {} {}", f.name, help);
            }
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
            for (series, value) in &f.samples {
                let _ = writeln!(out, "{series} {}", format_value(*value));
            }
        }
        out
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        // Rust prints integral floats without a fraction ("3"), which the
        // text format accepts, and never uses an exponent that Prometheus
        // would reject.
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "\
# HELP reqs_total Requests.
# TYPE reqs_total counter
reqs_total{code=\"200\"} 5
reqs_total{code=\"500\"} 1
# HELP busy Busy threads.
# TYPE busy gauge
busy 2
# HELP lat Latency.
# TYPE lat histogram
lat_bucket{le=\"0.1\"} 3
lat_bucket{le=\"+Inf\"} 4
lat_sum 0.25
lat_count 4
# HELP maitred_build_info Build.
# TYPE maitred_build_info gauge
maitred_build_info{version=\"1\"} 1
# HELP process_start_time_seconds Start.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1000
";

    const B: &str = "\
# HELP reqs_total Requests.
# TYPE reqs_total counter
reqs_total{code=\"200\"} 7
reqs_total{code=\"404\"} 2
# HELP busy Busy threads.
# TYPE busy gauge
busy 1
# HELP lat Latency.
# TYPE lat histogram
lat_bucket{le=\"0.1\"} 1
lat_bucket{le=\"+Inf\"} 1
lat_sum 0.05
lat_count 1
# HELP maitred_build_info Build.
# TYPE maitred_build_info gauge
maitred_build_info{version=\"1\"} 1
# HELP process_start_time_seconds Start.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 900
";

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(parse_value)
    }

    #[test]
    fn series_add_up_by_kind() {
        let mut merged = Exposition::parse(A);
        merged.absorb(&Exposition::parse(B));
        let text = merged.render();
        assert_eq!(value(&text, "reqs_total{code=\"200\"}"), Some(12.0));
        assert_eq!(value(&text, "reqs_total{code=\"500\"}"), Some(1.0));
        assert_eq!(value(&text, "reqs_total{code=\"404\"}"), Some(2.0));
        assert_eq!(value(&text, "busy"), Some(3.0));
        assert_eq!(value(&text, "lat_bucket{le=\"+Inf\"}"), Some(5.0));
        let sum = value(&text, "lat_sum").expect("lat_sum");
        assert!((sum - 0.3).abs() < 1e-9, "{sum}");
        assert_eq!(value(&text, "lat_count"), Some(5.0));
        assert_eq!(value(&text, "maitred_build_info{version=\"1\"}"), Some(1.0));
        assert_eq!(value(&text, "process_start_time_seconds"), Some(900.0));
        // HELP and TYPE once per family, samples after their TYPE.
        assert_eq!(text.matches("# TYPE reqs_total counter").count(), 1);
        assert_eq!(Exposition::parse(&text), merged);
    }

    #[test]
    fn a_retired_worker_keeps_its_counters_but_not_its_gauges() {
        let retired = Exposition::parse(A).retained();
        let mut total = Exposition::default();
        total.absorb(&retired);
        total.absorb(&Exposition::parse(B));
        let text = total.render();
        assert_eq!(value(&text, "reqs_total{code=\"200\"}"), Some(12.0));
        assert_eq!(value(&text, "busy"), Some(1.0));
        assert_eq!(value(&text, "lat_count"), Some(5.0));
    }

    #[test]
    fn the_merge_of_a_real_scrape_passes_its_own_parse() {
        let m = crate::metrics::get();
        let text = m.render();
        let mut merged = Exposition::parse(&text);
        merged.absorb(&Exposition::parse(&text));
        let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let rendered = merged.render();
        assert_eq!(
            rendered
                .lines()
                .filter(|l| l.starts_with("# TYPE "))
                .count(),
            families
        );
        assert_eq!(
            rendered.lines().filter(|l| !l.starts_with('#')).count(),
            text.lines().filter(|l| !l.starts_with('#')).count()
        );
    }
}
