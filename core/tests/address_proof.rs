//! Who is this peer: a server session counts only once its peer has proven that it
//! receives at its address (docs/protocol.md §8.4). Forged openings from addresses
//! that never answer draw at most three times their bytes and open nothing; a
//! spoofed opening cannot replace a live session; a client that really restarted
//! behind the same address gets its new session. All on the virtual clock.

mod support;

use std::cell::Cell;
use std::sync::Arc;

use kcpgate_core::crypto::PacketCrypto;
use kcpgate_core::endpoint::{Endpoint, Event};
use kcpgate_core::session::{SessionEnd, StreamEvent};
use kcpgate_core::smux::{Read, Role};
use kcpgate_core::{DropReason, Outcome};
use support::counting::{Counting, LIVE};
use support::netsim::LinkConfig;
use support::pair::{App, Layers, Pair, Side, CLIENT, KEY, SERVER};

#[global_allocator]
static GLOBAL: Counting = Counting;

fn crypto(layers: &Layers) -> Arc<PacketCrypto> {
    Arc::new(PacketCrypto::from_passphrase(layers.method, KEY))
}

fn server(layers: &Layers) -> Endpoint<u32> {
    Endpoint::new(Role::Server, layers.config(Role::Server), crypto(layers), [7; 32]).expect("a server")
}

/// What a client sends first: an smux SYN and `data` on a new stream, as the
/// datagrams its first flush puts out (one, for a small write).
fn opening(layers: &Layers, seed: u32, data: &[u8]) -> Vec<Vec<u8>> {
    let mut seeds = [0x33; 32];
    seeds[..4].copy_from_slice(&seed.to_le_bytes());
    let mut client = Endpoint::new(Role::Client, layers.config(Role::Client), crypto(layers), seeds).expect("a client");
    let session = client.connect(0, SERVER).expect("a session");
    let sid = client.open_stream(0, session).expect("a stream");
    assert_eq!(client.write(session, sid, data).expect("a write"), data.len());
    let due = client.poll_timeout().expect("a flush is due");
    client.handle_timeout(due);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while let Some(t) = client.poll_transmit(0, 1, &mut buf) {
        out.push(buf[..t.size].to_vec());
    }
    assert!(!out.is_empty(), "the client sent its opening");
    out
}

/// Runs `server`'s timers from `from` to `until` (ms), collecting every datagram
/// it sends: (destination, bytes).
fn run_timers(server: &mut Endpoint<u32>, from: u32, until: u32) -> Vec<(u32, usize)> {
    let mut sent = Vec::new();
    let mut buf = Vec::new();
    let mut now = from;
    loop {
        while let Some(t) = server.poll_transmit(now, 8, &mut buf) {
            sent.push((t.destination, t.size));
        }
        match server.poll_timeout() {
            Some(at) if at <= until => {
                now = at.max(now);
                server.handle_timeout(now);
            }
            _ => return sent,
        }
    }
}

fn events(server: &mut Endpoint<u32>) -> Vec<Event<u32>> {
    std::iter::from_fn(|| server.poll_event()).collect()
}

/// A KCP ACK of `sn` echoing `ts`, sealed with the shared key: what an off-path
/// attacker with the key can send, guessing the `ts`.
fn forged_ack(layers: &Layers, conv: u32, sn: u32, ts: u32, nonce: u64) -> Vec<u8> {
    let c = crypto(layers);
    let (head, tail) = (c.header_len(), c.tail_len());
    let mut seg = Vec::new();
    seg.extend_from_slice(&conv.to_le_bytes());
    seg.extend_from_slice(&[82, 0]); // ACK, frg 0
    seg.extend_from_slice(&128u16.to_le_bytes());
    seg.extend_from_slice(&ts.to_le_bytes());
    seg.extend_from_slice(&sn.to_le_bytes());
    seg.extend_from_slice(&1u32.to_le_bytes()); // una: "I have your first segment"
    seg.extend_from_slice(&0u32.to_le_bytes());
    let mut packet = vec![0u8; head];
    packet.extend_from_slice(&seg);
    packet.resize(head + seg.len() + tail, 0);
    let mut unique = [0x5a; 16];
    unique[..8].copy_from_slice(&nonce.to_le_bytes());
    c.seal(&mut packet, &unique[..c.nonce_len()]);
    packet
}

