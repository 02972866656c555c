//! kcptun's SNMP CSV log (`-snmplog`) and the `SIGUSR1` dump (docs/protocol.md §8.7).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kcpgate_core::Snmp;
use tracing::{info, warn};

use crate::control::Registry;
use crate::tunnel::StreamCounters;

/// Formats the file-name part of `path` with Go's time layout (the numeric fields:
/// 2006, 06, 01, 1, 02, 2, 15, 03, 3, 04, 4, 05, 5), in UTC.
pub fn format_path(path: &str, unix: u64) -> String {
    let (dir, file) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    let (y, mo, d) = civil_from_days((unix / 86_400) as i64);
    let secs = unix % 86_400;
    let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let h12 = if h % 12 == 0 { 12 } else { h % 12 };
    let tokens: [(&str, String); 13] = [
        ("2006", format!("{y:04}")),
        ("06", format!("{:02}", y % 100)),
        ("01", format!("{mo:02}")),
        ("02", format!("{d:02}")),
        ("15", format!("{h:02}")),
        ("03", format!("{h12:02}")),
        ("04", format!("{mi:02}")),
        ("05", format!("{s:02}")),
        ("1", mo.to_string()),
        ("2", d.to_string()),
        ("3", h12.to_string()),
        ("4", mi.to_string()),
        ("5", s.to_string()),
    ];
    let mut out = String::from(dir);
    let mut rest = file;
    'scan: while !rest.is_empty() {
        for (token, value) in &tokens {
            if let Some(r) = rest.strip_prefix(token) {
                out.push_str(value);
                rest = r;
                continue 'scan;
            }
        }
        let c = rest.chars().next().expect("non-empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (era * 400 + yoe + i64::from(m <= 2), m, d)
}

/// Appends one CSV row (and the header, into an empty file) for `snmp` at `unix`.
pub fn write_row(path: &Path, unix: u64, snmp: &Snmp) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let mut text = String::new();
    if f.metadata()?.len() == 0 {
        text.push_str("Unix");
        for c in Snmp::csv_header() {
            text.push(',');
            text.push_str(c);
        }
        text.push('\n');
    }
    text.push_str(&unix.to_string());
    for v in snmp.csv_values() {
        text.push(',');
        text.push_str(&v.to_string());
    }
    text.push('\n');
    f.write_all(text.as_bytes())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Writes a CSV row every `period` seconds; stops for good if the file cannot be
/// written, as kcptun does.
pub async fn csv_logger(registry: Arc<Registry>, path: String, period: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(period.max(1)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = unix_now();
        let file = format_path(&path, now);
        if let Err(e) = write_row(Path::new(&file), now, &registry.counters().await) {
            warn!("cannot write the SNMP log {file}: {e}; SNMP logging stops");
            return;
        }
    }
}

/// Logs `KCP SNMP:&{…}` on every SIGUSR1, as kcptun does, then kcpgate's stream
/// counters on a line of their own.
pub async fn dump_on_sigusr1(registry: Arc<Registry>, streams: Arc<StreamCounters>) {
    let Ok(mut usr1) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) else { return };
    while usr1.recv().await.is_some() {
        info!("KCP SNMP:{}", registry.counters().await);
        info!("{streams}");
    }
}
