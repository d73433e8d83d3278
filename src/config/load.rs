//! Loading settings: built-in defaults < TOML file < `MAITRED_*` environment
//! < command-line flags, through figment, and turning every failure into a
//! message that names the key, the value and where the value came from.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use super::plan::Plan;
use super::registry::{self, Availability, SETTINGS};
use super::{Problem, Settings};

const DEFAULTS: &str = "built-in defaults";
const ENVIRONMENT: &str = "environment";
const COMMAND_LINE: &str = "command line";
const ENV_PREFIX: &str = registry::ENV_PREFIX;

/// `MAITRED_*` variables that are not settings. `CONFIG` names the file;
/// `BIN` and `ARGS` are read by the benchmark harness, which passes its whole
/// environment to the server.
const NOT_SETTINGS: &[&str] = &["config", "bin", "args"];

/// What the command line contributes: the settings file it names and the
/// flags it was given.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    /// `--config FILE`; `None` falls back to `MAITRED_CONFIG`.
    pub file: Option<PathBuf>,
    /// The flags given, as a nested dictionary keyed like the TOML file.
    pub flags: Dict,
}

/// Settings after a successful load: the plan built from them, and the
/// figment they came from so `config show` can say where each value was
/// set.
#[derive(Debug)]
pub struct Loaded {
    pub settings: Settings,
    pub plan: Plan,
    pub figment: Figment,
    /// Which file was read, if any.
    pub file: Option<PathBuf>,
    /// `MAITRED_*` variables skipped as Kubernetes service links.
    pub skipped_env: Vec<String>,
}

/// Everything wrong with the configuration, one message per problem.
#[derive(Debug)]
pub struct LoadError {
    pub problems: Vec<String>,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

impl LoadError {
    fn one(problem: String) -> Self {
        LoadError {
            problems: vec![problem],
        }
    }
}

/// A provider under a name of our choosing, so provenance reads well.
struct Named<P> {
    name: &'static str,
    inner: P,
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}

/// Which settings file to read: `--config` wins over `MAITRED_CONFIG`.
fn config_file(layers: &Layers) -> Result<Option<(PathBuf, &'static str)>, LoadError> {
    let (path, origin) = match (&layers.file, std::env::var_os("MAITRED_CONFIG")) {
        (Some(p), _) => (p.clone(), "--config"),
        (None, Some(p)) if !p.is_empty() => (PathBuf::from(p), "MAITRED_CONFIG"),
        _ => return Ok(None),
    };
    // figment treats a missing file as empty; a file someone named must exist.
    if !path.is_file() {
        let why = if path.exists() {
            "is not a regular file"
        } else {
            "does not exist"
        };
        return Err(LoadError::one(format!(
            "config file {} (given by {origin}) {why}",
            path.display()
        )));
    }
    Ok(Some((path, origin)))
}

/// Kubernetes injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_SERVICE_PORT[_NAME]`,
/// `<SERVICE>_PORT=tcp://ip:port` and `<SERVICE>_PORT_<n>_<PROTO>[_ADDR|_PORT|_PROTO]`
/// into every pod for every Service in its namespace; a Service named
/// `maitred` therefore produces `MAITRED_*` variables that are not settings.
/// Those exact shapes are skipped (and listed at debug level). Anything
/// else unknown, including `MAITRED_PORT=9000` typed by a person, is still
/// an error.
fn is_service_link(key: &str, value: &str) -> bool {
    let key = key.to_ascii_uppercase();
    let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
        return false;
    };
    let url = |v: &str| {
        ["tcp://", "udp://", "sctp://"]
            .iter()
            .any(|p| v.starts_with(p))
    };
    if rest == "SERVICE_HOST" || rest == "SERVICE_PORT" || rest.starts_with("SERVICE_PORT_") {
        return true;
    }
    if rest == "PORT" {
        return url(value);
    }
    // PORT_<n>_<PROTO> and its _ADDR/_PORT/_PROTO companions.
    let mut parts = rest.split('_');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()),
        (Some("PORT"), Some(n), Some("TCP" | "UDP" | "SCTP"), None | Some("ADDR" | "PORT" | "PROTO"), None)
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    )
}

