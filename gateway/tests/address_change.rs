//! Players who change address (`-address-change`, docs/protocol.md §8.5): a
//! kcpgate client behind a relay whose outbound socket changes mid-transfer, first
//! its port, then its address (127.0.0.2 → 127.0.0.3) and the gateway port it
//! reaches (another task for certain). Every byte arrives, one session throughout,
//! each move counted and in the event stream.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{admin_get, free_tcp_port, incompressible, kcpgate, Procs};

const KEY: &str = "address-change";

/// A relay standing for the player's network: the client sends to it, and it
/// sends on to the gateway from the current path (a socket and a gateway port);
/// answers reach the client only through the current path, as a NAT that rebinds
/// forgets the old mapping.
struct Relay {
    port: u16,
    path: Arc<AtomicUsize>,
    forwarded: Arc<AtomicU64>,
    /// The last datagram it forwarded, as it was.
    last: Arc<Mutex<Vec<u8>>>,
}

fn relay(paths: Vec<(&'static str, u16)>) -> Relay {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = front.local_addr().unwrap().port();
    let sockets: Vec<(UdpSocket, u16)> =
        paths.iter().map(|&(ip, to)| (UdpSocket::bind((ip, 0)).expect("a path's socket"), to)).collect();
    let (path, forwarded) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU64::new(0)));
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    for (i, (socket, _)) in sockets.iter().enumerate() {
        let (socket, front, client, path) =
            (socket.try_clone().unwrap(), front.try_clone().unwrap(), client.clone(), path.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok(n) = socket.recv(&mut buf) {
                let to = *client.lock().unwrap();
                if let (Some(to), true) = (to, path.load(Ordering::Relaxed) == i) {
                    let _ = front.send_to(&buf[..n], to);
                }
            }
        });
    }
    let (p, f, last) = (path.clone(), forwarded.clone(), Arc::new(Mutex::new(Vec::new())));
    let l = last.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = front.recv_from(&mut buf) {
            *client.lock().unwrap() = Some(from);
            *l.lock().unwrap() = buf[..n].to_vec();
            let (socket, to) = &sockets[p.load(Ordering::Relaxed)];
            let _ = socket.send_to(&buf[..n], ("127.0.0.1", *to));
            f.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    Relay { port, path, forwarded, last }
}

fn stats(admin: u16) -> Value {
    let (_, body) = admin_get(admin, "/api/v1/stats").expect("stats");
    serde_json::from_str(&body).unwrap()
}

fn session_ids(admin: u16) -> Vec<(u64, String)> {
    let (_, body) = admin_get(admin, "/api/v1/sessions").expect("sessions");
    let list: Value = serde_json::from_str(&body).unwrap();
    let of = |s: &Value| (s["id"].as_u64().unwrap(), s["remote"].as_str().unwrap().to_string());
    list["sessions"].as_array().unwrap().iter().map(of).collect()
}

