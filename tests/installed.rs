//! maitred installed from its wheel (`pip install maitred`), as
//! scripts/test-pythons.sh runs it for each CPython: these tests need the
//! installed venv (`MAITRED_TEST_VENV`), so they are ignored in the ordinary
//! suite and run with `--run-ignored only`. The other Python-dependent test
//! files run against the installed command too (see that script).

mod common;

use std::path::PathBuf;

use common::server;

fn venv() -> PathBuf {
    common::installed_venv().expect("MAITRED_TEST_VENV names the venv with maitred installed")
}

#[test]
#[ignore = "needs an installed wheel: scripts/test-pythons.sh"]
fn python_dash_m_maitred_serves_with_the_venvs_python() {
    let venv = venv();
    let s = server()
        .python_module_of(venv.join("bin").join("python"))
        .arg("venv_probe:app")
        .start();
    let info = s.get("/").json();
    let prefix = std::fs::canonicalize(&venv).expect("venv path");
    assert_eq!(
        std::fs::canonicalize(info["prefix"].as_str().expect("prefix")).ok(),
        Some(prefix),
        "{info}"
    );
    let log = s.log();
    assert!(
        log.contains(&format!("running Python {}", common::python_version())),
        "{log}"
    );
    assert!(log.contains("virtualenv: "), "{log}");
}

#[test]
#[ignore = "needs an installed wheel: scripts/test-pythons.sh"]
fn the_command_says_it_is_the_extension_module() {
    let out = server().no_listen().arg("--version").run();
    let version = out.stdout.trim().to_owned();
    assert!(version.ends_with("(extension module)"), "{version}");
    assert!(
        version.contains(&format!("with Python {}.", common::python_version())),
        "{version}"
    );
}

#[test]
#[ignore = "needs an installed wheel: scripts/test-pythons.sh"]
fn a_virtualenv_setting_naming_another_environment_is_a_configuration_error() {
    let other = common::scratch_dir("other-venv");
    let out = server()
        .args([
            format!("--virtualenv={}", other.path().display()),
            "venv_probe:app".into(),
        ])
        .run();
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("is not the environment this maitred runs in"),
        "{}",
        out.stderr
    );
}

#[test]
#[ignore = "needs an installed wheel: scripts/test-pythons.sh"]
fn workers_are_started_with_the_same_python_and_module() {
    let s = server()
        .args(["--workers=2", "venv_probe:app"])
        .listeners(1)
        .start();
    assert_eq!(s.get("/").status, 200);
    let python = std::fs::canonicalize(venv().join("bin").join("python")).expect("python");
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children", pid = s.pid()))
            .expect("children of the supervisor");
    let mut seen = 0;
    for pid in children.split_whitespace() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let exe = std::fs::canonicalize(format!("/proc/{pid}/exe")).ok();
        let real_python = std::fs::canonicalize(&python).ok();
        assert_eq!(exe, real_python, "worker {pid} runs the venv's Python");
        assert_eq!(
            args.get(1..3),
            Some(&["-m".to_owned(), "maitred".to_owned()][..]),
            "{args:?}"
        );
        seen += 1;
    }
    assert_eq!(seen, 2, "two workers: {children}");
}
