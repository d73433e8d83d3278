//! The deployment files, checked offline (no image is built, no cluster or
//! systemd instance runs): hadolint on the Dockerfiles; every Kubernetes
//! overlay rendered with kustomize and validated in strict mode against
//! several Kubernetes versions (prometheus-operator kinds against the
//! schemas in deploy/kubernetes/schemas/), with the invariants the
//! deployment relies on checked by `deploy/check.py`; the settings the
//! manifests give maitred (the ConfigMap's maitred.toml plus the
//! container's MAITRED_* environment) checked by the real binary's
//! `maitred config check` and `config show`; the systemd units verified by
//! `systemd-analyze verify`.
//!
//! The tools come from `scripts/tools.sh` (target/tools/); a missing one
//! fails the test with a pointer to it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{BIN, project_dir, scratch_dir};
use serde_json::Value;

fn tool(relative: &str) -> PathBuf {
    let path = project_dir().join("target/tools").join(relative);
    assert!(
        path.exists(),
        "{} is missing: run ./scripts/tools.sh (the README's test command does)",
        path.display()
    );
    path
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// `deploy/check.py ARGS` with the tools' Python; its JSON summary.
fn check_py(args: &[&str]) -> Value {
    // check.py renders with target/tools/bin/kustomize.
    tool("bin/kustomize");
    let out = run(Command::new(tool("venv/bin/python"))
        .arg(project_dir().join("deploy/check.py"))
        .args(args)
        .current_dir(project_dir()));
    assert!(
        out.status.success(),
        "deploy/check.py {}:\n{}",
        args.join(" "),
        text(&out)
    );
    serde_json::from_slice(&out.stdout).expect("check.py prints JSON")
}

/// maitred with exactly the given environment's MAITRED_* variables (the
/// test's own are removed, as is VIRTUAL_ENV).
fn maitred(args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = common::maitred_command();
    cmd.args(args).current_dir(project_dir());
    for k in std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()) {
        if k.starts_with("MAITRED_") || k == "VIRTUAL_ENV" || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().cloned()).env("NO_COLOR", "1");
    run(&mut cmd)
}

/// `config check`, then `config show --format json`, for a settings file
/// and environment: what the binary would run with.
fn effective(config: &Path, env: &[(String, String)]) -> Value {
    let file = config.to_string_lossy().into_owned();
    let check = maitred(&["config", "check", "--config", &file], env);
    assert!(
        check.status.success(),
        "maitred config check --config {file} (env {env:?}):\n{}",
        text(&check)
    );
    let show = maitred(
        &["config", "show", "--format", "json", "--config", &file],
        env,
    );
    assert!(show.status.success(), "config show: {}", text(&show));
    serde_json::from_slice(&show.stdout).expect("config show --format json")
}

/// A setting's value in `config show --format json` output.
fn value<'a>(settings: &'a Value, key: &str) -> &'a Value {
    assert!(
        settings.get(key).is_some(),
        "config show has no setting {key}"
    );
    &settings[key]["value"]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `30s`, `1500ms`, `2m`, `1h` or a number of seconds.
fn seconds(v: &Value) -> f64 {
    if let Some(n) = v.as_f64() {
        return n;
    }
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a duration: {v}"))
        .trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a duration: {s}"));
    n * match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => panic!("unknown duration unit in {s}"),
    }
}

fn host(addr: &str) -> &str {
    addr.rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']')
}

fn is_loopback_addr(addr: &str) -> bool {
    host(addr)
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// A trust-list entry that only ever matches loopback peers.
fn is_loopback_range(entry: &str) -> bool {
    let (addr, prefix) = entry.split_once('/').unwrap_or((entry, ""));
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            ip.is_loopback() && prefix.parse::<u8>().map_or(prefix.is_empty(), |p| p >= 8)
        }
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback() && (prefix.is_empty() || prefix == "128"),
        Err(_) => entry == "localhost",
    }
}

