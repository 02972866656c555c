//! Floods against a kcpgate server, on loopback only:
//!
//! - `garbage`: a separate process sends junk datagrams (random, truncated and
//!   bit-flipped copies of genuine ones, sealed with a wrong key, unsealed but
//!   well-formed session openings, oversized, and replays of a genuine session's
//!   datagrams) from many 127.x.y.z addresses at a set rate, while good sessions
//!   transfer; `run` measures their throughput before, during and after.
//! - `openings`: genuine, never-seen session openings with the right key from many
//!   addresses, far beyond the server's opening limits; `run` reports what opened,
//!   what was refused and the server's memory.

use std::collections::BTreeMap;
use std::io::{IoSlice, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kcpgate_core::crypto::{Method, PacketCrypto};
use kcpgate_core::fec::Shards;
use kcpgate_core::kcp::{self, Mode};
use kcpgate_core::pipeline::{Connection, SessionConfig};
use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::local::{admin_json, free_tcp_port, free_udp_port, spawn, Claims};
use crate::traffic::Pattern;

/// The key every flood run uses between its good client and the server.
const KEY: &str = "flood-test-key";
/// Memory one unproven session may take at most, bytes (stated in the README).
const SESSION_MEMORY_BOUND: u64 = 32 * 1024;
/// Datagrams per sendmmsg call in a flood (each call from one source).
const BATCH: usize = 16;
/// Sockets per source address in an opening flood (ulimit -n must allow them).
const OPENING_PORTS_PER_SOURCE: u32 = 12;
/// How far behind its schedule a flood thread kept off the CPU may catch up.
const MAX_LAG: Duration = Duration::from_millis(100);
/// No flood may run longer than this, whatever is asked.
const LONGEST_FLOOD: Duration = Duration::from_secs(120);

/// What the flood process sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FloodKind {
    /// Junk of every sort, none of which may open a session.
    Garbage,
    /// Genuine session openings, each new, to exceed the opening limits.
    Openings,
}

/// A client session as the server expects it (kcptun's defaults: fast, FEC 10/3).
fn session(conv: u32, crypto: Arc<PacketCrypto>, seed: u64) -> Connection {
    let mut kcp = kcp::Config { mtu: 1350, snd_wnd: 128, rcv_wnd: 512, stream: true, ..kcp::Config::default() };
    Mode::Fast.apply(&mut kcp);
    let cfg = SessionConfig { mtu: 1350, kcp, fec: Shards::new(10, 3), write_delay: false, rate_limit: 0 };
    let mut nonce_seed = [0u8; 32];
    SmallRng::seed_from_u64(seed).fill(&mut nonce_seed);
    Connection::new(conv, &cfg, crypto, nonce_seed).expect("valid settings")
}

/// The datagrams a session sends for its first `frames` smux v1 keep-alives,
/// snappy-framed as a server with compression on (kcptun's default) expects.
fn datagrams(c: &mut Connection, frames: usize) -> Vec<Vec<u8>> {
    const NOP: [u8; 8] = [1, 3, 0, 0, 0, 0, 0, 0];
    let mut snappy = kcpgate_core::snappy::FrameEncoder::new();
    let mut out = Vec::new();
    for i in 0..frames {
        let mut framed = Vec::new();
        snappy.encode(&NOP, &mut framed);
        c.write(i as u32 * 10, &framed);
        c.flush(i as u32 * 10);
        out.extend(c.transmits().map(<[u8]>::to_vec));
        c.clear_transmits();
    }
    out
}

