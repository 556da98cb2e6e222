//! Randomly mutated corpus requests, re-signed where the signature would
//! otherwise stop them at the door: no panic, only 200 or 4xx.

use std::sync::Arc;

use chrono::DateTime;
use http::{HeaderValue, StatusCode};
use leadgate_connector::Sink;
use serde_json::{Map, Value, json};
use tower::ServiceExt;

use super::support::{
    RecordingSink, Sample, channel_for, form_body, mango_channel, samples, settings,
    signed_mango_body, zadarma_channel, zadarma_signature,
};
use crate::body::Form;
use crate::config::{TelephonyChannel, TelephonyProvider};
use crate::endpoint::{TelephonyState, router};
use crate::webhook::{Outcome, parse_webhook};
use crate::{mango, zadarma};

/// xorshift64*: deterministic, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn byte(&mut self) -> u8 {
        const INTERESTING: &[u8] = b"%&=+{}[]\":,.0123456789-\\\0\xff\xd0";
        if self.below(2) == 0 {
            INTERESTING[self.below(INTERESTING.len())]
        } else {
            self.next() as u8
        }
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.byte();
            }
            1 => out.truncate(rng.below(out.len() + 1)),
            2 => {
                let i = rng.below(out.len() + 1);
                let b = rng.byte();
                out.insert(i, b);
            }
            3 if !out.is_empty() => {
                let a = rng.below(out.len());
                let b = (a + rng.below(16)).min(out.len());
                out.drain(a..b);
            }
            4 if !out.is_empty() => {
                let a = rng.below(out.len());
                let b = (a + rng.below(32)).min(out.len());
                let chunk = out[a..b].to_vec();
                let at = rng.below(out.len() + 1);
                out.splice(at..at, chunk);
            }
            _ => {
                let i = rng.below(out.len() + 1);
                out.splice(i..i, b"%".iter().copied());
            }
        }
    }
    out
}

fn now() -> chrono::DateTime<chrono::Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn assert_4xx_or_ok(what: &str, result: &Result<Outcome, crate::TelephonyError>) {
    if let Err(e) = result {
        assert!(
            e.status().is_client_error(),
            "{what}: {e} gives {}",
            e.status()
        );
    }
}

/// A sample with another body (and, for Zadarma, the signature of it).
fn with_body(sample: &Sample, body: Vec<u8>, signature: Option<String>) -> Sample {
    let mut s = sample.clone();
    s.body = body;
    if let Some(sig) = signature
        && let Ok(v) = HeaderValue::from_str(&sig)
    {
        s.headers.insert("signature", v);
    }
    s
}

/// The signed variants: what gets past the signature to the parsers.
fn resigned(rng: &mut Rng, sample: &Sample) -> Option<Sample> {
    let form = Form::parse(&sample.body).ok()?;
    if sample.is_mango() {
        let json = form.raw("json")?;
        return Some(with_body(
            sample,
            signed_mango_body(&mutate(rng, json.as_bytes())),
            None,
        ));
    }
    let event = form.value("event")?.to_owned();
    let sig_fields = zadarma::signature_fields(&event)?;
    let names = [
        "event",
        "call_start",
        "pbx_call_id",
        "caller_id",
        "called_did",
        "destination",
        "internal",
        "duration",
        "disposition",
        "status_code",
        "is_recorded",
        "call_id_with_rec",
    ];
    let mut pairs: Vec<(String, Vec<u8>)> = names
        .iter()
        .filter_map(|n| {
            form.raw(n)
                .map(|v| ((*n).to_owned(), v.as_bytes().to_vec()))
        })
        .collect();
    let i = rng.below(pairs.len());
    if pairs[i].0 != "event" {
        pairs[i].1 = mutate(rng, &pairs[i].1);
    }
    if rng.below(4) == 0 {
        let j = rng.below(pairs.len());
        if pairs[j].0 != "event" {
            pairs.remove(j);
        }
    }
    let value = |n: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let concat: Vec<u8> = sig_fields.iter().flat_map(|f| value(f)).collect();
    let refs: Vec<(&str, &[u8])> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    Some(with_body(
        sample,
        form_body(&refs),
        Some(zadarma_signature(&concat)),
    ))
}

#[test]
fn mutated_bodies_never_panic_the_parsers() {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let all = samples();
    let mut past_signature = 0;
    for round in 0..30 {
        for sample in &all {
            let channel = channel_for(sample);
            // Raw mutations: mostly stopped by the signature.
            let raw = with_body(sample, mutate(&mut rng, &sample.body), None);
            assert_4xx_or_ok(
                &format!("{} raw #{round}", sample.file),
                &parse_webhook(&channel, &raw.request(), now()),
            );
            // Mutated query (the URL check).
            if let Some(q) = &sample.query {
                let mut s = sample.clone();
                s.query =
                    Some(String::from_utf8_lossy(&mutate(&mut rng, q.as_bytes())).into_owned());
                assert_4xx_or_ok(
                    &format!("{} query #{round}", sample.file),
                    &parse_webhook(&channel, &s.request(), now()),
                );
            }
            // Re-signed mutations: reach the parsers.
            if let Some(s) = resigned(&mut rng, sample) {
                let result = parse_webhook(&channel, &s.request(), now());
                if !matches!(&result, Err(e) if e.status() == StatusCode::UNAUTHORIZED) {
                    past_signature += 1;
                }
                assert_4xx_or_ok(&format!("{} re-signed #{round}", sample.file), &result);
            }
        }
    }
    assert!(
        past_signature > 300,
        "only {past_signature} mutations got past the signature"
    );
}

