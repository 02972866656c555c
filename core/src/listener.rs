//! Which datagram belongs to which session (docs/protocol.md §8), sans-IO.
//!
//! [`Listener`] is kcp-go's listener without the socket: one table from remote
//! address to session (a bare [`Connection`], or anything built around one, see
//! [`Routed`]), the rule for which datagram may create a session, and the accept
//! backlog. A listener that does not accept holds dialled sessions only: the
//! client side, which takes datagrams from the addresses it dialled and drops, and
//! counts, any other. Addresses are any hashable type (a `SocketAddr` in the
//! gateway), so the rules can be driven and tested without sockets.

use std::collections::VecDeque;
use std::hash::Hash;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use crate::admission::{Admission, OpeningGate, OpeningLimits, Refusal};
use crate::crypto::{NonceSource, OpenError, PacketCrypto};
use crate::error::SettingsError;
use crate::pipeline::{Connection, SessionConfig};
use crate::replay;
use crate::snmp::Snmp;
use crate::wire::Datagram;

/// kcp-go's accept backlog.
pub const ACCEPT_BACKLOG: usize = 128;

/// Closed sessions remembered at most (see [`Listener::close`]); past it, a closed
/// session's peer may open a stale session again with its first segment.
const MAX_REFUSED: usize = 65_536;

/// Why the listener dropped a datagram before any session saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Shorter than the crypto header.
    TooShort,
    /// CRC or AEAD check failed: wrong key, forged or corrupt (`InCsumErrors`).
    Checksum,
    /// Fewer than 12 bytes after the crypto header.
    Runt,
    /// From an unknown address and carrying no conversation id (e.g. parity only).
    NoConv,
    /// What no honest peer sends: a datagram longer than any peer's MTU may be
    /// (1,500 bytes; kcp-go reads no more), refused before it costs a decryption;
    /// or a header (an unknown KCP command, or a data shard whose size field
    /// contradicts its length) in a datagram that would open or replace a session.
    /// kcp-go would act on such a header; that is a cheap way to make a server hold
    /// memory or drop a client, so it is refused.
    Malformed,
    /// From a known address with another conversation id and `sn ≠ 0`.
    ConvMismatch,
    /// A new peer while 128 sessions wait to be accepted.
    BacklogFull,
    /// A copy of a datagram seen recently: by its session, or, for one that would
    /// open a session, by the listener (a replay, or the network's duplicate).
    Replayed,
    /// From an address with no session, and not a session's first datagram (its
    /// first segment is not data with `sn` 0): the peer of a session this side no
    /// longer has (it restarted), a new peer whose first datagram was lost (it is
    /// sent again), or a copy sent from elsewhere. kcp-go would open a session that
    /// can never carry data.
    MidSession,
    /// A new session from a source over its rate (see [`OpeningLimits`]).
    SourceLimit,
    /// A new session while all sources together are over the rate.
    OpeningLimit,
    /// From a session the application closed (`Listener::close`), still carrying
    /// its old conversation id: the peer has not noticed yet, and its datagrams must
    /// not bring the session back.
    Closed,
    /// From an address with no session while the listener takes no new ones (a
    /// client, or a server that is draining or at its session limit).
    NotAccepting,
}

impl DropReason {
    /// Every reason, in the order of [`ListenerStats::drops`].
    pub const ALL: [DropReason; 13] = [
        DropReason::TooShort,
        DropReason::Checksum,
        DropReason::Runt,
        DropReason::NoConv,
        DropReason::Malformed,
        DropReason::ConvMismatch,
        DropReason::BacklogFull,
        DropReason::Replayed,
        DropReason::MidSession,
        DropReason::SourceLimit,
        DropReason::OpeningLimit,
        DropReason::Closed,
        DropReason::NotAccepting,
    ];

    /// Its name in counters (`snake_case`), as the admin API and `/metrics` show it.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::Checksum => "checksum",
            DropReason::Runt => "runt",
            DropReason::NoConv => "no_conv",
            DropReason::Malformed => "malformed",
            DropReason::ConvMismatch => "conv_mismatch",
            DropReason::BacklogFull => "backlog_full",
            DropReason::Replayed => "replayed",
            DropReason::MidSession => "mid_session",
            DropReason::SourceLimit => "source_limit",
            DropReason::OpeningLimit => "opening_limit",
            DropReason::Closed => "closed",
            DropReason::NotAccepting => "not_accepting",
        }
    }
}

