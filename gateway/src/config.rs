//! kcptun's command line and JSON configuration (docs/protocol.md §11), resolved
//! into one [`Settings`] value.
//!
//! kcptun command lines work unchanged: urfave/cli accepts `-name value`,
//! `--name value` and `-name=value`, so single-dash long flags are rewritten to the
//! double-dash form clap expects before parsing (only for names kcpgate knows).
//! Then, as in kcptun: flags (with their defaults) first, the `-c` JSON file over
//! them for the keys it has, and the `-mode` preset last.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use kcpgate_core::settings as core_settings;
pub use kcpgate_core::Role;
use kcpgate_core::{Method, Mode, Number, SessionSettings, SettingsError};
use serde::{Deserialize, Serialize, Serializer};
use utoipa::ToSchema;

/// Everything a kcptun server or client is configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Server or client.
    pub role: Role,
    /// Server: `-listen`; client: `-localaddr`.
    pub listen: String,
    /// Server: whether `listen` is a UDP listener; a `-config` file's WebTransport
    /// listener has only `webtransport`.
    pub listen_udp: bool,
    /// Server: `-target`; client: `-remoteaddr`.
    pub target: String,
    /// `-key`: the pre-shared secret (kcptun's `KCPTUN_KEY`).
    pub key: Secret,
    /// `-key-file`: read into `key` by [`Settings::read_secret_files`].
    pub key_file: String,
    /// Everything that shapes the sessions: crypt, KCP mode and windows, FEC,
    /// snappy, smux, QPP, close-wait, rate limit (the mode, the manual KCP values,
    /// the windows and the rate limit may change while kcpgate runs).
    pub session: SessionSettings,
    /// A `-crypt` kcptun does not know (it means aes there too), for the warning.
    pub unknown_crypt: Option<String>,
    /// A `-mode` kcptun does not know (it means manual there too), for the warning.
    pub unknown_mode: Option<String>,
    /// Server: sessions open at most at once; 0 is unlimited (may change while
    /// kcpgate runs).
    pub max_sessions: u64,
    /// `-dscp`: the DSCP value of outgoing UDP packets.
    pub dscp: u8,
    /// `-sockbuf`: the UDP socket buffers, bytes.
    pub sockbuf: u32,
    /// `-snmplog`: kcptun's CSV counters file (a Go time layout); empty for none.
    pub snmplog: String,
    /// Seconds.
    pub snmpperiod: u32,
    /// `-log`: the file logs are appended to; empty for stderr.
    pub log: String,
    /// `text` or `json`.
    pub log_format: String,
    /// `-quiet`: no line per stream opened or closed.
    pub quiet: bool,
    /// `-tcp`: kcptun's TCP emulation (refused: kcpgate speaks UDP).
    pub tcp: bool,
    /// `-pprof`: kcptun's Go profiler (ignored with a warning).
    pub pprof: bool,
    /// Seconds open streams may run on after SIGTERM/SIGINT.
    pub drain_timeout: u64,
    /// Server: new sessions per second in all, and per source IP address (0: no limit).
    pub open_rate: u32,
    /// `-open-rate-per-source`: new sessions per second from one source (0: no limit).
    pub open_rate_per_source: u32,
    /// Client: `-conn`, KCP sessions to spread connections over.
    pub conn: u32,
    /// Seconds.
    pub autoexpire: u64,
    /// Seconds.
    pub scavengettl: u64,
    /// The admin HTTP listener's address, or `off`.
    pub admin: String,
    /// Whether `-admin` was given; a default address that is taken only warns.
    pub admin_explicit: bool,
    /// Bearer token for the admin API; empty for none (loopback only).
    pub admin_token: Secret,
    /// `-admin-token-file`: read into `admin_token` by [`Settings::read_secret_files`].
    pub admin_token_file: String,
    /// PEM files that make the admin listener serve HTTPS; empty for HTTP.
    pub admin_cert: String,
    /// `-admin-key`: the private key of `-admin-cert`.
    pub admin_key: String,
    /// `/metrics` needs the admin token too.
    pub metrics_auth: bool,
    /// Server: `-address-change`, sessions may follow their players to a new
    /// address (on evidence of the session itself).
    pub address_change: bool,
    /// Server: the WebTransport listener's address, or `off`.
    pub webtransport: String,
    /// Server: PEM files of the WebTransport certificate; empty for a self-signed one.
    pub webtransport_cert: String,
    /// `-webtransport-key`: the private key of `-webtransport-cert`.
    pub webtransport_key: String,
    /// Server: comma-separated origins allowed; empty allows any.
    pub webtransport_origin: String,
    /// Server: WebTransport connections at once from one IPv4 address or IPv6 /64; 0: no limit.
    pub webtransport_per_address: u32,
    /// Server: where pages are told to connect for WebTransport, `host:port` or
    /// `:port`; empty for the listener's port on the host the page asked.
    pub webtransport_advertise: String,
    /// Server: the public HTTP listener for game pages, or `off`.
    pub public: String,
    /// Server: PEM files that make the public listener serve HTTPS; empty for HTTP.
    pub public_cert: String,
    /// `-public-key`: the private key of `-public-cert`.
    pub public_key: String,
    /// `-c`: kcptun's JSON file, read over the flags.
    pub kcptun_json: Option<PathBuf>,
    /// Server: `-config`, kcpgate's TOML file of process settings and listeners;
    /// empty for none.
    pub config: String,
    /// The flags given on the command line or by their environment variables,
    /// which a `-config` file does not override.
    pub given: std::collections::BTreeSet<&'static str>,
}

/// What can change while kcpgate runs (`PATCH /api/v1/config`): part of the
/// settings from the start. Changes apply to sessions opened afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(example = json!({"mode": "fast3", "nodelay": 1, "interval": 10, "resend": 2, "nc": 1, "sndwnd": 1024, "rcvwnd": 1024, "ratelimit": 0, "max_sessions": 5000}))]
pub struct Tunables {
    /// KCP profile. The API shows the four values below as they are in effect: a
    /// preset's own, or with manual the ones given.
    pub mode: Profile,
    /// Manual mode: 1 for nodelay (the RTO grows 1.5× instead of 2×).
    #[serde(serialize_with = "zero_or_one")]
    #[schema(value_type = u32, minimum = 0, maximum = 1)]
    pub nodelay: bool,
    /// Manual mode: KCP's flush interval, ms.
    #[schema(minimum = 10, maximum = 5000, example = 20)]
    pub interval: u32,
    /// Manual mode: fast resend after this many duplicate ACKs; 0 is off.
    #[schema(maximum = 65535, example = 2)]
    pub resend: u32,
    /// Manual mode: 1 turns congestion control off.
    #[serde(serialize_with = "zero_or_one")]
    #[schema(value_type = u32, minimum = 0, maximum = 1)]
    pub nc: bool,
    /// KCP send window, segments.
    #[schema(minimum = 1, maximum = 65535, example = 1024)]
    pub sndwnd: u32,
    /// KCP receive window, segments.
    #[schema(minimum = 1, maximum = 65535, example = 1024)]
    pub rcvwnd: u32,
    /// Outgoing bytes per second per session; 0 is unlimited (a negative flag
    /// means 0, as in kcptun).
    #[schema(format = Int64, maximum = 4_294_967_295_u64, example = 0)]
    pub ratelimit: u32,
    /// Server: sessions open at most at once; 0 is unlimited.
    #[schema(maximum = 10_000_000, example = 0)]
    pub max_sessions: u64,
}

