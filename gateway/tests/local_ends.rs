//! The tunnel's local ends: unix-socket backends and listeners, as kcptun takes
//! them, and a client that must stop promptly when its server never answers.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{free_tcp_port, free_udp_port, incompressible, kcpgate, Procs};

/// A unix-socket echo backend on a thread.
fn unix_echo_backend(path: &Path) {
    let l = UnixListener::bind(path).expect("bind the backend's socket");
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let (mut r, mut w) = (c.try_clone().expect("clone"), c);
                let mut buf = vec![0u8; 65536];
                while let Ok(n @ 1..) = r.read(&mut buf) {
                    if w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_mebibyte_goes_through_a_unix_socket_listener_and_a_unix_socket_backend() {
    let dir = std::env::temp_dir().join(format!("kcpgate-unix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let (backend, app) = (dir.join("backend.sock"), dir.join("app.sock"));
    unix_echo_backend(&backend);
    let udp = free_udp_port("127.0.0.1");
    let procs = Procs(vec![
        kcpgate(&format!("server -l 127.0.0.1:{udp} -t {} -key k -admin off", backend.display())),
        kcpgate(&format!("client -l {} -r 127.0.0.1:{udp} -key k", app.display())),
    ]);
    wait_for(&app);
    let payload = incompressible(77, 1 << 20);
    let mut c = UnixStream::connect(&app).expect("connect to the client's socket");
    c.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let writer = {
        let (mut w, payload) = (c.try_clone().expect("clone"), payload.clone());
        std::thread::spawn(move || {
            w.write_all(&payload).expect("write");
            w.shutdown(std::net::Shutdown::Write).expect("shutdown");
        })
    };
    let mut back = Vec::new();
    c.read_to_end(&mut back).expect("the echo, then the end");
    writer.join().expect("the writer");
    assert!(back == payload, "got {} bytes back, or other bytes", back.len());
    drop(procs);
    // The client removes its socket file when it exits; killed, it may not.
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_client_whose_server_never_answers_stops_at_once_on_sigterm() {
    let (unanswered, local) = (free_udp_port("127.0.0.1"), free_tcp_port());
    let mut procs = Procs(vec![kcpgate(&format!("client -l 127.0.0.1:{local} -r 127.0.0.1:{unanswered} -key k"))]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        match TcpStream::connect(("127.0.0.1", local)) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "the client never listened: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    c.write_all(b"hello?").expect("write");
    std::thread::sleep(Duration::from_millis(500)); // the stream is open, unanswered
    let pid = procs.0[0].id().to_string();
    let asked = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status = loop {
        if let Some(status) = procs.0[0].try_wait().expect("wait") {
            break status;
        }
        assert!(asked.elapsed() < Duration::from_secs(5), "still running 5 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
