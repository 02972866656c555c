//! A client-role and a server-role [`Endpoint`] joined by two simulated links, on a
//! virtual clock: every test of whole sessions drives the public API this way.
//!
//! The client sits at address 1 and the server at address 2. [`Pair::run`] steps
//! the clock straight to the next delivery or timer and hands every event to the
//! test's application, so a test of many seconds runs in milliseconds and the
//! same seeds always give the same run.

use std::collections::BTreeMap;
use std::sync::Arc;

use kcpgate_core::crypto::{Method, PacketCrypto};
use kcpgate_core::endpoint::{Endpoint, EndpointConfig, Event, SessionId};
use kcpgate_core::kcp::{diff, Mode};
use kcpgate_core::pipeline::SessionConfig;
use kcpgate_core::qpp::PadGeneration;
use kcpgate_core::session::{StreamConfig, StreamEnd, StreamEvent};
use kcpgate_core::smux::{self, Read, Role};
use kcpgate_core::stack::{QppSetup, StackConfig};

use super::netsim::{pattern_byte, Link, LinkConfig};
use super::session_config;

pub const CLIENT: u32 = 1;
pub const SERVER: u32 = 2;

/// Which end of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Client,
    Server,
}

/// The layers a pair runs.
#[derive(Debug, Clone)]
pub struct Layers {
    pub method: Method,
    pub fec: Option<(usize, usize)>,
    pub compression: bool,
    pub smux: smux::Version,
    pub qpp: bool,
    pub close_wait_ms: u32,
}

impl Layers {
    /// kcptun's defaults: aes, FEC 10/3, snappy, smux v2, no QPP, no close-wait.
    pub fn kcptun() -> Layers {
        Layers {
            method: Method::Aes256,
            fec: Some((10, 3)),
            compression: true,
            smux: smux::Version::V2,
            qpp: false,
            close_wait_ms: 0,
        }
    }

    fn config(&self, role: Role) -> EndpointConfig {
        let (snd, rcv) = if role == Role::Server { (1024, 1024) } else { (128, 512) };
        let session: SessionConfig = session_config(Mode::Fast3, snd, rcv, self.fec);
        let version = if role == Role::Server { smux::Version::Detect } else { self.smux };
        let stack = StackConfig {
            compression: self.compression,
            smux: smux::Config { version, ..smux::Config::kcptun() },
            qpp: self.qpp.then(|| QppSetup::new(b"pair key", 61, PadGeneration::Current)),
        };
        EndpointConfig { session, streams: StreamConfig { stack, close_wait_ms: self.close_wait_ms } }
    }
}

pub struct Pair {
    pub now_us: u64,
    pub client: Endpoint<u32>,
    pub server: Endpoint<u32>,
    pub c2s: Link,
    pub s2c: Link,
    /// The client's session to the server.
    pub session: SessionId,
    buf: Vec<u8>,
    /// Datagrams each side sent.
    pub sent: [u64; 2],
    /// Steps of the clock: deliveries and timers.
    pub wakeups: u64,
}

/// What a test's application does with events.
pub trait App {
    /// One event of `side`'s endpoint; `ep` is that endpoint.
    fn on_event(&mut self, side: Side, now: u32, ep: &mut Endpoint<u32>, event: Event<u32>);
}

impl Pair {
    pub fn new(layers: &Layers, link: LinkConfig, seed: u64) -> Pair {
        let crypto = Arc::new(PacketCrypto::from_passphrase(layers.method, "pair key"));
        let mut client = Endpoint::new(Role::Client, layers.config(Role::Client), crypto.clone(), [seed as u8; 32])
            .expect("valid client config");
        let server = Endpoint::new(Role::Server, layers.config(Role::Server), crypto, [seed as u8 ^ 0x5a; 32])
            .expect("valid server config");
        let session = client.connect(0, SERVER).expect("a first session");
        Pair {
            now_us: 0,
            client,
            server,
            c2s: Link::new(link, seed),
            s2c: Link::new(link, seed ^ 0xdead_beef),
            session,
            buf: Vec::new(),
            sent: [0; 2],
            wakeups: 0,
        }
    }

