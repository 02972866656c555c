//! A view of one datagram once its crypto layer is removed: an FEC shard or bare
//! KCP (docs/protocol.md §3–§4). [`Datagram::parse`] checks the lengths once; every
//! field read after it is in bounds, so nothing that reads the outer framing can
//! panic on a short or forged datagram.

use crate::fec;
use crate::kcp::{Command, HEADER_LEN as KCP_HEADER_LEN};

/// Shortest datagram a session takes after the crypto header (kcp-go latest).
pub const MIN_LEN: usize = 12;

/// Shorter than [`MIN_LEN`]: no datagram an honest peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runt;

impl core::fmt::Display for Runt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "datagram shorter than {MIN_LEN} bytes after the crypto header")
    }
}

impl std::error::Error for Runt {}

/// One decrypted datagram, by its outer framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// KCP segments without FEC.
    Kcp(KcpPart<'a>),
    /// An FEC data shard and the KCP datagram it carries.
    FecData {
        /// The whole shard, FEC header included, for the decoder.
        shard: &'a [u8],
        /// The shard's size field agrees with its length.
        size_matches: bool,
        /// The KCP datagram inside.
        kcp: KcpPart<'a>,
    },
    /// An FEC parity shard, FEC header included.
    FecParity(&'a [u8]),
    /// kcp-go's out-of-band datagram (kcptun sends none).
    Oob,
}

/// The KCP part of a datagram: one or more segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KcpPart<'a>(&'a [u8]);

/// The fields of a datagram's first KCP header that decide which session it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstHeader {
    /// Conversation id.
    pub conv: u32,
    /// Command byte, as sent.
    pub cmd: u8,
    /// Sequence number.
    pub sn: u32,
    /// The sender's next expected sequence number: 0 until it has had data.
    pub una: u32,
}

impl FirstHeader {
    /// Whether it starts a session: data with sequence number 0, which is what a
    /// peer's first datagram begins with (nothing to acknowledge yet).
    pub fn starts_session(&self) -> bool {
        self.cmd == Command::Push as u8 && self.sn == 0
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<'a> KcpPart<'a> {
    /// The segments' bytes, for KCP.
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The first segment's header fields, if a whole header is there.
    pub fn first_header(&self) -> Option<FirstHeader> {
        let b = self.0;
        (b.len() >= KCP_HEADER_LEN).then(|| FirstHeader {
            conv: u32_at(b, 0),
            cmd: b[4],
            sn: u32_at(b, 12),
            una: u32_at(b, 16),
        })
    }
}

impl<'a> Datagram<'a> {
    /// Reads the outer framing of `plain` (a datagram without its crypto header).
    pub fn parse(plain: &'a [u8]) -> Result<Datagram<'a>, Runt> {
        if plain.len() < MIN_LEN {
            return Err(Runt);
        }
        // MIN_LEN ≥ the FEC data header, so every slice below is in bounds.
        let kind = u16::from_le_bytes([plain[4], plain[5]]);
        Ok(match kind {
            fec::TYPE_DATA => {
                let size = usize::from(u16::from_le_bytes([plain[6], plain[7]]));
                Datagram::FecData {
                    shard: plain,
                    size_matches: size == plain.len() - fec::HEADER_LEN,
                    kcp: KcpPart(&plain[fec::DATA_HEADER_LEN..]),
                }
            }
            fec::TYPE_PARITY => Datagram::FecParity(plain),
            fec::TYPE_OOB => Datagram::Oob,
            _ => Datagram::Kcp(KcpPart(plain)),
        })
    }

    /// The KCP segments it carries directly (a parity shard carries none).
    pub fn kcp(&self) -> Option<KcpPart<'a>> {
        match self {
            Datagram::Kcp(k) | Datagram::FecData { kcp: k, .. } => Some(*k),
            Datagram::FecParity(_) | Datagram::Oob => None,
        }
    }

    /// The FEC shard, header included, for the decoder.
    pub fn fec_shard(&self) -> Option<&'a [u8]> {
        match self {
            Datagram::FecData { shard, .. } | Datagram::FecParity(shard) => Some(shard),
            Datagram::Kcp(_) | Datagram::Oob => None,
        }
    }

    /// The conversation id and sequence number its first KCP header announces.
    pub fn announced(&self) -> Option<(u32, u32)> {
        self.kcp()?.first_header().map(|h| (h.conv, h.sn))
    }

    /// Whether it may open (or replace) a session: its first KCP header has a known
    /// command and, for a data shard, the size field agrees with the length. An
    /// honest peer never sends anything else.
    pub fn may_open_session(&self) -> bool {
        let size_ok = !matches!(self, Datagram::FecData { size_matches: false, .. });
        let known = self.kcp().and_then(|k| k.first_header()).is_some_and(|h| Command::from_wire(h.cmd).is_some());
        size_ok && known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prefix_of_a_datagram_parses_without_panicking() {
        let mut data = vec![0u8; 60];
        data[4..6].copy_from_slice(&fec::TYPE_DATA.to_le_bytes());
        data[6..8].copy_from_slice(&54u16.to_le_bytes());
        data[8..12].copy_from_slice(&7u32.to_le_bytes());
        data[12] = 81; // PUSH
        data[20..24].copy_from_slice(&9u32.to_le_bytes());
        for len in 0..=data.len() {
            let parsed = Datagram::parse(&data[..len]);
            assert_eq!(parsed.is_err(), len < MIN_LEN, "{len} bytes");
            if let Ok(d) = parsed {
                assert_eq!(d.announced().is_some(), len >= fec::DATA_HEADER_LEN + KCP_HEADER_LEN, "{len} bytes");
                assert_eq!(d.may_open_session(), len == 60, "{len} bytes: only the whole shard has a true size");
            }
        }
        assert_eq!(Datagram::parse(&data).expect("whole").announced(), Some((7, 9)));
    }
}
