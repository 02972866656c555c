//! Batched UDP I/O for the server's listening sockets, through `quinn-udp`: many
//! datagrams per system call in (recvmmsg, and GRO where the kernel offers it) and
//! out (GSO: a run of equal-sized datagrams to one peer in one call).

use std::io::IoSliceMut;
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Largest datagram kcpgate receives (kcp-go's limit is 1500; room for more).
const MAX_DATAGRAM: usize = 2048;

/// A UDP socket with receive buffers for one batch and a staging buffer for GSO.
pub struct BatchSocket {
    socket: UdpSocket,
    state: UdpSocketState,
    /// `BATCH_SIZE` receive slots of `slot` bytes each.
    rx: Vec<u8>,
    slot: usize,
    meta: Vec<RecvMeta>,
    /// Datagrams of one GSO send, back to back.
    tx: Vec<u8>,
}

impl BatchSocket {
    pub fn new(socket: UdpSocket) -> std::io::Result<BatchSocket> {
        let state = UdpSocketState::new((&socket).into())?;
        let slot = MAX_DATAGRAM * state.gro_segments().max(1);
        Ok(BatchSocket {
            rx: vec![0; slot * BATCH_SIZE],
            slot,
            meta: vec![RecvMeta::default(); BATCH_SIZE],
            tx: Vec::new(),
            state,
            socket,
        })
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Waits for a batch of datagrams; returns how many buffers it filled (see
    /// [`BatchSocket::datagrams`]).
    pub async fn recv(&mut self) -> std::io::Result<usize> {
        let BatchSocket { socket, state, rx, slot, meta, .. } = self;
        loop {
            socket.readable().await?;
            let mut chunks = rx.chunks_mut(*slot);
            let mut bufs: [IoSliceMut<'_>; BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().expect("BATCH_SIZE slots")));
            match socket.try_io(Interest::READABLE, || state.recv((&*socket).into(), &mut bufs, meta)) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The datagrams of the last [`BatchSocket::recv`] that filled `count` buffers,
    /// with their senders. With GRO one buffer holds several datagrams of `stride`
    /// bytes (the last may be shorter).
    pub fn datagrams(&mut self, count: usize) -> impl Iterator<Item = (SocketAddr, &mut [u8])> + '_ {
        let slot = self.slot;
        self.rx
            .chunks_mut(slot)
            .zip(self.meta.iter())
            .take(count)
            .flat_map(|(buf, m)| buf[..m.len].chunks_mut(m.stride.max(1)).map(move |d| (m.addr, d)))
    }

    /// Sends `datagrams` to `to`, runs of equal size in one GSO call each.
    pub async fn send_all<'a>(
        &mut self,
        to: SocketAddr,
        datagrams: impl Iterator<Item = &'a [u8]>,
    ) -> std::io::Result<()> {
        let max_segments = self.state.max_gso_segments().max(1);
        let mut segment = 0;
        let mut count = 0;
        self.tx.clear();
        for d in datagrams {
            // A run continues while datagrams have the run's size; a shorter one
            // may end it.
            if count > 0 && (d.len() > segment || count == max_segments || self.tx.len() + d.len() > 65_000) {
                self.flush(to, segment).await?;
                count = 0;
            }
            if count == 0 {
                segment = d.len();
            }
            self.tx.extend_from_slice(d);
            count += 1;
            if d.len() < segment {
                self.flush(to, segment).await?;
                count = 0;
            }
        }
        if count > 0 {
            self.flush(to, segment).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, to: SocketAddr, segment: usize) -> std::io::Result<()> {
        let BatchSocket { socket, state, tx, .. } = self;
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: tx,
            segment_size: (tx.len() > segment).then_some(segment),
            src_ip: None,
        };
        let sent = socket.async_io(Interest::WRITABLE, || state.send((&*socket).into(), &transmit)).await;
        tx.clear();
        sent
    }
}
