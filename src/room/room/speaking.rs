//! The room's side of speaker detection: which tracks the speaker task hears, and
//! turning its verdicts on tracks into news about participants.
//!
//! Every audio track the shard forwards is heard: those published here, and those
//! imported from other shards, whose links carry the publishers' levels. Each shard
//! decides for itself from the same levels, so shards agree but for the moment a
//! change takes to cross a link; a track nobody on this node subscribes to is not
//! imported, and so not heard here.

use actix::prelude::*;

use super::Room;
use crate::ids::{ParticipantId, TrackId};
use crate::media::speaker::SpeakerConfig;
use crate::media::uptrack::{UpTrackCommand, UpTrackHandle};
use crate::room::messages::RoomEvent;
use crate::room::speakers::{Speakers, SpeakersChanged};

/// What the participants were last told.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Told {
    dominant: Option<ParticipantId>,
    speakers: Vec<ParticipantId>,
}

impl Told {
    fn to_event(&self) -> RoomEvent {
        RoomEvent::Speakers {
            dominant: self.dominant.clone(),
            speakers: self.speakers.clone(),
        }
    }

    /// The news for a participant who joins now; None while nobody has spoken.
    pub fn event(&self) -> Option<RoomEvent> {
        (*self != Told::default()).then(|| self.to_event())
    }
}

impl Room {
    pub(super) fn start_speakers(&mut self, ctx: &mut Context<Self>) {
        let room = ctx.address().recipient();
        self.speakers = Some(Speakers::spawn(SpeakerConfig::default(), room));
    }

    /// The speaker task hears `track` from now on.
    pub(super) fn hear(&self, track: &TrackId, handle: &UpTrackHandle) {
        if let Some(speakers) = &self.speakers {
            let sink = speakers.sink(track);
            handle.send(UpTrackCommand::HearLevels { sink });
        }
        if let Some(voices) = self.voices.clone() {
            handle.send(UpTrackCommand::ChooseVoices { voices });
        }
    }

    /// The track is gone: it stops being a speaker at once.
    pub(super) fn stop_hearing(&self, track: &TrackId) {
        if let Some(speakers) = &self.speakers {
            speakers.forget(track);
        }
        if let Some(voices) = &self.voices {
            let mut voices = voices.lock().unwrap_or_else(|e| e.into_inner());
            voices.forget(track);
        }
    }

    /// The participant who publishes `track`, here or on another shard.
    fn publisher_of(&self, track: &TrackId) -> Option<ParticipantId> {
        match self.tracks.get(track) {
            Some(published) => Some(published.info.participant_id.clone()),
            None => self
                .remote_track(track)
                .map(|(info, _)| info.participant_id),
        }
    }
}

impl Handler<SpeakersChanged> for Room {
    type Result = ();

    fn handle(&mut self, msg: SpeakersChanged, _ctx: &mut Self::Context) {
        let dominant = msg.dominant.and_then(|t| self.publisher_of(&t));
        // A participant with two audio tracks (microphone and screen) speaks once.
        let mut speakers: Vec<ParticipantId> = Vec::new();
        for participant in msg.speakers.iter().filter_map(|t| self.publisher_of(t)) {
            if !speakers.contains(&participant) {
                speakers.push(participant);
            }
        }
        let told = Told { dominant, speakers };
        if told == self.speaking {
            return;
        }
        self.broadcast(told.to_event(), None);
        self.last_n.spoke(&told.speakers);
        self.speaking = told;
        self.refresh_forwarding();
    }
}
