//! How the admin API talks to the data path.
//!
//! Every task that owns sessions (a server socket, a client session) registers an
//! [`Inbox`]. A reader sends it a [`Query`]; the task answers at its next turn, from
//! its own state, so no lock is taken on the data path and nothing runs while nobody
//! asks. Session openings and closings go out as [`SessionEvent`]s on a broadcast channel,
//! which costs nothing without subscribers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcpgate_core::{
    ms_since, Framing, ListenerStats, Session, SessionId, SessionSettings, SessionSnapshot, Snmp, StreamSnapshot,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use utoipa::ToSchema;

pub use crate::config::{Profile, Tunables};
use crate::transport::TransportKind;
use crate::tunnel::Links;

/// How long a reader waits for busy tasks to answer before it uses what it has.
const ANSWER_WAIT: Duration = Duration::from_millis(500);

/// Queries a task may have waiting.
const INBOX_DEPTH: usize = 64;

/// What a reader asks a task.
pub enum Query {
    /// The task's running SNMP totals (closed sessions included).
    Counters(oneshot::Sender<Snmp>),
    /// The task's counts of datagrams dropped before reaching a session, by reason.
    Dropped(oneshot::Sender<ListenerStats>),
    /// A view of every session the task owns.
    Sessions(oneshot::Sender<Vec<SessionInfo>>),
    /// Close a session if the task owns it; answers whether it did.
    Kick {
        /// The session's API id.
        id: u64,
        /// Why, for the closing event and the log.
        reason: String,
        /// Whether the task closed it.
        done: oneshot::Sender<bool>,
    },
    /// A view of a session, if the task owns it.
    Session {
        /// The session's API id.
        id: u64,
        /// The view, or none.
        done: oneshot::Sender<Option<SessionInfo>>,
    },
    /// Copy a session's next datagrams, if the task owns it.
    Capture {
        /// The session's API id.
        id: u64,
        /// Where the datagrams go.
        capture: Arc<Capture>,
        /// The session's view when the task owns it.
        done: oneshot::Sender<Option<SessionInfo>>,
    },
    /// The tunables changed: use them for sessions opened from now on.
    Retune(oneshot::Sender<()>),
}

/// What a [`Query`] asks, for the count of queries each task answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    /// [`Query::Counters`].
    Counters,
    /// [`Query::Dropped`].
    Dropped,
    /// [`Query::Sessions`].
    Sessions,
    /// [`Query::Kick`].
    Kick,
    /// [`Query::Session`].
    Session,
    /// [`Query::Capture`].
    Capture,
    /// [`Query::Retune`].
    Retune,
}

impl QueryKind {
    /// Every kind, in the order of [`Registry::queries_by_task`]'s counts.
    pub const ALL: [QueryKind; 7] = [
        QueryKind::Counters,
        QueryKind::Dropped,
        QueryKind::Sessions,
        QueryKind::Kick,
        QueryKind::Session,
        QueryKind::Capture,
        QueryKind::Retune,
    ];

    /// Its name in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            QueryKind::Counters => "counters",
            QueryKind::Dropped => "dropped",
            QueryKind::Sessions => "sessions",
            QueryKind::Kick => "kick",
            QueryKind::Session => "session",
            QueryKind::Capture => "capture",
            QueryKind::Retune => "retune",
        }
    }
}

impl Query {
    /// What it asks.
    pub fn kind(&self) -> QueryKind {
        match self {
            Query::Counters(_) => QueryKind::Counters,
            Query::Dropped(_) => QueryKind::Dropped,
            Query::Sessions(_) => QueryKind::Sessions,
            Query::Kick { .. } => QueryKind::Kick,
            Query::Session { .. } => QueryKind::Session,
            Query::Capture { .. } => QueryKind::Capture,
            Query::Retune(_) => QueryKind::Retune,
        }
    }
}

/// Queries a task took from its inbox, by [`QueryKind::ALL`] order (a task answers
/// every query it takes).
type Answered = Arc<[AtomicU64; QueryKind::ALL.len()]>;

/// A task's end of the query channel.
pub struct Inbox {
    slot: usize,
    queries: mpsc::Receiver<Query>,
    answered: Answered,
}

/// A session's id in the API and events: its id in its task's endpoint times
/// [`TASK_SPAN`], plus the number of the task that owns it, so a query about one
/// session goes to that task alone. In decimal the task is the last six digits:
/// session 42 of task 3 is 42000003.
pub fn session_id(task: usize, session: SessionId) -> u64 {
    session.0 * TASK_SPAN + task as u64
}

/// The task that owns session `id` and the session's id in that task's endpoint.
pub fn owner_of(id: u64) -> (usize, SessionId) {
    ((id % TASK_SPAN) as usize, SessionId(id / TASK_SPAN))
}

/// Tasks a process may start over its lifetime (task numbers are not reused, so
/// a session id never names a later task's session).
pub const TASK_SPAN: u64 = 1_000_000;

impl Inbox {
    /// The task's number, for its sessions' ids ([`session_id`]).
    pub fn task(&self) -> usize {
        self.slot
    }

