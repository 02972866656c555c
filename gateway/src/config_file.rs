//! `kcpgate server -config FILE`: kcpgate's TOML configuration. Process settings
//! at the top, then one `[[listener]]` table per listener, each with its own
//! address, target, key and session settings. Keys are the flags' names, and every
//! value is checked as its flag is (one table of ranges), so a refusal says the
//! same words, after the file, line and key.
//!
//! Precedence: the file, then `KCPGATE_*` variables, then flags. With several
//! listeners a flag cannot say which listener it means, so one that sets a
//! listener's setting is refused.

use std::collections::BTreeSet;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::config::{closest_flag, env_var, flag_kind, ConfigError, FlagKind, Role, Secret, Settings};

/// The settings of one listener; every other setting is the process's.
pub const LISTENER_KEYS: &[&str] = &[
    "listen",
    "target",
    "key",
    "key-file",
    "crypt",
    "mode",
    "nodelay",
    "interval",
    "resend",
    "nc",
    "sndwnd",
    "rcvwnd",
    "mtu",
    "datashard",
    "parityshard",
    "acknodelay",
    "nocomp",
    "QPP",
    "QPPCount",
    "ratelimit",
    "smuxver",
    "smuxbuf",
    "framesize",
    "streambuf",
    "keepalive",
    "closewait",
    "sockbuf",
    "dscp",
    "max-sessions",
    "address-change",
];

/// Keys only a listener table has: its name, its transport (`udp`, the default,
/// or `webtransport`), and the environment variable its key is read from.
const LISTENER_ONLY: &[&str] = &["name", "transport", "key-env"];

/// One listener of the file: its name (for messages and the API) and its
/// settings, the process's included.
#[derive(Debug, Clone)]
pub struct ListenerTable {
    /// Its `name`, else `listener N`.
    pub name: String,
    /// Its settings, the process's included.
    pub settings: Settings,
}

/// What a file gives.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Every listener, in the file's order.
    pub listeners: Vec<ListenerTable>,
    /// What the file says that works but should change.
    pub warnings: Vec<String>,
    /// Secrets written in the file itself (`key`, `admin-token`).
    pub inline_secrets: BTreeSet<&'static str>,
    /// What the file was read over (defaults, variables and flags): a reload
    /// reads the new file over it again.
    pub base: Settings,
}

