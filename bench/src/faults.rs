//! Faults a gateway meets in production, each checked against good sessions
//! running beside it:
//!
//! - backends that accept and never read, that reset every connection, and that
//!   read slowly, reached by kcpgate clients (smux v2) and Debian kcptun clients
//!   (smux v1): the server's memory stays within the README's bound and the good
//!   sessions keep their throughput, every byte checked;
//! - the server SIGKILLed mid-transfer and started again: how long until each
//!   client's new streams flow, against a kcptun client of kcptun's own server
//!   killed and restarted with it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::local::{free_tcp_port, free_udp_port, spawn, wait_listening, Claims};
use crate::traffic::Pattern;

const KEY: &str = "faults";
/// kcptun's smux keep-alive timeout (fixed in its client), seconds.
const KCPTUN_KEEPALIVE_TIMEOUT: u64 = 30;
/// `-autoexpire` for the kcptun client that shows kcptun's own quick way back.
const KCPTUN_AUTOEXPIRE: u64 = 10;

/// What the backend does with a connection, chosen by the stream's first byte.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    /// Reads and checks everything.
    Good = 0,
    /// Accepts and never reads.
    NeverReads = 1,
    /// Resets the connection at once.
    Resets = 2,
    /// Reads 1 KiB every 100 ms.
    Slow = 3,
}

/// The backend; good connections' intact bytes are added to `arrived`, and each
/// good connection's (seed, bytes, intact) to `finished` when it ends.
struct Backends {
    addr: SocketAddr,
    arrived: Arc<AtomicU64>,
    finished: Arc<Mutex<Vec<(u64, u64, bool)>>>,
    stop: Arc<AtomicBool>,
}

impl Backends {
    fn start() -> std::io::Result<Backends> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (arrived, finished, stop) = (Arc::new(AtomicU64::new(0)), Arc::default(), Arc::new(AtomicBool::new(false)));
        let (a, f, s) = (arrived.clone(), Arc::clone(&finished), stop.clone());
        thread::spawn(move || {
            for c in listener.incoming().flatten() {
                let (a, f, s) = (a.clone(), Arc::clone(&f), s.clone());
                thread::spawn(move || serve(c, &a, &f, &s));
            }
        });
        Ok(Backends { addr, arrived, finished, stop })
    }
}

fn serve(mut c: TcpStream, arrived: &AtomicU64, finished: &Mutex<Vec<(u64, u64, bool)>>, stop: &AtomicBool) {
    let mut head = [0u8; 9];
    if c.read_exact(&mut head).is_err() {
        return;
    }
    let seed = u64::from_le_bytes(head[1..].try_into().expect("8 bytes"));
    match head[0] {
        0 | 3 => {
            let slow = head[0] == 3;
            let mut pattern = Pattern::new(seed);
            let (mut want, mut buf) = (vec![0u8; 64 * 1024], vec![0u8; if slow { 1024 } else { 64 * 1024 }]);
            pattern.fill(&mut want);
            let (mut at, mut bytes, mut intact) = (0usize, 0u64, true);
            loop {
                let n = match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut got = &buf[..n];
                while !got.is_empty() && intact {
                    let m = got.len().min(want.len() - at);
                    intact &= got[..m] == want[at..at + m];
                    (got, at, bytes) = (&got[m..], at + m, bytes + m as u64);
                    if at == want.len() {
                        pattern.fill(&mut want);
                        at = 0;
                    }
                }
                if !slow {
                    arrived.fetch_add(n as u64, Ordering::Relaxed);
                } else {
                    thread::sleep(Duration::from_millis(100));
                }
                if !intact || (slow && stop.load(Ordering::Relaxed)) {
                    break;
                }
            }
            if !slow {
                finished.lock().expect("results").push((seed, bytes, intact));
            }
        }
        1 => {
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(100));
            }
        }
        _ => {
            // Dropped with unread data buffered: the kernel answers with a reset.
        }
    }
}

