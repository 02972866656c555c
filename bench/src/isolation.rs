//! Isolation under many sessions: thousands of concurrent KCP sessions from Debian's
//! kcptun and kcpgate clients, one stream each, every stream carrying a payload of
//! its own both ways; the backend checks each connection received exactly its
//! stream's bytes, and each stream checks it got exactly its own reply. Run with
//! the server bound to 127.0.0.1, 0.0.0.0 and [::] (reached over IPv4, IPv6 and
//! v4-mapped addresses), since address handling bugs hide on 127.0.0.1.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::local::{admin_json, free_tcp_port, free_udp_port, spawn, wait_listening, Claims};
use crate::traffic::Pattern;

/// A connection's id goes first on the wire, then its payload: the backend knows
/// from the id what every following byte must be.
const REPLY: u64 = 0x5245_504C_5900_0000;

fn payload(id: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Pattern::new(id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5).fill(&mut v);
    v
}

/// One server binding and how each client reaches it.
struct Binding {
    listen: &'static str,
    kcptun_dials: &'static str,
    kcpgate_dials: &'static str,
}

const BINDINGS: [Binding; 3] = [
    Binding { listen: "127.0.0.1", kcptun_dials: "127.0.0.1", kcpgate_dials: "127.0.0.1" },
    // Other loopback addresses than the usual one: replies must come from them.
    Binding { listen: "0.0.0.0", kcptun_dials: "127.0.0.2", kcpgate_dials: "127.0.0.3" },
    // IPv6, and IPv4 through the dual-stack socket (v4-mapped addresses).
    Binding { listen: "[::]", kcptun_dials: "[::1]", kcpgate_dials: "127.0.0.2" },
];

/// Runs the check for every binding.
pub fn run(kcpgate: &Path, sessions: usize, bytes: usize, webtransport: usize) -> Result<Claims, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut claims = Claims::new("");
    for b in &BINDINGS {
        let started = Instant::now();
        match rt.block_on(one_binding(kcpgate, b, sessions, bytes, webtransport)) {
            Ok(line) => claims.claim(true, format!("{line} in {:.1} s", started.elapsed().as_secs_f64())),
            Err(e) => claims.claim(false, format!("server on {}: {e}", b.listen)),
        }
    }
    Ok(claims)
}

