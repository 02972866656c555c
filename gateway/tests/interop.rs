//! kcpgate against real peers: Debian's kcptun (`apt-get install -y kcptun`) and
//! itself. Each case runs a TCP echo backend, a server and a client as processes,
//! and pushes 8 concurrent connections of 4 MB through the tunnel, each with its own
//! data, checking every byte that comes back.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use support::{
    connect_when_listening, echo_backend, exit_status_within, free_tcp_port, free_udp_port, incompressible, Procs,
};

const CONNECTIONS: usize = 8;
const BYTES: usize = 4_000_000;

/// Starts `program` (its first word is the executable, the rest leading arguments).
fn spawn(program: &str, args: &[String]) -> Child {
    let mut words = program.split_whitespace();
    let exe = words.next().expect("a program");
    Command::new(exe)
        .args(words)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e} (Debian's kcptun: apt-get install -y kcptun)"))
}

fn kcpgate() -> String {
    env!("CARGO_BIN_EXE_kcpgate").to_string()
}

/// Starts `kcpgate ROLE` with `arguments` (split at whitespace).
fn kcpgate_run(role: &str, arguments: &str) -> Child {
    spawn(&format!("{} {role}", kcpgate()), &args(arguments))
}

fn data_for(conn: usize) -> Vec<u8> {
    incompressible(conn as u64 + 1, BYTES)
}

