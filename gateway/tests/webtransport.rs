//! The WebTransport listener as a non-browser client meets it: the operator's
//! certificate files, the self-signed certificate's published hash, allowed
//! origins and paths. (The browser module's own tests drive it from Chromium.)

mod support;

use std::time::Duration;

use support::{admin_get, echo_backend, free_tcp_port, free_udp_port, kcpgate, wait_ready, Procs};
use wtransport::endpoint::ConnectOptions;
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Endpoint, Identity};

fn get(port: u16, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = admin_get(port, path).expect("the listener answers");
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// Opens a WebTransport session to `port` at `path` with `origin`, trusting
/// `hash`; the error's text when the gateway refuses.
async fn open(port: u16, path: &str, origin: Option<&str>, hash: [u8; 32]) -> Result<(), String> {
    let config =
        ClientConfig::builder().with_bind_default().with_server_certificate_hashes([Sha256Digest::new(hash)]).build();
    let client = Endpoint::client(config).expect("a client endpoint");
    let mut options = ConnectOptions::builder(format!("https://127.0.0.1:{port}{path}"));
    if let Some(origin) = origin {
        options = options.add_header("origin", origin);
    }
    let connecting = client.connect(options.build());
    match tokio::time::timeout(Duration::from_secs(5), connecting).await {
        Ok(Ok(conn)) => {
            conn.close(0u32.into(), b"");
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in 5 s".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_certificate_files_are_served_renewed_without_a_restart_and_no_hash_is_published() {
    let dir = std::env::temp_dir().join(format!("kcpgate-wt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = Identity::self_signed(["localhost", "127.0.0.1"]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    identity.certificate_chain().store_pemfile(&cert).await.unwrap();
    identity.private_key().store_secret_pemfile(&key).await.unwrap();
    let hash = *identity.certificate_chain().as_slice()[0].hash().as_ref();

    let (udp, wt, admin, public) =
        (free_udp_port("127.0.0.1"), free_udp_port("127.0.0.1"), free_tcp_port(), free_tcp_port());
    let target = echo_backend();
    let _procs = Procs(vec![kcpgate(&format!(
        "server -l 127.0.0.1:{udp} -t 127.0.0.1:{target} -admin 127.0.0.1:{admin} -webtransport 127.0.0.1:{wt} \
         -webtransport-cert {} -webtransport-key {} -public 127.0.0.1:{public}",
        cert.display(),
        key.display()
    ))]);
    wait_ready(admin);
    let (status, published) = get(public, "/webtransport/certificate");
    assert_eq!(status, 200);
    assert_eq!(published["port"], wt);
    assert_eq!(published["url"], format!("https://127.0.0.1:{wt}/"), "the host the page asked, the listener's port");
    assert_eq!(published["hashes"], serde_json::json!([]), "the operator's certificate needs no hash");
    assert!(published["expires_in_seconds"].is_null());
    open(wt, "/", None, hash).await.expect("the operator's certificate is the one presented");

    // A renewed certificate is taken without a restart.
    let renewed = Identity::self_signed(["localhost", "127.0.0.1"]).unwrap();
    renewed.certificate_chain().store_pemfile(&cert).await.unwrap();
    renewed.private_key().store_secret_pemfile(&key).await.unwrap();
    let renewed_hash = *renewed.certificate_chain().as_slice()[0].hash().as_ref();
    let started = std::time::Instant::now();
    while open(wt, "/", None, renewed_hash).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(15), "the renewed certificate was never presented");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(open(wt, "/", None, hash).await.is_err(), "the old certificate is no longer presented");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_and_paths_not_served_are_refused_and_counted() {
    let (udp, wt, admin, public) =
        (free_udp_port("127.0.0.1"), free_udp_port("127.0.0.1"), free_tcp_port(), free_tcp_port());
    let target = echo_backend();
    let _procs = Procs(vec![kcpgate(&format!(
        "server -l 127.0.0.1:{udp} -t 127.0.0.1:{target} -admin 127.0.0.1:{admin} -webtransport 127.0.0.1:{wt} \
         -webtransport-origin https://game.example,https://staging.example -public 127.0.0.1:{public}"
    ))]);
    wait_ready(admin);
    let (_, published) = get(public, "/webtransport/certificate");
    let hashes = published["hashes"].as_array().unwrap();
    assert_eq!(hashes.len(), 1, "{published}");
    assert_eq!(hashes[0]["algorithm"], "sha-256");
    let expires = published["expires_in_seconds"].as_u64().unwrap();
    assert!((12 * 86_400..14 * 86_400).contains(&expires), "valid under 14 days: {expires} s");
    let hash = support::hex_hash(hashes[0]["value"].as_str().expect("a hex hash"));

    open(wt, "/", Some("https://game.example"), hash).await.expect("an allowed origin");
    open(wt, "/messages", Some("https://staging.example"), hash).await.expect("an allowed origin, plain KCP");
    // The refusal's status (403, 404) does not reach a client's error; the
    // counters say which rule refused.
    for (path, origin) in [("/", Some("https://evil.example")), ("/", None), ("/admin", Some("https://game.example"))] {
        let refused = open(wt, path, origin, hash).await.expect_err("refused");
        assert!(refused.contains("rejected"), "{path} {origin:?}: {refused}");
    }
    let (_, metrics) = admin_get(admin, "/metrics").unwrap();
    assert!(metrics.contains(r#"kcpgate_webtransport_refused_sessions_total{reason="origin"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"kcpgate_webtransport_refused_sessions_total{reason="path"} 1"#), "{metrics}");
}

/// (status, headers, body) of `method path` on `port` with an `Origin` header.
fn from_origin(method: &str, port: u16, path: &str, origin: Option<&str>) -> (u16, ureq::http::HeaderMap, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let url = format!("http://127.0.0.1:{port}{path}");
    let request = ureq::http::Request::builder().method(method).uri(&url);
    let request = match origin {
        Some(o) => request.header("Origin", o).header("Access-Control-Request-Method", "GET"),
        None => request,
    };
    let mut response = agent.run(request.body(()).unwrap()).expect("the public listener answers");
    let body = response.body_mut().read_to_string().unwrap_or_default();
    (response.status().as_u16(), response.headers().clone(), body)
}

/// The public listener: what a game page on another site needs, with CORS for the
/// allowed origins (preflight included), and nothing of the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_listener_answers_cors_for_allowed_origins_and_serves_no_admin_api() {
    let (udp, wt, admin, open, strict) =
        (free_udp_port("127.0.0.1"), free_udp_port("127.0.0.1"), free_tcp_port(), free_tcp_port(), free_tcp_port());
    let wt2 = free_udp_port("127.0.0.1");
    let target = echo_backend();
    let _procs = Procs(vec![
        kcpgate(&format!(
            "server -l 127.0.0.1:{udp} -t 127.0.0.1:{target} -admin 127.0.0.1:{admin} -webtransport 127.0.0.1:{wt} \
             -public 127.0.0.1:{open} -webtransport-advertise :14433"
        )),
        kcpgate(&format!(
            "server -l 127.0.0.1:{} -t 127.0.0.1:{target} -admin off -webtransport 127.0.0.1:{wt2} \
             -public 127.0.0.1:{strict} -webtransport-origin https://game.example \
             -webtransport-advertise play.game.example:443",
            free_udp_port("127.0.0.1")
        )),
    ]);
    wait_ready(admin);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while admin_get(strict, "/webtransport/certificate").is_none() {
        assert!(std::time::Instant::now() < deadline, "the second gateway's public listener");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every origin allowed: `*`, and the advertised port on the host the page asked.
    let (status, headers, body) = from_origin("GET", open, "/webtransport/certificate", Some("https://any.example"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["access-control-allow-origin"], "*");
    let published: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(published["url"], "https://127.0.0.1:14433/", "{published}");
    assert_eq!(published["port"], 14433);
    let (status, headers, _) = from_origin("OPTIONS", open, "/webtransport/certificate", Some("https://any.example"));
    assert_eq!(status, 204, "a preflight is answered");
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(headers["access-control-allow-methods"].to_str().unwrap().contains("GET"));
    // The module a page imports from here is readable cross-origin too.
    let (status, headers, _) = from_origin("GET", open, "/module/kcpgate_wasm.js", Some("https://any.example"));
    assert_eq!(
        (status, &headers["access-control-allow-origin"]),
        (200, &"*".parse::<ureq::http::HeaderValue>().unwrap())
    );

    // Allowed origins only: the origin echoed for an allowed page, 403 for another.
    let (status, headers, body) = from_origin("GET", strict, "/webtransport/certificate", Some("https://game.example"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["access-control-allow-origin"], "https://game.example");
    assert_eq!(headers["vary"], "Origin");
    let published: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(published["url"], "https://play.game.example:443/", "{published}");
    for method in ["GET", "OPTIONS"] {
        let (status, headers, body) =
            from_origin(method, strict, "/webtransport/certificate", Some("https://evil.example"));
        assert_eq!(status, 403, "{method}: {body}");
        assert!(headers.get("access-control-allow-origin").is_none(), "{method}");
        assert!(body.contains("-webtransport-origin"), "{body}");
    }

    // Nothing of the admin API or the dashboard, with or without an origin.
    for path in ["/api/v1/sessions", "/api/v1/config", "/metrics", "/openapi.json", "/", "/readyz"] {
        let (status, _, body) = from_origin("GET", open, path, None);
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, _, _) = from_origin("GET", admin, "/webtransport/certificate", None);
    assert_eq!(status, 404, "the admin listener serves no game page");
}

/// With `-public-cert`/`-public-key` the public listener speaks HTTPS (an https
/// game page can fetch from it), with the operator's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_listener_serves_https_with_the_operators_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = std::env::temp_dir().join(format!("kcpgate-public-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = Identity::self_signed(["localhost"]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    identity.certificate_chain().store_pemfile(&cert).await.unwrap();
    identity.private_key().store_secret_pemfile(&key).await.unwrap();
    let (udp, wt, admin, public) =
        (free_udp_port("127.0.0.1"), free_udp_port("127.0.0.1"), free_tcp_port(), free_tcp_port());
    let _procs = Procs(vec![kcpgate(&format!(
        "server -l 127.0.0.1:{udp} -t 127.0.0.1:{} -admin 127.0.0.1:{admin} -webtransport 127.0.0.1:{wt} \
         -public 127.0.0.1:{public} -public-cert {} -public-key {}",
        echo_backend(),
        cert.display(),
        key.display()
    ))]);
    wait_ready(admin);

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(identity.certificate_chain().as_slice()[0].der().to_vec()))
        .unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", public)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("a TLS handshake with the operator's certificate");
    tls.write_all(b"GET /webtransport/certificate HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&format!("\"url\":\"https://localhost:{wt}/\"")), "{answer}");
    // Plain HTTP on that port gets no answer a browser would take.
    let plain = admin_get(public, "/webtransport/certificate");
    assert!(plain.as_ref().is_none_or(|(status, _)| *status != 200), "{plain:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `kcpgate_webtransport_refused_sessions_total{reason}` from /metrics.
fn refused(admin: u16, reason: &str) -> u64 {
    support::metric(admin, &format!("kcpgate_webtransport_refused_sessions_total{{reason=\"{reason}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_from_one_address_stop_at_the_per_address_cap_and_are_counted() {
    let (udp, wt, admin, public) =
        (free_udp_port("127.0.0.1"), free_udp_port("127.0.0.1"), free_tcp_port(), free_tcp_port());
    let target = echo_backend();
    // The default cap (64) and opening rates (a burst of 500 per source).
    let _procs = Procs(vec![kcpgate(&format!(
        "server -l 127.0.0.1:{udp} -t 127.0.0.1:{target} -admin 127.0.0.1:{admin} -webtransport 127.0.0.1:{wt} \
         -public 127.0.0.1:{public}"
    ))]);
    wait_ready(admin);
    let (_, published) = get(public, "/webtransport/certificate");
    let hash = support::hex_hash(published["hashes"][0]["value"].as_str().unwrap());
    let config =
        ClientConfig::builder().with_bind_default().with_server_certificate_hashes([Sha256Digest::new(hash)]).build();
    // One client socket: every connection from one address and port.
    let client = Endpoint::client(config).expect("a client endpoint");
    let mut held = Vec::new();
    let mut refused_here = 0;
    for batch in 0..10 {
        let attempts = (0..100).map(|_| {
            let connecting = client.connect(format!("https://127.0.0.1:{wt}/"));
            async move { tokio::time::timeout(Duration::from_secs(10), connecting).await }
        });
        for outcome in futures_util::future::join_all(attempts).await {
            match outcome {
                Ok(Ok(conn)) => held.push(conn),
                Ok(Err(_)) => refused_here += 1,
                Err(_) => panic!("batch {batch}: a connection attempt had no answer in 10 s"),
            }
        }
    }
    assert_eq!(held.len(), 64, "the per-address cap holds; {refused_here} refused");
    let counted = refused(admin, "address") + refused(admin, "rate");
    // A client resends its first packet when the refusal is slow to come: each
    // copy is refused and counted again.
    assert!(counted >= 936, "every refusal is counted (address or rate): {counted}");
    // A connection that ends gives its place back.
    held.pop().unwrap().close(0u32.into(), b"");
    let mut reopened = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(conn) = client.connect(format!("https://127.0.0.1:{wt}/")).await {
            reopened = Some(conn);
            break;
        }
    }
    assert!(reopened.is_some(), "a place freed is taken again");
}
