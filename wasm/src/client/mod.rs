//! A kcptun session from a web page to kcpgate over WebTransport datagrams.
//!
//! The core's [`Endpoint`] runs the whole session (crypto, FEC, KCP, snappy, smux,
//! QPP); this module is its driver in the browser: each received datagram goes
//! to the endpoint, one `setTimeout` is armed for the endpoint's next deadline
//! (none while idle), and every datagram the endpoint emits is written to the
//! WebTransport datagram writer. Stream reads and writes are promises resolved
//! by the endpoint's events.
//!
//! Here is the JS API (`Client`, `Stream`) and the opening of the WebTransport
//! session; `options` reads the page's options into the endpoint's settings, and
//! `pump` holds the session's state and moves datagrams, timers and promises.

mod options;
mod pump;

use options::settings;
use pump::{
    deferred, describe, error, receive, rejected, set_timeout, watch_notice, watch_transport, Inner, Messages,
    StreamSlot, CLOSED_BY_PAGE, INCOMING_QUEUE, OUTGOING_QUEUE,
};

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use js_sys::{Array, Function, Promise, Reflect};
use kcpgate_core::messages::{frame, Deframer, MAX_MESSAGE, STREAM_ID as MESSAGE_STREAM};
use kcpgate_core::{Endpoint, Framing, Role};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{ReadableStreamDefaultReader, WebTransport, WebTransportOptions};

use crate::js::Obj;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** Settings of a {@link Client}: kcptun's client flags, with kcptun's defaults. */
export interface ClientOptions {
  /** kcptun's `-key`. */
  key: string;
  /** kcptun's `-crypt` (default "aes"). */
  crypt?: string;
  /** SHA-256 hashes of the gateway's certificate (hex, or bytes), for a self-signed one (`serverCertificateHashes`). */
  certificateHashes?: (string | Uint8Array)[];
  /** FEC shards (default 10 and 3; 0 turns FEC off). */
  dataShards?: number;
  parityShards?: number;
  /** "normal", "fast" (default), "fast2" or "fast3". */
  mode?: string;
  /** Largest datagram (default 1350), clamped to what the browser sends (`maxDatagramSize`). */
  mtu?: number;
  /** KCP windows, segments (default 128 and 512). */
  sndwnd?: number;
  rcvwnd?: number;
  /** Acknowledge at once instead of with the next flush. */
  ackNodelay?: boolean;
  /** Turn snappy compression off (kcptun `-nocomp`; must match the gateway). */
  noComp?: boolean;
  /** smux version (default 2; Debian's kcptun speaks 1). */
  smuxVersion?: 1 | 2;
  /** smux keep-alive, seconds (default 10, 1 to 30: the gateway ends a session silent for 30 s). */
  keepAlive?: number;
  /** QPP on stream payloads (kcptun `-QPP`, `-QPPCount`, default 61 pads). */
  qpp?: boolean;
  qppCount?: number;
  /** How long `connect` waits for the gateway, ms (default 5000). */
  connectTimeout?: number;
  /** Plain KCP in message mode instead of kcptun's streams: no smux, no snappy; use `send()` and `receive()`.
   * Connect to the gateway's `/messages` path; its backend reads each message with a 4-byte big-endian length in front. */
  messages?: boolean;
}

/** A session's live figures. */
export interface ClientStats {
  conv: number;
  mtu: number;
  /** Smoothed round trip, its variation and the retransmission timeout, ms. */
  srtt: number;
  rttvar: number;
  rto: number;
  /** Congestion window and the peer's receive window, segments. */
  cwnd: number;
  remoteWindow: number;
  /** Segments sent and not yet acknowledged, and waiting to be sent. */
  inFlight: number;
  queued: number;
  retransmissions: number;
  fastRetransmissions: number;
  lostSegments: number;
  fecRecovered: number;
  fecErrors: number;
  datagramsIn: number;
  datagramsOut: number;
  bytesIn: number;
  bytesOut: number;
  /** Datagrams dropped before KCP: failed the crypto check (wrong key, forged, corrupt) or malformed. */
  droppedDatagrams: number;
  checksumFailures: number;
  streams: number;
}
"#;

