//! kcp-go's SNMP counters (docs/protocol.md §8.7), per connection and summed.

/// Counter set in kcp-go's struct order (v5.6.72). Gauges are marked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snmp {
    /// Application bytes written (`BytesSent`).
    pub bytes_sent: u64,
    /// Application bytes read (`BytesReceived`).
    pub bytes_received: u64,
    /// Gauge: highest `curr_estab` seen.
    pub max_conn: u64,
    /// Sessions dialled (`ActiveOpens`).
    pub active_opens: u64,
    /// Sessions accepted (`PassiveOpens`).
    pub passive_opens: u64,
    /// Gauge: sessions open now.
    pub curr_estab: u64,
    /// Datagrams from an unexpected address (`InErrs`).
    pub in_errs: u64,
    /// Datagrams failing the checksum or tag (`InCsumErrors`).
    pub in_csum_errors: u64,
    /// Datagrams KCP refused (`KCPInErrors`).
    pub kcp_in_errors: u64,
    /// Datagrams received (`InPkts`).
    pub in_pkts: u64,
    /// Datagrams sent (`OutPkts`).
    pub out_pkts: u64,
    /// KCP segments received (`InSegs`).
    pub in_segs: u64,
    /// KCP segments sent (`OutSegs`).
    pub out_segs: u64,
    /// UDP payload bytes received (`InBytes`).
    pub in_bytes: u64,
    /// UDP payload bytes sent (`OutBytes`).
    pub out_bytes: u64,
    /// Segments resent, all causes (`RetransSegs`).
    pub retrans_segs: u64,
    /// Segments resent after duplicate ACKs (`FastRetransSegs`).
    pub fast_retrans_segs: u64,
    /// Segments resent early (`EarlyRetransSegs`).
    pub early_retrans_segs: u64,
    /// Segments resent after their timer ran out (`LostSegs`).
    pub lost_segs: u64,
    /// Duplicate segments received (`RepeatSegs`).
    pub repeat_segs: u64,
    /// FEC groups received whole (`FECFullShardSet`).
    pub fec_full_shard_set: u64,
    /// Data shards rebuilt by FEC (`FECRecovered`).
    pub fec_recovered: u64,
    /// FEC groups that could not be rebuilt (`FECErrs`).
    pub fec_errs: u64,
    /// Parity shards received (`FECParityShards`).
    pub fec_parity_shards: u64,
    /// Gauge: FEC groups held.
    pub fec_shard_set: u64,
    /// Gauge: newest FEC group id (kcp-go's name notwithstanding).
    pub fec_shard_min: u64,
    /// Gauge: snd_queue length at the latest flush.
    pub ring_buffer_snd_queue: u64,
    /// Gauge: rcv_queue length at the latest flush.
    pub ring_buffer_rcv_queue: u64,
    /// Gauge: snd_buf length at the latest flush.
    pub ring_buffer_snd_buffer: u64,
    /// Out-of-band datagrams received and dropped.
    pub oob_packets: u64,
}

/// (Go field name, CSV column name, accessor) in struct order.
type Field = (&'static str, &'static str, fn(&Snmp) -> u64);

