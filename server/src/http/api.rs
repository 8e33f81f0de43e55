//! The service each HTTP connection runs: `POST /streams/{stream}` (appends,
//! the one route a client calls thousands of times a second) goes straight
//! to its handler, every other request through the axum router.
//!
//! The append route is the router's too, and answers the same either way:
//! the same access check ([`auth::admit`]), handler, panic answer and
//! request metrics, with the route pattern as the label. Taking it here
//! spares each append the router's per-request layers (the route lookup, its
//! boxed services and futures, the path parameters and the header map
//! copied for the extractors): docs/benchmarks.md, "Issue 11, seventeenth
//! pass". A path the router would decode differently from here (a segment
//! that is not UTF-8 once percent-decoded) goes to the router, which
//! answers it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::future::Either;
use futures::FutureExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::auth::{self, AuthLayer};
use super::streams::{append_to, parse_stream};
use super::AppState;
use crate::metrics::{Metrics, RequestLabels};

/// The append route's pattern, its label in the request metrics.
pub const APPEND_ROUTE: &str = "/streams/{stream}";

/// The HTTP API as hyper serves it: the router, with appends taken aside.
#[derive(Clone)]
pub struct Api {
    router: Router,
    appends: Arc<Appends>,
}

/// What the append route needs besides the router.
struct Appends {
    state: AppState,
    auth: AuthLayer,
    /// The request metrics of `201 Created` and `200 OK` (an idempotent
    /// replay), looked up once instead of by label on every append.
    created: OnceLock<(Counter, Histogram)>,
    replayed: OnceLock<(Counter, Histogram)>,
}

type AppendFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Api {
    pub fn new(router: Router, state: AppState, auth: AuthLayer) -> Self {
        Self {
            router,
            appends: Arc::new(Appends {
                state,
                auth,
                created: OnceLock::new(),
                replayed: OnceLock::new(),
            }),
        }
    }
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for Api {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<AppendFuture, <Router as tower::Service<Request<Body>>>::Future>;

    fn call(&self, request: Request<hyper::body::Incoming>) -> Self::Future {
        self.serve(request.map(Body::new))
    }
}

impl Api {
    /// Answers `request`: an append on its own way, anything else through
    /// the router.
    fn serve(
        &self,
        request: Request<Body>,
    ) -> <Self as hyper::service::Service<Request<hyper::body::Incoming>>>::Future {
        match append_target(&request) {
            Some(stream) => {
                let stream = stream.into_owned();
                Either::Left(Box::pin(Arc::clone(&self.appends).append(request, stream)))
            }
            None => Either::Right(tower::Service::call(&mut self.router.clone(), request)),
        }
    }
}

/// The stream of `POST /streams/{stream}`, percent-decoded as the router's
/// path parameter is; `None` for any other request, and for a stream segment
/// that does not decode to UTF-8 (the router answers that one).
fn append_target(request: &Request<Body>) -> Option<std::borrow::Cow<'_, str>> {
    if request.method() != Method::POST {
        return None;
    }
    let segment = request.uri().path().strip_prefix("/streams/")?;
    if segment.is_empty() || segment.contains('/') {
        return None;
    }
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
}

impl Appends {
    async fn append(
        self: Arc<Self>,
        request: Request<Body>,
        raw_stream: String,
    ) -> Result<Response, Infallible> {
        let started = Instant::now();
        let _in_progress = self.state.service.append_started();
        let run = std::panic::AssertUnwindSafe(self.answer(request, raw_stream)).catch_unwind();
        let response = run.await.unwrap_or_else(super::on_panic);
        self.record(response.status(), started);
        Ok(response)
    }

