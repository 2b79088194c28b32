//! A websocket client speaking the GraphQL subprotocols, for tests.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A websocket client speaking one GraphQL subprotocol.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a websocket and completes `connection_init` with a bearer token.
pub async fn ws_authed(url: &str, protocol: &str, token: &str) -> Ws {
    let mut ws = ws_connect(url, protocol).await;
    ws_send(
        &mut ws,
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } }),
    )
    .await;
    assert_eq!(ws_next_json(&mut ws).await["type"], "connection_ack");
    ws
}

/// Opens a websocket with the given subprotocol.
pub async fn ws_connect(url: &str, protocol: &str) -> Ws {
    let mut req = url.into_client_request().expect("ws request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        protocol.parse().expect("header value"),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket connects");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(protocol)
    );
    ws
}

/// Sends a JSON message.
pub async fn ws_send(ws: &mut Ws, msg: Value) {
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .expect("ws send");
}

/// The next JSON text message for which `keep` holds; panics after 10 s or on a close.
async fn ws_next_matching(ws: &mut Ws, keep: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("message within 10 s")
            .expect("stream open")
            .expect("no ws error");
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).expect("json message");
                if keep(&v) {
                    return v;
                }
            }
            Message::Close(frame) => panic!("unexpected close: {frame:?}"),
            _ => continue,
        }
    }
}

/// The next JSON text message, skipping protocol keep-alives; panics after 10 s.
pub async fn ws_next_json(ws: &mut Ws) -> Value {
    ws_next_matching(ws, |v| {
        !matches!(v["type"].as_str(), Some("ka" | "ping" | "pong"))
    })
    .await
}

/// The close frame's code, waiting up to `secs`.
pub async fn ws_close_code(ws: &mut Ws, secs: u64) -> Option<u16> {
    ws_close_frame(ws, secs).await.map(|(code, _)| code)
}

/// The close frame (code, reason), waiting up to `secs`.
pub async fn ws_close_frame(ws: &mut Ws, secs: u64) -> Option<(u16, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match msg {
            Ok(Message::Close(Some(frame))) => {
                return Some((frame.code.into(), frame.reason.to_string()));
            }
            Ok(Message::Close(None)) => return Some((1005, String::new())),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// The next JSON message of type `ty` (others skipped); panics after 10 s.
pub async fn ws_next_of_type(ws: &mut Ws, ty: &str) -> Value {
    ws_next_matching(ws, |v| v["type"] == ty).await
}
