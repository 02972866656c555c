//! What the attack, fault, isolation and soak checks share: child processes that
//! stop when dropped, free loopback ports, and the admin API read as JSON.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program` with `args` (split at whitespace), its output discarded.
pub fn spawn(program: impl AsRef<std::ffi::OsStr>, args: &str) -> Result<Proc, String> {
    let program = program.as_ref();
    Command::new(program)
        .args(args.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Proc)
        .map_err(|e| {
            format!("cannot start {}: {e} (Debian's kcptun: apt-get install -y kcptun)", program.to_string_lossy())
        })
}

/// A TCP port free on 127.0.0.1 a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("a free TCP port")
}

/// A UDP port free on `host` (an IP address without brackets) a moment ago.
pub fn free_udp_port(host: &str) -> u16 {
    UdpSocket::bind((host, 0)).and_then(|s| s.local_addr()).map(|a| a.port()).expect("a free UDP port")
}

/// Waits until something listens on TCP `port` of this host.
pub fn wait_listening(port: u16, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !crate::harness::listening(port) {
        if Instant::now() > deadline {
            return Err(format!("{what} never listened on port {port}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `GET path` on the admin listener at 127.0.0.1:`port`, as JSON.
pub fn admin_json(port: u16, path: &str) -> Result<serde_json::Value, String> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("admin API: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    c.read_to_string(&mut text).map_err(|e| format!("admin API: {e}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).ok_or("admin API: no body")?;
    serde_json::from_str(body).map_err(|e| format!("admin API: {e}: {body}"))
}

/// A check's report: a line per claim, `ok` or `FAIL`, also printed to stderr as
/// it is judged, and whether every claim held.
pub struct Claims {
    report: String,
    passed: bool,
}

impl Claims {
    /// A report that starts with `heading` (markdown; may be empty).
    pub fn new(heading: impl Into<String>) -> Claims {
        Claims { report: heading.into(), passed: true }
    }

    pub fn claim(&mut self, ok: bool, line: impl std::fmt::Display) {
        eprintln!("{} {line}", if ok { "  ok  " } else { "  FAIL" });
        self.report.push_str(&format!("- {} {line}\n", if ok { "ok" } else { "**FAIL**" }));
        self.passed &= ok;
    }

    /// Text between the claims (tables, headings).
    pub fn add(&mut self, text: &str) {
        self.report.push_str(text);
    }

    pub fn report(&self) -> &str {
        &self.report
    }

    pub fn passed(&self) -> bool {
        self.passed
    }
}

/// The self-signed WebTransport certificate's hash, as the public listener at
/// 127.0.0.1:`public` publishes it (waits up to 10 s for it).
pub async fn certificate_hash(public: u16) -> Result<[u8; 32], String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let published = admin_json(public, "/webtransport/certificate").ok();
        let hash = published.as_ref().and_then(|v| v["hashes"][0]["value"].as_str()).and_then(|hex| {
            (0..64)
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?
                .try_into()
                .ok()
        });
        if let Some(hash) = hash {
            return Ok(hash);
        }
        if Instant::now() > deadline {
            return Err("the server published no WebTransport certificate hash".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