/// 8 concurrent connections through the client's port; each echo must match.
fn push_through(port: u16) {
    drop(connect_when_listening(port));
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            thread::spawn(move || {
                let data = data_for(i);
                let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut w = c.try_clone().unwrap();
                let sent = data.clone();
                let writer = thread::spawn(move || w.write_all(&sent));
                // Read the whole echo before closing: kcptun 20210922 tears a stream
                // down as soon as either direction ends.
                let mut got = vec![0u8; BYTES];
                let mut r = c;
                r.read_exact(&mut got).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                writer.join().unwrap().unwrap();
                assert!(got == data, "connection {i}: echoed bytes differ");
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn case(server: &str, server_args: &str, client: &str, client_args: &str, host: &str) {
    let backend = echo_backend();
    let udp = free_udp_port(host);
    let local = free_tcp_port();
    let bracketed = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    let _procs = Procs(vec![
        spawn(server, &args(&format!("-l {bracketed}:{udp} -t 127.0.0.1:{backend} {server_args}"))),
        spawn(client, &args(&format!("-l 127.0.0.1:{local} -r {bracketed}:{udp} {client_args}"))),
    ]);
    push_through(local);
}

fn kcptun(side: &str) -> String {
    let name = format!("kcptun-{side}");
    assert!(
        Command::new(&name).arg("-v").output().is_ok(),
        "{name} is not installed; the test command installs it (apt-get install -y kcptun)"
    );
    name
}

#[test]
fn kcptun_client_to_kcpgate_server() {
    // Debian's defaults: smux v1, FEC 10/3, compression; our server detects v1.
    let flags = "-key interop -crypt aes -mode fast3";
    case(&format!("{} server", kcpgate()), flags, &kcptun("client"), flags, "127.0.0.1");
}

#[test]
fn kcpgate_client_to_kcptun_server() {
    let flags = "-key interop -crypt aes -mode fast3";
    case(&kcptun("server"), flags, &format!("{} client", kcpgate()), &format!("{flags} -smuxver 1"), "127.0.0.1");
}

#[test]
fn kcpgate_both_ends_gcm_qpp_ipv6() {
    let flags = "-key interop -crypt aes-128-gcm -mode fast2 -QPP -nocomp -conn 2";
    let server_flags = flags.replace(" -conn 2", "");
    case(&format!("{} server", kcpgate()), &server_flags, &format!("{} client", kcpgate()), flags, "::1");
}

/// One configuration in every pairing: kcptun client → kcpgate server, kcpgate
/// client → kcptun server (Debian's kcptun), and kcpgate at both ends.
fn every_pairing(flags: &str) {
    case(&format!("{} server", kcpgate()), flags, &kcptun("client"), flags, "127.0.0.1");
    case(&kcptun("server"), flags, &format!("{} client", kcpgate()), flags, "127.0.0.1");
    kcpgate_pair(flags);
}

fn kcpgate_pair(flags: &str) {
    case(&format!("{} server", kcpgate()), flags, &format!("{} client", kcpgate()), flags, "127.0.0.1");
}

/// What Debian's kcptun lacks, kcpgate at both ends: aes-128-gcm and QPP, with FEC
/// and compression.
#[test]
fn kcpgate_pair_aes_128_gcm() {
    kcpgate_pair("-key pair -crypt aes-128-gcm -ds 10 -ps 3 -mode fast3");
}

#[test]
fn kcpgate_pair_qpp() {
    kcpgate_pair("-key pair -crypt aes -QPP -ds 10 -ps 3 -mode fast3 -smuxver 1");
}

/// One test per configuration: the common flags, then each test's own.
macro_rules! matrix {
    ($common:literal; $($name:ident: $flags:literal;)*) => {$(
        #[test]
        fn $name() {
            every_pairing(concat!("-key matrix ", $common, " ", $flags));
        }
    )*};
}

// Every cipher of Debian's kcptun 20210922, with FEC 10/3 and compression on.
matrix! {
    "-mode fast3 -smuxver 1 -ds 10 -ps 3 -crypt";
    cipher_aes: "aes";
    cipher_aes_128: "aes-128";
    cipher_aes_192: "aes-192";
    cipher_salsa20: "salsa20";
    cipher_blowfish: "blowfish";
    cipher_twofish: "twofish";
    cipher_cast5: "cast5";
    cipher_3des: "3des";
    cipher_tea: "tea";
    cipher_xtea: "xtea";
    cipher_xor: "xor";
    cipher_sm4: "sm4";
    cipher_none: "none";
}

// With aes: FEC {10/3, 0/0} × compression {on, off} × smux {1, 2} × mode {fast, fast3}.
matrix! {
    "-crypt aes";
    aes_fec_comp_v1_fast: "-ds 10 -ps 3 -smuxver 1 -mode fast";
    aes_fec_comp_v1_fast3: "-ds 10 -ps 3 -smuxver 1 -mode fast3";
    aes_fec_comp_v2_fast: "-ds 10 -ps 3 -smuxver 2 -mode fast";
    aes_fec_comp_v2_fast3: "-ds 10 -ps 3 -smuxver 2 -mode fast3";
    aes_fec_nocomp_v1_fast: "-ds 10 -ps 3 -nocomp -smuxver 1 -mode fast";
    aes_fec_nocomp_v1_fast3: "-ds 10 -ps 3 -nocomp -smuxver 1 -mode fast3";
    aes_fec_nocomp_v2_fast: "-ds 10 -ps 3 -nocomp -smuxver 2 -mode fast";
    aes_fec_nocomp_v2_fast3: "-ds 10 -ps 3 -nocomp -smuxver 2 -mode fast3";
    aes_nofec_comp_v1_fast: "-ds 0 -ps 0 -smuxver 1 -mode fast";
    aes_nofec_comp_v1_fast3: "-ds 0 -ps 0 -smuxver 1 -mode fast3";
    aes_nofec_comp_v2_fast: "-ds 0 -ps 0 -smuxver 2 -mode fast";
    aes_nofec_comp_v2_fast3: "-ds 0 -ps 0 -smuxver 2 -mode fast3";
    aes_nofec_nocomp_v1_fast: "-ds 0 -ps 0 -nocomp -smuxver 1 -mode fast";
    aes_nofec_nocomp_v1_fast3: "-ds 0 -ps 0 -nocomp -smuxver 1 -mode fast3";
    aes_nofec_nocomp_v2_fast: "-ds 0 -ps 0 -nocomp -smuxver 2 -mode fast";
    aes_nofec_nocomp_v2_fast3: "-ds 0 -ps 0 -nocomp -smuxver 2 -mode fast3";
}

/// Four consecutive free UDP ports on 127.0.0.1.
fn free_udp_range() -> u16 {
    (0..200)
        .map(|i| 20_000 + ((std::process::id() as u16).wrapping_mul(7).wrapping_add(i * 97)) % 40_000)
        .find(|&base| (base..base + 4).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()))
        .expect("a free range of 4 UDP ports")
}

#[test]
fn conformance_82_port_ranges() {
    let backend = echo_backend();
    let base = free_udp_range();
    let local = free_tcp_port();
    let range = format!("127.0.0.1:{base}-{}", base + 3);
    let flags = "-key ranges -crypt aes -mode fast3";
    let _procs = Procs(vec![
        kcpgate_run("server", &format!("-l {range} -t 127.0.0.1:{backend} {flags}")),
        // Four sessions, each on a random port of the range: all must reach the server.
        kcpgate_run("client", &format!("-l 127.0.0.1:{local} -r {range} -conn 4 {flags}")),
    ]);
    push_through(local);
}

/// Asks a kcpgate process (started with `-log log`) for its counters (SIGUSR1) and
/// returns its stream-counter line.
fn stream_counters(pid: u32, log: &std::path::Path) -> String {
    assert!(Command::new("kill").args(["-USR1", &pid.to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().rev().find(|l| l.contains("streams opened")) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no stream counters in {}: {text}", log.display());
        thread::sleep(Duration::from_millis(50));
    }
}

fn temp_log(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("kcpgate-{name}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

#[test]
fn conformance_81_one_dial_per_stream_and_refused_or_resetting_targets_end_it_promptly() {
    // The target serves two streams (one echo each), resets the third (SO_LINGER 0)
    // and then stops listening, so the fourth stream's dial is refused.
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let target_port = target.local_addr().unwrap().port();
    let served = thread::spawn(move || {
        for i in 0..3 {
            let (mut c, _) = target.accept().unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).unwrap();
            if i < 2 {
                c.write_all(&buf).unwrap();
            } else {
                socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO)).unwrap();
            }
        }
        // Each connection above is dropped; the listener is dropped here.
    });
    let udp = free_udp_port("127.0.0.1");
    let local = free_tcp_port();
    let log = temp_log("reset");
    let flags = "-key reset -crypt aes -mode fast3"; // the server's -closewait stays 30
    let procs = Procs(vec![
        kcpgate_run("server", &format!("-l 127.0.0.1:{udp} -t 127.0.0.1:{target_port} {flags} -log {}", log.display())),
        kcpgate_run("client", &format!("-l 127.0.0.1:{local} -r 127.0.0.1:{udp} {flags}")),
    ]);
    // Returns what came back before the stream ended, checking it ended promptly.
    let exchange = |mut c: TcpStream| {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = Instant::now();
        let _ = c.write_all(b"hello");
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        assert!(started.elapsed() < Duration::from_secs(3), "promptly, despite -closewait 30: {:?}", started.elapsed());
        got
    };
    let connect = || TcpStream::connect(("127.0.0.1", local)).unwrap();
    assert_eq!(exchange(connect_when_listening(local)), b"hello");
    assert_eq!(exchange(connect()), b"hello");
    assert_eq!(exchange(connect()), b"", "reset");
    served.join().expect("exactly one target connection per stream");
    assert_eq!(exchange(connect()), b"", "refused");
    let line = stream_counters(procs.0[0].id(), &log);
    assert!(line.contains("streams opened 4, closed 4, target dial failures 1, TCP failures 1"), "{line}");
}

#[test]
fn closewait_closes_a_half_open_connection_after_the_wait() {
    // The backend answers, half-closes, and then only listens.
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let target_port = target.local_addr().unwrap().port();
    let backend = thread::spawn(move || {
        let (mut c, _) = target.accept().unwrap();
        c.write_all(b"welcome").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let accepted = Instant::now();
        let mut got = Vec::new();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let end = c.read_to_end(&mut got);
        (got, end.is_ok(), accepted.elapsed())
    });
    let udp = free_udp_port("127.0.0.1");
    let local = free_tcp_port();
    let flags = "-key closewait -crypt aes -mode fast3";
    let _procs = Procs(vec![
        kcpgate_run("server", &format!("-l 127.0.0.1:{udp} -t 127.0.0.1:{target_port} {flags} -closewait 2")),
        kcpgate_run("client", &format!("-l 127.0.0.1:{local} -r 127.0.0.1:{udp} {flags}")),
    ]);
    let mut c = connect_when_listening(local);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let started = Instant::now();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"welcome");
    assert!(started.elapsed() < Duration::from_secs(1), "the FIN travels at once: {:?}", started.elapsed());
    // Half-open: the other direction still carries data until -closewait runs out.
    thread::sleep(Duration::from_millis(500));
    c.write_all(b"still here").unwrap();
    let (got, clean, at) = backend.join().unwrap();
    assert_eq!(got, b"still here");
    assert!(clean, "the backend saw the connection end, not its read timeout");
    assert!(at >= Duration::from_millis(1800) && at < Duration::from_secs(4), "closed {at:?} after the backend's FIN");
}

#[test]
fn sigterm_drains_open_streams_then_exits_0() {
    let backend = echo_backend();
    let udp = free_udp_port("127.0.0.1");
    let local = free_tcp_port();
    let flags = "-key drain -crypt aes -mode fast3";
    let mut procs = Procs(vec![
        kcpgate_run("server", &format!("-l 127.0.0.1:{udp} -t 127.0.0.1:{backend} {flags}")),
        kcpgate_run("client", &format!("-l 127.0.0.1:{local} -r 127.0.0.1:{udp} {flags}")),
    ]);
    let server_pid = procs.0[0].id().to_string();
    let transfer = thread::spawn(move || push_through(local));
    thread::sleep(Duration::from_millis(300));
    assert!(Command::new("kill").args(["-TERM", &server_pid]).status().unwrap().success());
    transfer.join().expect("the open streams finished byte-exact after SIGTERM");
    let status = exit_status_within(&mut procs.0[0], Duration::from_secs(10), "the server did not exit after draining");
    assert!(status.success(), "exit status {status}");
}

/// Draining, the server closes a session that has no open stream at once (its
/// client notices sooner) and serves the one with a stream until that ends.
#[test]
fn sigterm_closes_idle_sessions_at_once_and_serves_busy_ones() {
    let backend = echo_backend();
    let udp = free_udp_port("127.0.0.1");
    let admin = free_tcp_port();
    let (busy_port, idle_port) = (free_tcp_port(), free_tcp_port());
    let flags = "-key idle -crypt aes -mode fast3";
    let mut procs = Procs(vec![
        kcpgate_run("server", &format!("-l 127.0.0.1:{udp} -t 127.0.0.1:{backend} {flags} -admin 127.0.0.1:{admin}")),
        kcpgate_run("client", &format!("-l 127.0.0.1:{busy_port} -r 127.0.0.1:{udp} {flags} -conn 1")),
        kcpgate_run("client", &format!("-l 127.0.0.1:{idle_port} -r 127.0.0.1:{udp} {flags} -conn 1")),
    ]);
    let round_trip = |c: &mut TcpStream, what: &[u8]| {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(what).unwrap();
        let mut got = vec![0; what.len()];
        c.read_exact(&mut got).unwrap_or_else(|e| panic!("echo of {:?}: {e}", String::from_utf8_lossy(what)));
        assert_eq!(got, what);
    };
    let mut busy = connect_when_listening(busy_port);
    round_trip(&mut busy, b"busy");
    let mut idle = connect_when_listening(idle_port);
    round_trip(&mut idle, b"idle");
    drop(idle);
    let sessions = || {
        let (status, body) = support::admin_get(admin, "/api/v1/sessions").expect("the admin API answers");
        assert_eq!(status, 200, "{body}");
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        list["sessions"].as_array().unwrap().len()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while sessions() < 2 {
        assert!(Instant::now() < deadline, "both sessions open");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(Command::new("kill").args(["-TERM", &procs.0[0].id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(2);
    while sessions() > 1 {
        assert!(Instant::now() < deadline, "the idle session is still open 2 s after SIGTERM");
        thread::sleep(Duration::from_millis(20));
    }
    round_trip(&mut busy, b"still served while draining");
    drop(busy);
    let status = exit_status_within(
        &mut procs.0[0],
        Duration::from_secs(10),
        "the server did not exit once its last stream ended",
    );
    assert!(status.success(), "exit status {status}");
}

/// A transfer through `port` that runs for a few seconds: `bytes` of its own
/// data in paced chunks, the echo read back whole. Returns whether every byte
/// came back, once the thread ends; `started` turns true once echo flows.
fn paced_transfer(
    port: u16,
    seed: u64,
    bytes: usize,
    started: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> thread::JoinHandle<bool> {
    thread::spawn(move || {
        let data = incompressible(seed, bytes);
        let mut conn = connect_when_listening(port);
        conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut writer = conn.try_clone().unwrap();
        let sent = data.clone();
        let pacer = thread::spawn(move || {
            for chunk in sent.chunks(32 * 1024) {
                writer.write_all(chunk).unwrap();
                thread::sleep(Duration::from_millis(40));
            }
        });
        let mut got = vec![0u8; bytes];
        conn.read_exact(&mut got[..1]).unwrap();
        started.store(true, std::sync::atomic::Ordering::Relaxed);
        let whole = conn.read_exact(&mut got[1..]).is_ok();
        pacer.join().unwrap();
        whole && got == data
    })
}

/// A connection through `port` that the tunnel refuses: it closes (EOF or a
/// reset) within `within` and echoes nothing. Panics otherwise, naming `what`.
fn refused_within(port: u16, within: Duration, what: &str) {
    let mut conn = connect_when_listening(port);
    conn.set_read_timeout(Some(within)).unwrap();
    let _ = conn.write_all(b"hello while draining");
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("{what}: served while draining ({:?})", String::from_utf8_lossy(&buf[..n])),
        Err(e) => panic!("{what}: not refused within {within:?} ({e})"),
    }
}

/// Draining takes no new work anywhere: after SIGTERM a server refuses new
/// sessions and new streams on its open sessions (the client's connection closes
/// at once), a client refuses new connections, and the streams already open
/// finish byte for byte on both.
#[test]
fn draining_refuses_new_sessions_streams_and_connections_and_finishes_open_streams() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let backend = echo_backend();
    let udp = free_udp_port("127.0.0.1");
    let (a_port, b_port, c_port) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let flags = "-key drain -crypt aes -mode fast3";
    let server = format!("-l 127.0.0.1:{udp} -t 127.0.0.1:{backend} {flags} -admin off");
    let client = |port: u16| format!("-l 127.0.0.1:{port} -r 127.0.0.1:{udp} {flags} -conn 1");
    let mut procs = Procs(vec![
        kcpgate_run("server", &server),
        kcpgate_run("client", &client(a_port)),
        kcpgate_run("client", &client(c_port)),
    ]);
    let (a_started, c_started) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let on_a = paced_transfer(a_port, 11, 3_000_000, a_started.clone());
    let on_c = paced_transfer(c_port, 12, 3_000_000, c_started.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(a_started.load(Ordering::Relaxed) && c_started.load(Ordering::Relaxed)) {
        assert!(Instant::now() < deadline, "both transfers flowing within 10 s");
        thread::sleep(Duration::from_millis(10));
    }
    for child in [&procs.0[0], &procs.0[2]] {
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    }
    thread::sleep(Duration::from_millis(200));
    // A new stream on client A's open session: the server resets it.
    refused_within(a_port, Duration::from_secs(3), "a new stream on an open session");
    // A new client's session: the server answers its opening with a reset.
    procs.0.push(kcpgate_run("client", &client(b_port)));
    refused_within(b_port, Duration::from_secs(3), "a new session");
    // Client C drains: its port refuses connections outright.
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(("127.0.0.1", c_port)).is_ok() {
        assert!(Instant::now() < deadline, "the draining client still accepts connections 2 s after SIGTERM");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(on_a.join().unwrap(), "the open stream through client A came back whole");
    assert!(on_c.join().unwrap(), "the open stream through the draining client C came back whole");
    for (i, what) in [(0, "the server"), (2, "client C")] {
        let status = exit_status_within(&mut procs.0[i], Duration::from_secs(10), what);
        assert!(status.success(), "{what}: exit status {status}");
    }
}

#[test]
fn a_thousand_streams_over_one_session_lose_no_byte() {
    const STREAMS: usize = 1000;
    const EACH: usize = 32 * 1024;
    let backend = echo_backend();
    let udp = free_udp_port("127.0.0.1");
    let local = free_tcp_port();
    let flags = "-key thousand -crypt aes -mode fast3 -conn 1";
    let _procs = Procs(vec![
        kcpgate_run("server", &format!("-l 127.0.0.1:{udp} -t 127.0.0.1:{backend} {}", flags.replace(" -conn 1", ""))),
        kcpgate_run("client", &format!("-l 127.0.0.1:{local} -r 127.0.0.1:{udp} {flags} -quiet")),
    ]);
    drop(connect_when_listening(local));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let bad = rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tasks: Vec<_> = (0..STREAMS)
            .map(|i| {
                tokio::spawn(async move {
                    let data: Vec<u8> = (0..EACH)
                        .map(|k| (k as u32).wrapping_mul(2_654_435_761).wrapping_add(i as u32 * 7919) as u8 ^ (i as u8))
                        .collect();
                    let c = tokio::net::TcpStream::connect(("127.0.0.1", local)).await.unwrap();
                    let (mut r, mut w) = c.into_split();
                    let sent = data.clone();
                    let writer = tokio::spawn(async move { w.write_all(&sent).await.map(|()| w) });
                    let mut got = vec![0u8; EACH];
                    let read = tokio::time::timeout(Duration::from_secs(120), r.read_exact(&mut got)).await;
                    let _w = writer.await.unwrap().unwrap();
                    match read {
                        Ok(Ok(_)) if got == data => None,
                        Ok(Ok(_)) => Some(format!(
                            "stream {i}: different bytes at {:?}",
                            got.iter().zip(&data).position(|(a, b)| a != b)
                        )),
                        Ok(Err(e)) => Some(format!("stream {i}: {e}")),
                        Err(_) => Some(format!("stream {i}: timed out")),
                    }
                })
            })
            .collect();
        let mut bad = Vec::new();
        for t in tasks {
            if let Some(e) = t.await.unwrap() {
                bad.push(e);
            }
        }
        bad
    });
    assert!(bad.is_empty(), "{} of {STREAMS} streams failed: {bad:?}", bad.len());
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 =
        status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A backend that reads 1 KB per second while the client pushes 100 MB: back-pressure
/// must reach the pushing application, and the gateway must hold only what its
/// windows and buffers allow.
#[test]
fn a_slow_backend_keeps_gateway_memory_bounded() {
    let slow = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = slow.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut c in slow.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(1..) = c.read(&mut buf) {
                    thread::sleep(Duration::from_secs(1));
                }
            });
        }
    });
    let udp = free_udp_port("127.0.0.1");
    let local = free_tcp_port();
    let flags = "-key slow -crypt aes -mode fast3";
    let procs = Procs(vec![
        kcpgate_run("server", &format!("-l 127.0.0.1:{udp} -t 127.0.0.1:{backend} {flags}")),
        kcpgate_run("client", &format!("-l 127.0.0.1:{local} -r 127.0.0.1:{udp} {flags}")),
    ]);
    let mut c = connect_when_listening(local);
    let (server, client) = (procs.0[0].id(), procs.0[1].id());
    let (server_base, client_base) = (rss_bytes(server), rss_bytes(client));
    c.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let chunk = vec![0x33u8; 64 * 1024];
    let mut pushed = 0u64;
    let started = Instant::now();
    let mut peak = (0, 0);
    while pushed < 100_000_000 && started.elapsed() < Duration::from_secs(12) {
        match c.write(&chunk) {
            Ok(n) => pushed += n as u64,
            Err(_) => thread::sleep(Duration::from_millis(50)), // blocked: back-pressure
        }
        peak = (peak.0.max(rss_bytes(server)), peak.1.max(rss_bytes(client)));
    }
    // KCP windows (1024 and 512 segments of ~1.3 KB), the 4 MiB smux budget, four
    // 16 KiB chunks per stream each way, socket buffers: well under 24 MB over the
    // process's own baseline at each end.
    let bound = 24 << 20;
    println!(
        "pushed {} MB in {:?}; RSS growth: server {} KiB, client {} KiB",
        pushed / 1_000_000,
        started.elapsed(),
        (peak.0 - server_base) / 1024,
        (peak.1 - client_base) / 1024
    );
    assert!(pushed < 100_000_000, "back-pressure reached the application ({pushed} bytes accepted)");
    assert!(peak.0 - server_base < bound, "server grew by {} bytes", peak.0 - server_base);
    assert!(peak.1 - client_base < bound, "client grew by {} bytes", peak.1 - client_base);
}

/// One small echo through `port`, with a short timeout; true if it came back intact.
fn try_echo(port: u16) -> bool {
    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    if c.write_all(&data).is_err() {
        return false;
    }
    let mut got = vec![0u8; data.len()];
    c.read_exact(&mut got).is_ok() && got == data
}

#[test]
fn a_killed_and_restarted_server_is_reached_again_within_the_keepalive_timeout() {
    let backend = echo_backend();
    let udp = free_udp_port("127.0.0.1");
    let local = free_tcp_port();
    let flags = "-key restart -crypt aes -mode fast3";
    let server_args = args(&format!("-l 127.0.0.1:{udp} -t 127.0.0.1:{backend} {flags}"));
    let server = format!("{} server", kcpgate());
    let mut procs = Procs(vec![
        spawn(&server, &server_args),
        kcpgate_run("client", &format!("-l 127.0.0.1:{local} -r 127.0.0.1:{udp} {flags}")),
    ]);
    push_through(local);
    // Kill the server mid-transfer.
    let busy = thread::spawn(move || {
        let _ = try_echo(local);
    });
    thread::sleep(Duration::from_millis(100));
    procs.0[0].kill().unwrap();
    procs.0[0].wait().unwrap();
    let _ = busy.join();
    let killed = Instant::now();
    procs.0[0] = spawn(&server, &server_args);
    // The client's smux session notices the silence after the 30 s keep-alive
    // timeout, checked every 10 s interval; the next connection opens a fresh session.
    let limit = Duration::from_secs(30 + 10 + 5);
    while !try_echo(local) {
        assert!(killed.elapsed() < limit, "no new connection got through {limit:?} after the restart");
        thread::sleep(Duration::from_millis(500));
    }
    println!("served again {:?} after the kill", killed.elapsed());
}

/// One echo on an open connection; true if it came back intact.
fn echo_on(c: &mut TcpStream, tag: u8) -> bool {
    let data = [tag; 1000];
    if c.write_all(&data).is_err() {
        return false;
    }
    let mut got = [0u8; 1000];
    c.read_exact(&mut got).is_ok() && got == data
}

#[test]
fn conformance_80_autoexpire_and_scavenger() {
    let backend = echo_backend();
    let udp = free_udp_port("127.0.0.1");
    let local = free_tcp_port();
    let flags = "-key expire -crypt aes -mode fast3";
    let _procs = Procs(vec![
        kcpgate_run("server", &format!("-l 127.0.0.1:{udp} -t 127.0.0.1:{backend} {flags}")),
        kcpgate_run(
            "client",
            &format!("-l 127.0.0.1:{local} -r 127.0.0.1:{udp} {flags} -conn 1 -autoexpire 2 -scavengettl 2"),
        ),
    ]);
    let mut first = connect_when_listening(local);
    let started = Instant::now();
    first.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(echo_on(&mut first, 1), "the first session works");
    thread::sleep(Duration::from_millis(2500));
    // The first session expired for new connections: this one gets a fresh session.
    let mut second = TcpStream::connect(("127.0.0.1", local)).unwrap();
    second.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(echo_on(&mut second, 2), "the new session works");
    assert!(echo_on(&mut first, 3), "the expired session still serves its open stream");
    // At autoexpire + scavengettl (4 s) the first session is closed, its stream too.
    let mut buf = [0u8; 16];
    let end = first.read(&mut buf);
    let at = started.elapsed();
    assert!(matches!(end, Ok(0) | Err(_)), "the first stream ended ({end:?})");
    assert!(at >= Duration::from_millis(3500) && at < Duration::from_secs(7), "closed at {at:?}");
    assert!(echo_on(&mut second, 4), "the second session lives on");
}

/// Waits until `log` has a line containing `needle` (up to 10 s) and returns the log.
fn wait_for_log(log: &std::path::Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in {}: {text}", log.display());
        thread::sleep(Duration::from_millis(50));
    }
}

/// The value of `key=` in a log line.
fn log_field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line.find(&format!("{key}=")).unwrap_or_else(|| panic!("no {key} in {line}")) + key.len() + 1;
    line[start..].split_whitespace().next().unwrap()
}