async fn one_binding(
    kcpgate: &Path,
    b: &Binding,
    sessions: usize,
    bytes: usize,
    webtransport: usize,
) -> Result<String, String> {
    // The backend: reads a connection's id and checks every byte after it, then
    // answers with the id's reply payload.
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let backend_addr = backend.local_addr().map_err(|e| e.to_string())?;
    let verified = Arc::new(Mutex::new(HashSet::new()));
    let wrong = Arc::new(Mutex::new(Vec::<String>::new()));
    let accept = {
        let (verified, wrong) = (verified.clone(), wrong.clone());
        tokio::spawn(async move {
            while let Ok((mut c, _)) = backend.accept().await {
                let (verified, wrong) = (verified.clone(), wrong.clone());
                tokio::spawn(async move {
                    let mut id = [0u8; 8];
                    if c.read_exact(&mut id).await.is_err() {
                        return;
                    }
                    let id = u64::from_le_bytes(id);
                    let mut got = vec![0u8; bytes];
                    let read = c.read_exact(&mut got).await;
                    if read.is_err() || got != payload(id, bytes) {
                        wrong.lock().unwrap().push(format!("backend connection of stream {id} got other bytes"));
                        return;
                    }
                    verified.lock().unwrap().insert(id);
                    let _ = c.write_all(&payload(id ^ REPLY, bytes)).await;
                    // Held until the stream closes, so every session stays busy.
                    let _ = c.read(&mut [0u8; 1]).await;
                });
            }
        })
    };
    let host = b.listen.replace(['[', ']'], "");
    let (udp, wt, admin, public) = (free_udp_port(&host), free_udp_port(&host), free_tcp_port(), free_tcp_port());
    let flags = "-key isolation -crypt aes -mode fast3";
    let _server = spawn(
        kcpgate,
        &format!(
            "server -l {listen}:{udp} -t {backend_addr} {flags} -open-rate 0 -open-rate-per-source 0 \
             -webtransport-per-address 0 \
             -admin 127.0.0.1:{admin} -webtransport {listen}:{wt} -public 127.0.0.1:{public} -quiet",
            listen = b.listen
        ),
    )?;
    let halves = [sessions / 2, sessions - sessions / 2];
    let (tun_port, gate_port) = (free_tcp_port(), free_tcp_port());
    let _kcptun = spawn(
        "kcptun-client",
        &format!("-l 127.0.0.1:{tun_port} -r {}:{udp} {flags} -conn {} -quiet", b.kcptun_dials, halves[0]),
    )?;
    let _kcpgate = spawn(
        kcpgate,
        &format!("client -l 127.0.0.1:{gate_port} -r {}:{udp} {flags} -conn {} -quiet", b.kcpgate_dials, halves[1]),
    )?;
    wait_listening(tun_port, "kcptun-client")?;
    wait_listening(gate_port, "kcpgate client")?;

    // Every stream first: opened in waves (the clients' accept queues are finite),
    // each to the next session of its client, all held open until the end.
    let mut streams = Vec::with_capacity(sessions);
    for wave in (0..sessions as u64).collect::<Vec<_>>().chunks(250) {
        let opened: Vec<_> = wave
            .iter()
            .map(|&id| {
                let port = if id % 2 == 0 { tun_port } else { gate_port };
                tokio::spawn(async move {
                    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                    c.write_all(&id.to_le_bytes()).await?;
                    std::io::Result::Ok((id, c))
                })
            })
            .collect();
        for s in opened {
            streams.push(s.await.map_err(|e| e.to_string())?.map_err(|e| format!("opening a stream: {e}"))?);
        }
    }
    // KCP over WebTransport beside them, one session per WebTransport session,
    // ids after the UDP streams'.
    let hash = crate::local::certificate_hash(public).await?;
    let wt_dial = format!("https://{}:{wt}/", b.kcpgate_dials);
    // Each starts its KCP session as soon as it is open, as a page does: the
    // gateway closes a WebTransport session that opens none within 30 s, and
    // opening hundreds under this load takes longer than that.
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let mut wt_transfers = Vec::with_capacity(webtransport);
    for i in 0..webtransport {
        let config = wtransport::ClientConfig::builder()
            .with_bind_default()
            .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
            .build();
        let endpoint = wtransport::Endpoint::client(config).map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(Duration::from_secs(10), endpoint.connect(&wt_dial))
            .await
            .map_err(|_| format!("no WebTransport session from {wt_dial} in 10 s"))?
            .map_err(|e| format!("WebTransport to {wt_dial}: {e}"))?;
        let id = (sessions + i) as u64;
        let release = release.clone();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let session = tokio::spawn(async move {
            let mut upload = id.to_le_bytes().to_vec();
            upload.extend_from_slice(&payload(id, bytes));
            // The session stays open, and alive, until every one is counted.
            let timeout = Duration::from_secs(120);
            let job = crate::wt_client::Job {
                key: "isolation",
                seed: id,
                upload: &upload,
                want: bytes,
                finish: false,
                timeout,
            };
            crate::wt_client::exchange(&conn, job, done_tx, release).await;
            drop((conn, endpoint));
        });
        wt_transfers.push((id, done, session));
    }
    // Then every payload at once, each checked against its reply.
    let transfers: Vec<_> = streams
        .into_iter()
        .map(|(id, mut c)| {
            tokio::spawn(async move {
                let run = async {
                    c.write_all(&payload(id, bytes)).await?;
                    let mut reply = vec![0u8; bytes];
                    c.read_exact(&mut reply).await?;
                    std::io::Result::Ok(reply == payload(id ^ REPLY, bytes))
                };
                match tokio::time::timeout(Duration::from_secs(120), run).await {
                    Ok(Ok(true)) => Ok(c),
                    Ok(Ok(false)) => Err(format!("stream {id} got another stream's reply")),
                    Ok(Err(e)) => Err(format!("stream {id}: {e}")),
                    Err(_) => Err(format!("stream {id}: no whole reply in 120 s")),
                }
            })
        })
        .collect();
    let mut held = Vec::with_capacity(sessions);
    let mut failures = Vec::new();
    for t in transfers {
        match t.await.map_err(|e| e.to_string())? {
            Ok(c) => held.push(c),
            Err(e) => failures.push(e),
        }
    }
    // Every UDP stream is done and held; so is every WebTransport one after this.
    let mut sessions_wt = Vec::new();
    for (id, done, session) in wt_transfers {
        match done.await {
            Ok(Ok(reply)) if reply == payload(id ^ REPLY, bytes) => {}
            Ok(Ok(reply)) => failures.push(format!("WebTransport stream {id} got {} other bytes", reply.len())),
            Ok(Err(e)) => failures.push(format!("WebTransport stream {id}: {e}")),
            Err(_) => failures.push(format!("WebTransport stream {id}: its task ended")),
        }
        sessions_wt.push(session);
    }
    let open = admin_json(admin, "/api/v1/stats")?["sessions"]["open"].as_u64().unwrap_or(0);
    let _ = release_tx.send(true);
    for s in sessions_wt {
        let _ = s.await;
    }
    drop(held);
    accept.abort();
    failures.extend(wrong.lock().unwrap().iter().cloned());
    let verified = verified.lock().unwrap().len();
    if !failures.is_empty() {
        return Err(format!("{} of {sessions} streams failed, e.g. {}", failures.len(), failures[0]));
    }
    let all = sessions + webtransport;
    if verified != all || open < all as u64 {
        return Err(format!("{verified} backend connections verified, {open} sessions open; want {all} of each"));
    }
    let sockaddr = |host: &str| -> SocketAddr { format!("{host}:{udp}").parse().expect("an address") };
    Ok(format!(
        "server on {}: {open} sessions open at once ({} kcptun via {}, {} kcpgate via {}, {webtransport} over \
         WebTransport via {wt_dial}), {all} streams, {:.1} MB each way, every byte at its own backend connection \
         and back",
        sockaddr(b.listen),
        halves[0],
        sockaddr(b.kcptun_dials),
        halves[1],
        sockaddr(b.kcpgate_dials),
        (all * bytes) as f64 / 1e6
    ))
}
