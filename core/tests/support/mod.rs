//! Shared helpers of the core's integration tests.
#![allow(dead_code)]

pub mod netsim;
pub mod vectors;

use kcpgate_core::kcp::{Config, Kcp, Mode};
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

    fn write(&mut self, now: u32, data: &[u8]) {
        let mss = self.kcp.mss();
        for piece in data.chunks(mss) {
            self.kcp.send(piece).expect("non-empty piece of at most mss bytes");
        }
        self.kcp.flush(now);
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