#[test]
fn conformance_79_connections_round_robin_over_lazily_created_sessions() {
    let backend = echo_backend();
    let udp = free_udp_port("127.0.0.1");
    let local = free_tcp_port();
    let (server_log, client_log) = (temp_log("rr-server"), temp_log("rr-client"));
    let flags = "-key rr -crypt aes -mode fast3";
    let _procs = Procs(vec![
        kcpgate_run(
            "server",
            &format!("-l 127.0.0.1:{udp} -t 127.0.0.1:{backend} {flags} -log {}", server_log.display()),
        ),
        kcpgate_run(
            "client",
            &format!("-l 127.0.0.1:{local} -r 127.0.0.1:{udp} {flags} -conn 3 -log {}", client_log.display()),
        ),
    ]);
    wait_for_log(&client_log, "listening on TCP");
    thread::sleep(Duration::from_millis(300));
    let early = std::fs::read_to_string(&server_log).unwrap_or_default();
    assert!(!early.contains("session opened"), "no session before the first connection: {early}");
    let mut open = Vec::new();
    for i in 0..6u8 {
        let mut c = TcpStream::connect(("127.0.0.1", local)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(echo_on(&mut c, i), "connection {i}");
        open.push(c);
    }
    let text = wait_for_log(&server_log, "stream opened");
    let streams: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| l.contains("stream opened"))
        .map(|l| (log_field(l, "remote"), log_field(l, "sid")))
        .collect();
    assert_eq!(streams.len(), 6, "{text}");
    let (a, b, c) = (streams[0].0, streams[1].0, streams[2].0);
    assert!(a != b && b != c && a != c, "three sessions, one per slot: {streams:?}");
    let expected = [(a, "3"), (b, "3"), (c, "3"), (a, "5"), (b, "5"), (c, "5")];
    assert_eq!(streams, expected, "connections go round-robin over the slots");
}

