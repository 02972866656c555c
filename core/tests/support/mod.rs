//! Shared helpers of the core's integration tests.
#![allow(dead_code)]

pub mod counting;
pub mod netsim;
pub mod pair;
pub mod vectors;

use std::sync::Arc;

use kcpgate_core::crypto::{Method, PacketCrypto};
use kcpgate_core::fec::Shards;
use kcpgate_core::kcp::{Config, Kcp, Mode};
use kcpgate_core::listener::Listener;
use kcpgate_core::pipeline::{Connection, SessionConfig};
use netsim::Endpoint;

/// A bare KCP connection driven the way a kcp-go session drives it with null crypto
/// and no FEC: writes are split into mss pieces and flushed at once (write-delay off),
/// writers wait while `WaitSnd ≥ snd_wnd`.
pub struct KcpEndpoint {
    pub kcp: Kcp,
}

impl KcpEndpoint {
    pub fn new(conv: u32, cfg: Config) -> KcpEndpoint {
        KcpEndpoint { kcp: Kcp::new(conv, cfg) }
    }
}

impl Endpoint for KcpEndpoint {
    fn handle_datagram(&mut self, now: u32, datagram: &[u8]) {
        let _ = self.kcp.input(now, datagram, true);
    }

    fn handle_timeout(&mut self, now: u32) {
        self.kcp.handle_timeout(now);
    }

    fn poll_timeout(&self) -> Option<u32> {
        self.kcp.poll_timeout()
    }

    fn drain_transmits(&mut self, send: &mut dyn FnMut(&[u8])) {
        let q = self.kcp.transmits();
        for d in q.iter() {
            send(d);
        }
        q.clear();
    }

    fn can_write(&self) -> bool {
        self.kcp.wait_snd() < self.kcp.config().snd_wnd as usize
    }

    fn write(&mut self, now: u32, data: &[u8]) -> usize {
        let mss = self.kcp.mss();
        for piece in data.chunks(mss) {
            self.kcp.send(piece).expect("non-empty piece of at most mss bytes");
        }
        self.kcp.flush(now);
        data.len()
    }

    fn read(&mut self, buf: &mut [u8]) -> usize {
        self.kcp.read(buf)
    }
}

/// kcptun's KCP settings for a session with null crypto and no FEC (§8.3):
/// stream mode, the mode preset, the side's windows, MTU 1350.
pub fn kcptun_config(mode: Mode, snd_wnd: u32, rcv_wnd: u32) -> Config {
    let mut cfg = Config { mtu: 1350, snd_wnd, rcv_wnd, stream: true, ..Config::default() };
    mode.apply(&mut cfg);
    cfg
}

/// kcptun client defaults: windows 128/512.
pub fn client_config(mode: Mode) -> Config {
    kcptun_config(mode, 128, 512)
}

/// kcptun server defaults: windows 1024/1024.
pub fn server_config(mode: Mode) -> Config {
    kcptun_config(mode, 1024, 1024)
}

/// kcptun's session settings: MTU 1350, the side's windows, the mode preset, FEC.
pub fn session_config(mode: Mode, snd_wnd: u32, rcv_wnd: u32, fec: Option<(usize, usize)>) -> SessionConfig {
    SessionConfig {
        mtu: 1350,
        kcp: kcptun_config(mode, snd_wnd, rcv_wnd),
        fec: fec.and_then(|(d, p)| Shards::new(d, p)),
        write_delay: false,
        rate_limit: 0,
    }
}

pub fn crypto(method: Method, key: &str) -> Arc<PacketCrypto> {
    Arc::new(PacketCrypto::from_passphrase(method, key))
}

/// A client's listener: it accepts no session and holds one dialled to the
/// server's address, 2.
pub fn dialled(cfg: SessionConfig, crypto: Arc<PacketCrypto>, seed: u8) -> Listener<u32> {
    let mut listener = Listener::new(cfg, crypto, [seed; 32]).expect("valid session config");
    listener.set_accepting(false);
    assert!(listener.dial(2, |conn| conn), "a first session");
    listener
}

