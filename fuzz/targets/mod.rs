//! The logic of maitred's fuzz targets, one public function per target.
//!
//! Each function takes the fuzzer's bytes and panics when a property
//! fails. The cargo-fuzz binaries in `fuzz/fuzz_targets/` call them under
//! libFuzzer (scripts/fuzz.sh); `tests/fuzz_replay.rs` compiles this same
//! module into the main package and runs every saved corpus and regression
//! input through them on stable Rust, without a fuzzer.
//!
//! Only crates the main package already depends on are used here
//! (`maitred`, `http`, `tokio`), so the replay test needs no new
//! dependency.

mod framing;
mod proxy;
mod request_path;
mod values;

pub use framing::{framing, host_and_te};
pub use proxy::{proxy_forwarded, proxy_protocol};
pub use request_path::request_path;
pub use values::values;

/// A target: panics when a property fails for the input.
pub type Target = fn(&[u8]);

/// Every target, by the name of its binary, corpus and regression
/// directories.
pub const TARGETS: &[(&str, Target)] = &[
    ("proxy_forwarded", proxy_forwarded),
    ("proxy_protocol", proxy_protocol),
    ("framing", framing),
    ("host_and_te", host_and_te),
    ("values", values),
    ("request_path", request_path),
];

/// Whether `bug`, an open bug already reported (fuzz/regressions/OPEN),
/// is to be stepped over: `MAITRED_FUZZ_KNOWN=name,name` lets a long
/// fuzzing run look past it. The replay test never sets it. No bug is
/// open now, so no target calls it; a target checks `known("name")` where
/// an open bug would fail a property.
#[allow(dead_code)]
fn known(bug: &str) -> bool {
    static KNOWN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KNOWN
        .get_or_init(|| {
            std::env::var("MAITRED_FUZZ_KNOWN")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_owned())
                .collect()
        })
        .iter()
        .any(|k| k == bug)
}

/// A small deterministic generator (splitmix64), for choices derived from
/// the input (where to split a stream into reads).
struct Rng(u64);

impl Rng {
    fn new(seed: &[u8]) -> Rng {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for &b in seed {
            state = (state ^ u64::from(b)).wrapping_mul(0x1000_0000_01b3);
        }
        Rng(state)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `1..=max`.
    fn between_1_and(&mut self, max: usize) -> usize {
        1 + (self.next() % max.max(1) as u64) as usize
    }
}

/// Splits `data` into the pieces of a stream read `reads` at a time: the
/// lengths come from `rng`, mostly small, sometimes large.
fn split<'a>(data: &'a [u8], rng: &mut Rng) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let max = if rng.next() % 4 == 0 { 512 } else { 8 };
        let n = rng.between_1_and(max).min(rest.len());
        pieces.push(&rest[..n]);
        rest = &rest[n..];
    }
    pieces
}

/// The first byte (a target's settings) and the rest.
fn first_byte(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&b, rest)) => (b, rest),
        None => (0, data),
    }
}