/// kcptun writes nodelay and nc as 0 or 1.
fn zero_or_one<S: Serializer>(on: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(u32::from(*on))
}

impl Tunables {
    /// The tunables of `session` (with the values in effect: a preset's own, which
    /// kcptun applies after the JSON file) and the session limit.
    pub fn of(session: &SessionSettings, max_sessions: u64) -> Tunables {
        let (nodelay, interval, resend, nc) = session.kcp_params();
        let n = &session.numbers;
        Tunables {
            mode: Profile::of(session.mode),
            nodelay,
            interval,
            resend,
            nc,
            sndwnd: n.sndwnd,
            rcvwnd: n.rcvwnd,
            ratelimit: n.ratelimit,
            max_sessions,
        }
    }
}

/// A KCP profile: kcptun's presets, or manual (nodelay, interval, resend, nc as
/// given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// nodelay 0, interval 40, resend 2, nc 1.
    Normal,
    /// nodelay 0, interval 30, resend 2, nc 1.
    Fast,
    /// nodelay 1, interval 20, resend 2, nc 1.
    Fast2,
    /// nodelay 1, interval 10, resend 2, nc 1.
    Fast3,
    /// `-nodelay`, `-interval`, `-resend` and `-nc` as given.
    Manual,
}

impl Profile {
    /// The profile of a preset, or manual.
    pub fn of(mode: Option<Mode>) -> Profile {
        match mode {
            Some(Mode::Normal) => Profile::Normal,
            Some(Mode::Fast) => Profile::Fast,
            Some(Mode::Fast2) => Profile::Fast2,
            Some(Mode::Fast3) => Profile::Fast3,
            None => Profile::Manual,
        }
    }

    /// The core's preset; none for manual.
    pub fn preset(self) -> Option<Mode> {
        match self {
            Profile::Normal => Some(Mode::Normal),
            Profile::Fast => Some(Mode::Fast),
            Profile::Fast2 => Some(Mode::Fast2),
            Profile::Fast3 => Some(Mode::Fast3),
            Profile::Manual => None,
        }
    }

    /// The `-mode` value.
    pub fn name(self) -> &'static str {
        self.preset().map_or("manual", Mode::name)
    }
}

/// A secret setting (the key, the admin token): shown as `(redacted)` by `Debug`,
/// so no log line or panic message can carry it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl core::fmt::Debug for Secret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("(redacted)")
    }
}

impl std::ops::Deref for Secret {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<&str> for Secret {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Why the configuration was refused; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// A secret file's contents without one trailing newline (editors add one).
fn read_secret_file(flag: &str, path: &str, warnings: &mut Vec<String>) -> Result<String, ConfigError> {
    // Far larger than any key; a bigger file is the wrong file.
    const LARGEST: u64 = 64 * 1024;
    let file = std::fs::File::open(path).map_err(|e| ConfigError(format!("{flag} {path}: cannot open it: {e}")))?;
    let meta = file.metadata().map_err(|e| ConfigError(format!("{flag} {path}: {e}")))?;
    if !meta.is_file() || meta.len() > LARGEST {
        return err(format!("{flag} {path}: not a secret file (expected a regular file of at most {LARGEST} bytes)"));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::BufReader::new(file), &mut text)
        .map_err(|e| ConfigError(format!("{flag} {path}: cannot read it as UTF-8 text: {e}")))?;
    let secret = text.strip_suffix('\n').map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
    if secret.is_empty() {
        return err(format!("{flag} {path}: the file is empty; write the secret into it"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warnings.push(format!("{flag} {path} can be read by other users (mode {mode:03o}); chmod 600 it"));
        }
    }
    Ok(secret.to_string())
}

/// A warning when the `-c` file at `path` holds a secret (`key`, `admin-token`)
/// and other users may read it.
pub fn config_file_exposure(path: &std::path::Path, text: &str) -> Option<String> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).ok()?;
    let secrets: Vec<&str> = object
        .keys()
        .filter(|k| k.eq_ignore_ascii_case("key") || k.eq_ignore_ascii_case("admin-token"))
        .map(String::as_str)
        .collect();
    readable_by_others(path, &secrets)
}

/// A warning when the configuration file at `path` holds `secrets` and other
/// users may read it.
pub fn readable_by_others(path: &std::path::Path, secrets: &[&str]) -> Option<String> {
    if secrets.is_empty() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Some(format!(
                "config file {} holds {} and can be read by other users (mode {mode:03o}); chmod 600 it",
                path.display(),
                secrets.join(" and ")
            ));
        }
    }
    None
}

/// A listener's address given as `host:port`, `:port` (every interface) or `off`
/// (also empty): `None` when off; else the address, or an error naming `flag`
/// and what it takes (`example`).
fn optional_listen_addr(flag: &str, value: &str, example: &str) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    let text = value.trim();
    if text.eq_ignore_ascii_case("off") || text.is_empty() {
        return Ok(None);
    }
    let full = if text.starts_with(':') { format!("[::]{text}") } else { text.to_string() };
    match full.parse() {
        Ok(addr) => Ok(Some(addr)),
        Err(_) => err(format!("{flag} must be {example}, or off (got {text:?})")),
    }
}

/// Whether `host` can stand in a URL as it is: a DNS name, an IPv4 address, or an
/// IPv6 address in brackets.
pub fn is_url_host(host: &str) -> bool {
    let name = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
    let ipv6 = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
    name || ipv6
}

/// A flag: clap id (= JSON key where kcptun has one), aliases, help, default.
struct Flag {
    name: &'static str,
    aliases: &'static [&'static str],
    short: Option<char>,
    json: Option<&'static str>,
    help: &'static str,
    kind: FlagKind,
}

/// What a flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// Text, with its default.
    Text(&'static str),
    /// A number: its range and defaults are in [`number_spec`]'s tables.
    Number,
    /// `true` or `false` (a flag given alone is true).
    Bool,
}

