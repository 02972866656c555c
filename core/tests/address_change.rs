//! Players who change address (docs/protocol.md §8.5): with address changes on, a
//! session follows its peer to a new port and a new address mid-transfer on
//! evidence of the session alone; a datagram with the right key and a live
//! conversation but no such evidence, or a copy of a genuine one, moves nothing.

mod support;

use kcpgate_core::crypto::PacketCrypto;
use kcpgate_core::endpoint::{Endpoint, Event};
use kcpgate_core::kcp::Segments;
use kcpgate_core::pipeline::Connection;
use kcpgate_core::smux::Role;
use kcpgate_core::wire::Datagram;
use kcpgate_core::{DropReason, Outcome};
use support::netsim::{Link, LinkConfig};
use support::pair::{App, Layers, Pair, Side, TransferApp, CLIENT, KEY};

/// A transfer that records the server's session events, and every datagram the
/// server received as it came (before it was opened in place).
struct Moving {
    inner: TransferApp,
    moves: Vec<(u32, u32)>,
    closed: Vec<Side>,
    captured: Vec<Vec<u8>>,
}

impl App for Moving {
    fn on_event(&mut self, side: Side, now: u32, ep: &mut Endpoint<u32>, event: Event<u32>) {
        match &event {
            Event::SessionMoved { from, to, .. } => self.moves.push((*from, *to)),
            Event::SessionClosed { .. } => {
                self.closed.push(side);
                return;
            }
            _ => {}
        }
        self.inner.on_event(side, now, ep, event);
    }

    fn deliver(&mut self, side: Side, now: u32, ep: &mut Endpoint<u32>, from: u32, datagram: &mut [u8]) {
        if side == Side::Server {
            self.captured.push(datagram.to_vec());
        }
        ep.handle_datagram(now, &from, datagram);
    }

    fn next_wakeup_us(&self, now_us: u64) -> Option<u64> {
        self.inner.next_wakeup_us(now_us)
    }

    fn on_step(&mut self, side: Side, now: u32, now_us: u64, ep: &mut Endpoint<u32>) {
        self.inner.on_step(side, now, now_us, ep);
    }
}

/// A datagram of conversation `conv` at sn 1: data, no ACK.
fn without_evidence(conv: u32) -> Vec<u8> {
    let layers = Layers::kcptun();
    let crypto = std::sync::Arc::new(PacketCrypto::from_passphrase(layers.method, KEY));
    let mut c = Connection::new(conv, &layers.config(Role::Client).session, crypto, [9; 32]).expect("a connection");
    for (now, data) in [(0, b"first".as_slice()), (10, b"second")] {
        c.write(now, data);
        c.flush(now);
        if now == 0 {
            c.clear_transmits();
        }
    }
    let datagram = c.transmits().next().expect("a datagram").to_vec();
    datagram
}

fn lossy() -> LinkConfig {
    let mut l = LinkConfig::ideal(10_000);
    l.loss = 0.01;
    l
}

fn moving_pair(roam: bool) -> (Pair, Moving) {
    let mut pair = Pair::with_links(&Layers::kcptun(), Link::new(lossy(), 5), Link::new(lossy(), 6), 5, 0);
    pair.server.set_address_changes(roam);
    let app =
        Moving { inner: TransferApp::both_ways(4 << 20), moves: Vec::new(), closed: Vec::new(), captured: Vec::new() };
    (pair, app)
}