/// A UDP relay between a client and `server`, recording when and what the client
/// sent. Returns the relay's port and the record.
#[allow(clippy::type_complexity)]
fn recording_relay(server: u16) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<(Instant, Vec<u8>)>>>) {
    relay(server, usize::MAX, usize::MAX, Duration::ZERO)
}

/// A relay like [`recording_relay`] that drops every `drop_up`-th datagram towards
/// the server and every `drop_down`-th towards the client, and holds each datagram
/// for `delay` (one at a time: for light traffic only).
#[allow(clippy::type_complexity)]
fn relay(
    server: u16,
    drop_up: usize,
    drop_down: usize,
    delay: Duration,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<(Instant, Vec<u8>)>>>) {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = front.local_addr().unwrap().port();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    back.connect(("127.0.0.1", server)).unwrap();
    let record = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = std::sync::Arc::new(std::sync::Mutex::new(None));
    {
        let (front, back, record, client) =
            (front.try_clone().unwrap(), back.try_clone().unwrap(), record.clone(), client.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut count = 0;
            while let Ok((n, from)) = front.recv_from(&mut buf) {
                *client.lock().unwrap() = Some(from);
                record.lock().unwrap().push((Instant::now(), buf[..n].to_vec()));
                count += 1;
                if count % drop_up != 0 {
                    thread::sleep(delay);
                    let _ = back.send(&buf[..n]);
                }
            }
        });
    }
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut count = 0;
        while let Ok(n) = back.recv(&mut buf) {
            count += 1;
            if let Some(to) = (*client.lock().unwrap()).filter(|_| count % drop_down != 0) {
                thread::sleep(delay);
                let _ = front.send_to(&buf[..n], to);
            }
        }
    });
    (port, record)
}

