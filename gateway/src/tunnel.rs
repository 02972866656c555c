//! One KCP session's streams, bridged to TCP connections.
//!
//! The driver owns the core's endpoint; every stream has a task of its own that
//! owns the TCP connection. They talk through bounded channels, so a slow
//! side holds a bounded amount of memory: towards TCP, a stream's channel holds a
//! few chunks and smux keeps the rest inside its receive budget; from TCP, a stream
//! task reads only while it holds credit, which the session returns as smux takes
//! the bytes.
//!
//! When one direction of a connection ends, the end it was flowing to is
//! half-closed at once (FIN), so nothing in flight is lost; the core closes a
//! connection still half-open after `-closewait`. A connection that fails (reset,
//! refused) ends its stream at once and is counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use foldhash::{HashMap, HashMapExt};
use kcpgate_core::{Endpoint, Read, SessionId, StreamEnd};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::conn::{Conn, ConnRead};

/// Bytes read from TCP (or smux) per step.
pub const CHUNK: usize = 16 * 1024;
/// Chunks a stream may have in flight in each direction.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Chunk buffers of one stream. They travel to the other task and come back here
/// once emptied, so a stream in steady state allocates nothing per chunk.
#[derive(Clone, Default)]
pub struct ChunkPool(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl ChunkPool {
    /// A used buffer, or a new empty one; its contents are unspecified. Buffers are
    /// sized by what they carried, so a quiet stream's pool holds little.
    fn take(&self) -> Vec<u8> {
        self.0.lock().expect("pool lock").pop().unwrap_or_default()
    }

    fn give(&self, buf: Vec<u8>) {
        let mut pool = self.0.lock().expect("pool lock");
        // Both directions' chunks in flight, and one in hand on each side.
        if pool.len() < 2 * CHUNKS_IN_FLIGHT + 2 {
            pool.push(buf);
        }
    }
}

/// What a stream task tells its session.
#[derive(Debug)]
pub enum FromStream {
    /// Bytes from TCP for the stream.
    Data(Vec<u8>),
    /// TCP sent FIN.
    Eof,
    /// Reading or writing TCP failed (reset, broken pipe): the stream closes at once.
    Failed,
    /// The stream task ended: nothing more can be delivered to TCP.
    Closed,
    /// The channel towards TCP, which was full, has room again.
    Room,
    /// The server's dial of the backend succeeded: the stream's TCP end.
    Connected(std::net::SocketAddr),
}

/// Warns, at most every 10 s, that datagrams fail the integrity check: nearly
/// always a peer with another `-key` or `-crypt`, which kcptun only counts.
#[derive(Debug, Default)]
pub struct WrongKeyWarning {
    last: Option<Instant>,
    since_last: u64,
}

impl WrongKeyWarning {
    /// Counts a datagram that could not be sent to `from`, and says so now and then.
    pub fn datagram_failed(&mut self, from: std::net::SocketAddr) {
        self.since_last += 1;
        if self.last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(10)) {
            return;
        }
        tracing::warn!(
            remote = %from,
            failed = self.since_last,
            "datagrams fail decryption or the checksum: check that -key and -crypt match on both ends"
        );
        self.last = Some(Instant::now());
        self.since_last = 0;
    }
}

/// Process-wide stream counters (kcptun's SNMP has none of these).
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// Streams opened.
    pub opened: AtomicU64,
    /// Streams closed.
    pub closed: AtomicU64,
    /// Server: dials of the target that failed.
    pub dial_failures: AtomicU64,
    /// TCP connections that failed mid-stream (reset, broken pipe).
    pub tcp_failures: AtomicU64,
}

impl std::fmt::Display for StreamCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "streams opened {}, closed {}, target dial failures {}, TCP failures {}",
            get(&self.opened),
            get(&self.closed),
            get(&self.dial_failures),
            get(&self.tcp_failures)
        )
    }
}

