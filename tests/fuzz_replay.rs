//! The fuzz targets' saved inputs, replayed as plain tests on stable Rust.
//!
//! `fuzz/` is a cargo-fuzz project (scripts/fuzz.sh runs it); its target
//! logic lives in `fuzz/targets/`, compiled here as a module, so every
//! input of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes
//! through exactly the function the fuzzer ran. A property that fails
//! panics with the input's path.
//!
//! `fuzz/regressions/OPEN` lists regression inputs that reproduce a bug
//! not fixed yet: they must still fail (so the list stays true), and the
//! test says so when one starts passing, to move it out of the list.

#[path = "../fuzz/targets/mod.rs"]
mod targets;

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted; none if it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Regression inputs of open bugs, relative to fuzz/regressions/.
fn open_bugs() -> BTreeSet<String> {
    let list = fuzz_dir().join("regressions").join("OPEN");
    let text = std::fs::read_to_string(list).unwrap_or_default();
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Runs `target` on every saved input of `name`.
fn replay(name: &str, target: fn(&[u8])) {
    let started = Instant::now();
    let corpus = inputs(&fuzz_dir().join("corpus").join(name));
    assert!(!corpus.is_empty(), "fuzz/corpus/{name} has no inputs");
    let regressions = inputs(&fuzz_dir().join("regressions").join(name));
    let open = open_bugs();
    let mut still_open = 0;
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).expect("read a fuzz input");
        let relative = path
            .strip_prefix(fuzz_dir().join("regressions"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        if relative.as_ref().is_some_and(|r| open.contains(r)) {
            let outcome = catch_unwind(AssertUnwindSafe(|| target(&data)));
            assert!(
                outcome.is_err(),
                "{} passes now: the bug is fixed, so take it out of fuzz/regressions/OPEN",
                path.display()
            );
            still_open += 1;
            continue;
        }
        if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
            panic!(
                "{} fails (replay it with `cargo fuzz run {name} {}` in fuzz/)",
                path.display(),
                path.display()
            );
        }
    }
    eprintln!(
        "{name}: {} corpus and {} regression inputs ({still_open} open bugs) in {:?}",
        corpus.len(),
        regressions.len(),
        started.elapsed()
    );
}

#[test]
fn proxy_forwarded() {
    replay("proxy_forwarded", targets::proxy_forwarded);
}

#[test]
fn proxy_protocol() {
    replay("proxy_protocol", targets::proxy_protocol);
}

#[test]
fn framing() {
    replay("framing", targets::framing);
}

#[test]
fn host_and_te() {
    replay("host_and_te", targets::host_and_te);
}

#[test]
fn values() {
    replay("values", targets::values);
}

#[test]
fn request_path() {
    replay("request_path", targets::request_path);
}

/// Every corpus and regression directory belongs to a target, and every
/// open bug's input exists.
#[test]
fn saved_inputs_belong_to_targets() {
    let names: BTreeSet<&str> = targets::TARGETS.iter().map(|(name, _)| *name).collect();
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                let name = path.file_name().expect("a name").to_string_lossy();
                assert!(names.contains(&*name), "fuzz/{kind}/{name} is no target's");
            }
        }
    }
    for open in open_bugs() {
        let path = fuzz_dir().join("regressions").join(&open);
        assert!(
            path.is_file(),
            "fuzz/regressions/OPEN names {open}, which is missing"
        );
    }
}
