//! The admin listener against clients that hold connections, stall, guess tokens
//! or come from web pages of other sites: the data path and the probes keep
//! working, and each guard answers as documented.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use kcpgate::config::{Role, Settings};
use kcpgate::runtime::Plan;
use support::{
    admin_get, echo_backend, free_tcp_port, free_udp_port, incompressible, kcpgate, metric, wait_ready, Procs,
};
use tower::ServiceExt;

/// One raw HTTP/1.1 exchange: the status line's code and the whole answer.
fn raw(port: u16, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the admin listener");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer)
}

#[test]
fn with_256_files_and_300_idle_admin_connections_streams_and_probes_still_work() {
    let (udp, admin, local) = (free_udp_port("127.0.0.1"), free_tcp_port(), free_tcp_port());
    let target = echo_backend();
    // Soft and hard limit 256: the gateway cannot raise it.
    let server = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 256 && exec {} server -l 127.0.0.1:{udp} -t 127.0.0.1:{target} -key k -admin 127.0.0.1:{admin} -quiet",
            env!("CARGO_BIN_EXE_kcpgate")
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh starts");
    let client = kcpgate(&format!("client -r 127.0.0.1:{udp} -l 127.0.0.1:{local} -key k -quiet"));
    let _procs = Procs(vec![server, client]);
    wait_ready(admin);

    let idle: Vec<TcpStream> =
        (0..300).map(|_| TcpStream::connect(("127.0.0.1", admin)).expect("a connection is accepted")).collect();
    std::thread::sleep(Duration::from_millis(500));
    for path in ["/livez", "/readyz", "/metrics"] {
        let (status, _) = admin_get(admin, path).unwrap_or_else(|| panic!("{path} answers"));
        assert_eq!(status, 200, "{path} with 300 idle connections held");
    }
    assert!(metric(admin, "kcpgate_admin_connections_closed_total{reason=\"cap\"}") >= 250);

    // 100 streams at once through the data path, each with its own bytes.
    let streams: Vec<_> = (0..100u64)
        .map(|i| {
            std::thread::spawn(move || {
                let data = incompressible(i, 16 * 1024);
                let mut s = support::connect_when_listening(local);
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.write_all(&data).unwrap();
                let mut back = vec![0u8; data.len()];
                s.read_exact(&mut back).map(|()| back == data)
            })
        })
        .collect();
    let echoed = streams.into_iter().map(std::thread::JoinHandle::join).filter(|r| matches!(r, Ok(Ok(true)))).count();
    assert_eq!(echoed, 100, "every stream echoed byte for byte while the admin connections were held");
    drop(idle);
}

#[test]
fn a_partial_header_is_closed_within_the_header_timeout() {
    let (udp, admin) = (free_udp_port("127.0.0.1"), free_tcp_port());
    let _procs = Procs(vec![kcpgate(&format!(
        "server -l 127.0.0.1:{udp} -t 127.0.0.1:{} -key k -admin 127.0.0.1:{admin}",
        echo_backend()
    ))]);
    wait_ready(admin);
    let started = Instant::now();
    let mut partial = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    partial.write_all(b"GET /api/v1/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").unwrap();
    let mut silent = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    for stream in [&mut partial, &mut silent] {
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(9) && took < Duration::from_secs(13), "closed after {took:?}");
    assert!(metric(admin, "kcpgate_admin_connections_closed_total{reason=\"timeout\"}") >= 2);
}

