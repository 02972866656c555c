//! kcpgate's protocol core in the browser, through wasm-bindgen.
//!
//! - [`codec`]: one kcptun datagram taken apart into a plain object, or built from
//!   fields (the dashboard's packet inspector, and tests);
//! - `client` (WebAssembly only): a whole kcptun session from a web page to kcpgate over
//!   WebTransport datagrams, run by the core's endpoint on the page's timers.
//!
//! Protocol logic stays in `kcpgate-core`; this crate only moves bytes and
//! timers between it and the browser.

// The client drives the browser's WebTransport: it exists only in WebAssembly.
#[cfg(target_arch = "wasm32")]
pub mod client;
pub mod codec;
mod js;

use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = crypto, js_name = getRandomValues)]
    fn get_random_values(buf: &mut [u8]);
}

/// Fills `buf` from the platform's CSPRNG (`crypto.getRandomValues`).
fn random_fill(buf: &mut [u8]) {
    // getRandomValues takes at most 65,536 bytes per call.
    for chunk in buf.chunks_mut(65536) {
        get_random_values(chunk);
    }
}
