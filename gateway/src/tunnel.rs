//! One KCP session's streams, bridged to TCP connections.
//!
//! The session task owns the sans-IO [`StreamStack`]; every stream has a task of its
//! own that owns the TCP connection. They talk through bounded channels, so a slow
//! side holds a bounded amount of memory: towards TCP, a stream's channel holds a
//! few chunks and smux keeps the rest inside its receive budget; from TCP, a stream
//! task reads only while it holds credit, which the session returns as smux takes
//! the bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use kcpgate_core::pipeline::Connection;
use kcpgate_core::smux::{Event, Read};
use kcpgate_core::stack::{StackError, StreamStack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

/// Bytes read from TCP (or smux) per step.
pub const CHUNK: usize = 16 * 1024;
/// Chunks a stream may have in flight in each direction.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Milliseconds since `start`, wrapping, as the core counts time.
pub fn now_ms(start: Instant) -> u32 {
    start.elapsed().as_millis() as u32
}

/// What a stream task tells its session.
#[derive(Debug)]
pub enum FromStream {
    /// Bytes from TCP for the stream.
    Data(Vec<u8>),
    /// TCP sent FIN.
    Eof,
    /// The TCP side is gone (dial failed, reset, or both directions done).
    Closed,
}

struct Link {
    to_tcp: Option<mpsc::Sender<Vec<u8>>>,
    /// Bytes read from smux that the TCP channel had no room for.
    waiting_for_tcp: Option<Vec<u8>>,
    credit: Arc<Semaphore>,
    /// Bytes from TCP smux has not taken yet, and how much of the front is taken.
    from_tcp: VecDeque<Vec<u8>>,
    from_tcp_at: usize,
    tcp_eof: bool,
    /// The stream task ended: nothing more can be delivered to TCP.
    tcp_gone: bool,
    stream_eof: bool,
    fin_sent: bool,
}

/// A new stream the caller must start a task for.
pub struct NewStream {
    pub sid: u32,
    pub to_tcp: mpsc::Receiver<Vec<u8>>,
    pub credit: Arc<Semaphore>,
}

/// The streams of one session.
pub struct Tunnel {
    pub stack: StreamStack,
    links: HashMap<u32, Link>,
}

impl Tunnel {
    pub fn new(stack: StreamStack) -> Tunnel {
        Tunnel { stack, links: HashMap::new() }
    }

    pub fn stream_count(&self) -> usize {
        self.links.len()
    }

    /// Registers a stream (opened or accepted) and returns what its task needs.
    pub fn add_stream(&mut self, sid: u32) -> NewStream {
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let credit = Arc::new(Semaphore::new(CHUNKS_IN_FLIGHT * CHUNK));
        self.links.insert(
            sid,
            Link {
                to_tcp: Some(tx),
                waiting_for_tcp: None,
                credit: credit.clone(),
                from_tcp: VecDeque::new(),
                from_tcp_at: 0,
                tcp_eof: false,
                tcp_gone: false,
                stream_eof: false,
                fin_sent: false,
            },
        );
        NewStream { sid, to_tcp: rx, credit }
    }

    /// A message from stream `sid`'s task.
    pub fn on_message(&mut self, sid: u32, msg: FromStream) {
        let Some(link) = self.links.get_mut(&sid) else { return };
        match msg {
            FromStream::Data(d) => link.from_tcp.push_back(d),
            FromStream::Eof => link.tcp_eof = true,
            // Bytes already read from TCP still go out; then the stream closes.
            FromStream::Closed => {
                link.tcp_gone = true;
                link.tcp_eof = true;
                link.to_tcp = None;
                link.waiting_for_tcp = None;
            }
        }
    }

    /// Whether some stream waits for room in its TCP channel (the caller retries soon).
    fn waiting(&self) -> bool {
        self.links.values().any(|l| l.waiting_for_tcp.is_some())
    }

    /// Moves data between the connection, smux and the stream tasks as far as it
    /// goes. Returns streams the peer opened (for the caller to start tasks for).
    pub fn service(&mut self, now: u32, conn: &mut Connection) -> Result<Vec<NewStream>, StackError> {
        self.stack.pump(now, conn)?;
        let mut new = Vec::new();
        while let Some(sid) = self.stack.accept() {
            new.push(self.add_stream(sid));
        }
        while let Some(e) = self.stack.poll_event() {
            let (Event::Readable(_) | Event::Writable(_)) = e;
        }
        let sids: Vec<u32> = self.links.keys().copied().collect();
        for sid in sids {
            self.service_stream(sid);
        }
        self.stack.pump(now, conn)?;
        Ok(new)
    }

    fn service_stream(&mut self, sid: u32) {
        let Some(link) = self.links.get_mut(&sid) else { return };
        // smux → TCP.
        loop {
            if let Some(data) = link.waiting_for_tcp.take() {
                match link.to_tcp.as_ref().map(|t| t.try_send(data)) {
                    Some(Err(mpsc::error::TrySendError::Full(d))) => {
                        link.waiting_for_tcp = Some(d);
                        break;
                    }
                    Some(Err(mpsc::error::TrySendError::Closed(_))) | None => {}
                    Some(Ok(())) => {}
                }
            }
            if link.stream_eof || link.tcp_gone {
                break;
            }
            let mut buf = vec![0u8; CHUNK];
            match self.stack.stream_read(sid, &mut buf) {
                Ok(Read::Data(n)) => {
                    buf.truncate(n);
                    link.waiting_for_tcp = Some(buf);
                }
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
            link.from_tcp_at += n;
            if link.from_tcp_at == front.len() {
                link.from_tcp.pop_front();
                link.from_tcp_at = 0;
            }
        }
        if link.tcp_eof && link.from_tcp.is_empty() && !link.fin_sent {
            link.fin_sent = true;
            let _ = self.stack.stream_close_write(sid);
        }
        if link.fin_sent && (link.stream_eof || link.tcp_gone) && link.waiting_for_tcp.is_none() {
            self.links.remove(&sid);
            let _ = self.stack.stream_close(sid);
        }
    }

    /// Runs the connection's timer if it is due, and smux's keep-alive; the caller
    /// services the session afterwards.
    pub fn run_timers(&mut self, now: u32, conn: &mut Connection) {
        if conn.poll_timeout().is_some_and(|d| kcpgate_core::kcp::diff(now, d) >= 0) {
            conn.handle_timeout(now);
        }
        let _ = self.stack.handle_timeout(now);
    }

    /// When this session needs attention next: its own timers, and soon if a stream
    /// waits for room towards TCP.
    pub fn deadline(&self, conn: &Connection, now: u32) -> Option<u32> {
        let wait = self.waiting().then_some(now.wrapping_add(5));
        [conn.poll_timeout(), self.stack.poll_timeout(), wait].into_iter().flatten().reduce(|a, b| {
            if kcpgate_core::kcp::diff(a, b) <= 0 {
                a
            } else {
                b
            }
        })
    }
}

/// Bridges one TCP connection and one stream until both directions end.
pub async fn run_stream<K: Clone + Send + 'static>(
    tcp: TcpStream,
    key: K,
    stream: NewStream,
    to_session: mpsc::Sender<(K, u32, FromStream)>,
) {
    let NewStream { sid, mut to_tcp, credit } = stream;
    let _ = tcp.set_nodelay(true);
    let (mut rd, mut wr) = tcp.into_split();
    let up = {
        let (key, to_session) = (key.clone(), to_session.clone());
        async move {
            loop {
                let Ok(permit) = credit.acquire_many(CHUNK as u32).await else { return };
                permit.forget();
                let mut buf = vec![0u8; CHUNK];
                let n = rd.read(&mut buf).await.unwrap_or(0);
                credit.add_permits(CHUNK - n);
                if n == 0 {
                    let _ = to_session.send((key, sid, FromStream::Eof)).await;
                    return;
                }
                buf.truncate(n);
                if to_session.send((key.clone(), sid, FromStream::Data(buf))).await.is_err() {
                    return;
                }
            }
        }
    };
    let down = async move {
        while let Some(data) = to_tcp.recv().await {
            if wr.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    tokio::join!(up, down);
    let _ = to_session.send((key, sid, FromStream::Closed)).await;
}