/// The `MAITRED_*` variable names that are Kubernetes service links.
fn service_links(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<String> {
    vars.filter_map(|(k, v)| {
        let (k, v) = (k.to_str()?.to_owned(), v.to_string_lossy().into_owned());
        is_service_link(&k, &v).then_some(k)
    })
    .collect()
}

pub fn figment(layers: &Layers, file: Option<&Path>) -> Figment {
    let mut fig = Figment::new().merge(Named {
        name: DEFAULTS,
        inner: Serialized::defaults(Settings::default()),
    });
    if let Some(path) = file {
        fig = fig.merge(Toml::file_exact(path));
    }
    let mut ignored: Vec<String> = NOT_SETTINGS.iter().map(|s| (*s).to_owned()).collect();
    ignored.extend(
        service_links(std::env::vars_os())
            .iter()
            .map(|k| k[ENV_PREFIX.len()..].to_ascii_lowercase()),
    );
    let ignored: Vec<&str> = ignored.iter().map(String::as_str).collect();
    fig.merge(Named {
        name: ENVIRONMENT,
        inner: Env::prefixed(ENV_PREFIX).split("__").ignore(&ignored),
    })
    .merge(Named {
        name: COMMAND_LINE,
        inner: Serialized::defaults(layers.flags.clone()),
    })
}

/// Loads and type-checks the settings and builds the plan from them.
pub fn load(layers: &Layers) -> Result<Loaded, LoadError> {
    let file = config_file(layers)?;
    let fig = figment(layers, file.as_ref().map(|(p, _)| p.as_path()));
    // serde stops at the first unknown field; listing them all up front lets
    // one start-up report every typo.
    let unknown = unknown_keys(&fig);
    if !unknown.is_empty() {
        return Err(LoadError { problems: unknown });
    }
    let settings: Settings = fig.extract().map_err(|e| LoadError {
        problems: e.into_iter().map(|e| render_figment_error(&e)).collect(),
    })?;

    let (plan, mut problems) = match Plan::build(&settings) {
        Ok(plan) => (Some(plan), Vec::new()),
        Err(found) => (
            None,
            found.iter().map(|p| render_problem(&fig, p)).collect(),
        ),
    };
    problems.extend(pending_problems(SETTINGS, &settings, &fig));
    let (Some(plan), true) = (plan, problems.is_empty()) else {
        return Err(LoadError { problems });
    };
    Ok(Loaded {
        settings,
        plan,
        figment: fig,
        file: file.map(|(p, _)| p),
        skipped_env: service_links(std::env::vars_os()),
    })
}

/// Every key in the merged data that is not a setting, described with its
/// source and the closest real key.
fn unknown_keys(fig: &Figment) -> Vec<String> {
    fn walk(fig: &Figment, prefix: &str, dict: &Dict, out: &mut Vec<String>) {
        for (name, value) in dict {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            let is_table = SETTINGS
                .iter()
                .any(|s| s.key.starts_with(&format!("{key}.")));
            if is_table {
                if let Value::Dict(_, inner) = value {
                    walk(fig, &key, inner, out);
                }
                continue;
            }
            if registry::by_key(&key).is_some() {
                continue;
            }
            let source = fig
                .find_metadata(&key)
                .map(|md| describe_unknown_source(md, &key))
                .unwrap_or_else(|| "an unknown source".to_owned());
            let table = (!prefix.is_empty()).then_some(prefix);
            let hint = if matches!(key.as_str(), "host" | "port") {
                "; the address is set with `listen = [\"HOST:PORT\"]` (MAITRED_LISTEN); \
                 --host and --port exist only as command-line shorthands"
                    .to_owned()
            } else {
                suggest(name, table)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_else(|| "; `maitred config defaults` lists every setting".to_owned())
            };
            out.push(format!("{key}: unknown setting (from {source}){hint}"));
        }
    }
    let mut out = Vec::new();
    if let Ok(data) = fig.data() {
        if let Some(dict) = data.get(&Profile::Default) {
            walk(fig, "", dict, &mut out);
        }
    }
    out
}

/// Settings whose behaviour has not landed, set to something other than
/// their default (an explicit default changes nothing, and the reference
/// file lists every setting).
fn pending_problems(
    registry: &[registry::Setting],
    settings: &Settings,
    fig: &Figment,
) -> Vec<String> {
    let chosen = serde_json::to_value(settings).unwrap_or_default();
    let defaults = serde_json::to_value(Settings::default()).unwrap_or_default();
    let at = |v: &serde_json::Value, key: &str| {
        key.split('.').fold(v.clone(), |v, part| v[part].clone())
    };
    let mut problems = Vec::new();
    for s in registry {
        let Availability::Pending(work) = s.status else {
            continue;
        };
        let Some(md) = fig.find_metadata(s.key) else {
            continue;
        };
        if md.name != DEFAULTS && at(&chosen, s.key) != at(&defaults, s.key) {
            problems.push(format!(
                "{}: not yet supported by this version of maitred ({work} has not landed); \
                 remove it rather than rely on it (from {})",
                s.key,
                describe_source(md, s.key)
            ));
        }
    }
    problems
}

/// "flag --threads", "environment variable MAITRED_THREADS", ...
pub fn describe_source(md: &Metadata, key: &str) -> String {
    match md.name.as_ref() {
        DEFAULTS => "the built-in default".to_owned(),
        COMMAND_LINE => match registry::by_key(key) {
            Some(s) if s.key == "app" => "the command line".to_owned(),
            Some(s) => {
                let mut flags = vec![format!("--{}", s.flag())];
                flags.extend(s.aliases.iter().map(|a| format!("--{a}")));
                format!("flag {}", flags.join(" / "))
            }
            None => "the command line".to_owned(),
        },
        ENVIRONMENT => format!("environment variable {}", registry::env_var(key)),
        _ => match &md.source {
            Some(Source::File(path)) => format!("{} (key `{key}`)", path.display()),
            _ => md.name.to_string(),
        },
    }
}

fn render_problem(fig: &Figment, p: &Problem) -> String {
    let value = fig
        .find_value(p.key)
        .map(|v| render_value(&v))
        .unwrap_or_else(|_| "unset".to_owned());
    let source = fig
        .find_metadata(p.key)
        .map(|md| describe_source(md, p.key))
        .unwrap_or_else(|| "an unknown source".to_owned());
    format!("{}: {} (value {value}, from {source})", p.key, p.message)
}

/// A compact rendering of a figment value for messages.
fn render_value(v: &Value) -> String {
    match v {
        // Flags arrive as text; `--threads=0` reads better as 0 than "0".
        Value::String(_, s) if s.parse::<f64>().is_ok() => s.clone(),
        Value::String(_, s) => format!("{s:?}"),
        Value::Array(_, items) => {
            let inner: Vec<String> = items.iter().map(render_value).collect();
            format!("[{}]", inner.join(", "))
        }
        // figment splits numbers by sign and width; each accessor covers one
        // family.
        Value::Num(_, n) => n
            .to_u128()
            .map(|u| u.to_string())
            .or_else(|| n.to_i128().map(|i| i.to_string()))
            .or_else(|| n.to_f64().map(|f| f.to_string()))
            .unwrap_or_else(|| format!("{n:?}")),
        Value::Bool(_, b) => b.to_string(),
        Value::Dict(..) => "a table".to_owned(),
        other => format!("{other:?}"),
    }
}

fn render_figment_error(e: &figment::Error) -> String {
    use figment::error::Kind;

    let key = e.path.join(".");
    let source = e
        .metadata
        .as_ref()
        .map(|md| describe_source(md, &key))
        .unwrap_or_else(|| "an unknown source".to_owned());
    match &e.kind {
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!("{key}: invalid value {actual}, expected {expected} (from {source})")
        }
        Kind::UnknownField(field, _) => {
            // Normally caught by `unknown_keys` first; kept for safety.
            format!("{key}.{field}: unknown setting (from {source})")
        }
        Kind::Message(msg) => match &e.metadata {
            // A file that does not parse: say which, then the parser's own
            // report (it points at the line and column).
            Some(md) if key.is_empty() => match &md.source {
                Some(Source::File(path)) => {
                    format!(
                        "{} is not a valid settings file: {}",
                        path.display(),
                        msg.trim_end()
                    )
                }
                _ => format!("{} (in {})", msg.trim_end(), md.name),
            },
            Some(md) => format!(
                "{key}: {} (from {})",
                msg.trim_end(),
                describe_source(md, &key)
            ),
            None => msg.clone(),
        },
        _ => format!("{key}: {} (from {source})", e.kind),
    }
}

