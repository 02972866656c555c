//! KCP ARQ, wire-compatible with kcp-go.
//!
//! [`Kcp`] is a sans-IO state machine: the caller owns the clock (`now`, in wrapping
//! `u32` milliseconds) and the socket. The verbs, and when to call them:
//!
//! * [`Kcp::send`] queues application bytes; call [`Kcp::flush`] afterwards to put
//!   them on the wire at once (kcp-go's behaviour with write-delay off).
//! * [`Kcp::input`] takes one received datagram (the KCP part of it). It may flush
//!   by itself (ACK clocking, fast retransmit), exactly as kcp-go does.
//! * [`Kcp::poll_timeout`] says when to call [`Kcp::handle_timeout`] next, or `None`
//!   when the connection is idle: an idle connection needs no timer at all.
//! * [`Kcp::transmits`] holds the datagrams produced by the calls above; send them
//!   and [`TransmitQueue::clear`] it.
//! * [`Kcp::read`] (byte stream) or [`Kcp::recv`] (one message) hands received data
//!   to the application.

mod flush;
mod recv_window;
mod rtt;
pub mod segment;

use std::collections::VecDeque;

use crate::transmit::TransmitQueue;
use flush::FlushKind;
use recv_window::RecvWindow;
pub use segment::{is_reset, Command, Header, SegmentError, Segments, CMD_RESET, HEADER_LEN};

/// Minimum RTO with nodelay (ms).
pub const RTO_NODELAY_MIN: u32 = 30;
/// Minimum RTO without nodelay (ms).
pub const RTO_MIN: u32 = 100;
/// Initial RTO (ms).
pub const RTO_DEFAULT: u32 = 200;
/// RTO cap (ms).
pub const RTO_MAX: u32 = 60_000;
/// Flushes whose `ts` an ACK may echo as evidence after its segment was
/// acknowledged.
const RECENT_TS: usize = 32;

/// Transmissions of one segment after which the link counts as dead.
pub const DEAD_LINK: u32 = 20;
/// Zero-window probe back-off cap (ms).
pub const PROBE_LIMIT: u32 = 120_000;

const THRESH_INIT: u32 = 2;
const THRESH_MIN: u32 = 2;
const ASK_SEND: u8 = 1;
const ASK_TELL: u8 = 2;
/// `fastack` value that bars further fast/early retransmission until the next RTO.
const FASTACK_DONE: u32 = u32::MAX;

/// Wrapping signed difference of two sequence numbers or timestamps.
#[inline]
pub fn diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

/// The earlier of two wrapping timestamps.
#[inline]
pub fn earliest(a: u32, b: u32) -> u32 {
    if diff(a, b) <= 0 {
        a
    } else {
        b
    }
}

/// Which kcp-go generation to behave like where the two differ on the wire (docs/protocol.md §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compat {
    /// kcp-go v5.6.72 (what the latest kcptun links).
    #[default]
    Latest,
    /// kcp-go v5.6.1 (Debian's kcptun 20210922): 7 s first probe, repeatable fast
    /// retransmit, fewer input-triggered flushes, ACK-only flushes send only ACKs.
    KcpGo561,
}

impl Compat {
    fn probe_init(self) -> u32 {
        match self {
            Compat::Latest => 500,
            Compat::KcpGo561 => 7000,
        }
    }
}

/// kcptun's `-mode` presets (docs/protocol.md §2.3): (nodelay, interval, resend, nc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// kcptun `-mode normal`.
    Normal,
    /// kcptun `-mode fast`.
    Fast,
    /// kcptun `-mode fast2`.
    Fast2,
    /// kcptun `-mode fast3`.
    Fast3,
}

impl Mode {
    /// Every preset.
    pub const ALL: [Mode; 4] = [Mode::Normal, Mode::Fast, Mode::Fast2, Mode::Fast3];

    /// The preset for a kcptun mode name; other names mean "manual".
    pub fn from_name(name: &str) -> Option<Mode> {
        match name {
            "normal" => Some(Mode::Normal),
            "fast" => Some(Mode::Fast),
            "fast2" => Some(Mode::Fast2),
            "fast3" => Some(Mode::Fast3),
            _ => None,
        }
    }

