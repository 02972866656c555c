//! The benchmark harness: runs kcpgate and Debian's kcptun with identical flags,
//! alternating (A B A B …) so drift hits both, and writes a markdown table and a CSV.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::impair::Spec;
use crate::traffic;

/// One implementation under test: how to start its server and its client.
#[derive(Debug, Clone)]
pub struct Implementation {
    pub name: &'static str,
    pub server: Vec<String>,
    pub client: Vec<String>,
}

impl Implementation {
    pub fn kcpgate(binary: &Path) -> Implementation {
        let b = binary.display().to_string();
        // Every bench session comes from 127.0.0.1, thousands at once: kcptun has no
        // rate of new sessions, so neither does kcpgate here.
        let server = [&b, "server", "-open-rate", "0", "-open-rate-per-source", "0"].map(String::from).to_vec();
        Implementation { name: "kcpgate", server, client: vec![b, "client".into()] }
    }

    pub fn kcptun() -> Implementation {
        Implementation { name: "kcptun", server: vec!["kcptun-server".into()], client: vec!["kcptun-client".into()] }
    }
}

/// A server and a client of one implementation, the client listening on `local`.
struct Tunnel {
    server: Child,
    client: Child,
    local: SocketAddr,
    /// Where the server listens (the relay, if there is one, is in front of it).
    server_udp: SocketAddr,
    /// Dropping it stops the relay, if there is one, and frees its sockets.
    _stop_relay: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        for c in [&mut self.server, &mut self.client] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a client of `imp` with `args` on a free local port and waits until it
/// listens there.
fn start_client(imp: &Implementation, args: &str) -> (Child, SocketAddr) {
    let port = free_port_tcp();
    let client = spawn(&imp.client, &format!("-l 127.0.0.1:{port} {args}"));
    let local: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening(port) {
        assert!(Instant::now() < deadline, "{} client never listened on {local}", imp.name);
        thread::sleep(Duration::from_millis(20));
    }
    (client, local)
}

/// Extra clients of a tunnel, stopped when dropped.
struct MoreClients(Vec<(Child, SocketAddr)>);

impl Drop for MoreClients {
    fn drop(&mut self) {
        for (c, _) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("a free UDP port")
}

fn free_port_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("a free TCP port")
}

fn spawn(cmd: &[String], args: &str) -> Child {
    Command::new(&cmd[0])
        .args(&cmd[1..])
        .args(args.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e} (Debian's kcptun: apt-get install -y kcptun)", cmd[0]))
}

impl Tunnel {
    /// Starts a tunnel to `backend`; with `impair`, the client reaches the server
    /// through an impairment relay (up, down, seed).
    /// `client_flags` go to the client only.
    fn start(
        imp: &Implementation,
        flags: &str,
        client_flags: &str,
        backend: SocketAddr,
        impair: Option<(Spec, Spec, u64)>,
    ) -> Tunnel {
        let udp = free_port_udp();
        let server = spawn(&imp.server, &format!("-l 127.0.0.1:{udp} -t {backend} {flags}"));
        let (dial, relay) = match impair {
            Some((up, down, seed)) => {
                let relay_port = free_port_udp();
                let listen: SocketAddr = ([127, 0, 0, 1], relay_port).into();
                let target: SocketAddr = ([127, 0, 0, 1], udp).into();
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                    rt.block_on(async {
                        tokio::select! {
                            _ = crate::relay::run(listen, target, up, down, seed, Arc::default()) => {}
                            _ = stopped => {}
                        }
                    });
                });
                (relay_port, Some(stop))
            }
            None => (udp, None),
        };
        let (client, local) = start_client(imp, &format!("-r 127.0.0.1:{dial} {flags} {client_flags}"));
        let server_udp = ([127, 0, 0, 1], udp).into();
        Tunnel { server, client, local, server_udp, _stop_relay: relay }
    }

    /// Starts one more client of the same server, for `-conn conn` sessions.
    fn another_client(&self, imp: &Implementation, flags: &str, conn: usize) -> (Child, SocketAddr) {
        start_client(imp, &format!("-r {} {flags} -conn {conn}", self.server_udp))
    }

    /// CPU seconds the server and client have used.
    fn cpu(&self) -> f64 {
        [self.server.id(), self.client.id()].into_iter().map(cpu_seconds).sum()
    }
}

