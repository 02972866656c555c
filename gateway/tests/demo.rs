//! `kcpgate demo` as a newcomer runs it: it says where to look, its bots play
//! through the gateway, and Ctrl-C ends it cleanly.

mod support;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{free_tcp_port, Procs};

/// A UDP port whose next port is free too (the demo's salsa20 listener).
fn free_udp_pair() -> u16 {
    loop {
        let first = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// Every process whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // "pid (comm) state ppid …": the command may hold spaces, so read after its ")".
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        if after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            found.push(entry.file_name().to_string_lossy().parse().unwrap_or(0));
        }
    }
    found
}

/// (content type, body) of a 200 answer to `GET path` on `port`.
fn fetch_bytes(port: u16, path: &str) -> (String, Vec<u8>) {
    let mut response = ureq::get(format!("http://127.0.0.1:{port}{path}")).call().expect("200");
    let kind = response.headers()["content-type"].to_str().unwrap().to_string();
    (kind, response.body_mut().with_config().limit(16 << 20).read_to_vec().unwrap())
}

/// (status, body) of `DELETE path` with the admin token.
fn api_delete(admin: u16, path: &str, token: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response = agent
        .delete(format!("http://127.0.0.1:{admin}{path}"))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .expect("the API answers");
    (response.status().as_u16(), response.body_mut().read_to_string().unwrap_or_default())
}

fn sessions(admin: u16, token: &str) -> Vec<Value> {
    let (status, text) = support::admin_get_with(admin, "/api/v1/sessions", Some(token)).expect("the API answers");
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&text).unwrap();
    page["sessions"].as_array().unwrap().clone()
}