fn conv_of(layers: &Layers, datagram: &[u8]) -> u32 {
    let head = crypto(layers).header_len();
    let mut d = datagram.to_vec();
    crypto(layers).open(&mut d).expect("a genuine datagram");
    u32::from_le_bytes(d[head..head + 4].try_into().expect("4 bytes"))
}

/// Must-show 1 (core): a key-valid opening with SYN and 64 B of data from an
/// address that never answers draws at most three times its bytes over 40 s, and
/// nothing is announced (so nothing is dialled); forged ACKs guessing the `ts`
/// prove nothing.
#[test]
fn a_forged_opening_draws_at_most_three_times_its_bytes_and_opens_nothing() {
    let layers = Layers { fec: None, ..Layers::kcptun() };
    let mut server = server(&layers);
    let victim = 99;
    let datagrams = opening(&layers, 1, &[0x42; 64]);
    let conv = conv_of(&layers, &datagrams[0]);
    let mut received = 0;
    for (i, mut d) in datagrams.into_iter().enumerate() {
        received += d.len();
        let expected = if i == 0 { Outcome::Unproven } else { Outcome::Delivered };
        assert_eq!(server.handle_datagram(0, &victim, &mut d), expected);
    }
    // Guesses at the echo: the clock without a base, zero, the first seconds.
    let mut guessed = 0;
    for ts in [0u32, 1, 10, 20, 30, 40].into_iter().chain((0..200).map(|i| i * 7)) {
        let mut ack = forged_ack(&layers, conv, 0, ts, guessed);
        received += ack.len();
        guessed += 1;
        let outcome = server.handle_datagram(ts % 40, &victim, &mut ack);
        assert!(matches!(outcome, Outcome::Delivered), "a guessed ACK is taken as input only: {outcome:?}");
    }
    let sent = run_timers(&mut server, 40, 40_000);
    let sent_bytes: usize = sent.iter().map(|&(to, n)| if to == victim { n } else { 0 }).sum();
    println!(
        "forged opening and {guessed} guessed ACKs: {received} B in, {} datagrams and {sent_bytes} B out over 40 s",
        sent.len()
    );
    assert!(sent_bytes <= 3 * received, "{sent_bytes} B sent for {received} B received");
    assert!(!sent.is_empty(), "the probe and the ACK went out");
    let seen = events(&mut server);
    assert!(matches!(seen.as_slice(), [Event::Unproven { remote: 99, .. }]), "only the expiry: {seen:?}");
    assert_eq!((server.len(), server.unproven_len()), (0, 0));
    let stats = server.listener_stats();
    assert_eq!((stats.proven, stats.unproven_expired), (0, 1));
}

/// Without the forged ACKs, the anti-amplification limit itself is what holds:
/// the probe is sent again on its timer only while the allowance lasts.
#[test]
fn a_lone_opening_is_answered_within_three_times_its_size() {
    let layers = Layers::kcptun();
    let mut server = server(&layers);
    let mut received = 0;
    for mut d in opening(&layers, 2, b"hello") {
        received += d.len();
        server.handle_datagram(0, &99, &mut d);
    }
    let sent = run_timers(&mut server, 0, 40_000);
    let sent_bytes: usize = sent.iter().map(|&(_, n)| n).sum();
    println!("opening of {received} B: {} datagrams, {sent_bytes} B back", sent.len());
    assert!(sent_bytes <= 3 * received, "{sent_bytes} B sent for {received} B received");
    assert!(server.listener_stats().amplification_held > 0, "the probe's retransmissions were held back");
}