/// User + system CPU seconds of a process (from /proc).
pub fn cpu_seconds(pid: u32) -> f64 {
    let (user, system) = user_and_system_seconds(pid);
    user + system
}

/// User and system CPU seconds of a process, apart (from /proc).
pub fn user_and_system_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    // USER_HZ is 100 on Linux.
    let seconds = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    (seconds(11), seconds(12))
}

/// One measured value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub scenario: String,
    pub implementation: &'static str,
    pub run: usize,
    pub metric: &'static str,
    pub value: f64,
}

/// How big the suite is.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub runs: usize,
    /// Bytes of the CPU-bound bulk transfer.
    pub bulk_bytes: u64,
    /// Bytes of the bulk transfer at kcptun's defaults, whose small client window
    /// makes kcptun slow.
    pub default_bulk_bytes: u64,
    pub pings: usize,
    /// Session counts to hold, each with an idle stream, and how long to watch them
    /// idle.
    pub sessions: &'static [usize],
    /// Session counts to hold after their streams closed: more than one process
    /// may hold connections here (the fd limit), so sessions alone are kept.
    pub bare_sessions: &'static [usize],
    pub idle: Duration,
}

impl Size {
    pub const DEFAULT: Size = Size {
        runs: 3,
        bulk_bytes: 200_000_000,
        default_bulk_bytes: 30_000_000,
        pings: 150,
        sessions: &[1000, 5000],
        bare_sessions: &[20_000],
        // A whole keep-alive period (10 s): sessions opened together send their
        // keep-alives together, so a shorter window could miss them all.
        idle: Duration::from_secs(10),
    };
    pub const SMOKE: Size = Size {
        runs: 1,
        bulk_bytes: 4_000_000,
        default_bulk_bytes: 2_000_000,
        pings: 20,
        sessions: &[100],
        bare_sessions: &[300],
        idle: Duration::from_secs(2),
    };
}

/// kcptun flags of the CPU-bound bulk scenario.
pub const CPU_BOUND: &str = "-key bench -crypt aes -ds 10 -ps 3 -mode fast3 -nocomp -sndwnd 1024 -rcvwnd 1024";

/// Moves `bytes` through a tunnel; returns MB/s and CPU seconds per GB.
fn bulk(imp: &Implementation, flags: &str, bytes: u64) -> Result<(f64, f64), String> {
    let sink = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let backend = sink.local_addr().map_err(|e| e.to_string())?;
    let tunnel = Tunnel::start(imp, flags, "", backend, None);
    let receiver = thread::spawn(move || traffic::bulk_sink(sink, bytes, 42, Duration::from_secs(60)));
    let cpu_before = tunnel.cpu();
    let started = Instant::now();
    traffic::bulk_source(tunnel.local, bytes, 42).map_err(|e| format!("bulk source: {e}"))?;
    let got = receiver.join().map_err(|_| "sink panicked")?.map_err(|e| format!("sink: {e}"))?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = tunnel.cpu() - cpu_before;
    if !got.intact {
        return Err(format!("{}: {} of {bytes} bytes arrived, or some changed", imp.name, got.bytes));
    }
    Ok((bytes as f64 / elapsed / 1e6, cpu / (bytes as f64 / 1e9)))
}

/// Round trips of 64-byte messages through a tunnel behind the relay, which drops
/// datagrams as `seed` decides.
fn latency(imp: &Implementation, flags: &str, loss: f64, pings: usize, seed: u64) -> Result<Vec<Duration>, String> {
    let backend = traffic::echo_backend().map_err(|e| e.to_string())?;
    let spec: Spec = format!("loss={loss},delay=20ms").parse()?;
    let tunnel = Tunnel::start(imp, flags, "", backend, Some((spec.clone(), spec, seed)));
    // A first exchange opens the session, outside the measurement.
    traffic::ping_pong(tunnel.local, 1, 64, Duration::from_secs(30)).map_err(|e| format!("warm-up: {e}"))?;
    traffic::ping_pong(tunnel.local, pings, 64, Duration::from_secs(30)).map_err(|e| format!("ping-pong: {e}"))
}

