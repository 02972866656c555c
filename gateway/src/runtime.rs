//! What a running kcpgate needs, resolved once from [`Settings`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, RwLock};

use kcpgate_core::{Admission, EndpointConfig, OpeningGate, OpeningLimits, PacketCrypto, Refusal, SessionSettings};

use crate::config::{split_port_range, ConfigError, Settings};
use crate::control::{FecShards, Registry, Tunables, TunablesPatch, ViewContext};
use crate::transport::TransportKind;

/// 32 bytes from the OS, to seed the core's CSPRNGs (conv ids, nonces).
pub fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the OS random source works");
    seed
}

/// 8 bytes from the OS: a per-process hash seed.
pub fn random_u64() -> u64 {
    u64::from_le_bytes(random_seed()[..8].try_into().expect("8 of 32 bytes"))
}

/// Lowercase hex of `bytes`: tokens, certificate hashes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One listener: its name, the settings it started with, what sessions opened
/// now use, and what it shares with the process's other listeners.
pub struct Plan {
    /// The listener's name: `-config`'s, else its address.
    pub name: String,
    /// The settings the listener started with: its addresses and sockets, and the
    /// process's settings. What sessions and streams opened now use (a reload or
    /// `PATCH` may have changed it) is [`Plan::tuning`].
    pub settings: Settings,
    /// What every listener of the process shares.
    pub shared: Arc<Shared>,
    /// WebTransport sessions that have no KCP session yet (they count against
    /// the session limit).
    pub webtransport_waiting: std::sync::atomic::AtomicU64,
    /// Which UDP task owns which conversation, for players whose new address
    /// reaches another task (`-address-change`).
    pub handoff: crate::handoff::Handoff,
    tuning: RwLock<Arc<Tuning>>,
}

/// What every listener of one process shares, so that the API, the metrics, the
/// limits and the public listener see one gateway.
pub struct Shared {
    /// Every task's inbox, session ids and events.
    pub registry: Arc<Registry>,
    /// Stream counters of every listener.
    pub streams: Arc<crate::tunnel::StreamCounters>,
    /// The WebTransport listener's port and certificate hashes, for the public listener.
    pub webtransport: RwLock<crate::webtransport_state::Published>,
    /// WebTransport sessions refused, by reason.
    pub webtransport_refusals: Arc<crate::webtransport_state::Refusals>,
    /// Which datagrams may open sessions, so a copy sent from another address is
    /// refused whichever socket it reaches, and the rates are the gateway's.
    pub admission: SharedAdmission,
    /// What the HTTP listeners count (closed at the cap, timed out).
    pub http_counters: HttpCounters,
}

impl Shared {
    /// The shared parts of a process started with `process` (its opening rates).
    pub fn new(process: &Settings) -> Arc<Shared> {
        Arc::new(Shared {
            registry: Arc::default(),
            streams: Arc::default(),
            webtransport: RwLock::default(),
            webtransport_refusals: Arc::default(),
            admission: SharedAdmission::new(opening_limits(process)),
            http_counters: HttpCounters::default(),
        })
    }
}

/// The HTTP listeners' counters.
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// The admin listener's.
    pub admin: Arc<crate::http::ListenerCounters>,
    /// The public listener's.
    pub public: Arc<crate::http::ListenerCounters>,
}

/// One [`OpeningGate`] for every listener, on a clock of its own (each driver's
/// starts at its own 0). It is asked only when a datagram would open a session,
/// so the lock is cold.
#[derive(Clone)]
pub struct SharedAdmission {
    gate: Arc<std::sync::Mutex<OpeningGate>>,
    start: std::time::Instant,
}

impl SharedAdmission {
    fn new(limits: OpeningLimits) -> SharedAdmission {
        SharedAdmission {
            gate: Arc::new(std::sync::Mutex::new(OpeningGate::new(limits, 0, random_u64()))),
            start: std::time::Instant::now(),
        }
    }
}

impl Admission for SharedAdmission {
    fn admit(&mut self, _driver_now: u32, source: u64, fingerprint: Option<u64>) -> Result<(), Refusal> {
        let now = self.start.elapsed().as_millis() as u32; // wraps after 49 days, as KCP time does
        self.gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner).admit(now, source, fingerprint)
    }
}

/// A listener's settings for sessions and streams opened now (the tunables'
/// current values, a reload's key, crypt and target), with the endpoint
/// configuration and the crypto they make. Open sessions keep what they opened
/// with.
pub struct Tuning {
    /// The listener's settings now.
    pub settings: Settings,
    /// The core's configuration they make.
    pub endpoint: EndpointConfig,
    /// The packet crypto of `settings.key` and `crypt`.
    pub crypto: Arc<PacketCrypto>,
}

