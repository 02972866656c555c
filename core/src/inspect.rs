//! One datagram taken apart for people: the dashboard's packet inspector and the
//! browser module's codec. [`inspect`] opens a datagram with a session's crypto
//! and reports every layer it can read (the crypto verdict, the FEC header, each
//! KCP segment, and the snappy chunks and smux frames where a segment's payload
//! starts them); [`encode`] builds a datagram from such fields, for tests.
//!
//! Nothing here is on the data path. Every length is checked before it is read,
//! so any input gives a report, never a panic.

use std::ops::Range;

use crate::crypto::{OpenError, PacketCrypto};
use crate::fec;
use crate::kcp::segment::{Header, SegmentError, Segments, HEADER_LEN as KCP_HEADER_LEN};
use crate::smux;
use crate::snappy::{self, CHUNK_COMPRESSED, CHUNK_IDENTIFIER, CHUNK_UNCOMPRESSED};
use crate::wire::{Datagram, Runt};

/// What the crypto layer said about a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It decrypted and its checksum (or tag) held.
    Ok,
    /// It failed: see the error (a wrong key shows as [`OpenError::Checksum`]).
    Failed(OpenError),
}

/// The FEC header of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FecHeader {
    /// FEC sequence number.
    pub seqid: u32,
    /// The type field: [`fec::TYPE_DATA`], [`fec::TYPE_PARITY`] or [`fec::TYPE_OOB`].
    pub kind: u16,
    /// A data shard's size field (2 + the KCP datagram's length when honest).
    pub size_field: Option<u16>,
    /// Whether a data shard's size field agrees with its length.
    pub size_matches: bool,
    /// Bytes after the FEC header (a parity shard's parity bytes).
    pub payload_len: usize,
}

/// One smux frame header found in a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmuxFrame {
    /// Where the header starts in the bytes it was found in.
    pub offset: usize,
    /// Protocol version (1 or 2).
    pub version: u8,
    /// Command: SYN, FIN, PSH, NOP or UPD ([`smux::CMD_SYN`]…).
    pub cmd: u8,
    /// Payload length.
    pub length: u16,
    /// Stream id.
    pub sid: u32,
    /// Payload bytes present here (fewer than `length` when the frame continues
    /// in later segments).
    pub present: usize,
}

/// One snappy chunk found in a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnappyChunk {
    /// Where the chunk header starts in the segment's payload.
    pub offset: usize,
    /// Chunk type: 0x00 compressed, 0x01 uncompressed, 0xff stream identifier.
    pub kind: u8,
    /// The chunk's length field.
    pub length: usize,
    /// Whether the whole chunk is in this payload.
    pub complete: bool,
    /// For a whole data chunk: whether its masked CRC-32C matches.
    pub crc_ok: Option<bool>,
    /// For a whole data chunk that decodes: the smux frames its data starts.
    pub frames: Vec<SmuxFrame>,
}

/// What a PUSH segment's payload starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Payload {
    /// Nothing recognisable: the middle of a frame or a chunk, or application data.
    #[default]
    Opaque,
    /// smux frames (kcptun with `-nocomp`).
    Smux(Vec<SmuxFrame>),
    /// snappy chunks (kcptun's default compression).
    Snappy(Vec<SnappyChunk>),
}

/// One KCP segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentView {
    /// Where its header starts in the KCP datagram.
    pub offset: usize,
    /// The header fields.
    pub header: Header,
    /// Where its data is in the KCP datagram.
    pub data: Range<usize>,
    /// What the data starts.
    pub payload: Payload,
}

/// A datagram taken apart. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The datagram's length on the wire.
    pub len: usize,
    /// The crypto verdict; the fields below are empty unless it is [`Verdict::Ok`].
    pub verdict: Verdict,
    /// The nonce as decrypted (the AEAD nonce for `aes-128-gcm`; empty for `null`).
    pub nonce: Vec<u8>,
    /// The CRC-32 field of CFB methods.
    pub crc: Option<u32>,
    /// Shorter than any datagram a session takes, after the crypto header.
    pub runt: bool,
    /// The FEC header, when the datagram has one.
    pub fec: Option<FecHeader>,
    /// The bare KCP datagram (what FEC carries), decrypted.
    pub kcp: Vec<u8>,
    /// A parity shard's parity bytes.
    pub parity: Vec<u8>,
    /// Its segments, in order.
    pub segments: Vec<SegmentView>,
    /// Why segment parsing stopped early, if it did.
    pub segment_error: Option<SegmentError>,
}

