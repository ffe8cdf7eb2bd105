//! The up-track: the task that reads one published track and drives its forwarder.
//!
//! This is the hot path. One task per published track reads RTP from the
//! publisher's peer connection, hands each packet to the I/O-free [`Forwarder`],
//! and offers the rewritten copies to each down-track's [`DownTrackSink`], which
//! takes a packet at once or refuses it and never waits. No actor mailbox sees a
//! packet. A slow subscriber fills only its own connection's queue: its packets are
//! dropped and counted, and nobody else waits for it.
//!
//! The task owns the forwarder; everyone else talks to it through an
//! [`UpTrackHandle`], whose commands it interleaves with packets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::packet::Packet;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
use rtc::shared::marshal::Unmarshal;
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use crate::ids::TrackId;
use crate::media::allocator::Size;
use crate::media::codec::MediaKind;
use crate::media::fanout::{Fanout, KeyframeFrom, SimulcastLayers};
use crate::media::forwarder::{DownTrackKey, ForwarderConfig};
use crate::media::rates::{LayerRates, RateMeter};
use crate::media::simulcast::{capped, largest_shown};
use crate::media::sleep_until_opt;
use crate::media::speaker::AudioLevel;
use crate::media::voices::SharedVoices;
use crate::metrics::{Direction, Kind, Metrics, Path, RtpCounters, Task, DELAY_SAMPLE_EVERY};
use crate::room::speakers::LevelSink;

/// Packets of a cascaded track that may wait between the link and its up-track.
pub const CASCADE_IMPORT_QUEUE: usize = 512;

/// Where the forwarder's output for one down-track goes: a subscriber's connection,
/// or a cascade link to another node. Called on the up-track task for every packet,
/// so it must not block and should not allocate.
pub trait DownTrackSink: Send {
    /// Takes `packet` now or refuses it.
    fn offer(&mut self, packet: Packet, meta: PacketMeta) -> Offer;
}

/// What the up-track knows of a packet beyond its rewritten copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketMeta {
    /// When the publisher's packet arrived, on a sample of packets, to measure the
    /// forwarding delay.
    pub arrived: Option<Instant>,
    /// The publisher's audio level byte (RFC 6464), which the copy no longer carries:
    /// a cascade link passes it on, so that the far node hears speakers too.
    pub audio_level: Option<u8>,
}

/// What a [`DownTrackSink`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Taken,
    /// Its queue is full: the packet is dropped for this down-track alone.
    Full,
    /// It cannot send at all for now (not connected yet, or going away).
    Refused,
}

/// Commands to an up-track task.
pub enum UpTrackCommand {
    AddDownTrack {
        key: DownTrackKey,
        ssrc: u32,
        payload_type: u8,
        sink: Box<dyn DownTrackSink>,
    },
    RemoveDownTrack {
        key: DownTrackKey,
    },
    SetPaused {
        key: DownTrackKey,
        paused: bool,
    },
    /// The size a subscriber shows the track at (None: as large as it comes); picks
    /// the layer of a simulcast track.
    SetShownSize {
        key: DownTrackKey,
        shown: Option<Size>,
    },
    /// The highest layer of a simulcast track the subscriber's downlink allows (None:
    /// no limit).
    SetMaxLayer {
        key: DownTrackKey,
        layer: Option<usize>,
    },
    KeyframeRequest {
        from: DownTrackKey,
    },
    /// Report the level of every audio packet here from now on.
    HearLevels {
        sink: LevelSink,
    },
    /// Forward only the packets the room's voices admit (audio last-N).
    ChooseVoices {
        voices: SharedVoices,
    },
    Stop,
}

/// What only the task can count, shared with readers; packets in and out and the
/// keyframe requests are the forwarder's own statistics and are not counted twice.
#[derive(Debug, Default)]
pub struct UpTrackCounters {
    /// Packets dropped because a down-track's queue was full.
    pub queue_drops: AtomicU64,
}

/// A cheap, clonable way to reach an up-track task.
#[derive(Clone, Debug)]
pub struct UpTrackHandle {
    pub track_id: TrackId,
    /// The publisher's codec, which every down-track negotiates in turn.
    pub codec: RTCRtpCodec,
    /// Audio or video, for the metrics of the down-tracks.
    pub kind: MediaKind,
    /// The picture size of each simulcast layer, lowest first; empty for a track sent
    /// as one stream.
    pub layer_sizes: Arc<[Size]>,
    /// What each layer costs to send, as measured.
    pub rates: Arc<LayerRates>,
    commands: mpsc::UnboundedSender<UpTrackCommand>,
    pub counters: Arc<UpTrackCounters>,
}