/// The file's listeners, with `base` (defaults, variables and flags) under the
/// file's values as the precedence says, and warnings. `origin` names the file
/// in messages.
pub fn parse(origin: &str, text: &str, base: &Settings) -> Result<Loaded, ConfigError> {
    let at = |span: std::ops::Range<usize>| {
        format!("{origin}:{}", text[..span.start.min(text.len())].matches('\n').count() + 1)
    };
    // The parser's message only, at its line: its own report quotes the line,
    // which may hold a key.
    let table = DeTable::parse(text).map_err(|e| {
        let place = e.span().map_or_else(|| origin.to_string(), &at);
        ConfigError(format!("{place}: not valid TOML: {}", e.message().trim_end()))
    })?;
    let mut process = base.clone();
    let mut tables = Vec::new();
    let mut inline_secrets = BTreeSet::new();
    for (key, value) in table.get_ref() {
        let name = key.get_ref().as_ref();
        let place = at(key.span());
        if name == "listener" {
            match value.get_ref() {
                DeValue::Array(items) => {
                    for item in items.iter() {
                        match item.get_ref() {
                            DeValue::Table(t) => tables.push((at(item.span()), t)),
                            _ => return Err(ConfigError(format!("{place}: listener must be [[listener]] tables"))),
                        }
                    }
                }
                _ => return Err(ConfigError(format!("{place}: listener must be [[listener]] tables"))),
            }
            continue;
        }
        if LISTENER_KEYS.contains(&name) || LISTENER_ONLY.contains(&name) {
            return Err(ConfigError(format!(
                "{place}: {name} is a listener's setting: put it in a [[listener]] table"
            )));
        }
        if name == "config" {
            return Err(ConfigError(format!("{place}: config names this file; it has no place in it")));
        }
        if base.given.contains(name) {
            continue; // a flag or its variable wins
        }
        if name == "admin-token" {
            inline_secrets.insert("admin-token");
        }
        set(&mut process, name, value, &place)?;
    }
    if tables.is_empty() {
        return Err(ConfigError(format!(
            "{origin}: no listener: add a [[listener]] table with listen, target and key-file"
        )));
    }
    if tables.len() > 1 {
        if let Some(flag) = LISTENER_KEYS.iter().find(|k| base.given.contains(**k)) {
            return Err(ConfigError(format!(
                "-{flag} (on the command line or as {}) sets a listener's setting, and {origin} has {} listeners: \
                 set {flag} in the [[listener]] it is for, and drop it from the command line and the environment",
                env_var(flag),
                tables.len()
            )));
        }
    }
    let mut listeners = Vec::new();
    let mut names = BTreeSet::new();
    for (number, (place, table)) in tables.into_iter().enumerate() {
        let mut settings = process.clone();
        let mut name = None;
        let mut webtransport = false;
        let mut has_listen = base.given.contains("listen");
        for (key, value) in table {
            let key_name = key.get_ref().as_ref();
            let place = at(key.span());
            match key_name {
                "name" => name = Some(text_value(key_name, value, &place)?),
                "transport" => {
                    webtransport = match text_value(key_name, value, &place)?.as_str() {
                        "udp" => false,
                        "webtransport" => true,
                        other => {
                            return Err(ConfigError(format!(
                                "{place}: transport must be \"udp\" or \"webtransport\" (got {other:?})"
                            )))
                        }
                    }
                }
                "key-env" => {
                    let var = text_value(key_name, value, &place)?;
                    let key = std::env::var(&var).map_err(|_| {
                        ConfigError(format!(
                            "{place}: key-env names {var}, which is not set: export it, or use key-file"
                        ))
                    })?;
                    if key.is_empty() {
                        return Err(ConfigError(format!("{place}: key-env names {var}, which is empty")));
                    }
                    settings.key = Secret(key);
                }
                _ if LISTENER_KEYS.contains(&key_name) => {
                    has_listen |= key_name == "listen";
                    if base.given.contains(key_name) {
                        continue; // one listener: the flag wins
                    }
                    if key_name == "key" {
                        inline_secrets.insert("key");
                    }
                    set(&mut settings, key_name, value, &place)?;
                }
                _ if flag_kind(Role::Server, key_name).is_some() => {
                    return Err(ConfigError(format!(
                        "{place}: {key_name} is a process setting: put it at the top of the file, before the first \
                         [[listener]]"
                    )));
                }
                _ => return Err(unknown_key(&place, key_name)),
            }
        }
        if !has_listen {
            return Err(ConfigError(format!("{place}: this listener has no listen address: add listen = \":29900\"")));
        }
        if webtransport {
            // Browsers reach it over QUIC: its address is the WebTransport listener's.
            settings.webtransport = settings.listen.clone();
            settings.listen_udp = false;
        } else if number > 0 {
            settings.webtransport = "off".to_string(); // a process setting: the first listener's
        }
        let name = name.unwrap_or_else(|| format!("listener {}", number + 1));
        if !names.insert(name.clone()) {
            return Err(ConfigError(format!("{place}: two listeners are named {name:?}: give each its own name")));
        }
        listeners.push(ListenerTable { name, settings });
    }
    let browsers: Vec<&ListenerTable> = listeners.iter().filter(|l| !l.settings.listen_udp).collect();
    if browsers.len() > 1 {
        return Err(ConfigError(format!(
            "{origin}: listeners {:?} and {:?} both have transport = \"webtransport\": kcpgate runs one WebTransport \
             listener",
            browsers[0].name, browsers[1].name
        )));
    }
    let top = process.webtransport.trim();
    if let (Some(browser), false) = (browsers.first(), top.is_empty() || top.eq_ignore_ascii_case("off")) {
        return Err(ConfigError(format!(
            "{origin}: webtransport = {top:?} at the top (or -webtransport) and listener {:?} with transport = \
             \"webtransport\" are two WebTransport listeners: keep the listener",
            browser.name
        )));
    }
    Ok(Loaded { listeners, warnings: Vec::new(), inline_secrets, base: base.clone() })
}

/// [`parse`] of the file at `path`, with a warning when other users may read it
/// and it holds a secret.
pub fn load(path: &str, base: &Settings) -> Result<Loaded, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError(format!("-config {path}: cannot read it: {e}")))?;
    let mut loaded = parse(path, &text, base)?;
    let secrets: Vec<&str> = loaded.inline_secrets.iter().copied().collect();
    loaded.warnings.extend(crate::config::readable_by_others(std::path::Path::new(path), &secrets));
    Ok(loaded)
}

