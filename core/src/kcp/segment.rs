//! The KCP segment header: 24 bytes, little-endian, followed by `len` payload bytes.

/// Size of a segment header on the wire (`IKCP_OVERHEAD`).
pub const HEADER_LEN: usize = 24;

/// A kcpgate extension: a segment header with this command (and nothing else set)
/// tells a peer that the sender has no session of that conversation (it restarted,
/// or closed it), so the peer can start a new one at once instead of waiting for
/// its keep-alive to give up. kcp-go counts it as an input error and ignores it.
pub const CMD_RESET: u8 = 90;

/// Whether `kcp` (a datagram's KCP part) is a reset of conversation `conv`: one
/// header, that command, every other field zero. Anything else with the command is
/// an ordinary bad segment.
pub fn is_reset(kcp: &[u8], conv: u32) -> bool {
    kcp.len() == HEADER_LEN && kcp[..4] == conv.to_le_bytes() && kcp[4] == CMD_RESET && kcp[5..].iter().all(|&b| b == 0)
}

/// Segment commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Command {
    /// Data.
    Push = 81,
    /// Acknowledgement of one PUSH.
    Ack = 82,
    /// Window probe: "tell me your window".
    WindowAsk = 83,
    /// Window report, the answer to a probe.
    WindowTell = 84,
}

impl Command {
    /// The command for a wire value, or `None` for anything else.
    pub fn from_wire(value: u8) -> Option<Command> {
        match value {
            81 => Some(Command::Push),
            82 => Some(Command::Ack),
            83 => Some(Command::WindowAsk),
            84 => Some(Command::WindowTell),
            _ => None,
        }
    }
}

/// A decoded segment header. `cmd` is kept raw so that a header with an unknown
/// command can still be parsed, reported and re-encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Conversation id.
    pub conv: u32,
    /// Command (PUSH, ACK, WASK, WINS).
    pub cmd: u8,
    /// Fragments that follow in this message.
    pub frg: u8,
    /// Sender's free receive window.
    pub wnd: u16,
    /// Sender's timestamp, ms.
    pub ts: u32,
    /// Sequence number.
    pub sn: u32,
    /// Sender's oldest unacknowledged sequence number.
    pub una: u32,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// Reads a header from the first 24 bytes of `buf`; `None` if `buf` is shorter.
    pub fn decode(buf: &[u8]) -> Option<Header> {
        let b: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(Header {
            conv: u32_at(0),
            cmd: b[4],
            frg: b[5],
            wnd: u16::from_le_bytes([b[6], b[7]]),
            ts: u32_at(8),
            sn: u32_at(12),
            una: u32_at(16),
            len: u32_at(20),
        })
    }

    /// Writes the header into the first 24 bytes of `out`.
    ///
    /// # Panics
    /// If `out` is shorter than [`HEADER_LEN`]; callers size their buffers first.
    pub fn encode(&self, out: &mut [u8]) {
        let out = &mut out[..HEADER_LEN];
        out[0..4].copy_from_slice(&self.conv.to_le_bytes());
        out[4] = self.cmd;
        out[5] = self.frg;
        out[6..8].copy_from_slice(&self.wnd.to_le_bytes());
        out[8..12].copy_from_slice(&self.ts.to_le_bytes());
        out[12..16].copy_from_slice(&self.sn.to_le_bytes());
        out[16..20].copy_from_slice(&self.una.to_le_bytes());
        out[20..24].copy_from_slice(&self.len.to_le_bytes());
    }

    /// The command, if the wire value is a known one.
    pub fn command(&self) -> Option<Command> {
        Command::from_wire(self.cmd)
    }
}

/// Why a datagram (or the rest of it) could not be parsed as KCP segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SegmentError {
    /// Fewer than 24 bytes where a header should start (kcp-go: -1).
    TooShort,
    /// The segment belongs to another conversation (kcp-go: -1).
    ConvMismatch,
    /// `len` is larger than the bytes left in the datagram (kcp-go: -2).
    Truncated,
    /// The command byte is not PUSH/ACK/WASK/WINS (kcp-go: -3).
    UnknownCommand,
}

impl core::fmt::Display for SegmentError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SegmentError::TooShort => "datagram shorter than a KCP header",
            SegmentError::ConvMismatch => "segment belongs to another conversation",
            SegmentError::Truncated => "segment length exceeds the datagram",
            SegmentError::UnknownCommand => "unknown KCP command",
        })
    }
}

impl std::error::Error for SegmentError {}

/// Iterates over the segments of one datagram, in order, without copying.
///
/// Parsing stops after the first error, which is yielded once. Trailing bytes
/// shorter than a header are ignored, as kcp-go does.
pub struct Segments<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Segments<'a> {
    /// The segments of one datagram.
    pub fn new(datagram: &'a [u8]) -> Segments<'a> {
        Segments { rest: datagram, failed: false }
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = Result<(Header, &'a [u8]), SegmentError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let header = Header::decode(self.rest)?;
        let body = &self.rest[HEADER_LEN..];
        if (body.len() as u64) < u64::from(header.len) {
            self.failed = true;
            return Some(Err(SegmentError::Truncated));
        }
        let (payload, rest) = body.split_at(header.len as usize);
        self.rest = rest;
        Some(Ok((header, payload)))
    }
}
