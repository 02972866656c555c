//! Whole sessions through the core endpoint's public API, on a virtual clock with
//! no sockets and no sleeps: every stream lifecycle (half-close each way,
//! close-wait, reset, a refused target, FIN racing data, many streams), session
//! ends, and 64 streams each way through every layer under loss.

mod support;

use kcpgate_core::endpoint::{Endpoint, Event, SessionId};
use kcpgate_core::session::{SessionEnd, StreamEnd, StreamEvent};
use kcpgate_core::smux::{self, Read, SmuxError};
use kcpgate_core::stack::StackError;
use kcpgate_core::DropReason;
use support::netsim::LinkConfig;
use support::pair::{App, Layers, Pair, PatternApp, Side};

/// Records every event; the test makes the calls itself.
#[derive(Default)]
struct Recorder {
    events: Vec<(Side, Event<u32>)>,
}

impl App for Recorder {
    fn on_event(&mut self, side: Side, _now: u32, _ep: &mut Endpoint<u32>, event: Event<u32>) {
        self.events.push((side, event));
    }
}

impl Recorder {
    fn stream_events(&self, side: Side) -> Vec<StreamEvent> {
        let of_side = self.events.iter().filter(|(s, _)| *s == side);
        of_side.filter_map(|(_, e)| if let Event::Stream { event, .. } = e { Some(*event) } else { None }).collect()
    }

    fn closed(&self, side: Side, sid: u32) -> Option<StreamEnd> {
        self.stream_events(side).into_iter().find_map(|e| match e {
            StreamEvent::Closed(s, why) if s == sid => Some(why),
            _ => None,
        })
    }

    /// The server's session and the sid of the first stream the peer opened.
    fn accepted(&self) -> Option<(SessionId, u32)> {
        self.events.iter().find_map(|(side, e)| match e {
            Event::Stream { id, event: StreamEvent::Opened(sid) } if *side == Side::Server => Some((*id, *sid)),
            _ => None,
        })
    }
}

fn read_all(ep: &mut Endpoint<u32>, now: u32, id: SessionId, sid: u32) -> (Vec<u8>, bool) {
    let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
    loop {
        match ep.read(now, id, sid, &mut buf).expect("read") {
            Read::Data(n) => got.extend_from_slice(&buf[..n]),
            Read::Eof => return (got, true),
            Read::WouldBlock => return (got, false),
        }
    }
}

fn write_all(ep: &mut Endpoint<u32>, id: SessionId, sid: u32, data: &[u8]) {
    assert_eq!(ep.write(id, sid, data).expect("write"), data.len(), "a small write is taken whole");
}

fn lan() -> LinkConfig {
    LinkConfig::ideal(5_000)
}

/// A pair with a stream the client opened and the server accepted.
fn pair_with_stream(layers: &Layers) -> (Pair, Recorder, u32, SessionId, u32) {
    let mut pair = Pair::new(layers, lan(), 1);
    let mut rec = Recorder::default();
    let (now, session) = (pair.now(), pair.session);
    let csid = pair.client.open_stream(now, session).expect("a stream");
    assert!(pair.run(&mut rec, 1_000, |_, _| false) || rec.accepted().is_some(), "the server accepted the stream");
    let (sid_session, ssid) = rec.accepted().expect("the server accepted the stream");
    assert_eq!(ssid, csid, "both ends name the stream alike");
    (pair, rec, csid, sid_session, ssid)
}