/// Takes one datagram apart with `crypto`. See the module docs.
pub fn inspect(crypto: &PacketCrypto, datagram: &[u8]) -> Inspection {
    let mut plain = datagram.to_vec();
    let mut report = Inspection {
        len: datagram.len(),
        verdict: Verdict::Ok,
        nonce: Vec::new(),
        crc: None,
        runt: false,
        fec: None,
        kcp: Vec::new(),
        parity: Vec::new(),
        segments: Vec::new(),
        segment_error: None,
    };
    let body = match crypto.open(&mut plain) {
        Ok(range) => range,
        Err(e) => {
            report.verdict = Verdict::Failed(e);
            return report;
        }
    };
    report.nonce = plain[..crypto.nonce_len()].to_vec();
    if body.start == crate::crypto::CFB_HEADER_LEN {
        let crc = &plain[crypto.nonce_len()..body.start];
        report.crc = Some(u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]));
    }
    let plain = &plain[body];
    let parsed = match Datagram::parse(plain) {
        Ok(parsed) => parsed,
        Err(Runt) => {
            report.runt = true;
            return report;
        }
    };
    if let Datagram::FecParity(shard) = parsed {
        report.parity = shard[fec::HEADER_LEN..].to_vec();
    }
    if let Some(shard) = parsed.fec_shard() {
        let size_field = matches!(parsed, Datagram::FecData { .. }).then(|| u16::from_le_bytes([shard[6], shard[7]]));
        report.fec = Some(FecHeader {
            seqid: u32::from_le_bytes([shard[0], shard[1], shard[2], shard[3]]),
            kind: u16::from_le_bytes([shard[4], shard[5]]),
            size_field,
            size_matches: !matches!(parsed, Datagram::FecData { size_matches: false, .. }),
            payload_len: shard.len() - if size_field.is_some() { fec::DATA_HEADER_LEN } else { fec::HEADER_LEN },
        });
    } else if matches!(parsed, Datagram::Oob) {
        let kind = fec::TYPE_OOB;
        let seqid = u32::from_le_bytes([plain[0], plain[1], plain[2], plain[3]]);
        let payload_len = plain.len() - fec::HEADER_LEN;
        report.fec = Some(FecHeader { seqid, kind, size_field: None, size_matches: true, payload_len });
    }
    let Some(kcp) = parsed.kcp() else { return report };
    report.kcp = kcp.bytes().to_vec();
    let base = kcp.bytes().as_ptr() as usize;
    for item in Segments::new(kcp.bytes()) {
        match item {
            Ok((header, data)) => {
                let start = data.as_ptr() as usize - base;
                let payload =
                    if header.cmd == crate::kcp::Command::Push as u8 { payload_of(data) } else { Payload::Opaque };
                report.segments.push(SegmentView {
                    offset: start - KCP_HEADER_LEN,
                    header,
                    data: start..start + data.len(),
                    payload,
                });
            }
            Err(e) => {
                report.segment_error = Some(e);
                break;
            }
        }
    }
    report
}

/// What `data` (one PUSH segment's payload) starts, if anything recognisable.
fn payload_of(data: &[u8]) -> Payload {
    let chunks = snappy_chunks(data);
    if !chunks.is_empty() {
        return Payload::Snappy(chunks);
    }
    let frames = smux_frames(data);
    if frames.is_empty() {
        Payload::Opaque
    } else {
        Payload::Smux(frames)
    }
}