    /// The next query, waiting for one.
    pub async fn recv(&mut self) -> Option<Query> {
        let query = self.queries.recv().await;
        self.count(query.as_ref());
        query
    }

    /// A query already waiting (a busy loop may not reach its `select!`).
    pub fn try_recv(&mut self) -> Option<Query> {
        let query = self.queries.try_recv().ok();
        self.count(query.as_ref());
        query
    }

    fn count(&self, query: Option<&Query>) {
        if let Some(q) = query {
            self.answered[q.kind() as usize].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A live task's transport, query channel and count of queries taken (None once
/// it ended).
type Task = Option<(TransportKind, mpsc::Sender<Query>, Answered)>;

/// Every task's query channel, the totals of tasks that ended, session ids and the
/// event channel.
pub struct Registry {
    tasks: Mutex<Vec<Task>>,
    /// Totals of the tasks that ended, per transport ([`TransportKind::ALL`] order).
    ended: Mutex<[Snmp; 2]>,
    /// Datagrams the ended tasks dropped.
    ended_dropped: Mutex<ListenerStats>,
    events: broadcast::Sender<SessionEvent>,
    open_sessions: AtomicU64,
    /// Sessions open now and opened so far, per transport ([`TransportKind::ALL`] order).
    open_by_transport: [AtomicU64; 2],
    opened_by_transport: [AtomicU64; 2],
    /// Datagrams that would have opened a session past `max_sessions`.
    refused_datagrams: AtomicU64,
    serving: AtomicBool,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            tasks: Mutex::default(),
            ended: Mutex::default(),
            ended_dropped: Mutex::default(),
            events: broadcast::channel(1024).0,
            open_sessions: AtomicU64::new(0),
            open_by_transport: Default::default(),
            opened_by_transport: Default::default(),
            refused_datagrams: AtomicU64::new(0),
            serving: AtomicBool::new(false),
        }
    }
}

impl Registry {
    /// An inbox for a new task whose sessions `kind` carries, with the next
    /// task number.
    pub fn register(&self, kind: TransportKind) -> Inbox {
        let (tx, queries) = mpsc::channel(INBOX_DEPTH);
        let answered = Answered::default();
        let mut tasks = self.tasks.lock().expect("registry lock");
        tasks.push(Some((kind, tx, answered.clone())));
        let slot = tasks.len() - 1;
        assert!((slot as u64) < TASK_SPAN, "a process starts fewer than {TASK_SPAN} tasks");
        Inbox { slot, queries, answered }
    }

    /// A task ends: its final totals stay in the process totals.
    pub fn retire(&self, inbox: Inbox, totals: Snmp, dropped: &ListenerStats) {
        let mut tasks = self.tasks.lock().expect("registry lock");
        let Some((kind, ..)) = tasks[inbox.slot].take() else { return };
        self.ended_dropped.lock().expect("registry lock").accumulate(dropped);
        let ended = &mut self.ended.lock().expect("registry lock")[kind as usize];
        merge(ended, &totals);
        ended.curr_estab = 0;
    }

    /// A session opened ([`SessionEvent::SessionOpened`]).
    pub fn opened(&self, event: SessionEvent) {
        self.open_sessions.fetch_add(1, Ordering::Relaxed);
        if let SessionEvent::SessionOpened { transport, .. } = &event {
            self.open_by_transport[*transport as usize].fetch_add(1, Ordering::Relaxed);
            self.opened_by_transport[*transport as usize].fetch_add(1, Ordering::Relaxed);
        }
        self.publish(event);
    }

    /// A session moved ([`SessionEvent::SessionMoved`]).
    pub fn moved(&self, event: SessionEvent) {
        self.publish(event);
    }

    /// A session closed ([`SessionEvent::SessionClosed`]).
    pub fn closed(&self, event: SessionEvent) {
        self.open_sessions.fetch_sub(1, Ordering::Relaxed);
        if let SessionEvent::SessionClosed { transport, .. } = &event {
            self.open_by_transport[*transport as usize].fetch_sub(1, Ordering::Relaxed);
        }
        self.publish(event);
    }

    /// Per transport: sessions open now, and opened since the start.
    pub fn sessions_by_transport(&self) -> impl Iterator<Item = (TransportKind, u64, u64)> + '_ {
        TransportKind::ALL.into_iter().map(|t| {
            let i = t as usize;
            (t, self.open_by_transport[i].load(Ordering::Relaxed), self.opened_by_transport[i].load(Ordering::Relaxed))
        })
    }

    /// Sessions open now, in every task.
    pub fn open_sessions(&self) -> u64 {
        self.open_sessions.load(Ordering::Relaxed)
    }

    /// Counts a datagram refused because `max_sessions` sessions were open.
    pub fn count_refused_datagram(&self) {
        self.refused_datagrams.fetch_add(1, Ordering::Relaxed);
    }

    /// Datagrams dropped because `max_sessions` sessions were open.
    pub fn refused_datagrams(&self) -> u64 {
        self.refused_datagrams.load(Ordering::Relaxed)
    }

