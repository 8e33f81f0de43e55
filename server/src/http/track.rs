//! The middleware every request the router serves passes: it records the
//! request in the metrics, by route pattern, method and status, around the
//! access check. (Appends are served beside the router, by `api`, and
//! recorded the same way.)
//! Every label value comes from a fixed set (route patterns, standard
//! methods, `other`), so no request can add a series.

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use super::auth::AuthLayer;
use crate::metrics::{Metrics, RequestLabels};

/// The label of whatever is outside the fixed sets.
const OTHER: &str = "other";

/// The standard methods by name; any other method (HTTP allows made-up ones)
/// is `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => OTHER,
    }
}

/// The one middleware of the API: times and counts the request, and has
/// `auth::authorize` check it and run it (one layer instead of two: each
/// `from_fn` layer boxes the inner service's clone and its future per request).
pub async fn track(
    State(layer): State<AuthLayer>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let route = matched
        .as_ref()
        .map_or_else(|| OTHER.to_owned(), |m| m.as_str().to_owned());
    let method = method_label(request.method()).to_owned();
    let started = std::time::Instant::now();
    let response = super::auth::authorize(&layer, matched.as_ref(), request, next).await;
    let labels = RequestLabels {
        route,
        method,
        status: response.status().as_u16(),
    };
    record(&layer.metrics, &labels, started.elapsed().as_secs_f64());
    response
}

/// Counts a request and its time in seconds under `labels`.
pub fn record(metrics: &Metrics, labels: &RequestLabels, seconds: f64) {
    metrics.requests.get_or_create(labels).inc();
    metrics
        .request_seconds
        .get_or_create(labels)
        .observe(seconds);
}
