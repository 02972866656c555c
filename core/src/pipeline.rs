//! One KCP session with its lower layers: crypto, FEC and KCP composed into a sans-IO
//! connection (kcp-go's `UDPSession` without the socket), docs/protocol.md §1 and §8.
//!
//! Outgoing: KCP writes each datagram into its transmit arena with room in front;
//! the connection writes the FEC header into that room, adds parity shards, and
//! seals every datagram in place. Incoming: open (decrypt + check), demultiplex FEC
//! from bare KCP, feed data shards to KCP at once and rebuilt ones after them.

use std::sync::Arc;

use crate::crypto::{NonceSource, OpenError, PacketCrypto};
use crate::error::SettingsError;
use crate::fec::{self, FecDecoder, FecEncoder, Shards};
use crate::kcp::{self, Kcp, HEADER_LEN as KCP_HEADER_LEN};
use crate::pacer::TokenBucket;
use crate::replay::{self, RecentNonces};
use crate::snmp::Snmp;
use crate::transmit::TransmitQueue;
use crate::wire::Datagram;

/// kcp-go's hard cap on the session MTU.
pub const MTU_LIMIT: usize = 1500;

/// Settings of one session, as kcptun derives them from its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Largest UDP payload, headers included (kcptun `-mtu`; capped at 1500).
    pub mtu: usize,
    /// KCP parameters; `mtu`, `header_room` and `tail_room` are derived from `mtu`
    /// and the layers below.
    pub kcp: kcp::Config,
    /// FEC shard counts; `None` sends without FEC (received FEC is still decoded).
    pub fec: Option<Shards>,
    /// Leave written data for the next timer flush instead of flushing at once.
    pub write_delay: bool,
    /// Outgoing bytes per second, every header and parity shard included; 0 is
    /// unlimited (kcptun `-ratelimit`).
    pub rate_limit: u32,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            mtu: 1400,
            kcp: kcp::Config { stream: true, ..kcp::Config::default() },
            fec: None,
            write_delay: false,
            rate_limit: 0,
        }
    }
}

/// The smallest session MTU that leaves room for a KCP segment with one byte of
/// data under `method`'s crypto header (and the FEC header, with FEC).
pub fn min_mtu(method: crate::crypto::Method, fec: bool) -> usize {
    let fec_header = if fec { fec::DATA_HEADER_LEN } else { 0 };
    method.header_len() + fec_header + method.tail_len() + KCP_HEADER_LEN + 1
}

impl SessionConfig {
    /// The KCP configuration for this session over `crypto`.
    pub fn kcp_config(&self, crypto: &PacketCrypto) -> Result<kcp::Config, SettingsError> {
        let room = crypto.header_len() + if self.fec.is_some() { fec::DATA_HEADER_LEN } else { 0 };
        let tail = crypto.tail_len();
        let mtu = self.mtu.min(MTU_LIMIT);
        if mtu <= room + tail + KCP_HEADER_LEN {
            return Err(SettingsError::MtuTooSmall { mtu, smallest: room + tail + KCP_HEADER_LEN + 1 });
        }
        Ok(self.kcp.clone().fit_session_mtu(mtu, room, tail))
    }
}

/// Datagram nonces a session remembers, to drop copies: 8 KiB once it has
/// received its first datagram.
pub const SESSION_NONCES: usize = 512;

/// A KCP session over crypto and FEC. See the module docs.
pub struct Connection {
    kcp: Kcp,
    crypto: Arc<PacketCrypto>,
    encoder: Option<FecEncoder>,
    decoder: Option<FecDecoder>,
    nonces: NonceSource,
    /// Parity shards made by the FEC encoder, sealed, ready to send after KCP's.
    parity: TransmitQueue,
    /// KCP datagrams already given their headers and sealed.
    sealed: usize,
    write_delay: bool,
    /// The rate limit's bucket; KCP gets a send budget from it before every call
    /// that may flush, and what was sent is charged to it afterwards.
    pacer: Option<TokenBucket>,
    counters: Snmp,
    /// Nonces of the datagrams received last: a copy among them is dropped.
    recent: RecentNonces,
    replays: u64,
    /// The peer said it has no such session ([`kcp::CMD_RESET`]).
    reset_by_peer: bool,
}

impl core::fmt::Debug for Connection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Connection").field("conv", &self.kcp.conv()).field("crypto", &self.crypto).finish()
    }
}

impl Connection {
    /// The crypto this session seals and opens with (the listener's when it
    /// opened; a later key change leaves it as it is).
    pub fn crypto(&self) -> &Arc<PacketCrypto> {
        &self.crypto
    }

