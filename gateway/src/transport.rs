//! What a [`Driver`](crate::driver::Driver) runs its endpoint over: a source and
//! sink of datagrams with peers of some kind. UDP sockets (peers are addresses)
//! and the WebTransport listener (peers are browser sessions) both are one.

use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::net::SocketAddr;

use kcpgate_core::{Outcome, MTU_LIMIT};
use serde::Serialize;
use utoipa::ToSchema;

use crate::udp::BatchSocket;

/// Which transport carries a session's datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// UDP datagrams (kcptun clients).
    Udp,
    /// WebTransport datagrams (browsers).
    Webtransport,
}

impl TransportKind {
    /// Every transport, in the order of per-transport arrays.
    pub const ALL: [TransportKind; 2] = [TransportKind::Udp, TransportKind::Webtransport];

    /// Its name in logs and the API.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Udp => "udp",
            TransportKind::Webtransport => "webtransport",
        }
    }
}

/// A datagram transport. See the module docs.
pub trait Transport: Send + 'static {
    /// One peer: the core endpoint's session key.
    type Peer: Clone + Eq + Hash + Display + Send + Sync + 'static;

    /// Which transport this is.
    const KIND: TransportKind;

    /// Waits until datagrams arrived ([`Transport::datagrams`]) or a peer left
    /// ([`Transport::take_gone`]).
    fn recv(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;

    /// The datagrams of the last receive, with their peers.
    fn datagrams(&mut self) -> impl Iterator<Item = (Self::Peer, &mut [u8])> + '_;

    /// A peer whose transport session ended since the last call.
    fn take_gone(&mut self) -> Option<Self::Peer> {
        None
    }

    /// Sends datagrams that lie back to back in `data`, each `segment` bytes but
    /// the last (the shape of the core's `poll_transmit`).
    fn send(
        &mut self,
        to: &Self::Peer,
        data: &[u8],
        segment: usize,
    ) -> impl Future<Output = std::io::Result<()>> + Send;

    /// The largest datagram it carries; sessions' MTU is clamped to it.
    fn max_datagram(&self) -> usize {
        MTU_LIMIT
    }

    /// How many datagrams of `size` bytes one [`Transport::send`] should carry.
    fn max_segments(&self, size: usize) -> usize;

    /// The local address peers reach.
    fn local_addr(&self) -> SocketAddr;

    /// A peer's network address, for logs and the API.
    fn address(peer: &Self::Peer) -> SocketAddr;

    /// The peer at a network address, where a transport's peers are just that
    /// (UDP): for datagrams another task hands over.
    fn peer_at(addr: SocketAddr) -> Option<Self::Peer> {
        let _ = addr;
        None
    }

    /// What the endpoint did with a peer's datagram, for transports that act on
    /// it (WebTransport closes a browser session whose datagrams fail the
    /// crypto check, or that arrives past the session limit).
    fn observed(&mut self, _from: &Self::Peer, _outcome: &Outcome) {}

    /// A peer's KCP session ended, with `reason`.
    fn session_ended(&mut self, _peer: &Self::Peer, _reason: &str) {}
}

impl Transport for BatchSocket {
    type Peer = SocketAddr;

    const KIND: TransportKind = TransportKind::Udp;

    fn recv(&mut self) -> impl Future<Output = std::io::Result<()>> + Send {
        BatchSocket::recv(self)
    }

    fn datagrams(&mut self) -> impl Iterator<Item = (SocketAddr, &mut [u8])> + '_ {
        BatchSocket::datagrams(self)
    }

    fn send(
        &mut self,
        to: &SocketAddr,
        data: &[u8],
        segment: usize,
    ) -> impl Future<Output = std::io::Result<()>> + Send {
        self.send_segments(*to, data, segment)
    }

    fn max_segments(&self, size: usize) -> usize {
        crate::udp::max_segments(size)
    }

    fn local_addr(&self) -> SocketAddr {
        BatchSocket::local_addr(self).unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    fn address(peer: &SocketAddr) -> SocketAddr {
        *peer
    }

    fn peer_at(addr: SocketAddr) -> Option<SocketAddr> {
        Some(addr)
    }

    fn observed(&mut self, from: &SocketAddr, outcome: &Outcome) {
        // A session still proving its address answers its peer too.
        if matches!(outcome, Outcome::Created | Outcome::Replaced { .. } | Outcome::Unproven | Outcome::Moved) {
            self.session_started(from);
        }
    }

    fn session_ended(&mut self, peer: &SocketAddr, _reason: &str) {
        BatchSocket::session_ended(self, peer);
    }
}
