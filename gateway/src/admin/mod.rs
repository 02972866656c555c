//! The admin HTTP listener: the REST API under `/api/v1`, Prometheus metrics,
//! health checks and the OpenAPI document.
//!
//! It runs beside the data path and reaches it only through the
//! [`Registry`](crate::control::Registry)'s queries, so a request costs the data path
//! one answer per task and nothing while nobody asks; `/metrics`, which needs no
//! token, is paced (`metrics::ScrapePacer`), so scraping it however fast costs
//! a bounded amount.
//!
//! Guards, besides the token: the HTTP limits of [`crate::http`]; wrong tokens
//! throttled per source ([`TokenThrottle`]); without a token (loopback only) only
//! requests addressed to a loopback name, so a web page cannot reach the API by
//! pointing its own DNS name at 127.0.0.1; and no change from a page of another
//! site (`same_site_only`).

mod api;
mod metrics;
mod web;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Settings;
use crate::listeners::Listeners;
use crate::runtime::Plan;

pub use crate::http::{FieldError, Problem};
pub use api::Sampler;

/// What every handler shares.
pub struct AdminState {
    /// The process's settings (the first listener's at start).
    pub process: Settings,
    /// What every listener shares: the session table, counters and limits.
    pub shared: Arc<crate::runtime::Shared>,
    /// Every listener, as configured now.
    pub listeners: Arc<Listeners>,
    /// True once the process drains (`/readyz` answers 503).
    pub drain: watch::Receiver<bool>,
    /// When the admin API started (the uptime).
    pub started: Instant,
    /// Earlier counters, for the rates of `/api/v1/stats`.
    pub sampler: Sampler,
    /// Packet captures running now (each holds up to 1,000 datagrams).
    pub captures: AtomicUsize,
    /// Event streams open now (`/api/v1/events`), at most [`MAX_EVENT_STREAMS`].
    pub event_streams: AtomicUsize,
    /// Wrong tokens per source, for the 429s.
    pub throttle: TokenThrottle,
    /// The last `/metrics` text and when its rendering began.
    pub metrics_snapshot: tokio::sync::Mutex<Option<(Instant, bytes::Bytes)>>,
    /// How often `/metrics` may be rendered afresh.
    pub scrapes: metrics::ScrapePacer,
}

/// Event streams open at once; more are refused with 503.
pub const MAX_EVENT_STREAMS: usize = 32;

/// Wrong tokens per source (an IPv4 address or an IPv6 /64; not loopback): a burst of
/// `BURST`, then one a second; past that the source's requests are
/// answered 429 without a look at their token. Sources are forgotten once their
/// bucket is full again; at `SOURCES` the fullest is dropped.
#[derive(Debug, Default)]
pub struct TokenThrottle {
    sources: Mutex<HashMap<u64, (f64, Instant)>>,
}

impl TokenThrottle {
    const BURST: f64 = 10.0;
    const PER_SECOND: f64 = 1.0;
    const SOURCES: usize = 4096;

    /// Tokens left for `source` now (refilled since its last failure).
    fn left(entry: &(f64, Instant), now: Instant) -> f64 {
        (entry.0 + now.duration_since(entry.1).as_secs_f64() * Self::PER_SECOND).min(Self::BURST)
    }

    /// Seconds `source` must wait before its token is looked at again; `None`
    /// when it may try now.
    pub fn wait(&self, source: u64) -> Option<u64> {
        let sources = self.sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let left = Self::left(sources.get(&source)?, Instant::now());
        (left < 1.0).then(|| ((1.0 - left) / Self::PER_SECOND).ceil().max(1.0) as u64)
    }

    /// Notes a wrong token from `source`.
    pub fn failed(&self, source: u64) {
        let now = Instant::now();
        let mut sources = self.sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if sources.len() >= Self::SOURCES && !sources.contains_key(&source) {
            sources.retain(|_, e| Self::left(e, now) < Self::BURST);
            if sources.len() >= Self::SOURCES {
                let fullest = sources
                    .iter()
                    .max_by(|a, b| Self::left(a.1, now).total_cmp(&Self::left(b.1, now)))
                    .map(|(&k, _)| k);
                if let Some(k) = fullest {
                    sources.remove(&k);
                }
            }
        }
        let entry = sources.entry(source).or_insert((Self::BURST, now));
        *entry = ((Self::left(entry, now) - 1.0).max(0.0), now);
    }
}

