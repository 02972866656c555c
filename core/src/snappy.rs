//! The snappy framing format as kcptun's compression layer uses it (docs/protocol.md §6):
//! one direction of a KCP session is one framed stream; every write (one smux frame)
//! is flushed as its own chunk. Blocks are compressed by the `snap` crate; the
//! framing is here so that the reader works on partial input without blocking and
//! rejects, rather than skips, anything corrupt.

/// The stream identifier chunk that opens every framed stream.
pub const STREAM_IDENTIFIER: [u8; 10] = [0xff, 0x06, 0x00, 0x00, b's', b'N', b'a', b'P', b'p', b'Y'];
/// Most uncompressed bytes one chunk carries.
pub const MAX_BLOCK: usize = 65536;
/// Longest chunk body a reader accepts: the largest compressed block plus the CRC.
pub const MAX_CHUNK_BODY: usize = 76490 + 4;

/// Chunk type of a compressed block.
pub const CHUNK_COMPRESSED: u8 = 0x00;
/// Chunk type of an uncompressed block.
pub const CHUNK_UNCOMPRESSED: u8 = 0x01;
const CHUNK_PADDING: u8 = 0xfe;
/// Chunk type of the stream identifier.
pub const CHUNK_IDENTIFIER: u8 = 0xff;

/// CRC-32C, masked as the framing format requires.
pub fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// Why a framed stream was rejected. Any of these ends the stream (and kcptun's
/// smux session over it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnappyError {
    /// The stream does not start with the stream identifier, or a later identifier
    /// chunk is wrong.
    MissingIdentifier,
    /// A chunk's masked CRC-32C does not match its data.
    Checksum,
    /// A compressed block does not decode, or decodes to more than 64 KiB.
    CorruptBlock,
    /// A chunk longer than any valid one.
    ChunkTooLong(usize),
    /// A reserved unskippable chunk type (0x02–0x7F).
    ReservedChunk(u8),
}

impl core::fmt::Display for SnappyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SnappyError::MissingIdentifier => {
                f.write_str("snappy stream identifier missing or wrong (is compression on at both ends?)")
            }
            SnappyError::Checksum => f.write_str("snappy chunk checksum mismatch"),
            SnappyError::CorruptBlock => f.write_str("corrupt snappy block"),
            SnappyError::ChunkTooLong(n) => write!(f, "snappy chunk of {n} bytes is longer than any valid chunk"),
            SnappyError::ReservedChunk(t) => write!(f, "reserved unskippable snappy chunk type {t:#04x}"),
        }
    }
}

impl std::error::Error for SnappyError {}

/// Writes a framed stream.
pub struct FrameEncoder {
    started: bool,
    encoder: snap::raw::Encoder,
    block: Vec<u8>,
}

impl Default for FrameEncoder {
    fn default() -> FrameEncoder {
        FrameEncoder::new()
    }
}

impl core::fmt::Debug for FrameEncoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameEncoder").field("started", &self.started).finish()
    }
}

impl FrameEncoder {
    /// An encoder that has written nothing yet (the stream identifier comes first).
    pub fn new() -> FrameEncoder {
        FrameEncoder { started: false, encoder: snap::raw::Encoder::new(), block: Vec::new() }
    }

    /// Appends `data` to `out` as chunks of at most 64 KiB, flushed at once (kcptun's
    /// `Write` + `Flush`); the first output of the stream starts with the identifier.
    /// Nothing at all is written for empty data.
    pub fn encode(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if data.is_empty() {
            return;
        }
        if !self.started {
            out.extend_from_slice(&STREAM_IDENTIFIER);
            self.started = true;
        }
        for piece in data.chunks(MAX_BLOCK) {
            self.block.resize(snap::raw::max_compress_len(piece.len()), 0);
            let compressed = self.encoder.compress(piece, &mut self.block).unwrap_or(usize::MAX);
            // Compressed only if that saves at least an eighth, as golang/snappy does.
            let (kind, body) = if compressed < piece.len() - piece.len() / 8 {
                (CHUNK_COMPRESSED, &self.block[..compressed])
            } else {
                (CHUNK_UNCOMPRESSED, piece)
            };
            let len = (body.len() + 4) as u32;
            out.push(kind);
            out.extend_from_slice(&len.to_le_bytes()[..3]);
            out.extend_from_slice(&masked_crc(piece).to_le_bytes());
            out.extend_from_slice(body);
        }
    }
}

