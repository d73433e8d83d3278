//! The command line: `maitred [OPTIONS] [MODULE:CALLABLE]`, compatible with
//! `waitress-serve`.
//!
//! The flags are generated from the settings registry, so every setting has
//! a flag and the help text is the registry's. Parsing produces the
//! command-line *layer* for the loader: only the flags actually given, nested
//! by their TOML keys. Turning values into types is left to the settings'
//! deserializers, which is what gives flag errors the same shape as file and
//! environment errors.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use figment::value::{Dict, Value};

use crate::config::registry::{Kind, SETTINGS, Setting, WAITRESS_NO_OPS};
use crate::config::values::split_list;
use crate::config::{self, Layers, LoadError, render};

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Serve,
    Config(ConfigCommand),
}

/// The `config` subcommands, which inspect the settings and exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigCommand {
    /// `config show`: the effective settings with their sources.
    Show(ShowFormat),
    /// `config check`: validate, exit 0 or 2.
    Check,
    /// `config defaults`: the commented reference TOML.
    Defaults,
    /// `config docs` (hidden): the Markdown reference table.
    Docs,
}

/// How `config show` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowFormat {
    Toml,
    Json,
}

/// What the command line asked for.
#[derive(Debug)]
pub struct Invocation {
    pub action: Action,
    /// The settings file and the flags, for the loader.
    pub layers: Layers,
    /// Things worth telling the user once logging is up (no-op flags).
    pub notices: Vec<String>,
}

/// Exit status for a configuration mistake (as clap uses for usage errors).
pub const EXIT_CONFIG: u8 = 2;

/// Prints every problem of a configuration that does not load.
pub fn report(e: &LoadError) {
    eprintln!("maitred: invalid configuration:");
    for problem in &e.problems {
        eprintln!("  {}", problem.replace('\n', "\n    "));
    }
}

/// Runs a `config` subcommand; returns the exit status.
pub fn run_config(command: ConfigCommand, invocation: &Invocation) -> u8 {
    match command {
        ConfigCommand::Defaults => {
            print!("{}", render::defaults_toml());
            return 0;
        }
        ConfigCommand::Docs => {
            print!("{}", render::docs_table());
            return 0;
        }
        ConfigCommand::Show(_) | ConfigCommand::Check => {}
    }
    let loaded = match config::load(&invocation.layers) {
        Ok(loaded) => loaded,
        Err(e) => {
            report(&e);
            return EXIT_CONFIG;
        }
    };
    match command {
        ConfigCommand::Show(ShowFormat::Toml) => print!(
            "{}",
            render::show_toml(&loaded.settings, &loaded.figment, loaded.file.as_deref())
        ),
        ConfigCommand::Show(ShowFormat::Json) => {
            print!("{}", render::show_json(&loaded.settings, &loaded.figment));
        }
        ConfigCommand::Check | ConfigCommand::Defaults | ConfigCommand::Docs => {
            for notice in &invocation.notices {
                eprintln!("maitred: note: {notice}");
            }
            for var in &loaded.skipped_env {
                eprintln!(
                    "maitred: note: ignored {var} (a Kubernetes service link, not a setting)"
                );
            }
            match &loaded.file {
                Some(file) => println!(
                    "The configuration is valid (settings file {}).",
                    file.display()
                ),
                None => println!("The configuration is valid (no settings file)."),
            }
        }
    }
    0
}

/// A command-line mistake that clap cannot see (it only knows single flags).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

const NO_PREFIX: &str = "no:";

