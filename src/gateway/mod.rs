//! The gateway between HTTP and WSGI: hyper parses and frames, this module adds
//! maitred's rules (refusals, keep-alive, Content-Length enforcement, error
//! pages) and bridges requests to the WSGI pool.

pub mod body;
pub mod policy;
pub mod record;
pub mod service;
