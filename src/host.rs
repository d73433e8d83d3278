//! What hosts this maitred process: the `maitred` binary, with CPython
//! linked in and started by maitred itself, or a Python that is already
//! running and imported maitred as an extension module (`pip install
//! maitred`, whose `maitred` command is `python -m maitred`).
//!
//! The two differ in three facts only, and this module is where they are
//! decided: who starts the interpreter ([`Startup`]), how a supervisor
//! starts its workers again ([`Relaunch`]), and what `--version` says. From
//! [`main`] on, everything else (command line, settings, serving) is the
//! same code. `docs/installation.md` explains why the wheel is built this
//! way.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::cli::{self, Action, EXIT_CONFIG};
use crate::interpreter::{self, Startup};
use crate::process::{self, EXIT_FAILURE, Handover, Origin};
use crate::workers::Relaunch;
use crate::{config, logging};

/// Who runs this process's Python.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// The `maitred` binary: CPython is linked in and maitred starts it.
    Embedded,
    /// The extension module inside a running Python.
    Extension {
        /// That Python's `sys.executable`: workers are started with it.
        executable: PathBuf,
        /// Its version, as `platform.python_version()` gives it.
        version: String,
    },
}

/// How this process was launched: its host and its command line (the
/// program name first, as `argv`).
#[derive(Debug, Clone)]
pub struct Launch {
    pub host: Host,
    pub args: Vec<OsString>,
}

impl Launch {
    /// The `maitred` binary, with this process's own command line.
    pub fn embedded() -> Launch {
        Launch {
            host: Host::Embedded,
            args: std::env::args_os().collect(),
        }
    }

    /// How Python is to be started for the app.
    fn startup(&self) -> Startup {
        match self.host {
            Host::Embedded => Startup::Embedded {
                argv: self.args.clone(),
            },
            Host::Extension { .. } => Startup::Running,
        }
    }

    /// The command a supervisor runs for each worker: the same program with
    /// the same arguments. Inside Python the program is that Python,
    /// running this module, so a worker uses the same interpreter and
    /// virtualenv as its supervisor.
    pub fn relaunch(&self) -> Result<Relaunch, String> {
        let rest = self.args.iter().skip(1).cloned();
        match &self.host {
            Host::Embedded => Ok(Relaunch {
                program: std::env::current_exe()
                    .map_err(|e| format!("cannot find maitred's own binary: {e}"))?,
                args: rest.collect(),
            }),
            Host::Extension { executable, .. } => Ok(Relaunch {
                program: executable.clone(),
                args: ["-m", "maitred"]
                    .into_iter()
                    .map(OsString::from)
                    .chain(rest)
                    .collect(),
            }),
        }
    }

    /// What `--version` prints after the program name.
    pub fn version(&self) -> String {
        let ours = env!("CARGO_PKG_VERSION");
        match &self.host {
            Host::Embedded => format!(
                "{ours} with Python {} (embedded)",
                interpreter::build_python_version()
            ),
            Host::Extension { version, .. } => {
                format!("{ours} with Python {version} (extension module)")
            }
        }
    }
}

/// Runs maitred as `launch` says, from the command line to the exit code.
///
/// Start-up order matters: descriptors handed over first (while the
/// process has one thread), then settings (bad ones exit 2 before anything
/// happens), then logging, then [`process::run`].
pub fn main(launch: &Launch) -> u8 {
    let handover = match Handover::take() {
        Ok(handover) => handover,
        Err(e) => {
            eprintln!("maitred: {e}");
            return EXIT_FAILURE;
        }
    };
    let invocation = match cli::parse(launch.args.iter().cloned(), launch.version()) {
        Ok(invocation) => invocation,
        Err(e) => {
            eprintln!("maitred: {e}");
            return EXIT_CONFIG;
        }
    };
    if let Action::Config(command) = invocation.action {
        return cli::run_config(command, &invocation);
    }
    let loaded = match config::load(&invocation.layers) {
        Ok(loaded) => loaded,
        Err(e) => {
            cli::report(&e);
            return EXIT_CONFIG;
        }
    };
    logging::init(&loaded.plan.log);
    process::report_start(&invocation.notices, &loaded);
    let origin = Origin {
        startup: launch.startup(),
        relaunch: launch.relaunch(),
    };
    match process::run(&loaded.plan, handover, &origin) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extension(args: &[&str]) -> Launch {
        Launch {
            host: Host::Extension {
                executable: PathBuf::from("/venv/bin/python"),
                version: "3.13.1".into(),
            },
            args: args.iter().map(OsString::from).collect(),
        }
    }

    #[test]
    fn workers_of_an_extension_run_the_same_python_and_module() {
        let relaunch = extension(&["maitred", "--workers", "2", "app:app"])
            .relaunch()
            .expect("relaunch");
        assert_eq!(relaunch.program, PathBuf::from("/venv/bin/python"));
        assert_eq!(
            relaunch.args,
            ["-m", "maitred", "--workers", "2", "app:app"].map(OsString::from)
        );
    }

    #[test]
    fn workers_of_the_binary_run_the_binary() {
        let launch = Launch {
            host: Host::Embedded,
            args: ["maitred", "app:app"].map(OsString::from).to_vec(),
        };
        let relaunch = launch.relaunch().expect("relaunch");
        assert_eq!(relaunch.program, std::env::current_exe().expect("exe"));
        assert_eq!(relaunch.args, [OsString::from("app:app")]);
        assert!(matches!(launch.startup(), Startup::Embedded { argv } if argv == launch.args));
    }

    #[test]
    fn the_version_names_the_python_and_how_it_is_hosted() {
        let version = extension(&["maitred"]).version();
        assert_eq!(
            version,
            format!(
                "{} with Python 3.13.1 (extension module)",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert!(matches!(extension(&["x"]).startup(), Startup::Running));
        let embedded = Launch {
            host: Host::Embedded,
            args: vec![],
        }
        .version();
        assert!(embedded.ends_with("(embedded)"), "{embedded}");
        assert!(embedded.contains("with Python 3."), "{embedded}");
    }
}
