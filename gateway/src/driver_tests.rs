//! The driver on an in-memory transport and tokio's paused clock: no socket, no
//! real wait. Players are the core's client endpoints; what they send reaches the
//! driver through a channel, and what it sends comes back the same way. Time moves
//! only when every task waits, so 30 seconds of keep-alives take none.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcpgate_core::{Endpoint, Event, PacketCrypto, Role, SessionEnd, SessionId, SessionSettings};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use super::Driver;
use crate::config::Settings;
use crate::control::{owner_of, Capture, Direction, Profile, QueryKind, SessionEvent, TunablesPatch};
use crate::runtime::Plan;
use crate::transport::{Transport, TransportKind};
use kcpgate_core::Framing;

const KEY: &str = "in-memory";
const GATEWAY: &str = "192.0.2.1:4000";

/// What reaches the driver: a player's datagram, or (WebTransport) the end of a
/// player's transport session.
enum Arrival {
    Datagram(SocketAddr, Vec<u8>),
    Gone(SocketAddr),
}

/// A transport of channels. With `BROWSER` it acts as the WebTransport listener
/// does: peers can leave, and a peer whose session ended hears why.
struct Memory<const BROWSER: bool> {
    arrivals: mpsc::UnboundedReceiver<Arrival>,
    batch: Vec<(SocketAddr, Vec<u8>)>,
    gone: Vec<SocketAddr>,
    sent: mpsc::UnboundedSender<(SocketAddr, Vec<u8>)>,
    /// `session_ended` calls: the peer and the reason it was given.
    ended: Arc<Mutex<Vec<(SocketAddr, String)>>>,
}

impl<const BROWSER: bool> Transport for Memory<BROWSER> {
    type Peer = SocketAddr;

    const KIND: TransportKind = if BROWSER { TransportKind::Webtransport } else { TransportKind::Udp };

    async fn recv(&mut self) -> std::io::Result<()> {
        self.batch.clear();
        let Some(mut arrival) = self.arrivals.recv().await else {
            return std::future::pending().await;
        };
        loop {
            match arrival {
                Arrival::Datagram(from, bytes) => self.batch.push((from, bytes)),
                Arrival::Gone(peer) => self.gone.push(peer),
            }
            match self.arrivals.try_recv() {
                Ok(next) => arrival = next,
                Err(_) => return Ok(()),
            }
        }
    }

    fn datagrams(&mut self) -> impl Iterator<Item = (SocketAddr, &mut [u8])> + '_ {
        self.batch.iter_mut().map(|(from, bytes)| (*from, bytes.as_mut_slice()))
    }

    fn take_gone(&mut self) -> Option<SocketAddr> {
        self.gone.pop()
    }

    fn send(
        &mut self,
        to: &SocketAddr,
        data: &[u8],
        segment: usize,
    ) -> impl Future<Output = std::io::Result<()>> + Send {
        for datagram in data.chunks(segment.max(1)) {
            let _ = self.sent.send((*to, datagram.to_vec()));
        }
        std::future::ready(Ok(()))
    }

    fn max_segments(&self, _size: usize) -> usize {
        4
    }

    fn local_addr(&self) -> SocketAddr {
        GATEWAY.parse().unwrap()
    }

    fn address(peer: &SocketAddr) -> SocketAddr {
        *peer
    }

    fn session_ended(&mut self, peer: &SocketAddr, reason: &str) {
        self.ended.lock().unwrap().push((*peer, reason.to_string()));
    }
}

/// Kcptun clients (the core's client endpoints) talking to one driver.
struct Players {
    to_gateway: mpsc::UnboundedSender<Arrival>,
    from_gateway: mpsc::UnboundedReceiver<(SocketAddr, Vec<u8>)>,
    clients: BTreeMap<SocketAddr, (Endpoint<()>, SessionId)>,
    /// Every event of every player, in order.
    events: Vec<(SocketAddr, Event<()>)>,
    /// Every datagram each player sent.
    sent: BTreeMap<SocketAddr, Vec<Vec<u8>>>,
    start: Instant,
    out: Vec<u8>,
}

/// A server's driver on a [`Memory`] transport, running, and its players.
struct Rig {
    plan: Arc<Plan>,
    players: Players,
    drain: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    ended: Arc<Mutex<Vec<(SocketAddr, String)>>>,
}

fn rig<const BROWSER: bool>(flags: &str) -> Rig {
    let args = format!("-l {GATEWAY} -t 127.0.0.1:9 -key {KEY} {flags}");
    let settings = Settings::parse(Role::Server, args.split_whitespace().map(String::from)).expect("valid flags");
    let plan = Arc::new(Plan::alone(settings).expect("valid settings"));
    let (to_gateway, arrivals) = mpsc::unbounded_channel();
    let (sent, from_gateway) = mpsc::unbounded_channel();
    let ended = Arc::new(Mutex::new(Vec::new()));
    let transport = Memory::<BROWSER> { arrivals, batch: Vec::new(), gone: Vec::new(), sent, ended: ended.clone() };
    let (drain, draining) = watch::channel(false);
    let task = tokio::spawn(Driver::server(transport, plan.clone(), Framing::Streams).run(draining));
    let players = Players {
        to_gateway,
        from_gateway,
        clients: BTreeMap::new(),
        events: Vec::new(),
        sent: BTreeMap::new(),
        start: Instant::now(),
        out: Vec::new(),
    };
    Rig { plan, players, drain, task, ended }
}

