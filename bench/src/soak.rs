//! The soak: a kcpgate server under churn for a long time. Debian kcptun and
//! kcpgate clients come and go (some killed mid-stream), each running streams of
//! random sizes whose every byte is checked both ways; the impairment relay in
//! front of the server changes its loss, delay, reordering, duplication and
//! corruption every minute; the backend restarts (connections refused) and goes
//! through spells of resetting every connection it accepts. The report says what
//! every stream came to, and the server's memory and file descriptors over time.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::impair::Spec;
use crate::local::{admin_json, free_tcp_port, free_udp_port, Claims, Proc};
use crate::traffic::Pattern;

const KEY: &str = "soak";
/// The reply to a stream is seeded by its id with this mixed in.
const REPLY: u64 = 0x0052_4550_4C59_0000;
/// Relay impairments, one after the other, a minute each (both directions).
const WEATHER: [&str; 7] = [
    "",
    "loss=0.03",
    "delay=40ms,jitter=10ms",
    "reorder=0.05,delay=10ms",
    "dup=0.05",
    "corrupt=0.005",
    "loss=0.05,delay=20ms,jitter=5ms,dup=0.02,reorder=0.02,corrupt=0.002",
];

/// What became of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SoakOutcome {
    /// The whole reply arrived and matched, then the stream closed.
    Clean,
    /// The stream ended early while its client was being stopped.
    ClientStopped,
    /// The backend refused or reset it (restarting, or a spell of resets).
    BackendRefused,
    /// The stream ended early, or with wrong bytes, for no reason the soak made.
    Failed,
}

/// What the backend did with each stream id.
#[derive(Default)]
struct BackendLog {
    /// Ids it reset on purpose.
    refused: std::collections::HashSet<u64>,
    /// Ids whose upload arrived with wrong bytes.
    corrupted: Vec<u64>,
    /// When it went down (seconds since the epoch), each time for 5 s.
    down: Vec<f64>,
}

impl BackendLog {
    /// Whether the backend was down at some time in `from..to`.
    fn down_during(&self, from: f64, to: f64) -> bool {
        self.down.iter().any(|&d| d < to && d + 5.5 > from)
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Pattern::new(seed).fill(&mut v);
    v
}

/// The backend: each connection says `id, length`, uploads `length` pattern
/// bytes, and gets `length` reply bytes. It is down (refusing connections) for
/// 5 s every 90 s, and resets every connection it accepts for 5 s every 70 s.
async fn backend(port: u16, epoch: Instant, log: Arc<Mutex<BackendLog>>, stop: Arc<AtomicBool>) {
    let phase = move |period: u64| epoch.elapsed().as_secs() % period;
    while !stop.load(Ordering::Relaxed) {
        if phase(90) >= 85 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => l,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while phase(90) < 85 && !stop.load(Ordering::Relaxed) {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tokio::time::sleep(Duration::from_millis(100)) => continue,
            };
            let Ok((mut c, _)) = accepted else { continue };
            let log = log.clone();
            let reset = phase(70) >= 65;
            tokio::spawn(async move {
                let mut head = [0u8; 16];
                if c.read_exact(&mut head).await.is_err() {
                    return;
                }
                let id = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
                let len = u64::from_le_bytes(head[8..].try_into().expect("8 bytes")) as usize;
                if reset {
                    log.lock().expect("log").refused.insert(id);
                    // A zero linger does not block: the close sends a reset.
                    #[allow(deprecated)]
                    let _ = c.set_linger(Some(Duration::ZERO));
                    return;
                }
                let mut got = vec![0u8; len];
                if c.read_exact(&mut got).await.is_err() {
                    return;
                }
                if got != pattern(id, len) {
                    log.lock().expect("log").corrupted.push(id);
                    return;
                }
                if c.write_all(&pattern(id ^ REPLY, len)).await.is_ok() {
                    let _ = c.shutdown().await;
                }
            });
        }
        log.lock().expect("log").down.push(epoch.elapsed().as_secs_f64());
        drop(listener);
    }
}

/// One stream through a client at `local`; returns its outcome (before the
/// backend's and the client's side are taken into account) and the bytes it
/// moved both ways.
fn stream(local: u16, id: u64, len: usize) -> (bool, u64) {
    let run = || -> std::io::Result<bool> {
        let mut c = TcpStream::connect(("127.0.0.1", local))?;
        c.set_read_timeout(Some(Duration::from_secs(90)))?;
        c.set_write_timeout(Some(Duration::from_secs(90)))?;
        let mut upload = Vec::with_capacity(16 + len);
        upload.extend_from_slice(&id.to_le_bytes());
        upload.extend_from_slice(&(len as u64).to_le_bytes());
        upload.extend_from_slice(&pattern(id, len));
        c.write_all(&upload)?;
        let mut reply = Vec::with_capacity(len);
        c.read_to_end(&mut reply)?;
        Ok(reply == pattern(id ^ REPLY, len))
    };
    match run() {
        Ok(true) => (true, 2 * len as u64),
        _ => (false, 0),
    }
}