#[test]
fn half_close_from_the_client_leaves_the_other_direction_open() {
    let (mut pair, mut rec, csid, sess, ssid) = pair_with_stream(&Layers::kcptun());
    let now = pair.now();
    let client_session = pair.session;
    write_all(&mut pair.client, client_session, csid, b"ping");
    pair.client.finish(now, client_session, csid).expect("finish");
    pair.advance(&mut rec, 200);
    let now = pair.now();
    assert_eq!(read_all(&mut pair.server, now, sess, ssid), (b"ping".to_vec(), true), "data, then the end");
    assert_eq!(rec.closed(Side::Server, ssid), None, "the server's direction is still open");
    assert_eq!(pair.client.write(client_session, csid, b"x"), Err(smux::StreamError::WriteClosed));

    write_all(&mut pair.server, sess, ssid, b"pong");
    pair.advance(&mut rec, 200);
    let now = pair.now();
    assert_eq!(read_all(&mut pair.client, now, client_session, csid), (b"pong".to_vec(), false));
    pair.server.finish(now, sess, ssid).expect("finish");
    pair.advance(&mut rec, 200);
    let now = pair.now();
    assert_eq!(read_all(&mut pair.client, now, client_session, csid), (Vec::new(), true));
    pair.advance(&mut rec, 10);
    assert_eq!(rec.closed(Side::Server, ssid), Some(StreamEnd::Finished));
    assert_eq!(rec.closed(Side::Client, csid), Some(StreamEnd::Finished));
    for side in [Side::Client, Side::Server] {
        let (_, session) = pair.endpoint(side).sessions().next().map(|(id, a, s)| (id, (*a, s.stream_count()))).unzip();
        assert_eq!(session.map(|(_, n)| n), Some(0), "{side:?} forgot the stream");
    }
}

#[test]
fn half_close_from_the_server_lets_the_client_keep_writing() {
    let (mut pair, mut rec, csid, sess, ssid) = pair_with_stream(&Layers::kcptun());
    let (now, client_session) = (pair.now(), pair.session);
    write_all(&mut pair.server, sess, ssid, b"welcome");
    pair.server.finish(now, sess, ssid).expect("finish");
    pair.advance(&mut rec, 200);
    let now = pair.now();
    assert_eq!(read_all(&mut pair.client, now, client_session, csid), (b"welcome".to_vec(), true));
    for round in 0..3u8 {
        write_all(&mut pair.client, client_session, csid, &[round; 1000]);
        pair.advance(&mut rec, 100);
        let now = pair.now();
        assert_eq!(read_all(&mut pair.server, now, sess, ssid), (vec![round; 1000], false), "round {round}");
    }
    assert_eq!(rec.closed(Side::Client, csid), None);
    pair.client.finish(pair.now(), client_session, csid).expect("finish");
    pair.advance(&mut rec, 200);
    let now = pair.now();
    assert_eq!(read_all(&mut pair.server, now, sess, ssid), (Vec::new(), true));
    pair.advance(&mut rec, 10);
    assert_eq!(rec.closed(Side::Client, csid), Some(StreamEnd::Finished));
    assert_eq!(rec.closed(Side::Server, ssid), Some(StreamEnd::Finished));
}

#[test]
fn a_stream_half_open_past_the_close_wait_is_closed_fully() {
    let layers = Layers { closewait: 30, ..Layers::kcptun() };
    let (mut pair, mut rec, csid, sess, ssid) = pair_with_stream(&layers);
    let (now, client_session) = (pair.now(), pair.session);
    pair.client.finish(now, client_session, csid).expect("finish");
    pair.advance(&mut rec, 100);
    let read_at = pair.now();
    assert_eq!(read_all(&mut pair.server, read_at, sess, ssid), (Vec::new(), true));
    // The server's application never finishes its direction.
    pair.advance(&mut rec, 29_000);
    assert_eq!(rec.closed(Side::Server, ssid), None, "still inside the close-wait");
    pair.advance(&mut rec, 2_000);
    assert_eq!(rec.closed(Side::Server, ssid), Some(StreamEnd::CloseWaitExpired));
    // The client's stream was half-open as long (its own direction ended first).
    assert_eq!(rec.closed(Side::Client, csid), Some(StreamEnd::CloseWaitExpired));
    let sessions =
        [&pair.client, &pair.server].map(|ep| ep.sessions().map(|(_, _, s)| s.stream_count()).sum::<usize>());
    assert_eq!(sessions, [0, 0], "no stream state left");
}

