//! The whole datagram pipeline (crypto + FEC + KCP): replays of real kcp-go sessions,
//! and transfers through the simulator.

mod support;

use kcpgate_core::crypto::{Method, PacketCrypto};
use kcpgate_core::kcp::{Mode, Segments};
use kcpgate_core::listener::{DropReason, Listener, Outcome};
use kcpgate_core::wire::Datagram;
use serde_json::Value;
use support::netsim::{Link, LinkConfig, Transfer};
use support::pair::{Layers, Pair, TransferApp};
use support::vectors::{hex, load, u64_of};
use support::{crypto, session_config};

/// The KCP packet inside a sealed datagram of ours.
fn kcp_of(crypto: &PacketCrypto, datagram: &[u8]) -> Option<Vec<u8>> {
    let mut d = datagram.to_vec();
    let range = crypto.open(&mut d).expect("our own datagram opens");
    let plain = &d[range];
    Datagram::parse(plain).ok()?.kcp().map(|k| k.bytes().to_vec())
}

/// Every sequence number the packets acknowledge, explicitly (ACK) or through `una`.
fn acknowledged(kcp_packets: &[Vec<u8>]) -> std::collections::BTreeSet<u32> {
    let headers = kcp_packets.iter().flat_map(|p| Segments::new(p).map(|r| r.unwrap().0).collect::<Vec<_>>());
    let mut set = std::collections::BTreeSet::new();
    for h in headers {
        if h.cmd == 82 {
            set.insert(h.sn);
        }
        set.extend(0..h.una);
    }
    set
}

/// Feeds a recorded scenario's client datagrams into our listener, lets our server
/// echo where the real one spoke, and checks payload and ACKs.
fn replay(name: &str) {
    let v = load("kcp-session.json");
    let scenario: &Value = v["scenarios"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap();
    let method = Method::from_name(scenario["crypt"].as_str().unwrap()).unwrap();
    let passphrase = scenario.get("passphrase").and_then(Value::as_str).unwrap_or("unused");
    let ds = u64_of(&scenario["data_shards"]) as usize;
    let ps = u64_of(&scenario["parity_shards"]) as usize;
    let fec = (ds > 0).then_some((ds, ps));
    let settings = &scenario["settings"];
    let cfg = session_config(Mode::Fast3, 1024, 1024, fec);
    let crypto = crypto(method, passphrase);
    if let Some(key) = scenario.get("cipher_key_hex").and_then(Value::as_str) {
        assert_eq!(hex::encode(kcpgate_core::crypto::derive_key(passphrase)), key);
    }
    assert_eq!(cfg.kcp_config(&crypto).unwrap().mtu, u64_of(&settings["effective_kcp_mtu"]) as usize);

    let mut server: Listener<u32> = Listener::new(cfg, crypto.clone(), [1; 32]).unwrap();
    let expected: Vec<u8> = (0..u64_of(&v["payload"]["len"]) as usize).map(|i| i as u8).collect();
    let (mut received, mut ours, mut recorded) = (Vec::new(), Vec::new(), Vec::new());
    let mut acted = true;
    let mut buf = vec![0u8; 65536];
    for d in scenario["datagrams"].as_array().unwrap() {
        let now = (u64_of(&d["t_us"]) / 1000) as u32;
        if d["dir"] == "c2s" {
            let outcome = server.handle_datagram(now, &1, &mut hex(&d["wire_hex"]));
            assert!(
                matches!(outcome, Outcome::Created | Outcome::Delivered),
                "{name} datagram {}: {outcome:?}",
                d["index"]
            );
            if outcome == Outcome::Created {
                assert_eq!(server.accept(), Some(1));
            }
            acted = false;
            continue;
        }
        if let Some(k) = d.get("kcp_packet_hex") {
            recorded.push(hex(k));
        }
        if !acted {
            let session = server.session_mut(&1).expect("session exists");
            let start = received.len();
            loop {
                let n = session.read(&mut buf);
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&buf[..n]);
            }
            let echo = received[start..].to_vec();
            let mut at = 0;
            while at < echo.len() {
                at += session.write(now, &echo[at..]);
            }
            ours.extend(session.transmits().filter_map(|t| kcp_of(&crypto, t)));
            session.clear_transmits();
            acted = true;
        }
    }
    assert_eq!(received, expected, "{name}: the recorded client datagrams carry exactly the payload");
    // When the real server acknowledged depended on Go's scheduling, so compare what
    // ends up acknowledged, not in which datagram.
    assert_eq!(
        acknowledged(&ours),
        acknowledged(&recorded),
        "{name}: we acknowledge what the real server acknowledged"
    );
}