    /// The data path is listening (for `/readyz`).
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }

    /// Whether the data path listens.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Announces a session change to event subscribers, if there are any.
    fn publish(&self, event: SessionEvent) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(event);
        }
    }

    /// A receiver of the session events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.subscribe()
    }

    /// Sends every task a query made by `make` and collects the answers that come
    /// within [`ANSWER_WAIT`], with the task's transport.
    async fn ask<T>(&self, make: impl Fn(oneshot::Sender<T>) -> Query) -> Vec<(TransportKind, T)> {
        let tasks: Vec<(TransportKind, mpsc::Sender<Query>)> =
            self.tasks.lock().expect("registry lock").iter().flatten().map(|(k, tx, _)| (*k, tx.clone())).collect();
        let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
        let mut pending = Vec::with_capacity(tasks.len());
        for (kind, task) in tasks {
            if let Some(rx) = post(&task, &make, deadline).await {
                pending.push((kind, rx));
            }
        }
        let mut answers = Vec::with_capacity(pending.len());
        for (kind, rx) in pending {
            if let Ok(Ok(answer)) = tokio::time::timeout_at(deadline, rx).await {
                answers.push((kind, answer));
            }
        }
        answers
    }

    /// The process totals, fresh from every task. `max_conn` is the largest
    /// per-task peak, a lower bound of the process-wide one.
    pub async fn counters(&self) -> Snmp {
        total(&self.counters_by_transport().await)
    }

    /// [`Registry::counters`] of each transport's tasks ([`TransportKind::ALL`] order).
    pub async fn counters_by_transport(&self) -> [Snmp; 2] {
        let live = self.ask(Query::Counters).await;
        let mut totals = *self.ended.lock().expect("registry lock");
        for (kind, s) in &live {
            merge(&mut totals[*kind as usize], s);
        }
        totals
    }

    /// Datagrams dropped before reaching a session, by reason, over every task.
    pub async fn dropped(&self) -> ListenerStats {
        let mut total = *self.ended_dropped.lock().expect("registry lock");
        for (_, d) in self.ask(Query::Dropped).await {
            total.accumulate(&d);
        }
        total
    }

    /// Every live session, in no particular order.
    pub async fn sessions(&self) -> Vec<SessionInfo> {
        self.ask(Query::Sessions).await.into_iter().flat_map(|(_, s)| s).collect()
    }

    /// Asks the task that owns session `id` alone; None when that task is gone or
    /// does not answer within [`ANSWER_WAIT`].
    async fn ask_owner<T>(&self, id: u64, make: impl FnOnce(oneshot::Sender<T>) -> Query) -> Option<T> {
        let (task, _) = owner_of(id);
        let inbox = self.tasks.lock().expect("registry lock").get(task).cloned().flatten()?.1;
        let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
        let rx = post(&inbox, make, deadline).await?;
        tokio::time::timeout_at(deadline, rx).await.ok()?.ok()
    }

    /// The view of session `id`, built by its task alone.
    pub async fn session(&self, id: u64) -> Option<SessionInfo> {
        self.ask_owner(id, |done| Query::Session { id, done }).await.flatten()
    }

    /// Closes session `id`; false if no task owns it.
    pub async fn kick(&self, id: u64, reason: &str) -> bool {
        let reason = reason.to_string();
        self.ask_owner(id, |done| Query::Kick { id, reason, done }).await.unwrap_or(false)
    }

    /// Starts copying session `id`'s datagrams into `capture`; the session's view,
    /// or None if no task owns it.
    pub async fn capture(&self, id: u64, capture: &Arc<Capture>) -> Option<SessionInfo> {
        self.ask_owner(id, |done| Query::Capture { id, capture: capture.clone(), done }).await.flatten()
    }

    /// Every live task's number and the queries it has answered, by
    /// [`QueryKind::ALL`] order.
    pub fn queries_by_task(&self) -> Vec<(usize, [u64; QueryKind::ALL.len()])> {
        let tasks = self.tasks.lock().expect("registry lock");
        let counts = |a: &Answered| std::array::from_fn(|i| a[i].load(Ordering::Relaxed));
        tasks.iter().enumerate().filter_map(|(n, t)| t.as_ref().map(|(_, _, a)| (n, counts(a)))).collect()
    }

    /// Has every task pick up new tunables; returns once they all have.
    pub async fn retune(&self) {
        self.ask(Query::Retune).await;
    }
}

/// Puts the query `make` builds in a task's `inbox`; the receiver of its answer, or
/// None when the task is gone or its inbox stays full past `deadline`. A full inbox
/// (many readers at once) is waited for: a retune or a kick must not be lost.
async fn post<T>(
    inbox: &mpsc::Sender<Query>,
    make: impl FnOnce(oneshot::Sender<T>) -> Query,
    deadline: tokio::time::Instant,
) -> Option<oneshot::Receiver<T>> {
    let (tx, rx) = oneshot::channel();
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    inbox.send_timeout(make(tx), left).await.ok()?;
    Some(rx)
}

/// The process totals from [`Registry::counters_by_transport`]'s.
pub fn total(by_transport: &[Snmp; 2]) -> Snmp {
    let mut total = Snmp::default();
    for per_transport in by_transport {
        merge(&mut total, per_transport);
    }
    total
}