#[test]
fn the_close_wait_runs_from_when_the_first_direction_ended() {
    let layers = Layers { closewait: 30, ..Layers::kcptun() };
    let (mut pair, mut rec, csid, sess, ssid) = pair_with_stream(&layers);
    let client_session = pair.session;
    pair.advance(&mut rec, 20_000);
    // The server ends its direction 20 s in; the client reads to the end at once
    // and keeps writing.
    pair.server.finish(pair.now(), sess, ssid).expect("finish");
    pair.advance(&mut rec, 100);
    let now = pair.now();
    assert_eq!(read_all(&mut pair.client, now, client_session, csid), (Vec::new(), true));
    write_all(&mut pair.client, client_session, csid, b"still talking");
    pair.advance(&mut rec, 29_000);
    let now = pair.now();
    assert_eq!(read_all(&mut pair.server, now, sess, ssid), (b"still talking".to_vec(), false));
    assert_eq!(rec.closed(Side::Server, ssid), None);
    pair.advance(&mut rec, 1_000);
    assert_eq!(rec.closed(Side::Server, ssid), Some(StreamEnd::CloseWaitExpired));
    assert_eq!(rec.closed(Side::Client, csid), Some(StreamEnd::CloseWaitExpired));
}

#[test]
fn without_a_close_wait_a_half_open_stream_stays_open_and_needs_no_timer() {
    let (mut pair, mut rec, csid, sess, ssid) = pair_with_stream(&Layers::kcptun());
    let (now, client_session) = (pair.now(), pair.session);
    pair.client.finish(now, client_session, csid).expect("finish");
    pair.advance(&mut rec, 100);
    let now = pair.now();
    assert_eq!(read_all(&mut pair.server, now, sess, ssid), (Vec::new(), true));
    pair.advance(&mut rec, 120_000);
    assert_eq!(rec.closed(Side::Server, ssid), None);
    write_all(&mut pair.server, sess, ssid, b"late reply");
    pair.advance(&mut rec, 100);
    let now = pair.now();
    assert_eq!(read_all(&mut pair.client, now, client_session, csid), (b"late reply".to_vec(), false));
}

#[test]
fn a_reset_ends_the_stream_at_once_and_the_peer_reads_what_came_before_then_the_end() {
    let (mut pair, mut rec, csid, sess, ssid) = pair_with_stream(&Layers::kcptun());
    let client_session = pair.session;
    write_all(&mut pair.server, sess, ssid, b"partial answer");
    write_all(&mut pair.client, client_session, csid, b"unread by the server");
    pair.server.reset(sess, ssid).expect("reset");
    assert_eq!(pair.server.reset(sess, ssid), Err(smux::StreamError::NoSuchStream), "a reset stream is gone");
    pair.advance(&mut rec, 200);
    assert_eq!(rec.closed(Side::Server, ssid), Some(StreamEnd::Reset));
    let now = pair.now();
    assert_eq!(read_all(&mut pair.client, now, client_session, csid), (b"partial answer".to_vec(), true));
    pair.client.finish(now, client_session, csid).expect("finish");
    pair.advance(&mut rec, 10);
    assert_eq!(rec.closed(Side::Client, csid), Some(StreamEnd::Finished));
    assert_eq!(pair.server.sessions().map(|(_, _, s)| s.stream_count()).sum::<usize>(), 0);
}

#[test]
fn a_refused_target_ends_the_stream_and_the_client_sees_an_empty_stream() {
    let (mut pair, mut rec, csid, sess, ssid) = pair_with_stream(&Layers::kcptun());
    let (now, client_session) = (pair.now(), pair.session);
    write_all(&mut pair.client, client_session, csid, b"hello?");
    // The server's driver could not dial its target.
    pair.server.reset(sess, ssid).expect("reset");
    pair.advance(&mut rec, 200);
    let now2 = pair.now();
    assert!(now2 > now);
    assert_eq!(read_all(&mut pair.client, now2, client_session, csid), (Vec::new(), true));
    let late = pair.server.read(now2, sess, ssid, &mut [0u8; 16]);
    assert_eq!(late, Err(smux::StreamError::NoSuchStream), "nothing more of it reaches the server");
    assert!(rec.closed(Side::Client, csid).is_none(), "the client's application decides when it ends");
}

