//! The HTTP listener: every push connector's routes, plus `/healthz` (the
//! process is alive) and `/readyz` (it can commit right now).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

#[derive(Clone)]
struct Health {
    store: Store,
}

pub fn app(store: Store, connector_routes: Vec<Router>) -> Router {
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(Health { store });
    for routes in connector_routes {
        app = app.merge(routes);
    }
    app.layer(axum::middleware::from_fn(count_responses))
}

async fn metrics() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(),
    )
}

/// Count responses by endpoint family (the first path segment of the known
/// ones, so scanners cannot grow the series) and status.
async fn count_responses(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let family: &'static str = match request.uri().path().split('/').nth(1).unwrap_or("") {
        "forms" => "forms",
        "telephony" => "telephony",
        "telegram" => "telegram",
        "vk" => "vk",
        "healthz" => "healthz",
        "readyz" => "readyz",
        "metrics" => "metrics",
        _ => "other",
    };
    let response = next.run(request).await;
    crate::metrics::inc(
        "leadgate_http_responses_total",
        &[("endpoint", family), ("status", response.status().as_str())],
        1,
    );
    response
}

async fn ready(State(h): State<Health>) -> (StatusCode, &'static str) {
    match tokio::time::timeout(Duration::from_secs(2), h.store.ping()).await {
        Ok(true) => (StatusCode::OK, "ready"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
    }
}

/// Serve until `shutdown` is cancelled, then stop accepting and wait for
/// requests in flight to be answered.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    request_timeout: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        request_timeout,
    ));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}
