//! A real Flask application, with its packages in a virtualenv that the
//! test creates (pinned in tests/requirements-flask.txt) and maitred honours.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Conn, server};

const BUILD_PYTHON: &str = env!("BUILD_PYTHON_EXECUTABLE");

/// `target/test-venvs/flask`, created on first use and reused afterwards;
/// with an installed maitred under test, its own venv (where
/// scripts/test-pythons.sh installs the same requirements).
fn flask_venv() -> PathBuf {
    if let Some(venv) = common::installed_venv() {
        return venv;
    }
    let root = common::project_dir();
    let venv = root.join("target/test-venvs/flask");
    let python = venv.join("bin/python");
    let requirements = root.join("tests/requirements-flask.txt");
    let ready = venv.join(".maitred-requirements");
    let wanted = std::fs::read_to_string(&requirements).expect("requirements");
    if std::fs::read_to_string(&ready).ok().as_deref() == Some(wanted.as_str()) {
        return venv;
    }
    let _ = std::fs::remove_dir_all(&venv);
    run(Command::new(BUILD_PYTHON).args(["-m", "venv"]).arg(&venv));
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements));
    std::fs::write(&ready, wanted).expect("mark venv ready");
    venv
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn multipart(boundary: &str) -> String {
    format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nmaitred\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"a.txt\"\r\n\
         Content-Type: text/plain\r\n\r\nfile contents\r\n--{boundary}--\r\n"
    )
}

fn check_flask_app(s: &common::Server, venv: &Path) {
    let index = s.json("/");
    assert_eq!(index["message"], "hello from flask");
    assert_eq!(index["flask"], "3.1.3");
    assert_eq!(index["prefix"], *venv.to_string_lossy());
    let flask_file = index["flask_file"].as_str().unwrap_or_default();
    assert!(
        flask_file.starts_with(&*venv.to_string_lossy()),
        "Flask from the venv: {flask_file}"
    );

    let mut c = Conn::open(s);
    let body = multipart("XyZ");
    c.send_str(&format!(
        "POST /form HTTP/1.1\r\nHost: app.test\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let form = c.response().json();
    assert_eq!(form["name"], "maitred");
    assert_eq!(form["upload"], "file contents");
    assert_eq!(form["filename"], "a.txt");

    // Chunked upload of JSON on the same connection.
    c.send_str(
        "POST /json HTTP/1.1\r\nHost: app.test\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n8\r\n{\"a\": [1\r\n5\r\n, 2]}\r\n0\r\n\r\n",
    );
    let json = c.response().json();
    assert_eq!(json["received"], serde_json::json!({"a": [1, 2]}));

    c.send_str("GET /stream?name=zed HTTP/1.1\r\nHost: app.test\r\n\r\n");
    let streamed = c.response();
    assert_eq!(streamed.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        streamed.text(),
        (0..5)
            .map(|i| format!("part {i} of zed\n"))
            .collect::<String>()
    );

    c.send_str("GET /go HTTP/1.1\r\nHost: app.test:8443\r\n\r\n");
    let go = c.response();
    assert_eq!(go.status, 302);
    assert_eq!(go.header("location"), Some("http://app.test:8443/"));

    c.send_str("GET /cookie HTTP/1.1\r\nHost: app.test\r\nCookie: session_id=old; other=1\r\n\r\n");
    let cookie = c.response();
    assert_eq!(cookie.json()["seen"], "old");
    assert!(
        cookie
            .header("set-cookie")
            .is_some_and(|v| v.contains("session_id=abc123"))
    );

    // Flask handles its own exceptions: a 500 page from Flask, logged by it.
    c.send_str("GET /boom HTTP/1.1\r\nHost: app.test\r\n\r\n");
    let boom = c.response();
    assert_eq!(boom.status, 500);
    assert!(boom.text().contains("Internal Server Error"));
    assert!(
        s.wait_for_log("flask view failed", std::time::Duration::from_secs(5)),
        "{}",
        s.log()
    );
}

#[test]
fn a_flask_app_runs_from_its_virtualenv() {
    let venv = flask_venv();
    let s = server()
        .args([
            format!("--virtualenv={}", venv.display()),
            "flask_app:app".into(),
        ])
        .start();
    check_flask_app(&s, &venv);

    // The same through an activated virtualenv.
    let s = server()
        .env("VIRTUAL_ENV", venv.to_string_lossy())
        .arg("flask_app:app")
        .start();
    check_flask_app(&s, &venv);
}
