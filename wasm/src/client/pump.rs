//! The session's state and its pump: datagrams in, the endpoint driven, datagrams
//! out, one timer armed for the next deadline, and the promises the events resolve.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use foldhash::{HashMap, HashMapExt};
use js_sys::{Function, Promise, Reflect, Uint8Array};
use kcpgate_core::messages::Deframer;
use kcpgate_core::{
    ms_until, DropReason, Endpoint, Event, Outcome, Read, SessionEnd, SessionId, StreamEnd, StreamEvent,
};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{ReadableStreamDefaultReader, WebTransport, WritableStreamDefaultWriter};

use crate::js::Obj;

/// How long a session may send without a single valid datagram back before the
/// page is told the gateway does not answer (a wrong key or crypt, or FEC
/// framing the gateway does not take, looks exactly like this).
pub(super) const ANSWER_TIMEOUT_MS: u32 = 5_000;
/// Why a session the page closed is over.
pub(super) const CLOSED_BY_PAGE: &str = "closed by the page";
/// Bytes one `read()` returns at most.
pub(super) const READ_CHUNK: usize = 65_536;
/// Datagrams the browser may queue for us between reads (Chromium's default is one).
pub(super) const INCOMING_QUEUE: u32 = 1024;
/// Datagrams the browser queues for sending before the writer pushes back.
pub(super) const OUTGOING_QUEUE: u32 = 64;
/// Datagrams held while the browser's queue is full; older ones are dropped.
pub(super) const HELD_DATAGRAMS: usize = 4096;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    pub(super) fn set_timeout(handler: &Function, ms: f64) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    pub(super) fn clear_timeout(handle: &JsValue);
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    pub(super) fn performance_now() -> f64;
}

/// A pending promise's two ends.
pub(super) struct Waiter {
    pub(super) resolve: Function,
    pub(super) reject: Function,
}

impl Waiter {
    pub(super) fn resolve(self, value: &JsValue) {
        let _ = self.resolve.call1(&JsValue::UNDEFINED, value);
    }

    pub(super) fn reject(self, message: &str) {
        let _ = self.reject.call1(&JsValue::UNDEFINED, &error(message));
    }
}

pub(super) fn deferred() -> (Promise, Waiter) {
    let mut parts = None;
    let promise = Promise::new(&mut |resolve, reject| parts = Some(Waiter { resolve, reject }));
    (promise, parts.expect("the executor runs at once"))
}

pub(super) fn rejected(message: &str) -> Promise {
    Promise::reject(&error(message))
}

/// Plain KCP's receiving side.
pub(super) struct Messages {
    pub(super) deframer: Deframer,
    pub(super) receiver: Option<Waiter>,
}

/// A write waiting for room: the bytes not yet taken.
pub(super) struct PendingWrite {
    pub(super) data: Vec<u8>,
    pub(super) taken: usize,
    pub(super) done: Waiter,
}

#[derive(Default)]
pub(super) struct StreamSlot {
    pub(super) reader: Option<Waiter>,
    pub(super) writes: VecDeque<PendingWrite>,
    /// `finish()` was called while writes waited: the FIN goes after them.
    pub(super) finish_after: Option<Waiter>,
}

/// The session's state, shared by the client, its streams and its callbacks.
pub(super) struct Inner {
    pub(super) endpoint: Endpoint<()>,
    pub(super) id: SessionId,
    pub(super) transport: WebTransport,
    pub(super) writer: WritableStreamDefaultWriter,
    pub(super) origin: f64,
    pub(super) out: Vec<u8>,
    pub(super) inbound: Vec<u8>,
    pub(super) read_buf: Vec<u8>,
    pub(super) streams: HashMap<u32, StreamSlot>,
    /// Plain KCP: received messages not yet taken, and a `receive()` waiting.
    pub(super) messages: Option<Messages>,
    pub(super) timer: Option<JsValue>,
    pub(super) on_timer: Option<Closure<dyn FnMut()>>,
    /// Swallows the rejections of datagram writes (a full queue is loss, as on UDP).
    pub(super) ignore: Closure<dyn FnMut(JsValue)>,
    /// Datagrams waiting for room in the browser's queue, and whether a wait for
    /// room is under way.
    pub(super) held: VecDeque<Uint8Array>,
    pub(super) waiting_for_room: bool,
    pub(super) weak: Weak<RefCell<Inner>>,
    /// Posting to it runs a pump as the next task (no timer clamping).
    pub(super) wakeup: web_sys::MessageChannel,
    pub(super) on_wakeup: Option<Closure<dyn FnMut()>>,
    pub(super) pump_scheduled: bool,
    pub(super) mtu: usize,
    pub(super) first_sent_at: Option<u32>,
    pub(super) dropped: u64,
    pub(super) checksum_failures: u64,
    pub(super) ended: Option<String>,
    pub(super) closed_waiters: Vec<Waiter>,
}