/// One sample of the server.
struct SoakSample {
    at: f64,
    rss: u64,
    fds: usize,
    sessions: u64,
    streams: u64,
    clients: usize,
    weather: &'static str,
}

impl SoakSample {
    /// The server (process `pid`, admin API on `admin`) now.
    fn take(started: Instant, pid: u32, admin: u16, clients: usize, weather: &'static str) -> SoakSample {
        let (sessions, streams) = server_stats(admin);
        SoakSample {
            at: started.elapsed().as_secs_f64(),
            rss: crate::harness::rss_bytes(pid),
            fds: fds(pid),
            sessions,
            streams,
            clients,
            weather,
        }
    }
}

fn server_stats(admin: u16) -> (u64, u64) {
    admin_json(admin, "/api/v1/stats")
        .map_or((0, 0), |v| (v["sessions"]["open"].as_u64().unwrap_or(0), v["streams"]["open"].as_u64().unwrap_or(0)))
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A client process and its workers.
struct SoakClient {
    proc: Proc,
    stopping: Arc<AtomicBool>,
    workers: Vec<thread::JoinHandle<()>>,
    ends_at: Instant,
}

/// Runs the soak for `minutes`, writes `out/soak.md` and `out/soak.csv`, and returns
/// the claims: no byte lost on a clean stream, memory and descriptors flat after
/// warm-up.
pub fn run(kcpgate: &Path, minutes: u64, out: &Path) -> Result<Claims, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(BackendLog::default()));
    let backend_port = free_tcp_port();
    let epoch = Instant::now();
    rt.spawn(backend(backend_port, epoch, log.clone(), stop.clone()));
    let (udp, relay_port, admin) = (free_udp_port("127.0.0.1"), free_udp_port("127.0.0.1"), free_tcp_port());
    let server = Proc(
        Command::new(kcpgate)
            .args(["server", "-l", &format!("127.0.0.1:{udp}"), "-t", &format!("127.0.0.1:{backend_port}")])
            .args(["-key", KEY, "-crypt", "aes", "-admin", &format!("127.0.0.1:{admin}"), "-quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", kcpgate.display()))?,
    );
    let pid = server.0.id();
    let (weather_tx, weather) = tokio::sync::watch::channel((Spec::default(), Spec::default()));
    rt.spawn(crate::relay::run_changing(
        ([127, 0, 0, 1], relay_port).into(),
        ([127, 0, 0, 1], udp).into(),
        weather,
        1,
        Arc::default(),
    ));
    thread::sleep(Duration::from_millis(500));

    /// (id, client kind, clean, client stopping, started, ended): times in
    /// seconds since the epoch.
    type Record = (u64, &'static str, bool, bool, f64, f64);
    let outcomes: Arc<Mutex<Vec<Record>>> = Arc::default();
    let moved = Arc::new(AtomicU64::new(0));
    let next_id = Arc::new(AtomicU64::new(1));
    let mut rng = SmallRng::seed_from_u64(minutes);
    let mut clients: Vec<SoakClient> = Vec::new();
    let mut samples = Vec::new();
    let started = Instant::now();
    let length = Duration::from_secs(minutes * 60);
    let mut next_sample = Duration::ZERO;
    let mut started_clients = 0usize;
    let mut weather_now = WEATHER[0];
    eprintln!("soak: {minutes} min; server pid {pid}, admin http://127.0.0.1:{admin}");
    while started.elapsed() < length {
        let minute = (started.elapsed().as_secs() / 60) as usize;
        if WEATHER[minute % WEATHER.len()] != weather_now {
            weather_now = WEATHER[minute % WEATHER.len()];
            let spec: Spec = weather_now.parse().map_err(|e: String| e)?;
            let _ = weather_tx.send((spec.clone(), spec));
        }
        // Clients end when their time is up: killed, mid-stream or not.
        let now = Instant::now();
        for c in clients.iter_mut().filter(|c| c.ends_at <= now) {
            c.stopping.store(true, Ordering::Relaxed);
            let _ = c.proc.0.kill();
        }
        let (ended, alive): (Vec<SoakClient>, Vec<SoakClient>) = clients.into_iter().partition(|c| c.ends_at <= now);
        clients = alive;
        for c in ended {
            for w in c.workers {
                let _ = w.join();
            }
        }
        // Keep four clients running, kcptun and kcpgate in turn.
        while clients.len() < 4 && started.elapsed() + Duration::from_secs(30) < length {
            started_clients += 1;
            let kind = if started_clients % 2 == 0 { "kcptun" } else { "kcpgate" };
            let local = free_tcp_port();
            let mut cmd = if kind == "kcptun" {
                Command::new("kcptun-client")
            } else {
                let mut c = Command::new(kcpgate);
                c.arg("client");
                c
            };
            let proc = Proc(
                cmd.args(["-l", &format!("127.0.0.1:{local}"), "-r", &format!("127.0.0.1:{relay_port}")])
                    .args(["-key", KEY, "-crypt", "aes", "-conn", "2", "-quiet"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("cannot start a {kind} client: {e} (apt-get install -y kcptun)"))?,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while !crate::harness::listening(local) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let stopping = Arc::new(AtomicBool::new(false));
            let workers = (0..3)
                .map(|w| {
                    let (stopping, outcomes, moved, next_id) =
                        (stopping.clone(), outcomes.clone(), moved.clone(), next_id.clone());
                    let mut rng = SmallRng::seed_from_u64(started_clients as u64 * 16 + w);
                    thread::spawn(move || {
                        while !stopping.load(Ordering::Relaxed) {
                            let id = next_id.fetch_add(1, Ordering::Relaxed);
                            // Mostly small, game-like; now and then a large transfer.
                            let len = if rng.random_bool(0.1) {
                                rng.random_range(100_000..2_000_000)
                            } else {
                                rng.random_range(1..20_000)
                            };
                            let from = epoch.elapsed().as_secs_f64();
                            let (clean, bytes) = stream(local, id, len);
                            moved.fetch_add(bytes, Ordering::Relaxed);
                            let stopped = stopping.load(Ordering::Relaxed);
                            let to = epoch.elapsed().as_secs_f64();
                            outcomes.lock().expect("outcomes").push((id, kind, clean, stopped, from, to));
                            // A pause between streams, longer after a failure.
                            thread::sleep(Duration::from_millis(if clean { 20 } else { 200 }));
                        }
                    })
                })
                .collect();
            let life = Duration::from_secs(rng.random_range(60..240));
            clients.push(SoakClient { proc, stopping, workers, ends_at: Instant::now() + life });
        }
        if started.elapsed() >= next_sample {
            let s = SoakSample::take(started, pid, admin, clients.len(), weather_now);
            eprintln!(
                "soak: {:>5.0} s  rss {:>6.1} MB  fds {:>4}  sessions {:>3}  streams {:>3}  moved {:>7.1} MB  streams done {:>6}  weather {:?}",
                s.at,
                s.rss as f64 / 1e6,
                s.fds,
                s.sessions,
                s.streams,
                moved.load(Ordering::Relaxed) as f64 / 1e6,
                outcomes.lock().expect("outcomes").len(),
                s.weather
            );
            samples.push(s);
            next_sample += Duration::from_secs(10);
        }
        thread::sleep(Duration::from_millis(200));
    }
    // The end: clients stop, and the server must let go of everything.
    for c in &clients {
        c.stopping.store(true, Ordering::Relaxed);
    }
    for c in clients {
        drop(c.proc);
        for w in c.workers {
            let _ = w.join();
        }
    }
    let _ = weather_tx.send((Spec::default(), Spec::default()));
    let quiet = Instant::now();
    let (mut sessions, mut streams) = server_stats(admin);
    while (sessions > 0 || streams > 0) && quiet.elapsed() < Duration::from_secs(75) {
        thread::sleep(Duration::from_secs(1));
        (sessions, streams) = server_stats(admin);
    }
    let end = SoakSample::take(started, pid, admin, 0, "");
    stop.store(true, Ordering::Relaxed);
    drop(server);

    // Every stream's outcome.
    let log = log.lock().expect("log");
    let mut by_outcome: BTreeMap<(SoakOutcome, &str), u64> = BTreeMap::new();
    let mut failed_ids = Vec::new();
    for &(id, kind, clean, stopped, from, to) in outcomes.lock().expect("outcomes").iter() {
        let outcome = if clean {
            SoakOutcome::Clean
        } else if log.refused.contains(&id) || log.down_during(from, to) {
            SoakOutcome::BackendRefused
        } else if stopped {
            SoakOutcome::ClientStopped
        } else {
            SoakOutcome::Failed
        };
        if outcome == SoakOutcome::Failed {
            failed_ids.push(id);
        }
        *by_outcome.entry((outcome, kind)).or_default() += 1;
    }
    let clean: u64 = by_outcome.iter().filter(|((o, _), _)| *o == SoakOutcome::Clean).map(|(_, n)| n).sum();
    // Warm-up: the first 5 minutes (or a sixth of a shorter run).
    let warm = samples.iter().position(|s| s.at >= (length.as_secs_f64() / 6.0).min(300.0)).unwrap_or(0);
    let after = &samples[warm..];
    let (rss_lo, rss_hi) = after.iter().fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s.rss), hi.max(s.rss)));
    let first_third = &after[..after.len() / 3];
    let last_third = &after[after.len() * 2 / 3..];
    let mean = |v: &[SoakSample]| v.iter().map(|s| s.rss as f64).sum::<f64>() / v.len().max(1) as f64;
    let growth = mean(last_third) / mean(first_third).max(1.0) - 1.0;
    let fds_start = samples.first().map_or(0, |s| s.fds);

    let mut claims = Claims::new(format!(
        "# Soak: {minutes} minutes\n\nkcpgate server behind the impairment relay (weather changing every minute: {}), \
         backend down 5 s every 90 s and resetting every connection 5 s every 70 s, {started_clients} clients \
         (Debian kcptun and kcpgate in turn, 60–240 s each, then killed), 3 streams at a time each.\n\n",
        WEATHER
            .iter()
            .map(|w| if w.is_empty() { "clean".to_string() } else { format!("`{w}`") })
            .collect::<Vec<_>>()
            .join(", ")
    ));
    claims.add("| outcome | client | streams |\n|---|---|---|\n");
    for ((o, kind), n) in &by_outcome {
        claims.add(&format!("| {o:?} | {kind} | {n} |\n"));
    }
    claims.add("\n");
    claims.claim(
        log.corrupted.is_empty() && failed_ids.is_empty(),
        format!(
            "bytes lost: 0 expected. {clean} streams closed cleanly with every byte both ways ({:.1} MB checked); \
             {} uploads reached the backend with wrong bytes; {} streams ended early for no reason the soak made{}",
            moved.load(Ordering::Relaxed) as f64 / 1e6,
            log.corrupted.len(),
            failed_ids.len(),
            if failed_ids.is_empty() {
                String::new()
            } else {
                format!(" (ids {:?})", &failed_ids[..failed_ids.len().min(10)])
            }
        ),
    );
    claims.claim(
        growth < 0.10,
        format!(
            "RSS after warm-up: {:.1}–{:.1} MB; the last third's mean is {:+.1} % of the first third's",
            rss_lo as f64 / 1e6,
            rss_hi as f64 / 1e6,
            growth * 100.0
        ),
    );
    claims.claim(
        end.fds <= fds_start && end.sessions == 0 && end.streams == 0,
        format!(
            "file descriptors: {fds_start} at the start, {}–{} under load, {} at the end with {} sessions and {} \
             streams left",
            after.iter().map(|s| s.fds).min().unwrap_or(0),
            after.iter().map(|s| s.fds).max().unwrap_or(0),
            end.fds,
            end.sessions,
            end.streams
        ),
    );
    claims.add(
        "\n| time (s) | RSS (MB) | fds | sessions | streams | clients | weather |\n|---|---|---|---|---|---|---|\n",
    );
    for s in samples.iter().step_by(6).chain(std::iter::once(&end)) {
        claims.add(&format!(
            "| {:.0} | {:.1} | {} | {} | {} | {} | {} |\n",
            s.at,
            s.rss as f64 / 1e6,
            s.fds,
            s.sessions,
            s.streams,
            s.clients,
            if s.weather.is_empty() { "clean" } else { s.weather }
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    let mut csv = String::from("seconds,rss_bytes,fds,sessions,streams,clients,weather\n");
    for s in samples.iter().chain(std::iter::once(&end)) {
        csv.push_str(&format!(
            "{:.1},{},{},{},{},{},\"{}\"\n",
            s.at, s.rss, s.fds, s.sessions, s.streams, s.clients, s.weather
        ));
    }
    std::fs::write(out.join("soak.csv"), csv).map_err(|e| e.to_string())?;
    std::fs::write(out.join("soak.md"), claims.report()).map_err(|e| e.to_string())?;
    eprintln!("wrote {} and soak.csv", out.join("soak.md").display());
    Ok(claims)
}
