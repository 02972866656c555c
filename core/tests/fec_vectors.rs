//! FEC against `core/tests/vectors/fec.json`: encoder output byte for byte, and the
//! decoder's recoveries step by step.

mod support;

use std::collections::HashMap;

use kcpgate_core::fec::{FecDecoder, FecEncoder, Shards, DATA_HEADER_LEN};
use serde_json::Value;
use support::vectors::{hex, load, u64_of};

fn shards_of(case: &Value) -> Shards {
    Shards::new(u64_of(&case["data_shards"]) as usize, u64_of(&case["parity_shards"]) as usize).unwrap()
}

/// Runs an encoder case; returns every emitted packet by seqid.
fn run_encoder(case: &Value) -> HashMap<u64, Vec<u8>> {
    let mut enc = FecEncoder::new(shards_of(case));
    let mut now = 1_000u32;
    let mut by_seqid = HashMap::new();
    for input in case["inputs"].as_array().unwrap() {
        now += input.get("sleep_before_ms").map_or(1, u64_of) as u32;
        let payload = hex(&input["payload_hex"]);
        let mut shard = vec![0u8; DATA_HEADER_LEN];
        shard.extend_from_slice(&payload);
        let parity = enc.encode(now, &mut shard);
        let mut produced = vec![shard];
        for i in 0..parity {
            let mut out = vec![0u8; enc.parity_len()];
            let n = enc.write_parity(i, &mut out);
            out.truncate(n);
            produced.push(out);
        }
        let emitted = input["emitted"].as_array().unwrap();
        assert_eq!(produced.len(), emitted.len(), "{} input {}", case["name"], input["index"]);
        for (ours, e) in produced.into_iter().zip(emitted) {
            assert_eq!(hex::encode(&ours), e["packet_hex"].as_str().unwrap(), "{} seqid {}", case["name"], e["seqid"]);
            by_seqid.insert(u64_of(&e["seqid"]), ours);
        }
    }
    by_seqid
}

#[test]
fn encoder_output_is_byte_exact() {
    let v = load("fec.json");
    for case in v["encoder_cases"].as_array().unwrap() {
        run_encoder(case);
    }
}

#[test]
fn decoder_recovers_exactly_what_kcp_go_recovers() {
    let v = load("fec.json");
    let encoders: HashMap<String, &Value> =
        v["encoder_cases"].as_array().unwrap().iter().map(|c| (c["name"].as_str().unwrap().to_string(), c)).collect();
    for case in v["decoder_cases"].as_array().unwrap() {
        let source = encoders[case["source_encoder_case"].as_str().unwrap()];
        let packets = run_encoder(source);
        let mut dec = FecDecoder::new(shards_of(source));
        let mut total = 0;
        for step in case["steps"].as_array().unwrap() {
            let mut got = Vec::new();
            dec.decode(&packets[&u64_of(&step["fed_seqid"])], |kcp| got.push(hex::encode(kcp)));
            let want: Vec<String> = step["recovered"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["kcp_packet_hex"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(got, want, "{} after seqid {}", case["name"], step["fed_seqid"]);
            total += got.len();
        }
        assert_eq!(total as u64, u64_of(&case["total_recovered"]), "{}", case["name"]);
        assert_eq!(dec.stats.recovered, total as u64);
    }
}
