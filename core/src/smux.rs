//! smux v1 and v2, the stream multiplexer kcptun runs over each KCP session
//! (docs/protocol.md §5), as a sans-IO state machine.
//!
//! Bytes from the transport go into [`Mux::handle_input`], which stops early —
//! leaving the rest for later — while the receive budget is spent: that is how
//! back-pressure reaches KCP. Frames to send come out of [`Mux::poll_transmit`]
//! one at a time (kcptun's compression layer flushes each as its own chunk).
//! Streams are addressed by id; [`Mux::poll_event`] says which became readable
//! or writable, [`Mux::accept`] which the peer opened.

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};

use crate::kcp::diff;

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 8;
/// The largest control frame: a v2 window update (header and 8 bytes).
const CONTROL_FRAME: usize = HEADER_LEN + 8;
/// Opens a stream.
pub const CMD_SYN: u8 = 0;
/// Ends a stream's direction.
pub const CMD_FIN: u8 = 1;
/// Carries stream data.
pub const CMD_PSH: u8 = 2;
/// Keep-alive.
pub const CMD_NOP: u8 = 3;
/// v2 window update.
pub const CMD_UPD: u8 = 4;
/// A v2 sender's window before the first UPD.
pub const INITIAL_PEER_WINDOW: u32 = 262_144;
/// Streams the peer may open before the application accepts them.
pub const ACCEPT_BACKLOG: usize = 1024;

/// Which smux version a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// smux v1: no flow control per stream.
    V1,
    /// smux v2: per-stream windows (UPD frames).
    V2,
    /// Server side: take the version of the peer's first frame, so one server serves
    /// v1 (Debian's kcptun) and v2 clients alike.
    Detect,
}

/// Mux settings; [`MuxConfig::kcptun`] gives kcptun's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxConfig {
    /// v1, v2, or (server) take the client's.
    pub version: Version,
    /// NOP every this many ms; 0 turns keep-alive (and its timeout) off.
    pub keepalive_interval_ms: u32,
    /// Close the session if no frame arrived for this long (checked every period).
    pub keepalive_timeout_ms: u32,
    /// Largest frame payload, bytes.
    pub max_frame_size: usize,
    /// Mux receive budget: bytes buffered for the application over all streams.
    pub max_receive_buffer: usize,
    /// v2 per-stream window announced to the peer.
    pub max_stream_buffer: usize,
}

impl MuxConfig {
    /// kcptun's settings: v2, keep-alive 10 s / 30 s, 8 KiB frames, 4 MiB session
    /// buffer, 2 MiB stream window.
    pub fn kcptun() -> MuxConfig {
        MuxConfig {
            version: Version::V2,
            keepalive_interval_ms: 10_000,
            keepalive_timeout_ms: 30_000,
            max_frame_size: 8192,
            max_receive_buffer: 4 << 20,
            max_stream_buffer: 2 << 20,
        }
    }

    /// smux's own validation (kcptun refuses to start on failure).
    pub fn validate(&self) -> Result<(), crate::error::SettingsError> {
        use crate::error::SettingsError;
        if self.keepalive_interval_ms > 0 && self.keepalive_timeout_ms < self.keepalive_interval_ms {
            return Err(SettingsError::KeepAliveTimeoutBelowInterval);
        }
        if !(1..=65535).contains(&self.max_frame_size) {
            return Err(SettingsError::MaxFrameSize(self.max_frame_size));
        }
        if !(1..=i32::MAX as usize).contains(&self.max_receive_buffer) {
            return Err(SettingsError::MaxReceiveBuffer(self.max_receive_buffer));
        }
        if self.max_stream_buffer == 0 || self.max_stream_buffer > self.max_receive_buffer {
            return Err(SettingsError::MaxStreamBuffer(self.max_stream_buffer));
        }
        Ok(())
    }
}

/// Which side of the tunnel: of the session, of its smux layer, and of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Dials the server and opens streams (odd ids); `kcpgate client` carries TCP
    /// connections to a server this way.
    Client,
    /// Accepts sessions and streams (and opens even ids); `kcpgate server` dials the
    /// target once per stream.
    Server,
}