    /// What the router's middleware and handler would answer.
    async fn answer(&self, request: Request<Body>, raw_stream: String) -> Response {
        let need = auth::need(&Method::POST, Some(APPEND_ROUTE));
        let caller = match auth::admit(&self.auth, need, request.headers()) {
            Ok(caller) => caller,
            Err(refusal) => return refusal.into_response(),
        };
        let checked = caller.is_checked();
        let stream = match parse_stream(&raw_stream) {
            Ok(stream) => stream,
            Err(e) => return e.into_response(),
        };
        let (parts, body) = request.into_parts();
        let response = match append_to(&self.state, &caller, stream, &parts.headers, body).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        };
        self.auth.count_handler_refusal(checked, &response);
        response
    }

    fn record(&self, status: StatusCode, started: Instant) {
        let metrics: &Metrics = &self.auth.metrics;
        let cached = match status {
            StatusCode::CREATED => Some(&self.created),
            StatusCode::OK => Some(&self.replayed),
            _ => None,
        };
        let elapsed = started.elapsed().as_secs_f64();
        match cached {
            Some(cell) => {
                let (count, seconds) = cell.get_or_init(|| {
                    let labels = labels(status);
                    (
                        metrics.requests.get_or_create(&labels).clone(),
                        metrics.request_seconds.get_or_create(&labels).clone(),
                    )
                });
                count.inc();
                seconds.observe(elapsed);
            }
            None => super::track::record(metrics, &labels(status), elapsed),
        }
    }
}

