//! The `/api/v1` resources: sessions, stats, config and events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures_util::Stream;
use kcpgate_core::{DropReason, ListenerStats, Snmp};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::{IntoParams, ToSchema};

use super::{Admin, ApiJson, ApiPath, ApiQuery, FieldError, Problem, Throttled, Unauthorized};
use crate::config::Role;
use crate::control::{Capture, Direction, SessionEvent, SessionInfo, Tunables, TunablesPatch};
use crate::transport::TransportKind;

/// Most sessions one page returns.
const MAX_PAGE: u32 = 1000;
/// Largest offset a list takes (far beyond any session count).
const MAX_OFFSET: u64 = 1_000_000_000;

/// How a session list is sorted: by any numeric field of a session.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    #[default]
    Id,
    Conv,
    AgeMs,
    IdleMs,
    SrttMs,
    RttvarMs,
    RtoMs,
    Cwnd,
    SndWnd,
    RcvWnd,
    RemoteWnd,
    InFlight,
    SndQueue,
    RcvQueue,
    BytesIn,
    BytesOut,
    PacketsIn,
    PacketsOut,
    Retrans,
    FastRetrans,
    EarlyRetrans,
    Lost,
    FecRecovered,
    FecErrors,
    Streams,
}

impl SortKey {
    fn of(self, s: &SessionInfo) -> u64 {
        let (k, t) = (&s.kcp, &s.traffic);
        match self {
            SortKey::Id => s.id,
            SortKey::Conv => s.conv.into(),
            SortKey::AgeMs => s.age_ms,
            SortKey::IdleMs => s.idle_ms,
            SortKey::SrttMs => k.srtt_ms.into(),
            SortKey::RttvarMs => k.rttvar_ms.into(),
            SortKey::RtoMs => k.rto_ms.into(),
            SortKey::Cwnd => k.cwnd.into(),
            SortKey::SndWnd => k.snd_wnd.into(),
            SortKey::RcvWnd => k.rcv_wnd.into(),
            SortKey::RemoteWnd => k.remote_wnd.into(),
            SortKey::InFlight => k.in_flight,
            SortKey::SndQueue => k.snd_queue,
            SortKey::RcvQueue => k.rcv_queue,
            SortKey::BytesIn => t.bytes_in,
            SortKey::BytesOut => t.bytes_out,
            SortKey::PacketsIn => t.packets_in,
            SortKey::PacketsOut => t.packets_out,
            SortKey::Retrans => t.retrans,
            SortKey::FastRetrans => t.fast_retrans,
            SortKey::EarlyRetrans => t.early_retrans,
            SortKey::Lost => t.lost,
            SortKey::FecRecovered => t.fec_recovered,
            SortKey::FecErrors => t.fec_errors,
            SortKey::Streams => s.streams.len() as u64,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Sessions to skip, after filtering and sorting.
    #[param(minimum = 0, maximum = 1_000_000_000, example = 0)]
    offset: Option<u64>,
    /// Sessions to return, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000, example = 100)]
    limit: Option<u32>,
    /// The numeric field to sort by (default id).
    #[param(inline)]
    sort: Option<SortKey>,
    /// asc (default) or desc.
    #[param(inline)]
    order: Option<Order>,
    /// Only sessions whose remote address contains this text, e.g. an IP.
    #[param(example = "203.0.113.7")]
    remote: Option<String>,
}

/// One page of the session list.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionPage {
    /// Sessions that match the filter, on all pages.
    pub total: u64,
    pub offset: u64,
    pub limit: u32,
    pub sessions: Vec<SessionInfo>,
}

/// Lists the live sessions.
#[utoipa::path(
    get,
    path = "/api/v1/sessions",
    tag = "sessions",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of sessions", body = SessionPage),
        (status = 400, description = "A bad query parameter", content_type = "application/problem+json", body = Problem),
        Unauthorized,
        Throttled,
    )
)]
pub async fn list_sessions(
    State(state): State<Admin>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<SessionPage>, Problem> {
    let limit = within("limit", q.limit.unwrap_or(100), 1..=MAX_PAGE)?;
    let offset = q.offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("offset must be at most {MAX_OFFSET} (got {offset})"),
        ));
    }
    let mut sessions = state.shared.registry.sessions().await;
    if let Some(text) = q.remote.as_deref().filter(|t| !t.is_empty()) {
        sessions.retain(|s| s.remote.to_string().contains(text));
    }
    let key = q.sort.unwrap_or_default();
    match q.order.unwrap_or_default() {
        Order::Asc => sessions.sort_by_key(|s| (key.of(s), s.id)),
        Order::Desc => sessions.sort_by_key(|s| std::cmp::Reverse((key.of(s), s.id))),
    }
    let total = sessions.len() as u64;
    let sessions = sessions.into_iter().skip(offset.min(total) as usize).take(limit as usize).collect();
    Ok(Json(SessionPage { total, offset, limit, sessions }))
}

/// One session, with its KCP state and streams.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = u64, Path, description = "The session's id (from the session list or events)", minimum = 0, example = 42000003)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The session", body = SessionInfo),
        (status = 400, description = "The id is not a number", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No live session has this id", content_type = "application/problem+json", body = Problem),
        Unauthorized,
        Throttled,
    )
)]
pub async fn get_session(State(state): State<Admin>, ApiPath(id): ApiPath<u64>) -> Result<Json<SessionInfo>, Problem> {
    state.shared.registry.session(id).await.map(Json).ok_or_else(|| no_session(id))
}

