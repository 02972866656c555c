//! The files built into the binary (see build.rs): the dashboard, the demo page
//! and the browser module, and how they are answered.

use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::http::Problem;

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The browser module's file `name`, at `/module/` on both listeners (game pages
/// and the dashboard's packet inspector run it).
pub fn module_file(name: &str) -> Response {
    serve(MODULE, name, &format!("/module/{name}"), "no-cache", &[])
}

/// `name` of `set` with its content type and `headers`, or a 404 problem naming
/// `path`.
pub fn serve(
    set: &[(&str, &'static str, &'static [u8])],
    name: &str,
    path: &str,
    cache: &'static str,
    headers: &[(HeaderName, &'static str)],
) -> Response {
    let Some((_, kind, bytes)) = set.iter().find(|(n, _, _)| *n == name) else {
        return Problem::new(StatusCode::NOT_FOUND, format!("no such file: {path}")).into_response();
    };
    let mut response = ([(header::CONTENT_TYPE, *kind), (header::CACHE_CONTROL, cache)], *bytes).into_response();
    for (name, value) in headers {
        response.headers_mut().insert(name.clone(), header::HeaderValue::from_static(value));
    }
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    response
}