/// Resolves with `value` after `ms`.
fn after(ms: u32, value: &str) -> Promise {
    Promise::new(&mut |resolve, _| {
        let resolve_with_value: Function = resolve.bind1(&JsValue::NULL, &JsValue::from_str(value)).unchecked_into();
        set_timeout(&resolve_with_value, f64::from(ms));
    })
}

/// Opens the WebTransport session to `url`, trusting certificates of `hashes` (or
/// the browser's roots when none), and waits for it up to `timeout` ms.
async fn open_transport(url: &str, hashes: &[Vec<u8>], timeout: u32) -> Result<WebTransport, JsValue> {
    let hashes: Array =
        hashes.iter().map(|h| Obj::new().set("algorithm", "sha-256").bytes("value", h).into::<JsValue>()).collect();
    let mut wt_options = Obj::new();
    if hashes.length() > 0 {
        wt_options = wt_options.set("serverCertificateHashes", hashes);
    }
    let wt_options: WebTransportOptions = wt_options.into();
    let transport = WebTransport::new_with_options(url, &wt_options)
        .map_err(|e| error(&format!("cannot connect to {url}: {}", describe(&e))))?;
    let ready = Promise::race(&Array::of2(&transport.ready(), &after(timeout, "timeout")));
    match JsFuture::from(ready).await {
        Ok(v) if v.as_string().as_deref() == Some("timeout") => {
            transport.close();
            return Err(error(&format!(
                "no answer from the gateway at {url} within {} s: is kcpgate running with -webtransport on that address, and is the port open for UDP?",
                f64::from(timeout) / 1000.0
            )));
        }
        Ok(_) => {}
        Err(e) => {
            return Err(error(&format!(
                "the gateway at {url} refused the connection or did not answer ({}): check the address, that kcpgate runs with -webtransport on that port, and the certificate hash",
                describe(&e)
            )))
        }
    }
    Ok(transport)
}

/// A kcptun session to kcpgate over WebTransport. See the module docs.
#[wasm_bindgen]
pub struct Client {
    shared: Rc<RefCell<Inner>>,
}

#[wasm_bindgen]
impl Client {
    /// Connects to a kcpgate WebTransport URL (`https://host:port/`). Rejects with
    /// an `Error` that says what to check when the gateway refuses or does not
    /// answer within `connectTimeout`; with a `TypeError` for bad options.
    pub async fn connect(
        url: String,
        #[wasm_bindgen(unchecked_param_type = "ClientOptions")] options: JsValue,
    ) -> Result<Client, JsValue> {
        let settings = settings(&options)?;
        let transport = open_transport(&url, &settings.hashes, settings.connect_timeout_ms).await?;
        let datagrams = transport.datagrams();
        let _ = Reflect::set(&datagrams, &"incomingHighWaterMark".into(), &INCOMING_QUEUE.into());
        let _ = Reflect::set(&datagrams, &"outgoingHighWaterMark".into(), &OUTGOING_QUEUE.into());
        let writer = datagrams.writable().get_writer()?;
        let reader: ReadableStreamDefaultReader = datagrams.readable().get_reader().unchecked_into();
        let mut endpoint_cfg = settings.endpoint;
        let framing = endpoint_cfg.streams.framing;
        let allowed = datagrams.max_datagram_size() as usize;
        if allowed > 0 {
            endpoint_cfg.session.mtu = endpoint_cfg.session.mtu.min(allowed);
        }
        let mtu = endpoint_cfg.session.mtu;
        let mut seed = [0u8; 32];
        crate::random_fill(&mut seed);
        let mut endpoint = Endpoint::new(Role::Client, endpoint_cfg, Arc::new(settings.crypto), seed)
            .map_err(|e| JsValue::from(js_sys::TypeError::new(&format!("these settings cannot work: {e}"))))?;
        let id = endpoint.connect(0, ()).expect("a new endpoint has no session");
        let shared = Inner::start(endpoint, id, transport.clone(), writer, mtu)?;
        if framing == Framing::Messages {
            let mut inner = shared.borrow_mut();
            let sid = inner.endpoint.open_stream(0, id).map_err(|e| error(&e.to_string()))?;
            inner.streams.insert(sid, StreamSlot::default());
            inner.messages = Some(Messages { deframer: Deframer::default(), receiver: None });
        }
        wasm_bindgen_futures::spawn_local(receive(Rc::downgrade(&shared), reader));
        wasm_bindgen_futures::spawn_local(watch_notice(Rc::downgrade(&shared), transport.clone()));
        wasm_bindgen_futures::spawn_local(watch_transport(Rc::downgrade(&shared), transport));
        shared.borrow_mut().pump();
        Ok(Client { shared })
    }

