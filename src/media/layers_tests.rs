//! Tests of the layer selector, driven by three synthetic simulcast layers.
use super::*;
use crate::media::codec::{self, VideoCodec};
use bytes::Bytes;
use rtc::rtp::header::Header;

const OUT_SSRC: u32 = 0xabcd;
const OUT_PT: u8 = 96;
/// VP8, S=1 PID=0, keyframe header.
const VP8_KEY: &[u8] = &[0x10, 0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a];
/// VP8, S=1 PID=0, interframe header.
const VP8_DELTA: &[u8] = &[0x10, 0x51, 0x02, 0x00];
/// VP8, S=0: a later packet of a frame.
const VP8_MIDDLE: &[u8] = &[0x00, 0x77, 0x66];
/// One frame at 30 fps, in milliseconds and in 90 kHz ticks.
const FRAME_MS: u64 = 33;
const FRAME_TICKS: u32 = 2_970;

/// One packet as the up-track would hand it over.
struct Input {
    layer: usize,
    packet: Packet,
}

impl Input {
    fn keyframe(&self) -> bool {
        codec::is_keyframe(VideoCodec::Vp8, &self.packet.payload)
    }
}

/// A publisher of three layers, each with its own SSRC, numbering and timestamps.
struct Publisher {
    seq: [u16; 3],
    ts: [u32; 3],
}

impl Publisher {
    fn new() -> Self {
        Publisher {
            seq: [100, 65_500, 30_000],
            ts: [1_000, 4_000_000_000, 77_777],
        }
    }

    /// The two packets of the next frame of `layer`.
    fn frame(&mut self, layer: usize, key: bool) -> Vec<Input> {
        let first = if key { VP8_KEY } else { VP8_DELTA };
        let packets = [first, VP8_MIDDLE].map(|payload| {
            let header = Header {
                version: 2,
                payload_type: 100,
                sequence_number: self.seq[layer],
                timestamp: self.ts[layer],
                ssrc: 0x1000 + layer as u32,
                ..Header::default()
            };
            self.seq[layer] = self.seq[layer].wrapping_add(1);
            let payload = Bytes::from_static(payload);
            Input {
                layer,
                packet: Packet { header, payload },
            }
        });
        self.ts[layer] = self.ts[layer].wrapping_add(FRAME_TICKS);
        packets.into()
    }

    /// The next frame of every layer, keyframes on the layers `key` names.
    fn frames(&mut self, key: &[usize]) -> Vec<Input> {
        (0..3)
            .flat_map(|layer| self.frame(layer, key.contains(&layer)))
            .collect()
    }
}

/// What the subscriber received: (input layer, output header).
type Received = Vec<(usize, Header)>;

struct Harness {
    base: Instant,
    publisher: Publisher,
    selector: LayerSelector,
    frame: u64,
    received: Received,
    requests: Vec<(u64, usize)>,
}

impl Harness {
    fn new(target: usize) -> Self {
        let mut selector = LayerSelector::with_start(OUT_SSRC, OUT_PT, 65_530, 10_000);
        selector.set_target(Some(target)).expect("a valid layer");
        let mut harness = Harness {
            base: Instant::now(),
            publisher: Publisher::new(),
            selector,
            frame: 0,
            received: Vec::new(),
            requests: Vec::new(),
        };
        harness.poll();
        harness
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.frame * FRAME_MS)
    }

    /// Feeds inputs at the current frame's instant.
    fn feed(&mut self, inputs: &[Input]) {
        let now = self.now();
        for input in inputs {
            let (layer, key) = (input.layer, input.keyframe());
            if let Some(out) = self.selector.handle_rtp(now, layer, key, &input.packet) {
                self.received.push((layer, out.header));
            }
        }
        self.poll();
    }

    /// The next frame of every layer, keyframes on the layers `key` names.
    fn step(&mut self, key: &[usize]) {
        let inputs = self.publisher.frames(key);
        self.feed(&inputs);
        self.frame += 1;
    }

    fn target(&mut self, layer: Option<usize>) {
        self.selector.set_target(layer).expect("a valid layer");
        self.poll();
    }

    fn poll(&mut self) {
        while let Some(layer) = self.selector.poll_keyframe_request() {
            self.requests.push((self.frame, layer));
        }
    }

    fn layers(&self) -> Vec<usize> {
        let mut layers: Vec<usize> = self.received.iter().map(|(l, _)| *l).collect();
        layers.dedup();
        layers
    }
}

