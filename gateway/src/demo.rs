//! `kcpgate demo`: the whole path on one machine, in one process. A gateway (two
//! UDP listeners with different crypts, WebTransport, the admin API and
//! dashboard), a small game server behind it, and bots: kcpgate clients in
//! different modes and crypts, one of them through a link that loses 5 % of its
//! datagrams, each carrying a player who chats and moves.
//!
//! The game server speaks lines: a connection that starts with `HELLO <name>` is
//! a player (`SAY <text>` chats, `MOVE <x> <y>` moves; it receives `TICK` lines ten
//! times a second and everyone's chat); any other connection is echoed byte for
//! byte, so kcptun clients and the browser demo page can check their data.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Arg, Command};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

use crate::config::{Role, Settings};
use crate::listeners::Listeners;
use crate::runtime::{hex, random_seed, Plan};

/// The pre-shared key of the demo's sessions (printed: it is a demo).
pub const DEMO_KEY: &str = "demo-key";

/// The demo's command line.
pub fn command() -> Command {
    Command::new("demo")
        .about("Run a gateway, a small game server and bot players on this machine, and show them live")
        .long_about(
            "Run a gateway, a small game server and bot players on this machine, and show them live.\n\n\
             The gateway listens on UDP (aes on --listen, salsa20 on the next port), on WebTransport, \
             on the public address, which serves the browser demo page, and on the admin address, which \
             serves the dashboard. Four bots (kcpgate clients in fast3, \
             normal, fast and fast2 modes; one through a link that loses 5 % of datagrams each way) \
             play on the game server: they join, chat and move. Connections that do not start with \
             HELLO are echoed, so kcptun clients can test the path too. Ctrl-C stops everything.",
        )
        .arg(
            Arg::new("listen")
                .long("listen")
                .value_name("ADDR")
                .default_value("127.0.0.1:29900")
                .value_parser(clap::value_parser!(SocketAddr))
                .help("UDP address of the aes listener; salsa20 listens on the next port"),
        )
        .arg(
            Arg::new("admin")
                .long("admin")
                .value_name("ADDR")
                .default_value("127.0.0.1:8080")
                .value_parser(clap::value_parser!(SocketAddr))
                .help("Address of the admin API and dashboard"),
        )
        .arg(
            Arg::new("webtransport")
                .long("webtransport")
                .value_name("ADDR")
                .default_value("127.0.0.1:4433")
                .value_parser(clap::value_parser!(SocketAddr))
                .help("UDP address of the WebTransport listener, for the browser demo page"),
        )
        .arg(
            Arg::new("public")
                .long("public")
                .value_name("ADDR")
                .default_value("127.0.0.1:8090")
                .value_parser(clap::value_parser!(SocketAddr))
                .help("TCP address of the public listener for game pages: the browser demo page and the certificate hashes"),
        )
}

/// `kcpgate game-server`: the demo's game server alone (the compose file's backend).
pub fn game_server_command() -> Command {
    Command::new("game-server")
        .about("Run the demo's game server alone: players join with HELLO, chat and move; anything else is echoed")
        .arg(
            Arg::new("listen")
                .long("listen")
                .value_name("ADDR")
                .default_value("127.0.0.1:7000")
                .value_parser(clap::value_parser!(SocketAddr))
                .help("TCP address to listen on"),
        )
}

/// Runs the game server on `listen` until `stop` resolves.
pub async fn run_game_server(listen: SocketAddr, stop: impl std::future::Future<Output = ()>) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on TCP {listen}: {e}; choose another --listen"))
    })?;
    println!("game server on TCP {}", listener.local_addr()?);
    tokio::select! {
        () = serve_game(listener, Arc::new(Game::default())) => {}
        () = stop => {}
    }
    Ok(())
}

/// `kcpgate bot`: one bot player through its own kcpgate client (the compose
/// file's bots).
pub fn bot_command() -> Command {
    Command::new("bot")
        .about("Run one bot player: a kcpgate client to --server, and a player on the game server behind it")
        .arg(
            Arg::new("server")
                .long("server")
                .value_name("HOST:PORT")
                .required(true)
                .help("The gateway's UDP address, e.g. gateway:29900"),
        )
        .arg(
            Arg::new("key")
                .long("key")
                .value_name("KEY")
                .env("KCPTUN_KEY")
                .hide_env_values(true)
                .default_value(DEMO_KEY)
                .help("Pre-shared key"),
        )
        .arg(Arg::new("crypt").long("crypt").value_name("NAME").default_value("aes").help("kcptun's -crypt"))
        .arg(Arg::new("mode").long("mode").value_name("MODE").default_value("fast").help("kcptun's -mode"))
        .arg(
            Arg::new("name")
                .long("name")
                .value_name("NAME")
                .help("The player's name (letters and digits; default: bot and a random number)"),
        )
}