/// Query parameter `name`'s `value` when `range` holds it, else a 400 naming the range.
fn within<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, Problem> {
    if range.contains(&value) {
        return Ok(value);
    }
    let (low, high) = range.into_inner();
    Err(Problem::new(StatusCode::BAD_REQUEST, format!("{name} must be between {low} and {high} (got {value})")))
}

fn no_session(id: u64) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, format!("no live session has id {id}; list them at /api/v1/sessions"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KickQuery {
    /// Why, for the log and the session_closed event (at most 200 characters).
    #[param(max_length = 200, example = "cheating")]
    reason: Option<String>,
}

/// Closes ("kicks") a session: its streams end at once (the peer's applications
/// see their connections close), and the peer's datagrams for it are refused for
/// 60 s, so a client notices and opens a new session.
#[utoipa::path(
    delete,
    path = "/api/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = u64, Path, description = "The session's id (from the session list or events)", minimum = 0, example = 42000003), KickQuery),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The session was closed"),
        (status = 400, description = "A bad id or reason", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No live session has this id", content_type = "application/problem+json", body = Problem),
        Unauthorized,
        Throttled,
    )
)]
pub async fn kick_session(
    State(state): State<Admin>,
    ApiPath(id): ApiPath<u64>,
    ApiQuery(q): ApiQuery<KickQuery>,
) -> Result<StatusCode, Problem> {
    let reason = q.reason.unwrap_or_else(|| "closed by the operator".into());
    if reason.chars().count() > 200 {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "reason must be at most 200 characters"));
    }
    if state.shared.registry.kick(id, &reason).await {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_session(id))
    }
}

/// Most datagrams one capture takes.
const MAX_CAPTURE: u32 = 1000;
/// Captures that may run at once (each holds its datagrams until answered).
const MAX_CAPTURES_RUNNING: usize = 4;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CaptureQuery {
    /// Datagrams to capture, both ways together, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000, example = 50)]
    count: Option<u32>,
    /// Milliseconds to wait for them, 100 to 30000 (default 5000): the answer
    /// holds what came by then.
    #[param(minimum = 100, maximum = 30000, example = 5000)]
    timeout_ms: Option<u64>,
}

/// One captured datagram, exactly as it crossed the wire (still encrypted).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"direction": "in", "at_us": 1520, "data": "q83vASNFZ4mrze8BI0VniQ=="}))]
pub struct CapturedDatagramView {
    pub direction: Direction,
    /// Microseconds after the capture started.
    pub at_us: u64,
    /// The datagram's bytes, base64 (standard alphabet, padded).
    pub data: String,
}

/// What a capture took.
#[derive(Debug, Serialize, ToSchema)]
pub struct CaptureResult {
    /// The session when the capture started: its crypt, FEC and MTU tell a
    /// decoder how to read the datagrams (the key is never sent).
    pub session: SessionInfo,
    /// Whether `count` datagrams came before the timeout.
    pub complete: bool,
    pub datagrams: Vec<CapturedDatagramView>,
}

/// Captures the next datagrams a session receives and sends, for the packet
/// inspector: they are copied as they pass, still encrypted, and answered once
/// `count` have passed or `timeout_ms` ran out. Decoding them needs the key,
/// which the gateway never sends.
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{id}/capture",
    tag = "sessions",
    params(("id" = u64, Path, description = "The session's id (from the session list or events)", minimum = 0, example = 42000003), CaptureQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The captured datagrams", body = CaptureResult),
        (status = 400, description = "A bad id, count or timeout", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No live session has this id", content_type = "application/problem+json", body = Problem),
        (status = 429, description = "Four captures are running already", content_type = "application/problem+json", body = Problem),
        Unauthorized,
        Throttled,
    )
)]
pub async fn capture_session(
    State(state): State<Admin>,
    ApiPath(id): ApiPath<u64>,
    ApiQuery(q): ApiQuery<CaptureQuery>,
) -> Result<Json<CaptureResult>, Problem> {
    use base64::Engine;
    let count = within("count", q.count.unwrap_or(50), 1..=MAX_CAPTURE)?;
    let timeout_ms = within("timeout_ms", q.timeout_ms.unwrap_or(5000), 100..=30_000)?;
    let running = &state.captures;
    if running.fetch_add(1, Ordering::Relaxed) >= MAX_CAPTURES_RUNNING {
        running.fetch_sub(1, Ordering::Relaxed);
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{MAX_CAPTURES_RUNNING} captures are running already: try again when one has finished"),
        ));
    }
    // Counted down however the request ends (a client that hangs up included).
    struct CaptureSlot<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for CaptureSlot<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let _running = CaptureSlot(running);
    let capture = std::sync::Arc::new(Capture::new(count as usize));
    let session = state.shared.registry.capture(id, &capture).await.ok_or_else(|| no_session(id))?;
    let taken = capture.finish(Duration::from_millis(timeout_ms)).await;
    let datagrams: Vec<CapturedDatagramView> = taken
        .into_iter()
        .map(|(direction, at_us, bytes)| CapturedDatagramView {
            direction,
            at_us,
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
        })
        .collect();
    Ok(Json(CaptureResult { session, complete: datagrams.len() == count as usize, datagrams }))
}