/// Output sequence numbers consecutive, timestamps never going back, one SSRC.
fn assert_continuous(received: &[(usize, Header)]) {
    for pair in received.windows(2) {
        let (a, b) = (&pair[0].1, &pair[1].1);
        assert_eq!(
            b.sequence_number,
            a.sequence_number.wrapping_add(1),
            "{received:?}"
        );
        assert!(
            (b.timestamp.wrapping_sub(a.timestamp) as i32) >= 0,
            "{received:?}"
        );
        assert_eq!((b.ssrc, b.payload_type), (OUT_SSRC, OUT_PT));
    }
}

#[test]
fn starts_at_the_first_keyframe_of_the_target_layer() {
    let mut h = Harness::new(0);
    assert_eq!(h.requests, [(0, 0)]);
    h.step(&[1, 2]);
    h.step(&[]);
    assert!(h.received.is_empty(), "no keyframe of layer 0 yet");
    h.step(&[0]);
    h.step(&[]);
    assert_eq!(h.layers(), [0]);
    assert_eq!(h.received.len(), 4);
    assert_eq!(h.received[0].1.sequence_number, 65_530);
    assert_eq!(h.received[0].1.timestamp, 10_000);
    assert_continuous(&h.received);
    assert_eq!(h.requests.len(), 1);
}

#[test]
fn switches_up_only_at_a_keyframe_of_the_target_and_stays_continuous() {
    let mut h = Harness::new(0);
    h.step(&[0]);
    h.step(&[]);
    h.target(Some(2));
    h.target(Some(2));
    assert_eq!(h.requests, [(0, 0), (2, 2)], "one request per switch");
    h.step(&[]);
    h.step(&[1]);
    assert_eq!(h.layers(), [0], "no switch before layer 2's keyframe");
    h.step(&[2]);
    h.step(&[]);
    assert_eq!(h.layers(), [0, 2]);
    assert_eq!(h.received.len(), 14);
    assert_continuous(&h.received);
    assert_eq!(h.selector.stats().switches, 2);
    // Layer 0's picture and layer 2's keyframe arrived together: the same moment, so the
    // keyframe comes one tick later.
    let (before, after) = (&h.received[9], &h.received[10]);
    assert_eq!((before.0, after.0), (0, 2));
    assert_eq!(after.1.timestamp.wrapping_sub(before.1.timestamp), 1);
}

#[test]
fn switches_down_at_a_keyframe_of_the_lower_layer() {
    let mut h = Harness::new(2);
    h.step(&[2]);
    h.step(&[]);
    h.target(Some(0));
    h.step(&[1, 2]);
    h.step(&[0]);
    h.step(&[]);
    assert_eq!(h.layers(), [2, 0]);
    assert_continuous(&h.received);
    assert_eq!(h.requests, [(0, 2), (2, 0)]);
}

#[test]
fn changing_the_target_back_before_the_keyframe_cancels_the_switch() {
    let mut h = Harness::new(1);
    h.step(&[1]);
    h.target(Some(2));
    h.target(Some(1));
    h.step(&[2]);
    h.step(&[1, 2]);
    assert_eq!(h.layers(), [1]);
    assert_continuous(&h.received);
    assert_eq!(h.requests, [(0, 1), (1, 2)]);
}

#[test]
fn upstream_loss_stays_visible_and_a_switch_closes_no_gap_it_should_not() {
    let mut h = Harness::new(0);
    h.step(&[0]);
    // The second frame of layer 0 loses its last packet.
    let mut inputs = h.publisher.frames(&[]);
    inputs.remove(1);
    h.feed(&inputs);
    h.frame += 1;
    h.step(&[]);
    let seqs: Vec<u16> = h
        .received
        .iter()
        .map(|(_, hd)| hd.sequence_number)
        .collect();
    assert_eq!(seqs, [65_530, 65_531, 65_532, 65_534, 65_535]);

    h.target(Some(1));
    h.step(&[1]);
    assert_eq!(h.layers(), [0, 1]);
    assert_continuous(&h.received[3..]);
    let last = h.received.last().map(|(_, hd)| hd.sequence_number);
    assert_eq!(last, Some(3));
}

#[test]
fn reordered_packets_keep_their_places() {
    let mut h = Harness::new(0);
    h.step(&[0]);
    let mut inputs = h.publisher.frames(&[]);
    inputs.swap(0, 1);
    h.feed(&inputs);
    let seqs: Vec<u16> = h
        .received
        .iter()
        .map(|(_, hd)| hd.sequence_number)
        .collect();
    assert_eq!(seqs, [65_530, 65_531, 65_533, 65_532]);
}