/// Runs one bot until `stop` resolves; its player rejoins whenever its connection
/// ends (a gateway restart, a kick).
pub async fn run_bot(m: &clap::ArgMatches, stop: impl std::future::Future<Output = ()>) -> std::io::Result<()> {
    let get = |name: &str| m.get_one::<String>(name).cloned().unwrap_or_default();
    let name = m.get_one::<String>("name").cloned().unwrap_or_else(|| {
        let seed = random_seed();
        format!("bot{:04}", u16::from_le_bytes([seed[0], seed[1]]) % 10_000)
    });
    let local = free_tcp_port().await?;
    let line = format!(
        "-l {local} -r {} -key {} -crypt {} -mode {} -quiet -admin off",
        get("server"),
        get("key"),
        get("crypt"),
        get("mode")
    );
    let plan = Arc::new(plan(Role::Client, &line)?);
    let (drain_tx, drain) = watch::channel(false);
    let client = tokio::spawn(crate::client::run(plan, drain.clone()));
    let player = tokio::spawn(async move { keep_playing(&name, local, drain).await });
    stop.await;
    let _ = drain_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let _ = player.await;
        let _ = client.await;
    })
    .await;
    Ok(())
}

/// Where the demo listens.
#[derive(Debug, Clone)]
pub struct Options {
    /// The aes listener's UDP address (the salsa20 one takes the next port).
    pub listen: SocketAddr,
    /// The admin API and dashboard.
    pub admin: SocketAddr,
    /// The WebTransport listener.
    pub webtransport: SocketAddr,
    /// The public listener for the demo page.
    pub public: SocketAddr,
}

impl Options {
    /// The options of the parsed `kcpgate demo` command line.
    pub fn from_matches(m: &clap::ArgMatches) -> Options {
        let get = |name: &str| *m.get_one::<SocketAddr>(name).expect("a default is set");
        Options { listen: get("listen"), admin: get("admin"), webtransport: get("webtransport"), public: get("public") }
    }
}

/// One bot: its player's name, its client's flags, and which listener it reaches.
struct Bot {
    name: &'static str,
    flags: &'static str,
    to: Reach,
}

enum Reach {
    Aes,
    Salsa20,
    /// The aes listener, through a relay that drops 5 % of datagrams each way.
    AesWithLoss,
}

const BOTS: [Bot; 4] = [
    Bot { name: "ada", flags: "-mode fast3 -crypt aes", to: Reach::Aes },
    Bot { name: "bob", flags: "-mode normal -crypt aes -smuxver 1", to: Reach::Aes },
    Bot { name: "cyd", flags: "-mode fast -crypt salsa20", to: Reach::Salsa20 },
    Bot { name: "dee", flags: "-mode fast2 -crypt aes", to: Reach::AesWithLoss },
];

/// Share of datagrams the lossy link drops, each way.
const LOSS: f64 = 0.05;

