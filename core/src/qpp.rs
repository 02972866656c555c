//! QPP (Quantum Permutation Pad) as kcptun applies it to smux stream payloads
//! (docs/protocol.md §7): a set of byte permutations derived from the raw `-key`, and per
//! stream and direction a PRNG that picks the pad and a mask for every byte.

use aes::Aes256;
use cipher::{BlockCipherEncrypt, KeyInit};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

const SEED_DERIVE_SALT: &[u8] = b"___QUANTUM_PERMUTATION_PAD_SEED_DERIVE___";
const SHUFFLE_SALT: &[u8] = b"___QUANTUM_PERMUTATION_PAD_SHUFFLE_SALT___";
const PRNG_SALT: &[u8] = b"___QUANTUM_PERMUTATION_PAD_PRNG_SALT___";
const PRNG_SELECTOR: &[u8] = b"PERMUTATION_MATRIX_SELECTOR";
/// kcptun's default `-QPPCount`.
pub const DEFAULT_PADS: u16 = 61;

/// The two incompatible ways qpp has derived its pads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PadGeneration {
    /// qpp ≥ v1.1.19 (latest kcptun): 7 seed chunks, both halves of the HMAC shuffled.
    #[default]
    Current,
    /// qpp ≤ v1.1.18 (kcptun 2024 releases): 6 seed chunks, only the first half.
    Legacy,
}

impl PadGeneration {
    fn chunks(self) -> usize {
        match self {
            // ceil(ceil(1684 / 8) / 32) and floor(floor(1684 / 8) / 32).
            PadGeneration::Current => 211usize.div_ceil(32),
            PadGeneration::Legacy => 210 / 32,
        }
    }
}

fn pbkdf2_sha1(password: &[u8], salt: &[u8], rounds: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, rounds, &mut out);
    out
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// The seed chunks pads are built from (before the shuffle keys are derived).
pub fn seed_chunks(seed: &[u8], generation: PadGeneration) -> Vec<[u8; 32]> {
    let derived;
    let seed = if seed.len() < 32 {
        derived = pbkdf2_sha1(seed, SEED_DERIVE_SALT, 128);
        &derived[..]
    } else {
        seed
    };
    (0..generation.chunks())
        .map(|i| {
            let chunk: [u8; 32] = core::array::from_fn(|j| seed[(32 * i + j) % seed.len()]);
            pbkdf2_sha1(&chunk, SEED_DERIVE_SALT, 1024)
        })
        .collect()
}

/// `r mod m` for a 256-bit big-endian `r`.
fn mod_be(r: &[u8; 32], m: u32) -> u32 {
    r.iter().fold(0u64, |acc, &b| ((acc << 8) | u64::from(b)) % u64::from(m)) as u32
}

/// One process's pad set: `num_pads` permutations of 0..=255 and their inverses.
pub struct Qpp {
    pads: Vec<[u8; 256]>,
    inverse: Vec<[u8; 256]>,
}

impl core::fmt::Debug for Qpp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Qpp").field("pads", &self.pads.len()).finish()
    }
}

impl Qpp {
    /// Builds the pads from the raw key (kcptun's `-key`, not the PBKDF2 transport
    /// key). `num_pads` is kcptun's `-QPPCount` as u16; it must not be 0.
    pub fn new(seed: &[u8], num_pads: u16, generation: PadGeneration) -> Qpp {
        assert!(num_pads > 0, "QPP needs at least one pad");
        let chunks = seed_chunks(seed, generation);
        let ciphers: Vec<Aes256> =
            chunks.iter().map(|c| Aes256::new(&pbkdf2_sha1(c, SHUFFLE_SALT, 128).into())).collect();
        let mut pads = Vec::with_capacity(num_pads.into());
        for p in 0..usize::from(num_pads) {
            let mut pad: [u8; 256] = core::array::from_fn(|i| i as u8);
            let mut h = hmac_sha256(&chunks[p % chunks.len()], format!("QPP_{p:b}").as_bytes());
            for i in (1..256usize).rev() {
                for c in &ciphers {
                    let (lo, hi) = h.split_at_mut(16);
                    c.encrypt_block(<&mut cipher::Block<Aes256>>::try_from(lo).expect("16 bytes"));
                    if generation == PadGeneration::Current {
                        c.encrypt_block(<&mut cipher::Block<Aes256>>::try_from(hi).expect("16 bytes"));
                    }
                }
                let j = mod_be(&h, i as u32 + 1) as usize;
                pad.swap(i, j);
            }
            pads.push(pad);
        }
        let inverse = pads
            .iter()
            .map(|pad| {
                let mut inv = [0u8; 256];
                for (x, &y) in pad.iter().enumerate() {
                    inv[usize::from(y)] = x as u8;
                }
                inv
            })
            .collect();
        Qpp { pads, inverse }
    }