impl Role {
    /// The side's name, as the subcommand and the logs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

/// Why a session ended. Protocol errors come from the peer's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SmuxError {
    /// A frame with another version than the session's (or not 1/2 at all).
    InvalidVersion(u8),
    /// A command byte smux does not know.
    InvalidCommand(u8),
    /// SYN/FIN/NOP with a payload, or UPD without exactly 8 bytes.
    InvalidLength {
        /// The command.
        cmd: u8,
        /// The length it carried.
        len: u16,
    },
    /// UPD in a v1 session.
    UpdInV1,
    /// No frame for a whole keep-alive timeout.
    KeepAliveTimeout,
    /// Stream ids are used up.
    GoAway,
    /// Closed by the application.
    Closed,
}

impl core::fmt::Display for SmuxError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SmuxError::InvalidVersion(v) => {
                write!(f, "smux frame of version {v} does not match the session (check -smuxver on both ends)")
            }
            SmuxError::InvalidCommand(c) => write!(f, "unknown smux command {c}"),
            SmuxError::InvalidLength { cmd, len } => write!(f, "smux command {cmd} with invalid length {len}"),
            SmuxError::UpdInV1 => f.write_str("smux window update in a v1 session"),
            SmuxError::KeepAliveTimeout => f.write_str(
                "smux keep-alive timeout: the peer went silent (usual causes: -key, -crypt or -smuxver differ between the ends, or the peer is unreachable)",
            ),
            SmuxError::GoAway => f.write_str("smux stream ids exhausted"),
            SmuxError::Closed => f.write_str("smux session closed"),
        }
    }
}

impl std::error::Error for SmuxError {}

/// Errors of stream operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// No stream has this id (never opened, or gone).
    NoSuchStream,
    /// The stream's write side was closed.
    WriteClosed,
    /// v2: the peer claims to have consumed more than was sent.
    Consumed,
    /// The session is dead.
    Mux(SmuxError),
}

impl core::fmt::Display for StreamError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StreamError::NoSuchStream => f.write_str("no such stream (never opened, or already closed)"),
            StreamError::WriteClosed => f.write_str("the stream's write side is closed"),
            StreamError::Consumed => f.write_str("smux v2: the peer claims to have read more than was sent"),
            StreamError::Mux(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StreamError {}

/// Result of `Mux::stream_read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// This many bytes were read.
    Data(usize),
    /// The peer closed its side and everything was read.
    Eof,
    /// Nothing to read yet.
    WouldBlock,
}

/// Something the application may want to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MuxEvent {
    /// Data or end-of-stream can be read.
    Readable(u32),
    /// A write that was refused may now succeed.
    Writable(u32),
}

#[derive(Debug, Default)]
struct MuxStream {
    buf: VecDeque<u8>,
    fin_received: bool,
    write_closed: bool,
    num_written: u32,
    peer_consumed: u32,
    peer_window: u32,
    num_read: u32,
    incr: u32,
    /// Payload bytes queued for sending and not yet taken by `poll_transmit`.
    queued: usize,
    readable_flagged: bool,
    writable_flagged: bool,
}

/// Frames waiting to be sent for one sid. It lives as long as its stream (and
/// until a closed stream's last frame is out), so a busy stream reuses its queues
/// instead of allocating them again each time they run empty.
#[derive(Debug, Default)]
struct SidQueue {
    control: VecDeque<Vec<u8>>,
    data: VecDeque<Vec<u8>>,
    /// In `ready`.
    scheduled: bool,
}

#[derive(Debug)]
enum Rx {
    Header { buf: [u8; HEADER_LEN], have: usize },
    Payload { sid: u32, left: usize },
    Upd { sid: u32, buf: [u8; 8], have: usize },
}