/// Must-show 1 (core): 1,000 forged openings open nothing, each holds a bounded
/// amount of memory while it waits, and all of it is given back at the timeout.
#[test]
fn a_thousand_forged_openings_open_nothing_and_hold_bounded_memory() {
    let layers = Layers::kcptun();
    let openings: Vec<Vec<Vec<u8>>> = (0..1_000).map(|i| opening(&layers, i, &[i as u8; 64])).collect();
    let mut server = server(&layers);
    // Warm the server's tables to their size for 1,000, so what is measured is
    // the sessions.
    let before = LIVE.with(Cell::get);
    for (i, datagrams) in openings.iter().enumerate() {
        for d in datagrams {
            server.handle_datagram(0, &(1_000 + i as u32), &mut d.clone());
        }
    }
    let _ = run_timers(&mut server, 0, 100);
    let held = LIVE.with(Cell::get) - before;
    let per_session = held / 1_000;
    println!("1,000 unproven sessions hold {} KiB, {} B each", held / 1024, per_session);
    assert!(per_session <= 32 * 1024, "{per_session} B per unproven session");
    assert_eq!((server.len(), server.unproven_len()), (0, 1_000));
    let _ = run_timers(&mut server, 100, 40_000);
    let seen = events(&mut server);
    assert_eq!(seen.len(), 1_000);
    assert!(seen.iter().all(|e| matches!(e, Event::Unproven { .. })), "nothing was announced");
    assert_eq!(server.unproven_len(), 0);
    let left = LIVE.with(Cell::get) - before;
    println!("after the timeout: {} KiB left (tables)", left / 1024);
    assert!(left <= held / 4, "{left} B still held after every session timed out");
}

/// The budget of unproven sessions: past it, openings are refused and counted,
/// and room comes back when the waiting ones time out.
#[test]
fn openings_past_the_unproven_budget_are_refused_until_room_comes_back() {
    let layers = Layers::kcptun();
    let mut server = server(&layers);
    server.set_address_proof(true, 10);
    for i in 0..11u32 {
        let mut d = opening(&layers, i, b"x").remove(0);
        let expected = if i < 10 { Outcome::Unproven } else { Outcome::Dropped(DropReason::UnprovenLimit) };
        assert_eq!(server.handle_datagram(0, &(100 + i), &mut d), expected, "opening {i}");
    }
    let _ = run_timers(&mut server, 0, 6_000);
    let mut d = opening(&layers, 11, b"x").remove(0);
    assert_eq!(server.handle_datagram(6_000, &111, &mut d), Outcome::Unproven);
    assert_eq!(server.listener_stats()[DropReason::UnprovenLimit], 1);
}

/// Records events; streams are read whole as they become readable.
#[derive(Default)]
struct Echo {
    opened: Vec<(Side, u64)>,
    closed: Vec<(Side, SessionEnd)>,
    streams: Vec<(Side, u64, u32)>,
    received: Vec<(Side, Vec<u8>)>,
}

impl App for Echo {
    fn on_event(&mut self, side: Side, now: u32, ep: &mut Endpoint<u32>, event: Event<u32>) {
        match event {
            Event::SessionOpened { id, .. } => self.opened.push((side, id.0)),
            Event::SessionClosed { reason, .. } => self.closed.push((side, reason)),
            Event::Stream { id, event: StreamEvent::Opened(sid) } => self.streams.push((side, id.0, sid)),
            Event::Stream { id, event: StreamEvent::Readable(sid) } => {
                let mut buf = [0u8; 4096];
                while let Ok(Read::Data(n)) = ep.read(now, id, sid, &mut buf) {
                    self.received.push((side, buf[..n].to_vec()));
                }
            }
            _ => {}
        }
    }
}

