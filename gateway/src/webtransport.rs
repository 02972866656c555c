//! The WebTransport listener (`-webtransport`): browsers' KCP sessions carried in
//! WebTransport datagrams.
//!
//! Each WebTransport session is one peer of a [`Driver`] with its own core
//! endpoint, so a browser's KCP session is opened, limited, proxied, listed and
//! kicked exactly like a UDP one. A task per WebTransport session moves its
//! datagrams to the driver; the driver sends straight into the session.
//!
//! A WebTransport session that cannot carry a KCP session is closed with a
//! reason the page can show: datagrams that fail the crypto check (a wrong key or
//! crypt), a gateway at its session limit or draining, no KCP session within
//! [`FIRST_SESSION_TIMEOUT`], or an origin not allowed.
//!
//! Nobody needs the key to open a WebTransport session, so what one may cost is
//! bounded before the handshake: connections per source (an IPv4 address or an
//! IPv6 /64, `-webtransport-per-address`), handshakes per second (the opening
//! rates), connections without a KCP session in all ([`MAX_WAITING`]); and after
//! it by QUIC limits fitted to what kcpgate uses, datagrams: a client may open
//! only the streams HTTP/3 needs, with small windows (`transport_config`).
//!
//! Without operator certificate files, kcpgate makes a self-signed ECDSA P-256
//! certificate (browsers accept one by hash, `serverCertificateHashes`, only if it
//! is valid for at most 14 days), replaces it before it expires, and publishes the
//! hashes for the public listener's `/webtransport/certificate` ([`crate::public`]).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use kcpgate_core::{DropReason, Framing, OpeningGuard, Outcome};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use wtransport::endpoint::endpoint_side::Server;
use wtransport::endpoint::IncomingSession;
use wtransport::tls::self_signed::time::{Duration as CertDuration, OffsetDateTime};
use wtransport::{Connection, Endpoint, Identity, ServerConfig, VarInt};

use crate::driver::Driver;
use crate::runtime::Plan;
use crate::transport::{Transport, TransportKind};

/// Largest datagram a KCP session over WebTransport sends: Chromium's
/// `maxDatagramSize` on a fresh connection. Sessions' MTU (and so FEC shards) is
/// clamped to it.
pub const BROWSER_DATAGRAM: usize = 1211;
/// QUIC packet size from the start, so that [`BROWSER_DATAGRAM`] fits before path
/// MTU discovery has run (Chromium starts at 1250 too).
const INITIAL_QUIC_MTU: u16 = 1250;
/// A WebTransport session that opened no KCP session this long is closed (a page
/// with smux keep-alive sends at least every 10 s).
pub const FIRST_SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the TLS and HTTP/3 handshakes may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A self-signed certificate's validity (browsers take at most 14 days) and how
/// often it is replaced; the last day overlaps with its successor.
const SELF_SIGNED_DAYS: i64 = 13;
const ROTATE_EVERY: Duration = Duration::from_secs(12 * 24 * 3600);
/// How long a closing WebTransport session waits for the page to read the close
/// notice and close its side.
const NOTICE_GRACE: Duration = Duration::from_secs(2);
/// Browser datagrams queued for the driver before the QUIC buffers take over.
const QUEUE: usize = 4096;
/// WebTransport connections in their handshake or without a KCP session yet, in
/// all; more are refused before their handshake.
pub const MAX_WAITING: u64 = 1024;
/// Streams a client may open: the CONNECT request's, and HTTP/3's control and
/// two QPACK streams. kcpgate reads no other stream, so it grants no more.
const CLIENT_BIDI_STREAMS: u32 = 1;
const CLIENT_UNI_STREAMS: u32 = 3;
/// Flow-control windows for what a client sends on streams (headers, settings,
/// capsules: a few hundred bytes), per stream and per connection.
const STREAM_WINDOW: u32 = 16 * 1024;
const CONNECTION_WINDOW: u32 = 64 * 1024;
/// Received datagrams a connection buffers while its task hands earlier ones on,
/// and datagrams it holds for sending while congestion control waits; beyond
/// them the oldest are dropped, as a network would, and KCP resends.
const DATAGRAM_RECEIVE_BUFFER: usize = 256 * 1024;
const DATAGRAM_SEND_BUFFER: usize = 256 * 1024;
/// Bytes of early packets quinn holds for connections not yet accepted.
const INCOMING_BUFFER: u64 = 16 * 1024;
const INCOMING_BUFFER_TOTAL: u64 = 4 * 1024 * 1024;

