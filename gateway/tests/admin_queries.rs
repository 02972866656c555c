//! Admin queries about one session go to the task that owns it, and no other: with
//! 20,000 idle sessions over several tasks, a session's view, a kick and a capture
//! are each answered by the owner alone (`kcpgate_task_queries_total` counts what
//! every task answered). Each query's time is printed for the record
//! (`-- --nocapture`); time is not asserted here.

mod support;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::thread;
use std::time::{Duration, Instant};

use kcpgate_core::pipeline::Connection;
use serde_json::Value;
use support::{admin_get, echo_backend, free_tcp_port, free_udp_port, kcpgate, Procs};

const KEY: &str = "admin-queries";
const SESSIONS: u32 = 20_000;
/// How many of each query are timed.
const SAMPLES: usize = 40;

/// A kcptun client's first datagram of conversation `conv` (fast3, no FEC): an
/// smux keep-alive (NOP) frame, which opens a session on the server.
fn first_datagram(conv: u32) -> (Connection, Vec<u8>) {
    let mut c = support::kcptun_connection(KEY, conv, false);
    let first = support::flushed(&mut c, 0, &[1, 3, 0, 0, 0, 0, 0, 0]).remove(0);
    (c, first)
}

/// The server's ports: every port has a socket (and task) per core, so one port
/// makes two tasks or more on a machine of two cores or more; else two ports do.
fn ports() -> Vec<u16> {
    if thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        return vec![free_udp_port("127.0.0.1")];
    }
    loop {
        let p = free_udp_port("127.0.0.1");
        if p < u16::MAX && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            return vec![p, p + 1];
        }
    }
}

/// `kcpgate_task_queries_total` of `query`, by task.
fn answered(admin: u16, query: &str) -> BTreeMap<u64, u64> {
    let (_, text) = admin_get(admin, "/metrics").expect("metrics answer");
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("kcpgate_task_queries_total{")) {
        if !line.contains(&format!("query=\"{query}\"")) {
            continue;
        }
        let task = line.split("task=\"").nth(1).and_then(|t| t.split('"').next()).expect("a task label");
        let n: f64 = line.rsplit(' ').next().unwrap().parse().expect("a number");
        out.insert(task.parse().expect("a task number"), n as u64);
    }
    out
}

/// What each task answered between `before` and `after`.
fn delta(before: &BTreeMap<u64, u64>, after: &BTreeMap<u64, u64>) -> BTreeMap<u64, u64> {
    after.iter().map(|(t, n)| (*t, n - before.get(t).copied().unwrap_or(0))).collect()
}

fn median_ms(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1000.0
}