impl Players {
    fn now(&self) -> u32 {
        self.start.elapsed().as_millis() as u32
    }

    /// A new player at `addr`, dialling the gateway.
    fn join(&mut self, addr: &str) -> SocketAddr {
        let addr: SocketAddr = addr.parse().unwrap();
        let settings = SessionSettings::kcptun(Role::Client);
        let config = settings.endpoint_config(KEY).expect("valid settings");
        let crypto = Arc::new(PacketCrypto::from_passphrase(settings.crypt, KEY));
        let mut seed = [0u8; 32];
        seed[..2].copy_from_slice(&addr.port().to_le_bytes());
        let mut endpoint = Endpoint::new(Role::Client, config, crypto, seed).expect("an endpoint");
        let id = endpoint.connect(self.now(), ()).expect("a session");
        self.clients.insert(addr, (endpoint, id));
        addr
    }

    /// Runs `ms` of virtual time in steps of 10 ms: players send, the driver runs,
    /// players take what came back.
    async fn run(&mut self, ms: u64) {
        for _ in 0..ms.div_ceil(10) {
            let now = self.now();
            for (addr, (endpoint, _)) in &mut self.clients {
                endpoint.handle_timeout(now);
                while let Some(t) = endpoint.poll_transmit(now, 1, &mut self.out) {
                    let datagram = self.out[..t.size].to_vec();
                    self.sent.entry(*addr).or_default().push(datagram.clone());
                    let _ = self.to_gateway.send(Arrival::Datagram(*addr, datagram));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = self.now();
            while let Ok((to, mut datagram)) = self.from_gateway.try_recv() {
                if let Some((endpoint, _)) = self.clients.get_mut(&to) {
                    endpoint.handle_datagram(now, &(), &mut datagram);
                }
            }
            for (addr, (endpoint, _)) in &mut self.clients {
                while let Some(event) = endpoint.poll_event() {
                    self.events.push((*addr, event));
                }
            }
        }
    }

    /// Why `addr`'s session ended, if it did.
    fn ended(&self, addr: SocketAddr) -> Option<&SessionEnd> {
        self.events.iter().find_map(|(a, e)| match e {
            Event::SessionClosed { reason, .. } if *a == addr => Some(reason),
            _ => None,
        })
    }

    /// A player leaves without a word (its sockets close).
    fn vanish(&mut self, addr: SocketAddr) {
        self.clients.remove(&addr);
    }
}

impl Rig {
    /// Runs until the gateway has `n` sessions (a player's first keep-alive opens
    /// its session) and returns their ids, oldest first.
    async fn sessions(&mut self, n: usize) -> Vec<u64> {
        let registry = &self.plan.shared.registry;
        for _ in 0..3000 {
            if registry.open_sessions() == n as u64 {
                let mut views = registry.sessions().await;
                views.sort_by_key(|v| v.age_ms);
                return views.into_iter().rev().map(|v| v.id).collect();
            }
            self.players.run(10).await;
        }
        panic!("{} sessions, not {n}", registry.open_sessions());
    }
}

/// The reason of the next `session_closed` event.
async fn closed_reason(events: &mut broadcast::Receiver<SessionEvent>) -> String {
    loop {
        if let SessionEvent::SessionClosed { reason, .. } = events.recv().await.expect("an event") {
            return reason;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_kick_asks_the_owning_task_alone_and_the_peer_cannot_come_back() {
    let mut rig = rig::<false>("");
    let cheater = rig.players.join("198.51.100.7:5000");
    let honest = rig.players.join("198.51.100.8:5000");
    let ids = rig.sessions(2).await;
    let registry = rig.plan.shared.registry.clone();
    let (task, _) = owner_of(ids[0]);
    let cheater_id = registry.sessions().await.into_iter().find(|v| v.remote == cheater).expect("a view").id;
    let mut events = registry.subscribe();
    let before = registry.queries_by_task();

    assert!(registry.kick(cheater_id, "cheating").await);
    assert_eq!(closed_reason(&mut events).await, "kicked: cheating");
    assert!(registry.session(cheater_id).await.is_none(), "the kicked session is gone");
    assert!(!registry.kick(cheater_id, "again").await, "a second kick finds nothing");
    let after = registry.queries_by_task();
    let asked = |counts: &[(usize, [u64; QueryKind::ALL.len()])], kind: QueryKind| {
        counts.iter().find(|(t, _)| *t == task).unwrap().1[kind as usize]
    };
    assert_eq!(asked(&after, QueryKind::Kick) - asked(&before, QueryKind::Kick), 2, "both kicks went to the owner");

    // The cheater's client keeps sending: refused, and it hears at once that its
    // session is gone; the other player plays on.
    rig.players.run(15_000).await;
    assert!(
        matches!(rig.players.ended(cheater), Some(SessionEnd::Reset)),
        "the kicked peer is told: {:?}",
        rig.players.ended(cheater)
    );
    assert_eq!(rig.players.ended(honest), None);
    assert_eq!(registry.open_sessions(), 1);
    assert!(registry.dropped().await[kcpgate_core::DropReason::Closed] > 0, "its datagrams were refused and counted");
}

#[tokio::test(start_paused = true)]
async fn a_capture_copies_the_sessions_datagrams_both_ways_as_they_pass() {
    let mut rig = rig::<false>("");
    let player = rig.players.join("198.51.100.9:6000");
    let id = rig.sessions(1).await[0];
    let capture = Arc::new(Capture::new(4));
    let view = rig.plan.shared.registry.capture(id, &capture).await.expect("the session's view");
    assert_eq!(view.id, id);
    let sent_before = rig.players.sent[&player].len();
    rig.players.run(25_000).await; // two keep-alives each way
    let datagrams = capture.finish(Duration::from_secs(1)).await;
    let sent = &rig.players.sent[&player][sent_before..];
    let (ins, outs): (Vec<_>, Vec<_>) = datagrams.iter().partition(|(d, _, _)| *d == Direction::In);
    assert!(!ins.is_empty() && !outs.is_empty(), "both directions: {} in, {} out", ins.len(), outs.len());
    for (_, _, bytes) in &ins {
        assert!(sent.contains(bytes), "a captured datagram is one the player sent, byte for byte");
    }
}

#[tokio::test(start_paused = true)]
async fn a_retune_applies_to_new_sessions_and_open_ones_keep_theirs() {
    let mut rig = rig::<false>("-sndwnd 1024");
    rig.players.join("198.51.100.10:7000");
    let old = rig.sessions(1).await[0];
    let patch = TunablesPatch { sndwnd: Some(300), mode: Some(Profile::Fast3), ..TunablesPatch::default() };
    rig.plan.retune(&patch).expect("a valid change");
    rig.plan.shared.registry.retune().await;
    rig.players.join("198.51.100.11:7000");
    let ids = rig.sessions(2).await;
    let new = ids.into_iter().find(|id| *id != old).unwrap();
    let registry = &rig.plan.shared.registry;
    let settings = |view: Option<crate::control::SessionInfo>| {
        let view = view.expect("a view");
        (view.kcp.snd_wnd, view.mode)
    };
    assert_eq!(settings(registry.session(old).await), (1024, Profile::Fast), "the open session keeps its settings");
    assert_eq!(settings(registry.session(new).await), (300, Profile::Fast3), "the new one has the new ones");
}

#[tokio::test(start_paused = true)]
async fn draining_closes_idle_sessions_and_the_task_ends() {
    let mut rig = rig::<false>("");
    rig.players.join("198.51.100.12:8000");
    rig.players.join("198.51.100.13:8000");
    rig.sessions(2).await;
    let mut events = rig.plan.shared.registry.subscribe();
    rig.drain.send(true).unwrap();
    let reason = closed_reason(&mut events).await;
    assert!(reason.starts_with("draining"), "{reason}");
    tokio::time::timeout(Duration::from_secs(5), &mut rig.task).await.expect("the task ends").expect("no panic");
    assert_eq!(rig.plan.shared.registry.open_sessions(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_dropped_after_the_keepalive_timeout_of_virtual_time() {
    let mut rig = rig::<false>("");
    let player = rig.players.join("198.51.100.14:9000");
    rig.sessions(1).await;
    let mut events = rig.plan.shared.registry.subscribe();
    rig.players.vanish(player);
    let silent_since = Instant::now();
    let reason = closed_reason(&mut events).await;
    let after = silent_since.elapsed();
    assert!(
        after >= Duration::from_secs(30) && after < Duration::from_secs(45),
        "closed {after:?} after the last word"
    );
    assert!(reason.contains("keep-alive") || reason.contains("timed out"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn a_browser_that_leaves_ends_its_session_and_a_kicked_one_hears_why() {
    let mut rig = rig::<true>("");
    let leaving = rig.players.join("198.51.100.20:443");
    let kicked = rig.players.join("198.51.100.21:443");
    rig.sessions(2).await;
    let registry = rig.plan.shared.registry.clone();
    let views = registry.sessions().await;
    assert!(views.iter().all(|v| v.transport == TransportKind::Webtransport));
    let mut events = registry.subscribe();

    rig.players.vanish(leaving);
    rig.players.to_gateway.send(Arrival::Gone(leaving)).unwrap();
    assert_eq!(closed_reason(&mut events).await, "the peer closed its transport session");

    let id = views.iter().find(|v| v.remote == kicked).unwrap().id;
    assert!(registry.kick(id, "afk").await);
    assert_eq!(closed_reason(&mut events).await, "kicked: afk");
    rig.players.run(100).await;
    let ended = rig.ended.lock().unwrap().clone();
    assert!(ended.contains(&(kicked, "kicked: afk".to_string())), "the browser's transport is told why: {ended:?}");
    assert_eq!(registry.open_sessions(), 0);
}