fn labels(status: StatusCode) -> RequestLabels {
    RequestLabels {
        route: APPEND_ROUTE.to_owned(),
        method: "POST".to_owned(),
        status: status.as_u16(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maintenance::{Jobs, Maintenance};
    use crate::model::JobKind;
    use crate::service::{QueueLimits, Service};
    use crate::storage::Store;
    use clap::Parser;
    use serde_json::{json, Value};
    use tokio_util::sync::CancellationToken;

    #[test]
    fn only_a_post_to_one_stream_takes_the_append_way() {
        let target = |method: Method, uri: &str| -> Option<String> {
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .expect("request");
            append_target(&request).map(std::borrow::Cow::into_owned)
        };
        for (uri, stream) in [
            ("/streams/orders-1", "orders-1"),
            ("/streams/orders-1?x=1", "orders-1"),
            ("/streams/a%2Fb%20c", "a/b c"),
            ("http://host/streams/s", "s"),
        ] {
            assert_eq!(target(Method::POST, uri).as_deref(), Some(stream), "{uri}");
        }
        for (method, uri) in [
            (Method::GET, "/streams/orders-1"),
            (Method::PUT, "/streams/orders-1"),
            (Method::DELETE, "/streams/orders-1"),
            (Method::POST, "/streams/"),
            (Method::POST, "/streams"),
            (Method::POST, "/streams/orders-1/"),
            (Method::POST, "/streams/orders-1/metadata"),
            (Method::POST, "/streamsx/orders-1"),
            (Method::POST, "/admin/scavenge"),
            // Not UTF-8 once decoded: the router answers it.
            (Method::POST, "/streams/%FF"),
        ] {
            assert_eq!(target(method.clone(), uri), None, "{method} {uri}");
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: crate::config::ServeArgs,
    }

    /// An API over a new store, access control off, and its writer thread
    /// (which ends once the API and the service are dropped).
    async fn api(dir: &std::path::Path) -> (Api, Arc<Service>, std::thread::JoinHandle<()>) {
        let data = dir.to_str().expect("utf-8 path");
        let flags = [
            "skald",
            "--data-dir",
            data,
            "--max-append-bytes",
            "2048",
            "--max-event-bytes",
            "1024",
        ];
        let config = Cli::try_parse_from(flags)
            .expect("flags parse")
            .serve
            .validate()
            .expect("config");
        let store = Arc::new(Store::open(&config.data_dir).expect("open"));
        let queue = QueueLimits {
            requests: 64,
            kib: 1024,
            timeout: std::time::Duration::from_secs(10),
            spin: std::time::Duration::ZERO,
        };
        let (service, writer) =
            Service::start(store, CancellationToken::new(), queue).expect("start");
        let maintenance = Arc::new(Maintenance {
            scavenges: Arc::new(Jobs::load(JobKind::Scavenge, &service).await),
            verifies: Arc::new(Jobs::load(JobKind::Verify, &service).await),
            backups: Arc::new(Jobs::load(JobKind::Backup, &service).await),
            backup_dir: None,
        });
        let api = super::super::router(Arc::clone(&service), &config, maintenance, None);
        (api, service, writer)
    }

    /// Status, content type and body of a response.
    async fn parts(response: Response) -> (StatusCode, Option<String>, Value) {
        let status = response.status();
        let content_type = response
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .map(|v| v.to_str().expect("ascii").to_owned());
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            content_type,
            serde_json::from_slice(&body).expect("JSON"),
        )
    }

    /// The request counts of `route` as `/metrics` shows them (of each
    /// status, and of its timings), sorted.
    fn request_lines(service: &Service, route: &str) -> Vec<String> {
        let needle = format!("route=\"{route}\"");
        let mut lines: Vec<String> = service
            .metrics()
            .render()
            .lines()
            .filter(|line| {
                line.starts_with("skald_http_requests_total")
                    || line.starts_with("skald_http_request_duration_seconds_count")
            })
            .filter(|line| line.contains(&needle))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    #[tokio::test]
    async fn appends_answer_as_the_router_answers_them() {
        let (fast_dir, slow_dir) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let (fast, fast_service, fast_writer) = api(fast_dir.path()).await;
        let (slow, slow_service, slow_writer) = api(slow_dir.path()).await;
        let id = uuid::Uuid::new_v4();
        let append = |expected: Value, id: uuid::Uuid| {
            json!({"expected_revision": expected, "events": [{"id": id, "type": "t", "data": {"n": 1}}]})
                .to_string()
        };
        let one = |expected: Value| append(expected, id);
        let json_type = "application/json";
        let cases: Vec<(&str, &str, String)> = vec![
            ("orders-1", json_type, one(json!("no_stream"))),
            // The same again: an idempotent replay, 200.
            ("orders-1", json_type, one(json!("no_stream"))),
            (
                "orders-1",
                json_type,
                append(json!(5), uuid::Uuid::new_v4()),
            ),
            ("orders-2", json_type, "{".to_owned()),
            ("orders-2", "text/plain", one(json!("any"))),
            (
                "orders-2",
                json_type,
                format!(
                    "{{\"events\":[{{\"type\":\"t\",\"data\":\"{}\"}}]}}",
                    "x".repeat(4096)
                ),
            ),
            ("%24all", json_type, one(json!("any"))),
            (
                "a%2Fb",
                json_type,
                json!({"events": [{"type": "t", "data": {}}]}).to_string(),
            ),
        ];
        let mut statuses = Vec::new();
        for (stream, content_type, body) in cases {
            let request = || {
                Request::builder()
                    .method(Method::POST)
                    .uri(format!("/streams/{stream}"))
                    .header(axum::http::header::CONTENT_TYPE, content_type)
                    .body(Body::from(body.clone()))
                    .expect("request")
            };
            assert!(append_target(&request()).is_some(), "{stream}");
            let fast_answer = parts(fast.serve(request()).await.expect("infallible")).await;
            let slow_answer = parts(
                tower::ServiceExt::oneshot(slow.router.clone(), request())
                    .await
                    .expect("infallible"),
            )
            .await;
            let (status, _, answer) = &fast_answer;
            // Events without an id get a new one each: the answers' ids
            // differ, nothing else.
            assert_eq!(
                fast_answer, slow_answer,
                "{stream} {content_type} {body:.100}"
            );
            statuses.push((status.as_u16(), answer["error"].as_str().map(str::to_owned)));
        }
        let codes: Vec<(u16, Option<&str>)> =
            statuses.iter().map(|(s, e)| (*s, e.as_deref())).collect();
        assert_eq!(
            codes,
            [
                (201, None),
                (200, None),
                (409, Some("wrong_expected_revision")),
                (400, Some("invalid_body")),
                (415, Some("unsupported_media_type")),
                (413, Some("payload_too_large")),
                (400, Some("invalid_stream_name")),
                (201, None),
            ]
        );
        let fast_metrics = request_lines(&fast_service, APPEND_ROUTE);
        assert_eq!(fast_metrics, request_lines(&slow_service, APPEND_ROUTE));
        assert!(
            fast_metrics
                .iter()
                .any(|line| line.contains("status=\"201\"") && line.ends_with(" 2")),
            "{fast_metrics:#?}"
        );
        // The stores closed before the process ends.
        drop((fast, fast_service, slow, slow_service));
        for writer in [fast_writer, slow_writer] {
            writer.join().expect("the writer thread ends");
        }
    }
}