impl UpTrackHandle {
    /// Sends a command; false when the up-track has ended.
    pub fn send(&self, command: UpTrackCommand) -> bool {
        self.commands.send(command).is_ok()
    }

    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }
}

/// Where an up-track's packets come from.
pub enum Source {
    /// A publisher's track on this node.
    Peer {
        remote: Arc<dyn TrackRemote>,
        media_ssrc: u32,
    },
    /// A track published on another node, arriving over a cascade link as RTP
    /// bytes. The origin is told when this node starts and stops wanting it, and
    /// when a subscriber here needs a keyframe.
    Cascade {
        packets: mpsc::Receiver<Bytes>,
        origin: Arc<dyn CascadeOrigin>,
        /// The layers of a simulcast track at its origin, lowest first; empty for one
        /// sent as one stream.
        layers: Arc<[Size]>,
    },
}

impl Source {
    /// Where the packets come from, as the metrics name it.
    fn path(&self) -> Path {
        match self {
            Source::Peer { .. } => Path::Client,
            Source::Cascade { .. } => Path::Cascade,
        }
    }
}

/// The far end of a cascaded track, as the up-track task sees it.
pub trait CascadeOrigin: Send + Sync {
    /// Called with true when a first down-track takes packets, false when the last one
    /// stops (removed or paused).
    fn demand(&self, wanted: bool);
    fn keyframe(&self);
    /// The largest size a down-track here shows the track at, each limited to the
    /// layer its downlink takes, or None when one wants it as large as it comes; told
    /// when it changes while the track is wanted.
    fn shown(&self, size: Option<Size>);
}

/// Everything the task needs; built by the publisher's participant, or by a room
/// for a track published on another node.
pub struct UpTrack {
    pub track_id: TrackId,
    pub source: Source,
    pub codec: RTCRtpCodec,
    pub config: ForwarderConfig,
    /// The layers of a simulcast track; None for a track sent as one stream.
    pub simulcast: Option<SimulcastLayers>,
    /// The id of the audio level header extension in the packets that arrive; None
    /// for video, or when the publisher did not negotiate it.
    pub audio_level_id: Option<u8>,
    pub metrics: Arc<Metrics>,
}

/// Starts the task on the current runtime. `on_end` runs once when it stops.
pub fn spawn(up: UpTrack, on_end: impl FnOnce(TrackId) + Send + 'static) -> UpTrackHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let counters = Arc::new(UpTrackCounters::default());
    let rates = Arc::new(LayerRates::default());
    let layer_sizes: Arc<[Size]> = match (&up.simulcast, &up.source) {
        (Some(simulcast), _) => simulcast.sizes.clone().into(),
        (None, Source::Cascade { layers, .. }) => layers.clone(),
        (None, Source::Peer { .. }) => Arc::new([]),
    };
    // An imported simulcast track is told its rates by its origin.
    let meter = match &up.source {
        Source::Cascade { layers, .. } if !layers.is_empty() => None,
        _ => Some(RateMeter::new(rates.clone())),
    };
    let handle = UpTrackHandle {
        track_id: up.track_id.clone(),
        codec: up.codec.clone(),
        kind: up.config.kind,
        layer_sizes: layer_sizes.clone(),
        rates: rates.clone(),
        commands: tx,
        counters: counters.clone(),
    };
    tokio::spawn(async move {
        let track_id = up.track_id.clone();
        let kind = Kind::from(up.config.kind);
        let _gauges = (
            up.metrics.task(Task::UpTrack),
            up.metrics.track(kind, Direction::In),
        );
        run(up, rx, counters, meter, layer_sizes).await;
        on_end(track_id);
    });
    handle
}

struct Loop {
    forwarder: Fanout,
    sinks: HashMap<DownTrackKey, Box<dyn DownTrackSink>>,
    /// The size each down-track is shown at, as its subscriber said; None: not said.
    shown: HashMap<DownTrackKey, Option<Size>>,
    /// The highest layer each down-track's downlink takes, where it is limited.
    caps: HashMap<DownTrackKey, usize>,
    /// The track's layers, lowest first; empty for one sent as one stream.
    layer_sizes: Arc<[Size]>,
    /// Of a cascaded track, the size the origin was last told while it was wanted.
    told: Option<Option<Size>>,
    out: Vec<(DownTrackKey, Packet)>,
    counters: Arc<UpTrackCounters>,
    /// Packets and bytes received from the publisher.
    received: RtpCounters,
    /// What each layer costs, for the subscribers' allocators; None where the origin
    /// of an imported track tells it.
    meter: Option<RateMeter>,
    queue_drops: prometheus::IntCounter,
    audio_level_id: Option<u8>,
    /// The room's speaker task, once the room asked to hear this track.
    levels: Option<LevelSink>,
    /// The room's voices, once it chooses which to forward.
    voices: Option<SharedVoices>,
    /// This track, as the room's voices know it.
    track_id: TrackId,
}

