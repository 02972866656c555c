//! The admin API's request handling: any method, path, query and body (JSON or
//! not) on every route that takes input, with and without the token, gets an
//! answer (never a panic), and an error answer is a problem document.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use kcpgate::config::{Role, Settings};
use kcpgate::runtime::Plan;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token";

/// Routes that take input; the event stream, which never ends, is left out.
const ROUTES: [(&str, &str); 8] = [
    ("PATCH", "/api/v1/config"),
    ("GET", "/api/v1/sessions"),
    ("GET", "/api/v1/sessions/"),
    ("DELETE", "/api/v1/sessions/"),
    ("POST", "/api/v1/sessions/"),
    ("GET", "/api/v1/stats"),
    ("GET", "/api/v1/config"),
    ("GET", "/"),
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime"))
}

fn app() -> axum::Router {
    static PLAN: OnceLock<Arc<Plan>> = OnceLock::new();
    let plan = PLAN.get_or_init(|| {
        let args = ["-key", "fuzz", "-admin-token", TOKEN].map(String::from);
        Arc::new(Plan::alone(Settings::parse(Role::Server, args).expect("valid flags")).expect("valid settings"))
    });
    let (_tx, drain) = tokio::sync::watch::channel(false);
    kcpgate::admin::app(kcpgate::listeners::Listeners::idle(vec![plan.clone()]), drain)
}

fuzz_target!(|data: &[u8]| {
    let [pick, rest @ ..] = data else { return };
    let (method, route) = ROUTES[usize::from(pick % ROUTES.len() as u8)];
    let text = String::from_utf8_lossy(rest);
    let (tail, body) = text.split_once('\n').unwrap_or((&text, ""));
    let uri = format!("{route}{}", tail.replace(|c: char| c.is_whitespace() || c.is_control(), ""));
    let mut request = Request::builder().method(method).uri(&uri);
    if pick & 0x80 == 0 {
        request = request.header("authorization", format!("Bearer {TOKEN}"));
    }
    if pick & 0x40 == 0 {
        request = request.header("content-type", "application/json");
    }
    let Ok(request) = request.body(Body::from(body.to_string())) else { return };
    let response = runtime()
        .block_on(async { tokio::time::timeout(std::time::Duration::from_secs(5), app().oneshot(request)).await });
    let response = response.expect("an answer within 5 s").expect("infallible");
    let status = response.status();
    assert!(status != StatusCode::INTERNAL_SERVER_ERROR, "{method} {uri}: 500");
    if status.is_client_error() && uri.starts_with("/api/") && status != StatusCode::NOT_FOUND {
        let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(kind.starts_with("application/problem+json"), "{method} {uri}: {status} as {kind}");
    }
});