    /// Pad `i`.
    pub fn pad(&self, i: usize) -> &[u8; 256] {
        &self.pads[i]
    }

    /// The inverse of pad `i`.
    pub fn inverse_pad(&self, i: usize) -> &[u8; 256] {
        &self.inverse[i]
    }

    /// How many pads there are.
    pub fn num_pads(&self) -> usize {
        self.pads.len()
    }

    /// Encrypts `data` in place, advancing `prng` (one per stream and direction).
    pub fn encrypt(&self, prng: &mut QppPrng, data: &mut [u8]) {
        for b in data {
            let (pad, mask) = prng.step(self.pads.len());
            *b = self.pads[pad][usize::from(*b ^ mask)];
        }
    }

    /// Decrypts `data` in place, advancing `prng`.
    pub fn decrypt(&self, prng: &mut QppPrng, data: &mut [u8]) {
        for b in data {
            let (pad, mask) = prng.step(self.pads.len());
            *b = self.inverse[pad][usize::from(*b)] ^ mask;
        }
    }
}

/// The per-stream, per-direction pad selector: xoshiro256** plus the current word.
#[derive(Clone, PartialEq, Eq)]
pub struct QppPrng {
    /// xoshiro256** state.
    pub s: [u64; 4],
    /// The current 64-bit word; its bytes mask 8 consecutive stream bytes.
    pub r: u64,
    /// Bytes of `r` used so far (0..8).
    pub count: u8,
}

impl core::fmt::Debug for QppPrng {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("QppPrng")
    }
}

impl QppPrng {
    /// kcptun's `CreatePRNG(key)`: both ends start every stream direction here.
    pub fn new(seed: &[u8]) -> QppPrng {
        let m = hmac_sha256(seed, PRNG_SELECTOR);
        let x = pbkdf2_sha1(&m, PRNG_SALT, 128);
        let s = core::array::from_fn(|k| u64::from_le_bytes(x[8 * k..8 * k + 8].try_into().expect("8 bytes")));
        let mut prng = QppPrng { s, r: 0, count: 0 };
        prng.r = prng.next_u64();
        prng
    }

    /// xoshiro256**.
    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// The pad index and mask for the next byte.
    #[inline]
    fn step(&mut self, num_pads: usize) -> (usize, u8) {
        let pad = usize::from(self.r as u16) % num_pads;
        let mask = (self.r >> (8 * u32::from(self.count))) as u8;
        self.count += 1;
        if self.count == 8 {
            self.r = self.next_u64();
            self.count = 0;
        }
        (pad, mask)
    }
}

/// kcptun's smallest recommended pad count.
pub const MINIMUM_PADS: i64 = 7;

/// Advice kcptun prints (in red) but starts anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QppWarning {
    /// The key is shorter than the seed length a full-strength pad set needs.
    ShortKey {
        /// The key's length, bytes.
        len: usize,
        /// The length recommended.
        recommended: usize,
    },
    /// Fewer pads than recommended.
    FewPads {
        /// The pad count given.
        count: i64,
        /// The smallest count recommended.
        recommended: i64,
    },
    /// An even count shares a factor with 8; a prime is recommended.
    EvenPads(i64),
}

impl core::fmt::Display for QppWarning {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            QppWarning::ShortKey { len, recommended } => {
                write!(f, "QPP key is {len} bytes; at least {recommended} are recommended")
            }
            QppWarning::FewPads { count, recommended } => {
                write!(f, "QPPCount {count} is below the recommended minimum of {recommended}")
            }
            QppWarning::EvenPads(n) => write!(f, "QPPCount {n} is even; a prime number is recommended"),
        }
    }
}

/// kcptun's startup checks for `-QPP` (docs/protocol.md §7): a count ≤ 0 is refused; a short key,
/// few pads or an even count only warn. Returns the count as the u16 QPP uses
/// (larger values wrap, as in kcptun).
pub fn check_parameters(
    key: &[u8],
    count: i64,
    generation: PadGeneration,
) -> Result<(u16, Vec<QppWarning>), crate::error::SettingsError> {
    if count <= 0 {
        return Err(crate::error::SettingsError::QppNoPads(count));
    }
    if count as u16 == 0 {
        return Err(crate::error::SettingsError::QppWrapsToZero(count));
    }
    let mut warnings = Vec::new();
    let min_seed = match generation {
        PadGeneration::Current => 211,
        PadGeneration::Legacy => 210,
    };
    if key.len() < min_seed {
        warnings.push(QppWarning::ShortKey { len: key.len(), recommended: min_seed });
    }
    if count < MINIMUM_PADS {
        warnings.push(QppWarning::FewPads { count, recommended: MINIMUM_PADS });
    }
    if count % 2 == 0 {
        warnings.push(QppWarning::EvenPads(count));
    }
    Ok((count as u16, warnings))
}
