//! `kcpgate server`: accepts KCP sessions on UDP and dials the target for every
//! stream (kcptun server behaviour, PROTOCOL.md §8.5).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};
use kcpgate_core::listener::{Drop, Listener, Outcome};
use kcpgate_core::pipeline::Connection;
use kcpgate_core::smux::Role;
use kcpgate_core::snmp::Snmp;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::control::{Event, Query, SessionInfo};
use crate::runtime::{random_seed, Plan};
use crate::tunnel::{elapsed_ms, run_stream, FromStream, NewStream, Tunnel, WrongKeyWarning};
use crate::udp::BatchSocket;

/// Runs the server on every port of `-listen`. Once `drain` turns true it takes no
/// new sessions and returns when no stream is left.
///
/// Each port gets one socket per core (`SO_REUSEPORT`), each served by its own task
/// with its own sessions: the kernel hashes every peer to one socket, so a session
/// always lands on the same task and sessions spread over the cores.
pub async fn run(plan: Arc<Plan>, drain: watch::Receiver<bool>) -> std::io::Result<()> {
    let mut tasks = Vec::new();
    let per_port = std::thread::available_parallelism().map_or(1, |n| n.get());
    for addr in plan.listen_addrs()? {
        let sockets = bind_shared(addr, per_port)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on UDP {addr}: {e}")))?;
        info!("listening on UDP {} ({} sockets)", sockets[0].local_addr()?, sockets.len());
        for socket in sockets {
            plan.tune_udp(&socket);
            let socket = BatchSocket::new(socket, crate::udp::MAX_BATCH);
            tasks.push(tokio::spawn(serve_socket(socket, plan.clone(), drain.clone())));
        }
    }
    plan.registry.set_serving();
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// `count` UDP sockets bound to `addr` with `SO_REUSEPORT`. The port must be free:
/// a plain bind is tried first, so a second kcpgate on the same port fails instead
/// of silently sharing its traffic.
fn bind_shared(addr: SocketAddr, count: usize) -> std::io::Result<Vec<UdpSocket>> {
    drop(std::net::UdpSocket::bind(addr)?);
    (0..count.max(1))
        .map(|_| {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            UdpSocket::from_std(socket.into())
        })
        .collect()
}

/// One socket's sessions and everything that drives them.
struct SocketTask {
    socket: BatchSocket,
    local: SocketAddr,
    plan: Arc<Plan>,
    start: Instant,
    listener: Listener<SocketAddr>,
    tunnels: HashMap<SocketAddr, Tunnel>,
    schedule: Schedule,
    /// Counters of sessions already gone.
    retired: Snmp,
    /// Where stream tasks send their messages.
    tx: mpsc::Sender<(SocketAddr, u32, FromStream)>,
    /// The tunables' session limit (0 for none), kept here off the shared lock.
    max_sessions: u64,
    wrong_key: WrongKeyWarning,
}

/// How long a kicked session's peer is refused with its old conversation: longer
/// than smux's keep-alive timeout, so the peer notices the session is gone first.
const KICK_HOLD_MS: u32 = 60_000;

async fn serve_socket(socket: BatchSocket, plan: Arc<Plan>, mut drain: watch::Receiver<bool>) {
    let local = socket.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let listener =
        Listener::new(plan.tuning().session.clone(), plan.crypto.clone(), random_seed()).expect("validated at startup");
    let (tx, mut rx) = mpsc::channel::<(SocketAddr, u32, FromStream)>(4096);
    let mut task = SocketTask {
        socket,
        local,
        start: Instant::now(),
        listener,
        tunnels: HashMap::new(),
        schedule: Schedule::default(),
        retired: Snmp::default(),
        tx,
        max_sessions: plan.tuning().tunables.max_sessions,
        wrong_key: WrongKeyWarning::default(),
        plan: plan.clone(),
    };
    // Sessions to service this turn (kept to reuse their memory).
    let (mut due, mut touched): (Vec<SocketAddr>, Vec<SocketAddr>) = (Vec::new(), Vec::new());
    let mut draining = *drain.borrow();
    let mut inbox = plan.registry.register();
    loop {
        // Queries first (a busy loop may not reach the select).
        while let Some(query) = inbox.try_recv() {
            task.answer(query).await;
        }
        if draining && task.tunnels.values().all(|t| t.stream_count() == 0) {
            plan.registry.retire(inbox, task.totals());
            return;
        }
        // Timers first, whatever woke the loop: a busy socket must not starve them.
        // Only sessions whose deadline has come are touched; the loop then sleeps
        // until the earliest deadline left.
        let now_abs = elapsed_ms(task.start);
        let now = now_abs as u32;
        due.clear();
        while let Some(addr) = task.schedule.pop_due(now_abs) {
            if let (Some(t), Some(conn)) = (task.tunnels.get_mut(&addr), task.listener.session_mut(&addr)) {
                t.run_timers(now, conn);
                due.push(addr);
            }
        }
        for &addr in &due {
            task.service(addr, now_abs, false).await;
        }
        let next = task.schedule.next().map(|at| at.saturating_sub(now_abs));
        let sleep = tokio::time::sleep(Duration::from_millis(next.unwrap_or(3_600_000)));
        touched.clear();
        let mut received = false;
        tokio::select! {
            _ = drain.changed(), if !draining => draining = *drain.borrow(),
            Some(query) = inbox.recv() => task.answer(query).await,
            r = task.socket.recv() => match r {
                Ok(()) => received = true,
                Err(e) => debug!("receive failed: {e}"),
            },
            Some((addr, sid, msg)) = rx.recv() => {
                if let Some(t) = task.tunnels.get_mut(&addr) {
                    t.on_message(sid, msg);
                    touched.push(addr);
                }
            }
            () = sleep => {} // the timers run at the top of the loop
        }
        let now_abs = elapsed_ms(task.start);
        if received {
            task.receive(now_abs, draining, &mut touched);
        }
        // A batch brings several datagrams per session: service each session once.
        touched.sort_unstable();
        touched.dedup();
        for &addr in &touched {
            task.service(addr, now_abs, received).await;
        }
    }
}

impl SocketTask {
    /// Hands the received batch to the listener; notes which sessions got data.
    fn receive(&mut self, now_abs: u64, draining: bool, touched: &mut Vec<SocketAddr>) {
        let now = now_abs as u32;
        let limit = self.max_sessions;
        for (from, datagram) in self.socket.datagrams() {
            let full = limit > 0 && self.plan.registry.open_sessions() >= limit;
            if (draining || full) && self.listener.session(&from).is_none() {
                if full && !draining {
                    self.plan.registry.count_refused_datagram();
                }
                continue; // no new sessions while draining or at the limit
            }
            match self.listener.handle_datagram(now, &from, datagram) {
                Outcome::Created | Outcome::Replaced { .. } => {
                    while self.listener.accept().is_some() {}
                    for (addr, old) in self.listener.take_closed() {
                        self.retired.accumulate(&old.snmp());
                        self.schedule.set(addr, None);
                        if let Some(t) = self.tunnels.remove(&addr) {
                            let reason = "replaced: the peer started a new session".into();
                            t.end(&self.plan.registry, addr, old.conv(), reason);
                        }
                    }
                    self.retired.max_conn = self.retired.max_conn.max(self.listener.len() as u64);
                    let tuning = self.plan.tuning();
                    let tunnel = self.plan.tunnel(Role::Server, now_abs, &tuning);
                    let conv = self.listener.session(&from).map_or(0, Connection::conv);
                    info!(remote = %from, id = tunnel.meta.id, conv, "session opened");
                    self.plan.registry.opened(Event::SessionOpened { id: tunnel.meta.id, conv, remote: from });
                    self.tunnels.insert(from, tunnel);
                    touched.push(from);
                }
                Outcome::Delivered => touched.push(from),
                Outcome::Dropped(Drop::Checksum) => self.wrong_key.datagram_failed(from),
                Outcome::Dropped(reason) => debug!(remote = %from, ?reason, "datagram dropped"),
            }
        }
    }

    /// Removes a session for good; its stream tasks stop.
    fn close(&mut self, addr: SocketAddr, reason: String, hold_ms: Option<u32>) {
        self.schedule.set(addr, None);
        let now = elapsed_ms(self.start) as u32;
        let conn = match hold_ms {
            Some(hold) => self.listener.close(&addr, now, hold),
            None => self.listener.remove(&addr),
        };
        if let Some(conn) = &conn {
            self.retired.accumulate(&conn.snmp());
        }
        if let Some(t) = self.tunnels.remove(&addr) {
            t.end(&self.plan.registry, addr, conn.as_ref().map_or(0, Connection::conv), reason);
        }
    }

    /// This socket's running SNMP totals.
    fn totals(&self) -> Snmp {
        let mut totals = self.listener.snmp();
        totals.accumulate(&self.retired);
        totals.passive_opens = self.listener.stats.created;
        totals.curr_estab = self.listener.len() as u64;
        totals.max_conn = self.retired.max_conn;
        totals
    }

    async fn answer(&mut self, query: Query) {
        match query {
            Query::Counters(reply) => {
                let _ = reply.send(self.totals());
            }
            Query::Sessions(reply) => {
                let now = elapsed_ms(self.start);
                let cx = self.plan.view_context(self.local);
                let views = self
                    .tunnels
                    .iter()
                    .filter_map(|(addr, t)| Some(SessionInfo::new(&cx, *addr, self.listener.session(addr)?, t, now)))
                    .collect();
                let _ = reply.send(views);
            }
            Query::Kick { id, reason, done } => {
                let found = self.tunnels.iter().find(|(_, t)| t.meta.id == id).map(|(a, _)| *a);
                if let Some(addr) = found {
                    info!(remote = %addr, id, %reason, "session kicked");
                    // The peer's applications see their connections end at once.
                    let now_abs = elapsed_ms(self.start);
                    if let (Some(t), Some(conn)) = (self.tunnels.get_mut(&addr), self.listener.session_mut(&addr)) {
                        t.close_all(now_abs as u32, conn);
                        if let Err(e) = self.socket.send_all(addr, conn.transmits()).await {
                            debug!(remote = %addr, "send failed: {e}");
                        }
                        conn.clear_transmits();
                    }
                    self.close(addr, format!("kicked: {reason}"), Some(KICK_HOLD_MS));
                }
                let _ = done.send(found.is_some());
            }
            Query::Retune(done) => {
                let tuning = self.plan.tuning();
                *self.listener.config_mut() = tuning.session.clone();
                self.max_sessions = tuning.tunables.max_sessions;
                let _ = done.send(());
            }
        }
    }

    /// Lets one session move its data, starts tasks for new streams, sends its
    /// datagrams, schedules its next deadline, and ends it if its stream layers
    /// failed. `heard`: the peer just sent it something.
    async fn service(&mut self, addr: SocketAddr, now_abs: u64, heard: bool) {
        let now = now_abs as u32;
        let (Some(conn), Some(tunnel)) = (self.listener.session_mut(&addr), self.tunnels.get_mut(&addr)) else {
            self.schedule.set(addr, None);
            return;
        };
        if heard {
            tunnel.meta.heard_ms = now_abs;
        }
        let result = tunnel.service(now, conn);
        if let Err(e) = self.socket.send_all(addr, conn.transmits()).await {
            debug!(remote = %addr, "send failed: {e}");
        }
        conn.clear_transmits();
        self.schedule.set(addr, tunnel.wait_ms(conn, now).map(|wait| now_abs + wait));
        match result {
            Ok(new) => {
                for stream in new {
                    tokio::spawn(dial(self.plan.clone(), addr, stream, self.tx.clone()));
                }
            }
            Err(e) => {
                warn!(remote = %addr, "session closed: {e}");
                self.close(addr, e.to_string(), None);
            }
        }
    }
}

/// When each session of a socket needs its timers run, in ms since the socket's
/// task started: a min-heap of deadlines. A new deadline for a session is pushed as
/// a new entry; the old one is recognised as stale when it surfaces. A wake-up thus
/// costs O(log n) per due session instead of a look at every session, so idle
/// sessions cost nothing between their own deadlines.
#[derive(Default)]
struct Schedule {
    heap: BinaryHeap<Reverse<Due>>,
    current: HashMap<SocketAddr, u64>,
}

/// A heap entry, ordered by its deadline alone: many sessions share a millisecond,
/// and comparing their addresses as well would only cost time.
struct Due {
    at: u64,
    addr: SocketAddr,
}

impl PartialEq for Due {
    fn eq(&self, other: &Due) -> bool {
        self.at == other.at
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Due) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Due) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

impl Schedule {
    fn set(&mut self, addr: SocketAddr, at: Option<u64>) {
        match at {
            Some(at) => {
                if self.current.insert(addr, at) != Some(at) {
                    self.heap.push(Reverse(Due { at, addr }));
                }
            }
            None => {
                self.current.remove(&addr);
            }
        }
    }

    /// Takes a session whose deadline is `now` or earlier.
    fn pop_due(&mut self, now: u64) -> Option<SocketAddr> {
        while let Some(&Reverse(Due { at, addr })) = self.heap.peek() {
            if at > now {
                return None;
            }
            self.heap.pop();
            if self.current.get(&addr) == Some(&at) {
                self.current.remove(&addr);
                return Some(addr);
            }
        }
        None
    }

    /// The earliest deadline.
    fn next(&mut self) -> Option<u64> {
        while let Some(&Reverse(Due { at, addr })) = self.heap.peek() {
            if self.current.get(&addr) == Some(&at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }
}

/// One stream: dial the target, then bridge it.
async fn dial(plan: Arc<Plan>, addr: SocketAddr, stream: NewStream, tx: mpsc::Sender<(SocketAddr, u32, FromStream)>) {
    let sid = stream.sid;
    match TcpStream::connect(&plan.settings.target).await {
        Ok(tcp) => {
            if let Ok(peer) = tcp.peer_addr() {
                let _ = tx.send((addr, sid, FromStream::Connected(peer))).await;
            }
            if !plan.settings.quiet {
                info!(remote = %addr, sid, target = %plan.settings.target, "stream opened");
            }
            run_stream(tcp, addr, stream, tx).await;
            if !plan.settings.quiet {
                info!(remote = %addr, sid, "stream closed");
            }
        }
        Err(e) => {
            warn!(remote = %addr, sid, target = %plan.settings.target, "cannot reach the target: {e}");
            plan.streams.dial_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = tx.send((addr, sid, FromStream::Closed)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn the_schedule_yields_due_sessions_in_order_and_only_their_latest_deadline() {
        let mut s = Schedule::default();
        s.set(addr(1), Some(30));
        s.set(addr(2), Some(10));
        s.set(addr(3), Some(20));
        s.set(addr(2), Some(50)); // moved later: the entry at 10 is stale
        s.set(addr(3), None); // nothing to time any more
        assert_eq!(s.next(), Some(30));
        assert_eq!(s.pop_due(29), None);
        assert_eq!(s.pop_due(49), Some(addr(1)));
        assert_eq!(s.pop_due(49), None);
        s.set(addr(1), Some(40)); // rescheduled after it ran
        assert_eq!(s.pop_due(100), Some(addr(1)));
        assert_eq!(s.pop_due(100), Some(addr(2)));
        assert_eq!(s.pop_due(100), None);
        assert_eq!(s.next(), None);
        assert!(s.heap.is_empty(), "stale entries are dropped as they surface");
    }
}
