//! Whole kcptun sessions behind a few verbs, sans-IO: what a server or a client
//! runs over its sockets.
//!
//! An [`Endpoint`] owns every session of one socket (or of any datagram source):
//! the listener's rules for who may open a session, each session's datagram
//! pipeline and stream layers, and each stream's lifecycle. It is generic over the
//! peer address `A` (a `SocketAddr` for UDP, a handle for another transport, `()`
//! for a single dialled session). The caller owns the clock and the I/O; a driver
//! is one loop:
//!
//! 1. hand every received datagram to [`Endpoint::handle_datagram`];
//! 2. at the deadline [`Endpoint::poll_timeout`] gave, call
//!    [`Endpoint::handle_timeout`];
//! 3. act on every [`Endpoint::poll_event`] (a stream opened or readable: read it;
//!    writable: write what waited), using the stream verbs ([`Endpoint::read`],
//!    [`Endpoint::write`], [`Endpoint::finish`], [`Endpoint::reset`]);
//! 4. send every [`Endpoint::poll_transmit`];
//! 5. sleep until input or the next [`Endpoint::poll_timeout`] (`None`: no timer
//!    at all, idle sessions cost nothing).
//!
//! Work is deferred until events or transmits are taken, so a batch of datagrams
//! for one session is processed in one pass.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::Hash;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use crate::admission::Admission;
use crate::crypto::PacketCrypto;
use crate::error::SettingsError;
use crate::kcp::diff;
use crate::listener::{DropReason, Listener, ListenerStats, Outcome, Routed};
pub use crate::listener::SessionId;
use crate::pipeline::{Connection, SessionConfig};
use crate::session::{Session, SessionEnd, StreamConfig, StreamEvent};
use crate::smux::{Read, Role, StreamError};
use crate::snmp::Snmp;

/// Settings of every session an endpoint makes.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Crypto, FEC and KCP settings (run-time changes apply to new sessions).
    pub session: SessionConfig,
    /// snappy, smux, QPP and the close-wait.
    pub streams: StreamConfig,
}

/// What the application should act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<A> {
    /// A session opened: a peer's first datagram (server; with address proof,
    /// once the peer has proven its address), or [`Endpoint::connect`].
    SessionOpened {
        /// The endpoint's name for it.
        id: SessionId,
        /// The peer's address.
        remote: A,
        /// Its KCP conversation id.
        conv: u32,
    },
    /// A session ended; its streams were reported closed just before.
    SessionClosed {
        /// The endpoint's name for it.
        id: SessionId,
        /// The peer's address.
        remote: A,
        /// Its KCP conversation id.
        conv: u32,
        /// Why it ended.
        reason: SessionEnd,
    },
    /// A session's peer moved to another address (see
    /// [`Endpoint::set_address_changes`]); its datagrams go there from now on.
    SessionMoved {
        /// The endpoint's name for it.
        id: SessionId,
        /// Where the peer was.
        from: A,
        /// Where it is now.
        to: A,
    },
    /// A peer opened a session but never proved its address (see
    /// [`Endpoint::set_address_proof`]): the session was forgotten unannounced,
    /// and nothing at `remote` is held for it any more.
    Unproven {
        /// The address it came from.
        remote: A,
        /// Its KCP conversation id.
        conv: u32,
    },
    /// Something about one of a session's streams.
    Stream {
        /// The session.
        id: SessionId,
        /// What happened.
        event: StreamEvent,
    },
}

/// Datagrams for one destination, written into the caller's buffer by
/// [`Endpoint::poll_transmit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit<A> {
    /// Where the datagrams go.
    pub destination: A,
    /// Bytes written.
    pub size: usize,
    /// With several datagrams: the size of each but the last, which may be
    /// shorter (the shape UDP segmentation offload sends in one call).
    pub segment_size: Option<usize>,
}

struct Entry {
    session: Session,
    /// In the endpoint's work list.
    queued: bool,
    /// In the endpoint's list of sessions with datagrams to send.
    sending: bool,
}

impl Routed for Entry {
    fn conv(&self) -> u32 {
        self.session.conv()
    }