#[test]
fn a_tokenless_admin_answers_only_loopback_names_and_no_change_from_another_site() {
    let (udp, admin) = (free_udp_port("127.0.0.1"), free_tcp_port());
    let _procs = Procs(vec![kcpgate(&format!(
        "server -l 127.0.0.1:{udp} -t 127.0.0.1:{} -key k -admin 127.0.0.1:{admin}",
        echo_backend()
    ))]);
    wait_ready(admin);
    let patch = |host: &str, extra: &str| {
        let body = r#"{"ratelimit":1,"max_sessions":1}"#;
        raw(
            admin,
            &format!(
                "PATCH /api/v1/config HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let (status, answer) = patch(&format!("attacker.example:{admin}"), "");
    assert_eq!(status, 421, "DNS rebinding: {answer}");
    assert!(answer.contains("set -admin-token"), "{answer}");
    let (_, config) = admin_get(admin, "/api/v1/config").unwrap();
    assert!(config.contains("\"max_sessions\":0"), "nothing changed: {config}");

    let (status, answer) = patch(&format!("127.0.0.1:{admin}"), "Origin: http://evil.example\r\n");
    assert_eq!(status, 403, "a change from another site: {answer}");
    let (status, _) = patch(&format!("127.0.0.1:{admin}"), "Sec-Fetch-Site: cross-site\r\n");
    assert_eq!(status, 403);
    // A text/plain POST needs no preflight: refused all the same.
    let (status, _) = raw(
        admin,
        &format!(
            "POST /api/v1/sessions/1/capture HTTP/1.1\r\nHost: localhost:{admin}\r\nOrigin: https://evil.example\r\n\
             Content-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 403);

    for host in [format!("localhost:{admin}"), format!("127.0.0.1:{admin}"), format!("[::1]:{admin}")] {
        let (status, answer) = raw(admin, &format!("GET /livez HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"));
        assert_eq!(status, 200, "{host}: {answer}");
    }
    let (status, answer) = patch(&format!("127.0.0.1:{admin}"), &format!("Origin: http://127.0.0.1:{admin}\r\n"));
    assert_eq!(status, 200, "the dashboard's own change: {answer}");
}

fn app(token: &str, extra: &[&str]) -> axum::Router {
    let mut args = vec!["-key", "k", "-admin-token", token];
    args.extend_from_slice(extra);
    let plan =
        Arc::new(Plan::alone(Settings::parse(Role::Server, args.into_iter().map(String::from)).unwrap()).unwrap());
    let (tx, drain) = tokio::sync::watch::channel(false);
    std::mem::forget(tx);
    kcpgate::admin::app(kcpgate::listeners::Listeners::idle(vec![plan]), drain)
}

async fn get(app: &axum::Router, path: &str, from: &str, token: &str) -> axum::response::Response {
    let mut request =
        Request::get(path).header("authorization", format!("Bearer {token}")).body(Body::empty()).unwrap();
    request.extensions_mut().insert(ConnectInfo(from.parse::<SocketAddr>().unwrap()));
    app.clone().oneshot(request).await.unwrap()
}

#[tokio::test]
async fn wrong_tokens_are_throttled_per_source_and_loopback_is_not() {
    let token = "a-token-of-24-characters";
    let app = app(token, &[]);
    let remote = "203.0.113.7:40000";
    for _ in 0..10 {
        assert_eq!(get(&app, "/api/v1/stats", remote, "guess").await.status(), StatusCode::UNAUTHORIZED);
    }
    let throttled = get(&app, "/api/v1/stats", remote, "guess").await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.headers()["retry-after"], "1");
    assert_eq!(
        get(&app, "/api/v1/stats", remote, token).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "a throttled source's token is not even looked at"
    );
    // Every address of the /64 is the same source; another source is not affected.
    assert_eq!(get(&app, "/api/v1/stats", "203.0.113.8:1", token).await.status(), StatusCode::OK);
    for _ in 0..10 {
        get(&app, "/api/v1/stats", "[2001:db8::1]:1", "guess").await;
    }
    assert_eq!(get(&app, "/api/v1/stats", "[2001:db8::99]:1", "guess").await.status(), StatusCode::TOO_MANY_REQUESTS);
    // One attempt a second comes back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&app, "/api/v1/stats", remote, token).await.status(), StatusCode::OK);
    for _ in 0..50 {
        assert_eq!(get(&app, "/api/v1/stats", "127.0.0.1:5000", "guess").await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(get(&app, "/api/v1/stats", "127.0.0.1:5000", token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn event_streams_stop_at_32_and_metrics_may_need_the_token() {
    let token = "a-token-of-24-characters";
    let app = app(token, &["-metrics-auth"]);
    let mut open = Vec::new();
    for _ in 0..32 {
        let response = get(&app, "/api/v1/events?interval_ms=100", "127.0.0.1:1", token).await;
        assert_eq!(response.status(), StatusCode::OK);
        open.push(response);
    }
    let refused = get(&app, "/api/v1/events", "127.0.0.1:1", token).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    open.pop();
    assert_eq!(get(&app, "/api/v1/events", "127.0.0.1:1", token).await.status(), StatusCode::OK, "a place freed");

    assert_eq!(get(&app, "/metrics", "127.0.0.1:1", "wrong").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(get(&app, "/metrics", "127.0.0.1:1", token).await.status(), StatusCode::OK);
    assert_eq!(get(&app, "/livez", "127.0.0.1:1", "wrong").await.status(), StatusCode::OK, "probes stay open");
    let open_metrics = self::app(token, &[]);
    assert_eq!(get(&open_metrics, "/metrics", "127.0.0.1:1", "wrong").await.status(), StatusCode::OK);
}

/// With `-admin-cert`/`-admin-key` the admin API speaks HTTPS, and takes a
/// renewed certificate without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_https_with_the_operators_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = std::env::temp_dir().join(format!("kcpgate-admin-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = wtransport::Identity::self_signed(["localhost"]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    identity.certificate_chain().store_pemfile(&cert).await.unwrap();
    identity.private_key().store_secret_pemfile(&key).await.unwrap();
    let (udp, admin) = (free_udp_port("127.0.0.1"), free_tcp_port());
    let _procs = Procs(vec![kcpgate(&format!(
        "server -l 127.0.0.1:{udp} -t 127.0.0.1:{} -admin 127.0.0.1:{admin} -admin-cert {} -admin-key {}",
        echo_backend(),
        cert.display(),
        key.display()
    ))]);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(identity.certificate_chain().as_slice()[0].der().to_vec()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let deadline = Instant::now() + Duration::from_secs(10);
    let tcp = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", admin)).await {
            Ok(tcp) => break tcp,
            Err(e) => assert!(Instant::now() < deadline, "the admin listener never listened: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("a TLS handshake with the operator's certificate");
    tls.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let plain = admin_get(admin, "/livez");
    assert!(plain.as_ref().is_none_or(|(status, _)| *status != 200), "{plain:?}");
    let _ = std::fs::remove_dir_all(dir);
}