/// Adds `more` to `total`, keeping the larger `max_conn` (a per-task peak: a lower
/// bound of the process-wide one).
fn merge(total: &mut Snmp, more: &Snmp) {
    let max = total.max_conn.max(more.max_conn);
    total.accumulate(more);
    total.max_conn = max.max(total.curr_estab);
}

/// Which way a captured datagram went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the peer to the gateway.
    In,
    /// From the gateway to the peer.
    Out,
}

/// Datagrams of one session copied as they pass, for the packet inspector: the
/// driver fills it until it holds `wanted` or its reader stopped waiting.
pub struct Capture {
    wanted: usize,
    started: std::time::Instant,
    state: Mutex<Captured>,
    full: tokio::sync::Notify,
}

/// A capture's datagrams: (direction, microseconds since the start, bytes).
pub type CapturedDatagram = (Direction, u64, Vec<u8>);

#[derive(Default)]
struct Captured {
    datagrams: Vec<CapturedDatagram>,
    /// The reader took what there was: nothing more is wanted.
    over: bool,
}

impl Capture {
    /// A capture of at most `wanted` datagrams.
    pub fn new(wanted: usize) -> Capture {
        Capture {
            wanted,
            started: std::time::Instant::now(),
            state: Mutex::default(),
            full: tokio::sync::Notify::new(),
        }
    }

    /// Keeps a copy of `datagram`; false once the capture wants no more (it is
    /// full, or its reader stopped waiting).
    pub fn take(&self, direction: Direction, datagram: &[u8]) -> bool {
        let mut state = self.state.lock().expect("capture lock");
        if state.over {
            return false;
        }
        let at = self.started.elapsed().as_micros() as u64;
        state.datagrams.push((direction, at, datagram.to_vec()));
        if state.datagrams.len() >= self.wanted {
            state.over = true;
            self.full.notify_one();
        }
        !state.over
    }

    /// Waits until the capture is full or `limit` passed, then ends it and hands
    /// over what it holds.
    pub async fn finish(&self, limit: Duration) -> Vec<CapturedDatagram> {
        let _ = tokio::time::timeout(limit, self.full.notified()).await;
        let mut state = self.state.lock().expect("capture lock");
        state.over = true;
        std::mem::take(&mut state.datagrams)
    }
}

/// A session opened or closed.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schema(as = Event)]
pub enum SessionEvent {
    /// A session opened.
    SessionOpened {
        /// The session's id.
        id: u64,
        /// The KCP conversation id.
        conv: u32,
        /// The peer's address.
        #[schema(value_type = String, example = "203.0.113.7:50812")]
        remote: SocketAddr,
        /// What carries it.
        transport: TransportKind,
    },
    /// A session closed.
    SessionClosed {
        /// The session's id.
        id: u64,
        /// The KCP conversation id.
        conv: u32,
        /// The peer's address.
        #[schema(value_type = String, example = "203.0.113.7:50812")]
        remote: SocketAddr,
        /// Why: `kicked: ...`, `draining: ...`, the peer's reset or timeout, an error.
        #[schema(example = "kicked: cheating")]
        reason: String,
        /// What carried it.
        transport: TransportKind,
    },
    /// A session's player moved to a new address (`-address-change`).
    SessionMoved {
        /// The session's id.
        id: u64,
        /// The KCP conversation id.
        conv: u32,
        /// Where the player was.
        #[schema(value_type = String, example = "203.0.113.7:50812")]
        from: SocketAddr,
        /// Where it is now.
        #[schema(value_type = String, example = "198.51.100.23:61002")]
        to: SocketAddr,
        /// What carries it.
        transport: TransportKind,
    },
}

/// What carries a session's application bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionFraming {
    /// kcptun's stack: snappy and smux streams.
    Streams,
    /// Plain KCP messages.
    Messages,
}

/// What the API shows of one session.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionInfo {
    /// Unique in this process; what `DELETE /api/v1/sessions/{id}` takes. Its last
    /// six decimal digits number the gateway task that owns the session (the
    /// rest is the session's number in that task), so a query about one session
    /// goes to that task alone.
    #[schema(example = 42000003)]
    pub id: u64,
    /// The KCP conversation id.
    #[schema(example = 3_541_092_111_u32)]
    pub conv: u32,
    /// The peer's address.
    #[schema(value_type = String, example = "203.0.113.7:50812")]
    pub remote: SocketAddr,
    /// The gateway's address the session uses.
    #[schema(value_type = String, example = "[::]:29900")]
    pub local: SocketAddr,
    /// What carries its datagrams: UDP (kcptun clients) or WebTransport (browsers).
    pub transport: TransportKind,
    /// Milliseconds since the session opened.
    pub age_ms: u64,
    /// Milliseconds since the last datagram from the peer.
    pub idle_ms: u64,
    /// `streams`: kcptun's stack (snappy, smux); `messages`: plain KCP in message
    /// mode (browsers at the WebTransport listener's `/messages`).
    pub framing: SessionFraming,
    /// The smux version in use; null while a detecting server has seen no frame,
    /// and for plain KCP.
    pub smux_version: Option<u8>,
    /// The packet crypto (`-crypt`) the session was opened with.
    #[schema(example = "aes")]
    pub crypt: String,
    /// FEC shards, or null when FEC is off.
    pub fec: Option<FecShards>,
    /// The KCP profile the session was opened with.
    pub mode: Profile,
    /// The ARQ state.
    pub kcp: KcpInfo,
    /// Counters since the session opened.
    pub traffic: TrafficInfo,
    /// Its smux streams and their TCP connections.
    pub streams: Vec<StreamInfo>,
}