#[test]
fn conformance_53_closing_a_session_sends_no_special_datagram() {
    let backend = echo_backend();
    let udp = free_udp_port("127.0.0.1");
    let local = free_tcp_port();
    let (relay, record) = recording_relay(udp);
    // `none` leaves the KCP segments readable behind its 20-byte header.
    let flags = "-key close -crypt none -mode fast3 -nocomp -ds 0 -ps 0";
    let mut procs = Procs(vec![
        kcpgate_run("server", &format!("-l 127.0.0.1:{udp} -t 127.0.0.1:{backend} {flags}")),
        kcpgate_run("client", &format!("-l 127.0.0.1:{local} -r 127.0.0.1:{relay} {flags}")),
    ]);
    let mut c = connect_when_listening(local);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(echo_on(&mut c, 7));
    drop(c);
    // The stream's FINs are exchanged and acknowledged: wait until the client has
    // been quiet for half a second (a fixed pause is too short on a loaded machine).
    let started = Instant::now();
    while record.lock().unwrap().last().is_some_and(|(t, _)| t.elapsed() < Duration::from_millis(500)) {
        assert!(started.elapsed() < Duration::from_secs(10), "the client never went quiet");
        thread::sleep(Duration::from_millis(50));
    }
    let closing = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &procs.0[1].id().to_string()]).status().unwrap().success());
    let status = procs.0[1].wait().unwrap();
    assert!(status.success(), "the client drained and exited: {status}");
    thread::sleep(Duration::from_millis(300));
    let record = record.lock().unwrap();
    let after: Vec<_> = record.iter().filter(|(t, _)| *t >= closing).collect();
    assert!(after.is_empty(), "{} datagrams as the session closed", after.len());
    // Everything the client ever sent is plain KCP: ACK, PUSH or window probes.
    let conv = u32::from_le_bytes(record[0].1[20..24].try_into().unwrap());
    for (_, d) in record.iter() {
        let mut at = 20;
        while at < d.len() {
            let seg = &d[at..];
            assert!(seg.len() >= 24, "a whole segment header");
            assert_eq!(u32::from_le_bytes(seg[..4].try_into().unwrap()), conv);
            assert!((81..=84).contains(&seg[4]), "cmd {} is one of KCP's four", seg[4]);
            at += 24 + u32::from_le_bytes(seg[20..24].try_into().unwrap()) as usize;
        }
        assert_eq!(at, d.len(), "segments fill the datagram exactly");
    }
}

