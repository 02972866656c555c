//! The one loop that runs the core's endpoint over a datagram transport and
//! bridges its streams to TCP, for both roles: a server runs one per listening UDP
//! socket and one for its WebTransport listener, a client one per session (each
//! with its own socket). It holds no protocol logic:
//! datagrams go in, timers fire when the endpoint says, events become TCP work,
//! and the admin API's queries are answered here for both roles.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use foldhash::{HashMap, HashMapExt};
use kcpgate_core::{
    ms_until, DropReason, Endpoint, Event, Framing, Outcome, Role, SessionConfig, SessionEnd, SessionId, StreamEvent,
};
use tokio::sync::{mpsc, watch};
// Tokio's clock, so tests run the driver on a paused (virtual) one.
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::conn::Conn;
use crate::control::{owner_of, session_id, Capture, Direction, Inbox, Query, SessionEvent, SessionInfo};
use crate::handoff::Handed;
use crate::runtime::{random_seed, Plan};
use crate::transport::Transport;
use crate::tunnel::{run_stream, FromStream, Links, NewStream, WrongKeyWarning};
use crate::udp::{BatchSocket, GSO_BYTES};

/// How long a kicked session's peer is refused with its old conversation: longer
/// than smux's keep-alive timeout, so the peer notices the session is gone first.
const KICK_HOLD_MS: u32 = 60_000;

/// What a stream task tells the driver: which session, which stream, what.
type StreamMessage = (SessionId, u32, FromStream);

/// What the driver holds of a session, keyed by the core's id: the TCP side of its
/// streams (I/O the sans-IO core cannot own), and when it opened on the task's
/// 64-bit clock (the core's wrapping one cannot tell an age past 24 days).
struct Tracked {
    opened_ms: u64,
    links: Links,
}

/// A client session's extras: where new connections come from, and when it stops.
pub struct ClientSession {
    /// The server's address.
    pub remote: SocketAddr,
    /// Local connections to carry over the session.
    pub connections: mpsc::Receiver<Conn>,
    /// `-autoexpire` + `-scavengettl`: when the session is closed, streams and all.
    pub close_at: Option<Instant>,
}

/// One endpoint over one transport. See the module docs.
pub struct Driver<T: Transport> {
    endpoint: Endpoint<T::Peer>,
    transport: T,
    local: SocketAddr,
    plan: Arc<Plan>,
    start: Instant,
    sessions: HashMap<SessionId, Tracked>,
    to_driver: mpsc::Sender<StreamMessage>,
    from_streams: mpsc::Receiver<StreamMessage>,
    /// Datagrams for one destination, as the endpoint writes them.
    out: Vec<u8>,
    max_datagrams: usize,
    /// The tunables' session limit (0 for none), kept here off the shared lock.
    max_sessions: u64,
    draining: bool,
    /// The task's number in the registry: the last part of its sessions' ids.
    task: usize,
    /// Draining: when the streams still open are closed (`-drain-timeout` after
    /// draining began), so a listener a reload removed ends on time.
    drain_until: Option<Instant>,
    wrong_key: WrongKeyWarning,
    /// Client: the session, and what feeds it.
    client: Option<(SessionId, ClientSession)>,
    /// What the endpoint did with datagrams, for the transport: every outcome but
    /// a plain delivery (reused between batches).
    outcomes: Vec<(T::Peer, Outcome)>,
    /// Sessions whose datagrams the packet inspector is copying (almost always none).
    captures: Vec<(SessionId, Arc<Capture>)>,
    /// `-address-change` on a UDP server: sessions follow their players, and
    /// datagrams of another task's sessions are handed to it.
    roaming: bool,
    /// Datagrams other tasks hand to this one.
    handed: Option<mpsc::Receiver<Handed>>,
    /// Addresses whose datagrams go to another task (a player that moved and
    /// whose new address reaches this socket), with that task.
    forwarded: HashMap<SocketAddr, usize>,
    /// A datagram as it came, kept while the endpoint opens it in place.
    unopened: Vec<u8>,
}

