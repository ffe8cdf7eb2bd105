//! Bandwidth allocation for one subscriber: which layer of each track it is sent, or
//! whether the track is paused, so that everything fits its estimated downlink.
//!
//! Owns: the subscriber's last demand list and estimate, what fits them (the *target*) and
//! what is being sent (the *current* allocation), and since when the estimate has had
//! room to spare.
//!
//! Order of allocation ([`plan`]), each step with what the previous ones left:
//! 1. audio;
//! 2. prominent video (the active speaker, pinned tiles): the lowest layer each, then up;
//! 3. screen shares: the lowest *legible* layer (at least `legible_height` tall), lower
//!    only if that does not fit, then up;
//! 4. the other video at its lowest layer, paused when that does not fit (unless
//!    `pause_short` is off: then it keeps that layer); then up with whatever is left.
//!
//! "Up" raises every track of the step one layer at a time, in turn, while it fits.
//!
//! Invariants:
//! - No video track gets a layer larger than the size it is shown at (the largest layer
//!   that suits it, see [`Size::suits`], or the lowest layer when none does); hidden
//!   tracks are paused.
//! - The current allocation never costs more than the estimate (but for the lowest
//!   layers kept when `pause_short` is off): a lower estimate or a new demand moves
//!   tracks down at once.
//! - Going up is careful. A track is raised (or resumed after a pause for bandwidth) at
//!   once only into bitrate that was already being sent (when another track went down in
//!   the same step, e.g. a new active speaker); beyond that only [`Allocator::probe`]
//!   raises, one track by one layer, after the estimate has exceeded the usage by
//!   `probe_margin_percent` for `probe_hold`. The exception is a track that is new or
//!   shown again: it starts at its first layer (the lowest, or the legible one of a screen
//!   share) as soon as that fits the estimate.
//! - Bad demands (no layers, unordered layers, one track twice) are refused with a
//!   [`DemandError`] and leave the allocation as it was.
//!
//! Loop: call [`Allocator::allocate`] when the demands change (tile sizes, visibility,
//! speaker, tracks), [`Allocator::handle_estimate`] with each new estimate, and
//! [`Allocator::probe`] periodically (every few hundred ms); after each, apply
//! [`Allocator::current`] to the layer selectors and pause states of the down-tracks.

use std::time::{Duration, Instant};

/// The most layers a track may announce (simulcast uses three).
pub const MAX_LAYERS: usize = 4;

/// Why a demand list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DemandError {
    /// A track announced no layer at all.
    #[error("a track has no layers")]
    NoLayers,
    /// A track announced more layers than any encoder sends.
    #[error("a track has {count} layers, at most {MAX_LAYERS} are supported")]
    TooManyLayers {
        /// How many it announced.
        count: usize,
    },
    /// Layers must grow in bitrate and never shrink in size from one to the next.
    #[error("layer {index} is not above the one before it")]
    Unordered {
        /// The first layer out of order.
        index: usize,
    },
    /// Two demands named the same track.
    #[error("demand {index} names a track already listed")]
    DuplicateTrack {
        /// Position of the second one in the list.
        index: usize,
    },
}

/// What a track carries; decides its priority with [`TrackDemand::prominent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackKind {
    /// A microphone: always first.
    Audio,
    /// A camera.
    Camera,
    /// A screen share: kept legible as long as bandwidth allows.
    Screen,
}

/// A size in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Size {
    /// Whether a picture of this size fits inside `other` without downscaling.
    pub fn fits_in(self, other: Size) -> bool {
        self.width <= other.width && self.height <= other.height
    }

    /// Whether a layer of this size suits a tile of size `tile`: at most an eighth
    /// larger in either dimension. Tiles seldom match a layer exactly, and shrinking a
    /// picture a little looks far better than the next layer down stretched to twice
    /// its size.
    pub fn suits(self, tile: Size) -> bool {
        let within = |layer: u32, shown: u32| u64::from(layer) * 8 <= u64::from(shown) * 9;
        within(self.width, tile.width) && within(self.height, tile.height)
    }
}

