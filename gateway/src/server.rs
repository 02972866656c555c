//! `kcpgate server`: accepts KCP sessions on UDP and dials the target for every
//! stream (kcptun server behaviour, PROTOCOL.md §8.5).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kcpgate_core::listener::{Listener, Outcome};
use kcpgate_core::smux::Role;
use kcpgate_core::snmp::Snmp;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::runtime::{random_seed, Plan};
use crate::tunnel::{now_ms, run_stream, FromStream, NewStream, Tunnel};
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
    let (tx, mut rx) = mpsc::channel::<(SocketAddr, u32, FromStream)>(4096);
    let mut draining = *drain.borrow();
    let slot = plan.snmp.register();
    // Counters of sessions already gone, and the socket's own figures.
    let mut retired = Snmp::default();
    let mut last_publish = Instant::now();
    loop {
        if last_publish.elapsed() >= Duration::from_millis(100) {
            last_publish = Instant::now();
            let mut totals = listener.snmp();
            totals.accumulate(&retired);
            totals.passive_opens = listener.stats.created;
            totals.curr_estab = listener.len() as u64;
            retired.max_conn = retired.max_conn.max(totals.curr_estab);
            totals.max_conn = retired.max_conn;
            plan.snmp.publish(slot, totals);
        }
        if draining && tunnels.values().all(|t| t.stream_count() == 0) {
            return;
        }
        // Timers first, whatever woke the loop: a busy socket must not starve them.
        // The loop then sleeps until the earliest deadline; a session whose timers
        // ran counts with the deadline they set, taken after it was serviced.
        let now = now_ms(start);
        let mut touched: Vec<SocketAddr> = Vec::new();
        let mut next: Option<u64> = None;
        let mut earliest = |wait: Option<u64>| {
            if let Some(w) = wait {
                next = Some(next.map_or(w, |n| n.min(w)));
            }
        };
        for (addr, t) in &mut tunnels {
            let Some(conn) = listener.session_mut(addr) else { continue };
            match t.wait_ms(conn, now) {
                Some(0) => {
                    t.run_timers(now, conn);
                    touched.push(*addr);
                }
                wait => earliest(wait),
            }
        }
        for addr in touched.drain(..) {
            service(&mut socket, &mut listener, &mut tunnels, &mut retired, addr, now, &plan, &tx).await;
            if let (Some(t), Some(conn)) = (tunnels.get(&addr), listener.session(&addr)) {
                earliest(t.wait_ms(conn, now));
            }
        }
        let sleep = tokio::time::sleep(Duration::from_millis(next.unwrap_or(3_600_000)));
        let mut touched: Vec<SocketAddr> = Vec::new();
        let mut received = false;
        tokio::select! {
            _ = drain.changed(), if !draining => draining = *drain.borrow(),
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
        let now = now_ms(start);
        for (from, datagram) in socket.datagrams().filter(|_| received) {
            if draining && listener.session(&from).is_none() {
                continue; // no new sessions while draining
            }
            match listener.handle_datagram(now, &from, datagram) {
                Outcome::Created | Outcome::Replaced { .. } => {
                    while listener.accept().is_some() {}
                    for (addr, old) in listener.take_closed() {
                        tunnels.remove(&addr);
                        retired.accumulate(&old.snmp());
                    }
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
        for addr in touched {
            service(&mut socket, &mut listener, &mut tunnels, &mut retired, addr, now, &plan, &tx).await;
        }
    }
}

/// Lets one session move its data, starts tasks for new streams, sends its datagrams,
/// and ends it if its stream layers failed.
#[allow(clippy::too_many_arguments)]
async fn service(
    socket: &mut BatchSocket,
    listener: &mut Listener<SocketAddr>,
    tunnels: &mut HashMap<SocketAddr, Tunnel>,
    retired: &mut Snmp,
    addr: SocketAddr,
    now: u32,
    plan: &Arc<Plan>,
    tx: &mpsc::Sender<(SocketAddr, u32, FromStream)>,
) {
    let (Some(conn), Some(tunnel)) = (listener.session_mut(&addr), tunnels.get_mut(&addr)) else { return };
    let result = tunnel.service(now, conn);
    if let Err(e) = socket.send_all(addr, conn.transmits()).await {
        debug!(remote = %addr, "send failed: {e}");
    }
    conn.clear_transmits();
    match result {
        Ok(new) => {
            for stream in new {
                tokio::spawn(dial(plan.clone(), addr, stream, tx.clone()));
            }
        }
        Err(e) => {
            warn!(remote = %addr, "session closed: {e}");
            tunnels.remove(&addr);
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
