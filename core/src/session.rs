//! One whole kcptun session: the datagram pipeline (crypto, FEC, KCP), the stream
//! layers (snappy, smux, QPP) and the lifecycle of every stream, driven only by
//! the caller's clock.
//!
//! A stream has two directions. Ours ends when the application calls
//! [`Session::finish`] (a FIN goes to the peer after the queued data); the peer's
//! ends when [`Session::read`] returns [`Read::Eof`]. When both have ended the
//! stream is over ([`StreamEnd::Finished`]). With a close-wait (kcptun's
//! `-closewait`), a stream still half-open that long after its first direction
//! ended is closed fully ([`StreamEnd::CloseWaitExpired`]). [`Session::reset`]
//! ends a stream at once, for a connection that failed or a target that refused.
//! Every stream that ends, whichever way, is reported once as
//! [`StreamEvent::Closed`], so a driver frees its resources in one place.
//!
//! Most callers use [`crate::endpoint::Endpoint`], which owns sessions and drives
//! them; a `Session` on its own suits one dialled session (the browser).

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};

use crate::crypto::OpenError;
use crate::kcp::{diff, earliest};
use crate::messages::MessageLink;
use crate::pipeline::Connection;
use crate::smux::{self, Read, Role, SmuxError, StreamError};
use crate::snmp::Snmp;
use crate::stack::{StackConfig, StackError, StreamStack};

/// Something a session's streams want the application to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEvent {
    /// The peer opened a stream (a server dials its target now).
    Opened(u32),
    /// Data, or the end of the peer's direction, can be read.
    Readable(u32),
    /// A write that took less than offered may now take more.
    Writable(u32),
    /// The stream is gone; nothing more can be read or written.
    Closed(u32, StreamEnd),
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEnd {
    /// Both directions ended: the application finished and read the peer's FIN.
    Finished,
    /// The application reset it.
    Reset,
    /// Half-open for longer than the close-wait.
    CloseWaitExpired,
    /// The whole session ended.
    SessionEnded,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEnd {
    /// The stream layers failed (a protocol error, or the peer went silent).
    Stack(StackError),
    /// The application closed it, saying why ([`crate::endpoint::Endpoint::close_session`]).
    Closed(String),
    /// The peer started a new session from the same address.
    Replaced,
    /// Plain KCP: the one stream ended (its application or backend closed it).
    StreamEnded,
    /// The peer has no such session: it restarted, or closed it (`kcp::CMD_RESET`).
    Reset,
}

impl core::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SessionEnd::Stack(e) => write!(f, "{e}"),
            SessionEnd::Closed(why) => f.write_str(why),
            SessionEnd::Replaced => f.write_str("replaced: the peer started a new session"),
            SessionEnd::StreamEnded => f.write_str("the message stream ended: its application or backend closed it"),
            SessionEnd::Reset => f.write_str("the peer has no such session (it restarted, or closed it)"),
        }
    }
}

impl std::error::Error for SessionEnd {}

/// One stream as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSnapshot {
    /// The smux stream id.
    pub id: u32,
    /// When it opened (the caller's clock, ms).
    pub opened_at: u32,
    /// Application bytes read from it, and written to it.
    pub bytes_read: u64,
    /// Application bytes written to it.
    pub bytes_written: u64,
}

/// A snapshot of one session ([`Session::stats`]).
#[derive(Debug, Clone)]
pub struct SessionSnapshot {
    /// The conversation id.
    pub conv: u32,
    /// What carries the application's bytes.
    pub framing: Framing,
    /// The smux version in use, once known (`None` for plain KCP).
    pub smux_version: Option<u8>,
    /// The packet crypto's cipher.
    pub cipher: crate::crypto::Method,
    /// The largest datagram the session sends, headers included (bytes).
    pub datagram_size: u32,
    /// The KCP preset its settings are, or `None` for kcptun's "manual".
    pub mode: Option<crate::kcp::Mode>,
    /// When the peer was last heard from (the caller's clock, ms).
    pub heard_at: u32,
    /// The ARQ state.
    pub kcp: crate::kcp::KcpState,
    /// The session's counters in kcp-go's SNMP terms.
    pub traffic: Snmp,
}