const FIELDS: [Field; 30] = [
    ("BytesSent", "BytesSent", |s| s.bytes_sent),
    ("BytesReceived", "BytesReceived", |s| s.bytes_received),
    ("MaxConn", "MaxConn", |s| s.max_conn),
    ("ActiveOpens", "ActiveOpens", |s| s.active_opens),
    ("PassiveOpens", "PassiveOpens", |s| s.passive_opens),
    ("CurrEstab", "CurrEstab", |s| s.curr_estab),
    ("InErrs", "InErrs", |s| s.in_errs),
    ("InCsumErrors", "InCsumErrors", |s| s.in_csum_errors),
    ("KCPInErrors", "KCPInErrors", |s| s.kcp_in_errors),
    ("InPkts", "InPkts", |s| s.in_pkts),
    ("OutPkts", "OutPkts", |s| s.out_pkts),
    ("InSegs", "InSegs", |s| s.in_segs),
    ("OutSegs", "OutSegs", |s| s.out_segs),
    ("InBytes", "InBytes", |s| s.in_bytes),
    ("OutBytes", "OutBytes", |s| s.out_bytes),
    ("RetransSegs", "RetransSegs", |s| s.retrans_segs),
    ("FastRetransSegs", "FastRetransSegs", |s| s.fast_retrans_segs),
    ("EarlyRetransSegs", "EarlyRetransSegs", |s| s.early_retrans_segs),
    ("LostSegs", "LostSegs", |s| s.lost_segs),
    ("RepeatSegs", "RepeatSegs", |s| s.repeat_segs),
    ("FECFullShardSet", "FECFullShards", |s| s.fec_full_shard_set),
    ("FECRecovered", "FECRecovered", |s| s.fec_recovered),
    ("FECErrs", "FECErrs", |s| s.fec_errs),
    ("FECParityShards", "FECParityShards", |s| s.fec_parity_shards),
    ("FECShardSet", "FECShardSet", |s| s.fec_shard_set),
    ("FECShardMin", "FECShardMin", |s| s.fec_shard_min),
    ("RingBufferSndQueue", "RingBufferSndQueue", |s| s.ring_buffer_snd_queue),
    ("RingBufferRcvQueue", "RingBufferRcvQueue", |s| s.ring_buffer_rcv_queue),
    ("RingBufferSndBuffer", "RingBufferSndBuffer", |s| s.ring_buffer_snd_buffer),
    ("OOBPackets", "OOBPackets", |s| s.oob_packets),
];

/// CSV column order of kcp-go's `Header()`: the FEC columns differ from the struct.
const CSV_ORDER: [usize; 30] =
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 23, 22, 21, 24, 25, 26, 27, 28, 29];

impl Snmp {
    /// Adds `other`'s counters into `self`. Gauges add too, which is what a sum over
    /// connections wants for queue lengths and group counts; the caller sets the
    /// process-wide gauges (`max_conn`, `curr_estab`, `fec_shard_min`) itself.
    pub fn accumulate(&mut self, other: &Snmp) {
        macro_rules! add {
            ($($f:ident),*) => { $( self.$f += other.$f; )* };
        }
        add!(
            bytes_sent,
            bytes_received,
            max_conn,
            active_opens,
            passive_opens,
            curr_estab,
            in_errs,
            in_csum_errors,
            kcp_in_errors,
            in_pkts,
            out_pkts,
            in_segs,
            out_segs,
            in_bytes,
            out_bytes,
            retrans_segs,
            fast_retrans_segs,
            early_retrans_segs,
            lost_segs,
            repeat_segs,
            fec_full_shard_set,
            fec_recovered,
            fec_errs,
            fec_parity_shards,
            fec_shard_set,
            ring_buffer_snd_queue,
            ring_buffer_rcv_queue,
            ring_buffer_snd_buffer,
            oob_packets
        );
        self.fec_shard_min = self.fec_shard_min.max(other.fec_shard_min);
    }

    /// kcp-go's CSV header columns (`Header()`), without the leading `Unix`.
    pub fn csv_header() -> impl Iterator<Item = &'static str> {
        CSV_ORDER.iter().map(|&i| FIELDS[i].1)
    }

    /// Values in CSV column order.
    pub fn csv_values(&self) -> impl Iterator<Item = u64> + '_ {
        CSV_ORDER.iter().map(move |&i| (FIELDS[i].2)(self))
    }

    /// (Go field name, value) in struct order.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        FIELDS.iter().map(move |f| (f.0, (f.2)(self)))
    }
}

impl core::fmt::Display for Snmp {
    /// Go's `%+v` of a `*Snmp`: `&{BytesSent:1 BytesReceived:2 …}`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("&{")?;
        for (i, (name, value)) in self.fields().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}:{value}")?;
        }
        f.write_str("}")
    }
}
