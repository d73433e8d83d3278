//! Configuration through every layer, observed on the built binary with
//! `maitred config show/check/defaults`: each setting in the file, the
//! environment and on the command line; precedence for every pair of
//! layers; and the exact shape of every kind of error (exit code 2).

mod common;

use std::path::Path;

use common::server;
use serde_json::{Value, json};

/// Runs `maitred config show --format json` and returns its object.
fn show(build: common::ServerBuilder) -> Value {
    let out = build
        .no_listen()
        .args(["config", "show", "--format", "json"])
        .run();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    serde_json::from_str(&out.stdout).expect("json")
}

fn entry<'a>(v: &'a Value, key: &str) -> (&'a Value, &'a str) {
    let e = &v[key];
    (&e["value"], e["source"].as_str().unwrap_or_default())
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.to_string_lossy().into_owned()
}

/// For every implemented setting: a non-default value as it is written in
/// TOML and as it is written in the environment or a flag, and what
/// `config show` reports for it.
fn samples() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    vec![
        (
            "app",
            "\"behaviours:app\"",
            "behaviours:app",
            json!("behaviours:app"),
        ),
        ("call", "true", "true", json!(true)),
        (
            "app_dir",
            "[\"/srv/a\", \"/srv/b\"]",
            "/srv/a,/srv/b",
            json!(["/srv/a", "/srv/b"]),
        ),
        (
            "virtualenv",
            "\"/srv/venv\"",
            "/srv/venv",
            json!("/srv/venv"),
        ),
        (
            "listen",
            "[\"127.0.0.1:9001\", \"[::1]:9002\"]",
            "127.0.0.1:9001 [::1]:9002",
            json!(["127.0.0.1:9001", "[::1]:9002"]),
        ),
        (
            "unix_socket",
            "\"/run/x.sock\"",
            "/run/x.sock",
            json!("/run/x.sock"),
        ),
        ("unix_socket_perms", "\"660\"", "660", json!("660")),
        ("ipv4", "false", "false", json!(false)),
        ("ipv6", "false", "false", json!(false)),
        ("backlog", "64", "64", json!(64)),
        ("threads", "7", "7", json!(7)),
        ("workers", "3", "3", json!(3)),
        ("url_scheme", "\"https\"", "https", json!("https")),
        ("url_prefix", "\"/app\"", "/app", json!("/app")),
        ("url_prefix_strict", "true", "true", json!(true)),
        ("ident", "\"edge\"", "edge", json!("edge")),
        (
            "server_name",
            "\"app.internal\"",
            "app.internal",
            json!("app.internal"),
        ),
        ("expose_tracebacks", "true", "true", json!(true)),
        ("allow_bare_lf", "true", "true", json!(true)),
        (
            "limits.max_request_header_size",
            "\"64KiB\"",
            "64KiB",
            json!("64KiB"),
        ),
        ("limits.max_request_headers", "50", "50", json!(50)),
        (
            "limits.max_request_body_size",
            "\"10MiB\"",
            "10MiB",
            json!("10MiB"),
        ),
        (
            "limits.inbuf_overflow",
            "\"1MiB\"",
            "1048576",
            json!("1MiB"),
        ),
        ("limits.outbuf_overflow", "\"2MiB\"", "2MiB", json!("2MiB")),
        (
            "limits.outbuf_high_watermark",
            "\"8MiB\"",
            "8MiB",
            json!("8MiB"),
        ),
        ("limits.buffer_memory", "\"64MiB\"", "64MiB", json!("64MiB")),
        ("limits.connection_limit", "10", "10", json!(10)),
        ("limits.channel_timeout", "\"30s\"", "30", json!("30s")),
        ("limits.header_timeout", "\"10s\"", "10", json!("10s")),
        ("limits.body_timeout", "\"2m\"", "2m", json!("120s")),
        ("limits.request_timeout", "\"45s\"", "45", json!("45s")),
        ("limits.max_queue", "7", "7", json!(7)),
        ("shutdown_delay", "\"0s\"", "0", json!("0s")),
        ("graceful_timeout", "\"90s\"", "90s", json!("90s")),
        (
            "admin_listen",
            "[\"0.0.0.0:9180\"]",
            "0.0.0.0:9180",
            json!(["0.0.0.0:9180"]),
        ),
        (
            "proxy.trusted",
            "[\"10.0.0.0/8\", \"fd00::/8\"]",
            "10.0.0.0/8 fd00::/8",
            json!(["10.0.0.0/8", "fd00::/8"]),
        ),
        ("proxy.clear_untrusted", "false", "no", json!(false)),
        ("proxy.log_untrusted", "true", "true", json!(true)),
        (
            "proxy_protocol.listen",
            "[\"127.0.0.1:9443\"]",
            "127.0.0.1:9443",
            json!(["127.0.0.1:9443"]),
        ),
        ("log.level", "\"debug\"", "debug", json!("debug")),
        ("log.format", "\"json\"", "json", json!("json")),
        ("log.access", "true", "true", json!(true)),
        ("log.access_format", "\"json\"", "json", json!("json")),
    ]
}

