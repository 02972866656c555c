//! The stream layers (snappy, smux, QPP) over the datagram pipeline: the real
//! kcptun capture decoded end to end, and many streams through the simulator.

mod support;

use kcpgate_core::crypto::Method;
use kcpgate_core::kcp::Mode;
use kcpgate_core::listener::Listener;
use kcpgate_core::pipeline::Connection;
use kcpgate_core::smux::{self, Read, Role};
use kcpgate_core::stack::{StackConfig, StreamStack};
use support::vectors::{hex, load, u64_of};
use support::{crypto, session_config};

fn kcptun_stack(compression: bool, version: smux::Version) -> StackConfig {
    StackConfig { compression, smux: smux::MuxConfig { version, ..smux::MuxConfig::kcptun() }, qpp: None }
}

/// Reads everything a stream has; true once it reached EOF.
fn drain_stream(stack: &mut StreamStack, sid: u32, into: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stack.stream_read(sid, &mut buf).unwrap() {
            Read::Data(n) => into.extend_from_slice(&buf[..n]),
            Read::Eof => return true,
            Read::WouldBlock => return false,
        }
    }
}

/// Both directions of the recorded kcptun session, each fed to a receiver of ours
/// (a listener-side server for c2s, a client for s2c), decode to exactly the
/// application bytes the real tunnel carried.
#[test]
fn kcptun_capture_decodes_end_to_end_both_ways() {
    let v = load("kcptun-capture.json");
    let key = v["key"].as_str().unwrap();
    assert_eq!(hex::encode(kcpgate_core::crypto::derive_key(key)), v["derived_key_hex"].as_str().unwrap());
    let c = crypto(Method::from_name(v["crypt"].as_str().unwrap()).unwrap(), key);
    let conv = u64_of(&v["summary"]["conv"]) as u32;
    let fec = Some((10, 3));

    let mut listener: Listener<u32> =
        Listener::new(session_config(Mode::Fast3, 1024, 1024, fec), c.clone(), [1; 32]).unwrap();
    let mut server = StreamStack::new(Role::Server, kcptun_stack(true, smux::Version::Detect), 0);
    let mut client_conn =
        Connection::new(conv, &session_config(Mode::Fast3, 128, 512, fec), c.clone(), [2; 32]).unwrap();
    let mut client = StreamStack::new(Role::Client, kcptun_stack(true, smux::Version::V2), 0);
    let client_sid = client.open_stream().unwrap();

    let (mut c2s_app, mut s2c_app) = (Vec::new(), Vec::new());
    let (mut server_sid, mut c2s_eof, mut s2c_eof) = (None, false, false);
    for d in v["datagrams"].as_array().unwrap() {
        let now = (u64_of(&d["t_us"]) / 1000) as u32;
        let mut wire = hex(&d["wire_hex"]);
        if d["dir"] == "c2s" {
            listener.handle_datagram(now, &1, &mut wire);
            let conn = listener.session_mut(&1).expect("the capture's first datagram opens the session");
            assert_eq!(conn.conv(), conv);
            server.pump(now, conn).unwrap();
            server_sid = server_sid.or_else(|| server.accept());
            if let Some(sid) = server_sid {
                c2s_eof |= drain_stream(&mut server, sid, &mut c2s_app);
            }
            server.pump(now, conn).unwrap();
            conn.clear_transmits();
        } else {
            client_conn.handle_datagram(now, &mut wire).unwrap();
            client.pump(now, &mut client_conn).unwrap();
            s2c_eof |= drain_stream(&mut client, client_sid, &mut s2c_app);
            client.pump(now, &mut client_conn).unwrap();
            client_conn.clear_transmits();
        }
    }
    assert_eq!(server.mux().version(), Some(2), "the server detected smux v2");
    assert_eq!(
        hex::encode(&c2s_app),
        v["app_client_to_server"]["hex"].as_str().unwrap(),
        "client → server application bytes"
    );
    assert_eq!(
        hex::encode(&s2c_app),
        v["app_server_to_client"]["hex"].as_str().unwrap(),
        "server → client application bytes"
    );
    assert!(c2s_eof && s2c_eof, "both FINs arrived");
}

// ---------------------------------------------------------------- many streams

use kcpgate_core::session::StreamEnd;
use std::cell::Cell;
use support::counting::{Counting, ALLOCATIONS};
use support::netsim::LinkConfig;
use support::pair::{Layers, Pair, PatternApp, Side};

/// aes, fast3, this smux version and compression, and FEC.
fn layers(smux: smux::Version, compression: bool, fec: Option<(usize, usize)>) -> Layers {
    Layers { smux, compression, fec, ..Layers::kcptun() }
}

