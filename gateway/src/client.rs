//! `kcpgate client`: accepts local TCP (or unix-socket) connections and carries each as a smux
//! stream over one of `-conn` KCP sessions to the server (docs/protocol.md §11).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{lookup_host, UdpSocket};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::split_port_range;
use crate::conn::{is_unix_path, Conn, LocalListener};
use crate::driver::{ClientSession, Driver};
use crate::runtime::{random_seed, Plan};
use crate::udp::BatchSocket;

/// A session slot: where to hand new connections, and when it stops taking them.
struct Slot {
    to_session: mpsc::Sender<Conn>,
    expires: Option<Instant>,
}

/// Runs the client. Once `drain` turns true it accepts no new connections and
/// returns when every session's streams are done.
pub async fn run(plan: Arc<Plan>, mut drain: watch::Receiver<bool>) -> std::io::Result<()> {
    let local = &plan.settings.listen;
    let listener = listen_local(local)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {local}: {e}")))?;
    info!("listening on {}, forwarding to {}", listener.describe(), plan.settings.target);
    plan.shared.registry.set_serving();
    let conns = plan.settings.conn as usize;
    let mut slots: Vec<Option<Slot>> = (0..conns).map(|_| None).collect();
    let mut rr: u16 = 0;
    let mut sessions = Vec::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.changed() => {
                if *drain.borrow() {
                    finish(listener, slots, sessions).await;
                    return Ok(());
                }
                continue;
            }
        };
        let conn = match accepted {
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
                match start_session(plan.clone(), drain.clone()).await {
                    Ok((tx, task)) => {
                        sessions.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
                        sessions.push(task);
                        let ttl = plan.settings.autoexpire;
                        let expires = (ttl > 0).then(|| Instant::now() + Duration::from_secs(ttl));
                        slots[idx] = Some(Slot { to_session: tx, expires });
                        break;
                    }
                    Err(e) => {
                        warn!("cannot start a session to {}: {e}; retrying in 1 s", plan.settings.target);
                        tokio::select! {
                                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                                _ = drain.changed() => {
                                    if *drain.borrow() {
                                        finish(listener, slots, sessions).await;
                        return Ok(());
                                    }
                                }
                            }
                    }
                }
            }
        }
        let slot = slots[idx].as_ref().expect("filled above");
        if slot.to_session.send(conn).await.is_err() {
            warn!("the session ended before the connection could be opened");
        }
    }
}

/// Draining: the listener is closed, so new connections are refused at once
/// (not left waiting in its queue), and dropping the slots tells every session to
/// retire once its streams end; returns when they all have.
async fn finish(listener: LocalListener, slots: Vec<Option<Slot>>, sessions: Vec<tokio::task::JoinHandle<()>>) {
    drop(listener);
    drop(slots);
    for s in sessions {
        let _ = s.await;
    }
}

/// The system's listen backlog limit, which Go (and so kcptun) listens with.
fn somaxconn() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(4096)
}

/// Binds the local listener: a unix socket path, or TCP host:port (an empty host
/// means every interface).
async fn listen_local(local: &str) -> std::io::Result<LocalListener> {
    if is_unix_path(local) {
        return LocalListener::bind_unix(local);
    }
    let spec = if local.starts_with(':') { format!("[::]{local}") } else { local.to_string() };
    let addr = lookup_host(spec.as_str())
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{local} has no address")))?;
    let socket = if addr.is_ipv6() { tokio::net::TcpSocket::new_v6()? } else { tokio::net::TcpSocket::new_v4()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(somaxconn()).map(LocalListener::Tcp)
}

/// Resolves the server (a random port of its range), binds a socket and starts the
/// session's driver; returns where to send it new connections.
async fn start_session(
    plan: Arc<Plan>,
    drain: watch::Receiver<bool>,
) -> std::io::Result<(mpsc::Sender<Conn>, tokio::task::JoinHandle<()>)> {
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
    // Room for a whole listen queue, so accepting never waits on a busy session.
    let (tx, connections) = mpsc::channel(somaxconn() as usize);
    // With -autoexpire, a session takes no new connections after `autoexpire`
    // seconds (the accept loop's slot expires) and is closed, streams and all, once
    // `scavengettl` more seconds have passed (kcptun's scavenger).
    let expire = plan.settings.autoexpire;
    let close_at = (expire > 0)
        .then(|| tokio::time::Instant::now() + Duration::from_secs(expire.saturating_add(plan.settings.scavengettl)));
    let socket = BatchSocket::new(socket, SESSION_RECV_SLOTS)?;
    let driver = Driver::client(socket, plan, ClientSession { remote, connections, close_at });
    Ok((tx, tokio::spawn(driver.run(drain))))
}

/// Receive buffers of a session's own socket, which only its server sends to: GRO
/// joins its bursts, so each buffer takes many datagrams.
const SESSION_RECV_SLOTS: usize = 4;