fn toml_for(key: &str, literal: &str) -> String {
    match key.rsplit_once('.') {
        Some((table, leaf)) => format!("[{table}]\n{leaf} = {literal}\n"),
        None => format!("{key} = {literal}\n"),
    }
}

fn env_for(key: &str) -> String {
    format!("MAITRED_{}", key.replace('.', "__").to_ascii_uppercase())
}

fn flag_for(key: &str, text: &str) -> String {
    let flag = key.replace(['.', '_'], "-");
    match text {
        "true" => format!("--{flag}"),
        "false" | "no" => format!("--no-{flag}"),
        _ => format!("--{flag}={text}"),
    }
}

#[test]
fn every_setting_works_in_every_layer() {
    let dir = common::scratch_dir("layers");
    let samples = samples();
    // The samples cover every implemented setting the defaults list.
    let defaults = show(server());
    let listed: Vec<&str> = defaults
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    // Settings that are only valid together with another are covered by
    // `paired_proxy_settings_in_every_layer`.
    let paired = ["proxy.count", "proxy.headers", "proxy_protocol.trusted"];
    for key in &listed {
        let covered = samples.iter().any(|(k, ..)| k == key);
        assert!(covered || paired.contains(key), "no sample for {key}");
    }

    // What a setting needs beside it to be valid, given as flags.
    let companion = |key: &str| -> Vec<String> {
        match key {
            "url_prefix_strict" => vec!["--url-prefix=/app".into()],
            "proxy_protocol.listen" => vec!["--proxy-protocol-trusted=10.0.0.1".into()],
            _ => Vec::new(),
        }
    };
    for (key, literal, text, expected) in samples {
        let file = write(dir.path(), "m.toml", &toml_for(key, literal));
        let v = show(
            server()
                .arg(format!("--config={file}"))
                .args(companion(key)),
        );
        assert_eq!(
            entry(&v, key),
            (&expected, format!("{file} (key `{key}`)").as_str()),
            "file: {key}"
        );

        let v = show(server().env(&env_for(key), text).args(companion(key)));
        let source = format!("environment variable {}", env_for(key));
        assert_eq!(entry(&v, key), (&expected, source.as_str()), "env: {key}");

        let v = show(server().arg(flag_for(key, text)).args(companion(key)));
        let (value, source) = entry(&v, key);
        assert_eq!(value, &expected, "flag: {key}");
        let flag = key.replace(['.', '_'], "-");
        assert!(
            source.starts_with(&format!("flag --{flag}")) || key == "app",
            "flag: {key}: {source}"
        );
    }
}