#[test]
fn a_fin_written_with_its_data_arrives_after_all_of_it() {
    let (mut pair, mut rec, csid, sess, ssid) = pair_with_stream(&Layers::kcptun());
    let client_session = pair.session;
    let payload: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let mut received = Vec::new();
    let mut written = 0;
    let mut finished = false;
    let mut eof = false;
    for _ in 0..20_000 {
        let now = pair.now();
        if written < payload.len() {
            written += pair.client.write(client_session, csid, &payload[written..]).expect("write");
        }
        if written == payload.len() && !finished {
            // In the same instant as the last write, before anything was sent.
            pair.client.finish(now, client_session, csid).expect("finish");
            finished = true;
        }
        let (got, end) = read_all(&mut pair.server, now, sess, ssid);
        assert!(!eof || got.is_empty(), "data after the end of the stream");
        received.extend_from_slice(&got);
        eof |= end;
        if eof {
            break;
        }
        pair.advance(&mut rec, 5);
    }
    assert!(eof, "the end of the stream arrived");
    assert!(received == payload, "received {} of {} bytes, or other bytes", received.len(), payload.len());
}

#[test]
fn a_thousand_streams_open_and_close_and_nothing_is_left() {
    let mut pair = Pair::new(&Layers::kcptun(), lan(), 3);
    let mut app = PatternApp::new(|sid| 100 + u64::from(sid % 7));
    let (now, session) = (pair.now(), pair.session);
    for _ in 0..1000 {
        app.open(Side::Client, now, &mut pair.client, session);
    }
    let done =
        pair.run(&mut app, 60_000, |_, app| app.flows.values().all(|f| f.closed.is_some()) && app.flows.len() == 2000);
    assert!(done, "{} of 2000 stream ends closed", app.flows.values().filter(|f| f.closed.is_some()).count());
    for ((side, sid), f) in &app.flows {
        assert_eq!(f.closed, Some(StreamEnd::Finished), "{side:?} stream {sid}");
        assert_eq!((f.received, f.first_mismatch), (100 + u64::from(sid % 7), None), "{side:?} stream {sid}");
    }
    for side in [Side::Client, Side::Server] {
        let (_, _, s) = pair.endpoint(side).sessions().next().expect("the session lives on");
        assert_eq!(s.stream_count(), 0, "{side:?} holds no stream state");
        assert_eq!(s.stack().expect("kcptun layers").mux().stream_count(), 0, "{side:?}'s smux holds no stream");
    }
}

#[test]
fn a_kicked_session_ends_every_stream_and_its_peer_reads_the_end() {
    let (mut pair, mut rec, csid, sess, ssid) = pair_with_stream(&Layers::kcptun());
    let client_session = pair.session;
    assert!(pair.server.close_session(pair.now(), sess, Some(60_000), "kicked: a test"));
    assert!(!pair.server.close_session(pair.now(), sess, None, "again"), "closed once");
    pair.advance(&mut rec, 200);
    assert_eq!(rec.closed(Side::Server, ssid), Some(StreamEnd::SessionEnded));
    let closed = rec.events.iter().find_map(|(side, e)| match e {
        Event::SessionClosed { id, reason, .. } if *side == Side::Server => Some((*id, reason.clone())),
        _ => None,
    });
    assert_eq!(closed, Some((sess, SessionEnd::Closed("kicked: a test".into()))), "the reason is carried");
    assert!(pair.server.is_empty());
    // The FIN, then the client's next datagram is refused and answered with a
    // reset: the client's session ends at once rather than at its keep-alive.
    assert!(rec.closed(Side::Client, csid).is_some(), "the client's stream ended");
    let client_end = rec.events.iter().find_map(|(side, e)| match e {
        Event::SessionClosed { id, reason, .. } if *side == Side::Client && *id == client_session => {
            Some(reason.clone())
        }
        _ => None,
    });
    assert_eq!(client_end, Some(SessionEnd::Reset));
    assert!(pair.server.listener_stats()[DropReason::Closed] > 0 && pair.server.listener_stats().resets > 0);
    pair.advance(&mut rec, 20_000);
    assert!(pair.server.is_empty(), "the kicked conversation stays out");
}