macro_rules! snmp_counters {
    ($($go:tt $field:ident),* $(,)?) => {
        /// kcp-go's SNMP counters (docs/protocol.md §8.7), summed over every session, with
        /// kcp-go's names.
        #[derive(Debug, Serialize, ToSchema)]
        #[schema(example = json!({
            "BytesSent": 9_801_223, "BytesReceived": 1_648_002, "MaxConn": 12, "ActiveOpens": 0,
            "PassiveOpens": 57, "CurrEstab": 10, "InErrs": 0, "InCsumErrors": 3, "KCPInErrors": 0,
            "InPkts": 15_602, "OutPkts": 10_233, "InSegs": 16_020, "OutSegs": 11_870, "InBytes": 1_843_211,
            "OutBytes": 9_921_740, "RetransSegs": 41, "FastRetransSegs": 30, "EarlyRetransSegs": 2,
            "LostSegs": 9, "RepeatSegs": 5, "FECFullShardSet": 1180, "FECRecovered": 17, "FECErrs": 0,
            "FECParityShards": 3540, "FECShardSet": 20, "FECShardMin": 1197, "RingBufferSndQueue": 0,
            "RingBufferRcvQueue": 0, "RingBufferSndBuffer": 3, "OOBPackets": 0
        }))]
        pub struct SnmpCounters {
            $( #[serde(rename = $go)] pub $field: u64, )*
        }

        impl From<&Snmp> for SnmpCounters {
            fn from(s: &Snmp) -> SnmpCounters {
                SnmpCounters { $( $field: s.$field, )* }
            }
        }
    };
}

snmp_counters!(
    "BytesSent" bytes_sent,
    "BytesReceived" bytes_received,
    "MaxConn" max_conn,
    "ActiveOpens" active_opens,
    "PassiveOpens" passive_opens,
    "CurrEstab" curr_estab,
    "InErrs" in_errs,
    "InCsumErrors" in_csum_errors,
    "KCPInErrors" kcp_in_errors,
    "InPkts" in_pkts,
    "OutPkts" out_pkts,
    "InSegs" in_segs,
    "OutSegs" out_segs,
    "InBytes" in_bytes,
    "OutBytes" out_bytes,
    "RetransSegs" retrans_segs,
    "FastRetransSegs" fast_retrans_segs,
    "EarlyRetransSegs" early_retrans_segs,
    "LostSegs" lost_segs,
    "RepeatSegs" repeat_segs,
    "FECFullShardSet" fec_full_shard_set,
    "FECRecovered" fec_recovered,
    "FECErrs" fec_errs,
    "FECParityShards" fec_parity_shards,
    "FECShardSet" fec_shard_set,
    "FECShardMin" fec_shard_min,
    "RingBufferSndQueue" ring_buffer_snd_queue,
    "RingBufferRcvQueue" ring_buffer_rcv_queue,
    "RingBufferSndBuffer" ring_buffer_snd_buffer,
    "OOBPackets" oob_packets,
);

/// Per-second rates since an earlier reading of the counters: over the last 10 s
/// when the API was read in that time, else since the last reading in the last
/// minute; all 0 (window 0) on a first reading.
#[derive(Debug, Default, Serialize, ToSchema)]
#[schema(example = json!({"window_seconds": 10.0, "bytes_in_per_second": 183211.5, "bytes_out_per_second": 992174.0, "packets_in_per_second": 1560.2, "packets_out_per_second": 1023.3, "retrans_per_second": 4.1, "sessions_opened_per_second": 0.2}))]
pub struct Rates {
    /// The seconds the rates are averaged over.
    pub window_seconds: f64,
    pub bytes_in_per_second: f64,
    pub bytes_out_per_second: f64,
    pub packets_in_per_second: f64,
    pub packets_out_per_second: f64,
    pub retrans_per_second: f64,
    pub sessions_opened_per_second: f64,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"open": 12, "opened": 3120, "closed": 3108, "dial_failures": 2, "tcp_failures": 1}))]
pub struct StreamStats {
    pub open: u64,
    pub opened: u64,
    pub closed: u64,
    /// Server: dials of the backend that failed.
    pub dial_failures: u64,
    /// TCP connections that failed mid-stream.
    pub tcp_failures: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"open": 10, "refused_datagrams": 0, "resets_sent": 2, "proven": 12, "unproven_expired": 3, "amplification_held": 7, "replaced": 1, "moved": 0}))]
pub struct SessionStats {
    pub open: u64,
    /// Datagrams dropped because `max_sessions` sessions were open.
    pub refused_datagrams: u64,
    /// Resets sent to peers of sessions this gateway does not have (after a
    /// restart, or a kick): a kcpgate client opens a new session at once.
    pub resets_sent: u64,
    /// UDP sessions whose peer proved it receives at its address (it acknowledged
    /// the gateway's first segment, echoing its random timestamp); only then is a
    /// session listed and its streams dialled.
    pub proven: u64,
    /// New UDP sessions forgotten because their peer did not prove its address
    /// within 5 s: forged openings, or a client that went away at once.
    pub unproven_expired: u64,
    /// Datagrams not sent because a session that had not proven its address had
    /// already sent three times the bytes it received.
    pub amplification_held: u64,
    /// Sessions replaced by a new conversation from the same address (a client
    /// that restarted, once its new session proved its address).
    pub replaced: u64,
    /// Sessions that followed their player to a new address (`-address-change`).
    pub moved: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"version": "0.1.0 (commit 2825101, 2026-11-30)", "role": "server", "uptime_seconds": 86400.5, "rss_bytes": 31457280, "cpu_seconds": 512.25}))]
pub struct ProcessStats {
    /// kcpgate's version and the commit it was built from.
    #[schema(example = "0.1.0 (commit 2825101, 2026-11-30)")]
    pub version: String,
    #[schema(example = "server")]
    pub role: String,
    pub uptime_seconds: f64,
    /// Resident memory.
    pub rss_bytes: u64,
    /// User and system CPU time used since start.
    pub cpu_seconds: f64,
}

