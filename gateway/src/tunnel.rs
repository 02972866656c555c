//! One KCP session's streams, bridged to TCP connections.
//!
//! The session task owns the sans-IO [`StreamStack`]; every stream has a task of its
//! own that owns the TCP connection. They talk through bounded channels, so a slow
//! side holds a bounded amount of memory: towards TCP, a stream's channel holds a
//! few chunks and smux keeps the rest inside its receive budget; from TCP, a stream
//! task reads only while it holds credit, which the session returns as smux takes
//! the bytes.
//!
//! When one direction of a connection ends, the end it was flowing to is
//! half-closed at once (FIN), so nothing in flight is lost; with `-closewait N`,
//! a connection still half-open N seconds later is closed fully. A connection that
//! fails (reset, refused) closes its stream at once and is counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use foldhash::{HashMap, HashMapExt};
use kcpgate_core::kcp::{diff, earliest};
use kcpgate_core::pipeline::Connection;
use kcpgate_core::smux::{Event, Read};
use kcpgate_core::stack::{StackError, StreamStack};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::control::{self, Registry, SessionMeta, StreamInfo};

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

/// Milliseconds since `start`.
pub fn elapsed_ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Milliseconds since `start`, wrapping, as the core counts time.
pub fn now_ms(start: Instant) -> u32 {
    elapsed_ms(start) as u32
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
    pub opened: AtomicU64,
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

struct Link {
    to_tcp: Option<mpsc::Sender<Vec<u8>>>,
    /// Bytes read from smux that the TCP channel had no room for.
    waiting_for_tcp: Option<Vec<u8>>,
    /// Set while `waiting_for_tcp` waits: the stream task sends [`FromStream::Room`]
    /// when it takes the next chunk, so the session wakes instead of polling.
    blocked: Arc<AtomicBool>,
    credit: Arc<Semaphore>,
    pool: ChunkPool,
    /// Tells the stream task to drop its TCP connection at once.
    stop: Arc<Notify>,
    /// Bytes from TCP smux has not taken yet, and how much of the front is taken.
    from_tcp: VecDeque<Vec<u8>>,
    from_tcp_at: usize,
    tcp_eof: bool,
    /// The stream task ended: nothing more can be delivered to TCP.
    tcp_gone: bool,
    /// The TCP connection failed: close without waiting.
    failed: bool,
    stream_eof: bool,
    fin_sent: bool,
    /// When a half-open connection is closed fully (`-closewait` after the first
    /// direction ended).
    close_by: Option<u32>,
    /// For the admin API: when the stream opened (ms, the session's clock), its TCP
    /// end, and the bytes moved each way.
    opened: u32,
    tcp_peer: Option<std::net::SocketAddr>,
    bytes_to_tcp: u64,
    bytes_from_tcp: u64,
}

/// A new stream the caller must start a task for.
pub struct NewStream {
    pub sid: u32,
    pub to_tcp: mpsc::Receiver<Vec<u8>>,
    pub credit: Arc<Semaphore>,
    pub stop: Arc<Notify>,
    pub pool: ChunkPool,
    pub blocked: Arc<AtomicBool>,
}

/// The streams of one session.
pub struct Tunnel {
    pub stack: StreamStack,
    pub meta: SessionMeta,
    links: HashMap<u32, Link>,
    close_wait_ms: u32,
    counters: Arc<StreamCounters>,
    /// The sids of one `service` pass (kept to reuse its memory).
    sids: Vec<u32>,
}

impl Tunnel {
    /// `close_wait_ms`: how long a connection may stay half-open; 0 is unlimited.
    pub fn new(stack: StreamStack, close_wait_ms: u32, counters: Arc<StreamCounters>, meta: SessionMeta) -> Tunnel {
        Tunnel { stack, meta, links: HashMap::new(), close_wait_ms, counters, sids: Vec::new() }
    }

    /// The streams as the admin API shows them, at `now` (the session's clock).
    pub fn streams(&self, now: u32) -> Vec<StreamInfo> {
        let mut out: Vec<StreamInfo> = self
            .links
            .iter()
            .map(|(&id, l)| StreamInfo {
                id,
                tcp_peer: l.tcp_peer,
                bytes_to_tcp: l.bytes_to_tcp,
                bytes_from_tcp: l.bytes_from_tcp,
                age_ms: diff(now, l.opened).max(0) as u64,
            })
            .collect();
        out.sort_unstable_by_key(|s| s.id);
        out
    }

    pub fn stream_count(&self) -> usize {
        self.links.len()
    }

    /// Registers a stream (opened or accepted at `now`) and returns what its task
    /// needs. `tcp_peer` is its TCP end, if already known.
    pub fn add_stream(&mut self, sid: u32, now: u32, tcp_peer: Option<std::net::SocketAddr>) -> NewStream {
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
                failed: false,
                stream_eof: false,
                fin_sent: false,
                close_by: None,
                opened: now,
                tcp_peer,
                bytes_to_tcp: 0,
                bytes_from_tcp: 0,
            },
        );
        self.counters.opened.fetch_add(1, Ordering::Relaxed);
        NewStream { sid, to_tcp: rx, credit, stop, pool, blocked }
    }

    /// Ends every stream's task at once, dropping its TCP connection: the session is
    /// gone, so nothing more can move.
    pub fn stop_streams(&mut self) {
        for (_, link) in self.links.drain() {
            link.credit.close();
            link.stop.notify_one();
            self.counters.closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Closes every stream: FIN to the peer (its applications see their connections
    /// end), then [`Tunnel::stop_streams`]. The frames are flushed into `conn`'s
    /// transmits; the caller sends them.
    pub fn close_all(&mut self, now: u32, conn: &mut Connection) {
        for &sid in self.links.keys() {
            let _ = self.stack.stream_close(sid);
        }
        self.stop_streams();
        let _ = self.stack.pump(now, conn);
        conn.flush(now);
    }

    /// The session is gone: its stream tasks stop, and event subscribers hear why.
    pub fn end(mut self, registry: &Registry, remote: std::net::SocketAddr, conv: u32, reason: String) {
        self.stop_streams();
        registry.closed(control::Event::SessionClosed { id: self.meta.id, conv, remote, reason });
    }

    /// A message from stream `sid`'s task.
    pub fn on_message(&mut self, sid: u32, msg: FromStream) {
        let Some(link) = self.links.get_mut(&sid) else { return };
        match msg {
            FromStream::Data(d) => link.from_tcp.push_back(d),
            FromStream::Eof => link.tcp_eof = true,
            FromStream::Failed => {
                if !link.failed {
                    self.counters.tcp_failures.fetch_add(1, Ordering::Relaxed);
                }
                link.failed = true;
                link.tcp_eof = true;
            }
            // Bytes already read from TCP still go out; then the stream closes.
            FromStream::Closed => {
                link.tcp_gone = true;
                link.tcp_eof = true;
                link.to_tcp = None;
                link.waiting_for_tcp = None;
            }
            FromStream::Room => {} // the caller services the session
            FromStream::Connected(peer) => link.tcp_peer = Some(peer),
        }
    }

    /// Moves data between the connection, smux and the stream tasks as far as it
    /// goes. Returns streams the peer opened (for the caller to start tasks for).
    pub fn service(&mut self, now: u32, conn: &mut Connection) -> Result<Vec<NewStream>, StackError> {
        self.stack.pump(now, conn)?;
        let mut new = Vec::new();
        while let Some(sid) = self.stack.accept() {
            new.push(self.add_stream(sid, now, None));
        }
        while let Some(e) = self.stack.poll_event() {
            let (Event::Readable(_) | Event::Writable(_)) = e;
        }
        let mut sids = std::mem::take(&mut self.sids);
        sids.clear();
        sids.extend(self.links.keys().copied());
        for &sid in &sids {
            self.service_stream(sid, now);
        }
        self.sids = sids;
        self.stack.pump(now, conn)?;
        Ok(new)
    }

    fn service_stream(&mut self, sid: u32, now: u32) {
        let close_wait = self.close_wait_ms;
        let Some(link) = self.links.get_mut(&sid) else { return };
        // smux → TCP.
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
            if link.stream_eof || link.tcp_gone || link.failed {
                break;
            }
            // Only as much buffer as there are bytes: an idle stream touches none
            // (the one-byte read still reports the end of the stream or an error).
            let ready = self.stack.mux().stream_readable(sid).min(CHUNK);
            let read = if ready == 0 {
                self.stack.stream_read(sid, &mut [0u8; 1])
            } else {
                let mut buf = link.pool.take();
                buf.resize(ready, 0);
                let read = self.stack.stream_read(sid, &mut buf);
                if let Ok(Read::Data(n)) = read {
                    link.bytes_to_tcp += n as u64;
                    buf.truncate(n);
                    link.waiting_for_tcp = Some(buf);
                } else {
                    link.pool.give(buf);
                }
                read
            };
            match read {
                Ok(Read::Data(_)) => {}
                Ok(Read::Eof) => {
                    link.stream_eof = true;
                    link.to_tcp = None; // the stream task shuts TCP's write side
                }
                Ok(Read::WouldBlock) => break,
                Err(_) => {
                    link.stream_eof = true;
                    link.to_tcp = None;
                    break;
                }
            }
        }
        // TCP → smux.
        while let Some(front) = link.from_tcp.front() {
            let Ok(n) = self.stack.stream_write(sid, &front[link.from_tcp_at..]) else { break };
            if n == 0 {
                break;
            }
            link.credit.add_permits(n);
            link.bytes_from_tcp += n as u64;
            link.from_tcp_at += n;
            if link.from_tcp_at == front.len() {
                link.pool.give(link.from_tcp.pop_front().expect("the front"));
                link.from_tcp_at = 0;
            }
        }
        let timed_out = link.close_by.is_some_and(|t| diff(now, t) >= 0);
        if link.failed || timed_out {
            // Nothing more moves on a broken or timed-out connection: drop what is
            // queued and close both ends.
            link.from_tcp.clear();
            link.from_tcp_at = 0;
            link.waiting_for_tcp = None;
            link.to_tcp = None;
            link.tcp_eof = true;
            link.failed = true;
            link.stop.notify_one();
        }
        if link.tcp_eof && link.from_tcp.is_empty() && !link.fin_sent {
            link.fin_sent = true;
            let _ = self.stack.stream_close_write(sid);
        }
        if close_wait > 0 && link.close_by.is_none() && (link.fin_sent || link.stream_eof) {
            link.close_by = Some(now.wrapping_add(close_wait));
        }
        if link.fin_sent && (link.stream_eof || link.tcp_gone || link.failed) && link.waiting_for_tcp.is_none() {
            // A stream task still waiting for credit learns the stream is gone.
            link.credit.close();
            self.links.remove(&sid);
            self.counters.closed.fetch_add(1, Ordering::Relaxed);
            let _ = self.stack.stream_close(sid);
        }
    }

    /// Runs the connection's timer if it is due, and smux's keep-alive; the caller
    /// services the session afterwards.
    pub fn run_timers(&mut self, now: u32, conn: &mut Connection) {
        if conn.poll_timeout().is_some_and(|d| diff(now, d) >= 0) {
            conn.handle_timeout(now);
        }
        let _ = self.stack.handle_timeout(now);
    }

    /// When this session needs attention next: its own timers and when a stream's
    /// `-closewait` runs out. (A stream waiting for room towards TCP is woken by
    /// [`FromStream::Room`].)
    pub fn deadline(&self, conn: &Connection) -> Option<u32> {
        let streams = self.links.values().map(|l| l.close_by);
        [conn.poll_timeout(), self.stack.poll_timeout()].into_iter().chain(streams).flatten().reduce(earliest)
    }

    /// Milliseconds until [`Tunnel::deadline`] (0 when it has passed).
    pub fn wait_ms(&self, conn: &Connection, now: u32) -> Option<u64> {
        self.deadline(conn).map(|due| diff(due, now).max(0) as u64)
    }
}

/// Reads what TCP has, up to a chunk, into a buffer from `pool`: straight into it
/// when it is chunk-sized (a busy stream's buffers are), else through the stack and
/// into a buffer just large enough.
fn read_chunk(rd: &tokio::net::tcp::OwnedReadHalf, pool: &ChunkPool) -> std::io::Result<Vec<u8>> {
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

/// Bridges one TCP connection and one stream until both directions end.
pub async fn run_stream<K: Clone + Send + 'static>(
    tcp: TcpStream,
    key: K,
    stream: NewStream,
    to_session: mpsc::Sender<(K, u32, FromStream)>,
) {
    let NewStream { sid, mut to_tcp, credit, stop, pool, blocked } = stream;
    let _ = tcp.set_nodelay(true);
    let (rd, mut wr) = tcp.into_split();
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
    use crate::runtime::Plan;
    use kcpgate_core::smux::Role;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    struct End {
        conn: Connection,
        tunnel: Tunnel,
    }

    impl End {
        fn new(plan: &Plan, role: Role, seed: u8) -> End {
            let tuning = plan.tuning();
            let conn = Connection::new(7, &tuning.session, plan.crypto.clone(), [seed; 32]).expect("valid config");
            End { conn, tunnel: plan.tunnel(role, 0, &tuning) }
        }

        /// Runs due timers, services the streams and hands every datagram to `peer`.
        fn step(&mut self, now: u32, peer: &mut End) -> Vec<NewStream> {
            if self.tunnel.deadline(&self.conn).is_some_and(|d| diff(now, d) >= 0) {
                self.tunnel.run_timers(now, &mut self.conn);
            }
            let new = self.tunnel.service(now, &mut self.conn).expect("the stack works");
            for datagram in self.conn.transmits() {
                peer.conn.handle_datagram(now, &mut datagram.to_vec()).expect("a datagram of the peer");
            }
            self.conn.clear_transmits();
            new
        }
    }

    /// A backend that starts reading late fills the stream's channel towards TCP.
    /// The session is then not polled: the stream task wakes it when it takes a
    /// chunk, and every byte arrives in order.
    #[tokio::test]
    async fn a_stream_blocked_towards_tcp_wakes_its_session_when_tcp_takes_a_chunk() {
        let args = ["-key", "k", "-crypt", "aes", "-mode", "fast3", "-nocomp", "-sndwnd", "1024", "-rcvwnd", "1024"];
        let plan = Plan::new(Settings::parse(Side::Server, args.map(String::from)).expect("valid flags"));
        let (mut client, mut server) = (End::new(&plan, Role::Client, 1), End::new(&plan, Role::Server, 2));
        let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let sid = client.tunnel.stack.open_stream().expect("a stream");
        let _client_side = client.tunnel.add_stream(sid, 0, None);
        for chunk in payload.chunks(CHUNK) {
            client.tunnel.on_message(sid, FromStream::Data(chunk.to_vec()));
        }

        // Small kernel buffers, so that what the backend does not read stays with us.
        let backend = tokio::net::TcpSocket::new_v4().expect("socket");
        backend.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        backend.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
        let backend = backend.listen(1).expect("listen");
        let backend_addr = backend.local_addr().expect("address");
        let (to_session, mut from_streams) = mpsc::channel::<((), u32, FromStream)>(64);
        let mut received: Option<tokio::task::JoinHandle<Vec<u8>>> = None;
        let mut now = 0u32;
        let mut wake_ups = 0;
        loop {
            now += 10;
            client.step(now, &mut server);
            for stream in server.step(now, &mut client) {
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
                tokio::spawn(run_stream(tcp, (), stream, to_session.clone()));
            }
            let blocked = server.tunnel.links.values().any(|l| l.waiting_for_tcp.is_some());
            if blocked {
                // Nothing else would service the session in time: only the stream
                // task's message can.
                let woken = tokio::time::timeout(Duration::from_secs(5), from_streams.recv()).await;
                let Ok(Some(((), sid, msg))) = woken else {
                    panic!("a stream blocked towards TCP never woke its session")
                };
                assert!(matches!(msg, FromStream::Room), "unexpected {msg:?}");
                server.tunnel.on_message(sid, msg);
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
