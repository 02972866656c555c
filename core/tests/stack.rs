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
use support::{crypto, dialled, session_config};

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

// ---------------------------------------------------------------- many streams

use kcpgate_core::stack::StackError;
use std::cell::Cell;
use support::counting::{Counted, Counting, ALLOCATIONS};
use support::netsim::{pattern_byte, Endpoint, Link, LinkConfig, Sim, Transfer};

struct StreamApp {
    sid: u32,
    /// Bytes to send, and to receive.
    total: u64,
    send_seed: u64,
    recv_seed: u64,
    sent: u64,
    received: u64,
    write_closed: bool,
    eof: bool,
    mismatch: Option<u64>,
}

impl StreamApp {
    fn new(sid: u32, sending_side: u64, total: u64) -> StreamApp {
        let seed = |side: u64| u64::from(sid) * 2 + side;
        StreamApp {
            sid,
            total,
            send_seed: seed(sending_side),
            recv_seed: seed(1 - sending_side),
            sent: 0,
            received: 0,
            write_closed: false,
            eof: false,
            mismatch: None,
        }
    }

    fn done(&self) -> bool {
        self.write_closed && self.eof
    }

    /// Writes the stream's pattern as far as flow control allows, reads and checks.
    fn step(&mut self, stack: &mut StreamStack, buf: &mut [u8]) {
        while self.sent < self.total {
            let room = stack.mux().stream_write_capacity(self.sid).unwrap_or(0);
            let n = (self.total - self.sent).min(buf.len() as u64).min(room as u64) as usize;
            if n == 0 {
                break;
            }
            for (k, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern_byte(self.send_seed, self.sent + k as u64);
            }
            let w = stack.stream_write(self.sid, &buf[..n]).unwrap();
            self.sent += w as u64;
            if w < n {
                break;
            }
        }
        if self.sent == self.total && !self.write_closed {
            stack.stream_close_write(self.sid).unwrap();
            self.write_closed = true;
        }
        while !self.eof {
            match stack.stream_read(self.sid, buf) {
                Ok(Read::Data(n)) => {
                    for (k, &b) in buf[..n].iter().enumerate() {
                        let at = self.received + k as u64;
                        if self.mismatch.is_none() && (at >= self.total || b != pattern_byte(self.recv_seed, at)) {
                            self.mismatch = Some(at);
                        }
                    }
                    self.received += n as u64;
                }
                Ok(Read::Eof) => self.eof = true,
                Ok(Read::WouldBlock) | Err(_) => break,
            }
        }
    }
}

/// One side of a kcptun tunnel with an application running many streams.
struct Side {
    /// A client's holds the one session it dialled; a server's accepts.
    listener: Listener<u32>,
    /// The other side's address.
    peer: u32,
    stack: StreamStack,
    apps: Vec<StreamApp>,
    /// Streams in the test, and bytes each carries each way.
    streams: usize,
    stream_bytes: u64,
    to_open: usize,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    error: Option<StackError>,
}

impl Side {
    fn conn(&mut self) -> Option<&mut Connection> {
        self.listener.session_mut(&self.peer)
    }

    fn step(&mut self, now: u32) {
        while self.to_open > 0 {
            let sid = self.stack.open_stream().unwrap();
            self.apps.push(StreamApp::new(sid, 0, self.stream_bytes));
            self.to_open -= 1;
        }
        while let Some(sid) = self.stack.accept() {
            self.apps.push(StreamApp::new(sid, 1, self.stream_bytes));
        }
        // Drain events; every stream is stepped anyway.
        while self.stack.poll_event().is_some() {}
        for _ in 0..4 {
            for app in &mut self.apps {
                app.step(&mut self.stack, &mut self.buf);
            }
            let Some(conn) = self.listener.session_mut(&self.peer) else { return };
            if let Err(e) = self.stack.pump(now, conn) {
                self.error = Some(e);
                return;
            }
        }
    }
}

impl Endpoint for Side {
    fn handle_datagram(&mut self, now: u32, datagram: &[u8]) {
        self.scratch.clear();
        self.scratch.extend_from_slice(datagram);
        self.listener.handle_datagram(now, &self.peer, &mut self.scratch);
        self.listener.accept();
        self.step(now);
    }
    fn handle_timeout(&mut self, now: u32) {
        let _ = self.stack.handle_timeout(now);
        if let Some(conn) = self.conn() {
            if conn.poll_timeout().is_some_and(|t| kcpgate_core::kcp::diff(now, t) >= 0) {
                conn.handle_timeout(now);
            }
        }
        self.step(now);
    }
    fn poll_timeout(&self) -> Option<u32> {
        let conn = self.listener.session(&self.peer);
        if self.to_open > 0 {
            return Some(0); // open the streams at once
        }
        [conn.and_then(Connection::poll_timeout), self.stack.poll_timeout()]
            .into_iter()
            .flatten()
            .reduce(kcpgate_core::kcp::earliest)
    }
    fn drain_transmits(&mut self, send: &mut dyn FnMut(&[u8])) {
        if let Some(conn) = self.conn() {
            for d in conn.transmits() {
                send(d);
            }
            conn.clear_transmits();
        }
    }
    fn can_write(&self) -> bool {
        false
    }
    fn write(&mut self, _: u32, _: &[u8]) -> usize {
        0
    }
    fn read(&mut self, _: &mut [u8]) -> usize {
        0
    }
    fn done(&self) -> bool {
        self.to_open == 0 && self.apps.len() == self.streams && self.apps.iter().all(StreamApp::done)
    }
}