/// One layer a publisher sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layer {
    /// What sending it costs, in bits per second.
    pub bitrate_bps: u64,
    /// Its picture size; zero for audio.
    pub size: Size,
}

/// A track's layers, lowest first: bitrate strictly growing, size never shrinking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layers(Vec<Layer>);

impl Layers {
    /// Checks the order and count of the layers.
    pub fn new(layers: Vec<Layer>) -> Result<Layers, DemandError> {
        if layers.is_empty() {
            return Err(DemandError::NoLayers);
        }
        if layers.len() > MAX_LAYERS {
            return Err(DemandError::TooManyLayers {
                count: layers.len(),
            });
        }
        for (index, pair) in layers.windows(2).enumerate() {
            let (low, high) = (pair[0], pair[1]);
            if high.bitrate_bps <= low.bitrate_bps || !low.size.fits_in(high.size) {
                return Err(DemandError::Unordered { index: index + 1 });
            }
        }
        Ok(Layers(layers))
    }

    /// One layer of this bitrate, without a picture: audio.
    pub fn audio(bitrate_bps: u64) -> Layers {
        Layers(vec![Layer {
            bitrate_bps,
            size: Size {
                width: 0,
                height: 0,
            },
        }])
    }

    /// The layers, lowest first.
    pub fn as_slice(&self) -> &[Layer] {
        &self.0
    }

    /// The cost of a layer; 0 for one that does not exist.
    fn cost(&self, layer: usize) -> u64 {
        self.0.get(layer).map_or(0, |l| l.bitrate_bps)
    }

    fn top(&self) -> usize {
        self.0.len().saturating_sub(1)
    }
}

/// What one subscriber wants of one track. Within a priority class, tracks are served in
/// the order of the demand list: callers list the most recent speakers first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackDemand<K> {
    /// The caller's name for the track.
    pub key: K,
    /// Audio, camera or screen share.
    pub kind: TrackKind,
    /// The active speaker or a pinned tile: served before other video.
    pub prominent: bool,
    /// Whether the subscriber shows it at all; ignored for audio.
    pub visible: bool,
    /// The size it is shown at; None for no limit.
    pub max_size: Option<Size>,
    /// What the publisher sends.
    pub layers: Layers,
}

/// Priority classes, served in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Audio,
    Prominent,
    Screen,
    Other,
}

impl<K> TrackDemand<K> {
    fn class(&self) -> Class {
        match self.kind {
            TrackKind::Audio => Class::Audio,
            _ if self.prominent => Class::Prominent,
            TrackKind::Screen => Class::Screen,
            TrackKind::Camera => Class::Other,
        }
    }

    fn hidden(&self) -> bool {
        self.kind != TrackKind::Audio && !self.visible
    }

    /// The highest layer worth sending: the largest that suits the shown size.
    fn cap(&self) -> usize {
        let Some(shown) = self.max_size else {
            return self.layers.top();
        };
        let layers = self.layers.as_slice();
        layers
            .iter()
            .rposition(|l| l.size.suits(shown))
            .unwrap_or(0)
    }

    /// The layer a track starts at: the lowest, or for a screen share the lowest legible.
    fn floor(&self, legible_height: u32) -> usize {
        if self.kind != TrackKind::Screen {
            return 0;
        }
        let layers = self.layers.as_slice();
        let legible = layers.iter().position(|l| l.size.height >= legible_height);
        legible.unwrap_or(self.layers.top()).min(self.cap())
    }
}

/// Why a track is not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseReason {
    /// The subscriber does not show it.
    Hidden,
    /// Not even its lowest layer fits.
    Bandwidth,
}

/// What a track is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// This layer (index into its [`Layers`]).
    Layer(usize),
    /// Nothing.
    Paused(PauseReason),
}

impl Choice {
    fn layer(self) -> Option<usize> {
        match self {
            Choice::Layer(layer) => Some(layer),
            Choice::Paused(_) => None,
        }
    }
}

/// The choice for every track of a demand list, in its order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation<K> {
    /// (track, choice), in the order of the demands.
    pub tracks: Vec<(K, Choice)>,
    /// What it costs, in bits per second.
    pub usage_bps: u64,
}