/// Addresses remembered as another task's at most; past it the memory starts
/// over (a forwarded peer's next datagram finds its owner again).
const FORWARDED: usize = 4096;

/// The next datagram another task hands over, if this task takes part.
async fn next_handed(handed: &mut Option<mpsc::Receiver<Handed>>) -> Option<Handed> {
    match handed {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The per-source limit's key of a peer: its IPv4 address whatever the port, or
/// its IPv6 address's /64 (one host or home network is given a whole /64, so
/// every address in it is one source).
fn source_ip<T: Transport>(peer: &T::Peer) -> u64 {
    source_key(T::address(peer).ip())
}

pub(crate) fn source_key(ip: std::net::IpAddr) -> u64 {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => u64::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64,
    }
}

impl<T: Transport> Driver<T> {
    fn new(role: Role, transport: T, plan: Arc<Plan>, framing: Framing) -> Driver<T> {
        let tuning = plan.tuning();
        let mut config = tuning.endpoint.clone();
        config.streams.framing = framing;
        config.session = fitted(config.session, &transport);
        let max_datagrams = transport.max_segments(config.session.mtu);
        let mut endpoint = Endpoint::new(role, config, tuning.crypto.clone(), random_seed())
            .expect("the session settings were validated at startup");
        if role == Role::Server {
            endpoint.set_admission(Box::new(plan.shared.admission.clone()));
            endpoint.set_source_key(source_ip::<T>);
            // A WebTransport peer proved its address in the QUIC handshake.
            let udp = T::KIND == crate::transport::TransportKind::Udp;
            endpoint.set_address_proof(udp, kcpgate_core::DEFAULT_MAX_UNPROVEN);
            endpoint.set_address_changes(udp && tuning.settings.address_change);
        }
        let local = transport.local_addr();
        let (to_driver, from_streams) = mpsc::channel(4096);
        Driver {
            endpoint,
            transport,
            local,
            start: Instant::now(),
            sessions: HashMap::new(),
            to_driver,
            from_streams,
            out: Vec::with_capacity(GSO_BYTES),
            max_datagrams,
            max_sessions: tuning.max_sessions(),
            draining: false,
            task: 0,
            drain_until: None,
            wrong_key: WrongKeyWarning::default(),
            client: None,
            outcomes: Vec::new(),
            captures: Vec::new(),
            roaming: role == Role::Server
                && T::KIND == crate::transport::TransportKind::Udp
                && tuning.settings.address_change,
            handed: None,
            forwarded: HashMap::new(),
            unopened: Vec::new(),
            plan,
        }
    }

    /// A server's driver for one listening socket, or for the WebTransport
    /// listener's sessions of one `framing`.
    pub fn server(transport: T, plan: Arc<Plan>, framing: Framing) -> Driver<T> {
        Driver::new(Role::Server, transport, plan, framing)
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn now(&self) -> u32 {
        self.now_ms() as u32
    }

    /// Runs until the work is done: a server's once `drain` turns true and no stream
    /// is left; a client's once its session has ended.
    pub async fn run(mut self, mut drain: watch::Receiver<bool>) {
        let mut inbox = self.plan.shared.registry.register(T::KIND);
        self.task = inbox.task();
        if self.endpoint.role() == Role::Server && T::KIND == crate::transport::TransportKind::Udp {
            self.handed = Some(self.plan.handoff.join(self.task));
        }
        self.set_draining(*drain.borrow());
        loop {
            // Queries first (a busy loop may not reach the select).
            while let Some(query) = inbox.try_recv() {
                self.answer(query);
            }
            // Timers first, whatever woke the loop: a busy socket must not starve them.
            let now = self.now();
            self.endpoint.handle_timeout(now);
            self.client_duties();
            self.close_idle_when_draining();
            self.close_all_past_drain_timeout();
            self.flush().await;
            if self.done() {
                self.retire(inbox);
                return;
            }
            let wait = self.wait();
            let accepting = self.client.as_ref().is_some_and(|(_, c)| !c.connections.is_closed());
            let mut received = false;
            tokio::select! {
                _ = drain.changed(), if !self.draining => self.set_draining(*drain.borrow()),
                Some(query) = inbox.recv() => self.answer(query),
                r = self.transport.recv() => match r {
                    Ok(()) => received = true,
                    Err(e) => debug!("receive failed: {e}"),
                },
                Some((id, sid, msg)) = self.from_streams.recv() => self.on_stream_message(id, sid, msg),
                Some(handed) = next_handed(&mut self.handed) => self.take_handed(handed),
                tcp = next_connection(&mut self.client), if accepting => {
                    if let Some(conn) = tcp {
                        self.open_stream(conn);
                    }
                }
                () = tokio::time::sleep(wait) => {} // the timers run at the top of the loop
            }
            if received {
                self.receive();
            }
        }
    }

    /// How long the loop may sleep: until the endpoint's next timer, or a client
    /// session's forced close.
    fn wait(&mut self) -> Duration {
        let now = self.now();
        let timer = self.endpoint.poll_timeout().map(|d| u64::from(ms_until(d, now)));
        let close = self
            .client
            .as_ref()
            .and_then(|(_, c)| c.close_at)
            .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64);
        let drained = self.drain_until.map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64);
        Duration::from_millis([timer, close, drained].into_iter().flatten().min().unwrap_or(3_600_000))
    }

    fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
        if draining && self.drain_until.is_none() {
            self.drain_until = Some(Instant::now() + Duration::from_secs(self.plan.settings.drain_timeout));
        }
    }

    /// Hands the received batch to the endpoint.
    fn receive(&mut self) {
        let now = self.now();
        let limit = self.max_sessions;
        let full = limit > 0 && self.plan.shared.registry.open_sessions() >= limit;
        self.endpoint.set_accepting(!self.draining && !full);
        self.endpoint.set_reset_refused(self.draining);
        let Driver {
            endpoint, transport, wrong_key, plan, outcomes, captures, roaming, forwarded, unopened, task, ..
        } = self;
        for (from, datagram) in transport.datagrams() {
            if !captures.is_empty() {
                copy_captured(captures, endpoint.session_at(&from), Direction::In, datagram, datagram.len());
            }
            // A stray may be a moved player of another task's: keep it as it came.
            let stray = *roaming && !endpoint.knows(&from);
            if stray {
                let addr = T::address(&from);
                if let Some(&owner) = forwarded.get(&addr) {
                    if plan.handoff.hand(owner, addr, datagram) {
                        continue;
                    }
                    forwarded.remove(&addr);
                }
                unopened.clear();
                unopened.extend_from_slice(datagram);
            }
            let outcome = endpoint.handle_datagram(now, &from, datagram);
            if stray && outcome == Outcome::Dropped(DropReason::MidSession) {
                let addr = T::address(&from);
                let owner = endpoint.conv_of_opened(datagram).and_then(|conv| plan.handoff.owner(conv, *task));
                if let Some(owner) = owner.filter(|&o| plan.handoff.hand(o, addr, unopened)) {
                    endpoint.withdraw_resets(&from);
                    if forwarded.len() >= FORWARDED {
                        forwarded.clear();
                    }
                    forwarded.insert(addr, owner);
                    continue;
                }
            }
            match outcome {
                Outcome::Delivered => continue,
                Outcome::Created | Outcome::Replaced { .. } | Outcome::Unproven | Outcome::Moved => {}
                Outcome::Dropped(DropReason::Checksum) => wrong_key.datagram_failed(T::address(&from)),
                Outcome::Dropped(DropReason::NotAccepting) if full && !self.draining => {
                    plan.shared.registry.count_refused_datagram();
                }
                Outcome::Dropped(reason) => debug!(remote = %from, ?reason, "datagram dropped"),
            }
            outcomes.push((from, outcome));
        }
        for (from, outcome) in outcomes.drain(..) {
            transport.observed(&from, &outcome);
        }
        while let Some(peer) = self.transport.take_gone() {
            if let Some(id) = self.endpoint.session_at(&peer) {
                self.endpoint.close_session(now, id, None, "the peer closed its transport session");
            }
        }
    }

    /// Acts on the endpoint's events and sends its datagrams until it has neither.
    async fn flush(&mut self) {
        loop {
            let mut acted = false;
            while let Some(event) = self.endpoint.poll_event() {
                acted = true;
                self.on_event(event);
            }
            let now = self.now();
            while let Some(t) = self.endpoint.poll_transmit(now, self.max_datagrams, &mut self.out) {
                acted = true;
                let segment = t.segment_size.unwrap_or(t.size);
                if !self.captures.is_empty() {
                    let session = self.endpoint.session_at(&t.destination);
                    copy_captured(&mut self.captures, session, Direction::Out, &self.out[..t.size], segment);
                }
                if let Err(e) = self.transport.send(&t.destination, &self.out[..t.size], segment).await {
                    debug!(remote = %t.destination, "send failed: {e}");
                }
            }
            if !acted {
                return;
            }
        }
    }

    fn on_event(&mut self, event: Event<T::Peer>) {
        let now = self.now();
        match event {
            Event::SessionOpened { id, remote, conv } => {
                let (api_id, transport) = (session_id(self.task, id), T::KIND);
                info!(%remote, id = api_id, conv, transport = transport.name(), "session opened");
                let remote = T::address(&remote);
                self.plan.shared.registry.opened(SessionEvent::SessionOpened { id: api_id, conv, remote, transport });
                let links = Links::new(self.plan.shared.streams.clone());
                self.sessions.insert(id, Tracked { opened_ms: self.now_ms(), links });
                if self.roaming {
                    self.plan.handoff.owns(conv, self.task);
                }
            }
            Event::SessionClosed { id, remote, conv, reason } => {
                let Some(mut tracked) = self.sessions.remove(&id) else { return };
                tracked.links.stop_all();
                self.plan.handoff.released(conv, self.task);
                self.captures.retain(|(of, _)| *of != id);
                if let SessionEnd::Stack(e) = &reason {
                    warn!(%remote, "session closed: {e}");
                }
                let reason = reason.to_string();
                let api_id = session_id(self.task, id);
                info!(%remote, id = api_id, %reason, "session closed");
                self.transport.session_ended(&remote, &reason);
                let (remote, transport) = (T::address(&remote), T::KIND);
                let event = SessionEvent::SessionClosed { id: api_id, conv, remote, reason, transport };
                self.plan.shared.registry.closed(event);
            }
            Event::SessionMoved { id, from, to } => {
                let (api_id, conv) =
                    (session_id(self.task, id), self.endpoint.session(id).map_or(0, |(_, s)| s.conv()));
                info!(id = api_id, conv, from = %T::address(&from), to = %T::address(&to), "session moved");
                if !self.endpoint.knows(&from) {
                    self.transport.session_ended(&from, "its player moved");
                }
                let (from, to, transport) = (T::address(&from), T::address(&to), T::KIND);
                self.plan.shared.registry.moved(SessionEvent::SessionMoved { id: api_id, conv, from, to, transport });
            }
            Event::Unproven { remote, conv } => {
                debug!(%remote, conv, "a session that never proved its address was forgotten");
                // A proven session at the address still needs what the transport
                // keeps for it.
                if !self.endpoint.knows(&remote) {
                    self.transport.session_ended(&remote, "it never proved its address");
                }
            }
            Event::Stream { id, event } => {
                let Some(tracked) = self.sessions.get_mut(&id) else { return };
                match event {
                    // Draining takes no new work: the client sees the stream end at once.
                    StreamEvent::Opened(sid) if self.draining => {
                        info!(id = session_id(self.task, id), sid, "stream refused: draining");
                        let _ = self.endpoint.reset(id, sid);
                    }
                    StreamEvent::Opened(sid) if self.endpoint.role() == Role::Server => {
                        let stream = tracked.links.add(sid, None);
                        let remote = self.endpoint.session(id).map(|(a, _)| T::address(a));
                        let (plan, tx) = (self.plan.clone(), self.to_driver.clone());
                        tokio::spawn(dial(plan, remote, id, stream, tx));
                    }
                    // A kcptun server never opens streams towards its clients.
                    StreamEvent::Opened(sid) => {
                        let _ = self.endpoint.reset(id, sid);
                    }
                    StreamEvent::Readable(sid) | StreamEvent::Writable(sid) => {
                        tracked.links.service(&mut self.endpoint, now, id, sid);
                    }
                    StreamEvent::Closed(sid, why) => {
                        if !self.plan.settings.quiet {
                            debug!(sid, ?why, "stream closed");
                        }
                        tracked.links.closed(sid, why);
                    }
                }
            }
        }
    }

    fn on_stream_message(&mut self, id: SessionId, sid: u32, msg: FromStream) {
        let now = self.now();
        let Some(tracked) = self.sessions.get_mut(&id) else { return };
        tracked.links.on_message(sid, msg);
        tracked.links.service(&mut self.endpoint, now, id, sid);
    }

    /// Client: a new local connection becomes a stream of the session.
    fn open_stream(&mut self, conn: Conn) {
        let Some((id, _)) = self.client.as_ref() else { return };
        let id = *id;
        let now = self.now();
        let Some(tracked) = self.sessions.get_mut(&id) else { return };
        match self.endpoint.open_stream(now, id) {
            Ok(sid) => {
                let stream = tracked.links.add(sid, conn.peer());
                if !self.plan.settings.quiet {
                    info!(sid, "stream opened");
                }
                tokio::spawn(run_stream(conn, id, stream, self.to_driver.clone()));
            }
            Err(e) => warn!("cannot open a stream: {e:?}"),
        }
    }

    /// Client: close the session when `-autoexpire` + `-scavengettl` ran out, or
    /// when it takes no new connections and has no stream left.
    fn client_duties(&mut self) {
        let Some((id, c)) = self.client.as_ref() else { return };
        let id = *id;
        let expired = c.close_at.is_some_and(|t| Instant::now() >= t);
        let retired = c.connections.is_closed() && self.sessions.get(&id).is_some_and(|t| t.links.is_empty());
        // Draining, a session that never heard from its server has nothing in
        // flight worth waiting for: the server is unreachable or refuses it.
        let unanswered = self.draining && self.endpoint.session(id).is_some_and(|(_, s)| s.snmp().in_pkts == 0);
        let reason = if expired {
            "expired (-autoexpire, -scavengettl)"
        } else if retired {
            "retired: no streams left and no new connections"
        } else if unanswered {
            "draining: the server never answered (check -remoteaddr, -key and -crypt)"
        } else {
            return;
        };
        let now = self.now();
        self.endpoint.close_session(now, id, None, reason);
    }

    /// Server, draining: a session without an open stream is closed at once. No
    /// new session can take its place, and its client stops hearing from us now
    /// rather than when the process exits, so it notices and reconnects sooner.
    fn close_idle_when_draining(&mut self) {
        if !self.draining || self.client.is_some() {
            return;
        }
        let now = self.now();
        for (id, tracked) in &self.sessions {
            if tracked.links.is_empty() {
                // Once closed it is gone from the endpoint, and a second close is a no-op.
                self.endpoint.close_session(now, *id, None, "draining: no open stream");
            }
        }
    }

    /// Server, draining for `-drain-timeout`: the streams still open are closed
    /// with their sessions.
    fn close_all_past_drain_timeout(&mut self) {
        if self.client.is_some() || self.drain_until.is_none_or(|t| Instant::now() < t) {
            return;
        }
        let now = self.now();
        for id in self.sessions.keys() {
            self.endpoint.close_session(now, *id, None, "draining: -drain-timeout reached");
        }
    }

    /// Whether the loop is over: a client's session ended, or a draining server has
    /// no stream left.
    fn done(&self) -> bool {
        if self.client.is_some() {
            return self.endpoint.is_empty();
        }
        self.draining && self.sessions.values().all(|t| t.links.is_empty())
    }

    /// A datagram another task received for a session of this one.
    fn take_handed(&mut self, handed: Handed) {
        let Some(from) = T::peer_at(handed.from) else { return };
        let mut datagram = handed.datagram;
        let now = self.now();
        let outcome = self.endpoint.handle_datagram(now, &from, &mut datagram);
        if outcome != Outcome::Delivered {
            debug!(remote = %handed.from, ?outcome, "handed-over datagram");
        }
    }

    fn retire(self, inbox: Inbox) {
        if self.handed.is_some() {
            self.plan.handoff.leave(self.task);
        }
        self.plan.shared.registry.retire(inbox, self.endpoint.snmp(), self.endpoint.listener_stats());
    }

    /// The endpoint's id of session `id` (an API id) when this task owns it.
    fn own(&self, id: u64) -> Option<SessionId> {
        let (task, session) = owner_of(id);
        (task == self.task && self.sessions.contains_key(&session)).then_some(session)
    }

    /// The view of session `id` (an API id), built alone, when this task owns it.
    fn view(&self, id: u64) -> Option<(SessionId, SessionInfo)> {
        let sid = self.own(id)?;
        let (tracked, (addr, session)) = (self.sessions.get(&sid)?, self.endpoint.session(sid)?);
        let cx = self.plan.view_context(self.local, T::KIND);
        let view =
            SessionInfo::new(&cx, T::address(addr), session, id, tracked.opened_ms, &tracked.links, self.now_ms());
        Some((sid, view))
    }

    fn answer(&mut self, query: Query) {
        match query {
            Query::Counters(reply) => {
                let _ = reply.send(self.endpoint.snmp());
            }
            Query::Dropped(reply) => {
                let _ = reply.send(*self.endpoint.listener_stats());
            }
            Query::Sessions(reply) => {
                let (now, task) = (self.now_ms(), self.task);
                let cx = self.plan.view_context(self.local, T::KIND);
                let views = self
                    .endpoint
                    .sessions()
                    .filter_map(|(id, addr, session)| {
                        let t = self.sessions.get(&id)?;
                        Some(SessionInfo::new(
                            &cx,
                            T::address(addr),
                            session,
                            session_id(task, id),
                            t.opened_ms,
                            &t.links,
                            now,
                        ))
                    })
                    .collect();
                let _ = reply.send(views);
            }
            Query::Session { id, done } => {
                let view = self.view(id);
                let _ = done.send(view.map(|(_, v)| v));
            }
            Query::Kick { id, reason, done } => {
                let found = self.own(id);
                if let Some(session) = found {
                    info!(id, %reason, "session kicked");
                    // The peer's applications see their connections end at once; a
                    // server refuses the old conversation for a while.
                    let hold = (self.endpoint.role() == Role::Server).then_some(KICK_HOLD_MS);
                    let now = self.now();
                    self.endpoint.close_session(now, session, hold, format!("kicked: {reason}"));
                }
                let _ = done.send(found.is_some());
            }
            Query::Capture { id, capture, done } => {
                let view = self.view(id);
                if let Some((sid, _)) = &view {
                    self.captures.push((*sid, capture));
                }
                let _ = done.send(view.map(|(_, v)| v));
            }
            Query::Retune(done) => {
                let tuning = self.plan.tuning();
                *self.endpoint.session_config_mut() = fitted(tuning.endpoint.session.clone(), &self.transport);
                // A reload's new key or crypt: new sessions only (open ones keep theirs).
                if let Err(e) = self.endpoint.set_crypto(tuning.crypto.clone()) {
                    warn!("the new crypt does not fit the session settings, sessions keep the old one: {e}");
                }
                self.max_sessions = tuning.max_sessions();
                if self.endpoint.role() == Role::Server && T::KIND == crate::transport::TransportKind::Udp {
                    self.roaming = tuning.settings.address_change;
                    self.endpoint.set_address_changes(self.roaming);
                }
                let _ = done.send(());
            }
        }
    }
}

