//! What the gateway's process tests share.
// Each test crate uses a part of this module.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};

/// Kills its processes when the test ends, however it ends.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn free_udp_port(host: &str) -> u16 {
    UdpSocket::bind((host, 0)).unwrap().local_addr().unwrap().port()
}

/// A free TCP port, never one this process was handed before (the OS may offer a
/// released port again at once, and two servers of one test would then collide).
pub fn free_tcp_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A TCP echo backend on a thread; returns its port.
pub fn echo_backend() -> u16 {
    let l = listen_deep();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let mut w = c;
                let mut buf = vec![0u8; 65536];
                while let Ok(n @ 1..) = r.read(&mut buf) {
                    if w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// A loopback listener with the system's largest backlog. std's 128 overflows when
/// a thousand streams dial at once on a loaded machine, and the kernel then resets
/// some of those connections: a fault of the test's backend, not of the gateway.
pub fn listen_deep() -> TcpListener {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    socket.listen(4096).unwrap();
    socket.into()
}

/// `child`'s exit status once it exits; fails the test with `what` if it runs on
/// past `within`.
pub fn exit_status_within(child: &mut Child, within: std::time::Duration, what: &str) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Starts `kcpgate` with `args` (split at whitespace), its output discarded.
pub fn kcpgate(args: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kcpgate"))
        .args(args.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kcpgate starts")
}

/// `len` bytes that do not compress (snappy would shrink anything regular), distinct
/// per seed.
pub fn incompressible(seed: u64, len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// (status, body) of `GET path` on a kcpgate HTTP listener (admin or public) at
/// `port`; `None` while it does not listen.
pub fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    admin_get_with(port, path, None)
}

/// [`admin_get`] with the admin token, if given.
pub fn admin_get_with(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let request = agent.get(format!("http://127.0.0.1:{port}{path}"));
    let request = match token {
        Some(t) => request.header("Authorization", format!("Bearer {t}")),
        None => request,
    };
    let mut response = request.call().ok()?;
    Some((response.status().as_u16(), response.body_mut().read_to_string().ok()?))
}

/// The value of the sample `name` (with its labels) in `/metrics` of the admin
/// listener at `admin`; 0 when absent.
pub fn metric(admin: u16, name: &str) -> u64 {
    let (_, text) = admin_get(admin, "/metrics").expect("metrics answer");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

/// Connects to a client's local TCP port once it listens (up to 10 s).
pub fn connect_when_listening(port: u16) -> std::net::TcpStream {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            return c;
        }
        assert!(std::time::Instant::now() < deadline, "the client never listened on {port}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A SHA-256 hash given as 64 hex digits (the WebTransport certificate's, as the
/// public listener publishes it).
pub fn hex_hash(text: &str) -> [u8; 32] {
    let bytes: Vec<u8> = (0..64).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect();
    bytes.try_into().unwrap()
}

/// Waits until the admin listener at `port` says ready (`/readyz`).
pub fn wait_ready(port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if admin_get(port, "/readyz").is_some_and(|(status, _)| status == 200) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the admin API never became ready");
}

/// Answers the gateway's proof of address as a kcp-go client does: takes the
/// gateway's first datagrams on `socket` into `c` until its probe (the first
/// segment) is in, and sends what `c`'s next flush puts out, whose ACK echoes the
/// probe's timestamp. False if nothing came within `wait` (a refused opening).
#[allow(dead_code)]
pub fn prove_address(
    c: &mut kcpgate_core::pipeline::Connection,
    socket: &UdpSocket,
    now: u32,
    wait: std::time::Duration,
) -> bool {
    socket.set_read_timeout(Some(wait)).expect("a timeout");
    let mut buf = [0u8; 2048];
    let mut gateway = None;
    while c.kcp().state().rcv_nxt == 0 {
        let Ok((n, from)) = socket.recv_from(&mut buf) else { return false };
        let _ = c.handle_datagram(now, &mut buf[..n]);
        gateway = Some(from);
    }
    c.flush(now);
    for d in c.transmits() {
        socket.send_to(d, gateway.expect("heard")).expect("sent");
    }
    c.clear_transmits();
    true
}

/// A kcptun client's KCP connection made by hand, to send genuine datagrams:
/// fast3, MTU 1350, aes with `key`, FEC 10/3 unless `fec` is false, conversation
/// `conv` (its nonces seeded from `conv`, so two conversations never share one).
#[allow(dead_code)]
pub fn kcptun_connection(key: &str, conv: u32, fec: bool) -> kcpgate_core::pipeline::Connection {
    use kcpgate_core::kcp::{self, Mode};
    use kcpgate_core::pipeline::{Connection, SessionConfig};
    let mut kcp = kcp::Config { mtu: 1350, snd_wnd: 128, rcv_wnd: 512, stream: true, ..kcp::Config::default() };
    Mode::Fast3.apply(&mut kcp);
    let fec = fec.then(|| kcpgate_core::fec::Shards::new(10, 3)).flatten();
    let cfg = SessionConfig { mtu: 1350, kcp, fec, write_delay: false, rate_limit: 0 };
    let crypto = aes_crypto(key);
    let seed = conv.to_le_bytes().repeat(8).try_into().expect("32 bytes");
    Connection::new(conv, &cfg, crypto, seed).expect("valid settings")
}

/// The aes crypto of `key`, derived once per key: the derivation (PBKDF2) is slow
/// enough that 20,000 connections would wait half a minute for it.
fn aes_crypto(key: &str) -> std::sync::Arc<kcpgate_core::PacketCrypto> {
    use std::sync::{Arc, Mutex};
    static MADE: Mutex<Vec<(String, Arc<kcpgate_core::PacketCrypto>)>> = Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, crypto)) = made.iter().find(|(k, _)| k == key) {
        return crypto.clone();
    }
    let crypto = Arc::new(kcpgate_core::PacketCrypto::from_passphrase(kcpgate_core::Method::Aes256, key));
    made.push((key.to_string(), crypto.clone()));
    crypto
}

/// The datagrams `c`'s flush at `now` sends after writing `data`.
#[allow(dead_code)]
pub fn flushed(c: &mut kcpgate_core::pipeline::Connection, now: u32, data: &[u8]) -> Vec<Vec<u8>> {
    c.write(now, data);
    c.flush(now);
    let out = c.transmits().map(<[u8]>::to_vec).collect();
    c.clear_transmits();
    out
}
