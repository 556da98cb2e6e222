//! The corpus samples (../shared/corpus/vk) through the parser and the
//! Callback endpoint, with a sink that records what it is given.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use chrono::Utc;
use http::{Request, StatusCode};
use leadgate_connector::{
    Batch, BoxFuture, Disposition, Flag, IdentityKind, Inbound, Receipt, Sink, SinkError,
};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{VkChannel, VkSettings, VkState, parse_event, router, vk_fields};

fn corpus_dir() -> PathBuf {
    std::env::var_os("LEADGATE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"))
}

fn sample_text(name: &str) -> String {
    let path = corpus_dir().join("vk").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn sample(name: &str) -> Value {
    serde_json::from_str(&sample_text(name)).unwrap()
}

fn channel(extra: &str) -> VkChannel {
    let settings: VkSettings = toml::from_str(&format!(
        "group_id = 229000001\nconfirmation = \"a1b2c3d4\"\nsecret = \"vk_test_secret\"\nfetch_names = false\n{extra}"
    ))
    .unwrap();
    VkChannel::new("vk".into(), settings).unwrap()
}

fn parse(name: &str) -> Inbound {
    let event = sample(name);
    parse_event(&channel(""), &event, event.to_string(), Utc::now()).inbound
}

#[test]
fn a_message_from_a_user_may_be_a_lead() {
    let i = parse("002_message_new.json");
    assert_eq!(i.source_ref, "msg:700000001:101");
    assert!(i.flags.is_empty(), "{:?}", i.flags);
    assert_eq!(i.sender.identities[0].kind, IdentityKind::Vk);
    assert_eq!(i.sender.identities[0].value, "700000001");
    assert_eq!(
        i.text.as_deref(),
        Some("Здравствуйте! Сколько стоит доставка в Пермь?")
    );
    assert_eq!(i.received_at.timestamp(), 1763283300);
    assert_eq!(i.field(vk_fields::EVENT_ID), Some("a1e5f0c2d3b4a5968778"));
}

#[test]
fn a_product_card_fills_the_product() {
    let i = parse("003_message_market_product.json");
    assert_eq!(i.field("product"), Some("Станок ЧПУ 6090"));
    assert_eq!(i.field("product_id"), Some("-229000001_8801234"));
    assert_eq!(i.field("price"), Some("450000.00"));
    assert_eq!(i.field("currency"), Some("RUB"));
    assert_eq!(
        i.field("product_url"),
        Some("https://vk.com/product-229000001_8801234")
    );
    assert!(i.flags.is_empty());
}

#[test]
fn links_are_kept_as_page_url() {
    let i = parse("004_message_link.json");
    assert_eq!(
        i.field("page_url"),
        Some("https://ourcompany.example/catalog/x200?utm_source=vk&utm_campaign=wall")
    );
    assert_eq!(i.text.as_deref(), Some("Вот этот нужен"));
}

#[test]
fn other_events_are_recorded_not_leads_unless_listed() {
    for (name, source_ref) in [
        ("005_wall_reply_new.json", "wall_reply_new:-229000001:55"),
        ("006_group_join.json", "event:e5e5f0c2d3b4a596877c"),
    ] {
        let i = parse(name);
        assert_eq!(i.source_ref, source_ref);
        assert!(
            matches!(&i.flags[..], [Flag::NotLead(why)] if why.contains("lead_events")),
            "{name}: {:?}",
            i.flags
        );
    }
    let comments_are_leads = channel("lead_events = [\"message_new\", \"wall_reply_new\"]");
    let event = sample("005_wall_reply_new.json");
    let i = parse_event(&comments_are_leads, &event, String::new(), Utc::now()).inbound;
    assert!(i.flags.is_empty(), "{:?}", i.flags);
    assert_eq!(i.sender.identities[0].value, "700000004");
    assert_eq!(i.text.as_deref(), Some("А доставка есть?"));
}

#[test]
fn community_replies_are_outgoing() {
    let i = parse("007_message_reply_outgoing.json");
    assert!(matches!(&i.flags[..], [Flag::Outgoing(_)]), "{:?}", i.flags);
    assert_eq!(i.source_ref, "msg:700000001:104");
    assert!(i.sender.identities.is_empty());
}

#[test]
fn broken_events_are_invalid_with_the_reason() {
    let i = parse("009_missing_type.json");
    assert!(
        matches!(&i.flags[..], [Flag::Invalid(why)] if why == "missing type"),
        "{:?}",
        i.flags
    );
    assert!(i.source_ref.starts_with("event:sha256:"));
    let c = channel("");
    let cases = [
        (json!([1, 2]), "not a JSON object"),
        (json!({"type": 5, "object": {}}), "`type`"),
        (json!({"type": "message_new"}), "missing object"),
        (json!({"type": "message_new", "object": "x"}), "`object`"),
        (
            json!({"type": "message_new", "object": {"message": {"from_id": "abc"}}}),
            "`object.message.from_id`",
        ),
        (
            json!({"type": "message_new", "object": {"message": {"text": "x"}}}),
            "missing field `object.message.from_id`",
        ),
        (
            json!({"type": "message_new", "object": {"message": {"from_id": 1, "text": 7}}}),
            "`object.message.text`",
        ),
        (
            json!({"type": "message_new", "object": {"message": {"from_id": 1, "attachments": {}}}}),
            "attachments",
        ),
        (
            json!({"type": "message_new", "group_id": 1, "object": {"message": {"from_id": 1}}}),
            "community 1",
        ),
    ];
    for (event, want) in cases {
        let i = parse_event(&c, &event, event.to_string(), Utc::now()).inbound;
        assert!(
            matches!(&i.flags[..], [Flag::Invalid(why)] if why.contains(want)),
            "{event}: {:?}",
            i.flags
        );
    }
}

#[test]
fn the_same_message_by_callback_and_long_poll_has_one_ref() {
    let batch = sample("011_longpoll_updates.json");
    let update = &batch["updates"][1];
    let by_poll = parse_event(&channel(""), update, update.to_string(), Utc::now()).inbound;
    assert_eq!(by_poll.source_ref, "msg:700000011:202");
    assert_eq!(by_poll.field("product"), Some("Станок ЧПУ 6090"));
    let mut as_callback = update.clone();
    as_callback["secret"] = json!("vk_test_secret");
    as_callback["event_id"] = json!("another-id-for-the-same-message");
    let by_callback = parse_event(&channel(""), &as_callback, String::new(), Utc::now()).inbound;
    assert_eq!(by_callback.source_ref, by_poll.source_ref);
}

#[test]
fn group_chats_and_edits_are_not_leads_and_pre_5_103_messages_read() {
    let c = channel("");
    let chat = json!({"type": "message_new", "object": {"message": {"from_id": 5, "peer_id": 2000000007, "conversation_message_id": 3, "text": "hi"}}});
    let i = parse_event(&c, &chat, String::new(), Utc::now()).inbound;
    assert!(matches!(&i.flags[..], [Flag::NotLead(w)] if w.contains("group chat 7")));
    let edit = json!({"type": "message_edit", "object": {"from_id": 5, "peer_id": 5, "conversation_message_id": 3, "update_time": 99, "text": "hi!"}});
    let i = parse_event(&c, &edit, String::new(), Utc::now()).inbound;
    assert_eq!(i.source_ref, "edit:msg:5:3:99");
    assert!(matches!(&i.flags[..], [Flag::NotLead(_)]));
    let old = json!({"type": "message_new", "object": {"id": 77, "from_id": 5, "peer_id": 5, "text": "old shape", "out": 0}});
    let i = parse_event(&c, &old, String::new(), Utc::now()).inbound;
    assert_eq!(i.source_ref, "msg:id:77");
    assert!(i.flags.is_empty());
}

/// Records submitted items; answers like the store would (a repeated ref
/// is a duplicate), or fails when told the store is down.
#[derive(Default)]
struct RecordingSink {
    items: Mutex<Vec<Inbound>>,
    down: Mutex<bool>,
}

impl Sink for RecordingSink {
    fn submit(&self, batch: Batch) -> BoxFuture<'_, Result<Vec<Receipt>, SinkError>> {
        Box::pin(async move {
            if *self.down.lock().unwrap() {
                return Err(SinkError::Unavailable("test: store down".into()));
            }
            let mut items = self.items.lock().unwrap();
            let mut receipts = Vec::new();
            for item in batch.items {
                let seen = items.iter().any(|i| i.source_ref == item.source_ref);
                receipts.push(Receipt {
                    inbound_id: items.len() as i64 + 1,
                    disposition: if seen {
                        Disposition::Duplicate
                    } else {
                        Disposition::LeadCreated
                    },
                    lead_id: None,
                });
                if !seen {
                    items.push(item);
                }
            }
            Ok(receipts)
        })
    }

    fn save_cursor(
        &self,
        _channel: leadgate_connector::ChannelId,
        _cursor: leadgate_connector::CursorUpdate,
    ) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

async fn post(state: &VkState, channel: &str, body: impl Into<Body>) -> (StatusCode, String) {
    let response = router(state.clone())
        .oneshot(
            Request::post(format!("/vk/{channel}"))
                .header("content-type", "application/json")
                .body(body.into())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn callback_answers_as_vk_expects() {
    let sink = Arc::new(RecordingSink::default());
    let state = VkState::new(sink.clone(), vec![channel("")]);

    let (status, body) = post(&state, "vk", sample_text("001_confirmation.json")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a1b2c3d4"));

    let (status, body) = post(&state, "vk", sample_text("002_message_new.json")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let (status, _) = post(&state, "vk", sample_text("002_message_new.json")).await;
    assert_eq!(status, StatusCode::OK, "a retry is answered ok too");
    assert_eq!(sink.items.lock().unwrap().len(), 1);
    let stored = sink.items.lock().unwrap()[0].raw.clone();
    assert!(!stored.contains("vk_test_secret"), "the secret is not kept");

    let (status, body) = post(&state, "vk", sample_text("008_wrong_secret.json")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("secret mismatch"), "{body}");
    let mut no_secret = sample("002_message_new.json");
    no_secret.as_object_mut().unwrap().remove("secret");
    no_secret["object"]["message"]["conversation_message_id"] = json!(999);
    let (status, _) = post(&state, "vk", no_secret.to_string()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, body) = post(&state, "vk", sample_text("017_truncated.json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("truncated JSON"), "{body}");
    let (status, _) = post(&state, "vk", "not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, body) = post(&state, "vk", sample_text("009_missing_type.json")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert!(matches!(
        &sink.items.lock().unwrap().last().unwrap().flags[..],
        [Flag::Invalid(why)] if why == "missing type"
    ));

    let mut other_group = sample("003_message_market_product.json");
    other_group["group_id"] = json!(1);
    let (status, body) = post(&state, "vk", other_group.to_string()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, _) = post(&state, "nope", sample_text("002_message_new.json")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        sink.items.lock().unwrap().len(),
        2,
        "refused requests store nothing"
    );

    *sink.down.lock().unwrap() = true;
    let (status, _) = post(&state, "vk", sample_text("003_message_market_product.json")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "VK must retry");
}

#[tokio::test]
async fn oversized_bodies_and_long_poll_channels_are_refused() {
    let sink = Arc::new(RecordingSink::default());
    let small = channel("max_body_bytes = 64");
    let poller: VkSettings =
        toml::from_str("group_id = 229000001\nmode = \"long_poll\"\ntoken = \"t\"\n").unwrap();
    let poller = VkChannel::new("lp".into(), poller).unwrap();
    let state = VkState::new(sink.clone(), vec![small, poller]);
    let (status, _) = post(&state, "vk", sample_text("002_message_new.json")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, body) = post(&state, "lp", sample_text("002_message_new.json")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(sink.items.lock().unwrap().is_empty());
}