/// What a datagram dropped for this reason was, in a sentence for operators.
impl core::fmt::Display for DropReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            DropReason::TooShort => "Shorter than the crypto header.",
            DropReason::Checksum => "Failed the checksum or authentication: a wrong key, forged or corrupt.",
            DropReason::Runt => "Too short for KCP after the crypto header.",
            DropReason::NoConv => "From an unknown address, with no conversation (FEC parity alone).",
            DropReason::Malformed => {
                "Longer than any MTU (1,500 bytes), or a header no honest peer sends in a datagram that would \
                 open a session."
            }
            DropReason::ConvMismatch => "Another conversation than the address's session, not a first segment.",
            DropReason::BacklogFull => "A new peer while the accept backlog was full.",
            DropReason::Replayed => "A copy of a datagram seen recently (replayed or duplicated).",
            DropReason::MidSession => {
                "From an unknown address and not a session's first datagram (a client of a session this side \
                 no longer has, or a copy sent from elsewhere)."
            }
            DropReason::SourceLimit => "A new session over its source's rate (`open_rate_per_source`).",
            DropReason::OpeningLimit => "A new session while all sources together were over the rate (`open_rate`).",
            DropReason::Closed => "For a session closed (kicked) a short while ago.",
            DropReason::NotAccepting => "A new peer while no sessions were accepted (draining, or at `max_sessions`).",
        })
    }
}

/// What `Listener::handle_datagram` did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Given to the session of that address.
    Delivered,
    /// A new session was created for the address and queued for accept.
    Created,
    /// The peer restarted (new conv, sn 0): its old session was closed and a new one
    /// created in its place.
    Replaced {
        /// The conversation that was replaced.
        old_conv: u32,
    },
    /// Dropped, for this reason.
    Dropped(DropReason),
}

/// Counters of datagrams the listener dropped before session lookup, and of the
/// sessions it made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// By [`DropReason`], in [`DropReason::ALL`] order.
    drops: [u64; DropReason::ALL.len()],
    /// Sessions created.
    pub created: u64,
    /// Sessions replaced by a restarted peer.
    pub replaced: u64,
    /// Resets sent: to a peer of a session this side does not have (see
    /// `kcp::CMD_RESET`).
    pub resets: u64,
}

impl ListenerStats {
    fn count(&mut self, drop: DropReason) {
        self.drops[drop as usize] += 1;
    }