/// Renders and validates an app overlay with check.py, then has the real
/// binary load the settings the pod would run with; checks the drain
/// budget against them. Returns the effective settings.
fn app_overlay(overlay: &str) -> (Value, Value) {
    let summary = check_py(&["overlay", overlay]);
    let kinds = strings(&summary["kinds"]);
    for kind in [
        "Deployment/maitred",
        "Service/maitred",
        "PodDisruptionBudget/maitred",
        "HorizontalPodAutoscaler/maitred",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "{overlay}: no {kind} in {kinds:?}"
        );
    }
    let dir = scratch_dir(&format!("deploy-{overlay}"));
    let config = dir.path().join("maitred.toml");
    std::fs::write(&config, summary["toml"].as_str().expect("toml")).expect("write toml");
    // MAITRED_CONFIG names the mounted file; --config names our copy.
    let env: Vec<(String, String)> = summary["env"]
        .as_object()
        .expect("env")
        .iter()
        .filter(|(k, _)| k.as_str() != "MAITRED_CONFIG")
        .map(|(k, v)| (k.clone(), v.as_str().expect("literal env value").to_owned()))
        .collect();
    let settings = effective(&config, &env);

    // Each MAITRED_* override really is what the binary uses.
    for (k, _) in &env {
        let key = k["MAITRED_".len()..]
            .to_ascii_lowercase()
            .replace("__", ".");
        let source = settings[&key]["source"].as_str().unwrap_or_default();
        assert!(
            source.contains(k),
            "{overlay}: {key} comes from {source}, not {k}"
        );
    }

    // The drain fits in the grace period.
    let grace = summary["termination_grace_period_seconds"]
        .as_f64()
        .expect("grace");
    let pre_stop = summary["pre_stop_sleep_seconds"].as_f64().unwrap_or(0.0);
    let margin = summary["drain_margin_seconds"].as_f64().expect("margin");
    let delay = seconds(value(&settings, "shutdown_delay"));
    let graceful = seconds(value(&settings, "graceful_timeout"));
    assert!(
        grace >= pre_stop + delay + graceful + margin,
        "{overlay}: terminationGracePeriodSeconds {grace} < preStop {pre_stop} + shutdown_delay \
         {delay} + graceful_timeout {graceful} + margin {margin}"
    );

    // The kubelet and Prometheus reach the admin listener on the pod IP.
    let admin = format!("0.0.0.0:{}", summary["admin_port"]);
    let admin_listen = strings(value(&settings, "admin_listen"));
    assert!(
        admin_listen.contains(&admin),
        "{overlay}: admin_listen {admin_listen:?}"
    );
    (summary, settings)
}

#[test]
fn hadolint_passes_both_dockerfiles() {
    let deploy = project_dir().join("deploy");
    let out = run(Command::new(tool("bin/hadolint"))
        .arg("--no-color")
        .arg("--config")
        .arg(deploy.join(".hadolint.yaml"))
        .arg(deploy.join("Dockerfile"))
        .arg(deploy.join("example-app/Dockerfile")));
    assert!(out.status.success(), "hadolint:\n{}", text(&out));
}

#[test]
fn the_dockerfiles_keep_the_runtime_contract() {
    // Same python image line in both stages, numeric non-root USER,
    // STOPSIGNAL SIGTERM, no HEALTHCHECK, the virtualenv, TMPDIR, exec-form
    // entrypoint; the example app installs as root and runs as the UID.
    check_py(&["dockerfiles"]);
}

#[test]
fn the_image_settings_pass_config_check() {
    let settings = effective(&project_dir().join("deploy/container.toml"), &[]);
    assert_eq!(strings(value(&settings, "listen")), ["0.0.0.0:8080"]);
    assert_eq!(strings(value(&settings, "admin_listen")), ["0.0.0.0:9180"]);
}

#[test]
fn the_standalone_overlay_validates_and_drains_in_time() {
    let (summary, settings) = app_overlay("standalone");
    let listen = strings(value(&settings, "listen"));
    assert!(
        listen.iter().any(|a| a == "0.0.0.0:8080"),
        "listen {listen:?}"
    );
    let targets = &summary["service_target_ports"];
    assert_eq!(
        targets,
        &serde_json::json!([8080]),
        "the Service targets the app port"
    );
}

