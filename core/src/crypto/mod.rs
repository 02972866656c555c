//! Packet crypto, wire-compatible with kcp-go and kcptun's `-crypt` (docs/protocol.md §3).
//!
//! Three packet formats:
//! * CFB + CRC (every block cipher, `salsa20`, `xor`, `none`):
//!   `[nonce 16][crc32 4][payload]`, the whole datagram transformed by the cipher.
//! * AEAD (`aes-128-gcm`): `[nonce 12][ciphertext][tag 16]`.
//! * `null`: the payload as is.
//!
//! Everything happens in place in the caller's buffer; [`PacketCrypto::seal`] expects
//! [`PacketCrypto::header_len`] free bytes in front of the payload and
//! [`PacketCrypto::tail_len`] free bytes after it.

mod tea;
mod twofish;

use core::ops::Range;

use aes::{Aes128, Aes192, Aes256};
use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes128Gcm, Nonce, Tag};
use cfb_mode::{Decryptor, Encryptor};
use cipher::{BlockCipherEncrypt, InnerIvInit, KeyInit, KeyIvInit, StreamCipher};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use sha1::Sha1;

pub use tea::{Tea16, XteaBe};
pub use twofish::Twofish256;

/// The fixed CFB initial vector of kcp-go; 8-byte-block ciphers use its first half.
pub const CFB_IV: [u8; 16] =
    [0xa7, 0x73, 0x4f, 0x9c, 0x12, 0xac, 0x1b, 0x01, 0xa4, 0x15, 0xf2, 0xc1, 0xfc, 0x78, 0xe6, 0x6b];
/// Nonce + CRC of the CFB format.
pub const CFB_HEADER_LEN: usize = 20;
const CFB_NONCE_LEN: usize = 16;
const GCM_NONCE_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;
const XOR_PAD_LEN: usize = 1500;

/// The `-crypt` methods of kcptun.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// AES-256-CFB (`aes`).
    Aes256,
    /// AES-128-CFB (`aes-128`).
    Aes128,
    /// AES-192-CFB (`aes-192`).
    Aes192,
    /// AES-128-GCM (`aes-128-gcm`): an AEAD, no CRC.
    Aes128Gcm,
    /// SM4-CFB (`sm4`).
    Sm4,
    /// Twofish-256-CFB (`twofish`).
    Twofish,
    /// Blowfish-CFB (`blowfish`).
    Blowfish,
    /// CAST5-CFB (`cast5`).
    Cast5,
    /// Triple DES-CFB (`3des`).
    TripleDes,
    /// TEA-CFB, 16 rounds, big-endian as kcp-go (`tea`).
    Tea,
    /// XTEA-CFB, big-endian as kcp-go (`xtea`).
    Xtea,
    /// Salsa20 (`salsa20`).
    Salsa20,
    /// kcp-go's XOR "cipher" (`xor`).
    Xor,
    /// CFB header (nonce and CRC) in clear, no encryption.
    None,
    /// No crypto layer at all.
    Null,
}

impl Method {
    /// Every method, in kcptun's order.
    pub const ALL: [Method; 15] = [
        Method::Aes256,
        Method::Aes128,
        Method::Aes192,
        Method::Aes128Gcm,
        Method::Sm4,
        Method::Twofish,
        Method::Blowfish,
        Method::Cast5,
        Method::TripleDes,
        Method::Tea,
        Method::Xtea,
        Method::Salsa20,
        Method::Xor,
        Method::None,
        Method::Null,
    ];

    /// The method for a `-crypt` name. kcptun treats every unknown name as `aes`;
    /// `None` here lets the caller say so before falling back.
    pub fn from_name(name: &str) -> Option<Method> {
        Some(match name {
            "aes" => Method::Aes256,
            "aes-128" => Method::Aes128,
            "aes-192" => Method::Aes192,
            "aes-128-gcm" => Method::Aes128Gcm,
            "sm4" => Method::Sm4,
            "twofish" => Method::Twofish,
            "blowfish" => Method::Blowfish,
            "cast5" => Method::Cast5,
            "3des" => Method::TripleDes,
            "tea" => Method::Tea,
            "xtea" => Method::Xtea,
            "salsa20" => Method::Salsa20,
            "xor" => Method::Xor,
            "none" => Method::None,
            "null" => Method::Null,
            _ => return None,
        })
    }