/// The command line; `version` is what `--version` prints after the name.
fn command(version: String) -> Command {
    let mut cmd = Command::new("maitred")
        .version(version)
        .about("A production WSGI server: hyper and tokio in front, embedded CPython behind.")
        .long_about(
            "A production WSGI server: hyper and tokio in front, embedded CPython behind.\n\n\
             Accepts waitress-serve's options. Every option is also a setting in the TOML file \
             (--config) and an environment variable (MAITRED_<KEY>, nesting with __). \
             Precedence: built-in defaults < file < environment < flags. \
             `maitred config show` prints the effective settings and where each came from.",
        )
        .override_usage("maitred [OPTIONS] [MODULE:CALLABLE]\n       maitred config <show|check|defaults> [OPTIONS]")
        .arg(
            Arg::new("target")
                .value_name("MODULE:CALLABLE")
                .help("WSGI application, e.g. myproject.wsgi:application; omit for the demo page"),
        )
        .arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .global(true)
                .value_parser(clap::value_parser!(PathBuf))
                .help("TOML settings file [env: MAITRED_CONFIG]"),
        )
        .arg(
            Arg::new("host")
                .long("host")
                .value_name("HOST")
                .global(true)
                .help("Listen on HOST (with --port): shorthand for --listen HOST:PORT"),
        )
        .arg(
            Arg::new("port")
                .long("port")
                .value_name("PORT")
                .global(true)
                .help("Listen on PORT (with --host): shorthand for --listen HOST:PORT"),
        )
        .subcommand(
            Command::new("config")
                .about("Inspect the configuration without starting the server")
                .subcommand_required(true)
                .subcommand(
                    Command::new("show")
                        .about("Print the effective settings, each with the layer it came from")
                        .arg(
                            Arg::new("format")
                                .long("format")
                                .value_parser(["toml", "json"])
                                .default_value("toml")
                                .help("Output format"),
                        ),
                )
                .subcommand(
                    Command::new("check")
                        .about("Validate the settings; exit 0 if they are valid, 2 if not"),
                )
                .subcommand(
                    Command::new("defaults")
                        .about("Print a complete, commented TOML file of every setting and its default"),
                )
                .subcommand(
                    Command::new("docs")
                        .about("Print the settings reference table (Markdown)")
                        .hide(true),
                ),
        );
    for s in SETTINGS {
        cmd = add_setting(cmd, s);
    }
    for (flag, kind) in WAITRESS_NO_OPS {
        let arg = Arg::new(*flag).long(*flag).hide(true).global(true);
        cmd = match kind {
            Kind::Switch => cmd.arg(arg.action(ArgAction::SetTrue)).arg(
                Arg::new(format!("{NO_PREFIX}{flag}"))
                    .long(format!("no-{flag}"))
                    .hide(true)
                    .global(true)
                    .action(ArgAction::SetTrue),
            ),
            _ => cmd.arg(arg.action(ArgAction::Set)),
        };
    }
    cmd
}

fn add_setting(cmd: Command, s: &Setting) -> Command {
    let arg = Arg::new(s.key)
        .long(s.flag())
        .visible_aliases(s.aliases.iter().copied())
        .global(true)
        .help(s.help);
    match s.kind {
        Kind::Switch => {
            let negative = Arg::new(format!("{NO_PREFIX}{}", s.key))
                .long(format!("no-{}", s.flag()))
                .aliases(s.aliases.iter().map(|a| format!("no-{a}")))
                .action(ArgAction::SetTrue)
                .overrides_with(s.key)
                .global(true)
                .hide(true);
            cmd.arg(
                arg.action(ArgAction::SetTrue)
                    .overrides_with(format!("{NO_PREFIX}{}", s.key)),
            )
            .arg(negative)
        }
        Kind::Value => cmd.arg(arg.value_name(s.value_name).action(ArgAction::Set)),
        Kind::List => cmd.arg(arg.value_name(s.value_name).action(ArgAction::Append)),
    }
}

fn given(m: &ArgMatches, id: &str) -> bool {
    m.value_source(id) == Some(ValueSource::CommandLine)
}

/// Parses `args` (including the program name). Usage errors, `--help` and
/// `--version` are handled by clap, which prints and exits (code 2 for
/// errors, as for every other configuration error).
pub fn parse<I, T>(args: I, version: String) -> Result<Invocation, UsageError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command(version).get_matches_from(args);
    from_matches(&matches)
}

