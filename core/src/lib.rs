//! kcpgate's protocol core: the kcptun stack as sans-IO state machines.
//!
//! Nothing here touches a socket, a thread or a clock. Time comes in as an argument
//! (`u32` milliseconds, wrapping, like kcp-go's), received datagrams come in through
//! method calls, and outgoing datagrams come out of [`Endpoint::poll_transmit`] for
//! the caller to send. The same code runs in the native gateway and, compiled to
//! WebAssembly, in the browser.
//!
//! A driver needs only what this page re-exports: an [`Endpoint`] built from
//! [`SessionSettings`] (or an [`EndpointConfig`]), its [`Event`]s, the stream verbs
//! on it, a [`SessionSnapshot`] for views, and [`ms_since`]/[`ms_until`] for
//! the wrapping clock. The [`settings`] module is the table of numbers every
//! configuration source checks against.
//!
//! The layers below (KCP, FEC, packet crypto, smux, snappy, QPP, the datagram
//! pipeline and the listener) are private to the crate. The `layers` feature makes
//! them public, for the benchmarks, the fuzz targets, the browser's packet
//! inspector and tests that forge datagrams; a driver does not turn it on.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// Declares a layer below the facade: public with the `layers` feature, private to
/// the crate without it.
macro_rules! layers {
    ($($(#[$attr:meta])* $name:ident;)*) => {$(
        #[cfg(feature = "layers")]
        $(#[$attr])*
        pub mod $name;
        #[cfg(not(feature = "layers"))]
        $(#[$attr])*
        // Parts only the layers' own users call (the inspector, forging tests) are
        // unused without the feature.
        #[allow(dead_code)]
        pub(crate) mod $name;
    )*};
}

layers! {
    admission;
    crypto;
    endpoint;
    error;
    fec;
    inspect;
    kcp;
    listener;
    messages;
    pacer;
    pipeline;
    qpp;
    replay;
    session;
    smux;
    snappy;
    snmp;
    stack;
    transmit;
    wire;
}

pub mod settings;

pub use admission::{Admission, OpeningGate, OpeningGuard, OpeningLimits, Refusal};
pub use crypto::{Method, OpenError, PacketCrypto};
pub use endpoint::{Endpoint, EndpointConfig, Event, SessionId, Transmit};
pub use error::SettingsError;
pub use kcp::{KcpState, Mode};
pub use listener::{DropReason, ListenerStats, Outcome, DEFAULT_MAX_UNPROVEN};
pub use pipeline::{SessionConfig, MTU_LIMIT};
pub use qpp::QppWarning;
pub use session::{Framing, Session, SessionEnd, SessionSnapshot, StreamEnd, StreamEvent, StreamSnapshot};
pub use settings::{Number, SessionSettings};
pub use smux::{Read, Role, StreamError};
pub use snmp::Snmp;

/// Milliseconds from `then` to `now` on the wrapping clock, 0 if `then` is later.
pub fn ms_since(now: u32, then: u32) -> u32 {
    kcp::diff(now, then).max(0) as u32
}

/// Milliseconds from `now` until `deadline` on the wrapping clock, 0 if it has passed.
pub fn ms_until(deadline: u32, now: u32) -> u32 {
    ms_since(deadline, now)
}