/// The numbers of the process and of a listener's socket, beside the core's
/// numbers of its sessions ([`core_settings::NUMBERS`]): together, the one table
/// of every number kcpgate takes.
pub const GATEWAY_NUMBERS: &[Number] = &[
    Number { name: "sockbuf", min: 0, max: 2_147_483_647, unit: "bytes", server: 4_194_304, client: 4_194_304 },
    Number { name: "dscp", min: 0, max: 63, unit: "", server: 0, client: 0 },
    Number { name: "snmpperiod", min: 0, max: 4_294_967_295, unit: "seconds", server: 60, client: 60 },
    Number { name: "drain-timeout", min: 0, max: 86_400, unit: "seconds", server: 30, client: 30 },
    Number { name: "max-sessions", min: 0, max: 10_000_000, unit: "sessions", server: 0, client: 0 },
    Number { name: "open-rate", min: 0, max: 1_000_000, unit: "sessions per second", server: 1000, client: 1000 },
    Number {
        name: "open-rate-per-source",
        min: 0,
        max: 1_000_000,
        unit: "sessions per second",
        server: 50,
        client: 50,
    },
    Number { name: "webtransport-per-address", min: 0, max: 1_000_000, unit: "connections", server: 64, client: 64 },
    Number { name: "conn", min: 1, max: 65_535, unit: "sessions", server: 1, client: 1 },
    Number { name: "autoexpire", min: 0, max: 31_536_000, unit: "seconds", server: 0, client: 0 },
    Number { name: "scavengettl", min: 0, max: 31_536_000, unit: "seconds", server: 600, client: 600 },
];

/// The range, unit and defaults of the number `name`: a session's (the core's
/// table, shared with the browser module) or the gateway's own.
pub fn number_spec(name: &str) -> Option<&'static Number> {
    core_settings::number(name).or_else(|| GATEWAY_NUMBERS.iter().find(|n| n.name == name))
}

/// The core's name for a role.
/// The environment variable of a flag: `KCPGATE_` and its name in capitals
/// (`-open-rate` is `KCPGATE_OPEN_RATE`); the key keeps kcptun's `KCPTUN_KEY`.
pub fn env_var(flag: &str) -> String {
    match flag {
        "key" => "KCPTUN_KEY".to_string(),
        _ => format!("KCPGATE_{}", flag.to_ascii_uppercase().replace('-', "_")),
    }
}

const fn flag(name: &'static str, json: Option<&'static str>, kind: FlagKind, help: &'static str) -> Flag {
    Flag { name, aliases: &[], short: None, json, help, kind }
}

const DEFAULT_KEY: &str = "it's a secrect";
/// The placeholders of `.env.example`, refused or warned about like defaults.
const EXAMPLE_KEY: &str = "change-me-to-a-long-random-secret";
const EXAMPLE_ADMIN_TOKEN: &str = "change-me-too";
/// The shortest admin token accepted on an address other hosts can reach.
const MIN_REMOTE_TOKEN: usize = 16;

/// The flags both roles share, in kcptun's order.
const SHARED: &[Flag] = &[
    flag("key", Some("key"), FlagKind::Text(DEFAULT_KEY), "Pre-shared secret between client and server (env KCPTUN_KEY)"),
    flag("key-file", Some("key-file"), FlagKind::Text(""), "Read the key from this file (one trailing newline is dropped) instead of -key, which every local user can see in the process list; keep the file chmod 600 (kcpgate only)"),
    flag("crypt", Some("crypt"), FlagKind::Text("aes"), "Packet encryption: aes, aes-128, aes-192, aes-128-gcm, sm4, twofish, blowfish, cast5, 3des, tea, xtea, salsa20, xor, none, null; unknown names mean aes"),
    flag("mode", Some("mode"), FlagKind::Text("fast"), "KCP profile: normal, fast, fast2, fast3, or manual (then -nodelay, -interval, -resend, -nc apply)"),
    flag("QPP", Some("qpp"), FlagKind::Bool, "Quantum Permutation Pads on every stream's payload (both ends must agree)"),
    flag("QPPCount", Some("qpp-count"), FlagKind::Number, "Number of QPP pads; a prime is recommended"),
    flag("mtu", Some("mtu"), FlagKind::Number, "Largest UDP payload, headers included; the crypt and FEC headers set its floor"),
    flag("ratelimit", Some("ratelimit"), FlagKind::Number, "Outgoing bytes per second per KCP session; 0 is unlimited"),
    flag("sndwnd", Some("sndwnd"), FlagKind::Number, "KCP send window in segments"),
    flag("rcvwnd", Some("rcvwnd"), FlagKind::Number, "KCP receive window in segments"),
    Flag { aliases: &["ds"], ..flag("datashard", Some("datashard"), FlagKind::Number, "FEC data shards (0 with -parityshard 0 turns FEC off)") },
    Flag { aliases: &["ps"], ..flag("parityshard", Some("parityshard"), FlagKind::Number, "FEC parity shards") },
    flag("dscp", Some("dscp"), FlagKind::Number, "DSCP value for outgoing UDP packets (6 bits)"),
    flag("nocomp", Some("nocomp"), FlagKind::Bool, "Turn off snappy compression (both ends must agree)"),
    flag("acknodelay", Some("acknodelay"), FlagKind::Bool, "Send every ACK at once instead of with the next flush"),
    flag("nodelay", Some("nodelay"), FlagKind::Number, "With -mode manual: 1 turns KCP's nodelay on (RTO grows 1.5× instead of 2×)"),
    flag("interval", Some("interval"), FlagKind::Number, "With -mode manual: KCP's flush interval, ms"),
    flag("resend", Some("resend"), FlagKind::Number, "With -mode manual: resend a segment skipped by this many ACKs (0: off)"),
    flag("nc", Some("nc"), FlagKind::Number, "With -mode manual: 1 turns congestion control off"),
    flag("sockbuf", Some("sockbuf"), FlagKind::Number, "UDP socket send and receive buffer, bytes"),
    flag("smuxver", Some("smuxver"), FlagKind::Number, "smux version, 1 or 2. Debian's kcptun 20210922 defaults to 1, current kcptun to 2. A server given no -smuxver serves both"),
    flag("smuxbuf", Some("smuxbuf"), FlagKind::Number, "smux session receive buffer, bytes"),
    flag("framesize", Some("framesize"), FlagKind::Number, "smux largest frame, bytes"),
    flag("streambuf", Some("streambuf"), FlagKind::Number, "smux v2 per-stream window, bytes"),
    flag("keepalive", Some("keepalive"), FlagKind::Number, "Seconds between smux keep-alives (smux closes a session silent for 30 s)"),
    flag("closewait", Some("closewait"), FlagKind::Number, "Seconds a connection may stay half-open once one direction has ended; then both ends are closed. 0 keeps it open until the other direction ends too"),
    flag("snmplog", Some("snmplog"), FlagKind::Text(""), "Write SNMP counters as CSV to this file; the file name takes Go time layout, e.g. ./snmp-20060102.log"),
    flag("snmpperiod", Some("snmpperiod"), FlagKind::Number, "Seconds between SNMP CSV rows"),
    flag("log", Some("log"), FlagKind::Text(""), "Append the log to this file instead of stderr"),
    flag("quiet", Some("quiet"), FlagKind::Bool, "Do not log each stream's open and close"),
    flag("address-change", Some("address-change"), FlagKind::Bool, "Server: let a session follow its player to a new address (Wi-Fi to mobile data, a NAT that rebinds its port); it moves only on evidence of the session itself, an ACK echoing a recent random timestamp the gateway sent. Off, as kcptun, which keys sessions by address (kcpgate only)"),
    flag("log-format", Some("log-format"), FlagKind::Text("text"), "Log lines as text (coloured only on a terminal, and never with NO_COLOR set) or json, one object per line (kcpgate only)"),
    flag("tcp", Some("tcp"), FlagKind::Bool, "kcptun's fake-TCP transport (not supported by kcpgate)"),
    flag("pprof", Some("pprof"), FlagKind::Bool, "Go profiler endpoint (not applicable to kcpgate; ignored with a warning)"),
    flag("drain-timeout", Some("drain-timeout"), FlagKind::Number, "On SIGTERM or SIGINT, seconds to let open streams finish before exiting (kcpgate only)"),
    flag("admin-token", Some("admin-token"), FlagKind::Text(""), "Bearer token the admin API requires on every /api route (env KCPGATE_ADMIN_TOKEN); required when -admin is not a loopback address (kcpgate only)"),
    flag("admin-token-file", Some("admin-token-file"), FlagKind::Text(""), "Read the admin token from this file (one trailing newline is dropped) instead of -admin-token, which every local user can see in the process list (kcpgate only)"),
    flag("admin-cert", Some("admin-cert"), FlagKind::Text(""), "PEM certificate chain that makes -admin serve HTTPS, for an admin API reached over a network; read again when the file changes (kcpgate only)"),
    flag("admin-key", Some("admin-key"), FlagKind::Text(""), "PEM private key of -admin-cert (kcpgate only)"),
    flag("metrics-auth", Some("metrics-auth"), FlagKind::Bool, "/metrics needs the admin token too (Prometheus: authorization: {credentials_file: ...}); /livez and /readyz stay open (kcpgate only)"),
];