/// FEC shards per group.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[schema(example = json!({"data": 10, "parity": 3}))]
pub struct FecShards {
    /// Data shards (`-datashard`).
    #[schema(example = 10)]
    pub data: u32,
    /// Parity shards (`-parityshard`).
    #[schema(example = 3)]
    pub parity: u32,
}

/// The ARQ state. Windows and queues count segments.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"mtu": 1350, "srtt_ms": 42, "rttvar_ms": 6, "rto_ms": 66, "cwnd": 32, "ssthresh": 16, "snd_wnd": 1024, "rcv_wnd": 1024, "remote_wnd": 512, "in_flight": 3, "snd_queue": 0, "rcv_queue": 0, "rcv_buf": 1, "dead": false}))]
pub struct KcpInfo {
    /// Largest datagram the session sends, headers included: `-mtu`, or less over
    /// WebTransport (the browser's datagram size).
    pub mtu: u32,
    /// Smoothed round-trip time.
    pub srtt_ms: u32,
    /// Round-trip time variation.
    pub rttvar_ms: u32,
    /// Retransmission timeout.
    pub rto_ms: u32,
    /// Congestion window, segments.
    pub cwnd: u32,
    /// Slow-start threshold, segments.
    pub ssthresh: u32,
    /// Send window (`-sndwnd`).
    pub snd_wnd: u32,
    /// Receive window (`-rcvwnd`).
    pub rcv_wnd: u32,
    /// The peer's last advertised free receive window.
    pub remote_wnd: u32,
    /// Segments sent and not yet acknowledged.
    pub in_flight: u64,
    /// Segments waiting to be sent.
    pub snd_queue: u64,
    /// Segments received in order, not yet read.
    pub rcv_queue: u64,
    /// Segments received out of order.
    pub rcv_buf: u64,
    /// A segment was retransmitted so often that the link looks dead.
    pub dead: bool,
}

/// Counters since the session opened.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"bytes_in": 1843211, "bytes_out": 9921740, "packets_in": 15602, "packets_out": 10233, "retrans": 41, "fast_retrans": 30, "early_retrans": 2, "lost": 9, "fec_recovered": 17, "fec_errors": 0}))]
pub struct TrafficInfo {
    /// UDP payload bytes received and sent.
    pub bytes_in: u64,
    /// UDP payload bytes sent.
    pub bytes_out: u64,
    /// Datagrams received.
    pub packets_in: u64,
    /// Datagrams sent.
    pub packets_out: u64,
    /// Retransmitted segments, all causes.
    pub retrans: u64,
    /// Segments retransmitted by fast resend.
    pub fast_retrans: u64,
    /// Segments retransmitted by early resend.
    pub early_retrans: u64,
    /// Segments retransmitted because their timer ran out.
    pub lost: u64,
    /// Datagrams FEC rebuilt.
    pub fec_recovered: u64,
    /// FEC groups that could not be decoded.
    pub fec_errors: u64,
}

/// One smux stream and its TCP connection.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"id": 3, "tcp_peer": "127.0.0.1:7000", "bytes_to_tcp": 1648002, "bytes_from_tcp": 9801223, "age_ms": 91234}))]
pub struct StreamInfo {
    /// The smux stream id.
    #[schema(example = 3)]
    pub id: u32,
    /// The TCP end: the backend the server dialled, or the local application on the
    /// client; null until known.
    #[schema(value_type = Option<String>, example = "127.0.0.1:7000")]
    pub tcp_peer: Option<SocketAddr>,
    /// Bytes from the tunnel to the TCP end, and from it into the tunnel.
    pub bytes_to_tcp: u64,
    /// Bytes from the TCP end into the tunnel.
    pub bytes_from_tcp: u64,
    /// Milliseconds since the stream opened.
    pub age_ms: u64,
}
/// What the sessions of one task share, for their views.
pub struct ViewContext {
    /// The task's UDP socket address.
    pub local: SocketAddr,
    /// What carries the task's sessions.
    pub transport: TransportKind,
    /// The FEC of the task's sessions, if on.
    pub fec: Option<FecShards>,
}

