//! maitred: a production WSGI server. hyper and tokio accept and parse
//! HTTP; a pool of OS threads runs the Python application in an embedded
//! CPython.
//!
//! [`host::main`] parses the command line, loads the settings into a
//! [`config::Plan`], sets up logging and calls [`process::run`]; the binary
//! (`src/main.rs`) and the Python extension module (`python/`, what `pip
//! install maitred` gives) both call it, and [`host`] holds what differs
//! between them.
//! `docs/architecture.md` maps the modules and the direction of every
//! dependency between them; in short, from the bottom up:
//!
//! - [`scheme`], [`metrics`], [`signals`], [`framing`], [`budget`]: vocabulary and
//!   leaves;
//! - [`proxy`], [`access`], [`listen`]: protocol decisions and sockets,
//!   knowing nothing of settings;
//! - [`config`] and [`cli`]: settings, layered and turned into the plan;
//! - [`connection`], [`interpreter`], [`wsgi`], [`gateway`], [`server`],
//!   [`admin`], [`workers`]: the parts that act on the plan;
//! - [`process`]: the one place that hands the plan's parts out;
//! - [`host`]: the binary or the extension module, calling the rest.

pub mod access;
pub mod admin;
pub mod budget;
pub mod cli;
pub mod config;
pub mod connection;
pub mod framing;
pub mod gateway;
pub mod host;
pub mod interpreter;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod proxy;
pub mod scheme;
pub mod server;
pub mod signals;
pub mod workers;
pub mod wsgi;
