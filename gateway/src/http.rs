//! The HTTP server both of kcpgate's HTTP listeners run on (the admin API and the
//! public listener for game pages), with the limits a listener open to strangers
//! needs: a time limit on each request's header and on a connection that moves
//! no bytes, and a cap on connections derived from the process's file limit, so
//! that an HTTP listener can never take the descriptors the data path needs.
//! At the cap, the connection that has been quiet longest is closed for the new
//! one: idle connections cannot lock probes and scrapes out.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceExt;
use tracing::debug;
use utoipa::ToSchema;

/// A request's header must arrive within this, from the connection's start or
/// the end of the previous response.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that moves no byte either way for this long is closed (a body
/// that stalls, a client that stops reading).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client may take over the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The share of the file limit each HTTP listener may hold: the two together
/// take at most a quarter, the rest is the data path's (sockets, backend
/// connections).
const SHARE_OF_FILE_LIMIT: u64 = 8;

/// The soft limit on open files, raised to the hard limit (a default soft limit
/// of 1,024 would cap the gateway near 1,000 streams). Returns the limit in
/// effect.
pub fn raise_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 1024 };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// The open-file limit now.
pub fn file_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Connections an HTTP listener may hold at once: an eighth of the file limit,
/// at least 8, at most `most`.
pub fn connection_cap(most: usize) -> usize {
    ((file_limit() / SHARE_OF_FILE_LIMIT) as usize).clamp(8, most)
}

/// What a listener counts, for metrics.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// Connections closed to make room for a new one at the cap.
    pub evicted: AtomicU64,
    /// Connections closed for a header not sent in time or for moving nothing.
    pub timed_out: AtomicU64,
}

/// One open connection: when it last moved a byte, and how to close it.
struct Open {
    last: AtomicU64,
    close: Notify,
}

/// The connections a listener holds.
struct Connections {
    start: Instant,
    open: Mutex<std::collections::HashMap<u64, Arc<Open>>>,
    cap: usize,
}

impl Connections {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Registers a new connection; at the cap, the quietest one is told to close.
    fn enter(&self, id: u64, counters: &ListenerCounters) -> Arc<Open> {
        let entry = Arc::new(Open { last: AtomicU64::new(self.now()), close: Notify::new() });
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.len() >= self.cap {
            let quietest = open.iter().min_by_key(|(_, o)| o.last.load(Ordering::Relaxed)).map(|(&id, _)| id);
            if let Some(victim) = quietest.and_then(|id| open.remove(&id)) {
                victim.close.notify_one();
                counters.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        open.insert(id, entry.clone());
        entry
    }

    fn leave(&self, id: u64) {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&id);
    }
}

/// A stream that notes when it last moved a byte.
struct TimedStream<S> {
    inner: S,
    open: Arc<Open>,
    connections: Arc<Connections>,
}

impl<S> TimedStream<S> {
    fn touch(&self) {
        self.open.last.store(self.connections.now(), Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedStream<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedStream<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(poll, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A listener's TCP socket and what it serves.
pub struct Server {
    /// The bound socket.
    pub tcp: TcpListener,
    /// TLS, when the listener serves HTTPS.
    pub tls: Option<Arc<Tls>>,
    /// Connections held at once.
    pub cap: usize,
    /// What the listener counts.
    pub counters: Arc<ListenerCounters>,
    /// For the log: "admin API", "public listener".
    pub name: &'static str,
}

impl Server {
    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Serves `app` until the process ends. Handlers may read the peer's address
    /// as `ConnectInfo<SocketAddr>`.
    pub async fn serve(self, app: Router) {
        let connections = Arc::new(Connections { start: Instant::now(), open: Mutex::default(), cap: self.cap.max(1) });
        if let Some(tls) = self.tls.clone() {
            tokio::spawn(async move {
                let mut check = tokio::time::interval(CERTIFICATE_CHECK);
                loop {
                    check.tick().await;
                    tls.reload_if_changed();
                }
            });
        }
        let mut next_id = 0u64;
        loop {
            let (stream, remote) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    debug!("{}: accept failed: {e}", self.name);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            next_id += 1;
            let id = next_id;
            let open = connections.enter(id, &self.counters);
            let (connections, app, tls, counters, name) = (
                connections.clone(),
                app.clone(),
                self.tls.as_ref().map(|t| t.current()),
                self.counters.clone(),
                self.name,
            );
            tokio::spawn(async move {
                let tracked = TimedStream { inner: stream, open: open.clone(), connections: connections.clone() };
                let served = async {
                    match tls {
                        None => serve_connection(tracked, remote, app, &counters).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tracked)).await {
                                Ok(Ok(tls)) => serve_connection(tls, remote, app, &counters).await,
                                Ok(Err(e)) => debug!(%remote, "{name}: TLS handshake failed: {e}"),
                                Err(_) => {
                                    counters.timed_out.fetch_add(1, Ordering::Relaxed);
                                    debug!(%remote, "{name}: TLS handshake timed out");
                                }
                            }
                        }
                    }
                };
                let idle = async {
                    loop {
                        let quiet = connections.now().saturating_sub(open.last.load(Ordering::Relaxed));
                        let quiet = Duration::from_millis(quiet);
                        if quiet >= IDLE_TIMEOUT {
                            counters.timed_out.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        tokio::time::sleep(IDLE_TIMEOUT - quiet).await;
                    }
                };
                tokio::select! {
                    () = served => {}
                    () = idle => debug!(%remote, "{name}: connection idle for {IDLE_TIMEOUT:?}, closed"),
                    () = open.close.notified() => debug!(%remote, "{name}: connection closed to make room for a new one"),
                }
                connections.leave(id);
            });
        }
    }
}

/// HTTP/1.1 on one connection, with the header timeout.
async fn serve_connection<S>(stream: S, remote: SocketAddr, app: Router, counters: &ListenerCounters)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        app.clone().oneshot(request)
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        if e.is_timeout() {
            counters.timed_out.fetch_add(1, Ordering::Relaxed);
        }
        debug!(%remote, "HTTP connection ended: {e}");
    }
}

/// The host part of a `Host` header (`name`, `1.2.3.4` or `[::1]`, its port
/// dropped).
pub fn host_of(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => &authority[..i],
        _ => authority,
    }
}