    fn handle_plain(&mut self, now: u32, plain: &[u8]) {
        self.session.handle_plain(now, plain);
    }

    fn first_sight(&mut self, fingerprint: u64) -> bool {
        self.session.first_sight(fingerprint)
    }

    fn crypto(&self) -> &Arc<PacketCrypto> {
        self.session.crypto()
    }

    fn snmp(&self) -> Snmp {
        self.session.snmp()
    }

    fn probe_address(&mut self, ts_base: u32) -> bool {
        self.session.probe_address(ts_base)
    }

    fn evidence(&self, plain: &[u8]) -> Option<u32> {
        self.session.evidence(plain)
    }

    fn latest_echo(&self) -> u32 {
        self.session.latest_echo()
    }

    fn keep_probing(&mut self) {
        self.session.keep_probing();
    }
}

/// Sessions of one datagram source. See the module docs.
pub struct Endpoint<A> {
    role: Role,
    listener: Listener<A, Entry>,
    streams: StreamConfig,
    /// Sessions touched since they were last driven.
    work: Vec<SessionId>,
    /// Sessions that may have datagrams to send, in turn.
    sending: VecDeque<SessionId>,
    /// Ended sessions whose last datagrams were not all taken yet.
    closing: VecDeque<(A, Session)>,
    events: VecDeque<Event<A>>,
    schedule: Schedule<SessionId>,
    clock: Clock,
    /// Counters of sessions already gone.
    retired: Snmp,
    opened: u64,
    most_open: u64,
}

impl<A: Clone + Eq + Hash> Endpoint<A> {
    /// An endpoint in `role`: a server accepts sessions, a client only dials them.
    /// `seed` seeds every session's conversation id and nonces (take it from the OS).
    /// Settings that cannot work (an MTU too small, smux limits out of range) are
    /// refused here, before any session exists.
    pub fn new(
        role: Role,
        config: EndpointConfig,
        crypto: Arc<PacketCrypto>,
        seed: [u8; 32],
    ) -> Result<Endpoint<A>, SettingsError> {
        config.streams.stack.smux.validate()?;
        let mut listener = Listener::new(config.session, crypto, seed)?;
        listener.set_accepting(role == Role::Server);
        let probes = config.streams.framing == crate::session::Framing::Streams;
        listener.set_address_proof(role == Role::Server && probes, crate::listener::DEFAULT_MAX_UNPROVEN);
        // The endpoint takes every new session as it is made: nothing waits to be accepted.
        listener.set_accept_queue(false);
        Ok(Endpoint {
            role,
            listener,
            streams: config.streams,
            work: Vec::new(),
            sending: VecDeque::new(),
            closing: VecDeque::new(),
            events: VecDeque::new(),
            schedule: Schedule::default(),
            clock: Clock::default(),
            retired: Snmp::default(),
            opened: 0,
            most_open: 0,
        })
    }

    /// The role this endpoint plays.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Settings for sessions opened from now on.
    pub fn session_config_mut(&mut self) -> &mut SessionConfig {
        self.listener.config_mut()
    }

    /// See `Listener::set_crypto`: a new key or crypt for sessions opened from
    /// now on; open sessions keep theirs.
    pub fn set_crypto(&mut self, crypto: Arc<PacketCrypto>) -> Result<(), SettingsError> {
        self.listener.set_crypto(crypto)
    }

    /// Whether peers may open sessions (a server's default). A draining server, or
    /// one at its session limit, turns it off; open sessions carry on.
    pub fn set_accepting(&mut self, accepting: bool) {
        self.listener.set_accepting(accepting && self.role == Role::Server);
    }

    /// See `Listener::set_reset_refused`.
    pub fn set_reset_refused(&mut self, reset: bool) {
        self.listener.set_reset_refused(reset);
    }

    /// See `Listener::set_admission`.
    pub fn set_admission(&mut self, admission: Box<dyn Admission>) {
        self.listener.set_admission(admission);
    }

    /// Whether a new session must prove its peer's address before it is announced
    /// and may send more than three times what it received, and how many may be
    /// waiting to at once: see `Listener::set_address_proof`. On by default for a
    /// server with smux framing, where the proof is an smux NOP the peer's KCP
    /// acknowledges; turn it off where the transport proved the address (QUIC).
    pub fn set_address_proof(&mut self, prove: bool, max_unproven: usize) {
        self.listener.set_address_proof(prove && self.role == Role::Server, max_unproven);
    }