pub use crate::webtransport_state::{Published, Refusals};

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct PeerInner {
    id: u64,
    remote: SocketAddr,
    conn: Connection,
    /// A KCP session was opened for it.
    has_session: AtomicBool,
    /// We closed it (with a reason): no second close.
    closed: AtomicBool,
}

/// One browser's WebTransport session: the driver's peer.
#[derive(Clone)]
pub struct WtPeer(Arc<PeerInner>);

impl WtPeer {
    /// Ends the WebTransport session with `reason`. Browsers do not show the
    /// reason of a QUIC close to the page, so it goes first as a close notice: a
    /// unidirectional stream holding the reason in UTF-8, which the page reads
    /// before it closes its side. The connection is closed when the page has, or
    /// after [`NOTICE_GRACE`]. False if it was closing already.
    fn close(&self, reason: &str) -> bool {
        if self.0.closed.swap(true, Ordering::Relaxed) {
            return false;
        }
        let peer = self.clone();
        let reason = reason.to_string();
        tokio::spawn(async move {
            let conn = &peer.0.conn;
            let notice = async {
                let mut stream = conn.open_uni().await.ok()?.await.ok()?;
                stream.write_all(reason.as_bytes()).await.ok()?;
                stream.finish().await.ok()
            };
            let _ = tokio::time::timeout(NOTICE_GRACE, async {
                notice.await;
                conn.closed().await;
            })
            .await;
            // QUIC carries the reason in the CONNECTION_CLOSE frame too: keep it short.
            let short = &reason.as_bytes()[..reason.len().min(200)];
            conn.close(VarInt::from_u32(0), short);
        });
        true
    }
}

impl PartialEq for WtPeer {
    fn eq(&self, other: &WtPeer) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for WtPeer {}

impl Hash for WtPeer {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl fmt::Display for WtPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (WebTransport #{})", self.0.remote, self.0.id)
    }
}

enum Input {
    Datagram(WtPeer, Bytes),
    Gone(WtPeer),
}

/// The driver's side of the listener: datagrams in from every session task,
/// straight out into each session.
pub struct WebTransportPeers {
    inputs: mpsc::Receiver<Input>,
    batch: Vec<Input>,
    arena: Vec<u8>,
    spans: Vec<(WtPeer, usize)>,
    gone: Vec<WtPeer>,
    local: SocketAddr,
    refusals: Arc<Refusals>,
}

impl Transport for WebTransportPeers {
    type Peer = WtPeer;

    const KIND: TransportKind = TransportKind::Webtransport;

    async fn recv(&mut self) -> std::io::Result<()> {
        self.batch.clear();
        self.arena.clear();
        self.spans.clear();
        if self.inputs.recv_many(&mut self.batch, 256).await == 0 {
            // The listener stopped (draining): no more input, ever.
            std::future::pending::<()>().await;
        }
        for input in self.batch.drain(..) {
            match input {
                // A session this side closed has nothing more to say, and an
                // answer (a reset for its ended KCP session) would overtake the
                // close notice the page is about to read.
                Input::Datagram(peer, _) if peer.0.closed.load(Ordering::Relaxed) => {}
                Input::Datagram(peer, bytes) => {
                    self.arena.extend_from_slice(&bytes);
                    self.spans.push((peer, bytes.len()));
                }
                Input::Gone(peer) => self.gone.push(peer),
            }
        }
        Ok(())
    }

    fn datagrams(&mut self) -> impl Iterator<Item = (WtPeer, &mut [u8])> + '_ {
        let mut rest: &mut [u8] = &mut self.arena;
        self.spans.iter().map(move |(peer, len)| {
            let (datagram, tail) = std::mem::take(&mut rest).split_at_mut(*len);
            rest = tail;
            (peer.clone(), datagram)
        })
    }

    fn take_gone(&mut self) -> Option<WtPeer> {
        self.gone.pop()
    }

    async fn send(&mut self, to: &WtPeer, data: &[u8], segment: usize) -> std::io::Result<()> {
        for datagram in data.chunks(segment.max(1)) {
            match to.0.conn.send_datagram(datagram) {
                Ok(()) => {}
                Err(wtransport::error::SendDatagramError::TooLarge) => count(&self.refusals.oversized),
                Err(e) => debug!(remote = %to, "datagram not sent: {e}"),
            }
        }
        Ok(())
    }

