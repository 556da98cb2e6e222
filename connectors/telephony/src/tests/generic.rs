//! The generic (templated) webhook: mapping, values, auth.

use std::sync::Arc;

use axum::body::Body;
use chrono::DateTime;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Method, Request, StatusCode};
use leadgate_connector::{CallDirection, CallPhase, Secret, Sink};
use tower::ServiceExt;

use super::support::{RecordingSink, settings};
use crate::config::{GenericFields, GenericValues, TelephonyChannel, TelephonyProvider};
use crate::endpoint::{TelephonyState, router};
use crate::error::TelephonyError;
use crate::webhook::{Outcome, WebhookRequest, parse_webhook};

fn channel(configure: impl FnOnce(&mut crate::TelephonySettings)) -> TelephonyChannel {
    let mut s = settings(TelephonyProvider::Generic);
    configure(&mut s);
    TelephonyChannel::new("pbx".into(), s).unwrap()
}

fn run(
    channel: &TelephonyChannel,
    method: Method,
    query: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Outcome, TelephonyError> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let request = WebhookRequest {
        method: &method,
        path: "/",
        query,
        headers: &map,
        body,
    };
    parse_webhook(
        channel,
        &request,
        DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
    )
}

fn call(
    outcome: Result<Outcome, TelephonyError>,
) -> (leadgate_connector::Inbound, leadgate_connector::CallEvent) {
    match outcome {
        Ok(Outcome::Store(item)) => {
            let call = item.call.clone().unwrap();
            (*item, call)
        }
        other => panic!("expected an item, got {other:?}"),
    }
}

const JSON: &str = "application/json";

#[test]
fn a_uis_like_json_mapping() {
    let ch = channel(|s| {
        s.time_offset = Some("+03:00".into());
        s.fields = Some(GenericFields {
            call_id: "call_session_id".into(),
            event: "notification_name".into(),
            direction: "direction".into(),
            caller: "contact.phone".into(),
            callee: "virtual_phone_number".into(),
            start_time: "start_time".into(),
            answer_time: "answer_time".into(),
            end_time: "finish_time".into(),
            disposition: "finish_reason".into(),
            recording_url: "records.0".into(),
            ..GenericFields::default()
        });
        s.values = Some(GenericValues {
            ringing: vec!["call_start".into()],
            ended: vec!["call_end".into()],
            answered_dispositions: vec![
                "subscriber_disconnects".into(),
                "operator_disconnects".into(),
            ],
            ..GenericValues::default()
        });
    });
    let start = br#"{"call_session_id":123,"notification_name":"call_start","direction":"in",
        "contact":{"phone":"79991112233"},"virtual_phone_number":"74950001122","start_time":"2026-11-16 13:20:00"}"#;
    let (item, e) = call(run(
        &ch,
        Method::POST,
        None,
        &[("content-type", JSON)],
        start,
    ));
    assert_eq!(e.call_id, "123");
    assert_eq!(
        (e.direction, e.phase),
        (CallDirection::Inbound, CallPhase::Ringing)
    );
    assert_eq!(e.client_number.as_deref(), Some("79991112233"));
    assert_eq!(e.line.as_deref(), Some("74950001122"));
    assert_eq!(
        e.at,
        DateTime::from_timestamp(1_794_824_400, 0),
        "13:20 at +03:00 is 10:20 UTC"
    );
    assert_eq!(
        item.text.as_deref(),
        Some("Incoming call from 79991112233 to line 74950001122")
    );
    assert!(
        item.source_ref
            .starts_with("generic:123:ringing:call_start:")
    );

    let end = br#"{"call_session_id":123,"notification_name":"call_end","direction":"in",
        "contact":{"phone":"79991112233"},"virtual_phone_number":"74950001122","start_time":"2026-11-16 13:20:00",
        "answer_time":"2026-11-16 13:20:12","finish_time":"2026-11-16 13:22:12","finish_reason":"subscriber_disconnects",
        "records":["https://pbx.example/rec/1.mp3"]}"#;
    let (item2, e) = call(run(&ch, Method::POST, None, &[("content-type", JSON)], end));
    assert_eq!(e.phase, CallPhase::Ended);
    assert_eq!(e.answered, Some(true));
    assert_eq!(e.talk_seconds, Some(120));
    assert_eq!(e.wait_seconds, Some(12));
    assert_eq!(
        e.recording.as_deref(),
        Some("https://pbx.example/rec/1.mp3")
    );
    assert_ne!(item.source_ref, item2.source_ref);

    // A notification the mapping does not name is acknowledged, not stored.
    let other = br#"{"call_session_id":123,"notification_name":"call_transfer"}"#;
    assert!(matches!(
        run(&ch, Method::POST, None, &[("content-type", JSON)], other),
        Ok(Outcome::Ignore(_))
    ));
}

