//! A kcptun session from a web page to kcpgate over WebTransport datagrams.
//!
//! The core's [`Endpoint`] runs the whole session (crypto, FEC, KCP, snappy, smux,
//! QPP); this module is its driver in the browser: each received datagram goes
//! to the endpoint, one `setTimeout` is armed for the endpoint's next deadline
//! (none while idle), and every datagram the endpoint emits is written to the
//! WebTransport datagram writer. Stream reads and writes are promises resolved
//! by the endpoint's events.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};
use js_sys::{Array, Function, Promise, Reflect, Uint8Array};
use kcpgate_core::crypto::PacketCrypto;
use kcpgate_core::endpoint::{Endpoint, EndpointConfig, Event, SessionId};
use kcpgate_core::kcp::{diff, Mode};
use kcpgate_core::listener::{DropReason, Outcome};
use kcpgate_core::messages::{frame, Deframer, MAX_MESSAGE, STREAM_ID as MESSAGE_STREAM};
use kcpgate_core::session::{Framing, SessionEnd, StreamEnd, StreamEvent};
use kcpgate_core::settings::SessionSettings;
use kcpgate_core::smux::{Read, Role};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{ReadableStreamDefaultReader, WebTransport, WebTransportOptions, WritableStreamDefaultWriter};

use crate::codec::method_of;
use crate::js::{self, Obj};

/// How long a session may send without a single valid datagram back before the
/// page is told the gateway does not answer (a wrong key or crypt, or FEC
/// framing the gateway does not take, looks exactly like this).
const ANSWER_TIMEOUT_MS: u32 = 5_000;
/// Why a session the page closed is over.
const CLOSED_BY_PAGE: &str = "closed by the page";
/// Bytes one `read()` returns at most.
const READ_CHUNK: usize = 65_536;
/// Datagrams the browser may queue for us between reads (Chromium's default is one).
const INCOMING_QUEUE: u32 = 1024;
/// Datagrams the browser queues for sending before the writer pushes back.
const OUTGOING_QUEUE: u32 = 64;
/// Datagrams held while the browser's queue is full; older ones are dropped.
const HELD_DATAGRAMS: usize = 4096;

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

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &Function, ms: f64) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(handle: &JsValue);
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
}

/// A pending promise's two ends.
struct Waiter {
    resolve: Function,
    reject: Function,
}

impl Waiter {
    fn resolve(self, value: &JsValue) {
        let _ = self.resolve.call1(&JsValue::UNDEFINED, value);
    }

    fn reject(self, message: &str) {
        let _ = self.reject.call1(&JsValue::UNDEFINED, &error(message));
    }
}

fn deferred() -> (Promise, Waiter) {
    let mut parts = None;
    let promise = Promise::new(&mut |resolve, reject| parts = Some(Waiter { resolve, reject }));
    (promise, parts.expect("the executor runs at once"))
}

fn rejected(message: &str) -> Promise {
    Promise::reject(&error(message))
}

/// Plain KCP's receiving side.
struct Messages {
    deframer: Deframer,
    receiver: Option<Waiter>,
}

/// A write waiting for room: the bytes not yet taken.
struct PendingWrite {
    data: Vec<u8>,
    taken: usize,
    done: Waiter,
}

#[derive(Default)]
struct StreamSlot {
    reader: Option<Waiter>,
    writes: VecDeque<PendingWrite>,
    /// `finish()` was called while writes waited: the FIN goes after them.
    finish_after: Option<Waiter>,
}