const ADMIN_HELP: &str = "Admin HTTP API, metrics and health (/api/v1, /metrics, /livez, /readyz): address to listen on, or off (kcpgate only)";

const SERVER: &[Flag] = &[
    flag("config", None, FlagKind::Text(""), "kcpgate's TOML configuration: process settings and one or more [[listener]] tables, each with its own address, target, key and session settings (see deploy/kcpgate.example.toml). Flags and KCPGATE_* variables win over it; with several listeners, a flag that sets a listener's setting is refused (kcpgate only)"),
    Flag {
        short: Some('l'),
        ..flag(
            "listen",
            Some("listen"),
            FlagKind::Text(":29900"),
            "UDP address to listen on: host:port or host:minport-maxport",
        )
    },
    Flag {
        short: Some('t'),
        ..flag(
            "target",
            Some("target"),
            FlagKind::Text("127.0.0.1:12948"),
            "Backend to dial for every stream: host:port, or a unix socket path (with a /)",
        )
    },
    flag("admin", Some("admin"), FlagKind::Text("127.0.0.1:8080"), ADMIN_HELP),
    flag("max-sessions", Some("max-sessions"), FlagKind::Number, "Sessions open at most at once; datagrams that would open more are dropped and counted. 0 is unlimited (kcpgate only)"),
    flag("open-rate", Some("open-rate"), FlagKind::Number, "New sessions per second from all sources together, with bursts of 5 seconds' worth; more are dropped and counted (opening_limit). 0 is unlimited (kcpgate only)"),
    flag("open-rate-per-source", Some("open-rate-per-source"), FlagKind::Number, "New sessions per second from one IP address, with bursts of 10 seconds' worth; more are dropped and counted (source_limit). 0 is unlimited (kcpgate only)"),
    flag("webtransport", Some("webtransport"), FlagKind::Text("off"), "WebTransport listener for browsers: UDP host:port (e.g. :4433), or off. Each WebTransport session carries one KCP session in its datagrams, proxied like a UDP one (kcpgate only)"),
    flag("webtransport-cert", Some("webtransport-cert"), FlagKind::Text(""), "PEM certificate chain of the WebTransport listener, read again when the file changes. Without it kcpgate makes a self-signed ECDSA P-256 certificate valid 13 days, replaces it every 12, and serves its SHA-256 hash at /webtransport/certificate on the -public listener for serverCertificateHashes (kcpgate only)"),
    flag("webtransport-key", Some("webtransport-key"), FlagKind::Text(""), "PEM private key of -webtransport-cert (kcpgate only)"),
    flag("webtransport-origin", Some("webtransport-origin"), FlagKind::Text(""), "Comma-separated page origins allowed to open WebTransport sessions and to read the -public listener (CORS), e.g. https://game.example; empty allows every origin (kcpgate only)"),
    flag("webtransport-per-address", Some("webtransport-per-address"), FlagKind::Number, "WebTransport connections at once from one IPv4 address or IPv6 /64 (players behind one NAT share it); more are refused before their handshake and counted (reason=\"address\"). 0 is unlimited (kcpgate only)"),
    flag("webtransport-advertise", Some("webtransport-advertise"), FlagKind::Text(""), "Where pages are told to connect for WebTransport, host:port or :port, when that differs from -webtransport (a published container port, a DNS name, a balancer); empty: -webtransport's port on the host the page fetched /webtransport/certificate from (kcpgate only)"),
    flag("public", Some("public"), FlagKind::Text("off"), "HTTP listener for game pages, apart from the admin API: the WebTransport address and certificate hashes (/webtransport/certificate), the browser module (/module/) and the demo page (/demo/), answering CORS for -webtransport-origin. TCP host:port (e.g. :8090), or off (kcpgate only)"),
    flag("public-cert", Some("public-cert"), FlagKind::Text(""), "PEM certificate chain that makes -public serve HTTPS, so that an https game page can fetch from it; read again when the file changes (kcpgate only)"),
    flag("public-key", Some("public-key"), FlagKind::Text(""), "PEM private key of -public-cert (kcpgate only)"),
];