/// Finds the action and the matches holding the flags (global flags are
/// visible in the innermost subcommand's matches).
fn from_matches(top: &ArgMatches) -> Result<Invocation, UsageError> {
    let (action, m) = match top.subcommand() {
        None => (Action::Serve, top),
        Some(("config", config)) => match config.subcommand() {
            Some(("show", sub)) => {
                let format = match sub.get_one::<String>("format").map(String::as_str) {
                    Some("json") => ShowFormat::Json,
                    _ => ShowFormat::Toml,
                };
                (Action::Config(ConfigCommand::Show(format)), sub)
            }
            Some(("check", sub)) => (Action::Config(ConfigCommand::Check), sub),
            Some(("defaults", sub)) => (Action::Config(ConfigCommand::Defaults), sub),
            Some(("docs", sub)) => (Action::Config(ConfigCommand::Docs), sub),
            _ => {
                return Err(UsageError(
                    "`maitred config` needs show, check or defaults".into(),
                ));
            }
        },
        Some((other, _)) => return Err(UsageError(format!("unknown command `{other}`"))),
    };
    let mut invocation = layer_from(m, top)?;
    invocation.action = action;
    Ok(invocation)
}

fn layer_from(m: &ArgMatches, top: &ArgMatches) -> Result<Invocation, UsageError> {
    let mut layer = Dict::new();
    let mut notices = Vec::new();

    for s in SETTINGS {
        let value = match s.kind {
            Kind::Switch => {
                if given(m, s.key) && m.get_flag(s.key) {
                    Some(Value::from(true))
                } else if given(m, &format!("{NO_PREFIX}{}", s.key)) {
                    Some(Value::from(false))
                } else {
                    None
                }
            }
            Kind::Value => given(m, s.key)
                .then(|| m.get_one::<String>(s.key).cloned())
                .flatten()
                .map(Value::from),
            Kind::List => given(m, s.key)
                .then(|| m.get_many::<String>(s.key))
                .flatten()
                .map(|values| {
                    let items: Vec<Value> = values
                        .flat_map(|v| split_list(v))
                        .map(Value::from)
                        .collect();
                    Value::from(items)
                }),
        };
        if let Some(value) = value {
            insert_nested(&mut layer, s.key, value);
        }
    }

    if let Ok(Some(target)) = top.try_get_one::<String>("target") {
        if layer.contains_key("app") {
            return Err(UsageError(
                "the app is given twice: as MODULE:CALLABLE and with --app; give it once".into(),
            ));
        }
        insert_nested(&mut layer, "app", Value::from(target.clone()));
    }

    // Waitress's rule: --host/--port build one listen address, and cannot be
    // mixed with --listen or --unix-socket.
    let host = m.get_one::<String>("host");
    let port = m.get_one::<String>("port");
    if host.is_some() || port.is_some() {
        if layer.contains_key("listen") {
            return Err(UsageError(
                "--host/--port cannot be combined with --listen: use one or the other".into(),
            ));
        }
        if layer.contains_key("unix_socket") {
            return Err(UsageError(
                "--host/--port cannot be combined with --unix-socket".into(),
            ));
        }
        let host = host.map(String::as_str).unwrap_or("0.0.0.0");
        let port = port.map(String::as_str).unwrap_or("8080");
        let entry = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        insert_nested(&mut layer, "listen", Value::from(vec![Value::from(entry)]));
    }
    if layer.contains_key("unix_socket") && layer.contains_key("listen") {
        return Err(UsageError(
            "--unix-socket cannot be combined with --listen: use one or the other".into(),
        ));
    }

    for (flag, kind) in WAITRESS_NO_OPS {
        let used =
            given(m, flag) || (*kind == Kind::Switch && given(m, &format!("{NO_PREFIX}{flag}")));
        if used {
            notices.push(format!(
                "--{flag} tunes waitress's asyncore loop and has no effect in maitred"
            ));
        }
    }

    Ok(Invocation {
        action: Action::Serve,
        layers: Layers {
            file: m.get_one::<PathBuf>("config").cloned(),
            flags: layer,
        },
        notices,
    })
}