    /// kcptun's behaviour: unknown names mean `aes`.
    pub fn from_name_or_aes(name: &str) -> Method {
        Method::from_name(name).unwrap_or(Method::Aes256)
    }

    /// kcptun's name of the method.
    pub fn name(self) -> &'static str {
        match self {
            Method::Aes256 => "aes",
            Method::Aes128 => "aes-128",
            Method::Aes192 => "aes-192",
            Method::Aes128Gcm => "aes-128-gcm",
            Method::Sm4 => "sm4",
            Method::Twofish => "twofish",
            Method::Blowfish => "blowfish",
            Method::Cast5 => "cast5",
            Method::TripleDes => "3des",
            Method::Tea => "tea",
            Method::Xtea => "xtea",
            Method::Salsa20 => "salsa20",
            Method::Xor => "xor",
            Method::None => "none",
            Method::Null => "null",
        }
    }

    /// Bytes the method adds in front of the payload.
    pub fn header_len(self) -> usize {
        match self {
            Method::Null => 0,
            Method::Aes128Gcm => GCM_NONCE_LEN,
            _ => CFB_HEADER_LEN,
        }
    }

    /// Bytes the method adds after the payload.
    pub fn tail_len(self) -> usize {
        match self {
            Method::Aes128Gcm => GCM_TAG_LEN,
            _ => 0,
        }
    }
}

/// kcptun's key derivation: PBKDF2-HMAC-SHA1(key, "kcp-go", 4096, 32).
pub fn derive_key(passphrase: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha1>(passphrase.as_bytes(), b"kcp-go", 4096, &mut key);
    key
}

/// Why a received datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenError {
    /// Shorter than the crypto header (and tag): dropped without counting.
    TooShort,
    /// CRC mismatch or AEAD authentication failure (`InCsumErrors`).
    Checksum,
}

impl core::fmt::Display for OpenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            OpenError::TooShort => "datagram shorter than the crypto header",
            OpenError::Checksum => "checksum or authentication failure (wrong key, or a forged or corrupt datagram)",
        })
    }
}

impl std::error::Error for OpenError {}

// One instance per listener or dialled session, shared by its connections: the
// spread between variants (Blowfish's S-boxes) costs nothing worth a box per call.
#[allow(clippy::large_enum_variant)]
enum Cipher {
    Aes128(Aes128),
    Aes192(Aes192),
    Aes256(Aes256),
    Sm4(sm4::Sm4),
    Twofish(Box<Twofish256>),
    Blowfish(blowfish::Blowfish),
    Cast5(cast5::Cast5),
    TripleDes(des::TdesEde3),
    Tea(Tea16),
    Xtea(XteaBe),
    Salsa20([u8; 32]),
    Xor(Box<[u8; XOR_PAD_LEN]>),
    Gcm(Box<Aes128Gcm>),
    None,
    Null,
}

/// Runs `$body` with `$c` bound to the block cipher of a CFB method.
macro_rules! with_block_cipher {
    ($cipher:expr, |$c:ident| $body:expr, else $other:expr) => {
        match $cipher {
            Cipher::Aes128($c) => $body,
            Cipher::Aes192($c) => $body,
            Cipher::Aes256($c) => $body,
            Cipher::Sm4($c) => $body,
            Cipher::Twofish(boxed) => {
                let $c = &**boxed;
                $body
            }
            Cipher::Blowfish($c) => $body,
            Cipher::Cast5($c) => $body,
            Cipher::TripleDes($c) => $body,
            Cipher::Tea($c) => $body,
            Cipher::Xtea($c) => $body,
            _ => $other,
        }
    };
}

fn cfb_encrypt<C: BlockCipherEncrypt>(cipher: &C, buf: &mut [u8]) {
    let iv = cipher::Iv::<Encryptor<&C>>::try_from(&CFB_IV[..C::block_size()]).expect("block size ≤ 16");
    Encryptor::<&C>::inner_iv_init(cipher, &iv).encrypt(buf);
}