impl Driver<BatchSocket> {
    /// A client's driver for one session to `session.remote`, over its own socket.
    pub fn client(socket: BatchSocket, plan: Arc<Plan>, session: ClientSession) -> Driver<BatchSocket> {
        let mut driver = Driver::new(Role::Client, socket, plan, Framing::Streams);
        let now = driver.now();
        let id = driver.endpoint.connect(now, session.remote).expect("a new endpoint has no session");
        let conv = driver.endpoint.session(id).map_or(0, |(_, s)| s.conv());
        info!(remote = %session.remote, conv, "session started");
        driver.client = Some((id, session));
        driver
    }
}

/// Copies the datagrams in `data` (each `segment` bytes but the last) of
/// `session` into its captures, and forgets the captures that want no more.
fn copy_captured(
    captures: &mut Vec<(SessionId, Arc<Capture>)>,
    session: Option<SessionId>,
    direction: Direction,
    data: &[u8],
    segment: usize,
) {
    let Some(session) = session else { return };
    captures.retain(|(of, capture)| {
        *of != session || data.chunks(segment.max(1)).all(|datagram| capture.take(direction, datagram))
    });
}

/// Session settings as `transport` can carry them: the MTU at most its largest
/// datagram (a browser's, over WebTransport).
fn fitted<T: Transport>(mut session: SessionConfig, transport: &T) -> SessionConfig {
    session.mtu = session.mtu.min(transport.max_datagram());
    session
}