    /// Whether a session may follow its peer to a new address, on evidence of
    /// that session alone: see `Listener::set_address_changes`. Off by default
    /// (kcp-go keys sessions by address).
    pub fn set_address_changes(&mut self, roam: bool) {
        self.listener.set_address_changes(roam && self.role == Role::Server);
    }

    /// See `Listener::set_source_key`.
    pub fn set_source_key(&mut self, source_of: fn(&A) -> u64) {
        self.listener.set_source_key(source_of);
    }

    /// Opens a session to `remote` at `now`; `None` when one to `remote` is open.
    pub fn connect(&mut self, now: u32, remote: A) -> Option<SessionId> {
        self.clock.set(now);
        let make = new_entry(self.role, &self.streams, now);
        let id = self.listener.dial(remote.clone(), make)?;
        self.opened(id, remote);
        Some(id)
    }

    /// Takes one datagram from `from` at `now`; it is decrypted in place. Tells what
    /// became of it (bad datagrams are dropped and counted).
    pub fn handle_datagram(&mut self, now: u32, from: &A, datagram: &mut [u8]) -> Outcome {
        self.clock.set(now);
        let make = new_entry(self.role, &self.streams, now);
        let outcome = self.listener.handle_datagram_with(now, from, datagram, make);
        match outcome {
            Outcome::Created | Outcome::Replaced { .. } => {
                for (old_id, addr, old) in self.listener.take_closed() {
                    let mut session = old.session;
                    session.replaced();
                    session.clear_transmits(); // for a conversation the peer abandoned
                    self.ended(old_id, addr, session);
                }
                let id = self.listener.id_at(from).expect("the address's new session");
                self.opened(id, from.clone());
            }
            Outcome::Moved => {
                for (id, old, new) in self.listener.take_moved() {
                    self.events.push_back(Event::SessionMoved { id, from: old, to: new });
                    self.touch(id);
                }
            }
            Outcome::Delivered | Outcome::Unproven => {
                if let Some(id) = self.listener.handed_to() {
                    self.touch(id);
                }
            }
            Outcome::Dropped(_) => {}
        }
        outcome
    }

    /// The conversation a datagram names once [`Endpoint::handle_datagram`] has
    /// opened it in place: for a driver that hands a stray datagram to the
    /// endpoint that has that conversation (see [`Endpoint::set_address_changes`]).
    pub fn conv_of_opened(&self, datagram: &[u8]) -> Option<u32> {
        self.listener.conv_of_opened(datagram)
    }

    /// Takes back the resets waiting for `to`: its datagram, dropped here, went
    /// to the endpoint that has its session.
    pub fn withdraw_resets(&mut self, to: &A) {
        self.listener.withdraw_resets(to);
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: u32) {
        self.clock.set(now);
        let now_abs = self.clock.abs(now);
        while let Some(id) = self.schedule.pop_due(now_abs) {
            if let Some((remote, entry)) = self.listener.expire(id, now) {
                self.retired.accumulate(&entry.session.snmp());
                self.events.push_back(Event::Unproven { remote, conv: entry.session.conv() });
                continue;
            }
            if let Some((_, entry)) = self.listener.get_mut(id) {
                entry.session.handle_timeout(now);
                self.touch(id);
            }
        }
    }

    /// When [`Endpoint::handle_timeout`] wants to run next; `None` while every
    /// session is idle.
    pub fn poll_timeout(&mut self) -> Option<u32> {
        self.settle();
        self.schedule.next().map(|at| self.clock.wrap(at))
    }

    /// The next thing the application should act on.
    pub fn poll_event(&mut self) -> Option<Event<A>> {
        self.settle();
        self.events.pop_front()
    }

