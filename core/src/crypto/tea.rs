//! TEA and XTEA as kcp-go uses them: big-endian words (golang.org/x/crypto), and TEA
//! with 16 rounds (8 cycles). RustCrypto's `xtea` reads little-endian words, so
//! neither matches the wire; both are small enough to carry here. Only encryption
//! is needed: CFB runs the block cipher forwards in both directions.

use cipher::consts::{U1, U8};
use cipher::{
    Block, BlockCipherEncBackend, BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, InOut, ParBlocksSizeUser,
};

const DELTA: u32 = 0x9E37_79B9;

fn words(bytes: &[u8]) -> [u32; 4] {
    core::array::from_fn(|i| u32::from_be_bytes(bytes[4 * i..4 * i + 4].try_into().expect("16-byte key")))
}

fn load(block: &Block<Tea16>) -> (u32, u32) {
    (u32::from_be_bytes(block[0..4].try_into().unwrap()), u32::from_be_bytes(block[4..8].try_into().unwrap()))
}

fn store(block: &mut Block<Tea16>, v0: u32, v1: u32) {
    block[0..4].copy_from_slice(&v0.to_be_bytes());
    block[4..8].copy_from_slice(&v1.to_be_bytes());
}

/// TEA with 16 rounds, the variant kcp-go builds with `tea.NewCipherWithRounds(key, 16)`.
#[derive(Clone)]
pub struct Tea16 {
    k: [u32; 4],
}

impl Tea16 {
    /// A TEA cipher with a 16-byte key.
    pub fn new(key: &[u8; 16]) -> Tea16 {
        Tea16 { k: words(key) }
    }
}

/// XTEA with 64 rounds and big-endian words, as golang.org/x/crypto/xtea.
#[derive(Clone)]
pub struct XteaBe {
    k: [u32; 4],
}

impl XteaBe {
    /// An XTEA cipher with a 16-byte key.
    pub fn new(key: &[u8; 16]) -> XteaBe {
        XteaBe { k: words(key) }
    }
}

macro_rules! encrypt_only_block_cipher {
    ($ty:ident, |$k:ident, $v0:ident, $v1:ident| $rounds:block) => {
        impl BlockSizeUser for $ty {
            type BlockSize = U8;
        }

        impl ParBlocksSizeUser for $ty {
            type ParBlocksSize = U1;
        }

        impl BlockCipherEncrypt for $ty {
            #[inline]
            fn encrypt_with_backend(&self, f: impl BlockCipherEncClosure<BlockSize = Self::BlockSize>) {
                f.call(self)
            }
        }

        impl BlockCipherEncBackend for $ty {
            #[inline]
            fn encrypt_block(&self, mut block: InOut<'_, '_, Block<Self>>) {
                let $k = &self.k;
                let (mut $v0, mut $v1) = load(block.get_in());
                $rounds
                store(block.get_out(), $v0, $v1);
            }
        }
    };
}

encrypt_only_block_cipher!(Tea16, |k, v0, v1| {
    let mut sum = 0u32;
    for _ in 0..8 {
        sum = sum.wrapping_add(DELTA);
        v0 = v0.wrapping_add((v1 << 4).wrapping_add(k[0]) ^ v1.wrapping_add(sum) ^ (v1 >> 5).wrapping_add(k[1]));
        v1 = v1.wrapping_add((v0 << 4).wrapping_add(k[2]) ^ v0.wrapping_add(sum) ^ (v0 >> 5).wrapping_add(k[3]));
    }
});

encrypt_only_block_cipher!(XteaBe, |k, v0, v1| {
    let mut sum = 0u32;
    for _ in 0..32 {
        v0 = v0.wrapping_add((((v1 << 4) ^ (v1 >> 5)).wrapping_add(v1)) ^ sum.wrapping_add(k[(sum & 3) as usize]));
        sum = sum.wrapping_add(DELTA);
        v1 = v1
            .wrapping_add((((v0 << 4) ^ (v0 >> 5)).wrapping_add(v0)) ^ sum.wrapping_add(k[((sum >> 11) & 3) as usize]));
    }
});