/// The session's state, shared by the client, its streams and its callbacks.
struct Inner {
    endpoint: Endpoint<()>,
    id: SessionId,
    transport: WebTransport,
    writer: WritableStreamDefaultWriter,
    origin: f64,
    out: Vec<u8>,
    inbound: Vec<u8>,
    read_buf: Vec<u8>,
    streams: HashMap<u32, StreamSlot>,
    /// Plain KCP: received messages not yet taken, and a `receive()` waiting.
    messages: Option<Messages>,
    timer: Option<JsValue>,
    on_timer: Option<Closure<dyn FnMut()>>,
    /// Swallows the rejections of datagram writes (a full queue is loss, as on UDP).
    ignore: Closure<dyn FnMut(JsValue)>,
    /// Datagrams waiting for room in the browser's queue, and whether a wait for
    /// room is under way.
    held: VecDeque<Uint8Array>,
    waiting_for_room: bool,
    weak: Weak<RefCell<Inner>>,
    /// Posting to it runs a pump as the next task (no timer clamping).
    wakeup: web_sys::MessageChannel,
    on_wakeup: Option<Closure<dyn FnMut()>>,
    pump_scheduled: bool,
    mtu: usize,
    first_sent_at: Option<u32>,
    dropped: u64,
    checksum_failures: u64,
    ended: Option<String>,
    closed_waiters: Vec<Waiter>,
}

impl Inner {
    fn now(&self) -> u32 {
        (performance_now() - self.origin) as u64 as u32
    }

    fn on_datagram(&mut self, datagram: &Uint8Array) {
        if self.ended.is_some() {
            return;
        }
        let len = datagram.length() as usize;
        self.inbound.resize(len, 0);
        datagram.copy_to(&mut self.inbound);
        let now = self.now();
        match self.endpoint.handle_datagram(now, &(), &mut self.inbound) {
            Outcome::Delivered | Outcome::Created | Outcome::Replaced { .. } => {}
            Outcome::Dropped(reason) => {
                self.dropped += 1;
                if reason == DropReason::Checksum {
                    self.checksum_failures += 1;
                }
            }
        }
        self.schedule_pump();
    }

    /// Pumps once the datagrams the browser holds now are all handed over: the
    /// reads resolve as microtasks, the pump runs as the next task. The endpoint
    /// then processes them in one pass, and one ACK datagram answers many.
    fn schedule_pump(&mut self) {
        if !self.pump_scheduled {
            self.pump_scheduled = true;
            let _ = self.wakeup.port2().post_message(&JsValue::NULL);
        }
    }

    /// Runs due timers, acts on events and sends datagrams until there are none,
    /// then arms the timer for the next deadline.
    fn pump(&mut self) {
        if self.ended.is_some() {
            return;
        }
        let now = self.now();
        if self.endpoint.poll_timeout().is_some_and(|d| diff(d, now) <= 0) {
            self.endpoint.handle_timeout(now);
        }
        loop {
            let mut acted = false;
            while let Some(event) = self.endpoint.poll_event() {
                acted = true;
                self.on_event(now, event);
            }
            while let Some(t) = self.endpoint.poll_transmit(now, 1, &mut self.out) {
                acted = true;
                let datagram = Uint8Array::from(&self.out[..t.size]);
                self.send(datagram);
                self.first_sent_at.get_or_insert(now);
            }
            if !acted {
                break;
            }
        }
        if self.ended.is_none() && self.unanswered(now) {
            self.end(format!(
                "the gateway did not answer for {} s: check the key, crypt and FEC settings against the gateway's",
                ANSWER_TIMEOUT_MS / 1000
            ));
            return;
        }
        self.schedule(now);
    }

    /// Hands a datagram to the browser, or holds it while the browser's queue is
    /// full: datagrams written past it are dropped by the browser, in bursts that
    /// KCP's retransmissions then pay for.
    fn send(&mut self, datagram: Uint8Array) {
        if self.held.is_empty() && self.browser_has_room() {
            let _ = self.writer.write_with_chunk(&datagram).catch(&self.ignore);
            return;
        }
        if self.held.len() == HELD_DATAGRAMS {
            self.held.pop_front(); // lost, as on a full UDP socket
        }
        self.held.push_back(datagram);
        self.wait_for_room();
    }

    fn browser_has_room(&self) -> bool {
        self.writer.desired_size().ok().flatten().is_none_or(|room| room > 0.0)
    }