impl Inner {
    /// The state of session `id` of `endpoint` over `transport`, its wake-up and
    /// timer callbacks wired to the pump.
    pub(super) fn start(
        endpoint: Endpoint<()>,
        id: SessionId,
        transport: WebTransport,
        writer: WritableStreamDefaultWriter,
        mtu: usize,
    ) -> Result<Rc<RefCell<Inner>>, JsValue> {
        let origin = performance_now();
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
        Ok(shared)
    }
}

impl Inner {
    pub(super) fn now(&self) -> u32 {
        (performance_now() - self.origin) as u64 as u32
    }

    pub(super) fn on_datagram(&mut self, datagram: &Uint8Array) {
        if self.ended.is_some() {
            return;
        }
        let len = datagram.length() as usize;
        self.inbound.resize(len, 0);
        datagram.copy_to(&mut self.inbound);
        let now = self.now();
        match self.endpoint.handle_datagram(now, &(), &mut self.inbound) {
            Outcome::Delivered | Outcome::Created | Outcome::Replaced { .. } | Outcome::Unproven | Outcome::Moved => {}
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
    pub(super) fn schedule_pump(&mut self) {
        if !self.pump_scheduled {
            self.pump_scheduled = true;
            let _ = self.wakeup.port2().post_message(&JsValue::NULL);
        }
    }

    /// Runs due timers, acts on events and sends datagrams until there are none,
    /// then arms the timer for the next deadline.
    pub(super) fn pump(&mut self) {
        if self.ended.is_some() {
            return;
        }
        let now = self.now();
        if self.endpoint.poll_timeout().is_some_and(|d| ms_until(d, now) == 0) {
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
    pub(super) fn send(&mut self, datagram: Uint8Array) {
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

    pub(super) fn browser_has_room(&self) -> bool {
        self.writer.desired_size().ok().flatten().is_none_or(|room| room > 0.0)
    }

    pub(super) fn wait_for_room(&mut self) {
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

    pub(super) fn heard_from_gateway(&self) -> bool {
        self.endpoint.session(self.id).is_some_and(|(_, s)| s.snmp().in_pkts > 0)
    }

    pub(super) fn unanswered(&self, now: u32) -> bool {
        self.first_sent_at.is_some_and(|t| now.wrapping_sub(t) >= ANSWER_TIMEOUT_MS) && !self.heard_from_gateway()
    }

    pub(super) fn schedule(&mut self, now: u32) {
        if let Some(handle) = self.timer.take() {
            clear_timeout(&handle);
        }
        let watchdog =
            self.first_sent_at.filter(|_| !self.heard_from_gateway()).map(|t| t.wrapping_add(ANSWER_TIMEOUT_MS));
        let deadline = [self.endpoint.poll_timeout(), watchdog].into_iter().flatten().min_by_key(|d| ms_until(*d, now));
        if let (Some(deadline), Some(callback)) = (deadline, self.on_timer.as_ref()) {
            let wait = ms_until(deadline, now);
            self.timer = Some(set_timeout(callback.as_ref().unchecked_ref(), f64::from(wait)));
        }
    }

    pub(super) fn on_event(&mut self, now: u32, event: Event<()>) {
        match event {
            // A client's only session is the one it dialled: proven from the start.
            // and a client does not follow its server to other addresses.
            Event::SessionOpened { .. } | Event::Unproven { .. } | Event::SessionMoved { .. } => {}
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
    pub(super) fn serve_read(&mut self, now: u32, sid: u32) {
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
    pub(super) fn serve_messages(&mut self, now: u32, sid: u32) {
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
    pub(super) fn queue_write(&mut self, sid: u32, data: Vec<u8>, gone: &str) -> Promise {
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
    pub(super) fn serve_writes(&mut self, now: u32, sid: u32) {
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
    pub(super) fn end(&mut self, reason: String) {
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

/// Keeps a read pending on the datagram stream for as long as the session lives.
pub(super) async fn receive(weak: Weak<RefCell<Inner>>, reader: ReadableStreamDefaultReader) {
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
pub(super) async fn watch_transport(weak: Weak<RefCell<Inner>>, transport: WebTransport) {
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
pub(super) async fn watch_notice(weak: Weak<RefCell<Inner>>, transport: WebTransport) {
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
pub(super) fn describe(value: &JsValue) -> String {
    if let Some(e) = value.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}

/// A plain `Error` with `message`, for rejected promises.
pub(super) fn error(message: &str) -> JsValue {
    js_sys::Error::new(message).into()
}
