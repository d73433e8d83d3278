//! The embedded interpreter: the libpython the binary was built against is
//! the one loaded, and a virtualenv is honoured the way its own `python`
//! would honour it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::server;

/// The interpreter the build used (recorded by build.rs).
const BUILD_PYTHON: &str = env!("BUILD_PYTHON_EXECUTABLE");
const BUILD_LIBDIR: &str = env!("BUILD_PYTHON_LIBDIR");

/// A fresh virtualenv (no pip: fast) with a marker module in it.
fn make_venv(parent: &Path) -> PathBuf {
    let venv = parent.join("venv");
    let status = Command::new(BUILD_PYTHON)
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .expect("run python -m venv");
    assert!(status.success());
    let site = venv.join("lib/python3.11/site-packages");
    std::fs::write(site.join("venv_marker.py"), "MARKER = 'from-venv'\n").expect("marker");
    venv
}

fn check_venv_is_used(s: &common::Server, venv: &Path) {
    let info = s.json("/");
    let venv = venv.to_string_lossy();
    assert_eq!(info["prefix"], *venv, "sys.prefix is the venv");
    assert_eq!(
        info["executable"],
        format!("{venv}/bin/python"),
        "sys.executable for subprocesses"
    );
    assert_eq!(info["marker"], "from-venv", "venv packages import");
    assert_eq!(
        info["base_site_on_path"], false,
        "include-system-site-packages = false is honoured"
    );
    assert!(
        s.log().contains(&format!("virtualenv: {venv}")),
        "{}",
        s.log()
    );
}

#[test]
fn virtualenv_setting_is_honoured() {
    let dir = common::scratch_dir("venv-flag");
    let venv = make_venv(dir.path());
    let s = server()
        .args([
            format!("--virtualenv={}", venv.display()),
            "venv_probe:app".into(),
        ])
        .start();
    check_venv_is_used(&s, &venv);
}

#[test]
fn active_virtualenv_is_honoured() {
    let dir = common::scratch_dir("venv-env");
    let venv = make_venv(dir.path());
    let s = server()
        .env("VIRTUAL_ENV", venv.to_string_lossy())
        .arg("venv_probe:app")
        .start();
    check_venv_is_used(&s, &venv);
}

#[test]
fn without_a_virtualenv_the_build_interpreter_is_used() {
    let s = server().arg("venv_probe:app").start();
    let info = s.json("/");
    assert_eq!(info["marker"], serde_json::Value::Null);
    assert_eq!(info["version"], serde_json::json!([3, 11]));
    assert_eq!(info["executable"], BUILD_PYTHON);
    assert_eq!(info["prefix"], info["base_prefix"]);
}

#[test]
fn the_loaded_libpython_is_the_one_built_against() {
    let s = server().arg("venv_probe:app").start();
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", s.pid())).expect("maps");
    let libs: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains("libpython"))
        .collect();
    assert!(!libs.is_empty(), "libpython is mapped");
    let build_dir = std::fs::canonicalize(BUILD_LIBDIR).expect("build libdir");
    for lib in &libs {
        let dir = std::fs::canonicalize(Path::new(lib).parent().expect("dir")).expect("dir");
        assert_eq!(dir, build_dir, "{lib} is not from {BUILD_LIBDIR}");
    }
    assert!(
        s.log().contains(&format!("Python library: {}", libs[0])),
        "{}",
        s.log()
    );
    assert!(
        !s.log().contains("but maitred was built against"),
        "no mismatch warning"
    );
}

#[test]
fn a_directory_that_is_not_a_virtualenv_is_a_configuration_error() {
    let dir = common::scratch_dir("not-venv");
    let out = server()
        .args([
            format!("--virtualenv={}", dir.path().display()),
            "venv_probe:app".into(),
        ])
        .run();
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("is not a virtualenv"), "{}", out.stderr);
    assert!(
        out.stderr.contains("python3 -m venv"),
        "says what to do: {}",
        out.stderr
    );
}

#[test]
fn a_virtualenv_of_another_python_version_is_refused() {
    let dir = common::scratch_dir("venv-312");
    let venv = dir.path().join("venv");
    std::fs::create_dir_all(venv.join("bin")).expect("mkdir");
    std::fs::write(
        venv.join("pyvenv.cfg"),
        "home = /usr/bin\nversion = 3.12.1\n",
    )
    .expect("cfg");
    std::os::unix::fs::symlink(BUILD_PYTHON, venv.join("bin/python")).expect("link");
    let out = server()
        .env("VIRTUAL_ENV", venv.to_string_lossy())
        .arg("venv_probe:app")
        .run();
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("was created by Python 3.12, but this maitred embeds Python 3.11"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_virtualenv_of_another_python_installation_is_refused() {
    // Same 3.11, different installation (Debian's, say): its standard
    // library would be paired with this binary's libpython.
    let dir = common::scratch_dir("venv-other-home");
    let venv = dir.path().join("venv");
    std::fs::create_dir_all(venv.join("bin")).expect("mkdir");
    std::fs::write(
        venv.join("pyvenv.cfg"),
        "home = /usr/bin\nversion = 3.11.2\n",
    )
    .expect("cfg");
    std::os::unix::fs::symlink(BUILD_PYTHON, venv.join("bin/python")).expect("link");
    let out = server()
        .args([
            format!("--virtualenv={}", venv.display()),
            "venv_probe:app".into(),
        ])
        .run();
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("was created by the Python in /usr/bin"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("-m venv"),
        "says what to do: {}",
        out.stderr
    );
}
