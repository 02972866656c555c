//! Every `-crypt` method's open, with the key of the vectors' datagrams (the
//! seeds): any bytes are refused or opened without a panic,
//! and what opens seals back to the very same bytes.
#![no_main]

use std::sync::OnceLock;

use kcpgate_core::crypto::{Method, PacketCrypto};
use libfuzzer_sys::fuzz_target;

fn cryptos() -> &'static [PacketCrypto] {
    static ALL: OnceLock<Vec<PacketCrypto>> = OnceLock::new();
    ALL.get_or_init(|| Method::ALL.iter().map(|&m| PacketCrypto::from_passphrase(m, "it's a secrect")).collect())
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, wire)) = data.split_first() else { return };
    let crypto = &cryptos()[usize::from(pick) % Method::ALL.len()];
    let mut opened = wire.to_vec();
    let Ok(payload) = crypto.open(&mut opened) else { return };
    assert_eq!(payload.start, crypto.header_len());
    assert_eq!(payload.end + crypto.tail_len(), wire.len());
    let nonce = crypto.nonce(&opened).to_vec();
    let mut resealed = opened.clone();
    crypto.seal(&mut resealed, &nonce);
    assert_eq!(resealed, wire, "{:?}: open then seal changed the datagram", crypto.method());
});