    /// kcptun's name of the preset.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Fast => "fast",
            Mode::Fast2 => "fast2",
            Mode::Fast3 => "fast3",
        }
    }

    /// (nodelay, interval ms, fast resend, no congestion window).
    pub fn params(self) -> (bool, u32, u32, bool) {
        match self {
            Mode::Normal => (false, 40, 2, true),
            Mode::Fast => (false, 30, 2, true),
            Mode::Fast2 => (true, 20, 2, true),
            Mode::Fast3 => (true, 10, 2, true),
        }
    }

    /// The preset `cfg` runs with, if its four numbers are one's (else kcptun's
    /// "manual").
    pub fn of_config(cfg: &Config) -> Option<Mode> {
        let params = (cfg.nodelay, cfg.interval, cfg.fast_resend, cfg.no_cwnd);
        Mode::ALL.into_iter().find(|m| m.params() == params)
    }

    /// Writes the preset into `cfg`.
    pub fn apply(self, cfg: &mut Config) {
        let (nodelay, interval, resend, nc) = self.params();
        cfg.nodelay = nodelay;
        cfg.interval = interval;
        cfg.fast_resend = resend;
        cfg.no_cwnd = nc;
    }
}

/// Connection parameters. [`Default`] gives kcp-go's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Largest KCP datagram, headers of lower layers excluded (kcp-go's KCP `mtu`).
    pub mtu: usize,
    /// Free bytes left in front of every outgoing datagram for lower-layer headers.
    pub header_room: usize,
    /// Free bytes left after every outgoing datagram (for an AEAD tag).
    pub tail_room: usize,
    /// Send window, in segments.
    pub snd_wnd: u32,
    /// Receive window, in segments.
    pub rcv_wnd: u32,
    /// Nodelay mode: 30 ms minimum RTO and gentler RTO back-off.
    pub nodelay: bool,
    /// Flush interval in ms, clamped to 10..=5000.
    pub interval: u32,
    /// Fast-retransmit threshold in ACKs; 0 disables fast retransmit.
    pub fast_resend: u32,
    /// Ignore the congestion window (kcptun's `nc = 1`).
    pub no_cwnd: bool,
    /// Stream mode: small sends merge into the last queued segment.
    pub stream: bool,
    /// Flush ACKs right after every input that produced some.
    pub ack_nodelay: bool,
    /// kcp-go generation to match.
    pub compat: Compat,
}

impl Config {
    /// Sizes KCP for a session MTU: the lower layers add `header_room` bytes in front
    /// of every KCP datagram (FEC and crypto headers) and `tail_room` bytes after it
    /// (an AEAD tag), and the whole must fit `session_mtu` (docs/protocol.md §2.4).
    pub fn fit_session_mtu(mut self, session_mtu: usize, header_room: usize, tail_room: usize) -> Config {
        self.mtu = session_mtu.saturating_sub(header_room + tail_room);
        self.header_room = header_room;
        self.tail_room = tail_room;
        self
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            mtu: 1400,
            header_room: 0,
            tail_room: 0,
            snd_wnd: 32,
            rcv_wnd: 32,
            nodelay: false,
            interval: 100,
            fast_resend: 0,
            no_cwnd: false,
            stream: false,
            ack_nodelay: false,
            compat: Compat::Latest,
        }
    }
}

/// Errors of [`Kcp::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// Nothing to send (kcp-go: -1).
    Empty,
    /// More than 255 fragments would be needed (kcp-go: -2).
    TooLarge,
}

/// Errors of [`Kcp::recv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecvError {
    /// No complete message is available (kcp-go: -1).
    WouldBlock,
    /// The buffer is shorter than the next message (kcp-go: -2).
    BufferTooSmall,
}

/// Errors of [`Kcp::set_mtu`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MtuError {
    /// No room for a segment header and at least one payload byte.
    TooSmall,
    /// Data is queued or in flight, segmented for the current MTU.
    Busy,
}

impl core::fmt::Display for SendError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SendError::Empty => "nothing to send",
            SendError::TooLarge => "message needs more than 255 fragments: send less at once, or use stream mode",
        })
    }
}

impl std::error::Error for SendError {}

impl core::fmt::Display for RecvError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            RecvError::WouldBlock => "no complete message yet",
            RecvError::BufferTooSmall => "buffer shorter than the next message: peek its size first",
        })
    }
}

impl std::error::Error for RecvError {}

impl core::fmt::Display for MtuError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            MtuError::TooSmall => "MTU leaves no room for a KCP header and one byte of data",
            MtuError::Busy => "MTU cannot change while data is queued or in flight",
        })
    }
}

impl std::error::Error for MtuError {}

/// Per-connection counters, named after kcp-go's SNMP fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KcpStats {
    /// Segments parsed from input (FEC-recovered datagrams included).
    pub in_segs: u64,
    /// Segment headers written (all commands, retransmissions included).
    pub out_segs: u64,
    /// Network PUSH segments that were duplicate, already delivered or out of window.
    pub repeat_segs: u64,
    /// fast + early + lost.
    pub retrans_segs: u64,
    /// Segments resent after `resend` duplicate ACKs.
    pub fast_retrans_segs: u64,
    /// Segments resent early, before their timer, when nothing else was in flight.
    pub early_retrans_segs: u64,
    /// Timeout retransmissions.
    pub lost_segs: u64,
    /// Datagrams that [`Kcp::input`] rejected (kcp-go's `KCPInErrors`).
    pub in_errors: u64,
    /// Segments whose `una` claimed data we never sent; the field was ignored.
    pub forged_una: u64,
}

