//! The admin API against a real server with real kcptun and kcpgate clients.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{echo_backend, free_tcp_port, free_udp_port, incompressible, kcpgate, Procs};

const TOKEN: &str = "s3cret-admin-token";

fn kcptun_client(args: &str) -> Child {
    Command::new("kcptun-client")
        .args(args.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kcptun-client starts (Debian's kcptun: apt-get install -y kcptun)")
}

/// An HTTP client for one admin listener; every status is an answer, not an error.
struct Api {
    port: u16,
    base: String,
    agent: ureq::Agent,
}

impl Api {
    fn new(port: u16) -> Api {
        // A fresh connection per request: a pooled one, reused in the moment the
        // server closed it, once failed a run with "Peer disconnected".
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .max_idle_connections(0)
            .build()
            .into();
        Api { port, base: format!("http://127.0.0.1:{port}"), agent }
    }

    /// (status, content type, body) of `method path`, with `token` if given.
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> (u16, String, String) {
        let url = format!("{}{path}", self.base);
        let builder = ureq::http::Request::builder().method(method).uri(&url);
        let builder = match token {
            Some(t) => builder.header("Authorization", format!("Bearer {t}")),
            None => builder,
        };
        let result = match body {
            Some(b) => {
                let request = builder.header("Content-Type", "application/json").body(b.to_string()).unwrap();
                self.agent.run(request)
            }
            None => self.agent.run(builder.body(()).unwrap()),
        };
        let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let kind = response.headers().get("content-type").map_or(String::new(), |v| v.to_str().unwrap().to_string());
        let text = if path.starts_with("/api/v1/events") && !path.contains("max_events") {
            String::new() // endless; the status and type say enough
        } else {
            response.body_mut().read_to_string().unwrap()
        };
        (status, kind, text)
    }

    fn get(&self, path: &str) -> Value {
        let (status, _, text) = self.call("GET", path, Some(TOKEN), None);
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    fn sessions(&self) -> Vec<Value> {
        self.get("/api/v1/sessions?limit=1000")["sessions"].as_array().unwrap().clone()
    }

    /// Waits until `/readyz` says ready.
    fn wait_ready(&self) {
        support::wait_ready(self.port);
    }

    /// Subscribes to the event stream; events arrive on the receiver as (name, data).
    fn events(&self, interval_ms: u64) -> mpsc::Receiver<(String, Value)> {
        let response = self
            .agent
            .get(format!("{}/api/v1/events?interval_ms={interval_ms}", self.base))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .config()
            .timeout_global(None)
            .build()
            .call()
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut name = String::new();
            for line in BufReader::new(response.into_body().into_reader()).lines() {
                let Ok(line) = line else { return };
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    if tx.send((name.clone(), serde_json::from_str(d).unwrap())).is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }
}

/// The next event named `name` within `timeout` (others are skipped).
fn next_event(rx: &mpsc::Receiver<(String, Value)>, name: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((n, data)) if n == name => return data,
            Ok(_) => {}
            Err(_) => panic!("no {name} event within {timeout:?}"),
        }
    }
}

/// Connects through a tunnel's local port once it listens, and checks one echo.
fn connect(port: u16, payload: &[u8]) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("the tunnel on port {port} never listened: {e}"),
        }
    };
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    echo(&mut c, payload);
    c
}

fn echo(c: &mut TcpStream, payload: &[u8]) {
    c.write_all(payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    c.read_exact(&mut back).unwrap();
    assert!(back == payload, "the echo came back different");
}

fn payload(seed: u8, len: usize) -> Vec<u8> {
    incompressible(seed.into(), len)
}

/// Waits until `check` holds on the session list.
fn wait_sessions(api: &Api, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sessions = api.sessions();
        if check(&sessions) {
            return sessions;
        }
        assert!(Instant::now() < deadline, "{what}: sessions are {sessions:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{v} is not a number"))
}

