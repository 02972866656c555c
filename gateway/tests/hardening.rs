//! The gateway under bad input it must shrug off: copies of genuine datagrams from
//! the same and other addresses, datagrams of sessions it does not have, and more
//! new sessions than its rates allow. Each is dropped and counted, and nothing
//! else changes.

mod support;

use std::net::UdpSocket;
use std::thread;
use std::time::{Duration, Instant};

use kcpgate_core::pipeline::Connection;
use serde_json::Value;
use support::{admin_get, echo_backend, free_tcp_port, free_udp_port, kcpgate, Procs};

const KEY: &str = "hardening";

/// A kcptun client's session (fast3, FEC 10/3), to make genuine datagrams.
fn client(conv: u32) -> Connection {
    support::kcptun_connection(KEY, conv, true)
}

/// An smux v1 keep-alive (NOP) frame: what the datagrams carry, so the sessions
/// they open stay healthy (the servers run with -nocomp).
const NOP: [u8; 8] = [1, 3, 0, 0, 0, 0, 0, 0];

/// The next datagram `c` sends after writing `data`.
fn next_datagram(c: &mut Connection, now: u32, data: &[u8]) -> Vec<u8> {
    support::flushed(c, now, data).remove(0)
}

/// A server on `udp` with an admin listener; returns the admin port.
fn server(udp: u16, extra: &str) -> (Procs, u16) {
    let admin = free_tcp_port();
    let backend = echo_backend();
    let procs = Procs(vec![kcpgate(&format!(
        "server -l 127.0.0.1:{udp} -t 127.0.0.1:{backend} -key {KEY} -crypt aes -mode fast3 -nocomp -admin 127.0.0.1:{admin} {extra}"
    ))]);
    support::wait_ready(admin);
    (procs, admin)
}