    pub fn now(&self) -> u32 {
        (self.now_us / 1000) as u32
    }

    pub fn endpoint(&mut self, side: Side) -> &mut Endpoint<u32> {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    /// Hands events to `app` and datagrams to the links until both sides are quiet.
    pub fn settle(&mut self, app: &mut impl App) {
        let now = self.now();
        loop {
            let mut any = false;
            for side in [Side::Client, Side::Server] {
                while let Some(event) = self.endpoint(side).poll_event() {
                    any = true;
                    let ep = match side {
                        Side::Client => &mut self.client,
                        Side::Server => &mut self.server,
                    };
                    app.on_event(side, now, ep, event);
                }
            }
            for side in [Side::Client, Side::Server] {
                let (ep, link, to) = match side {
                    Side::Client => (&mut self.client, &mut self.c2s, SERVER),
                    Side::Server => (&mut self.server, &mut self.s2c, CLIENT),
                };
                while let Some(t) = ep.poll_transmit(now, 8, &mut self.buf) {
                    assert_eq!(t.destination, to, "{side:?} sent to a wrong address");
                    any = true;
                    let segment = t.segment_size.unwrap_or(t.size);
                    for d in self.buf[..t.size].chunks(segment) {
                        link.send(self.now_us, d);
                        self.sent[side as usize] += 1;
                    }
                }
            }
            if !any {
                return;
            }
        }
    }

    /// Runs until `done` holds (checked whenever the pair is quiet) or `limit_ms`
    /// of virtual time pass; true if `done` held.
    pub fn run<P: App>(&mut self, app: &mut P, limit_ms: u64, mut done: impl FnMut(&mut Pair, &P) -> bool) -> bool {
        let end_us = self.now_us + limit_ms * 1000;
        loop {
            self.settle(app);
            if done(self, app) {
                return true;
            }
            let timer = |ep: &mut Endpoint<u32>, now: u32, now_us: u64| {
                ep.poll_timeout().map(|d| now_us - now_us % 1000 + diff(d, now).max(0) as u64 * 1000)
            };
            let now = self.now();
            let next = [
                self.c2s.next_arrival(),
                self.s2c.next_arrival(),
                timer(&mut self.client, now, self.now_us),
                timer(&mut self.server, now, self.now_us),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next.filter(|&t| t <= end_us) else {
                self.now_us = end_us;
                return false;
            };
            self.now_us = next.max(self.now_us);
            self.wakeups += 1;
            let (now, now_us) = (self.now(), self.now_us);
            let Pair { client, server, c2s, s2c, .. } = self;
            c2s.deliver_due(now_us, |d| {
                server.handle_datagram(now, &CLIENT, &mut d.to_vec());
            });
            s2c.deliver_due(now_us, |d| {
                client.handle_datagram(now, &SERVER, &mut d.to_vec());
            });
            client.handle_timeout(now);
            server.handle_timeout(now);
        }
    }

    /// Moves the clock on by `ms`, running everything due on the way.
    pub fn advance(&mut self, app: &mut impl App, ms: u64) {
        self.run(app, ms, |_, _| false);
    }
}

/// One direction's bytes of one stream: a deterministic pattern, checked on
/// arrival.
#[derive(Debug, Default, Clone)]
pub struct Flow {
    pub send_seed: u64,
    pub send_total: u64,
    pub sent: u64,
    pub recv_seed: u64,
    pub received: u64,
    pub first_mismatch: Option<u64>,
    pub finished: bool,
    pub eof: bool,
    pub closed: Option<StreamEnd>,
}

/// Streams that each send a pattern, finish, and read the peer's to its end:
/// every stream is serviced only when an event names it, so a missed wake-up
/// stalls the test.
#[derive(Debug, Default)]
pub struct PatternApp {
    pub flows: BTreeMap<(Side, u32), Flow>,
    /// Bytes each side sends on a stream, by who opened it and its sid.
    pub size_of: Option<fn(u32) -> u64>,
    /// Streams the client and the server open once they have the session.
    pub open_on_session: [usize; 2],
    pub session_closed: Vec<(Side, String)>,
}

/// The pattern seed of what `side` sends on stream `sid`.
pub fn seed_of(side: Side, sid: u32) -> u64 {
    u64::from(sid) * 2 + side as u64
}

fn other(side: Side) -> Side {
    match side {
        Side::Client => Side::Server,
        Side::Server => Side::Client,
    }
}

impl PatternApp {
    pub fn new(size_of: fn(u32) -> u64) -> PatternApp {
        PatternApp { size_of: Some(size_of), ..PatternApp::default() }
    }

    /// Opens a stream from `side` and starts writing on it.
    pub fn open(&mut self, side: Side, now: u32, ep: &mut Endpoint<u32>, session: SessionId) -> u32 {
        let sid = ep.open_stream(now, session).expect("a stream");
        self.add(side, sid);
        self.service(side, now, ep, session, sid);
        sid
    }

    fn add(&mut self, side: Side, sid: u32) {
        let total = (self.size_of.expect("sizes"))(sid);
        let flow = Flow {
            send_seed: seed_of(side, sid),
            send_total: total,
            recv_seed: seed_of(other(side), sid),
            ..Flow::default()
        };
        assert!(self.flows.insert((side, sid), flow).is_none(), "{side:?} stream {sid} opened twice");
    }

    /// Writes what the stream will take, finishes once all is written, and reads
    /// everything there is.
    pub fn service(&mut self, side: Side, now: u32, ep: &mut Endpoint<u32>, session: SessionId, sid: u32) {
        let Some(flow) = self.flows.get_mut(&(side, sid)) else { return };
        if flow.closed.is_some() {
            return;
        }
        let mut chunk = [0u8; 4096];
        while flow.sent < flow.send_total {
            let n = (flow.send_total - flow.sent).min(chunk.len() as u64) as usize;
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern_byte(flow.send_seed, flow.sent + i as u64);
            }
            let took = ep.write(session, sid, &chunk[..n]).expect("write");
            flow.sent += took as u64;
            if took < n {
                break;
            }
        }
        if flow.sent == flow.send_total && !flow.finished {
            flow.finished = true;
            ep.finish(now, session, sid).expect("finish");
        }
        while !flow.eof {
            match ep.read(now, session, sid, &mut chunk) {
                Ok(Read::Data(n)) => {
                    for (i, &b) in chunk[..n].iter().enumerate() {
                        let at = flow.received + i as u64;
                        if flow.first_mismatch.is_none() && b != pattern_byte(flow.recv_seed, at) {
                            flow.first_mismatch = Some(at);
                        }
                    }
                    flow.received += n as u64;
                }
                Ok(Read::Eof) => flow.eof = true,
                Ok(Read::WouldBlock) => break,
                Err(e) => panic!("{side:?} stream {sid}: read failed: {e:?}"),
            }
        }
    }

    /// Streams of `side` that ended, and how.
    pub fn closed(&self, side: Side) -> impl Iterator<Item = (u32, StreamEnd)> + '_ {
        self.flows.iter().filter(move |((s, _), _)| *s == side).filter_map(|((_, sid), f)| Some((*sid, f.closed?)))
    }
}

impl App for PatternApp {
    fn on_event(&mut self, side: Side, now: u32, ep: &mut Endpoint<u32>, event: Event<u32>) {
        match event {
            Event::Stream { id, event } => match event {
                StreamEvent::Opened(sid) => {
                    self.add(side, sid);
                    self.service(side, now, ep, id, sid);
                }
                StreamEvent::Readable(sid) | StreamEvent::Writable(sid) => self.service(side, now, ep, id, sid),
                StreamEvent::Closed(sid, why) => {
                    let flow = self.flows.get_mut(&(side, sid)).expect("a known stream closed");
                    assert!(flow.closed.is_none(), "{side:?} stream {sid} closed twice");
                    flow.closed = Some(why);
                }
            },
            Event::SessionOpened { id, .. } => {
                for _ in 0..self.open_on_session[side as usize] {
                    self.open(side, now, ep, id);
                }
            }
            Event::SessionClosed { reason, .. } => self.session_closed.push((side, reason.to_string())),
        }
    }
}
