//! kcpgate, the native gateway: a drop-in, wire-compatible kcptun server and client
//! built on the sans-IO core.

pub mod admin;
pub mod client;
pub mod config;
pub mod conn;
pub mod control;
pub mod driver;
pub mod runtime;
pub mod server;
pub mod snmp;
pub mod transport;
pub mod tunnel;
pub mod udp;
pub mod webtransport;