/// Sets the flag `name` of `settings` to a file's `value`, checked as the flag is.
fn set(settings: &mut Settings, name: &str, value: &Spanned<DeValue<'_>>, place: &str) -> Result<(), ConfigError> {
    let Some((_, kind)) = flag_kind(Role::Server, name) else { return Err(unknown_key(place, name)) };
    let wrong = |want: &str| ConfigError(format!("{place}: {name} must be {want}"));
    let result = match (kind, value.get_ref()) {
        (FlagKind::Text(_), DeValue::String(s)) => settings.set_text(name, s),
        (FlagKind::Bool, DeValue::Boolean(b)) => settings.set_bool(name, *b),
        (FlagKind::Number, DeValue::Integer(n)) => {
            let number = i64::from_str_radix(n.as_str(), n.radix()).map_err(|_| wrong("a whole number"))?;
            settings.set_number(name, number)
        }
        (FlagKind::Text(_), _) => return Err(wrong("a string")),
        (FlagKind::Bool, _) => return Err(wrong("true or false")),
        (FlagKind::Number, _) => return Err(wrong("a whole number")),
    };
    result.map_err(|e| ConfigError(format!("{place}: {e}")))
}

fn text_value(name: &str, value: &Spanned<DeValue<'_>>, place: &str) -> Result<String, ConfigError> {
    match value.get_ref() {
        DeValue::String(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(ConfigError(format!("{place}: {name} must be a string that is not empty"))),
    }
}

fn unknown_key(place: &str, name: &str) -> ConfigError {
    let hint = closest_flag(Role::Server, name).map_or(String::new(), |known| format!("; did you mean {known}?"));
    ConfigError(format!("{place}: unknown key {name:?}{hint} (the keys are the flags of kcpgate server --help)"))
}

/// Everything a server or client starts with, from its parsed flags: kcptun's
/// `-c` JSON or kcpgate's `-config` file applied, secret files read and every
/// listener checked. Warnings that hold for every listener are given once; the
/// others name their listener.
pub fn resolve(mut settings: Settings) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    if let Some(path) = settings.kcptun_json.clone() {
        if !settings.config.is_empty() {
            return Err(ConfigError(
                "-c (kcptun's JSON) and -config (kcpgate's TOML) are two ways to say the same: use one".into(),
            ));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        warnings.extend(crate::config::config_file_exposure(&path, &text));
        warnings.extend(settings.apply_json(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?);
    }
    let loaded = if settings.config.is_empty() {
        let (name, base) = (settings.listen.clone(), settings.clone());
        let listeners = vec![ListenerTable { name, settings }];
        Loaded { listeners, warnings: Vec::new(), inline_secrets: BTreeSet::new(), base }
    } else {
        let path = settings.config.clone();
        load(&path, &settings)?
    };
    checked(loaded, warnings)
}

/// The listeners of `text`, a `-config` file's content (named
/// `origin` in messages; a reload's new version), read over `base` and checked as
/// at start.
pub fn read_text(base: &Settings, origin: &str, text: &str) -> Result<Loaded, ConfigError> {
    checked(parse(origin, text, base)?, Vec::new())
}

/// The listeners of the file at `path` (a reload's new version), read over `base` and checked as at start.
pub fn read_file(base: &Settings, path: &str) -> Result<Loaded, ConfigError> {
    checked(load(path, base)?, Vec::new())
}

/// `loaded` with its secret files read and every listener checked, and
/// `warnings` before its own.
fn checked(mut loaded: Loaded, mut warnings: Vec<String>) -> Result<Loaded, ConfigError> {
    warnings.append(&mut loaded.warnings);
    let several = loaded.listeners.len() > 1;
    let mut each = Vec::new();
    for listener in &mut loaded.listeners {
        let named = |e: ConfigError| match several {
            true => ConfigError(format!("listener {}: {e}", listener.name)),
            false => e,
        };
        let mut w = listener.settings.read_secret_files().map_err(named)?;
        w.extend(listener.settings.validate().map_err(named)?);
        each.push(w);
    }
    let common: Vec<String> = each[0].iter().filter(|w| each.iter().all(|e| e.contains(w))).cloned().collect();
    warnings.extend(common.iter().cloned());
    for (listener, own) in loaded.listeners.iter().zip(each) {
        warnings.extend(
            own.into_iter().filter(|w| !common.contains(w)).map(|w| format!("listener {}: {w}", listener.name)),
        );
    }
    loaded.warnings = warnings;
    Ok(loaded)
}