    /// Writes up to `max_datagrams` datagrams for one destination into `buf` (which
    /// is cleared first): all the size of the first but the last, which may be
    /// shorter. `None` when nothing is left to send.
    pub fn poll_transmit(&mut self, now: u32, max_datagrams: usize, buf: &mut Vec<u8>) -> Option<Transmit<A>> {
        self.clock.set(now);
        self.settle();
        buf.clear();
        if let Some(to) = self.listener.next_reset(buf) {
            return Some(Transmit { destination: to, size: buf.len(), segment_size: None });
        }
        while let Some((addr, session)) = self.closing.front_mut() {
            if let Some(t) = fill(session, addr, max_datagrams, buf) {
                return Some(t);
            }
            self.closing.pop_front();
        }
        while let Some(&id) = self.sending.front() {
            let allowance = self.listener.send_allowance(id);
            if let Some((addr, entry)) = self.listener.get_mut(id) {
                let (max, mut held) = (max_datagrams, 0);
                let transmit = match allowance {
                    None => fill(&mut entry.session, addr, max, buf),
                    // One datagram at a time, each within what the session may send.
                    Some(left) => {
                        while entry.session.peek_transmit_len().is_some_and(|len| len > left) {
                            entry.session.next_transmit();
                            held += 1;
                        }
                        fill(&mut entry.session, addr, 1, buf)
                    }
                };
                if allowance.is_some() {
                    let size = transmit.as_ref().map_or(0, |t| t.size);
                    self.listener.count_sent(id, size, held);
                }
                if let Some(t) = transmit {
                    return Some(t);
                }
                if let Some((_, entry)) = self.listener.get_mut(id) {
                    entry.sending = false;
                }
            }
            self.sending.pop_front();
        }
        None
    }

    /// Opens a stream in session `id` (a client's new connection). Data may be
    /// written at once.
    pub fn open_stream(&mut self, now: u32, id: SessionId) -> Result<u32, StreamError> {
        self.clock.set(now);
        let session = self.session_of(id)?;
        let sid = session.open_stream(now).map_err(StreamError::Mux)?;
        self.touch(id);
        Ok(sid)
    }

    /// Reads from a stream: see [`Session::read`].
    pub fn read(&mut self, now: u32, id: SessionId, sid: u32, buf: &mut [u8]) -> Result<Read, StreamError> {
        self.clock.set(now);
        let session = self.session_of(id)?;
        let read = session.read(now, sid, buf);
        if matches!(read, Ok(Read::Data(_) | Read::Eof)) {
            self.touch(id);
        }
        read
    }

    /// Writes to a stream: see [`Session::write`].
    pub fn write(&mut self, id: SessionId, sid: u32, data: &[u8]) -> Result<usize, StreamError> {
        let session = self.session_of(id)?;
        let n = session.write(sid, data)?;
        if n > 0 {
            self.touch(id);
        }
        Ok(n)
    }

    /// Ends our direction of a stream: see [`Session::finish`].
    pub fn finish(&mut self, now: u32, id: SessionId, sid: u32) -> Result<(), StreamError> {
        self.clock.set(now);
        let session = self.session_of(id)?;
        session.finish(now, sid)?;
        self.touch(id);
        Ok(())
    }

    /// Ends a stream at once: see [`Session::reset`].
    pub fn reset(&mut self, id: SessionId, sid: u32) -> Result<(), StreamError> {
        let session = self.session_of(id)?;
        session.reset(sid)?;
        self.touch(id);
        Ok(())
    }

    /// Bytes a [`Endpoint::read`] of the stream would return now.
    pub fn readable_bytes(&self, id: SessionId, sid: u32) -> usize {
        self.session(id).map_or(0, |(_, s)| s.readable_bytes(sid))
    }

    /// Closes session `id` (an operator's kick, a drain): every stream gets a FIN,
    /// sent with the next transmits, then the session is gone and its
    /// [`Event::SessionClosed`] carries `why` ([`SessionEnd::Closed`]). With
    /// `hold_ms`, datagrams of its old conversation are refused that long, so the
    /// peer cannot bring it back. False if there is no such session.
    pub fn close_session(&mut self, now: u32, id: SessionId, hold_ms: Option<u32>, why: impl Into<String>) -> bool {
        self.clock.set(now);
        if !self.listener.is_proven(id) {
            return false;
        }
        let entry = match hold_ms {
            Some(hold) => self.listener.close(id, now, hold),
            None => self.listener.remove(id),
        };
        let Some((addr, mut entry)) = entry else { return false };
        entry.session.close(now, why.into());
        self.ended(id, addr, entry.session);
        true
    }

