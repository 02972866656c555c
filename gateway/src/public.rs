//! The public listener (`-public`): what a game page, on whatever site it is
//! served from, needs to reach the WebTransport listener: its address and
//! certificate hashes, the browser module, and the demo page. It is apart from
//! the admin listener, so players never need the admin API, and it answers CORS
//! (with preflight) for the origins `-webtransport-origin` allows: every origin
//! when that is empty. With `-public-cert`/`-public-key` it serves HTTPS, so that
//! an https page can fetch from it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::admin::Problem;
use crate::assets::{self, DEMO};
use crate::runtime::Plan;

/// How a page reaches the WebTransport listener (`GET /webtransport/certificate`).
#[derive(Debug, Serialize)]
pub struct WebTransportCertificate {
    /// Where to connect: `https://host:port/` (append `messages` for plain KCP).
    /// The host is `-webtransport-advertise`'s, else the one the page asked this
    /// listener by.
    pub url: String,
    /// The port of `url`.
    pub port: u16,
    /// SHA-256 hashes of the self-signed certificates a page may pass as
    /// `serverCertificateHashes`, the current one first. Empty with the operator's
    /// certificate (browsers trust it on their own).
    pub hashes: Vec<CertificateHash>,
    /// Seconds until the current self-signed certificate expires (it is replaced a
    /// day before); null with the operator's certificate.
    pub expires_in_seconds: Option<u64>,
}

/// A certificate hash as `serverCertificateHashes` takes it.
#[derive(Debug, Serialize)]
pub struct CertificateHash {
    /// Always `sha-256`.
    pub algorithm: &'static str,
    /// Lowercase hex.
    pub value: String,
}

/// A page may cache a preflight's answer this long.
const PREFLIGHT_MAX_AGE: &str = "600";
/// Connections the public listener holds at most (fewer under a low file limit).
const PUBLIC_CONNECTIONS: usize = 4096;

/// What every handler shares: the settings it reads, parsed once at bind.
struct PublicState {
    shared: Arc<crate::runtime::Shared>,
    /// Origins allowed; empty allows every origin.
    origins: Vec<String>,
    /// `-webtransport-advertise`: (host, empty for the one the page asked; port).
    advertised: Option<(String, u16)>,
}

type Public = Arc<PublicState>;

/// The public application.
fn app(state: Public) -> Router {
    Router::new()
        .route("/webtransport/certificate", get(webtransport_certificate))
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route("/demo/", get(|| async { demo_file("index.html") }))
        .route("/demo/{file}", get(|Path(file): Path<String>| async move { demo_file(&file) }))
        .route("/module/{file}", get(|Path(file): Path<String>| async move { assets::module_file(&file) }))
        .fallback(|request: Request| async move {
            let path = request.uri().path().to_string();
            Problem::new(StatusCode::NOT_FOUND, format!("no such resource here: {path} (this is kcpgate's public listener for game pages; the admin API has an address of its own)"))
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), cors))
        .with_state(state)
}

/// CORS for every answer: a preflight is answered here; a request from an origin
/// not allowed is refused with 403 before it reaches a route; an allowed origin
/// gets `Access-Control-Allow-Origin` (`*` when every origin is).
async fn cors(State(state): State<Public>, request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_string);
    let allowed = match &origin {
        None => true, // not a cross-origin browser request
        Some(o) => state.origins.is_empty() || state.origins.iter().any(|a| a == o),
    };
    if !allowed {
        let origin = origin.unwrap_or_default();
        debug!(%origin, "public listener: origin not allowed");
        let mut refused = Problem::new(
            StatusCode::FORBIDDEN,
            format!("origin {origin} is not allowed: add it to the gateway's -webtransport-origin"),
        )
        .into_response();
        refused.headers_mut().insert(header::VARY, HeaderValue::from_static("Origin"));
        return refused;
    }
    let preflight = request.method() == Method::OPTIONS;
    let requested_headers = request.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
    let mut response = if preflight {
        let mut answer = StatusCode::NO_CONTENT.into_response();
        let headers = answer.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD, OPTIONS"));
        if let Some(requested) = requested_headers {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
        }
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(PREFLIGHT_MAX_AGE));
        answer
    } else {
        next.run(request).await
    };
    allow_origin(response.headers_mut(), origin.as_deref(), state.origins.is_empty());
    response
}