/// Runs the demo until `stop` resolves; prints the addresses, then live progress.
pub async fn run(options: Options, stop: impl std::future::Future<Output = ()>) -> std::io::Result<()> {
    let token = hex(&random_seed()[..16]);
    let game = Arc::new(Game::default());
    let backend = TcpListener::bind("127.0.0.1:0").await?;
    let backend_addr = backend.local_addr()?;
    tokio::spawn(serve_game(backend, game.clone()));

    let salsa_addr = SocketAddr::new(options.listen.ip(), options.listen.port().wrapping_add(1));
    // Taken ports stop the demo at once, saying which flag moves them.
    for (addr, flag) in
        [(options.listen, "--listen"), (salsa_addr, "--listen"), (options.webtransport, "--webtransport")]
    {
        drop(std::net::UdpSocket::bind(addr).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on UDP {addr} ({e}): choose other ports with {flag}"))
        })?);
    }
    // The gateway is configured as `kcpgate server -config` would be.
    let text = gateway_config(&options, backend_addr, salsa_addr, &token);
    let base = Settings::parse(Role::Server, std::iter::empty())
        .map_err(|e| std::io::Error::other(format!("the demo's settings: {e}")))?;
    let demo_error = |e: crate::config::ConfigError| std::io::Error::other(format!("the demo's configuration: {e}"));
    let loaded = crate::config_file::read_text(&base, "the demo's configuration", &text).map_err(demo_error)?;
    let (base, plans) = Listeners::plans(loaded).map_err(demo_error)?;
    let listeners = Listeners::start(base, plans).await?;
    let aes = listeners.process().clone();

    let admin = crate::admin::bind(options.admin, &aes).await?;
    let public = crate::public::bind(&aes).await?.expect("the demo sets -public");
    let drain = listeners.draining();
    tokio::spawn(crate::admin::serve(admin, listeners.clone(), drain.clone()));
    tokio::spawn(crate::public::serve(public));
    let gateway = listeners.clone();
    let mut tasks = vec![tokio::spawn(report_failure("the gateway", async move { gateway.run().await }))];
    let lossy = lossy_relay(options.listen, LOSS).await?;
    for bot in &BOTS {
        let remote = match bot.to {
            Reach::Aes => options.listen,
            Reach::Salsa20 => salsa_addr,
            Reach::AesWithLoss => lossy,
        };
        let local = free_tcp_port().await?;
        let plan =
            plan(Role::Client, &format!("-l {local} -r {remote} -key {DEMO_KEY} {} -quiet -admin off", bot.flags))?;
        tasks.push(tokio::spawn(report_failure(bot.name, crate::client::run(Arc::new(plan), drain.clone()))));
        tasks.push(tokio::spawn(keep_playing(bot.name, local, drain.clone())));
    }

    let host = options.admin;
    println!("kcpgate demo: a gateway, a game server and {} bot players on this machine.\n", BOTS.len());
    println!("  Dashboard     http://{host}/#token={token}");
    println!("                (the admin token is new each run; the link signs you in)");
    println!("  Browser demo  http://{}/demo/?key={DEMO_KEY}   (Chrome, Chromium or Firefox)", options.public);
    println!("  kcptun        kcptun-client -r {} -l 127.0.0.1:7000 -key {DEMO_KEY} -crypt aes", options.listen);
    println!("                then anything sent to 127.0.0.1:7000 comes back from the game server");
    println!("  Bots          ada (fast3, aes), bob (normal, aes, smux v1), cyd (fast, salsa20 on {salsa_addr}),");
    println!("                dee (fast2, aes, through a link that loses 5 % each way)\n");
    println!("Press Ctrl-C to stop.\n");

    let progress = report_progress(aes.clone(), game.clone());
    tokio::pin!(stop);
    tokio::select! {
        () = &mut stop => {}
        () = progress => {}
    }
    println!("\nstopping: the bots leave, the gateway drains");
    listeners.drain();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    for task in tasks {
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            break; // whatever is left ends with the process
        }
    }
    Ok(())
}

/// Logs a task's error: the demo goes on without it.
async fn report_failure(what: &'static str, work: impl std::future::Future<Output = std::io::Result<()>>) {
    if let Err(e) = work.await {
        eprintln!("error: {what} stopped: {e}");
    }
}

/// The demo gateway's `-config` file: an aes listener with the WebTransport
/// listener and the public one, and a salsa20 listener, one API and dashboard.
fn gateway_config(options: &Options, backend: SocketAddr, salsa: SocketAddr, token: &str) -> String {
    let listener = |name: &str, listen: SocketAddr| {
        format!(
            "[[listener]]\nname = \"{name}\"\nlisten = \"{listen}\"\ntarget = \"{backend}\"\nkey = \"{DEMO_KEY}\"\n\
             crypt = \"{name}\"\nmode = \"fast3\"\n\n"
        )
    };
    format!(
        "admin = \"{}\"\nadmin-token = \"{token}\"\nwebtransport = \"{}\"\npublic = \"{}\"\ndrain-timeout = 2\n\
         quiet = true\n\n{}{}",
        options.admin,
        options.webtransport,
        options.public,
        listener("aes", options.listen),
        listener("salsa20", salsa)
    )
}