/// One transport's share of the counters, for charts by transport. Counters
/// only grow: a reader takes rates from two readings.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"transport": "udp", "sessions_open": 10, "sessions_opened": 57, "bytes_in": 1843211, "bytes_out": 9921740, "packets_in": 15602, "packets_out": 10233, "segments_out": 11870, "retrans_segs": 41, "lost_segs": 9, "fec_recovered": 17}))]
pub struct TransportStats {
    pub transport: TransportKind,
    pub sessions_open: u64,
    /// Sessions opened since the start.
    pub sessions_opened: u64,
    /// Datagram payload bytes received and sent.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    /// KCP segments sent, retransmissions included.
    pub segments_out: u64,
    /// KCP segments retransmitted, all causes.
    pub retrans_segs: u64,
    /// KCP segments retransmitted after a timeout (taken as lost).
    pub lost_segs: u64,
    /// Datagrams FEC recovered.
    pub fec_recovered: u64,
}

/// Datagrams dropped before reaching a session, by reason: one count per
/// [`DropReason`] the gateway can meet, named and described as the core names and
/// describes them. Each is also `kcpgate_datagrams_dropped_total{reason}` in
/// `/metrics`.
#[derive(Debug)]
pub struct DroppedDatagrams(ListenerStats);

impl DroppedDatagrams {
    /// The reasons a gateway counts: every one but the accept backlog's (its
    /// endpoints take each new session at once, so no backlog fills).
    fn reasons() -> impl Iterator<Item = DropReason> {
        DropReason::ALL.into_iter().filter(|reason| *reason != DropReason::BacklogFull)
    }

    /// The reasons a gateway counts, with their counts.
    pub fn counts(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DroppedDatagrams::reasons().map(|reason| (reason, self.0[reason]))
    }
}

impl From<&ListenerStats> for DroppedDatagrams {
    fn from(s: &ListenerStats) -> DroppedDatagrams {
        DroppedDatagrams(*s)
    }
}

impl Serialize for DroppedDatagrams {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for (reason, n) in self.counts() {
            map.serialize_entry(reason.name(), &n)?;
        }
        map.end()
    }
}

impl utoipa::PartialSchema for DroppedDatagrams {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        let typical = |reason| match reason {
            DropReason::Checksum => 12,
            DropReason::Replayed => 3,
            DropReason::MidSession => 41,
            _ => 0,
        };
        let example: serde_json::Map<String, serde_json::Value> =
            DroppedDatagrams::reasons().map(|reason| (reason.name().to_string(), typical(reason).into())).collect();
        let mut object = ObjectBuilder::new()
            .description(Some(
                "Datagrams dropped before reaching a session, by reason. Each is also\n\
                 `kcpgate_datagrams_dropped_total{reason}` in `/metrics`.",
            ))
            .examples([serde_json::Value::Object(example)]);
        for reason in DroppedDatagrams::reasons() {
            let count = ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(0))
                .description(Some(reason.to_string()));
            object = object.property(reason.name(), count).required(reason.name());
        }
        object.into()
    }
}

impl ToSchema for DroppedDatagrams {}

/// Everything counted, at once.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub snmp: SnmpCounters,
    pub rates: Rates,
    pub sessions: SessionStats,
    pub streams: StreamStats,
    pub process: ProcessStats,
    /// The counters of each transport (udp, webtransport).
    pub transports: Vec<TransportStats>,
    pub dropped: DroppedDatagrams,
}

/// Counters, rates and process figures.
#[utoipa::path(
    get,
    path = "/api/v1/stats",
    tag = "stats",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The counters", body = Stats),
        Unauthorized,
        Throttled,
    )
)]
pub async fn get_stats(State(state): State<Admin>) -> Json<Stats> {
    Json(stats(&state).await)
}

pub(super) async fn stats(state: &super::AdminState) -> Stats {
    let by_transport = state.shared.registry.counters_by_transport().await;
    let dropped = state.shared.registry.dropped().await;
    stats_of(state, &crate::control::total(&by_transport), &by_transport, &dropped)
}

/// [`Stats`] with the counters already collected: the SNMP total and by transport,
/// and the drops.
pub(super) fn stats_of(
    state: &super::AdminState,
    snmp: &Snmp,
    by_transport: &[Snmp; 2],
    dropped: &ListenerStats,
) -> Stats {
    let streams = &state.shared.streams;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let (opened, closed) = (get(&streams.opened), get(&streams.closed));
    Stats {
        snmp: SnmpCounters::from(snmp),
        rates: state.sampler.observe(Instant::now(), snmp),
        sessions: SessionStats {
            open: state.shared.registry.open_sessions(),
            refused_datagrams: state.shared.registry.refused_datagrams(),
            resets_sent: dropped.resets,
            proven: dropped.proven,
            unproven_expired: dropped.unproven_expired,
            amplification_held: dropped.amplification_held,
            replaced: dropped.replaced,
            moved: dropped.moved,
        },
        streams: StreamStats {
            open: opened.saturating_sub(closed),
            opened,
            closed,
            dial_failures: get(&streams.dial_failures),
            tcp_failures: get(&streams.tcp_failures),
        },
        process: process_stats(state),
        transports: state
            .shared
            .registry
            .sessions_by_transport()
            .zip(by_transport)
            .map(|((transport, sessions_open, sessions_opened), s)| TransportStats {
                transport,
                sessions_open,
                sessions_opened,
                bytes_in: s.in_bytes,
                bytes_out: s.out_bytes,
                packets_in: s.in_pkts,
                packets_out: s.out_pkts,
                segments_out: s.out_segs,
                retrans_segs: s.retrans_segs,
                lost_segs: s.lost_segs,
                fec_recovered: s.fec_recovered,
            })
            .collect(),
        dropped: DroppedDatagrams::from(dropped),
    }
}