/// The client's next local connection; never resolves without a client session.
async fn next_connection(client: &mut Option<(SessionId, ClientSession)>) -> Option<Conn> {
    match client {
        Some((_, c)) => c.connections.recv().await,
        None => std::future::pending().await,
    }
}

/// Server: one stream dials the target, then is bridged to it.
async fn dial(
    plan: Arc<Plan>,
    remote: Option<SocketAddr>,
    id: SessionId,
    stream: NewStream,
    tx: mpsc::Sender<StreamMessage>,
) {
    let sid = stream.sid;
    let target = plan.tuning().settings.target.clone(); // a reload may move it for new streams
    let remote = remote.map_or_else(String::new, |r| r.to_string());
    match Conn::connect(&target).await {
        Ok(conn) => {
            if let Some(peer) = conn.peer() {
                let _ = tx.send((id, sid, FromStream::Connected(peer))).await;
            }
            if !plan.settings.quiet {
                info!(%remote, sid, %target, "stream opened");
            }
            run_stream(conn, id, stream, tx).await;
            if !plan.settings.quiet {
                info!(%remote, sid, "stream closed");
            }
        }
        Err(e) => {
            warn!(%remote, sid, %target, "cannot reach the target: {e}");
            plan.shared.streams.dial_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = tx.send((id, sid, FromStream::Closed)).await;
        }
    }
}