    fn wait_for_room(&mut self) {
        if self.waiting_for_room {
            return;
        }
        self.waiting_for_room = true;
        let (ready, weak) = (self.writer.ready(), self.weak.clone());
        wasm_bindgen_futures::spawn_local(async move {
            let ready = JsFuture::from(ready).await;
            let Some(shared) = weak.upgrade() else { return };
            let mut inner = shared.borrow_mut();
            inner.waiting_for_room = false;
            if ready.is_err() || inner.ended.is_some() {
                inner.held.clear();
                return;
            }
            while inner.browser_has_room() {
                let Some(datagram) = inner.held.pop_front() else { break };
                let _ = inner.writer.write_with_chunk(&datagram).catch(&inner.ignore);
            }
            if !inner.held.is_empty() {
                inner.wait_for_room();
            }
        });
    }

    fn heard_from_gateway(&self) -> bool {
        self.endpoint.session(self.id).is_some_and(|(_, s)| s.connection().snmp().in_pkts > 0)
    }

    fn unanswered(&self, now: u32) -> bool {
        self.first_sent_at.is_some_and(|t| now.wrapping_sub(t) >= ANSWER_TIMEOUT_MS) && !self.heard_from_gateway()
    }

    fn schedule(&mut self, now: u32) {
        if let Some(handle) = self.timer.take() {
            clear_timeout(&handle);
        }
        let watchdog =
            self.first_sent_at.filter(|_| !self.heard_from_gateway()).map(|t| t.wrapping_add(ANSWER_TIMEOUT_MS));
        let deadline = [self.endpoint.poll_timeout(), watchdog].into_iter().flatten().min_by_key(|d| diff(*d, now));
        if let (Some(deadline), Some(callback)) = (deadline, self.on_timer.as_ref()) {
            let wait = diff(deadline, now).max(0);
            self.timer = Some(set_timeout(callback.as_ref().unchecked_ref(), f64::from(wait)));
        }
    }

    fn on_event(&mut self, now: u32, event: Event<()>) {
        match event {
            Event::SessionOpened { .. } => {}
            // A client's session is closed only by the page (`Client::close`).
            Event::SessionClosed { reason: SessionEnd::Closed(_), .. } => self.end(CLOSED_BY_PAGE.into()),
            Event::SessionClosed { reason, .. } => self.end(reason.to_string()),
            Event::Stream { event, .. } => match event {
                // kcptun servers never open streams towards clients.
                StreamEvent::Opened(sid) => {
                    let _ = self.endpoint.reset(self.id, sid);
                }
                StreamEvent::Readable(sid) if self.messages.is_some() => self.serve_messages(now, sid),
                StreamEvent::Readable(sid) => self.serve_read(now, sid),
                StreamEvent::Writable(sid) => self.serve_writes(now, sid),
                StreamEvent::Closed(sid, why) => {
                    let Some(mut slot) = self.streams.remove(&sid) else { return };
                    let message = match why {
                        StreamEnd::Reset => "the stream was reset",
                        StreamEnd::CloseWaitExpired => "the stream was half-open longer than the close-wait",
                        StreamEnd::SessionEnded => "the session ended",
                        _ => "the stream is closed",
                    };
                    if let Some(reader) = slot.reader.take() {
                        // Both directions finished: a read waiting now sees the end.
                        if why == StreamEnd::Finished {
                            reader.resolve(&JsValue::NULL);
                        } else {
                            reader.reject(message);
                        }
                    }
                    for w in slot.writes.drain(..) {
                        w.done.reject(message);
                    }
                    if let Some(f) = slot.finish_after.take() {
                        f.reject(message);
                    }
                }
            },
        }
    }