#[test]
fn a_sipuni_like_get_with_a_query_token() {
    let ch = channel(|s| {
        s.token = Some(Secret::new("tok"));
        s.fields = Some(GenericFields {
            call_id: "call_id".into(),
            event: "event".into(),
            caller: "src_num".into(),
            callee: "dst_num".into(),
            duration: "call_duration".into(),
            disposition: "status".into(),
            ..GenericFields::default()
        });
        s.values = Some(GenericValues {
            ringing: vec!["1".into()],
            ended: vec!["2".into()],
            answered_dispositions: vec!["ANSWER".into()],
            ..GenericValues::default()
        });
    });
    let q = "token=tok&event=2&call_id=c-9&src_num=101&dst_num=79995550011&status=NOANSWER&call_duration=0";
    let (item, e) = call(run(&ch, Method::GET, Some(q), &[], b""));
    assert_eq!(
        (e.direction, e.phase),
        (CallDirection::Outbound, CallPhase::Ended)
    );
    assert_eq!(e.client_number.as_deref(), Some("79995550011"));
    assert_eq!(e.extension.as_deref(), Some("101"));
    assert_eq!(e.answered, Some(false));
    assert_eq!(e.end_reason.as_deref(), Some("NOANSWER"));
    assert_eq!(item.raw, q);
    let wrong = q.replace("token=tok", "token=nope");
    assert!(matches!(
        run(&ch, Method::GET, Some(&wrong), &[], b""),
        Err(TelephonyError::BadSignature(_))
    ));
    let none = q.replace("token=tok&", "");
    assert!(matches!(
        run(&ch, Method::GET, Some(&none), &[], b""),
        Err(TelephonyError::BadSignature(_))
    ));
    // In the header instead.
    assert!(
        run(
            &ch,
            Method::GET,
            Some(&none),
            &[("x-leadgate-key", "tok")],
            b""
        )
        .is_ok()
    );
}

#[test]
fn an_hmac_of_the_body() {
    let ch = channel(|s| {
        s.hmac_secret = Some(Secret::new("k"));
        s.hmac_header = Some("X-Hub-Signature".into());
    });
    let body = br#"{"call_id":"a","event":"end","caller":"79990001122","callee":"74950001122","duration":"30","disposition":"answered"}"#;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"k").unwrap();
    mac.update(body);
    let sig = hex::encode(mac.finalize().into_bytes());
    let (_, e) = call(run(
        &ch,
        Method::POST,
        None,
        &[("content-type", JSON), ("x-hub-signature", &sig)],
        body,
    ));
    assert_eq!(
        (e.direction, e.phase, e.answered, e.talk_seconds),
        (
            CallDirection::Inbound,
            CallPhase::Ended,
            Some(true),
            Some(30)
        )
    );
    let prefixed = format!("sha256={sig}");
    assert!(
        run(
            &ch,
            Method::POST,
            None,
            &[("content-type", JSON), ("x-hub-signature", &prefixed)],
            body
        )
        .is_ok()
    );
    let tampered = body
        .iter()
        .copied()
        .map(|b| if b == b'3' { b'4' } else { b })
        .collect::<Vec<_>>();
    let err = run(
        &ch,
        Method::POST,
        None,
        &[("content-type", JSON), ("x-hub-signature", &sig)],
        &tampered,
    )
    .unwrap_err();
    assert!(err.to_string().contains("bad signature"), "{err}");
    assert!(
        run(
            &ch,
            Method::POST,
            None,
            &[("content-type", JSON), ("x-hub-signature", "zz")],
            body
        )
        .is_err()
    );
    assert!(run(&ch, Method::POST, None, &[("content-type", JSON)], body).is_err());
}

