//! The admin HTTP listener: the REST API under `/api/v1`, Prometheus metrics,
//! health checks and the OpenAPI document.
//!
//! It runs beside the data path and reaches it only through the
//! [`Registry`](crate::control::Registry)'s queries, so a request costs the data path
//! one answer per task and nothing while nobody asks.

mod api;
mod metrics;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
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

use crate::runtime::Plan;

pub use api::Sampler;

/// What every handler shares.
pub struct AdminState {
    pub plan: Arc<Plan>,
    pub drain: watch::Receiver<bool>,
    pub started: Instant,
    pub sampler: Sampler,
    /// Packet captures running now (each holds up to 1,000 datagrams).
    pub captures: std::sync::atomic::AtomicUsize,
}

type Shared = Arc<AdminState>;

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

/// The routes that need the token, and the public ones.
fn routes() -> (OpenApiRouter<Shared>, OpenApiRouter<Shared>) {
    let guarded = OpenApiRouter::new()
        .routes(routes!(api::list_sessions))
        .routes(routes!(api::get_session, api::kick_session))
        .routes(routes!(api::capture_session))
        .routes(routes!(api::get_stats))
        .routes(routes!(api::get_config, api::patch_config))
        .routes(routes!(api::events));
    let public = OpenApiRouter::new()
        .routes(routes!(metrics::metrics))
        .routes(routes!(metrics::livez))
        .routes(routes!(metrics::readyz))
        .routes(routes!(openapi_document))
        .routes(routes!(auth));
    (guarded, public)
}

/// The OpenAPI document, as `kcpgate openapi` prints it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (guarded, public) = routes();
    OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(guarded).merge(public).split_for_parts().1
}

/// [`openapi`] as pretty JSON with a final newline.
pub fn openapi_json() -> String {
    let mut text = openapi().to_pretty_json().expect("the document serializes");
    text.push('\n');
    text
}

/// The whole admin application for `plan`; `drain` turns true when it drains.
pub fn app(plan: Arc<Plan>, drain: watch::Receiver<bool>) -> Router {
    let state = Arc::new(AdminState {
        plan,
        drain,
        started: Instant::now(),
        sampler: Sampler::default(),
        captures: Default::default(),
    });
    let (guarded, public) = routes();
    let (guarded, _) = guarded.split_for_parts();
    let (public, _) = public.split_for_parts();
    let guarded = guarded.layer(axum::middleware::from_fn_with_state(state.clone(), require_token));
    public
        .merge(guarded)
        .merge(web::browser_routes())
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Serves the admin API on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, plan: Arc<Plan>, drain: watch::Receiver<bool>) {
    if let Err(e) = axum::serve(listener, app(plan, drain)).await {
        tracing::error!("the admin API stopped: {e}");
    }
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

/// Binds the admin listener, with an error that says what to do.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot listen for the admin API on {addr}: {e}; choose another address with -admin, or -admin off"
            ),
        )
    })
}

/// Whether the request carries the admin token (always true when none is set).
fn authorized(state: &AdminState, headers: &axum::http::HeaderMap) -> bool {
    let token = state.plan.settings.admin_token.as_bytes();
    if token.is_empty() {
        return true;
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim();
    // Constant time in the token's contents (its length is not secret).
    bool::from(given.as_bytes().ct_eq(token))
}

async fn require_token(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if authorized(&state, request.headers()) {
        next.run(request).await
    } else {
        Unauthorized::default().into_response()
    }
}

/// Unknown paths: 401 under /api without the token (routes are not revealed), else 404.
async fn fallback(State(state): State<Shared>, request: Request) -> Response {
    if request.uri().path().starts_with("/api") && !authorized(&state, request.headers()) {
        return Unauthorized::default().into_response();
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
async fn auth(State(state): State<Shared>) -> axum::Json<AuthInfo> {
    axum::Json(AuthInfo { token_required: !state.plan.settings.admin_token.is_empty() })
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

/// An error, as RFC 9457 problem details.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no session 42"}))]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong, and what to do about it.
    pub detail: String,
    /// Per-field reasons, for a request body that failed validation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FieldError {
    #[schema(example = "sndwnd")]
    pub field: String,
    #[schema(example = "must be between 1 and 65535 (got 0)")]
    pub message: String,
}

impl Problem {
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

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

/// axum's extractors, with their rejections turned into problems.
pub struct ApiQuery<T>(pub T);
pub struct ApiPath<T>(pub T);
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
