//! kcptun's stream layers over one KCP session: snappy framing (unless `-nocomp`),
//! smux, and QPP on each stream's payload (with `-QPP`), as a sans-IO stack.
//!
//! The stack does not own its [`Connection`] (a listener does, on the server); it is
//! handed the connection in [`StreamStack::pump`], which moves bytes both ways as far
//! as the other side takes them: from KCP up into smux while smux's receive budget
//! lasts, and smux frames down into KCP while KCP's send window has room. Memory is
//! bounded on both paths.

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use crate::pipeline::Connection;
use crate::qpp::{Qpp, QppPrng};
use crate::smux::{self, MuxEvent, Mux, Read, Role, SmuxError, StreamError};
use crate::snappy::{FrameDecoder, FrameEncoder, SnappyError};

/// Bytes taken from KCP per step: small enough that what one read decodes to stays
/// bounded (a few 64 KiB snappy blocks).
const READ_CHUNK: usize = 8192;

/// QPP as a process shares it: the pads and the initial PRNG state of every stream.
#[derive(Clone)]
pub struct QppSetup {
    /// The pads, shared by every stream.
    pub pads: Arc<Qpp>,
    /// The initial PRNG state of every stream.
    pub initial: QppPrng,
}

impl core::fmt::Debug for QppSetup {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("QppSetup").field("pads", &self.pads.num_pads()).finish()
    }
}

impl QppSetup {
    /// From kcptun's raw `-key` and `-QPPCount`.
    pub fn new(key: &[u8], num_pads: u16, generation: crate::qpp::PadGeneration) -> QppSetup {
        QppSetup { pads: Arc::new(Qpp::new(key, num_pads, generation)), initial: QppPrng::new(key) }
    }
}

/// The layers above KCP, as kcptun configures them.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// snappy framing (kcptun's default; `-nocomp` turns it off).
    pub compression: bool,
    /// smux settings.
    pub smux: smux::MuxConfig,
    /// QPP on stream payloads, or none.
    pub qpp: Option<QppSetup>,
}

/// Why the stream layers of a session failed; the session is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StackError {
    /// The snappy framing failed.
    Snappy(SnappyError),
    /// smux failed.
    Smux(SmuxError),
    /// Plain KCP: a message longer than its framing carries.
    MessageTooLarge {
        /// The message's length.
        len: usize,
        /// The longest the framing carries ([`crate::messages::MAX_MESSAGE`]).
        max: usize,
    },
}

impl core::fmt::Display for StackError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StackError::Snappy(e) => write!(f, "{e}"),
            StackError::Smux(e) => write!(f, "{e}"),
            StackError::MessageTooLarge { len, max } => {
                write!(f, "a message of {len} bytes is longer than plain KCP carries ({max} at most)")
            }
        }
    }
}

impl std::error::Error for StackError {}

/// snappy + smux + QPP for one session. See the module docs.
#[derive(Debug)]
pub struct StreamStack {
    mux: Mux,
    encoder: Option<FrameEncoder>,
    decoder: Option<FrameDecoder>,
    qpp: Option<QppSetup>,
    /// Per stream: (PRNG for writing, PRNG for reading).
    prngs: HashMap<u32, (QppPrng, QppPrng)>,
    /// Decoded transport bytes smux has not taken yet.
    inbox: Vec<u8>,
    inbox_at: usize,
    /// Encoded frames KCP has not taken yet.
    outbox: Vec<u8>,
    outbox_at: usize,
    frame: Vec<u8>,
    scratch: Vec<u8>,
    error: Option<StackError>,
    /// A NOP is to be sent as soon as the smux version is known.
    ping_wanted: bool,
}

impl StreamStack {
    /// A stack in `role`, started at `now`.
    pub fn new(role: Role, cfg: StackConfig, now: u32) -> StreamStack {
        StreamStack {
            mux: Mux::new(role, cfg.smux, now),
            encoder: cfg.compression.then(FrameEncoder::new),
            decoder: cfg.compression.then(FrameDecoder::new),
            qpp: cfg.qpp,
            prngs: HashMap::new(),
            inbox: Vec::new(),
            inbox_at: 0,
            outbox: Vec::new(),
            outbox_at: 0,
            frame: Vec::new(),
            scratch: Vec::new(),
            error: None,
            ping_wanted: false,
        }
    }

    /// Sends an smux NOP as soon as it can (see `Mux::ping`): at once, or once a
    /// detecting server has seen the peer's first frame.
    pub fn ping_soon(&mut self) {
        self.ping_wanted = true;
    }

    /// The smux session, for inspection.
    pub fn mux(&self) -> &Mux {
        &self.mux
    }

    /// Bytes the stack holds: decoded input smux has not taken, encoded output KCP
    /// has not taken, and data buffered in streams for the application.
    pub fn buffered_bytes(&self) -> usize {
        let in_streams = (self.mux.config().max_receive_buffer as i64 - self.mux.receive_budget()).max(0) as usize;
        (self.inbox.len() - self.inbox_at) + (self.outbox.len() - self.outbox_at) + in_streams
    }

    /// Why the stack failed, if it did.
    pub fn error(&self) -> Option<StackError> {
        self.error
    }