    /// The open session of the peer at `addr`, if it has one.
    pub fn session_at(&self, addr: &A) -> Option<SessionId> {
        self.listener.id_at(addr)
    }

    /// Whether anything is held for `addr`: an open session, or one still proving
    /// its address.
    pub fn knows(&self, addr: &A) -> bool {
        self.listener.knows(addr)
    }

    /// One open session and its peer's address.
    pub fn session(&self, id: SessionId) -> Option<(&A, &Session)> {
        if !self.listener.is_proven(id) {
            return None;
        }
        self.listener.get(id).map(|(addr, e)| (addr, &e.session))
    }

    /// Every open session, in no particular order.
    pub fn sessions(&self) -> impl Iterator<Item = (SessionId, &A, &Session)> + '_ {
        self.listener.sessions().map(|(id, addr, e)| (id, addr, &e.session))
    }

    /// Sessions waiting to prove their peer's address.
    pub fn unproven_len(&self) -> usize {
        self.listener.unproven_len()
    }

    /// Open sessions.
    pub fn len(&self) -> usize {
        self.listener.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.listener.is_empty()
    }

    /// Datagrams dropped before any session saw them, by reason.
    pub fn listener_stats(&self) -> &ListenerStats {
        &self.listener.stats
    }

    /// kcp-go's SNMP counters over every session, open and gone.
    pub fn snmp(&self) -> Snmp {
        let mut totals = self.listener.snmp();
        totals.accumulate(&self.retired);
        match self.role {
            Role::Server => totals.passive_opens = self.opened,
            Role::Client => totals.active_opens = self.opened,
        }
        totals.in_errs += self.listener.stats[DropReason::NotAccepting];
        totals.curr_estab = self.listener.len() as u64;
        totals.max_conn = self.most_open;
        totals
    }

    fn session_of(&mut self, id: SessionId) -> Result<&mut Session, StreamError> {
        if !self.listener.is_proven(id) {
            return Err(StreamError::NoSuchStream);
        }
        let (_, entry) = self.listener.get_mut(id).ok_or(StreamError::NoSuchStream)?;
        Ok(&mut entry.session)
    }

    fn opened(&mut self, id: SessionId, remote: A) {
        self.opened += 1;
        self.most_open = self.most_open.max(self.listener.len() as u64);
        let conv = self.listener.get(id).map_or(0, |(_, e)| e.conv());
        self.events.push_back(Event::SessionOpened { id, remote, conv });
        self.touch(id);
    }

    /// A session is over: its events go out, its last datagrams wait in `closing`.
    fn ended(&mut self, id: SessionId, addr: A, mut session: Session) {
        self.schedule.forget(&id);
        while let Some(event) = session.poll_event() {
            self.events.push_back(Event::Stream { id, event });
        }
        self.retired.accumulate(&session.snmp());
        let reason = session.ended().cloned().unwrap_or_else(|| SessionEnd::Closed("closed by the application".into()));
        self.events.push_back(Event::SessionClosed { id, remote: addr.clone(), conv: session.conv(), reason });
        if session.peek_transmit_len().is_some() {
            self.closing.push_back((addr, session));
        }
    }

    /// Notes that a session has work to do before events or transmits are taken.
    fn touch(&mut self, id: SessionId) {
        if let Some((_, entry)) = self.listener.get_mut(id) {
            if !entry.queued {
                entry.queued = true;
                self.work.push(id);
            }
        }
    }


    /// Drives every touched session: moves its bytes, collects its events, queues
    /// its datagrams, schedules its next timer, and retires it if it ended.
    fn settle(&mut self) {
        let now = self.clock.now;
        while let Some(id) = self.work.pop() {
            let proven = self.listener.is_proven(id);
            let deadline = self.listener.proof_deadline(id);
            let Some((_, entry)) = self.listener.get_mut(id) else { continue };
            entry.queued = false;
            entry.session.drive(now);
            // A session still proving its address keeps its stream events: nothing
            // is dialled or answered for a peer that may not be there.
            while let Some(event) = proven.then(|| entry.session.poll_event()).flatten() {
                self.events.push_back(Event::Stream { id, event });
            }
            if !entry.sending && entry.session.peek_transmit_len().is_some() {
                entry.sending = true;
                self.sending.push_back(id);
            }
            if entry.session.ended().is_some() {
                let (addr, entry) = self.listener.remove(id).expect("present");
                match proven {
                    true => self.ended(id, addr, entry.session),
                    false => {
                        self.schedule.forget(&id);
                        self.retired.accumulate(&entry.session.snmp());
                        self.events.push_back(Event::Unproven { remote: addr, conv: entry.session.conv() });
                    }
                }
                continue;
            }
            let due = entry.session.poll_timeout().into_iter().chain(deadline).reduce(crate::kcp::earliest);
            self.schedule.set(id, due.map(|d| self.clock.abs(d)));
        }
    }
}

