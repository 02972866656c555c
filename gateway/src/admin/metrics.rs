//! `/metrics` for Prometheus, and the health checks.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::{Admin, Problem};

/// Whether a figure only grows (a counter) or goes up and down (a gauge).
#[derive(Clone, Copy)]
enum MetricKind {
    Counter,
    Gauge,
}

/// Each SNMP field (kcp-go's name) as a metric: name after the `kcpgate_` prefix,
/// help, kind, and whether it counts bytes.
const SNMP_METRICS: [(&str, &str, &str, MetricKind, bool); 30] = [
    ("BytesSent", "session_written", "Bytes the applications wrote into sessions", MetricKind::Counter, true),
    ("BytesReceived", "session_read", "Bytes the applications read from sessions", MetricKind::Counter, true),
    ("MaxConn", "sessions_max", "Most sessions open at once (per socket task)", MetricKind::Gauge, false),
    ("ActiveOpens", "sessions_dialed", "Sessions this process opened as a client", MetricKind::Counter, false),
    ("PassiveOpens", "sessions_accepted", "Sessions peers opened to this server", MetricKind::Counter, false),
    ("CurrEstab", "sessions_open", "Sessions open now", MetricKind::Gauge, false),
    ("InErrs", "input_errors", "Datagrams that failed input", MetricKind::Counter, false),
    (
        "InCsumErrors",
        "checksum_errors",
        "Datagrams whose checksum or authentication failed",
        MetricKind::Counter,
        false,
    ),
    ("KCPInErrors", "kcp_input_errors", "Datagrams KCP rejected", MetricKind::Counter, false),
    ("InPkts", "udp_received_packets", "UDP datagrams received", MetricKind::Counter, false),
    ("OutPkts", "udp_sent_packets", "UDP datagrams sent", MetricKind::Counter, false),
    ("InSegs", "kcp_received_segments", "KCP segments received", MetricKind::Counter, false),
    ("OutSegs", "kcp_sent_segments", "KCP segments sent", MetricKind::Counter, false),
    ("InBytes", "udp_received", "UDP payload bytes received", MetricKind::Counter, true),
    ("OutBytes", "udp_sent", "UDP payload bytes sent", MetricKind::Counter, true),
    ("RetransSegs", "kcp_retransmitted_segments", "KCP segments retransmitted, all causes", MetricKind::Counter, false),
    ("FastRetransSegs", "kcp_fast_retransmitted_segments", "KCP fast retransmissions", MetricKind::Counter, false),
    ("EarlyRetransSegs", "kcp_early_retransmitted_segments", "KCP early retransmissions", MetricKind::Counter, false),
    ("LostSegs", "kcp_lost_segments", "KCP retransmissions after a timeout", MetricKind::Counter, false),
    (
        "RepeatSegs",
        "kcp_duplicate_segments",
        "KCP segments received twice or out of window",
        MetricKind::Counter,
        false,
    ),
    ("FECFullShardSet", "fec_full_shard_sets", "FEC groups received complete", MetricKind::Counter, false),
    ("FECRecovered", "fec_recovered_packets", "Datagrams FEC recovered", MetricKind::Counter, false),
    ("FECErrs", "fec_errors", "FEC decoding errors", MetricKind::Counter, false),
    ("FECParityShards", "fec_parity_shards", "FEC parity shards received", MetricKind::Counter, false),
    ("FECShardSet", "fec_groups_held", "FEC groups held for decoding", MetricKind::Gauge, false),
    ("FECShardMin", "fec_newest_group", "Newest FEC group held (largest over sessions)", MetricKind::Gauge, false),
    ("RingBufferSndQueue", "kcp_send_queue_segments", "KCP segments waiting to be sent", MetricKind::Gauge, false),
    ("RingBufferRcvQueue", "kcp_receive_queue_segments", "KCP segments waiting to be read", MetricKind::Gauge, false),
    ("RingBufferSndBuffer", "kcp_in_flight_segments", "KCP segments in flight", MetricKind::Gauge, false),
    ("OOBPackets", "oob_packets", "Out-of-band datagrams received", MetricKind::Counter, false),
];

fn counter(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, c),
        None => registry.register(name, help, c),
    }
}

fn gauge(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>, value: f64) {
    let g: Gauge<f64, AtomicU64> = Gauge::default();
    g.set(value);
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, g),
        None => registry.register(name, help, g),
    }
}

