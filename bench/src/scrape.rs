//! `metrics-load`: what scraping `/metrics` far more often than Prometheus would
//! costs the gateway. A kcpgate server with live sessions is asked for `rate`
//! scrapes a second over 64 keep-alive connections from 64 loopback addresses
//! (each waits for its answer, as HTTP/1.1 does); the gateway paces scrapes, so
//! most wait their turn. The gateway's CPU time over the run is the claim's
//! figure, with its idle CPU beside the same sessions for scale.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{cpu_seconds, user_and_system_seconds};
use crate::local::{free_tcp_port, free_udp_port, spawn, wait_listening, Claims};

/// Keep-alive connections the requests are spread over, each from its own
/// address (127.0.0.2, 127.0.0.3, ...).
const CONNECTIONS: usize = 64;

/// Runs `seconds` of `rate` scrapes a second against a fresh server; the claim:
/// the gateway spends less than `budget` of a core on it, beside idle sessions.
pub fn run(kcpgate: &Path, rate: u64, seconds: u64, budget: f64) -> Result<Claims, String> {
    let (udp, admin, local) = (free_udp_port("127.0.0.1"), free_tcp_port(), free_tcp_port());
    let backend = free_tcp_port();
    let _echo =
        spawn(std::env::current_exe().map_err(|e| e.to_string())?, &format!("echo --listen 127.0.0.1:{backend}"))?;
    let server = spawn(
        kcpgate,
        &format!("server -l 127.0.0.1:{udp} -t 127.0.0.1:{backend} -key scrape -admin 127.0.0.1:{admin} -quiet"),
    )?;
    let _client =
        spawn(kcpgate, &format!("client -r 127.0.0.1:{udp} -l 127.0.0.1:{local} -key scrape -conn 4 -quiet"))?;
    wait_listening(admin, "the server's admin listener")?;
    wait_listening(local, "the client's local port")?;
    // Sessions that stay open (each with a stream): the data path has tasks and
    // sessions to be asked about.
    let _streams: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", local)).map_err(|e| e.to_string())?;
            s.write_all(b"hello").map_err(|e| e.to_string())?;
            let mut back = [0u8; 5];
            s.read_exact(&mut back).map_err(|e| e.to_string())?;
            Ok(s)
        })
        .collect::<Result<_, String>>()?;
    let pid = server.0.id();
    std::thread::sleep(Duration::from_secs(1));

    let idle_start = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(seconds));
    let idle = (cpu_seconds(pid) - idle_start) / seconds as f64;

    let cpu_start = cpu_seconds(pid);
    let started = Instant::now();
    let per_connection = rate as f64 / CONNECTIONS as f64;
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|i| std::thread::spawn(move || scrape(admin, 2 + i as u8, per_connection, Duration::from_secs(seconds))))
        .collect();
    let mut total = Scraped::default();
    for worker in workers {
        let scraped = worker.join().map_err(|_| "a scraping thread panicked".to_string())??;
        total.sent += scraped.sent;
        total.answered += scraped.answered;
        total.refused += scraped.refused;
    }
    let took = started.elapsed().as_secs_f64();
    let busy = (cpu_seconds(pid) - cpu_start) / took;

    // The other way to ask 5,000 times a second: a new connection for each
    // request, closed without waiting for the answer.
    std::thread::sleep(Duration::from_secs(2));
    let (user_start, system_start) = user_and_system_seconds(pid);
    let started = Instant::now();
    let flooders: Vec<_> = (0..4u8)
        .map(|i| std::thread::spawn(move || hit_and_run(admin, i, rate as f64 / 4.0, Duration::from_secs(seconds))))
        .collect();
    let mut opened = 0u64;
    for flooder in flooders {
        opened += flooder.join().map_err(|_| "a flooding thread panicked".to_string())??;
    }
    let flood_took = started.elapsed().as_secs_f64();
    let (user_end, system_end) = user_and_system_seconds(pid);
    let (flood_user, flood_system) = ((user_end - user_start) / flood_took, (system_end - system_start) / flood_took);

    let mut claims = Claims::new(format!(
        "/metrics asked {rate} times a second for {seconds} s from {CONNECTIONS} addresses, each request waiting for \
         its answer; then {rate} new connections a second, each sending one request and closing\n\n"
    ));
    claims.add(&format!(
        "keep-alive: {} requests sent ({:.0} a second: each connection waits for its answer), {} answered 200 ({:.1} a \
         second), {} answered 429 after the longest wait; the gateway idle beside 8 sessions: {:.1} % of a core\n",
        total.sent,
        total.sent as f64 / took,
        total.answered,
        total.answered as f64 / took,
        total.refused,
        idle * 100.0
    ));
    claims.claim(total.answered > 0, "scrapes were answered");
    claims.claim(
        busy < budget,
        format!("the gateway used {:.1} % of a core while scraped (at most {:.0} %)", busy * 100.0, budget * 100.0),
    );
    // Not a claim: most of it is the kernel's TCP (accepting and closing), which
    // any server on this port would pay; see the README.
    claims.add(&format!(
        "connection flood: {opened} connections opened ({:.0} a second), each with one request for /metrics, closed \
         at once; the gateway used {:.1} % of a core, {:.1} % in the kernel and {:.1} % in its own code\n",
        opened as f64 / flood_took,
        (flood_user + flood_system) * 100.0,
        flood_system * 100.0,
        flood_user * 100.0
    ));
    Ok(claims)
}