#[test]
fn a_silent_peer_ends_the_session_with_a_reason_and_every_stream() {
    let (mut pair, mut rec, csid, _, _) = pair_with_stream(&Layers::kcptun());
    pair.s2c.config_mut().loss = 1.0;
    pair.advance(&mut rec, 45_000);
    assert_eq!(rec.closed(Side::Client, csid), Some(StreamEnd::SessionEnded));
    let reason = rec.events.iter().find_map(|(side, e)| match e {
        Event::SessionClosed { reason, .. } if *side == Side::Client => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(reason, Some(SessionEnd::Stack(StackError::Smux(SmuxError::KeepAliveTimeout))));
    assert!(pair.client.is_empty());
    assert_eq!(pair.client.poll_timeout(), None, "nothing left to time");
}

#[test]
fn an_idle_session_sleeps_until_its_keepalive() {
    let (mut pair, mut rec, _, _, _) = pair_with_stream(&Layers::kcptun());
    pair.advance(&mut rec, 30_000);
    let now = pair.now();
    let (sent, wakeups) = (pair.sent, pair.wakeups);
    pair.advance(&mut rec, 60_000);
    let now_after = pair.now();
    assert_eq!(kcpgate_core::kcp::diff(now_after, now), 60_000);
    for side in [Side::Client, Side::Server] {
        let next = pair.endpoint(side).poll_timeout().expect("a keep-alive is due some time");
        assert!(kcpgate_core::kcp::diff(next, now_after) > 0, "{side:?} wakes at {next}, now is {now_after}");
        // The keep-alives count as hearing from the peer; nothing else came.
        let (_, _, session) = pair.endpoint(side).sessions().next().expect("the session");
        let silent = kcpgate_core::kcp::diff(now_after, session.heard_at());
        assert!((0..=11_250).contains(&silent), "{side:?} last heard its peer {silent} ms ago");
    }
    // An idle minute: every 10 s the client's keep-alive, the server's answer with
    // its ACK, and the client's ACK of that; no timer of KCP's own.
    let sent = [pair.sent[0] - sent[0], pair.sent[1] - sent[1]];
    assert!(sent[0] <= 12 && sent[1] <= 6, "an idle minute sent {sent:?} datagrams");
    // Those 18 deliveries, and about as many timers (a keep-alive, an ACK owed):
    // a few per keep-alive interval, where a free-running KCP timer would be
    // thousands.
    assert!(pair.wakeups - wakeups <= 40, "an idle minute woke the pair {} times", pair.wakeups - wakeups);
}

// ------------------------------------------------------------- the full stack

/// Bytes on a stream, each way: 8 to 24 KiB, by sid.
fn stream_size(sid: u32) -> u64 {
    8192 + u64::from(sid.wrapping_mul(2_654_435_761) % 16_384)
}

/// What a run produced, to compare two runs.
#[derive(Debug, PartialEq, Eq)]
struct Fingerprint {
    elapsed_ms: u64,
    sent: [u64; 2],
    snmp: [String; 2],
}

fn full_stack(layers: &Layers, seed: u64) -> Fingerprint {
    let mut link = LinkConfig::ideal(20_000);
    link.loss = 0.05;
    let mut pair = Pair::new(layers, link, seed);
    let mut app = PatternApp::new(stream_size);
    // Each side opens 64 streams as soon as it has the session.
    app.open_on_session = [64, 64];
    let done =
        pair.run(&mut app, 600_000, |_, app| app.flows.len() == 256 && app.flows.values().all(|f| f.closed.is_some()));
    let ends = app.flows.values().filter(|f| f.closed.is_some()).count();
    assert!(done, "{layers:?}: {ends} of 256 stream ends closed in 600 s");
    for ((side, sid), f) in &app.flows {
        let what = format!("{layers:?}: {side:?}'s end of stream {sid}");
        assert_eq!(f.closed, Some(StreamEnd::Finished), "{what}");
        assert_eq!(f.first_mismatch, None, "{what}: a wrong byte");
        assert_eq!((f.sent, f.received), (stream_size(*sid), stream_size(*sid)), "{what}");
    }
    let opened_by =
        |side: Side| app.flows.keys().filter(|(s, sid)| *s == side && (sid % 2 == 1) == (side == Side::Client)).count();
    assert_eq!((opened_by(Side::Client), opened_by(Side::Server)), (64, 64), "64 streams opened each way");
    assert!(app.session_closed.is_empty(), "{layers:?}: a session ended: {:?}", app.session_closed);
    let (c, s) = (pair.client.snmp(), pair.server.snmp());
    assert!(c.retrans_segs + s.retrans_segs > 0, "5 % loss caused retransmissions");
    Fingerprint { elapsed_ms: pair.now_us / 1000, sent: pair.sent, snmp: [c.to_string(), s.to_string()] }
}

#[test]
fn sixty_four_streams_each_way_through_every_layer_under_loss_byte_exact_and_deterministic() {
    let mut table = String::from("layers | virtual ms | datagrams c→s | datagrams s→c\n");
    for (name, layers) in [
        ("aes, FEC 10/3, snappy, smux v2", Layers::kcptun()),
        ("aes, FEC 10/3, snappy, smux v1, QPP", Layers { smux: smux::Version::V1, qpp: true, ..Layers::kcptun() }),
        (
            "aes, FEC 10/3, smux v2, QPP, close-wait",
            Layers { compression: false, qpp: true, closewait: 5, ..Layers::kcptun() },
        ),
    ] {
        let first = full_stack(&layers, 7);
        let second = full_stack(&layers, 7);
        assert_eq!(first, second, "{name}: two runs with the same seed differ");
        table += &format!("{name} | {} | {} | {}\n", first.elapsed_ms, first.sent[0], first.sent[1]);
    }
    println!("{table}");
}

#[test]
fn a_client_takes_datagrams_only_from_the_server_it_dialled() {
    let (mut pair, mut rec, _, _, _) = pair_with_stream(&Layers::kcptun());
    // A datagram the server really sent, replayed from another address.
    let mut captured = Vec::new();
    let (now, session) = (pair.now(), pair.session);
    let sid = pair.server.sessions().next().map(|(id, _, _)| id).expect("a session");
    let ssid = rec.accepted().expect("a stream").1;
    write_all(&mut pair.server, sid, ssid, b"for the client");
    let mut buf = Vec::new();
    while let Some(t) = pair.server.poll_transmit(now, 1, &mut buf) {
        captured.push(buf[..t.size].to_vec());
    }
    assert!(!captured.is_empty());
    let outcome = pair.client.handle_datagram(now, &3, &mut captured[0].clone());
    assert_eq!(outcome, kcpgate_core::listener::Outcome::Dropped(kcpgate_core::listener::DropReason::NotAccepting));
    assert_eq!(pair.client.snmp().in_errs, 1, "counted as kcp-go counts it");
    assert_eq!(pair.client.len(), 1, "no session for the stranger");
    let outcome = pair.client.handle_datagram(now, &2, &mut captured[0].clone());
    assert_eq!(outcome, kcpgate_core::listener::Outcome::Delivered);
    pair.advance(&mut rec, 10);
    let now = pair.now();
    let csid = ssid;
    assert_eq!(read_all(&mut pair.client, now, session, csid), (b"for the client".to_vec(), false));
}