impl Tuning {
    /// The tuning of `settings`; refused when they do not make an endpoint
    /// configuration. `crypto` is reused when the key and crypt are the same,
    /// so open sessions and new ones share it.
    fn of(settings: Settings, previous: Option<&Tuning>) -> Result<Tuning, ConfigError> {
        let endpoint = settings
            .session
            .endpoint_config(&settings.key)
            .map_err(|e| ConfigError(format!("session settings: {e}")))?;
        let crypto = match previous {
            Some(p) if p.settings.key == settings.key && p.settings.method() == settings.method() => p.crypto.clone(),
            _ => Arc::new(PacketCrypto::from_passphrase(settings.method(), &settings.key)),
        };
        Ok(Tuning { settings, endpoint, crypto })
    }

    /// What `PATCH /api/v1/config` may change, as now in effect.
    pub fn tunables(&self) -> Tunables {
        Tunables::of(&self.settings.session, self.settings.max_sessions)
    }

    /// The session settings of sessions opened now.
    pub fn session(&self) -> &SessionSettings {
        &self.settings.session
    }

    /// The session limit (0 for none).
    pub fn max_sessions(&self) -> u64 {
        self.settings.max_sessions
    }
}

/// `-open-rate` and `-open-rate-per-source`, with bursts of 5 and 10 seconds' worth.
pub(crate) fn opening_limits(settings: &Settings) -> OpeningLimits {
    let (global, per_source) = (settings.open_rate, settings.open_rate_per_source);
    OpeningLimits {
        per_source_rate: per_source,
        per_source_burst: per_source.saturating_mul(10),
        global_rate: global,
        global_burst: global.saturating_mul(5),
    }
}

impl Plan {
    /// The listener `name` of `settings` in the process that shares `shared`;
    /// refused when the session settings do not make an endpoint configuration
    /// (`Settings::validate` says why first, in flag terms).
    pub fn new(name: String, settings: Settings, shared: Arc<Shared>) -> Result<Plan, ConfigError> {
        let tuning = Tuning::of(settings.clone(), None)?;
        Ok(Plan {
            name,
            settings,
            shared,
            webtransport_waiting: Default::default(),
            handoff: Default::default(),
            tuning: RwLock::new(Arc::new(tuning)),
        })
    }

    /// The one listener of a process started with `settings`, named by its address.
    pub fn alone(settings: Settings) -> Result<Plan, ConfigError> {
        let shared = Shared::new(&settings);
        Plan::new(settings.listen.clone(), settings, shared)
    }

    /// The current tunables and the configuration of sessions opened now.
    pub fn tuning(&self) -> Arc<Tuning> {
        self.tuning.read().expect("tuning lock").clone()
    }

    /// Applies a change to the tunables for sessions opened from now on; the
    /// caller then has the tasks pick it up ([`Registry::retune`]). On error
    /// nothing changed and each entry says which field is wrong and why.
    pub fn retune(&self, patch: &TunablesPatch) -> Result<Tunables, Vec<(&'static str, String)>> {
        let mut current = self.tuning.write().expect("tuning lock");
        let mut settings = current.settings.clone();
        patch.apply(&mut settings.session, &mut settings.max_sessions)?;
        let next = Tuning::of(settings, Some(&current)).map_err(|e| vec![("session settings", e.0)])?;
        let tunables = next.tunables();
        *current = Arc::new(next);
        Ok(tunables)
    }

    /// The tuning a reload's `settings` make for this listener, changing nothing
    /// yet; refused when they do not make an endpoint configuration. The crypto
    /// in use is kept when the key and crypt are the same.
    pub fn prepare(&self, settings: Settings) -> Result<Tuning, ConfigError> {
        Tuning::of(settings, Some(&self.tuning()))
    }

    /// Takes a prepared tuning: sessions and streams opened from now on use it
    /// (the caller then has the tasks pick it up, as after [`Plan::retune`]);
    /// open sessions keep their key, crypt and settings. Its addresses and
    /// sockets stay as they started.
    pub fn install(&self, tuning: Tuning) {
        *self.tuning.write().expect("tuning lock") = Arc::new(tuning);
    }

    /// Applies `-sockbuf` and `-dscp` to a UDP socket, logging what failed.
    pub fn tune_udp(&self, socket: &tokio::net::UdpSocket) {
        for w in tune_udp(socket, self.settings.sockbuf as usize, u32::from(self.settings.dscp)) {
            tracing::warn!("{w}");
        }
    }

    /// What the session views of a task on `local` share.
    pub fn view_context(&self, local: SocketAddr, transport: TransportKind) -> ViewContext {
        let tuning = self.tuning();
        let session = tuning.session();
        let n = &session.numbers;
        let fec = session.fec().then_some(FecShards { data: n.datashard.into(), parity: n.parityshard.into() });
        ViewContext { local, transport, fec }
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
