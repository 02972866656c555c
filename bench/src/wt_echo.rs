//! A plain WebTransport echo server, the baseline a browser's KCP session is
//! measured against: every bidirectional stream's bytes come back on it, and every
//! datagram comes back as one. With `garble`, datagrams come back corrupted (one
//! byte flipped) and each with a junk datagram of random length: bad input for a
//! client's tests. Its certificate is self-signed (valid 13 days); the
//! first line on stdout is `{"port": P, "hash": "<sha-256 hex>"}` for the page's
//! `serverCertificateHashes`.

use std::net::SocketAddr;
use std::time::Duration;

use wtransport::tls::self_signed::time::{Duration as CertDuration, OffsetDateTime};
use wtransport::{Endpoint, Identity, ServerConfig};

pub async fn run(listen: SocketAddr, garble: bool) -> std::io::Result<()> {
    let not_before = OffsetDateTime::now_utc() - CertDuration::hours(1);
    let identity = Identity::self_signed_builder()
        .subject_alt_names(["localhost", "127.0.0.1", "::1"])
        .validity_period(not_before, not_before + CertDuration::days(13))
        .build()
        .map_err(std::io::Error::other)?;
    let hash: String =
        identity.certificate_chain().as_slice()[0].hash().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let config = ServerConfig::builder()
        .with_bind_address(listen)
        .with_identity(identity)
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .build();
    let endpoint = Endpoint::server(config)?;
    let port = endpoint.local_addr()?.port();
    println!("{{\"port\": {port}, \"hash\": \"{hash}\"}}");
    loop {
        let incoming = endpoint.accept().await;
        tokio::spawn(async move {
            let Ok(request) = incoming.await else { return };
            let Ok(conn) = request.accept().await else { return };
            loop {
                tokio::select! {
                    stream = conn.accept_bi() => {
                        let Ok((mut send, mut recv)) = stream else { return };
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 64 * 1024];
                            while let Ok(Some(n)) = recv.read(&mut buf).await {
                                if send.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                            let _ = send.finish().await;
                        });
                    }
                    datagram = conn.receive_datagram() => {
                        let Ok(d) = datagram else { return };
                        if garble {
                            let (flipped, junk) = garbled(&d.payload());
                            let _ = conn.send_datagram(flipped);
                            let _ = conn.send_datagram(junk);
                        } else {
                            let _ = conn.send_datagram(d.payload());
                        }
                    }
                }
            }
        });
    }
}

/// `datagram` with one byte flipped, and a junk datagram of random length.
fn garbled(datagram: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use rand::Rng;
    let mut rng = rand::rng();
    let mut flipped = datagram.to_vec();
    if !flipped.is_empty() {
        let at = rng.random_range(0..flipped.len());
        flipped[at] ^= 0x55;
    }
    let junk: Vec<u8> = (0..rng.random_range(0..1200)).map(|_| rng.random()).collect();
    (flipped, junk)
}
