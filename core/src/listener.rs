//! Which datagram belongs to which session (docs/protocol.md §8), sans-IO.
//!
//! [`Listener`] is kcp-go's listener without the socket: one table from remote
//! address to session (a bare [`Connection`], or anything built around one, see
//! [`Routed`]), the rule for which datagram may create a session, the proof
//! that a new session's peer receives at its address (when asked for, see
//! [`Listener::set_address_proof`]), and the accept backlog. A listener that does not accept holds dialled sessions only: the
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
    /// A new session while as many as allowed were waiting to prove their
    /// address (see `Listener::set_address_proof`).
    UnprovenLimit,
    /// For a session that has not proven its address, past the bytes such a
    /// session takes (48 KiB, `UNPROVEN_INPUT`).
    UnprovenInput,
    /// With address changes on: the conversation of a session at another address,
    /// but no evidence from that session's peer (no ACK echoing a recent `ts` of
    /// this side's), so the session did not move.
    NoEvidence,
}

impl DropReason {
    /// Every reason, in the order of [`ListenerStats::drops`].
    pub const ALL: [DropReason; 16] = [
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
        DropReason::UnprovenLimit,
        DropReason::UnprovenInput,
        DropReason::NoEvidence,
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
            DropReason::UnprovenLimit => "unproven_limit",
            DropReason::UnprovenInput => "unproven_input",
            DropReason::NoEvidence => "no_evidence",
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
            DropReason::UnprovenLimit => {
                "A new session while too many waited to prove their address (`max_unproven`): a flood of openings \
                 from addresses that do not answer."
            }
            DropReason::UnprovenInput => {
                "More than 48 KiB for a session that had not yet proven its address (it may send again once it has)."
            }
            DropReason::NoEvidence => {
                "A live session's conversation from another address, without evidence that it came from the \
                 session's peer: the session did not move."
            }
        })
    }
}

/// What `Listener::handle_datagram` did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Given to the session of that address.
    Delivered,
    /// A session of the address counts from now on: new, or, with address proof,
    /// one that has just proven its address. It is queued for accept.
    Created,
    /// A new session began that counts only once it proves its peer's address
    /// (see `Listener::set_address_proof`).
    Unproven,
    /// The datagram's session moved to its address (see
    /// `Listener::set_address_changes`).
    Moved,
    /// The peer restarted (new conv, sn 0): its old session was closed and the new
    /// one counts in its place (with address proof, once it has proven it).
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
    /// Sessions that proved their peer's address.
    pub proven: u64,
    /// Sessions forgotten because their peer did not prove its address in time.
    pub unproven_expired: u64,
    /// Datagrams not sent because a session that had not proven its address had
    /// sent three times what it received (`AMPLIFICATION_FACTOR`).
    pub amplification_held: u64,
    /// Sessions that moved to a new address.
    pub moved: u64,
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
        self.proven += other.proven;
        self.unproven_expired += other.unproven_expired;
        self.amplification_held += other.amplification_held;
        self.moved += other.moved;
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
    /// Starts a proof of the peer's address: `ts_base` goes into the session's
    /// KCP (`Kcp::set_ts_base`) and a segment the peer must acknowledge is sent.
    /// False if the session has nothing to send that its peer would not take for
    /// application data (then its address cannot be proven this way).
    fn probe_address(&mut self, ts_base: u32) -> bool;
    /// The evidence in `plain`, not yet handled, that it comes from the session's
    /// real peer: see `Connection::evidence`.
    fn evidence(&self, plain: &[u8]) -> Option<u32>;
    /// See `Kcp::latest_echo`.
    fn latest_echo(&self) -> u32;
    /// Called after each datagram while the address is unproven: probes again
    /// once nothing the peer could echo is in flight (a later segment's `una`
    /// retired the probe when the ACK that echoed it was lost).
    fn keep_probing(&mut self);
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

    /// A bare connection carries only the application's bytes: it sends no probe.
    fn probe_address(&mut self, ts_base: u32) -> bool {
        self.kcp_mut().set_ts_base(ts_base | 1);
        false
    }

    fn evidence(&self, plain: &[u8]) -> Option<u32> {
        Connection::evidence(self, plain)
    }

    fn latest_echo(&self) -> u32 {
        self.kcp().latest_echo()
    }

    fn keep_probing(&mut self) {}
}