    /// A session with conversation `conv`. `nonce_seed` seeds the CSPRNG of this
    /// session's packet nonces (take it from the OS).
    pub fn new(
        conv: u32,
        cfg: &SessionConfig,
        crypto: Arc<PacketCrypto>,
        nonce_seed: [u8; 32],
    ) -> Result<Connection, SettingsError> {
        let kcp_cfg = cfg.kcp_config(&crypto)?;
        let stride = kcp_cfg.header_room + kcp_cfg.mtu + kcp_cfg.tail_room;
        Ok(Connection {
            kcp: Kcp::new(conv, kcp_cfg),
            encoder: cfg.fec.clone().map(FecEncoder::new),
            decoder: cfg.fec.clone().map(FecDecoder::new),
            crypto,
            nonces: NonceSource::from_seed(nonce_seed),
            parity: TransmitQueue::new(stride),
            sealed: 0,
            write_delay: cfg.write_delay,
            pacer: (cfg.rate_limit > 0).then(|| TokenBucket::new(cfg.rate_limit)),
            counters: Snmp::default(),
            recent: RecentNonces::new(SESSION_NONCES),
            replays: 0,
            reset_by_peer: false,
        })
    }

    /// The conversation id.
    pub fn conv(&self) -> u32 {
        self.kcp.conv()
    }

    /// The KCP state machine, for inspection and run-time tuning.
    pub fn kcp(&self) -> &Kcp {
        &self.kcp
    }

    /// The KCP state machine, to change (run-time tuning).
    pub fn kcp_mut(&mut self) -> &mut Kcp {
        &mut self.kcp
    }

    /// The FEC decoder, once the session has seen FEC (or was configured with it).
    pub fn fec_decoder(&self) -> Option<&FecDecoder> {
        self.decoder.as_ref()
    }

    /// Whether [`Connection::write`] would accept data (kcp-go's `Write` blocks while
    /// `WaitSnd ≥ snd_wnd`).
    pub fn writable(&self) -> bool {
        self.free_segments() > 0
    }

    /// Queues application bytes, as many as the send window has room for (whole
    /// segments), and flushes unless write-delay is on. Returns the bytes taken.
    pub fn write(&mut self, now: u32, data: &[u8]) -> usize {
        let mss = self.kcp.mss();
        let take = data.len().min(self.free_segments() * mss);
        for piece in data[..take].chunks(mss) {
            self.kcp.send(piece).expect("non-empty piece of at most mss bytes");
        }
        if take > 0 {
            self.queued(now, take);
        }
        take
    }

    /// Segments the send window has room for.
    fn free_segments(&self) -> usize {
        (self.kcp.config().snd_wnd as usize).saturating_sub(self.kcp.wait_snd())
    }

    /// `bytes` of application data were queued: count them and flush, unless
    /// write-delay leaves that to the timer.
    fn queued(&mut self, now: u32, bytes: usize) {
        self.counters.bytes_sent += bytes as u64;
        if !self.write_delay {
            self.arm_send_budget(now);
            self.kcp.flush(now);
            self.seal_output(now);
        }
    }

    /// Message mode: queues `message` whole (KCP fragments it; the peer receives it
    /// whole) and flushes unless write-delay is on. False, with nothing queued,
    /// while the send window has no room for all its fragments, or when it is
    /// empty or needs more than 255 fragments.
    pub fn send_message(&mut self, now: u32, message: &[u8]) -> bool {
        let fragments = message.len().div_ceil(self.kcp.mss());
        // A message larger than the whole window still goes once the window is empty.
        if fragments > self.free_segments() && self.kcp.wait_snd() > 0 {
            return false;
        }
        if self.kcp.send(message).is_err() {
            return false;
        }
        self.queued(now, message.len());
        true
    }

    /// Message mode: the size of the next whole message received, if any.
    pub fn peek_message(&self) -> Option<usize> {
        self.kcp.peek_size()
    }

    /// Message mode: appends the next whole message received to `out`; its size,
    /// or 0 when none is ready.
    pub fn recv_message(&mut self, out: &mut Vec<u8>) -> usize {
        let Some(size) = self.kcp.peek_size() else { return 0 };
        let at = out.len();
        out.resize(at + size, 0);
        let n = self.kcp.recv(&mut out[at..]).unwrap_or(0);
        out.truncate(at + n);
        self.counters.bytes_received += n as u64;
        n
    }

