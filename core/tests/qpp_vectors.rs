//! QPP against `core/tests/vectors/qpp.json`: pads, PRNG state and ciphertexts.

mod support;

use kcpgate_core::qpp::{seed_chunks, PadGeneration, Qpp, QppPrng};
use serde_json::Value;
use support::vectors::{hex, load, u64_of};

fn state_matches(prng: &QppPrng, v: &Value) -> bool {
    let s: Vec<String> = prng.s.iter().map(|w| format!("{w:016x}")).collect();
    let want: Vec<String> =
        v["xoshiro256_state_u64_hex"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
    s == want
        && format!("{:016x}", prng.r) == v["seed64_hex"].as_str().unwrap()
        && u64::from(prng.count) == u64_of(&v["count"])
}

#[test]
fn pads_prng_and_ciphertexts_match_qpp() {
    let v = load("qpp.json");
    for case in v["cases"].as_array().unwrap() {
        let key = hex(&case["key_hex"]);
        let num_pads = u64_of(&case["num_pads"]) as u16;
        let chunks: Vec<String> = seed_chunks(&key, PadGeneration::Current).iter().map(hex::encode).collect();
        let want: Vec<String> =
            case["seed_chunks_hex"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
        assert_eq!(chunks, want, "seed chunks for {}", case["key"]);

        let qpp = Qpp::new(&key, num_pads, PadGeneration::Current);
        let pads: Vec<u8> = (0..qpp.num_pads()).flat_map(|i| *qpp.pad(i)).collect();
        assert_eq!(hex::encode(&pads), case["pads_hex"].as_str().unwrap(), "pads for {}", case["key"]);
        let inverse: Vec<u8> = (0..qpp.num_pads()).flat_map(|i| *qpp.inverse_pad(i)).collect();
        assert_eq!(hex::encode(&inverse), case["reverse_pads_hex"].as_str().unwrap());

        assert!(state_matches(&QppPrng::new(&key), &case["prng_initial_state"]), "initial PRNG state");
        for dir in case["directions"].as_array().unwrap() {
            let (mut enc, mut dec) = (QppPrng::new(&key), QppPrng::new(&key));
            let mut all_plain = Vec::new();
            for m in dir["messages"].as_array().unwrap() {
                let plain = hex(&m["plaintext_hex"]);
                let mut data = plain.clone();
                qpp.encrypt(&mut enc, &mut data);
                assert_eq!(
                    hex::encode(&data),
                    m["ciphertext_hex"].as_str().unwrap(),
                    "{} message {}",
                    dir["direction"],
                    m["index"]
                );
                assert!(
                    state_matches(&enc, &m["prng_state_after"]),
                    "PRNG state after {} message {}",
                    dir["direction"],
                    m["index"]
                );
                let mut fresh = plain.clone();
                qpp.encrypt(&mut QppPrng::new(&key), &mut fresh);
                assert_eq!(hex::encode(&fresh), m["ciphertext_if_encrypted_with_fresh_prng_hex"].as_str().unwrap());
                qpp.decrypt(&mut dec, &mut data);
                assert_eq!(data, plain, "sequential decryption");
                all_plain.extend_from_slice(&plain);
            }
            qpp.encrypt(&mut QppPrng::new(&key), &mut all_plain);
            assert_eq!(hex::encode(&all_plain), dir["ciphertext_of_all_messages_in_one_call_hex"].as_str().unwrap());
        }
        if let Some(wire) = case.get("kcptun_stream_wire") {
            for (field, dir) in [("client_to_server_wire_hex", "c2s"), ("server_to_client_wire_hex", "s2c")] {
                let d = case["directions"].as_array().unwrap().iter().find(|d| d["direction"] == dir).unwrap();
                let mut plain: Vec<u8> =
                    d["messages"].as_array().unwrap().iter().flat_map(|m| hex(&m["plaintext_hex"])).collect();
                qpp.encrypt(&mut QppPrng::new(&key), &mut plain);
                assert_eq!(hex::encode(&plain), wire[field].as_str().unwrap(), "{field}");
            }
        }
    }
}
