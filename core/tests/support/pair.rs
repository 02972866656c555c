//! The network simulator: a client-role and a server-role [`Endpoint`] joined by
//! two simulated links, on a virtual clock. Every simulated test drives the public
//! API this way, whichever layer it is about.
//!
//! The client sits at address 1 and the server at address 2. [`Pair::run`] steps
//! the clock straight to the next delivery, timer or application wake-up and hands
//! every event to the test's application, so a test of many seconds runs in
//! milliseconds and the same seeds always give the same run. Every call into an
//! endpoint is made inside [`counted`], so a counting allocator sees the
//! endpoints' own allocations and not the simulator's.

use std::collections::BTreeMap;
use std::sync::Arc;

use kcpgate_core::crypto::{Method, PacketCrypto};
use kcpgate_core::endpoint::{Endpoint, EndpointConfig, Event, SessionId};
use kcpgate_core::kcp::{diff, Mode};
use kcpgate_core::session::{Framing, StreamEnd, StreamEvent};
use kcpgate_core::settings::SessionSettings;
use kcpgate_core::smux::{self, Read, Role};

use super::counting::counted;
use super::netsim::{pattern_byte, Link, LinkConfig, Transfer};

pub const CLIENT: u32 = 1;
pub const SERVER: u32 = 2;
/// Both ends' key.
pub const KEY: &str = "pair key";

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
    /// Seconds (kcptun's -closewait).
    pub closewait: i64,
    pub mode: Mode,
    pub framing: Framing,
}

impl Layers {
    /// kcptun's defaults, but fast3: aes, FEC 10/3, snappy, smux v2, no QPP, no
    /// close-wait.
    pub fn kcptun() -> Layers {
        Layers {
            method: Method::Aes256,
            fec: Some((10, 3)),
            compression: true,
            smux: smux::Version::V2,
            qpp: false,
            closewait: 0,
            mode: Mode::Fast3,
            framing: Framing::Streams,
        }
    }

    /// As little as kcptun can run: no crypto header, no FEC, no compression;
    /// every datagram is KCP as it is on the wire, with smux frames inside.
    pub fn bare(mode: Mode) -> Layers {
        Layers { method: Method::Null, fec: None, compression: false, mode, ..Layers::kcptun() }
    }

    /// The configuration of an endpoint of `role`: kcptun's windows for it.
    pub fn config(&self, role: Role) -> EndpointConfig {
        let mut settings = SessionSettings::kcptun(role);
        settings.crypt = self.method;
        settings.mode = Some(self.mode);
        settings.nocomp = !self.compression;
        settings.qpp = self.qpp;
        settings.framing = self.framing;
        settings.smux_detect = role == Role::Server;
        let smuxver = if self.smux == smux::Version::V1 { 1 } else { 2 };
        let (data, parity) = self.fec.unwrap_or((0, 0));
        for (name, value) in [
            ("smuxver", smuxver),
            ("datashard", data as i64),
            ("parityshard", parity as i64),
            ("closewait", self.closewait),
        ] {
            settings.set_number(name, value).expect("a valid setting");
        }
        settings.endpoint_config(KEY).expect("valid settings")
    }
}

pub struct Pair {
    pub now_us: u64,
    /// The endpoints' clock at `now_us` 0, so a test can cross the u32 wrap.
    pub epoch_ms: u32,
    pub client: Endpoint<u32>,
    pub server: Endpoint<u32>,
    pub c2s: Link,
    pub s2c: Link,
    /// The client's session to the server.
    pub session: SessionId,
    buf: Vec<u8>,
    /// A delivered datagram, which the endpoint may decrypt in place.
    scratch: Vec<u8>,
    /// Datagrams each side sent.
    pub sent: [u64; 2],
    /// Steps of the clock: deliveries and timers.
    pub wakeups: u64,
    /// The client's address as the server sees it (a test moves it to play a
    /// client whose address changed); datagrams the server sends elsewhere are
    /// lost, counted in `misdirected`.
    pub client_addr: u32,
    pub misdirected: u64,
}

/// What a test's application does with events.
pub trait App {
    /// One event of `side`'s endpoint; `ep` is that endpoint.
    fn on_event(&mut self, side: Side, now: u32, ep: &mut Endpoint<u32>, event: Event<u32>);

