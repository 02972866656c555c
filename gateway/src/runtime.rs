//! What a running kcpgate needs, resolved once from [`Settings`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use kcpgate_core::crypto::PacketCrypto;
use kcpgate_core::fec::Shards;
use kcpgate_core::kcp;
use kcpgate_core::pipeline::SessionConfig;
use kcpgate_core::qpp::PadGeneration;
use kcpgate_core::stack::{QppSetup, StackConfig};

use crate::config::Settings;

/// 32 bytes from the OS, to seed the core's CSPRNGs (conv ids, nonces).
pub fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the OS random source works");
    seed
}

/// Settings turned into the core's configuration.
pub struct Plan {
    pub settings: Settings,
    /// Every task's SNMP counters.
    pub snmp: Arc<crate::snmp::Registry>,
    pub streams: Arc<crate::tunnel::StreamCounters>,
    pub crypto: Arc<PacketCrypto>,
    pub session: SessionConfig,
    pub stack: StackConfig,
}

impl Plan {
    pub fn new(settings: Settings) -> Plan {
        let (nodelay, interval, fast_resend, no_cwnd) = settings.kcp_params();
        let kcp = kcp::Config {
            snd_wnd: settings.sndwnd as u32,
            rcv_wnd: settings.rcvwnd as u32,
            nodelay,
            interval,
            fast_resend,
            no_cwnd,
            stream: true,
            ack_nodelay: settings.acknodelay,
            ..kcp::Config::default()
        };
        let session = SessionConfig {
            mtu: settings.mtu as usize,
            kcp,
            fec: Shards::new(settings.datashard as usize, settings.parityshard as usize),
            write_delay: false,
            rate_limit: settings.ratelimit.clamp(0, i64::from(u32::MAX)) as u32,
        };
        let qpp = settings
            .qpp
            .then(|| QppSetup::new(settings.key.as_bytes(), settings.qpp_count as u16, PadGeneration::Current));
        let stack = StackConfig { compression: !settings.nocomp, smux: settings.smux_config(), qpp };
        Plan {
            crypto: Arc::new(PacketCrypto::from_passphrase(settings.method(), &settings.key)),
            session,
            stack,
            settings,
            snmp: Arc::default(),
            streams: Arc::default(),
        }
    }

    /// Applies `-sockbuf` and `-dscp` to a UDP socket, logging what failed.
    pub fn tune_udp(&self, socket: &tokio::net::UdpSocket) {
        for w in tune_udp(socket, self.settings.sockbuf.max(0) as usize, self.settings.dscp as u32) {
            tracing::warn!("{w}");
        }
    }

    /// A tunnel for a new session.
    pub fn tunnel(&self, role: kcpgate_core::smux::Role, now: u32) -> crate::tunnel::Tunnel {
        let close_wait_ms = (self.settings.closewait.clamp(0, 86_400) * 1000) as u32;
        crate::tunnel::Tunnel::new(
            kcpgate_core::stack::StreamStack::new(role, self.stack.clone(), now),
            close_wait_ms,
            self.streams.clone(),
        )
    }

    /// Every address of `-listen`, with `host:N-M` expanded to each port and an empty
    /// host meaning every interface (IPv6 and IPv4).
    pub fn listen_addrs(&self) -> std::io::Result<Vec<SocketAddr>> {
        let (host, ports) = split_port_range(&self.settings.listen)?;
        let host = if host.is_empty() { "::" } else { host };
        let mut out = Vec::new();
        for port in ports {
            let bracketed =
                if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
            out.extend(format!("{bracketed}:{port}").to_socket_addrs()?);
        }
        Ok(out)
    }
}

/// Splits `host:port` or `host:min-max` at the last colon (kcptun's rule).
pub fn split_port_range(addr: &str) -> std::io::Result<(&str, std::ops::RangeInclusive<u16>)> {
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("address {addr:?} is not host:port or host:min-max"),
        )
    };
    let (host, ports) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (a.parse::<u16>().map_err(|_| bad())?, b.parse::<u16>().map_err(|_| bad())?),
        None => {
            let p = ports.parse::<u16>().map_err(|_| bad())?;
            (p, p)
        }
    };
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((host, lo..=hi))
}

/// Applies `-sockbuf` (send and receive buffer, bytes) and `-dscp` (IPv4 TOS = d << 2,
/// IPv6 traffic class = d; either succeeding is enough) to a UDP socket. Failures are
/// returned as warnings: kcptun only logs them too.
pub fn tune_udp(socket: &tokio::net::UdpSocket, sockbuf: usize, dscp: u32) -> Vec<String> {
    let s = socket2::SockRef::from(socket);
    let mut warnings = Vec::new();
    if sockbuf > 0 {
        if let Err(e) = s.set_recv_buffer_size(sockbuf) {
            warnings.push(format!("cannot set the UDP receive buffer to {sockbuf}: {e}"));
        }
        if let Err(e) = s.set_send_buffer_size(sockbuf) {
            warnings.push(format!("cannot set the UDP send buffer to {sockbuf}: {e}"));
        }
    }
    if dscp > 0 {
        let v4 = s.set_tos_v4(dscp << 2);
        let v6 = s.set_tclass_v6(dscp);
        if let (Err(e), Err(_)) = (v4, v6) {
            warnings.push(format!("cannot set DSCP {dscp}: {e}"));
        }
    }
    warnings
}