/// One smux session over one transport stream.
#[derive(Debug)]
pub struct Mux {
    cfg: MuxConfig,
    role: Role,
    version: Option<u8>,
    streams: HashMap<u32, MuxStream>,
    next_id: u32,
    rx: Rx,
    budget: i64,
    accept_queue: VecDeque<u32>,
    events: VecDeque<MuxEvent>,
    queues: HashMap<u32, SidQueue>,
    /// Sids with frames waiting, in turn order: one frame each per turn.
    ready: VecDeque<u32>,
    /// Buffers of sent frames, for reuse: data frames' and the small control
    /// frames' apart, so that a keep-alive's buffer never has to grow for data.
    data_frames: Vec<Vec<u8>>,
    control_frames: Vec<Vec<u8>>,
    frame_seen: bool,
    /// When a check last found that frames had arrived (or the session started).
    last_heard: u32,
    next_ping: u32,
    /// A keep-alive came from the peer since [`Mux::answer_keepalive`] last ran.
    pinged: bool,
    next_check: u32,
    dead: Option<SmuxError>,
}

impl Mux {
    /// A session in `role` started at `now` (ms). `cfg` should be validated.
    pub fn new(role: Role, cfg: MuxConfig, now: u32) -> Mux {
        let version = match cfg.version {
            Version::V1 => Some(1),
            Version::V2 => Some(2),
            Version::Detect => None,
        };
        Mux {
            budget: cfg.max_receive_buffer as i64,
            next_ping: now.wrapping_add(ping_interval(role, cfg.keepalive_interval_ms)),
            pinged: false,
            next_check: now.wrapping_add(cfg.keepalive_interval_ms),
            last_heard: now,
            cfg,
            role,
            version,
            streams: HashMap::new(),
            next_id: match role {
                Role::Client => 1,
                Role::Server => 0,
            },
            rx: Rx::Header { buf: [0; HEADER_LEN], have: 0 },
            accept_queue: VecDeque::new(),
            events: VecDeque::new(),
            queues: HashMap::new(),
            ready: VecDeque::new(),
            data_frames: Vec::new(),
            control_frames: Vec::new(),
            frame_seen: false,
            dead: None,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &MuxConfig {
        &self.cfg
    }

    /// The negotiated version (`None` while a detecting server has seen no frame).
    pub fn version(&self) -> Option<u8> {
        self.version
    }

    /// Why the session ended, if it did.
    pub fn error(&self) -> Option<SmuxError> {
        self.dead
    }

    /// Whether the session still works.
    pub fn is_alive(&self) -> bool {
        self.dead.is_none()
    }

    /// Ends the session locally; nothing is sent (smux sends nothing either).
    pub fn close(&mut self) {
        self.dead.get_or_insert(SmuxError::Closed);
        self.streams.clear();
        self.queues.clear();
        self.ready.clear();
    }

    /// Open streams.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// The ids of open streams.
    pub fn stream_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.streams.keys().copied()
    }

    /// Bytes still available in the session receive budget.
    pub fn receive_budget(&self) -> i64 {
        self.budget
    }

    /// Whether `handle_input` would take more bytes now.
    pub fn wants_input(&self) -> bool {
        self.dead.is_none()
            && match self.rx {
                Rx::Header { have: 0, .. } => self.budget > 0 && self.accept_queue.len() < ACCEPT_BACKLOG,
                _ => true,
            }
    }

    fn fail(&mut self, e: SmuxError) -> SmuxError {
        self.close();
        self.dead = Some(e);
        e
    }

    fn flag_readable(events: &mut VecDeque<MuxEvent>, sid: u32, s: &mut MuxStream) {
        if !s.readable_flagged {
            s.readable_flagged = true;
            events.push_back(MuxEvent::Readable(sid));
        }
    }

    fn flag_writable(events: &mut VecDeque<MuxEvent>, sid: u32, s: &mut MuxStream) {
        if !s.writable_flagged {
            s.writable_flagged = true;
            events.push_back(MuxEvent::Writable(sid));
        }
    }

    /// Takes bytes from the transport. Returns how many were consumed; the rest must
    /// be offered again later (after the application read, which refills the
    /// budget). A protocol error ends the session.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<usize, SmuxError> {
        if let Some(e) = self.dead {
            return Err(e);
        }
        let mut at = 0;
        while at < data.len() {
            match &mut self.rx {
                Rx::Header { buf, have } => {
                    if *have == 0 && (self.budget <= 0 || self.accept_queue.len() >= ACCEPT_BACKLOG) {
                        break;
                    }
                    let take = (HEADER_LEN - *have).min(data.len() - at);
                    buf[*have..*have + take].copy_from_slice(&data[at..at + take]);
                    *have += take;
                    at += take;
                    if *have == HEADER_LEN {
                        let header = *buf;
                        self.rx = Rx::Header { buf: [0; HEADER_LEN], have: 0 };
                        self.frame(header).map_err(|e| self.fail(e))?;
                    }
                }
                Rx::Payload { sid, left } => {
                    let sid = *sid;
                    let take = (*left).min(data.len() - at);
                    *left -= take;
                    let done = *left == 0;
                    if let Some(s) = self.streams.get_mut(&sid) {
                        s.buf.extend(&data[at..at + take]);
                        self.budget -= take as i64;
                        Self::flag_readable(&mut self.events, sid, s);
                    }
                    at += take;
                    if done {
                        self.rx = Rx::Header { buf: [0; HEADER_LEN], have: 0 };
                    }
                }
                Rx::Upd { sid, buf, have } => {
                    let take = (8 - *have).min(data.len() - at);
                    buf[*have..*have + take].copy_from_slice(&data[at..at + take]);
                    *have += take;
                    at += take;
                    if *have == 8 {
                        let (sid, b) = (*sid, *buf);
                        self.rx = Rx::Header { buf: [0; HEADER_LEN], have: 0 };
                        if let Some(s) = self.streams.get_mut(&sid) {
                            s.peer_consumed = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
                            s.peer_window = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
                            Self::flag_writable(&mut self.events, sid, s);
                        }
                    }
                }
            }
        }
        Ok(at)
    }