/// New connections from 127.0.1.`lane`.x, `per_second` of them for `length`,
/// each sending one `GET /metrics` and closing: how many were opened.
fn hit_and_run(admin: u16, lane: u8, per_second: f64, length: Duration) -> Result<u64, String> {
    let request = format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{admin}\r\n\r\n");
    let started = Instant::now();
    let mut opened = 0u64;
    while started.elapsed() < length {
        let due = started + Duration::from_secs_f64(opened as f64 / per_second);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Spread over 250 addresses a lane, so that no source's port range runs out.
        let host = 1 + (opened % 250) as u8;
        let mut stream = connect_from([127, 0, lane + 1, host], admin)?;
        let _ = stream.write_all(request.as_bytes());
        drop(stream);
        opened += 1;
    }
    Ok(opened)
}

#[derive(Default)]
struct Scraped {
    sent: u64,
    answered: u64,
    refused: u64,
}

/// A TCP connection to the admin port from the loopback address `from`.
fn connect_from(from: [u8; 4], admin: u16) -> Result<TcpStream, String> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let [a, b, c, d] = from;
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::empty(), None).map_err(|e| e.to_string())?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(a, b, c, d, 0)).map_err(|e| e.to_string())?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(127, 0, 0, 1, admin))
        .map_err(|e| format!("connecting from {a}.{b}.{c}.{d}: {e}"))?;
    Ok(TcpStream::from(fd))
}

/// One keep-alive connection from 127.0.0.`host` asking `GET /metrics` up to
/// `per_second` times a second for `length`, each request after the last answer.
fn scrape(admin: u16, host: u8, per_second: f64, length: Duration) -> Result<Scraped, String> {
    let mut stream = connect_from([127, 0, 0, host], admin)?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(15))).map_err(|e| e.to_string())?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{admin}\r\n\r\n");
    let started = Instant::now();
    let mut scraped = Scraped::default();
    let mut buffer = Vec::with_capacity(64 * 1024);
    while started.elapsed() < length {
        let due = started + Duration::from_secs_f64(scraped.sent as f64 / per_second);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        scraped.sent += 1;
        match read_answer(&mut stream, &mut buffer)? {
            200 => scraped.answered += 1,
            429 => scraped.refused += 1,
            other => return Err(format!("/metrics answered {other}")),
        }
    }
    Ok(scraped)
}

/// Reads one HTTP answer with a Content-Length; its status.
fn read_answer(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<u16, String> {
    buffer.clear();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).map_err(|e| format!("reading an answer: {e}"))?;
        if n == 0 {
            return Err("the gateway closed a scraping connection".into());
        }
        buffer.extend_from_slice(&chunk[..n]);
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
        let status = head.get(9..12).and_then(|s| s.parse().ok()).ok_or("not an HTTP answer")?;
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or("an answer without Content-Length")?;
        while buffer.len() < end + 4 + length {
            let n = stream.read(&mut chunk).map_err(|e| format!("reading an answer: {e}"))?;
            if n == 0 {
                return Err("the gateway closed a scraping connection".into());
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
        return Ok(status);
    }
}