fn process_stats(state: &super::AdminState) -> ProcessStats {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    let rss_pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    let cpu_seconds = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        secs(u.user_time()) + secs(u.system_time())
    });
    ProcessStats {
        version: crate::VERSION.into(),
        role: state.process.role.name().into(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        rss_bytes: rss_pages * page,
        cpu_seconds,
    }
}

/// Counters seen by earlier requests, for rates. Nothing samples in the background:
/// an API nobody reads must not wake the data path. A dashboard or a poller that
/// reads every few seconds gets rates over the last 10 s.
#[derive(Default)]
pub struct Sampler {
    samples: Mutex<VecDeque<(Instant, Snmp)>>,
}

/// The window rates are averaged over, at most; older samples are kept up to a
/// minute, for a reader that comes back less often.
const RATE_WINDOW: Duration = Duration::from_secs(10);
const SAMPLE_KEEP: Duration = Duration::from_secs(60);
/// Samples closer together than this are not kept (a reader polling fast).
const SAMPLE_SPACING: Duration = Duration::from_millis(250);

impl Sampler {
    /// Notes `now`'s counters and returns the rates since the oldest sample of the
    /// last 10 s (or, without one, the newest of the last minute).
    fn observe(&self, now: Instant, snmp: &Snmp) -> Rates {
        let mut samples = self.samples.lock().expect("sampler lock");
        while samples.front().is_some_and(|(at, _)| now.duration_since(*at) > SAMPLE_KEEP) {
            samples.pop_front();
        }
        let base = samples.iter().find(|(at, _)| now.duration_since(*at) <= RATE_WINDOW).or(samples.back()).copied();
        if samples.back().is_none_or(|(at, _)| now.duration_since(*at) >= SAMPLE_SPACING) {
            samples.push_back((now, *snmp));
        }
        let Some((at, first)) = base else { return Rates::default() };
        let secs = now.duration_since(at).as_secs_f64();
        if secs <= 0.0 {
            return Rates::default();
        }
        let rate = |f: fn(&Snmp) -> u64| f(snmp).saturating_sub(f(&first)) as f64 / secs;
        Rates {
            window_seconds: secs,
            bytes_in_per_second: rate(|s| s.in_bytes),
            bytes_out_per_second: rate(|s| s.out_bytes),
            packets_in_per_second: rate(|s| s.in_pkts),
            packets_out_per_second: rate(|s| s.out_pkts),
            retrans_per_second: rate(|s| s.retrans_segs),
            sessions_opened_per_second: rate(|s| s.passive_opens + s.active_opens),
        }
    }
}

/// The running configuration. Secrets are redacted.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "role": "server",
    "process": {"admin": "0.0.0.0:8080", "admin_token_set": true, "drain_timeout": 30, "open_rate": 1000,
                "open_rate_per_source": 50},
    "listeners": [{
        "name": "native", "transport": "udp", "listen": ":29900", "target": "127.0.0.1:7000", "key": "(redacted)",
        "crypt": "aes", "mtu": 1350, "datashard": 10, "parityshard": 3, "dscp": 46, "nocomp": false,
        "acknodelay": false, "sockbuf": 4_194_304, "smuxver": null, "smuxbuf": 4_194_304, "framesize": 8192,
        "streambuf": 2_097_152, "keepalive": 10, "closewait": 30, "qpp": false, "qpp_count": 61,
        "tunables": {"mode": "fast3", "nodelay": 1, "interval": 10, "resend": 2, "nc": 1, "sndwnd": 1024,
                     "rcvwnd": 1024, "ratelimit": 0, "max_sessions": 5000}
    }],
    "tunables": {"mode": "fast3", "nodelay": 1, "interval": 10, "resend": 2, "nc": 1, "sndwnd": 1024,
                 "rcvwnd": 1024, "ratelimit": 0, "max_sessions": 5000}
}))]
pub struct RunningConfig {
    #[schema(example = "server")]
    pub role: String,
    /// What the whole process shares.
    pub process: ProcessConfig,
    /// Every listener with its own settings (a client: its one connection).
    pub listeners: Vec<ListenerConfig>,
    /// The first listener's run-time tunables (the fields `PATCH` takes).
    pub tunables: Tunables,
}

/// The settings of the whole process; each role shows only its own.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessConfig {
    #[schema(example = "127.0.0.1:8080")]
    pub admin: String,
    /// Whether the admin API needs a token (the token itself is never shown).
    pub admin_token_set: bool,
    /// Seconds open streams may run on after SIGTERM.
    pub drain_timeout: u64,
    /// Server: new sessions per second in all, and from one IP address (0: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_rate_per_source: Option<u32>,
    /// Client: sessions to spread connections over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn: Option<u32>,
    /// Client: seconds after which a session takes no new connections (0: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoexpire: Option<u64>,
    /// Client: seconds an expired session may live on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scavengettl: Option<u64>,
}