    /// Acts on one frame header.
    fn frame(&mut self, h: [u8; HEADER_LEN]) -> Result<(), SmuxError> {
        let (ver, cmd) = (h[0], h[1]);
        let len = u16::from_le_bytes([h[2], h[3]]);
        let sid = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        match self.version {
            Some(v) if v == ver => {}
            None if ver == 1 || ver == 2 => self.version = Some(ver),
            _ => return Err(SmuxError::InvalidVersion(ver)),
        }
        self.frame_seen = true;
        let no_payload = |cmd| if len == 0 { Ok(()) } else { Err(SmuxError::InvalidLength { cmd, len }) };
        match cmd {
            CMD_NOP => {
                no_payload(cmd)?;
                self.pinged = true;
            }
            CMD_SYN => {
                no_payload(cmd)?;
                if let std::collections::hash_map::Entry::Vacant(e) = self.streams.entry(sid) {
                    e.insert(MuxStream { peer_window: INITIAL_PEER_WINDOW, ..MuxStream::default() });
                    self.accept_queue.push_back(sid);
                }
            }
            CMD_FIN => {
                no_payload(cmd)?;
                if let Some(s) = self.streams.get_mut(&sid) {
                    s.fin_received = true;
                    Self::flag_readable(&mut self.events, sid, s);
                }
            }
            CMD_PSH => {
                if len > 0 {
                    self.rx = Rx::Payload { sid, left: usize::from(len) };
                }
            }
            CMD_UPD => {
                if ver == 1 {
                    return Err(SmuxError::UpdInV1);
                }
                if len != 8 {
                    return Err(SmuxError::InvalidLength { cmd, len });
                }
                self.rx = Rx::Upd { sid, buf: [0; 8], have: 0 };
            }
            _ => return Err(SmuxError::InvalidCommand(cmd)),
        }
        Ok(())
    }

    /// The next stream the peer opened, oldest first.
    pub fn accept(&mut self) -> Option<u32> {
        self.accept_queue.pop_front()
    }