    fn max_datagram(&self) -> usize {
        BROWSER_DATAGRAM
    }

    fn max_segments(&self, _size: usize) -> usize {
        64
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn address(peer: &WtPeer) -> SocketAddr {
        peer.0.remote
    }

    fn observed(&mut self, from: &WtPeer, outcome: &Outcome) {
        match outcome {
            Outcome::Created | Outcome::Replaced { .. } | Outcome::Delivered | Outcome::Unproven | Outcome::Moved => {
                from.0.has_session.store(true, Ordering::Relaxed);
            }
            // A peer with a session may send a stray datagram; one without has
            // nothing else to say.
            Outcome::Dropped(_) if from.0.has_session.load(Ordering::Relaxed) => {}
            // Its opening datagram was lost or overtaken (by later data, or by
            // parity): KCP sends it again, and the 30 s without a session still
            // applies.
            Outcome::Dropped(DropReason::MidSession | DropReason::NoConv) => {}
            // Datagrams keep coming while the close notice is on its way: one
            // refusal per session.
            Outcome::Dropped(DropReason::Checksum) => {
                if from.close("kcpgate: datagrams fail the crypto check: the key or crypt differ from the gateway's") {
                    count(&self.refusals.crypto);
                }
            }
            Outcome::Dropped(DropReason::NotAccepting | DropReason::SourceLimit | DropReason::OpeningLimit) => {
                if from.close("kcpgate: at its session limit or draining; try again later") {
                    count(&self.refusals.limit);
                }
            }
            Outcome::Dropped(reason) => {
                if from.close(&format!("kcpgate: not a KCP datagram ({reason:?})")) {
                    count(&self.refusals.malformed);
                }
            }
        }
    }

    fn session_ended(&mut self, peer: &WtPeer, reason: &str) {
        peer.close(reason);
    }
}

/// A fresh self-signed certificate for every local name, valid from an hour ago
/// (for clients whose clocks lag) for [`SELF_SIGNED_DAYS`].
fn self_signed() -> Result<(Identity, SystemTime), String> {
    let not_before = OffsetDateTime::now_utc() - CertDuration::hours(1);
    let not_after = not_before + CertDuration::days(SELF_SIGNED_DAYS);
    let identity = Identity::self_signed_builder()
        .subject_alt_names(["localhost", "127.0.0.1", "::1"])
        .validity_period(not_before, not_after)
        .build()
        .map_err(|e| format!("cannot make a self-signed certificate: {e}"))?;
    Ok((identity, SystemTime::from(not_after)))
}

fn hash_of(identity: &Identity) -> [u8; 32] {
    *identity.certificate_chain().as_slice()[0].hash().as_ref()
}

/// QUIC settings: what a client may send is fitted to what kcpgate reads.
fn transport_config() -> wtransport::quinn::TransportConfig {
    use wtransport::quinn::VarInt as QuicVarInt;
    let mut transport = wtransport::quinn::TransportConfig::default();
    transport.initial_mtu(INITIAL_QUIC_MTU);
    transport.max_idle_timeout(Some(Duration::from_secs(60).try_into().expect("60 s is a valid idle timeout")));
    transport.keep_alive_interval(Some(Duration::from_secs(15)));
    transport.max_concurrent_bidi_streams(QuicVarInt::from_u32(CLIENT_BIDI_STREAMS));
    transport.max_concurrent_uni_streams(QuicVarInt::from_u32(CLIENT_UNI_STREAMS));
    transport.stream_receive_window(QuicVarInt::from_u32(STREAM_WINDOW));
    transport.receive_window(QuicVarInt::from_u32(CONNECTION_WINDOW));
    transport.datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER));
    transport.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    transport
}

fn server_config(addr: SocketAddr, identity: Identity) -> ServerConfig {
    let mut config =
        ServerConfig::builder().with_bind_address(addr).with_custom_transport(identity, transport_config()).build();
    let quic = config.quic_config_mut();
    quic.incoming_buffer_size(INCOMING_BUFFER);
    quic.incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    quic.max_incoming(MAX_WAITING as usize);
    config
}

