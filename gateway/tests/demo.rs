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

fn sessions(admin: u16, token: &str) -> Vec<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut r = agent
        .get(format!("http://127.0.0.1:{admin}/api/v1/sessions"))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    page["sessions"].as_array().unwrap().clone()
}

#[test]
fn the_demo_prints_where_to_look_its_bots_play_and_ctrl_c_ends_it_cleanly() {
    let (udp, admin, webtransport) = (free_udp_pair(), free_tcp_port(), support::free_udp_port("127.0.0.1"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_kcpgate"))
        .args(["demo", "--listen", &format!("127.0.0.1:{udp}"), "--admin", &format!("127.0.0.1:{admin}")])
        .args(["--webtransport", &format!("127.0.0.1:{webtransport}")])
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
    assert!(text.contains(&format!("http://127.0.0.1:{admin}/demo/?key=demo-key")), "{text}");
    assert!(text.contains(&format!("kcptun-client -r 127.0.0.1:{udp}")), "{text}");
    let (status, page) = support::admin_get(admin, "/").expect("the dashboard answers");
    assert_eq!(status, 200);
    assert!(page.contains("kcpgate dashboard"));

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