/// Resident memory of a process.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// What holding many idle sessions costs the server.
struct Held {
    rss_per_session: f64,
    idle_cpu_percent: f64,
}

/// Client processes for bare sessions: each holds one UDP socket per session, and a
/// process here may hold at most 20,000 files.
const BARE_SESSIONS_PER_CLIENT: usize = 7000;

/// Opens `n` connections through a client with `-conn n`, so each gets a KCP session
/// of its own with one stream, checks each with an echo, then measures the server
/// while they sit idle for `idle`. With `keep_streams` false, each connection is
/// closed after its echo (its session stays, with no stream), and the sessions are
/// spread over as many clients as the fd limit needs.
fn hold_sessions(imp: &Implementation, n: usize, idle: Duration, keep_streams: bool) -> Result<Held, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let backend_addr = backend.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            while let Ok((mut c, _)) = backend.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(k @ 1..) = c.read(&mut buf).await {
                        if c.write_all(&buf[..k]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let clients = if keep_streams { 1 } else { n.div_ceil(BARE_SESSIONS_PER_CLIENT) };
        let flags = "-key bench -crypt aes -mode fast3";
        let tunnel = Tunnel::start(imp, flags, &format!("-conn {}", n.div_ceil(clients)), backend_addr, None);
        let more = MoreClients((1..clients).map(|_| tunnel.another_client(imp, flags, n.div_ceil(clients))).collect());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_before = rss_bytes(tunnel.server.id());
        let mut held = Vec::with_capacity(n);
        // In waves, so the clients' accept queues never overflow.
        for wave in (0..n).collect::<Vec<_>>().chunks(200) {
            let opened: Vec<_> = wave
                .iter()
                .map(|&i| {
                    let local = match i % clients {
                        0 => tunnel.local,
                        k => more.0[k - 1].1,
                    };
                    tokio::spawn(async move {
                        let mut c = tokio::net::TcpStream::connect(local).await?;
                        c.write_all(&[i as u8]).await?;
                        let mut b = [0u8; 1];
                        tokio::time::timeout(Duration::from_secs(60), c.read_exact(&mut b)).await??;
                        std::io::Result::Ok(c)
                    })
                })
                .collect();
            for c in opened {
                let c = c.await.map_err(|e| e.to_string())?;
                let c = c.map_err(|e| format!("{}: session {} of {n}: {e}", imp.name, held.len() + 1))?;
                if keep_streams {
                    held.push(c);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu_before = cpu_seconds(tunnel.server.id());
        let profile = profile_idle(imp, n, tunnel.server.id(), idle);
        tokio::time::sleep(idle).await;
        let cpu = cpu_seconds(tunnel.server.id()) - cpu_before;
        if let Some(mut perf) = profile {
            let _ = perf.wait();
        }
        // After a whole keep-alive period: what the first keep-alives allocate counts.
        let rss = rss_bytes(tunnel.server.id());
        drop(held);
        drop(more);
        Ok(Held {
            rss_per_session: rss.saturating_sub(rss_before) as f64 / n as f64,
            idle_cpu_percent: cpu / idle.as_secs_f64() * 100.0,
        })
    })
}

/// With `KCPGATE_BENCH_PROFILE=DIR` set, records the server's idle window with
/// `perf record -g` into `DIR/idle-IMPLEMENTATION-N.perf.data`, to see where idle
/// CPU goes (`perf report -i FILE`).
fn profile_idle(imp: &Implementation, n: usize, pid: u32, idle: Duration) -> Option<std::process::Child> {
    let dir = std::env::var_os("KCPGATE_BENCH_PROFILE")?;
    let out = std::path::Path::new(&dir).join(format!("idle-{}-{n}.perf.data", imp.name));
    let perf = std::process::Command::new("perf")
        .args(["record", "-g", "-F", "999", "-q", "-p", &pid.to_string(), "-o"])
        .arg(&out)
        .args(["--", "sleep", &idle.as_secs_f64().to_string()])
        .stdout(std::process::Stdio::null())
        .spawn();
    match perf {
        Ok(child) => Some(child),
        Err(e) => {
            eprintln!("KCPGATE_BENCH_PROFILE: cannot run perf: {e}");
            None
        }
    }
}

/// Runs the suite, calling `progress` with a line per step; returns every sample.
/// Only scenarios whose name contains `only` run (all when it is empty).
pub fn run_suite(
    impls: &[Implementation],
    size: Size,
    only: &str,
    mut progress: impl FnMut(&str),
) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    let mut add = |scenario: &str, imp: &Implementation, run: usize, metric: &'static str, value: f64| {
        samples.push(Sample { scenario: scenario.to_string(), implementation: imp.name, run, metric, value });
    };
    let bulk_scenarios = [
        ("bulk, CPU-bound settings", CPU_BOUND, size.bulk_bytes),
        ("bulk, kcptun defaults", "-key bench", size.default_bulk_bytes),
    ];
    for run in 0..size.runs {
        for (scenario, flags, bytes) in bulk_scenarios.into_iter().filter(|s| s.0.contains(only)) {
            for imp in impls {
                let (mbps, cpu_per_gb) = bulk(imp, flags, bytes)?;
                progress(&format!(
                    "run {}/{}: {scenario}: {} {mbps:.1} MB/s, {cpu_per_gb:.1} CPU s/GB",
                    run + 1,
                    size.runs,
                    imp.name
                ));
                add(scenario, imp, run, "throughput MB/s", mbps);
                add(scenario, imp, run, "CPU s per GB", cpu_per_gb);
            }
        }
        let held_scenarios =
            size.sessions.iter().map(|&n| (n, true)).chain(size.bare_sessions.iter().map(|&n| (n, false)));
        for (n, keep_streams) in held_scenarios {
            let scenario =
                if keep_streams { format!("{n} idle sessions") } else { format!("{n} idle sessions, streams closed") };
            if !scenario.contains(only) {
                continue;
            }
            for imp in impls {
                let held = hold_sessions(imp, n, size.idle, keep_streams)?;
                progress(&format!(
                    "run {}/{}: {scenario}: {} {:.1} KB per session, server idle CPU {:.1} %",
                    run + 1,
                    size.runs,
                    imp.name,
                    held.rss_per_session / 1024.0,
                    held.idle_cpu_percent
                ));
                add(&scenario, imp, run, "server RSS KB per session", held.rss_per_session / 1024.0);
                add(&scenario, imp, run, "server idle CPU % of a core", held.idle_cpu_percent);
            }
        }
        for fec in ["-ds 10 -ps 3", "-ds 0 -ps 0"] {
            for loss in [0.0, 0.01, 0.05, 0.10] {
                let scenario = format!(
                    "ping-pong, {}% loss, 20 ms, FEC {}",
                    loss * 100.0,
                    if fec.contains("10") { "10/3" } else { "off" }
                );
                if !scenario.contains(only) {
                    continue;
                }
                let flags = format!("-key bench -crypt aes -mode fast3 -nocomp {fec}");
                for imp in impls {
                    // Each run draws other losses; both implementations in a run the same.
                    let times = latency(imp, &flags, loss, size.pings, run as u64 + 1)?;
                    let ms = |p: f64| traffic::percentile(&times, p).as_secs_f64() * 1000.0;
                    progress(&format!(
                        "run {}/{}: {scenario}: {} p50 {:.1} ms, p99 {:.1} ms",
                        run + 1,
                        size.runs,
                        imp.name,
                        ms(50.0),
                        ms(99.0)
                    ));
                    add(&scenario, imp, run, "p50 ms", ms(50.0));
                    add(&scenario, imp, run, "p99 ms", ms(99.0));
                }
            }
        }
    }
    Ok(samples)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The samples as CSV: scenario, implementation, run, metric, value.
pub fn csv(samples: &[Sample]) -> String {
    let mut out = String::from("scenario,implementation,run,metric,value\n");
    for s in samples {
        out.push_str(&format!(
            "\"{}\",{},{},\"{}\",{:.4}\n",
            s.scenario,
            s.implementation,
            s.run + 1,
            s.metric,
            s.value
        ));
    }
    out
}

/// A markdown table: per scenario and metric, each implementation's median with
/// min–max, and the ratio kcpgate / kcptun of the medians.
pub fn markdown(samples: &[Sample]) -> String {
    let mut groups: BTreeMap<(usize, String, &str), BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for s in samples {
        if !order.contains(&s.scenario) {
            order.push(s.scenario.clone());
        }
        let at = order.iter().position(|o| *o == s.scenario).expect("pushed");
        groups
            .entry((at, s.scenario.clone(), s.metric))
            .or_default()
            .entry(s.implementation)
            .or_default()
            .push(s.value);
    }
    let mut out = String::from(
        "| scenario | metric | kcpgate median (min–max) | kcptun median (min–max) | kcpgate / kcptun |\n|---|---|---|---|---|\n",
    );
    for ((_, scenario, metric), by_impl) in groups {
        let cell = |name: &str| {
            by_impl.get(name).map_or(("–".to_string(), None), |v| {
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let m = median(v.clone());
                (format!("{m:.1} ({lo:.1}–{hi:.1})"), Some(m))
            })
        };
        let (a, am) = cell("kcpgate");
        let (b, bm) = cell("kcptun");
        let ratio = match (am, bm) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
            _ => "–".into(),
        };
        out.push_str(&format!("| {scenario} | {metric} | {a} | {b} | {ratio} |\n"));
    }
    out
}