fn allow_origin(headers: &mut HeaderMap, origin: Option<&str>, any: bool) {
    if any {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    } else if let Some(value) = origin.and_then(|o| HeaderValue::from_str(o).ok()) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    // The answer depends on the origin unless every origin gets the same.
    if !any {
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// The WebTransport listener's address and certificate hashes.
async fn webtransport_certificate(State(state): State<Public>, headers: HeaderMap) -> Response {
    let published = state.shared.webtransport.read().expect("published lock");
    let Some(port) = published.port else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "this gateway has no WebTransport listener: start kcpgate server with -webtransport ADDR, e.g. -webtransport :4433",
        )
        .into_response();
    };
    let (host, port) = match &state.advertised {
        Some((host, advertised_port)) if !host.is_empty() => (host.clone(), *advertised_port),
        Some((_, advertised_port)) => (asked_host(&headers), *advertised_port),
        None => (asked_host(&headers), port),
    };
    let hashes = published
        .hashes
        .iter()
        .map(|h| CertificateHash { algorithm: "sha-256", value: crate::runtime::hex(h) })
        .collect();
    let expires_in_seconds =
        published.expires.map(|t| t.duration_since(std::time::SystemTime::now()).map_or(0, |d| d.as_secs()));
    let body = WebTransportCertificate { url: format!("https://{host}:{port}/"), port, hashes, expires_in_seconds };
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// The host part of the request's `Host` header (an IPv6 address keeps its
/// brackets); `localhost` when it has none a URL could carry.
fn asked_host(headers: &HeaderMap) -> String {
    let authority = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let host = crate::http::host_of(authority);
    if crate::config::is_url_host(host) {
        host.to_string()
    } else {
        "localhost".to_string()
    }
}

fn demo_file(name: &str) -> Response {
    assets::serve(DEMO, name, &format!("/demo/{name}"), "no-cache", &[(header::REFERRER_POLICY, "no-referrer")])
}

/// A bound public listener: plain TCP, or TCP with TLS, and what it serves from.
pub struct PublicListener {
    server: crate::http::Server,
    state: Public,
}

impl PublicListener {
    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.server.local_addr()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        self.server.scheme()
    }
}

/// Binds `-public` (with TLS when `-public-cert` is set) for `plan`; `None` when
/// it is off.
pub async fn bind(plan: &Arc<Plan>) -> std::io::Result<Option<PublicListener>> {
    let settings = &plan.settings;
    let invalid = |e: crate::config::ConfigError| std::io::Error::other(e.0);
    let Some(addr) = settings.public_addr().map_err(invalid)? else {
        return Ok(None);
    };
    let origins = settings.webtransport_origins().map_err(invalid)?;
    let advertised = settings.webtransport_advertised().map_err(invalid)?;
    let state = Arc::new(PublicState { shared: plan.shared.clone(), origins, advertised });
    let tls = if settings.public_cert.is_empty() {
        None
    } else {
        Some(crate::http::Tls::load(&settings.public_cert, &settings.public_key, "-public-cert / -public-key")?)
    };
    let tcp = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot listen for game pages on TCP {addr}: {e}; choose another address with -public, or -public off"
            ),
        )
    })?;
    let server = crate::http::Server {
        tcp,
        tls,
        cap: crate::http::connection_cap(PUBLIC_CONNECTIONS),
        counters: plan.shared.http_counters.public.clone(),
        name: "public listener",
    };
    Ok(Some(PublicListener { server, state }))
}

/// Serves game pages on `listener` until the process ends.
pub async fn serve(listener: PublicListener) {
    let app = app(listener.state);
    listener.server.serve(app).await;
}

/// Logs where game pages find the gateway.
pub fn announce(listener: &PublicListener) {
    if let Ok(at) = listener.local_addr() {
        info!("game pages on {}://{at}: /webtransport/certificate, /module/, /demo/", listener.scheme());
    }
}