impl<K: PartialEq> Allocation<K> {
    fn empty() -> Self {
        Allocation {
            tracks: Vec::new(),
            usage_bps: 0,
        }
    }

    /// The choice for a track, if it was in the demands.
    pub fn choice(&self, key: &K) -> Option<Choice> {
        self.tracks.iter().find(|(k, _)| k == key).map(|(_, c)| *c)
    }
}

/// Tuning of the allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocatorConfig {
    /// A screen-share layer at least this tall is legible.
    pub legible_height: u32,
    /// How far (in percent of the usage) the estimate must exceed the usage to probe.
    pub probe_margin_percent: u32,
    /// How long that excess must last before each step up.
    pub probe_hold: Duration,
    /// Whether a track whose lowest layer does not fit is paused. Off, it keeps that
    /// layer (counted in the usage), and the allocation may cost more than the
    /// estimate.
    pub pause_short: bool,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        AllocatorConfig {
            legible_height: 720,
            probe_margin_percent: 20,
            probe_hold: Duration::from_secs(2),
            pause_short: true,
        }
    }
}

/// What fits `estimate_bps`, ignoring what is being sent now. See the module
/// documentation for the order.
pub fn plan<K: Clone>(
    cfg: &AllocatorConfig,
    estimate_bps: u64,
    demands: &[TrackDemand<K>],
) -> Allocation<K> {
    let mut fill = Fill {
        demands,
        choices: vec![Choice::Paused(PauseReason::Bandwidth); demands.len()],
        budget: estimate_bps,
        pause_short: cfg.pause_short,
    };
    for (choice, demand) in fill.choices.iter_mut().zip(demands) {
        if demand.hidden() {
            *choice = Choice::Paused(PauseReason::Hidden);
        }
    }
    for class in [Class::Audio, Class::Prominent, Class::Screen, Class::Other] {
        let members = fill.members(class);
        for &i in &members {
            fill.start(i, demands[i].floor(cfg.legible_height));
        }
        fill.raise_in_turn(&members);
    }
    fill.into_allocation()
}

/// A plan being filled: the choices so far and the bitrate left.
struct Fill<'a, K> {
    demands: &'a [TrackDemand<K>],
    choices: Vec<Choice>,
    budget: u64,
    pause_short: bool,
}

impl<K: Clone> Fill<'_, K> {
    /// Visible tracks of a class, in demand order.
    fn members(&self, class: Class) -> Vec<usize> {
        let in_class =
            |(i, d): (usize, &TrackDemand<K>)| (d.class() == class && !d.hidden()).then_some(i);
        self.demands
            .iter()
            .enumerate()
            .filter_map(in_class)
            .collect()
    }

    /// The highest layer up to `floor` that fits; if none does, paused, or the lowest
    /// when short tracks are not paused.
    fn start(&mut self, i: usize, floor: usize) {
        let layers = &self.demands[i].layers;
        let fitting = (0..=floor).rev().find(|&l| layers.cost(l) <= self.budget);
        let layer = match fitting {
            Some(layer) => layer,
            None if !self.pause_short => 0,
            None => return,
        };
        self.budget = self.budget.saturating_sub(layers.cost(layer));
        self.choices[i] = Choice::Layer(layer);
    }

    /// Raises the tracks one layer at a time, in turn, up to their caps, while it fits.
    fn raise_in_turn(&mut self, members: &[usize]) {
        let mut raised = true;
        while raised {
            raised = false;
            for &i in members {
                raised |= self.raise(i);
            }
        }
    }

    fn raise(&mut self, i: usize) -> bool {
        let demand = &self.demands[i];
        let Some(layer) = self.choices[i].layer() else {
            return false;
        };
        let step = step_cost(&demand.layers, layer);
        if layer >= demand.cap() || step > self.budget {
            return false;
        }
        self.budget -= step;
        self.choices[i] = Choice::Layer(layer + 1);
        true
    }

    fn into_allocation(self) -> Allocation<K> {
        allocation(self.demands, self.choices)
    }
}