type Admin = Arc<AdminState>;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kcpgate admin API",
        description = "Sessions, counters, run-time configuration and live events of a kcpgate \
                       server or client. Every /api route needs `Authorization: Bearer <token>` \
                       when the gateway was started with an admin token. Errors are \
                       application/problem+json (RFC 9457).",
        license(name = "MIT", identifier = "MIT")
    ),
    // The events' object travels inside /api/v1/events' `data`: listed so clients
    // (the dashboard's generated types) have it.
    components(schemas(crate::control::SessionEvent)),
    modifiers(&BearerAuth),
    tags(
        (name = "sessions", description = "Live KCP sessions and their streams"),
        (name = "stats", description = "Counters, rates and process figures"),
        (name = "config", description = "The running configuration"),
        (name = "events", description = "Server-Sent Events for dashboards"),
        (name = "operations", description = "Metrics, health and this document"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The admin token (--admin-token or KCPGATE_ADMIN_TOKEN)"))
                    .build(),
            ),
        );
    }
}

/// The routes that need the token, `/metrics` (which needs it with
/// `-metrics-auth`), and the public ones.
fn routes() -> (OpenApiRouter<Admin>, OpenApiRouter<Admin>, OpenApiRouter<Admin>) {
    let guarded = OpenApiRouter::new()
        .routes(routes!(api::list_sessions))
        .routes(routes!(api::get_session, api::kick_session))
        .routes(routes!(api::capture_session))
        .routes(routes!(api::get_stats))
        .routes(routes!(api::get_config, api::patch_config, api::put_config))
        .routes(routes!(api::events));
    let metrics = OpenApiRouter::new().routes(routes!(metrics::metrics));
    let public = OpenApiRouter::new()
        .routes(routes!(metrics::livez))
        .routes(routes!(metrics::readyz))
        .routes(routes!(openapi_document))
        .routes(routes!(auth));
    (guarded, metrics, public)
}

/// The OpenAPI document, as `kcpgate openapi` prints it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (guarded, metrics, public) = routes();
    OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(guarded).merge(metrics).merge(public).split_for_parts().1
}

/// [`openapi`] as pretty JSON with a final newline.
pub fn openapi_json() -> String {
    let mut text = openapi().to_pretty_json().expect("the document serializes");
    text.push('\n');
    text
}

/// The whole admin application for `listeners`; `drain` turns true when the
/// process drains.
pub fn app(listeners: Arc<Listeners>, drain: watch::Receiver<bool>) -> Router {
    let state = Arc::new(AdminState {
        process: listeners.process().settings.clone(),
        shared: listeners.process().shared.clone(),
        listeners,
        drain,
        started: Instant::now(),
        sampler: Sampler::default(),
        captures: Default::default(),
        event_streams: Default::default(),
        throttle: TokenThrottle::default(),
        metrics_snapshot: Default::default(),
        scrapes: Default::default(),
    });
    let (guarded, metrics, public) = routes();
    let (guarded, _) = guarded.split_for_parts();
    let (metrics, _) = metrics.split_for_parts();
    let (public, _) = public.split_for_parts();
    let guarded = guarded.layer(axum::middleware::from_fn_with_state(state.clone(), require_token));
    let metrics = metrics.layer(axum::middleware::from_fn_with_state(state.clone(), require_token_for_metrics));
    public
        .merge(metrics)
        .merge(guarded)
        .merge(web::browser_routes())
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), same_site_only))
        .with_state(state)
}

/// Connections the admin listener holds at most (fewer under a low file limit).
const ADMIN_CONNECTIONS: usize = 256;

/// Serves the admin API on `listener` until the process ends.
pub async fn serve(listener: AdminListener, listeners: Arc<Listeners>, drain: watch::Receiver<bool>) {
    listener.0.serve(app(listeners, drain)).await;
}