/// The junk pool: (class, datagram). `genuine` are a real session's datagrams
/// (already sent once), the source of replays and of damaged copies.
fn garbage_pool(genuine: &[Vec<u8>], rng: &mut SmallRng) -> Vec<(&'static str, Vec<u8>)> {
    let mut pool = Vec::new();
    let wrong_key = Arc::new(PacketCrypto::from_passphrase(Method::Aes256, "not the key"));
    let unsealed = Arc::new(PacketCrypto::from_passphrase(Method::None, ""));
    for i in 0..512u32 {
        let pick = genuine[i as usize % genuine.len()].clone();
        pool.push(("replayed", pick.clone()));
        let cut = rng.random_range(0..pick.len());
        pool.push(("truncated", pick[..cut].to_vec()));
        let mut flipped = pick;
        for _ in 0..rng.random_range(1..4) {
            let bit = rng.random_range(0..flipped.len() * 8);
            flipped[bit / 8] ^= 1 << (bit % 8);
        }
        pool.push(("bit_flipped", flipped));
        let len = rng.random_range(0..1400);
        pool.push(("random", (0..len).map(|_| rng.random()).collect()));
        let len = rng.random_range(1500..9000);
        pool.push(("oversized", (0..len).map(|_| rng.random()).collect()));
        let conv = rng.random();
        pool.push(("wrong_key_opening", datagrams(&mut session(conv, wrong_key.clone(), conv.into()), 1).remove(0)));
        pool.push(("unsealed_opening", datagrams(&mut session(conv, unsealed.clone(), conv.into()), 1).remove(0)));
    }
    pool
}

/// `ports` sockets on each of `n` 127.1.x.y addresses (Linux answers for all of
/// 127/8 on loopback).
fn sources(n: u32, ports: u32) -> std::io::Result<Vec<UdpSocket>> {
    (0..n * ports)
        .map(|i| {
            let i = i % n;
            let ip = Ipv4Addr::new(127, 1 + (i / 64_516) as u8, (i / 254 % 254) as u8, (i % 254 + 1) as u8);
            UdpSocket::bind((ip, 0))
        })
        .collect()
}

