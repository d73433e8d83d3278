//! Build script: pins the embedded CPython to the exact installation the
//! binary was compiled against.
//!
//! Without an rpath the dynamic loader resolves `libpython3.X.so.1.0` through
//! the system search path, which on Debian finds `/usr/lib/x86_64-linux-gnu`
//! (Debian's own 3.11.2) before a pyenv or `/usr/local` build. Mixing one
//! CPython's library with another's standard library is a source of obscure
//! crashes, so the binary records the build interpreter's `LIBDIR` as its
//! rpath and exports the interpreter facts the runtime logs and checks.

fn main() {
    let config = pyo3_build_config::get();
    if let Some(lib_dir) = config.lib_dir() {
        // `--enable-new-dtags` writes RUNPATH, which LD_LIBRARY_PATH can still
        // override deliberately; DT_RPATH would silently beat it.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
        println!("cargo:rustc-env=BUILD_PYTHON_LIBDIR={lib_dir}");
    } else {
        println!("cargo:rustc-env=BUILD_PYTHON_LIBDIR=");
    }
    // When the build runs inside a virtualenv, pyo3 reports the venv's
    // `python`; the runtime needs the base interpreter, or every start would
    // silently adopt the build machine's venv.
    let executable = config.executable().map(base_executable).unwrap_or_default();
    println!("cargo:rustc-env=BUILD_PYTHON_EXECUTABLE={executable}");
    println!(
        "cargo:rustc-env=BUILD_PYTHON_VERSION={}.{}",
        config.version().major,
        config.version().minor
    );
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    println!("cargo:rerun-if-changed=build.rs");
}

fn base_executable(executable: &str) -> String {
    std::process::Command::new(executable)
        .args(["-c", "import sys; print(sys._base_executable)"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| executable.to_owned())
}
