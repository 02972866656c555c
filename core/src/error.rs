//! Why settings are refused: one type for every layer's configuration, each
//! variant saying what to change.

/// Why a configuration cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SettingsError {
    /// A number outside its setting's range ([`crate::settings::NUMBERS`]).
    OutOfRange {
        /// The setting, as kcptun names it.
        setting: &'static str,
        /// The value given.
        value: i64,
        /// The smallest value allowed.
        min: i64,
        /// The largest value allowed.
        max: i64,
        /// What it counts, or empty.
        unit: &'static str,
    },
    /// No setting of that name.
    UnknownSetting,
    /// FEC data and parity shards over 255 in all.
    TooManyShards {
        /// Data shards given.
        data: u8,
        /// Parity shards given.
        parity: u8,
    },
    /// The MTU leaves no room for a KCP segment once the crypto and FEC headers are
    /// taken off.
    MtuTooSmall {
        /// The MTU given.
        mtu: usize,
        /// The smallest that works with this crypto and FEC.
        smallest: usize,
    },
    /// smux: the keep-alive timeout is shorter than its interval.
    KeepAliveTimeoutBelowInterval,
    /// smux: the frame size is 0 or over 65535.
    MaxFrameSize(usize),
    /// smux: the session buffer is 0 or over 2³¹ − 1.
    MaxReceiveBuffer(usize),
    /// smux: the stream buffer is 0 or over the session buffer.
    MaxStreamBuffer(usize),
    /// QPP: the pad count must be positive.
    QppNoPads(i64),
    /// QPP: the count is used as a u16, and this one wraps to 0 pads.
    QppWrapsToZero(i64),
}

impl core::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SettingsError::OutOfRange { setting, value, min, max, unit } => {
                let unit = if unit.is_empty() { String::new() } else { format!(" {unit}") };
                write!(f, "{setting} must be between {min} and {max}{unit} (got {value})")
            }
            SettingsError::UnknownSetting => f.write_str("no such setting"),
            SettingsError::TooManyShards { data, parity } => {
                write!(f, "datashard and parityshard must add up to at most 255 (got {data}/{parity})")
            }
            SettingsError::MtuTooSmall { mtu, smallest } => write!(
                f,
                "MTU {mtu} is too small: the crypto and FEC headers and a KCP segment need at least {smallest}"
            ),
            SettingsError::KeepAliveTimeoutBelowInterval => {
                f.write_str("smux keep-alive timeout must not be shorter than the keep-alive interval")
            }
            SettingsError::MaxFrameSize(n) => write!(f, "smux frame size {n} is outside 1..=65535"),
            SettingsError::MaxReceiveBuffer(n) => write!(f, "smux receive buffer {n} is outside 1..=2147483647"),
            SettingsError::MaxStreamBuffer(n) => {
                write!(f, "smux stream buffer {n} must be positive and no larger than the session buffer")
            }
            SettingsError::QppNoPads(n) => write!(f, "-QPPCount must be greater than 0 when -QPP is on (got {n})"),
            SettingsError::QppWrapsToZero(n) => {
                write!(f, "-QPPCount {n} is taken modulo 65536 and would give 0 pads; pick a smaller prime such as 61")
            }
        }
    }
}

impl std::error::Error for SettingsError {}