/// Unknown keys have no registry entry, so name the source by shape.
fn describe_unknown_source(md: &Metadata, key: &str) -> String {
    match md.name.as_ref() {
        ENVIRONMENT => format!("environment variable {}", registry::env_var(key)),
        _ => match &md.source {
            Some(Source::File(path)) => path.display().to_string(),
            _ => md.name.to_string(),
        },
    }
}

/// The closest known key, for "did you mean": first within the same table,
/// then anywhere (a setting put in the wrong table, such as
/// `max_request_body_size` at the top level).
fn suggest(field: &str, table: Option<&str>) -> Option<String> {
    let mut best: Option<(f64, &str)> = None;
    for s in SETTINGS {
        let (s_table, leaf) = match s.key.rsplit_once('.') {
            Some((t, l)) => (Some(t), l),
            None => (None, s.key),
        };
        let bonus = if s_table == table { 0.01 } else { 0.0 };
        let score = strsim::jaro_winkler(field, leaf) + bonus;
        if score > 0.8 && best.is_none_or(|(b, _)| score > b) {
            best = Some((score, s.key));
        }
    }
    best.map(|(_, key)| key.to_owned())
}

#[cfg(test)]
// figment's Jail closures return figment::Error, which is large by design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    /// The layers a command line would give: an optional `--config` file
    /// and flags as `(dotted key, value)`.
    fn invocation(file: Option<&str>, flags: &[(&str, &str)]) -> Layers {
        let mut dict = Dict::new();
        for (key, value) in flags {
            let mut parts: Vec<&str> = key.split('.').collect();
            let leaf = parts.pop().expect("a key");
            let mut table = &mut dict;
            for part in parts {
                let entry = table
                    .entry(part.to_owned())
                    .or_insert_with(|| Value::from(Dict::new()));
                let Value::Dict(_, inner) = entry else {
                    panic!("{part} is a table");
                };
                table = inner;
            }
            table.insert(leaf.to_owned(), Value::from(*value));
        }
        Layers {
            file: file.map(PathBuf::from),
            flags: dict,
        }
    }

    #[test]
    fn precedence_defaults_file_env_flags() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "m.toml",
                "threads = 2\nident = \"file\"\nurl_scheme = \"https\"\n",
            )?;
            jail.set_env("MAITRED_THREADS", "3");
            jail.set_env("MAITRED_IDENT", "env");
            let inv = invocation(Some("m.toml"), &[("threads", "5")]);
            let loaded = load(&inv).map_err(|e| e.to_string())?;
            assert_eq!(loaded.settings.threads, 5, "flag beats env");
            assert_eq!(loaded.settings.ident, "env", "env beats file");
            assert_eq!(loaded.settings.url_scheme, "https", "file beats default");
            assert_eq!(loaded.settings.backlog, 4096, "default remains");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_key_value_and_source() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("MAITRED_LIMITS__MAX_REQUEST_BODY_SIZE", "10q");
            let err = load(&invocation(None, &[])).expect_err("invalid");
            let msg = err.to_string();
            assert!(msg.contains("limits.max_request_body_size"), "{msg}");
            assert!(msg.contains("\"10q\""), "{msg}");
            assert!(
                msg.contains("MAITRED_LIMITS__MAX_REQUEST_BODY_SIZE"),
                "{msg}"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.clear_env();
            let err = load(&invocation(None, &[("threads", "0")])).expect_err("invalid");
            let msg = err.to_string();
            assert!(msg.contains("threads: must be at least 1"), "{msg}");
            assert!(msg.contains("value 0"), "{msg}");
            assert!(msg.contains("flag --threads"), "{msg}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors_with_suggestions() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("m.toml", "threadz = 2\n[limits]\nmax_request_body = 1\n")?;
            let err = load(&invocation(Some("m.toml"), &[])).expect_err("unknown");
            let msg = err.to_string();
            assert!(msg.contains("threadz: unknown setting"), "{msg}");
            assert!(msg.contains("did you mean `threads`"), "{msg}");
            assert!(
                msg.contains("did you mean `limits.max_request_body_size`"),
                "{msg}"
            );
            Ok(())
        });
    }

    #[test]
    fn missing_config_file_is_an_error() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let err = load(&invocation(Some("nope.toml"), &[])).expect_err("missing");
            assert!(
                err.to_string()
                    .contains("nope.toml (given by --config) does not exist")
            );
            jail.set_env("MAITRED_CONFIG", "gone.toml");
            let err = load(&invocation(None, &[])).expect_err("missing");
            assert!(err.to_string().contains("(given by MAITRED_CONFIG)"));
            Ok(())
        });
    }

    #[test]
    fn pending_settings_are_refused_unless_left_at_their_default() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let pending = [registry::Setting {
                status: Availability::Pending("some future work"),
                ..*registry::by_key("threads").expect("threads")
            }];
            let inv = invocation(None, &[("threads", "8")]);
            let fig = figment(&inv, None);
            let settings: Settings = fig.extract().map_err(|e| e.to_string())?;
            let problems = pending_problems(&pending, &settings, &fig);
            assert_eq!(problems.len(), 1);
            assert!(problems[0].starts_with(
                "threads: not yet supported by this version of maitred (some future work"
            ));
            assert!(
                problems[0].ends_with("(from flag --threads)"),
                "{}",
                problems[0]
            );

            let inv = invocation(None, &[("threads", "4")]);
            let fig = figment(&inv, None);
            let settings: Settings = fig.extract().map_err(|e| e.to_string())?;
            assert!(
                pending_problems(&pending, &settings, &fig).is_empty(),
                "the default changes nothing"
            );
            Ok(())
        });
    }

    #[test]
    fn kubernetes_service_links_are_recognised_exactly() {
        for (k, v) in [
            ("MAITRED_PORT", "tcp://10.0.0.1:80"),
            ("MAITRED_SERVICE_HOST", "10.0.0.1"),
            ("MAITRED_SERVICE_PORT", "80"),
            ("MAITRED_SERVICE_PORT_HTTP", "80"),
            ("MAITRED_PORT_80_TCP", "tcp://10.0.0.1:80"),
            ("MAITRED_PORT_80_TCP_ADDR", "10.0.0.1"),
            ("MAITRED_PORT_80_TCP_PORT", "80"),
            ("MAITRED_PORT_53_UDP_PROTO", "udp"),
        ] {
            assert!(is_service_link(k, v), "{k}={v}");
        }
        for (k, v) in [
            ("MAITRED_PORT", "9000"),
            ("MAITRED_THREADS", "4"),
            ("MAITRED_PORT_X_TCP", "x"),
            ("MAITRED_PORT_80_TCP_EXTRA", "x"),
            ("OTHER_PORT", "tcp://1.2.3.4:5"),
        ] {
            assert!(!is_service_link(k, v), "{k}={v}");
        }
    }

    #[test]
    fn service_links_do_not_break_loading() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("MAITRED_PORT", "tcp://10.0.0.1:80");
            jail.set_env("MAITRED_PORT_80_TCP_ADDR", "10.0.0.1");
            jail.set_env("MAITRED_SERVICE_HOST", "10.0.0.1");
            jail.set_env("MAITRED_THREADS", "6");
            let loaded = load(&invocation(None, &[])).map_err(|e| e.to_string())?;
            assert_eq!(loaded.settings.threads, 6);
            assert_eq!(loaded.skipped_env.len(), 3);
            jail.set_env("MAITRED_PORT", "9000");
            let err =
                load(&invocation(None, &[])).expect_err("a person's MAITRED_PORT is an error");
            assert!(err.to_string().contains("port: unknown setting"), "{err}");
            assert!(err.to_string().contains("MAITRED_LISTEN"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn environment_strings_fill_typed_fields() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("MAITRED_IDENT", "123");
            jail.set_env("MAITRED_EXPOSE_TRACEBACKS", "yes");
            jail.set_env("MAITRED_LIMITS__INBUF_OVERFLOW", "1MiB");
            jail.set_env("MAITRED_LISTEN", "127.0.0.1:1, 127.0.0.1:2");
            jail.set_env("MAITRED_BIN", "/not/a/setting");
            let s = load(&invocation(None, &[]))
                .map_err(|e| e.to_string())?
                .settings;
            assert_eq!(s.ident, "123");
            assert!(s.expose_tracebacks);
            assert_eq!(s.limits.inbuf_overflow.0, 1 << 20);
            assert_eq!(s.listen, vec!["127.0.0.1:1", "127.0.0.1:2"]);
            Ok(())
        });
    }
}