/// Who may start a handshake: at most `per_address` connections per source at
/// once (0: no limit), the opening rates, and [`MAX_WAITING`] connections
/// without a KCP session in all. A client whose address is not yet proven (its
/// first packet could come from anyone) is asked to prove it (a QUIC Retry)
/// instead of being refused, and while unproven it holds at most
/// [`UNPROVEN_PER_SOURCE`] places of its source and [`UNPROVEN_IN_ALL`] in all: packets
/// forged with a player's address can neither fill that address's places nor
/// spend its rate.
struct Gate {
    per_address: u32,
    /// Per source: (connections, of which unproven).
    open: std::sync::Mutex<std::collections::HashMap<u64, (u32, u32)>>,
    unproven: AtomicU64,
    rates: std::sync::Mutex<OpeningGuard>,
    start: std::time::Instant,
}

/// Handshakes from addresses not yet proven, per source and in all.
const UNPROVEN_PER_SOURCE: u32 = 8;
const UNPROVEN_IN_ALL: u64 = 256;

/// What the [`Gate`] says to a connection attempt.
enum GateVerdict<'r> {
    Enter(Ticket),
    /// Prove the address first (QUIC Retry).
    Prove,
    /// Refused; the counter of the limit it hit.
    Refuse(&'r AtomicU64),
}

/// A connection's place under the [`Gate`]'s limits, given back when it ends.
struct Ticket {
    gate: Arc<Gate>,
    plan: Arc<Plan>,
    source: u64,
    /// Still counted in [`Plan::webtransport_waiting`].
    waiting: bool,
    /// Still counted as unproven.
    unproven: bool,
}

impl Gate {
    fn new(plan: &Plan) -> Gate {
        let limits = crate::runtime::opening_limits(&plan.settings);
        Gate {
            per_address: plan.settings.webtransport_per_address,
            open: Default::default(),
            unproven: AtomicU64::new(0),
            rates: std::sync::Mutex::new(OpeningGuard::new(limits, 0, crate::runtime::random_u64())),
            start: std::time::Instant::now(),
        }
    }

    /// The verdict on a connection attempt from `remote`, whose address is
    /// `proven` or not.
    fn enter<'r>(
        self: &Arc<Gate>,
        plan: &Arc<Plan>,
        remote: SocketAddr,
        proven: bool,
        refusals: &'r Refusals,
    ) -> GateVerdict<'r> {
        let source = crate::driver::source_key(remote.ip());
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (count, unproven) = open.get(&source).copied().unwrap_or((0, 0));
        let refused = if plan.webtransport_waiting.load(Ordering::Relaxed) >= MAX_WAITING {
            Some(&refusals.waiting)
        } else if self.per_address > 0 && count >= self.per_address {
            Some(&refusals.address)
        } else if !proven
            && (unproven >= UNPROVEN_PER_SOURCE || self.unproven.load(Ordering::Relaxed) >= UNPROVEN_IN_ALL)
        {
            return GateVerdict::Prove;
        } else {
            let now = self.start.elapsed().as_millis() as u32;
            let mut rates = self.rates.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            rates.admit(now, source).is_err().then_some(&refusals.rate)
        };
        match refused {
            // Whoever sent it may not be who the address says.
            Some(_) if !proven => GateVerdict::Prove,
            Some(counter) => GateVerdict::Refuse(counter),
            None => {
                open.insert(source, (count + 1, unproven + u32::from(!proven)));
                if !proven {
                    self.unproven.fetch_add(1, Ordering::Relaxed);
                }
                plan.webtransport_waiting.fetch_add(1, Ordering::Relaxed);
                GateVerdict::Enter(Ticket {
                    gate: self.clone(),
                    plan: plan.clone(),
                    source,
                    waiting: true,
                    unproven: !proven,
                })
            }
        }
    }
}