impl Echo {
    fn bytes(&self, side: Side) -> Vec<u8> {
        self.received.iter().filter(|(s, _)| *s == side).flat_map(|(_, b)| b.clone()).collect()
    }
}

/// A pair with a stream carrying `hello` to the server.
fn live_pair(layers: &Layers) -> (Pair, Echo, kcpgate_core::SessionId, u32) {
    let mut pair = Pair::new(layers, LinkConfig::ideal(5_000), 3);
    let mut app = Echo::default();
    let (now, session) = (pair.now(), pair.session);
    let sid = pair.client.open_stream(now, session).expect("a stream");
    pair.client.write(session, sid, b"hello").expect("a write");
    assert!(pair.run(&mut app, 2_000, |_, app| app.bytes(Side::Server) == b"hello"), "the server read hello");
    (pair, app, session, sid)
}

/// Must-show 2 (core): an opening with a new conversation, spoofed from a live
/// client's address and port, leaves that session and its stream as they were.
#[test]
fn a_spoofed_opening_from_a_live_clients_address_replaces_nothing() {
    let layers = Layers::kcptun();
    let (mut pair, mut app, session, sid) = live_pair(&layers);
    let server_session = pair.server.session_at(&CLIENT).expect("the live session");
    for (i, mut d) in opening(&layers, 200, b"I am the client now").into_iter().enumerate() {
        let now = pair.now();
        let expected = if i == 0 { Outcome::Unproven } else { Outcome::Delivered };
        assert_eq!(pair.server.handle_datagram(now, &CLIENT, &mut d), expected);
    }
    // The live session goes on, both ways, past the spoofed one's timeout.
    pair.advance(&mut app, 6_000);
    let now = pair.now();
    pair.client.write(session, sid, b" world").expect("a write");
    let (server_sid, server_id) =
        app.streams.iter().find(|s| s.0 == Side::Server).map(|s| (s.2, s.1)).expect("a stream");
    assert_eq!(server_id, server_session.0);
    pair.server.write(server_session, server_sid, b"still here").expect("a write");
    let _ = now;
    assert!(pair.run(&mut app, 2_000, |_, app| app.bytes(Side::Client) == b"still here"), "the client read the reply");
    assert_eq!(app.bytes(Side::Server), b"hello world");
    assert_eq!(pair.server.session_at(&CLIENT), Some(server_session), "the same session");
    assert!(app.closed.is_empty(), "no session closed: {:?}", app.closed);
    let stats = pair.server.listener_stats();
    assert_eq!((stats.replaced, stats.unproven_expired), (0, 1));
}

/// Must-show 2 (core): a client that restarted behind the same address and port
/// proves its address with its new conversation and replaces its old session.
#[test]
fn a_client_restarted_behind_the_same_address_gets_its_new_session() {
    let layers = Layers::kcptun();
    let (mut pair, mut app, _, _) = live_pair(&layers);
    let old = pair.server.session_at(&CLIENT).expect("the old session");
    // The restart: a new client process, a new conversation, the same address.
    let mut restarted =
        Endpoint::new(Role::Client, layers.config(Role::Client), crypto(&layers), [77; 32]).expect("a client");
    let now = pair.now();
    let session = restarted.connect(now, SERVER).expect("a session");
    let sid = restarted.open_stream(now, session).expect("a stream");
    restarted.write(session, sid, b"again").expect("a write");
    pair.client = restarted;
    pair.session = session;
    assert!(
        pair.run(&mut app, 3_000, |_, app| app.bytes(Side::Server).ends_with(b"again")),
        "the restarted client's stream reached the server"
    );
    let new = pair.server.session_at(&CLIENT).expect("the new session");
    assert_ne!(new, old);
    assert!(app.closed.iter().any(|(s, why)| *s == Side::Server && *why == SessionEnd::Replaced));
    let stats = pair.server.listener_stats();
    assert_eq!((stats.replaced, stats.proven), (1, 2));
}