impl SessionInfo {
    /// The view of session `id` (its API id), opened at `opened_ms`, at `now_ms`
    /// (both the owning task's clock).
    pub fn new(
        cx: &ViewContext,
        remote: SocketAddr,
        session: &Session,
        id: u64,
        opened_ms: u64,
        links: &Links,
        now_ms: u64,
    ) -> SessionInfo {
        let stats: SessionSnapshot = session.stats();
        let (state, snmp) = (&stats.kcp, &stats.traffic);
        SessionInfo {
            id,
            conv: stats.conv,
            remote,
            local: cx.local,
            transport: cx.transport,
            age_ms: now_ms.saturating_sub(opened_ms),
            idle_ms: u64::from(ms_since(now_ms as u32, stats.heard_at)),
            framing: match stats.framing {
                Framing::Streams => SessionFraming::Streams,
                Framing::Messages => SessionFraming::Messages,
            },
            smux_version: stats.smux_version,
            crypt: stats.cipher.name().to_string(),
            fec: cx.fec,
            mode: Profile::of(stats.mode),
            kcp: KcpInfo {
                mtu: stats.datagram_size,
                srtt_ms: state.srtt.max(0) as u32,
                rttvar_ms: state.rttvar.max(0) as u32,
                rto_ms: state.rto,
                cwnd: state.cwnd,
                ssthresh: state.ssthresh,
                snd_wnd: state.snd_wnd,
                rcv_wnd: state.rcv_wnd,
                remote_wnd: state.rmt_wnd,
                in_flight: state.snd_buf as u64,
                snd_queue: state.snd_queue as u64,
                rcv_queue: state.rcv_queue as u64,
                rcv_buf: state.rcv_buf as u64,
                dead: state.dead,
            },
            traffic: TrafficInfo {
                bytes_in: snmp.in_bytes,
                bytes_out: snmp.out_bytes,
                packets_in: snmp.in_pkts,
                packets_out: snmp.out_pkts,
                retrans: snmp.retrans_segs,
                fast_retrans: snmp.fast_retrans_segs,
                early_retrans: snmp.early_retrans_segs,
                lost: snmp.lost_segs,
                fec_recovered: snmp.fec_recovered,
                fec_errors: snmp.fec_errs,
            },
            streams: {
                let mut streams: Vec<StreamInfo> = session
                    .streams()
                    .map(|s: StreamSnapshot| StreamInfo {
                        id: s.id,
                        tcp_peer: links.tcp_peer(s.id),
                        bytes_to_tcp: s.bytes_read,
                        bytes_from_tcp: s.bytes_written,
                        age_ms: u64::from(ms_since(now_ms as u32, s.opened_at)),
                    })
                    .collect();
                streams.sort_unstable_by_key(|s| s.id);
                streams
            },
        }
    }
}

/// A change to [`Tunables`]: only the fields given change.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"mode": "fast2", "sndwnd": 512}))]
pub struct TunablesPatch {
    /// The KCP profile.
    pub mode: Option<Profile>,
    /// With `manual`: 1 turns nodelay on.
    #[schema(minimum = 0, maximum = 1)]
    #[serde(default, deserialize_with = "whole_number")]
    pub nodelay: Option<i64>,
    /// With `manual`: the flush interval, ms.
    #[schema(minimum = 10, maximum = 5000)]
    #[serde(default, deserialize_with = "whole_number")]
    pub interval: Option<i64>,
    /// With `manual`: fast resend after this many skips (0: off).
    #[schema(minimum = 0, maximum = 65535)]
    #[serde(default, deserialize_with = "whole_number")]
    pub resend: Option<i64>,
    /// With `manual`: 1 turns congestion control off.
    #[schema(minimum = 0, maximum = 1)]
    #[serde(default, deserialize_with = "whole_number")]
    pub nc: Option<i64>,
    /// Send window, segments.
    #[schema(minimum = 1, maximum = 65535)]
    #[serde(default, deserialize_with = "whole_number")]
    pub sndwnd: Option<i64>,
    /// Receive window, segments.
    #[schema(minimum = 1, maximum = 65535)]
    #[serde(default, deserialize_with = "whole_number")]
    pub rcvwnd: Option<i64>,
    /// Outgoing bytes per second per session (0: unlimited).
    #[schema(minimum = 0, maximum = 4_294_967_295_i64)]
    #[serde(default, deserialize_with = "whole_number")]
    pub ratelimit: Option<i64>,
    /// Sessions open at most (0: unlimited).
    #[schema(minimum = 0, maximum = 10_000_000)]
    #[serde(default, deserialize_with = "whole_number")]
    pub max_sessions: Option<i64>,
}

impl TunablesPatch {
    /// The numbers a change may have: their JSON names and the settings
    /// table's (the flags'), in the order its numbers are read.
    pub const NUMBERS: [(&'static str, &'static str); 8] = [
        ("nodelay", "nodelay"),
        ("interval", "interval"),
        ("resend", "resend"),
        ("nc", "nc"),
        ("sndwnd", "sndwnd"),
        ("rcvwnd", "rcvwnd"),
        ("ratelimit", "ratelimit"),
        ("max_sessions", "max-sessions"),
    ];

