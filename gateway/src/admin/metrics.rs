//! `/metrics` for Prometheus, and the health checks.

use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::Shared;

/// Whether a figure only grows (a counter) or goes up and down (a gauge).
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// Each SNMP field (kcp-go's name) as a metric: name after the `kcpgate_` prefix,
/// help, kind, and whether it counts bytes.
const SNMP_METRICS: [(&str, &str, &str, Kind, bool); 30] = [
    ("BytesSent", "session_written", "Bytes the applications wrote into sessions", Kind::Counter, true),
    ("BytesReceived", "session_read", "Bytes the applications read from sessions", Kind::Counter, true),
    ("MaxConn", "sessions_max", "Most sessions open at once (per socket task)", Kind::Gauge, false),
    ("ActiveOpens", "sessions_dialed", "Sessions this process opened as a client", Kind::Counter, false),
    ("PassiveOpens", "sessions_accepted", "Sessions peers opened to this server", Kind::Counter, false),
    ("CurrEstab", "sessions_open", "Sessions open now", Kind::Gauge, false),
    ("InErrs", "input_errors", "Datagrams that failed input", Kind::Counter, false),
    ("InCsumErrors", "checksum_errors", "Datagrams whose checksum or authentication failed", Kind::Counter, false),
    ("KCPInErrors", "kcp_input_errors", "Datagrams KCP rejected", Kind::Counter, false),
    ("InPkts", "udp_received_packets", "UDP datagrams received", Kind::Counter, false),
    ("OutPkts", "udp_sent_packets", "UDP datagrams sent", Kind::Counter, false),
    ("InSegs", "kcp_received_segments", "KCP segments received", Kind::Counter, false),
    ("OutSegs", "kcp_sent_segments", "KCP segments sent", Kind::Counter, false),
    ("InBytes", "udp_received", "UDP payload bytes received", Kind::Counter, true),
    ("OutBytes", "udp_sent", "UDP payload bytes sent", Kind::Counter, true),
    ("RetransSegs", "kcp_retransmitted_segments", "KCP segments retransmitted, all causes", Kind::Counter, false),
    ("FastRetransSegs", "kcp_fast_retransmitted_segments", "KCP fast retransmissions", Kind::Counter, false),
    ("EarlyRetransSegs", "kcp_early_retransmitted_segments", "KCP early retransmissions", Kind::Counter, false),
    ("LostSegs", "kcp_lost_segments", "KCP retransmissions after a timeout", Kind::Counter, false),
    ("RepeatSegs", "kcp_duplicate_segments", "KCP segments received twice or out of window", Kind::Counter, false),
    ("FECFullShardSet", "fec_full_shard_sets", "FEC groups received complete", Kind::Counter, false),
    ("FECRecovered", "fec_recovered_packets", "Datagrams FEC recovered", Kind::Counter, false),
    ("FECErrs", "fec_errors", "FEC decoding errors", Kind::Counter, false),
    ("FECParityShards", "fec_parity_shards", "FEC parity shards received", Kind::Counter, false),
    ("FECShardSet", "fec_groups_held", "FEC groups held for decoding", Kind::Gauge, false),
    ("FECShardMin", "fec_newest_group", "Newest FEC group held (largest over sessions)", Kind::Gauge, false),
    ("RingBufferSndQueue", "kcp_send_queue_segments", "KCP segments waiting to be sent", Kind::Gauge, false),
    ("RingBufferRcvQueue", "kcp_receive_queue_segments", "KCP segments waiting to be read", Kind::Gauge, false),
    ("RingBufferSndBuffer", "kcp_in_flight_segments", "KCP segments in flight", Kind::Gauge, false),
    ("OOBPackets", "oob_packets", "Out-of-band datagrams received", Kind::Counter, false),
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
    let by_transport = state.plan.registry.counters_by_transport().await;
    let snmp = crate::control::total(&by_transport);
    let dropped = state.plan.registry.dropped().await;
    let stats = super::api::stats_of(state, &snmp, &by_transport, &dropped);
    let mut registry = Registry::with_prefix("kcpgate");
    for ((go, value), (name_go, name, help, kind, bytes)) in snmp.fields().zip(SNMP_METRICS) {
        debug_assert_eq!(go, name_go, "SNMP_METRICS follows Snmp's field order");
        let unit = bytes.then_some(Unit::Bytes);
        match kind {
            Kind::Counter => counter(&mut registry, name, help, unit, value),
            Kind::Gauge => gauge(&mut registry, name, help, unit, value as f64),
        }
    }
    let s = &stats.streams;
    counter(&mut registry, "streams_opened", "smux streams opened", None, s.opened);
    counter(&mut registry, "streams_closed", "smux streams closed", None, s.closed);
    gauge(&mut registry, "streams_open", "smux streams open now", None, s.open as f64);
    counter(&mut registry, "stream_dial_failures", "Dials of the backend that failed", None, s.dial_failures);
    counter(&mut registry, "stream_tcp_failures", "TCP connections that failed mid-stream", None, s.tcp_failures);
    counter(
        &mut registry,
        "sessions_refused_datagrams",
        "Datagrams dropped because max_sessions sessions were open",
        None,
        stats.sessions.refused_datagrams,
    );
    counter(
        &mut registry,
        "sessions_resets_sent",
        "Resets sent to peers of sessions the gateway does not have (after a restart, or a kick)",
        None,
        stats.sessions.resets_sent,
    );
    let drops: Family<Vec<(String, String)>, Counter> = Family::default();
    for (reason, n) in dropped.drops() {
        drops.get_or_create(&vec![("reason".to_string(), reason.to_string())]).inc_by(n);
    }
    registry.register(
        "datagrams_dropped",
        "Datagrams dropped before reaching a session, by reason (as in /api/v1/stats: dropped)",
        drops,
    );
    let open: Family<Vec<(String, String)>, Gauge> = Family::default();
    let opened: Family<Vec<(String, String)>, Counter> = Family::default();
    for (transport, now, total) in state.plan.registry.sessions_by_transport() {
        let labels = vec![("transport".to_string(), transport.name().to_string())];
        open.get_or_create(&labels).set(now as i64);
        opened.get_or_create(&labels).inc_by(total);
    }
    registry.register("transport_sessions_open", "Sessions open now, by transport (udp, webtransport)", open);
    registry.register("transport_sessions_opened", "Sessions opened since the start, by transport", opened);
    if state.plan.settings.webtransport_addr().ok().flatten().is_some() {
        let refused: Family<Vec<(String, String)>, Counter> = Family::default();
        for (reason, n) in state.plan.webtransport_refusals.counts() {
            refused.get_or_create(&vec![("reason".to_string(), reason.to_string())]).inc_by(n);
        }
        registry.register(
            "webtransport_refused_sessions",
            "WebTransport sessions the gateway refused or closed before a KCP session: origin, limit, draining, \
             path (not / or /messages), crypto (wrong key or crypt), malformed, idle (no KCP session in 30 s), \
             handshake (timed out)",
            refused,
        );
        counter(
            &mut registry,
            "webtransport_oversized_datagrams",
            "Datagrams larger than a WebTransport session could send at the time (lost, as on UDP)",
            None,
            state.plan.webtransport_refusals.oversized.load(std::sync::atomic::Ordering::Relaxed),
        );
    }
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
    ))
)]
pub async fn metrics(State(state): State<Shared>) -> Response {
    ([(header::CONTENT_TYPE, OPENMETRICS)], render(&state).await).into_response()
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
pub async fn readyz(State(state): State<Shared>) -> Response {
    if *state.drain.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if !state.plan.registry.is_serving() {
        (StatusCode::SERVICE_UNAVAILABLE, "not listening yet").into_response()
    } else {
        "ready".into_response()
    }
}