fn plan(role: Role, line: &str) -> std::io::Result<Plan> {
    let settings = Settings::parse(role, line.split_whitespace().map(str::to_string))
        .map_err(|e| std::io::Error::other(format!("demo settings {line:?}: {e}")))?;
    settings.validate().map_err(|e| std::io::Error::other(e.0))?;
    Plan::alone(settings).map_err(|e| std::io::Error::other(e.0))
}

async fn free_tcp_port() -> std::io::Result<SocketAddr> {
    let probe = TcpListener::bind("127.0.0.1:0").await?;
    probe.local_addr()
}

/// A UDP relay in front of `target` that drops `loss` of the datagrams each way;
/// returns the address clients send to.
async fn lossy_relay(target: SocketAddr, loss: f64) -> std::io::Result<SocketAddr> {
    let outer = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let inner = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    inner.connect(target).await?;
    let addr = outer.local_addr()?;
    let client = Arc::new(Mutex::new(None::<SocketAddr>));
    let seed = crate::runtime::random_u64();
    let (up, down) = (Arc::new(AtomicU64::new(seed | 1)), Arc::new(AtomicU64::new(seed.rotate_left(17) | 1)));
    let keep = move |state: &AtomicU64| {
        // xorshift64: enough to pick which datagrams to drop.
        let mut x = state.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64 >= loss
    };
    let (o, i, c) = (outer.clone(), inner.clone(), client.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = o.recv_from(&mut buf).await {
            *c.lock().expect("relay lock") = Some(from);
            if keep(&up) {
                let _ = i.send(&buf[..n]).await;
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = inner.recv(&mut buf).await {
            let to = *client.lock().expect("relay lock");
            if let Some(to) = to.filter(|_| keep(&down)) {
                let _ = outer.send_to(&buf[..n], to).await;
            }
        }
    });
    Ok(addr)
}

/// The game's state: who plays where, and what was said.
#[derive(Default)]
struct Game {
    players: Mutex<BTreeMap<String, Player>>,
    chat_lines: AtomicU64,
    echoed_bytes: AtomicU64,
}

struct Player {
    at: (i32, i32),
    lines: mpsc::Sender<String>,
}

impl Game {
    /// Sends `line` to every player; a player too slow to take it misses it.
    fn broadcast(&self, line: &str) {
        for p in self.players.lock().expect("game lock").values() {
            let _ = p.lines.try_send(line.to_string());
        }
    }
}

async fn serve_game(listener: TcpListener, game: Arc<Game>) {
    tokio::spawn(tick(game.clone()));
    while let Ok((socket, _)) = listener.accept().await {
        tokio::spawn(game_connection(socket, game.clone()));
    }
}

/// Ten times a second, every player hears where everyone is.
async fn tick(game: Arc<Game>) {
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    for n in 0u64.. {
        interval.tick().await;
        let positions: Vec<String> = game
            .players
            .lock()
            .expect("game lock")
            .iter()
            .map(|(name, p)| format!("{name}@{},{}", p.at.0, p.at.1))
            .collect();
        if !positions.is_empty() {
            game.broadcast(&format!("TICK {n} {}", positions.join(" ")));
        }
    }
}

/// A player (starts with `HELLO <name>`), or anything else, echoed.
async fn game_connection(mut socket: TcpStream, game: Arc<Game>) {
    let mut first = [0u8; 6];
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    while got < first.len() {
        match tokio::time::timeout_at(deadline, socket.read(&mut first[got..])).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => got += n,
            Err(_) => break, // fewer bytes than a HELLO: echo them
        }
    }
    if &first[..got] != b"HELLO " {
        if socket.write_all(&first[..got]).await.is_ok() {
            game.echoed_bytes.fetch_add(got as u64, Ordering::Relaxed);
            let (mut r, mut w) = socket.split();
            if let Ok(n) = tokio::io::copy(&mut r, &mut w).await {
                game.echoed_bytes.fetch_add(n, Ordering::Relaxed);
            }
        }
        return;
    }
    let (r, mut w) = socket.into_split();
    let mut lines = BufReader::new(r).lines();
    let Ok(Some(name)) = lines.next_line().await else { return };
    let name: String = name.trim().chars().filter(|c| c.is_alphanumeric()).take(16).collect();
    if name.is_empty() {
        return;
    }
    let (tx, mut rx) = mpsc::channel::<String>(256);
    game.players.lock().expect("game lock").insert(name.clone(), Player { at: (0, 0), lines: tx });
    game.broadcast(&format!("* {name} joined"));
    let writer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                return;
            }
        }
    });
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(text) = line.strip_prefix("SAY ") {
            game.chat_lines.fetch_add(1, Ordering::Relaxed);
            game.broadcast(&format!("{name}: {}", text.chars().take(200).collect::<String>()));
        } else if let Some(xy) = line.strip_prefix("MOVE ") {
            let mut parts = xy.split_whitespace().map(|v| v.parse::<i32>().unwrap_or(0));
            let at = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            if let Some(p) = game.players.lock().expect("game lock").get_mut(&name) {
                p.at = at;
            }
        }
    }
    game.players.lock().expect("game lock").remove(&name);
    writer.abort();
    game.broadcast(&format!("* {name} left"));
}

