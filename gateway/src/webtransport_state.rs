//! What the WebTransport listener shares with the rest of the gateway: what the
//! public listener publishes about it, and what it refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// What the public listener publishes about the WebTransport listener.
#[derive(Debug, Default)]
pub struct Published {
    /// The listener's port, once it listens.
    pub port: Option<u16>,
    /// SHA-256 hashes of the certificates a page may be given: the current one
    /// first (self-signed only; empty with operator certificates).
    pub hashes: Vec<[u8; 32]>,
    /// When the current self-signed certificate expires.
    pub expires: Option<SystemTime>,
}

/// WebTransport sessions refused or closed by the gateway, by reason.
#[derive(Debug, Default)]
pub struct Refusals {
    /// The page's origin is not allowed.
    pub origin: AtomicU64,
    /// A path other than `/` and `/messages`.
    pub path: AtomicU64,
    /// At the session limit.
    pub limit: AtomicU64,
    /// The gateway drains.
    pub draining: AtomicU64,
    /// Datagrams fail the crypto check.
    pub crypto: AtomicU64,
    /// Datagrams that are not KCP.
    pub malformed: AtomicU64,
    /// No KCP session within 30 s.
    pub idle: AtomicU64,
    /// The handshake timed out.
    pub handshake: AtomicU64,
    /// Refused before the handshake: the source had `-webtransport-per-address`
    /// connections already.
    pub address: AtomicU64,
    /// Refused before the handshake: over the handshake rates (`-open-rate`,
    /// `-open-rate-per-source`).
    pub rate: AtomicU64,
    /// Refused before the handshake: [`crate::webtransport::MAX_WAITING`] connections had no KCP session yet.
    pub waiting: AtomicU64,
    /// Datagrams larger than the connection could send (lost, as on UDP).
    pub oversized: AtomicU64,
}

impl Refusals {
    /// (reason label, count) for metrics.
    pub fn counts(&self) -> [(&'static str, u64); 11] {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("origin", n(&self.origin)),
            ("path", n(&self.path)),
            ("limit", n(&self.limit)),
            ("draining", n(&self.draining)),
            ("crypto", n(&self.crypto)),
            ("malformed", n(&self.malformed)),
            ("idle", n(&self.idle)),
            ("handshake", n(&self.handshake)),
            ("address", n(&self.address)),
            ("rate", n(&self.rate)),
            ("waiting", n(&self.waiting)),
        ]
    }
}
