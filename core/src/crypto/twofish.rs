//! Twofish with a 256-bit key (what kcp-go's `twofish` method uses), table-driven.
//!
//! RustCrypto's `twofish` evaluates the key-dependent S-boxes and the MDS multiply
//! for every block, which costs about 11 µs per block; kcptun users of
//! `-crypt twofish` need the usual full-keying instead: the key schedule folds each
//! S-box and its MDS column into a 256-entry table, so `g` is four lookups. Only
//! encryption is needed (CFB). Checked against kcp-go's vectors in `crypt.json`.

use cipher::consts::{U1, U16};
use cipher::{
    Block, BlockCipherEncBackend, BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, InOut, ParBlocksSizeUser,
};

/// q0 and q1 are built from four 4-bit permutations each (Twofish paper §4.3.5).
const Q0_T: [[u8; 16]; 4] = [
    [0x8, 0x1, 0x7, 0xD, 0x6, 0xF, 0x3, 0x2, 0x0, 0xB, 0x5, 0x9, 0xE, 0xC, 0xA, 0x4],
    [0xE, 0xC, 0xB, 0x8, 0x1, 0x2, 0x3, 0x5, 0xF, 0x4, 0xA, 0x6, 0x7, 0x0, 0x9, 0xD],
    [0xB, 0xA, 0x5, 0xE, 0x6, 0xD, 0x9, 0x0, 0xC, 0x8, 0xF, 0x3, 0x2, 0x4, 0x7, 0x1],
    [0xD, 0x7, 0xF, 0x4, 0x1, 0x2, 0x6, 0xE, 0x9, 0xB, 0x3, 0x0, 0x8, 0x5, 0xC, 0xA],
];
const Q1_T: [[u8; 16]; 4] = [
    [0x2, 0x8, 0xB, 0xD, 0xF, 0x7, 0x6, 0xE, 0x3, 0x1, 0x9, 0x4, 0x0, 0xA, 0xC, 0x5],
    [0x1, 0xE, 0x2, 0xB, 0x4, 0xC, 0x3, 0x7, 0x6, 0xD, 0xA, 0x5, 0xF, 0x9, 0x0, 0x8],
    [0x4, 0xC, 0x7, 0x5, 0x1, 0x6, 0x9, 0xA, 0x0, 0xE, 0xD, 0x8, 0x2, 0xB, 0x3, 0xF],
    [0xB, 0x9, 0x5, 0x1, 0xC, 0x3, 0xD, 0xE, 0x6, 0x4, 0x7, 0xF, 0x2, 0x0, 0x8, 0xA],
];

const MDS: [[u8; 4]; 4] =
    [[0x01, 0xEF, 0x5B, 0x5B], [0x5B, 0xEF, 0xEF, 0x01], [0xEF, 0x5B, 0x01, 0xEF], [0xEF, 0x01, 0xEF, 0x5B]];
const RS: [[u8; 8]; 4] = [
    [0x01, 0xA4, 0x55, 0x87, 0x5A, 0x58, 0xDB, 0x9E],
    [0xA4, 0x56, 0x82, 0xF3, 0x1E, 0xC6, 0x68, 0xE5],
    [0x02, 0xA1, 0xFC, 0xC1, 0x47, 0xAE, 0x3D, 0x19],
    [0xA4, 0x55, 0x87, 0x5A, 0x58, 0xDB, 0x9E, 0x03],
];
const MDS_POLY: u16 = 0x169;
const RS_POLY: u16 = 0x14D;
const RHO: u32 = 0x0101_0101;

fn q(t: &[[u8; 16]; 4], x: u8) -> u8 {
    let ror4 = |v: u8| ((v >> 1) | (v << 3)) & 0xF;
    let (a0, b0) = (x >> 4, x & 0xF);
    let (a1, b1) = (a0 ^ b0, a0 ^ ror4(b0) ^ ((a0 << 3) & 0xF));
    let (a2, b2) = (t[0][usize::from(a1)], t[1][usize::from(b1)]);
    let (a3, b3) = (a2 ^ b2, a2 ^ ror4(b2) ^ ((a2 << 3) & 0xF));
    let (a4, b4) = (t[2][usize::from(a3)], t[3][usize::from(b3)]);
    (b4 << 4) | a4
}

fn gf_mul(mut a: u8, mut b: u8, poly: u16) -> u8 {
    let mut r = 0u16;
    let mut a16 = u16::from(a);
    while b != 0 {
        if b & 1 != 0 {
            r ^= a16;
        }
        a16 <<= 1;
        if a16 & 0x100 != 0 {
            a16 ^= poly;
        }
        b >>= 1;
    }
    a = r as u8;
    a
}