/// Writes `results.csv` and `results.md` into `dir`.
pub fn write_results(dir: &Path, samples: &[Sample]) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let files = [(dir.join("results.csv"), csv(samples)), (dir.join("results.md"), markdown(samples))];
    let mut written = Vec::new();
    for (path, text) in files {
        std::fs::File::create(&path)?.write_all(text.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

/// Whether some socket listens on TCP `port` (read from /proc, so that checking
/// neither connects nor binds).
pub fn listening(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).unwrap_or_default().lines().skip(1).any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && format!("{} ", cols[1]).ends_with(&needle) && cols[3] == "0A"
        })
    })
}

/// Time to first byte of a new session, as Debian's kcptun client sees it: a fresh
/// client process per sample (a new KCP session, opened by the stream's SYN), one
/// 64-byte echo timed from the write to the last byte back. Alternates the kcpgate
/// server `after`, the kcpgate server `before` and kcptun's own, on loopback and
/// through the relay at 20 ms each way; prints each sample and returns a table of
/// medians, with after − before.
pub fn first_byte(after: &Path, before: &Path, runs: usize) -> Result<String, String> {
    let client = vec!["kcptun-client".to_string()];
    let with_kcptun_client = |name: &'static str, binary: &Path| Implementation {
        name,
        client: client.clone(),
        ..Implementation::kcpgate(binary)
    };
    let servers =
        [with_kcptun_client("kcpgate", after), with_kcptun_client("kcpgate-before", before), Implementation::kcptun()];
    // kcptun's defaults (mode fast: a 20 ms flush interval, no ackNoDelay).
    let flags = "-key bench -crypt aes -nocomp";
    let backend = traffic::echo_backend().map_err(|e| e.to_string())?;
    let mut table = String::from("| path | server | median ms | min–max ms |\n|---|---|---|---|\n");
    let mut medians = BTreeMap::new();
    for (path, impair) in [("loopback", None), ("20 ms each way", Some("delay=20ms"))] {
        let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for run in 0..runs {
            for imp in &servers {
                let spec = impair.map(|s| s.parse::<Spec>()).transpose()?;
                let tunnel = Tunnel::start(imp, flags, "", backend, spec.map(|s| (s.clone(), s, run as u64)));
                let times = traffic::ping_pong(tunnel.local, 1, 64, Duration::from_secs(10))
                    .map_err(|e| format!("{}: first byte: {e}", imp.name))?;
                let ms = times[0].as_secs_f64() * 1000.0;
                println!("run {}/{runs}: first byte, {path}: {} {ms:.1} ms", run + 1, imp.name);
                samples.entry(imp.name).or_default().push(ms);
            }
        }
        for imp in &servers {
            let v = samples.remove(imp.name).unwrap_or_default();
            let (lo, hi) = v.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            let m = median(v);
            medians.insert((path, imp.name), m);
            table += &format!("| {path} | {} | {m:.1} | {lo:.1}–{hi:.1} |\n", imp.name);
        }
        let added = medians[&(path, "kcpgate")] - medians[&(path, "kcpgate-before")];
        table += &format!("| {path} | kcpgate − kcpgate-before | {added:+.1} | |\n");
    }
    Ok(table)
}
