//! Tests of the simulcast forwarder, driven by three synthetic layers with time passed in.
use super::*;
use bytes::Bytes;
use rtc::rtp::header::Header;

/// VP8, S=1 PID=0, keyframe header.
const VP8_KEY: &[u8] = &[0x10, 0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a];
/// VP8, S=1 PID=0, interframe header.
const VP8_DELTA: &[u8] = &[0x10, 0x51, 0x02, 0x00];
const FRAME: Duration = Duration::from_millis(33);
const SUB: DownTrackKey = DownTrackKey(1);
const OTHER: DownTrackKey = DownTrackKey(2);

fn size(width: u32, height: u32) -> Size {
    Size { width, height }
}

fn layers() -> Vec<Size> {
    vec![size(320, 180), size(640, 360), size(1280, 720)]
}

/// Three layers of one publisher, each with its own SSRC and numbering.
struct Rig {
    fwd: SimulcastForwarder,
    now: Instant,
    seq: [u16; 3],
    out: Vec<(DownTrackKey, Packet)>,
}

impl Rig {
    fn new() -> Self {
        Rig {
            fwd: SimulcastForwarder::new(layers(), VideoCodec::Vp8, Duration::from_millis(500)),
            now: Instant::now(),
            seq: [10, 20_000, 65_000],
            out: Vec::new(),
        }
    }

    /// One frame (one packet) of each layer in `which`, keyframes on those in `key`;
    /// returns what each down-track got, as (key, input layer, output sequence).
    fn frame(&mut self, which: &[usize], key: &[usize]) -> Vec<(DownTrackKey, usize, u16)> {
        self.now += FRAME;
        let mut got = Vec::new();
        for &layer in which {
            let payload = if key.contains(&layer) {
                VP8_KEY
            } else {
                VP8_DELTA
            };
            let header = Header {
                version: 2,
                payload_type: 100,
                sequence_number: self.seq[layer],
                timestamp: 1_000 * self.seq[layer] as u32,
                ssrc: 0x100 + layer as u32,
                ..Header::default()
            };
            self.seq[layer] = self.seq[layer].wrapping_add(1);
            let packet = Packet {
                header,
                payload: Bytes::from_static(payload),
            };
            self.out.clear();
            self.fwd.handle_rtp(self.now, &packet, layer, &mut self.out);
            for (to, copy) in self.out.drain(..) {
                got.push((to, layer, copy.header.sequence_number));
            }
        }
        got
    }

    /// The PLIs due now, by layer.
    fn requests(&mut self) -> Vec<usize> {
        std::iter::from_fn(|| self.fwd.poll_keyframe_request(self.now)).collect()
    }
}

fn layers_of(got: &[(DownTrackKey, usize, u16)], key: DownTrackKey) -> Vec<usize> {
    got.iter().filter(|g| g.0 == key).map(|g| g.1).collect()
}

#[test]
fn the_shown_size_picks_the_largest_layer_that_fits_inside_it() {
    let all = layers();
    assert_eq!(wanted(&all, None), 2, "no size said: the highest");
    assert_eq!(wanted(&all, Some(size(320, 180))), 0);
    assert_eq!(wanted(&all, Some(size(800, 450))), 1);
    // A layer a little larger than the tile beats the one below stretched to it.
    assert_eq!(wanted(&all, Some(size(615, 346))), 1);
    assert_eq!(wanted(&all, Some(size(560, 315))), 0, "an eighth at most");
    assert_eq!(wanted(&all, Some(size(1920, 1080))), 2);
    assert_eq!(
        wanted(&all, Some(size(100, 100))),
        0,
        "none fits: the lowest"
    );
}

#[test]
fn subscribers_together_need_the_widest_and_tallest_size_or_the_largest_layer() {
    let one = |w, h| Some(size(w, h));
    assert_eq!(largest_shown([one(320, 180)].into_iter()), one(320, 180));
    assert_eq!(
        largest_shown([one(320, 400), one(640, 180)].into_iter()),
        one(640, 400)
    );
    assert_eq!(largest_shown([one(320, 180), None].into_iter()), None);
    assert_eq!(largest_shown(std::iter::empty()), None);
}

#[test]
fn a_downlink_cap_limits_what_a_subscriber_needs_in_each_dimension() {
    let one = |w, h| Some(size(w, h));
    assert_eq!(capped(one(1280, 720), one(640, 360)), one(640, 360));
    assert_eq!(capped(one(320, 180), one(640, 360)), one(320, 180));
    assert_eq!(capped(one(400, 600), one(640, 360)), one(400, 360));
    assert_eq!(capped(None, one(640, 360)), one(640, 360), "no size said");
    assert_eq!(capped(one(320, 180), None), one(320, 180), "no cap");
    assert_eq!(capped(None, None), None);
    // Two subscribers of a cascaded track: the larger of the capped sizes crosses.
    let needs = [
        capped(one(1280, 720), one(320, 180)),
        capped(None, one(640, 360)),
    ];
    assert_eq!(largest_shown(needs.into_iter()), one(640, 360));
}

