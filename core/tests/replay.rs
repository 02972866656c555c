//! Copies of datagrams, datagrams of sessions a server does not have, and floods
//! of new sessions: what is dropped, what is counted, what the peer is told, and
//! what still gets through.

mod support;

use std::sync::{Arc, Mutex};

use kcpgate_core::admission::{Admission, OpeningGate, OpeningLimits, Refusal};
use kcpgate_core::crypto::Method;
use kcpgate_core::endpoint::{Endpoint, Event};
use kcpgate_core::kcp::Mode;
use kcpgate_core::listener::{DropReason, Listener, Outcome};
use kcpgate_core::pipeline::{Connection, SessionConfig, SESSION_NONCES};
use kcpgate_core::session::{SessionEnd, StreamEvent};
use kcpgate_core::settings::SessionSettings;
use kcpgate_core::smux;
use support::{crypto, session_config};

fn config() -> SessionConfig {
    session_config(Mode::Fast3, 1024, 1024, Some((10, 3)))
}

fn server() -> Listener<u32> {
    Listener::new(config(), crypto(Method::Aes256, "replay"), [9; 32]).expect("valid config")
}

/// A client session of conversation `conv`.
fn client(conv: u32) -> Connection {
    Connection::new(conv, &config(), crypto(Method::Aes256, "replay"), [conv as u8; 32]).expect("valid config")
}

/// The next datagram `c` sends after writing `data` (sealed, as on the wire).
fn next_datagram(c: &mut Connection, now: u32, data: &[u8]) -> Vec<u8> {
    assert_eq!(c.write(now, data), data.len());
    c.flush(now);
    let first = c.transmits().next().expect("a datagram").to_vec();
    c.clear_transmits();
    first
}

/// Gives `c` what the server's session at `addr` has to send (its acknowledgements),
/// so `c` keeps sending.
fn ack_back(l: &mut Listener<u32>, addr: u32, c: &mut Connection, now: u32) {
    let s = l.session_mut(&addr).expect("open");
    s.flush(now);
    let replies: Vec<Vec<u8>> = s.transmits().map(<[u8]>::to_vec).collect();
    s.clear_transmits();
    for mut d in replies {
        c.handle_datagram(now, &mut d).expect("a genuine reply");
    }
}

#[test]
fn a_copy_is_dropped_and_counted_from_the_same_address_and_from_another() {
    let mut l = server();
    let mut c = client(77);
    let first = next_datagram(&mut c, 0, b"hello");
    assert_eq!(l.handle_datagram(0, &1, &mut first.clone()), Outcome::Created);
    assert_eq!(l.handle_datagram(5, &1, &mut first.clone()), Outcome::Dropped(DropReason::Replayed), "same address");
    assert_eq!(l.handle_datagram(5, &2, &mut first.clone()), Outcome::Dropped(DropReason::Replayed), "another address");
    assert_eq!(l.len(), 1, "the copy opened no session");

    let second = next_datagram(&mut c, 10, b"world");
    assert_eq!(l.handle_datagram(10, &1, &mut second.clone()), Outcome::Delivered);
    for now in 11..111 {
        let fresh = next_datagram(&mut c, now, b"more");
        assert_eq!(l.handle_datagram(now, &1, &mut fresh.clone()), Outcome::Delivered);
        ack_back(&mut l, 1, &mut c, now);
    }
    assert_eq!(l.handle_datagram(200, &1, &mut second.clone()), Outcome::Dropped(DropReason::Replayed), "100 later");
    assert_eq!(l.handle_datagram(200, &3, &mut second.clone()), Outcome::Dropped(DropReason::MidSession), "elsewhere");
    assert_eq!((l.stats[DropReason::Replayed], l.stats[DropReason::MidSession], l.len()), (3, 1, 1));
    assert_eq!(l.session(&1).expect("open").replays(), 2, "the session counts its own");
    assert_eq!(l.session(&1).expect("open").snmp().in_pkts, 102, "only the originals reached it");

    // The window is the last SESSION_NONCES datagrams: an older copy reaches the
    // session, whose KCP ignores what it has had already.
    for now in 300..300 + SESSION_NONCES as u32 {
        let fresh = next_datagram(&mut c, now, b"x");
        assert_eq!(l.handle_datagram(now, &1, &mut fresh.clone()), Outcome::Delivered);
        ack_back(&mut l, 1, &mut c, now);
    }
    let before = l.session(&1).expect("open").snmp().in_pkts;
    assert_eq!(l.handle_datagram(900, &1, &mut second.clone()), Outcome::Delivered, "past the window");
    assert_eq!(l.session(&1).expect("open").snmp().in_pkts, before + 1);
}

