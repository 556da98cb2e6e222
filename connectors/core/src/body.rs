//! Bounded request bodies for push connectors (forms, webhooks).
//!
//! Refusing an oversized body by closing the connection with unread bytes
//! in it makes the kernel reset the socket, and most HTTP clients then
//! report "connection reset" instead of the 413 we sent. So an oversized
//! body is drained (up to a bound in bytes and time, like nginx's lingering
//! close) before the refusal is answered.

use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};

/// How much of an oversized body is read and thrown away so its sender
/// sees the 413; beyond it the connection is simply closed.
const DRAIN_BYTES: usize = 8 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the client stopped sending the body: {0}")]
    Interrupted(String),
}

/// Read a request body of at most `limit` bytes.
pub async fn read_bounded(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|len| len > limit as u64) {
        drain(stream).await;
        return Err(BodyError::TooLarge(limit));
    }
    let mut buf = BytesMut::with_capacity(declared.map_or(0, |len| len as usize));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Interrupted(e.to_string()))?;
        if buf.len() + chunk.len() > limit {
            drain(stream).await;
            return Err(BodyError::TooLarge(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

async fn drain(mut stream: axum::body::BodyDataStream) {
    let discard = async {
        let mut seen = 0usize;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

/// The JSON refusal every push endpoint answers with:
/// `{"ok": false, "error": <stable code>, "message": <for the integrator>}`,
/// with `Retry-After` when the store is down so the sender retries later.
pub fn error_reply(status: StatusCode, code: &str, message: String, store_down: bool) -> Response {
    let body = serde_json::json!({"ok": false, "error": code, "message": message});
    let mut response = (status, axum::Json(body)).into_response();
    if store_down {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(len: Option<usize>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(len) = len {
            h.insert(header::CONTENT_LENGTH, len.to_string().parse().unwrap());
        }
        h
    }

    #[tokio::test]
    async fn reads_up_to_the_limit_and_refuses_beyond() {
        let ok = read_bounded(&headers(None), Body::from("abcd"), 4).await;
        assert_eq!(ok.unwrap(), Bytes::from_static(b"abcd"));
        let over = read_bounded(&headers(None), Body::from("abcde"), 4).await;
        assert_eq!(over, Err(BodyError::TooLarge(4)));
        let declared = read_bounded(&headers(Some(10)), Body::from("ab"), 4).await;
        assert_eq!(declared, Err(BodyError::TooLarge(4)));
    }
}
