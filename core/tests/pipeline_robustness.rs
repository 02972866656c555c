//! Hostile datagrams against a listener whose one session is transferring: each is
//! dropped (or absorbed) and counted where it belongs, no session appears, and the
//! transfer finishes byte-exact.

mod support;

use std::sync::Arc;

use kcpgate_core::crypto::{Method, PacketCrypto};
use kcpgate_core::fec::{TYPE_DATA, TYPE_OOB, TYPE_PARITY};
use kcpgate_core::kcp::Mode;
use kcpgate_core::listener::{Drop, Outcome};
use kcpgate_core::wire::Datagram;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use support::netsim::{Endpoint, Link, LinkConfig, Sim, Transfer};
use support::{crypto, session_config, DialerEndpoint, ListenerEndpoint};

const KEY: &str = "siege";
const CLIENT: u32 = 1;

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

struct Besieged {
    inner: ListenerEndpoint,
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

    fn expect(&mut self, now: u32, from: u32, mut datagram: Vec<u8>, want: Outcome) {
        let got = self.inner.listener.handle_datagram(now, &from, &mut datagram);
        assert_eq!(got, want, "forged datagram from {from}");
        self.expected.total += 1;
        match want {
            Outcome::Dropped(Drop::TooShort) => self.expected.too_short += 1,
            Outcome::Dropped(Drop::Checksum) => self.expected.checksum += 1,
            Outcome::Dropped(Drop::Malformed) => self.expected.malformed += 1,
            Outcome::Dropped(Drop::NoConv) => self.expected.no_conv += 1,
            _ => {}
        }
    }

