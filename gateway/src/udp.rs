//! Batched UDP I/O: many datagrams per system call in (`recvmmsg`) and out (GSO: a
//! run of equal-sized datagrams to one peer in one `sendmsg`). Nothing here changes
//! a datagram or the socket's options (DSCP, fragmentation): the wire stays what
//! kcp-go sends.
//!
//! No GRO on receive: nix's `recvmmsg` does not reset the headers' control-message
//! length between calls, so the GRO segment size would be lost after the first
//! batch; one datagram per buffer needs no segment size.
//!
//! Why not the `quinn-udp` crate: its socket setup turns IP fragmentation off on
//! every socket (`IP_MTU_DISCOVER = IP_PMTUDISC_PROBE`, `IPV6_DONTFRAG`), which QUIC
//! wants and kcptun does not do. A kcptun user whose `-mtu` is above the path's MTU
//! (a VPN or PPPoE link under 1350) works today because the kernel fragments; with
//! the don't-fragment flag every full-size datagram would be dropped. Neither nix
//! nor socket2 can turn the IPv4 option back without `unsafe` of ours.

use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{recvmmsg, sendmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Largest datagram kcpgate receives (kcp-go's limit is 1500; room for more).
const MAX_DATAGRAM: usize = 2048;
/// Most receive buffers per `recvmmsg`.
pub const MAX_BATCH: usize = 32;
/// Most datagrams per GSO send (the kernel's limit is 64), and most bytes.
const GSO_SEGMENTS: usize = 64;
pub const GSO_BYTES: usize = 65_000;

/// `recvmmsg` headers. They hold raw pointers into buffers they own, which nix does
/// not mark `Send`; moving them between threads is sound, and they are only used
/// through `&mut`.
struct Headers(MultiHeaders<SockaddrStorage>);

// SAFETY: see `Headers`: the pointers refer to heap buffers owned by the value.
#[allow(unsafe_code)]
unsafe impl Send for Headers {}

impl Headers {
    /// The headers, borrowed through the `Send` wrapper (a closure that named the
    /// field would capture the field, which is not `Send`).
    fn get(&mut self) -> &mut MultiHeaders<SockaddrStorage> {
        &mut self.0
    }
}

/// A UDP socket with receive buffers for one batch and a staging buffer for GSO.
pub struct BatchSocket {
    socket: UdpSocket,
    headers: Headers,
    /// `slots` receive buffers of `slot` bytes each.
    rx: Vec<u8>,
    slots: usize,
    slot: usize,
    /// Sender and length of each datagram the last receive got.
    received: Vec<(SocketAddr, usize)>,
    /// Datagrams of one GSO send, back to back.
    /// Cleared when the kernel refuses GSO; then each datagram goes alone.
    gso: bool,
}

impl BatchSocket {
    /// `slots` (at most [`MAX_BATCH`]) receive buffers: a listening socket wants
    /// many, a client session's own socket a few.
    pub fn new(socket: UdpSocket, slots: usize) -> BatchSocket {
        let slot = MAX_DATAGRAM;
        let slots = slots.clamp(1, MAX_BATCH);
        BatchSocket {
            headers: Headers(MultiHeaders::preallocate(slots, None)),
            rx: vec![0; slot * slots],
            slots,
            slot,
            received: Vec::with_capacity(slots),
            gso: true,
            socket,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Waits for a batch of datagrams (see [`BatchSocket::datagrams`]).
    pub async fn recv(&mut self) -> std::io::Result<()> {
        let BatchSocket { socket, headers, rx, slot, slots, received, .. } = self;
        received.clear();
        socket
            .async_io(Interest::READABLE, || {
                let mut chunks = rx.chunks_mut(*slot).take(*slots);
                let mut bufs: [[IoSliceMut<'_>; 1]; MAX_BATCH] =
                    std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
                let results = recvmmsg(
                    socket.as_raw_fd(),
                    headers.get(),
                    bufs[..*slots].iter_mut(),
                    MsgFlags::MSG_DONTWAIT,
                    None,
                )?;
                for msg in results {
                    // A datagram longer than a buffer arrives cut: its check fails
                    // and it is counted there.
                    let Some(from) = msg.address.as_ref().and_then(socket_addr) else { continue };
                    received.push((from, msg.bytes.min(*slot)));
                }
                Ok(())
            })
            .await
    }

    /// The datagrams of the last [`BatchSocket::recv`], with their senders.
    pub fn datagrams(&mut self) -> impl Iterator<Item = (SocketAddr, &mut [u8])> + '_ {
        self.rx.chunks_mut(self.slot).zip(self.received.iter()).map(|(buf, &(from, len))| (from, &mut buf[..len]))
    }

    /// Sends `datagrams` to `to`, runs of equal size in one GSO call each.
    /// Sends datagrams that lie back to back in `data`, each `segment` bytes but the
    /// last, which may be shorter (as the core's `poll_transmit` writes them): in one
    /// call with GSO where the kernel has it, one by one where it does not.
    pub async fn send_segments(&mut self, to: SocketAddr, data: &[u8], segment: usize) -> std::io::Result<()> {
        let segment = segment.max(1);
        let most = segment * max_segments(segment);
        let mut rest = data;
        while !rest.is_empty() {
            let (batch, more) = rest.split_at(rest.len().min(most));
            rest = more;
            if batch.len() > segment && self.gso && self.send_gso(to, batch, segment).await? {
                continue;
            }
            for d in batch.chunks(segment) {
                self.socket.send_to(d, to).await?;
            }
        }
        Ok(())
    }

    /// One GSO send; false (and GSO off from now on) when the kernel refuses it.
    async fn send_gso(&mut self, to: SocketAddr, batch: &[u8], segment: usize) -> std::io::Result<bool> {
        let addr = SockaddrStorage::from(to);
        let size = segment as u16;
        let sent = self
            .socket
            .async_io(Interest::WRITABLE, || {
                let cmsg = [ControlMessage::UdpGsoSegments(&size)];
                sendmsg(self.socket.as_raw_fd(), &[IoSlice::new(batch)], &cmsg, MsgFlags::empty(), Some(&addr))
                    .map_err(std::io::Error::from)
            })
            .await;
        match sent {
            Err(e) if [Errno::EIO, Errno::EINVAL].map(|n| Some(n as i32)).contains(&e.raw_os_error()) => {
                self.gso = false;
                Ok(false)
            }
            other => other.map(|_| true),
        }
    }
}

/// How many datagrams of `size` bytes one GSO send takes at most.
pub fn max_segments(size: usize) -> usize {
    (GSO_BYTES / size.max(1)).clamp(1, GSO_SEGMENTS)
}

fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}