async fn run(
    up: UpTrack,
    mut commands: mpsc::UnboundedReceiver<UpTrackCommand>,
    counters: Arc<UpTrackCounters>,
    meter: Option<RateMeter>,
    layer_sizes: Arc<[Size]>,
) {
    let kind = Kind::from(up.config.kind);
    let mut state = Loop {
        forwarder: Fanout::new(up.config, up.simulcast),
        sinks: HashMap::new(),
        shown: HashMap::new(),
        caps: HashMap::new(),
        layer_sizes,
        told: None,
        out: Vec::new(),
        counters,
        received: up
            .metrics
            .rtp_counters(Direction::In, kind, up.source.path()),
        meter,
        queue_drops: up.metrics.queue_drops(kind),
        audio_level_id: up.audio_level_id,
        levels: None,
        voices: None,
        track_id: up.track_id.clone(),
    };
    let mut source = up.source;
    loop {
        let wake = state.forwarder.poll_timeout();
        tokio::select! {
            input = next_input(&mut source) => match input {
                Some(Input::Rtp(packet)) => state.forward(packet),
                Some(Input::Opened { ssrc, rid }) => {
                    state.forwarder.stream_opened(ssrc, rid.as_deref());
                }
                None => break,
            },
            command = commands.recv() => match command {
                Some(UpTrackCommand::Stop) | None => break,
                Some(command) => state.apply(command, &source),
            },
            _ = sleep_until_opt(wake) => {}
        }
        state.request_keyframe_if_due(&source).await;
    }
    if let Source::Cascade { origin, .. } = &source {
        if state.wanted() {
            origin.demand(false);
        }
    }
}

/// What a source delivers.
enum Input {
    Rtp(Packet),
    /// One of the publisher's streams opened (one per simulcast layer), with its rid.
    Opened {
        ssrc: u32,
        rid: Option<String>,
    },
}

/// The next input of the track; `None` once it has ended.
async fn next_input(source: &mut Source) -> Option<Input> {
    match source {
        Source::Peer { remote, .. } => loop {
            match remote.poll().await {
                Some(TrackRemoteEvent::OnRtpPacket(packet)) => return Some(Input::Rtp(packet)),
                Some(TrackRemoteEvent::OnOpen(init)) => {
                    let rid = init.rid.map(|rid| rid.to_string());
                    return Some(Input::Opened {
                        ssrc: init.ssrc,
                        rid,
                    });
                }
                Some(TrackRemoteEvent::OnEnded) | None => return None,
                Some(_) => {}
            }
        },
        Source::Cascade { packets, .. } => loop {
            let mut raw = packets.recv().await?;
            // The link checked the framing only; a bad packet is dropped here.
            if let Ok(packet) = Packet::unmarshal(&mut raw) {
                return Some(Input::Rtp(packet));
            }
        },
    }
}

impl Loop {
    fn forward(&mut self, mut packet: Packet) {
        let now = Instant::now();
        let audio_level = self.hear(now, &packet);
        // Extension ids are negotiated per connection: the publisher's mean nothing
        // to a subscriber, and the subscriber's own interceptors add theirs.
        packet.header.extension = false;
        packet.header.extensions.clear();
        if let (Some(voices), Some(level)) = (&self.voices, audio_level) {
            // A poisoned lock only means another up-track panicked mid-update.
            let mut voices = voices.lock().unwrap_or_else(|e| e.into_inner());
            let admitted = voices.admit(&self.track_id, now, level & 0x7f);
            drop(voices);
            if !admitted {
                self.forwarder.withhold(now, &packet);
                self.received.record(now, packet.payload.len());
                self.measure(now, 0, &packet);
                return;
            }
        }
        self.out.clear();
        let layer = self.forwarder.handle_rtp(now, &packet, &mut self.out);
        self.received.record(now, packet.payload.len());
        if let Some(layer) = layer {
            self.measure(now, layer, &packet);
        }

        // The forwarder has counted this packet in: its count picks the delay samples.
        let sampled = self
            .forwarder
            .stats()
            .packets_in
            .is_multiple_of(DELAY_SAMPLE_EVERY);
        let meta = PacketMeta {
            arrived: sampled.then_some(now),
            audio_level,
        };
        for (key, copy) in self.out.drain(..) {
            let Some(sink) = self.sinks.get_mut(&key) else {
                continue;
            };
            if sink.offer(copy, meta) == Offer::Full {
                self.counters.queue_drops.fetch_add(1, Ordering::Relaxed);
                self.queue_drops.inc();
            }
        }
    }

