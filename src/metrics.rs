//! Prometheus metrics in the text exposition format, served at `/metrics`.
//! Label values come from configuration (channel ids) or fixed sets
//! (dispositions, status codes), so the series count stays bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Upper bounds of the latency histogram, in seconds.
const SECONDS_BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];
/// Upper bounds of the batch-size histogram, in items.
const ITEMS_BUCKETS: [f64; 8] = [1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 250.0, 512.0];

struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Registry {
    counters: BTreeMap<(&'static str, String), u64>,
    gauges: BTreeMap<(&'static str, String), f64>,
    histograms: BTreeMap<&'static str, Histogram>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

const HELP: &[(&str, &str, &str)] = &[
    (
        "leadgate_inbound_total",
        "counter",
        "Inbound messages stored, by channel and disposition.",
    ),
    (
        "leadgate_leads_created_total",
        "counter",
        "Leads created, by channel.",
    ),
    (
        "leadgate_routing_decisions_total",
        "counter",
        "New leads by what assigned them (rule:<name>, channel_default, …).",
    ),
    (
        "leadgate_commit_failures_total",
        "counter",
        "Transactions that failed; their requests were not acknowledged.",
    ),
    (
        "leadgate_http_responses_total",
        "counter",
        "HTTP responses by endpoint family and status.",
    ),
    (
        "leadgate_http_connections_refused_total",
        "counter",
        "Connections closed on arrival because the open-connection limit was reached.",
    ),
    (
        "leadgate_channel_last_inbound_timestamp_seconds",
        "gauge",
        "Unix time of the channel's last stored inbound.",
    ),
    (
        "leadgate_channel_lag_seconds",
        "gauge",
        "Seconds from the channel's last stored inbound being received (its message's own time for mail and messengers) to its commit.",
    ),
    (
        "leadgate_channel_last_error_timestamp_seconds",
        "gauge",
        "Unix time of the channel's last poller error.",
    ),
    (
        "leadgate_poller_up",
        "gauge",
        "1 while the channel's poller session runs, 0 while it waits to reconnect.",
    ),
    (
        "leadgate_poller_errors_total",
        "counter",
        "Poller sessions that ended in an error, each followed by a reconnect after a backoff.",
    ),
    (
        "leadgate_notifications_total",
        "counter",
        "Notification attempts by transport and outcome (sent, retry, failed).",
    ),
    (
        "leadgate_timers_fired_total",
        "counter",
        "Assignment timers fired (SLA escalations, queue releases), by kind.",
    ),
    (
        "leadgate_store_up",
        "gauge",
        "1 when the last commit succeeded, 0 after a failure.",
    ),
    (
        "leadgate_commit_seconds",
        "histogram",
        "Time to commit one batch.",
    ),
    (
        "leadgate_commit_batch_items",
        "histogram",
        "Items committed per transaction.",
    ),
];

fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(out, "{k}=\"{v}\"");
    }
    out
}

fn with<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    f(&mut REGISTRY.lock().unwrap_or_else(|e| e.into_inner()))
}

pub fn inc(name: &'static str, pairs: &[(&str, &str)], by: u64) {
    let key = (name, labels(pairs));
    with(|r| *r.counters.entry(key).or_default() += by);
}

pub fn set(name: &'static str, pairs: &[(&str, &str)], value: f64) {
    let key = (name, labels(pairs));
    with(|r| {
        r.gauges.insert(key, value);
    });
}

pub fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn observe(name: &'static str, bounds: &'static [f64], value: f64) {
    with(|r| {
        let h = r.histograms.entry(name).or_insert_with(|| Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        });
        for (i, b) in h.bounds.iter().enumerate() {
            if value <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += value;
        h.count += 1;
    });
}

/// One committed (or failed) transaction.
pub fn commit(items: usize, seconds: f64, ok: bool) {
    if ok {
        observe("leadgate_commit_seconds", &SECONDS_BUCKETS, seconds);
        observe("leadgate_commit_batch_items", &ITEMS_BUCKETS, items as f64);
    } else {
        inc("leadgate_commit_failures_total", &[], 1);
    }
    set("leadgate_store_up", &[], if ok { 1.0 } else { 0.0 });
}

/// The whole registry in the Prometheus text format.
pub fn render() -> String {
    with(|r| {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE leadgate_build_info gauge");
        let _ = writeln!(
            out,
            "leadgate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let series = |l: &str| {
                if l.is_empty() {
                    name.to_string()
                } else {
                    format!("{name}{{{l}}}")
                }
            };
            for ((_, l), v) in r.counters.iter().filter(|((n, _), _)| n == name) {
                let _ = writeln!(out, "{} {v}", series(l));
            }
            for ((_, l), v) in r.gauges.iter().filter(|((n, _), _)| n == name) {
                let _ = writeln!(out, "{} {v}", series(l));
            }
            if let Some(h) = r.histograms.get(name) {
                for (b, c) in h.bounds.iter().zip(&h.counts) {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
                }
                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{name}_sum {}", h.sum);
                let _ = writeln!(out, "{name}_count {}", h.count);
            }
        }
        // A series recorded under a name HELP lacks is still shown (it was
        // silently dropped once), untyped.
        let known = |n: &str| HELP.iter().any(|(name, _, _)| *name == n);
        let mut unknown: Vec<_> = r
            .counters
            .iter()
            .map(|(k, v)| (k, *v as f64))
            .chain(r.gauges.iter().map(|(k, v)| (k, *v)))
            .filter(|((n, _), _)| !known(n))
            .collect();
        unknown.sort_by(|a, b| a.0.cmp(b.0));
        let mut typed = "";
        for ((name, l), v) in unknown {
            if *name != typed {
                let _ = writeln!(out, "# TYPE {name} untyped");
                typed = name;
            }
            let series = if l.is_empty() {
                name.to_string()
            } else {
                format!("{name}{{{l}}}")
            };
            let _ = writeln!(out, "{series} {v}");
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms_with_escaped_labels() {
        inc(
            "leadgate_inbound_total",
            &[("channel", "a\"b"), ("disposition", "spam")],
            2,
        );
        commit(3, 0.004, true);
        let text = render();
        assert!(
            text.contains("leadgate_inbound_total{channel=\"a\\\"b\",disposition=\"spam\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("leadgate_commit_seconds_bucket{le=\"0.005\"}"),
            "{text}"
        );
        assert!(text.contains("\nleadgate_store_up 1\n"), "{text}");
        // Named without a HELP entry: shown once typed, with each series.
        inc("leadgate_test_unlisted_total", &[("k", "a")], 1);
        inc("leadgate_test_unlisted_total", &[("k", "b")], 1);
        let text = render();
        assert_eq!(
            text.matches("# TYPE leadgate_test_unlisted_total untyped")
                .count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("leadgate_test_unlisted_total{k=\"b\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE leadgate_commit_batch_items histogram"));
    }
}