fn stats(admin: u16) -> Value {
    let (status, body) = admin_get(admin, "/api/v1/stats").expect("the admin API answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Waits until `check` holds of the stats (the gateway counts as datagrams arrive).
fn until_stats(admin: u16, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = stats(admin);
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s:#}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn socket(ip: &str) -> UdpSocket {
    UdpSocket::bind((ip, 0)).expect("a UDP socket")
}

#[test]
fn copies_of_genuine_datagrams_open_nothing_and_are_counted() {
    let udp = free_udp_port("127.0.0.1");
    let (_procs, admin) = server(udp, "");
    let mut c = client(4242);
    let first = next_datagram(&mut c, 0, &NOP);
    let later = next_datagram(&mut c, 20, &NOP);
    let (owner, stranger, third) = (socket("127.0.0.1"), socket("127.0.0.1"), socket("127.0.0.2"));
    owner.send_to(&first, ("127.0.0.1", udp)).unwrap();
    assert!(support::prove_address(&mut c, &owner, 10, Duration::from_secs(5)), "the gateway's probe");
    until_stats(admin, "the session opens", |s| s["sessions"]["open"] == 1);
    owner.send_to(&first, ("127.0.0.1", udp)).unwrap(); // the same address
    stranger.send_to(&first, ("127.0.0.1", udp)).unwrap(); // another port
    third.send_to(&first, ("127.0.0.1", udp)).unwrap(); // another host
    third.send_to(&later, ("127.0.0.1", udp)).unwrap(); // mid-session, from elsewhere
    let s = until_stats(admin, "three copies and one stray counted", |s| {
        s["dropped"]["replayed"] == 3 && s["dropped"]["mid_session"] == 1
    });
    assert_eq!(s["sessions"]["open"], 1, "no session for any copy");
    owner.send_to(&later, ("127.0.0.1", udp)).unwrap();
    // Its own datagrams so far: the opening, the ACK of the probe, and this one.
    until_stats(admin, "the original still reaches its session", |s| s["snmp"]["InPkts"] == 3);
    // The session moves on; a second later the captured datagram comes back from
    // its own address, and from another host again.
    for i in 0..30 {
        owner.send_to(&next_datagram(&mut c, 40 + i * 20, &NOP), ("127.0.0.1", udp)).unwrap();
    }
    until_stats(admin, "the session's own datagrams arrive", |s| s["snmp"]["InPkts"] == 33);
    thread::sleep(Duration::from_secs(1));
    owner.send_to(&later, ("127.0.0.1", udp)).unwrap();
    third.send_to(&later, ("127.0.0.1", udp)).unwrap();
    let s = until_stats(admin, "the late copies counted", |s| {
        s["dropped"]["replayed"] == 4 && s["dropped"]["mid_session"] == 2
    });
    assert_eq!(s["snmp"]["InPkts"], 33, "no late copy reached the session");
    let (_, metrics) = admin_get(admin, "/metrics").expect("metrics");
    assert!(metrics.contains("kcpgate_datagrams_dropped_total{reason=\"replayed\"} 4"), "{metrics}");
    assert!(metrics.contains("kcpgate_datagrams_dropped_total{reason=\"mid_session\"} 2"), "{metrics}");
}

#[test]
fn new_sessions_over_the_rates_are_refused_and_counted() {
    // Per source: 1/s with a burst of 10; 15 clients on one host open 10 sessions.
    let udp = free_udp_port("127.0.0.1");
    let (_procs, admin) = server(udp, "-open-rate-per-source 1 -open-rate 0");
    let sockets: Vec<UdpSocket> = (0..16).map(|_| socket("127.0.0.1")).collect();
    let mut clients: Vec<Connection> = (0..15).map(|i| client(100 + i)).collect();
    for (s, c) in sockets.iter().zip(&mut clients) {
        s.send_to(&next_datagram(c, 0, &NOP), ("127.0.0.1", udp)).unwrap();
    }
    // Each admitted session proves its address; the refused hear nothing.
    let proven =
        sockets.iter().zip(&mut clients).map(|(s, c)| support::prove_address(c, s, 10, Duration::from_millis(300)));
    assert_eq!(proven.filter(|&p| p).count(), 10);
    let st = until_stats(admin, "10 sessions, 5 refused", |s| {
        s["dropped"]["source_limit"] == 5 && s["sessions"]["open"] == 10
    });
    assert_eq!(st["sessions"]["proven"], 10);
    // Another host has its own bucket.
    let (other, mut c) = (socket("127.0.0.3"), client(200));
    other.send_to(&next_datagram(&mut c, 0, &NOP), ("127.0.0.1", udp)).unwrap();
    assert!(support::prove_address(&mut c, &other, 10, Duration::from_secs(5)));
    until_stats(admin, "another host's session", |s| s["sessions"]["open"] == 11);

    // In all: 2/s with a burst of 10; 20 hosts open 10 sessions.
    let udp = free_udp_port("127.0.0.1");
    let (_procs, admin) = server(udp, "-open-rate 2");
    let mut hosts = Vec::new();
    for host in 0..20u32 {
        let s = socket(&format!("127.0.1.{}", host + 1));
        let mut c = client(300 + host);
        s.send_to(&next_datagram(&mut c, 0, &NOP), ("127.0.0.1", udp)).unwrap();
        hosts.push((s, c));
    }
    let proven = hosts.iter_mut().map(|(s, c)| support::prove_address(c, s, 10, Duration::from_millis(300)));
    assert_eq!(proven.filter(|&p| p).count(), 10);
    let st = until_stats(admin, "10 sessions, 10 refused", |s| {
        s["dropped"]["opening_limit"] == 10 && s["sessions"]["open"] == 10
    });
    assert_eq!(st["sessions"]["open"], 10);
    let (_, config) = admin_get(admin, "/api/v1/config").expect("config");
    let config: Value = serde_json::from_str(&config).unwrap();
    let process = &config["process"];
    assert_eq!((process["open_rate"].as_u64(), process["open_rate_per_source"].as_u64()), (Some(2), Some(50)));
}

/// A server killed mid-transfer and started again: its kcpgate clients hear from
/// the new one that their sessions are gone, their connections close at once, and
/// new connections work (Debian's kcptun ignores the reset and recovers by its
/// keep-alive, 30 to 60 s later).
#[test]
fn clients_of_a_killed_and_restarted_server_reconnect_at_once() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let backend = echo_backend();
    let (udp, local) = (free_udp_port("127.0.0.1"), free_tcp_port());
    let flags = format!("-key {KEY} -crypt aes -mode fast3");
    let server = || kcpgate(&format!("server -l 127.0.0.1:{udp} -t 127.0.0.1:{backend} {flags} -admin off"));
    let mut procs = Procs(vec![server(), kcpgate(&format!("client -l 127.0.0.1:{local} -r 127.0.0.1:{udp} {flags}"))]);
    let connect = || {
        let c = support::connect_when_listening(local);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    };
    let echo = |c: &mut TcpStream, what: &[u8]| -> bool {
        let mut got = vec![0; what.len()];
        c.write_all(what).is_ok() && c.read_exact(&mut got).is_ok() && got == what
    };
    let mut before = connect();
    assert!(echo(&mut before, b"before the crash"));
    procs.0[0].kill().unwrap();
    procs.0[0].wait().unwrap();
    procs.0[0] = server();
    thread::sleep(Duration::from_millis(300)); // the new server binds its port
    let killed = Instant::now();
    // The old connection's next bytes reach the new server, which answers with a reset.
    let _ = before.write_all(b"anyone?");
    let mut rest = Vec::new();
    let _ = before.read_to_end(&mut rest);
    assert!(killed.elapsed() < Duration::from_secs(3), "the old connection closed after {:?}", killed.elapsed());
    let mut after = connect();
    assert!(echo(&mut after, b"after the restart"), "a new connection works");
    assert!(killed.elapsed() < Duration::from_secs(5), "back after {:?}", killed.elapsed());
}

/// A key and an admin token given by file or environment appear nowhere a local
/// user or a log reader could see them: not in the process's command line, its
/// log, nor the admin API, while a stream flows with them.
#[test]
fn secrets_from_a_file_or_the_environment_stay_out_of_cmdline_logs_and_api() {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    const SECRET_KEY: &str = "k3y-only-in-a-file-5e1d";
    const SECRET_TOKEN: &str = "t0ken-only-in-a-file-88c2";
    let dir = std::env::temp_dir().join(format!("kcpgate-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{text}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.display().to_string()
    };
    let (key_file, token_file) = (secret_file("key", SECRET_KEY), secret_file("token", SECRET_TOKEN));
    let (server_log, client_log) = (dir.join("server.log"), dir.join("client.log"));
    let backend = echo_backend();
    let (udp, local, admin) = (free_udp_port("127.0.0.1"), free_tcp_port(), free_tcp_port());
    let spawn = |args: String, env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_kcpgate"))
            .args(args.split_whitespace())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kcpgate starts")
    };
    let procs = Procs(vec![
        spawn(
            format!(
                "server -l 127.0.0.1:{udp} -t 127.0.0.1:{backend} -key-file {key_file} -admin 127.0.0.1:{admin} \
                 -admin-token-file {token_file} -log {}",
                server_log.display()
            ),
            &[],
        ),
        spawn(
            format!("client -l 127.0.0.1:{local} -r 127.0.0.1:{udp} -admin off -log {}", client_log.display()),
            &[("KCPTUN_KEY", SECRET_KEY)],
        ),
    ]);
    support::wait_ready(admin);
    // The key from the file and the key from the environment agree: bytes flow.
    let mut c = support::connect_when_listening(local);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"through a keyed tunnel").unwrap();
    let mut got = [0; 22];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"through a keyed tunnel");

    let (status, _) = support::admin_get(admin, "/api/v1/config").unwrap();
    assert_eq!(status, 401, "the token from the file guards the API");
    let mut seen = Vec::new();
    for path in ["/api/v1/config", "/api/v1/stats", "/api/v1/sessions"] {
        let (status, body) = support::admin_get_with(admin, path, Some(SECRET_TOKEN)).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        seen.push((path.to_string(), body));
    }
    for child in &procs.0 {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
        seen.push(("cmdline".into(), String::from_utf8_lossy(&cmdline).replace('\0', " ")));
    }
    drop(c);
    drop(procs);
    for log in [&server_log, &client_log] {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(text.contains("INFO") || text.contains("info"), "the log has lines: {text}");
        seen.push((log.display().to_string(), text));
    }
    for (place, text) in &seen {
        for secret in [SECRET_KEY, SECRET_TOKEN] {
            assert!(!text.contains(secret), "{place} shows a secret:\n{text}");
        }
    }
    assert!(seen.iter().any(|(p, t)| p == "cmdline" && t.contains(&key_file)), "cmdline read: {seen:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A server with a WebTransport listener: its processes, admin port, and a way
/// to open WebTransport sessions to it.
fn webtransport_server() -> (Procs, u16, WtDialer) {
    let (udp, wt, public) = (free_udp_port("127.0.0.1"), free_udp_port("127.0.0.1"), free_tcp_port());
    let (procs, admin) = server(udp, &format!("-webtransport 127.0.0.1:{wt} -public 127.0.0.1:{public}"));
    let (_, published) = admin_get(public, "/webtransport/certificate").expect("the certificate's hash");
    let published: Value = serde_json::from_str(&published).unwrap();
    let hash = support::hex_hash(published["hashes"][0]["value"].as_str().expect("a hash"));
    (procs, admin, WtDialer { port: wt, hash })
}

struct WtDialer {
    port: u16,
    hash: [u8; 32],
}

impl WtDialer {
    async fn open(&self) -> wtransport::Connection {
        use wtransport::tls::Sha256Digest;
        use wtransport::{ClientConfig, Endpoint};
        let config = ClientConfig::builder()
            .with_bind_default()
            .with_server_certificate_hashes([Sha256Digest::new(self.hash)])
            .build();
        Endpoint::client(config).unwrap().connect(format!("https://127.0.0.1:{}/", self.port)).await.expect("a session")
    }
}

/// The same over WebTransport: a captured datagram sent again in its own
/// WebTransport session, and in another, is dropped and counted; its copy opens
/// no second session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_over_webtransport_open_nothing_and_are_counted() {
    let (_procs, admin, wt) = webtransport_server();
    let open = || wt.open();
    let mut c = client(5151);
    let first = next_datagram(&mut c, 0, &NOP);
    let later = next_datagram(&mut c, 20, &NOP);
    let owner = open().await;
    owner.send_datagram(first.clone()).unwrap();
    until_stats(admin, "the session opens", |s| s["sessions"]["open"] == 1);
    owner.send_datagram(later.clone()).unwrap();
    until_stats(admin, "its next datagram arrives", |s| s["snmp"]["InPkts"] == 2);
    owner.send_datagram(first.clone()).unwrap(); // in its own WebTransport session
    owner.send_datagram(later.clone()).unwrap();
    let stranger = open().await;
    stranger.send_datagram(first.clone()).unwrap(); // in another
    let s = until_stats(admin, "three copies counted", |s| s["dropped"]["replayed"] == 3);
    assert_eq!(s["sessions"]["open"], 1, "no session for the copy: {s:#}");
    assert_eq!(s["snmp"]["InPkts"], 2, "no copy reached the session");
    let third = open().await;
    third.send_datagram(later).unwrap(); // a later datagram, in a third session
    until_stats(admin, "the stray counted", |s| s["dropped"]["mid_session"] == 1);
    // A browser whose opening datagram is overtaken by its next keeps its
    // WebTransport session: the opening, when it comes, opens the KCP session.
    let mut c = client(6161);
    let (first, later) = (next_datagram(&mut c, 0, &NOP), next_datagram(&mut c, 20, &NOP));
    let overtaken = open().await;
    overtaken.send_datagram(later).unwrap();
    until_stats(admin, "the early datagram counted", |s| s["dropped"]["mid_session"] == 2);
    overtaken.send_datagram(first).unwrap();
    until_stats(admin, "the session opens after all", |s| s["sessions"]["open"] == 2);
}