/// What going from `layer` to the next one costs.
fn step_cost(layers: &Layers, layer: usize) -> u64 {
    layers.cost(layer + 1).saturating_sub(layers.cost(layer))
}

fn allocation<K: Clone>(demands: &[TrackDemand<K>], choices: Vec<Choice>) -> Allocation<K> {
    let usage_bps = usage(demands, &choices);
    let tracks = demands.iter().map(|d| d.key.clone()).zip(choices).collect();
    Allocation { tracks, usage_bps }
}

fn usage<K>(demands: &[TrackDemand<K>], choices: &[Choice]) -> u64 {
    let cost = |(d, c): (&TrackDemand<K>, &Choice)| c.layer().map_or(0, |l| d.layers.cost(l));
    // Bitrates come from publishers: a sum of absurd ones saturates instead of wrapping.
    demands
        .iter()
        .zip(choices)
        .map(cost)
        .fold(0, u64::saturating_add)
}

/// Indices of the demands, highest priority first, demand order within a class.
fn by_priority<K>(demands: &[TrackDemand<K>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by_key(|&i| demands[i].class());
    order
}

/// Allocates one subscriber's downlink over time. See the module documentation.
#[derive(Clone, Debug)]
pub struct Allocator<K> {
    /// Tuning.
    cfg: AllocatorConfig,
    /// The last accepted demand list: estimates and probes apply to it.
    demands: Vec<TrackDemand<K>>,
    /// The last estimate, in bits per second.
    estimate_bps: u64,
    /// What fits the estimate.
    target: Allocation<K>,
    /// What is being sent: never above the target, per track.
    current: Allocation<K>,
    /// Since when the estimate has exceeded the usage by the margin.
    headroom_since: Option<Instant>,
}

impl<K: Clone + PartialEq> Allocator<K> {
    /// An allocator with nothing to send.
    pub fn new(cfg: AllocatorConfig) -> Self {
        Allocator {
            cfg,
            demands: Vec::new(),
            estimate_bps: 0,
            target: Allocation::empty(),
            current: Allocation::empty(),
            headroom_since: None,
        }
    }

    /// A new demand list, with the current estimate.
    pub fn allocate(
        &mut self,
        now: Instant,
        estimate_bps: u64,
        demands: Vec<TrackDemand<K>>,
    ) -> Result<&Allocation<K>, DemandError> {
        let duplicate =
            (1..demands.len()).find(|&i| demands[..i].iter().any(|d| d.key == demands[i].key));
        if let Some(index) = duplicate {
            return Err(DemandError::DuplicateTrack { index });
        }
        self.demands = demands;
        Ok(self.handle_estimate(now, estimate_bps))
    }

    /// A new estimate of the subscriber's downlink, in bits per second.
    pub fn handle_estimate(&mut self, now: Instant, estimate_bps: u64) -> &Allocation<K> {
        self.estimate_bps = estimate_bps;
        self.target = plan(&self.cfg, estimate_bps, &self.demands);
        let spare = self.current.usage_bps;
        let mut choices: Vec<Choice> = (0..self.demands.len()).map(|i| self.settle(i)).collect();

        // Bitrate that was being sent may go to tracks below their target at once.
        let mut spare = spare.saturating_sub(usage(&self.demands, &choices));
        for i in by_priority(&self.demands) {
            while let Some(step) = self.step_up(i, choices[i]) {
                if step.cost > spare {
                    break;
                }
                spare -= step.cost;
                choices[i] = step.to;
            }
        }

        self.current = allocation(&self.demands, choices);
        self.note_headroom(now);
        &self.current
    }

    /// One careful step up: after the estimate has exceeded the usage by the margin for
    /// the hold time, raises the track of highest priority that is below its target by one
    /// layer (or resumes it at its first layer). Returns that track.
    pub fn probe(&mut self, now: Instant) -> Option<K> {
        self.note_headroom(now);
        let since = self.headroom_since?;
        if now.saturating_duration_since(since) < self.cfg.probe_hold {
            return None;
        }
        let mut choices: Vec<Choice> = self.current.tracks.iter().map(|(_, c)| *c).collect();
        let (i, step) = by_priority(&self.demands)
            .into_iter()
            .find_map(|i| Some((i, self.step_up(i, *choices.get(i)?)?)))?;
        if let Some(choice) = choices.get_mut(i) {
            *choice = step.to;
        }
        self.current = allocation(&self.demands, choices);

        // The next step waits for a whole hold time of its own.
        self.headroom_since = None;
        self.note_headroom(now);
        Some(self.demands[i].key.clone())
    }

    /// What is being sent.
    pub fn current(&self) -> &Allocation<K> {
        &self.current
    }

    /// What would fit the estimate.
    pub fn target(&self) -> &Allocation<K> {
        &self.target
    }

    /// Whether the estimate holds anything back that the demands alone would send: a
    /// track paused for bandwidth, or a lower layer than its size calls for.
    pub fn limited(&self) -> bool {
        let unlimited = plan(&self.cfg, u64::MAX, &self.demands);
        let below = |(now, free): (&(K, Choice), &(K, Choice))| match (now.1, free.1) {
            (Choice::Paused(PauseReason::Bandwidth), _) => true,
            (Choice::Layer(now), Choice::Layer(free)) => now < free,
            _ => false,
        };
        self.current.tracks.iter().zip(&unlimited.tracks).any(below)
    }

    /// The choice for track `i` of the new demands, given what it had: down (or paused) at
    /// once, never up. A new track, or one shown again, starts at its first layer: its
    /// subscriber is waiting for a picture. One paused for bandwidth stays paused.
    fn settle(&self, i: usize) -> Choice {
        let Some(target) = self.target.tracks.get(i).map(|(_, c)| *c) else {
            return Choice::Paused(PauseReason::Bandwidth);
        };
        let key = &self.demands[i].key;
        let Choice::Layer(goal) = target else {
            return target;
        };
        match self.had(i, key) {
            Some(Choice::Layer(had)) => Choice::Layer(had.min(goal)),
            Some(paused @ Choice::Paused(PauseReason::Bandwidth)) => paused,
            Some(Choice::Paused(PauseReason::Hidden)) | None => {
                Choice::Layer(self.first_layer(i).min(goal))
            }
        }
    }

    /// What track `i` (named `key`) was given before. Demand lists mostly keep their
    /// order, so its old place is looked at first.
    fn had(&self, i: usize, key: &K) -> Option<Choice> {
        match self.current.tracks.get(i) {
            Some((k, choice)) if k == key => Some(*choice),
            _ => self.current.choice(key),
        }
    }

    /// The layer a track starts or resumes at.
    fn first_layer(&self, i: usize) -> usize {
        self.demands[i].floor(self.cfg.legible_height)
    }

    /// The next step of track `i` towards its target, if it is below it.
    fn step_up(&self, i: usize, from: Choice) -> Option<Step> {
        let goal = self.target.tracks.get(i)?.1.layer()?;
        let layers = &self.demands[i].layers;
        let to = match from {
            Choice::Layer(layer) if layer < goal => layer + 1,
            Choice::Layer(_) => return None,
            Choice::Paused(_) => self.first_layer(i).min(goal),
        };
        let cost = layers
            .cost(to)
            .saturating_sub(from.layer().map_or(0, |l| layers.cost(l)));
        Some(Step {
            to: Choice::Layer(to),
            cost,
        })
    }

    fn note_headroom(&mut self, now: Instant) {
        let margin = 100 + u128::from(self.cfg.probe_margin_percent);
        let room =
            u128::from(self.estimate_bps) * 100 > u128::from(self.current.usage_bps) * margin;
        self.headroom_since = if room {
            Some(self.headroom_since.unwrap_or(now))
        } else {
            None
        };
    }
}

/// One step up of one track.
struct Step {
    /// Where it goes.
    to: Choice,
    /// What it adds to the usage.
    cost: u64,
}

#[cfg(test)]
#[path = "allocator_tests.rs"]
mod tests;
