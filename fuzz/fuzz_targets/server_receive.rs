//! The whole server receive path: datagrams from a few addresses, at arbitrary
//! times, into an endpoint (`null` crypto so the fuzzer reaches every layer: FEC,
//! KCP, snappy, smux), with the application answering every stream. No panic, no
//! session for a datagram the rules refuse, and the transmits stay well formed.
#![no_main]

use std::sync::{Arc, OnceLock};

use kcpgate_core::crypto::{Method, PacketCrypto};
use kcpgate_core::endpoint::{Endpoint, EndpointConfig, Event};
use kcpgate_core::fec::Shards;
use kcpgate_core::kcp::{Config, Mode};
use kcpgate_core::pipeline::SessionConfig;
use kcpgate_core::session::{Framing, StreamConfig, StreamEvent};
use kcpgate_core::smux::{self, Role};
use kcpgate_core::stack::StackConfig;
use libfuzzer_sys::fuzz_target;

fn crypto() -> Arc<PacketCrypto> {
    static NULL: OnceLock<Arc<PacketCrypto>> = OnceLock::new();
    NULL.get_or_init(|| Arc::new(PacketCrypto::from_passphrase(Method::Null, ""))).clone()
}

fn endpoint(compression: bool) -> Endpoint<u8> {
    let mut kcp = Config { mtu: 1350, snd_wnd: 64, rcv_wnd: 64, stream: true, ..Config::default() };
    Mode::Fast3.apply(&mut kcp);
    let session = SessionConfig { mtu: 1350, kcp, fec: Shards::new(10, 3), write_delay: false, rate_limit: 0 };
    let stack = StackConfig { compression, smux: smux::Config::kcptun(), qpp: None };
    let streams = StreamConfig { stack, close_wait_ms: 1000, framing: Framing::Streams };
    Endpoint::new(Role::Server, EndpointConfig { session, streams }, crypto(), [7; 32]).expect("valid settings")
}

fuzz_target!(|data: &[u8]| {
    let [flags, rest @ ..] = data else { return };
    let mut ep = endpoint(flags & 1 == 1);
    let (mut now, mut rest) = (0u32, rest);
    let (mut buf, mut out) = (vec![0u8; 1 << 16], Vec::new());
    // Records: address, time step (ms), 2-byte length, datagram.
    while let [from, step, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        now = now.wrapping_add(u32::from(*step));
        let sessions = ep.len();
        let outcome = ep.handle_datagram(now, &(from % 4), &mut datagram.to_vec());
        if matches!(outcome, kcpgate_core::listener::Outcome::Dropped(_)) {
            assert_eq!(ep.len(), sessions, "a dropped datagram changed the sessions");
        }
        ep.handle_timeout(now);
        while let Some(event) = ep.poll_event() {
            if let Event::Stream { id, event } = event {
                match event {
                    StreamEvent::Opened(sid) => {
                        let _ = ep.write(id, sid, b"welcome");
                    }
                    StreamEvent::Readable(sid) => {
                        let _ = ep.read(now, id, sid, &mut buf);
                        if from & 1 == 1 {
                            let _ = ep.finish(now, id, sid);
                        }
                    }
                    _ => {}
                }
            }
        }
        while let Some(t) = ep.poll_transmit(now, 8, &mut out) {
            assert!(t.size <= out.len() && t.size <= 8 * 1500, "a transmit of {} bytes", t.size);
        }
    }
});