/// The flood process: sends `kind` datagrams to `target` at `rate` per second for
/// `seconds` from `from` addresses, then prints one JSON line of what it sent.
pub fn flood(targets: &[SocketAddr], kind: FloodKind, rate: u64, seconds: u64, from: u32) -> Result<(), String> {
    if let Some(t) = targets.iter().find(|t| !t.ip().is_loopback()) {
        return Err(format!("{t} is not a loopback address: floods stay on this machine"));
    }
    let target = *targets.first().ok_or("no target")?;
    let targets: Arc<Vec<SocketAddr>> = Arc::new(targets.to_vec());
    let length = Duration::from_secs(seconds).min(LONGEST_FLOOD);
    let mut rng = SmallRng::seed_from_u64(7);
    let crypto = Arc::new(PacketCrypto::from_passphrase(Method::Aes256, KEY));
    let pool: Vec<(&'static str, Vec<u8>)> = match kind {
        FloodKind::Garbage => {
            // A genuine client whose traffic the attacker captured: it opens one
            // session, and its datagrams are replayed from everywhere.
            let mut victim = session(rng.random(), crypto.clone(), 1);
            let genuine = datagrams(&mut victim, 16);
            let own = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            for d in &genuine {
                own.send_to(d, target).map_err(|e| e.to_string())?;
            }
            garbage_pool(&genuine, &mut rng)
        }
        FloodKind::Openings => {
            // Each datagram a new session's first; more than the flood can send.
            let n = (rate * length.as_secs()).clamp(1, 400_000) as usize;
            (0..n)
                .map(|i| ("opening", datagrams(&mut session(rng.random(), crypto.clone(), i as u64), 1).remove(0)))
                .collect()
        }
    };
    // Openings each come from an address (IP and port) of their own while there
    // are addresses left, as a spoofing attacker's would: each can hold a session.
    let ports = if kind == FloodKind::Openings { OPENING_PORTS_PER_SOURCE } else { 1 };
    let sockets = Arc::new(sources(from, ports).map_err(|e| format!("cannot bind 127.x.y.z sources: {e}"))?);
    let pool = Arc::new(pool);
    let workers = 2u64;
    let started = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (sockets, pool, targets) = (sockets.clone(), pool.clone(), targets.clone());
            thread::spawn(move || {
                let mut sent: BTreeMap<&'static str, u64> = BTreeMap::new();
                let (mut errors, mut next) = (0u64, w as usize);
                let per_ms = rate as f64 / workers as f64 / 1000.0;
                // On schedule: a thread owes the rate times the time gone, less
                // what it settled (sent, or gave up catching up on).
                let mut settled = 0f64;
                // Up to BATCH datagrams leave one source in one sendmmsg call.
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
                while started.elapsed() < length {
                    let mut due = started.elapsed().as_secs_f64() * 1000.0 * per_ms - settled;
                    // A thread kept off the CPU catches up on at most MAX_LAG.
                    let most = MAX_LAG.as_secs_f64() * 1000.0 * per_ms;
                    if due > most {
                        settled += due - most;
                        due = most;
                    }
                    while due >= 1.0 {
                        let n = (due as usize).min(BATCH);
                        let socket = &sockets[(next / BATCH) % sockets.len()];
                        let mut batch: Vec<(&'static str, [IoSlice<'_>; 1], Option<SockaddrStorage>)> =
                            Vec::with_capacity(n);
                        for k in 0..n {
                            let (class, d) = &pool[(next + k * workers as usize) % pool.len()];
                            // Openings all go to the first target (the KCP port).
                            let to = if *class == "opening" { target } else { targets[(next + k) / 3 % targets.len()] };
                            batch.push((class, [IoSlice::new(d)], Some(SockaddrStorage::from(to))));
                        }
                        let slices: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|b| b.1).collect();
                        let addrs: Vec<Option<SockaddrStorage>> = batch.iter().map(|b| b.2).collect();
                        let cmsgs: [ControlMessage<'_>; 0] = [];
                        match sendmmsg(socket.as_raw_fd(), &mut headers, &slices, &addrs, cmsgs, MsgFlags::empty()) {
                            Ok(results) => {
                                let sent_now = results.count();
                                for b in &batch[..sent_now] {
                                    *sent.entry(b.0).or_default() += 1;
                                }
                                errors += (n - sent_now) as u64;
                            }
                            Err(_) => errors += n as u64,
                        }
                        next += n * workers as usize;
                        due -= n as f64;
                        settled += n as f64;
                    }
                    let tick = Duration::from_millis(started.elapsed().as_millis() as u64 + 1);
                    if let Some(wait) = tick.checked_sub(started.elapsed()) {
                        thread::sleep(wait);
                    }
                }
                (sent, errors)
            })
        })
        .collect();
    let mut sent: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut errors = 0;
    for h in handles {
        let (s, e) = h.join().map_err(|_| "a flood thread panicked".to_string())?;
        for (k, v) in s {
            *sent.entry(k).or_default() += v;
        }
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    let total: u64 = sent.values().sum();
    println!(
        "{}",
        json!({"sent": total, "seconds": secs, "per_second": total as f64 / secs, "send_errors": errors,
               "sources": from, "by_class": sent})
    );
    Ok(())
}

/// Runs the flood process to its end and returns its report.
fn run_flood(targets: &[SocketAddr], kind: FloodKind, rate: u64, seconds: u64, from: u32) -> Result<Value, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let kind = match kind {
        FloodKind::Garbage => "garbage",
        FloodKind::Openings => "openings",
    };
    let mut cmd = Command::new(me);
    cmd.arg("flood");
    for t in targets {
        cmd.args(["--target", &t.to_string()]);
    }
    let out = cmd
        .args(["--kind", kind])
        .args(["--rate", &rate.to_string(), "--seconds", &seconds.to_string(), "--from", &from.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("the flood process failed: {}", out.status));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("flood report: {e}"))
}

/// A sink that checks each connection's pattern (seeded by its first 8 bytes)
/// and counts every byte that arrived intact.
struct Sink {
    addr: SocketAddr,
    arrived: Arc<AtomicU64>,
    /// (seed, bytes, intact) of each finished connection.
    finished: Arc<Mutex<Vec<(u64, u64, bool)>>>,
}

