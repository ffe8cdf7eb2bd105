//! The signaling socket's two tasks: a reader that guards and parses, a writer that sends.
//!
//! The reader enforces the size and rate limits before anything reaches the
//! participant actor, so a flooding client costs the node a token-bucket check per
//! frame and nothing more. Frames that pass are parsed here and delivered as typed
//! [`ClientMessage`]s. The writer owns the socket's send half; everyone else queues
//! frames through an [`Outbox`], which keeps replies in order.

use std::time::Instant;

use actix::Recipient;
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use tokio::sync::mpsc;
use tracing::debug;

use crate::signal::protocol::{parse_client_message, ClientMessage, ErrorCode, ServerMessage};
use crate::signal::rate::{RateLimiter, Verdict};

/// Frames a client may leave unread before it is considered gone.
const OUTBOX_CAPACITY: usize = 1024;

/// What the reader tells the participant.
#[derive(actix::Message, Debug)]
#[rtype(result = "()")]
pub enum Inbound {
    Message(ClientMessage),
    /// The socket closed or failed; `None` when the client closed it cleanly.
    Closed(Option<String>),
}

enum Outgoing {
    Text(String),
    Pong(bytes::Bytes),
    Close(CloseReason),
    /// Drop the connection without a close frame.
    Abort,
}

/// The sending side of a socket, cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
}

impl Outbox {
    /// Queues a message; false if the socket is gone or the client stopped reading.
    pub fn send(&self, message: &ServerMessage) -> bool {
        self.tx.try_send(Outgoing::Text(message.to_json())).is_ok()
    }

    pub fn close(&self, code: CloseCode, description: &str) {
        let reason = CloseReason {
            code,
            description: Some(description.to_owned()),
        };
        let _ = self.tx.try_send(Outgoing::Close(reason));
    }

    /// Ends the connection without a close frame, as a broken network would.
    pub fn abort(&self) {
        let _ = self.tx.try_send(Outgoing::Abort);
    }
}

/// Limits the reader enforces.
#[derive(Debug, Clone, Copy)]
pub struct ReaderLimits {
    pub max_message_bytes: usize,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
}

/// Starts the writer task and returns its outbox.
pub fn spawn_writer(mut session: Session) -> Outbox {
    let (tx, mut rx) = mpsc::channel(OUTBOX_CAPACITY);
    actix_web::rt::spawn(async move {
        while let Some(frame) = rx.recv().await {
            let sent = match frame {
                Outgoing::Text(text) => session.text(text).await,
                Outgoing::Pong(bytes) => session.pong(&bytes).await,
                Outgoing::Close(reason) => {
                    let _ = session.close(Some(reason)).await;
                    return;
                }
                Outgoing::Abort => return,
            };
            if sent.is_err() {
                return;
            }
        }
        let _ = session.close(None).await;
    });
    Outbox { tx }
}

/// Starts the reader task, which ends by telling `participant` the socket closed.
pub fn spawn_reader(
    mut stream: AggregatedMessageStream,
    limits: ReaderLimits,
    outbox: Outbox,
    participant: Recipient<Inbound>,
) {
    actix_web::rt::spawn(async move {
        let mut limiter = RateLimiter::new(Instant::now(), limits.rate_per_sec, limits.rate_burst);
        let reason = loop {
            let Some(frame) = stream.recv().await else {
                break None;
            };
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => break Some(format!("protocol error: {e}")),
            };
            // Only frames that carry messages count: pings and closes always pass.
            let counted = matches!(
                frame,
                AggregatedMessage::Text(_) | AggregatedMessage::Binary(_)
            );
            match counted.then(|| limiter.check(Instant::now())) {
                None | Some(Verdict::Accept) => {}
                Some(Verdict::Refuse) => {
                    refuse(
                        &outbox,
                        ErrorCode::RateLimited,
                        "too many messages; slow down",
                    );
                    continue;
                }
                Some(Verdict::Disconnect) => {
                    outbox.close(CloseCode::Policy, "message flood");
                    break Some("message flood".to_owned());
                }
            }
            match frame {
                AggregatedMessage::Text(text) => {
                    if let Some(msg) = read_text(&text, limits.max_message_bytes, &outbox) {
                        participant.do_send(Inbound::Message(msg));
                    }
                }
                AggregatedMessage::Binary(_) => refuse(
                    &outbox,
                    ErrorCode::BadJson,
                    "binary frames are not part of the protocol",
                ),
                AggregatedMessage::Ping(bytes) => {
                    let _ = outbox.tx.try_send(Outgoing::Pong(bytes));
                }
                AggregatedMessage::Pong(_) => {}
                AggregatedMessage::Close(_) => break None,
            }
        };
        debug!(?reason, "signaling socket closed");
        participant.do_send(Inbound::Closed(reason));
    });
}

fn read_text(text: &str, max_bytes: usize, outbox: &Outbox) -> Option<ClientMessage> {
    if text.len() > max_bytes {
        let message = format!(
            "message of {} bytes exceeds the limit of {max_bytes}",
            text.len()
        );
        refuse(outbox, ErrorCode::MessageTooLarge, &message);
        return None;
    }
    match parse_client_message(text) {
        Ok(msg) => Some(msg),
        Err(e) => {
            outbox.send(&ServerMessage::error(
                e.code,
                e.message,
                e.request.as_deref(),
            ));
            None
        }
    }
}

fn refuse(outbox: &Outbox, code: ErrorCode, message: &str) {
    outbox.send(&ServerMessage::error(code, message, None));
}
