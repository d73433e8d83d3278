//! The fuzz binaries link libpython through maitred; maitred's own build
//! script pins its rpath only for maitred's targets, so this one pins the
//! same CPython (the interpreter pyo3 builds against) for these binaries.

fn main() {
    let config = pyo3_build_config::get();
    if let Some(lib_dir) = config.lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-changed=build.rs");
}