    fn attack(&mut self, now: u32, genuine: &[u8]) {
        let mut plain_buf = genuine.to_vec();
        let range = self.right.open(&mut plain_buf).expect("genuine datagram opens");
        let plain = plain_buf[range].to_vec();
        for _ in 0..self.per_datagram {
            let attacker = 1000 + self.rng.gen_range(0..50);
            let from = if self.rng.gen_bool(0.5) { CLIENT } else { attacker };
            match self.rng.gen_range(0..10) {
                0 => {
                    let cut = self.rng.gen_range(0..genuine.len());
                    let want = if cut < 20 { Drop::TooShort } else { Drop::Checksum };
                    self.expect(now, from, genuine[..cut].to_vec(), Outcome::Dropped(want));
                }
                1 => {
                    let mut d = genuine.to_vec();
                    let bit = self.rng.gen_range(0..d.len() * 8);
                    d[bit / 8] ^= 1 << (bit % 8);
                    self.expect(now, from, d, Outcome::Dropped(Drop::Checksum));
                }
                2 => {
                    let d = self.seal(false, &plain);
                    self.expect(now, from, d, Outcome::Dropped(Drop::Checksum));
                }
                3 => {
                    let mut d = genuine.to_vec();
                    let extra = self.rng.gen_range(1..8000);
                    d.extend((0..extra).map(|_| self.rng.gen::<u8>()));
                    self.expect(now, from, d, Outcome::Dropped(Drop::Checksum));
                }
                4 => {
                    // Bad type: not F1/F2/F3, so read as bare KCP with command 0xF4..0xFF.
                    let mut p = plain.clone();
                    p[4] = self.rng.gen_range(0xF4..=0xFF);
                    p[5] = 0;
                    let d = self.seal(true, &p);
                    self.expect(now, attacker, d, Outcome::Dropped(Drop::Malformed));
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
                    self.expect(now, attacker, d, Outcome::Dropped(Drop::Malformed));
                }
                6 => {
                    // A parity shard at the seqid wrap edge from a stranger: no conv.
                    let mut p = vec![0u8; self.rng.gen_range(12..1300)];
                    p[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
                    p[4..6].copy_from_slice(&TYPE_PARITY.to_le_bytes());
                    let d = self.seal(true, &p);
                    self.expect(now, attacker, d, Outcome::Dropped(Drop::NoConv));
                }
                7 if matches!(Datagram::parse(&plain), Ok(Datagram::FecData { .. })) => {
                    // The client's own datagram re-sent at the wrap edge: its KCP part
                    // is a harmless duplicate, the decoder drops the shard.
                    let mut p = plain.clone();
                    p[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
                    let d = self.seal(true, &p);
                    self.expected.wrap_edge += 1;
                    self.expect(now, CLIENT, d, Outcome::Delivered);
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
                    self.expect(now, CLIENT, d, Outcome::Delivered);
                }
                _ => {
                    let mut p = vec![0u8; 40];
                    p[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
                    p[4..6].copy_from_slice(&TYPE_OOB.to_le_bytes());
                    let d = self.seal(true, &p);
                    self.expected.oob += 1;
                    self.expect(now, CLIENT, d, Outcome::Delivered);
                }
            }
        }
    }
}

impl Endpoint for Besieged {
    fn handle_datagram(&mut self, now: u32, datagram: &[u8]) {
        if self.inner.accepted.is_some() {
            self.attack(now, datagram);
        }
        self.inner.handle_datagram(now, datagram);
    }
    fn handle_timeout(&mut self, now: u32) {
        self.inner.handle_timeout(now)
    }
    fn poll_timeout(&self) -> Option<u32> {
        self.inner.poll_timeout()
    }
    fn drain_transmits(&mut self, send: &mut dyn FnMut(&[u8])) {
        self.inner.drain_transmits(send)
    }
    fn can_write(&self) -> bool {
        self.inner.can_write()
    }
    fn write(&mut self, now: u32, data: &[u8]) -> usize {
        self.inner.write(now, data)
    }
    fn read(&mut self, buf: &mut [u8]) -> usize {
        self.inner.read(buf)
    }
}

#[test]
fn forged_datagrams_are_counted_and_never_disturb_a_live_session() {
    let fec = Some((10, 3));
    let client = DialerEndpoint::new(&session_config(Mode::Fast3, 128, 512, fec), crypto(Method::Aes256, KEY), 7);
    let server = Besieged {
        inner: ListenerEndpoint::new(session_config(Mode::Fast3, 1024, 1024, fec), crypto(Method::Aes256, KEY)),
        right: crypto(Method::Aes256, KEY),
        wrong: PacketCrypto::from_passphrase(Method::Aes256, "not the key"),
        rng: Xoshiro256PlusPlus::seed_from_u64(99),
        per_datagram: 20,
        expected: Expected::default(),
    };
    let mut link = LinkConfig::ideal(15_000);
    link.loss = 0.03;
    let total = 3 << 20;
    let mut sim = Sim::new(
        client,
        server,
        Link::new(link, 5),
        Link::new(link, 6),
        Transfer::new(1, total, 2, total),
        Transfer::new(2, total, 1, total),
        0,
    );
    assert!(sim.run(300_000).finished, "the transfer finished under attack");
    assert_eq!((sim.app_a.first_mismatch, sim.app_b.first_mismatch), (None, None), "byte-exact both ways");

    let e = &sim.b.expected;
    let stats = sim.b.inner.listener.stats;
    println!("{} forged datagrams: {e:?}\nlistener: {stats:?}", e.total);
    assert!(e.total > 50_000);
    assert_eq!(sim.b.inner.listener.len(), 1, "no session was created by forged traffic");
    assert_eq!(stats.created, 1);
    assert_eq!(stats.too_short, e.too_short);
    assert_eq!(stats.checksum, e.checksum);
    assert_eq!(stats.malformed, e.malformed);
    assert_eq!(stats.no_conv, e.no_conv);
    assert_eq!(stats.conv_mismatch + stats.runt + stats.backlog_full + stats.replaced, 0);
    let session = sim.b.inner.session().unwrap();
    let snmp = session.snmp();
    assert_eq!(snmp.oob_packets, e.oob, "OOB datagrams are counted and dropped");
    assert!(session.fec_decoder().unwrap().stats.dropped >= e.wrap_edge, "wrap-edge shards dropped by the decoder");
    assert_eq!(sim.b.inner.listener.snmp().in_csum_errors, e.checksum);
}
