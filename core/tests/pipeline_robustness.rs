//! Hostile datagrams against a listener whose one session is transferring: each is
//! dropped (or absorbed) and counted where it belongs, no session appears, and the
//! transfer finishes byte-exact.

mod support;

use std::sync::Arc;

use kcpgate_core::crypto::{Method, PacketCrypto};
use kcpgate_core::endpoint::{Endpoint, Event};
use kcpgate_core::fec::{TYPE_DATA, TYPE_OOB, TYPE_PARITY};
use kcpgate_core::kcp::Mode;
use kcpgate_core::listener::{DropReason, Outcome};
use kcpgate_core::wire::Datagram;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use support::crypto;
use support::netsim::{Link, LinkConfig};
use support::pair::{App, Layers, Pair, Side, TransferApp, CLIENT, KEY};

#[derive(Default, Debug)]
struct Expected {
    too_short: u64,
    checksum: u64,
    malformed: u64,
    no_conv: u64,
    oob: u64,
    wrap_edge: u64,
    absorbed: u64,
    total: u64,
}

/// A transfer whose server, for every datagram it gets once it has the session,
/// is fed forged ones too.
struct Besieged {
    app: TransferApp,
    right: Arc<PacketCrypto>,
    wrong: PacketCrypto,
    rng: Xoshiro256PlusPlus,
    per_datagram: usize,
    expected: Expected,
}

impl Besieged {
    fn seal(&mut self, crypto_right: bool, plain: &[u8]) -> Vec<u8> {
        let c = if crypto_right { &*self.right } else { &self.wrong };
        let mut out = vec![0u8; c.header_len()];
        out.extend_from_slice(plain);
        out.resize(out.len() + c.tail_len(), 0);
        let mut nonce = [0u8; 16];
        self.rng.fill(&mut nonce);
        c.seal(&mut out, &nonce[..c.nonce_len()]);
        out
    }

    fn expect(&mut self, ep: &mut Endpoint<u32>, now: u32, from: u32, mut datagram: Vec<u8>, want: Outcome) {
        let got = ep.handle_datagram(now, &from, &mut datagram);
        assert_eq!(got, want, "forged datagram from {from}");
        self.expected.total += 1;
        match want {
            Outcome::Dropped(DropReason::TooShort) => self.expected.too_short += 1,
            Outcome::Dropped(DropReason::Checksum) => self.expected.checksum += 1,
            Outcome::Dropped(DropReason::Malformed) => self.expected.malformed += 1,
            Outcome::Dropped(DropReason::NoConv) => self.expected.no_conv += 1,
            _ => {}
        }
    }