    /// The next event, if any. Each stream has at most one of each kind pending.
    pub fn poll_event(&mut self) -> Option<MuxEvent> {
        let e = self.events.pop_front()?;
        match e {
            MuxEvent::Readable(sid) => {
                if let Some(s) = self.streams.get_mut(&sid) {
                    s.readable_flagged = false;
                }
            }
            MuxEvent::Writable(sid) => {
                if let Some(s) = self.streams.get_mut(&sid) {
                    s.writable_flagged = false;
                }
            }
        }
        Some(e)
    }

    fn queue_frame(&mut self, cmd: u8, sid: u32, payload: &[u8]) {
        let ver = self.version.unwrap_or(1);
        let len = HEADER_LEN + payload.len();
        let pool = if len > CONTROL_FRAME { &mut self.data_frames } else { &mut self.control_frames };
        let mut f = pool.pop().unwrap_or_else(|| Vec::with_capacity(len.max(CONTROL_FRAME)));
        f.clear();
        f.extend_from_slice(&[ver, cmd]);
        f.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        f.extend_from_slice(&sid.to_le_bytes());
        f.extend_from_slice(payload);
        let q = self.queues.entry(sid).or_default();
        if matches!(cmd, CMD_PSH | CMD_FIN) {
            q.data.push_back(f);
        } else {
            q.control.push_back(f);
        }
        if !q.scheduled {
            q.scheduled = true;
            self.ready.push_back(sid);
        }
    }

    /// Forgets a stream, and its send queue once nothing is left in it.
    fn remove_stream(&mut self, sid: u32) -> Option<MuxStream> {
        let stream = self.streams.remove(&sid);
        self.drop_idle_queue(sid);
        stream
    }

    /// Drops the send queue of a sid that has no stream and nothing to send. The
    /// session's own sid 0 (keep-alives) keeps its queue.
    fn drop_idle_queue(&mut self, sid: u32) {
        if sid != 0 && !self.streams.contains_key(&sid) && self.queues.get(&sid).is_some_and(|q| !q.scheduled) {
            self.queues.remove(&sid);
        }
    }

    /// Opens a stream (sends SYN; data may follow at once).
    pub fn open_stream(&mut self) -> Result<u32, SmuxError> {
        if let Some(e) = self.dead {
            return Err(e);
        }
        if self.next_id > u32::MAX - 2 {
            return Err(SmuxError::GoAway);
        }
        self.next_id += 2;
        let sid = self.next_id;
        self.streams.insert(sid, MuxStream { peer_window: INITIAL_PEER_WINDOW, ..MuxStream::default() });
        self.queue_frame(CMD_SYN, sid, &[]);
        Ok(sid)
    }

    /// Unsent bytes a stream may have queued; more waits (bounded memory per stream).
    fn send_queue_limit(&self) -> usize {
        2 * self.cfg.max_frame_size
    }

    /// How many bytes [`Mux::stream_write`] would take now.
    pub fn stream_write_capacity(&self, sid: u32) -> Result<usize, StreamError> {
        if let Some(e) = self.dead {
            return Err(StreamError::Mux(e));
        }
        let s = self.streams.get(&sid).ok_or(StreamError::NoSuchStream)?;
        if s.write_closed {
            return Err(StreamError::WriteClosed);
        }
        let mut n = self.send_queue_limit().saturating_sub(s.queued);
        if self.version == Some(2) {
            let inflight = s.num_written.wrapping_sub(s.peer_consumed) as i32;
            if inflight < 0 {
                return Err(StreamError::Consumed);
            }
            let window = i64::from(s.peer_window) - i64::from(inflight);
            n = n.min(window.max(0) as usize);
        }
        Ok(n)
    }

    /// Writes as much of `data` as flow control allows, as PSH frames of at most
    /// `max_frame_size`; returns the bytes taken (0: wait for [`MuxEvent::Writable`]).
    pub fn stream_write(&mut self, sid: u32, data: &[u8]) -> Result<usize, StreamError> {
        let n = self.stream_write_capacity(sid)?.min(data.len());
        for piece in data[..n].chunks(self.cfg.max_frame_size) {
            self.queue_frame(CMD_PSH, sid, piece);
        }
        let s = self.streams.get_mut(&sid).expect("checked by capacity");
        s.num_written = s.num_written.wrapping_add(n as u32);
        s.queued += n;
        Ok(n)
    }