#[test]
fn paired_proxy_settings_in_every_layer() {
    let dir = common::scratch_dir("paired");
    let file = write(
        dir.path(),
        "m.toml",
        "[proxy]\ntrusted = [\"10.0.0.0/8\"]\ncount = 2\nheaders = [\"x-forwarded-for\", \"x-forwarded-proto\"]\n\
         [proxy_protocol]\nlisten = [\"127.0.0.1:9443\"]\ntrusted = [\"10.0.0.9\"]\n",
    );
    let v = show(server().arg(format!("--config={file}")));
    assert_eq!(entry(&v, "proxy.count").0, &json!(2));
    assert_eq!(
        entry(&v, "proxy.headers").0,
        &json!(["x-forwarded-for", "x-forwarded-proto"])
    );
    assert_eq!(entry(&v, "proxy_protocol.trusted").0, &json!(["10.0.0.9"]));
    let v = show(
        server()
            .env("MAITRED_PROXY__TRUSTED", "10.0.0.0/8, 192.168.1.7")
            .env("MAITRED_PROXY__COUNT", "2")
            .env("MAITRED_PROXY__HEADERS", "x-forwarded-for x-forwarded-host")
            .env("MAITRED_PROXY_PROTOCOL__LISTEN", "127.0.0.1:9443")
            .env("MAITRED_PROXY_PROTOCOL__TRUSTED", "10.0.0.9"),
    );
    assert_eq!(
        entry(&v, "proxy.trusted").0,
        &json!(["10.0.0.0/8", "192.168.1.7"])
    );
    assert_eq!(
        entry(&v, "proxy.count"),
        (&json!(2), "environment variable MAITRED_PROXY__COUNT")
    );
    assert_eq!(
        entry(&v, "proxy_protocol.trusted").1,
        "environment variable MAITRED_PROXY_PROTOCOL__TRUSTED"
    );
    let v = show(server().args([
        "--trusted-proxy=10.0.0.1",
        "--trusted-proxy-count=3",
        "--trusted-proxy-headers=x-forwarded-for x-forwarded-proto",
        "--proxy-protocol-listen=127.0.0.1:9443",
        "--proxy-protocol-trusted=*",
    ]));
    assert_eq!(
        entry(&v, "proxy.count"),
        (&json!(3), "flag --proxy-count / --trusted-proxy-count")
    );
    assert_eq!(
        entry(&v, "proxy.headers").0,
        &json!(["x-forwarded-for", "x-forwarded-proto"])
    );
    assert_eq!(entry(&v, "proxy_protocol.trusted").0, &json!(["*"]));
}

#[test]
fn invalid_trust_lists_name_key_value_and_source() {
    let (code, err) = check(server().env("MAITRED_PROXY__TRUSTED", "10.0.0.0/8, 10.0.0.300/8"));
    assert_eq!(code, Some(2));
    assert_eq!(
        problems(&err),
        [
            "proxy.trusted: `10.0.0.300/8` is not an IP address, a CIDR range (10.0.0.0/8, fd00::/8), `*`, `unix` or `localhost` (value \"10.0.0.0/8, 10.0.0.300/8\", from environment variable MAITRED_PROXY__TRUSTED)"
        ]
    );
    let (_, err) = check(server().args([
        "--trusted-proxy=*",
        "--trusted-proxy-headers=forwarded x-forwarded-for",
    ]));
    assert!(
        problems(&err)[0].starts_with(
            "proxy.headers: `forwarded` cannot be combined with x-forwarded-* headers"
        ),
        "{err}"
    );
    let (_, err) = check(server().arg("--trusted-proxy-count=2"));
    assert_eq!(
        problems(&err),
        [
            "proxy.count: has no effect without proxy.trusted (value 2, from flag --proxy-count / --trusted-proxy-count)"
        ]
    );
    let (_, err) = check(server().arg("--proxy-protocol-listen=127.0.0.1:0"));
    assert!(
        problems(&err)[0].starts_with("proxy_protocol.trusted: is empty"),
        "{err}"
    );
}

#[test]
fn waitress_flag_names_set_the_same_settings() {
    let v = show(server().args([
        "--max-request-body-size=1000",
        "--channel-timeout=90",
        "--connection-limit=7",
        "--no-clear-untrusted-proxy-headers",
        "--inbuf-overflow=4096",
    ]));
    assert_eq!(entry(&v, "limits.max_request_body_size").0, &json!("1000"));
    assert_eq!(entry(&v, "limits.channel_timeout").0, &json!("90s"));
    assert_eq!(entry(&v, "limits.connection_limit").0, &json!(7));
    assert_eq!(entry(&v, "proxy.clear_untrusted").0, &json!(false));
    assert_eq!(entry(&v, "limits.inbuf_overflow").0, &json!("4KiB"));
    assert_eq!(
        entry(&v, "limits.channel_timeout").1,
        "flag --limits-channel-timeout / --channel-timeout"
    );
}

