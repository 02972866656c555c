//! Bad input to the stream layers: it ends only the offending session (or stream)
//! with a clear error, never panics, and never grows memory past the budget.

mod support;

use kcpgate_core::crypto::Method;
use kcpgate_core::kcp::Mode;
use kcpgate_core::pipeline::Connection;
use kcpgate_core::smux::{self, Mux, Read, Role, SmuxError, StreamError, Version};
use kcpgate_core::snappy::{masked_crc, SnappyError, STREAM_IDENTIFIER};
use kcpgate_core::stack::{StackConfig, StackError, StreamStack};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use support::{crypto, session_config};

struct Pair {
    written: usize,
    client_conn: Connection,
    client: StreamStack,
    server_conn: Connection,
    server: StreamStack,
    sid: u32,
    server_sid: Option<u32>,
    received: Vec<u8>,
}

impl Pair {
    fn new(compression: bool, conv: u32, version: Version) -> Pair {
        let c = crypto(Method::Aes256, "robust");
        let cfg = session_config(Mode::Fast3, 256, 256, None);
        let stack = |role, version| {
            StreamStack::new(
                role,
                StackConfig { compression, smux: smux::MuxConfig { version, ..smux::MuxConfig::kcptun() }, qpp: None },
                0,
            )
        };
        let mut client = stack(Role::Client, version);
        let sid = client.open_stream().unwrap();
        Pair {
            written: 0,
            client_conn: Connection::new(conv, &cfg, c.clone(), [1; 32]).unwrap(),
            client,
            server_conn: Connection::new(conv, &cfg, c, [2; 32]).unwrap(),
            server: stack(Role::Server, Version::Detect),
            sid,
            server_sid: None,
            received: Vec::new(),
        }
    }

    /// Moves datagrams both ways (lossless) and lets the server read; returns the
    /// server stack's result.
    fn step(&mut self, now: u32) -> Result<(), StackError> {
        let _ = self.client.pump(now, &mut self.client_conn);
        let datagrams: Vec<Vec<u8>> = self.client_conn.transmits().map(<[u8]>::to_vec).collect();
        self.client_conn.clear_transmits();
        for mut d in datagrams {
            self.server_conn.handle_datagram(now, &mut d).unwrap();
        }
        let r = self.server.pump(now, &mut self.server_conn);
        self.server_sid = self.server_sid.or_else(|| self.server.accept());
        if let Some(sid) = self.server_sid {
            let mut buf = [0u8; 4096];
            while let Ok(Read::Data(n)) = self.server.stream_read(sid, &mut buf) {
                self.received.extend_from_slice(&buf[..n]);
            }
        }
        let back: Vec<Vec<u8>> = self.server_conn.transmits().map(<[u8]>::to_vec).collect();
        self.server_conn.clear_transmits();
        for mut d in back {
            self.client_conn.handle_datagram(now, &mut d).unwrap();
        }
        r.and(self.server.pump(now, &mut self.server_conn))
    }
}

fn snappy_chunk(kind: u8, data: &[u8], crc: u32) -> Vec<u8> {
    let mut c = vec![kind];
    c.extend_from_slice(&((data.len() + 4) as u32).to_le_bytes()[..3]);
    c.extend_from_slice(&crc.to_le_bytes());
    c.extend_from_slice(data);
    c
}

fn smux_frame(ver: u8, cmd: u8, len: u16, sid: u32) -> Vec<u8> {
    let mut f = vec![ver, cmd];
    f.extend_from_slice(&len.to_le_bytes());
    f.extend_from_slice(&sid.to_le_bytes());
    f
}

/// Each kind of garbage, injected by one peer into its KCP stream mid-transfer,
/// kills exactly that session with the matching error; a second session running at
/// the same time finishes byte-exact.
#[test]
fn garbage_ends_only_the_offending_session() {
    let psh_header = smux_frame(2, smux::CMD_PSH, 4, 3);
    let cases: Vec<(bool, Vec<u8>, StackError)> = vec![
        (true, snappy_chunk(0x01, &psh_header, masked_crc(&psh_header) ^ 1), StackError::Snappy(SnappyError::Checksum)),
        (true, snappy_chunk(0x05, b"x", 0), StackError::Snappy(SnappyError::ReservedChunk(0x05))),
        (true, vec![0x00, 0xff, 0xff, 0x01], StackError::Snappy(SnappyError::ChunkTooLong(0x1ffff))),
        (true, [&STREAM_IDENTIFIER[..4], b"sNaPpZ"].concat(), StackError::Snappy(SnappyError::MissingIdentifier)),
        (false, smux_frame(1, smux::CMD_NOP, 0, 0), StackError::Smux(SmuxError::InvalidVersion(1))),
        (
            false,
            smux_frame(2, smux::CMD_SYN, 7, 9),
            StackError::Smux(SmuxError::InvalidLength { cmd: smux::CMD_SYN, len: 7 }),
        ),
        (
            false,
            smux_frame(2, smux::CMD_UPD, 65535, 3),
            StackError::Smux(SmuxError::InvalidLength { cmd: smux::CMD_UPD, len: 65535 }),
        ),
        (false, smux_frame(2, 0x42, 0, 3), StackError::Smux(SmuxError::InvalidCommand(0x42))),
    ];
    for (i, (compression, garbage, expected)) in cases.into_iter().enumerate() {
        let mut victim = Pair::new(compression, 100 + i as u32, Version::V2);
        let mut bystander = Pair::new(compression, 200 + i as u32, Version::V2);
        let payload: Vec<u8> = (0..300_000u32).map(|x| (x % 251) as u8).collect();
        let mut now = 0;
        let mut failure = None;
        let mut injected = false;
        while bystander.received.len() < payload.len() && now < 100_000 {
            now += 10;
            for p in [&mut victim, &mut bystander] {
                while p.written < payload.len() {
                    match p.client.stream_write(p.sid, &payload[p.written..]) {
                        Ok(k @ 1..) => p.written += k,
                        _ => break,
                    }
                }
            }
            if victim.written >= 100_000 && !injected {
                // The victim's peer writes garbage straight into its KCP stream.
                victim.client.pump(now, &mut victim.client_conn).unwrap();
                assert_eq!(victim.client_conn.write(now, &garbage), garbage.len());
                injected = true;
            }
            if let Err(e) = victim.step(now) {
                failure.get_or_insert(e);
            }
            bystander.step(now).expect("the bystander session is untouched");
        }
        assert_eq!(failure, Some(expected), "case {i}: the victim failed with a clear error");
        assert!(expected.to_string().len() > 10, "case {i}: {expected}");
        assert_eq!(bystander.received, payload, "case {i}: the bystander got every byte");
    }
}