#[test]
fn the_sidecar_overlay_trusts_only_the_sidecar_on_loopback() {
    let (summary, settings) = app_overlay("sidecar");
    let listen = strings(value(&settings, "listen"));
    assert!(
        !listen.is_empty() && listen.iter().all(|a| is_loopback_addr(a)),
        "behind the sidecar maitred listens on loopback only: {listen:?}"
    );
    let trusted = strings(value(&settings, "proxy.trusted"));
    assert!(
        !trusted.is_empty() && trusted.iter().all(|t| is_loopback_range(t)),
        "proxy.trusted {trusted:?} must name loopback only"
    );
    // cloud LB -> Envoy -> maitred: the LB's entry and the client's.
    assert_eq!(
        value(&settings, "proxy.count").as_u64(),
        summary["proxy_count"].as_u64(),
        "proxy.count"
    );
    assert_eq!(summary["proxy_count"].as_u64(), Some(2));
    let headers = strings(value(&settings, "proxy.headers"));
    assert!(
        headers.iter().any(|h| h == "x-forwarded-for"),
        "{headers:?}"
    );
    assert_eq!(summary["service_target_ports"], serde_json::json!([8000]));
}

#[test]
fn the_monitoring_overlay_carries_the_rules_and_the_dashboard() {
    // Schemas for PodMonitor/PrometheusRule, the PodMonitor finds the admin
    // port of both app overlays, PrometheusRule groups == rules.yaml's,
    // the dashboard ConfigMap == dashboards/maitred.json.
    let summary = check_py(&["overlay", "monitoring"]);
    let kinds = strings(&summary["kinds"]);
    assert_eq!(
        kinds,
        [
            "ConfigMap/maitred-dashboard",
            "PodMonitor/maitred",
            "PrometheusRule/maitred"
        ]
    );
}

#[test]
fn the_systemd_units_verify_and_budget_the_drain() {
    let summary = check_py(&["systemd"]);
    let exec_start = summary["exec_start"].as_str().expect("ExecStart");
    let (program, flags) = exec_start.split_once(' ').unwrap_or((exec_start, ""));
    assert_eq!(program, "/usr/local/bin/maitred");

    // The flags in ExecStart are maitred's and mean what check.py read.
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let mut args = flags.clone();
    args.extend(["config", "show", "--format", "json"]);
    let out = maitred(&args, &[]);
    assert!(
        out.status.success(),
        "maitred {}: {}",
        args.join(" "),
        text(&out)
    );
    let settings: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        seconds(value(&settings, "shutdown_delay")),
        summary["shutdown_delay_seconds"].as_f64().unwrap()
    );
    assert_eq!(
        seconds(value(&settings, "graceful_timeout")),
        summary["graceful_timeout_seconds"].as_f64().unwrap()
    );

    // systemd-analyze verify, with ExecStart pointing at the built binary
    // (verify insists that it exists). It exits 0 on unknown keys and bad
    // values, only warning: any output is a failure.
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("systemd-analyze is missing: run ./scripts/tools.sh (installs Debian's systemd)");
    let dir = scratch_dir("deploy-systemd");
    let units = project_dir().join("deploy/systemd");
    for name in ["maitred.service", "maitred.socket"] {
        let unit = std::fs::read_to_string(units.join(name)).expect("unit");
        let unit = unit.replace(
            "ExecStart=/usr/local/bin/maitred",
            &format!("ExecStart={BIN}"),
        );
        std::fs::write(dir.path().join(name), unit).expect("write unit");
    }
    let out = run(Command::new(analyze)
        .arg("verify")
        .arg(dir.path().join("maitred.socket"))
        .arg(dir.path().join("maitred.service"))
        .env("SYSTEMD_LOG_COLOR", "0"));
    let said = text(&out);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}
