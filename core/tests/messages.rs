//! Plain KCP in message mode ([`kcpgate_core::messages`]): messages of every size
//! up to the limit travel whole, in order, through loss; a length over the limit
//! ends the session; ending the one stream ends the session.

mod support;

use kcpgate_core::endpoint::{Endpoint, Event, SessionId};
use kcpgate_core::messages::{LENGTH_BYTES, MAX_MESSAGE, STREAM_ID};
use kcpgate_core::session::{Framing, SessionEnd, StreamEvent};
use kcpgate_core::smux::Read;
use kcpgate_core::stack::StackError;
use support::netsim::LinkConfig;
use support::pair::{App, Layers, Pair, Side};

fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = (message.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(message);
    out
}

fn message(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (k * 31 + i * 7) as u8).collect()
}

/// The server echoes every byte it reads; the client writes `outgoing` and
/// collects what comes back.
#[derive(Default)]
struct Echo {
    outgoing: Vec<u8>,
    written: usize,
    back: Vec<u8>,
    server_session: Option<SessionId>,
    opened: Vec<u32>,
    pending_echo: Vec<u8>,
    ended: Vec<(Side, SessionEnd)>,
}

impl Echo {
    fn pump(&mut self, side: Side, now: u32, ep: &mut Endpoint<u32>, id: SessionId) {
        let mut buf = [0u8; 8192];
        loop {
            match ep.read(now, id, STREAM_ID, &mut buf) {
                Ok(Read::Data(n)) if side == Side::Server => self.pending_echo.extend_from_slice(&buf[..n]),
                Ok(Read::Data(n)) => self.back.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        let (data, at) = match side {
            Side::Server => (&mut self.pending_echo, None),
            Side::Client => (&mut self.outgoing, Some(&mut self.written)),
        };
        match at {
            Some(at) => {
                if let Ok(n) = ep.write(id, STREAM_ID, &data[*at..]) {
                    *at += n;
                }
            }
            None => {
                if let Ok(n) = ep.write(id, STREAM_ID, data) {
                    data.drain(..n);
                }
            }
        }
    }
}

impl App for Echo {
    fn on_event(&mut self, side: Side, now: u32, ep: &mut Endpoint<u32>, event: Event<u32>) {
        match event {
            Event::Stream { id, event: StreamEvent::Opened(sid) } => {
                self.opened.push(sid);
                self.server_session = Some(id);
                self.pump(side, now, ep, id);
            }
            Event::Stream { id, event: StreamEvent::Readable(_) | StreamEvent::Writable(_) } => {
                self.pump(side, now, ep, id)
            }
            Event::SessionClosed { reason, .. } => self.ended.push((side, reason)),
            _ => {}
        }
    }
}

fn messages_layers() -> Layers {
    Layers { framing: Framing::Messages, ..Layers::kcptun() }
}

#[test]
fn messages_of_every_size_come_back_whole_and_in_order_through_loss() {
    let sizes = [1, 2, 100, 1150, 1151, 5000, 20_000, MAX_MESSAGE, 3, MAX_MESSAGE - 1];
    let sent: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &len)| message(i, len)).collect();
    for (seed, loss) in [(1, 0.0), (2, 0.05), (3, 0.2)] {
        let link = LinkConfig { loss, ..LinkConfig::ideal(10_000) };
        let mut pair = Pair::new(&messages_layers(), link, seed);
        let mut app = Echo { outgoing: sent.iter().flat_map(|m| framed(m)).collect(), ..Echo::default() };
        let (now, session) = (pair.now(), pair.session);
        assert_eq!(pair.client.open_stream(now, session), Ok(STREAM_ID));
        assert!(pair.client.open_stream(now, session).is_err(), "plain KCP has one stream");
        app.pump(Side::Client, now, &mut pair.client, session);
        let total = app.outgoing.len();
        assert!(
            pair.run(&mut app, 120_000, |_, app| app.back.len() >= total),
            "loss {loss}: {} of {total}",
            app.back.len()
        );
        assert_eq!(app.opened, [STREAM_ID], "loss {loss}: the first message opened the server's stream");
        let mut back = &app.back[..];
        for (i, m) in sent.iter().enumerate() {
            let len = u32::from_be_bytes(back[..LENGTH_BYTES].try_into().unwrap()) as usize;
            assert_eq!(&back[LENGTH_BYTES..LENGTH_BYTES + len], &m[..], "loss {loss}: message {i}");
            back = &back[LENGTH_BYTES + len..];
        }
        assert!(back.is_empty());
        let (_, s) = pair.client.session(session).expect("open");
        assert!(s.stack().is_none(), "no smux, no snappy");
        assert_eq!(s.framing(), Framing::Messages);
        assert!(!s.connection().kcp().config().stream, "KCP in message mode");
        assert!(app.ended.is_empty(), "{:?}", app.ended);
    }
}

#[test]
fn a_length_over_the_limit_ends_the_session() {
    let mut pair = Pair::new(&messages_layers(), LinkConfig::ideal(5_000), 4);
    let mut app = Echo::default();
    let (now, session) = (pair.now(), pair.session);
    pair.client.open_stream(now, session).unwrap();
    let mut bad = framed(b"fine");
    bad.extend_from_slice(&((MAX_MESSAGE + 1) as u32).to_be_bytes());
    assert_eq!(pair.client.write(session, STREAM_ID, &bad), Ok(bad.len()));
    pair.run(&mut app, 5_000, |_, app| !app.ended.is_empty() && !app.opened.is_empty());
    assert_eq!(
        app.ended,
        [(Side::Client, SessionEnd::Stack(StackError::MessageTooLarge { len: MAX_MESSAGE + 1, max: MAX_MESSAGE }))]
    );
    assert_eq!(app.opened, [STREAM_ID], "what came before the bad length went");
}

#[test]
fn ending_the_stream_ends_the_session_after_what_was_written() {
    let mut pair = Pair::new(&messages_layers(), LinkConfig::ideal(5_000), 5);
    let mut app = Echo::default();
    let (now, session) = (pair.now(), pair.session);
    pair.client.open_stream(now, session).unwrap();
    let last = framed(&message(9, 3000));
    assert_eq!(pair.client.write(session, STREAM_ID, &last), Ok(last.len()));
    pair.run(&mut app, 5_000, |_, app| app.server_session.is_some());
    let server = app.server_session.unwrap();
    // The server's application (a backend) closes: its last message still goes.
    let reply = framed(b"bye");
    let now = pair.now();
    assert_eq!(pair.server.write(server, STREAM_ID, &reply), Ok(reply.len()));
    pair.server.finish(now, server, STREAM_ID).unwrap();
    pair.run(&mut app, 5_000, |_, app| app.back.ends_with(&reply));
    assert!(app.back.ends_with(&reply), "{:?}", app.back.len());
    assert!(app.ended.contains(&(Side::Server, SessionEnd::StreamEnded)), "{:?}", app.ended);
}