const CLIENT: &[Flag] = &[
    Flag {
        short: Some('l'),
        ..flag(
            "localaddr",
            Some("localaddr"),
            FlagKind::Text(":12948"),
            "Where to accept local connections: TCP host:port (an empty host: every interface), or a unix socket path (with a /)",
        )
    },
    Flag {
        short: Some('r'),
        ..flag(
            "remoteaddr",
            Some("remoteaddr"),
            FlagKind::Text("vps:29900"),
            "kcptun server: host:port or host:minport-maxport",
        )
    },
    flag("conn", Some("conn"), FlagKind::Number, "Number of KCP sessions to spread connections over"),
    flag(
        "autoexpire",
        Some("autoexpire"),
        FlagKind::Number,
        "Seconds after which a session takes no new connections; 0 is never",
    ),
    flag(
        "scavengettl",
        Some("scavengettl"),
        FlagKind::Number,
        "Seconds an expired session may live on before it is closed",
    ),
    flag("admin", Some("admin"), FlagKind::Text("off"), ADMIN_HELP),
];

fn role_flags(role: Role) -> impl Iterator<Item = &'static Flag> {
    let own = match role {
        Role::Server => SERVER,
        Role::Client => CLIENT,
    };
    own.iter().chain(SHARED.iter())
}

fn arg(f: &Flag, role: Role) -> Arg {
    let help = match f.kind {
        FlagKind::Number => {
            let spec = number_spec(f.name).expect("every numeric flag is in a table (a test checks)");
            let unit = if spec.unit.is_empty() { String::new() } else { format!(" {}", spec.unit) };
            format!("{} [range: {} to {}{unit}]", f.help, spec.min, spec.max)
        }
        _ => f.help.to_string(),
    };
    let mut a = Arg::new(f.name).long(f.name).help(help).env(env_var(f.name));
    if let Some(s) = f.short {
        a = a.short(s);
    }
    for alias in f.aliases {
        a = a.visible_alias(*alias);
    }
    match f.kind {
        FlagKind::Bool => a.action(ArgAction::SetTrue),
        FlagKind::Text(d) => {
            // As Go's flag package: the word after a text flag is its value, dash or not.
            let a = a.value_name("VALUE").default_value(d).allow_hyphen_values(true);
            match f.name {
                "key" => a.hide_env_values(true),
                "admin-token" => a.hide_env_values(true).hide_default_value(true),
                _ => a,
            }
        }
        FlagKind::Number => {
            let d = number_spec(f.name).expect("every numeric flag is in a table (a test checks)").default_for(role);
            a.value_name("N")
                .value_parser(clap::value_parser!(i64))
                .allow_negative_numbers(true)
                .default_value(d.to_string())
                // A server given no -smuxver serves both versions: 2 is no default there.
                .hide_default_value(role == Role::Server && f.name == "smuxver")
        }
    }
}

/// The flag `name` of `role` (its own name, as `--help` spells it) and what it
/// takes; `None` for no such flag.
pub fn flag_kind(role: Role, name: &str) -> Option<(&'static str, FlagKind)> {
    role_flags(role).find(|f| f.name == name).map(|f| (f.name, f.kind))
}

/// The flag names of `role` closest in spelling to `name`, for "did you mean".
pub fn closest_flag(role: Role, name: &str) -> Option<&'static str> {
    closest(name, role_flags(role).map(|f| f.name))
}

/// The word of `known` closest in spelling to `name`, if close enough to be a typo.
fn closest(name: &str, known: impl Iterator<Item = &'static str>) -> Option<&'static str> {
    known
        .map(|k| (edit_distance(&name.to_ascii_lowercase(), &k.to_ascii_lowercase()), k))
        .min()
        .filter(|(d, k)| *d <= k.len().max(name.len()) / 2)
        .map(|(_, k)| k)
}

/// Every numeric flag of `role` with its key in kcptun's JSON: the numbers a
/// user of that role can set.
pub fn numeric_flags(role: Role) -> Vec<(&'static str, &'static str)> {
    role_flags(role)
        .filter(|f| matches!(f.kind, FlagKind::Number))
        .map(|f| (f.name, f.json.unwrap_or(f.name)))
        .collect()
}

/// The clap command for one role.
pub fn command(role: Role) -> Command {
    let (name, about) = match role {
        Role::Server => {
            ("server", "Accept KCP sessions from kcptun (or kcpgate) clients and dial a backend for every stream")
        }
        Role::Client => {
            ("client", "Accept local TCP connections and carry each as a stream to a kcptun (or kcpgate) server")
        }
    };
    // A flag given twice takes its last value, as Go's flag package does.
    let mut cmd = Command::new(name).about(about).args_override_self(true).arg(
        Arg::new("c")
            .short('c')
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("JSON configuration file (kcptun's format); its keys override the flags"),
    );
    for f in role_flags(role) {
        cmd = cmd.arg(arg(f, role));
    }
    cmd
}

/// The role's `--help`, with long flags spelled as kcptun spells them (`-key`).
pub fn help_text(role: Role) -> String {
    let mut text = command(role).render_long_help().to_string();
    let mut names: Vec<&str> =
        role_flags(role).flat_map(|f| std::iter::once(f.name).chain(f.aliases.iter().copied())).collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        text = text.replace(&format!("--{name}"), &format!("-{name}"));
    }
    text
}

