//! Server and application logging through `tracing`, to stderr.
//!
//! The level comes from `log.level` unless `RUST_LOG` is set, which wins so
//! a one-off debugging session needs no config change.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::plan::{LogFormat, LogPlan};

pub fn init(log: &LogPlan) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| {
            log.level
                .iter()
                .cloned()
                .fold(EnvFilter::default(), EnvFilter::add_directive)
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        // Colour only for a person at a terminal, and never when NO_COLOR
        // is set (https://no-color.org).
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    match log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