    /// Reads from a stream. In v2 the first read, and every half window read after,
    /// sends the peer a window update.
    pub fn stream_read(&mut self, sid: u32, buf: &mut [u8]) -> Result<Read, StreamError> {
        if let Some(e) = self.dead {
            return Err(StreamError::Mux(e));
        }
        let s = self.streams.get_mut(&sid).ok_or(StreamError::NoSuchStream)?;
        let n = s.buf.len().min(buf.len());
        if n == 0 {
            if s.fin_received && s.buf.is_empty() {
                if s.write_closed {
                    self.remove_stream(sid);
                }
                return Ok(Read::Eof);
            }
            return Ok(Read::WouldBlock);
        }
        let (a, b) = s.buf.as_slices();
        let from_a = n.min(a.len());
        buf[..from_a].copy_from_slice(&a[..from_a]);
        buf[from_a..n].copy_from_slice(&b[..n - from_a]);
        s.buf.drain(..n);
        self.budget += n as i64;
        if self.version == Some(2) {
            s.num_read = s.num_read.wrapping_add(n as u32);
            s.incr = s.incr.wrapping_add(n as u32);
            if s.incr as usize >= self.cfg.max_stream_buffer / 2 || s.num_read as usize == n {
                s.incr = 0;
                let mut upd = [0u8; 8];
                upd[..4].copy_from_slice(&s.num_read.to_le_bytes());
                upd[4..].copy_from_slice(&(self.cfg.max_stream_buffer as u32).to_le_bytes());
                self.queue_frame(CMD_UPD, sid, &upd);
            }
        }
        Ok(Read::Data(n))
    }

    /// Bytes buffered for reading on a stream.
    pub fn stream_readable(&self, sid: u32) -> usize {
        self.streams.get(&sid).map_or(0, |s| s.buf.len())
    }

    /// Closes a stream: one FIN after its queued data; unread data is discarded and
    /// the stream forgotten (later frames for it are ignored).
    pub fn stream_close(&mut self, sid: u32) -> Result<(), StreamError> {
        let s = self.remove_stream(sid).ok_or(StreamError::NoSuchStream)?;
        self.budget += s.buf.len() as i64;
        if !s.write_closed && self.dead.is_none() {
            self.queue_frame(CMD_FIN, sid, &[]);
        }
        Ok(())
    }

    /// Half-closes a stream: FIN after its queued data; reading goes on until the
    /// peer's FIN.
    pub fn stream_close_write(&mut self, sid: u32) -> Result<(), StreamError> {
        let s = self.streams.get_mut(&sid).ok_or(StreamError::NoSuchStream)?;
        if s.write_closed {
            return Ok(());
        }
        s.write_closed = true;
        let done = s.fin_received && s.buf.is_empty();
        if done {
            self.remove_stream(sid);
        }
        if self.dead.is_none() {
            self.queue_frame(CMD_FIN, sid, &[]);
        }
        Ok(())
    }