/// One listener's settings (a client's: its connection to the server).
#[derive(Debug, Serialize, ToSchema)]
pub struct ListenerConfig {
    /// The name `-config` gave it (else its address); `PATCH ?listener=` takes it.
    #[schema(example = "native")]
    pub name: String,
    /// `udp`, or `webtransport` for browsers; a client's local side is `tcp`.
    #[schema(example = "udp")]
    pub transport: String,
    /// Server: the UDP (or WebTransport) address; client: the local TCP address.
    #[schema(example = ":29900")]
    pub listen: String,
    /// Server: backend address; client: the server's address.
    #[schema(example = "127.0.0.1:12948")]
    pub target: String,
    /// Always "(redacted)".
    #[schema(example = "(redacted)")]
    pub key: String,
    #[schema(example = "aes")]
    pub crypt: String,
    pub mtu: u16,
    pub datashard: u8,
    pub parityshard: u8,
    pub dscp: u8,
    pub nocomp: bool,
    pub acknodelay: bool,
    pub sockbuf: u32,
    /// The smux version, or null for a server that serves both.
    pub smuxver: Option<u8>,
    pub smuxbuf: u32,
    pub framesize: u16,
    pub streambuf: u32,
    pub keepalive: u32,
    pub closewait: u32,
    pub qpp: bool,
    pub qpp_count: u32,
    /// What can change at run time (`PATCH ?listener=` this listener's name).
    pub tunables: Tunables,
}

fn listener_config(plan: &crate::runtime::Plan) -> ListenerConfig {
    let tuning = plan.tuning(); // a reload's settings, for sessions opened now
    let s = &tuning.settings;
    let n = &s.session.numbers;
    let (transport, listen) = match (s.role, s.listen_udp) {
        (Role::Client, _) => ("tcp", s.listen.clone()),
        (Role::Server, true) => ("udp", s.listen.clone()),
        (Role::Server, false) => ("webtransport", s.webtransport.clone()),
    };
    ListenerConfig {
        name: plan.name.clone(),
        transport: transport.into(),
        listen,
        target: s.target.clone(),
        key: "(redacted)".into(),
        crypt: s.session.crypt.name().into(),
        mtu: n.mtu,
        datashard: n.datashard,
        parityshard: n.parityshard,
        dscp: plan.settings.dscp, // the sockets' own: they keep what they opened with
        nocomp: s.session.nocomp,
        acknodelay: s.session.acknodelay,
        sockbuf: plan.settings.sockbuf,
        smuxver: (!s.session.smux_detect).then_some(n.smuxver),
        smuxbuf: n.smuxbuf,
        framesize: n.framesize,
        streambuf: n.streambuf,
        keepalive: n.keepalive,
        closewait: n.closewait,
        qpp: s.session.qpp,
        qpp_count: n.qpp_count,
        tunables: tuning.tunables(),
    }
}

fn running_config(state: &super::AdminState) -> RunningConfig {
    let s = &state.process;
    let listeners = state.listeners.plans_now();
    let (server, client) = (s.role == Role::Server, s.role == Role::Client);
    RunningConfig {
        role: s.role.name().into(),
        process: ProcessConfig {
            admin: s.admin.clone(),
            admin_token_set: !s.admin_token.is_empty(),
            drain_timeout: s.drain_timeout,
            open_rate: server.then_some(s.open_rate),
            open_rate_per_source: server.then_some(s.open_rate_per_source),
            conn: client.then_some(s.conn),
            autoexpire: client.then_some(s.autoexpire),
            scavengettl: client.then_some(s.scavengettl),
        },
        listeners: listeners.iter().map(|plan| listener_config(plan)).collect(),
        tunables: listeners[0].tuning().tunables(),
    }
}