#[test]
fn the_demo_prints_where_to_look_its_bots_play_and_ctrl_c_ends_it_cleanly() {
    let (udp, admin, public) = (free_udp_pair(), free_tcp_port(), free_tcp_port());
    // The OS may hand a released port out again: the WebTransport port must differ.
    let webtransport = loop {
        let port = support::free_udp_port("127.0.0.1");
        if port != udp && port != udp + 1 {
            break port;
        }
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_kcpgate"))
        .args(["demo", "--listen", &format!("127.0.0.1:{udp}"), "--admin", &format!("127.0.0.1:{admin}")])
        .args(["--webtransport", &format!("127.0.0.1:{webtransport}"), "--public", &format!("127.0.0.1:{public}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut procs = Procs(vec![child]);

    // The dashboard's address with the run's token, and the browser demo's.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !printed.iter().any(|l: &String| l.starts_with("Press Ctrl-C")) {
        let left = deadline.saturating_duration_since(Instant::now());
        printed.push(rx.recv_timeout(left).expect("the demo prints its addresses within 10 s"));
    }
    let text = printed.join("\n");
    let dashboard = format!("http://127.0.0.1:{admin}/#token=");
    let token = text.split(&dashboard).nth(1).and_then(|t| t.split_whitespace().next()).expect(&text).to_string();
    assert_eq!(token.len(), 32, "{text}");
    assert!(text.contains(&format!("http://127.0.0.1:{public}/demo/?key=demo-key")), "{text}");
    assert!(text.contains(&format!("kcptun-client -r 127.0.0.1:{udp}")), "{text}");
    let (status, page) = support::admin_get(admin, "/").expect("the dashboard answers");
    assert_eq!(status, 200);
    assert!(page.contains("kcpgate dashboard"));
    // The browser demo and the module it runs, with nothing built beforehand: the
    // public listener serves the page, both listeners the module (the dashboard's
    // packet inspector runs it too).
    let (status, page) = support::admin_get(public, "/demo/").expect("the demo page answers");
    assert_eq!(status, 200);
    assert!(page.contains("KCP in the browser") && page.contains("demo.js"), "{page}");
    let (status, script) = support::admin_get(public, "/demo/demo.js").unwrap();
    assert!(status == 200 && script.contains("/module/kcpgate_wasm.js"), "{status}");
    for port in [public, admin] {
        let (kind, module) = fetch_bytes(port, "/module/kcpgate_wasm_bg.wasm");
        assert_eq!(kind, "application/wasm");
        assert!(module.starts_with(b"\0asm") && module.len() > 100_000, "{} bytes", module.len());
        let (kind, glue) = fetch_bytes(port, "/module/kcpgate_wasm.js");
        assert!(kind.starts_with("text/javascript") && glue.windows(6).any(|w| w == b"Client"), "{kind}");
    }

    // The bots' four sessions, both crypts, and their byte counts rise.
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        let s = sessions(admin, &token);
        if s.len() == 4 {
            break s;
        }
        assert!(Instant::now() < deadline, "four bot sessions within 15 s: {s:#?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut crypts: Vec<&str> = first.iter().map(|s| s["crypt"].as_str().unwrap()).collect();
    crypts.sort_unstable();
    assert_eq!(crypts, ["aes", "aes", "aes", "salsa20"]);
    std::thread::sleep(Duration::from_secs(2));
    let later = sessions(admin, &token);
    for s in &first {
        let again = later.iter().find(|l| l["id"] == s["id"]).expect("the same sessions two seconds later");
        assert!(again["traffic"]["bytes_in"].as_u64() > s["traffic"]["bytes_in"].as_u64(), "{again}");
    }
    // A progress line a while later (not a terminal: one every 5 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let progress = loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("a progress line");
        if line.starts_with("sessions 4 · players 4 (ada, bob, cyd, dee)") {
            break line;
        }
    };
    assert!(progress.contains("kB/s"), "{progress}");
    assert!(children_of(pid).is_empty(), "the demo runs in one process: {:?}", children_of(pid));

    // A kicked bot (bob, smux v1) is told at once, opens a new session well within
    // its keep-alive period (10 s), and plays again: four players once more.
    let bob = later.iter().find(|s| s["smux_version"] == 1).expect("bob's session").clone();
    let kicked = Instant::now();
    let (status, _) = api_delete(admin, &format!("/api/v1/sessions/{}?reason=test", bob["id"]), &token);
    assert_eq!(status, 204);
    let back = loop {
        let s = sessions(admin, &token);
        if s.len() == 4 && s.iter().all(|s| s["id"] != bob["id"]) {
            break kicked.elapsed();
        }
        assert!(kicked.elapsed() < Duration::from_secs(10), "bob back within 10 s: {s:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("the kicked bot had a new session {back:?} after the kick");
    // Progress printed from now on: bob plays again.
    while rx.try_recv().is_ok() {}
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("a progress line");
        if line.starts_with("sessions 4 · players 4 (ada, bob, cyd, dee)") {
            break;
        }
    }

    // Ctrl-C: exit 0 within 5 s, and the ports are free again.
    assert!(Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap().success());
    let stopped = Instant::now();
    let child = &mut procs.0[0];
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(stopped.elapsed() < Duration::from_secs(5), "still running 5 s after SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "SIGINT ends the demo with status 0");
    eprintln!("the demo exited {:?} after SIGINT", stopped.elapsed());
    assert!(std::net::TcpListener::bind(("127.0.0.1", admin)).is_ok(), "the admin port is free again");
    assert!(UdpSocket::bind(("127.0.0.1", udp)).is_ok(), "the UDP port is free again");
}

/// A bad address and a taken port are refused at once, naming the flag to change.
#[test]
fn the_demo_refuses_bad_and_taken_addresses_naming_the_flag() {
    let bad = Command::new(env!("CARGO_BIN_EXE_kcpgate")).args(["demo", "--listen", "nowhere"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--listen"), "{}", String::from_utf8_lossy(&bad.stderr));
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let admin = free_tcp_port();
    let out = Command::new(env!("CARGO_BIN_EXE_kcpgate"))
        .args(["demo", "--listen", &format!("127.0.0.1:{port}"), "--admin", &format!("127.0.0.1:{admin}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on UDP 127.0.0.1:{port}")) && stderr.contains("--listen"),
        "{stderr}"
    );
}

/// The compose file's parts: the game server alone, a bot that plays through a
/// real server, and the health check images use.
#[test]
fn game_server_bot_and_healthcheck_work_alone() {
    let (game, admin, udp) = (free_tcp_port(), free_tcp_port(), support::free_udp_port("127.0.0.1"));
    let bin = env!("CARGO_BIN_EXE_kcpgate");
    let spawn =
        |args: &[&str]| Command::new(bin).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let game_addr = format!("127.0.0.1:{game}");
    let mut procs = Procs(vec![spawn(&["game-server", "--listen", &game_addr])]);
    procs.0.push(support::kcpgate(&format!(
        "server -l 127.0.0.1:{udp} -t {game_addr} -key bot-key -crypt salsa20 -admin 127.0.0.1:{admin} -quiet"
    )));
    support::wait_ready(admin);
    let health = |path: &str| {
        Command::new(bin).args(["healthcheck", &format!("http://127.0.0.1:{admin}{path}")]).output().unwrap()
    };
    assert!(health("/readyz").status.success());
    let missing = health("/no-such-page");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("answered 404"));
    let nothing = Command::new(bin).args(["healthcheck", "http://127.0.0.1:1/readyz"]).output().unwrap();
    assert_eq!(nothing.status.code(), Some(1), "nothing listening is unhealthy");

    // A bot, its key from the environment as compose passes it.
    let server = format!("127.0.0.1:{udp}");
    let bot = Command::new(bin)
        .args(["bot", "--server", &server, "--crypt", "salsa20", "--mode", "fast2", "--name", "zed"])
        .env("KCPTUN_KEY", "bot-key")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    procs.0.push(bot);
    let deadline = Instant::now() + Duration::from_secs(10);
    let bytes = |s: &[Value]| s.first().and_then(|s| s["traffic"]["bytes_in"].as_u64()).unwrap_or(0);
    let first = loop {
        let (_, text) = support::admin_get(admin, "/api/v1/sessions").unwrap();
        let s = serde_json::from_str::<Value>(&text).unwrap()["sessions"].as_array().unwrap().clone();
        if bytes(&s) > 0 {
            break s;
        }
        assert!(Instant::now() < deadline, "the bot's session within 10 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!((first.len(), first[0]["crypt"].as_str()), (1, Some("salsa20")));
    std::thread::sleep(Duration::from_secs(1));
    let (_, text) = support::admin_get(admin, "/api/v1/sessions").unwrap();
    let later = serde_json::from_str::<Value>(&text).unwrap()["sessions"].as_array().unwrap().clone();
    assert!(bytes(&later) > bytes(&first), "the bot keeps playing");
    // The game server echoes what is not a player, byte for byte.
    let mut echo = std::net::TcpStream::connect(&game_addr).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::io::Write::write_all(&mut echo, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    std::io::Read::read_exact(&mut echo, &mut back).unwrap();
    assert!(back == data, "echoed byte for byte");
}