/// A stream that sends its header, then its pattern until `stop`; returns the
/// pattern bytes written, how it ended, and how long its last write waited.
fn push(to: SocketAddr, mode: Backend, seed: u64, rate: u64, stop: &AtomicBool) -> (u64, Result<(), String>) {
    let started = Instant::now();
    let mut sent = 0u64;
    let run = |sent: &mut u64| -> std::io::Result<()> {
        let mut c = TcpStream::connect(to)?;
        c.set_write_timeout(Some(Duration::from_millis(200)))?;
        let mut head = vec![mode as u8];
        head.extend_from_slice(&seed.to_le_bytes());
        c.write_all(&head)?;
        let mut pattern = Pattern::new(seed);
        let mut buf = vec![0u8; 16 * 1024];
        // The write timeout lets a stalled stream notice `stop` (a write that
        // times out after a partial write reports what it wrote).
        while !stop.load(Ordering::Relaxed) {
            pattern.fill(&mut buf);
            let mut rest = &buf[..];
            while !rest.is_empty() {
                match c.write(rest) {
                    Ok(n) => {
                        rest = &rest[n..];
                        *sent += n as u64;
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        if stop.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            if rate > 0 {
                let due = Duration::from_secs_f64(*sent as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    thread::sleep(wait);
                }
            }
        }
        c.shutdown(std::net::Shutdown::Write)?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut rest = [0u8; 64];
        while c.read(&mut rest)? > 0 {}
        Ok(())
    };
    let result = run(&mut sent).map_err(|e| e.to_string());
    (sent, result)
}

/// What a stalled stream may cost the server in RSS, bytes (stated in the
/// README). The data it holds is at most its smux v2 window (`-streambuf`, 2 MiB)
/// and its session's KCP window (`-rcvwnd` 1024 × `-mtu` 1350); with smux v1,
/// which has no stream window, its session holds at most `-smuxbuf` (4 MiB) and
/// the KCP window for all its streams. The allocator's pages come on top:
/// measured 3.3 MB per v2 stream and 9.7 MB per v1 session.
const STALLED_V2_STREAM: u64 = 4_000_000;
const STALLED_V1_SESSION: u64 = 12_000_000;
/// Allocator slack on top of the stalled streams' bound, bytes.
const SLACK: u64 = 8 * 1024 * 1024;

/// Samples a process's RSS every 100 ms; the peak since the last `take`.
struct PeakRss {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl PeakRss {
    fn watch(pid: u32) -> PeakRss {
        let (peak, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (p, s) = (peak.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(crate::harness::rss_bytes(pid), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(100));
            }
        });
        PeakRss { peak, stop }
    }

    fn take(&self) -> u64 {
        self.peak.swap(0, Ordering::Relaxed)
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub fn run(kcpgate: &Path, seconds: u64) -> Result<Claims, String> {
    let mut claims = Claims::new("");
    let gate = kcpgate.display().to_string();

    // Part 1: bad backends beside good sessions.
    let backends = Backends::start().map_err(|e| e.to_string())?;
    let (udp, admin) = (free_udp_port("127.0.0.1"), free_tcp_port());
    let server = spawn(
        &gate,
        &format!("server -l 127.0.0.1:{udp} -t {} -key {KEY} -admin 127.0.0.1:{admin} -quiet", backends.addr),
    )?;
    let (good_port, bad_v2_port, bad_v1_port) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let good_sessions = 10;
    let bad_each = 5; // streams per bad kind and client
    let _good = spawn(
        &gate,
        &format!("client -l 127.0.0.1:{good_port} -r 127.0.0.1:{udp} -key {KEY} -conn {good_sessions} -quiet"),
    )?;
    let _bad_v2 = spawn(
        &gate,
        &format!("client -l 127.0.0.1:{bad_v2_port} -r 127.0.0.1:{udp} -key {KEY} -conn {} -quiet", 3 * bad_each),
    )?;
    let _bad_v1 = spawn(
        "kcptun-client",
        &format!("-l 127.0.0.1:{bad_v1_port} -r 127.0.0.1:{udp} -key {KEY} -conn {} -quiet", 3 * bad_each),
    )?;
    for p in [good_port, bad_v2_port, bad_v1_port] {
        wait_listening(p, "a client")?;
    }
    thread::sleep(Duration::from_millis(500));
    let rss_before = crate::harness::rss_bytes(server.0.id());
    let stop_good = Arc::new(AtomicBool::new(false));
    let good_rate = 2_000_000;
    let good: Vec<_> = (0..good_sessions as u64)
        .map(|i| {
            let stop = stop_good.clone();
            let to: SocketAddr = ([127, 0, 0, 1], good_port).into();
            thread::spawn(move || (0x600D_0000 + i, push(to, Backend::Good, 0x600D_0000 + i, good_rate, &stop)))
        })
        .collect();
    eprintln!("faults: {good_sessions} good streams at {:.0} MB/s each; {seconds} s alone", good_rate as f64 / 1e6);
    thread::sleep(Duration::from_secs(2));
    let rate_over = |secs: u64| {
        let from = backends.arrived.load(Ordering::Relaxed);
        let t = Instant::now();
        thread::sleep(Duration::from_secs(secs));
        (backends.arrived.load(Ordering::Relaxed) - from) as f64 / t.elapsed().as_secs_f64()
    };
    let rss = PeakRss::watch(server.0.id());
    let alone = rate_over(seconds);
    let peak_alone = rss.take();
    // The bad streams: each kind over each client; reset ones reconnect in a loop.
    let stop_bad = Arc::new(AtomicBool::new(false));
    let resets = Arc::new(AtomicU64::new(0));
    let reset_times = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let mut bad = Vec::new();
    for port in [bad_v2_port, bad_v1_port] {
        let to: SocketAddr = ([127, 0, 0, 1], port).into();
        for k in 0..bad_each as u64 {
            for mode in [Backend::NeverReads, Backend::Slow] {
                let stop = stop_bad.clone();
                bad.push(thread::spawn(move || {
                    let _ = push(to, mode, 0xBAD0_0000 + k, 0, &stop);
                }));
            }
            let (stop, resets, times) = (stop_bad.clone(), resets.clone(), reset_times.clone());
            bad.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let _ = push(to, Backend::Resets, 0xDEAD_0000 + k, 0, &stop);
                    if !stop.load(Ordering::Relaxed) {
                        resets.fetch_add(1, Ordering::Relaxed);
                        times.lock().expect("times").push(t.elapsed());
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            }));
        }
    }
    eprintln!("faults: + {} bad streams (never reading, resetting, slow) over kcpgate and kcptun clients", bad.len());
    thread::sleep(Duration::from_secs(3)); // the stalled streams fill their windows
    let beside = rate_over(seconds * 2);
    let peak = rss.take().max(peak_alone);
    drop(rss);
    stop_bad.store(true, Ordering::Relaxed);
    stop_good.store(true, Ordering::Relaxed);
    backends.stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for g in good {
        let (seed, (bytes, result)) = g.join().map_err(|_| "a stream thread panicked")?;
        sent.push((seed, bytes, result));
    }
    for b in bad {
        let _ = b.join();
    }
    let finished = backends.finished.lock().expect("results").clone();
    let intact =
        sent.iter().all(|(seed, n, r)| r.is_ok() && finished.iter().any(|&(s, b, ok)| s == *seed && b == *n && ok));
    claims.claim(
        beside >= alone * 0.8,
        format!(
            "good sessions beside the bad backends: {:.1} MB/s, alone {:.1} MB/s ({:.0} %)",
            beside / 1e6,
            alone / 1e6,
            beside / alone * 100.0
        ),
    );
    claims.claim(
        intact,
        format!(
            "every good byte arrived at its own backend connection: {} streams, {:.1} MB{}",
            sent.len(),
            sent.iter().map(|s| s.1).sum::<u64>() as f64 / 1e6,
            if intact { String::new() } else { format!(": {sent:?}") }
        ),
    );
    let times = reset_times.lock().expect("times");
    let slowest = times.iter().max().copied().unwrap_or_default();
    claims.claim(
        resets.load(Ordering::Relaxed) > 0 && slowest < Duration::from_secs(2),
        format!(
            "a resetting backend: {} connections reset, each client saw its stream end within {:.0} ms",
            resets.load(Ordering::Relaxed),
            slowest.as_secs_f64() * 1000.0
        ),
    );
    // 2 × bad_each stalled v2 streams (never reading, slow) and 2 × bad_each v1 sessions.
    let stalled = 2 * bad_each as u64 * (STALLED_V2_STREAM + STALLED_V1_SESSION);
    claims.claim(
        peak <= peak_alone + stalled + SLACK,
        format!(
            "server memory: {:.1} MB idle, {:.1} MB at the peak with the good sessions alone, {:.1} MB with {} stalled \
             streams beside them (never reading or slow; half smux v2, half v1), which may add {:.1} MB",
            rss_before as f64 / 1e6,
            peak_alone as f64 / 1e6,
            peak as f64 / 1e6,
            4 * bad_each,
            stalled as f64 / 1e6
        ),
    );
    drop(server);

    // Part 2: SIGKILL and restart mid-transfer.
    let sink = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let sink_addr = sink.local_addr().map_err(|e| e.to_string())?;
    thread::spawn(move || {
        for mut c in sink.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = c.read(&mut buf) {
                    // Answer the probes (short writes) so the client sees bytes flow.
                    if n < 64 && c.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (udp, baseline_udp) = (free_udp_port("127.0.0.1"), free_udp_port("127.0.0.1"));
    let start_server =
        || spawn(&gate, &format!("server -l 127.0.0.1:{udp} -t {sink_addr} -key {KEY} -admin off -quiet"));
    // The baseline: a kcptun client of kcptun's own server, killed and restarted
    // at the same moment.
    let start_baseline =
        || spawn("kcptun-server", &format!("-l 127.0.0.1:{baseline_udp} -t {sink_addr} -key {KEY} -quiet"));
    let (mut server, mut baseline) = (start_server()?, start_baseline()?);
    let (gate_port, tun_port, baseline_port, expiring_port) =
        (free_tcp_port(), free_tcp_port(), free_tcp_port(), free_tcp_port());
    let _c1 = spawn(&gate, &format!("client -l 127.0.0.1:{gate_port} -r 127.0.0.1:{udp} -key {KEY} -quiet"))?;
    let _c2 = spawn("kcptun-client", &format!("-l 127.0.0.1:{tun_port} -r 127.0.0.1:{udp} -key {KEY} -quiet"))?;
    let _c3 =
        spawn("kcptun-client", &format!("-l 127.0.0.1:{baseline_port} -r 127.0.0.1:{baseline_udp} -key {KEY} -quiet"))?;
    // kcptun's own way back sooner: a connection to a session older than
    // -autoexpire gets a new session.
    let _c4 = spawn(
        "kcptun-client",
        &format!("-l 127.0.0.1:{expiring_port} -r 127.0.0.1:{udp} -key {KEY} -autoexpire {KCPTUN_AUTOEXPIRE} -quiet"),
    )?;
    for port in [gate_port, tun_port, baseline_port, expiring_port] {
        wait_listening(port, "a client")?;
    }
    let clients = [gate_port, tun_port, baseline_port, expiring_port];
    let transfers: Vec<_> = clients
        .into_iter()
        .map(|port| {
            thread::spawn(move || -> std::io::Result<u64> {
                let mut c = TcpStream::connect(("127.0.0.1", port))?;
                let buf = vec![7u8; 64 * 1024];
                let mut sent = 0;
                c.set_write_timeout(Some(Duration::from_secs(5)))?;
                while sent < 10_000_000_000u64 {
                    c.write_all(&buf)?;
                    sent += buf.len() as u64;
                }
                Ok(sent)
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(2));
    drop((server, baseline));
    thread::sleep(Duration::from_millis(200));
    (server, baseline) = (start_server()?, start_baseline()?);
    let killed = Instant::now();
    let probe = |port: u16| -> bool {
        let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else { return false };
        let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
        let mut got = [0u8; 5];
        c.write_all(b"probe").is_ok() && c.read_exact(&mut got).is_ok() && &got == b"probe"
    };
    let mut back = [None; 4];
    while back.iter().any(Option::is_none) && killed.elapsed() < Duration::from_secs(90) {
        for (i, port) in clients.into_iter().enumerate() {
            if back[i].is_none() && probe(port) {
                back[i] = Some(killed.elapsed());
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    let interrupted = transfers.into_iter().filter_map(|t| t.join().ok()).filter(Result::is_err).count();
    drop((server, baseline));
    let secs = |d: Option<Duration>| d.map_or("never (90 s)".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
    claims.claim(
        back[0].is_some_and(|d| d < Duration::from_secs(5)),
        format!(
            "server SIGKILLed mid-transfer ({interrupted} of 4 transfers cut) and restarted: a kcpgate client's new \
             streams flow {} later",
            secs(back[0])
        ),
    );
    // kcptun's smux keep-alive closes a session when a 30 s check finds nothing
    // arrived since the one before: 30–60 s after the last frame. It ignores
    // resets, so a kcpgate server can do no better than kcptun's own.
    claims.claim(
        back[1].is_some_and(|d| d < Duration::from_secs(2 * KCPTUN_KEEPALIVE_TIMEOUT + 2)),
        format!(
            "a Debian kcptun client's new streams flow {} later; behind kcptun's own server, killed and restarted \
             with it, {} later",
            secs(back[1]),
            secs(back[2])
        ),
    );
    claims.claim(
        back[3].is_some_and(|d| d < Duration::from_secs(KCPTUN_KEEPALIVE_TIMEOUT)),
        format!(
            "a Debian kcptun client with -autoexpire {KCPTUN_AUTOEXPIRE}: new streams flow {} later (within its \
             {KCPTUN_KEEPALIVE_TIMEOUT} s keep-alive timeout)",
            secs(back[3])
        ),
    );
    Ok(claims)
}