/// A listener's name for one of its sessions; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl core::fmt::Display for SessionId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How long a new session may take to prove its peer's address before it is
/// forgotten. An honest peer proves it one round trip and one flush interval
/// after its first datagram; the rest is room for a lost datagram or two.
pub const PROOF_TIMEOUT_MS: u32 = 5_000;

/// A session that has not proven its address sends at most this many times the
/// bytes it received (QUIC's anti-amplification factor, RFC 9000 §8).
pub const AMPLIFICATION_FACTOR: usize = 3;

/// Bytes a session takes from its peer before it proves its address; later
/// datagrams are dropped ([`DropReason::UnprovenInput`]) until it has. A kcp-go
/// peer sends at most 32 segments (its initial view of the receive window) before
/// it hears from this side: 48 KiB lets an honest first burst through whole.
pub const UNPROVEN_INPUT: usize = 48 * 1024;

/// Sessions waiting to prove their address at once, unless set
/// (`Listener::set_address_proof`).
pub const DEFAULT_MAX_UNPROVEN: usize = 10_000;

/// Where a session stands with its peer's address.
#[derive(Debug, Clone, Copy)]
enum Proof {
    /// The peer receives at the session's address (or the transport vouched for it,
    /// or the listener does not ask).
    Proven,
    /// Not yet: the session is not announced, sends at most
    /// [`AMPLIFICATION_FACTOR`] times what it received, and is forgotten at `until`.
    Unproven { received: usize, sent: usize, until: u32 },
}

/// A session and where it stands. The session is boxed: it is kilobytes, and the
/// table moves its slots when it grows.
struct Slot<A, S> {
    addr: A,
    session: Box<S>,
    proof: Proof,
}

/// The server side's session table. See the module docs.
pub struct Listener<A, S = Connection> {
    crypto: Arc<PacketCrypto>,
    config: SessionConfig,
    slots: HashMap<SessionId, Slot<A, S>>,
    /// Each address's proven session.
    by_addr: HashMap<A, SessionId>,
    /// Each address's session that has not proven it yet (beside a proven one, a
    /// peer that restarted: it replaces that one once it has).
    unproven: HashMap<A, SessionId>,
    next_id: u64,
    backlog: VecDeque<SessionId>,
    /// Whether new sessions wait in `backlog` for [`Listener::accept`] (kcp-go's
    /// way); an owner that takes every new session at once turns it off.
    queue_accepts: bool,
    /// Whether new sessions must prove their address, and how many may wait.
    prove: bool,
    max_unproven: usize,
    /// Whether a session may move to a new address, and each proven session by
    /// its conversation (the latest, if two share one), to find it from there.
    roam: bool,
    by_conv: HashMap<u32, SessionId>,
    moved: Vec<(SessionId, A, A)>,
    /// The session the last datagram was handed to.
    handed: Option<SessionId>,
    seeds: NonceSource,
    closed: Vec<(SessionId, A, S)>,
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
            slots: HashMap::new(),
            by_addr: HashMap::new(),
            unproven: HashMap::new(),
            next_id: 1,
            backlog: VecDeque::new(),
            queue_accepts: true,
            prove: false,
            max_unproven: DEFAULT_MAX_UNPROVEN,
            roam: false,
            by_conv: HashMap::new(),
            moved: Vec::new(),
            handed: None,
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

    /// Whether a new session must prove that its peer receives at its address
    /// before it counts (off by default: kcp-go's listener takes the key as
    /// enough), and how many may be waiting to at once; more openings are dropped
    /// ([`DropReason::UnprovenLimit`]). A session proves it when the peer
    /// acknowledges the probe [`Routed::probe_address`] sent, echoing the random
    /// `ts` only a receiver of the probe knows. Until then it is not accepted or
    /// listed, sends at most [`AMPLIFICATION_FACTOR`] times the bytes it received,
    /// takes at most [`UNPROVEN_INPUT`] bytes, is forgotten after
    /// [`PROOF_TIMEOUT_MS`], and a new conversation from a proven session's
    /// address replaces that session only once it has proven itself.
    pub fn set_address_proof(&mut self, prove: bool, max_unproven: usize) {
        self.prove = prove;
        self.max_unproven = max_unproven;
    }

