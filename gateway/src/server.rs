//! `kcpgate server`: accepts KCP sessions on UDP and dials the target for every
//! stream (kcptun server behaviour, docs/protocol.md §11).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::info;

use kcpgate_core::Framing;

use crate::driver::Driver;
use crate::runtime::Plan;
use crate::udp::BatchSocket;

/// Runs the server on every port of `-listen`. Once `drain` turns true it takes no
/// new sessions and returns when no stream is left.
pub async fn run(plan: Arc<Plan>, drain: watch::Receiver<bool>) -> std::io::Result<()> {
    bind(&plan).await?.serve(plan, drain).await;
    Ok(())
}

/// A listener's sockets, bound and not yet served.
pub struct Bound {
    udp: Vec<BatchSocket>,
    webtransport: Option<crate::webtransport::WebTransportListener>,
}

/// Binds every port of the listener's `-listen` (and its WebTransport address).
///
/// Each port gets one socket per core (`SO_REUSEPORT`), each to be served by its own
/// [`Driver`] with its own sessions: the kernel hashes every peer to one socket, so a session
/// always lands on the same task and sessions spread over the cores.
pub async fn bind(plan: &Arc<Plan>) -> std::io::Result<Bound> {
    let webtransport = crate::webtransport::bind(plan).await?;
    let per_port = std::thread::available_parallelism().map_or(1, |n| n.get());
    let addrs = if plan.settings.listen_udp { plan.listen_addrs()? } else { Vec::new() };
    let mut udp = Vec::new();
    for addr in addrs {
        let sockets = bind_shared(addr, per_port)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on UDP {addr}: {e}")))?;
        info!(listener = %plan.name, "listening on UDP {} ({} sockets)", sockets[0].local_addr()?, sockets.len());
        for socket in sockets {
            plan.tune_udp(&socket);
            let mut socket = BatchSocket::new(socket, crate::udp::MAX_BATCH)?;
            socket.reply_from_destination()?;
            udp.push(socket);
        }
    }
    Ok(Bound { udp, webtransport })
}

impl Bound {
    /// Serves the sockets until `drain` turns true and no stream is left (or
    /// `-drain-timeout` has passed since).
    pub async fn serve(self, plan: Arc<Plan>, drain: watch::Receiver<bool>) {
        let mut tasks = Vec::new();
        for socket in self.udp {
            tasks.push(tokio::spawn(Driver::server(socket, plan.clone(), Framing::Streams).run(drain.clone())));
        }
        if let Some(listener) = self.webtransport {
            tasks.push(tokio::spawn(crate::webtransport::serve(listener, plan.clone(), drain.clone())));
        }
        plan.shared.registry.set_serving();
        for t in tasks {
            let _ = t.await;
        }
    }
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