/// A WebTransport session kicked over the API reads why. Datagrams its page sends
/// meanwhile get no reset: one would end the page's session, with "no such
/// session", before it reads the notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_webtransport_session_reads_why_and_gets_no_reset() {
    let (_procs, admin, wt) = webtransport_server();
    let mut c = client(7171);
    let page = wt.open().await;
    page.send_datagram(next_datagram(&mut c, 0, &NOP)).unwrap();
    let s = until_stats(admin, "the session opens", |s| s["sessions"]["open"] == 1);
    let (_, listed) = admin_get(admin, "/api/v1/sessions").expect("the admin API answers");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let id = listed["sessions"][0]["id"].as_u64().expect("the session's id");
    // The session's own answers (its acks) come before the kick.
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), page.receive_datagram()).await {}
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let kicked = agent.delete(format!("http://127.0.0.1:{admin}/api/v1/sessions/{id}?reason=test")).call().unwrap();
    assert_eq!(kicked.status().as_u16(), 204);
    for at in [20, 40, 60] {
        page.send_datagram(next_datagram(&mut c, at, &NOP)).unwrap();
    }
    let mut notice = page.accept_uni().await.expect("a close notice");
    let mut reason = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut notice, &mut reason).await.unwrap();
    assert!(String::from_utf8_lossy(&reason).contains("kicked: test"), "{}", String::from_utf8_lossy(&reason));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = tokio::time::timeout(Duration::from_millis(10), page.receive_datagram()).await;
    assert!(!matches!(answer, Ok(Ok(_))), "a datagram came back after the kick");
    let after = stats(admin);
    assert_eq!(after["sessions"]["resets_sent"], s["sessions"]["resets_sent"], "{after:#}");
}