/// One stream's TCP side, as the session's task sees it.
struct Link {
    to_tcp: Option<mpsc::Sender<Vec<u8>>>,
    /// Bytes read from the stream that the TCP channel had no room for.
    waiting_for_tcp: Option<Vec<u8>>,
    /// Set while `waiting_for_tcp` waits: the stream task sends [`FromStream::Room`]
    /// when it takes the next chunk, so the session wakes instead of polling.
    blocked: Arc<AtomicBool>,
    credit: Arc<Semaphore>,
    pool: ChunkPool,
    /// Tells the stream task to drop its TCP connection at once.
    stop: Arc<Notify>,
    /// Bytes from TCP the stream has not taken yet, and how much of the front is taken.
    from_tcp: VecDeque<Vec<u8>>,
    from_tcp_at: usize,
    /// TCP sent FIN: the stream's direction ends once `from_tcp` is empty.
    tcp_eof: bool,
    /// The stream task ended: nothing more can be delivered to TCP.
    tcp_gone: bool,
    /// The stream's end was read: TCP's write side is shut.
    stream_eof: bool,
    /// `finish` or `reset` was called for what TCP did.
    ended_towards_peer: bool,
    tcp_peer: Option<std::net::SocketAddr>,
}

/// A new stream the caller must start a task for.
pub struct NewStream {
    /// The smux stream id.
    pub sid: u32,
    /// Bytes from the tunnel for the TCP end.
    pub to_tcp: mpsc::Receiver<Vec<u8>>,
    /// Bytes the stream may still take from the TCP end.
    pub credit: Arc<Semaphore>,
    /// Wakes the stream's task to stop.
    pub stop: Arc<Notify>,
    /// Buffers for the stream's reads.
    pub pool: ChunkPool,
    /// Whether the session's stream is out of window.
    pub blocked: Arc<AtomicBool>,
}

/// The TCP sides of one session's streams: what moves between a stream of the
/// core's endpoint and the task that owns its TCP connection. Every protocol
/// decision (half-close, close-wait, reset) is the core's; this only carries bytes
/// and tells the core what TCP did.
pub struct Links {
    links: HashMap<u32, Link>,
    counters: Arc<StreamCounters>,
}

impl Links {
    /// Links counted in `counters`.
    pub fn new(counters: Arc<StreamCounters>) -> Links {
        Links { links: HashMap::new(), counters }
    }

    /// Streams linked.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether no stream is linked.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The TCP end of stream `sid`, once known.
    pub fn tcp_peer(&self, sid: u32) -> Option<std::net::SocketAddr> {
        self.links.get(&sid).and_then(|l| l.tcp_peer)
    }

    /// Registers stream `sid` and returns what its task needs. `tcp_peer` is its
    /// TCP end, if already known.
    pub fn add(&mut self, sid: u32, tcp_peer: Option<std::net::SocketAddr>) -> NewStream {
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let credit = Arc::new(Semaphore::new(CHUNKS_IN_FLIGHT * CHUNK));
        let stop = Arc::new(Notify::new());
        let pool = ChunkPool::default();
        let blocked = Arc::new(AtomicBool::new(false));
        self.links.insert(
            sid,
            Link {
                to_tcp: Some(tx),
                waiting_for_tcp: None,
                blocked: blocked.clone(),
                credit: credit.clone(),
                stop: stop.clone(),
                pool: pool.clone(),
                from_tcp: VecDeque::new(),
                from_tcp_at: 0,
                tcp_eof: false,
                tcp_gone: false,
                stream_eof: false,
                ended_towards_peer: false,
                tcp_peer,
            },
        );
        self.counters.opened.fetch_add(1, Ordering::Relaxed);
        NewStream { sid, to_tcp: rx, credit, stop, pool, blocked }
    }

