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
