//! The settings of a listener's sessions under kcptun's names, with kcptun's
//! defaults for each side: one table of ranges, units and defaults ([`NUMBERS`])
//! that every way of configuring kcpgate checks against (flags, kcptun's JSON, a
//! config file, the environment, the admin API, the browser module), and the one
//! function that turns settings into an [`EndpointConfig`]
//! ([`SessionSettings::endpoint_config`]).

use crate::crypto::Method;
use crate::endpoint::EndpointConfig;
use crate::error::SettingsError;
use crate::fec::Shards;
use crate::kcp::{self, Mode};
use crate::pipeline::SessionConfig;
use crate::qpp::{self, PadGeneration};
use crate::session::{Framing, StreamConfig};
use crate::smux::{self, Role};
use crate::stack::{QppSetup, StackConfig};

/// One numeric setting: the values it takes and its defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Number {
    /// kcptun's flag and JSON key.
    pub name: &'static str,
    /// The smallest value allowed.
    pub min: i64,
    /// The largest value allowed.
    pub max: i64,
    /// What it counts, plural (`"segments"`), or empty.
    pub unit: &'static str,
    /// The default of a server.
    pub server: i64,
    /// The default of a client.
    pub client: i64,
}

impl Number {
    /// The default for `role`.
    pub const fn default_for(&self, role: Role) -> i64 {
        match role {
            Role::Server => self.server,
            Role::Client => self.client,
        }
    }

    /// `value` when the setting allows it; else why not.
    pub fn check(&self, value: i64) -> Result<i64, SettingsError> {
        if (self.min..=self.max).contains(&value) {
            Ok(value)
        } else {
            Err(SettingsError::OutOfRange { setting: self.name, value, min: self.min, max: self.max, unit: self.unit })
        }
    }
}