    /// Moves bytes between `conn` and the stream layers, both ways, as far as each
    /// side takes them. Call after anything happened: a datagram, a timer, a stream
    /// read or write.
    pub fn pump(&mut self, now: u32, conn: &mut Connection) -> Result<(), StackError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let result = self.pump_in(conn).map(|()| {
            if self.ping_wanted && self.mux.ping() {
                self.ping_wanted = false;
            }
            self.mux.answer_keepalive(now);
            self.pump_out(now, conn)
        });
        if let Err(e) = result {
            self.error = Some(e);
            self.mux.close();
        }
        result
    }

    fn pump_in(&mut self, conn: &mut Connection) -> Result<(), StackError> {
        loop {
            if self.inbox_at < self.inbox.len() {
                let n = self.mux.handle_input(&self.inbox[self.inbox_at..]).map_err(StackError::Smux)?;
                self.inbox_at += n;
                if self.inbox_at < self.inbox.len() {
                    return Ok(()); // smux is full; KCP holds the rest back
                }
            }
            self.inbox.clear();
            self.inbox_at = 0;
            let (decoder, inbox) = (&mut self.decoder, &mut self.inbox);
            let mut decoded = Ok(());
            let n = conn.read_with(READ_CHUNK, |bytes| match decoder {
                Some(d) if decoded.is_ok() => decoded = d.decode(bytes, inbox),
                Some(_) => {}
                None => inbox.extend_from_slice(bytes),
            });
            decoded.map_err(StackError::Snappy)?;
            if n == 0 {
                return Ok(());
            }
        }
    }

    fn pump_out(&mut self, now: u32, conn: &mut Connection) {
        loop {
            if self.outbox_at < self.outbox.len() {
                self.outbox_at += conn.write(now, &self.outbox[self.outbox_at..]);
                if self.outbox_at < self.outbox.len() {
                    return; // KCP's window is full
                }
            }
            self.outbox.clear();
            self.outbox_at = 0;
            self.frame.clear();
            if !self.mux.poll_transmit(&mut self.frame) {
                return;
            }
            match &mut self.encoder {
                Some(e) => e.encode(&self.frame, &mut self.outbox),
                None => self.outbox.extend_from_slice(&self.frame),
            }
        }
    }

    /// When [`StreamStack::handle_timeout`] wants to run (smux keep-alive).
    pub fn poll_timeout(&self) -> Option<u32> {
        self.mux.poll_timeout()
    }

    /// Runs smux keep-alive; the caller pumps afterwards.
    pub fn handle_timeout(&mut self, now: u32) -> Result<(), StackError> {
        self.mux.handle_timeout(now);
        match self.mux.error() {
            Some(e) if self.error.is_none() => {
                self.error = Some(StackError::Smux(e));
                Err(StackError::Smux(e))
            }
            _ => Ok(()),
        }
    }

    fn add_prngs(&mut self, sid: u32) {
        if let Some(q) = &self.qpp {
            self.prngs.insert(sid, (q.initial.clone(), q.initial.clone()));
        }
    }

    /// Opens a stream (client side).
    pub fn open_stream(&mut self) -> Result<u32, SmuxError> {
        let sid = self.mux.open_stream()?;
        self.add_prngs(sid);
        Ok(sid)
    }

    /// A stream the peer opened.
    pub fn accept(&mut self) -> Option<u32> {
        let sid = self.mux.accept()?;
        self.add_prngs(sid);
        Some(sid)
    }

    /// The next stream event.
    pub fn poll_event(&mut self) -> Option<MuxEvent> {
        self.mux.poll_event()
    }

    /// Writes application bytes to a stream (QPP-encrypted if configured); returns
    /// how many were taken.
    pub fn stream_write(&mut self, sid: u32, data: &[u8]) -> Result<usize, StreamError> {
        let Some(q) = &self.qpp else { return self.mux.stream_write(sid, data) };
        let n = self.mux.stream_write_capacity(sid)?.min(data.len());
        let (wprng, _) = self.prngs.get_mut(&sid).ok_or(StreamError::NoSuchStream)?;
        self.scratch.clear();
        self.scratch.extend_from_slice(&data[..n]);
        q.pads.encrypt(wprng, &mut self.scratch);
        let written = self.mux.stream_write(sid, &self.scratch)?;
        debug_assert_eq!(written, n);
        Ok(written)
    }

    /// Reads application bytes from a stream (QPP-decrypted if configured).
    pub fn stream_read(&mut self, sid: u32, buf: &mut [u8]) -> Result<Read, StreamError> {
        let r = self.mux.stream_read(sid, buf)?;
        if let (Read::Data(n), Some(q)) = (r, &self.qpp) {
            let (_, rprng) = self.prngs.get_mut(&sid).ok_or(StreamError::NoSuchStream)?;
            q.pads.decrypt(rprng, &mut buf[..n]);
        }
        Ok(r)
    }

    /// Closes a stream both ways (FIN after its queued data).
    pub fn stream_close(&mut self, sid: u32) -> Result<(), StreamError> {
        self.prngs.remove(&sid);
        self.mux.stream_close(sid)
    }

    /// Half-close. kcptun closes QPP streams fully instead (QPP has no half-close);
    /// the caller decides.
    pub fn stream_close_write(&mut self, sid: u32) -> Result<(), StreamError> {
        self.mux.stream_close_write(sid)
    }
}