    /// The core ended stream `sid`: its task stops. A stream whose both directions
    /// ended keeps its connection until the task has written everything to TCP;
    /// any other end drops the connection at once.
    pub fn closed(&mut self, sid: u32, why: StreamEnd) {
        let Some(link) = self.links.remove(&sid) else { return };
        // A stream task still waiting for credit learns the stream is gone.
        link.credit.close();
        if why != StreamEnd::Finished {
            link.stop.notify_one();
        }
        self.counters.closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Stops every stream's task at once (the session is gone).
    pub fn stop_all(&mut self) {
        for sid in self.links.keys().copied().collect::<Vec<_>>() {
            self.closed(sid, StreamEnd::SessionEnded);
        }
    }

    /// A message from stream `sid`'s task; the caller services the stream next.
    pub fn on_message(&mut self, sid: u32, msg: FromStream) {
        let Some(link) = self.links.get_mut(&sid) else { return };
        match msg {
            FromStream::Data(d) => link.from_tcp.push_back(d),
            FromStream::Eof => link.tcp_eof = true,
            FromStream::Failed => {
                if !link.tcp_gone {
                    self.counters.tcp_failures.fetch_add(1, Ordering::Relaxed);
                }
                // Nothing more moves on a broken connection.
                link.tcp_gone = true;
                link.from_tcp.clear();
                link.from_tcp_at = 0;
            }
            // Bytes already read from TCP still go out; then the stream ends.
            FromStream::Closed => link.tcp_gone = true,
            FromStream::Room => {}
            FromStream::Connected(peer) => link.tcp_peer = Some(peer),
        }
        if link.tcp_gone {
            link.to_tcp = None;
            link.waiting_for_tcp = None;
        }
    }

    /// Moves stream `sid`'s bytes between `ep` and its task as far as they go, and
    /// tells `ep` when TCP's direction has ended.
    pub fn service<A: Clone + Eq + std::hash::Hash>(
        &mut self,
        ep: &mut Endpoint<A>,
        now: u32,
        id: SessionId,
        sid: u32,
    ) {
        let Some(link) = self.links.get_mut(&sid) else { return };
        // Stream → TCP.
        loop {
            if let Some(data) = link.waiting_for_tcp.take() {
                if let Some(to_tcp) = &link.to_tcp {
                    let sent = match to_tcp.try_send(data) {
                        Err(mpsc::error::TrySendError::Full(data)) => {
                            // Ask for a wake-up, then try again: a chunk taken before
                            // the flag was set made room this attempt sees.
                            link.blocked.store(true, Ordering::SeqCst);
                            to_tcp.try_send(data)
                        }
                        sent => sent,
                    };
                    // A closed channel drops the chunk: the stream task has ended.
                    if let Err(mpsc::error::TrySendError::Full(data)) = sent {
                        link.waiting_for_tcp = Some(data);
                        break;
                    }
                }
            }
            if link.stream_eof || link.tcp_gone {
                break;
            }
            // Only as much buffer as there are bytes: an idle stream touches none
            // (the one-byte read still reports the end of the stream or an error).
            let ready = ep.readable_bytes(id, sid).min(CHUNK);
            let read = if ready == 0 {
                ep.read(now, id, sid, &mut [0u8; 1])
            } else {
                let mut buf = link.pool.take();
                buf.resize(ready, 0);
                let read = ep.read(now, id, sid, &mut buf);
                if let Ok(Read::Data(n)) = read {
                    buf.truncate(n);
                    link.waiting_for_tcp = Some(buf);
                } else {
                    link.pool.give(buf);
                }
                read
            };
            match read {
                Ok(Read::Data(_)) => {}
                Ok(Read::WouldBlock) => break,
                Ok(Read::Eof) | Err(_) => {
                    link.stream_eof = true;
                    link.to_tcp = None; // the stream task shuts TCP's write side
                    break;
                }
            }
        }
        // TCP → stream.
        while let Some(front) = link.from_tcp.front() {
            let Ok(n) = ep.write(id, sid, &front[link.from_tcp_at..]) else { break };
            if n == 0 {
                break;
            }
            link.credit.add_permits(n);
            link.from_tcp_at += n;
            if link.from_tcp_at == front.len() {
                link.pool.give(link.from_tcp.pop_front().expect("the front"));
                link.from_tcp_at = 0;
            }
        }
        if (link.tcp_eof || link.tcp_gone) && link.from_tcp.is_empty() && !link.ended_towards_peer {
            link.ended_towards_peer = true;
            if link.tcp_gone {
                // Nothing can reach TCP any more: end both directions.
                let _ = ep.reset(id, sid);
            } else {
                let _ = ep.finish(now, id, sid);
            }
        }
    }
}

/// Reads what TCP has, up to a chunk, into a buffer from `pool`: straight into it
/// when it is chunk-sized (a busy stream's buffers are), else through the stack and
/// into a buffer just large enough.
fn read_chunk(rd: &ConnRead, pool: &ChunkPool) -> std::io::Result<Vec<u8>> {
    let mut buf = pool.take();
    buf.clear();
    let read = if buf.capacity() >= CHUNK {
        buf.resize(CHUNK, 0);
        rd.try_read(&mut buf).map(|n| buf.truncate(n))
    } else {
        let mut stack = [0u8; CHUNK];
        rd.try_read(&mut stack).map(|n| buf.extend_from_slice(&stack[..n]))
    };
    match read {
        Ok(()) => Ok(buf),
        Err(e) => {
            pool.give(buf);
            Err(e)
        }
    }
}

/// Bridges one local connection (TCP or unix socket) and one stream until both
/// directions end.
pub async fn run_stream<K: Clone + Send + 'static>(
    conn: Conn,
    key: K,
    stream: NewStream,
    to_session: mpsc::Sender<(K, u32, FromStream)>,
) {
    let NewStream { sid, mut to_tcp, credit, stop, pool, blocked } = stream;
    let (rd, mut wr) = conn.into_split();
    let up = {
        let (key, to_session, pool) = (key.clone(), to_session.clone(), pool.clone());
        async move {
            loop {
                let Ok(permit) = credit.acquire_many(CHUNK as u32).await else { return };
                permit.forget();
                // No buffer is held while waiting: an idle connection costs none.
                let read = loop {
                    if let Err(e) = rd.readable().await {
                        break Err(e);
                    }
                    match read_chunk(&rd, &pool) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        other => break other,
                    }
                };
                let failed = read.is_err();
                let buf = read.ok().filter(|b| !b.is_empty());
                credit.add_permits(CHUNK - buf.as_ref().map_or(0, Vec::len));
                let Some(buf) = buf else {
                    let end = if failed { FromStream::Failed } else { FromStream::Eof };
                    let _ = to_session.send((key, sid, end)).await;
                    return;
                };
                if to_session.send((key.clone(), sid, FromStream::Data(buf))).await.is_err() {
                    return;
                }
            }
        }
    };
    let down = {
        let (key, to_session) = (key.clone(), to_session.clone());
        async move {
            while let Some(data) = to_tcp.recv().await {
                if blocked.swap(false, Ordering::SeqCst)
                    && to_session.send((key.clone(), sid, FromStream::Room)).await.is_err()
                {
                    return;
                }
                if wr.write_all(&data).await.is_err() {
                    let _ = to_session.send((key, sid, FromStream::Failed)).await;
                    return;
                }
                pool.give(data);
            }
            let _ = wr.shutdown().await;
        }
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        () = stop.notified() => {} // dropping the connection closes it
    }
    let _ = to_session.send((key, sid, FromStream::Closed)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Role as Side, Settings};
    use crate::runtime::{random_seed, Plan};
    use kcpgate_core::{Event, Role, StreamEvent};
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    /// One side: the core's endpoint and the TCP sides of its streams.
    struct End {
        ep: Endpoint<u8>,
        links: Links,
        session: Option<SessionId>,
        out: Vec<u8>,
    }

    impl End {
        fn new(plan: &Plan, role: Role) -> End {
            let tuning = plan.tuning();
            let ep =
                Endpoint::new(role, tuning.endpoint.clone(), tuning.crypto.clone(), random_seed()).expect("config");
            End { ep, links: Links::new(plan.shared.streams.clone()), session: None, out: Vec::new() }
        }

        /// Runs due timers, acts on events and hands every datagram to `peer`;
        /// returns the streams the peer opened.
        fn step(&mut self, now: u32, peer: &mut End, peer_addr: u8, own_addr: u8) -> Vec<NewStream> {
            self.ep.handle_timeout(now);
            let mut new = Vec::new();
            while let Some(event) = self.ep.poll_event() {
                match event {
                    Event::SessionOpened { id, .. } => self.session = Some(id),
                    Event::Stream { id, event } => match event {
                        StreamEvent::Opened(sid) => new.push(self.links.add(sid, None)),
                        StreamEvent::Readable(sid) | StreamEvent::Writable(sid) => {
                            self.links.service(&mut self.ep, now, id, sid)
                        }
                        StreamEvent::Closed(sid, why) => self.links.closed(sid, why),
                    },
                    Event::SessionClosed { .. } => panic!("the session ended"),
                    Event::Unproven { .. } => panic!("the client proves its address at once"),
                    Event::SessionMoved { .. } => panic!("address changes are off"),
                }
            }
            while let Some(t) = self.ep.poll_transmit(now, 16, &mut self.out) {
                assert_eq!(t.destination, peer_addr);
                for d in self.out[..t.size].chunks(t.segment_size.unwrap_or(t.size)) {
                    peer.ep.handle_datagram(now, &own_addr, &mut d.to_vec());
                }
            }
            new
        }
    }

    /// A backend that starts reading late fills the stream's channel towards TCP.
    /// The session is then not polled: the stream task wakes it when it takes a
    /// chunk, and every byte arrives in order.
    #[tokio::test]
    async fn a_stream_blocked_towards_tcp_wakes_its_session_when_tcp_takes_a_chunk() {
        let args = ["-key", "k", "-crypt", "aes", "-mode", "fast3", "-nocomp", "-sndwnd", "1024", "-rcvwnd", "1024"];
        let plan = Plan::alone(Settings::parse(Side::Server, args.map(String::from)).expect("valid flags"))
            .expect("valid settings");
        let (mut client, mut server) = (End::new(&plan, Role::Client), End::new(&plan, Role::Server));
        let session = client.ep.connect(0, 2).expect("a session");
        let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let sid = client.ep.open_stream(0, session).expect("a stream");
        let _client_side = client.links.add(sid, None);
        for chunk in payload.chunks(CHUNK) {
            client.links.on_message(sid, FromStream::Data(chunk.to_vec()));
        }
        client.links.service(&mut client.ep, 0, session, sid);

        // Small kernel buffers, so that what the backend does not read stays with us.
        let backend = tokio::net::TcpSocket::new_v4().expect("socket");
        backend.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        backend.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
        let backend = backend.listen(1).expect("listen");
        let backend_addr = backend.local_addr().expect("address");
        let (to_session, mut from_streams) = mpsc::channel::<(SessionId, u32, FromStream)>(64);
        let mut received: Option<tokio::task::JoinHandle<Vec<u8>>> = None;
        let mut now = 0u32;
        let mut wake_ups = 0;
        loop {
            now += 10;
            client.step(now, &mut server, 2, 1);
            for stream in server.step(now, &mut client, 1, 2) {
                let tcp = tokio::net::TcpSocket::new_v4().expect("socket");
                tcp.set_send_buffer_size(4096).expect("SO_SNDBUF");
                let tcp = tcp.connect(backend_addr).await.expect("connect");
                let (mut accepted, _) = backend.accept().await.expect("accept");
                let expected = payload.len();
                received = Some(tokio::spawn(async move {
                    // Late: the stream's channel and smux's buffer fill meanwhile.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let mut got = Vec::with_capacity(expected);
                    while got.len() < expected {
                        let mut buf = vec![0u8; 4096];
                        let n = accepted.read(&mut buf).await.expect("read");
                        assert!(n > 0, "the backend connection ended early");
                        got.extend_from_slice(&buf[..n]);
                    }
                    got
                }));
                let id = server.session.expect("the session opened first");
                tokio::spawn(run_stream(Conn::Tcp(tcp), id, stream, to_session.clone()));
            }
            let blocked = server.links.links.values().any(|l| l.waiting_for_tcp.is_some());
            if blocked {
                // Nothing else would service the session in time: only the stream
                // task's message can.
                let woken = tokio::time::timeout(Duration::from_secs(5), from_streams.recv()).await;
                let Ok(Some((id, sid, msg))) = woken else {
                    panic!("a stream blocked towards TCP never woke its session")
                };
                assert!(matches!(msg, FromStream::Room), "unexpected {msg:?}");
                server.links.on_message(sid, msg);
                server.links.service(&mut server.ep, now, id, sid);
                wake_ups += 1;
            }
            if received.as_ref().is_some_and(|r| r.is_finished()) {
                break;
            }
            tokio::task::yield_now().await;
        }
        let got = received.expect("the server accepted the stream").await.expect("the backend reader");
        assert!(got == payload, "the backend received other bytes than the client sent");
        assert!(wake_ups > 0, "the stream never blocked: the test proves nothing");
    }
}
