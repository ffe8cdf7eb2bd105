//! Fitting what a participant receives into its downlink.
//!
//! Every [`ADAPT_EVERY`], once the client's estimates of its downlink (REMB) make a
//! ceiling ([`DownlinkFilter`]: from their first fall on), the participant lists what it
//! receives as demands for its [`Allocator`]: each subscribed track with what its
//! layers cost (measured on the up-track), whether it is shown and at what size, and
//! whether it is prominent (a pinned publisher or the dominant speaker). The allocation
//! is applied to the down-tracks: a simulcast video gets a highest layer it may be sent
//! (`SetMaxLayer`). A video whose lowest layer does not fit gets that layer, or with
//! `media.pause_for_bandwidth` is paused, which the client hears of as `track_paused`
//! with reason `bandwidth`. Audio is never paused. Without a ceiling nothing is
//! limited, and `media.bandwidth_adaptation = false` turns all of this off.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Context;
use tracing::debug;

use super::subscriptions::Subscription;
use super::Participant;
use crate::ids::{ParticipantId, TrackId};
use crate::media::allocator::{
    Allocator, AllocatorConfig, Choice, Layer, Layers, PauseReason, Size, TrackDemand, TrackKind,
};
use crate::media::downlink::DownlinkFilter;
use crate::media::feedback::DownlinkEstimate;
use crate::media::uptrack::UpTrackHandle;
use crate::metrics::GaugeGuard;

/// How often the allocation is brought up to date.
pub const ADAPT_EVERY: Duration = Duration::from_millis(250);

/// What an audio track is taken to cost before it was measured.
const AUDIO_UNMEASURED_BPS: u64 = 40_000;

/// One participant's downlink: the estimate its connection records, the allocator, and
/// which video it paused.
pub(super) struct Bandwidth {
    pub estimate: Arc<DownlinkEstimate>,
    filter: DownlinkFilter,
    allocator: Allocator<TrackId>,
    /// Video paused because not even its lowest layer fits.
    pub paused: BTreeSet<TrackId>,
    /// Counts the participant on the node while its downlink holds anything back.
    limited: Option<GaugeGuard>,
}

impl Bandwidth {
    /// `pause`: whether video whose lowest layer does not fit is paused (else it keeps
    /// that layer).
    pub fn new(pause: bool) -> Self {
        let config = AllocatorConfig {
            pause_short: pause,
            ..AllocatorConfig::default()
        };
        Bandwidth {
            estimate: Arc::new(DownlinkEstimate::default()),
            filter: DownlinkFilter::default(),
            allocator: Allocator::new(config),
            paused: BTreeSet::new(),
            limited: None,
        }
    }
}

/// A track's layers and what each costs, lowest first: the measured rates, made to
/// grow from one layer to the next as the allocator requires (a layer not measured yet,
/// or not arriving, costs next to nothing; the forwarder falls back to one that
/// arrives).
fn layers_of(up: &UpTrackHandle, audio: bool) -> Layers {
    if audio {
        let measured = up.rates.get(0);
        return Layers::audio(if measured == 0 {
            AUDIO_UNMEASURED_BPS
        } else {
            measured
        });
    }
    let single = [Size {
        width: 0,
        height: 0,
    }];
    let sizes: &[Size] = if up.layer_sizes.is_empty() {
        &single
    } else {
        &up.layer_sizes
    };
    let mut floor = 0;
    let layers = sizes
        .iter()
        .enumerate()
        .map(|(index, size)| {
            let bitrate_bps = up.rates.get(index).max(floor + 1);
            floor = bitrate_bps;
            Layer {
                bitrate_bps,
                size: *size,
            }
        })
        .collect();
    // Sizes were checked when the track was published, and rates grow by construction.
    Layers::new(layers).unwrap_or_else(|_| Layers::audio(AUDIO_UNMEASURED_BPS))
}

impl Participant {
    /// Brings the allocation up to date with the latest estimate and demands, and
    /// applies it. See the module documentation.
    pub(super) fn adapt_to_bandwidth(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let bandwidth = &mut self.bandwidth;
        for bps in bandwidth.estimate.take() {
            bandwidth.filter.handle_estimate(now, bps);
        }
        let usage_bps = bandwidth.allocator.current().usage_bps;
        let Some(estimate_bps) = bandwidth.filter.estimate(now, usage_bps) else {
            return;
        };
        let demands = self.demands();
        if let Err(e) = self
            .bandwidth
            .allocator
            .allocate(now, estimate_bps, demands)
        {
            debug!(participant = %self.id, error = %e, "demands refused");
            return;
        }
        self.bandwidth.allocator.probe(now);
        let limited = self.bandwidth.allocator.limited();
        if limited != self.bandwidth.limited.is_some() {
            self.bandwidth.limited = limited.then(|| self.node.metrics.bandwidth_limited());
        }
        let choices = self.bandwidth.allocator.current().tracks.clone();
        for (track_id, choice) in choices {
            let Some(sub) = self.subscriptions.get_mut(&track_id) else {
                continue;
            };
            if !sub.video {
                continue;
            }
            let simulcast = !sub.up.layer_sizes.is_empty();
            match choice {
                // Only with `media.pause_for_bandwidth`: else the allocator keeps
                // the lowest layer.
                Choice::Paused(PauseReason::Bandwidth) => {
                    self.bandwidth.paused.insert(track_id);
                }
                // A hidden track keeps what bandwidth said of it until it is shown
                // again and the allocator has seen it: no resume in between.
                Choice::Paused(PauseReason::Hidden) => {}
                Choice::Layer(layer) => {
                    self.bandwidth.paused.remove(&track_id);
                    sub.set_max_layer(simulcast.then_some(layer));
                }
            }
        }
        self.apply_forwarding(ctx);
    }

    /// What the client receives, as the allocator's demands: the dominant speaker
    /// first, then the rest in the order of their ids.
    fn demands(&self) -> Vec<TrackDemand<TrackId>> {
        let mut subs: Vec<(&TrackId, &Subscription)> = self.subscriptions.iter().collect();
        let dominant = |publisher: &ParticipantId| self.dominant.as_ref() == Some(publisher);
        subs.sort_by_key(|(id, sub)| (!dominant(&sub.publisher), *id));
        subs.into_iter()
            .map(|(track_id, sub)| {
                let kind = if !sub.video {
                    TrackKind::Audio
                } else if sub.camera {
                    TrackKind::Camera
                } else {
                    TrackKind::Screen
                };
                TrackDemand {
                    key: track_id.clone(),
                    kind,
                    prominent: dominant(&sub.publisher) || self.pinned.contains(&sub.publisher),
                    visible: self.held_back(track_id, sub).is_none(),
                    max_size: sub.shown,
                    layers: layers_of(&sub.up, !sub.video),
                }
            })
            .collect()
    }
}