#[test]
fn a_layer_that_does_not_arrive_is_replaced_by_the_nearest_that_does() {
    assert_eq!(fallback(2, &[true, true, false]), 1);
    assert_eq!(fallback(1, &[true, false, false]), 0);
    assert_eq!(fallback(0, &[false, false, true]), 2);
    assert_eq!(fallback(2, &[true, true, true]), 2);
    assert_eq!(
        fallback(1, &[false, false, false]),
        1,
        "nothing arrives: as wanted"
    );
}

#[test]
fn a_subscriber_gets_one_layer_from_its_keyframe_on_with_continuous_numbers() {
    let mut rig = Rig::new();
    rig.fwd.add_down_track(rig.now, SUB, 0xabc, 96);
    rig.fwd.set_shown_size(rig.now, SUB, Some(size(320, 180)));
    // Nothing until a keyframe of the low layer; its keyframe is asked for.
    assert!(rig.frame(&[0, 1, 2], &[1, 2]).is_empty());
    assert_eq!(rig.requests(), [0]);
    let mut got = rig.frame(&[0, 1, 2], &[0]);
    for _ in 0..5 {
        got.extend(rig.frame(&[0, 1, 2], &[]));
    }
    assert_eq!(layers_of(&got, SUB), [0; 6]);
    let seqs: Vec<u16> = got.iter().map(|g| g.2).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "{seqs:?}"
    );
}

#[test]
fn a_larger_tile_switches_up_at_the_high_layers_keyframe() {
    let mut rig = Rig::new();
    rig.fwd.add_down_track(rig.now, SUB, 0xabc, 96);
    rig.fwd.set_shown_size(rig.now, SUB, Some(size(320, 180)));
    let mut got = rig.frame(&[0, 1, 2], &[0]);
    rig.requests();
    // The tile grows: the low layer keeps flowing until the high layer's keyframe.
    rig.now += Duration::from_secs(1);
    rig.fwd.set_shown_size(rig.now, SUB, Some(size(1280, 720)));
    assert_eq!(rig.requests(), [2]);
    got.extend(rig.frame(&[0, 1, 2], &[]));
    got.extend(rig.frame(&[0, 1, 2], &[2]));
    got.extend(rig.frame(&[0, 1, 2], &[]));
    // The low layer's packet of each frame comes first.
    assert_eq!(layers_of(&got, SUB), [0, 0, 0, 2, 2]);
    let seqs: Vec<u16> = got.iter().map(|g| g.2).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "{seqs:?}"
    );
    assert_eq!(rig.fwd.current_layer(SUB), Some(2));
}

#[test]
fn a_bandwidth_cap_lowers_the_layer_and_lifting_it_restores_the_size_s_choice() {
    let mut rig = Rig::new();
    rig.fwd.add_down_track(rig.now, SUB, 0xabc, 96);
    rig.fwd.set_shown_size(rig.now, SUB, Some(size(1280, 720)));
    let mut got = rig.frame(&[0, 1, 2], &[2]);
    rig.requests();
    rig.fwd.set_max_layer(rig.now, SUB, Some(0));
    assert_eq!(rig.requests(), [0]);
    got.extend(rig.frame(&[0, 1, 2], &[0]));
    // Lifted: back up to what the tile calls for, at that layer's keyframe.
    rig.now += Duration::from_secs(1);
    rig.fwd.set_max_layer(rig.now, SUB, None);
    assert_eq!(rig.requests(), [2]);
    got.extend(rig.frame(&[0, 1, 2], &[2]));
    // The low layer's packet of that frame comes before the high layer's keyframe.
    assert_eq!(layers_of(&got, SUB), [2, 0, 0, 2]);
    // A cap above the size's choice changes nothing.
    rig.now += Duration::from_secs(1);
    rig.fwd.set_shown_size(rig.now, SUB, Some(size(320, 180)));
    rig.fwd.set_max_layer(rig.now, SUB, Some(1));
    assert_eq!(rig.requests(), [0]);
}

#[test]
fn each_subscriber_gets_its_own_layer() {
    let mut rig = Rig::new();
    rig.fwd.add_down_track(rig.now, SUB, 0xabc, 96);
    rig.fwd.add_down_track(rig.now, OTHER, 0xdef, 96);
    rig.fwd.set_shown_size(rig.now, SUB, Some(size(320, 180)));
    let got = rig.frame(&[0, 1, 2], &[0, 1, 2]);
    assert_eq!(layers_of(&got, SUB), [0]);
    assert_eq!(layers_of(&got, OTHER), [2], "no size said: the highest");
}