    /// Answers a waiting `read()` if the stream has data or its end.
    fn serve_read(&mut self, now: u32, sid: u32) {
        let Some(reader) = self.streams.get_mut(&sid).and_then(|s| s.reader.take()) else { return };
        self.read_buf.resize(READ_CHUNK, 0);
        match self.endpoint.read(now, self.id, sid, &mut self.read_buf) {
            Ok(Read::Data(n)) => reader.resolve(&Uint8Array::from(&self.read_buf[..n])),
            Ok(Read::Eof) => reader.resolve(&JsValue::NULL),
            Ok(Read::WouldBlock) => {
                if let Some(slot) = self.streams.get_mut(&sid) {
                    slot.reader = Some(reader);
                }
            }
            Err(e) => reader.reject(&e.to_string()),
        }
    }

    /// Plain KCP: takes what arrived and answers a waiting `receive()`.
    fn serve_messages(&mut self, now: u32, sid: u32) {
        self.read_buf.resize(READ_CHUNK, 0);
        while let Ok(Read::Data(n)) = self.endpoint.read(now, self.id, sid, &mut self.read_buf) {
            if let Some(m) = self.messages.as_mut() {
                m.deframer.push(&self.read_buf[..n]);
            }
        }
        let Some(m) = self.messages.as_mut() else { return };
        if m.receiver.is_none() {
            return;
        }
        match m.deframer.next_message() {
            Some(Ok(message)) => {
                let message = Uint8Array::from(message);
                m.receiver.take().expect("checked").resolve(&message);
            }
            Some(Err(e)) => {
                let why = e.to_string();
                self.end(why);
            }
            None => {}
        }
    }

    /// Queues `data` on stream `sid` behind the writes already waiting; the promise
    /// resolves once the session has taken all of it. `gone` is the rejection when
    /// the stream is no more.
    fn queue_write(&mut self, sid: u32, data: Vec<u8>, gone: &str) -> Promise {
        let Some(slot) = self.streams.get_mut(&sid) else { return rejected(gone) };
        if slot.finish_after.is_some() {
            return rejected("the stream's write side is finished");
        }
        let (promise, done) = deferred();
        slot.writes.push_back(PendingWrite { data, taken: 0, done });
        let now = self.now();
        self.serve_writes(now, sid);
        self.pump();
        promise
    }

    /// Moves waiting writes into the stream as far as its window takes them.
    fn serve_writes(&mut self, now: u32, sid: u32) {
        let Some(slot) = self.streams.get_mut(&sid) else { return };
        while let Some(w) = slot.writes.front_mut() {
            match self.endpoint.write(self.id, sid, &w.data[w.taken..]) {
                Ok(n) => w.taken += n,
                Err(e) => {
                    let message = e.to_string();
                    for w in slot.writes.drain(..) {
                        w.done.reject(&message);
                    }
                    return;
                }
            }
            if w.taken < w.data.len() {
                return;
            }
            let done = slot.writes.pop_front().expect("front exists");
            done.done.resolve(&JsValue::UNDEFINED);
        }
        if let Some(finish) = slot.finish_after.take() {
            match self.endpoint.finish(now, self.id, sid) {
                Ok(()) => finish.resolve(&JsValue::UNDEFINED),
                Err(e) => finish.reject(&e.to_string()),
            }
        }
    }

    /// The session is over: every waiting promise hears why, once.
    fn end(&mut self, reason: String) {
        if self.ended.is_some() {
            return;
        }
        if let Some(handle) = self.timer.take() {
            clear_timeout(&handle);
        }
        for (_, mut slot) in self.streams.drain() {
            if let Some(r) = slot.reader.take() {
                r.reject(&reason);
            }
            for w in slot.writes.drain(..) {
                w.done.reject(&reason);
            }
            if let Some(f) = slot.finish_after.take() {
                f.reject(&reason);
            }
        }
        for w in self.closed_waiters.drain(..) {
            w.resolve(&JsValue::from_str(&reason));
        }
        // Closing a transport the gateway already closed throws; nothing to do then.
        let info = Obj::new().set("closeCode", 0).set("reason", "session ended").into::<JsValue>();
        if let Ok(close) = Reflect::get(&self.transport, &"close".into()) {
            let _ = close.unchecked_ref::<Function>().call1(&self.transport, &info);
        }
        // The timer's closure stays: this may run inside it, and it holds only a
        // weak reference.
        self.ended = Some(reason);
    }
}