#[derive(Debug)]
struct StreamState {
    /// Our direction ended: FIN queued after the data.
    finished: bool,
    /// The peer's direction ended and the application has read to its end.
    eof: bool,
    /// When a half-open stream is closed fully.
    close_by: Option<u32>,
    info: StreamSnapshot,
}

/// Settings of the layers above the datagram pipeline, and of the stream lifecycle.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// snappy, smux and QPP.
    pub stack: StackConfig,
    /// How long a half-open stream may live, ms (kcptun `-closewait`); 0 forever.
    pub close_wait_ms: u32,
    /// What carries the application's bytes over KCP.
    pub framing: Framing,
}

/// What carries the application's bytes over KCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// kcptun's stream layers (`StreamConfig::stack`): many streams.
    #[default]
    Streams,
    /// Plain KCP in message mode (`messages`): one stream of
    /// length-prefixed messages. The session puts KCP in message mode.
    Messages,
}

/// The layers above KCP.
// One per session, and nearly always the large variant: boxing it would only add
// a pointer chase to every call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Layers {
    Streams(StreamStack),
    Messages(MessageLink),
}

/// Runs the same call on whichever layers a session has.
macro_rules! layers {
    ($layers:expr, $l:ident => $call:expr) => {
        match $layers {
            Layers::Streams($l) => $call,
            Layers::Messages($l) => $call,
        }
    };
}

impl Layers {
    fn poll_timeout(&self) -> Option<u32> {
        match self {
            Layers::Streams(s) => s.poll_timeout(),
            Layers::Messages(_) => None,
        }
    }

    fn handle_timeout(&mut self, now: u32) -> Result<(), StackError> {
        match self {
            Layers::Streams(s) => s.handle_timeout(now),
            Layers::Messages(_) => Ok(()),
        }
    }

    fn readable_bytes(&self, sid: u32) -> usize {
        match self {
            Layers::Streams(s) => s.mux().stream_readable(sid),
            Layers::Messages(m) => m.readable_bytes(sid),
        }
    }

    fn stream_close_write(&mut self, sid: u32) -> Result<(), StreamError> {
        match self {
            Layers::Streams(s) => s.stream_close_write(sid),
            Layers::Messages(m) => m.stream_close(sid),
        }
    }
}

/// One kcptun session. See the module docs.
pub struct Session {
    conn: Connection,
    stack: Layers,
    streams: HashMap<u32, StreamState>,
    close_wait_ms: u32,
    /// Streams with a close-wait deadline: the timers look at streams only when
    /// some are.
    closing: usize,
    events: VecDeque<StreamEvent>,
    ended: Option<SessionEnd>,
    /// Datagrams of the transmit queue already handed out by [`Session::next_transmit`].
    taken: usize,
    /// When a datagram of the peer last passed the crypto check.
    heard_at: u32,
}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session").field("conv", &self.conn.conv()).field("streams", &self.streams.len()).finish()
    }
}

impl Session {
    /// A session over `conn`, in `role`, started at `now`.
    pub fn new(mut conn: Connection, role: Role, cfg: StreamConfig, now: u32) -> Session {
        // A client may move (a NAT rebinding): see `Kcp::set_reacknowledge`.
        conn.kcp_mut().set_reacknowledge(role == Role::Client);
        let stack = match cfg.framing {
            Framing::Streams => Layers::Streams(StreamStack::new(role, cfg.stack, now)),
            Framing::Messages => {
                conn.kcp_mut().set_stream(false);
                Layers::Messages(MessageLink::new(role))
            }
        };
        Session {
            conn,
            stack,
            streams: HashMap::new(),
            close_wait_ms: cfg.close_wait_ms,
            closing: 0,
            events: VecDeque::new(),
            ended: None,
            taken: 0,
            heard_at: now,
        }
    }

    /// The conversation id.
    pub fn conv(&self) -> u32 {
        self.conn.conv()
    }

    /// The crypto this session's datagrams use (it keeps it through a key change).
    pub(crate) fn crypto(&self) -> &std::sync::Arc<crate::crypto::PacketCrypto> {
        self.conn.crypto()
    }