/// The smux frame headers `data` starts with, one after the other, as long as each
/// looks like one a kcptun peer sends.
fn smux_frames(data: &[u8]) -> Vec<SmuxFrame> {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(h) = data.get(at..at + smux::HEADER_LEN) {
        let (version, cmd) = (h[0], h[1]);
        let length = u16::from_le_bytes([h[2], h[3]]);
        let sid = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let plausible = matches!(version, 1 | 2)
            && match cmd {
                smux::CMD_SYN | smux::CMD_FIN | smux::CMD_NOP => length == 0,
                smux::CMD_UPD => length == 8,
                smux::CMD_PSH => true,
                _ => false,
            };
        if !plausible {
            break;
        }
        let start = at + smux::HEADER_LEN;
        let present = usize::from(length).min(data.len() - start);
        frames.push(SmuxFrame { offset: at, version, cmd, length, sid, present });
        at = start + present;
    }
    frames
}

/// The snappy chunks `data` starts with; empty unless the first one is a stream
/// identifier or a data chunk whose CRC holds (so application bytes that happen
/// to start with 0x00 are not taken for one).
fn snappy_chunks(data: &[u8]) -> Vec<SnappyChunk> {
    let mut chunks: Vec<SnappyChunk> = Vec::new();
    let mut at = 0;
    while let Some(h) = data.get(at..at + 4) {
        let kind = h[0];
        let length = usize::from(h[1]) | usize::from(h[2]) << 8 | usize::from(h[3]) << 16;
        let body = data.get(at + 4..at + 4 + length);
        let mut chunk =
            SnappyChunk { offset: at, kind, length, complete: body.is_some(), crc_ok: None, frames: Vec::new() };
        match kind {
            CHUNK_IDENTIFIER => {
                let ok = at + snappy::STREAM_IDENTIFIER.len() <= data.len()
                    && data[at..at + snappy::STREAM_IDENTIFIER.len()] == snappy::STREAM_IDENTIFIER;
                if !ok && body.is_some() {
                    break;
                }
            }
            CHUNK_COMPRESSED | CHUNK_UNCOMPRESSED if (4..=snappy::MAX_CHUNK_BODY).contains(&length) => {
                if let Some(body) = body {
                    let (crc, block) = body.split_at(4);
                    let decoded = if kind == CHUNK_COMPRESSED {
                        snap::raw::Decoder::new().decompress_vec(block).ok()
                    } else {
                        Some(block.to_vec())
                    };
                    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
                    let ok = decoded.as_deref().is_some_and(|d| snappy::masked_crc(d) == crc);
                    if !ok && chunks.is_empty() {
                        break;
                    }
                    chunk.crc_ok = Some(ok);
                    chunk.frames = decoded.filter(|_| ok).map(|d| smux_frames(&d)).unwrap_or_default();
                } else if chunks.is_empty() {
                    // A data chunk cut off by the segment's end cannot be checked:
                    // only trust it after an identifier.
                    break;
                }
            }
            _ => break,
        }
        let complete = chunk.complete;
        chunks.push(chunk);
        if !complete {
            break;
        }
        at += 4 + length;
    }
    chunks
}

/// What [`encode`] puts in a datagram's FEC header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FecFraming {
    /// No FEC header: bare KCP.
    None,
    /// A data shard with this seqid around the KCP datagram.
    Data(u32),
    /// A parity shard with this seqid; the body is its parity bytes.
    Parity(u32),
}

/// Builds one datagram: `body` (KCP segments, or parity bytes) in `framing`,
/// sealed by `crypto` with `nonce` (`crypto.nonce_len()` bytes; a recorded
/// datagram's nonce reproduces it byte for byte).
pub fn encode(crypto: &PacketCrypto, framing: FecFraming, body: &[u8], nonce: &[u8]) -> Result<Vec<u8>, EncodeError> {
    if nonce.len() != crypto.nonce_len() {
        return Err(EncodeError::NonceLength { expected: crypto.nonce_len() });
    }
    let fec_len = match framing {
        FecFraming::None => 0,
        FecFraming::Data(_) => fec::DATA_HEADER_LEN,
        FecFraming::Parity(_) => fec::HEADER_LEN,
    };
    let mut out = vec![0u8; crypto.header_len() + fec_len + body.len() + crypto.tail_len()];
    let head = crypto.header_len();
    match framing {
        FecFraming::None => {}
        FecFraming::Data(seqid) | FecFraming::Parity(seqid) => {
            let kind = if fec_len == fec::HEADER_LEN { fec::TYPE_PARITY } else { fec::TYPE_DATA };
            out[head..head + 4].copy_from_slice(&seqid.to_le_bytes());
            out[head + 4..head + 6].copy_from_slice(&kind.to_le_bytes());
            if kind == fec::TYPE_DATA {
                let size = u16::try_from(body.len() + 2).map_err(|_| EncodeError::TooLong)?;
                out[head + 6..head + 8].copy_from_slice(&size.to_le_bytes());
            }
        }
    }
    out[head + fec_len..head + fec_len + body.len()].copy_from_slice(body);
    crypto.seal(&mut out, nonce);
    Ok(out)
}