    /// Each reason's count, in [`DropReason::ALL`] order.
    pub fn drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.into_iter().map(|r| (r, self.drops[r as usize]))
    }

    /// Adds `other`'s counts to these.
    pub fn accumulate(&mut self, other: &ListenerStats) {
        for (mine, theirs) in self.drops.iter_mut().zip(other.drops) {
            *mine += theirs;
        }
        self.created += other.created;
        self.replaced += other.replaced;
        self.resets += other.resets;
    }

    /// Datagrams dropped, all reasons.
    pub fn dropped(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// A reason's count: `stats[DropReason::Checksum]`.
impl std::ops::Index<DropReason> for ListenerStats {
    type Output = u64;

    fn index(&self, reason: DropReason) -> &u64 {
        &self.drops[reason as usize]
    }
}

/// What a listener's table holds: a session built around one [`Connection`].
pub trait Routed {
    /// The session's conversation id.
    fn conv(&self) -> u32;
    /// Takes one datagram whose crypto layer the listener already removed.
    fn handle_plain(&mut self, now: u32, plain: &[u8]);
    /// Records a received datagram's nonce fingerprint; false if the session saw
    /// it recently (the datagram is a copy and is dropped).
    fn first_sight(&mut self, fingerprint: u64) -> bool;
    /// The crypto the session was opened with.
    fn crypto(&self) -> &Arc<PacketCrypto>;
    /// The session's counters.
    fn snmp(&self) -> Snmp;
}

impl Routed for Connection {
    fn conv(&self) -> u32 {
        Connection::conv(self)
    }

    fn handle_plain(&mut self, now: u32, plain: &[u8]) {
        Connection::handle_plain(self, now, plain)
    }

    fn first_sight(&mut self, fingerprint: u64) -> bool {
        Connection::first_sight(self, fingerprint)
    }

    fn crypto(&self) -> &Arc<PacketCrypto> {
        Connection::crypto(self)
    }

    fn snmp(&self) -> Snmp {
        Connection::snmp(self)
    }
}

/// The server side's session table. See the module docs.
pub struct Listener<A, S = Connection> {
    crypto: Arc<PacketCrypto>,
    config: SessionConfig,
    sessions: HashMap<A, S>,
    backlog: VecDeque<A>,
    /// Whether new sessions wait in `backlog` for [`Listener::accept`] (kcp-go's
    /// way); an owner that takes every new session at once turns it off.
    queue_accepts: bool,
    seeds: NonceSource,
    closed: Vec<(A, S)>,
    accepting: bool,
    /// While not accepting, answer a refused opening with a reset.
    reset_refused: bool,
    /// Sessions closed by the application: address → (conversation, refused until).
    refused: HashMap<A, (u32, u32)>,
    admission: Box<dyn Admission>,
    source_of: fn(&A) -> u64,
    /// Peers to tell they have no session here: (address, conversation).
    resets: VecDeque<(A, u32)>,
    /// Some session keeps a crypto the listener no longer opens sessions with
    /// (the key or crypt changed): its datagrams are opened with its own.
    rotated: bool,
    /// Datagrams dropped before session lookup, and sessions made.
    pub stats: ListenerStats,
}

/// The default source of an address: the whole address, hashed.
fn hash_address<A: Hash>(addr: &A) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(addr)
}

impl<A: Clone + Eq + Hash> Listener<A, Connection> {
    /// Routes one datagram from `from`; it is decrypted in place.
    pub fn handle_datagram(&mut self, now: u32, from: &A, datagram: &mut [u8]) -> Outcome {
        self.handle_datagram_with(now, from, datagram, |conn| conn)
    }
}

impl<A: Clone + Eq + Hash, S: Routed> Listener<A, S> {
    /// A listener whose sessions use `config` over `crypto`. `seed` seeds the CSPRNG
    /// that seeds each session's nonces (take it from the OS).
    pub fn new(
        config: SessionConfig,
        crypto: Arc<PacketCrypto>,
        seed: [u8; 32],
    ) -> Result<Listener<A, S>, SettingsError> {
        config.kcp_config(&crypto)?;
        let gate_seed = u64::from_le_bytes(seed[..8].try_into().expect("8 of 32 bytes")) ^ 0x6b63_7067_6174_6521;
        Ok(Listener {
            crypto,
            config,
            sessions: HashMap::new(),
            backlog: VecDeque::new(),
            queue_accepts: true,
            seeds: NonceSource::from_seed(seed),
            closed: Vec::new(),
            accepting: true,
            reset_refused: false,
            refused: HashMap::new(),
            admission: Box::new(OpeningGate::new(OpeningLimits::default(), 0, gate_seed)),
            source_of: hash_address::<A>,
            resets: VecDeque::new(),
            rotated: false,
            stats: ListenerStats::default(),
        })
    }

    /// Settings for sessions created from now on.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Settings for sessions created from now on.
    pub fn config_mut(&mut self) -> &mut SessionConfig {
        &mut self.config
    }

    /// Whether new sessions wait for [`Listener::accept`] (the default, with at
    /// most [`ACCEPT_BACKLOG`] waiting, as kcp-go) or are the caller's at once
    /// (nothing to accept, and no [`DropReason::BacklogFull`]).
    pub fn set_accept_queue(&mut self, queue: bool) {
        self.queue_accepts = queue;
        if !queue {
            self.backlog.clear();
        }
    }