/// The client opens `streams` streams once it has the session, each carrying
/// `stream_bytes` both ways.
fn streams_app(streams: usize, stream_bytes: fn(u32) -> u64) -> PatternApp {
    let mut app = PatternApp::new(stream_bytes);
    app.open_on_session = [streams, 0];
    app
}

fn check_streams(app: &PatternApp, what: &str, stream_bytes: u64) {
    assert!(app.session_closed.is_empty(), "{what}: {:?}", app.session_closed);
    for ((side, sid), flow) in &app.flows {
        // A stream whose both directions ended is closed as finished, nothing else.
        let failed = flow.closed.filter(|why| *why != StreamEnd::Finished);
        let got = (flow.received, flow.first_mismatch, failed);
        assert_eq!(got, (stream_bytes, None, None), "{what}: {side:?} stream {sid}");
    }
}

fn many_streams(version: smux::Version, compression: bool) {
    const STREAM_BYTES: u64 = 1 << 20;
    let mut link = LinkConfig::ideal(20_000);
    link.loss = 0.05;
    let mut pair = Pair::new(&layers(version, compression, Some((10, 3))), link, 1);
    let mut app = streams_app(64, |_| STREAM_BYTES);
    let finished = pair.run(&mut app, 900_000, |_, app| app.all_done(64));
    let what = format!("smux {version:?}, compression {compression}");
    assert!(finished, "{what}: not finished after {} simulated ms", pair.elapsed_ms());
    check_streams(&app, &what, STREAM_BYTES);
    println!("{what}: 64 streams × 1 MiB each way in {} simulated ms", pair.elapsed_ms());
}

#[test]
fn many_streams_v1_compressed() {
    many_streams(smux::Version::V1, true);
}

#[test]
fn many_streams_v1_plain() {
    many_streams(smux::Version::V1, false);
}

#[test]
fn many_streams_v2_compressed() {
    many_streams(smux::Version::V2, true);
}

#[test]
fn many_streams_v2_plain() {
    many_streams(smux::Version::V2, false);
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The whole data path of a session (stream writes and reads, snappy, smux, KCP,
/// aes, the listener, the endpoint's events and batches) allocates nothing per
/// packet once it has warmed up: four streams carry 8 MiB each way under periodic
/// loss, and the second half of the transfer is counted. What remains are new
/// high-water marks of KCP's segment pool (segments held for reordering, bounded by
/// the windows), far fewer than packets. Returns (datagrams, allocations).
fn steady_state_stream_allocations(version: smux::Version, compression: bool) -> (u64, u64) {
    const STREAM_BYTES: u64 = 8 << 20;
    let mut link = LinkConfig::ideal(20_000);
    link.drop_every = 50;
    let mut pair = Pair::new(&layers(version, compression, None), link, 1);
    let mut app = streams_app(4, |_| STREAM_BYTES);
    let half = |_: &mut Pair, app: &PatternApp| {
        [Side::Client, Side::Server].iter().all(|&s| app.received(s) >= 2 * STREAM_BYTES)
    };
    assert!(pair.run(&mut app, 600_000, half), "warm-up");
    let datagrams = |pair: &Pair| pair.client.snmp().out_pkts + pair.server.snmp().out_pkts;
    let before = ALLOCATIONS.with(Cell::get);
    let datagrams_before = datagrams(&pair);
    let finished = pair.run(&mut app, 600_000, |_, app| app.all_done(4));
    let allocations = ALLOCATIONS.with(Cell::get) - before;
    let what = format!("smux {version:?}, compression {compression}");
    assert!(finished, "{what}: not finished");
    check_streams(&app, &what, STREAM_BYTES);
    let datagrams = datagrams(&pair) - datagrams_before;
    println!("{what}: {datagrams} datagrams sent in steady state, {allocations} allocations");
    (datagrams, allocations)
}

#[test]
fn steady_state_streams_allocate_nothing_per_packet_v2_plain() {
    let (datagrams, allocations) = steady_state_stream_allocations(smux::Version::V2, false);
    assert!(datagrams > 10_000 && allocations * 100 <= datagrams, "{allocations} allocations, {datagrams} datagrams");
}

#[test]
fn steady_state_streams_allocate_nothing_per_packet_v1_compressed() {
    let (datagrams, allocations) = steady_state_stream_allocations(smux::Version::V1, true);
    assert!(datagrams > 10_000 && allocations * 100 <= datagrams, "{allocations} allocations, {datagrams} datagrams");
}
