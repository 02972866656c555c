#![deny(missing_docs)]
//! kcpgate, the native gateway: a drop-in, wire-compatible kcptun server and client
//! built on the sans-IO core.

pub mod admin;
pub mod assets;
pub mod client;
pub mod config;
pub mod config_file;
pub mod conn;
pub mod control;
pub mod demo;
pub mod driver;
pub mod handoff;
pub mod http;
pub mod listeners;
pub mod public;
pub mod runtime;
pub mod server;
pub mod snmp;
pub mod transport;
pub mod tunnel;
pub mod udp;
pub mod webtransport;
pub mod webtransport_state;

/// kcpgate's version and the commit it was built from: "0.1.0 (commit 2825101, 2026-11-30)".
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("KCPGATE_COMMIT"), ")");