/// Reads a framed stream from input that arrives in arbitrary pieces.
pub struct FrameDecoder {
    /// Bytes of an incomplete chunk (at most a header and the longest body).
    pending: Vec<u8>,
    seen_identifier: bool,
    decoder: snap::raw::Decoder,
    block: Vec<u8>,
    failed: Option<SnappyError>,
}

impl Default for FrameDecoder {
    fn default() -> FrameDecoder {
        FrameDecoder::new()
    }
}

impl core::fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameDecoder").field("pending", &self.pending.len()).field("failed", &self.failed).finish()
    }
}

impl FrameDecoder {
    /// A decoder expecting the stream identifier.
    pub fn new() -> FrameDecoder {
        FrameDecoder {
            pending: Vec::new(),
            seen_identifier: false,
            decoder: snap::raw::Decoder::new(),
            block: Vec::new(),
            failed: None,
        }
    }

    /// Decodes `input`, appending the stream's bytes to `out`. After an error the
    /// stream is dead: every later call returns the same error.
    pub fn decode(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), SnappyError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        while !input.is_empty() {
            // Complete the chunk header, then its body, from what is pending plus input.
            let need = if self.pending.len() < 4 {
                4 - self.pending.len()
            } else {
                let body = u32::from_le_bytes([self.pending[1], self.pending[2], self.pending[3], 0]) as usize;
                4 + body - self.pending.len()
            };
            let take = need.min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.pending.len() == 4 {
                let body = u32::from_le_bytes([self.pending[1], self.pending[2], self.pending[3], 0]) as usize;
                if body > MAX_CHUNK_BODY {
                    return self.fail(SnappyError::ChunkTooLong(body));
                }
            }
            if self.pending.len() < 4 {
                continue;
            }
            let body_len = u32::from_le_bytes([self.pending[1], self.pending[2], self.pending[3], 0]) as usize;
            if self.pending.len() < 4 + body_len {
                continue;
            }
            let result = self.chunk(out);
            self.pending.clear();
            if let Err(e) = result {
                return self.fail(e);
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: SnappyError) -> Result<(), SnappyError> {
        self.failed = Some(e);
        self.pending = Vec::new();
        Err(e)
    }

    /// Handles the complete chunk in `pending`.
    fn chunk(&mut self, out: &mut Vec<u8>) -> Result<(), SnappyError> {
        let kind = self.pending[0];
        let body = &self.pending[4..];
        if kind == CHUNK_IDENTIFIER {
            if body != &STREAM_IDENTIFIER[4..] {
                return Err(SnappyError::MissingIdentifier);
            }
            self.seen_identifier = true;
            return Ok(());
        }
        if !self.seen_identifier {
            return Err(SnappyError::MissingIdentifier);
        }
        match kind {
            CHUNK_COMPRESSED | CHUNK_UNCOMPRESSED => {
                if body.len() < 4 {
                    return Err(SnappyError::CorruptBlock);
                }
                let crc = u32::from_le_bytes(body[..4].try_into().expect("4 bytes"));
                let data = &body[4..];
                let start = out.len();
                if kind == CHUNK_COMPRESSED {
                    let n = snap::raw::decompress_len(data).map_err(|_| SnappyError::CorruptBlock)?;
                    if n > MAX_BLOCK {
                        return Err(SnappyError::CorruptBlock);
                    }
                    self.block.resize(n, 0);
                    let n = self.decoder.decompress(data, &mut self.block).map_err(|_| SnappyError::CorruptBlock)?;
                    out.extend_from_slice(&self.block[..n]);
                } else {
                    if data.len() > MAX_BLOCK {
                        return Err(SnappyError::CorruptBlock);
                    }
                    out.extend_from_slice(data);
                }
                if masked_crc(&out[start..]) != crc {
                    out.truncate(start);
                    return Err(SnappyError::Checksum);
                }
                Ok(())
            }
            0x02..=0x7f => Err(SnappyError::ReservedChunk(kind)),
            // Padding and reserved skippable chunks.
            _ => {
                debug_assert!(kind == CHUNK_PADDING || (0x80..=0xfd).contains(&kind));
                Ok(())
            }
        }
    }
}