    /// The fields a change may have, as JSON names them.
    pub fn fields() -> Vec<&'static str> {
        std::iter::once("mode").chain(Self::NUMBERS.iter().map(|(json, _)| *json)).collect()
    }

    /// The numbers given, with their JSON and table names.
    fn numbers(&self) -> [(&'static str, &'static str, Option<i64>); 8] {
        let given = [
            self.nodelay,
            self.interval,
            self.resend,
            self.nc,
            self.sndwnd,
            self.rcvwnd,
            self.ratelimit,
            self.max_sessions,
        ];
        std::array::from_fn(|i| (Self::NUMBERS[i].0, Self::NUMBERS[i].1, given[i]))
    }

    /// Applies this change to `session` and `max_sessions`, each number checked by
    /// the settings table, as a flag is; on error nothing changed and each entry
    /// names a wrong field and says why (the table's words).
    pub fn apply(
        &self,
        session: &mut SessionSettings,
        max_sessions: &mut u64,
    ) -> Result<(), Vec<(&'static str, String)>> {
        let (mut next, mut limit) = (session.clone(), *max_sessions);
        if let Some(mode) = self.mode {
            // Manual starts from the values in effect, as the API showed them.
            if let (None, Some(preset)) = (mode.preset(), next.mode) {
                let (nodelay, interval, resend, nc) = preset.params();
                let n = &mut next.numbers;
                (n.nodelay, n.interval, n.resend, n.nc) = (u8::from(nodelay), interval, resend, u8::from(nc));
            }
            next.mode = mode.preset();
        }
        let mut wrong = Vec::new();
        for (field, name, value) in self.numbers() {
            let Some(value) = value else { continue };
            let checked = match name {
                "max-sessions" => crate::config::number_spec(name)
                    .expect("in the gateway's table")
                    .check(value)
                    .map(|v| limit = v as u64),
                _ => next.set_number(name, value),
            };
            if let Err(e) = checked {
                wrong.push((field, e.to_string()));
            }
        }
        if !wrong.is_empty() {
            return Err(wrong);
        }
        (*session, *max_sessions) = (next, limit);
        Ok(())
    }
}

