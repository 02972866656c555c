//! Proof of address on a real server (docs/protocol.md §8.4): openings from
//! sockets that never answer draw at most three times their bytes, dial no backend
//! and cost a bounded amount of memory; a peer that answers the probe is served.

mod support;

use std::io::ErrorKind;
use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use kcpgate_core::pipeline::Connection;
use serde_json::Value;
use support::{admin_get, free_tcp_port, free_udp_port, kcpgate, Procs};

const KEY: &str = "address-proof";

/// A kcptun client's session (fast3, FEC 10/3, aes) with conversation `conv`.
fn client(conv: u32) -> Connection {
    support::kcptun_connection(KEY, conv, true)
}

/// An smux v1 SYN for stream 3 and 64 bytes on it: a kcptun client's first write.
fn syn_and_data() -> Vec<u8> {
    let mut frames = vec![1, 0, 0, 0, 3, 0, 0, 0];
    frames.extend_from_slice(&[1, 2, 64, 0, 3, 0, 0, 0]);
    frames.extend_from_slice(&[0x5a; 64]);
    frames
}

/// The datagrams `c`'s first flush sends after writing `data`.
fn opening(c: &mut Connection, data: &[u8]) -> Vec<Vec<u8>> {
    support::flushed(c, 0, data)
}

/// A backend that counts the connections made to it (and echoes nothing).
fn counting_backend() -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a backend");
    let port = listener.local_addr().unwrap().port();
    let dialled = Arc::new(AtomicU64::new(0));
    let count = dialled.clone();
    thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::Relaxed);
            held.push(c);
        }
    });
    (port, dialled)
}

