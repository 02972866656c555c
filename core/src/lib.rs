//! kcpgate's protocol core: the kcptun stack as sans-IO state machines.
//!
//! Nothing here touches a socket, a thread or a clock. Time comes in as an argument
//! (`u32` milliseconds, wrapping, like kcp-go's), received datagrams come in through
//! method calls, and outgoing datagrams are collected in a reusable
//! [`transmit::TransmitQueue`] for the caller to send. The same code runs in the
//! native gateway and, compiled to WebAssembly, in the browser.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admission;
pub mod crypto;
pub mod endpoint;
pub mod error;
pub mod fec;
pub mod inspect;
pub mod kcp;
pub mod listener;
pub mod messages;
pub mod pacer;
pub mod pipeline;
pub mod qpp;
pub mod replay;
pub mod session;
pub mod settings;
pub mod smux;
pub mod snappy;
pub mod snmp;
pub mod stack;
pub mod transmit;
pub mod wire;
