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
    StackConfig { compression, smux: smux::Config { version, ..smux::Config::kcptun() }, qpp: None }
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