/// A client and a server side (aes, fast3) whose client opens `streams` streams
/// carrying `stream_bytes` each way.
fn tunnel_sides(
    version: smux::Version,
    compression: bool,
    fec: Option<(usize, usize)>,
    streams: usize,
    stream_bytes: u64,
) -> (Side, Side) {
    let c = crypto(Method::Aes256, "streams");
    let stack = |role| {
        let v = if role == Role::Server { smux::Version::Detect } else { version };
        StreamStack::new(role, kcptun_stack(compression, v), 0)
    };
    let side = |listener, peer, role, to_open| Side {
        listener,
        peer,
        stack: stack(role),
        apps: Vec::new(),
        streams,
        stream_bytes,
        to_open,
        buf: vec![0; 16384],
        scratch: Vec::new(),
        error: None,
    };
    let client = side(dialled(session_config(Mode::Fast3, 1024, 1024, fec), c.clone(), 3), 2, Role::Client, streams);
    let server =
        side(Listener::new(session_config(Mode::Fast3, 1024, 1024, fec), c, [4; 32]).unwrap(), 1, Role::Server, 0);
    (client, server)
}

fn many_streams(version: smux::Version, compression: bool) {
    const STREAM_BYTES: u64 = 1 << 20;
    let (client, server) = tunnel_sides(version, compression, Some((10, 3)), 64, STREAM_BYTES);
    let mut link = LinkConfig::ideal(20_000);
    link.loss = 0.05;
    let mut sim = Sim::new(
        client,
        server,
        Link::new(link, 1),
        Link::new(link, 2),
        Transfer::new(0, 0, 0, 0),
        Transfer::new(0, 0, 0, 0),
        0,
    );
    let result = sim.run(900_000);
    let what = format!("smux {version:?}, compression {compression}");
    assert_eq!((sim.a.error, sim.b.error), (None, None), "{what}");
    assert!(result.finished, "{what}: not finished after {} simulated ms", result.elapsed_ms);
    for side in [&sim.a, &sim.b] {
        assert_eq!(side.apps.len(), 64);
        for app in &side.apps {
            assert_eq!((app.received, app.mismatch), (STREAM_BYTES, None), "{what}: stream {}", app.sid);
        }
    }
    println!("{what}: 64 streams × 1 MiB each way in {} simulated ms", result.elapsed_ms);
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

/// The whole data path of a tunnel (stream writes and reads, snappy, smux, KCP,
/// aes, the listener) allocates nothing per packet once it has warmed up: four
/// streams carry 8 MiB each way under periodic loss, and the second half of the
/// transfer is counted. What remains are new high-water marks of KCP's segment
/// pool (segments held for reordering, bounded by the windows), far fewer than
/// packets. Returns (server datagrams, allocations).
fn steady_state_stream_allocations(version: smux::Version, compression: bool) -> (u64, u64) {
    const STREAM_BYTES: u64 = 8 << 20;
    let (client, server) = tunnel_sides(version, compression, None, 4, STREAM_BYTES);
    let mut link = LinkConfig::ideal(20_000);
    link.drop_every = 50;
    let mut sim = Sim::new(
        Counted(client),
        Counted(server),
        Link::new(link, 1),
        Link::new(link, 2),
        Transfer::new(0, 0, 0, 0),
        Transfer::new(0, 0, 0, 0),
        0,
    );
    let received = |side: &Side| side.apps.iter().map(|a| a.received).sum::<u64>();
    while received(&sim.b.0) < 2 * STREAM_BYTES {
        assert!(!sim.run(100).finished);
    }
    let before = ALLOCATIONS.with(Cell::get);
    let datagrams_before = sim.b.0.listener.snmp().out_pkts;
    let result = sim.run(600_000);
    let allocations = ALLOCATIONS.with(Cell::get) - before;
    let what = format!("smux {version:?}, compression {compression}");
    assert!(result.finished, "{what}: not finished");
    for side in [&sim.a.0, &sim.b.0] {
        for app in &side.apps {
            assert_eq!((app.received, app.mismatch), (STREAM_BYTES, None), "{what}: stream {}", app.sid);
        }
    }
    let datagrams = sim.b.0.listener.snmp().out_pkts - datagrams_before;
    println!("{what}: {datagrams} server datagrams out in steady state, {allocations} allocations");
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
