//! KCP against the golden recordings of real kcp-go sessions
//! (`core/tests/vectors/kcp-session.json` and `kcptun-capture.json`).

mod support;

use kcpgate_core::kcp::{Config, Header, Kcp, Mode, Segments, HEADER_LEN};
use serde_json::Value;
use support::vectors::{hex, load, u64_of};

fn cmd_value(name: &str) -> u8 {
    match name {
        "PUSH" => 81,
        "ACK" => 82,
        "WASK" => 83,
        "WINS" => 84,
        other => panic!("unknown command name {other} in vectors"),
    }
}

/// Every recorded segment decodes to the recorded fields and re-encodes to the
/// recorded bytes.
fn check_segments(file: &str) -> usize {
    let v = load(file);
    let datagram_lists: Vec<&Value> = match v.get("scenarios") {
        Some(scenarios) => scenarios.as_array().unwrap().iter().map(|s| &s["datagrams"]).collect(),
        None => vec![&v["datagrams"]],
    };
    let mut checked = 0;
    for datagrams in datagram_lists {
        for d in datagrams.as_array().unwrap() {
            let Some(packet) = d.get("kcp_packet_hex") else { continue };
            let packet = hex(packet);
            let recorded = d["segments"].as_array().unwrap();
            let parsed: Vec<_> = Segments::new(&packet).map(|r| r.expect("recorded segment parses")).collect();
            assert_eq!(parsed.len(), recorded.len(), "datagram {}", d["index"]);
            for ((h, payload), r) in parsed.iter().zip(recorded) {
                let expect = Header {
                    conv: u64_of(&r["conv"]) as u32,
                    cmd: cmd_value(r["cmd"].as_str().unwrap()),
                    frg: u64_of(&r["frg"]) as u8,
                    wnd: u64_of(&r["wnd"]) as u16,
                    ts: u64_of(&r["ts"]) as u32,
                    sn: u64_of(&r["sn"]) as u32,
                    una: u64_of(&r["una"]) as u32,
                    len: u64_of(&r["len"]) as u32,
                };
                assert_eq!(*h, expect, "datagram {}", d["index"]);
                let data = r.get("data_hex").map(hex).unwrap_or_default();
                assert_eq!(*payload, &data[..]);
                let at = u64_of(&r["offset_in_kcp_packet"]) as usize;
                let mut encoded = vec![0u8; HEADER_LEN + data.len()];
                h.encode(&mut encoded);
                encoded[HEADER_LEN..].copy_from_slice(payload);
                assert_eq!(encoded, packet[at..at + encoded.len()], "re-encoding datagram {}", d["index"]);
                checked += 1;
            }
        }
    }
    checked
}

#[test]
fn every_recorded_segment_reencodes_byte_exact() {
    let session = check_segments("kcp-session.json");
    let capture = check_segments("kcptun-capture.json");
    assert!(session > 0 && capture > 0, "{session} session and {capture} capture segments checked");
}

fn acked_sns(packets: &[Vec<u8>]) -> Vec<u32> {
    packets
        .iter()
        .flat_map(|p| Segments::new(p).map(|r| r.unwrap().0).collect::<Vec<_>>())
        .filter(|h| h.cmd == 82)
        .map(|h| h.sn)
        .collect()
}

/// Replays the client side of `null_nofec` into our server: each recorded client
/// datagram arrives at its recorded time, and wherever the real server sent
/// something, ours gets the same chance (read everything, echo it, flush).
#[test]
fn null_nofec_client_datagrams_yield_the_payload_and_the_same_acks() {
    let v = load("kcp-session.json");
    let scenario = v["scenarios"].as_array().unwrap().iter().find(|s| s["name"] == "null_nofec").unwrap();
    let settings = &scenario["settings"];
    let win = settings["server_window_snd_rcv"].as_array().unwrap();
    let mut cfg = Config {
        mtu: u64_of(&settings["effective_kcp_mtu"]) as usize,
        snd_wnd: u64_of(&win[0]) as u32,
        rcv_wnd: u64_of(&win[1]) as u32,
        stream: true,
        ..Config::default()
    };
    Mode::Fast3.apply(&mut cfg);
    assert_eq!(settings["nodelay"], serde_json::json!([1, 10, 2, 1]), "fast3 as recorded");
    let mut server = Kcp::new(u64_of(&scenario["conv"]) as u32, cfg);
    assert_eq!(server.mss(), u64_of(&settings["effective_kcp_mss"]) as usize);

    let payload_len = u64_of(&v["payload"]["len"]) as usize;
    let expected: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
    let mut received = Vec::new();
    let mut ours: Vec<Vec<u8>> = Vec::new();
    let mut recorded: Vec<Vec<u8>> = Vec::new();
    let mut acted = true;
    let mut buf = vec![0u8; 65536];
    for d in scenario["datagrams"].as_array().unwrap() {
        let now = (u64_of(&d["t_us"]) / 1000) as u32;
        let wire = hex(&d["wire_hex"]);
        if d["dir"] == "c2s" {
            server.input(now, &wire, true).expect("recorded datagram is accepted");
            acted = false;
        } else {
            recorded.push(wire);
            if !acted {
                let start = received.len();
                loop {
                    let n = server.read(&mut buf);
                    if n == 0 {
                        break;
                    }
                    received.extend_from_slice(&buf[..n]);
                }
                for piece in received[start..].to_vec().chunks(server.mss()) {
                    server.send(piece).unwrap();
                }
                server.flush(now);
                let q = server.transmits();
                ours.extend(q.iter().map(<[u8]>::to_vec));
                q.clear();
                acted = true;
            }
        }
    }
    assert_eq!(received, expected, "the recorded client datagrams carry exactly the payload");
    let (ours_acked, recorded_acked) = (acked_sns(&ours), acked_sns(&recorded));
    assert!(!recorded_acked.is_empty());
    assert_eq!(ours_acked, recorded_acked, "our ACKs acknowledge the sequence numbers the real server acknowledged");
    // Our echo carries the payload back in order, as the real server's did.
    let echoed: Vec<u8> = ours
        .iter()
        .flat_map(|p| {
            Segments::new(p)
                .map(|r| r.unwrap())
                .filter(|(h, _)| h.cmd == 81)
                .flat_map(|(_, d)| d.to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(echoed, expected);
}