#[test]
fn late_packets_from_before_a_switch_are_dropped() {
    let mut h = Harness::new(0);
    h.step(&[0]);
    h.target(Some(2));
    // Layer 2's frame before its keyframe is held back in the network...
    let mut inputs = h.publisher.frames(&[]);
    let mut late = inputs.split_off(4);
    h.feed(&inputs);
    h.frame += 1;
    // ...and so is the last packet of layer 0 before the switch.
    let mut inputs = h.publisher.frames(&[2]);
    late.push(inputs.remove(1));
    h.feed(&inputs);
    h.frame += 1;
    assert_eq!(h.layers(), [0, 2]);

    let sent = h.received.len();
    h.feed(&late);
    assert_eq!(h.received.len(), sent, "late packets must not be sent");
    assert_eq!(
        h.selector.stats().dropped,
        2,
        "layer 2's, refused by the rewriter"
    );
    h.step(&[]);
    assert_eq!(h.layers(), [0, 2]);
    assert_continuous(&h.received);
}

#[test]
fn duplicates_are_dropped() {
    let mut h = Harness::new(0);
    let inputs = h.publisher.frames(&[0]);
    h.feed(&inputs);
    h.feed(&inputs);
    assert_eq!(h.received.len(), 2);
}

#[test]
fn pause_and_resume_continue_the_numbering_and_the_clock() {
    let mut h = Harness::new(1);
    h.step(&[1]);
    h.target(None);
    assert_eq!(h.selector.current(), None);
    h.step(&[0, 1, 2]);
    assert_eq!(h.received.len(), 2, "paused at once");
    h.step(&[]);
    h.target(Some(1));
    h.step(&[]);
    h.step(&[1]);
    assert_continuous(&h.received);
    assert_eq!(h.requests, [(0, 1), (3, 1)]);
    // Resumed four frames after the last packet went out.
    let (before, after) = (&h.received[1].1, &h.received[2].1);
    assert_eq!(
        after.timestamp.wrapping_sub(before.timestamp),
        4 * FRAME_TICKS
    );
}

#[test]
fn a_keyframe_that_arrives_before_the_poll_owes_no_request() {
    let mut selector = LayerSelector::with_start(OUT_SSRC, OUT_PT, 0, 0);
    selector.set_target(Some(0)).expect("a valid layer");
    let mut publisher = Publisher::new();
    for input in publisher.frame(0, true) {
        let sent = selector.handle_rtp(Instant::now(), 0, input.keyframe(), &input.packet);
        assert!(sent.is_some());
    }
    assert_eq!(selector.poll_keyframe_request(), None);
}

#[test]
fn unknown_layers_are_refused() {
    let mut selector = LayerSelector::new(OUT_SSRC, OUT_PT);
    assert_eq!(
        selector.set_target(Some(MAX_LAYERS)),
        Err(LayerError::UnknownLayer { layer: MAX_LAYERS })
    );
    assert_eq!(selector.target(), None);
    assert_eq!(selector.poll_keyframe_request(), None);
    let mut publisher = Publisher::new();
    let input = publisher.frame(0, true).remove(0);
    assert!(selector
        .handle_rtp(Instant::now(), 9, true, &input.packet)
        .is_none());
}

#[test]
fn random_switching_loss_and_reordering_never_repeat_an_output_number() {
    let mut h = Harness::new(0);
    let mut state = 42_u32;
    let mut next = move || {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        state >> 16
    };
    let mut held: Vec<Input> = Vec::new();
    for _ in 0..3_000 {
        if next() % 10 == 0 {
            let target = (next() % 4) as usize;
            h.target((target < 3).then_some(target));
        }
        let keys: Vec<usize> = (0..3).filter(|_| next() % 8 == 0).collect();
        let mut inputs = h.publisher.frames(&keys);
        inputs.retain(|_| next() % 20 != 0);
        if next() % 5 == 0 {
            held.append(&mut inputs);
        } else {
            inputs.append(&mut held);
        }
        h.feed(&inputs);
        h.frame += 1;
    }
    let (mut seen, mut newest) = (std::collections::HashSet::new(), 0_i64);
    for (_, header) in &h.received {
        let delta = i64::from(header.sequence_number.wrapping_sub(newest as u16) as i16);
        let unwrapped = newest + delta;
        assert!(seen.insert(unwrapped), "output seq {unwrapped} sent twice");
        newest = newest.max(unwrapped);
    }
    assert!(h.received.len() > 1_000);
}