/// How a connection the listener makes becomes session `id`. The stream settings
/// are copied only when a session is really made, not for every datagram.
fn new_entry(role: Role, streams: &StreamConfig, now: u32) -> impl FnOnce(Connection) -> Entry + '_ {
    move |conn| Entry { session: Session::new(conn, role, streams.clone(), now), queued: false, sending: false }
}

/// Copies a session's next datagrams for `addr` into `buf` (see
/// [`Endpoint::poll_transmit`]).
fn fill<A: Clone>(session: &mut Session, addr: &A, max: usize, buf: &mut Vec<u8>) -> Option<Transmit<A>> {
    let first = session.next_transmit()?;
    let segment = first.len();
    buf.extend_from_slice(first);
    let mut count = 1;
    while count < max.max(1) {
        match session.peek_transmit_len() {
            Some(len) if len <= segment => {
                buf.extend_from_slice(session.next_transmit().expect("peeked"));
                count += 1;
                if len < segment {
                    break;
                }
            }
            _ => break,
        }
    }
    Some(Transmit { destination: addr.clone(), size: buf.len(), segment_size: (count > 1).then_some(segment) })
}

/// The caller's wrapping `u32` milliseconds, extended to a `u64` that does not
/// wrap, so deadlines order correctly in the schedule.
#[derive(Debug, Default)]
struct Clock {
    now: u32,
    abs: u64,
    started: bool,
}

impl Clock {
    /// Time moves on to `now` (a `now` earlier than the last is taken as the last).
    fn set(&mut self, now: u32) {
        if !self.started {
            self.started = true;
            self.now = now;
            return;
        }
        let step = diff(now, self.now);
        if step > 0 {
            self.abs += step as u64;
            self.now = now;
        }
    }

    /// A wrapping time near now, extended (a time past is clamped to now's).
    fn abs(&self, t: u32) -> u64 {
        self.abs + diff(t, self.now).max(0) as u64
    }

    fn wrap(&self, abs: u64) -> u32 {
        self.now.wrapping_add(abs.saturating_sub(self.abs) as u32)
    }
}

/// When each session needs its timers run: a min-heap of deadlines. A new deadline
/// is pushed as a new entry and the old one recognised as stale when it surfaces,
/// so a wake-up costs O(log n) per due session and idle sessions cost nothing.
/// A deadline that keeps moving earlier (a session's next flush, after its
/// keep-alive far ahead) leaves stale entries that surface only late; once they
/// outnumber the live ones the heap is swept, so it stays within twice the
/// sessions and, warmed up, never grows.
struct Schedule<A> {
    heap: BinaryHeap<Reverse<Due<A>>>,
    current: HashMap<A, u64>,
}

impl<A> Default for Schedule<A> {
    fn default() -> Schedule<A> {
        Schedule { heap: BinaryHeap::new(), current: HashMap::new() }
    }
}

/// Stale heap entries tolerated beyond one per session before a sweep.
const STALE_ALLOWANCE: usize = 16;

/// A heap entry, ordered by its deadline alone: many sessions share a millisecond,
/// and comparing their addresses as well would only cost time.
struct Due<A> {
    at: u64,
    addr: A,
}

