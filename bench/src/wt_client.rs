//! A KCP client over WebTransport datagrams, as a browser runs it: the core's
//! endpoint drives one session over one WebTransport session. For the isolation
//! check, which needs hundreds of them without a browser.

use std::sync::Arc;
use std::time::Duration;

use kcpgate_core::crypto::{Method, PacketCrypto};
use kcpgate_core::endpoint::Endpoint;
use kcpgate_core::kcp::Mode;
use kcpgate_core::settings::SessionSettings;
use kcpgate_core::smux::{Read, Role};
use tokio::time::Instant;

/// What one session sends and expects.
pub struct Job<'a> {
    pub key: &'a str,
    /// Seeds the session's conversation id and nonces.
    pub seed: u64,
    pub upload: &'a [u8],
    /// Bytes expected back; 0 waits for the stream's end instead.
    pub want: usize,
    /// Whether to end the stream's sending side once `upload` is written.
    pub finish: bool,
    pub timeout: Duration,
}

/// Sends `upload` on one stream of a new KCP session over `conn`, hands the
/// `want` bytes that come back (fewer if the stream ends first) to `done`, and
/// keeps the session alive until `release` turns true. The server must run
/// `-crypt aes -mode fast3` with `key`, FEC 10/3 and compression on.
pub async fn exchange(
    conn: &wtransport::Connection,
    job: Job<'_>,
    done: tokio::sync::oneshot::Sender<Result<Vec<u8>, String>>,
    mut release: tokio::sync::watch::Receiver<bool>,
) {
    let mut done = Some(done);
    if let Err(e) = run(conn, &job, &mut done, &mut release).await {
        if let Some(done) = done.take() {
            let _ = done.send(Err(e));
        }
    }
}

/// [`exchange`]; `done` is taken when the reply is complete.
async fn run(
    conn: &wtransport::Connection,
    job: &Job<'_>,
    done: &mut Option<tokio::sync::oneshot::Sender<Result<Vec<u8>, String>>>,
    release: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let Job { key, seed, upload, want, finish: end_upload, timeout } = *job;
    let mtu = conn.max_datagram_size().unwrap_or(1200).min(1350);
    let mut settings = SessionSettings::kcptun(Role::Client);
    settings.mode = Some(Mode::Fast3);
    settings.set_number("mtu", mtu as i64).map_err(|e| e.to_string())?;
    let config = settings.endpoint_config(key).map_err(|e| e.to_string())?;
    let crypto = Arc::new(PacketCrypto::from_passphrase(Method::Aes256, key));
    let mut endpoint_seed = [0u8; 32];
    endpoint_seed[..8].copy_from_slice(&seed.to_le_bytes());
    let mut ep: Endpoint<()> = Endpoint::new(Role::Client, config, crypto, endpoint_seed).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u32;
    let id = ep.connect(now(), ()).ok_or("no session")?;
    let sid = ep.open_stream(now(), id).map_err(|e| e.to_string())?;
    let (mut written, mut reply) = (0usize, Vec::with_capacity(want));
    let (mut out, mut buf) = (Vec::new(), vec![0u8; 64 * 1024]);
    let mut finished = false;
    loop {
        if finished && *release.borrow() {
            return Ok(());
        }
        if !finished && start.elapsed() > timeout {
            return Err(format!("{} of {want} bytes back after {timeout:?}", reply.len()));
        }
        let t = now();
        if written < upload.len() {
            written += ep.write(id, sid, &upload[written..]).map_err(|e| e.to_string())?;
            if written == upload.len() && end_upload {
                ep.finish(t, id, sid).map_err(|e| e.to_string())?;
            }
        }
        if ep.poll_timeout().is_some_and(|d| (t.wrapping_sub(d) as i32) >= 0) {
            ep.handle_timeout(t);
        }
        while ep.poll_event().is_some() {}
        while !finished {
            match ep.read(t, id, sid, &mut buf) {
                Ok(Read::Data(n)) => reply.extend_from_slice(&buf[..n]),
                Ok(Read::Eof) => finished = true,
                Ok(Read::WouldBlock) => break,
                Err(e) => return Err(e.to_string()),
            }
            if want > 0 && reply.len() >= want {
                finished = true;
            }
            if finished {
                // Held open (keep-alives and all) until released.
                if let Some(done) = done.take() {
                    let _ = done.send(Ok(std::mem::take(&mut reply)));
                }
            }
        }
        while let Some(tx) = ep.poll_transmit(t, 1, &mut out) {
            // A full datagram queue drops it, as the network would.
            let _ = conn.send_datagram(&out[..tx.size]);
        }
        let wait = ep.poll_timeout().map_or(10, |d| d.wrapping_sub(now()) as i32).clamp(1, 10) as u64;
        tokio::select! {
            d = conn.receive_datagram() => {
                let mut d = d.map_err(|e| format!("WebTransport session: {e}"))?.payload().to_vec();
                ep.handle_datagram(now(), &(), &mut d);
            }
            () = tokio::time::sleep(Duration::from_millis(wait)) => {}
            _ = release.changed(), if finished => {}
        }
    }
}