/// Inserts `value` at a dotted `key`, creating the tables on the way.
fn insert_nested(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_owned(), value);
        }
        Some((table, rest)) => {
            let entry = dict
                .entry(table.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_nested(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(args: &[&str]) -> Invocation {
        let argv = std::iter::once("maitred").chain(args.iter().copied());
        from_matches(
            &command(String::new())
                .try_get_matches_from(argv)
                .expect("clap accepts"),
        )
        .expect("valid combination")
    }

    fn parse_err(args: &[&str]) -> String {
        let argv = std::iter::once("maitred").chain(args.iter().copied());
        match command(String::new()).try_get_matches_from(argv) {
            Err(e) => e.to_string(),
            Ok(m) => from_matches(&m).expect_err("invalid combination").0,
        }
    }

    fn get<'a>(layer: &'a Dict, key: &str) -> Option<&'a Value> {
        let mut parts = key.split('.');
        let mut value = layer.get(parts.next()?)?;
        for part in parts {
            value = value.as_dict()?.get(part)?;
        }
        Some(value)
    }

    #[test]
    fn clap_definition_is_consistent() {
        command(String::new()).debug_assert();
    }

    #[test]
    fn waitress_flag_spellings_both_forms() {
        let inv = parse_ok(&[
            "--threads=8",
            "--max-request-body-size",
            "1000",
            "--listen=127.0.0.1:1",
            "--listen",
            "127.0.0.1:2 127.0.0.1:3",
            "--trusted-proxy=10.0.0.1",
            "--expose-tracebacks",
            "--no-clear-untrusted-proxy-headers",
            "pkg.mod:app",
        ]);
        let l = &inv.layers.flags;
        assert_eq!(get(l, "threads").and_then(Value::as_str), Some("8"));
        assert_eq!(
            get(l, "limits.max_request_body_size").and_then(Value::as_str),
            Some("1000")
        );
        let listen: Vec<_> = get(l, "listen")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(listen, vec!["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        assert_eq!(
            get(l, "expose_tracebacks").and_then(Value::to_bool),
            Some(true)
        );
        assert_eq!(
            get(l, "proxy.clear_untrusted").and_then(Value::to_bool),
            Some(false)
        );
        assert!(get(l, "proxy.trusted").is_some());
        assert_eq!(get(l, "app").and_then(Value::as_str), Some("pkg.mod:app"));
    }

    #[test]
    fn only_given_flags_enter_the_layer() {
        let inv = parse_ok(&[]);
        assert!(inv.layers.flags.is_empty(), "{:?}", inv.layers.flags);
    }

    #[test]
    fn last_of_flag_and_no_flag_wins() {
        let inv = parse_ok(&["--expose-tracebacks", "--no-expose-tracebacks"]);
        assert_eq!(
            get(&inv.layers.flags, "expose_tracebacks").and_then(Value::to_bool),
            Some(false)
        );
        let inv = parse_ok(&["--no-expose-tracebacks", "--expose-tracebacks"]);
        assert_eq!(
            get(&inv.layers.flags, "expose_tracebacks").and_then(Value::to_bool),
            Some(true)
        );
    }

    #[test]
    fn host_and_port_build_a_listen_entry() {
        let inv = parse_ok(&["--port=9000"]);
        let listen = get(&inv.layers.flags, "listen")
            .and_then(Value::as_array)
            .map(<[Value]>::to_vec);
        assert_eq!(listen, Some(vec![Value::from("0.0.0.0:9000")]));
        let inv = parse_ok(&["--host=::1", "--port=9000"]);
        let listen = get(&inv.layers.flags, "listen")
            .and_then(Value::as_array)
            .map(<[Value]>::to_vec);
        assert_eq!(listen, Some(vec![Value::from("[::1]:9000")]));
    }

    #[test]
    fn conflicting_addresses_are_usage_errors() {
        assert!(parse_err(&["--port=1", "--listen=a:1"]).contains("--listen"));
        assert!(parse_err(&["--unix-socket=/x", "--listen=a:1"]).contains("--unix-socket"));
        assert!(parse_err(&["--app=a:b", "c:d"]).contains("twice"));
    }

    #[test]
    fn waitress_no_op_flags_are_accepted_with_a_notice() {
        let inv = parse_ok(&["--asyncore-use-poll", "--recv-bytes=4096"]);
        assert_eq!(inv.notices.len(), 2);
        assert!(inv.layers.flags.is_empty());
    }

    #[test]
    fn unknown_flags_are_rejected_with_a_suggestion() {
        let err = parse_err(&["--thread=2"]);
        assert!(err.contains("--thread"), "{err}");
        assert!(err.contains("--threads"), "{err}");
    }
}