/// See `Kcp::state`. Times in ms, windows and queues in segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KcpState {
    /// Oldest unacknowledged sequence number.
    pub snd_una: u32,
    /// Next sequence number to send.
    pub snd_nxt: u32,
    /// Next sequence number expected.
    pub rcv_nxt: u32,
    /// Smoothed round-trip time, ms.
    pub srtt: i32,
    /// Round-trip time variation, ms.
    pub rttvar: i32,
    /// Retransmission timeout, ms.
    pub rto: u32,
    /// Lower bound of the timeout, ms.
    pub min_rto: u32,
    /// Congestion window, segments.
    pub cwnd: u32,
    /// Slow-start threshold, segments.
    pub ssthresh: u32,
    /// The peer's last advertised free window.
    pub rmt_wnd: u32,
    /// Send window, segments.
    pub snd_wnd: u32,
    /// Receive window, segments.
    pub rcv_wnd: u32,
    /// Segments waiting to be sent.
    pub snd_queue: usize,
    /// Segments sent and not yet acknowledged.
    pub snd_buf: usize,
    /// Segments received in order, not yet read.
    pub rcv_queue: usize,
    /// Segments received out of order.
    pub rcv_buf: usize,
    /// Current zero-window probe delay; 0 while the peer's window is open.
    pub probe_wait: u32,
    /// A segment was resent so often that the link looks dead.
    pub dead: bool,
}

#[derive(Debug, Default)]
struct Segment {
    sn: u32,
    frg: u8,
    /// When it was last sent, and first sent (this side's clock, without the
    /// `ts` base): an ACK echoing either proves the peer received it.
    ts: u32,
    first_ts: u32,
    xmit: u32,
    rto: u32,
    resendts: u32,
    fastack: u32,
    acked: bool,
    data: Vec<u8>,
}

/// One KCP connection. See the module docs for how to drive it.
#[derive(Debug)]
pub struct Kcp {
    conv: u32,
    cfg: Config,
    mss: usize,
    rx_minrto: u32,
    dead: bool,
    /// Bytes of data segments the flushes may still emit (`None`: no limit). A rate
    /// limiter above sets it; segments it holds back keep their state and go out at
    /// a later flush, so their timers start when they are really sent.
    send_budget: Option<usize>,
    /// Added to every `ts` this side writes in a data segment, and taken from every
    /// `ts` an ACK echoes. The peer only echoes `ts`, so a random base makes the
    /// echo something only a receiver of the segment can know.
    ts_base: u32,
    /// The `ts` (this side's clock) of the last flushes that sent data, so an ACK
    /// of a segment already acknowledged (a peer that moved, acknowledging again
    /// what it last received) is still evidence.
    recent_ts: [u32; RECENT_TS],
    recent_at: usize,
    /// The newest `ts` an ACK echoed as evidence (see [`Kcp::evidence`]).
    latest_echo: u32,
    /// Acknowledge the latest segment received again while nothing comes back
    /// (see [`Kcp::set_reacknowledge`]), and that segment: (sn, ts).
    reack: bool,
    last_push: Option<(u32, u32)>,
    /// When a datagram last came in.
    last_input: u32,

    snd_una: u32,
    snd_nxt: u32,
    rcv_nxt: u32,
    ssthresh: u32,
    cwnd: u32,
    incr: u32,
    rmt_wnd: u32,
    rx_srtt: i32,
    rx_rttvar: i32,
    rx_rto: u32,
    probe: u8,
    ts_probe: u32,
    probe_wait: u32,

    snd_queue: VecDeque<Segment>,
    snd_buf: VecDeque<Segment>,
    rcv_buf: RecvWindow<Segment>,
    rcv_queue: VecDeque<Segment>,
    acklist: Vec<(u32, u32)>,
    /// A message handed to `read` that did not fit: its segments and the read offset.
    partial: VecDeque<Segment>,
    partial_offset: usize,
    /// Payload buffers of retired segments, for reuse.
    pool: Vec<Vec<u8>>,

    transmits: TransmitQueue,
    /// Most recent `now` seen by any call.
    current: u32,
    /// When the flush timer fires next (meaningful only while not idle).
    ts_flush: u32,
    timer_idle: bool,
    stats: KcpStats,
}