    /// Opens a stream; data may be written at once.
    #[wasm_bindgen(js_name = openStream)]
    pub fn open_stream(&self) -> Result<Stream, JsValue> {
        let mut inner = self.shared.borrow_mut();
        if let Some(why) = &inner.ended {
            return Err(error(&format!("the session is over: {why}")));
        }
        if inner.messages.is_some() {
            return Err(error("a plain-KCP session (messages: true) has no streams: use send() and receive()"));
        }
        let now = inner.now();
        let id = inner.id;
        let sid = inner.endpoint.open_stream(now, id).map_err(|e| error(&e.to_string()))?;
        inner.streams.insert(sid, StreamSlot::default());
        inner.pump();
        Ok(Stream { shared: self.shared.clone(), sid })
    }

    /// Plain KCP (`messages: true`): sends one message (at most 65,536 bytes), which
    /// the gateway's backend reads with a 4-byte big-endian length in front.
    /// Resolves once the session has taken it.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn send(&self, message: &[u8]) -> Promise {
        let mut inner = self.shared.borrow_mut();
        if let Some(why) = &inner.ended {
            return rejected(&format!("the session is over: {why}"));
        }
        if inner.messages.is_none() {
            return rejected("send() is for plain-KCP sessions (messages: true); open a stream instead");
        }
        if message.len() > MAX_MESSAGE || message.is_empty() {
            return Promise::reject(
                &js_sys::TypeError::new(&format!("a message holds 1 to {MAX_MESSAGE} bytes (got {})", message.len()))
                    .into(),
            );
        }
        inner.queue_write(MESSAGE_STREAM, frame(message), "the session is closing")
    }

    /// Plain KCP (`messages: true`): the next message from the gateway's backend,
    /// whole. One receive at a time.
    #[wasm_bindgen(unchecked_return_type = "Promise<Uint8Array>")]
    pub fn receive(&self) -> Promise {
        let mut inner = self.shared.borrow_mut();
        if let Some(why) = &inner.ended {
            return rejected(&format!("the session is over: {why}"));
        }
        let Some(m) = inner.messages.as_mut() else {
            return rejected("receive() is for plain-KCP sessions (messages: true); read a stream instead");
        };
        if m.receiver.is_some() {
            return rejected("a receive() is already waiting");
        }
        let (promise, waiter) = deferred();
        m.receiver = Some(waiter);
        let now = inner.now();
        inner.serve_messages(now, MESSAGE_STREAM);
        inner.pump();
        promise
    }

    /// The session's live figures.
    #[wasm_bindgen(unchecked_return_type = "ClientStats")]
    pub fn stats(&self) -> JsValue {
        let inner = self.shared.borrow();
        let mut stats = Obj::new()
            .set("mtu", inner.mtu as u32)
            .set("droppedDatagrams", inner.dropped as f64)
            .set("checksumFailures", inner.checksum_failures as f64)
            .set("streams", inner.streams.len() as u32);
        if let Some((_, session)) = inner.endpoint.session(inner.id) {
            let session = session.stats();
            let (kcp, snmp) = (&session.kcp, &session.traffic);
            stats = stats
                .set("conv", session.conv)
                .set("srtt", kcp.srtt)
                .set("rttvar", kcp.rttvar)
                .set("rto", kcp.rto)
                .set("cwnd", kcp.cwnd)
                .set("remoteWindow", kcp.rmt_wnd)
                .set("inFlight", kcp.snd_buf as u32)
                .set("queued", kcp.snd_queue as u32)
                .set("retransmissions", snmp.retrans_segs as f64)
                .set("fastRetransmissions", snmp.fast_retrans_segs as f64)
                .set("lostSegments", snmp.lost_segs as f64)
                .set("fecRecovered", snmp.fec_recovered as f64)
                .set("fecErrors", snmp.fec_errs as f64)
                .set("datagramsIn", snmp.in_pkts as f64)
                .set("datagramsOut", snmp.out_pkts as f64)
                .set("bytesIn", snmp.in_bytes as f64)
                .set("bytesOut", snmp.out_bytes as f64);
        }
        stats.into()
    }

    /// Resolves with the reason once the session is over (closed by the page,
    /// by the gateway, or failed).
    #[wasm_bindgen(getter, unchecked_return_type = "Promise<string>")]
    pub fn closed(&self) -> Promise {
        let mut inner = self.shared.borrow_mut();
        if let Some(why) = &inner.ended {
            return Promise::resolve(&JsValue::from_str(why));
        }
        let (promise, waiter) = deferred();
        inner.closed_waiters.push(waiter);
        promise
    }

    /// Ends the session: every stream ends, the gateway is told, then the
    /// WebTransport session closes.
    pub fn close(&self) {
        let mut inner = self.shared.borrow_mut();
        if inner.ended.is_some() {
            return;
        }
        let now = inner.now();
        let id = inner.id;
        inner.endpoint.close_session(now, id, None, CLOSED_BY_PAGE);
        inner.pump();
        inner.end(CLOSED_BY_PAGE.into());
    }
}