/// Appends one KCP segment (header and data) to `out`, for [`encode`]'s body.
pub fn push_segment(out: &mut Vec<u8>, header: &Header, data: &[u8]) {
    let at = out.len();
    out.resize(at + KCP_HEADER_LEN, 0);
    Header { len: data.len() as u32, ..*header }.encode(&mut out[at..]);
    out.extend_from_slice(data);
}

/// Why [`encode`] could not build a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The nonce is not as long as the method's.
    NonceLength {
        /// The method's nonce length.
        expected: usize,
    },
    /// An FEC data shard's size field cannot hold the body's length.
    TooLong,
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EncodeError::NonceLength { expected } => write!(f, "the nonce must be {expected} bytes for this method"),
            EncodeError::TooLong => f.write_str("body too long for an FEC data shard (65,533 bytes at most)"),
        }
    }
}

impl std::error::Error for EncodeError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Method;

    fn sample(crypto: &PacketCrypto, framing: FecFraming) -> Vec<u8> {
        let mut body = Vec::new();
        let header = Header { conv: 7, cmd: 81, frg: 0, wnd: 128, ts: 5, sn: 1, una: 0, len: 0 };
        let mut payload = Vec::new();
        payload.extend_from_slice(&[2, smux::CMD_PSH, 3, 0, 1, 0, 0, 0, b'a', b'b', b'c']);
        push_segment(&mut body, &header, &payload);
        push_segment(&mut body, &Header { cmd: 82, ..header }, &[]);
        encode(crypto, framing, &body, &vec![9; crypto.nonce_len()]).expect("encodes")
    }

    #[test]
    fn every_method_round_trips_and_a_wrong_key_is_a_verdict() {
        for method in Method::ALL {
            let crypto = PacketCrypto::from_passphrase(method, "right");
            let wire = sample(&crypto, FecFraming::Data(42));
            let seen = inspect(&crypto, &wire);
            assert_eq!(seen.verdict, Verdict::Ok, "{method:?}");
            assert_eq!(seen.fec.map(|f| (f.seqid, f.kind, f.size_matches)), Some((42, fec::TYPE_DATA, true)));
            assert_eq!(seen.segments.len(), 2, "{method:?}");
            let Payload::Smux(frames) = &seen.segments[0].payload else { panic!("{method:?}: {seen:?}") };
            assert_eq!((frames[0].cmd, frames[0].length, frames[0].sid, frames[0].present), (smux::CMD_PSH, 3, 1, 3));
            let other = PacketCrypto::from_passphrase(method, "wrong");
            if !matches!(method, Method::Null | Method::None) {
                assert_eq!(inspect(&other, &wire).verdict, Verdict::Failed(OpenError::Checksum), "{method:?}");
            }
        }
    }

    #[test]
    fn any_prefix_or_corruption_gives_a_report() {
        let crypto = PacketCrypto::from_passphrase(Method::Null, "k");
        let wire = sample(&crypto, FecFraming::Data(1));
        for len in 0..=wire.len() {
            let seen = inspect(&crypto, &wire[..len]);
            assert_eq!(seen.runt, len < crate::wire::MIN_LEN);
        }
        for at in 0..wire.len() {
            for bit in 0..8 {
                let mut bad = wire.clone();
                bad[at] ^= 1 << bit;
                let _ = inspect(&crypto, &bad);
            }
        }
    }
}