fn cfb_decrypt<C: BlockCipherEncrypt>(cipher: &C, buf: &mut [u8]) {
    let iv = cipher::Iv::<Decryptor<&C>>::try_from(&CFB_IV[..C::block_size()]).expect("block size ≤ 16");
    Decryptor::<&C>::inner_iv_init(cipher, &iv).decrypt(buf);
}

fn salsa20_apply(key: &[u8; 32], buf: &mut [u8]) {
    if buf.len() < 8 {
        return;
    }
    let (nonce, rest) = buf.split_at_mut(8);
    let nonce: [u8; 8] = (&*nonce).try_into().expect("8 bytes");
    salsa20::Salsa20::new(key.into(), &nonce.into()).apply_keystream(rest);
}

fn xor_apply(pad: &[u8; XOR_PAD_LEN], buf: &mut [u8]) {
    for (b, p) in buf.iter_mut().zip(pad.iter()) {
        *b ^= p;
    }
}

/// The crypto layer of one listener or session: a keyed method.
pub struct PacketCrypto {
    method: Method,
    cipher: Cipher,
}

impl core::fmt::Debug for PacketCrypto {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print key material.
        f.debug_struct("PacketCrypto").field("method", &self.method.name()).finish_non_exhaustive()
    }
}

impl PacketCrypto {
    /// Keys `method` with kcptun's 32-byte derived key (each method takes the prefix it needs).
    pub fn new(method: Method, key: &[u8; 32]) -> PacketCrypto {
        let k16: &[u8; 16] = key[..16].try_into().expect("16 bytes");
        let cipher = match method {
            Method::Aes256 => Cipher::Aes256(Aes256::new(key.into())),
            Method::Aes128 => Cipher::Aes128(Aes128::new(k16.into())),
            Method::Aes192 => Cipher::Aes192(Aes192::new_from_slice(&key[..24]).expect("24 bytes")),
            Method::Aes128Gcm => Cipher::Gcm(Box::new(Aes128Gcm::new(k16.into()))),
            Method::Sm4 => Cipher::Sm4(sm4::Sm4::new(k16.into())),
            Method::Twofish => Cipher::Twofish(Box::new(Twofish256::new(key))),
            Method::Blowfish => Cipher::Blowfish(blowfish::Blowfish::new_from_slice(key).expect("32-byte key")),
            Method::Cast5 => Cipher::Cast5(cast5::Cast5::new_from_slice(k16).expect("16-byte key")),
            Method::TripleDes => Cipher::TripleDes(des::TdesEde3::new_from_slice(&key[..24]).expect("24 bytes")),
            Method::Tea => Cipher::Tea(Tea16::new(k16)),
            Method::Xtea => Cipher::Xtea(XteaBe::new(k16)),
            Method::Salsa20 => Cipher::Salsa20(*key),
            Method::Xor => {
                let mut pad = Box::new([0u8; XOR_PAD_LEN]);
                pbkdf2::pbkdf2_hmac::<Sha1>(key, b"sH3CIVoF#rWLtJo6", 32, &mut pad[..]);
                Cipher::Xor(pad)
            }
            Method::None => Cipher::None,
            Method::Null => Cipher::Null,
        };
        PacketCrypto { method, cipher }
    }

    /// Derives the key from a kcptun passphrase and keys `method` with it.
    pub fn from_passphrase(method: Method, passphrase: &str) -> PacketCrypto {
        PacketCrypto::new(method, &derive_key(passphrase))
    }

    /// The packet cipher in use.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Free bytes [`PacketCrypto::seal`] needs in front of the payload.
    pub fn header_len(&self) -> usize {
        self.method.header_len()
    }

    /// Free bytes [`PacketCrypto::seal`] needs after the payload.
    pub fn tail_len(&self) -> usize {
        self.method.tail_len()
    }

    /// Random bytes a datagram needs (16 for CFB, 12 for GCM, 0 for null).
    pub fn nonce_len(&self) -> usize {
        match self.method {
            Method::Null => 0,
            Method::Aes128Gcm => GCM_NONCE_LEN,
            _ => CFB_NONCE_LEN,
        }
    }