#[test]
fn a_copy_of_an_old_first_datagram_cannot_replace_the_live_session() {
    let mut l = server();
    let old_first = next_datagram(&mut client(1), 0, b"old");
    assert_eq!(l.handle_datagram(0, &1, &mut old_first.clone()), Outcome::Created);
    // The peer restarts with a new conversation from the same address.
    let new_first = next_datagram(&mut client(2), 1_000, b"new");
    assert_eq!(l.handle_datagram(1_000, &1, &mut new_first.clone()), Outcome::Replaced { old_conv: 1 });
    assert_eq!(l.handle_datagram(2_000, &1, &mut old_first.clone()), Outcome::Dropped(DropReason::Replayed));
    assert_eq!(l.session(&1).expect("open").conv(), 2, "the live session stays");
}

/// Listeners of one port (the gateway's sockets) sharing one gate.
struct Shared(Arc<Mutex<OpeningGate>>);

impl Admission for Shared {
    fn admit(&mut self, now: u32, source: u64, fingerprint: Option<u64>) -> Result<(), Refusal> {
        self.0.lock().expect("not poisoned").admit(now, source, fingerprint)
    }
}

#[test]
fn listeners_sharing_a_gate_refuse_each_others_copies() {
    let gate = Arc::new(Mutex::new(OpeningGate::new(OpeningLimits::default(), 0, 1)));
    let (mut a, mut b) = (server(), server());
    a.set_admission(Box::new(Shared(gate.clone())));
    b.set_admission(Box::new(Shared(gate)));
    let first = next_datagram(&mut client(5), 0, b"hi");
    assert_eq!(a.handle_datagram(0, &1, &mut first.clone()), Outcome::Created);
    assert_eq!(b.handle_datagram(0, &2, &mut first.clone()), Outcome::Dropped(DropReason::Replayed));
    assert_eq!(
        server().handle_datagram(0, &2, &mut first.clone()),
        Outcome::Created,
        "a listener of its own would not know"
    );
}

#[test]
fn session_floods_are_refused_and_counted_per_source_and_in_all() {
    let mut l = server();
    let limits = OpeningLimits { per_source_rate: 2, per_source_burst: 3, global_rate: 10, global_burst: 10 };
    l.set_admission(Box::new(OpeningGate::new(limits, 0, 1)));
    // Addresses are host * 1000 + port; a host is the source.
    l.set_source_key(|addr| u64::from(addr / 1000));
    let mut conv = 100;
    let mut open = |l: &mut Listener<u32>, now: u32, addr: u32| {
        conv += 1;
        let mut d = next_datagram(&mut client(conv), now, b"join");
        l.handle_datagram(now, &addr, &mut d)
    };
    let from_one_host: Vec<Outcome> = (0..5).map(|port| open(&mut l, 0, 1000 + port)).collect();
    assert_eq!(from_one_host[..3], [Outcome::Created; 3]);
    assert_eq!(from_one_host[3..], [Outcome::Dropped(DropReason::SourceLimit); 2]);
    let from_many: Vec<Outcome> = (2..20).map(|host| open(&mut l, 0, host * 1000)).collect();
    assert_eq!(from_many.iter().filter(|o| **o == Outcome::Created).count(), 7, "the global burst of 10 in all");
    assert_eq!((l.stats.created, l.stats[DropReason::SourceLimit], l.stats[DropReason::OpeningLimit]), (10, 2, 11));
    while l.accept().is_some() {}
    // Half a second refills one token for the host (2/s) and five in all (10/s).
    assert_eq!(open(&mut l, 500, 1005), Outcome::Created);
    assert_eq!(open(&mut l, 500, 1006), Outcome::Dropped(DropReason::SourceLimit));
    let later: Vec<Outcome> = (30..40).map(|host| open(&mut l, 500, host * 1000)).collect();
    assert_eq!(later.iter().filter(|o| **o == Outcome::Created).count(), 4);
    // Known peers are never limited.
    let mut c = client(101); // the first session's client, whose first datagram went out above
    let _ = next_datagram(&mut c, 0, b"join");
    for now in 600..700 {
        let mut d = next_datagram(&mut c, now, b"data");
        assert_eq!(l.handle_datagram(now, &1000, &mut d), Outcome::Delivered);
        ack_back(&mut l, 1000, &mut c, now);
    }
}

