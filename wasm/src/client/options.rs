//! The page's options, checked against the settings table and read into
//! the endpoint's configuration.

use js_sys::{Array, Uint8Array};
use kcpgate_core::{EndpointConfig, Framing, Mode, PacketCrypto, Role, SessionSettings};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::codec::method_of;
use crate::js;

/// Client-side settings, read from a page's options.
pub(super) struct ClientSettings {
    pub(super) endpoint: EndpointConfig,
    pub(super) crypto: PacketCrypto,
    pub(super) hashes: Vec<Vec<u8>>,
    pub(super) connect_timeout_ms: u32,
}

/// The options that are kcptun's numbers, as the page names them and as the
/// settings table does.
pub(super) const NUMBER_OPTIONS: [(&str, &str); 8] = [
    ("mtu", "mtu"),
    ("sndwnd", "sndwnd"),
    ("rcvwnd", "rcvwnd"),
    ("dataShards", "datashard"),
    ("parityShards", "parityshard"),
    ("smuxVersion", "smuxver"),
    ("keepAlive", "keepalive"),
    ("qppCount", "QPPCount"),
];

pub(super) fn settings(options: &JsValue) -> Result<ClientSettings, JsValue> {
    let key = js::string(options, "key")?.ok_or_else(|| js::bad_option("key", "given (kcptun's -key)"))?;
    let crypt = js::string(options, "crypt")?.unwrap_or_else(|| "aes".into());
    let mut session = SessionSettings::kcptun(Role::Client);
    session.crypt = method_of(&crypt)?;
    let mode_name = js::string(options, "mode")?.unwrap_or_else(|| "fast".into());
    session.mode =
        Some(Mode::from_name(&mode_name).ok_or_else(|| js::bad_option("mode", "normal, fast, fast2 or fast3"))?);
    for (option, setting) in NUMBER_OPTIONS {
        let Some(value) = js::field(options, option) else { continue };
        let refused = |why: &str| -> JsValue { js_sys::TypeError::new(&format!("option `{option}`: {why}")).into() };
        let n = value.as_f64().filter(|n| n.fract() == 0.0).ok_or_else(|| refused("must be a whole number"))?;
        session.set_number(setting, n as i64).map_err(|e| refused(&e.to_string()))?;
    }
    session.acknodelay = boolean(options, "ackNodelay")?.unwrap_or(false);
    session.nocomp = boolean(options, "noComp")?.unwrap_or(false);
    session.qpp = boolean(options, "qpp")?.unwrap_or(false);
    session.framing = if boolean(options, "messages")?.unwrap_or(false) { Framing::Messages } else { Framing::Streams };
    let endpoint = session
        .endpoint_config(&key)
        .map_err(|e| -> JsValue { js_sys::TypeError::new(&format!("options: {e}")).into() })?;
    let hashes = match js::field(options, "certificateHashes") {
        None => Vec::new(),
        Some(list) => Array::from(&list).iter().map(|h| certificate_hash(&h)).collect::<Result<_, _>>()?,
    };
    Ok(ClientSettings {
        endpoint,
        crypto: PacketCrypto::from_passphrase(session.crypt, &key),
        hashes,
        connect_timeout_ms: js::number(options, "connectTimeout", 1..=600_000)?.unwrap_or(5000) as u32,
    })
}

/// A SHA-256 certificate hash given as 64 hex digits (colons allowed) or 32 bytes.
pub(super) fn certificate_hash(value: &JsValue) -> Result<Vec<u8>, JsValue> {
    let bad = || js::bad_option("certificateHashes", "a list of SHA-256 hashes: 64 hex digits or 32 bytes each");
    if let Some(text) = value.as_string() {
        let digits: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 {
            return Err(bad());
        }
        return digits
            .chunks(2)
            .map(|pair| std::str::from_utf8(pair).ok().and_then(|s| u8::from_str_radix(s, 16).ok()).ok_or_else(bad))
            .collect();
    }
    let bytes = value.dyn_ref::<Uint8Array>().map(|a| a.to_vec()).ok_or_else(bad)?;
    if bytes.len() == 32 {
        Ok(bytes)
    } else {
        Err(bad())
    }
}

pub(super) fn boolean(options: &JsValue, key: &str) -> Result<Option<bool>, JsValue> {
    js::field(options, key).map(|v| v.as_bool().ok_or_else(|| js::bad_option(key, "true or false"))).transpose()
}
