//! `kcpgate client`: accepts local TCP connections and carries each as a smux
//! stream over one of `-conn` KCP sessions to the server (PROTOCOL.md §8.4).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kcpgate_core::crypto::OpenError;
use kcpgate_core::listener::{Dialer, DialerDrop};
use kcpgate_core::smux::Role;
use tokio::net::{lookup_host, TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::control::{Event, Query, SessionInfo};
use crate::runtime::{random_seed, split_port_range, Plan, Tuning};
use crate::tunnel::{now_ms, run_stream, FromStream, Tunnel, WrongKeyWarning};
use crate::udp::BatchSocket;

/// A session slot: where to hand new connections, and when it stops taking them.
struct Slot {
    to_session: mpsc::Sender<TcpStream>,
    expires: Option<Instant>,
}

/// Runs the client. Once `drain` turns true it accepts no new connections and
/// returns when every session's streams are done.
pub async fn run(plan: Arc<Plan>, mut drain: watch::Receiver<bool>) -> std::io::Result<()> {
    let local = &plan.settings.listen;
    let listener = listen_tcp(local)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on TCP {local}: {e}")))?;
    info!("listening on TCP {}, forwarding to {}", listener.local_addr()?, plan.settings.target);
    plan.registry.set_serving();
    let conns = plan.settings.conn.max(1) as usize;
    let mut slots: Vec<Option<Slot>> = (0..conns).map(|_| None).collect();
    let mut rr: u16 = 0;
    let mut sessions = Vec::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.changed() => {
                if *drain.borrow() {
                    // Dropping the slots tells every session to retire once its streams end.
                    drop(slots);
                    for s in sessions {
                        let _ = s.await;
                    }
                    return Ok(());
                }
                continue;
            }
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!("accept failed: {e}");
                continue;
            }
        };
        let idx = usize::from(rr) % conns;
        rr = rr.wrapping_add(1);
        let stale = match &slots[idx] {
            None => true,
            Some(s) => s.to_session.is_closed() || s.expires.is_some_and(|t| Instant::now() >= t),
        };
        if stale {
            // Created synchronously, as kcptun does: retry until the server resolves.
            loop {
                match start_session(plan.clone()).await {
                    Ok((tx, task)) => {
                        sessions.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
                        sessions.push(task);
                        let ttl = plan.settings.autoexpire;
                        let expires = (ttl > 0).then(|| Instant::now() + Duration::from_secs(ttl as u64));
                        slots[idx] = Some(Slot { to_session: tx, expires });
                        break;
                    }
                    Err(e) => {
                        warn!("cannot start a session to {}: {e}; retrying in 1 s", plan.settings.target);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        let slot = slots[idx].as_ref().expect("filled above");
        if slot.to_session.send(tcp).await.is_err() {
            warn!(%peer, "the session ended before the connection could be opened");
        }
    }
}

/// The system's listen backlog limit, which Go (and so kcptun) listens with.
fn somaxconn() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(4096)
}

/// Binds the local TCP listener (an empty host means every interface).
async fn listen_tcp(local: &str) -> std::io::Result<TcpListener> {
    let spec = if local.starts_with(':') { format!("[::]{local}") } else { local.to_string() };
    let addr = lookup_host(spec.as_str())
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{local} has no address")))?;
    let socket = if addr.is_ipv6() { tokio::net::TcpSocket::new_v6()? } else { tokio::net::TcpSocket::new_v4()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(somaxconn())
}

/// Resolves the server (a random port of its range), binds a socket and starts the
/// session task; returns where to send it new connections.
async fn start_session(plan: Arc<Plan>) -> std::io::Result<(mpsc::Sender<TcpStream>, tokio::task::JoinHandle<()>)> {
    let (host, ports) = split_port_range(&plan.settings.target)?;
    let seed = random_seed();
    let span = u64::from(*ports.end() - *ports.start()) + 1;
    let port = *ports.start() + (u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")) % span) as u16;
    let remote = lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host} has no address")))?;
    let bind: SocketAddr = if remote.is_ipv6() { "[::]:0".parse() } else { "0.0.0.0:0".parse() }.expect("literal");
    let socket = UdpSocket::bind(bind).await?;
    plan.tune_udp(&socket);
    socket.connect(remote).await?;
    let tuning = plan.tuning();
    let dialer = Dialer::new(remote, &tuning.session, plan.crypto.clone(), random_seed())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    info!(%remote, conv = dialer.connection.conv(), "session started");
    // Room for a whole listen queue, so accepting never waits on a busy session.
    let (tx, rx) = mpsc::channel(somaxconn() as usize);
    let socket = BatchSocket::new(socket, SESSION_RECV_SLOTS);
    let task = tokio::spawn(session(socket, remote, dialer, plan, tuning, rx));
    Ok((tx, task))
}

/// Receive buffers of a session's own socket, which only its server sends to.
const SESSION_RECV_SLOTS: usize = 16;

async fn session(
    mut socket: BatchSocket,
    remote: SocketAddr,
    mut dialer: Dialer<SocketAddr>,
    plan: Arc<Plan>,
    tuning: Arc<Tuning>,
    mut new_conns: mpsc::Receiver<TcpStream>,
) {
    let start = Instant::now();
    let local = socket.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    // With -autoexpire, a session takes no new connections after `autoexpire` seconds
    // (the accept loop's slot expires) and is closed, streams and all, once
    // `scavengettl` more seconds have passed (kcptun's scavenger).
    let expire = plan.settings.autoexpire;
    let force_close = (expire > 0).then(|| Duration::from_secs((expire + plan.settings.scavengettl.max(0)) as u64));
    let mut tunnel = plan.tunnel(Role::Client, 0, &tuning);
    drop(tuning);
    let (id, conv) = (tunnel.meta.id, dialer.connection.conv());
    plan.registry.opened(Event::SessionOpened { id, conv, remote });
    let (tx, mut rx) = mpsc::channel::<((), u32, FromStream)>(4096);
    let mut accepting = true;
    let mut inbox = plan.registry.register();
    let totals = |dialer: &Dialer<SocketAddr>| {
        let mut s = dialer.snmp();
        s.active_opens = 1;
        s.curr_estab = 1;
        s.max_conn = 1;
        s
    };
    let end = |reason: String, dialer: &Dialer<SocketAddr>, inbox, tunnel: Tunnel| {
        plan.registry.retire(inbox, totals(dialer));
        tunnel.end(&plan.registry, remote, conv, reason);
    };
    let mut kicked: Option<String> = None;
    let mut wrong_key = WrongKeyWarning::default();
    loop {
        // Queries first (a busy loop may not reach the select).
        let mut queries: Vec<Query> = std::iter::from_fn(|| inbox.try_recv()).collect();
        let now = now_ms(start);
        let timers_due = tunnel.deadline(&dialer.connection).is_some_and(|d| kcpgate_core::kcp::diff(now, d) >= 0);
        // Timers first, whatever woke the loop: steady input must not starve them. When
        // they ran, the session is serviced at once instead of waiting for an event.
        if timers_due {
            tunnel.run_timers(now, &mut dialer.connection);
        }
        if force_close.is_some_and(|ttl| start.elapsed() >= ttl) {
            info!(%remote, streams = tunnel.stream_count(), "session expired and closed");
            end("expired (-autoexpire, -scavengettl)".into(), &dialer, inbox, tunnel);
            return;
        }
        let until_close = force_close.map(|ttl| ttl.saturating_sub(start.elapsed()).as_millis() as u64);
        let wait = tunnel.wait_ms(&dialer.connection, now).unwrap_or(3_600_000);
        let mut received = false;
        if !timers_due && queries.is_empty() {
            tokio::select! {
                r = socket.recv() => match r {
                    Ok(()) => received = true,
                    Err(e) => debug!(%remote, "receive failed: {e}"),
                },
                c = new_conns.recv(), if accepting => match c {
                    Some(tcp) => match tunnel.stack.open_stream() {
                        Ok(sid) => {
                            let stream = tunnel.add_stream(sid, now, tcp.peer_addr().ok());
                            if !plan.settings.quiet {
                                info!(%remote, sid, "stream opened");
                            }
                            tokio::spawn(run_stream(tcp, (), stream, tx.clone()));
                        }
                        Err(e) => warn!(%remote, "cannot open a stream: {e}"),
                    },
                    None => accepting = false,
                },
                Some(((), sid, msg)) = rx.recv() => tunnel.on_message(sid, msg),
                Some(query) = inbox.recv() => queries.push(query),
                () = tokio::time::sleep(Duration::from_millis(until_close.map_or(wait, |c| c.min(wait)))) => {} // timers run at the top
            }
        }
        let now = now_ms(start);
        for query in queries {
            match query {
                Query::Counters(reply) => {
                    let _ = reply.send(totals(&dialer));
                }
                Query::Sessions(reply) => {
                    let cx = plan.view_context(local);
                    let view = SessionInfo::new(&cx, remote, &dialer.connection, &tunnel, now.into());
                    let _ = reply.send(vec![view]);
                }
                Query::Kick { id: wanted, reason, done } => {
                    if wanted == id && kicked.is_none() {
                        info!(%remote, id, %reason, "session kicked");
                        tunnel.close_all(now, &mut dialer.connection);
                        kicked = Some(reason);
                    }
                    let _ = done.send(wanted == id);
                }
                Query::Retune(done) => {
                    let _ = done.send(()); // new sessions read the tunables as they start
                }
            }
        }
        if received {
            tunnel.meta.heard_ms = now.into();
        }
        for (from, datagram) in socket.datagrams().filter(|_| received) {
            if let Err(DialerDrop::Open(OpenError::Checksum)) = dialer.handle_datagram(now, &from, datagram) {
                wrong_key.datagram_failed(from);
            }
        }
        let result = if kicked.is_some() { Ok(Vec::new()) } else { tunnel.service(now, &mut dialer.connection) };
        if let Err(e) = socket.send_all(remote, dialer.connection.transmits()).await {
            debug!(%remote, "send failed: {e}");
        }
        dialer.connection.clear_transmits();
        if let Some(reason) = kicked {
            end(format!("kicked: {reason}"), &dialer, inbox, tunnel);
            return;
        }
        if let Err(e) = result {
            warn!(%remote, "session closed: {e}");
            end(e.to_string(), &dialer, inbox, tunnel);
            return;
        }
        if !accepting && tunnel.stream_count() == 0 {
            info!(%remote, "session retired");
            end("retired: no streams left and no new connections".into(), &dialer, inbox, tunnel);
            return;
        }
    }
}