impl Sink {
    fn start() -> std::io::Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let arrived = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(Mutex::new(Vec::new()));
        let (a, f) = (arrived.clone(), finished.clone());
        thread::spawn(move || {
            for c in listener.incoming().flatten() {
                let (a, f) = (a.clone(), f.clone());
                thread::spawn(move || {
                    let result = check(c, &a);
                    f.lock().expect("sink results").push(result);
                });
            }
        });
        Ok(Sink { addr, arrived, finished })
    }
}

fn check(mut c: TcpStream, arrived: &AtomicU64) -> (u64, u64, bool) {
    let mut seed = [0u8; 8];
    if c.read_exact(&mut seed).is_err() {
        return (0, 0, false);
    }
    let seed = u64::from_le_bytes(seed);
    let mut pattern = Pattern::new(seed);
    let (mut want, mut buf) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    pattern.fill(&mut want);
    let (mut at, mut bytes) = (0usize, 0u64);
    loop {
        let n = match c.read(&mut buf) {
            Ok(0) => return (seed, bytes, true),
            Ok(n) => n,
            Err(_) => return (seed, bytes, false),
        };
        let mut got = &buf[..n];
        while !got.is_empty() {
            let m = got.len().min(want.len() - at);
            if got[..m] != want[at..at + m] {
                return (seed, bytes, false);
            }
            (got, at, bytes) = (&got[m..], at + m, bytes + m as u64);
            if at == want.len() {
                pattern.fill(&mut want);
                at = 0;
            }
        }
        arrived.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// One stream that writes its seed and then its pattern until told to stop;
/// returns the pattern bytes it wrote.
fn source(to: SocketAddr, seed: u64, rate: u64, stop: Arc<AtomicBool>) -> std::io::Result<u64> {
    let started = Instant::now();
    let mut c = TcpStream::connect(to)?;
    c.write_all(&seed.to_le_bytes())?;
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        pattern.fill(&mut buf);
        // Small writes keep the stop prompt; the pattern continues across them.
        for chunk in buf.chunks(16 * 1024) {
            c.write_all(chunk)?;
            sent += chunk.len() as u64;
            if rate > 0 {
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    thread::sleep(wait);
                }
            }
        }
    }
    c.shutdown(std::net::Shutdown::Write)?;
    // Wait for the far end to close: every byte is then at the sink.
    let mut rest = [0u8; 64];
    while c.read(&mut rest)? > 0 {}
    Ok(sent)
}