#[test]
fn a_client_drops_copies_of_the_servers_datagrams_too() {
    let mut l = server();
    let mut c = client(3);
    let mut first = next_datagram(&mut c, 0, b"hi");
    assert_eq!(l.handle_datagram(0, &1, &mut first), Outcome::Created);
    let s = l.session_mut(&1).expect("open");
    s.flush(0);
    let reply = s.transmits().next().expect("an acknowledgement").to_vec();
    let in_pkts = c.snmp().in_pkts;
    c.handle_datagram(1, &mut reply.clone()).expect("genuine");
    c.handle_datagram(2, &mut reply.clone()).expect("a copy is no error");
    assert_eq!((c.replays(), c.snmp().in_pkts), (1, in_pkts + 1), "the copy is counted, not processed");
}

fn endpoint(role: smux::Role, seed: u8) -> Endpoint<u32> {
    let mut settings = SessionSettings::kcptun(role);
    settings.mode = Some(Mode::Fast3);
    settings.set_number("sndwnd", 1024).expect("a valid window");
    settings.set_number("rcvwnd", 1024).expect("a valid window");
    let config = settings.endpoint_config("replay").expect("valid settings");
    Endpoint::new(role, config, crypto(Method::Aes256, "replay"), [seed; 32]).expect("valid settings")
}

/// Delivers everything `from` (at `from_addr`) has to send to `to`; returns how many.
fn pump(now: u32, from: &mut Endpoint<u32>, from_addr: u32, to: &mut Endpoint<u32>) -> usize {
    let (mut buf, mut n) = (Vec::new(), 0);
    while let Some(t) = from.poll_transmit(now, 1, &mut buf) {
        to.handle_datagram(now, &from_addr, &mut buf[..t.size].to_vec());
        n += 1;
    }
    n
}

/// A client of a server that restarted hears at once that its session is gone
/// (once it has had data from it: a new client whose first datagram was lost is
/// told nothing, and sends that datagram again).
#[test]
fn a_restarted_server_resets_its_old_clients_sessions() {
    let (mut client, mut server) = (endpoint(smux::Role::Client, 1), endpoint(smux::Role::Server, 2));
    let id = client.connect(0, 2).expect("a session");
    let sid = client.open_stream(0, id).expect("a stream");
    assert_eq!(client.write(id, sid, b"hello").expect("written"), 5);
    for now in (0..200).step_by(10) {
        client.handle_timeout(now);
        server.handle_timeout(now);
        pump(now, &mut client, 1, &mut server);
        while let Some(event) = server.poll_event() {
            if let Event::Stream { id, event: StreamEvent::Opened(sid) } = event {
                server.write(id, sid, b"welcome").expect("written");
            }
        }
        pump(now, &mut server, 2, &mut client);
    }
    assert_eq!(server.len(), 1);
    while client.poll_event().is_some() {}

    let mut restarted = endpoint(smux::Role::Server, 3);
    assert_eq!(client.write(id, sid, b"are you there?").expect("written"), 14);
    client.handle_timeout(300);
    assert!(pump(300, &mut client, 1, &mut restarted) > 0);
    assert_eq!((restarted.len(), restarted.listener_stats()[DropReason::MidSession]), (0, 1));
    assert_eq!(pump(300, &mut restarted, 2, &mut client), 1, "one reset");
    assert_eq!(restarted.listener_stats().resets, 1);
    let ended = std::iter::from_fn(|| client.poll_event()).find_map(|e| match e {
        Event::SessionClosed { id: closed, reason, .. } if closed == id => Some(reason),
        _ => None,
    });
    assert_eq!(ended, Some(SessionEnd::Reset));
    assert!(client.is_empty(), "the client can open a new session now");
}

/// A new peer whose first datagram was lost: its second is refused (it cannot open a
/// session) but not answered with a reset, and the first, sent again, opens one.
#[test]
fn a_new_peer_whose_first_datagram_was_lost_is_not_reset() {
    let mut server = endpoint(smux::Role::Server, 2);
    let mut c = client(9);
    let _lost = next_datagram(&mut c, 0, b"first");
    let second = next_datagram(&mut c, 10, b"second");
    assert_eq!(server.handle_datagram(10, &1, &mut second.clone()), Outcome::Dropped(DropReason::MidSession));
    assert!(server.poll_transmit(10, 1, &mut Vec::new()).is_none(), "no reset");
    assert_eq!(server.listener_stats().resets, 0);
    c.handle_timeout(1_000); // the first segment's retransmission
    let again = c.transmits().next().expect("a retransmission").to_vec();
    assert_eq!(server.handle_datagram(1_000, &1, &mut again.clone()), Outcome::Unproven);
}