/// Must-show 3 (core): the client's source port changes (1 → 11), then its
/// address (11 → 12), each mid-transfer; every byte arrives both ways in one
/// session, and each move is an event and counted.
#[test]
fn a_session_follows_its_peer_to_a_new_port_then_a_new_address_mid_transfer() {
    let (mut pair, mut app) = moving_pair(true);
    assert!(pair.run(&mut app, 60_000, |_, a| a.inner.client.received > 1 << 20), "a first MiB");
    pair.client_addr = 11;
    assert!(pair.run(&mut app, 60_000, |_, a| a.inner.client.received > 2 << 20), "a second MiB");
    pair.client_addr = 12;
    assert!(pair.run(&mut app, 120_000, |_, a| a.inner.done()), "the transfer finished");
    for t in [&app.inner.client, &app.inner.server] {
        assert_eq!((t.first_mismatch, t.received), (None, 4 << 20), "every byte, in order");
    }
    println!("moves {:?}; {} datagrams sent to a left address", app.moves, pair.misdirected);
    assert_eq!(app.moves, [(CLIENT, 11), (11, 12)]);
    assert!(app.closed.is_empty(), "no session ended: {:?}", app.closed);
    assert_eq!((pair.server.len(), pair.server.listener_stats().moved), (1, 2));
    assert_eq!(pair.server.session_at(&12), Some(app.inner.stream[Side::Server as usize].unwrap().0));
}

/// Must-show 3 (core): from another address, a datagram with the key and the live
/// conversation but no evidence, and a copy of a genuine datagram, move nothing
/// and are counted; the session carries on at its address.
#[test]
fn without_evidence_or_as_a_copy_a_datagram_moves_nothing() {
    let (mut pair, mut app) = moving_pair(true);
    assert!(pair.run(&mut app, 60_000, |_, a| a.inner.client.received > 1 << 20), "a first MiB");
    let id = pair.server.session_at(&CLIENT).expect("the session");
    // A genuine datagram the server already took, sent again from elsewhere.
    let now = pair.now();
    let has_conv = |d: &&Vec<u8>| {
        let (crypto, mut d) = (PacketCrypto::from_passphrase(Layers::kcptun().method, KEY), d.to_vec());
        let plain = crypto.open(&mut d).expect("genuine");
        let acks = |k: kcpgate_core::wire::KcpPart| Segments::new(k.bytes()).flatten().any(|(h, _)| h.cmd == 82);
        Datagram::parse(&d[plain]).is_ok_and(|p| p.announced().is_some() && p.kcp().is_some_and(acks))
    };
    // The client's latest datagram with an ACK: evidence, were it not a copy.
    let copy = app.captured.iter().rev().find(has_conv).expect("a captured datagram with an ACK").clone();
    assert_eq!(pair.server.handle_datagram(now, &50, &mut copy.clone()), Outcome::Dropped(DropReason::Replayed));
    // Made with the key and the live conversation, carrying data but no ACK
    // echoing anything the server sent.
    let conv = pair.server.session(id).expect("the session").1.stats().conv;
    let mut forged = without_evidence(conv);
    assert_eq!(pair.server.handle_datagram(now, &51, &mut forged), Outcome::Dropped(DropReason::NoEvidence));
    assert!(pair.run(&mut app, 120_000, |_, a| a.inner.done()), "the transfer finished");
    assert!(app.moves.is_empty(), "no move: {:?}", app.moves);
    assert_eq!(pair.server.session_at(&CLIENT), Some(id));
    let stats = pair.server.listener_stats();
    assert_eq!((stats[DropReason::NoEvidence], stats.moved), (1, 0));
}

/// Off (the default, as kcp-go): the session stays at its address; the moved
/// client's datagrams are strays, answered with a reset, so the client learns at
/// once that it has to open a new session.
#[test]
fn without_address_changes_a_session_stays_at_its_address() {
    let (mut pair, mut app) = moving_pair(false);
    assert!(pair.run(&mut app, 60_000, |_, a| a.inner.client.received > 1 << 20), "a first MiB");
    pair.client_addr = 11;
    assert!(pair.run(&mut app, 5_000, |_, a| !a.closed.is_empty()), "the client's session ended");
    assert!(app.moves.is_empty());
    assert!(pair.server.session_at(&CLIENT).is_some() && pair.server.session_at(&11).is_none());
    let stats = pair.server.listener_stats();
    assert!(stats[DropReason::MidSession] > 0 && stats.moved == 0, "{stats:?}");
    assert_eq!(app.closed, [Side::Client], "the client heard the reset");
}