#[test]
fn the_api_lists_kicks_and_retunes_the_sessions_of_real_clients() {
    let backend = echo_backend();
    let (udp, admin) = (free_udp_port("127.0.0.1"), free_tcp_port());
    let (kcptun_port, gate_port, late_port) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let crypt = "-key k -crypt aes -mode fast3";
    let mut procs = Procs(vec![kcpgate(&format!(
        "server -l 127.0.0.1:{udp} -t 127.0.0.1:{backend} {crypt} -admin 127.0.0.1:{admin} -admin-token {TOKEN} -quiet"
    ))]);
    let api = Api::new(admin);
    api.wait_ready();
    let events = api.events(500);
    let first = next_event(&events, "stats", Duration::from_secs(5));
    // A bounded stream, for scripts: one stats snapshot, then the end.
    let (status, kind, once) = api.call("GET", "/api/v1/events?max_events=1", Some(TOKEN), None);
    assert_eq!((status, kind.as_str(), once.matches("event: ").count()), (200, "text/event-stream", 1), "{once}");
    assert!(once.starts_with("event: stats\ndata: {"), "{once}");
    assert!(first["process"]["uptime_seconds"].as_f64().unwrap() < 60.0, "{first}");

    // Debian's kcptun (smux v1) and kcpgate (smux v2), each with one open stream.
    procs.0.push(kcptun_client(&format!("-r 127.0.0.1:{udp} -l 127.0.0.1:{kcptun_port} {crypt}")));
    procs.0.push(kcpgate(&format!("client -r 127.0.0.1:{udp} -l 127.0.0.1:{gate_port} {crypt}")));
    let mut via_kcptun = connect(kcptun_port, &payload(3, 100_000));
    let mut via_gate = connect(gate_port, &payload(5, 50_000));
    let opened: Vec<u64> =
        (0..2).map(|_| n(&next_event(&events, "session_opened", Duration::from_secs(5))["id"])).collect();

    let sessions = wait_sessions(&api, "two sessions with a stream each", |s| {
        s.len() == 2 && s.iter().all(|x| x["streams"].as_array().unwrap().len() == 1)
    });
    let mut ids: Vec<u64> = sessions.iter().map(|s| n(&s["id"])).collect();
    ids.sort_unstable();
    let mut opened_sorted = opened.clone();
    opened_sorted.sort_unstable();
    assert_eq!(ids, opened_sorted, "the events named the listed sessions");
    let by_version = |v: u64| sessions.iter().find(|s| s["smux_version"] == v).expect("a session of this smux version");
    let (kcptun_session, gate_session) = (by_version(1).clone(), by_version(2).clone());
    let kcptun_id = n(&kcptun_session["id"]);
    for s in [&kcptun_session, &gate_session] {
        assert_eq!(s["mode"], "fast3");
        assert_eq!(s["crypt"], "aes");
        assert_eq!(s["fec"]["data"], 10);
        assert_eq!(s["local"], format!("127.0.0.1:{udp}"));
        assert!(n(&s["kcp"]["srtt_ms"]) < 1000 && n(&s["kcp"]["rto_ms"]) >= 30, "plausible RTT: {s}");
        assert_eq!(n(&s["kcp"]["snd_wnd"]), 1024);
        let stream = &s["streams"][0];
        assert_eq!(stream["tcp_peer"], format!("127.0.0.1:{backend}"));
    }
    assert!(n(&kcptun_session["streams"][0]["bytes_from_tcp"]) >= 100_000);
    assert!(n(&kcptun_session["traffic"]["bytes_in"]) > 100_000, "100 kB came in: {kcptun_session}");
    assert!(n(&gate_session["traffic"]["bytes_in"]) > 50_000);

    // The figures change as traffic flows.
    echo(&mut via_gate, &payload(7, 200_000));
    let after = api.get(&format!("/api/v1/sessions/{}", gate_session["id"]));
    assert!(n(&after["traffic"]["bytes_in"]) > n(&gate_session["traffic"]["bytes_in"]) + 200_000);
    assert!(n(&after["traffic"]["packets_out"]) > n(&gate_session["traffic"]["packets_out"]));
    assert!(n(&after["age_ms"]) > n(&gate_session["age_ms"]));
    // The packet inspector's capture: the next datagrams both ways, still encrypted,
    // which the key (never sent by the gateway) decodes.
    let (gate_id, base) = (n(&gate_session["id"]), api.base.clone());
    let capturing = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let url = format!("{base}/api/v1/sessions/{gate_id}/capture?count=40&timeout_ms=10000");
        let mut r = agent.post(url).header("Authorization", format!("Bearer {TOKEN}")).send_empty().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    });
    std::thread::sleep(Duration::from_millis(300));
    for seed in 0..20 {
        echo(&mut via_gate, &payload(seed, 5_000)); // round trips: datagrams both ways
    }
    let (status, text) = capturing.join().unwrap();
    assert_eq!(status, 200, "{text}");
    let capture: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((n(&capture["session"]["id"]), capture["complete"].as_bool()), (gate_id, Some(true)));
    let datagrams = capture["datagrams"].as_array().unwrap();
    assert_eq!(datagrams.len(), 40);
    let crypto = kcpgate_core::crypto::PacketCrypto::new(
        kcpgate_core::crypto::Method::from_name_or_aes("aes"),
        &kcpgate_core::crypto::derive_key("k"),
    );
    let mut directions = std::collections::HashSet::new();
    for d in datagrams {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD.decode(d["data"].as_str().unwrap()).unwrap();
        let seen = kcpgate_core::inspect::inspect(&crypto, &bytes);
        assert_eq!(seen.verdict, kcpgate_core::inspect::Verdict::Ok, "a captured datagram decrypts with the key");
        assert!(seen.fec.is_some(), "FEC 10/3 frames every datagram");
        directions.insert(d["direction"].as_str().unwrap().to_string());
    }
    assert_eq!(directions.len(), 2, "datagrams both ways: {directions:?}");
    // At most four captures at once: a fifth is refused until one finishes.
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let base = api.base.clone();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                let url = format!("{base}/api/v1/sessions/{gate_id}/capture?count=1000&timeout_ms=1500");
                agent.post(url).header("Authorization", format!("Bearer {TOKEN}")).send_empty().unwrap().status()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let fifth = api.call("POST", &format!("/api/v1/sessions/{gate_id}/capture?count=1"), Some(TOKEN), None);
    assert_eq!((fifth.0, fifth.1.as_str()), (429, "application/problem+json"), "{}", fifth.2);
    for w in waiting {
        assert_eq!(w.join().unwrap(), 200, "a capture that times out answers what it has");
    }
    let again = api.call("POST", &format!("/api/v1/sessions/{gate_id}/capture?count=1"), Some(TOKEN), None);
    assert_eq!(again.0, 200, "room again once they finished: {}", again.2);
    let missing = api.call("POST", "/api/v1/sessions/999999/capture?count=1", Some(TOKEN), None);
    assert_eq!(missing.0, 404, "{}", missing.2);
    let too_many = api.call("POST", &format!("/api/v1/sessions/{gate_id}/capture?count=5000"), Some(TOKEN), None);
    assert_eq!(too_many.0, 400, "{}", too_many.2);
    for timeout_ms in [99, 30_001] {
        let refused = api.call(
            "POST",
            &format!("/api/v1/sessions/{gate_id}/capture?count=1&timeout_ms={timeout_ms}"),
            Some(TOKEN),
            None,
        );
        assert_eq!(refused.0, 400, "timeout_ms={timeout_ms}: {}", refused.2);
    }
    let stats = api.get("/api/v1/stats");
    let udp_stats = stats["transports"].as_array().unwrap().iter().find(|t| t["transport"] == "udp").unwrap().clone();
    assert_eq!(n(&udp_stats["sessions_open"]), 2, "{udp_stats}");
    assert_eq!(udp_stats["bytes_in"], stats["snmp"]["InBytes"], "only UDP carries sessions here: {stats}");

    let top = api.get("/api/v1/sessions?sort=bytes_in&order=desc&limit=1");
    assert_eq!((n(&top["total"]), top["sessions"][0]["id"].clone()), (2, after["id"].clone()), "sorted and paged");
    assert_eq!(n(&api.get("/api/v1/sessions?remote=127.0.0.1")["total"]), 2);
    assert_eq!(n(&api.get("/api/v1/sessions?remote=203.0.113.")["total"]), 0, "filtered by remote address");

    // A change of tunables applies to the next session only.
    let changed = api.call(
        "PATCH",
        "/api/v1/config",
        Some(TOKEN),
        Some(&serde_json::json!({"mode": "fast2", "sndwnd": 77, "rcvwnd": 99})),
    );
    assert_eq!(changed.0, 200, "{}", changed.2);
    let bad = api.call("PATCH", "/api/v1/config", Some(TOKEN), Some(&serde_json::json!({"rcvwnd": 0})));
    assert_eq!((bad.0, bad.1.as_str()), (422, "application/problem+json"));
    assert_eq!(api.get("/api/v1/config")["tunables"]["rcvwnd"], 99, "a bad change changes nothing");
    // Wrong types and values together: each field is named, and nothing changes.
    let change = serde_json::json!({"sndwnd": "big", "mode": "warp", "rcvwnd": 0, "ratelimit": 1000});
    let bad = api.call("PATCH", "/api/v1/config", Some(TOKEN), Some(&change));
    assert_eq!(bad.0, 422, "{}", bad.2);
    let problem: Value = serde_json::from_str(&bad.2).expect("problem+json");
    let mut named: Vec<&str> =
        problem["errors"].as_array().expect("errors").iter().filter_map(|e| e["field"].as_str()).collect();
    named.sort_unstable();
    assert_eq!(named, ["mode", "rcvwnd", "sndwnd"], "{problem}");
    assert_eq!(api.get("/api/v1/config")["tunables"]["ratelimit"], 0, "the good field did not change either");
    let unknown = api.call("PATCH", "/api/v1/config", Some(TOKEN), Some(&serde_json::json!({"sndwin": 5})));
    assert_eq!(unknown.0, 400, "{}", unknown.2);
    assert!(unknown.2.contains("sndwnd"), "the answer lists the fields: {}", unknown.2);
    let config = api.get("/api/v1/config");
    assert_eq!(config["listeners"][0]["key"], "(redacted)");
    assert_eq!(config["listeners"][0]["tunables"], config["tunables"], "one listener: its tunables are the first's");
    assert!(config["process"].get("conn").is_none(), "a server shows no client settings: {config}");
    let named =
        api.call("PATCH", "/api/v1/config?listener=nobody", Some(TOKEN), Some(&serde_json::json!({"sndwnd": 5})));
    assert_eq!(named.0, 404, "{}", named.2);
    procs.0.push(kcpgate(&format!("client -r 127.0.0.1:{udp} -l 127.0.0.1:{late_port} {crypt}")));
    let _via_late = connect(late_port, &payload(9, 1000));
    let late_id = n(&next_event(&events, "session_opened", Duration::from_secs(5))["id"]);
    let late = api.get(&format!("/api/v1/sessions/{late_id}"));
    assert_eq!(
        (late["mode"].as_str(), n(&late["kcp"]["snd_wnd"]), n(&late["kcp"]["rcv_wnd"])),
        (Some("fast2"), 77, 99)
    );
    let old = api.get(&format!("/api/v1/sessions/{kcptun_id}"));
    assert_eq!((old["mode"].as_str(), n(&old["kcp"]["snd_wnd"])), (Some("fast3"), 1024), "open sessions keep theirs");

    // Kick the kcptun client's session: its application sees the connection end.
    let kicked = api.call("DELETE", &format!("/api/v1/sessions/{kcptun_id}?reason=cheating"), Some(TOKEN), None);
    assert_eq!(kicked.0, 204, "{}", kicked.2);
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = via_kcptun.read_to_end(&mut rest);
    assert!(read.is_ok() && started.elapsed() < Duration::from_secs(5), "the kicked stream ended: {read:?}");
    let closed = next_event(&events, "session_closed", Duration::from_secs(5));
    assert_eq!((n(&closed["id"]), closed["reason"].as_str()), (kcptun_id, Some("kicked: cheating")));
    let gone = api.call("GET", &format!("/api/v1/sessions/{kcptun_id}"), Some(TOKEN), None);
    assert_eq!((gone.0, gone.1.as_str()), (404, "application/problem+json"));
    assert_eq!(api.sessions().len(), 2);
    echo(&mut via_gate, &payload(11, 10_000)); // the other sessions carry on

    // A session limit, changed at run time: a new client waits until there is room.
    let limit = api.call("PATCH", "/api/v1/config", Some(TOKEN), Some(&serde_json::json!({"max_sessions": 2})));
    assert_eq!(limit.0, 200);
    let extra_port = free_tcp_port();
    procs.0.push(kcpgate(&format!("client -r 127.0.0.1:{udp} -l 127.0.0.1:{extra_port} {crypt}")));
    let extra = std::thread::spawn(move || connect(extra_port, &payload(13, 1000)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while n(&api.get("/api/v1/stats")["sessions"]["refused_datagrams"]) == 0 {
        assert!(Instant::now() < deadline, "the new client's datagrams were never refused");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(api.sessions().len(), 2, "no third session while the limit holds");
    api.call("PATCH", "/api/v1/config", Some(TOKEN), Some(&serde_json::json!({"max_sessions": 0})));
    let _via_extra = extra.join().expect("the new client got through once the limit was lifted");
    assert_eq!(api.sessions().len(), 3);
}

/// `/metrics`' counters lie between two `/api/v1/stats` snapshots taken around it; a
/// client shows its own sessions; a draining server is not ready.
#[test]
fn metrics_agree_with_stats_and_a_draining_server_is_not_ready() {
    let backend = echo_backend();
    let (udp, admin, local, client_admin) =
        (free_udp_port("127.0.0.1"), free_tcp_port(), free_tcp_port(), free_tcp_port());
    let procs = Procs(vec![
        kcpgate(&format!("server -l 127.0.0.1:{udp} -t 127.0.0.1:{backend} -key k -admin 127.0.0.1:{admin} -quiet")),
        kcpgate(&format!("client -r 127.0.0.1:{udp} -l 127.0.0.1:{local} -key k -admin 127.0.0.1:{client_admin}")),
    ]);
    let api = Api::new(admin);
    api.wait_ready();
    let mut c = connect(local, &payload(3, 300_000));
    let before = api.get("/api/v1/stats");
    let (status, kind, text) = api.call("GET", "/metrics", None, None);
    echo(&mut c, &payload(4, 1000));
    let after = api.get("/api/v1/stats");
    assert_eq!((status, kind.as_str()), (200, "application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    let sample = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("no {name}"));
        line.split(' ').nth(1).unwrap().parse().unwrap()
    };
    for (metric, field) in [
        ("kcpgate_udp_received_bytes_total", "InBytes"),
        ("kcpgate_udp_sent_bytes_total", "OutBytes"),
        ("kcpgate_udp_received_packets_total", "InPkts"),
        ("kcpgate_kcp_sent_segments_total", "OutSegs"),
        ("kcpgate_sessions_accepted_total", "PassiveOpens"),
        ("kcpgate_session_read_bytes_total", "BytesReceived"),
    ] {
        let (lo, hi, got) = (n(&before["snmp"][field]), n(&after["snmp"][field]), sample(metric));
        assert!(lo as f64 <= got && got <= hi as f64, "{metric} = {got}, stats {field} went {lo} → {hi}");
    }
    assert!(sample("kcpgate_udp_received_bytes_total") > 300_000.0, "the traffic was counted");
    assert_eq!(sample("kcpgate_sessions_open"), 1.0);
    assert_eq!(n(&after["streams"]["opened"]), sample("kcpgate_streams_opened_total") as u64);
    assert!(!text.contains("conv=") && !text.contains("remote="), "no per-session labels");

    // The client's own API shows its session to the server.
    let client = Api::new(client_admin);
    let mine = client.sessions();
    assert_eq!(mine.len(), 1, "{mine:#?}");
    assert_eq!(
        (mine[0]["remote"].as_str(), mine[0]["smux_version"].as_u64()),
        (Some(&*format!("127.0.0.1:{udp}")), Some(2))
    );
    assert!(n(&mine[0]["traffic"]["bytes_out"]) > 300_000);
    assert_eq!(client.get("/api/v1/stats")["process"]["role"], "client");

    // SIGTERM with a stream open: the server drains, and says so.
    let server_pid = procs.0[0].id().to_string();
    assert!(Command::new("kill").args(["-TERM", &server_pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, body) = api.call("GET", "/readyz", None, None);
        if status == 503 {
            assert_eq!(body, "draining");
            break;
        }
        assert!(Instant::now() < deadline, "still ready after SIGTERM: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(api.call("GET", "/livez", None, None).0, 200, "alive while draining");
    echo(&mut c, &payload(5, 1000)); // open streams still work
}

/// Every /api route answers 401 without the token or with a wrong one, and is
/// reachable with it; the public routes need none.
#[test]
fn every_api_route_needs_the_token() {
    let (udp, admin) = (free_udp_port("127.0.0.1"), free_tcp_port());
    let _procs =
        Procs(vec![kcpgate(&format!("server -l 127.0.0.1:{udp} -admin 127.0.0.1:{admin} -admin-token {TOKEN}"))]);
    let api = Api::new(admin);
    api.wait_ready();
    let spec: Value = serde_json::from_str(&kcpgate::admin::openapi_json()).unwrap();
    let mut guarded = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let concrete = path.replace("{id}", "1");
            let body = (method == "PATCH").then(|| serde_json::json!({}));
            if path.starts_with("/api/") {
                guarded += 1;
                for token in [None, Some("wrong"), Some("s3cret-admin-tokeN")] {
                    let (status, kind, _) = api.call(&method, &concrete, token, body.as_ref());
                    assert_eq!((status, kind.as_str()), (401, "application/problem+json"), "{method} {path} {token:?}");
                }
                let (status, ..) = api.call(&method, &concrete, Some(TOKEN), body.as_ref());
                assert!(status != 401 && status < 500, "{method} {path} with the token: {status}");
            } else {
                let (status, ..) = api.call(&method, &concrete, None, None);
                assert_eq!(status, 200, "{method} {path} is public");
            }
        }
    }
    assert_eq!(guarded, 9, "every /api operation was tried");
    // The dashboard is public (it asks for the token itself) and locked down by its CSP.
    let page = api.agent.get(format!("{}/", api.base)).call().unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
    // Game pages are never served from here: the public listener has them.
    for path in ["/webtransport/certificate", "/demo/"] {
        let (status, ..) = api.call("GET", path, None, None);
        assert_eq!(status, 404, "{path} is not on the admin listener");
    }
    let (status, ..) = api.call("GET", "/api/v1/no-such-thing", None, None);
    assert_eq!(status, 401, "unknown /api paths are not revealed either");
    // A method a route does not take is a problem document too (found by fuzzing).
    let (status, kind, body) = api.call("DELETE", "/api/v1/stats", Some(TOKEN), None);
    assert_eq!((status, kind.as_str()), (405, "application/problem+json"), "{body}");
    assert!(body.contains("/api/v1/stats does not take DELETE"), "{body}");
}

#[test]
fn an_admin_address_other_hosts_can_reach_needs_a_token() {
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let out = Command::new(env!("CARGO_BIN_EXE_kcpgate")).args(["server", "-admin", addr]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{addr}: {stderr}");
        assert!(stderr.contains("-admin-token") && stderr.contains("KCPGATE_ADMIN_TOKEN"), "{stderr}");
    }
    // Not the example's placeholder, and not a short one.
    for (token, needle) in [("change-me-too", "placeholder"), ("fifteen-bytes..", "at least 16 bytes (got 15)")] {
        let out = Command::new(env!("CARGO_BIN_EXE_kcpgate"))
            .args(["server", "-admin", "0.0.0.0:0"])
            .env("KCPGATE_ADMIN_TOKEN", token)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{token}: {stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kcpgate"))
        .args(["server", "-admin", "127.0.0.1:0", "-tcp"])
        .env("KCPGATE_ADMIN_TOKEN", "short")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("16 bytes"), "on loopback any token will do");
    // With a token (from the environment) it starts.
    let (udp, admin) = (free_udp_port("127.0.0.1"), free_tcp_port());
    let _procs = Procs(vec![Command::new(env!("CARGO_BIN_EXE_kcpgate"))
        .args(["server", "-l", &format!("127.0.0.1:{udp}"), "-admin", &format!("0.0.0.0:{admin}")])
        .env("KCPGATE_ADMIN_TOKEN", TOKEN)
        .stderr(Stdio::null())
        .spawn()
        .unwrap()]);
    let api = Api::new(admin);
    api.wait_ready();
    assert_eq!(api.call("GET", "/api/v1/stats", None, None).0, 401);
    assert_eq!(api.call("GET", "/api/v1/stats", Some(TOKEN), None).0, 200);
}

#[test]
fn the_committed_openapi_document_is_what_kcpgate_prints() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
    let committed = std::fs::read_to_string(path).expect("openapi/openapi.json");
    let printed = Command::new(env!("CARGO_BIN_EXE_kcpgate")).arg("openapi").output().unwrap();
    assert!(printed.status.success());
    assert!(
        committed == String::from_utf8(printed.stdout).unwrap(),
        "openapi/openapi.json is stale: run `cargo run -p kcpgate -- openapi > openapi/openapi.json`, then `(cd web-ui && npm run types)` for the dashboard's types"
    );
    let spec: Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
}

/// A kick through a client's own API does what a kick on the server does: the
/// session's connections end at once, the closing event names the reason, and the
/// client opens a new session for the next connection.
#[test]
fn a_kick_on_the_client_ends_its_connections_like_a_kick_on_the_server() {
    let backend = echo_backend();
    let (udp, local, client_admin) = (free_udp_port("127.0.0.1"), free_tcp_port(), free_tcp_port());
    let _procs = Procs(vec![
        kcpgate(&format!("server -l 127.0.0.1:{udp} -t 127.0.0.1:{backend} -key k -admin off")),
        kcpgate(&format!("client -r 127.0.0.1:{udp} -l 127.0.0.1:{local} -key k -admin 127.0.0.1:{client_admin}")),
    ]);
    let client = Api::new(client_admin);
    client.wait_ready();
    let events = client.events(500);
    let mut first = connect(local, &payload(21, 20_000));
    let before = wait_sessions(&client, "the client's session", |s| s.len() == 1);
    let id = n(&before[0]["id"]);

    let kicked = client.call("DELETE", &format!("/api/v1/sessions/{id}?reason=maintenance"), None, None);
    assert_eq!(kicked.0, 204, "{}", kicked.2);
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = first.read_to_end(&mut rest);
    assert!(read.is_ok() && started.elapsed() < Duration::from_secs(5), "the kicked connection ended: {read:?}");
    let closed = next_event(&events, "session_closed", Duration::from_secs(5));
    assert_eq!((n(&closed["id"]), closed["reason"].as_str()), (id, Some("kicked: maintenance")));

    let mut second = connect(local, &payload(22, 20_000));
    echo(&mut second, &payload(23, 5_000));
    let after = wait_sessions(&client, "a new session", |s| s.len() == 1);
    assert_ne!(n(&after[0]["id"]), id, "the next connection opened a new session");
}