/// A JSON integer, also when written with a zero fraction (`5.0`), which JSON
/// Schema counts as an integer too.
fn whole_number<'de, D>(d: D) -> Result<Option<i64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    let whole = number.as_i64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (i64::MIN as f64..=i64::MAX as f64).contains(f))
            .map(|f| f as i64)
    });
    whole.map(Some).ok_or_else(|| D::Error::custom(format!("{number} is not a whole number in range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query about one session reaches the task its id names, and no other;
    /// ids of other tasks, or of sessions a task does not have, find nothing.
    #[tokio::test]
    async fn a_query_about_one_session_goes_to_its_task_alone() {
        let registry = std::sync::Arc::new(Registry::default());
        let inboxes: Vec<Inbox> = (0..3).map(|_| registry.register(TransportKind::Udp)).collect();
        assert_eq!(inboxes.iter().map(Inbox::task).collect::<Vec<_>>(), [0, 1, 2]);
        let asked: std::sync::Arc<[AtomicU64; 3]> = std::sync::Arc::default();
        for mut inbox in inboxes {
            let asked = asked.clone();
            tokio::spawn(async move {
                // Each task owns its sessions 1 to 10; kicks succeed, views are none.
                while let Some(query) = inbox.recv().await {
                    asked[inbox.task()].fetch_add(1, Ordering::Relaxed);
                    match query {
                        Query::Kick { id, done, .. } => {
                            let (task, session) = owner_of(id);
                            let _ = done.send(task == inbox.task() && (1..=10).contains(&session.0));
                        }
                        Query::Session { done, .. } => {
                            let _ = done.send(None);
                        }
                        _ => {}
                    }
                }
            });
        }
        assert_eq!(session_id(2, SessionId(7)), 7_000_002);
        assert_eq!(owner_of(7_000_002), (2, SessionId(7)));
        assert!(registry.kick(session_id(2, SessionId(7)), "test").await);
        assert!(!registry.kick(session_id(1, SessionId(11)), "test").await, "task 1 has no session 11");
        assert!(!registry.kick(session_id(5, SessionId(1)), "test").await, "there is no task 5");
        assert!(registry.session(session_id(0, SessionId(3))).await.is_none());
        let asked: Vec<u64> = asked.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        assert_eq!(asked, [1, 1, 1], "each query went to its one task");
    }

    /// A reader's query reaches every live task; the totals it gets are their
    /// answers plus what ended tasks left.
    #[tokio::test]
    async fn counters_ask_the_live_tasks_and_add_the_ended_ones() {
        let registry = std::sync::Arc::new(Registry::default());
        let (mut a, b) = (registry.register(TransportKind::Udp), registry.register(TransportKind::Udp));
        registry.retire(
            b,
            Snmp { bytes_sent: 5, max_conn: 7, curr_estab: 1, ..Snmp::default() },
            &ListenerStats::default(),
        );
        let task = tokio::spawn(async move {
            for sent in [100, 200] {
                let Some(Query::Counters(reply)) = a.recv().await else { panic!("a counters query") };
                let _ = reply.send(Snmp { bytes_sent: sent, curr_estab: 1, max_conn: 1, ..Snmp::default() });
            }
            a
        });
        let first = registry.counters().await;
        assert_eq!((first.bytes_sent, first.curr_estab, first.max_conn), (105, 1, 7));
        assert_eq!(registry.counters().await.bytes_sent, 205, "each query is answered afresh");
        registry.retire(task.await.expect("the task"), Snmp::default(), &ListenerStats::default());
        let silent = registry.register(TransportKind::Udp);
        assert_eq!(silent.slot, 2, "task numbers are not reused (session ids name them)");
        let asked = registry.kick(session_id(silent.slot, SessionId(9)), "nobody");
        assert!(!asked.await, "a task that does not answer is not waited for forever");
    }

    /// More readers at once than an inbox holds: each still gets the task's answer.
    #[tokio::test]
    async fn a_full_inbox_is_waited_for_not_skipped() {
        let registry = std::sync::Arc::new(Registry::default());
        let mut inbox = registry.register(TransportKind::Udp);
        tokio::spawn(async move {
            while let Some(query) = inbox.recv().await {
                if let Query::Counters(reply) = query {
                    let _ = reply.send(Snmp { bytes_sent: 7, ..Snmp::default() });
                }
                tokio::task::yield_now().await;
            }
        });
        let readers: Vec<_> = (0..4 * INBOX_DEPTH)
            .map(|_| {
                let registry = registry.clone();
                tokio::spawn(async move { registry.counters().await.bytes_sent })
            })
            .collect();
        for reader in readers {
            assert_eq!(reader.await.expect("a reader"), 7, "a reader was skipped");
        }
    }

    #[test]
    fn every_field_of_a_change_is_listed() {
        for field in &TunablesPatch::fields() {
            let value = if *field == "mode" { serde_json::json!("fast") } else { serde_json::json!(1) };
            let one = serde_json::json!({ *field: value });
            assert!(serde_json::from_value::<TunablesPatch>(one).is_ok(), "{field} is a field");
        }
        let fields = serde_json::to_value(Tunables {
            mode: Profile::Fast,
            nodelay: false,
            interval: 10,
            resend: 0,
            nc: false,
            sndwnd: 1,
            rcvwnd: 1,
            ratelimit: 0,
            max_sessions: 0,
        })
        .expect("JSON");
        let mut all: Vec<&str> = fields.as_object().expect("an object").keys().map(String::as_str).collect();
        let mut listed = TunablesPatch::fields();
        all.sort_unstable();
        listed.sort_unstable();
        assert_eq!(all, listed, "every tunable can be changed, and nothing else");
    }

    #[test]
    fn a_patch_changes_only_its_fields_and_names_every_bad_one() {
        let mut session = SessionSettings::kcptun(kcpgate_core::Role::Client);
        let mut limit = 0;
        let p = TunablesPatch { mode: Some(Profile::Fast3), sndwnd: Some(256), ..TunablesPatch::default() };
        p.apply(&mut session, &mut limit).expect("a valid patch");
        let next = Tunables::of(&session, limit);
        assert_eq!((next.mode, next.sndwnd, next.rcvwnd), (Profile::Fast3, 256, 512));
        let params = (next.nodelay, next.interval, next.resend, next.nc);
        assert_eq!(params, (true, 10, 2, true), "fast3's own values are shown, not the manual ones");
        let manual = TunablesPatch { mode: Some(Profile::Manual), interval: Some(25), ..TunablesPatch::default() };
        manual.apply(&mut session, &mut limit).expect("a valid patch");
        let next = Tunables::of(&session, limit);
        assert_eq!(
            (next.nodelay, next.interval, next.resend, next.nc),
            (true, 25, 2, true),
            "manual keeps the values in effect but those given"
        );
        let bad = TunablesPatch {
            mode: Some(Profile::Fast),
            nodelay: Some(2),
            interval: Some(5),
            sndwnd: Some(0),
            max_sessions: Some(-1),
            ..TunablesPatch::default()
        };
        let before = session.clone();
        let wrong = bad.apply(&mut session, &mut limit).expect_err("invalid");
        let fields: Vec<&str> = wrong.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["nodelay", "interval", "sndwnd", "max_sessions"]);
        assert_eq!(wrong[1].1, "interval must be between 10 and 5000 ms (got 5)", "the settings table's words");
        assert_eq!((session, limit), (before, 0), "nothing changed, the mode neither");
        let too_fast = serde_json::from_str::<TunablesPatch>(r#"{"ratelimit": 4294967296}"#).expect("a whole number");
        let e = too_fast.apply(&mut SessionSettings::kcptun(kcpgate_core::Role::Server), &mut 0).unwrap_err();
        assert_eq!(e[0].1, "ratelimit must be between 0 and 4294967295 bytes per second (got 4294967296)");
        let unknown = serde_json::from_str::<TunablesPatch>(r#"{"mode": "turbo"}"#);
        assert!(unknown.is_err(), "only known profiles");
        let whole =
            serde_json::from_str::<TunablesPatch>(r#"{"sndwnd": 64.0, "rcvwnd": null}"#).expect("64.0 is whole");
        assert_eq!((whole.sndwnd, whole.rcvwnd), (Some(64), None));
        assert!(serde_json::from_str::<TunablesPatch>(r#"{"sndwnd": 64.5}"#).is_err());
    }
}