/// The admin event stream, read on a thread: every line it sends.
fn events(admin: u16) -> Arc<Mutex<String>> {
    let seen: Arc<Mutex<String>> = Arc::default();
    let mut c = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    c.write_all(b"GET /api/v1/events?interval_ms=60000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let text = seen.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = c.read(&mut buf) {
            text.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    seen
}

#[test]
fn a_session_follows_its_player_to_a_new_port_then_a_new_address_and_another_task() {
    let (p0, p1) = loop {
        let p = support::free_udp_port("127.0.0.1");
        if p < u16::MAX && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            break (p, p + 1);
        }
    };
    let (admin, local) = (free_tcp_port(), free_tcp_port());
    let backend = support::echo_backend();
    let flags = format!("-key {KEY} -crypt aes -mode fast3 -nocomp");
    let mut procs = Procs(vec![kcpgate(&format!(
        "server -l 127.0.0.1:{p0}-{p1} -t 127.0.0.1:{backend} {flags} -address-change -admin 127.0.0.1:{admin}"
    ))]);
    support::wait_ready(admin);
    let stream = events(admin);
    // Path 0 and 1: 127.0.0.2, two ports, to the first gateway port; path 2:
    // 127.0.0.3 to the second port, whose sockets are other tasks.
    let relay = relay(vec![("127.0.0.2", p0), ("127.0.0.2", p0), ("127.0.0.3", p1)]);
    procs.0.push(kcpgate(&format!("client -l 127.0.0.1:{local} -r 127.0.0.1:{} {flags}", relay.port)));
    let mut conn = support::connect_when_listening(local);
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let total = 6 << 20;
    let data = incompressible(30, total);
    let writer = {
        let (mut w, data) = (conn.try_clone().unwrap(), data.clone());
        thread::spawn(move || w.write_all(&data).expect("written"))
    };
    let mut back = vec![0u8; total];
    let mut got = 0;
    let mut ids = Vec::new();
    let started = Instant::now();
    while got < total {
        let n = conn.read(&mut back[got..]).unwrap_or_else(|e| {
            let step = relay.path.load(Ordering::Relaxed);
            panic!("{e} at {got} of {total}, on path {step}: {}", stats(admin))
        });
        assert!(n > 0, "the stream ended at {got}");
        got += n;
        // Move at a third and at two thirds of the way.
        let step = relay.path.load(Ordering::Relaxed);
        if step < 2 && got > (step + 1) * total / 3 {
            ids.push(session_ids(admin));
            relay.path.store(step + 1, Ordering::Relaxed);
        }
    }
    writer.join().unwrap();
    ids.push(session_ids(admin));
    let elapsed = started.elapsed();
    assert!(back == data, "every byte came back, in order");
    let s = stats(admin);
    eprintln!(
        "{} MB echoed in {elapsed:?} across two moves ({} MB through the relay); sessions {ids:?}; {}",
        total >> 20,
        relay.forwarded.load(Ordering::Relaxed) >> 20,
        s["sessions"]
    );
    assert!(ids.iter().all(|l| l.len() == 1 && l[0].0 == ids[0][0].0), "one session throughout: {ids:?}");
    assert!(ids[2][0].1.starts_with("127.0.0.3:"), "it lives at the new address: {ids:?}");
    assert_eq!((s["sessions"]["moved"].as_u64(), s["sessions"]["proven"].as_u64()), (Some(2), Some(1)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while stream.lock().unwrap().matches("event: session_moved").count() < 2 {
        assert!(Instant::now() < deadline, "two moves in the event stream: {}", stream.lock().unwrap());
        thread::sleep(Duration::from_millis(20));
    }
    let (_, metrics) = admin_get(admin, "/metrics").expect("metrics");
    assert!(metrics.contains("kcpgate_sessions_moved_total 2"), "{metrics}");

    // From elsewhere, with the key: a copy of the client's last datagram, and a
    // datagram of the session's conversation made without its evidence. Neither
    // moves it; both are counted.
    let (_, body) = admin_get(admin, &format!("/api/v1/sessions/{}", ids[0][0].0)).expect("the session");
    let conv = serde_json::from_str::<Value>(&body).unwrap()["conv"].as_u64().expect("its conversation") as u32;
    let copy = relay.last.lock().unwrap().clone();
    UdpSocket::bind("127.0.0.4:0").unwrap().send_to(&copy, ("127.0.0.1", p1)).unwrap();
    UdpSocket::bind("127.0.0.5:0").unwrap().send_to(&without_evidence(conv), ("127.0.0.1", p1)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let counted =
        |s: &Value| s["dropped"]["replayed"].as_u64() >= Some(1) && s["dropped"]["no_evidence"].as_u64() >= Some(1);
    while !counted(&stats(admin)) {
        assert!(Instant::now() < deadline, "the copy and the forgery counted: {}", stats(admin)["dropped"]);
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(session_ids(admin), ids[2], "the session stayed where it was");
    assert_eq!(stats(admin)["sessions"]["moved"], 2);
    let mut fresh = support::connect_when_listening(local);
    fresh.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    fresh.write_all(b"still there").unwrap();
    let mut reply = [0u8; 11];
    fresh.read_exact(&mut reply).expect("a new stream on the moved session");
    assert_eq!(&reply, b"still there");
}

/// A datagram of conversation `conv` at sn 1 (data, no ACK), sealed with the key.
fn without_evidence(conv: u32) -> Vec<u8> {
    let mut c = support::kcptun_connection(KEY, conv, true);
    let nop = [1, 3, 0, 0, 0, 0, 0, 0];
    support::flushed(&mut c, 0, &nop);
    support::flushed(&mut c, 10, &nop).remove(0)
}