#[test]
fn conformance_55_ratelimit_paces_a_session() {
    let backend = echo_backend();
    let udp = free_udp_port("127.0.0.1");
    let local = free_tcp_port();
    let flags = "-key rate -crypt aes -mode fast3 -nocomp";
    let rate = 300_000.0;
    let _procs = Procs(vec![
        kcpgate_run("server", &format!("-l 127.0.0.1:{udp} -t 127.0.0.1:{backend} {flags}")),
        kcpgate_run("client", &format!("-l 127.0.0.1:{local} -r 127.0.0.1:{udp} {flags} -ratelimit {rate}")),
    ]);
    let mut c = connect_when_listening(local);
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let data = data_for(0)[..1_500_000].to_vec();
    let started = Instant::now();
    let mut w = c.try_clone().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || w.write_all(&sent));
    let mut got = vec![0u8; data.len()];
    c.read_exact(&mut got).unwrap();
    writer.join().unwrap().unwrap();
    let took = started.elapsed().as_secs_f64();
    assert!(got == data, "echoed bytes differ");
    // Upstream, FEC 10/3 and headers put ≥ 1.33 bytes on the wire per byte of data;
    // the burst lets the first 96000 bytes go at once.
    let floor = (data.len() as f64 * 1.33 - 96_000.0) / rate;
    assert!(took >= floor, "{took:.2} s for what the limit lets through in {floor:.2} s at best");
    assert!(took < floor * 2.0, "{took:.2} s: the limit is undercut (floor {floor:.2} s)");
    println!("1.5 MB up at -ratelimit {rate}: {took:.2} s (floor {floor:.2} s)");
}