/// Client-side settings, read from a page's options.
struct Settings {
    endpoint: EndpointConfig,
    crypto: PacketCrypto,
    hashes: Vec<Vec<u8>>,
    connect_timeout_ms: u32,
}

/// The options that are kcptun's numbers, as the page names them and as the
/// settings table does.
const NUMBER_OPTIONS: [(&str, &str); 8] = [
    ("mtu", "mtu"),
    ("sndwnd", "sndwnd"),
    ("rcvwnd", "rcvwnd"),
    ("dataShards", "datashard"),
    ("parityShards", "parityshard"),
    ("smuxVersion", "smuxver"),
    ("keepAlive", "keepalive"),
    ("qppCount", "QPPCount"),
];

fn settings(options: &JsValue) -> Result<Settings, JsValue> {
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
    Ok(Settings {
        endpoint,
        crypto: PacketCrypto::from_passphrase(session.crypt, &key),
        hashes,
        connect_timeout_ms: js::number(options, "connectTimeout", 1..=600_000)?.unwrap_or(5000) as u32,
    })
}

/// A SHA-256 certificate hash given as 64 hex digits (colons allowed) or 32 bytes.
fn certificate_hash(value: &JsValue) -> Result<Vec<u8>, JsValue> {
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

/// Resolves with `value` after `ms`.
fn after(ms: u32, value: &str) -> Promise {
    Promise::new(&mut |resolve, _| {
        let resolve_with_value: Function = resolve.bind1(&JsValue::NULL, &JsValue::from_str(value)).unchecked_into();
        set_timeout(&resolve_with_value, f64::from(ms));
    })
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
        let hashes: Array = settings
            .hashes
            .iter()
            .map(|h| Obj::new().set("algorithm", "sha-256").bytes("value", h).into::<JsValue>())
            .collect();
        let mut wt_options = Obj::new();
        if hashes.length() > 0 {
            wt_options = wt_options.set("serverCertificateHashes", hashes);
        }
        let wt_options: WebTransportOptions = wt_options.into();
        let transport = WebTransport::new_with_options(&url, &wt_options)
            .map_err(|e| error(&format!("cannot connect to {url}: {}", describe(&e))))?;
        let timeout = settings.connect_timeout_ms;
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
        let origin = performance_now();
        let id = endpoint.connect(0, ()).expect("a new endpoint has no session");
        let shared = Rc::new(RefCell::new(Inner {
            endpoint,
            id,
            transport: transport.clone(),
            writer,
            origin,
            out: Vec::with_capacity(1500),
            inbound: Vec::with_capacity(1500),
            read_buf: Vec::new(),
            streams: HashMap::new(),
            messages: None,
            timer: None,
            on_timer: None,
            ignore: Closure::new(|_: JsValue| {}),
            held: VecDeque::new(),
            waiting_for_room: false,
            weak: Weak::new(),
            wakeup: web_sys::MessageChannel::new()?,
            on_wakeup: None,
            pump_scheduled: false,
            mtu,
            first_sent_at: None,
            dropped: 0,
            checksum_failures: 0,
            ended: None,
            closed_waiters: Vec::new(),
        }));
        let weak = Rc::downgrade(&shared);
        shared.borrow_mut().weak = weak.clone();
        let woken = weak.clone();
        let on_wakeup = Closure::<dyn FnMut()>::new(move || {
            if let Some(shared) = woken.upgrade() {
                let mut inner = shared.borrow_mut();
                inner.pump_scheduled = false;
                inner.pump();
            }
        });
        shared.borrow().wakeup.port1().set_onmessage(Some(on_wakeup.as_ref().unchecked_ref()));
        shared.borrow_mut().on_wakeup = Some(on_wakeup);
        shared.borrow_mut().on_timer = Some(Closure::new(move || {
            if let Some(shared) = weak.upgrade() {
                let mut inner = shared.borrow_mut();
                inner.timer = None;
                inner.pump();
            }
        }));
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
            let kcp = session.connection().kcp().state();
            let snmp = session.snmp();
            stats = stats
                .set("conv", session.conv())
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

/// Keeps a read pending on the datagram stream for as long as the session lives.
async fn receive(weak: Weak<RefCell<Inner>>, reader: ReadableStreamDefaultReader) {
    loop {
        let result = JsFuture::from(reader.read()).await;
        let Some(shared) = weak.upgrade() else { return };
        let mut inner = shared.borrow_mut();
        let result = match result {
            Ok(r) => r,
            // The transport closed: `watch_transport` or the close notice says why.
            Err(_) => return,
        };
        if Reflect::get(&result, &"done".into()).ok().and_then(|d| d.as_bool()).unwrap_or(true) {
            return;
        }
        match Reflect::get(&result, &"value".into()).ok().and_then(|v| v.dyn_into::<Uint8Array>().ok()) {
            Some(datagram) => inner.on_datagram(&datagram),
            None => inner.dropped += 1,
        }
        if inner.ended.is_some() {
            let _ = reader.cancel();
            return;
        }
    }
}

/// Ends the session when the WebTransport session closes, with the gateway's reason.
async fn watch_transport(weak: Weak<RefCell<Inner>>, transport: WebTransport) {
    let closed = JsFuture::from(transport.closed()).await;
    let Some(shared) = weak.upgrade() else { return };
    let reason = match closed {
        Ok(info) => {
            let why = Reflect::get(&info, &"reason".into()).ok().and_then(|r| r.as_string()).unwrap_or_default();
            if why.is_empty() {
                "the gateway closed the connection".to_string()
            } else {
                format!("the gateway closed the connection: {why}")
            }
        }
        Err(e) => format!("the connection to the gateway was lost: {}", describe(&e)),
    };
    shared.borrow_mut().end(reason);
}

/// Reads the gateway's close notice: the first unidirectional stream it opens
/// holds why it is closing the session (a kick, a wrong key, its session limit),
/// which browsers do not pass on from the QUIC close itself.
async fn watch_notice(weak: Weak<RefCell<Inner>>, transport: WebTransport) {
    let streams: ReadableStreamDefaultReader =
        transport.incoming_unidirectional_streams().get_reader().unchecked_into();
    let Ok(first) = JsFuture::from(streams.read()).await else { return };
    let Ok(stream) = Reflect::get(&first, &"value".into()) else { return };
    let Some(stream) = stream.dyn_ref::<web_sys::ReadableStream>() else { return };
    let reader: ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
    let mut text = Vec::new();
    while text.len() < 1024 {
        let Ok(chunk) = JsFuture::from(reader.read()).await else { break };
        match Reflect::get(&chunk, &"value".into()).ok().and_then(|v| v.dyn_into::<Uint8Array>().ok()) {
            Some(bytes) => text.extend(bytes.to_vec()),
            None => break,
        }
    }
    let Some(shared) = weak.upgrade() else { return };
    let reason = String::from_utf8_lossy(&text);
    shared.borrow_mut().end(format!("the gateway closed the session: {reason}"));
}

/// A thrown value in words.
fn describe(value: &JsValue) -> String {
    if let Some(e) = value.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}

fn boolean(options: &JsValue, key: &str) -> Result<Option<bool>, JsValue> {
    js::field(options, key).map(|v| v.as_bool().ok_or_else(|| js::bad_option(key, "true or false"))).transpose()
}

/// A plain `Error` with `message`, for rejected promises.
fn error(message: &str) -> JsValue {
    js_sys::Error::new(message).into()
}
