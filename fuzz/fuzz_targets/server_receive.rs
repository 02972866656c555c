//! The whole server receive path: datagrams from a few addresses, at arbitrary
//! times, into an endpoint (`null` crypto so the fuzzer reaches every layer: FEC,
//! KCP, snappy, smux), with the application answering every stream. No panic, no
//! session for a datagram the rules refuse, and the transmits stay well formed.
#![no_main]

use std::sync::{Arc, OnceLock};

use kcpgate_core::crypto::{Method, PacketCrypto};
use kcpgate_core::endpoint::{Endpoint, Event};
use kcpgate_core::kcp::Mode;
use kcpgate_core::session::StreamEvent;
use kcpgate_core::settings::SessionSettings;
use kcpgate_core::smux::Role;
use libfuzzer_sys::fuzz_target;

fn crypto() -> Arc<PacketCrypto> {
    static NULL: OnceLock<Arc<PacketCrypto>> = OnceLock::new();
    NULL.get_or_init(|| Arc::new(PacketCrypto::from_passphrase(Method::Null, ""))).clone()
}

fn endpoint(compression: bool) -> Endpoint<u8> {
    let mut settings = SessionSettings::kcptun(Role::Server);
    settings.crypt = Method::Null;
    settings.mode = Some(Mode::Fast3);
    settings.nocomp = !compression;
    for (name, value) in [("sndwnd", 64), ("rcvwnd", 64), ("closewait", 1)] {
        settings.set_number(name, value).expect("a valid setting");
    }
    let config = settings.endpoint_config("").expect("valid settings");
    Endpoint::new(Role::Server, config, crypto(), [7; 32]).expect("valid settings")
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
