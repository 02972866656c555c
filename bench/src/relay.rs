//! The UDP impairment relay: clients send to `listen`, the relay forwards to
//! `target` from one socket per client (so the target sees each client as its own
//! peer) and sends the answers back, each direction through its own [`Impairer`].

use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::impair::{Counters, Impairer, Spec};

/// A datagram waiting for its departure time.
struct Pending {
    at: Duration,
    seq: u64,
    data: Vec<u8>,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    // Earliest first from a max-heap.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Both directions' counters, shared with whoever reports them.
#[derive(Default)]
pub struct RelayStats {
    pub up: Mutex<Counters>,
    pub down: Mutex<Counters>,
}

/// Both directions' impairments (up, down); the relay follows changes.
pub type Specs = watch::Receiver<(Spec, Spec)>;

/// One direction: impairs datagrams and sends them when due.
struct RelayDirection {
    impairer: Impairer,
    specs: Specs,
    up: bool,
    seed: u64,
    start: Instant,
    queue: mpsc::UnboundedSender<Pending>,
    seq: u64,
    scratch: Vec<(Duration, Vec<u8>)>,
}

impl RelayDirection {
    fn new(mut specs: Specs, up: bool, seed: u64, start: Instant) -> RelayDirection {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(deliver(rx, start));
        let spec = Self::pick(&mut specs, up);
        RelayDirection {
            impairer: Impairer::new(spec, seed),
            specs,
            up,
            seed,
            start,
            queue,
            seq: 0,
            scratch: Vec::new(),
        }
    }

    fn pick(specs: &mut Specs, up: bool) -> Spec {
        let both = specs.borrow_and_update();
        if up {
            both.0.clone()
        } else {
            both.1.clone()
        }
    }

    /// Impairs one datagram, queues what is left of it for `to`, and adds what
    /// happened to `totals`.
    fn push(&mut self, data: &[u8], socket: &Arc<UdpSocket>, to: SocketAddr, totals: &Mutex<Counters>) {
        if self.specs.has_changed().unwrap_or(false) {
            self.seed = self.seed.wrapping_add(1);
            self.impairer = Impairer::new(Self::pick(&mut self.specs, self.up), self.seed);
        }
        self.impairer.process(self.start.elapsed(), data, &mut self.scratch);
        for (at, data) in self.scratch.drain(..) {
            self.seq += 1;
            let _ = self.queue.send(Pending { at, seq: self.seq, data, socket: socket.clone(), to });
        }
        *totals.lock().expect("stats lock") += std::mem::take(&mut self.impairer.counters);
    }
}

async fn deliver(mut rx: mpsc::UnboundedReceiver<Pending>, start: Instant) {
    let mut heap = BinaryHeap::new();
    loop {
        let next = heap.peek().map(|p: &Pending| start + p.at);
        tokio::select! {
            p = rx.recv() => match p {
                Some(p) => heap.push(p),
                None => return,
            },
            () = async { tokio::time::sleep_until(next.expect("guarded").into()).await }, if next.is_some() => {
                let now = start.elapsed();
                while heap.peek().is_some_and(|p| p.at <= now) {
                    let p = heap.pop().expect("peeked");
                    let _ = p.socket.send_to(&p.data, p.to).await;
                }
            }
        }
    }
}

/// Runs the relay until it fails or its future is dropped.
pub async fn run(
    listen: SocketAddr,
    target: SocketAddr,
    up: Spec,
    down: Spec,
    seed: u64,
    stats: Arc<RelayStats>,
) -> std::io::Result<()> {
    let (_keep, specs) = watch::channel((up, down));
    run_changing(listen, target, specs, seed, stats).await
}

/// [`run`] with impairments that may change while it runs.
pub async fn run_changing(
    listen: SocketAddr,
    target: SocketAddr,
    specs: Specs,
    seed: u64,
    stats: Arc<RelayStats>,
) -> std::io::Result<()> {
    let front = Arc::new(UdpSocket::bind(listen).await?);
    let start = Instant::now();
    let mut up_dir = RelayDirection::new(specs.clone(), true, seed, start);
    let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let mut clients = 0u64;
    loop {
        let (n, from) = front.recv_from(&mut buf).await?;
        let back = match backs.get(&from) {
            Some(b) => b.clone(),
            None => {
                let bind: SocketAddr = if target.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("literal");
                let back = Arc::new(UdpSocket::bind(bind).await?);
                clients += 1;
                let seed = seed ^ clients.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let down_dir = RelayDirection::new(specs.clone(), false, seed, start);
                tokio::spawn(answers(back.clone(), front.clone(), from, down_dir, stats.clone()));
                backs.insert(from, back.clone());
                back
            }
        };
        up_dir.push(&buf[..n], &back, target, &stats.up);
    }
}

/// Carries one client's answers back through the down direction.
async fn answers(
    back: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    mut dir: RelayDirection,
    stats: Arc<RelayStats>,
) {
    let mut buf = vec![0u8; 65536];
    while let Ok((n, _)) = back.recv_from(&mut buf).await {
        dir.push(&buf[..n], &front, client, &stats.down);
    }
}
