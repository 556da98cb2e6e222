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
        .with_state(Health { store });
    for routes in connector_routes {
        app = app.merge(routes);
    }
    app
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