/// How often certificate files are checked for a change (a renewal).
pub const CERTIFICATE_CHECK: Duration = Duration::from_secs(5);

/// When a certificate and its key file were last changed, to notice a renewal.
#[derive(Debug)]
pub struct CertFiles {
    /// The certificate's PEM file.
    pub cert: String,
    /// The private key's PEM file.
    pub key: String,
    seen: Option<[(std::time::SystemTime, u64); 2]>,
}

impl CertFiles {
    /// The files as they are now.
    pub fn new(cert: &str, key: &str) -> CertFiles {
        let mut files = CertFiles { cert: cert.to_string(), key: key.to_string(), seen: None };
        files.seen = files.stamp();
        files
    }

    fn stamp(&self) -> Option<[(std::time::SystemTime, u64); 2]> {
        let of = |path: &str| std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        Some([of(&self.cert)?, of(&self.key)?])
    }

    /// Whether either file changed since the last call (or since [`Self::new`]).
    /// A file that cannot be read now is no change: the old certificate stays.
    pub fn changed(&mut self) -> bool {
        match self.stamp() {
            Some(now) if Some(now) != self.seen => {
                self.seen = Some(now);
                true
            }
            _ => false,
        }
    }
}

/// A listener's TLS: the operator's certificate, read again when its files change
/// (new connections get the new one; open ones keep theirs).
pub struct Tls {
    acceptor: std::sync::RwLock<tokio_rustls::TlsAcceptor>,
    files: Mutex<CertFiles>,
    /// The flags that named the files, for messages ("-public-cert / -public-key").
    flags: &'static str,
}

impl Tls {
    /// The certificate chain and key from PEM files; an error says which is wrong.
    pub fn load(cert: &str, key: &str, flags: &'static str) -> std::io::Result<Arc<Tls>> {
        let acceptor = tls_acceptor(cert, key, flags)?;
        Ok(Arc::new(Tls {
            acceptor: std::sync::RwLock::new(acceptor),
            files: Mutex::new(CertFiles::new(cert, key)),
            flags,
        }))
    }

    fn current(&self) -> tokio_rustls::TlsAcceptor {
        self.acceptor.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Reads the files again if they changed; a pair that does not load is
    /// logged and the certificate in use stays.
    fn reload_if_changed(&self) {
        let mut files = self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !files.changed() {
            return;
        }
        match tls_acceptor(&files.cert, &files.key, self.flags) {
            Ok(acceptor) => {
                *self.acceptor.write().unwrap_or_else(std::sync::PoisonError::into_inner) = acceptor;
                tracing::info!("{}: certificate read again ({})", self.flags, files.cert);
            }
            Err(e) => tracing::warn!("{e}; the certificate in use stays"),
        }
    }
}

/// A TLS acceptor for a PEM certificate chain and key; `flags` names them in
/// errors ("-public-cert / -public-key").
fn tls_acceptor(cert: &str, key: &str, flags: &str) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        std::io::Error::other(format!("cannot load {flags} ({cert}, {key}): {what}: {e}"))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| failed("the certificate chain", &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| failed("the private key", &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| failed("TLS versions", &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| failed("the pair", &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// An error, as RFC 9457 problem details.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no session 42"}))]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the status.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, and what to do about it.
    pub detail: String,
    /// Per-field reasons, for a request body that failed validation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// One wrong field of a request, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldError {
    /// The field's name.
    #[schema(example = "sndwnd")]
    pub field: String,
    /// What is wrong with it.
    #[schema(example = "sndwnd must be between 1 and 65535 segments (got 0)")]
    pub message: String,
}

impl Problem {
    /// A problem document of `status`, saying `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(&self)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"kcpgate\""));
        }
        response
    }
}