#[test]
fn precedence_for_every_pair_of_layers() {
    let dir = common::scratch_dir("precedence");
    let file = write(dir.path(), "m.toml", "threads = 2\n");
    let with_file = || server().arg(format!("--config={file}"));
    let threads = |v: &Value| entry(v, "threads").0.clone();

    assert_eq!(threads(&show(server())), json!(4), "default");
    assert_eq!(threads(&show(with_file())), json!(2), "file over default");
    assert_eq!(
        threads(&show(server().env("MAITRED_THREADS", "3"))),
        json!(3),
        "env over default"
    );
    assert_eq!(
        threads(&show(server().arg("--threads=5"))),
        json!(5),
        "flag over default"
    );
    assert_eq!(
        threads(&show(with_file().env("MAITRED_THREADS", "3"))),
        json!(3),
        "env over file"
    );
    assert_eq!(
        threads(&show(with_file().arg("--threads=5"))),
        json!(5),
        "flag over file"
    );
    assert_eq!(
        threads(&show(
            server().env("MAITRED_THREADS", "3").arg("--threads=5")
        )),
        json!(5),
        "flag over env"
    );
    // All four: the flag wins, and the others stay in effect where set.
    let v = show(
        with_file()
            .env("MAITRED_THREADS", "3")
            .env("MAITRED_IDENT", "e")
            .arg("--threads=5"),
    );
    assert_eq!(entry(&v, "threads").1, "flag --threads");
    assert_eq!(
        entry(&v, "ident"),
        (&json!("e"), "environment variable MAITRED_IDENT")
    );
    assert_eq!(entry(&v, "backlog"), (&json!(4096), "the built-in default"));
}

#[test]
fn config_file_may_come_from_maitred_config() {
    let dir = common::scratch_dir("envfile");
    let file = write(dir.path(), "m.toml", "ident = \"from-file\"\n");
    let v = show(server().env("MAITRED_CONFIG", file.clone()));
    assert_eq!(entry(&v, "ident").0, &json!("from-file"));
    // --config wins over MAITRED_CONFIG.
    let other = write(dir.path(), "o.toml", "ident = \"other\"\n");
    let v = show(
        server()
            .env("MAITRED_CONFIG", file)
            .arg(format!("--config={other}")),
    );
    assert_eq!(entry(&v, "ident").0, &json!("other"));
}

#[test]
fn values_people_type() {
    let v = show(
        server()
            .env("MAITRED_LIMITS__MAX_REQUEST_BODY_SIZE", "512KiB")
            .env("MAITRED_LIMITS__CHANNEL_TIMEOUT", "1500ms")
            .env("MAITRED_EXPOSE_TRACEBACKS", "on")
            .env("MAITRED_IPV6", "0")
            .env("MAITRED_LISTEN", "127.0.0.1:1, 127.0.0.2:2\t127.0.0.3:3")
            .arg("--limits-outbuf-overflow=16 MiB"),
    );
    assert_eq!(
        entry(&v, "limits.max_request_body_size").0,
        &json!("512KiB")
    );
    assert_eq!(entry(&v, "limits.channel_timeout").0, &json!("1500ms"));
    assert_eq!(entry(&v, "expose_tracebacks").0, &json!(true));
    assert_eq!(entry(&v, "ipv6").0, &json!(false));
    assert_eq!(
        entry(&v, "listen").0,
        &json!(["127.0.0.1:1", "127.0.0.2:2", "127.0.0.3:3"])
    );
    assert_eq!(entry(&v, "limits.outbuf_overflow").0, &json!("16MiB"));
}

#[test]
fn config_show_toml_names_each_source() {
    let out = server()
        .no_listen()
        .env("MAITRED_THREADS", "3")
        .args(["config", "show", "--ident=x"])
        .run();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let line = |key: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line("threads").ends_with("# environment variable MAITRED_THREADS"),
        "{}",
        out.stdout
    );
    assert!(line("ident").ends_with("# flag --ident"), "{}", out.stdout);
    assert!(
        line("backlog").ends_with("# the built-in default"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("\n[limits]\n"));
    assert!(out.stdout.contains("# app is unset"));
}

/// Runs `config check` and returns (exit code, stderr).
fn check(build: common::ServerBuilder) -> (Option<i32>, String) {
    let out = build.no_listen().args(["config", "check"]).run();
    (out.code(), out.stderr)
}