    /// Appends the next frame to send to `out`; false when there is none. Streams
    /// take turns; within a stream SYN and UPD go before data and FIN.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> bool {
        let Some(sid) = self.ready.pop_front() else { return false };
        let q = self.queues.get_mut(&sid).expect("a ready sid has a queue");
        let frame = q.control.pop_front().or_else(|| q.data.pop_front()).expect("a ready queue has a frame");
        if q.control.is_empty() && q.data.is_empty() {
            q.scheduled = false;
            self.drop_idle_queue(sid);
        } else {
            self.ready.push_back(sid);
        }
        if frame[1] == CMD_PSH {
            let payload = frame.len() - HEADER_LEN;
            let limit = self.send_queue_limit();
            if let Some(s) = self.streams.get_mut(&sid) {
                s.queued -= payload;
                if s.queued + payload >= limit {
                    Self::flag_writable(&mut self.events, sid, s);
                }
            }
        }
        out.extend_from_slice(&frame);
        if frame.capacity() > CONTROL_FRAME {
            self.data_frames.push(frame);
        } else {
            self.control_frames.push(frame);
        }
        true
    }

    /// Whether frames are waiting for [`Mux::poll_transmit`].
    pub fn has_transmit(&self) -> bool {
        !self.ready.is_empty()
    }

    /// When [`Mux::handle_timeout`] wants to run (keep-alive), if ever.
    pub fn poll_timeout(&self) -> Option<u32> {
        if self.cfg.keepalive_interval_ms == 0 || self.dead.is_some() {
            return None;
        }
        Some(if diff(self.next_ping, self.next_check) < 0 { self.next_ping } else { self.next_check })
    }

    /// Sends keep-alive NOPs and closes the session once the peer has been silent
    /// (no frame at all) for a whole keep-alive timeout while our receive budget had
    /// room. smux checks every timeout period, which notices a dead peer 30–60 s
    /// late; checking every interval notices it 30–40 s after it went silent, and
    /// sends nothing different on the wire.
    pub fn handle_timeout(&mut self, now: u32) {
        if self.cfg.keepalive_interval_ms == 0 || self.dead.is_some() {
            return;
        }
        if diff(now, self.next_ping) >= 0 {
            // A detecting server knows no version yet, and the peer has said nothing.
            if self.version.is_some() {
                self.queue_frame(CMD_NOP, 0, &[]);
            }
            self.next_ping = now.wrapping_add(ping_interval(self.role, self.cfg.keepalive_interval_ms));
        }
        if diff(now, self.next_check) >= 0 {
            if self.frame_seen || self.budget <= 0 {
                self.last_heard = now;
            } else if now.wrapping_sub(self.last_heard) >= self.cfg.keepalive_timeout_ms {
                self.fail(SmuxError::KeepAliveTimeout);
                return;
            }
            self.frame_seen = false;
            self.next_check = now.wrapping_add(self.cfg.keepalive_interval_ms);
        }
    }

    /// Queues a NOP now, outside the keep-alive schedule; false while a detecting
    /// server knows no version yet (a NOP of the wrong version would end the
    /// peer's session). No smux reads a NOP, so it is the frame to send when only
    /// the KCP segment carrying it matters.
    pub fn ping(&mut self) -> bool {
        if self.version.is_none() || self.dead.is_some() {
            return false;
        }
        self.queue_frame(CMD_NOP, 0, &[]);
        true
    }

    /// Answers the peer's keep-alive with ours when ours is due within half an
    /// interval anyway. Ours then leaves with the ACK for the peer's, in one
    /// datagram: three datagrams per interval instead of four. Ours only ever goes
    /// earlier, so the peer hears from us at least as often as before.
    ///
    /// Having just heard the peer, this is also the liveness check, so the session's
    /// next timer is a single one, a whole interval away: a server whose clients keep
    /// alive never wakes for an idle session at all (a server pings an eighth of an
    /// interval later than its client).
    pub fn answer_keepalive(&mut self, now: u32) {
        let pinged = std::mem::take(&mut self.pinged);
        let interval = self.cfg.keepalive_interval_ms;
        if !pinged || interval == 0 || self.dead.is_some() || self.version.is_none() {
            return;
        }
        if i64::from(diff(self.next_ping, now)) <= i64::from(interval / 2) {
            self.queue_frame(CMD_NOP, 0, &[]);
            self.next_ping = now.wrapping_add(ping_interval(self.role, interval));
            self.last_heard = now;
            self.frame_seen = false;
            self.next_check = self.next_ping;
        }
    }

    /// The role this session plays.
    pub fn role(&self) -> Role {
        self.role
    }
}

/// How long after our last keep-alive the next one is due. A server waits an eighth
/// of an interval longer than its client, so the client's keep-alive comes first
/// and the server answers it in step (one datagram from the server per interval,
/// not two); a server whose client fell silent still sends every 1.125 intervals,
/// well inside the peer's 30 s timeout.
fn ping_interval(role: Role, interval_ms: u32) -> u32 {
    match role {
        Role::Server => interval_ms.saturating_add(interval_ms / 8),
        Role::Client => interval_ms,
    }
}
