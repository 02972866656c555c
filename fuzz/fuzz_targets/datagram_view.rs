//! The datagram view and the packet inspector: any bytes, under a method that
//! opens everything (`null`) and one that checks (`aes`), are described without a
//! panic, and the view's parts lie inside the datagram.
#![no_main]

use std::sync::OnceLock;

use kcpgate_core::crypto::{Method, PacketCrypto};
use kcpgate_core::inspect::inspect;
use kcpgate_core::wire::Datagram;
use libfuzzer_sys::fuzz_target;

fn cryptos() -> &'static [PacketCrypto; 2] {
    static BOTH: OnceLock<[PacketCrypto; 2]> = OnceLock::new();
    BOTH.get_or_init(|| {
        [PacketCrypto::from_passphrase(Method::Null, ""), PacketCrypto::from_passphrase(Method::Aes256, "test-key-123")]
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Datagram::parse(data) {
        let within = |part: &[u8]| {
            let (start, end) = (part.as_ptr() as usize, part.as_ptr() as usize + part.len());
            let (lo, hi) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
            assert!(start >= lo && end <= hi, "a part outside the datagram");
        };
        if let Some(k) = d.kcp() {
            within(k.bytes());
            let _ = k.first_header();
        }
        if let Some(shard) = d.fec_shard() {
            within(shard);
        }
        let _ = (d.announced(), d.may_open_session());
    }
    for crypto in cryptos() {
        let _ = inspect(crypto, data);
    }
});