#[test]
fn default_mapping_guesses_direction_and_phase() {
    let ch = channel(|_| {});
    let form = b"call_id=z1&caller=101&callee=102";
    let (item, e) = call(run(
        &ch,
        Method::POST,
        None,
        &[("content-type", "application/x-www-form-urlencoded")],
        form,
    ));
    assert_eq!(
        (e.direction, e.phase),
        (CallDirection::Internal, CallPhase::Ringing)
    );
    assert!(item.sender.identities.is_empty());
    assert_eq!(
        item.text.as_deref(),
        Some("Internal call from extension 101 to 102")
    );
    let (_, e) = call(run(
        &ch,
        Method::POST,
        None,
        &[],
        b"call_id=z2&caller=79990001122&answer_time=1800000000",
    ));
    assert_eq!(
        (e.direction, e.phase),
        (CallDirection::Inbound, CallPhase::Answered)
    );
    let (_, e) = call(run(
        &ch,
        Method::POST,
        None,
        &[],
        b"call_id=z3&caller=79990001122&duration=0",
    ));
    assert_eq!((e.phase, e.answered), (CallPhase::Ended, Some(false)));
    // An event id makes the source_ref.
    let (item, _) = call(run(
        &ch,
        Method::POST,
        None,
        &[],
        b"call_id=z3&event_id=e77&caller=79990001122",
    ));
    assert_eq!(item.source_ref, "generic:z3:e77");
}

#[test]
fn generic_refusals_name_the_field() {
    let ch = channel(|_| {});
    let err = run(&ch, Method::POST, None, &[], b"caller=79990001122").unwrap_err();
    assert_eq!(err, TelephonyError::MissingField("call_id".into()));
    let err = run(&ch, Method::POST, None, &[], b"call_id=a&duration=soon").unwrap_err();
    assert!(err.to_string().contains("`duration`"), "{err}");
    let err = run(
        &ch,
        Method::POST,
        None,
        &[],
        b"call_id=a&start_time=yesterday",
    )
    .unwrap_err();
    assert!(err.to_string().contains("`start_time`"), "{err}");
    let err = run(
        &ch,
        Method::POST,
        None,
        &[("content-type", JSON)],
        b"{\"call_id\":",
    )
    .unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    let err = run(&ch, Method::PUT, None, &[], b"call_id=a").unwrap_err();
    assert_eq!(err.status(), StatusCode::METHOD_NOT_ALLOWED);
    let long = format!("call_id={}", "a".repeat(300));
    assert_eq!(
        run(&ch, Method::POST, None, &[], long.as_bytes())
            .unwrap_err()
            .status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn generic_through_the_router() {
    let sink = RecordingSink::new();
    let ch = channel(|s| s.token = Some(Secret::new("tok")));
    let app = router(TelephonyState::new(sink.clone() as Arc<dyn Sink>, vec![ch]));
    let request = |key: &str| {
        Request::post("/telephony/pbx")
            .header("content-type", JSON)
            .header("x-leadgate-key", key)
            .body(Body::from(
                r#"{"call_id":"g1","caller":"79990001122","event":"start"}"#,
            ))
            .unwrap()
    };
    let reply = app.clone().oneshot(request("tok")).await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let reply = app.clone().oneshot(request("bad")).await.unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(sink.len(), 1);
    assert_eq!(sink.items()[0].call.as_ref().unwrap().call_id, "g1");
}
