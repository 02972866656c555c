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
    let (status, body) = admin_get(port, path).expect("the admin listener answers");
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
async fn the_operators_certificate_files_are_served_and_no_hash_is_published() {
    let dir = std::env::temp_dir().join(format!("kcpgate-wt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = Identity::self_signed(["localhost", "127.0.0.1"]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    identity.certificate_chain().store_pemfile(&cert).await.unwrap();
    identity.private_key().store_secret_pemfile(&key).await.unwrap();
    let hash = *identity.certificate_chain().as_slice()[0].hash().as_ref();

    let (udp, wt, admin) = (free_udp_port("127.0.0.1"), free_udp_port("127.0.0.1"), free_tcp_port());
    let target = echo_backend();
    let _procs = Procs(vec![kcpgate(&format!(
        "server -l 127.0.0.1:{udp} -t 127.0.0.1:{target} -admin 127.0.0.1:{admin} -webtransport 127.0.0.1:{wt} \
         -webtransport-cert {} -webtransport-key {}",
        cert.display(),
        key.display()
    ))]);
    wait_ready(admin);
    let (status, published) = get(admin, "/webtransport/certificate");
    assert_eq!(status, 200);
    assert_eq!(published["port"], wt);
    assert_eq!(published["hashes"], serde_json::json!([]), "the operator's certificate needs no hash");
    assert!(published["expires_in_seconds"].is_null());
    open(wt, "/", None, hash).await.expect("the operator's certificate is the one presented");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_and_paths_not_served_are_refused_and_counted() {
    let (udp, wt, admin) = (free_udp_port("127.0.0.1"), free_udp_port("127.0.0.1"), free_tcp_port());
    let target = echo_backend();
    let _procs = Procs(vec![kcpgate(&format!(
        "server -l 127.0.0.1:{udp} -t 127.0.0.1:{target} -admin 127.0.0.1:{admin} -webtransport 127.0.0.1:{wt} \
         -webtransport-origin https://game.example,https://staging.example"
    ))]);
    wait_ready(admin);
    let (_, published) = get(admin, "/webtransport/certificate");
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