#[cfg(test)]
mod source_tests {
    use super::source_key;
    use kcpgate_core::{OpeningGuard, OpeningLimits, Refusal};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn every_address_of_one_ipv6_64_shares_one_budget() {
        let limits = OpeningLimits { per_source_rate: 1, per_source_burst: 16, global_rate: 0, global_burst: 0 };
        let mut guard = OpeningGuard::new(limits, 0, 42);
        let subnet = u128::from("2001:db8:1:2::".parse::<Ipv6Addr>().unwrap());
        let admitted = (0..256u128)
            .map(|host| IpAddr::V6(Ipv6Addr::from(subnet | host << 40 | host)))
            .filter(|&ip| guard.admit(0, source_key(ip)).is_ok())
            .count();
        assert_eq!(admitted, 16, "2^8 addresses of one /64: one burst between them");
        let neighbour = IpAddr::V6("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(guard.admit(0, source_key(neighbour)), Ok(()), "the next /64 is another source");
        assert_eq!(guard.admit(0, source_key(IpAddr::V6(Ipv6Addr::from(subnet | 7)))), Err(Refusal::Source));
    }

    #[test]
    fn ipv4_counts_by_address_and_its_mapped_form_is_the_same_source() {
        let v4 = Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(source_key(IpAddr::V4(v4)), source_key(IpAddr::V6(v4.to_ipv6_mapped())));
        assert_ne!(source_key(IpAddr::V4(v4)), source_key(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8))));
    }
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod driver_tests;