/// The status `GET url` answers (plain `http://host:port/path` only), for health
/// checks in images that have no HTTP client.
pub fn probe(url: &str, timeout: std::time::Duration) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string());
    let rest = url.strip_prefix("http://").ok_or_else(|| invalid("only http:// URLs"))?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)?.next().ok_or_else(|| invalid("no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    // "HTTP/1.x NNN"
    std::str::from_utf8(&head[9..12]).ok().and_then(|s| s.parse().ok()).ok_or_else(|| invalid("not an HTTP answer"))
}

/// The admin listener, bound, with its limits and TLS.
pub struct AdminListener(crate::http::Server);

impl AdminListener {
    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        self.0.scheme()
    }
}

/// Binds the admin listener (HTTPS with `-admin-cert`), with an error that says
/// what to do.
pub async fn bind(addr: SocketAddr, plan: &Plan) -> std::io::Result<AdminListener> {
    let settings = &plan.settings;
    let tls = if settings.admin_cert.is_empty() {
        None
    } else {
        Some(crate::http::Tls::load(&settings.admin_cert, &settings.admin_key, "-admin-cert / -admin-key")?)
    };
    let tcp = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot listen for the admin API on {addr}: {e}; choose another address with -admin, or -admin off"
            ),
        )
    })?;
    Ok(AdminListener(crate::http::Server {
        tcp,
        tls,
        cap: crate::http::connection_cap(ADMIN_CONNECTIONS),
        counters: plan.shared.http_counters.admin.clone(),
        name: "admin API",
    }))
}

/// The source (an IPv4 address or an IPv6 /64) a request comes from; 0 when
/// unknown.
fn source_key(request: &Request) -> u64 {
    peer(request).map_or(0, |a| crate::driver::source_key(a.ip()))
}

/// The peer's address, as the HTTP server records it.
fn peer(request: &Request) -> Option<SocketAddr> {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(a)| *a)
}

/// The source a request counts against in the token throttle; `None` for a
/// client on this machine (loopback), which is not throttled: a browser cannot
/// send it a token without the CORS preflight this API never grants, and a local
/// process is where the token file is.
fn source_of(request: &Request) -> Option<u64> {
    match peer(request) {
        Some(addr) if addr.ip().to_canonical().is_loopback() => None,
        _ => Some(source_key(request)),
    }
}

/// Whether `request` may pass: always when no token is set; else with the token,
/// unless its source sent too many wrong ones lately (429).
fn check_token(state: &AdminState, request: &Request) -> Result<(), Box<Response>> {
    let token = state.process.admin_token.as_bytes();
    if token.is_empty() {
        return Ok(());
    }
    let source = source_of(request);
    if let Some(wait) = source.and_then(|s| state.throttle.wait(s)) {
        let mut refused = Throttled(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many wrong admin tokens from your address: try again in {wait} s"),
        ))
        .into_response();
        refused.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return Err(Box::new(refused));
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim();
    // Constant time in the token's contents (its length is not secret).
    if bool::from(given.as_bytes().ct_eq(token)) {
        Ok(())
    } else {
        if let Some(source) = source {
            state.throttle.failed(source);
        }
        Err(Box::new(Unauthorized::default().into_response()))
    }
}

async fn require_token(State(state): State<Admin>, request: Request, next: Next) -> Response {
    match check_token(&state, &request) {
        Ok(()) => next.run(request).await,
        Err(refused) => *refused,
    }
}

/// `/metrics` with `-metrics-auth`: the token, as for /api.
async fn require_token_for_metrics(State(state): State<Admin>, request: Request, next: Next) -> Response {
    if !state.process.metrics_auth {
        return next.run(request).await;
    }
    require_token(State(state), request, next).await
}