#[test]
fn aes_fec10_3_recording_replays_through_the_pipeline() {
    replay("aes_fec10_3");
}

#[test]
fn none_nofec_recording_replays_through_the_pipeline() {
    replay("none_nofec");
}

fn lossy(loss: f64) -> LinkConfig {
    let mut l = LinkConfig::ideal(20_000);
    l.loss = loss;
    l.jitter_us = 2_000;
    l
}

struct FecRun {
    recovered: u64,
    retransmitted: u64,
    p99_ms: u64,
    p50_ms: u64,
}

/// 1 KiB written every ms (about 1 MB/s) from client to server for 20 s, through
/// aes + optional FEC 10/3, fast3.
fn paced_run(loss: f64, fec: Option<(usize, usize)>, seed: u64) -> FecRun {
    let layers = Layers { method: Method::Aes256, fec, ..Layers::bare(Mode::Fast3) };
    let mut pair = Pair::with_links(&layers, Link::new(lossy(loss), seed), Link::new(lossy(loss), seed + 1), seed, 0);
    let total = 20 * 1024 * 1000;
    let mut app = TransferApp::new(Transfer::new(11, total, 12, 0).paced(1024, 1024), Transfer::new(12, 0, 11, total));
    assert!(pair.run_transfers(&mut app, 120_000), "paced transfer finished");
    assert_eq!(app.server.first_mismatch, None);
    let delays = Transfer::delivery_delays(&app.client, &app.server);
    FecRun {
        recovered: pair.server.snmp().fec_recovered,
        retransmitted: pair.client.snmp().retrans_segs,
        p99_ms: delays[delays.len() * 99 / 100],
        p50_ms: delays[delays.len() / 2],
    }
}

#[test]
fn fec_recovers_and_cuts_retransmissions_and_tail_delay() {
    for loss in [0.05, 0.10] {
        let with = paced_run(loss, Some((10, 3)), 21);
        let without = paced_run(loss, None, 21);
        println!(
            "loss {:.0}%: FEC 10/3 recovered {} retransmitted {} p50 {} ms p99 {} ms | no FEC retransmitted {} p50 {} ms p99 {} ms",
            loss * 100.0,
            with.recovered,
            with.retransmitted,
            with.p50_ms,
            with.p99_ms,
            without.retransmitted,
            without.p50_ms,
            without.p99_ms
        );
        assert!(with.recovered > 0, "FEC recovered nothing at {loss}");
        assert!(with.retransmitted < without.retransmitted, "FEC did not cut retransmissions at {loss}");
        assert!(with.p99_ms < without.p99_ms, "FEC did not cut the 99th-percentile delay at {loss}");
    }
}

/// Whole sessions both ways at once: each cipher + FEC 10/3, 4 MiB each way, 2 %
/// loss.
#[test]
fn full_stack_bulk_both_ways_is_byte_exact() {
    for method in [Method::Aes256, Method::Aes128Gcm, Method::Salsa20, Method::Null] {
        let layers = Layers { method, fec: Some((10, 3)), ..Layers::bare(Mode::Fast2) };
        let total = 4 << 20;
        let mut pair =
            Pair::with_links(&layers, Link::new(lossy(0.02), 1), Link::new(lossy(0.02), 2), 5, u32::MAX - 2_000);
        let mut app = TransferApp::both_ways(total);
        assert!(pair.run_transfers(&mut app, 120_000), "{}: finished", method.name());
        assert_eq!((app.client.first_mismatch, app.server.first_mismatch), (None, None), "{}", method.name());
        let s = pair.server.snmp();
        assert_eq!(s.in_csum_errors, 0);
        assert!(s.fec_recovered > 0, "{}: FEC recovered some of the 2 % loss", method.name());
        assert_eq!(pair.server.len(), 1, "exactly one session");
    }
}