/// A dialled session (the client side) as a simulator endpoint. Datagrams come
/// from the server's address, 2.
pub struct DialerEndpoint {
    pub dialer: Listener<u32>,
    scratch: Vec<u8>,
}

impl DialerEndpoint {
    pub fn new(cfg: &SessionConfig, crypto: Arc<PacketCrypto>, seed: u8) -> DialerEndpoint {
        DialerEndpoint { dialer: dialled(cfg.clone(), crypto, seed), scratch: Vec::with_capacity(65536) }
    }

    pub fn conn(&mut self) -> &mut Connection {
        self.dialer.session_mut(&2).expect("the dialled session")
    }

    fn session(&self) -> &Connection {
        self.dialer.session(&2).expect("the dialled session")
    }
}

impl Endpoint for DialerEndpoint {
    fn handle_datagram(&mut self, now: u32, datagram: &[u8]) {
        self.scratch.clear();
        self.scratch.extend_from_slice(datagram);
        self.dialer.handle_datagram(now, &2, &mut self.scratch);
    }
    fn handle_timeout(&mut self, now: u32) {
        self.conn().handle_timeout(now)
    }
    fn poll_timeout(&self) -> Option<u32> {
        self.session().poll_timeout()
    }
    fn drain_transmits(&mut self, send: &mut dyn FnMut(&[u8])) {
        for d in self.conn().transmits() {
            send(d);
        }
        self.conn().clear_transmits();
    }
    fn can_write(&self) -> bool {
        self.session().writable()
    }
    fn write(&mut self, now: u32, data: &[u8]) -> usize {
        self.conn().write(now, data)
    }
    fn read(&mut self, buf: &mut [u8]) -> usize {
        self.conn().read(buf)
    }
}

/// A listener (the server side) as a simulator endpoint: the client is address 1;
/// the application works on the first session accepted from it.
pub struct ListenerEndpoint {
    pub listener: Listener<u32>,
    pub accepted: Option<u32>,
    scratch: Vec<u8>,
}

impl ListenerEndpoint {
    pub fn new(cfg: SessionConfig, crypto: Arc<PacketCrypto>) -> ListenerEndpoint {
        ListenerEndpoint {
            listener: Listener::new(cfg, crypto, [9; 32]).expect("valid session config"),
            accepted: None,
            scratch: Vec::with_capacity(65536),
        }
    }

    pub fn session(&mut self) -> Option<&mut Connection> {
        let addr = self.accepted?;
        self.listener.session_mut(&addr)
    }
}

impl Endpoint for ListenerEndpoint {
    fn handle_datagram(&mut self, now: u32, datagram: &[u8]) {
        self.scratch.clear();
        self.scratch.extend_from_slice(datagram);
        self.listener.handle_datagram(now, &1, &mut self.scratch);
        if self.accepted.is_none() {
            self.accepted = self.listener.accept();
        }
    }
    fn handle_timeout(&mut self, now: u32) {
        for (_, s) in self.listener.sessions_mut() {
            if s.poll_timeout().is_some_and(|t| kcpgate_core::kcp::diff(now, t) >= 0) {
                s.handle_timeout(now);
            }
        }
    }
    fn poll_timeout(&self) -> Option<u32> {
        let addr = self.accepted?;
        self.listener.session(&addr)?.poll_timeout()
    }
    fn drain_transmits(&mut self, send: &mut dyn FnMut(&[u8])) {
        for (addr, s) in self.listener.sessions_mut() {
            // Only the client's session has a peer on the simulated link.
            if *addr == 1 {
                for d in s.transmits() {
                    send(d);
                }
            }
            s.clear_transmits();
        }
    }
    fn can_write(&self) -> bool {
        self.accepted.and_then(|a| self.listener.session(&a)).is_some_and(Connection::writable)
    }
    fn write(&mut self, now: u32, data: &[u8]) -> usize {
        self.session().map_or(0, |s| s.write(now, data))
    }
    fn read(&mut self, buf: &mut [u8]) -> usize {
        self.session().map_or(0, |s| s.read(buf))
    }
}
