//! One WebSocket to Janus: requests matched with their replies by transaction,
//! everything else handed on as an event, and the session kept alive.
//!
//! Loop: one task owns the socket and `select!`s over incoming frames, outgoing
//! requests and the keep-alive timer. A request that wants a reply parks a oneshot
//! under its transaction; the first frame of that transaction other than `ack` (a
//! `success`, an `error`, or the plugin's asynchronous `event`) answers it. Frames of
//! no pending transaction (plugin events, `webrtcup`, `hangup`, ...) go to the events
//! channel. The task ends when the socket closes or every sender is dropped; pending
//! requests then fail as closed.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::JanusError;

/// The subprotocol Janus's WebSocket transport requires.
const SUBPROTOCOL: &str = "janus-protocol";
/// Janus drops a session after 60 s without a request; keep-alives go out well before.
const KEEPALIVE: Duration = Duration::from_secs(20);
/// Longest wait for the reply to one request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

enum Outgoing {
    Request {
        body: Value,
        reply: Option<oneshot::Sender<Value>>,
    },
    /// From now on, send keep-alives for this session.
    KeepAlive { session: u64 },
}

/// The sending side of a Janus WebSocket; cheap to clone.
#[derive(Clone)]
pub struct JanusSocket {
    outgoing: mpsc::UnboundedSender<Outgoing>,
}

/// Opens a socket to `url` and starts its task; events arrive on the receiver.
pub async fn connect(
    url: &str,
) -> Result<(JanusSocket, mpsc::UnboundedReceiver<Value>), JanusError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| JanusError::Connect(e.to_string()))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| JanusError::Connect(e.to_string()))?;
    let (outgoing, requests) = mpsc::unbounded_channel();
    let (events_tx, events) = mpsc::unbounded_channel();
    tokio::spawn(run(socket, requests, events_tx));
    Ok((JanusSocket { outgoing }, events))
}

impl JanusSocket {
    /// Sends `body` and waits for its reply; a Janus or plugin error is an error.
    pub async fn request(&self, body: Value) -> Result<Value, JanusError> {
        let (reply, rx) = oneshot::channel();
        let request = Outgoing::Request {
            body,
            reply: Some(reply),
        };
        self.outgoing
            .send(request)
            .map_err(|_| JanusError::Closed)?;
        let reply = match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(JanusError::Closed),
            Err(_) => return Err(JanusError::Timeout("a reply from Janus")),
        };
        super::api::check(reply)
    }

    /// Sends `body` without waiting for anything back.
    pub fn send(&self, body: Value) {
        let _ = self.outgoing.send(Outgoing::Request { body, reply: None });
    }

    pub fn keep_alive(&self, session: u64) {
        let _ = self.outgoing.send(Outgoing::KeepAlive { session });
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn run(
    socket: Socket,
    mut requests: mpsc::UnboundedReceiver<Outgoing>,
    events: mpsc::UnboundedSender<Value>,
) {
    let (mut sink, mut stream) = socket.split();
    let mut pending: HashMap<String, oneshot::Sender<Value>> = HashMap::new();
    let mut next_transaction = 0u64;
    let mut session = None;
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    loop {
        let out = tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    route(&text, &mut pending, &events);
                    continue;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => continue,
            },
            request = requests.recv() => match request {
                Some(Outgoing::Request { mut body, reply }) => {
                    next_transaction += 1;
                    let transaction = format!("t{next_transaction}");
                    body["transaction"] = json!(transaction);
                    if let Some(reply) = reply {
                        pending.insert(transaction, reply);
                    }
                    body
                }
                Some(Outgoing::KeepAlive { session: id }) => {
                    session = Some(id);
                    continue;
                }
                None => break,
            },
            _ = keepalive.tick() => match session {
                Some(id) => json!({"janus": "keepalive", "session_id": id, "transaction": "ka"}),
                None => continue,
            },
        };
        if sink.send(Message::text(out.to_string())).await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
}

/// Answers the pending request a frame belongs to, or passes the frame on as an event.
fn route(
    text: &str,
    pending: &mut HashMap<String, oneshot::Sender<Value>>,
    events: &mpsc::UnboundedSender<Value>,
) {
    let Ok(frame) = serde_json::from_str::<Value>(text) else {
        return;
    };
    if frame["janus"] == "ack" {
        return;
    }
    let waiting = frame["transaction"]
        .as_str()
        .and_then(|transaction| pending.remove(transaction));
    match waiting {
        Some(reply) => {
            let _ = reply.send(frame);
        }
        None => {
            let _ = events.send(frame);
        }
    }
}