#[test]
fn one_sessions_queries_go_to_its_task_alone() {
    let ports = ports();
    let listen = match ports[..] {
        [p] => p.to_string(),
        _ => format!("{}-{}", ports[0], ports[ports.len() - 1]),
    };
    let admin = free_tcp_port();
    let backend = echo_backend();
    let _procs = Procs(vec![kcpgate(&format!(
        "server -l 127.0.0.1:{listen} -t 127.0.0.1:{backend} -key {KEY} -crypt aes -mode fast3 -nocomp \
         -datashard 0 -parityshard 0 -open-rate 0 -open-rate-per-source 0 -sockbuf 16777216 -admin 127.0.0.1:{admin}"
    ))]);
    support::wait_ready(admin);

    // 20,000 peers, each its own address (127.1.x.y), each sending one genuine
    // datagram and falling silent: idle sessions. The sockets close at once.
    let started = Instant::now();
    let open = |admin| {
        let (_, body) = admin_get(admin, "/api/v1/stats").expect("stats");
        serde_json::from_str::<Value>(&body).unwrap()["sessions"]["open"].as_u64().unwrap()
    };
    // In batches of 500, each peer proving its address as a kcp-go client does.
    for batch in (1..=SESSIONS).collect::<Vec<u32>>().chunks(500) {
        let peers: Vec<(UdpSocket, Connection)> = batch
            .iter()
            .map(|&conv| {
                let ip = format!("127.1.{}.{}", conv / 250, conv % 250 + 1);
                let socket = UdpSocket::bind((ip.as_str(), 0)).expect("a UDP socket");
                let (c, first) = first_datagram(conv);
                socket.send_to(&first, ("127.0.0.1", ports[conv as usize % ports.len()])).unwrap();
                (socket, c)
            })
            .collect();
        for (socket, mut c) in peers {
            assert!(support::prove_address(&mut c, &socket, 10, Duration::from_secs(5)), "the gateway's probe");
        }
        assert!(started.elapsed() < Duration::from_secs(60), "sessions open too slowly: {}", open(admin));
    }
    while open(admin) < u64::from(SESSIONS) {
        assert!(started.elapsed() < Duration::from_secs(60), "{} of {SESSIONS} sessions opened", open(admin));
        thread::sleep(Duration::from_millis(10));
    }
    eprintln!("{SESSIONS} sessions open in {:.1} s", started.elapsed().as_secs_f64());

    // Their ids: each names its task (the last six digits).
    let mut ids = Vec::new();
    while ids.len() < SESSIONS as usize {
        let (status, body) =
            admin_get(admin, &format!("/api/v1/sessions?limit=1000&offset={}", ids.len())).expect("list");
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        let sessions = page["sessions"].as_array().unwrap();
        assert!(!sessions.is_empty(), "the list ended at {}", ids.len());
        ids.extend(sessions.iter().map(|s| s["id"].as_u64().unwrap()));
    }
    let task_of = |id: u64| id % 1_000_000;
    let mut per_task: BTreeMap<u64, usize> = BTreeMap::new();
    for id in &ids {
        *per_task.entry(task_of(*id)).or_default() += 1;
    }
    assert!(per_task.len() >= 2, "the sessions spread over tasks: {per_task:?}");
    eprintln!("sessions per task: {per_task:?}");
    let tasks: Vec<u64> = per_task.keys().copied().collect();
    let samples: Vec<u64> = ids.iter().step_by(ids.len() / SAMPLES).take(SAMPLES).copied().collect();

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = |path: String| format!("http://127.0.0.1:{admin}{path}");
    let mut expected: BTreeMap<u64, u64> = tasks.iter().map(|t| (*t, 0)).collect();
    for s in &samples {
        *expected.get_mut(&task_of(*s)).unwrap() += 1;
    }

    // One session's view.
    let before = answered(admin, "session");
    let mut times = Vec::new();
    for id in &samples {
        let t = Instant::now();
        let mut r = agent.get(url(format!("/api/v1/sessions/{id}"))).call().unwrap();
        times.push(t.elapsed());
        assert_eq!(r.status(), 200);
        let view: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(view["id"].as_u64(), Some(*id));
    }
    assert_eq!(delta(&before, &answered(admin, "session")), expected, "each view asked its owner alone");
    let view_ms = median_ms(times);

    // A capture: the session is idle, so it answers when its window (100 ms) ends;
    // the time beyond the window is the query's.
    let before = answered(admin, "capture");
    let mut times = Vec::new();
    for id in &samples {
        let t = Instant::now();
        let r = agent.post(url(format!("/api/v1/sessions/{id}/capture?count=1&timeout_ms=100"))).send_empty().unwrap();
        times.push(t.elapsed().saturating_sub(Duration::from_millis(100)));
        assert_eq!(r.status(), 200);
    }
    assert_eq!(delta(&before, &answered(admin, "capture")), expected, "each capture asked its owner alone");
    let capture_ms = median_ms(times);

    // A kick.
    let before = answered(admin, "kick");
    let mut times = Vec::new();
    for id in &samples {
        let t = Instant::now();
        let r = agent.delete(url(format!("/api/v1/sessions/{id}"))).call().unwrap();
        times.push(t.elapsed());
        assert_eq!(r.status(), 204);
    }
    assert_eq!(delta(&before, &answered(admin, "kick")), expected, "each kick asked its owner alone");
    let kick_ms = median_ms(times);

    // A session no task has, of a live task, and of a task that never was: 404,
    // answered by that one task, or by none.
    let before = answered(admin, "session");
    let gone = samples[0];
    let never = 999_999_000_000 + 999_999;
    for id in [gone, never] {
        let r = agent.get(url(format!("/api/v1/sessions/{id}"))).call().unwrap();
        assert_eq!(r.status(), 404, "session {id}");
    }
    let mut one = expected.clone();
    one.values_mut().for_each(|n| *n = 0);
    *one.get_mut(&task_of(gone)).unwrap() = 1;
    assert_eq!(
        delta(&before, &answered(admin, "session")),
        one,
        "a kicked session's id asks its task; a task that never was, none"
    );

    eprintln!(
        "median over {SAMPLES} with {SESSIONS} idle sessions on {} tasks: view {view_ms:.2} ms, kick {kick_ms:.2} ms, \
         capture {capture_ms:.2} ms beyond its 100 ms window",
        tasks.len()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the sessions stayed open throughout (smux's 30 s keep-alive)"
    );
}