/// This machine's address on its default route, if it has one (no packet is sent).
fn outward_ipv4() -> Option<String> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("10.255.255.255:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}

#[test]
fn a_server_on_wildcard_addresses_answers_every_peer_at_its_own_address() {
    let backend = echo_backend();
    let flags = "-key wildcard -crypt aes -mode fast3";
    let mut v4_peers = vec!["127.0.0.1".to_string()];
    v4_peers.extend(outward_ipv4());
    // (listen host, peers that dial it)
    let cases = [
        ("0.0.0.0", v4_peers.clone()),
        ("", [v4_peers.clone(), vec!["[::1]".to_string()]].concat()), // every interface, IPv6 and IPv4
        ("[::]", vec!["[::1]".to_string()]),
    ];
    for (host, peers) in cases {
        let udp = free_udp_port("127.0.0.1");
        let mut procs = Procs(vec![kcpgate_run("server", &format!("-l {host}:{udp} -t 127.0.0.1:{backend} {flags}"))]);
        for peer in &peers {
            let local = free_tcp_port();
            procs.0.push(kcpgate_run("client", &format!("-l 127.0.0.1:{local} -r {peer}:{udp} {flags}")));
            drop(connect_when_listening(local));
            assert!(try_echo(local), "server on {host:?}:{udp}, client from {peer}");
        }
    }
}

#[test]
fn a_lost_datagram_is_resent_by_its_timer_on_a_quiet_session() {
    // Ping-pong leaves the session idle between messages: when the server's answer
    // is lost after its ACK got through, only the server's retransmission timer can
    // repair it (the next keep-alive is 10 s away). Every third datagram towards
    // the client is lost; in each direction, so both sides' timers are tested.
    let backend = echo_backend();
    let udp = free_udp_port("127.0.0.1");
    let local = free_tcp_port();
    let (lossy, _) = relay(udp, 5, 3, Duration::from_millis(20));
    let flags = "-key quiet -crypt aes -mode fast3 -ds 0 -ps 0";
    let _procs = Procs(vec![
        kcpgate_run("server", &format!("-l 127.0.0.1:{udp} -t 127.0.0.1:{backend} {flags}")),
        kcpgate_run("client", &format!("-l 127.0.0.1:{local} -r 127.0.0.1:{lossy} {flags}")),
    ]);
    let mut c = connect_when_listening(local);
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut slowest = Duration::ZERO;
    for i in 0..60u8 {
        let started = Instant::now();
        assert!(echo_on(&mut c, i), "message {i}");
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < Duration::from_secs(2), "a round trip took {slowest:?}");
    println!("slowest of 60 round trips, every 5th datagram up and 3rd down lost: {slowest:?}");
}
