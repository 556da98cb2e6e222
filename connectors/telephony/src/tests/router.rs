//! The corpus replayed through `router(...)` with a recording sink.

use std::collections::HashSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use leadgate_connector::{Secret, Sink};
use serde_json::Value;
use tower::ServiceExt;

use super::support::{
    RecordingSink, SinkMode, form_body, mango_channel, samples, settings, signed_mango_body,
    zadarma_channel, zadarma_signature,
};
use crate::config::{TelephonyChannel, TelephonyProvider};
use crate::endpoint::{TelephonyState, router};

fn app() -> (Router, Arc<RecordingSink>, TelephonyState) {
    let sink = RecordingSink::new();
    let state = TelephonyState::new(
        sink.clone() as Arc<dyn Sink>,
        vec![mango_channel(), zadarma_channel()],
    );
    (router(state.clone()), sink, state)
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("the router always answers");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn post(uri: &str, content_type: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(uri)
        .header("content-type", content_type)
        .body(Body::from(body))
        .unwrap()
}

fn json_message(reply: &Reply) -> String {
    let v: Value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
    assert_eq!(v["ok"], false, "an error body: {}", reply.body);
    v["message"].as_str().unwrap_or("").to_owned()
}

#[tokio::test]
async fn the_corpus_replays_with_the_expected_answers() {
    let (app, sink, _) = app();
    let mut stored = 0;
    for sample in samples() {
        let reply = send(&app, sample.http_request()).await;
        let exp = &sample.expect;
        let ctx = format!("{}: HTTP {} {:?}", sample.file, reply.status, reply.body);
        match (
            exp["http_status"].as_u64(),
            exp["http_status_in"].as_array(),
        ) {
            (Some(want), _) => assert_eq!(u64::from(reply.status.as_u16()), want, "{ctx}"),
            (None, Some(list)) => {
                assert!(list.contains(&Value::from(reply.status.as_u16())), "{ctx}")
            }
            (None, None) => assert_eq!(reply.status, StatusCode::OK, "{ctx}"),
        }
        if let Some(err) = exp["error"].as_str() {
            assert!(
                json_message(&reply).contains(err),
                "{ctx}: expected {err:?}"
            );
        }
        if let Some(echo) = exp["response_body"].as_str() {
            assert_eq!(reply.body, echo, "{ctx}");
        } else if reply.status == StatusCode::OK {
            assert_eq!(reply.body, "", "{ctx}: PBXs get an empty 200");
        }
        if sample.is_stored() {
            stored += 1;
        }
        assert_eq!(
            sink.len(),
            stored,
            "{ctx}: refused requests never reach the sink"
        );
    }
    let items = sink.items();
    assert!(items.iter().all(|i| i.call.is_some()));
    let refs: HashSet<_> = items
        .iter()
        .map(|i| (i.channel.clone(), i.source_ref.clone()))
        .collect();
    assert_eq!(refs.len(), items.len(), "one source_ref per event");
}

#[tokio::test]
async fn a_sink_that_cannot_commit_gives_503_with_retry_after() {
    let (app, sink, _) = app();
    let sample = samples().into_iter().find(|s| s.is_stored()).unwrap();
    for (mode, status) in [
        (SinkMode::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
        (SinkMode::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE),
        (SinkMode::UnknownChannel, StatusCode::NOT_FOUND),
    ] {
        sink.set_mode(mode);
        let reply = send(&app, sample.http_request()).await;
        assert_eq!(reply.status, status, "{mode:?}: {}", reply.body);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(reply.headers.get("retry-after").unwrap(), "5");
        }
        json_message(&reply);
    }
    sink.set_mode(SinkMode::Accept);
    assert_eq!(
        send(&app, sample.http_request()).await.status,
        StatusCode::OK
    );
    assert_eq!(sink.len(), 1);
}

#[tokio::test]
async fn unknown_channels_paths_and_methods() {
    let (app, sink, _) = app();
    let reply = send(
        &app,
        post(
            "/telephony/nope/events/call",
            "application/x-www-form-urlencoded",
            vec![],
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(json_message(&reply).contains("unknown telephony channel"));
    let reply = send(
        &app,
        post(
            "/telephony/mango/events",
            "application/x-www-form-urlencoded",
            vec![],
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = send(
        &app,
        post(
            "/telephony/mango",
            "application/x-www-form-urlencoded",
            vec![],
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = send(
        &app,
        Request::get("/telephony/mango/events/call")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let reply = send(
        &app,
        post(
            "/telephony/zadarma/events/call",
            "application/x-www-form-urlencoded",
            vec![],
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = send(
        &app,
        Request::delete("/telephony/zadarma/")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let reply = send(
        &app,
        Request::get("/telephony/zadarma/")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(json_message(&reply).contains("zd_echo"));
    assert_eq!(sink.len(), 0);
}

#[tokio::test]
async fn oversize_bodies_get_413_whether_declared_or_not() {
    let (app, sink, _) = app();
    let big = vec![b'a'; 64 * 1024 + 1];
    let reply = send(
        &app,
        post(
            "/telephony/mango/events/call",
            "application/x-www-form-urlencoded",
            big.clone(),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let declared = Request::post("/telephony/zadarma/")
        .header("content-length", big.len().to_string())
        .body(Body::from(big))
        .unwrap();
    assert_eq!(
        send(&app, declared).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(sink.len(), 0);
}

#[tokio::test]
async fn zadarma_base_with_and_without_slash() {
    let (app, sink, _) = app();
    let reply = send(
        &app,
        Request::get("/telephony/zadarma?zd_echo=abc%2Bdef")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "abc+def")
    );
    assert_eq!(
        reply.headers.get("content-type").unwrap(),
        "text/plain; charset=utf-8"
    );
    let start = samples()
        .into_iter()
        .find(|s| s.file.contains("zadarma_001"))
        .unwrap();
    let mut request = post(
        "/telephony/zadarma",
        "application/x-www-form-urlencoded",
        start.body.clone(),
    );
    request
        .headers_mut()
        .insert("signature", start.headers["signature"].clone());
    assert_eq!(send(&app, request).await.status, StatusCode::OK);
    assert_eq!(sink.len(), 1);
    let long = format!("/telephony/zadarma/?zd_echo={}", "x".repeat(300));
    assert_eq!(
        send(&app, Request::get(long).body(Body::empty()).unwrap())
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn untracked_but_authentic_events_are_acknowledged_and_not_stored() {
    let (app, sink, _) = app();
    let body = signed_mango_body(br#"{"entry_id":"X","dtmf":"1"}"#);
    for path in [
        "/events/dtmf",
        "/events/sms",
        "/result/callback",
        "/events/call/",
    ] {
        let reply = send(
            &app,
            post(
                &format!("/telephony/mango{path}"),
                "application/x-www-form-urlencoded",
                body.clone(),
            ),
        )
        .await;
        if path == "/events/call/" {
            // A known path (a trailing slash aside) whose json lacks call_state.
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{path}: {}",
                reply.body
            );
            assert!(json_message(&reply).contains("call_state"));
        } else {
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (StatusCode::OK, ""),
                "{path}"
            );
        }
    }
    // A recording still in progress.
    let body =
        signed_mango_body(br#"{"entry_id":"X","recording_id":"R1","recording_state":"Started"}"#);
    let reply = send(
        &app,
        post(
            "/telephony/mango/events/recording",
            "application/x-www-form-urlencoded",
            body,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(sink.len(), 0);
    // Unsigned junk on an untracked path is still refused.
    let reply = send(
        &app,
        post(
            "/telephony/mango/events/dtmf",
            "application/x-www-form-urlencoded",
            b"json={}".to_vec(),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // A Zadarma event leadgate does not track.
    let reply = send(
        &app,
        post(
            "/telephony/zadarma/",
            "application/x-www-form-urlencoded",
            b"event=SMS&text=hi".to_vec(),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let ivr = b"event=NOTIFY_IVR&call_start=2026-11-16+10%3A20%3A00&pbx_call_id=in_1&caller_id=79990000000&called_did=74950000000";
    let mut request = post(
        "/telephony/zadarma/",
        "application/x-www-form-urlencoded",
        ivr.to_vec(),
    );
    request.headers_mut().insert(
        "signature",
        zadarma_signature(b"7999000000074950000000" as &[u8])
            .parse()
            .unwrap(),
    );
    // Signed over the wrong text (call_start left out): refused.
    assert_eq!(send(&app, request).await.status, StatusCode::UNAUTHORIZED);
    let mut request = post(
        "/telephony/zadarma/",
        "application/x-www-form-urlencoded",
        ivr.to_vec(),
    );
    request.headers_mut().insert(
        "signature",
        zadarma_signature(b"79990000000749500000002026-11-16 10:20:00")
            .parse()
            .unwrap(),
    );
    assert_eq!(send(&app, request).await.status, StatusCode::OK);
    assert_eq!(sink.len(), 0);
}

#[tokio::test]
async fn mango_key_and_sign_are_both_required() {
    let (app, sink, _) = app();
    let json: &[u8] = br#"{"entry_id":"E","call_id":"L","seq":1,"call_state":"Appeared","from":{"number":"79990000001"},"to":{"number":"74951112233"}}"#;
    let good = signed_mango_body(json);
    let reply = send(
        &app,
        post(
            "/telephony/mango/events/call",
            "application/x-www-form-urlencoded",
            good,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    // The right sign for another key.
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"other_key");
    h.update(json);
    h.update(b"test_salt");
    let sign = hex::encode(h.finalize());
    let body = form_body(&[
        ("vpbx_api_key", b"other_key"),
        ("sign", sign.as_bytes()),
        ("json", json),
    ]);
    let reply = send(
        &app,
        post(
            "/telephony/mango/events/call",
            "application/x-www-form-urlencoded",
            body,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(json_message(&reply).contains("bad signature"));
    // No sign at all.
    let body = form_body(&[("vpbx_api_key", b"test_key"), ("json", json)]);
    let reply = send(
        &app,
        post(
            "/telephony/mango/events/call",
            "application/x-www-form-urlencoded",
            body,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // An upper-case hex sign is the same sign.
    let mut h = Sha256::new();
    h.update(b"test_key");
    h.update(json);
    h.update(b"test_salt");
    let sign = hex::encode_upper(h.finalize());
    let body = form_body(&[
        ("vpbx_api_key", b"test_key"),
        ("sign", sign.as_bytes()),
        ("json", json),
    ]);
    let reply = send(
        &app,
        post(
            "/telephony/mango/events/call",
            "application/x-www-form-urlencoded",
            body,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(sink.len(), 2);
}

#[tokio::test]
async fn zadarma_without_a_secret_takes_unsigned_events() {
    let sink = RecordingSink::new();
    let channel =
        TelephonyChannel::new("zadarma".into(), settings(TelephonyProvider::Zadarma)).unwrap();
    assert!(!channel.verifies_requests());
    let app = router(TelephonyState::new(
        sink.clone() as Arc<dyn Sink>,
        vec![channel],
    ));
    for sample in samples().into_iter().filter(|s| !s.is_mango()) {
        let reply = send(&app, sample.http_request()).await;
        // Without a secret the forged sample is indistinguishable from a real one.
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{}: {}",
            sample.file,
            reply.body
        );
    }
    assert_eq!(
        sink.len(),
        samples()
            .iter()
            .filter(|s| !s.is_mango() && s.kind != "verification")
            .count()
    );
}

#[tokio::test]
async fn a_reload_replaces_the_channels() {
    let (app, sink, state) = app();
    let sample = samples()
        .into_iter()
        .find(|s| s.is_mango() && s.is_stored())
        .unwrap();
    assert_eq!(
        send(&app, sample.http_request()).await.status,
        StatusCode::OK
    );
    let mut s = settings(TelephonyProvider::Mango);
    s.api_key = Some(Secret::new("test_key"));
    s.api_salt = Some(Secret::new("rotated_salt"));
    state.set_channels(vec![TelephonyChannel::new("mango".into(), s).unwrap()]);
    assert_eq!(
        send(&app, sample.http_request()).await.status,
        StatusCode::UNAUTHORIZED
    );
    state.set_channels(vec![]);
    assert_eq!(
        send(&app, sample.http_request()).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(sink.len(), 1);
}