    /// A snapshot of the session for views and metrics: its ARQ state, its
    /// counters and what it is made of.
    pub fn stats(&self) -> SessionSnapshot {
        let kcp = self.conn.kcp();
        let c = kcp.config();
        SessionSnapshot {
            conv: self.conn.conv(),
            framing: self.framing(),
            smux_version: match &self.stack {
                Layers::Streams(s) => s.mux().version(),
                Layers::Messages(_) => None,
            },
            cipher: self.conn.crypto().method(),
            datagram_size: (c.mtu + c.header_room + c.tail_room) as u32,
            mode: crate::kcp::Mode::of_config(c),
            heard_at: self.heard_at,
            kcp: kcp.state(),
            traffic: self.conn.snmp(),
        }
    }

    /// What carries the application's bytes.
    pub fn framing(&self) -> Framing {
        match &self.stack {
            Layers::Streams(_) => Framing::Streams,
            Layers::Messages(_) => Framing::Messages,
        }
    }

    /// When the peer was last heard from: its last datagram that passed the crypto
    /// check (the caller's clock, ms).
    pub fn heard_at(&self) -> u32 {
        self.heard_at
    }

    /// Why the session ended, once it has.
    pub fn ended(&self) -> Option<&SessionEnd> {
        self.ended.as_ref()
    }