    /// A datagram reaches `side` from `from`; an attacking test adds its own here.
    fn deliver(&mut self, side: Side, now: u32, ep: &mut Endpoint<u32>, from: u32, datagram: &mut [u8]) {
        let _ = side;
        counted(|| ep.handle_datagram(now, &from, datagram));
    }

    /// When the application wants to run next without an event (a paced writer).
    fn next_wakeup_us(&self, now_us: u64) -> Option<u64> {
        let _ = now_us;
        None
    }

    /// Runs after every step of the clock, once for each side.
    fn on_step(&mut self, side: Side, now: u32, now_us: u64, ep: &mut Endpoint<u32>) {
        let _ = (side, now, now_us, ep);
    }
}

impl Pair {
    pub fn new(layers: &Layers, link: LinkConfig, seed: u64) -> Pair {
        Pair::with_links(layers, Link::new(link, seed), Link::new(link, seed ^ 0xdead_beef), seed, 0)
    }

    /// A pair whose client dialled at `epoch_ms` on the endpoints' clock.
    pub fn with_links(layers: &Layers, c2s: Link, s2c: Link, seed: u64, epoch_ms: u32) -> Pair {
        let crypto = Arc::new(PacketCrypto::from_passphrase(layers.method, KEY));
        let mut client = Endpoint::new(Role::Client, layers.config(Role::Client), crypto.clone(), [seed as u8; 32])
            .expect("valid client config");
        let server = Endpoint::new(Role::Server, layers.config(Role::Server), crypto, [seed as u8 ^ 0x5a; 32])
            .expect("valid server config");
        let session = client.connect(epoch_ms, SERVER).expect("a first session");
        Pair {
            now_us: 0,
            epoch_ms,
            client,
            server,
            c2s,
            s2c,
            session,
            buf: Vec::new(),
            scratch: Vec::with_capacity(65_536),
            sent: [0; 2],
            wakeups: 0,
            client_addr: CLIENT,
            misdirected: 0,
        }
    }

    pub fn now(&self) -> u32 {
        self.epoch_ms.wrapping_add((self.now_us / 1000) as u32)
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
                while let Some(event) = counted(|| self.endpoint(side).poll_event()) {
                    any = true;
                    app.on_event(side, now, self.endpoint(side), event);
                }
            }
            for side in [Side::Client, Side::Server] {
                let (ep, link, to) = match side {
                    Side::Client => (&mut self.client, &mut self.c2s, SERVER),
                    Side::Server => (&mut self.server, &mut self.s2c, self.client_addr),
                };
                while let Some(t) = counted(|| ep.poll_transmit(now, 8, &mut self.buf)) {
                    any = true;
                    // To an address the client has left: lost.
                    if side == Side::Server && t.destination != to && t.destination != SERVER {
                        self.misdirected += 1;
                        continue;
                    }
                    assert_eq!(t.destination, to, "{side:?} sent to a wrong address");
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
                counted(|| ep.poll_timeout()).map(|d| now_us - now_us % 1000 + diff(d, now).max(0) as u64 * 1000)
            };
            let now = self.now();
            let next = [
                self.c2s.next_arrival(),
                self.s2c.next_arrival(),
                timer(&mut self.client, now, self.now_us),
                timer(&mut self.server, now, self.now_us),
                app.next_wakeup_us(self.now_us),
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
            let Pair { client, server, c2s, s2c, scratch, client_addr, .. } = self;
            c2s.deliver_due(now_us, |d| {
                scratch.clear();
                scratch.extend_from_slice(d);
                app.deliver(Side::Server, now, server, *client_addr, scratch);
            });
            s2c.deliver_due(now_us, |d| {
                scratch.clear();
                scratch.extend_from_slice(d);
                app.deliver(Side::Client, now, client, SERVER, scratch);
            });
            counted(|| client.handle_timeout(now));
            counted(|| server.handle_timeout(now));
            app.on_step(Side::Client, now, now_us, client);
            app.on_step(Side::Server, now, now_us, server);
        }
    }