    /// Opens sessions from now on with `crypto` (a new key or crypt); open
    /// sessions keep theirs, and their datagrams are still opened with it.
    /// Refused, changing nothing, when the session settings do not fit it (an
    /// MTU too small for its header).
    pub fn set_crypto(&mut self, crypto: Arc<PacketCrypto>) -> Result<(), SettingsError> {
        self.config.kcp_config(&crypto)?;
        // A retune hands over the crypto in use again: nothing to look at then.
        if !Arc::ptr_eq(&crypto, &self.crypto) {
            self.crypto = crypto;
            self.rotated = self.sessions.values().any(|s| !Arc::ptr_eq(s.crypto(), &self.crypto));
        }
        Ok(())
    }

    /// Whether datagrams from new addresses may open sessions (and a restarted peer
    /// replace its session). Off, they are dropped as [`DropReason::NotAccepting`].
    pub fn set_accepting(&mut self, accepting: bool) {
        self.accepting = accepting;
    }

    /// Which datagrams may open sessions: an [`OpeningGate`] with the default
    /// [`OpeningLimits`] unless set. Listeners of one port share one, so a copy
    /// refused by one is refused by all, and the rates are the port's.
    pub fn set_admission(&mut self, admission: Box<dyn Admission>) {
        self.admission = admission;
    }

    /// Which source an address counts against in the per-source limit (the whole
    /// address unless set; the gateway takes the IP address alone).
    pub fn set_source_key(&mut self, source_of: fn(&A) -> u64) {
        self.source_of = source_of;
    }

    /// While not accepting, whether an opening is answered with a reset (a
    /// draining server: the peer learns at once that no session will come; no
    /// larger than the opening, so it amplifies nothing) or dropped silently (a
    /// full server, which may have room again by the peer's next try).
    pub fn set_reset_refused(&mut self, reset: bool) {
        self.reset_refused = reset;
    }

    /// Whether peers may open sessions.
    pub fn is_accepting(&self) -> bool {
        self.accepting
    }

    /// Routes one datagram from `from`; it is decrypted in place. A new session is
    /// the [`Connection`] the listener creates, wrapped by `make`.
    pub fn handle_datagram_with(
        &mut self,
        now: u32,
        from: &A,
        datagram: &mut [u8],
        make: impl FnOnce(Connection) -> S,
    ) -> Outcome {
        if datagram.len() > crate::pipeline::MTU_LIMIT {
            return self.drop(DropReason::Malformed);
        }
        // After a key change an older session's datagrams are opened with its own
        // crypto (one more lookup, only then); a restarted peer at its address
        // is heard once that session has ended.
        let (opened, fingerprint) = {
            let crypto = match self.rotated {
                true => self.sessions.get(from).map_or(&self.crypto, |s| s.crypto()),
                false => &self.crypto,
            };
            let opened = crypto.open(datagram);
            (opened, replay::fingerprint(crypto.nonce(datagram)))
        };
        let plain = match opened {
            Ok(range) => range,
            Err(OpenError::TooShort) => return self.drop(DropReason::TooShort),
            Err(OpenError::Checksum) => return self.drop(DropReason::Checksum),
        };
        let plain = &datagram[plain];
        let Ok(datagram) = Datagram::parse(plain) else { return self.drop(DropReason::Runt) };
        let announced = datagram.announced();
        let mut outcome = Outcome::Created;
        let mut admitted = false;
        if let Some(session) = self.sessions.get_mut(from) {
            if fingerprint.is_some_and(|f| !session.first_sight(f)) {
                return self.drop(DropReason::Replayed);
            }
            match announced {
                Some((conv, _)) if conv != session.conv() => {
                    let starts = datagram.kcp().and_then(|k| k.first_header()).is_some_and(|h| h.starts_session());
                    if !starts || !self.accepting {
                        return self.drop(DropReason::ConvMismatch);
                    }
                    if !datagram.may_open_session() {
                        return self.drop(DropReason::Malformed);
                    }
                    // A copy of an old first datagram must not replace the live session.
                    if let Err(drop) = self.admit(now, from, fingerprint) {
                        return self.drop(drop);
                    }
                    admitted = true;
                    let session = self.sessions.get_mut(from).expect("present");
                    outcome = Outcome::Replaced { old_conv: session.conv() };
                    let old = self.sessions.remove(from).expect("present");
                    self.backlog.retain(|a| a != from);
                    self.closed.push((from.clone(), old));
                    self.stats.replaced += 1;
                }
                _ => {
                    session.handle_plain(now, plain);
                    return Outcome::Delivered;
                }
            }
        }
        if !self.accepting {
            if let Some((conv, _)) = announced.filter(|_| self.reset_refused) {
                self.queue_reset(from, conv);
            }
            return self.drop(DropReason::NotAccepting);
        }
        let Some((conv, _)) = announced else { return self.drop(DropReason::NoConv) };
        if let Some(&(closed_conv, until)) = self.refused.get(from) {
            if conv == closed_conv && crate::kcp::diff(now, until) < 0 {
                self.queue_reset(from, conv);
                return self.drop(DropReason::Closed);
            }
            self.refused.remove(from);
        }
        if !datagram.may_open_session() {
            return self.drop(DropReason::Malformed);
        }
        let first = datagram.kcp().and_then(|k| k.first_header());
        if !first.is_some_and(|h| h.starts_session()) {
            // The sender has had data from a session here: tell it the session is
            // gone. A new peer whose first datagram was lost is told nothing.
            if first.is_some_and(|h| h.una != 0) {
                self.queue_reset(from, conv);
            }
            return self.drop(DropReason::MidSession);
        }
        if self.queue_accepts && self.backlog.len() >= ACCEPT_BACKLOG {
            return self.drop(DropReason::BacklogFull);
        }
        if !admitted {
            if let Err(drop) = self.admit(now, from, fingerprint) {
                return self.drop(drop);
            }
        }
        let mut session = make(self.new_connection(conv));
        if let Some(f) = fingerprint {
            session.first_sight(f);
        }
        session.handle_plain(now, plain);
        self.sessions.insert(from.clone(), session);
        if self.queue_accepts {
            self.backlog.push_back(from.clone());
        }
        self.stats.created += 1;
        outcome
    }