fn problems(stderr: &str) -> Vec<String> {
    assert!(
        stderr.starts_with("maitred: invalid configuration:\n"),
        "{stderr}"
    );
    stderr
        .lines()
        .skip(1)
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn config_check_exits_0_or_2() {
    let out = server().no_listen().args(["config", "check"]).run();
    assert_eq!(out.code(), Some(0));
    assert_eq!(
        out.stdout,
        "The configuration is valid (no settings file).\n"
    );
    let (code, _) = check(server().arg("--threads=0"));
    assert_eq!(code, Some(2));
}

#[test]
fn unknown_keys_name_their_source_and_the_closest_setting() {
    let dir = common::scratch_dir("unknown");
    let file = write(
        dir.path(),
        "m.toml",
        "threds = 3\n[limits]\nmax_request_body = 1\n",
    );
    let (code, err) = check(server().arg(format!("--config={file}")));
    assert_eq!(code, Some(2));
    assert_eq!(
        problems(&err),
        [
            format!(
                "limits.max_request_body: unknown setting (from {file}); did you mean `limits.max_request_body_size`?"
            ),
            format!("threds: unknown setting (from {file}); did you mean `threads`?"),
        ]
    );
    let (code, err) = check(server().env("MAITRED_THREDS", "3"));
    assert_eq!(code, Some(2));
    assert_eq!(
        problems(&err),
        [
            "threds: unknown setting (from environment variable MAITRED_THREDS); did you mean `threads`?"
        ]
    );
    // A setting written at the top level that lives in a table.
    let (_, err) = check(server().env("MAITRED_MAX_REQUEST_BODY_SIZE", "1"));
    assert_eq!(
        problems(&err),
        [
            "max_request_body_size: unknown setting (from environment variable MAITRED_MAX_REQUEST_BODY_SIZE); did you mean `limits.max_request_body_size`?"
        ]
    );
    let out = server()
        .no_listen()
        .args(["config", "check", "--thredas=3"])
        .run();
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stderr.contains("unexpected argument '--thredas'"),
        "{}",
        out.stderr
    );
}

#[test]
fn wrong_types_name_key_value_and_source() {
    let dir = common::scratch_dir("types");
    let file = write(dir.path(), "m.toml", "threads = \"many\"\n");
    let (code, err) = check(server().arg(format!("--config={file}")));
    assert_eq!(code, Some(2));
    assert_eq!(
        problems(&err),
        [format!(
            "threads: invalid value string \"many\", expected a whole number (from {file} (key `threads`))"
        )]
    );
    let (_, err) = check(server().env("MAITRED_EXPOSE_TRACEBACKS", "maybe"));
    assert_eq!(
        problems(&err),
        [
            "expose_tracebacks: invalid value string \"maybe\", expected a boolean (true/false, yes/no, on/off, 1/0) (from environment variable MAITRED_EXPOSE_TRACEBACKS)"
        ]
    );
    let (_, err) = check(server().arg("--channel-timeout=soon"));
    assert_eq!(
        problems(&err),
        [
            "limits.channel_timeout: invalid value string \"soon\", expected a duration, such as 30s, 2m, 1500ms or a number of seconds (from flag --limits-channel-timeout / --channel-timeout)"
        ]
    );
    let (_, err) = check(server().env("MAITRED_LIMITS__INBUF_OVERFLOW", "12 parsecs"));
    assert_eq!(
        problems(&err),
        [
            "limits.inbuf_overflow: invalid value string \"12 parsecs\", expected a size in bytes, such as 1048576, 512KiB or 16MiB (from environment variable MAITRED_LIMITS__INBUF_OVERFLOW)"
        ]
    );
}

#[test]
fn out_of_range_values_name_key_value_and_source() {
    let dir = common::scratch_dir("range");
    let file = write(dir.path(), "m.toml", "threads = 0\n");
    let (code, err) = check(server().arg(format!("--config={file}")));
    assert_eq!(code, Some(2));
    assert_eq!(
        problems(&err),
        [format!(
            "threads: must be at least 1 (value 0, from {file} (key `threads`))"
        )]
    );
    let (_, err) = check(server().env("MAITRED_LIMITS__CONNECTION_LIMIT", "0"));
    assert_eq!(
        problems(&err),
        [
            "limits.connection_limit: must be between 1 and 1000000 (value 0, from environment variable MAITRED_LIMITS__CONNECTION_LIMIT)"
        ]
    );
    let (_, err) = check(server().arg("--url-scheme=ftp"));
    assert_eq!(
        problems(&err),
        ["url_scheme: must be `http` or `https` (value \"ftp\", from flag --url-scheme)"]
    );
}