fn stats(admin: u16) -> Value {
    let (status, body) = admin_get(admin, "/api/v1/stats").expect("the admin API answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Must-show 1: 1,001 key-valid openings, each an smux SYN with 64 bytes of data,
/// from sockets that read but never answer: over 40 s each gets back at most three
/// times its bytes, no backend connection is made, and the server's memory grows
/// by at most 40 MB while they wait (stated bound: 32 KiB a session). Then a
/// client that answers the probe is served: the same test would see its dial.
#[test]
fn forged_openings_draw_at_most_three_times_their_bytes_and_dial_nothing() {
    let udp = free_udp_port("127.0.0.1");
    let admin = free_tcp_port();
    let (backend, dialled) = counting_backend();
    let _procs = Procs(vec![kcpgate(&format!(
        "server -l 127.0.0.1:{udp} -t 127.0.0.1:{backend} -key {KEY} -crypt aes -mode fast3 -nocomp \
         -open-rate 0 -open-rate-per-source 0 -admin 127.0.0.1:{admin}"
    ))]);
    support::wait_ready(admin);
    let rss_before = stats(admin)["process"]["rss_bytes"].as_u64().expect("rss");

    // 1,001 sockets on 127.3.x.y, one opening each.
    let mut sockets = Vec::new();
    for i in 0..1_001u32 {
        let socket = UdpSocket::bind((format!("127.3.{}.{}", i / 250, i % 250 + 1).as_str(), 0)).expect("a socket");
        socket.set_nonblocking(true).unwrap();
        let mut sent = 0;
        for d in opening(&mut client(1_000 + i), &syn_and_data()) {
            sent += d.len();
            socket.send_to(&d, ("127.0.0.1", udp)).unwrap();
        }
        sockets.push((socket, sent, 0usize, 0usize));
    }
    let started = Instant::now();
    let mut rss_peak = 0;
    let mut buf = [0u8; 2048];
    while started.elapsed() < Duration::from_secs(40) {
        for (socket, _, got, datagrams) in &mut sockets {
            loop {
                match socket.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        *got += n;
                        *datagrams += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        if started.elapsed() < Duration::from_secs(4) {
            rss_peak = rss_peak.max(stats(admin)["process"]["rss_bytes"].as_u64().expect("rss"));
        }
        thread::sleep(Duration::from_millis(50));
    }
    let (sent, got): (usize, usize) = sockets.iter().fold((0, 0), |(s, g), x| (s + x.1, g + x.2));
    let worst = sockets.iter().map(|x| x.2 as f64 / x.1 as f64).fold(0.0, f64::max);
    let grown = rss_peak.saturating_sub(rss_before);
    let s = stats(admin);
    eprintln!(
        "1,001 forged openings: {sent} B sent, {got} B back in 40 s (at most {worst:.2}x for one socket, {} datagrams \
         at most); RSS grew {:.1} MB ({:.1} KiB a session); {} backend connections; {}",
        sockets.iter().map(|x| x.3).max().unwrap_or(0),
        grown as f64 / 1e6,
        grown as f64 / 1024.0 / 1001.0,
        dialled.load(Ordering::Relaxed),
        s["sessions"]
    );
    for (socket, sent, got, _) in &sockets {
        assert!(*got <= 3 * sent, "{} got {got} B for {sent} B", socket.local_addr().unwrap());
    }
    assert!(got > 0, "the probes went out");
    assert_eq!(dialled.load(Ordering::Relaxed), 0, "no backend connection for an unproven session");
    assert_eq!((s["sessions"]["open"].as_u64(), s["sessions"]["unproven_expired"].as_u64()), (Some(0), Some(1_001)));
    assert!(grown <= 40_000_000, "RSS grew {grown} B for 1,001 unproven sessions");

    // A client that answers the probe is served, and only then dialled.
    let (socket, mut c) = (UdpSocket::bind("127.0.0.1:0").unwrap(), client(9));
    for d in opening(&mut c, &syn_and_data()) {
        socket.send_to(&d, ("127.0.0.1", udp)).unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(dialled.load(Ordering::Relaxed), 0, "not before the proof");
    assert!(support::prove_address(&mut c, &socket, 400, Duration::from_secs(5)), "the probe");
    let deadline = Instant::now() + Duration::from_secs(5);
    while dialled.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the proven session's stream was dialled");
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(stats(admin)["sessions"]["proven"], 1);
}

fn kcptun_client(args: &str) -> std::process::Child {
    std::process::Command::new("kcptun-client")
        .args(args.split_whitespace())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kcptun-client starts (Debian's kcptun: apt-get install -y kcptun)")
}

/// A server in front of an echo backend, for a kcptun client: its processes, UDP
/// port and admin port, a free local port for the client, and the flags both use.
fn server_for_kcptun() -> (Procs, u16, u16, u16, String) {
    let udp = free_udp_port("127.0.0.1");
    let (admin, local) = (free_tcp_port(), free_tcp_port());
    let backend = support::echo_backend();
    let flags = format!("-key {KEY} -crypt aes -mode fast3 -nocomp");
    let procs = Procs(vec![kcpgate(&format!(
        "server -l 127.0.0.1:{udp} -t 127.0.0.1:{backend} {flags} -admin 127.0.0.1:{admin}"
    ))]);
    support::wait_ready(admin);
    (procs, udp, admin, local, flags)
}

/// Echoes `what` through `conn`; true if it came back whole.
fn echo(conn: &mut std::net::TcpStream, what: &[u8]) -> bool {
    use std::io::{Read, Write};
    let mut got = vec![0; what.len()];
    conn.write_all(what).is_ok() && conn.read_exact(&mut got).is_ok() && got == what
}

/// The open sessions: (id, remote).
fn sessions(admin: u16) -> Vec<(u64, String)> {
    let (_, body) = admin_get(admin, "/api/v1/sessions").expect("the session list");
    let list: Value = serde_json::from_str(&body).expect("JSON");
    let of = |s: &Value| (s["id"].as_u64().unwrap(), s["remote"].as_str().unwrap().to_string());
    list["sessions"].as_array().expect("sessions").iter().map(of).collect()
}

/// One UDP datagram from `from` to `to` with any source address, through a raw
/// socket (the kernel fills in the IP checksum and length; UDP's checksum is
/// optional over IPv4).
fn send_spoofed(from: std::net::SocketAddrV4, to: std::net::SocketAddrV4, payload: &[u8]) {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).expect("a raw socket (needs CAP_NET_RAW)");
    raw.set_header_included_v4(true).expect("IP_HDRINCL");
    let udp_len = 8 + payload.len();
    let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    packet.extend_from_slice(&from.ip().octets());
    packet.extend_from_slice(&to.ip().octets());
    packet.extend_from_slice(&from.port().to_be_bytes());
    packet.extend_from_slice(&to.port().to_be_bytes());
    packet.extend_from_slice(&(udp_len as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    raw.send_to(&packet, &SockAddr::from(to)).expect("sent");
}

/// Must-show 2: an opening with a new conversation, spoofed with a raw socket from
/// a live kcptun client's address and port, leaves its session and stream as they
/// were; the spoofed session is forgotten unproven.
#[test]
fn a_spoofed_opening_from_a_live_kcptun_clients_address_breaks_nothing() {
    let (mut procs, udp, admin, local, flags) = server_for_kcptun();
    procs.0.push(kcptun_client(&format!("-l 127.0.0.1:{local} -r 127.0.0.1:{udp} {flags}")));
    let mut conn = support::connect_when_listening(local);
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(echo(&mut conn, b"before the spoof"));
    let live = sessions(admin);
    assert_eq!(live.len(), 1);
    let victim: std::net::SocketAddrV4 = live[0].1.parse().expect("an IPv4 address");
    let gateway: std::net::SocketAddrV4 = format!("127.0.0.1:{udp}").parse().unwrap();
    for d in opening(&mut client(0xbad), &syn_and_data()) {
        send_spoofed(victim, gateway, &d);
    }
    thread::sleep(Duration::from_millis(300));
    assert!(echo(&mut conn, b"while the spoofed session waits"), "the live stream carries on");
    thread::sleep(Duration::from_secs(5));
    assert!(echo(&mut conn, b"after it was forgotten"), "the live stream carries on");
    assert_eq!(sessions(admin), live, "the same session, at the same address");
    let s = stats(admin);
    eprintln!("after the spoofed opening: {}", s["sessions"]);
    assert_eq!((s["sessions"]["replaced"].as_u64(), s["sessions"]["unproven_expired"].as_u64()), (Some(0), Some(1)));
    let mut fresh = support::connect_when_listening(local);
    fresh.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(echo(&mut fresh, b"and a new stream"), "new streams open on it");
}

/// A NAT-like relay: whoever last sent to `front` is the client; everything goes
/// to `target` from one socket, so the gateway sees one address and port whatever
/// client is behind.
fn nat(target: u16) -> u16 {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = front.local_addr().unwrap().port();
    let client = Arc::new(std::sync::Mutex::new(None));
    let (f, b, c) = (front.try_clone().unwrap(), back.try_clone().unwrap(), client.clone());
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = f.recv_from(&mut buf) {
            *c.lock().unwrap() = Some(from);
            let _ = b.send_to(&buf[..n], ("127.0.0.1", target));
        }
    });
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = back.recv_from(&mut buf) {
            if let Some(to) = *client.lock().unwrap() {
                let _ = front.send_to(&buf[..n], to);
            }
        }
    });
    port
}

/// Must-show 2: Debian's kcptun client killed and started again behind a NAT that
/// keeps its one address and port toward the gateway: the new conversation proves
/// its address and replaces the old session, and the new client's streams flow.
#[test]
fn a_kcptun_client_restarted_behind_the_same_nat_port_gets_its_new_session() {
    let (mut procs, udp, admin, local, flags) = server_for_kcptun();
    let relay = nat(udp);
    let start = || kcptun_client(&format!("-l 127.0.0.1:{local} -r 127.0.0.1:{relay} {flags}"));
    procs.0.push(start());
    let mut conn = support::connect_when_listening(local);
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(echo(&mut conn, b"before the restart"));
    let before = sessions(admin);
    procs.0[1].kill().unwrap();
    procs.0[1].wait().unwrap();
    procs.0[1] = start();
    let restarted = Instant::now();
    let mut conn = support::connect_when_listening(local);
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(echo(&mut conn, b"after the restart"), "the restarted client's stream flows");
    let back_in = restarted.elapsed();
    let after = sessions(admin);
    eprintln!("kcptun restarted behind the same NAT port: echo {back_in:?} after the restart; {before:?} -> {after:?}");
    assert_eq!(after.len(), 1, "one session: {after:?}");
    assert_eq!(after[0].1, before[0].1, "the same address");
    assert_ne!(after[0].0, before[0].0, "a new session");
    assert_eq!(stats(admin)["sessions"]["replaced"], 1);
}