impl Ticket {
    /// Its connection has a KCP session: it no longer counts as waiting.
    fn has_session(&mut self) {
        if std::mem::take(&mut self.waiting) {
            self.plan.webtransport_waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Its handshake completed, which proves its address.
    fn proven(&mut self) {
        if std::mem::take(&mut self.unproven) {
            self.gate.unproven.fetch_sub(1, Ordering::Relaxed);
            let mut open = self.gate.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((_, unproven)) = open.get_mut(&self.source) {
                *unproven = unproven.saturating_sub(1);
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.has_session();
        self.proven();
        let mut open = self.gate.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let std::collections::hash_map::Entry::Occupied(mut entry) = open.entry(self.source) {
            entry.get_mut().0 -= 1;
            if entry.get().0 == 0 {
                entry.remove();
            }
        }
    }
}

/// A bound WebTransport listener, ready to serve.
pub struct WebTransportListener {
    endpoint: Endpoint<Server>,
    addr: SocketAddr,
    self_signed: bool,
    /// The operator's certificate files, read again when they change.
    operator: Option<crate::http::CertFiles>,
    origins: Arc<[String]>,
}

/// Binds `-webtransport` with its certificate; `None` when it is off. Fails with
/// a message that says what to fix.
pub async fn bind(plan: &Plan) -> std::io::Result<Option<WebTransportListener>> {
    let Some(addr) = plan.settings.webtransport_addr().map_err(|e| std::io::Error::other(e.0))? else {
        return Ok(None);
    };
    let origins = plan.settings.webtransport_origins().map_err(|e| std::io::Error::other(e.0))?;
    let s = &plan.settings;
    let (identity, expires) = if s.webtransport_cert.is_empty() {
        let (identity, expires) = self_signed().map_err(std::io::Error::other)?;
        (identity, Some(expires))
    } else {
        let identity = Identity::load_pemfiles(&s.webtransport_cert, &s.webtransport_key).await.map_err(|e| {
            std::io::Error::other(format!(
                "cannot load -webtransport-cert {} / -webtransport-key {}: {e}",
                s.webtransport_cert, s.webtransport_key
            ))
        })?;
        (identity, None)
    };
    let hash = hash_of(&identity);
    let endpoint = Endpoint::server(server_config(addr, identity))
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen for WebTransport on UDP {addr}: {e}")))?;
    let local = endpoint.local_addr()?;
    let mut published = plan.shared.webtransport.write().expect("published lock");
    published.port = Some(local.port());
    if let Some(expires) = expires {
        published.hashes = vec![hash];
        published.expires = Some(expires);
    }
    info!("listening for WebTransport on UDP {local}");
    let operator = expires.is_none().then(|| crate::http::CertFiles::new(&s.webtransport_cert, &s.webtransport_key));
    Ok(Some(WebTransportListener {
        endpoint,
        addr: local,
        self_signed: expires.is_some(),
        operator,
        origins: origins.into(),
    }))
}

/// The URL path of plain-KCP sessions (message mode, no smux); every other
/// session is kcptun's stream stack at `/`.
pub const MESSAGES_PATH: &str = "/messages";

/// Who is admitted (pages of these origins; any when empty), and where admitted
/// sessions' datagrams go: one driver per framing.
#[derive(Clone)]
struct Intake {
    origins: Arc<[String]>,
    streams: mpsc::Sender<Input>,
    messages: mpsc::Sender<Input>,
}

fn peers(local: SocketAddr, plan: &Plan) -> (mpsc::Sender<Input>, WebTransportPeers) {
    let (tx, inputs) = mpsc::channel(QUEUE);
    let peers = WebTransportPeers {
        inputs,
        batch: Vec::new(),
        arena: Vec::new(),
        spans: Vec::new(),
        gone: Vec::new(),
        local,
        refusals: plan.shared.webtransport_refusals.clone(),
    };
    (tx, peers)
}

/// Serves WebTransport sessions until `drain` turns true and their streams are
/// done: kcptun's stream stack at `/`, plain KCP at [`MESSAGES_PATH`].
pub async fn serve(mut listener: WebTransportListener, plan: Arc<Plan>, mut drain: watch::Receiver<bool>) {
    let (streams, stream_peers) = peers(listener.addr, &plan);
    let (messages, message_peers) = peers(listener.addr, &plan);
    let drivers = [
        tokio::spawn(Driver::server(stream_peers, plan.clone(), Framing::Streams).run(drain.clone())),
        tokio::spawn(Driver::server(message_peers, plan.clone(), Framing::Messages).run(drain.clone())),
    ];
    let admission = Intake { origins: listener.origins.clone(), streams, messages };
    let gate = Arc::new(Gate::new(&plan));
    let next_id = Arc::new(AtomicU64::new(1));
    let mut rotate = tokio::time::interval_at(tokio::time::Instant::now() + ROTATE_EVERY, ROTATE_EVERY);
    let mut check = tokio::time::interval(crate::http::CERTIFICATE_CHECK);
    loop {
        tokio::select! {
            incoming = listener.endpoint.accept() => {
                let remote = incoming.remote_address();
                let proven = incoming.remote_address_validated();
                match gate.enter(&plan, remote, proven, &plan.shared.webtransport_refusals) {
                    GateVerdict::Enter(ticket) => {
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(admit(incoming, id, ticket, drain.clone(), admission.clone()));
                    }
                    GateVerdict::Prove => incoming.retry(),
                    GateVerdict::Refuse(counter) => {
                        count(counter);
                        debug!(%remote, "WebTransport connection refused before its handshake");
                        incoming.refuse();
                    }
                }
            }
            _ = rotate.tick(), if listener.self_signed => rotate_certificate(&listener, &plan),
            _ = check.tick(), if listener.operator.is_some() => reload_operator_certificate(&mut listener).await,
            _ = drain.changed() => if *drain.borrow() { break },
        }
    }
    drop(admission);
    for driver in drivers {
        let _ = driver.await;
    }
    listener.endpoint.close(VarInt::from_u32(0), b"kcpgate stopped");
    // Removed by a reload: pages are no longer sent here (a listener that
    // replaced it has published its own port).
    let mut published = plan.shared.webtransport.write().expect("published lock");
    if published.port == Some(listener.addr.port()) {
        *published = Default::default();
    }
}

/// Reads the operator's certificate files again if they changed (a renewal): new
/// sessions get the new certificate, open ones keep theirs. A pair that does not
/// load is logged, and the certificate in use stays.
async fn reload_operator_certificate(listener: &mut WebTransportListener) {
    let Some(files) = listener.operator.as_mut() else { return };
    if !files.changed() {
        return;
    }
    let (cert, key) = (files.cert.clone(), files.key.clone());
    let identity = match Identity::load_pemfiles(&cert, &key).await {
        Ok(identity) => identity,
        Err(e) => {
            return warn!("-webtransport-cert {cert} / -webtransport-key {key}: {e}; the certificate in use stays")
        }
    };
    match listener.endpoint.reload_config(server_config(listener.addr, identity), false) {
        Ok(()) => info!("-webtransport-cert: certificate read again ({cert})"),
        Err(e) => warn!("-webtransport-cert {cert}: not taken: {e}; the certificate in use stays"),
    }
}

/// Replaces the self-signed certificate; the old one's hash stays published
/// (sessions that use it carry on).
fn rotate_certificate(listener: &WebTransportListener, plan: &Plan) {
    let (identity, expires) = match self_signed() {
        Ok(new) => new,
        Err(e) => return warn!("WebTransport certificate not replaced: {e}"),
    };
    let hash = hash_of(&identity);
    if let Err(e) = listener.endpoint.reload_config(server_config(listener.addr, identity), false) {
        return warn!("WebTransport certificate not replaced: {e}");
    }
    let mut published = plan.shared.webtransport.write().expect("published lock");
    published.hashes.truncate(1);
    published.hashes.insert(0, hash);
    published.expires = Some(expires);
    info!("WebTransport certificate replaced; it expires in {SELF_SIGNED_DAYS} days");
}

/// One WebTransport session: admitted (or refused with a reason), then its
/// datagrams go to the driver until it ends.
async fn admit(
    incoming: IncomingSession,
    id: u64,
    mut ticket: Ticket,
    drain: watch::Receiver<bool>,
    admission: Intake,
) {
    let plan = ticket.plan.clone();
    let refusals = &plan.shared.webtransport_refusals;
    let request = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(request)) => {
            ticket.proven();
            request
        }
        Ok(Err(e)) => return debug!("WebTransport handshake failed: {e}"),
        Err(_) => return count(&refusals.handshake),
    };
    let origins = &admission.origins;
    if !origins.is_empty() && !request.origin().is_some_and(|o| origins.iter().any(|a| a == o)) {
        count(&refusals.origin);
        info!(remote = %request.remote_address(), origin = ?request.origin(), "WebTransport session refused: origin not allowed");
        return request.forbidden().await;
    }
    let tx = match request.path() {
        "" | "/" => admission.streams,
        MESSAGES_PATH => admission.messages,
        _ => {
            count(&refusals.path);
            return request.not_found().await;
        }
    };
    if *drain.borrow() {
        count(&refusals.draining);
        return request.too_many_requests().await;
    }
    let limit = plan.tuning().max_sessions();
    // Less this one, which is counted as waiting already.
    let waiting = plan.webtransport_waiting.load(Ordering::Relaxed).saturating_sub(1);
    if limit > 0 && plan.shared.registry.open_sessions() + waiting >= limit {
        count(&refusals.limit);
        return request.too_many_requests().await;
    }
    let conn = match request.accept().await {
        Ok(conn) => conn,
        Err(e) => return debug!("WebTransport session not accepted: {e}"),
    };
    let remote = conn.remote_address();
    if conn.max_datagram_size().is_none() {
        conn.close(VarInt::from_u32(0), b"kcpgate: this client does not support datagrams");
        return;
    }
    let peer = WtPeer(Arc::new(PeerInner {
        id,
        remote,
        conn,
        has_session: AtomicBool::new(false),
        closed: AtomicBool::new(false),
    }));
    debug!(%peer, "WebTransport session accepted");
    let give_up = tokio::time::sleep(FIRST_SESSION_TIMEOUT);
    tokio::pin!(give_up);
    loop {
        if ticket.waiting && peer.0.has_session.load(Ordering::Relaxed) {
            ticket.has_session();
        }
        let waiting = ticket.waiting;
        tokio::select! {
            datagram = peer.0.conn.receive_datagram() => match datagram {
                Ok(d) => {
                    if tx.send(Input::Datagram(peer.clone(), d.payload())).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    debug!(%peer, "WebTransport session ended: {e}");
                    break;
                }
            },
            () = &mut give_up, if waiting => {
                if peer.close("kcpgate: no KCP session within 30 s") {
                    count(&refusals.idle);
                }
                break;
            }
        }
    }
    let _ = tx.send(Input::Gone(peer)).await;
    drop(ticket);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Role, Settings};

    #[tokio::test]
    async fn a_replaced_self_signed_certificate_is_published_first_and_the_old_one_kept() {
        let args = ["-l", "127.0.0.1:1", "-webtransport", "127.0.0.1:0"].map(String::from);
        let plan = Plan::alone(Settings::parse(Role::Server, args).expect("settings")).expect("valid settings");
        let listener = bind(&plan).await.expect("binds").expect("on");
        let first = plan.shared.webtransport.read().unwrap().hashes.clone();
        assert_eq!(first.len(), 1);
        rotate_certificate(&listener, &plan);
        rotate_certificate(&listener, &plan);
        let published = plan.shared.webtransport.read().unwrap();
        assert_eq!(published.hashes.len(), 2, "the current and the one before");
        assert!(!published.hashes.contains(&first[0]), "two replacements later the first is gone");
        assert_ne!(published.hashes[0], published.hashes[1]);
        let left = published.expires.unwrap().duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(12 * 86_400) && left < Duration::from_secs(13 * 86_400), "{left:?}");
    }