#[test]
fn several_problems_are_reported_together() {
    let (_, err) = check(
        server()
            .arg("--threads=0")
            .env("MAITRED_URL_SCHEME", "gopher"),
    );
    assert_eq!(problems(&err).len(), 2, "{err}");
}

#[test]
fn missing_or_broken_settings_files() {
    let (code, err) = check(server().arg("--config=/nonexistent/m.toml"));
    assert_eq!(code, Some(2));
    assert_eq!(
        problems(&err),
        ["config file /nonexistent/m.toml (given by --config) does not exist"]
    );
    let (code, err) = check(server().env("MAITRED_CONFIG", "/nonexistent/env.toml"));
    assert_eq!(code, Some(2));
    assert_eq!(
        problems(&err),
        ["config file /nonexistent/env.toml (given by MAITRED_CONFIG) does not exist"]
    );
    let dir = common::scratch_dir("broken-toml");
    let file = write(dir.path(), "m.toml", "threads = \n");
    let (code, err) = check(server().arg(format!("--config={file}")));
    assert_eq!(code, Some(2));
    assert!(
        problems(&err)[0].starts_with(&format!(
            "{file} is not a valid settings file: TOML parse error at line 1"
        )),
        "{err}"
    );
}

#[test]
fn kubernetes_service_link_variables_do_not_break_startup() {
    let k8s = || {
        server()
            .env("MAITRED_PORT", "tcp://10.96.0.12:80")
            .env("MAITRED_PORT_80_TCP", "tcp://10.96.0.12:80")
            .env("MAITRED_PORT_80_TCP_ADDR", "10.96.0.12")
            .env("MAITRED_PORT_80_TCP_PORT", "80")
            .env("MAITRED_PORT_80_TCP_PROTO", "tcp")
            .env("MAITRED_SERVICE_HOST", "10.96.0.12")
            .env("MAITRED_SERVICE_PORT", "80")
            .env("MAITRED_SERVICE_PORT_HTTP", "80")
    };
    let out = k8s().no_listen().args(["config", "check"]).run();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("ignored MAITRED_PORT (a Kubernetes service link, not a setting)")
    );
    // And the server itself starts.
    let s = k8s().arg("behaviours:app").start();
    assert_eq!(s.get("/list").status, 200);
    // A person's MAITRED_PORT is still an error, with a pointer to `listen`.
    let (code, err) = check(server().env("MAITRED_PORT", "9000"));
    assert_eq!(code, Some(2));
    assert!(problems(&err)[0].starts_with("port: unknown setting (from environment variable MAITRED_PORT); the address is set with `listen"), "{err}");
}

#[test]
fn config_defaults_is_the_reference_file() {
    let out = server().no_listen().args(["config", "defaults"]).run();
    assert_eq!(out.code(), Some(0));
    let reference = std::fs::read_to_string(common::project_dir().join("config/maitred.toml"))
        .expect("config/maitred.toml");
    assert!(
        reference == out.stdout,
        "config/maitred.toml is out of date: run scripts/regenerate.sh"
    );
    // And it is a valid settings file that changes no value.
    let path = common::project_dir().join("config/maitred.toml");
    let from_file = show(server().arg(format!("--config={}", path.display())));
    let defaults = show(server());
    for (key, e) in defaults.as_object().expect("object") {
        assert_eq!(from_file[key]["value"], e["value"], "{key}");
    }
}

#[test]
fn the_documentation_table_matches_the_settings() {
    let out = server().no_listen().args(["config", "docs"]).run();
    assert_eq!(out.code(), Some(0));
    let doc = std::fs::read_to_string(common::project_dir().join("docs/configuration.md"))
        .expect("docs/configuration.md");
    assert!(
        doc.contains(&out.stdout),
        "the reference table in docs/configuration.md is out of date: run scripts/regenerate.sh"
    );
}

