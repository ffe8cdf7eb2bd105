//! A simulated participant's connection to the server under test, whichever it is:
//! a relais node through the Rust client of its protocol, or a Janus VideoRoom.
//!
//! Both sides hand out the same [`LocalTrack`]s to send on and the same
//! [`ClientEvent`]s for what arrives, so the participant task above drives them alike
//! and measures them alike.

use tokio::time::Instant;

use super::janus::{JanusClient, JanusOptions};
use super::participant::{Shared, JOIN_TIMEOUT};
use super::plan::{Planned, Role};
use super::Target;
use crate::auth::{mint, now_unix, Grants, TokenRequest};
use crate::client::{Client, ClientEvent, ClientOptions, LocalTrack};
use crate::signal::protocol::{ServerMessage, TrackKind, TrackSource};

pub enum Session {
    Relais(Client),
    Janus(JanusClient),
}

/// A publisher's tracks: video, and audio unless that failed (with the reason).
pub type Tracks = (LocalTrack, Option<Result<LocalTrack, String>>);

impl Session {
    /// Connects and returns once the server has let the participant in.
    pub async fn join(plan: &Planned, shared: &Shared) -> Result<Session, String> {
        let deadline = Instant::now() + JOIN_TIMEOUT;
        match shared.target {
            Target::Relais => join_relais(plan, shared, deadline)
                .await
                .map(Session::Relais),
            Target::Janus => {
                let options = JanusOptions {
                    url: plan.url.clone(),
                    room: plan.room.clone(),
                    display: plan.identity.clone(),
                    bind_ip: shared.bind_ip,
                };
                match tokio::time::timeout_at(deadline, JanusClient::join(options)).await {
                    Ok(Ok(client)) => Ok(Session::Janus(client)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out joining".to_owned()),
                }
            }
        }
    }

    /// Publishes the camera, and the microphone if `audio`.
    pub async fn publish(&self, audio: bool) -> Result<Tracks, String> {
        match self {
            Session::Relais(client) => {
                let camera = client.publish("cam", TrackKind::Video, TrackSource::Camera);
                let video = camera.await.map_err(|e| e.to_string())?;
                if !audio {
                    return Ok((video, None));
                }
                let mic = client.publish("mic", TrackKind::Audio, TrackSource::Microphone);
                Ok((video, Some(mic.await.map_err(|e| e.to_string()))))
            }
            Session::Janus(client) => {
                let (video, audio) = client.publish(audio).await.map_err(|e| e.to_string())?;
                Ok((video, audio.map(Ok)))
            }
        }
    }

    pub async fn next_event(&mut self, deadline: Instant) -> Option<ClientEvent> {
        match self {
            Session::Relais(client) => client.next_event(deadline).await,
            Session::Janus(client) => client.next_event(deadline).await,
        }
    }

    pub fn close(&self) {
        match self {
            Session::Relais(client) => client.close(),
            Session::Janus(client) => client.close(),
        }
    }
}

/// Opens the socket and waits for `joined`.
async fn join_relais(plan: &Planned, shared: &Shared, deadline: Instant) -> Result<Client, String> {
    let token = token(plan, shared)?;
    let options = ClientOptions {
        url: plan.url.clone(),
        room: plan.room.clone(),
        token,
        auto_subscribe: true,
        bind_ip: shared.bind_ip,
        drop_every_nth_rtp: None,
    };
    let connect = tokio::time::timeout_at(deadline, Client::connect(options));
    let mut client = match connect.await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("timed out connecting".to_owned()),
    };
    while let Some(event) = client.next_event(deadline).await {
        match event {
            ClientEvent::Server(ServerMessage::Joined { .. }) => return Ok(client),
            ClientEvent::Server(ServerMessage::Error(body)) => {
                return Err(format!("refused: {:?}: {}", body.code, body.message))
            }
            ClientEvent::Closed => return Err("closed before joining".to_owned()),
            _ => {}
        }
    }
    Err("timed out waiting for joined".to_owned())
}

fn token(plan: &Planned, shared: &Shared) -> Result<String, String> {
    let request = TokenRequest {
        api_key: shared.api_key.clone(),
        identity: plan.identity.clone(),
        name: plan.identity.clone(),
        room: plan.room.clone(),
        grants: Grants {
            publish: plan.role == Role::Publisher,
            subscribe: true,
            admin: false,
        },
        ttl: shared.token_ttl,
    };
    mint(&request, &shared.api_secret, now_unix()).map_err(|e| e.to_string())
}