impl Kcp {
    /// A connection with conversation id `conv`.
    pub fn new(conv: u32, mut cfg: Config) -> Kcp {
        cfg.interval = cfg.interval.clamp(10, 5000);
        cfg.snd_wnd = cfg.snd_wnd.max(1);
        cfg.rcv_wnd = cfg.rcv_wnd.max(1);
        let min_mtu = if cfg.compat == Compat::KcpGo561 { 50 } else { HEADER_LEN + 1 };
        cfg.mtu = cfg.mtu.max(min_mtu);
        let stride = cfg.header_room + cfg.mtu + cfg.tail_room;
        Kcp {
            conv,
            mss: cfg.mtu - HEADER_LEN,
            rx_minrto: if cfg.nodelay { RTO_NODELAY_MIN } else { RTO_MIN },
            dead: false,
            send_budget: None,
            ts_base: 0,
            recent_ts: [0; RECENT_TS],
            recent_at: 0,
            latest_echo: 0,
            reack: false,
            last_push: None,
            last_input: 0,
            snd_una: 0,
            snd_nxt: 0,
            rcv_nxt: 0,
            ssthresh: THRESH_INIT,
            cwnd: 0,
            incr: 0,
            rmt_wnd: 32,
            rx_srtt: 0,
            rx_rttvar: 0,
            rx_rto: RTO_DEFAULT,
            probe: 0,
            ts_probe: 0,
            probe_wait: 0,
            snd_queue: VecDeque::new(),
            snd_buf: VecDeque::new(),
            rcv_buf: RecvWindow::new(),
            rcv_queue: VecDeque::new(),
            acklist: Vec::new(),
            partial: VecDeque::new(),
            partial_offset: 0,
            pool: Vec::new(),
            transmits: TransmitQueue::new(stride),
            current: 0,
            ts_flush: 0,
            timer_idle: true,
            stats: KcpStats::default(),
            cfg,
        }
    }