#[test]
fn every_waitress_option_has_a_migration_entry() {
    let doc = std::fs::read_to_string(common::project_dir().join("docs/configuration.md"))
        .expect("docs/configuration.md");
    let migration = doc
        .split("## Migrating from waitress-serve")
        .nth(1)
        .expect("a migration section");
    // Every adjustment in waitress/adjustments.py, plus the runner's flags.
    for option in [
        "host",
        "port",
        "listen",
        "ipv4",
        "ipv6",
        "unix_socket",
        "unix_socket_perms",
        "sockets",
        "threads",
        "trusted_proxy",
        "trusted_proxy_count",
        "trusted_proxy_headers",
        "log_untrusted_proxy_headers",
        "clear_untrusted_proxy_headers",
        "url_scheme",
        "url_prefix",
        "ident",
        "server_name",
        "backlog",
        "recv_bytes",
        "send_bytes",
        "outbuf_overflow",
        "outbuf_high_watermark",
        "inbuf_overflow",
        "connection_limit",
        "cleanup_interval",
        "channel_timeout",
        "log_socket_errors",
        "max_request_header_size",
        "max_request_body_size",
        "expose_tracebacks",
        "asyncore_loop_timeout",
        "asyncore_use_poll",
        "channel_request_lookahead",
        "socket_options",
        "--call",
        "--app",
    ] {
        assert!(
            migration.contains(&format!("`{option}`")),
            "{option} is missing from the migration table"
        );
    }
}

/// `KEY=VALUE` lines of an env file (comments and blanks skipped).
fn env_file(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .expect("env file")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=VALUE");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn the_examples_are_valid_configurations() {
    let examples = common::project_dir().join("config/examples");
    let nginx = examples.join("nginx-same-host.toml");
    let v = show(server().arg(format!("--config={}", nginx.display())));
    assert_eq!(
        entry(&v, "unix_socket").0,
        &json!("/run/maitred/myproject.sock")
    );
    assert_eq!(entry(&v, "proxy.trusted").0, &json!(["unix"]));

    let k8s = examples.join("kubernetes-sidecar.toml");
    let v = show(server().arg(format!("--config={}", k8s.display())));
    // Istio's sidecar forwards to the pod IP, so the example listens on
    // every address and trusts loopback only.
    assert_eq!(entry(&v, "listen").0, &json!(["0.0.0.0:8080"]));
    assert_eq!(entry(&v, "proxy.trusted").0, &json!(["127.0.0.0/8"]));
    assert_eq!(entry(&v, "proxy.count").0, &json!(2));
    assert_eq!(entry(&v, "log.format").0, &json!("json"));

    let mut build = server();
    for (k, v) in env_file(&examples.join("container.env")) {
        build = build.env(&k, v);
    }
    let v = show(build);
    assert_eq!(
        entry(&v, "threads"),
        (&json!(8), "environment variable MAITRED_THREADS")
    );
    assert_eq!(
        entry(&v, "proxy.trusted").0,
        &json!(["10.0.0.0/8", "172.16.0.0/12"])
    );
    assert_eq!(entry(&v, "limits.max_request_body_size").0, &json!("10MiB"));

    // Nothing else lurks in the directory untested.
    let mut names: Vec<String> = std::fs::read_dir(&examples)
        .expect("examples")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "container.env",
            "kubernetes-sidecar.toml",
            "nginx-same-host.toml"
        ]
    );
}

#[test]
fn every_toml_snippet_in_the_docs_is_a_valid_configuration() {
    let dir = common::scratch_dir("snippets");
    let mut docs = vec![common::project_dir().join("README.md")];
    for entry in std::fs::read_dir(common::project_dir().join("docs")).expect("docs") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    let mut checked = 0;
    for doc in docs {
        let text = std::fs::read_to_string(&doc).expect("doc");
        for (i, block) in text.split("```toml\n").skip(1).enumerate() {
            let snippet = block.split("```").next().unwrap_or_default();
            let file = write(dir.path(), &format!("snippet-{i}.toml"), snippet);
            let (code, err) = check(server().arg(format!("--config={file}")));
            assert_eq!(
                code,
                Some(0),
                "{} snippet {i}:\n{snippet}\n{err}",
                doc.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "only {checked} snippets found: is the scan broken?"
    );
}