impl<A> PartialEq for Due<A> {
    fn eq(&self, other: &Due<A>) -> bool {
        self.at == other.at
    }
}

impl<A> Eq for Due<A> {}

impl<A> PartialOrd for Due<A> {
    fn partial_cmp(&self, other: &Due<A>) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<A> Ord for Due<A> {
    fn cmp(&self, other: &Due<A>) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

impl<A: Clone + Eq + Hash> Schedule<A> {
    fn set(&mut self, addr: A, at: Option<u64>) {
        match at {
            Some(at) => {
                if self.current.insert(addr.clone(), at) != Some(at) {
                    let most = 2 * self.current.len() + STALE_ALLOWANCE;
                    if self.heap.len() >= most {
                        let current = &self.current;
                        self.heap.retain(|Reverse(due)| current.get(&due.addr) == Some(&due.at));
                    }
                    // Grown to its bound at once, not by doubling on the way there.
                    if self.heap.len() == self.heap.capacity() {
                        self.heap.reserve((most + 1).saturating_sub(self.heap.len()));
                    }
                    self.heap.push(Reverse(Due { at, addr }));
                }
            }
            None => self.forget(&addr),
        }
    }

    fn forget(&mut self, addr: &A) {
        self.current.remove(addr);
    }

    /// Takes a session whose deadline is `now` or earlier.
    fn pop_due(&mut self, now: u64) -> Option<A> {
        while let Some(Reverse(Due { at, .. })) = self.heap.peek() {
            if *at > now {
                return None;
            }
            let Reverse(Due { at, addr }) = self.heap.pop().expect("peeked");
            if self.current.get(&addr) == Some(&at) {
                self.current.remove(&addr);
                return Some(addr);
            }
        }
        None
    }

    /// The earliest deadline.
    fn next(&mut self) -> Option<u64> {
        while let Some(Reverse(Due { at, addr })) = self.heap.peek() {
            if self.current.get(addr) == Some(at) {
                return Some(*at);
            }
            self.heap.pop();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_yields_due_sessions_in_order_and_only_their_latest_deadline() {
        let mut s = Schedule::default();
        s.set(1, Some(30));
        s.set(2, Some(10));
        s.set(3, Some(20));
        s.set(2, Some(50)); // moved later: the entry at 10 is stale
        s.set(3, None); // nothing to time any more
        assert_eq!(s.next(), Some(30));
        assert_eq!(s.pop_due(29), None);
        assert_eq!(s.pop_due(49), Some(1));
        assert_eq!(s.pop_due(49), None);
        s.set(1, Some(40)); // rescheduled after it ran
        assert_eq!(s.pop_due(100), Some(1));
        assert_eq!(s.pop_due(100), Some(2));
        assert_eq!(s.pop_due(100), None);
        assert_eq!(s.next(), None);
        assert!(s.heap.is_empty(), "stale entries are dropped as they surface");
    }

    /// A deadline that alternates between near and far (flush, keep-alive) leaves a
    /// stale far entry each time; the heap is swept before they pile up.
    #[test]
    fn stale_deadlines_do_not_pile_up() {
        let mut s = Schedule::default();
        for addr in 0..10u32 {
            s.set(addr, Some(1_000_000));
        }
        for i in 0..100_000u64 {
            s.set(i as u32 % 10, Some(10_000_000 - i));
            s.set(i as u32 % 10, Some(1_000_000 + i));
            assert!(s.heap.len() <= 2 * 10 + STALE_ALLOWANCE + 1, "{} entries after {i} moves", s.heap.len());
        }
        assert_eq!(s.next(), Some(1_000_000 + 99_990));
    }

    #[test]
    fn the_clock_extends_wrapping_time_across_the_wrap() {
        let mut c = Clock::default();
        c.set(u32::MAX - 5);
        assert_eq!(c.abs(u32::MAX - 5), 0);
        let later = c.abs(4); // 10 ms on, across the wrap
        assert_eq!(later, 10);
        c.set(4);
        assert_eq!(c.abs(4), 10);
        assert_eq!(c.wrap(25), 19);
        c.set(u32::MAX); // back in time: ignored
        assert_eq!(c.now, 4);
    }
}