/// The numbers of a listener's sessions, each with its entry in [`NUMBERS`]:
/// written once here, so the struct and the table cannot drift apart.
macro_rules! numbers {
    ($($(#[doc = $doc:literal])+ $field:ident: $ty:ty = $name:literal, $min:expr, $max:expr, $unit:literal, $server:expr, $client:expr;)+) => {
        /// The numeric settings of a listener's sessions, each within its range in
        /// [`NUMBERS`] (the fields are public: set them through
        /// [`SessionSettings::set_number`] to have them checked).
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Numbers {
            $($(#[doc = $doc])+ pub $field: $ty,)+
        }

        /// Every numeric setting of a listener's sessions: name, range, unit and
        /// defaults for a server and a client.
        pub const NUMBERS: &[Number] = &[
            $(Number { name: $name, min: $min, max: $max, unit: $unit, server: $server, client: $client },)+
        ];

        impl Numbers {
            /// kcptun's defaults for `role`.
            pub fn kcptun(role: Role) -> Numbers {
                // The table's defaults lie within each type (a test checks).
                Numbers {
                    $($field: {
                        let default: i64 = match role { Role::Server => $server, Role::Client => $client };
                        default as $ty
                    },)+
                }
            }

            /// The value of the setting `name`; `None` for no such setting.
            pub fn get(&self, name: &str) -> Option<i64> {
                match name {
                    $($name => Some(self.$field as i64),)+
                    _ => None,
                }
            }

            /// Sets `name` to `value` when its range allows it. `Ok(false)`: no such setting.
            fn set(&mut self, name: &str, value: i64) -> Result<bool, SettingsError> {
                match name {
                    $($name => {
                        let checked = number($name).expect("in the table").check(value)?;
                        // Within the range, which lies within the type.
                        self.$field = checked as $ty;
                    })+
                    _ => return Ok(false),
                }
                Ok(true)
            }
        }
    };
}

numbers! {
    /// Largest UDP payload, headers included; the crypt and FEC set a floor
    /// (`pipeline::min_mtu`).
    mtu: u16 = "mtu", 1, 1500, "bytes", 1350, 1350;
    /// KCP send window.
    sndwnd: u32 = "sndwnd", 1, 65535, "segments", 1024, 128;
    /// KCP receive window.
    rcvwnd: u32 = "rcvwnd", 1, 65535, "segments", 1024, 512;
    /// FEC data shards (0 with `parityshard` 0: no FEC).
    datashard: u8 = "datashard", 0, 255, "shards", 10, 10;
    /// FEC parity shards.
    parityshard: u8 = "parityshard", 0, 255, "shards", 3, 3;
    /// Manual mode: 1 for KCP's nodelay (the RTO grows 1.5× instead of 2×).
    nodelay: u8 = "nodelay", 0, 1, "", 0, 0;
    /// Manual mode: KCP's flush interval.
    interval: u32 = "interval", 10, 5000, "ms", 50, 50;
    /// Manual mode: resend a segment skipped by this many ACKs; 0 is off.
    resend: u32 = "resend", 0, 65535, "", 0, 0;
    /// Manual mode: 1 turns congestion control off.
    nc: u8 = "nc", 0, 1, "", 0, 0;
    /// Outgoing bytes per second per session; 0 is unlimited.
    ratelimit: u32 = "ratelimit", 0, 4_294_967_295, "bytes per second", 0, 0;
    /// smux version (a server given none takes the client's).
    smuxver: u8 = "smuxver", 1, 2, "", 2, 2;
    /// smux session receive buffer.
    smuxbuf: u32 = "smuxbuf", 1, 2_147_483_647, "bytes", 4_194_304, 4_194_304;
    /// smux largest frame.
    framesize: u16 = "framesize", 1, 65535, "bytes", 8192, 8192;
    /// smux v2 per-stream window.
    streambuf: u32 = "streambuf", 1, 2_147_483_647, "bytes", 2_097_152, 2_097_152;
    /// Between smux keep-alives (smux closes a session silent for 30 s).
    keepalive: u32 = "keepalive", 1, 30, "seconds", 10, 10;
    /// How long a stream may stay half-open; 0 keeps it until both ends finish.
    closewait: u32 = "closewait", 0, 86_400, "seconds", 30, 0;
    /// QPP pads (used modulo 65536, as kcptun does); a prime is best.
    qpp_count: u32 = "QPPCount", 1, 2_147_483_647, "pads", 61, 61;
}

/// The table's entry for `name`.
pub fn number(name: &str) -> Option<&'static Number> {
    NUMBERS.iter().find(|n| n.name == name)
}

/// Everything that shapes the sessions of one listener (or one client): layers,
/// KCP, smux; the key is given apart, being a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSettings {
    /// Packet crypto.
    pub crypt: Method,
    /// A KCP preset; `None` for manual (`nodelay`, `interval`, `resend`, `nc`).
    pub mode: Option<Mode>,
    /// Acknowledge at once instead of with the next flush.
    pub acknodelay: bool,
    /// No snappy framing.
    pub nocomp: bool,
    /// Quantum Permutation Pads on stream payloads.
    pub qpp: bool,
    /// A server takes the client's smux version instead of `smuxver`.
    pub smux_detect: bool,
    /// What carries the application's bytes over KCP.
    pub framing: Framing,
    /// The numbers, each within its range.
    pub numbers: Numbers,
}

impl SessionSettings {
    /// kcptun's defaults for `role`: aes, fast, FEC 10/3, snappy and smux v2 (a
    /// server takes either smux version).
    pub fn kcptun(role: Role) -> SessionSettings {
        SessionSettings {
            crypt: Method::Aes256,
            mode: Some(Mode::Fast),
            acknodelay: false,
            nocomp: false,
            qpp: false,
            smux_detect: role == Role::Server,
            framing: Framing::Streams,
            numbers: Numbers::kcptun(role),
        }
    }

    /// Sets the number `name` (as [`NUMBERS`] names it) when its range allows.
    pub fn set_number(&mut self, name: &str, value: i64) -> Result<(), SettingsError> {
        match self.numbers.set(name, value)? {
            true => Ok(()),
            false => Err(SettingsError::UnknownSetting),
        }
    }

    /// (nodelay, interval, resend, nc) as sessions use them: the preset's own, or
    /// in manual mode the numbers given.
    pub fn kcp_params(&self) -> (bool, u32, u32, bool) {
        let n = &self.numbers;
        self.mode.map_or((n.nodelay != 0, n.interval, n.resend, n.nc != 0), Mode::params)
    }

    /// Whether datagrams carry FEC.
    pub fn fec(&self) -> bool {
        self.numbers.datashard > 0 && self.numbers.parityshard > 0
    }

    /// The settings that depend on each other: the MTU leaves room for the crypt's
    /// and FEC's headers, the shards fit a group of 255, smux's buffers agree, and
    /// QPP's count does not wrap to 0.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let n = &self.numbers;
        let smallest = crate::pipeline::min_mtu(self.crypt, self.fec());
        if usize::from(n.mtu) < smallest {
            return Err(SettingsError::MtuTooSmall { mtu: usize::from(n.mtu), smallest });
        }
        if u16::from(n.datashard) + u16::from(n.parityshard) > 255 {
            return Err(SettingsError::TooManyShards { data: n.datashard, parity: n.parityshard });
        }
        self.smux_config().validate()?;
        if self.qpp {
            qpp::check_parameters(&[], i64::from(n.qpp_count), PadGeneration::Current)?;
        }
        Ok(())
    }

    /// What kcptun warns of for these QPP settings with `key` (a short key, few
    /// pads, an even count); none without QPP or with settings [`Self::validate`]
    /// refuses.
    pub fn qpp_warnings(&self, key: &str) -> Vec<qpp::QppWarning> {
        if !self.qpp {
            return Vec::new();
        }
        qpp::check_parameters(key.as_bytes(), i64::from(self.numbers.qpp_count), PadGeneration::Current)
            .map(|(_, warnings)| warnings)
            .unwrap_or_default()
    }

    /// The smux settings.
    pub fn smux_config(&self) -> smux::MuxConfig {
        let n = &self.numbers;
        let version = match (self.smux_detect, n.smuxver) {
            (true, _) => smux::Version::Detect,
            (false, 1) => smux::Version::V1,
            (false, _) => smux::Version::V2,
        };
        smux::MuxConfig {
            version,
            keepalive_interval_ms: n.keepalive.saturating_mul(1000),
            keepalive_timeout_ms: 30_000,
            max_frame_size: usize::from(n.framesize),
            max_receive_buffer: n.smuxbuf as usize,
            max_stream_buffer: n.streambuf as usize,
        }
    }

    /// The session layers (crypto, FEC, KCP, rate) these settings give.
    pub fn session_config(&self) -> SessionConfig {
        let n = &self.numbers;
        let (nodelay, interval, fast_resend, no_cwnd) = self.kcp_params();
        let kcp = kcp::Config {
            snd_wnd: n.sndwnd,
            rcv_wnd: n.rcvwnd,
            nodelay,
            interval,
            fast_resend,
            no_cwnd,
            stream: true,
            ack_nodelay: self.acknodelay,
            ..kcp::Config::default()
        };
        SessionConfig {
            mtu: usize::from(n.mtu),
            kcp,
            fec: Shards::new(usize::from(n.datashard), usize::from(n.parityshard)),
            write_delay: false,
            rate_limit: n.ratelimit,
        }
    }

    /// The endpoint configuration these settings give, QPP's pads made from `key`:
    /// the one place an [`EndpointConfig`] is made. Refused as [`Self::validate`]
    /// refuses.
    pub fn endpoint_config(&self, key: &str) -> Result<EndpointConfig, SettingsError> {
        self.validate()?;
        let qpp = self.qpp.then(|| {
            // kcptun uses the count modulo 65536; `validate` refused counts that give 0.
            QppSetup::new(key.as_bytes(), self.numbers.qpp_count as u16, PadGeneration::Current)
        });
        let stack = StackConfig { compression: !self.nocomp, smux: self.smux_config(), qpp };
        // At most a day: fits.
        let close_wait_ms = self.numbers.closewait * 1000;
        Ok(EndpointConfig {
            session: self.session_config(),
            streams: StreamConfig { stack, close_wait_ms, framing: self.framing },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_lie_within_their_ranges_and_types() {
        for role in [Role::Server, Role::Client] {
            let n = Numbers::kcptun(role);
            for spec in NUMBERS {
                let default = spec.default_for(role);
                assert_eq!(spec.check(default), Ok(default), "{}", spec.name);
                assert_eq!(n.get(spec.name), Some(default), "{} fits its field", spec.name);
                let mut edges = n.clone();
                for edge in [spec.min, spec.max] {
                    edges.set(spec.name, edge).expect("an edge is allowed");
                    assert_eq!(edges.get(spec.name), Some(edge), "{} holds {edge}", spec.name);
                }
            }
        }
    }

    #[test]
    fn a_value_outside_its_range_is_refused_with_the_range() {
        let mut s = SessionSettings::kcptun(Role::Client);
        let e = s.set_number("sndwnd", 0).unwrap_err();
        assert_eq!(e.to_string(), "sndwnd must be between 1 and 65535 segments (got 0)");
        assert_eq!(
            s.set_number("interval", 5001).unwrap_err().to_string(),
            "interval must be between 10 and 5000 ms (got 5001)"
        );
        assert_eq!(s.set_number("nodelay", 2).unwrap_err().to_string(), "nodelay must be between 0 and 1 (got 2)");
        assert_eq!(s.set_number("window", 1), Err(SettingsError::UnknownSetting));
        assert_eq!(s, SessionSettings::kcptun(Role::Client), "a refused value changes nothing");
    }

    #[test]
    fn kcptun_defaults_make_kcptuns_sessions() {
        let server = SessionSettings::kcptun(Role::Server).endpoint_config("k").unwrap();
        let client = SessionSettings::kcptun(Role::Client).endpoint_config("k").unwrap();
        assert_eq!((server.session.kcp.snd_wnd, server.session.kcp.rcv_wnd), (1024, 1024));
        assert_eq!((client.session.kcp.snd_wnd, client.session.kcp.rcv_wnd), (128, 512));
        assert_eq!(client.session.kcp.interval, Mode::Fast.params().1);
        assert_eq!(server.streams.stack.smux.version, smux::Version::Detect);
        assert_eq!(client.streams.stack.smux.version, smux::Version::V2);
        assert_eq!((server.streams.close_wait_ms, client.streams.close_wait_ms), (30_000, 0));
        assert!(server.session.fec.is_some() && server.streams.stack.compression);
    }

    #[test]
    fn settings_that_depend_on_each_other_are_checked_together() {
        let mut s = SessionSettings::kcptun(Role::Server);
        s.set_number("mtu", 40).unwrap();
        assert!(matches!(s.endpoint_config("k"), Err(SettingsError::MtuTooSmall { mtu: 40, .. })));
        s.crypt = Method::Null;
        s.set_number("datashard", 0).unwrap();
        assert!(s.endpoint_config("k").is_ok(), "no crypto header and no FEC leave room");
        let mut shards = SessionSettings::kcptun(Role::Server);
        shards.set_number("datashard", 200).unwrap();
        shards.set_number("parityshard", 100).unwrap();
        assert_eq!(shards.validate(), Err(SettingsError::TooManyShards { data: 200, parity: 100 }));
        let mut qpp = SessionSettings::kcptun(Role::Client);
        qpp.qpp = true;
        qpp.set_number("QPPCount", 65536).unwrap();
        assert_eq!(qpp.validate(), Err(SettingsError::QppWrapsToZero(65536)));
        let mut manual = SessionSettings::kcptun(Role::Client);
        manual.mode = None;
        manual.set_number("interval", 25).unwrap();
        assert_eq!(manual.endpoint_config("k").unwrap().session.kcp.interval, 25);
    }
}