    fn new_connection(&mut self, conv: u32) -> Connection {
        let mut seed = [0u8; 32];
        self.seeds.fill(&mut seed);
        Connection::new(conv, &self.config, self.crypto.clone(), seed).expect("config validated in Listener::new")
    }

    /// Dials `remote`: a session with a random conversation id, built by `make` and
    /// held in the table like an accepted one (but never in the accept backlog).
    /// Returns false, and makes nothing, when `remote` has a session already.
    pub fn dial(&mut self, remote: A, make: impl FnOnce(Connection) -> S) -> bool {
        if self.sessions.contains_key(&remote) {
            return false;
        }
        let mut conv = [0u8; 4];
        self.seeds.fill(&mut conv);
        let session = make(self.new_connection(u32::from_le_bytes(conv)));
        self.sessions.insert(remote, session);
        true
    }

    /// Resets waiting at most; more are not sent (the peer sends again, and is
    /// answered then).
    const MAX_RESETS: usize = 64;

    fn queue_reset(&mut self, to: &A, conv: u32) {
        if self.resets.len() < Self::MAX_RESETS && !self.resets.iter().any(|(a, c)| a == to && *c == conv) {
            self.resets.push_back((to.clone(), conv));
        }
    }

    /// Writes the next waiting reset, sealed, into `buf` (cleared first) and
    /// returns its destination. A reset is one segment header with
    /// [`crate::kcp::CMD_RESET`] and the conversation, nothing else; it is no
    /// larger than the datagram that caused it, so it amplifies nothing.
    pub fn next_reset(&mut self, buf: &mut Vec<u8>) -> Option<A> {
        let (to, conv) = self.resets.pop_front()?;
        let (head, tail) = (self.crypto.header_len(), self.crypto.tail_len());
        buf.clear();
        buf.resize(head + crate::kcp::HEADER_LEN + tail, 0);
        buf[head..head + 4].copy_from_slice(&conv.to_le_bytes());
        buf[head + 4] = crate::kcp::CMD_RESET;
        let mut nonce = [0u8; 16];
        let nonce = &mut nonce[..self.crypto.nonce_len()];
        self.seeds.fill(nonce);
        self.crypto.seal(buf, nonce);
        self.stats.resets += 1;
        Some(to)
    }