    #[test]
    fn unproven_addresses_are_asked_to_prove_themselves_and_cannot_fill_a_players_places() {
        let args = ["-l", "127.0.0.1:1", "-webtransport-per-address", "20"].map(String::from);
        let plan =
            Arc::new(Plan::alone(Settings::parse(Role::Server, args).expect("settings")).expect("valid settings"));
        let gate = Arc::new(Gate::new(&plan));
        let refusals = Refusals::default();
        let player: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let mut tickets = Vec::new();
        // Forged first packets with the player's address take at most 8 places.
        for _ in 0..UNPROVEN_PER_SOURCE {
            let GateVerdict::Enter(t) = gate.enter(&plan, player, false, &refusals) else {
                panic!("an unproven place")
            };
            tickets.push(t);
        }
        assert!(matches!(gate.enter(&plan, player, false, &refusals), GateVerdict::Prove));
        // The player, proven by a Retry, still gets the other 12.
        for _ in 0..12 {
            let GateVerdict::Enter(t) = gate.enter(&plan, player, true, &refusals) else { panic!("a proven place") };
            tickets.push(t);
        }
        assert!(
            matches!(gate.enter(&plan, player, true, &refusals), GateVerdict::Refuse(c) if std::ptr::eq(c, &refusals.address))
        );
        assert!(matches!(gate.enter(&plan, player, false, &refusals), GateVerdict::Prove), "never refused unproven");
        assert_eq!(plan.webtransport_waiting.load(Ordering::Relaxed), 20);
        // A handshake that completes proves its address: an unproven place frees.
        tickets[0].proven();
        tickets.pop();
        let GateVerdict::Enter(_t) = gate.enter(&plan, player, false, &refusals) else { panic!("a place freed") };
        drop(tickets);
        assert_eq!(gate.unproven.load(Ordering::Relaxed), 1, "the one still held");
        assert_eq!(plan.webtransport_waiting.load(Ordering::Relaxed), 1);
    }
}