/// The running configuration.
#[utoipa::path(
    get,
    path = "/api/v1/config",
    tag = "config",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The configuration", body = RunningConfig),
        Unauthorized,
        Throttled,
    )
)]
pub async fn get_config(State(state): State<Admin>) -> Json<RunningConfig> {
    Json(running_config(&state))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PatchQuery {
    /// The listener to change, by name (`GET /api/v1/config` lists them); needed
    /// only when there are several.
    #[param(max_length = 200, example = "native")]
    listener: Option<String>,
}

/// Changes one listener's tunables for sessions opened from now on. Only the
/// fields given change; a bad value changes nothing and is named in the answer.
#[utoipa::path(
    patch,
    path = "/api/v1/config",
    tag = "config",
    params(PatchQuery),
    request_body(content = TunablesPatch, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The changed configuration", body = RunningConfig),
        (status = 400, description = "The body is not a JSON object of known fields, or the listener is not named while there are several", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No listener has this name", content_type = "application/problem+json", body = Problem),
        (status = 415, description = "The body is not application/json", content_type = "application/problem+json", body = Problem),
        (status = 422, description = "A value is of the wrong type or out of range; each such field is named", content_type = "application/problem+json", body = Problem),
        Unauthorized,
        Throttled,
    )
)]
pub async fn patch_config(
    State(state): State<Admin>,
    ApiQuery(q): ApiQuery<PatchQuery>,
    ApiJson(body): ApiJson<serde_json::Map<String, serde_json::Value>>,
) -> Result<Json<RunningConfig>, Problem> {
    let listeners = state.listeners.plans_now();
    let names = || listeners.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
    let plan = match &q.listener {
        Some(name) => listeners.iter().find(|p| &p.name == name).ok_or_else(|| {
            Problem::new(StatusCode::NOT_FOUND, format!("no listener is named {name:?}; the listeners are {}", names()))
        })?,
        None if listeners.len() == 1 => &listeners[0],
        None => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("this gateway has {} listeners: say which with ?listener=NAME ({})", listeners.len(), names()),
            ))
        }
    };
    // Field by field, through a map (serde would also take a struct from a JSON
    // array), so that every wrong field is named, not only the first.
    let mut wrong = Vec::new();
    let mut valid = serde_json::Map::new();
    for (field, value) in body {
        let fields = TunablesPatch::fields();
        if !fields.contains(&field.as_str()) {
            let known = fields.join(", ");
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("unknown field {field:?}: the fields are {known}"),
            ));
        }
        let single = serde_json::Map::from_iter([(field.clone(), value.clone())]);
        match serde_json::from_value::<TunablesPatch>(serde_json::Value::Object(single)) {
            Ok(_) => {
                valid.insert(field, value);
            }
            Err(e) => wrong.push(FieldError { field, message: e.to_string() }),
        }
    }
    let patch: TunablesPatch = serde_json::from_value(serde_json::Value::Object(valid))
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, format!("the body is not a valid change: {e}")))?;
    let current = plan.tuning();
    let before = current.tunables();
    let result = if wrong.is_empty() {
        plan.retune(&patch)
    } else {
        // Only to name the fields out of range as well; nothing changes.
        let (mut session, mut max_sessions) = (current.session().clone(), current.max_sessions());
        patch.apply(&mut session, &mut max_sessions).map(|()| before.clone())
    };
    match result {
        Ok(tunables) if wrong.is_empty() => {
            match changes(&before, &tunables) {
                changed if changed.is_empty() => tracing::info!("PATCH /api/v1/config: nothing changed"),
                changed => tracing::info!(listener = %plan.name, "tunables changed for new sessions: {changed}"),
            }
            state.shared.registry.retune().await;
            Ok(Json(running_config(&state)))
        }
        checked => {
            let out_of_range = checked.err().unwrap_or_default();
            wrong.extend(out_of_range.into_iter().map(|(field, message)| FieldError { field: field.into(), message }));
            let mut problem = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "nothing changed: fix the fields below");
            problem.errors = wrong;
            Err(problem)
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Milliseconds between `stats` events, 100 to 60000 (default 1000).
    #[param(minimum = 100, maximum = 60000, example = 1000)]
    interval_ms: Option<u64>,
    /// End the stream after this many events, 1 to 10000 (default: never);
    /// `max_events=1` gives one `stats` snapshot at once, for scripts.
    #[param(minimum = 1, maximum = 10000, example = 1)]
    max_events: Option<u32>,
}

/// What an event is named.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamEventName {
    Stats,
    SessionOpened,
    SessionClosed,
    SessionMoved,
    Lagged,
}

impl StreamEventName {
    fn name(&self) -> &'static str {
        match self {
            StreamEventName::Stats => "stats",
            StreamEventName::SessionOpened => "session_opened",
            StreamEventName::SessionClosed => "session_closed",
            StreamEventName::SessionMoved => "session_moved",
            StreamEventName::Lagged => "lagged",
        }
    }
}

/// One Server-Sent Event of `/api/v1/events` (each event of the stream, not the
/// stream: the OpenAPI 3.1 reading of `text/event-stream`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = StreamEvent, example = json!({"event": "session_opened", "data": "{\"type\":\"session_opened\",\"id\":42,\"conv\":3541092111,\"remote\":\"203.0.113.7:50812\",\"transport\":\"udp\"}"}))]
pub struct EventMessage {
    pub event: StreamEventName,
    /// JSON: a [`Stats`] object for `stats`, an `Event` for `session_opened`,
    /// `session_closed` and `session_moved`, `{"missed": n}` for `lagged`.
    #[schema(content_media_type = "application/json")]
    pub data: String,
}