fn random_value(rng: &mut Rng, depth: u32) -> Value {
    const KEYS: &[&str] = &[
        "entry_id",
        "call_id",
        "timestamp",
        "seq",
        "call_state",
        "from",
        "to",
        "number",
        "extension",
        "line_number",
        "disconnect_reason",
        "call_direction",
        "create_time",
        "talk_time",
        "end_time",
        "entry_result",
        "recording_id",
        "recording_state",
    ];
    match rng.below(if depth > 3 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => json!(rng.next() as i64),
        3 => json!(f64::from(rng.below(1000) as u32) - 500.5),
        4 => json!(
            [
                "Appeared",
                "Connected",
                "Disconnected",
                "OnHold",
                "Completed",
                "101",
                "79991234567",
                "",
                "x"
            ][rng.below(9)]
        ),
        5 => json!(rng.below(3_000_000_000) as i64 - 1_000_000_000),
        6 => Value::Array(
            (0..rng.below(3))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut map = Map::new();
            for _ in 0..rng.below(8) {
                map.insert(
                    KEYS[rng.below(KEYS.len())].to_owned(),
                    random_value(rng, depth + 1),
                );
            }
            Value::Object(map)
        }
    }
}

#[test]
fn random_json_never_panics_the_mango_readers() {
    let mut rng = Rng(0xC0FF_EE00_0000_0042);
    let mut read = 0;
    for _ in 0..2000 {
        let Value::Object(map) = random_value(&mut rng, 0) else {
            continue;
        };
        for max in [2, 5, 10] {
            read += usize::from(mango::call_event(&map, max).is_ok());
            read += usize::from(mango::summary(&map, max).is_ok());
            read += usize::from(matches!(mango::recording(&map, max), Ok(Some(_))));
        }
    }
    assert!(read > 0);
}

#[test]
fn mutated_generic_payloads_never_panic() {
    let mut rng = Rng(0xFEED_FACE_0000_0007);
    let mut s = settings(TelephonyProvider::Generic);
    s.fields = Some(crate::GenericFields {
        caller: "a.b".into(),
        ..crate::GenericFields::default()
    });
    let channel = TelephonyChannel::new("pbx".into(), s).unwrap();
    let seeds: [&[u8]; 3] = [
        br#"{"call_id":"c","event":"end","a":{"b":"79990001122"},"callee":"101","start_time":"2026-11-16 10:00:00","answer_time":1800000000,"end_time":"2026-11-16T10:05:00+03:00","duration":"12.5","disposition":"answered"}"#,
        b"call_id=c&event=start&caller=79990001122&callee=74950001122&timestamp=1800000000",
        b"call_id=c&direction=out&caller=101&callee=79990001122&event=hangup&duration=7",
    ];
    for _ in 0..300 {
        let seed = seeds[rng.below(seeds.len())];
        let body = mutate(&mut rng, seed);
        for ct in ["application/json", "application/x-www-form-urlencoded", ""] {
            let mut headers = http::HeaderMap::new();
            if !ct.is_empty() {
                headers.insert("content-type", HeaderValue::from_static(ct));
            }
            let request = crate::WebhookRequest {
                method: &http::Method::POST,
                path: "/",
                query: None,
                headers: &headers,
                body: &body,
            };
            assert_4xx_or_ok("generic", &parse_webhook(&channel, &request, now()));
        }
    }
}

#[tokio::test]
async fn mutated_requests_through_the_router_get_200_or_4xx() {
    let sink = RecordingSink::new();
    let app = router(TelephonyState::new(
        sink.clone() as Arc<dyn Sink>,
        vec![mango_channel(), zadarma_channel()],
    ));
    let mut rng = Rng(0xABAD_1DEA_0000_0003);
    let all = samples();
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..15 {
        for sample in &all {
            let candidate = if rng.below(2) == 0 {
                resigned(&mut rng, sample)
            } else {
                None
            }
            .unwrap_or_else(|| with_body(sample, mutate(&mut rng, &sample.body), None));
            let response = app.clone().oneshot(candidate.http_request()).await.unwrap();
            let status = response.status();
            assert!(
                status == StatusCode::OK || status.is_client_error(),
                "{}: {status} for {:?}",
                sample.file,
                String::from_utf8_lossy(&candidate.body)
            );
            *statuses.entry(status.as_u16()).or_insert(0) += 1;
        }
    }
    assert!(statuses.len() > 1, "{statuses:?}");
}