/// The metrics text: the same figures as `/api/v1/stats`, fresh.
pub(super) async fn render(state: &super::AdminState) -> String {
    let by_transport = state.shared.registry.counters_by_transport().await;
    let snmp = crate::control::total(&by_transport);
    let dropped = state.shared.registry.dropped().await;
    let stats = super::api::stats_of(state, &snmp, &by_transport, &dropped);
    let mut registry = Registry::with_prefix("kcpgate");
    for ((go, value), (name_go, name, help, kind, bytes)) in snmp.fields().zip(SNMP_METRICS) {
        debug_assert_eq!(go, name_go, "SNMP_METRICS follows Snmp's field order");
        let unit = bytes.then_some(Unit::Bytes);
        match kind {
            MetricKind::Counter => counter(&mut registry, name, help, unit, value),
            MetricKind::Gauge => gauge(&mut registry, name, help, unit, value as f64),
        }
    }
    let s = &stats.streams;
    counter(&mut registry, "streams_opened", "smux streams opened", None, s.opened);
    counter(&mut registry, "streams_closed", "smux streams closed", None, s.closed);
    gauge(&mut registry, "streams_open", "smux streams open now", None, s.open as f64);
    counter(&mut registry, "stream_dial_failures", "Dials of the backend that failed", None, s.dial_failures);
    counter(&mut registry, "stream_tcp_failures", "TCP connections that failed mid-stream", None, s.tcp_failures);
    let sessions = &stats.sessions;
    for (name, help, value) in [
        (
            "sessions_refused_datagrams",
            "Datagrams dropped because max_sessions sessions were open",
            sessions.refused_datagrams,
        ),
        (
            "sessions_resets_sent",
            "Resets sent to peers of sessions the gateway does not have (after a restart, or a kick)",
            sessions.resets_sent,
        ),
        ("sessions_proven", "UDP sessions whose peer proved it receives at its address", sessions.proven),
        (
            "sessions_unproven_expired",
            "New UDP sessions forgotten because their peer did not prove its address in time",
            sessions.unproven_expired,
        ),
        (
            "datagrams_amplification_held",
            "Datagrams not sent because an unproven session had sent three times what it received",
            sessions.amplification_held,
        ),
        ("sessions_replaced", "Sessions replaced by a new conversation from the same address", sessions.replaced),
        ("sessions_moved", "Sessions that followed their player to a new address (-address-change)", sessions.moved),
    ] {
        counter(&mut registry, name, help, None, value);
    }
    let drops: Family<Vec<(String, String)>, Counter> = Family::default();
    for (reason, n) in stats.dropped.counts() {
        drops.get_or_create(&vec![("reason".to_string(), reason.name().to_string())]).inc_by(n);
    }
    registry.register(
        "datagrams_dropped",
        "Datagrams dropped before reaching a session, by reason (as in /api/v1/stats: dropped)",
        drops,
    );
    let queries: Family<Vec<(String, String)>, Counter> = Family::default();
    for (task, counts) in state.shared.registry.queries_by_task() {
        for (kind, n) in crate::control::QueryKind::ALL.into_iter().zip(counts) {
            let labels = vec![("task".to_string(), task.to_string()), ("query".to_string(), kind.name().to_string())];
            queries.get_or_create(&labels).inc_by(n);
        }
    }
    registry.register(
        "task_queries",
        "Admin queries each data-path task answered, by task (the last six digits of its sessions' ids) and query: \
         one session's view, kick and capture go to the owning task alone",
        queries,
    );
    let open: Family<Vec<(String, String)>, Gauge> = Family::default();
    let opened: Family<Vec<(String, String)>, Counter> = Family::default();
    for (transport, now, total) in state.shared.registry.sessions_by_transport() {
        let labels = vec![("transport".to_string(), transport.name().to_string())];
        open.get_or_create(&labels).set(now as i64);
        opened.get_or_create(&labels).inc_by(total);
    }
    registry.register("transport_sessions_open", "Sessions open now, by transport (udp, webtransport)", open);
    registry.register("transport_sessions_opened", "Sessions opened since the start, by transport", opened);
    if state.shared.webtransport.read().expect("published lock").port.is_some() {
        let refused: Family<Vec<(String, String)>, Counter> = Family::default();
        for (reason, n) in state.shared.webtransport_refusals.counts() {
            refused.get_or_create(&vec![("reason".to_string(), reason.to_string())]).inc_by(n);
        }
        registry.register(
            "webtransport_refused_sessions",
            "WebTransport sessions the gateway refused or closed before a KCP session: origin, limit, draining, \
             path (not / or /messages), crypto (wrong key or crypt), malformed, idle (no KCP session in 30 s), \
             handshake (timed out); before the handshake: address (-webtransport-per-address), rate (the \
             opening rates), waiting (1,024 connections without a KCP session)",
            refused,
        );
        counter(
            &mut registry,
            "webtransport_oversized_datagrams",
            "Datagrams larger than a WebTransport session could send at the time (lost, as on UDP)",
            None,
            state.shared.webtransport_refusals.oversized.load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    let http = &state.shared.http_counters;
    for (listener, counters) in [("admin", &http.admin), ("public", &http.public)] {
        let closed: Family<Vec<(String, String)>, Counter> = Family::default();
        let n = |c: &AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        for (reason, count) in [("timeout", n(&counters.timed_out)), ("cap", n(&counters.evicted))] {
            closed.get_or_create(&vec![("reason".to_string(), reason.to_string())]).inc_by(count);
        }
        registry.register(
            format!("{listener}_connections_closed"),
            format!(
                "HTTP connections the {listener} listener closed: timeout (no full request header in 10 s, or no \
                 byte either way for 60 s), cap (the quietest, to make room at the connection cap)"
            ),
            closed,
        );
    }
    let reloads = &state.listeners.reloads;
    let reloaded: Family<Vec<(String, String)>, Counter> = Family::default();
    let n = |c: &std::sync::atomic::AtomicUsize| c.load(std::sync::atomic::Ordering::Relaxed) as u64;
    for (result, count) in [("applied", n(&reloads.applied)), ("refused", n(&reloads.refused))] {
        reloaded.get_or_create(&vec![("result".to_string(), result.to_string())]).inc_by(count);
    }
    registry.register(
        "config_reloads",
        "Reloads of the configuration (SIGHUP, PUT /api/v1/config): applied, or refused (nothing changed)",
        reloaded,
    );
    let failed = reloads.last_failed.load(std::sync::atomic::Ordering::Relaxed);
    gauge(
        &mut registry,
        "config_last_reload_successful",
        "1 unless the last reload was refused (the running configuration is not the file's)",
        None,
        if failed { 0.0 } else { 1.0 },
    );
    let p = &stats.process;
    gauge(&mut registry, "uptime", "Time since the admin API started", Some(Unit::Seconds), p.uptime_seconds);
    gauge(&mut registry, "process_resident_memory", "Resident memory", Some(Unit::Bytes), p.rss_bytes as f64);
    let cpu: Counter<f64, AtomicU64> = Counter::default();
    cpu.inc_by(p.cpu_seconds);
    registry.register_with_unit("process_cpu", "User and system CPU time", Unit::Seconds, cpu);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

/// The content type of OpenMetrics text, which Prometheus scrapes natively.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Counters and gauges for Prometheus (OpenMetrics text). Names start with
/// `kcpgate_`; counters end in `_total`; no label names a session.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((
        status = 200,
        description = "The metrics",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body = String,
        example = "# HELP kcpgate_sessions_open Sessions open now.\n# TYPE kcpgate_sessions_open gauge\nkcpgate_sessions_open 3.0\n# EOF\n"
    ), (
        status = 429,
        description = "Scraped too often: past 5 a second from one address or 20 in all, a scrape waits its turn, and is refused after 10 s",
        content_type = "application/problem+json",
        body = Problem
    ))
)]
pub async fn metrics(State(state): State<Admin>, request: axum::extract::Request) -> Response {
    let arrived = Instant::now();
    if !state.scrapes.wait_turn(super::source_key(&request)).await {
        let mut refused = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "/metrics is scraped too often: at most {} times a second from one address and {} in all",
                ScrapePacer::PER_SOURCE,
                ScrapePacer::IN_ALL
            ),
        )
        .into_response();
        refused.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return refused;
    }
    ([(header::CONTENT_TYPE, OPENMETRICS)], snapshot(&state, arrived).await).into_response()
}

