//! What the admin listener serves to browsers: the WebTransport listener's
//! certificate hashes (for `serverCertificateHashes`) and the demo page with the
//! browser module, embedded at build time.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use utoipa::ToSchema;

use super::{Problem, Shared};

include!(concat!(env!("OUT_DIR"), "/demo_assets.rs"));

/// How a page reaches the WebTransport listener.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"port": 4433, "hashes": [{"algorithm": "sha-256", "value": "4f1c3d5e0c1b8a7d6e5f40312a1b0c9d8e7f6a5b4c3d2e1f00112233445566aa"}], "expires_in_seconds": 1119600}))]
pub struct WebTransportCertificate {
    /// The listener's UDP port: pages connect to `https://<this host>:<port>/`.
    pub port: u16,
    /// SHA-256 hashes of the self-signed certificates a page may pass as
    /// `serverCertificateHashes`, the current one first. Empty when the operator's
    /// certificate is in use (browsers trust it on their own).
    pub hashes: Vec<CertificateHash>,
    /// Seconds until the current self-signed certificate expires (it is replaced a
    /// day before); null with the operator's certificate.
    pub expires_in_seconds: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CertificateHash {
    #[schema(example = "sha-256")]
    pub algorithm: &'static str,
    /// Lowercase hex.
    pub value: String,
}

/// The WebTransport listener's port and certificate hashes. Public, so that a
/// game page can fetch them before it connects.
#[utoipa::path(
    get,
    path = "/webtransport/certificate",
    tag = "browser",
    responses(
        (status = 200, description = "The listener's port and certificate hashes", body = WebTransportCertificate),
        (status = 404, description = "This gateway has no WebTransport listener", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn webtransport_certificate(State(state): State<Shared>) -> Response {
    let published = state.plan.webtransport.read().expect("published lock");
    let Some(port) = published.port else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "this gateway has no WebTransport listener: start kcpgate server with -webtransport ADDR, e.g. -webtransport :4433",
        )
        .into_response();
    };
    let hashes = published
        .hashes
        .iter()
        .map(|h| CertificateHash { algorithm: "sha-256", value: crate::runtime::hex(h) })
        .collect();
    let expires_in_seconds =
        published.expires.map(|t| t.duration_since(std::time::SystemTime::now()).map_or(0, |d| d.as_secs()));
    let body = WebTransportCertificate { port, hashes, expires_in_seconds };
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// What the dashboard's pages may load: only their own files and the same
/// origin's API (and the browser module for the inspector, compiled in place).
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard, the demo page and their files, outside the API document.
pub fn browser_routes() -> Router<Shared> {
    Router::new()
        .route("/", get(|| async { dashboard_file("index.html") }))
        .route(
            "/assets/{file}",
            get(|Path(file): Path<String>| async move { dashboard_file(&format!("assets/{file}")) }),
        )
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route("/demo/", get(|| async { demo_file("index.html") }))
        .route("/demo/{file}", get(|Path(file): Path<String>| async move { demo_file(&file) }))
}

fn dashboard_file(name: &str) -> Response {
    let Some((_, kind, bytes)) = DASHBOARD.iter().find(|(n, _, _)| *n == name) else {
        let detail = if DASHBOARD.is_empty() {
            "this kcpgate was built without the dashboard: web-ui/dist is missing; run (cd web-ui && npm ci && npm run build), then build kcpgate again".to_string()
        } else {
            format!("no such file: /{name}")
        };
        return Problem::new(StatusCode::NOT_FOUND, detail).into_response();
    };
    // The page itself is checked each time; its assets are named by their hash.
    let cache = if name == "index.html" { "no-cache" } else { "public, max-age=31536000, immutable" };
    (
        [
            (header::CONTENT_TYPE, *kind),
            (header::CACHE_CONTROL, cache),
            (header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        *bytes,
    )
        .into_response()
}

fn demo_file(name: &str) -> Response {
    if !DEMO.iter().any(|(n, _, _)| *n == "kcpgate_wasm_bg.wasm") {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this kcpgate was built without the browser module: run wasm/build, then build kcpgate again",
        )
        .into_response();
    }
    match DEMO.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, bytes)) => {
            ([(header::CONTENT_TYPE, *kind), (header::CACHE_CONTROL, "no-cache")], *bytes).into_response()
        }
        None => Problem::new(StatusCode::NOT_FOUND, format!("no such file: /demo/{name}")).into_response(),
    }
}