const CHAT: [&str; 6] = ["gg", "anyone up for a match?", "lag is fine here", "nice shot", "brb", "who has the flag?"];

/// A bot's player: joins through its kcpgate client, moves ten times a second and
/// chats every few seconds, until the demo stops.
/// A player who rejoins a second after its connection ends (a kick, a gateway
/// restart), until `stop` turns true.
async fn keep_playing(name: &str, via: SocketAddr, stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        play(name, via, stop.clone()).await;
        let mut stop = stop.clone();
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn play(name: &str, via: SocketAddr, mut stop: watch::Receiver<bool>) {
    let mut socket = loop {
        if *stop.borrow() {
            return;
        }
        match TcpStream::connect(via).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    if socket.write_all(format!("HELLO {name}\n").as_bytes()).await.is_err() {
        return;
    }
    let (r, mut w) = socket.split();
    let mut heard = BufReader::new(r).lines();
    let mut moves = tokio::time::interval(Duration::from_millis(100));
    let start = Instant::now();
    let seed = name.bytes().map(u64::from).sum::<u64>();
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            line = heard.next_line() => if !matches!(line, Ok(Some(_))) { return },
            _ = moves.tick() => {
                n += 1;
                let t = start.elapsed().as_secs_f64() + seed as f64;
                let mut out = format!("MOVE {} {}\n", (t.cos() * 50.0) as i32, (t.sin() * 50.0) as i32);
                if (n + seed) % 37 == 0 {
                    out.push_str(&format!("SAY {}\n", CHAT[((n + seed) / 37) as usize % CHAT.len()]));
                }
                if w.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Prints the gateway's and the game's figures every second: redrawn in place on
/// a terminal, a line every 5 s otherwise. Never returns.
async fn report_progress(plan: Arc<Plan>, game: Arc<Game>) {
    use std::io::IsTerminal;
    let terminal = std::io::stdout().is_terminal();
    let mut every = tokio::time::interval(Duration::from_secs(if terminal { 1 } else { 5 }));
    let mut last: Option<(Instant, u64, u64)> = None;
    loop {
        every.tick().await;
        let snmp = plan.shared.registry.counters().await;
        let now = Instant::now();
        let rates = last.map(|(at, i, o)| {
            let secs = now.duration_since(at).as_secs_f64().max(0.001);
            (snmp.in_bytes.saturating_sub(i) as f64 / secs, snmp.out_bytes.saturating_sub(o) as f64 / secs)
        });
        last = Some((now, snmp.in_bytes, snmp.out_bytes));
        let players: Vec<String> = game.players.lock().expect("game lock").keys().cloned().collect();
        let retrans = if snmp.out_segs > 0 { 100.0 * snmp.retrans_segs as f64 / snmp.out_segs as f64 } else { 0.0 };
        let (rate_in, rate_out) = rates.unwrap_or_default();
        let line = format!(
            "sessions {} · players {} ({}) · chat lines {} · in {:.1} kB/s · out {:.1} kB/s · retransmitted {:.1} % · echoed {} kB",
            plan.shared.registry.open_sessions(),
            players.len(),
            players.join(", "),
            game.chat_lines.load(Ordering::Relaxed),
            rate_in / 1000.0,
            rate_out / 1000.0,
            retrans,
            game.echoed_bytes.load(Ordering::Relaxed) / 1000,
        );
        if terminal {
            use std::io::Write;
            print!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
        } else {
            println!("{line}");
        }
    }
}
