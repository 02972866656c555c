//! The configuration parsers: command lines (NUL-separated arguments) and JSON
//! files, for the server and the client, then the startup checks. Every input is
//! taken or refused with an error; none panics.
#![no_main]

use kcpgate::config::{Role, Settings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [pick, rest @ ..] = data else { return };
    let role = if pick & 1 == 0 { Role::Server } else { Role::Client };
    let text = String::from_utf8_lossy(rest);
    let (line, json) = text.split_once('\u{1}').unwrap_or((&text, ""));
    let args = line.split('\0').filter(|a| !a.is_empty()).map(str::to_string);
    let Ok(mut settings) = Settings::parse(role, args) else { return };
    if !json.is_empty() && settings.apply_json(json).is_err() {
        return;
    }
    let _ = settings.validate();
});
