//! Packet crypto against `core/tests/vectors/crypt.json`: key derivation, and every
//! kcptun `-crypt` method in both directions.

mod support;

use kcpgate_core::crypto::{derive_key, Method, OpenError, PacketCrypto, CFB_IV};
use support::vectors::{hex, load};

#[test]
fn every_cipher_encrypts_and_decrypts_like_kcp_go() {
    let v = load("crypt.json");
    assert_eq!(hex(&v["cfb_initial_vector_hex"]), CFB_IV);
    let mut checked = 0;
    for p in v["passphrases"].as_array().unwrap() {
        let key = derive_key(p["passphrase"].as_str().unwrap());
        assert_eq!(key.to_vec(), hex(&p["derived_key_hex"]), "PBKDF2 key of {}", p["passphrase"]);
        for c in p["ciphers"].as_array().unwrap() {
            let name = c["name"].as_str().unwrap();
            let method = Method::from_name(name).unwrap_or_else(|| panic!("unknown method {name}"));
            let crypto = PacketCrypto::new(method, &key);
            for pkt in c["packets"].as_array().unwrap() {
                let payload = hex(&pkt["payload_hex"]);
                let plaintext = hex(&pkt["plaintext_packet_hex"]);
                let ciphertext = hex(&pkt["ciphertext_hex"]);
                let nonce = pkt.get("nonce_hex").map(hex).unwrap_or_default();
                let what = format!("{name} packet {} with key {}", pkt["index"], p["passphrase"]);

                // Sender: header room + payload + tail room → exact wire bytes.
                let mut packet = vec![0u8; crypto.header_len()];
                packet.extend_from_slice(&payload);
                packet.resize(packet.len() + crypto.tail_len(), 0);
                crypto.seal(&mut packet, &nonce);
                assert_eq!(hex::encode(&packet), hex::encode(&ciphertext), "seal: {what}");

                // Receiver: wire bytes → the payload, and the plaintext packet in place.
                let mut wire = ciphertext.clone();
                let range = crypto.open(&mut wire).unwrap_or_else(|e| panic!("open: {what}: {e}"));
                assert_eq!(wire[range], payload[..], "open: {what}");
                if method != Method::Aes128Gcm {
                    assert_eq!(wire, plaintext, "decrypted packet: {what}");
                }

                // CFB decryption is its own function: check it alone.
                if let Some(expected) = pkt.get("decrypt_applied_to_plaintext_packet_hex") {
                    let mut buf = plaintext.clone();
                    crypto.decrypt(&mut buf);
                    assert_eq!(hex::encode(&buf), hex::encode(hex(expected)), "raw decrypt: {what}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 15 * 3);
}

#[test]
fn xor_pad_matches_the_recorded_table() {
    let v = load("crypt.json");
    for p in v["passphrases"].as_array().unwrap() {
        let key = derive_key(p["passphrase"].as_str().unwrap());
        let c = p["ciphers"].as_array().unwrap().iter().find(|c| c["name"] == "xor").unwrap();
        let pad = hex(&c["xor_table_hex"]);
        let mut zeros = vec![0u8; pad.len()];
        PacketCrypto::new(Method::Xor, &key).encrypt(&mut zeros);
        assert_eq!(zeros, pad);
    }
}

#[test]
fn wrong_key_fails_the_checksum_for_every_method() {
    let right = derive_key("right key");
    let wrong = derive_key("wrong key");
    for method in Method::ALL {
        if matches!(method, Method::None | Method::Null) {
            continue; // no key involved
        }
        let (a, b) = (PacketCrypto::new(method, &right), PacketCrypto::new(method, &wrong));
        let mut packet = vec![0u8; a.header_len() + 100 + a.tail_len()];
        packet[a.header_len()..a.header_len() + 100].fill(7);
        a.seal(&mut packet, &vec![1u8; a.nonce_len()]);
        assert_eq!(b.open(&mut packet.clone()), Err(OpenError::Checksum), "{}", method.name());
        assert!(a.open(&mut packet).is_ok(), "{}", method.name());
    }
}
