//! The room's side of last-N: keeping the order of camera publishers current and
//! telling participants whose cameras they get (see [`crate::media::last_n`]).
//!
//! Each shard keeps its own order, from the same speakers and the same snapshots,
//! so shards agree but for the moments a change takes to cross a link. Each
//! participant applies the set to its own subscriptions, with its own pins.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::Room;
use crate::ids::ParticipantId;
use crate::room::messages::RoomEvent;
use crate::signal::protocol::{TrackInfo, TrackKind, TrackSource};

/// A track that last-N may pause: a camera, never a screen share or audio.
pub(crate) fn is_camera(track: &TrackInfo) -> bool {
    track.kind == TrackKind::Video && track.source != TrackSource::ScreenShare
}

impl Room {
    /// Takes membership, tracks and speakers into account again, and tells the
    /// participants when the forwarded set changed.
    pub(super) fn refresh_forwarding(&mut self) {
        let remote = self.remote_participants();
        let mut cameras: BTreeSet<&ParticipantId> = self
            .tracks
            .values()
            .filter(|t| is_camera(&t.info))
            .map(|t| &t.info.participant_id)
            .collect();
        let remote_tracks = remote.iter().flat_map(|p| p.tracks.iter());
        cameras.extend(
            remote_tracks
                .filter(|t| is_camera(t))
                .map(|t| &t.participant_id),
        );
        self.last_n.sync(cameras);

        let size = self.members.len() + remote.len();
        if let Some(voices) = &self.voices {
            let mut voices = voices.lock().unwrap_or_else(|e| e.into_inner());
            voices.set_choosing(size > self.large_above);
        }
        let forwarded = self.last_n.forwarded(size);
        if forwarded == self.forwarded {
            return;
        }
        self.forwarded = forwarded;
        let cameras = self.forwarded.clone().map(Arc::new);
        self.broadcast(RoomEvent::Forwarding { cameras }, None);
    }
}
