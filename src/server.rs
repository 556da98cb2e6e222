//! The HTTP listener: every push connector's routes, plus `/healthz` (the
//! process is alive) and `/readyz` (it can commit right now: the database
//! answers and the writer's commits are not failing).

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, WriterHealth};

#[derive(Clone)]
struct Health {
    store: Store,
    writer: std::sync::Arc<WriterHealth>,
}

pub fn app(
    store: Store,
    writer: std::sync::Arc<WriterHealth>,
    connector_routes: Vec<Router>,
) -> Router {
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(Health { store, writer });
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

async fn ready(State(h): State<Health>) -> (StatusCode, String) {
    // A database that answers can still refuse writes (a full disk, a
    // filesystem turned read-only): the writer's last word counts first.
    if let Some(why) = h.writer.refusing() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("refusing writes: {why}"),
        );
    }
    // `ping` bounds itself (2 s), so an unreachable database answers 503.
    match h.store.ping().await {
        true => (StatusCode::OK, "ready".into()),
        false => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable".into()),
    }
}

/// How long a client may take to send a request's head; the body is then
/// bounded by `http.request_timeout`. Without it a client sending a header
/// byte a second held its connection as long as it liked.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections open at once. More are closed as they arrive, so idle or
/// slow clients cannot use up the daemon's file descriptors (the systemd
/// unit allows 65,536) while senders that behave keep being served.
const MAX_CONNECTIONS: usize = 10_000;

/// Raise the soft open-files limit (`RLIMIT_NOFILE`) to the hard limit, as
/// Go's runtime and many daemons do: each connection is a descriptor, and
/// the soft limit a shell or a container hands out (often 1024) would make
/// `accept` fail with EMFILE long before [`MAX_CONNECTIONS`]. The systemd
/// unit sets both to 65,536; elsewhere the hard limit is what the
/// administrator allows. The resulting soft limit, or the error.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur >= lim.rlim_max {
        return Ok(lim.rlim_cur);
    }
    let before = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        let refused = std::io::Error::last_os_error();
        // An unlimited hard limit: the kernel allows no more than
        // fs.nr_open descriptors per process.
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|v| v.trim().parse::<libc::rlim_t>().ok());
        match nr_open {
            Some(n) if n > before && n < lim.rlim_max => {
                lim.rlim_cur = n;
                if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            _ => return Err(refused),
        }
    }
    Ok(lim.rlim_cur)
}

/// [`raise_open_files_limit`] at the daemon's start, logged.
pub fn raise_open_files_limit_logged() {
    match raise_open_files_limit() {
        Ok(limit) if limit < MAX_CONNECTIONS as u64 => tracing::warn!(
            limit,
            max_connections = MAX_CONNECTIONS,
            "the open-files limit (RLIMIT_NOFILE, hard) is below the connection cap: \
             accepting will fail with EMFILE before the cap; raise it (LimitNOFILE= \
             under systemd, ulimit -Hn)"
        ),
        Ok(limit) => tracing::debug!(limit, "open-files limit (RLIMIT_NOFILE)"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit (RLIMIT_NOFILE)"),
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
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let app = app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        request_timeout,
    ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(e) => {
                    // Out of file descriptors, most likely: let some close.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = open.clone().try_acquire_owned() else {
            crate::metrics::inc("leadgate_http_connections_refused_total", &[], 1);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            // What axum's connect-info service would add: the per-IP
            // limiters read the peer from here.
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nofile() -> (u64, u64) {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        (lim.rlim_cur, lim.rlim_max)
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        // Lower the soft limit as a shell's default would (not so low that
        // tests running beside this one in the process run out), then
        // raise it.
        let (_, hard) = nofile();
        let lowered = libc::rlimit {
            rlim_cur: (hard / 2).min(4096),
            rlim_max: hard as libc::rlim_t,
        };
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        let raised = raise_open_files_limit().expect("raise RLIMIT_NOFILE");
        let (soft, hard_after) = nofile();
        assert_eq!(soft, raised);
        assert_eq!(hard_after, hard, "the hard limit is left alone");
        if hard != libc::RLIM_INFINITY {
            assert_eq!(soft, hard);
        } else {
            assert!(soft > 4096);
        }
        // Again: nothing to do, the same answer.
        assert_eq!(raise_open_files_limit().unwrap(), soft);
    }
}
