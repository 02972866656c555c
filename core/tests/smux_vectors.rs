//! smux against `core/tests/vectors/smux.json`: replaying the recorded exchange with
//! the recorded read pattern, our sessions produce exactly the recorded byte
//! streams, and read exactly the recorded payloads out of the peer's.

mod support;

use kcpgate_core::smux::{Mux, MuxConfig, Read, Role, Version};
use support::vectors::{hex, load, u64_of};

fn drain(s: &mut Mux, out: &mut Vec<u8>) {
    while s.poll_transmit(out) {}
}

/// Reads everything available on `sid` in reads of `chunk` bytes; true at EOF.
fn read_all(s: &mut Mux, sid: u32, chunk: usize, into: &mut Vec<u8>) -> bool {
    let mut buf = vec![0u8; chunk];
    loop {
        match s.stream_read(sid, &mut buf).unwrap() {
            Read::Data(n) => into.extend_from_slice(&buf[..n]),
            Read::Eof => return true,
            Read::WouldBlock => return false,
        }
    }
}

#[test]
fn recorded_exchanges_are_reproduced_byte_for_byte() {
    let v = load("smux.json");
    let p = &v["payloads"];
    let messages = [hex(&p["client_msg1_hex"]), hex(&p["client_msg2_hex"]), hex(&p["client_msg3_hex"])];
    let reply = hex(&p["server_reply_hex"]);
    for case in v["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let c = &case["config"];
        let cfg = MuxConfig {
            version: if u64_of(&case["smux_version"]) == 1 { Version::V1 } else { Version::V2 },
            keepalive_interval_ms: u64_of(&c["KeepAliveInterval_s"]) as u32 * 1000,
            keepalive_timeout_ms: u64_of(&c["KeepAliveTimeout_s"]) as u32 * 1000,
            max_frame_size: u64_of(&c["MaxFrameSize"]) as usize,
            max_receive_buffer: u64_of(&c["MaxReceiveBuffer"]) as usize,
            max_stream_buffer: u64_of(&c["MaxStreamBuffer"]) as usize,
        };
        cfg.validate().unwrap();
        let c2s = hex(&case["client_to_server"]["stream_hex"]);
        let s2c = hex(&case["server_to_client"]["stream_hex"]);

        // Client: open, write the three messages.
        let mut client = Mux::new(Role::Client, cfg.clone(), 0);
        let mut client_out = Vec::new();
        let sid = client.open_stream().unwrap();
        assert_eq!(sid, 3);
        for m in &messages {
            let mut at = 0;
            while at < m.len() {
                at += client.stream_write(sid, &m[at..]).unwrap();
                drain(&mut client, &mut client_out);
            }
        }

        // Server: the recorded client stream arrives frame by frame; it reads after each.
        let mut server = Mux::new(Role::Server, cfg.clone(), 0);
        let mut server_out = Vec::new();
        let mut got = Vec::new();
        let mut accepted = None;
        for f in case["client_to_server"]["frames"].as_array().unwrap() {
            let at = u64_of(&f["offset"]) as usize;
            let end = at + 8 + u64_of(&f["length"]) as usize;
            assert_eq!(server.handle_input(&c2s[at..end]).unwrap(), end - at, "{name}: frame at {at}");
            if accepted.is_none() {
                accepted = server.accept();
            }
            if let Some(sid) = accepted {
                read_all(&mut server, sid, 65536, &mut got);
            }
            if got.len() == messages.iter().map(Vec::len).sum::<usize>() && f["cmd"] == "PSH" {
                break; // the server replies once it has read everything
            }
        }
        assert_eq!(got, messages.concat(), "{name}: server read the client's bytes");
        let ssid = accepted.unwrap();
        drain(&mut server, &mut server_out);
        let mut at = 0;
        while at < reply.len() {
            at += server.stream_write(ssid, &reply[at..]).unwrap();
            drain(&mut server, &mut server_out);
        }
        server.stream_close(ssid).unwrap();
        drain(&mut server, &mut server_out);
        assert_eq!(hex::encode(&server_out), hex::encode(&s2c), "{name}: our server's stream");

        // Client reads the recorded reply with 512-byte reads, then closes.
        assert_eq!(client.handle_input(&s2c).unwrap(), s2c.len());
        let mut reply_got = Vec::new();
        assert!(read_all(&mut client, sid, 512, &mut reply_got), "{name}: EOF after the reply");
        assert_eq!(reply_got, reply);
        client.stream_close(sid).unwrap();
        drain(&mut client, &mut client_out);
        assert_eq!(hex::encode(&client_out), hex::encode(&c2s), "{name}: our client's stream");
    }
}