    fn measure(&mut self, now: Instant, layer: usize, packet: &Packet) {
        if let Some(meter) = &mut self.meter {
            meter.record(now, layer, packet.payload.len());
        }
    }

    /// Reads the packet's audio level and tells the speaker task, if it listens.
    fn hear(&mut self, now: Instant, packet: &Packet) -> Option<u8> {
        let data = packet.header.get_extension(self.audio_level_id?)?;
        // A malformed element is ignored: the packet itself is still forwarded.
        let level = AudioLevel::parse(&data).ok()?;
        if let Some(levels) = &self.levels {
            levels.offer(now, level);
        }
        data.first().copied()
    }

    /// Whether some down-track takes packets now: a cascaded track crosses its link
    /// only then.
    fn wanted(&self) -> bool {
        self.sinks.keys().any(|key| !self.forwarder.is_paused(*key))
    }

    /// The largest size a down-track that takes packets is shown at, each limited to
    /// the layer its downlink takes.
    fn largest_shown(&self) -> Option<Size> {
        let taking = self
            .shown
            .iter()
            .filter(|(key, _)| !self.forwarder.is_paused(**key));
        largest_shown(taking.map(|(key, shown)| {
            let cap = self.caps.get(key).and_then(|l| self.layer_sizes.get(*l));
            capped(*shown, cap.copied())
        }))
    }

    fn apply(&mut self, command: UpTrackCommand, source: &Source) {
        let was_wanted = self.wanted();
        self.apply_to_forwarder(command);
        let wanted = self.wanted();
        let Source::Cascade { origin, .. } = source else {
            return;
        };
        if wanted != was_wanted {
            origin.demand(wanted);
        }
        if !wanted {
            // A new subscription at the origin starts at the largest layer.
            self.told = None;
            return;
        }
        let largest = self.largest_shown();
        if self.told != Some(largest) {
            origin.shown(largest);
            self.told = Some(largest);
        }
    }

    fn apply_to_forwarder(&mut self, command: UpTrackCommand) {
        let now = Instant::now();
        match command {
            UpTrackCommand::AddDownTrack {
                key,
                ssrc,
                payload_type,
                sink,
            } => {
                self.sinks.insert(key, sink);
                self.shown.insert(key, None);
                self.forwarder.add_down_track(now, key, ssrc, payload_type);
            }
            UpTrackCommand::RemoveDownTrack { key } => {
                self.sinks.remove(&key);
                self.shown.remove(&key);
                self.caps.remove(&key);
                self.forwarder.remove_down_track(key);
            }
            UpTrackCommand::SetPaused { key, paused } => self.forwarder.set_paused(key, paused),
            UpTrackCommand::SetShownSize { key, shown } => {
                if let Some(entry) = self.shown.get_mut(&key) {
                    *entry = shown;
                }
                self.forwarder.set_shown_size(now, key, shown)
            }
            UpTrackCommand::SetMaxLayer { key, layer } => {
                match layer {
                    Some(layer) if self.sinks.contains_key(&key) => {
                        self.caps.insert(key, layer);
                    }
                    _ => {
                        self.caps.remove(&key);
                    }
                }
                self.forwarder.set_max_layer(now, key, layer)
            }
            UpTrackCommand::KeyframeRequest { from } => {
                self.forwarder.handle_keyframe_request(now, from)
            }
            UpTrackCommand::HearLevels { sink } => self.levels = Some(sink),
            UpTrackCommand::ChooseVoices { voices } => self.voices = Some(voices),
            UpTrackCommand::Stop => {}
        }
    }

    async fn request_keyframe_if_due(&mut self, source: &Source) {
        while let Some(from) = self.forwarder.poll_keyframe_request(Instant::now()) {
            match source {
                Source::Peer { remote, media_ssrc } => {
                    let media_ssrc = match from {
                        KeyframeFrom::Track => *media_ssrc,
                        KeyframeFrom::Ssrc(ssrc) => ssrc,
                    };
                    let pli = PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc,
                    };
                    // A failed write means the publisher is going away; the poll loop
                    // sees it next.
                    let _ = remote.write_rtcp(vec![Box::new(pli)]).await;
                }
                Source::Cascade { origin, .. } => origin.keyframe(),
            }
        }
    }
}
