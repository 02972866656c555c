//! `kcpgate server`: accepts KCP sessions on UDP and dials the target for every
//! stream (kcptun server behaviour, PROTOCOL.md §8.5).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};
use kcpgate_core::listener::{Listener, Outcome};
use kcpgate_core::smux::Role;
use kcpgate_core::snmp::Snmp;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::runtime::{random_seed, Plan};
use crate::tunnel::{elapsed_ms, run_stream, FromStream, NewStream, Tunnel};
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

async fn serve_socket(mut socket: BatchSocket, plan: Arc<Plan>, mut drain: watch::Receiver<bool>) {
    let start = Instant::now();
    let mut listener: Listener<SocketAddr> =
        Listener::new(plan.session.clone(), plan.crypto.clone(), random_seed()).expect("validated at startup");
    let mut tunnels: HashMap<SocketAddr, Tunnel> = HashMap::new();
    let mut schedule = Schedule::default();
    // Sessions to service this turn (kept to reuse their memory).
    let (mut due, mut touched): (Vec<SocketAddr>, Vec<SocketAddr>) = (Vec::new(), Vec::new());
    let (tx, mut rx) = mpsc::channel::<(SocketAddr, u32, FromStream)>(4096);
    let mut draining = *drain.borrow();
    let slot = plan.snmp.register();
    // Counters of sessions already gone, and the socket's own figures.
    let mut retired = Snmp::default();
    let mut asked = plan.snmp.asked();
    let totals = |listener: &Listener<SocketAddr>, retired: &Snmp| {
        let mut totals = listener.snmp();
        totals.accumulate(retired);
        totals.passive_opens = listener.stats.created;
        totals.curr_estab = listener.len() as u64;
        totals.max_conn = retired.max_conn;
        totals
    };
    loop {
        // A reader asked for the counters (a busy loop may not reach the select).
        if asked.has_changed().unwrap_or(false) {
            asked.borrow_and_update();
            plan.snmp.publish(slot, totals(&listener, &retired));
        }
        if draining && tunnels.values().all(|t| t.stream_count() == 0) {
            plan.snmp.retire(slot, totals(&listener, &retired));
            return;
        }
        // Timers first, whatever woke the loop: a busy socket must not starve them.
        // Only sessions whose deadline has come are touched; the loop then sleeps
        // until the earliest deadline left.
        let now_abs = elapsed_ms(start);
        let now = now_abs as u32;
        due.clear();
        while let Some(addr) = schedule.pop_due(now_abs) {
            if let (Some(t), Some(conn)) = (tunnels.get_mut(&addr), listener.session_mut(&addr)) {
                t.run_timers(now, conn);
                due.push(addr);
            }
        }
        for &addr in &due {
            service(&mut socket, &mut listener, &mut tunnels, &mut schedule, &mut retired, addr, now_abs, &plan, &tx)
                .await;
        }
        let next = schedule.next().map(|at| at.saturating_sub(now_abs));
        let sleep = tokio::time::sleep(Duration::from_millis(next.unwrap_or(3_600_000)));
        touched.clear();
        let mut received = false;
        tokio::select! {
            _ = drain.changed(), if !draining => draining = *drain.borrow(),
            _ = asked.changed() => plan.snmp.publish(slot, totals(&listener, &retired)),
            r = socket.recv() => match r {
                Ok(()) => received = true,
                Err(e) => debug!("receive failed: {e}"),
            },
            Some((addr, sid, msg)) = rx.recv() => {
                if let Some(t) = tunnels.get_mut(&addr) {
                    t.on_message(sid, msg);
                    touched.push(addr);
                }
            }
            () = sleep => {} // the timers run at the top of the loop
        }
        let now_abs = elapsed_ms(start);
        let now = now_abs as u32;
        for (from, datagram) in socket.datagrams().filter(|_| received) {
            if draining && listener.session(&from).is_none() {
                continue; // no new sessions while draining
            }
            match listener.handle_datagram(now, &from, datagram) {
                Outcome::Created | Outcome::Replaced { .. } => {
                    while listener.accept().is_some() {}
                    for (addr, old) in listener.take_closed() {
                        tunnels.remove(&addr);
                        schedule.set(addr, None);
                        retired.accumulate(&old.snmp());
                    }
                    retired.max_conn = retired.max_conn.max(listener.len() as u64);
                    info!(remote = %from, "session opened");
                    tunnels.insert(from, plan.tunnel(Role::Server, now));
                    touched.push(from);
                }
                Outcome::Delivered => touched.push(from),
                Outcome::Dropped(reason) => debug!(remote = %from, ?reason, "datagram dropped"),
            }
        }
        // A batch brings several datagrams per session: service each session once.
        touched.sort_unstable();
        touched.dedup();
        for &addr in &touched {
            service(&mut socket, &mut listener, &mut tunnels, &mut schedule, &mut retired, addr, now_abs, &plan, &tx)
                .await;
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

/// Lets one session move its data, starts tasks for new streams, sends its datagrams,
/// schedules its next deadline, and ends it if its stream layers failed.
#[allow(clippy::too_many_arguments)]
async fn service(
    socket: &mut BatchSocket,
    listener: &mut Listener<SocketAddr>,
    tunnels: &mut HashMap<SocketAddr, Tunnel>,
    schedule: &mut Schedule,
    retired: &mut Snmp,
    addr: SocketAddr,
    now_abs: u64,
    plan: &Arc<Plan>,
    tx: &mpsc::Sender<(SocketAddr, u32, FromStream)>,
) {
    let now = now_abs as u32;
    let (Some(conn), Some(tunnel)) = (listener.session_mut(&addr), tunnels.get_mut(&addr)) else {
        schedule.set(addr, None);
        return;
    };
    let result = tunnel.service(now, conn);
    if let Err(e) = socket.send_all(addr, conn.transmits()).await {
        debug!(remote = %addr, "send failed: {e}");
    }
    conn.clear_transmits();
    schedule.set(addr, tunnel.wait_ms(conn, now).map(|wait| now_abs + wait));
    match result {
        Ok(new) => {
            for stream in new {
                tokio::spawn(dial(plan.clone(), addr, stream, tx.clone()));
            }
        }
        Err(e) => {
            warn!(remote = %addr, "session closed: {e}");
            tunnels.remove(&addr);
            schedule.set(addr, None);
            if let Some(old) = listener.remove(&addr) {
                retired.accumulate(&old.snmp());
            }
        }
    }
}

/// One stream: dial the target, then bridge it.
async fn dial(plan: Arc<Plan>, addr: SocketAddr, stream: NewStream, tx: mpsc::Sender<(SocketAddr, u32, FromStream)>) {
    let sid = stream.sid;
    match TcpStream::connect(&plan.settings.target).await {
        Ok(tcp) => {
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