    /// The conversation id.
    pub fn conv(&self) -> u32 {
        self.conv
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Largest payload of one segment.
    pub fn mss(&self) -> usize {
        self.mss
    }

    /// What the connection counted.
    pub fn stats(&self) -> &KcpStats {
        &self.stats
    }

    /// kcp-go `NoDelay`: each argument is applied only if it is `Some`.
    pub fn set_nodelay(&mut self, nodelay: Option<bool>, interval: Option<u32>, resend: Option<u32>, nc: Option<bool>) {
        if let Some(nodelay) = nodelay {
            self.cfg.nodelay = nodelay;
            self.rx_minrto = if nodelay { RTO_NODELAY_MIN } else { RTO_MIN };
        }
        if let Some(interval) = interval {
            self.cfg.interval = interval.clamp(10, 5000);
        }
        if let Some(resend) = resend {
            self.cfg.fast_resend = resend;
        }
        if let Some(nc) = nc {
            self.cfg.no_cwnd = nc;
        }
    }

    /// kcp-go `WndSize`: a zero argument leaves that window unchanged.
    pub fn set_window(&mut self, snd_wnd: u32, rcv_wnd: u32) {
        if snd_wnd > 0 {
            self.cfg.snd_wnd = snd_wnd;
        }
        if rcv_wnd > 0 {
            self.cfg.rcv_wnd = rcv_wnd;
        }
    }

    /// kcp-go `SetMtu` at the KCP level: the largest KCP datagram.
    pub fn set_mtu(&mut self, mtu: usize) -> Result<(), MtuError> {
        let too_small = match self.cfg.compat {
            Compat::Latest => mtu <= HEADER_LEN,
            Compat::KcpGo561 => mtu < 50,
        };
        if too_small {
            return Err(MtuError::TooSmall);
        }
        if self.wait_snd() > 0 {
            return Err(MtuError::Busy);
        }
        self.cfg.mtu = mtu;
        self.mss = mtu - HEADER_LEN;
        self.transmits.set_stride(self.cfg.header_room + mtu + self.cfg.tail_room);
        Ok(())
    }

    /// Sends every ACK at once instead of with the next flush.
    pub fn set_ack_nodelay(&mut self, on: bool) {
        self.cfg.ack_nodelay = on;
    }

    /// Stream mode: sends join segments instead of keeping message bounds.
    pub fn set_stream(&mut self, on: bool) {
        self.cfg.stream = on;
    }

    /// Segments queued or in flight (kcp-go `WaitSnd`); writers wait while this is
    /// at least the send window.
    pub fn wait_snd(&self) -> usize {
        self.snd_buf.len() + self.snd_queue.len()
    }

    /// A snapshot of the ARQ state, for diagnostics and the control plane.
    pub fn state(&self) -> KcpState {
        KcpState {
            snd_una: self.snd_una,
            snd_nxt: self.snd_nxt,
            rcv_nxt: self.rcv_nxt,
            srtt: self.rx_srtt,
            rttvar: self.rx_rttvar,
            rto: self.rx_rto,
            min_rto: self.rx_minrto,
            cwnd: self.cwnd,
            ssthresh: self.ssthresh,
            rmt_wnd: self.rmt_wnd,
            snd_wnd: self.cfg.snd_wnd,
            rcv_wnd: self.cfg.rcv_wnd,
            snd_queue: self.snd_queue.len(),
            snd_buf: self.snd_buf.len(),
            rcv_queue: self.rcv_queue.len(),
            rcv_buf: self.rcv_buf.len(),
            probe_wait: self.probe_wait,
            dead: self.dead,
        }
    }

    /// True once a segment was transmitted [`DEAD_LINK`] times. Like kcp-go, the
    /// connection keeps retransmitting; liveness is the upper layer's business.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Limits the bytes (headers included) of PUSH segments that flushes emit from
    /// now on, until set again; `None` lifts the limit. ACKs and window probes are
    /// not limited. Each flush takes what it emits from the budget.
    pub fn set_send_budget(&mut self, bytes: Option<usize>) {
        self.send_budget = bytes;
    }

    /// Sets the base added to the `ts` of every data segment sent from now on (see
    /// [`Kcp::echoes`]); 0, kcp-go's, writes this side's clock as it is. Set it
    /// before the first segment is sent.
    pub fn set_ts_base(&mut self, base: u32) {
        self.ts_base = base;
        self.latest_echo = self.current;
    }

    /// The newest `ts` (this side's clock) that an ACK in the KCP segments `data`
    /// (a datagram's KCP part, not yet input) echoes exactly as this side sent it:
    /// a segment in flight's first or last send, or one of the last flushes that
    /// sent data. With a random [`Kcp::set_ts_base`] nobody who did not receive
    /// those segments can forge one, so it is evidence that the datagram's sender
    /// is the peer that did; without a base there is no evidence. Changes nothing.
    pub fn evidence(&self, data: &[u8]) -> Option<u32> {
        if self.ts_base == 0 {
            return None;
        }
        let echoes = Segments::new(data).map_while(Result::ok).filter_map(|(h, _)| {
            let ts = h.ts.wrapping_sub(self.ts_base);
            let is_ack = h.conv == self.conv && h.command() == Some(Command::Ack);
            (is_ack && (self.echoes_segment_in_flight(h.sn, ts) || self.recent_ts.contains(&ts))).then_some(ts)
        });
        echoes.reduce(|a, b| if diff(a, b) >= 0 { a } else { b })
    }

    /// Whether a flush that sends data, while nothing has come in for an RTO,
    /// acknowledges the newest segment received once more. A peer that moved
    /// (a NAT that rebound its port) hears nothing from this side, so it has
    /// nothing new to acknowledge; this ACK is the evidence a kcpgate server
    /// with address changes needs to follow it. kcp-go ignores a repeated ACK
    /// but for its RTT, sampled only while the path is silent anyway. Off by
    /// default; kcpgate's clients turn it on.
    pub fn set_reacknowledge(&mut self, reack: bool) {
        self.reack = reack;
    }

    /// The newest `ts` an input ACK echoed as evidence (see [`Kcp::evidence`]).
    pub fn latest_echo(&self) -> u32 {
        self.latest_echo
    }

    /// Datagrams waiting to be sent. Each starts with `header_room` free bytes.
    pub fn transmits(&mut self) -> &mut TransmitQueue {
        &mut self.transmits
    }

    // ----------------------------------------------------------------- sending

    fn new_segment(&mut self) -> Segment {
        let mut data = self.pool.pop().unwrap_or_default();
        data.clear();
        Segment { data, ..Segment::default() }
    }

    fn retire(&mut self, seg: Segment) {
        self.recycle(seg.data);
    }

    /// Keeps a payload buffer for reuse. The pool never needs more buffers than the
    /// windows can hold at once (send window, plus receive queue and receive buffer).
    /// A quiet connection keeps a small pool; once traffic outgrows it, its whole
    /// capacity is reserved in one step, so it never grows again mid-transfer.
    fn recycle(&mut self, buf: Vec<u8>) {
        const SMALL_POOL: usize = 32;
        if buf.capacity() == 0 {
            return;
        }
        let limit = (self.cfg.snd_wnd as usize).saturating_add(2 * self.cfg.rcv_wnd as usize);
        if self.pool.len() >= limit {
            return;
        }
        if self.pool.len() == self.pool.capacity() {
            let want = if self.pool.len() < SMALL_POOL { SMALL_POOL.min(limit) } else { limit };
            self.pool.reserve_exact(want - self.pool.len());
        }
        self.pool.push(buf);
    }

    /// Queues `data` for sending (kcp-go `Send`).
    pub fn send(&mut self, mut data: &[u8]) -> Result<(), SendError> {
        if data.is_empty() {
            return Err(SendError::Empty);
        }
        let mss = self.mss;
        if self.cfg.stream {
            if let Some(last) = self.snd_queue.back_mut() {
                if last.data.len() < mss {
                    let n = (mss - last.data.len()).min(data.len());
                    // A segment appended to fills up to mss while writes back up: make
                    // room for all of it once (a pooled buffer may be shorter).
                    last.data.reserve_exact(mss - last.data.len());
                    last.data.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if data.is_empty() {
                        return Ok(());
                    }
                }
            }
        }
        let count = data.len().div_ceil(mss);
        if count > 255 {
            return Err(SendError::TooLarge);
        }
        for (i, chunk) in data.chunks(mss).enumerate() {
            let mut seg = self.new_segment();
            seg.data.extend_from_slice(chunk);
            seg.frg = if self.cfg.stream { 0 } else { (count - 1 - i) as u8 };
            self.snd_queue.push_back(seg);
        }
        Ok(())
    }

    // --------------------------------------------------------------- receiving

    /// Size of the next complete message, if any (kcp-go `PeekSize`).
    pub fn peek_size(&self) -> Option<usize> {
        let head = self.rcv_queue.front()?;
        if head.frg == 0 {
            return Some(head.data.len());
        }
        if self.rcv_queue.len() < usize::from(head.frg) + 1 {
            return None;
        }
        let mut size = 0;
        for seg in &self.rcv_queue {
            size += seg.data.len();
            if seg.frg == 0 {
                break;
            }
        }
        Some(size)
    }

    /// Moves the next message out of `rcv_queue` segment by segment, then refills the
    /// queue from `rcv_buf` and asks for a window report if that reopened a full window.
    fn take_message(&mut self, mut each: impl FnMut(&mut Self, Segment)) {
        let was_full = self.rcv_queue.len() >= self.cfg.rcv_wnd as usize;
        while let Some(seg) = self.rcv_queue.pop_front() {
            let last = seg.frg == 0;
            each(self, seg);
            if last {
                break;
            }
        }
        self.move_ready();
        if was_full && self.rcv_queue.len() < self.cfg.rcv_wnd as usize {
            self.probe |= ASK_TELL;
        }
    }

    /// Receives one whole message into `buf` (kcp-go `Recv`).
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<usize, RecvError> {
        let size = self.peek_size().ok_or(RecvError::WouldBlock)?;
        if size > buf.len() {
            return Err(RecvError::BufferTooSmall);
        }
        let mut n = 0;
        self.take_message(|kcp, seg| {
            buf[n..n + seg.data.len()].copy_from_slice(&seg.data);
            n += seg.data.len();
            kcp.retire(seg);
        });
        Ok(n)
    }

    /// Reads received bytes as a stream (kcp-go session `Read`): the rest of a message
    /// that did not fit a previous call comes first. Returns 0 when nothing is ready.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        self.read_with(buf.len(), |bytes| {
            buf[n..n + bytes.len()].copy_from_slice(bytes);
            n += bytes.len();
        });
        n
    }

    /// [`Kcp::read`] without a buffer to copy into: hands up to `limit` bytes to
    /// `each` where they lie, a slice per segment. Returns how many it handed over.
    pub fn read_with(&mut self, limit: usize, mut each: impl FnMut(&[u8])) -> usize {
        if self.partial.is_empty() {
            match self.peek_size() {
                None => return 0,
                Some(size) if size <= limit => {
                    self.take_message(|kcp, seg| {
                        each(&seg.data);
                        kcp.retire(seg);
                    });
                    return size;
                }
                Some(_) => {
                    let mut partial = core::mem::take(&mut self.partial);
                    self.take_message(|_, seg| partial.push_back(seg));
                    self.partial = partial;
                    self.partial_offset = 0;
                }
            }
        }
        let mut n = 0;
        while n < limit {
            let Some(head) = self.partial.front() else { break };
            let avail = &head.data[self.partial_offset..];
            let take = avail.len().min(limit - n);
            each(&avail[..take]);
            n += take;
            self.partial_offset += take;
            if self.partial_offset == head.data.len() {
                let seg = self.partial.pop_front().expect("head exists");
                self.retire(seg);
                self.partial_offset = 0;
            }
        }
        n
    }

    /// Bytes ready for [`Kcp::read`] without waiting.
    pub fn readable(&self) -> bool {
        !self.partial.is_empty() || self.peek_size().is_some()
    }

    fn move_ready(&mut self) {
        while self.rcv_queue.len() < self.cfg.rcv_wnd as usize {
            match self.rcv_buf.take(self.rcv_nxt) {
                Some(seg) => {
                    self.rcv_queue.push_back(seg);
                    self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
                }
                None => break,
            }
        }
    }

    fn wnd_unused(&self) -> u16 {
        let free = (self.cfg.rcv_wnd as usize).saturating_sub(self.rcv_queue.len());
        free.min(usize::from(u16::MAX)) as u16
    }

    // ------------------------------------------------------------------- input

    /// Processes one received datagram (the KCP part). `regular` is false for
    /// datagrams rebuilt by FEC: those never update the RTT or the peer window.
    ///
    /// On error, segments before the bad one keep their effect and the datagram is
    /// counted in [`KcpStats::in_errors`].
    pub fn input(&mut self, now: u32, data: &[u8], regular: bool) -> Result<(), SegmentError> {
        self.current = now;
        self.last_input = now;
        let result = self.input_segments(data, regular);
        if result.is_err() {
            self.stats.in_errors += 1;
        }
        self.resume_timer();
        result
    }

    fn input_segments(&mut self, data: &[u8], regular: bool) -> Result<(), SegmentError> {
        let prev_una = self.snd_una;
        if data.len() < HEADER_LEN {
            return Err(SegmentError::TooShort);
        }
        let mut latest_ack_ts: Option<u32> = None;
        let mut want_full_flush = false;
        for item in Segments::new(data) {
            let (h, payload) = item?;
            if h.conv != self.conv {
                return Err(SegmentError::ConvMismatch);
            }
            let cmd = h.command().ok_or(SegmentError::UnknownCommand)?;
            if regular {
                self.rmt_wnd = u32::from(h.wnd);
            }
            if cmd == Command::Ack && self.ts_base != 0 {
                let ts = h.ts.wrapping_sub(self.ts_base);
                let echoed = self.echoes_segment_in_flight(h.sn, ts) || self.recent_ts.contains(&ts);
                if echoed && diff(ts, self.latest_echo) > 0 {
                    self.latest_echo = ts;
                }
            }
            if self.parse_una(h.una) > 0 {
                want_full_flush = true;
            }
            self.shrink_buf();
            match cmd {
                Command::Ack => {
                    let ts = h.ts.wrapping_sub(self.ts_base);
                    // Only an ACK of a segment still unacknowledged when the datagram
                    // came in measures a round trip. kcp-go samples every ACK, and a
                    // segment that FEC recovers after its retransmission was acknowledged
                    // is acknowledged again with its first send time: one such sample
                    // lifted the RTO from 52 to 379 ms on a 43 ms path.
                    let in_flight = diff(h.sn, prev_una) >= 0
                        && diff(h.sn, self.snd_nxt) < 0
                        && self.snd_buf_index(h.sn).is_none_or(|i| !self.snd_buf[i].acked);
                    self.parse_ack(h.sn);
                    if self.parse_fastack(h.sn, ts) && self.cfg.compat == Compat::Latest {
                        want_full_flush = true;
                    }
                    if in_flight {
                        latest_ack_ts = Some(ts);
                    }
                }
                Command::Push => {
                    let fresh = self.parse_push(&h, payload);
                    if regular && !fresh {
                        self.stats.repeat_segs += 1;
                    }
                }
                Command::WindowAsk => self.probe |= ASK_TELL,
                Command::WindowTell => {}
            }
            self.stats.in_segs += 1;
        }

        if let Some(ts) = latest_ack_ts {
            // One sample per datagram, from its last ACK of a segment in flight. An echo
            // older than the RTO cap can only be forged or corrupt; it must not poison
            // the estimator.
            let rtt = diff(self.current, ts);
            if regular && rtt >= 0 && rtt as u32 <= RTO_MAX {
                self.update_rtt(rtt);
            }
        }

        if !self.cfg.no_cwnd && diff(self.snd_una, prev_una) > 0 && self.cwnd < self.rmt_wnd {
            self.grow_cwnd();
        }

        let ack_clocking = self.cfg.compat == Compat::Latest && self.acklist.len() >= self.cfg.mtu / HEADER_LEN;
        if want_full_flush {
            self.flush_kind(self.current, FlushKind::Full);
        } else if ack_clocking || (self.cfg.ack_nodelay && !self.acklist.is_empty()) {
            self.flush_kind(self.current, FlushKind::AckOnly);
        }
        Ok(())
    }

    /// Stores a PUSH; true if it was new data.
    fn parse_push(&mut self, h: &Header, payload: &[u8]) -> bool {
        if diff(h.sn, self.rcv_nxt.wrapping_add(self.cfg.rcv_wnd)) >= 0 {
            return false;
        }
        self.acklist.push((h.sn, h.ts));
        // The newest by `ts`: what the peer sent last, retransmissions included.
        if self.last_push.is_none_or(|(_, ts)| diff(h.ts, ts) >= 0) {
            self.last_push = Some((h.sn, h.ts));
        }
        if diff(h.sn, self.rcv_nxt) < 0 || self.rcv_buf.contains(h.sn) {
            return false;
        }
        let mut seg = self.new_segment();
        seg.sn = h.sn;
        seg.frg = h.frg;
        seg.data.extend_from_slice(payload);
        self.rcv_buf.insert(self.rcv_nxt, h.sn, seg);
        self.move_ready();
        true
    }

    fn parse_una(&mut self, una: u32) -> usize {
        if diff(una, self.snd_nxt) > 0 {
            self.stats.forged_una += 1;
            return 0;
        }
        let mut dropped = 0;
        while let Some(front) = self.snd_buf.front() {
            if diff(front.sn, una) >= 0 {
                break;
            }
            let seg = self.snd_buf.pop_front().expect("front exists");
            self.retire(seg);
            dropped += 1;
        }
        dropped
    }

    fn shrink_buf(&mut self) {
        self.snd_una = self.snd_buf.front().map_or(self.snd_nxt, |s| s.sn);
    }

    /// snd_buf holds consecutive sequence numbers starting at `snd_una`.
    fn snd_buf_index(&self, sn: u32) -> Option<usize> {
        if diff(sn, self.snd_una) < 0 || diff(sn, self.snd_nxt) >= 0 {
            return None;
        }
        Some(sn.wrapping_sub(self.snd_una) as usize)
    }

    /// Whether an ACK of `sn` echoing `ts` (this side's clock) names a segment in
    /// flight exactly as it was first or last sent.
    fn echoes_segment_in_flight(&self, sn: u32, ts: u32) -> bool {
        self.snd_buf_index(sn).is_some_and(|i| {
            let seg = &self.snd_buf[i];
            !seg.acked && seg.xmit > 0 && (seg.ts == ts || seg.first_ts == ts)
        })
    }

    fn parse_ack(&mut self, sn: u32) {
        let Some(i) = self.snd_buf_index(sn) else { return };
        let seg = &mut self.snd_buf[i];
        if !seg.acked {
            seg.acked = true;
            let data = core::mem::take(&mut seg.data);
            self.recycle(data);
        }
    }

    /// Counts the ACK against every segment sent before the acknowledged one; true if
    /// one of them reached the fast-retransmit threshold.
    fn parse_fastack(&mut self, sn: u32, ts: u32) -> bool {
        let Some(last) = self.snd_buf_index(sn) else { return false };
        let guard = self.cfg.compat == Compat::Latest;
        let threshold = self.cfg.fast_resend;
        let mut reached = false;
        for seg in self.snd_buf.iter_mut().take(last) {
            if diff(seg.ts, ts) > 0 || (guard && seg.fastack == FASTACK_DONE) {
                continue;
            }
            seg.fastack = seg.fastack.wrapping_add(1);
            if seg.fastack >= threshold {
                reached = true;
            }
        }
        reached
    }

    // ------------------------------------------------------------------- flush

    /// A FULL flush (kcp-go `flush(false)`): ACKs, probes, new segments and due
    /// retransmissions go into [`Kcp::transmits`]. Returns the delay in ms until
    /// the next flush is useful.
    pub fn flush(&mut self, now: u32) -> u32 {
        self.current = now;
        self.resume_timer();
        self.flush_kind(now, FlushKind::Full)
    }

    /// When [`Kcp::handle_timeout`] wants to run next, or `None` while the
    /// connection has nothing to time (no data in flight or queued, no pending
    /// ACK or window probe). After work appeared through a call that has no clock
    /// ([`Kcp::send`] without a flush, or a read that reopened a full window) the
    /// deadline may lie in the past: `handle_timeout` then puts the timer back on
    /// its interval grid and the work goes out at the next tick, as in kcp-go.
    pub fn poll_timeout(&self) -> Option<u32> {
        if self.is_idle() {
            None
        } else {
            Some(self.ts_flush)
        }
    }

    /// Runs the flush timer if it is due at `now` (kcp-go's per-session update).
    pub fn handle_timeout(&mut self, now: u32) {
        self.current = now;
        if self.is_idle() {
            self.timer_idle = true;
            return;
        }
        self.resume_timer();
        if diff(now, self.ts_flush) < 0 {
            return;
        }
        let delay = self.flush_kind(now, FlushKind::Full);
        self.ts_flush = now.wrapping_add(delay);
    }

    fn is_idle(&self) -> bool {
        self.snd_buf.is_empty()
            && self.snd_queue.is_empty()
            && self.acklist.is_empty()
            && self.probe == 0
            && self.rmt_wnd != 0
    }

    /// Restarts the flush timer after an idle period, on kcp-go's interval grid: the
    /// first tick falls where a free-running timer would have ticked.
    fn resume_timer(&mut self) {
        if !self.timer_idle || self.is_idle() {
            return;
        }
        self.timer_idle = false;
        let interval = self.cfg.interval;
        let elapsed = self.current.wrapping_sub(self.ts_flush);
        self.ts_flush = self.current.wrapping_add(interval - elapsed % interval);
    }
}