/// Rewrites urfave/cli-style single-dash long flags (`-key`, `-crypt=aes`, `-ds`) to
/// clap's `--key`; everything else passes unchanged. A single-dash word that is no
/// flag of `role` (`-sndwindow`) is an error naming it, with the closest flag,
/// rather than clap's reading of it as short flags (`-s`).
pub fn normalize_args(role: Role, args: impl IntoIterator<Item = String>) -> Result<Vec<String>, clap::Error> {
    let find = |name: &str| role_flags(role).find(|f| f.name == name || f.aliases.contains(&name));
    let mut out = Vec::new();
    // The previous word was a flag that takes the next word as its value.
    let mut value_next = false;
    for a in args {
        let takes_value = std::mem::take(&mut value_next);
        let body = a.strip_prefix('-').filter(|b| !b.starts_with('-') && !takes_value);
        let Some(body) = body else {
            if let Some(f) = a.strip_prefix("--").and_then(&find) {
                value_next = !matches!(f.kind, FlagKind::Bool);
            }
            out.push(a);
            continue;
        };
        let (name, inline_value) = body.split_once('=').map_or((body, false), |(n, _)| (n, true));
        match find(name) {
            Some(f) if body.len() > 1 => {
                value_next = !inline_value && !matches!(f.kind, FlagKind::Bool);
                out.push(format!("-{a}"));
            }
            None if name.len() > 1 && name.starts_with(|c: char| c.is_ascii_alphabetic()) => {
                return Err(unknown_flag(role, name));
            }
            _ => {
                // `-c FILE` and kcptun's one-letter flags take a value too.
                value_next = !inline_value && name.len() == 1 && name != "h" && name != "V";
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// An unknown flag, with the known one closest in spelling when there is one.
fn unknown_flag(role: Role, name: &str) -> clap::Error {
    let names = role_flags(role).flat_map(|f| std::iter::once(f.name).chain(f.aliases.iter().copied()));
    let hint = closest(name, names).map_or(String::new(), |known| format!("; did you mean -{known}?"));
    clap::Error::raw(
        clap::error::ErrorKind::UnknownArgument,
        format!("kcpgate {0} has no flag -{name}{hint} (kcpgate {0} --help lists every flag)\n", role.name()),
    )
}

/// Levenshtein distance between two short ASCII words.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb)).min(row[j] + 1).min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

impl Settings {
    /// Parses a command line of `role` (without the program and subcommand names).
    pub fn parse(role: Role, args: impl IntoIterator<Item = String>) -> Result<Settings, clap::Error> {
        let argv = std::iter::once(format!("kcpgate {}", role.name())).chain(normalize_args(role, args)?);
        let m = command(role).try_get_matches_from(argv)?;
        Settings::from_matches(role, &m)
            .map_err(|e| clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n")))
    }

    /// Settings from parsed flags and environment variables: every number is
    /// checked against its table and stored in its own type here, once.
    fn from_matches(role: Role, m: &ArgMatches) -> Result<Settings, ConfigError> {
        let text = |n: &str| m.get_one::<String>(n).cloned().unwrap_or_default();
        // A setting only one role has.
        let text_or_empty = |n: &str| m.try_get_one::<String>(n).ok().flatten().cloned().unwrap_or_default();
        let flag = |n: &str| m.get_flag(n);
        let given = |n: &str| matches!(m.value_source(n), Some(ValueSource::CommandLine | ValueSource::EnvVariable));
        let (listen, target) = match role {
            Role::Server => (text("listen"), text("target")),
            Role::Client => (text("localaddr"), text("remoteaddr")),
        };
        let mut session = SessionSettings::kcptun(role);
        session.acknodelay = flag("acknodelay");
        session.nocomp = flag("nocomp");
        session.qpp = flag("QPP");
        session.smux_detect = role == Role::Server && !given("smuxver");
        let mut settings = Settings {
            role,
            listen,
            listen_udp: role == Role::Server,
            target,
            key: Secret(text("key")),
            key_file: text("key-file"),
            session,
            unknown_crypt: None,
            unknown_mode: None,
            max_sessions: 0,
            dscp: 0,
            sockbuf: 0,
            snmplog: text("snmplog"),
            snmpperiod: 0,
            log: text("log"),
            log_format: text("log-format"),
            quiet: flag("quiet"),
            tcp: flag("tcp"),
            pprof: flag("pprof"),
            drain_timeout: 0,
            open_rate: 0,
            open_rate_per_source: 0,
            conn: 1,
            autoexpire: 0,
            scavengettl: 600,
            admin: text("admin"),
            admin_explicit: given("admin"),
            admin_token: Secret(text("admin-token")),
            admin_token_file: text("admin-token-file"),
            admin_cert: text("admin-cert"),
            admin_key: text("admin-key"),
            metrics_auth: flag("metrics-auth"),
            address_change: flag("address-change"),
            webtransport: text_or_empty("webtransport"),
            webtransport_cert: text_or_empty("webtransport-cert"),
            webtransport_key: text_or_empty("webtransport-key"),
            webtransport_origin: text_or_empty("webtransport-origin"),
            webtransport_per_address: 0,
            webtransport_advertise: text_or_empty("webtransport-advertise"),
            public: text_or_empty("public"),
            public_cert: text_or_empty("public-cert"),
            public_key: text_or_empty("public-key"),
            kcptun_json: m.get_one::<PathBuf>("c").cloned(),
            config: text_or_empty("config"),
            given: role_flags(role).map(|f| f.name).filter(|n| given(n)).collect(),
        };
        settings.set_crypt(&text("crypt"));
        settings.set_mode(&text("mode"));
        for f in role_flags(role).filter(|f| matches!(f.kind, FlagKind::Number)) {
            let value = m.get_one::<i64>(f.name).copied().unwrap_or_default();
            settings.set_number(f.name, value).map_err(|e| match m.value_source(f.name) {
                Some(ValueSource::EnvVariable) => ConfigError(format!("{}={value}: {e}", env_var(f.name))),
                _ => ConfigError(format!("-{e}")),
            })?;
        }
        Ok(settings)
    }

    /// Applies a kcptun JSON configuration over the flags: only keys present change
    /// anything, keys match case-insensitively, and a value of the wrong type is an
    /// error (as Go's decoder does). Unknown keys change nothing (kcptun ignores
    /// them); each is returned as a warning, since it is usually a typo.
    pub fn apply_json(&mut self, text: &str) -> Result<Vec<String>, ConfigError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ConfigError(format!("config file is not valid JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| ConfigError("config file must hold a JSON object".into()))?;
        let mut warnings = Vec::new();
        for (key, v) in obj {
            let Some(f) = role_flags(self.role).find(|f| f.json.is_some_and(|j| j.eq_ignore_ascii_case(key))) else {
                warnings.push(format!(
                    "config file: unknown key \"{key}\" ignored (a {} has no such setting)",
                    self.role.name()
                ));
                continue;
            };
            let name = f.name;
            let mismatch = |want: &str| ConfigError(format!("config file: \"{key}\" must be {want}, found {v}"));
            match f.kind {
                FlagKind::Bool => {
                    let b = v.as_bool().ok_or_else(|| mismatch("true or false"))?;
                    self.set_bool(name, b)?;
                }
                FlagKind::Text(_) => {
                    let s = v.as_str().ok_or_else(|| mismatch("a string"))?;
                    self.set_text(name, s)?;
                }
                FlagKind::Number => {
                    let n = v.as_i64().ok_or_else(|| mismatch("an integer"))?;
                    self.set_number(name, n).map_err(|e| ConfigError(format!("config file: {e}")))?;
                    if name == "smuxver" {
                        self.session.smux_detect = false;
                    }
                }
            }
            if name == "admin" {
                self.admin_explicit = true;
            }
        }
        Ok(warnings)
    }

    /// Sets the text setting `name`.
    pub(crate) fn set_text(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let slot = match name {
            "crypt" => {
                self.set_crypt(value);
                return Ok(());
            }
            "mode" => {
                self.set_mode(value);
                return Ok(());
            }
            "listen" | "localaddr" => &mut self.listen,
            "target" | "remoteaddr" => &mut self.target,
            "key" => &mut self.key.0,
            "key-file" => &mut self.key_file,
            "snmplog" => &mut self.snmplog,
            "log" => &mut self.log,
            "log-format" => &mut self.log_format,
            "admin" => &mut self.admin,
            "admin-token" => &mut self.admin_token.0,
            "admin-token-file" => &mut self.admin_token_file,
            "admin-cert" => &mut self.admin_cert,
            "admin-key" => &mut self.admin_key,
            "webtransport" => &mut self.webtransport,
            "webtransport-cert" => &mut self.webtransport_cert,
            "webtransport-key" => &mut self.webtransport_key,
            "webtransport-origin" => &mut self.webtransport_origin,
            "webtransport-advertise" => &mut self.webtransport_advertise,
            "public" => &mut self.public,
            "public-cert" => &mut self.public_cert,
            "public-key" => &mut self.public_key,
            other => return err(format!("{other} is no text setting")),
        };
        *slot = value.to_string();
        Ok(())
    }

    fn set_crypt(&mut self, name: &str) {
        self.session.crypt = Method::from_name_or_aes(name);
        self.unknown_crypt = Method::from_name(name).is_none().then(|| name.to_string());
    }

    fn set_mode(&mut self, name: &str) {
        self.session.mode = Mode::from_name(name);
        let unknown = self.session.mode.is_none() && name != "manual";
        self.unknown_mode = unknown.then(|| name.to_string());
    }

    /// Sets the boolean setting `name`.
    pub(crate) fn set_bool(&mut self, name: &str, value: bool) -> Result<(), ConfigError> {
        let slot = match name {
            "QPP" => &mut self.session.qpp,
            "nocomp" => &mut self.session.nocomp,
            "acknodelay" => &mut self.session.acknodelay,
            "quiet" => &mut self.quiet,
            "metrics-auth" => &mut self.metrics_auth,
            "address-change" => &mut self.address_change,
            "tcp" => &mut self.tcp,
            "pprof" => &mut self.pprof,
            other => return err(format!("{other} is no boolean setting")),
        };
        *slot = value;
        Ok(())
    }

    /// Sets the number `name` when its table allows `value`; the message of a
    /// refusal is the table's (`sndwnd must be between 1 and 65535 segments (got 0)`),
    /// to which each source adds where the value came from.
    pub fn set_number(&mut self, name: &str, value: i64) -> Result<(), ConfigError> {
        if core_settings::number(name).is_some() {
            return self.session.set_number(name, value).map_err(|e| ConfigError(e.to_string()));
        }
        let spec = number_spec(name).ok_or_else(|| ConfigError(format!("{name} is no numeric setting")))?;
        let v = spec.check(value).map_err(|e| ConfigError(e.to_string()))?;
        // Within the table's range, which lies within each field's type (a test checks).
        match name {
            "sockbuf" => self.sockbuf = v as u32,
            "dscp" => self.dscp = v as u8,
            "snmpperiod" => self.snmpperiod = v as u32,
            "drain-timeout" => self.drain_timeout = v as u64,
            "max-sessions" => self.max_sessions = v as u64,
            "open-rate" => self.open_rate = v as u32,
            "open-rate-per-source" => self.open_rate_per_source = v as u32,
            "webtransport-per-address" => self.webtransport_per_address = v as u32,
            "conn" => self.conn = v as u32,
            "autoexpire" => self.autoexpire = v as u64,
            "scavengettl" => self.scavengettl = v as u64,
            other => return err(format!("{other} is no numeric setting")),
        }
        Ok(())
    }

    /// The cipher; unknown names mean aes, as in kcptun.
    pub fn method(&self) -> Method {
        self.session.crypt
    }

    /// The WebTransport listener's address; `None` when it is off. An empty host
    /// means every interface.
    pub fn webtransport_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        optional_listen_addr(
            "-webtransport",
            &self.webtransport,
            "a UDP address such as :4433, 0.0.0.0:4433 or [::1]:4433",
        )
    }

    /// The public listener's address; `None` when it is off. An empty host means
    /// every interface.
    pub fn public_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        optional_listen_addr("-public", &self.public, "a TCP address such as :8090, 0.0.0.0:8090 or 127.0.0.1:8090")
    }

    /// `-webtransport-advertise` as (host, port); an empty host means the host
    /// the page asked. `None` when not set.
    pub fn webtransport_advertised(&self) -> Result<Option<(String, u16)>, ConfigError> {
        let text = self.webtransport_advertise.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let bad = || {
            err(format!(
                "-webtransport-advertise must be host:port or :port, such as game.example:4433, [2001:db8::1]:4433 \
                 or :14433 (got {text:?})"
            ))
        };
        let Some((host, port)) = text.rsplit_once(':') else { return bad() };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return bad(),
        };
        if !host.is_empty() && !is_url_host(host) {
            return bad();
        }
        Ok(Some((host.to_string(), port)))
    }

    /// The origins allowed to open WebTransport sessions; empty allows any.
    pub fn webtransport_origins(&self) -> Result<Vec<String>, ConfigError> {
        let origins: Vec<String> =
            self.webtransport_origin.split(',').map(str::trim).filter(|o| !o.is_empty()).map(str::to_string).collect();
        for o in &origins {
            let (scheme, host) = o.split_once("://").unwrap_or(("", ""));
            if !matches!(scheme, "http" | "https") || host.is_empty() || host.contains('/') {
                return err(format!(
                    "-webtransport-origin takes origins such as https://game.example or http://localhost:5173, \
                     comma-separated (got {o:?})"
                ));
            }
        }
        Ok(origins)
    }

    /// The admin listener's address; `None` when it is off. Refuses an address other
    /// hosts can reach unless a token guards the API.
    pub fn admin_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        if self.admin.eq_ignore_ascii_case("off") || self.admin.is_empty() {
            return Ok(None);
        }
        let addr: std::net::SocketAddr = self.admin.parse().map_err(|_| {
            ConfigError(format!(
                "-admin must be an IP address and port such as 127.0.0.1:8080 or [::1]:8080, or off (got {:?})",
                self.admin
            ))
        })?;
        if !addr.ip().is_loopback() && self.admin_token.is_empty() {
            return err(format!(
                "-admin {addr} can be reached from other hosts, so the API needs a token: set -admin-token or \
                 KCPGATE_ADMIN_TOKEN, or listen on 127.0.0.1"
            ));
        }
        if !addr.ip().is_loopback() && self.admin_token.0 == EXAMPLE_ADMIN_TOKEN {
            return err(format!(
                "-admin {addr} can be reached from other hosts and its token is the example's placeholder: make one \
                 with head -c 24 /dev/urandom | base64"
            ));
        }
        if !addr.ip().is_loopback() && self.admin_token.0.len() < MIN_REMOTE_TOKEN {
            return err(format!(
                "-admin {addr} can be reached from other hosts, so its token must be at least {MIN_REMOTE_TOKEN} \
                 bytes (got {}): make one with head -c 24 /dev/urandom | base64",
                self.admin_token.0.len()
            ));
        }
        Ok(Some(addr))
    }

    /// The listen and target addresses are host:port (where a range is allowed,
    /// host:min-max): checked here so that a mistake stops the start, not every
    /// stream later.
    fn check_addresses(&self) -> Result<(), ConfigError> {
        let check = |flag: &str, value: &str, range_ok: bool, unix_ok: bool| {
            if unix_ok && crate::conn::is_unix_path(value) {
                return Ok(());
            }
            let mut example = if range_ok { "host:port or host:min-max" } else { "host:port" }.to_string();
            if unix_ok {
                example += ", or a unix socket path (with a /)";
            }
            match split_port_range(value) {
                Ok((_, ports)) if range_ok || ports.start() == ports.end() => Ok(()),
                _ => err(format!("{flag} must be {example}, such as 127.0.0.1:7000 (got {value:?})")),
            }
        };
        match self.role {
            Role::Server => {
                if self.listen_udp {
                    check("-listen", &self.listen, true, false)?;
                }
                check("-target", &self.target, false, true)
            }
            Role::Client => {
                check("-localaddr", &self.listen, false, true)?;
                check("-remoteaddr", &self.target, true, false)
            }
        }
    }

    /// Reads `-key-file` and `-admin-token-file` into the key and the token, so that
    /// neither need appear on the command line. A secret given both ways is refused
    /// (which one wins would be a guess); a file others may read is a warning.
    pub fn read_secret_files(&mut self) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        if !self.key_file.is_empty() {
            if self.key.0 != DEFAULT_KEY {
                return err("the key is given twice: use -key-file, or -key (or KCPTUN_KEY), not both");
            }
            self.key = Secret(read_secret_file("-key-file", &self.key_file, &mut warnings)?);
        }
        if !self.admin_token_file.is_empty() {
            if !self.admin_token.is_empty() {
                return err(
                    "the admin token is given twice: use -admin-token-file, or -admin-token (or KCPGATE_ADMIN_TOKEN), not both",
                );
            }
            self.admin_token = Secret(read_secret_file("-admin-token-file", &self.admin_token_file, &mut warnings)?);
        }
        Ok(warnings)
    }

    /// kcptun's startup checks, with messages that say what to change. Returns
    /// warnings for settings kcptun also only warns about.
    pub fn validate(&self) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        if self.tcp {
            return err("-tcp (kcptun's fake-TCP transport) is not supported by kcpgate; drop the flag on both ends and use UDP");
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return err(format!("-log-format must be text or json (got {:?})", self.log_format));
        }
        if self.pprof {
            warnings.push("-pprof is a Go profiler option and has no effect in kcpgate".to_string());
        }
        let session = &self.session;
        match session.validate() {
            Ok(()) => {}
            Err(SettingsError::MtuTooSmall { mtu, smallest }) => {
                let fec = if session.fec() { "with FEC" } else { "without FEC" };
                return err(format!(
                    "-mtu must be between {smallest} and 1500 with -crypt {} {fec} (got {mtu}): the crypto and FEC \
                     headers and a KCP segment must fit",
                    session.crypt.name()
                ));
            }
            Err(e @ (SettingsError::QppNoPads(_) | SettingsError::QppWrapsToZero(_))) => return err(e.to_string()),
            Err(e @ SettingsError::TooManyShards { .. }) => return err(format!("-{e}")),
            Err(e) => return err(format!("smux settings: {e}")),
        }
        warnings.extend(session.qpp_warnings(&self.key).iter().map(ToString::to_string));
        if let Some(mode) = &self.unknown_mode {
            warnings.push(format!(
                "unknown -mode {mode:?}: using manual mode (-nodelay, -interval, -resend, -nc), as kcptun does"
            ));
        }
        self.check_addresses()?;
        if let Some(crypt) = &self.unknown_crypt {
            warnings.push(format!("unknown -crypt {crypt:?}: using aes, as kcptun does"));
        }
        self.admin_addr()?;
        let webtransport = self.webtransport_addr()?;
        self.webtransport_origins()?;
        if self.webtransport_cert.is_empty() != self.webtransport_key.is_empty() {
            return err("-webtransport-cert and -webtransport-key go together: give both PEM files, or neither for a self-signed certificate");
        }
        let public = self.public_addr()?;
        self.webtransport_advertised()?;
        if self.public_cert.is_empty() != self.public_key.is_empty() {
            return err("-public-cert and -public-key go together: give both PEM files for HTTPS, or neither for HTTP");
        }
        if !self.public_cert.is_empty() && public.is_none() {
            return err("-public-cert and -public-key need -public ADDR, the listener they are for");
        }
        let self_signed = webtransport.is_some() && self.webtransport_cert.is_empty();
        if self_signed && public.is_none() {
            warnings.push(
                "-webtransport has a self-signed certificate, which browsers accept only by its hash: set -public ADDR \
                 (e.g. -public :8090) so that game pages can fetch it from /webtransport/certificate"
                    .to_string(),
            );
        }
        if self.admin_cert.is_empty() != self.admin_key.is_empty() {
            return err("-admin-cert and -admin-key go together: give both PEM files for HTTPS, or neither for HTTP");
        }
        if !self.admin_cert.is_empty() && self.admin_addr()?.is_none() {
            return err("-admin-cert and -admin-key need -admin ADDR, the listener they are for");
        }
        if self.metrics_auth && self.admin_token.is_empty() {
            return err(
                "-metrics-auth needs an admin token (-admin-token-file or KCPGATE_ADMIN_TOKEN) for /metrics to ask for",
            );
        }
        if self.key.0 == DEFAULT_KEY || self.key.0 == EXAMPLE_KEY {
            warnings.push(
                "the key is kcptun's default or the example's, which anyone can look up: every peer that knows it can \
                 open sessions; set your own with -key-file"
                    .to_string(),
            );
        }
        if self.session.crypt == Method::None {
            warnings.push(
                "-crypt none: datagrams are neither encrypted nor checked, so anyone on the path reads them and \
                 anyone who can reach the port can forge them; use -crypt aes"
                    .to_string(),
            );
        }
        if let Some(addr) = public.filter(|a| !a.ip().is_loopback()) {
            if self.public_cert.is_empty() && self_signed {
                warnings.push(format!(
                    "-public {addr} serves the WebTransport certificate hashes over plain HTTP: someone on the path \
                     can swap them for their own and read the sessions; give it -public-cert/-public-key, or put it \
                     behind your HTTPS proxy"
                ));
            }
        }
        if self.role == Role::Client && self.autoexpire != 0 && self.scavengettl > self.autoexpire {
            warnings.push("-scavengettl is longer than -autoexpire: expired sessions will linger".to_string());
        }
        Ok(warnings)
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