    /// Reads received bytes; 0 when none are ready.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = self.kcp.read(buf);
        self.counters.bytes_received += n as u64;
        n
    }

    /// Reads up to `limit` received bytes without copying them into a buffer: see
    /// [`Kcp::read_with`]. Returns the byte count; 0 when none are ready.
    pub fn read_with(&mut self, limit: usize, each: impl FnMut(&[u8])) -> usize {
        let n = self.kcp.read_with(limit, each);
        self.counters.bytes_received += n as u64;
        n
    }

    /// Whether [`Connection::read`] would return bytes.
    pub fn readable(&self) -> bool {
        self.kcp.readable()
    }

    /// Takes one datagram from the network: checks and decrypts it in place, then
    /// processes it. A datagram that fails the check, or a copy of a recent one,
    /// changes nothing (a copy is counted in [`Connection::replays`]).
    pub fn handle_datagram(&mut self, now: u32, datagram: &mut [u8]) -> Result<(), OpenError> {
        match self.crypto.open(datagram) {
            Ok(range) => {
                let nonce = self.crypto.nonce(datagram);
                if replay::fingerprint(nonce).is_some_and(|f| !self.first_sight(f)) {
                    return Ok(());
                }
                self.handle_plain(now, &datagram[range]);
                Ok(())
            }
            Err(e) => {
                if e == OpenError::Checksum {
                    self.counters.in_csum_errors += 1;
                }
                Err(e)
            }
        }
    }

    /// Records the nonce fingerprint of a datagram about to be handled; false (and
    /// counted) if it is a copy of one of the last [`SESSION_NONCES`] received.
    pub fn first_sight(&mut self, fingerprint: u64) -> bool {
        let fresh = self.recent.insert(fingerprint);
        self.replays += u64::from(!fresh);
        fresh
    }

    /// Whether the peer said it has no such session ([`kcp::CMD_RESET`]).
    pub fn reset_by_peer(&self) -> bool {
        self.reset_by_peer
    }

    /// Copies of recent datagrams dropped (replays, or the network's duplicates).
    pub fn replays(&self) -> u64 {
        self.replays
    }

    /// The evidence in `plain` (a datagram whose crypto layer was removed, not yet
    /// handled) that its sender received this side's segments: see
    /// `Kcp::evidence`.
    pub fn evidence(&self, plain: &[u8]) -> Option<u32> {
        Datagram::parse(plain).ok().and_then(|d| d.kcp()).and_then(|k| self.kcp.evidence(k.bytes()))
    }

    /// Takes one datagram whose crypto layer was already removed (the listener opens
    /// datagrams before it knows the session).
    pub fn handle_plain(&mut self, now: u32, plain: &[u8]) {
        self.counters.in_pkts += 1;
        self.counters.in_bytes += plain.len() as u64;
        let Ok(datagram) = Datagram::parse(plain) else {
            self.counters.kcp_in_errors += 1;
            return;
        };
        if datagram.kcp().is_some_and(|k| kcp::is_reset(k.bytes(), self.conv())) {
            self.reset_by_peer = true;
            return;
        }
        self.arm_send_budget(now);
        let Connection { kcp, decoder, counters, .. } = self;
        if let Some(segments) = datagram.kcp() {
            let _ = kcp.input(now, segments.bytes(), true);
        }
        if let Some(shard) = datagram.fec_shard() {
            // A peer may send FEC although this side has none configured: decode it
            // anyway, starting from (1, 1) and letting the decoder re-tune.
            let decoder = decoder.get_or_insert_with(|| FecDecoder::new(Shards::new(1, 1).expect("1/1 is valid")));
            decoder.decode(shard, |rebuilt| {
                let _ = kcp.input(now, rebuilt, false);
            });
        }
        if datagram == Datagram::Oob {
            counters.oob_packets += 1;
        }
        self.seal_output(now);
    }

    /// When [`Connection::handle_timeout`] wants to run, or `None` while idle.
    pub fn poll_timeout(&self) -> Option<u32> {
        self.kcp.poll_timeout()
    }

    /// Runs KCP's timer if due; call at [`Connection::poll_timeout`].
    pub fn handle_timeout(&mut self, now: u32) {
        self.arm_send_budget(now);
        self.kcp.handle_timeout(now);
        self.seal_output(now);
    }

    /// A FULL flush now (kcp-go flushes once more on `Close`).
    pub fn flush(&mut self, now: u32) {
        self.arm_send_budget(now);
        self.kcp.flush(now);
        self.seal_output(now);
    }

    /// Gives KCP as many bytes of segments as the bucket's tokens pay for once the
    /// FEC, crypto and parity overhead is added.
    fn arm_send_budget(&mut self, now: u32) {
        let Some(pacer) = &mut self.pacer else { return };
        let tokens = pacer.available(now);
        let cfg = self.kcp.config();
        let (kcp_mtu, wire_mtu) = (cfg.mtu, cfg.header_room + cfg.mtu + cfg.tail_room);
        let (data, total) = self.encoder.as_ref().map_or((1, 1), |e| (e.shards().data, e.shards().total()));
        self.kcp.set_send_budget(Some(tokens * kcp_mtu * data / (wire_mtu * total)));
    }

    /// Datagrams ready for the socket, in order: KCP output, then parity shards.
    pub fn transmits(&mut self) -> impl Iterator<Item = &[u8]> + '_ {
        let Connection { kcp, parity, .. } = self;
        kcp.transmits().iter().chain(parity.iter())
    }

    /// The `i`-th datagram of [`Connection::transmits`], if there are that many.
    pub fn transmit(&mut self, i: usize) -> Option<&[u8]> {
        let Connection { kcp, parity, .. } = self;
        let own = kcp.transmits();
        if i < own.len() {
            Some(own.get(i))
        } else {
            let i = i - own.len();
            (i < parity.len()).then(|| parity.get(i))
        }
    }

    /// Whether datagrams wait to be sent.
    pub fn has_transmits(&mut self) -> bool {
        !self.kcp.transmits().is_empty() || !self.parity.is_empty()
    }

    /// Forgets the datagrams returned by [`Connection::transmits`] (after sending).
    pub fn clear_transmits(&mut self) {
        self.kcp.transmits().clear();
        self.parity.clear();
        self.sealed = 0;
    }

    /// Adds FEC headers and parity to KCP's new datagrams and seals them all.
    fn seal_output(&mut self, now: u32) {
        let Connection { kcp, crypto, encoder, nonces, parity, sealed, counters, .. } = self;
        let room = crypto.header_len();
        let tail = crypto.tail_len();
        let mut nonce = [0u8; 16];
        let nonce = &mut nonce[..crypto.nonce_len()];
        let queue = kcp.transmits();
        let bytes_before = counters.out_bytes;
        for i in *sealed..queue.len() {
            let len = queue.get(i).len() + tail;
            queue.set_len(i, len);
            let datagram = queue.get_mut(i);
            let parity_count = match encoder {
                Some(enc) => enc.encode(now, &mut datagram[room..len - tail]),
                None => 0,
            };
            nonces.fill(nonce);
            crypto.seal(datagram, nonce);
            counters.out_pkts += 1;
            counters.out_bytes += len as u64;
            if let Some(enc) = encoder.as_ref().filter(|_| parity_count > 0) {
                for p in 0..parity_count {
                    parity.push_slot();
                    let at = parity.len() - 1;
                    let n = room + enc.write_parity(p, &mut parity.slot_mut(at)[room..]) + tail;
                    parity.set_len(at, n);
                    nonces.fill(nonce);
                    crypto.seal(parity.get_mut(at), nonce);
                    counters.out_pkts += 1;
                    counters.out_bytes += n as u64;
                }
            }
        }
        *sealed = queue.len();
        if let Some(pacer) = &mut self.pacer {
            pacer.charge((self.counters.out_bytes - bytes_before) as usize);
        }
    }

    /// This session's counters in kcp-go's SNMP terms (the process-wide ones —
    /// opens, `curr_estab`, `max_conn` — stay 0 here).
    pub fn snmp(&self) -> Snmp {
        let k = self.kcp.stats();
        let state = self.kcp.state();
        let mut s = self.counters;
        s.kcp_in_errors += k.in_errors;
        s.in_segs = k.in_segs;
        s.out_segs = k.out_segs;
        s.retrans_segs = k.retrans_segs;
        s.fast_retrans_segs = k.fast_retrans_segs;
        s.early_retrans_segs = k.early_retrans_segs;
        s.lost_segs = k.lost_segs;
        s.repeat_segs = k.repeat_segs;
        s.ring_buffer_snd_queue = state.snd_queue as u64;
        s.ring_buffer_rcv_queue = state.rcv_queue as u64;
        s.ring_buffer_snd_buffer = state.snd_buf as u64;
        if let Some(d) = &self.decoder {
            s.fec_full_shard_set = d.stats.full_shard_sets;
            s.fec_recovered = d.stats.recovered;
            s.fec_errs = d.stats.errors;
            s.fec_parity_shards = d.stats.parity_shards;
            s.fec_shard_set = d.groups_held() as u64;
            s.fec_shard_min = d.newest_group().map_or(0, u64::from);
        }
        if let Some(e) = &self.encoder {
            s.fec_errs += e.stats.errors;
        }
        s
    }
}