    /// Whether a proven session may move to a new address (off by default, as in
    /// kcp-go, which keys sessions by address). It moves on evidence from its own
    /// peer only: a datagram from the new address, seen for the first time, whose
    /// ACK echoes a `ts` this side sent the session's peer recently, as no one
    /// else can (see `Kcp::evidence`), and no older than the newest echo heard so
    /// far (a late datagram from the old address does not move it back). Without
    /// evidence the datagram is dropped ([`DropReason::NoEvidence`]). Until the
    /// move the old address keeps working.
    pub fn set_address_changes(&mut self, roam: bool) {
        self.roam = roam;
        self.by_conv.clear();
        if roam {
            let proven = self.slots.iter().filter(|(_, s)| matches!(s.proof, Proof::Proven));
            self.by_conv.extend(proven.map(|(&id, s)| (s.session.conv(), id)));
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
            self.update_rotated();
        }
        Ok(())
    }

    fn update_rotated(&mut self) {
        self.rotated = self.slots.values().any(|s| !Arc::ptr_eq(s.session.crypto(), &self.crypto));
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
        self.handed = None;
        let wire_len = datagram.len();
        if wire_len > crate::pipeline::MTU_LIMIT {
            return self.drop(DropReason::Malformed);
        }
        let proven = self.by_addr.get(from).copied();
        let unproven = self.unproven.get(from).copied();
        // After a key change an older session's datagrams are opened with its own
        // crypto (one more lookup, only then); a restarted peer at its address
        // is heard once that session has ended.
        let (opened, fingerprint) = {
            let crypto = match self.rotated {
                true => proven.or(unproven).and_then(|id| self.slots.get(&id)).map_or(&self.crypto, |s| s.session.crypto()),
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
        // The address's session of this conversation; parity alone goes to the
        // proven one.
        let target = [proven, unproven].into_iter().flatten().find(|id| match announced {
            Some((conv, _)) => self.slots.get(id).is_some_and(|s| s.session.conv() == conv),
            None => true,
        });
        if let Some(id) = target {
            return self.deliver(now, id, plain, wire_len, fingerprint);
        }
        // Past here the datagram is no session's: whether it starts one decides.
        let first = datagram.kcp().and_then(|k| k.first_header());
        let starts = first.is_some_and(|h| h.starts_session());
        let elsewhere = match (self.roam, announced) {
            (true, Some((conv, _))) => self.by_conv.get(&conv).copied().filter(|&id| proven != Some(id)),
            _ => None,
        };
        if let Some(id) = elsewhere {
            // A new peer whose random conversation is another's opens its own.
            if !starts {
                return self.move_to(now, id, from, proven.is_some(), plain, fingerprint);
            }
        }
        let occupied = proven.is_some() || unproven.is_some();
        if occupied && (!starts || !self.accepting) {
            return self.drop(DropReason::ConvMismatch);
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
        if !starts {
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
        // A new session in place of the address's unproven one adds none.
        if self.prove && unproven.is_none() && self.unproven.len() >= self.max_unproven {
            return self.drop(DropReason::UnprovenLimit);
        }
        // A copy of an old first datagram must not open or replace a session.
        if let Err(drop) = self.admit(now, from, fingerprint) {
            return self.drop(drop);
        }
        let id = SessionId(self.next_id);
        self.next_id += 1;
        let mut session = make(self.new_connection(conv));
        if let Some(f) = fingerprint {
            session.first_sight(f);
        }
        let probing = self.prove && {
            let mut base = [0u8; 4];
            self.seeds.fill(&mut base);
            session.probe_address(u32::from_le_bytes(base))
        };
        session.handle_plain(now, plain);
        self.handed = Some(id);
        self.stats.created += 1;
        if probing {
            if let Some(old) = unproven {
                // The newest conversation of an address is the one worth proving.
                self.slots.remove(&old);
            }
            let until = now.wrapping_add(PROOF_TIMEOUT_MS);
            let proof = Proof::Unproven { received: wire_len, sent: 0, until };
            self.slots.insert(id, Slot { addr: from.clone(), session: Box::new(session), proof });
            self.unproven.insert(from.clone(), id);
            return Outcome::Unproven;
        }
        self.slots.insert(id, Slot { addr: from.clone(), session: Box::new(session), proof: Proof::Proven });
        self.unproven.remove(from).and_then(|old| self.slots.remove(&old));
        self.take_address(id, from.clone())
    }

    /// Hands a datagram to session `id` (at the datagram's address, with its
    /// conversation).
    fn deliver(&mut self, now: u32, id: SessionId, plain: &[u8], wire_len: usize, fingerprint: Option<u64>) -> Outcome {
        let slot = self.slots.get_mut(&id).expect("the address's session");
        if fingerprint.is_some_and(|f| !slot.session.first_sight(f)) {
            return self.drop(DropReason::Replayed);
        }
        self.handed = Some(id);
        let Proof::Unproven { received, .. } = &mut slot.proof else {
            slot.session.handle_plain(now, plain);
            return Outcome::Delivered;
        };
        // The proof is looked for before the input limit: an honest peer's burst
        // may have used it up by the time its ACK of the probe comes.
        let proves = slot.session.evidence(plain).is_some();
        if !proves && *received >= UNPROVEN_INPUT {
            return self.drop(DropReason::UnprovenInput);
        }
        *received += wire_len;
        slot.session.handle_plain(now, plain);
        if !proves {
            slot.session.keep_probing();
            return Outcome::Delivered;
        }
        slot.proof = Proof::Proven;
        let addr = slot.addr.clone();
        self.unproven.remove(&addr);
        self.stats.proven += 1;
        self.take_address(id, addr)
    }

    /// Session `id`'s conversation came from `from`, another address: moves the
    /// session there on evidence (see [`Listener::set_address_changes`]).
    fn move_to(
        &mut self,
        now: u32,
        id: SessionId,
        from: &A,
        occupied: bool,
        plain: &[u8],
        fingerprint: Option<u64>,
    ) -> Outcome {
        let slot = self.slots.get_mut(&id).expect("indexed by conversation");
        let Some(echo) = slot.session.evidence(plain) else { return self.drop(DropReason::NoEvidence) };
        // A copy of a datagram the session saw moves nothing.
        if fingerprint.is_some_and(|f| !slot.session.first_sight(f)) {
            return self.drop(DropReason::Replayed);
        }
        // A late datagram from an address the peer left: taken, the session stays.
        let stale = crate::kcp::diff(echo, slot.session.latest_echo()) < 0;
        slot.session.handle_plain(now, plain);
        self.handed = Some(id);
        if stale || occupied {
            return Outcome::Delivered;
        }
        let old = core::mem::replace(&mut slot.addr, from.clone());
        if self.by_addr.get(&old) == Some(&id) {
            self.by_addr.remove(&old);
        }
        self.by_addr.insert(from.clone(), id);
        self.moved.push((id, old, from.clone()));
        self.stats.moved += 1;
        Outcome::Moved
    }

    /// The session the last datagram went to, if it went to one (whatever the
    /// outcome says: a late datagram from an address its session left is
    /// [`Outcome::Delivered`] to a session elsewhere).
    pub fn handed_to(&self) -> Option<SessionId> {
        self.handed
    }

    /// Sessions that moved since the last call: (session, old address, new one).
    pub fn take_moved(&mut self) -> Vec<(SessionId, A, A)> {
        core::mem::take(&mut self.moved)
    }

    /// Makes session `id` its address's proven session, replacing the one there.
    fn take_address(&mut self, id: SessionId, addr: A) -> Outcome {
        if self.roam {
            if let Some(slot) = self.slots.get(&id) {
                self.by_conv.insert(slot.session.conv(), id);
            }
        }
        let mut outcome = Outcome::Created;
        if let Some(old) = self.by_addr.insert(addr.clone(), id) {
            let old = self.slots.remove(&old).map(|s| (old, s));
            if let Some((old, slot)) = old {
                if self.by_conv.get(&slot.session.conv()) == Some(&old) {
                    self.by_conv.remove(&slot.session.conv());
                }
                outcome = Outcome::Replaced { old_conv: slot.session.conv() };
                self.backlog.retain(|&b| b != old);
                self.closed.push((old, addr, *slot.session));
                self.stats.replaced += 1;
            }
        }
        if self.queue_accepts {
            self.backlog.push_back(id);
        }
        outcome
    }

    fn new_connection(&mut self, conv: u32) -> Connection {
        let mut seed = [0u8; 32];
        self.seeds.fill(&mut seed);
        Connection::new(conv, &self.config, self.crypto.clone(), seed).expect("config validated in Listener::new")
    }

    /// Dials `remote`: a session with a random conversation id, built by `make` and
    /// held in the table like an accepted one (but never in the accept backlog).
    /// `None`, and nothing made, when `remote` has a session already.
    pub fn dial(&mut self, remote: A, make: impl FnOnce(Connection) -> S) -> Option<SessionId> {
        if self.by_addr.contains_key(&remote) {
            return None;
        }
        let mut conv = [0u8; 4];
        self.seeds.fill(&mut conv);
        let session = make(self.new_connection(u32::from_le_bytes(conv)));
        let id = SessionId(self.next_id);
        self.next_id += 1;
        self.slots.insert(id, Slot { addr: remote.clone(), session: Box::new(session), proof: Proof::Proven });
        self.by_addr.insert(remote, id);
        Some(id)
    }

    /// Resets waiting at most; more are not sent (the peer sends again, and is
    /// answered then).
    const MAX_RESETS: usize = 64;

    fn queue_reset(&mut self, to: &A, conv: u32) {
        if self.resets.len() < Self::MAX_RESETS && !self.resets.iter().any(|(a, c)| a == to && *c == conv) {
            self.resets.push_back((to.clone(), conv));
        }
    }

    /// Takes back the resets waiting for `to` (its datagram went to a session
    /// elsewhere after all).
    pub fn withdraw_resets(&mut self, to: &A) {
        self.resets.retain(|(a, _)| a != to);
    }

    /// The conversation a datagram names once [`Listener::handle_datagram_with`]
    /// has opened it in place (with the crypto new sessions use).
    pub fn conv_of_opened(&self, datagram: &[u8]) -> Option<u32> {
        let (head, tail) = (self.crypto.header_len(), self.crypto.tail_len());
        let plain = datagram.get(head..datagram.len().checked_sub(tail)?)?;
        Datagram::parse(plain).ok()?.announced().map(|(conv, _)| conv)
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
        let id = self.backlog.pop_front()?;
        self.slots.get(&id).map(|s| s.addr.clone())
    }

    /// Sessions waiting for [`Listener::accept`].
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// The proven session of `addr`.
    pub fn id_at(&self, addr: &A) -> Option<SessionId> {
        self.by_addr.get(addr).copied()
    }

    /// Whether `addr` has a session, proven or not.
    pub fn knows(&self, addr: &A) -> bool {
        self.by_addr.contains_key(addr) || self.unproven.contains_key(addr)
    }

    /// The proven session of `addr`.
    pub fn session(&self, addr: &A) -> Option<&S> {
        self.get(self.id_at(addr)?).map(|(_, s)| s)
    }

    /// The proven session of `addr`, to change.
    pub fn session_mut(&mut self, addr: &A) -> Option<&mut S> {
        self.get_mut(self.id_at(addr)?).map(|(_, s)| s)
    }

    /// Session `id`, proven or not, and its address.
    pub fn get(&self, id: SessionId) -> Option<(&A, &S)> {
        self.slots.get(&id).map(|s| (&s.addr, &*s.session))
    }

    /// Session `id`, proven or not, and its address, to change.
    pub fn get_mut(&mut self, id: SessionId) -> Option<(&A, &mut S)> {
        self.slots.get_mut(&id).map(|s| (&s.addr, &mut *s.session))
    }

    /// Whether session `id` has proven its address (see
    /// [`Listener::set_address_proof`]).
    pub fn is_proven(&self, id: SessionId) -> bool {
        self.slots.get(&id).is_some_and(|s| matches!(s.proof, Proof::Proven))
    }

    /// When unproven session `id` is to be forgotten.
    pub fn proof_deadline(&self, id: SessionId) -> Option<u32> {
        match self.slots.get(&id)?.proof {
            Proof::Unproven { until, .. } => Some(until),
            Proof::Proven => None,
        }
    }

    /// Bytes session `id` may send now: `None` without limit, else what the
    /// anti-amplification rule leaves of [`AMPLIFICATION_FACTOR`] times what it
    /// received.
    pub fn send_allowance(&self, id: SessionId) -> Option<usize> {
        match self.slots.get(&id)?.proof {
            Proof::Unproven { received, sent, .. } => Some((AMPLIFICATION_FACTOR * received).saturating_sub(sent)),
            Proof::Proven => None,
        }
    }

    /// Counts `bytes` sent by session `id` against its allowance, and `held`
    /// datagrams it could not send ([`ListenerStats::amplification_held`]).
    pub fn count_sent(&mut self, id: SessionId, bytes: usize, held: u64) {
        self.stats.amplification_held += held;
        if let Some(Slot { proof: Proof::Unproven { sent, .. }, .. }) = self.slots.get_mut(&id) {
            *sent += bytes;
        }
    }

    /// Every proven session with its name and address.
    pub fn sessions(&self) -> impl Iterator<Item = (SessionId, &A, &S)> {
        self.slots.iter().filter(|(_, s)| matches!(s.proof, Proof::Proven)).map(|(&id, s)| (id, &s.addr, &*s.session))
    }

    /// Every session, proven or not, to change.
    pub fn sessions_mut(&mut self) -> impl Iterator<Item = (SessionId, &A, &mut S)> {
        self.slots.iter_mut().map(|(&id, s)| (id, &s.addr, &mut *s.session))
    }

    /// Proven sessions.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// Whether no session is proven.
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// Sessions waiting to prove their address.
    pub fn unproven_len(&self) -> usize {
        self.unproven.len()
    }

    /// Removes session `id`, proven or not (the application closed it, or an
    /// unproven one timed out). Nothing is sent to the peer.
    pub fn remove(&mut self, id: SessionId) -> Option<(A, S)> {
        let slot = self.slots.remove(&id)?;
        if self.by_conv.get(&slot.session.conv()) == Some(&id) {
            self.by_conv.remove(&slot.session.conv());
        }
        match slot.proof {
            Proof::Proven => {
                if self.by_addr.get(&slot.addr) == Some(&id) {
                    self.by_addr.remove(&slot.addr);
                }
                self.backlog.retain(|&b| b != id);
            }
            Proof::Unproven { .. } => {
                if self.unproven.get(&slot.addr) == Some(&id) {
                    self.unproven.remove(&slot.addr);
                }
            }
        }
        if self.rotated {
            self.update_rotated();
        }
        Some((slot.addr, *slot.session))
    }

    /// Forgets unproven session `id` once its time to prove its address is over;
    /// `None` if it is not due (or proven, or gone).
    pub fn expire(&mut self, id: SessionId, now: u32) -> Option<(A, S)> {
        let until = self.proof_deadline(id)?;
        if crate::kcp::diff(now, until) < 0 {
            return None;
        }
        self.stats.unproven_expired += 1;
        self.remove(id)
    }

    /// Closes session `id` on the application's behalf (an operator's kick). For
    /// `hold_ms` its peer's datagrams with the old conversation id are dropped
    /// ([`DropReason::Closed`]) instead of opening a session that would only hold stale
    /// state; a new conversation from the same address is welcome at once.
    pub fn close(&mut self, id: SessionId, now: u32, hold_ms: u32) -> Option<(A, S)> {
        let (addr, session) = self.remove(id)?;
        if self.refused.len() >= MAX_REFUSED {
            self.refused.retain(|_, &mut (_, until)| crate::kcp::diff(now, until) < 0);
        }
        if self.refused.len() < MAX_REFUSED {
            self.refused.insert(addr.clone(), (session.conv(), now.wrapping_add(hold_ms)));
        }
        Some((addr, session))
    }

    /// Sessions replaced by a restarted peer since the last call, for the caller to
    /// tear down (their streams end).
    pub fn take_closed(&mut self) -> Vec<(SessionId, A, S)> {
        core::mem::take(&mut self.closed)
    }

    /// Listener drops plus every session's counters, summed.
    pub fn snmp(&self) -> Snmp {
        let mut total = Snmp { in_csum_errors: self.stats[DropReason::Checksum], ..Snmp::default() };
        for s in self.slots.values() {
            total.accumulate(&s.session.snmp());
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
        assert_eq!(stats.dropped(), (1..=DropReason::ALL.len() as u64).sum::<u64>());
        let mut twice = stats;
        twice.accumulate(&stats);
        assert_eq!(twice[DropReason::NotAccepting], 26);
        assert_eq!(twice[DropReason::UnprovenInput], 30);
    }
}