    /// Moves the clock on by `ms`, running everything due on the way.
    pub fn advance(&mut self, app: &mut impl App, ms: u64) {
        self.run(app, ms, |_, _| false);
    }

    /// Runs `app`'s transfers until both are complete or `limit_ms` of virtual time
    /// passed; true if they completed.
    pub fn run_transfers(&mut self, app: &mut TransferApp, limit_ms: u64) -> bool {
        self.run(app, limit_ms, |_, app| app.done())
    }

    /// Virtual milliseconds since the start.
    pub fn elapsed_ms(&self) -> u64 {
        self.now_us / 1000
    }
}

/// One stream from the client to the server carrying a [`Transfer`] each way: a
/// bulk or paced byte stream, checked on arrival.
pub struct TransferApp {
    pub client: Transfer,
    pub server: Transfer,
    /// Each side's session and stream, once open.
    pub stream: [Option<(SessionId, u32)>; 2],
    /// The pair's clock as of the last step.
    now_us: u64,
}

impl TransferApp {
    pub fn new(client: Transfer, server: Transfer) -> TransferApp {
        TransferApp { client, server, stream: [None; 2], now_us: 0 }
    }

    /// `total` bytes each way, as fast as the windows allow.
    pub fn both_ways(total: u64) -> TransferApp {
        TransferApp::new(Transfer::new(1, total, 2, total), Transfer::new(2, total, 1, total))
    }

    pub fn done(&self) -> bool {
        self.client.done() && self.server.done()
    }

    fn pump(&mut self, side: Side, now: u32, ep: &mut Endpoint<u32>) {
        let Some((id, sid)) = self.stream[side as usize] else { return };
        let transfer = match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        };
        transfer.pump(now, self.now_us, ep, id, sid);
    }
}

impl App for TransferApp {
    fn on_event(&mut self, side: Side, now: u32, ep: &mut Endpoint<u32>, event: Event<u32>) {
        match event {
            Event::SessionOpened { id, .. } if side == Side::Client => {
                let sid = counted(|| ep.open_stream(now, id)).expect("a stream");
                self.stream[side as usize] = Some((id, sid));
                self.pump(side, now, ep);
            }
            Event::Stream { id, event: StreamEvent::Opened(sid) } if side == Side::Server => {
                assert!(self.stream[side as usize].is_none(), "one stream");
                self.stream[side as usize] = Some((id, sid));
                self.pump(side, now, ep);
            }
            Event::Stream { event: StreamEvent::Readable(_) | StreamEvent::Writable(_), .. } => {
                self.pump(side, now, ep)
            }
            Event::SessionClosed { reason, .. } => panic!("{side:?}: the session closed: {reason}"),
            _ => {}
        }
    }

    fn next_wakeup_us(&self, now_us: u64) -> Option<u64> {
        [self.client.next_write_us(now_us), self.server.next_write_us(now_us)].into_iter().flatten().min()
    }

    fn on_step(&mut self, side: Side, now: u32, now_us: u64, ep: &mut Endpoint<u32>) {
        self.now_us = now_us;
        self.pump(side, now, ep);
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
        let sid = counted(|| ep.open_stream(now, session)).expect("a stream");
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
            let took = counted(|| ep.write(session, sid, &chunk[..n])).expect("write");
            flow.sent += took as u64;
            if took < n {
                break;
            }
        }
        if flow.sent == flow.send_total && !flow.finished {
            flow.finished = true;
            counted(|| ep.finish(now, session, sid)).expect("finish");
        }
        while !flow.eof {
            match counted(|| ep.read(now, session, sid, &mut chunk)) {
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

    /// Whether `streams` streams were opened from one side and every one of them
    /// has sent all and read to its end, on both sides.
    pub fn all_done(&self, streams: usize) -> bool {
        self.flows.len() == 2 * streams && self.flows.values().all(|f| f.finished && f.eof)
    }

    /// Bytes `side` has received on all its streams.
    pub fn received(&self, side: Side) -> u64 {
        self.flows.iter().filter(|((s, _), _)| *s == side).map(|(_, f)| f.received).sum()
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
            Event::Unproven { .. } | Event::SessionMoved { .. } => {}
        }
    }
}