/// Whether `host` (a Host header: name or address, maybe a port) names this
/// machine's loopback: `localhost`, a name under `.localhost`, 127.0.0.0/8 or `[::1]`.
fn is_loopback_host(host: &str) -> bool {
    let name = crate::http::host_of(host).trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    let literal = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(&name);
    literal.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses what a web page of another site could make a browser send:
/// - without a token (loopback only), a request addressed to another name than a
///   loopback one (DNS rebinding: a page whose name resolves to 127.0.0.1);
/// - a change (POST, PATCH, DELETE, ...) sent from another origin (a form or a
///   `text/plain` fetch needs no preflight).
async fn same_site_only(State(state): State<Admin>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if state.process.admin_token.is_empty() {
        if let Some(host) = host.filter(|h| !is_loopback_host(h)) {
            tracing::debug!(host, "admin API: request for another host refused");
            return Problem::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this admin API has no token, so it answers only requests addressed to localhost, 127.0.0.1 or \
                     [::1] (not {host}); to reach it by another name, set -admin-token"
                ),
            )
            .into_response();
        }
    }
    let changes =
        !matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS);
    if changes {
        let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        let origin_host = headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .map(|o| o.split_once("://").map_or(o, |(_, rest)| rest));
        let cross_site = matches!(fetch_site, Some("cross-site" | "same-site"))
            || origin_host.is_some_and(|o| o == "null" || Some(o) != host);
        if cross_site {
            return Problem::new(
                StatusCode::FORBIDDEN,
                "a change sent by a page of another site is refused: use the dashboard this listener serves, or a \
                 client that is not a browser",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Unknown paths: 401 under /api without the token (routes are not revealed), else 404.
async fn fallback(State(state): State<Admin>, request: Request) -> Response {
    if request.uri().path().starts_with("/api") {
        if let Err(refused) = check_token(&state, &request) {
            return *refused;
        }
    }
    Problem::new(StatusCode::NOT_FOUND, format!("no such resource: {}", request.uri().path())).into_response()
}

/// A known path with a method it does not take: a problem document like every
/// other API error, not an empty 405.
async fn method_not_allowed(request: Request) -> Response {
    let (method, path) = (request.method(), request.uri().path());
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, format!("{path} does not take {method}")).into_response()
}

/// Whether the API needs a token.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"token_required": true}))]
pub struct AuthInfo {
    /// True when the gateway was started with an admin token: every /api route
    /// then needs `Authorization: Bearer <token>`.
    pub token_required: bool,
}

/// Whether the admin API needs a token, for a dashboard deciding whether to ask
/// for one (public; it reveals nothing else).
#[utoipa::path(
    get,
    path = "/auth",
    tag = "operations",
    responses((status = 200, description = "Whether a token is needed", body = AuthInfo))
)]
async fn auth(State(state): State<Admin>) -> axum::Json<AuthInfo> {
    axum::Json(AuthInfo { token_required: !state.process.admin_token.is_empty() })
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
async fn openapi_document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

/// The answer every /api route gives without the token, for the document.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 401,
    description = "The admin token is missing or wrong",
    content_type = "application/problem+json"
)]
pub struct Unauthorized(Problem);

impl Default for Unauthorized {
    fn default() -> Unauthorized {
        Unauthorized(Problem::new(
            StatusCode::UNAUTHORIZED,
            "this API needs the admin token: send the header 'Authorization: Bearer <token>'",
        ))
    }
}

/// The answer every /api route gives to a client (not on loopback) that sent too
/// many wrong tokens lately, for the document.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 429,
    description = "Too many wrong admin tokens from this address lately: try again after Retry-After seconds",
    content_type = "application/problem+json"
)]
pub struct Throttled(Problem);

impl IntoResponse for Throttled {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

/// axum's extractors, with their rejections turned into problems.
pub struct ApiQuery<T>(pub T);
/// A path parameter that answers a problem document when it does not parse.
pub struct ApiPath<T>(pub T);
/// A JSON body that answers a problem document when it does not parse.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.body_text()))
    }
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.body_text()))
    }
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        axum::Json::<T>::from_request(request, state).await.map(|j| ApiJson(j.0)).map_err(|e| {
            let status = match e.status() {
                StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                _ => StatusCode::BAD_REQUEST,
            };
            Problem::new(status, e.body_text())
        })
    }
}