#[test]
fn when_the_wanted_layer_stops_the_subscriber_falls_back_and_returns() {
    let mut rig = Rig::new();
    rig.fwd.add_down_track(rig.now, SUB, 0xabc, 96);
    rig.frame(&[0, 1, 2], &[0, 1, 2]);
    assert_eq!(rig.fwd.current_layer(SUB), Some(2));
    // The encoder drops the high layer; once it counts as stopped, the middle one is
    // asked for and taken at its keyframe.
    let mut requested = Vec::new();
    for _ in 0..50 {
        rig.frame(&[0, 1], &[]);
        requested.extend(rig.requests());
    }
    assert!(requested.contains(&1), "{requested:?}");
    rig.frame(&[0, 1], &[1]);
    assert_eq!(rig.fwd.current_layer(SUB), Some(1));
    // It comes back: up again at its keyframe.
    rig.frame(&[0, 1, 2], &[]);
    assert_eq!(rig.requests(), [2]);
    rig.frame(&[0, 1, 2], &[2]);
    assert_eq!(rig.fwd.current_layer(SUB), Some(2));
}

#[test]
fn a_layer_that_never_comes_is_given_up_after_the_start() {
    let mut rig = Rig::new();
    rig.fwd.add_down_track(rig.now, SUB, 0xabc, 96);
    // The encoder sends two layers only: the subscriber waits for the third at first,
    // then takes the middle one.
    let start = rig.now;
    let mut requested = Vec::new();
    while rig.now < start + LAYER_STALE_AFTER + Duration::from_millis(100) {
        assert!(rig.frame(&[0, 1], &[]).is_empty());
        assert!(rig.fwd.poll_timeout().is_some());
        requested.extend(rig.requests());
    }
    assert!(requested.contains(&1), "{requested:?}");
    assert_eq!(layers_of(&rig.frame(&[0, 1], &[1]), SUB), [1]);
}

#[test]
fn a_paused_subscriber_gets_nothing_and_restarts_at_a_keyframe() {
    let mut rig = Rig::new();
    rig.fwd.add_down_track(rig.now, SUB, 0xabc, 96);
    rig.frame(&[0, 1, 2], &[2]);
    rig.fwd.set_paused(SUB, true);
    assert!(rig.frame(&[0, 1, 2], &[0, 1, 2]).is_empty());
    rig.fwd.set_paused(SUB, false);
    assert!(
        rig.frame(&[0, 1, 2], &[]).is_empty(),
        "waits for a keyframe"
    );
    assert_eq!(rig.requests(), [2]);
    assert_eq!(layers_of(&rig.frame(&[0, 1, 2], &[2]), SUB), [2]);
}

#[test]
fn unanswered_requests_repeat_at_the_throttle_interval_only() {
    let mut rig = Rig::new();
    rig.fwd.add_down_track(rig.now, SUB, 0xabc, 96);
    rig.frame(&[0, 1, 2], &[]);
    assert_eq!(rig.requests(), [2]);
    rig.frame(&[0, 1, 2], &[]);
    assert!(rig.requests().is_empty(), "within the interval");
    rig.now += Duration::from_millis(500);
    rig.frame(&[0, 1, 2], &[]);
    assert_eq!(rig.requests(), [2]);
}

#[test]
fn a_subscribers_keyframe_request_asks_the_layer_it_is_sent() {
    let mut rig = Rig::new();
    rig.fwd.add_down_track(rig.now, SUB, 0xabc, 96);
    rig.fwd.set_shown_size(rig.now, SUB, Some(size(640, 360)));
    rig.frame(&[0, 1, 2], &[1]);
    rig.requests();
    rig.now += Duration::from_secs(1);
    rig.fwd.handle_keyframe_request(rig.now, SUB);
    assert_eq!(rig.requests(), [1]);
}

#[test]
fn packets_of_a_layer_the_track_lacks_are_dropped_and_counted() {
    let mut rig = Rig::new();
    rig.fwd.add_down_track(rig.now, SUB, 0xabc, 96);
    let packet = Packet {
        header: Header::default(),
        payload: Bytes::from_static(VP8_KEY),
    };
    let mut out = Vec::new();
    rig.fwd.handle_rtp(rig.now, &packet, 7, &mut out);
    assert!(out.is_empty());
    assert_eq!(rig.fwd.unknown_layer_packets(), 1);
    assert_eq!(rig.fwd.stats().packets_in, 0);
}