    /// The nonce of a datagram [`PacketCrypto::open`] accepted (empty for `null`).
    pub fn nonce<'a>(&self, opened: &'a [u8]) -> &'a [u8] {
        &opened[..self.nonce_len().min(opened.len())]
    }

    /// The raw CFB-family transform over a whole datagram (no CRC handling). CFB
    /// encryption and decryption differ; the stream methods are their own inverse.
    /// Does nothing for GCM and null.
    pub fn encrypt(&self, buf: &mut [u8]) {
        with_block_cipher!(&self.cipher, |c| cfb_encrypt(c, buf), else self.apply_stream(buf))
    }

    /// The raw inverse of [`PacketCrypto::encrypt`], without the CRC check.
    pub fn decrypt(&self, buf: &mut [u8]) {
        with_block_cipher!(&self.cipher, |c| cfb_decrypt(c, buf), else self.apply_stream(buf))
    }

    fn apply_stream(&self, buf: &mut [u8]) {
        match &self.cipher {
            Cipher::Salsa20(key) => salsa20_apply(key, buf),
            Cipher::Xor(pad) => xor_apply(pad, buf),
            _ => {}
        }
    }

    /// Protects one datagram in place. `packet` is `header_len` free bytes, the
    /// payload, then `tail_len` free bytes; `nonce` is `nonce_len` fresh random bytes.
    pub fn seal(&self, packet: &mut [u8], nonce: &[u8]) {
        match &self.cipher {
            Cipher::Null => {}
            Cipher::Gcm(aead) => {
                let end = packet.len() - GCM_TAG_LEN;
                packet[..GCM_NONCE_LEN].copy_from_slice(nonce);
                let (head, rest) = packet.split_at_mut(GCM_NONCE_LEN);
                let (body, tag_out) = rest.split_at_mut(end - GCM_NONCE_LEN);
                let nonce = Nonce::try_from(&head[..]).expect("12-byte nonce");
                let tag = aead.encrypt_inout_detached(&nonce, &[], body.into()).expect("payload within AEAD limits");
                tag_out.copy_from_slice(&tag);
            }
            _ => {
                packet[..CFB_NONCE_LEN].copy_from_slice(nonce);
                let crc = crc32fast::hash(&packet[CFB_HEADER_LEN..]);
                packet[CFB_NONCE_LEN..CFB_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
                self.encrypt(packet);
            }
        }
    }

    /// Checks and decrypts one received datagram in place; returns where the payload is.
    pub fn open(&self, packet: &mut [u8]) -> Result<Range<usize>, OpenError> {
        match &self.cipher {
            Cipher::Null => Ok(0..packet.len()),
            Cipher::Gcm(aead) => {
                if packet.len() < GCM_NONCE_LEN + GCM_TAG_LEN {
                    return Err(OpenError::TooShort);
                }
                let end = packet.len() - GCM_TAG_LEN;
                let (head, rest) = packet.split_at_mut(GCM_NONCE_LEN);
                let (body, tag) = rest.split_at_mut(end - GCM_NONCE_LEN);
                let nonce = Nonce::try_from(&head[..]).expect("12-byte nonce");
                let tag = Tag::try_from(&tag[..]).expect("16-byte tag");
                aead.decrypt_inout_detached(&nonce, &[], body.into(), &tag).map_err(|_| OpenError::Checksum)?;
                Ok(GCM_NONCE_LEN..end)
            }
            _ => {
                if packet.len() < CFB_HEADER_LEN {
                    return Err(OpenError::TooShort);
                }
                self.decrypt(packet);
                let crc = u32::from_le_bytes(packet[CFB_NONCE_LEN..CFB_HEADER_LEN].try_into().expect("4 bytes"));
                if crc32fast::hash(&packet[CFB_HEADER_LEN..]) != crc {
                    return Err(OpenError::Checksum);
                }
                Ok(CFB_HEADER_LEN..packet.len())
            }
        }
    }
}

/// Fresh nonces for outgoing datagrams: a ChaCha12 CSPRNG the caller seeds once from
/// the OS (the core itself never asks the OS for anything).
pub struct NonceSource(ChaCha12Rng);

impl NonceSource {
    /// A generator seeded with `seed` (take it from the OS).
    pub fn from_seed(seed: [u8; 32]) -> NonceSource {
        NonceSource(ChaCha12Rng::from_seed(seed))
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        self.0.fill_bytes(out);
    }
}

impl core::fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("NonceSource")
    }
}