/// The metrics text as of after `arrived` (so a scrape never reads figures older
/// than itself), rendered once for every scrape that was waiting when it began.
async fn snapshot(state: &Admin, arrived: Instant) -> bytes::Bytes {
    let mut last = state.metrics_snapshot.lock().await;
    if let Some((began, text)) = last.as_ref() {
        if *began >= arrived {
            return text.clone();
        }
    }
    let began = Instant::now();
    let text = bytes::Bytes::from(render(state).await);
    *last = Some((began, text.clone()));
    text
}

/// Paces `/metrics`, which anyone who reaches the admin listener may scrape:
/// [`Self::PER_SOURCE`] scrapes a second from one source (an IPv4 address or an
/// IPv6 /64) and [`Self::IN_ALL`] in all, each with a burst of a second's worth.
/// A scrape past its turn waits for it (a client on keep-alive connections
/// gets no more than its share, however fast it asks), up to [`Self::LONGEST_WAIT`];
/// one that would wait longer waits that long and is refused.
#[derive(Debug, Default)]
pub struct ScrapePacer {
    turns: std::sync::Mutex<Turns>,
}

#[derive(Debug, Default)]
struct Turns {
    /// When each source's and everybody's next turn is due (GCRA's theoretical
    /// arrival time).
    sources: HashMap<u64, Instant>,
    all: Option<Instant>,
}