fn udp_opened(stats: &Value) -> u64 {
    stats["transports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["transport"] == "udp")
        .map_or(0, |t| t["sessions_opened"].as_u64().unwrap_or(0))
}

fn dropped_total(stats: &Value) -> u64 {
    stats["dropped"].as_object().map_or(0, |o| o.values().filter_map(Value::as_u64).sum())
}

fn wait_ready(admin_port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin_json(admin_port, "/readyz").is_err() && admin_json(admin_port, "/api/v1/stats").is_err() {
        if Instant::now() > deadline {
            return Err("the server's admin API never answered".into());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// New KCP sessions over WebTransport, one after another for `seconds`, each
/// sending 256 KiB of its own pattern to the sink and ending its stream: the
/// (seed, bytes) of each that finished, or why it did not.
fn browsers_during(public_port: u16, wt: SocketAddr, seconds: u64) -> Vec<Result<(u64, u64), String>> {
    const BYTES: usize = 256 * 1024;
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return vec![Err(e.to_string())],
    };
    rt.block_on(async {
        let mut results = Vec::new();
        let hash = match crate::local::certificate_hash(public_port).await {
            Ok(h) => h,
            Err(e) => return vec![Err(e)],
        };
        let started = Instant::now();
        let mut seed = 0xB205_0000u64;
        while started.elapsed() < Duration::from_secs(seconds.saturating_sub(2).max(1)) {
            seed += 1;
            let config = wtransport::ClientConfig::builder()
                .with_bind_default()
                .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
                .build();
            let result = async {
                let endpoint = wtransport::Endpoint::client(config).map_err(|e| e.to_string())?;
                let conn = tokio::time::timeout(Duration::from_secs(10), endpoint.connect(format!("https://{wt}/")))
                    .await
                    .map_err(|_| "no WebTransport session in 10 s".to_string())?
                    .map_err(|e| e.to_string())?;
                let mut upload = seed.to_le_bytes().to_vec();
                let mut body = vec![0u8; BYTES];
                Pattern::new(seed).fill(&mut body);
                upload.extend_from_slice(&body);
                let (done_tx, done) = tokio::sync::oneshot::channel();
                let (_release_tx, release) = tokio::sync::watch::channel(true);
                let job = crate::wt_client::Job {
                    key: KEY,
                    seed,
                    upload: &upload,
                    want: 0,
                    finish: true,
                    timeout: Duration::from_secs(30),
                };
                crate::wt_client::exchange(&conn, job, done_tx, release).await;
                done.await.map_err(|_| "no result".to_string())??;
                Ok((seed, BYTES as u64))
            }
            .await;
            results.push(result);
        }
        results
    })
}

/// The whole flood check against `kcpgate` (a release build): good sessions with
/// and without a garbage flood, then an opening flood.
pub fn run(
    kcpgate: &Path,
    sessions: usize,
    stream_rate: u64,
    seconds: u64,
    rate: u64,
    from: u32,
) -> Result<Claims, String> {
    let mut claims = Claims::new("");

    // Part 1: garbage while good sessions transfer.
    let sink = Sink::start().map_err(|e| e.to_string())?;
    let (udp, wt, admin_port, local, public) =
        (free_udp_port("127.0.0.1"), free_udp_port("127.0.0.1"), free_tcp_port(), free_tcp_port(), free_tcp_port());
    let target: SocketAddr = ([127, 0, 0, 1], udp).into();
    // Junk goes to the WebTransport listener too; browsers' sessions must still open.
    let wt_target: SocketAddr = ([127, 0, 0, 1], wt).into();
    let _server = spawn(
        kcpgate,
        &format!(
            "server -l {target} -t {} -key {KEY} -admin 127.0.0.1:{admin_port} -webtransport {wt_target} \
             -public 127.0.0.1:{public} -quiet",
            sink.addr
        ),
    )?;
    wait_ready(admin_port)?;
    let _client =
        spawn(kcpgate, &format!("client -l 127.0.0.1:{local} -r {target} -key {KEY} -conn {sessions} -quiet"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", local)).is_err() {
        if Instant::now() > deadline {
            return Err("the client never listened".into());
        }
        thread::sleep(Duration::from_millis(20));
    }
    // (The probe above opened and closed one stream; the sink counts it as empty.)
    thread::sleep(Duration::from_millis(200));
    let stop = Arc::new(AtomicBool::new(false));
    let to: SocketAddr = ([127, 0, 0, 1], local).into();
    let streams: Vec<_> = (0..sessions as u64)
        .map(|i| {
            let stop = stop.clone();
            thread::spawn(move || source(to, 0x5EED_0000 + i, stream_rate, stop))
        })
        .collect();
    let offered = if stream_rate > 0 {
        format!("{:.1} MB/s each", stream_rate as f64 / 1e6)
    } else {
        "as fast as they can".into()
    };
    eprintln!("flood: {sessions} streams over {sessions} sessions, {offered}; warming up 3 s");
    thread::sleep(Duration::from_secs(3));
    let before = admin_json(admin_port, "/api/v1/stats")?;
    type Flooded = Option<(Value, Vec<Result<(u64, u64), String>>)>;
    let phase = |name: &str, flood: bool| -> Result<(f64, Flooded), String> {
        let from_bytes = sink.arrived.load(Ordering::Relaxed);
        let t = Instant::now();
        let flood_report = if flood {
            let browsers = thread::spawn(move || browsers_during(public, wt_target, seconds));
            let report = run_flood(&[target, wt_target], FloodKind::Garbage, rate, seconds, from)?;
            Some((report, browsers.join().map_err(|_| "the WebTransport thread panicked")?))
        } else {
            thread::sleep(Duration::from_secs(seconds));
            None
        };
        let rate = (sink.arrived.load(Ordering::Relaxed) - from_bytes) as f64 / t.elapsed().as_secs_f64();
        eprintln!("flood: {name}: {:.1} MB/s through the good sessions", rate / 1e6);
        Ok((rate, flood_report))
    };
    let (quiet_before, _) = phase("no flood", false)?;
    let (flooded, flood_report) = phase("garbage flood", true)?;
    let during = admin_json(admin_port, "/api/v1/stats")?;
    let (quiet_after, _) = phase("no flood again", false)?;
    stop.store(true, Ordering::Relaxed);
    let mut sent = BTreeMap::new();
    for (i, s) in streams.into_iter().enumerate() {
        let n = s.join().map_err(|_| "a stream thread panicked")?.map_err(|e| format!("stream {i}: {e}"))?;
        sent.insert(0x5EED_0000 + i as u64, n);
    }
    let after = admin_json(admin_port, "/api/v1/stats")?;
    let (flood_report, browsers) = flood_report.unwrap_or_default();
    let baseline = (quiet_before + quiet_after) / 2.0;
    let finished = sink.finished.lock().expect("sink results").clone();
    let intact = sent.iter().all(|(seed, n)| finished.iter().any(|&(s, b, ok)| s == *seed && b == *n && ok))
        && browsers.iter().flatten().all(|(seed, n)| finished.iter().any(|&(s, b, ok)| s == *seed && b == *n && ok));
    let total_sent: u64 = sent.values().sum();
    let per_second = flood_report["per_second"].as_f64().unwrap_or(0.0);
    claims.claim(
        per_second >= rate as f64 * 0.95,
        format!(
            "the flood process sent {} junk datagrams in {:.1} s ({per_second:.0}/s) from {from} addresses: {}",
            flood_report["sent"],
            flood_report["seconds"].as_f64().unwrap_or(0.0),
            flood_report["by_class"]
        ),
    );
    let opened = udp_opened(&after) - udp_opened(&before);
    claims.claim(
        opened <= 1,
        format!("sessions opened during the flood: {opened} (the captured victim's own: at most 1)"),
    );
    let drops = dropped_total(&during) - dropped_total(&before);
    claims.claim(drops > 0, format!("datagrams dropped and counted: {drops}, by reason {}", during["dropped"]));
    let browsers_ok = browsers.iter().filter(|b| b.is_ok()).count();
    claims.claim(
        !browsers.is_empty() && browsers_ok == browsers.len(),
        format!(
            "KCP over WebTransport during the flood: {browsers_ok} of {} new sessions carried 256 KiB each, every byte \
             checked{}",
            browsers.len(),
            browsers.iter().find_map(|b| b.as_ref().err()).map_or(String::new(), |e| format!(" (e.g. {e})"))
        ),
    );
    let kept = flooded / baseline;
    claims.claim(
        kept >= 0.8,
        format!(
            "good sessions kept {:.0} % of their throughput: {:.1} MB/s under the flood, {:.1} and {:.1} MB/s without",
            kept * 100.0,
            flooded / 1e6,
            quiet_before / 1e6,
            quiet_after / 1e6
        ),
    );
    claims.claim(
        intact,
        format!(
            "every byte arrived, in order, at its own backend connection: {} streams, {:.1} MB, {}",
            sent.len(),
            total_sent as f64 / 1e6,
            if intact { "all intact" } else { "SOME LOST OR MIXED" }
        ),
    );
    drop(_client);
    drop(_server);

    // Part 2: genuine openings far beyond the limits.
    let (udp, admin_port) = (free_udp_port("127.0.0.1"), free_tcp_port());
    let target: SocketAddr = ([127, 0, 0, 1], udp).into();
    let server = spawn(
        kcpgate,
        &format!("server -l {target} -t {} -key {KEY} -admin 127.0.0.1:{admin_port} -quiet", sink.addr),
    )?;
    wait_ready(admin_port)?;
    let rss_idle = crate::harness::rss_bytes(server.0.id());
    let peak = Arc::new(AtomicU64::new(rss_idle));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (peak, watching, pid) = (peak.clone(), watching.clone(), server.0.id());
        thread::spawn(move || {
            while watching.load(Ordering::Relaxed) {
                peak.fetch_max(crate::harness::rss_bytes(pid), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let opening_rate = 20_000;
    eprintln!(
        "flood: {opening_rate} new sessions per second from {} addresses ({from} IPs, {OPENING_PORTS_PER_SOURCE} ports each)",
        from * OPENING_PORTS_PER_SOURCE
    );
    let openings = run_flood(&[target], FloodKind::Openings, opening_rate, seconds, from)?;
    thread::sleep(Duration::from_millis(500));
    watching.store(false, Ordering::Relaxed);
    let _ = watcher.join();
    // Nobody answers a spoofed opening: each is forgotten unproven 5 s after it came.
    let ended = Instant::now();
    let mut stats = admin_json(admin_port, "/api/v1/stats")?;
    let counted = |s: &Value, key: &str| s["sessions"][key].as_u64().unwrap_or(0);
    let mut waited = 0;
    while ended.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_secs(1));
        stats = admin_json(admin_port, "/api/v1/stats")?;
        let expired = counted(&stats, "unproven_expired");
        if expired > 0 && expired == waited {
            break;
        }
        waited = expired;
    }
    let (proven, expired) = (counted(&stats, "proven"), counted(&stats, "unproven_expired"));
    let open_now = counted(&stats, "open");
    let refused = ["opening_limit", "source_limit", "unproven_limit"]
        .iter()
        .map(|r| stats["dropped"][r].as_u64().unwrap_or(0))
        .sum::<u64>();
    let length = openings["seconds"].as_f64().unwrap_or(0.0);
    // Default limits: 1000/s with a burst of 5000 in all.
    let allowed = 5000.0 + 1000.0 * length;
    claims.claim(
        expired as f64 <= allowed * 1.02 && refused > 0,
        format!(
            "opening flood: {} new sessions sent in {length:.1} s from {} addresses; {expired} admitted to prove their \
             address (the limits allow {allowed:.0}), {refused} refused and counted (opening_limit {}, source_limit {}, \
             unproven_limit {})",
            openings["sent"],
            from * OPENING_PORTS_PER_SOURCE,
            stats["dropped"]["opening_limit"],
            stats["dropped"]["source_limit"],
            stats["dropped"]["unproven_limit"]
        ),
    );
    claims.claim(
        proven == 0 && open_now == 0 && udp_opened(&stats) == 0,
        format!(
            "no spoofed opening became a session: {proven} proven, {open_now} open, all {expired} forgotten unproven \
             within {:.0} s of the flood's end",
            ended.elapsed().as_secs_f64()
        ),
    );
    let peak = peak.load(Ordering::Relaxed);
    let per_session = peak.saturating_sub(rss_idle) as f64 / expired.max(1) as f64;
    let bound = rss_idle + SESSION_MEMORY_BOUND * expired;
    claims.claim(
        peak <= bound,
        format!(
            "server memory: {:.1} MB idle, {:.1} MB at its peak with {expired} unproven sessions admitted: {:.1} KiB \
             per session admitted (the README's bound: {} KiB)",
            rss_idle as f64 / 1e6,
            peak as f64 / 1e6,
            per_session / 1024.0,
            SESSION_MEMORY_BOUND / 1024
        ),
    );
    Ok(claims)
}
