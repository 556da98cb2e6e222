//! The HTTP listener: every push connector's routes, plus `/healthz` (the
//! process is alive) and `/readyz` (it can commit right now: the database
//! answers and the writer's commits are not failing).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::config::AddressRange;
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
    trusted_proxies: Vec<AddressRange>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let trusted_proxies: std::sync::Arc<[AddressRange]> = trusted_proxies.into();

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
        let trusted_proxies = trusted_proxies.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            // What axum's connect-info service would add: the per-address
            // limiters read the client from here. Behind a trusted proxy
            // that is the client the proxy names, not the proxy.
            let client = client_address(peer.ip(), request.headers(), &trusted_proxies);
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(SocketAddr::new(
                    client,
                    peer.port(),
                )));
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

/// The client of a request from `peer`. A peer among `trusted` proxies
/// speaks for the client: `X-Forwarded-For` is read from its right end (the
/// hop nearest to us) leftwards, past the trusted proxies, to the first
/// address that is not one, as nginx's `real_ip_recursive` does; entries
/// further left are the client's own claims and are not believed. Without
/// the header, `X-Real-IP`. Anything unreadable leaves the nearest trusted
/// hop as the client, which limits the proxy rather than trusting garbage.
fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[AddressRange]) -> IpAddr {
    let is_trusted = |a: IpAddr| trusted.iter().any(|r| r.contains(a));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    if forwarded.is_empty() {
        return headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(peer);
    }
    let mut client = peer;
    for hop in forwarded.iter().rev() {
        let Ok(address) = hop.parse::<IpAddr>() else {
            break;
        };
        client = address;
        if !is_trusted(address) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        use super::{AddressRange, HeaderMap, IpAddr, client_address};
        let trusted: Vec<AddressRange> = ["127.0.0.1", "10.0.0.0/8"]
            .iter()
            .map(|s| AddressRange::try_from(s.to_string()).unwrap())
            .collect();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let with = |xff: &[&str]| {
            let mut h = HeaderMap::new();
            for v in xff {
                h.append("x-forwarded-for", v.parse().unwrap());
            }
            h
        };
        let proxy = ip("127.0.0.1");
        // A visitor through one proxy; a forged entry on the left is not believed.
        let h = with(&["203.0.113.7"]);
        assert_eq!(client_address(proxy, &h, &trusted), ip("203.0.113.7"));
        let h = with(&["6.6.6.6, 203.0.113.7"]);
        assert_eq!(client_address(proxy, &h, &trusted), ip("203.0.113.7"));
        // Through two proxies (and two header lines).
        let h = with(&["198.51.100.2", "10.1.2.3"]);
        assert_eq!(client_address(proxy, &h, &trusted), ip("198.51.100.2"));
        // An untrusted peer's header is ignored.
        let h = with(&["203.0.113.7"]);
        assert_eq!(
            client_address(ip("192.0.2.9"), &h, &trusted),
            ip("192.0.2.9")
        );
        // Garbage leaves the nearest trusted hop.
        let h = with(&["203.0.113.7, not-an-address"]);
        assert_eq!(client_address(proxy, &h, &trusted), proxy);
        // X-Real-IP when there is no X-Forwarded-For; nothing: the peer.
        let mut h = HeaderMap::new();
        h.insert("x-real-ip", "203.0.113.8".parse().unwrap());
        assert_eq!(client_address(proxy, &h, &trusted), ip("203.0.113.8"));
        assert_eq!(client_address(proxy, &HeaderMap::new(), &trusted), proxy);
        // Nothing trusted: always the peer.
        assert_eq!(client_address(proxy, &with(&["203.0.113.7"]), &[]), proxy);
    }

    #[test]
    fn address_ranges_match_their_network_only() {
        use super::{AddressRange, IpAddr};
        let range = |s: &str| AddressRange::try_from(s.to_string());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let net = range("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.255.0.1")) && !net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.1.1.1")), "IPv4-mapped");
        assert!(!net.contains(ip("::1")));
        assert!(range("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(range("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(range("10.0.0.0/33").is_err() && range("ten").is_err());
    }

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
