//! Shared helpers of the core's integration tests.
#![allow(dead_code)]

pub mod counting;
pub mod netsim;
pub mod pair;
pub mod vectors;

use std::sync::Arc;

use kcpgate_core::crypto::{Method, PacketCrypto};
use kcpgate_core::fec::Shards;
use kcpgate_core::kcp::{Config, Mode};
use kcpgate_core::listener::Listener;
use kcpgate_core::pipeline::SessionConfig;

/// kcptun's KCP settings for a session with null crypto and no FEC (docs/protocol.md §11):
/// stream mode, the mode preset, the side's windows, MTU 1350.
pub fn kcptun_config(mode: Mode, snd_wnd: u32, rcv_wnd: u32) -> Config {
    let mut cfg = Config { mtu: 1350, snd_wnd, rcv_wnd, stream: true, ..Config::default() };
    mode.apply(&mut cfg);
    cfg
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
    assert!(listener.dial(2, |conn| conn).is_some(), "a first session");
    listener
}