    fn attack(&mut self, ep: &mut Endpoint<u32>, now: u32, genuine: &[u8]) {
        let mut plain_buf = genuine.to_vec();
        let range = self.right.open(&mut plain_buf).expect("genuine datagram opens");
        let plain = plain_buf[range].to_vec();
        for _ in 0..self.per_datagram {
            let attacker = 1000 + self.rng.gen_range(0..50);
            let from = if self.rng.gen_bool(0.5) { CLIENT } else { attacker };
            match self.rng.gen_range(0..10) {
                0 => {
                    let cut = self.rng.gen_range(0..genuine.len());
                    let want = if cut < 20 { DropReason::TooShort } else { DropReason::Checksum };
                    self.expect(ep, now, from, genuine[..cut].to_vec(), Outcome::Dropped(want));
                }
                1 => {
                    let mut d = genuine.to_vec();
                    let bit = self.rng.gen_range(0..d.len() * 8);
                    d[bit / 8] ^= 1 << (bit % 8);
                    self.expect(ep, now, from, d, Outcome::Dropped(DropReason::Checksum));
                }
                2 => {
                    let d = self.seal(false, &plain);
                    self.expect(ep, now, from, d, Outcome::Dropped(DropReason::Checksum));
                }
                3 => {
                    let mut d = genuine.to_vec();
                    let extra = self.rng.gen_range(1..8000);
                    d.extend((0..extra).map(|_| self.rng.gen::<u8>()));
                    // Longer than any MTU: refused before decryption.
                    let want = if d.len() > kcpgate_core::pipeline::MTU_LIMIT {
                        DropReason::Malformed
                    } else {
                        DropReason::Checksum
                    };
                    self.expect(ep, now, from, d, Outcome::Dropped(want));
                }
                4 => {
                    // Bad type: not F1/F2/F3, so read as bare KCP with command 0xF4..0xFF.
                    let mut p = plain.clone();
                    p[4] = self.rng.gen_range(0xF4..=0xFF);
                    p[5] = 0;
                    let d = self.seal(true, &p);
                    self.expect(ep, now, attacker, d, Outcome::Dropped(DropReason::Malformed));
                }
                5 => {
                    // A data shard whose size field is huge.
                    let mut p = vec![0u8; 8];
                    p[0..4].copy_from_slice(&self.rng.gen::<u32>().to_le_bytes());
                    p[4..6].copy_from_slice(&TYPE_DATA.to_le_bytes());
                    p[6..8].copy_from_slice(&u16::MAX.to_le_bytes());
                    p.extend_from_slice(&plain[plain.len().min(8)..]);
                    p.resize(p.len().max(40), 0);
                    p[12] = 81;
                    let d = self.seal(true, &p);
                    self.expect(ep, now, attacker, d, Outcome::Dropped(DropReason::Malformed));
                }
                6 => {
                    // A parity shard at the seqid wrap edge from a stranger: no conv.
                    let mut p = vec![0u8; self.rng.gen_range(12..1300)];
                    p[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
                    p[4..6].copy_from_slice(&TYPE_PARITY.to_le_bytes());
                    let d = self.seal(true, &p);
                    self.expect(ep, now, attacker, d, Outcome::Dropped(DropReason::NoConv));
                }
                7 if matches!(Datagram::parse(&plain), Ok(Datagram::FecData { .. })) => {
                    // The client's own datagram re-sent at the wrap edge: its KCP part
                    // is a harmless duplicate, the decoder drops the shard.
                    let mut p = plain.clone();
                    p[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
                    let d = self.seal(true, &p);
                    self.expected.wrap_edge += 1;
                    self.expect(ep, now, CLIENT, d, Outcome::Delivered);
                }
                8 => {
                    // Junk parity for a plausible group of the client's.
                    let mut p = vec![0u8; self.rng.gen_range(12..1330)];
                    self.rng.fill(&mut p[6..]);
                    let base = u32::from_le_bytes(plain[0..4].try_into().unwrap()) / 13 * 13;
                    p[0..4].copy_from_slice(&(base + self.rng.gen_range(10..13)).to_le_bytes());
                    p[4..6].copy_from_slice(&TYPE_PARITY.to_le_bytes());
                    let d = self.seal(true, &p);
                    self.expected.absorbed += 1;
                    self.expect(ep, now, CLIENT, d, Outcome::Delivered);
                }
                _ => {
                    let mut p = vec![0u8; 40];
                    p[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
                    p[4..6].copy_from_slice(&TYPE_OOB.to_le_bytes());
                    let d = self.seal(true, &p);
                    self.expected.oob += 1;
                    self.expect(ep, now, CLIENT, d, Outcome::Delivered);
                }
            }
        }
    }
}

impl App for Besieged {
    fn on_event(&mut self, side: Side, now: u32, ep: &mut Endpoint<u32>, event: Event<u32>) {
        self.app.on_event(side, now, ep, event);
    }

    fn deliver(&mut self, side: Side, now: u32, ep: &mut Endpoint<u32>, from: u32, datagram: &mut [u8]) {
        if side == Side::Server && !ep.is_empty() {
            self.attack(ep, now, datagram);
        }
        ep.handle_datagram(now, &from, datagram);
    }

    fn next_wakeup_us(&self, now_us: u64) -> Option<u64> {
        self.app.next_wakeup_us(now_us)
    }

    fn on_step(&mut self, side: Side, now: u32, now_us: u64, ep: &mut Endpoint<u32>) {
        self.app.on_step(side, now, now_us, ep);
    }
}

#[test]
fn forged_datagrams_are_counted_and_never_disturb_a_live_session() {
    let layers = Layers { method: Method::Aes256, fec: Some((10, 3)), ..Layers::bare(Mode::Fast3) };
    let mut link = LinkConfig::ideal(15_000);
    link.loss = 0.03;
    let mut pair = Pair::with_links(&layers, Link::new(link, 5), Link::new(link, 6), 7, 0);
    let total = 3 << 20;
    let mut besieged = Besieged {
        app: TransferApp::both_ways(total),
        right: crypto(Method::Aes256, KEY),
        wrong: PacketCrypto::from_passphrase(Method::Aes256, "not the key"),
        rng: Xoshiro256PlusPlus::seed_from_u64(99),
        per_datagram: 20,
        expected: Expected::default(),
    };
    assert!(pair.run(&mut besieged, 300_000, |_, b| b.app.done()), "the transfer finished under attack");
    let app = &besieged.app;
    assert_eq!((app.client.first_mismatch, app.server.first_mismatch), (None, None), "byte-exact both ways");

    let e = &besieged.expected;
    let stats = *pair.server.listener_stats();
    println!("{} forged datagrams: {e:?}\nlistener: {stats:?}", e.total);
    assert!(e.total > 50_000);
    assert_eq!(pair.server.len(), 1, "no session was created by forged traffic");
    assert_eq!(stats.created, 1);
    assert_eq!(stats[DropReason::TooShort], e.too_short);
    assert_eq!(stats[DropReason::Checksum], e.checksum);
    assert_eq!(stats[DropReason::Malformed], e.malformed);
    assert_eq!(stats[DropReason::NoConv], e.no_conv);
    assert_eq!(
        stats[DropReason::ConvMismatch] + stats[DropReason::Runt] + stats[DropReason::BacklogFull] + stats.replaced,
        0
    );
    let session = pair.server.sessions().next().expect("the session").2;
    assert_eq!(session.snmp().oob_packets, e.oob, "OOB datagrams are counted and dropped");
    let decoder = session.connection().fec_decoder().expect("a decoder");
    assert!(decoder.stats.dropped >= e.wrap_edge, "wrap-edge shards dropped by the decoder");
    assert_eq!(pair.server.snmp().in_csum_errors, e.checksum);
}
