//! What the admin listener serves to browsers: the dashboard, and the browser
//! module its packet inspector runs. Game pages are served by the public
//! listener ([`crate::public`]), never from here.

use axum::extract::Path;
use axum::http::header;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::Admin;
use crate::assets::{self, DASHBOARD};

/// What the dashboard's pages may load: only their own files and the same
/// origin's API (and the browser module for the inspector, compiled in place).
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard and its files, and the browser module, outside the API document.
pub fn browser_routes() -> Router<Admin> {
    Router::new()
        .route("/", get(|| async { dashboard_file("index.html") }))
        .route(
            "/assets/{file}",
            get(|Path(file): Path<String>| async move { dashboard_file(&format!("assets/{file}")) }),
        )
        .route("/module/{file}", get(|Path(file): Path<String>| async move { assets::module_file(&file) }))
}

fn dashboard_file(name: &str) -> Response {
    // The page itself is checked each time; its assets are named by their hash.
    let cache = if name == "index.html" { "no-cache" } else { "public, max-age=31536000, immutable" };
    let headers = [(header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP), (header::REFERRER_POLICY, "no-referrer")];
    assets::serve(DASHBOARD, name, &format!("/{name}"), cache, &headers)
}