    /// Asks the [`Admission`] whether a datagram may open a session.
    fn admit(&mut self, now: u32, from: &A, fingerprint: Option<u64>) -> Result<(), DropReason> {
        self.admission.admit(now, (self.source_of)(from), fingerprint).map_err(|refusal| match refusal {
            Refusal::Replayed => DropReason::Replayed,
            Refusal::Source => DropReason::SourceLimit,
            Refusal::Global => DropReason::OpeningLimit,
        })
    }

    fn drop(&mut self, drop: DropReason) -> Outcome {
        self.stats.count(drop);
        Outcome::Dropped(drop)
    }

    /// The next new session's address, oldest first (kcp-go `Accept`).
    pub fn accept(&mut self) -> Option<A> {
        self.backlog.pop_front()
    }

    /// Sessions waiting for [`Listener::accept`].
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// The session of `addr`.
    pub fn session(&self, addr: &A) -> Option<&S> {
        self.sessions.get(addr)
    }

    /// The session of `addr`, to change.
    pub fn session_mut(&mut self, addr: &A) -> Option<&mut S> {
        self.sessions.get_mut(addr)
    }

    /// Every session with its address.
    pub fn sessions(&self) -> impl Iterator<Item = (&A, &S)> {
        self.sessions.iter()
    }

    /// Every session with its address, to change.
    pub fn sessions_mut(&mut self) -> impl Iterator<Item = (&A, &mut S)> {
        self.sessions.iter_mut()
    }

    /// Open sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Removes a session (the application closed it). Nothing is sent to the peer.
    pub fn remove(&mut self, addr: &A) -> Option<S> {
        self.backlog.retain(|a| a != addr);
        let removed = self.sessions.remove(addr);
        if self.rotated && removed.is_some() {
            self.rotated = self.sessions.values().any(|s| !Arc::ptr_eq(s.crypto(), &self.crypto));
        }
        removed
    }

    /// Closes a session on the application's behalf (an operator's kick). For
    /// `hold_ms` its peer's datagrams with the old conversation id are dropped
    /// ([`DropReason::Closed`]) instead of opening a session that would only hold stale
    /// state; a new conversation from the same address is welcome at once.
    pub fn close(&mut self, addr: &A, now: u32, hold_ms: u32) -> Option<S> {
        let session = self.remove(addr)?;
        if self.refused.len() >= MAX_REFUSED {
            self.refused.retain(|_, &mut (_, until)| crate::kcp::diff(now, until) < 0);
        }
        if self.refused.len() < MAX_REFUSED {
            self.refused.insert(addr.clone(), (session.conv(), now.wrapping_add(hold_ms)));
        }
        Some(session)
    }

    /// Sessions replaced by a restarted peer since the last call, for the caller to
    /// tear down (their streams end).
    pub fn take_closed(&mut self) -> Vec<(A, S)> {
        core::mem::take(&mut self.closed)
    }

    /// Listener drops plus every session's counters, summed.
    pub fn snmp(&self) -> Snmp {
        let mut total = Snmp { in_csum_errors: self.stats[DropReason::Checksum], ..Snmp::default() };
        for s in self.sessions.values() {
            total.accumulate(&s.snmp());
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_reason_is_counted_in_its_own_place_under_its_own_name() {
        let mut stats = ListenerStats::default();
        for (i, reason) in DropReason::ALL.into_iter().enumerate() {
            for _ in 0..=i {
                stats.count(reason);
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, (reason, n)) in stats.drops().enumerate() {
            assert_eq!((reason, n, stats[reason]), (DropReason::ALL[i], i as u64 + 1, i as u64 + 1));
            assert!(names.insert(reason.name()), "{} named twice", reason.name());
            assert!(reason.name().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        assert_eq!(stats.dropped(), (1..=13).sum::<u64>());
        let mut twice = stats;
        twice.accumulate(&stats);
        assert_eq!(twice[DropReason::NotAccepting], 26);
    }
}
