//! The daemon's `/metrics`, read the way a dashboard scrapes it.

/// The whole Prometheus text from `base` (`http://127.0.0.1:port`).
pub async fn scrape(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the /metrics body")
}

/// One series' value; `series` as rendered, labels included
/// (`leadgate_poller_up{channel="tg"}`).
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