/// The q-permutation chain of byte position `i` in `h` for a 4-word list `l`.
fn chain(q0: &[u8; 256], q1: &[u8; 256], i: usize, x: u8, l: &[[u8; 4]; 4]) -> u8 {
    let (q0, q1) = (|v: u8| q0[usize::from(v)], |v: u8| q1[usize::from(v)]);
    match i {
        0 => q1(q0(q0(q1(q1(x) ^ l[3][0]) ^ l[2][0]) ^ l[1][0]) ^ l[0][0]),
        1 => q0(q0(q1(q1(q0(x) ^ l[3][1]) ^ l[2][1]) ^ l[1][1]) ^ l[0][1]),
        2 => q1(q1(q0(q0(q0(x) ^ l[3][2]) ^ l[2][2]) ^ l[1][2]) ^ l[0][2]),
        _ => q0(q1(q1(q0(q1(x) ^ l[3][3]) ^ l[2][3]) ^ l[1][3]) ^ l[0][3]),
    }
}

/// MDS column `i` times `y`, as a little-endian word.
fn mds_column(i: usize, y: u8) -> u32 {
    (0..4).fold(0u32, |w, row| w | u32::from(gf_mul(MDS[row][i], y, MDS_POLY)) << (8 * row))
}

fn h(q0: &[u8; 256], q1: &[u8; 256], x: u32, l: &[[u8; 4]; 4]) -> u32 {
    let b = x.to_le_bytes();
    (0..4).fold(0, |z, i| z ^ mds_column(i, chain(q0, q1, i, b[i], l)))
}

/// Twofish-256, encryption only. See the module docs.
#[derive(Clone)]
pub struct Twofish256 {
    k: [u32; 40],
    /// `g`'s four key-dependent S-boxes, each already multiplied by its MDS column.
    s: [[u32; 256]; 4],
}

impl Twofish256 {
    /// Twofish with a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Twofish256 {
        let q0: [u8; 256] = core::array::from_fn(|x| q(&Q0_T, x as u8));
        let q1: [u8; 256] = core::array::from_fn(|x| q(&Q1_T, x as u8));
        let word = |i: usize| key[4 * i..4 * i + 4].try_into().expect("4 bytes");
        let even: [[u8; 4]; 4] = core::array::from_fn(|i| word(2 * i));
        let odd: [[u8; 4]; 4] = core::array::from_fn(|i| word(2 * i + 1));
        // S_i = RS · key[8i..8i+8]; the list for g is (S_3, S_2, S_1, S_0).
        let rs = |i: usize| -> [u8; 4] {
            core::array::from_fn(|row| (0..8).fold(0u8, |acc, c| acc ^ gf_mul(RS[row][c], key[8 * i + c], RS_POLY)))
        };
        let s_list: [[u8; 4]; 4] = core::array::from_fn(|j| rs(3 - j));
        let mut k = [0u32; 40];
        for i in 0..20 {
            let a = h(&q0, &q1, (2 * i as u32).wrapping_mul(RHO), &even);
            let b = h(&q0, &q1, (2 * i as u32 + 1).wrapping_mul(RHO), &odd).rotate_left(8);
            k[2 * i] = a.wrapping_add(b);
            k[2 * i + 1] = a.wrapping_add(b.wrapping_mul(2)).rotate_left(9);
        }
        let s = core::array::from_fn(|i| core::array::from_fn(|x| mds_column(i, chain(&q0, &q1, i, x as u8, &s_list))));
        Twofish256 { k, s }
    }

    #[inline]
    fn g(&self, x: u32) -> u32 {
        let b = x.to_le_bytes();
        self.s[0][usize::from(b[0])]
            ^ self.s[1][usize::from(b[1])]
            ^ self.s[2][usize::from(b[2])]
            ^ self.s[3][usize::from(b[3])]
    }
}

impl BlockSizeUser for Twofish256 {
    type BlockSize = U16;
}

impl ParBlocksSizeUser for Twofish256 {
    type ParBlocksSize = U1;
}

impl BlockCipherEncrypt for Twofish256 {
    #[inline]
    fn encrypt_with_backend(&self, f: impl BlockCipherEncClosure<BlockSize = Self::BlockSize>) {
        f.call(self)
    }
}

impl BlockCipherEncBackend for Twofish256 {
    #[inline]
    fn encrypt_block(&self, mut block: InOut<'_, '_, Block<Self>>) {
        let input = block.get_in();
        let mut r: [u32; 4] = core::array::from_fn(|i| {
            u32::from_le_bytes(input[4 * i..4 * i + 4].try_into().expect("4 bytes")) ^ self.k[i]
        });
        for round in 0..16 {
            let t0 = self.g(r[0]);
            let t1 = self.g(r[1].rotate_left(8));
            let f0 = t0.wrapping_add(t1).wrapping_add(self.k[2 * round + 8]);
            let f1 = t0.wrapping_add(t1.wrapping_mul(2)).wrapping_add(self.k[2 * round + 9]);
            let r2 = (r[2] ^ f0).rotate_right(1);
            let r3 = r[3].rotate_left(1) ^ f1;
            r = [r2, r3, r[0], r[1]];
        }
        let out = block.get_out();
        for i in 0..4 {
            out[4 * i..4 * i + 4].copy_from_slice(&(r[(i + 2) % 4] ^ self.k[i + 4]).to_le_bytes());
        }
    }
}