    /// Open streams.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Every open stream, in no particular order.
    pub fn streams(&self) -> impl Iterator<Item = StreamSnapshot> + '_ {
        self.streams.values().map(|s| s.info)
    }

    /// Takes a datagram from the network: checks and decrypts it in place. Call
    /// [`Session::drive`] before taking events or transmits.
    pub fn handle_datagram(&mut self, now: u32, datagram: &mut [u8]) -> Result<(), OpenError> {
        self.conn.handle_datagram(now, datagram)?;
        self.heard_at = now;
        Ok(())
    }

    /// See `Connection::first_sight`.
    pub fn first_sight(&mut self, fingerprint: u64) -> bool {
        self.conn.first_sight(fingerprint)
    }

    /// Takes a datagram whose crypto layer was already removed.
    pub fn handle_plain(&mut self, now: u32, plain: &[u8]) {
        self.conn.handle_plain(now, plain);
        self.heard_at = now;
    }

    /// When [`Session::handle_timeout`] wants to run: KCP's and smux's timers and
    /// the earliest close-wait. `None` while idle (and once ended).
    pub fn poll_timeout(&self) -> Option<u32> {
        if self.ended.is_some() {
            return None;
        }
        let closing = (self.closing > 0).then(|| self.streams.values().filter_map(|s| s.close_by));
        let timers = [self.conn.poll_timeout(), self.stack.poll_timeout()].into_iter().flatten();
        timers.chain(closing.into_iter().flatten()).reduce(earliest)
    }

    /// Runs whatever timer is due at `now` (none may be: calling early is harmless).
    /// Call [`Session::drive`] afterwards.
    pub fn handle_timeout(&mut self, now: u32) {
        if self.ended.is_some() {
            return;
        }
        if self.conn.poll_timeout().is_some_and(|d| diff(now, d) >= 0) {
            self.conn.handle_timeout(now);
        }
        if let Err(e) = self.stack.handle_timeout(now) {
            self.end(SessionEnd::Stack(e));
            return;
        }
        if self.closing == 0 {
            return;
        }
        let expired = self.streams.iter().filter(|(_, s)| s.close_by.is_some_and(|t| diff(now, t) >= 0));
        let expired: Vec<u32> = expired.map(|(&sid, _)| sid).collect();
        for sid in expired {
            let _ = layers!(&mut self.stack, l => l.stream_close(sid));
            self.forget(sid, StreamEnd::CloseWaitExpired);
        }
    }

    /// Moves bytes between the datagram pipeline and the streams, both ways, as far
    /// as each side takes them, and notes what the application should act on. Call
    /// after anything happened (a datagram, a timer, a stream operation) and before
    /// taking events or transmits.
    pub fn drive(&mut self, now: u32) {
        if self.ended.is_some() {
            return;
        }
        if self.conn.reset_by_peer() {
            self.end(SessionEnd::Reset);
            return;
        }
        if let Err(e) = layers!(&mut self.stack, l => l.pump(now, &mut self.conn)) {
            self.end(SessionEnd::Stack(e));
            return;
        }
        while let Some(sid) = layers!(&mut self.stack, l => l.accept()) {
            self.streams.insert(sid, StreamState::new(sid, now));
            self.events.push_back(StreamEvent::Opened(sid));
        }
        while let Some(e) = layers!(&mut self.stack, l => l.poll_event()) {
            let (sid, event) = match e {
                smux::MuxEvent::Readable(sid) => (sid, StreamEvent::Readable(sid)),
                smux::MuxEvent::Writable(sid) => (sid, StreamEvent::Writable(sid)),
            };
            if self.streams.contains_key(&sid) {
                self.events.push_back(event);
            }
        }
    }

    /// The next thing the application should act on.
    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    /// Opens a stream to the peer (a client's new connection).
    pub fn open_stream(&mut self, now: u32) -> Result<u32, SmuxError> {
        let sid = layers!(&mut self.stack, l => l.open_stream())?;
        self.streams.insert(sid, StreamState::new(sid, now));
        Ok(sid)
    }

    /// Bytes a [`Session::read`] of `sid` would return now.
    pub fn readable_bytes(&self, sid: u32) -> usize {
        self.stack.readable_bytes(sid)
    }

    /// Reads from a stream. [`Read::Eof`] once the peer's direction has ended and
    /// everything was read; if ours has ended too, the stream is over.
    pub fn read(&mut self, now: u32, sid: u32, buf: &mut [u8]) -> Result<Read, StreamError> {
        let s = self.streams.get_mut(&sid).ok_or(StreamError::NoSuchStream)?;
        let read = match layers!(&mut self.stack, l => l.stream_read(sid, buf)) {
            // smux forgets a stream whose FIN arrived once ours is sent too.
            Err(StreamError::NoSuchStream) if s.finished => Ok(Read::Eof),
            other => other,
        };
        match read {
            Ok(Read::Data(n)) => s.info.bytes_read += n as u64,
            Ok(Read::Eof) if !s.eof => {
                s.eof = true;
                self.direction_ended(now, sid);
            }
            _ => {}
        }
        read
    }

    /// Writes to a stream; returns the bytes taken (0: wait for
    /// [`StreamEvent::Writable`]).
    pub fn write(&mut self, sid: u32, data: &[u8]) -> Result<usize, StreamError> {
        let s = self.streams.get_mut(&sid).ok_or(StreamError::NoSuchStream)?;
        if s.finished {
            return Err(StreamError::WriteClosed);
        }
        let n = layers!(&mut self.stack, l => l.stream_write(sid, data))?;
        s.info.bytes_written += n as u64;
        Ok(n)
    }

    /// Ends our direction of a stream: the peer reads to the end of what was
    /// written, then its end of stream. Reading goes on.
    pub fn finish(&mut self, now: u32, sid: u32) -> Result<(), StreamError> {
        let s = self.streams.get_mut(&sid).ok_or(StreamError::NoSuchStream)?;
        if s.finished {
            return Ok(());
        }
        s.finished = true;
        self.stack.stream_close_write(sid)?;
        if let Layers::Messages(_) = self.stack {
            // Plain KCP cannot tell the peer: what was written goes, then the session ends.
            self.close_with(now, SessionEnd::StreamEnded);
            return Ok(());
        }
        self.direction_ended(now, sid);
        Ok(())
    }

    /// Ends a stream at once, both directions: unread data is discarded and the
    /// peer gets a FIN (smux has no reset frame).
    pub fn reset(&mut self, sid: u32) -> Result<(), StreamError> {
        if !self.streams.contains_key(&sid) {
            return Err(StreamError::NoSuchStream);
        }
        let _ = layers!(&mut self.stack, l => l.stream_close(sid));
        self.forget(sid, StreamEnd::Reset);
        if let Layers::Messages(_) = self.stack {
            self.end(SessionEnd::StreamEnded);
        }
        Ok(())
    }

    /// Closes the session on the application's behalf: every stream gets a FIN (the
    /// peer's applications see their connections end), flushed at once. The session
    /// has ended; send its last datagrams, then drop it.
    pub fn close(&mut self, now: u32, why: String) {
        self.close_with(now, SessionEnd::Closed(why));
    }

    fn close_with(&mut self, now: u32, why: SessionEnd) {
        if self.ended.is_some() {
            return;
        }
        let sids: Vec<u32> = self.streams.keys().copied().collect();
        for sid in sids {
            let _ = layers!(&mut self.stack, l => l.stream_close(sid));
        }
        let _ = layers!(&mut self.stack, l => l.pump(now, &mut self.conn));
        self.conn.flush(now);
        self.end(why);
    }

    /// Starts a proof of the peer's address (see `Routed::probe_address`): a random
    /// `ts` base, and an smux NOP, which every smux reads and ignores, as soon as
    /// the version is known. False for message framing, which has no such frame.
    pub(crate) fn probe_address(&mut self, ts_base: u32) -> bool {
        self.conn.kcp_mut().set_ts_base(ts_base | 1);
        match &mut self.stack {
            Layers::Streams(s) => {
                s.ping_soon();
                true
            }
            Layers::Messages(_) => false,
        }
    }

    /// See `Routed::keep_probing`.
    pub(crate) fn keep_probing(&mut self) {
        let kcp = self.conn.kcp().state();
        if let (Layers::Streams(s), 0, 0) = (&mut self.stack, kcp.snd_buf, kcp.snd_queue) {
            s.ping_soon();
        }
    }

    /// See `Connection::evidence`.
    pub(crate) fn evidence(&self, plain: &[u8]) -> Option<u32> {
        self.conn.evidence(plain)
    }

    /// See `Kcp::latest_echo`.
    pub(crate) fn latest_echo(&self) -> u32 {
        self.conn.kcp().latest_echo()
    }

    /// Ends the session from outside (its peer replaced it).
    pub(crate) fn replaced(&mut self) {
        if self.ended.is_none() {
            self.end(SessionEnd::Replaced);
        }
    }

    /// The next datagram to send, if any. Datagrams handed out are forgotten once
    /// none is left, or at [`Session::clear_transmits`].
    pub fn next_transmit(&mut self) -> Option<&[u8]> {
        let i = self.taken;
        if self.conn.transmit(i).is_none() {
            self.clear_transmits();
            return None;
        }
        self.taken += 1;
        self.conn.transmit(i)
    }

    /// The size of the datagram [`Session::next_transmit`] would return.
    pub fn peek_transmit_len(&mut self) -> Option<usize> {
        let i = self.taken;
        self.conn.transmit(i).map(<[u8]>::len)
    }

    /// Forgets every datagram waiting to be sent.
    pub fn clear_transmits(&mut self) {
        self.conn.clear_transmits();
        self.taken = 0;
    }

    /// The session's counters in kcp-go's SNMP terms.
    pub fn snmp(&self) -> Snmp {
        self.conn.snmp()
    }

    fn direction_ended(&mut self, now: u32, sid: u32) {
        let Some(s) = self.streams.get_mut(&sid) else { return };
        if s.finished && s.eof {
            self.forget(sid, StreamEnd::Finished);
        } else if self.close_wait_ms > 0 && s.close_by.is_none() {
            s.close_by = Some(now.wrapping_add(self.close_wait_ms));
            self.closing += 1;
        }
    }

    fn forget(&mut self, sid: u32, why: StreamEnd) {
        if let Some(s) = self.streams.remove(&sid) {
            self.closing -= usize::from(s.close_by.is_some());
            self.events.push_back(StreamEvent::Closed(sid, why));
        }
    }

    fn end(&mut self, why: SessionEnd) {
        self.ended = Some(why);
        for sid in self.streams.keys() {
            self.events.push_back(StreamEvent::Closed(*sid, StreamEnd::SessionEnded));
        }
        self.streams.clear();
        self.closing = 0;
    }
}

impl StreamState {
    fn new(id: u32, now: u32) -> StreamState {
        StreamState {
            finished: false,
            eof: false,
            close_by: None,
            info: StreamSnapshot { id, opened_at: now, bytes_read: 0, bytes_written: 0 },
        }
    }
}

/// The layers below the facade, for benchmarks, fuzz targets and tests that forge
/// or inspect datagrams.
#[cfg(feature = "layers")]
impl Session {
    /// The datagram pipeline.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// kcptun's stream layers; `None` for plain KCP.
    pub fn stack(&self) -> Option<&StreamStack> {
        match &self.stack {
            Layers::Streams(s) => Some(s),
            Layers::Messages(_) => None,
        }
    }
}