/// A client's datagrams carrying `text` on its session to the server (address 2).
fn sent(client: &mut Listener<u32>, now: u32, text: &[u8]) -> Vec<Vec<u8>> {
    let session = client.session_mut(&2).expect("dialled");
    assert_eq!(session.write(now, text), text.len());
    session.flush(now);
    let out = session.transmits().map(<[u8]>::to_vec).collect();
    session.clear_transmits();
    out
}

/// What the server's session at `from` has received.
fn received(server: &mut Listener<u32>, from: u32) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let n = server.session_mut(&from).expect("a session").read(&mut buf);
    buf[..n].to_vec()
}

#[test]
fn a_key_change_opens_new_sessions_with_the_new_key_while_open_ones_keep_theirs() {
    let cfg = session_config(Mode::Fast3, 128, 128, None);
    let (old, new) = (crypto(Method::Aes256, "old key"), crypto(Method::Salsa20, "new key"));
    let mut server: Listener<u32> = Listener::new(cfg.clone(), old.clone(), [1; 32]).unwrap();
    let feed = |server: &mut Listener<u32>, from: u32, datagrams: Vec<Vec<u8>>| -> Vec<Outcome> {
        datagrams.into_iter().map(|mut d| server.handle_datagram(0, &from, &mut d)).collect()
    };
    let mut early = support::dialled(cfg.clone(), old.clone(), 3);
    assert_eq!(feed(&mut server, 10, sent(&mut early, 0, b"before")), [Outcome::Created]);
    assert_eq!(received(&mut server, 10), b"before");

    server.set_crypto(new.clone()).expect("the settings fit the new crypto");
    assert_eq!(feed(&mut server, 10, sent(&mut early, 10, b"after")), [Outcome::Delivered], "the open session");
    assert_eq!(received(&mut server, 10), b"after");
    let reply = server.session_mut(&10).unwrap();
    reply.write(10, b"reply");
    reply.flush(10);
    let replies: Vec<Vec<u8>> = reply.transmits().map(<[u8]>::to_vec).collect();
    for mut d in replies {
        assert_eq!(early.handle_datagram(10, &2, &mut d), Outcome::Delivered, "answered under the old key");
    }

    let mut late_old = support::dialled(cfg.clone(), old.clone(), 4);
    assert_eq!(feed(&mut server, 11, sent(&mut late_old, 20, b"x")), [Outcome::Dropped(DropReason::Checksum)]);
    let mut late_new = support::dialled(cfg.clone(), new.clone(), 5);
    assert_eq!(feed(&mut server, 12, sent(&mut late_new, 20, b"new")), [Outcome::Created]);
    assert_eq!(received(&mut server, 12), b"new");

    // Once the old session is gone its address opens sessions with the new key only.
    assert!(server.remove(server.id_at(&10).expect("a session")).is_some());
    let mut returning = support::dialled(cfg.clone(), old, 6);
    assert_eq!(feed(&mut server, 10, sent(&mut returning, 30, b"y")), [Outcome::Dropped(DropReason::Checksum)]);
    let mut returning = support::dialled(cfg, new, 7);
    assert_eq!(feed(&mut server, 10, sent(&mut returning, 30, b"z")), [Outcome::Created]);
}

#[test]
fn a_key_change_whose_header_leaves_no_room_for_the_mtu_is_refused_and_changes_nothing() {
    let mut cfg = session_config(Mode::Fast3, 128, 128, None);
    cfg.mtu = kcpgate_core::pipeline::min_mtu(Method::Null, false);
    let mut server: Listener<u32> = Listener::new(cfg, crypto(Method::Null, ""), [1; 32]).unwrap();
    assert!(server.set_crypto(crypto(Method::Aes256, "k")).is_err());
    let mut plain = vec![0u8; 24];
    plain[4] = 81; // a push at sn 0 of conv 0
    assert_eq!(server.handle_datagram(0, &1, &mut plain), Outcome::Created, "still the null crypto");
}