/// One smux stream of a {@link Client}'s session.
#[wasm_bindgen]
pub struct Stream {
    shared: Rc<RefCell<Inner>>,
    sid: u32,
}

#[wasm_bindgen]
impl Stream {
    /// The smux stream id.
    #[wasm_bindgen(getter)]
    pub fn id(&self) -> u32 {
        self.sid
    }

    /// The next bytes the gateway sent (at most 64 KiB), or `null` at the end of
    /// the stream. One read at a time.
    #[wasm_bindgen(unchecked_return_type = "Promise<Uint8Array | null>")]
    pub fn read(&self) -> Promise {
        let mut inner = self.shared.borrow_mut();
        if let Some(why) = &inner.ended {
            return rejected(&format!("the session is over: {why}"));
        }
        let Some(slot) = inner.streams.get_mut(&self.sid) else { return rejected("the stream is closed") };
        if slot.reader.is_some() {
            return rejected("a read of this stream is already waiting");
        }
        let (promise, waiter) = deferred();
        slot.reader = Some(waiter);
        let now = inner.now();
        inner.serve_read(now, self.sid);
        inner.pump();
        promise
    }

    /// Queues `data` on the stream; resolves once the session has taken all of it
    /// (its windows decide when).
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn write(&self, data: &[u8]) -> Promise {
        let mut inner = self.shared.borrow_mut();
        if let Some(why) = &inner.ended {
            return rejected(&format!("the session is over: {why}"));
        }
        inner.queue_write(self.sid, data.to_vec(), "the stream is closed")
    }

    /// Ends the page's direction after what was written; the gateway's may go on.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn finish(&self) -> Promise {
        let mut inner = self.shared.borrow_mut();
        let Some(slot) = inner.streams.get_mut(&self.sid) else { return rejected("the stream is closed") };
        if slot.finish_after.is_some() {
            return rejected("the stream is already finished");
        }
        let (promise, done) = deferred();
        slot.finish_after = Some(done);
        let now = inner.now();
        inner.serve_writes(now, self.sid);
        inner.pump();
        promise
    }

    /// Ends the stream at once, both directions.
    pub fn reset(&self) {
        let mut inner = self.shared.borrow_mut();
        let id = inner.id;
        if inner.endpoint.reset(id, self.sid).is_ok() {
            inner.pump();
        }
    }
}
