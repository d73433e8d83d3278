//! `maitred`: the command line, logging, and a call into the library.
//!
//! Start-up order matters: descriptors handed over first (while the process
//! has one thread), then settings (bad ones exit 2 before anything
//! happens), then logging, then [`process::run`].

use std::process::ExitCode;

use maitred::cli::{self, Action, EXIT_CONFIG};
use maitred::process::{self, EXIT_FAILURE, Handover};
use maitred::{config, logging};

/// mimalloc instead of glibc's allocator: requests allocate and free many
/// small buffers, often on different threads (a response built on a Python
/// thread is freed on the I/O thread), which glibc's arenas handle poorly
/// (see docs/performance.md). Python keeps its own allocator for objects.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let handover = match Handover::take() {
        Ok(handover) => handover,
        Err(e) => {
            eprintln!("maitred: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let invocation = match cli::parse(std::env::args_os()) {
        Ok(invocation) => invocation,
        Err(e) => {
            eprintln!("maitred: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Action::Config(command) = invocation.action {
        return ExitCode::from(cli::run_config(command, &invocation));
    }
    let loaded = match config::load(&invocation.layers) {
        Ok(loaded) => loaded,
        Err(e) => {
            cli::report(&e);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(&loaded.plan.log);
    process::report_start(&invocation.notices, &loaded);
    let code = match process::run(&loaded.plan, handover) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            e.exit_code()
        }
    };
    // Python's threads are parked in the job queue: exit without waiting
    // for them or finalizing the interpreter.
    std::process::exit(i32::from(code))
}