/// A forged window update that claims more than was sent ends only that stream.
#[test]
fn forged_window_update_ends_only_its_stream() {
    let mut c = Mux::new(Role::Client, smux::MuxConfig::kcptun(), 0);
    let (a, b) = (c.open_stream().unwrap(), c.open_stream().unwrap());
    let mut upd = smux_frame(2, smux::CMD_UPD, 8, a);
    upd.extend_from_slice(&1_000_000u32.to_le_bytes());
    upd.extend_from_slice(&262_144u32.to_le_bytes());
    c.handle_input(&upd).unwrap();
    assert_eq!(c.stream_write(a, b"x"), Err(StreamError::Consumed));
    assert_eq!(c.stream_write(b, b"x"), Ok(1), "the other stream writes on");
    assert!(c.is_alive());
}

/// A peer that keeps writing to a stream nobody reads fills the smux budget, then
/// KCP's receive window, and stops there.
#[test]
fn a_flood_into_an_unread_stream_stays_within_the_budget() {
    // smux v1 has no per-stream window (v2's would stop the flood at 256 KiB), so
    // only the session budget stands in the way.
    let mut p = Pair::new(true, 7, Version::V1);
    let cap = |p: &Pair| p.server.mux().config().max_receive_buffer;
    let chunk = vec![0x5au8; 8192];
    let mut peak = 0;
    for now in 0..3_000u32 {
        for _ in 0..8 {
            let _ = p.client.stream_write(p.sid, &chunk);
        }
        let _ = p.client.pump(now, &mut p.client_conn);
        let datagrams: Vec<Vec<u8>> = p.client_conn.transmits().map(<[u8]>::to_vec).collect();
        p.client_conn.clear_transmits();
        for mut d in datagrams {
            p.server_conn.handle_datagram(now, &mut d).unwrap();
        }
        p.server.pump(now, &mut p.server_conn).unwrap();
        p.server.accept();
        let back: Vec<Vec<u8>> = p.server_conn.transmits().map(<[u8]>::to_vec).collect();
        p.server_conn.clear_transmits();
        for mut d in back {
            p.client_conn.handle_datagram(now, &mut d).unwrap();
        }
        if now % 10 == 0 {
            p.client_conn.handle_timeout(now);
            p.server_conn.handle_timeout(now);
        }
        peak = peak.max(p.server.buffered_bytes());
    }
    let kcp = p.server_conn.kcp().state();
    println!("peak stack buffer {peak} bytes (budget {}), KCP rcv_queue {} of {}", cap(&p), kcp.rcv_queue, kcp.rcv_wnd);
    assert!(peak >= cap(&p), "the flood reached the budget");
    // The budget, one frame over it, and one decoded snappy read in flight.
    assert!(peak <= cap(&p) + 65_535 + 3 * 65_536, "peak {peak}");
    assert!(kcp.rcv_queue <= kcp.rcv_wnd as usize);
}

/// Random frames and bytes: errors, never panics; buffered data never exceeds the
/// budget by more than one frame.
#[test]
fn random_input_never_panics_or_overruns_the_budget() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    let mut errors = 0;
    for round in 0..20_000 {
        let cfg =
            smux::MuxConfig { max_receive_buffer: 50_000, max_stream_buffer: 50_000, ..smux::MuxConfig::kcptun() };
        let mut s = Mux::new(if round % 2 == 0 { Role::Server } else { Role::Client }, cfg, 0);
        let mut input = Vec::new();
        for _ in 0..rng.gen_range(1..40) {
            let mut f = smux_frame(rng.gen_range(1..=3), rng.gen_range(0..6), 0, rng.gen_range(0..6));
            let len: u16 = if rng.gen_bool(0.3) { rng.gen() } else { rng.gen_range(0..200) };
            f[2..4].copy_from_slice(&len.to_le_bytes());
            input.extend_from_slice(&f);
            let body = if rng.gen_bool(0.8) { usize::from(len) } else { rng.gen_range(0..300) };
            input.extend((0..body).map(|_| rng.gen::<u8>()));
        }
        let mut at = 0;
        while at < input.len() {
            let end = (at + rng.gen_range(1..5000)).min(input.len());
            match s.handle_input(&input[at..end]) {
                Ok(0) => break,
                Ok(n) => at += n,
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
            assert!(s.receive_budget() > -65_536, "budget overrun");
            if let Some(sid) = s.accept() {
                let mut buf = [0u8; 1000];
                let _ = s.stream_read(sid, &mut buf);
            }
        }
    }
    assert!(errors > 1000, "random input mostly fails as it should ({errors})");
}