/// A live stream of Server-Sent Events: `stats` (a [`Stats`] object) at once and then
/// every `interval_ms`; `session_opened`, `session_closed` and `session_moved`
/// (`Event`) as they happen; `lagged` ({"missed": n}) when a slow reader missed session events. It
/// never ends unless `max_events` is given. Its size does not grow with the session
/// count: `stats` are totals, and sessions appear only as they open and close.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    params(EventsQuery),
    security(("bearer" = [])),
    responses(
        (
            status = 200,
            description = "The event stream (endless without max_events)",
            content_type = "text/event-stream",
            body = EventMessage,
            example = "event: session_opened\ndata: {\"type\":\"session_opened\",\"id\":42,\"conv\":3541092111,\"remote\":\"203.0.113.7:50812\"}\n\n"
        ),
        (status = 400, description = "A bad query parameter", content_type = "application/problem+json", body = Problem),
        (status = 503, description = "As many event streams are open as the gateway serves (32)", content_type = "application/problem+json", body = Problem),
        Unauthorized,
        Throttled,
    )
)]
pub async fn events(
    State(state): State<Admin>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    let interval_ms = within("interval_ms", q.interval_ms.unwrap_or(1000), 100..=60_000)?;
    if let Some(n) = q.max_events {
        within("max_events", n, 1..=10_000)?;
    }
    let slot = EventStreamSlot::take(&state).ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} event streams are open, the most this gateway serves: close a dashboard",
                super::MAX_EVENT_STREAMS
            ),
        )
    })?;
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let changes = state.shared.registry.subscribe();
    let left = q.max_events;
    let stream = futures_util::stream::unfold(
        (state, tick, changes, left, slot),
        |(state, mut tick, mut changes, left, slot)| async move {
            if left == Some(0) {
                return None;
            }
            let event = tokio::select! {
                _ = tick.tick() => SseEvent::default().event(StreamEventName::Stats.name()).json_data(stats(&state).await),
                change = changes.recv() => match change {
                    Ok(e) => {
                        let name = match e {
                            SessionEvent::SessionOpened { .. } => StreamEventName::SessionOpened,
                            SessionEvent::SessionClosed { .. } => StreamEventName::SessionClosed,
                            SessionEvent::SessionMoved { .. } => StreamEventName::SessionMoved,
                        };
                        SseEvent::default().event(name.name()).json_data(e)
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        SseEvent::default().event(StreamEventName::Lagged.name()).json_data(serde_json::json!({ "missed": missed }))
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            let event = event.unwrap_or_else(|e| SseEvent::default().event("error").data(e.to_string()));
            Some((Ok(event), (state, tick, changes, left.map(|n| n - 1), slot)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One of the [`super::MAX_EVENT_STREAMS`] places for event streams, given back
/// when its stream ends.
struct EventStreamSlot(Admin);

impl EventStreamSlot {
    fn take(state: &Admin) -> Option<EventStreamSlot> {
        let open = &state.event_streams;
        open.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < super::MAX_EVENT_STREAMS).then_some(n + 1))
            .ok()
            .map(|_| EventStreamSlot(state.clone()))
    }
}

impl Drop for EventStreamSlot {
    fn drop(&mut self) {
        self.0.event_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What differs between two sets of tunables, as the API names them:
/// "sndwnd 1024 → 512, mode fast → fast3"; empty when nothing does.
fn changes(before: &crate::config::Tunables, after: &crate::config::Tunables) -> String {
    let (serde_json::Value::Object(old), serde_json::Value::Object(new)) =
        (serde_json::json!(before), serde_json::json!(after))
    else {
        return String::new();
    };
    let show = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    new.iter()
        .filter(|(name, value)| old.get(*name) != Some(value))
        .map(|(name, value)| format!("{name} {} → {}", old.get(name).map_or_else(String::new, show), show(value)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_in(n: u64) -> Snmp {
        Snmp { in_bytes: n, ..Snmp::default() }
    }

    /// Rates come from earlier readings: over the last 10 s when there are some,
    /// else since the newest reading of the last minute.
    #[test]
    fn rates_are_measured_between_readings() {
        let sampler = Sampler::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(sampler.observe(at(0), &bytes_in(0)).window_seconds, 0.0, "a first reading has no rate");
        let r = sampler.observe(at(2), &bytes_in(2_000));
        assert_eq!((r.window_seconds, r.bytes_in_per_second), (2.0, 1_000.0));
        let r = sampler.observe(at(8), &bytes_in(14_000));
        assert_eq!((r.window_seconds, r.bytes_in_per_second), (8.0, 1_750.0), "from the oldest of the last 10 s");
        let r = sampler.observe(at(30), &bytes_in(14_000));
        assert_eq!((r.window_seconds, r.bytes_in_per_second), (22.0, 0.0), "none in 10 s: the newest before");
        let r = sampler.observe(at(200), &bytes_in(15_000));
        assert_eq!(r.window_seconds, 0.0, "readings older than a minute are forgotten");
    }

    #[test]
    fn a_change_is_logged_field_by_field_and_no_change_as_none() {
        use crate::config::{Profile, Role, Settings, Tunables};
        let settings = Settings::parse(Role::Server, Vec::<String>::new()).unwrap();
        let before = Tunables::of(&settings.session, settings.max_sessions);
        assert_eq!(super::changes(&before, &before), "", "PATCH {{}} changes nothing");
        let mut after = before.clone();
        after.sndwnd = 512;
        after.mode = Profile::Fast3;
        let text = super::changes(&before, &after);
        assert!(text.contains("sndwnd 1024 → 512") && text.contains("mode fast → fast3"), "{text}");
        assert!(!text.contains("Tunables") && !text.contains("rcvwnd"), "{text}");
    }
}

/// What `PUT /api/v1/config` did: each listener's fate, and the configuration now.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReloadAnswer {
    pub reload: crate::listeners::Reloaded,
    pub config: RunningConfig,
}

/// Replaces the configuration with a new version of the `-config` file (its
/// TOML text, as `SIGHUP` would read it): checked whole first, then listeners
/// the file adds start, removed ones drain (their open streams run on for
/// `-drain-timeout`), and the others take their new settings for sessions and
/// streams opened from now on; open sessions keep their key, crypt and settings.
/// A file that is wrong changes nothing, and the answer says where and why.
#[utoipa::path(
    put,
    path = "/api/v1/config",
    tag = "config",
    request_body(content = String, content_type = "text/plain", description = "The configuration file's TOML text"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Applied: what changed, and the configuration now", body = ReloadAnswer),
        (status = 400, description = "The body is not UTF-8 text", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "No reload now: a client, or a gateway that is stopping", content_type = "application/problem+json", body = Problem),
        (status = 422, description = "The file is wrong (its line, key and what is allowed) or a listener cannot start; nothing changed", content_type = "application/problem+json", body = Problem),
        Unauthorized,
        Throttled,
    )
)]
pub async fn put_config(State(state): State<Admin>, body: axum::body::Bytes) -> Result<Json<ReloadAnswer>, Problem> {
    let text = std::str::from_utf8(&body)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, format!("the body is not UTF-8 text: {e}")))?;
    match state.listeners.reload_text("PUT /api/v1/config", text).await {
        Ok(reload) => Ok(Json(ReloadAnswer { reload, config: running_config(&state) })),
        Err(e @ crate::listeners::ReloadError::Refused(_)) => {
            Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
        }
        Err(e) => Err(Problem::new(StatusCode::CONFLICT, e.to_string())),
    }
}