impl ScrapePacer {
    pub const PER_SOURCE: u32 = 5;
    pub const IN_ALL: u32 = 20;
    pub const LONGEST_WAIT: Duration = Duration::from_secs(10);
    const SOURCES: usize = 4096;

    /// Waits for `source`'s turn; false (after [`Self::LONGEST_WAIT`]) when it is
    /// further off.
    pub async fn wait_turn(&self, source: u64) -> bool {
        let wait = self.take_turn(source, Instant::now());
        tokio::time::sleep(wait.unwrap_or(Self::LONGEST_WAIT)).await;
        wait.is_some()
    }

    /// Takes the next turn of `source` and of everybody at `now`, and says how long
    /// until it; `None` (and nothing taken) when that is past [`Self::LONGEST_WAIT`].
    fn take_turn(&self, source: u64, now: Instant) -> Option<Duration> {
        let mut turns = self.turns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if turns.sources.len() >= Self::SOURCES && !turns.sources.contains_key(&source) {
            turns.sources.retain(|_, due| *due > now);
            if turns.sources.len() >= Self::SOURCES {
                return None;
            }
        }
        let (source_due, source_wait) = Self::turn(turns.sources.get(&source).copied(), now, Self::PER_SOURCE);
        let (all_due, all_wait) = Self::turn(turns.all, now, Self::IN_ALL);
        let wait = source_wait.max(all_wait);
        if wait > Self::LONGEST_WAIT {
            return None;
        }
        turns.sources.insert(source, source_due);
        turns.all = Some(all_due);
        Some(wait)
    }

    /// One GCRA step at `rate` a second with a burst of `rate`: the next due time
    /// after taking a turn, and the wait until the turn taken.
    fn turn(due: Option<Instant>, now: Instant, rate: u32) -> (Instant, Duration) {
        let interval = Duration::from_secs(1) / rate;
        let tolerance = interval * (rate - 1);
        let due = due.map_or(now, |d| d.max(now));
        let wait = due.checked_sub(tolerance).map_or(Duration::ZERO, |start| start.saturating_duration_since(now));
        (due + interval, wait)
    }
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/livez",
    tag = "operations",
    responses((status = 200, description = "Alive", content_type = "text/plain", body = String, example = "ok"))
)]
pub async fn livez() -> &'static str {
    "ok"
}

/// Readiness: listening and not draining (after SIGTERM the gateway takes no new
/// sessions and answers 503 here).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Taking new sessions", content_type = "text/plain", body = String, example = "ready"),
        (status = 503, description = "Draining or not listening yet", content_type = "text/plain", body = String, example = "draining"),
    )
)]
pub async fn readyz(State(state): State<Admin>) -> Response {
    if *state.drain.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if !state.shared.registry.is_serving() {
        (StatusCode::SERVICE_UNAVAILABLE, "not listening yet").into_response()
    } else {
        "ready".into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_are_paced_per_source_and_in_all() {
        let pacer = ScrapePacer::default();
        let now = Instant::now();
        let waits: Vec<_> = (0..7).map(|_| pacer.take_turn(1, now).unwrap()).collect();
        assert_eq!(&waits[..5], &[Duration::ZERO; 5], "a second's worth at once");
        assert_eq!(waits[5], Duration::from_millis(200), "then one every 200 ms");
        assert_eq!(waits[6], Duration::from_millis(400));
        // Other sources have turns of their own, until the 20 a second in all.
        let others: Vec<_> = (2..20).map(|s| pacer.take_turn(s, now).unwrap()).collect();
        assert!(others[..13].iter().all(|w| w.is_zero()), "{others:?}");
        assert_eq!(others[13], Duration::from_millis(50), "past 20 in all, one every 50 ms");
        // A source far behind its turn is refused and takes nothing.
        let mut last = Duration::ZERO;
        while let Some(wait) = pacer.take_turn(1, now) {
            last = wait;
        }
        assert!(last <= ScrapePacer::LONGEST_WAIT && last > Duration::from_secs(9), "{last:?}");
        assert_eq!(pacer.take_turn(1, now), None);
        let later = pacer.take_turn(1, now + Duration::from_secs(1)).expect("a second later, turns came closer");
        assert!(later > Duration::from_secs(9), "{later:?}");
    }
}
