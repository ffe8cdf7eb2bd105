//! Tests of the allocator: plans at several bandwidths, and careful steps up over time.
use super::*;

const KBPS: u64 = 1_000;

fn size(width: u32, height: u32) -> Size {
    Size { width, height }
}

fn layer(kbps: u64, width: u32, height: u32) -> Layer {
    Layer {
        bitrate_bps: kbps * KBPS,
        size: size(width, height),
    }
}

/// 150 kbps 320x180, 500 kbps 640x360, 1500 kbps 1280x720.
fn camera_layers() -> Layers {
    let layers = vec![
        layer(150, 320, 180),
        layer(500, 640, 360),
        layer(1500, 1280, 720),
    ];
    Layers::new(layers).expect("ordered")
}

/// 400 kbps 960x540, 1200 kbps 1920x1080.
fn screen_layers() -> Layers {
    Layers::new(vec![layer(400, 960, 540), layer(1200, 1920, 1080)]).expect("ordered")
}

fn audio(key: &'static str) -> TrackDemand<&'static str> {
    TrackDemand {
        key,
        kind: TrackKind::Audio,
        prominent: false,
        visible: false,
        max_size: None,
        layers: Layers::audio(32 * KBPS),
    }
}

fn camera(key: &'static str, tile: Size) -> TrackDemand<&'static str> {
    TrackDemand {
        key,
        kind: TrackKind::Camera,
        prominent: false,
        visible: true,
        max_size: Some(tile),
        layers: camera_layers(),
    }
}

fn speaker(key: &'static str) -> TrackDemand<&'static str> {
    TrackDemand {
        prominent: true,
        ..camera(key, size(1280, 720))
    }
}

fn screen(key: &'static str) -> TrackDemand<&'static str> {
    TrackDemand {
        kind: TrackKind::Screen,
        layers: screen_layers(),
        ..camera(key, size(1920, 1080))
    }
}

/// Two microphones, the speaker's camera, a screen share, one large and two small
/// tiles, and a hidden one.
fn meeting() -> Vec<TrackDemand<&'static str>> {
    vec![
        audio("a1"),
        audio("a2"),
        camera("o1", size(1280, 720)),
        camera("o2", size(320, 180)),
        screen("scr"),
        camera("o3", size(320, 180)),
        speaker("spk"),
        TrackDemand {
            visible: false,
            ..camera("hid", size(1280, 720))
        },
    ]
}

use Choice::{Layer as L, Paused};
const BW: Choice = Paused(PauseReason::Bandwidth);
const HIDDEN: Choice = Paused(PauseReason::Hidden);

/// The choices in the order of [`meeting`]: a1 a2 o1 o2 scr o3 spk hid.
fn choices(allocation: &Allocation<&'static str>) -> Vec<Choice> {
    allocation.tracks.iter().map(|(_, c)| *c).collect()
}

fn planned(kbps: u64) -> Allocation<&'static str> {
    plan(&AllocatorConfig::default(), kbps * KBPS, &meeting())
}

#[test]
fn plenty_of_bandwidth_gives_every_track_its_tile_size() {
    let allocation = planned(10_000);
    let expected = [L(0), L(0), L(2), L(0), L(1), L(0), L(2), HIDDEN];
    assert_eq!(choices(&allocation), expected);
    assert_eq!(allocation.usage_bps, 4_564 * KBPS);
}

#[test]
fn three_megabits_serve_speaker_and_screen_then_one_small_tile() {
    // 64 audio, 1500 speaker, 1200 screen, 150 for o1; o2 no longer fits.
    let allocation = planned(3_000);
    let expected = [L(0), L(0), L(0), BW, L(1), BW, L(2), HIDDEN];
    assert_eq!(choices(&allocation), expected);
    assert_eq!(allocation.usage_bps, 2_914 * KBPS);
}

#[test]
fn tight_bandwidth_forces_the_screen_below_legible_before_pausing_tiles() {
    // 64 audio, speaker 500 (1500 no longer fits), screen 400, three tiles at 150.
    let allocation = planned(1_500);
    let expected = [L(0), L(0), L(0), L(0), L(0), L(0), L(1), HIDDEN];
    assert_eq!(choices(&allocation), expected);
    assert_eq!(allocation.usage_bps, 1_414 * KBPS);
}

#[test]
fn very_little_bandwidth_keeps_audio_only() {
    let allocation = planned(200);
    let expected = [L(0), L(0), BW, BW, BW, BW, BW, HIDDEN];
    assert_eq!(choices(&allocation), expected);
}

#[test]
fn audio_alone_can_run_out() {
    let expected = [L(0), BW, BW, BW, BW, BW, BW, HIDDEN];
    assert_eq!(choices(&planned(40)), expected);
    let nothing = [BW, BW, BW, BW, BW, BW, BW, HIDDEN];
    assert_eq!(choices(&planned(0)), nothing);
}

#[test]
fn with_pausing_off_short_video_keeps_its_lowest_layer_and_is_counted() {
    let cfg = AllocatorConfig {
        pause_short: false,
        ..AllocatorConfig::default()
    };
    let allocation = plan(&cfg, 200 * KBPS, &meeting());
    let expected = [L(0), L(0), L(0), L(0), L(0), L(0), L(0), HIDDEN];
    assert_eq!(choices(&allocation), expected);
    // Audio 64, four lowest camera layers of 150 and the screen's 400: above 200.
    assert_eq!(allocation.usage_bps, 1_064 * KBPS);
    let mut allocator = Allocator::new(cfg);
    let now = Instant::now();
    allocator
        .allocate(now, 200 * KBPS, meeting())
        .expect("demands");
    assert_eq!(choices(allocator.current()), expected);
    assert!(allocator.limited(), "held below what the tiles call for");
}

#[test]
fn never_more_than_an_eighth_larger_than_the_tile() {
    let cfg = AllocatorConfig::default();
    let plenty = 100_000 * KBPS;
    let pick = |demand: TrackDemand<&'static str>| plan(&cfg, plenty, &[demand]).tracks[0].1;
    assert_eq!(pick(camera("c", size(700, 400))), L(1));
    assert_eq!(
        pick(camera("c", size(1280, 719))),
        L(2),
        "a pixel short still suits"
    );
    assert_eq!(
        pick(camera("c", size(1130, 640))),
        L(1),
        "more than an eighth does not"
    );
    assert_eq!(
        pick(camera("c", size(100, 100))),
        L(0),
        "smaller than every layer"
    );
    assert_eq!(
        pick(TrackDemand {
            max_size: None,
            ..camera("c", size(1, 1))
        }),
        L(2)
    );

    let portrait = vec![
        layer(150, 180, 320),
        layer(500, 360, 640),
        layer(1500, 720, 1280),
    ];
    let portrait = TrackDemand {
        layers: Layers::new(portrait).expect("ordered"),
        ..camera("p", size(640, 360))
    };
    assert_eq!(pick(portrait), L(0));

    // A screen share in a small tile is not forced up to the legible layer.
    assert_eq!(
        pick(TrackDemand {
            max_size: Some(size(640, 360)),
            ..screen("s")
        }),
        L(0)
    );
}

#[test]
fn a_screen_without_a_legible_layer_starts_at_its_top() {
    let low = Layers::new(vec![layer(100, 320, 180), layer(300, 640, 360)]).expect("ordered");
    let demand = TrackDemand {
        layers: low,
        ..screen("s")
    };
    let cfg = AllocatorConfig::default();
    assert_eq!(plan(&cfg, 350 * KBPS, &[demand]).tracks[0].1, L(1));
}

#[test]
fn a_pinned_screen_share_stays_legible() {
    let pinned = TrackDemand {
        prominent: true,
        ..screen("s")
    };
    let cfg = AllocatorConfig::default();
    let allocation = plan(&cfg, 1_300 * KBPS, &[camera("c", size(1280, 720)), pinned]);
    assert_eq!(choices(&allocation), [BW, L(1)]);
}

#[test]
fn bad_layers_are_refused() {
    assert_eq!(Layers::new(vec![]), Err(DemandError::NoLayers));
    let five = vec![layer(1, 1, 1); 5];
    assert_eq!(
        Layers::new(five),
        Err(DemandError::TooManyLayers { count: 5 })
    );
    let cheaper = vec![layer(500, 640, 360), layer(150, 1280, 720)];
    assert_eq!(
        Layers::new(cheaper),
        Err(DemandError::Unordered { index: 1 })
    );
    let smaller = vec![
        layer(150, 320, 180),
        layer(500, 1280, 720),
        layer(900, 640, 720),
    ];
    assert_eq!(
        Layers::new(smaller),
        Err(DemandError::Unordered { index: 2 })
    );
}

// The allocator over time.

fn ms(base: Instant, millis: u64) -> Instant {
    base + Duration::from_millis(millis)
}

fn current(allocator: &Allocator<&'static str>) -> Vec<Choice> {
    choices(allocator.current())
}

/// Probes every 100 ms until nothing moved for ten seconds; returns the time reached.
fn probe_until_settled(allocator: &mut Allocator<&'static str>, mut t: u64, base: Instant) -> u64 {
    let mut quiet_since = t;
    while t - quiet_since < 10_000 {
        t += 100;
        if allocator.probe(ms(base, t)).is_some() {
            quiet_since = t;
        }
    }
    t
}

#[test]
fn a_new_subscriber_starts_low_and_steps_up_one_layer_per_hold() {
    let base = Instant::now();
    let mut allocator = Allocator::new(AllocatorConfig::default());
    let first = allocator
        .allocate(base, 10_000 * KBPS, meeting())
        .expect("valid");
    // Cameras at their lowest layer, the screen legible at once.
    let expected = [L(0), L(0), L(0), L(0), L(1), L(0), L(0), HIDDEN];
    assert_eq!(choices(first), expected);

    let mut raised = Vec::new();
    for t in (100..=10_000).step_by(100) {
        if let Some(key) = allocator.probe(ms(base, t)) {
            raised.push((t, key));
        }
    }
    // Speaker first, then the large tile, each step a full hold after the one before.
    let expected = [(2_000, "spk"), (4_000, "spk"), (6_000, "o1"), (8_000, "o1")];
    assert_eq!(raised, expected);
    assert_eq!(allocator.current(), allocator.target());
}

#[test]
fn a_lower_estimate_moves_down_at_once() {
    let base = Instant::now();
    let mut allocator = Allocator::new(AllocatorConfig::default());
    allocator
        .allocate(base, 10_000 * KBPS, meeting())
        .expect("valid");
    let t = probe_until_settled(&mut allocator, 0, base);
    assert_eq!(allocator.current(), &planned(10_000));

    let now = allocator.handle_estimate(ms(base, t), 1_500 * KBPS);
    assert_eq!(now, &planned(1_500));
    let now = allocator.handle_estimate(ms(base, t + 100), 200 * KBPS);
    assert_eq!(now, &planned(200));
    assert!(allocator.limited());
}

#[test]
fn limited_means_something_is_held_below_what_its_tile_calls_for() {
    let base = Instant::now();
    let mut allocator = Allocator::new(AllocatorConfig::default());
    allocator
        .allocate(base, 10_000 * KBPS, meeting())
        .expect("valid");
    probe_until_settled(&mut allocator, 0, base);
    assert!(!allocator.limited(), "everything at its tile's layer");
    // A hidden tile is not held back by bandwidth, nor is a small tile on its layer.
    let small = vec![audio("a1"), camera("o2", size(320, 180))];
    allocator
        .allocate(ms(base, 100_000), 400 * KBPS, small)
        .expect("valid");
    assert!(!allocator.limited());
    allocator.handle_estimate(ms(base, 100_100), 100 * KBPS);
    assert!(allocator.limited(), "the camera is paused for bandwidth");
}

#[test]
fn a_new_speaker_takes_the_bitrate_the_old_one_frees_at_once() {
    let base = Instant::now();
    let mut allocator = Allocator::new(AllocatorConfig::default());
    allocator
        .allocate(base, 3_000 * KBPS, meeting())
        .expect("valid");
    let t = probe_until_settled(&mut allocator, 0, base);
    assert_eq!(
        current(&allocator),
        [L(0), L(0), L(0), BW, L(1), BW, L(2), HIDDEN]
    );

    // o1 becomes the speaker; the old speaker shrinks to a small tile, listed last
    // among the other tiles, so o2 gets the last 150 kbps before it.
    let mut demands = meeting();
    demands[2].prominent = true;
    demands[6] = camera("spk", size(320, 180));
    let now = allocator
        .allocate(ms(base, t), 3_000 * KBPS, demands)
        .expect("valid");
    assert_eq!(choices(now), [L(0), L(0), L(2), L(0), L(1), BW, BW, HIDDEN]);
    assert_eq!(allocator.current(), allocator.target());
}

#[test]
fn no_step_up_without_the_margin() {
    let base = Instant::now();
    let mut allocator = Allocator::new(AllocatorConfig::default());
    let demands = vec![speaker("spk"), screen("scr"), camera("o", size(640, 360))];
    allocator
        .allocate(base, 3_000 * KBPS, demands)
        .expect("valid");
    let t = probe_until_settled(&mut allocator, 0, base);
    assert_eq!(current(&allocator), [L(2), L(1), L(0)]);
    assert_eq!(allocator.current().usage_bps, 2_850 * KBPS);

    // 3300 fits o at layer 1, but is less than 20% above the 2850 in use.
    allocator.handle_estimate(ms(base, t), 3_300 * KBPS);
    assert_eq!(choices(allocator.target()), [L(2), L(1), L(1)]);
    let t = probe_until_settled(&mut allocator, t, base);
    assert_eq!(current(&allocator), [L(2), L(1), L(0)]);

    // 3500 is: one hold later o goes up.
    allocator.handle_estimate(ms(base, t), 3_500 * KBPS);
    assert_eq!(allocator.probe(ms(base, t + 1_900)), None);
    assert_eq!(allocator.probe(ms(base, t + 2_000)), Some("o"));
    assert_eq!(current(&allocator), [L(2), L(1), L(1)]);
}

#[test]
fn the_hold_restarts_when_the_headroom_goes() {
    let base = Instant::now();
    let mut allocator = Allocator::new(AllocatorConfig::default());
    allocator
        .allocate(base, 2_000 * KBPS, vec![speaker("spk")])
        .expect("valid");
    assert_eq!(allocator.probe(ms(base, 1_500)), None);
    // 170 kbps is less than 20% above the 150 in use.
    allocator.handle_estimate(ms(base, 1_600), 170 * KBPS);
    assert_eq!(allocator.probe(ms(base, 2_000)), None);
    allocator.handle_estimate(ms(base, 2_500), 2_000 * KBPS);
    assert_eq!(allocator.probe(ms(base, 4_400)), None);
    assert_eq!(allocator.probe(ms(base, 4_500)), Some("spk"));
}

#[test]
fn a_paused_track_resumes_through_a_probe() {
    let base = Instant::now();
    let mut allocator = Allocator::new(AllocatorConfig::default());
    let demands = vec![audio("a"), speaker("spk")];
    let now = allocator
        .allocate(base, 100 * KBPS, demands)
        .expect("valid");
    assert_eq!(choices(now), [L(0), BW]);

    let now = allocator.handle_estimate(ms(base, 100), 1_000 * KBPS);
    assert_eq!(choices(now), [L(0), BW], "no more than was being sent");
    assert_eq!(allocator.probe(ms(base, 2_100)), Some("spk"));
    assert_eq!(current(&allocator), [L(0), L(0)]);
}

#[test]
fn hiding_and_showing_a_tile() {
    let base = Instant::now();
    let mut allocator = Allocator::new(AllocatorConfig::default());
    let shown = vec![camera("c", size(1280, 720))];
    allocator
        .allocate(base, 5_000 * KBPS, shown.clone())
        .expect("valid");
    probe_until_settled(&mut allocator, 0, base);
    assert_eq!(current(&allocator), [L(2)]);

    let hidden = vec![TrackDemand {
        visible: false,
        ..shown[0].clone()
    }];
    let now = allocator
        .allocate(base, 5_000 * KBPS, hidden)
        .expect("valid");
    assert_eq!(choices(now), [HIDDEN]);
    // Shown again: back at its lowest layer, and up from there.
    let now = allocator
        .allocate(base, 5_000 * KBPS, shown)
        .expect("valid");
    assert_eq!(choices(now), [L(0)]);
}

#[test]
fn a_publisher_dropping_its_top_layer_moves_its_subscribers_down() {
    let base = Instant::now();
    let mut allocator = Allocator::new(AllocatorConfig::default());
    allocator
        .allocate(base, 5_000 * KBPS, vec![speaker("spk")])
        .expect("valid");
    probe_until_settled(&mut allocator, 0, base);
    assert_eq!(current(&allocator), [L(2)]);

    let two = Layers::new(vec![layer(150, 320, 180), layer(500, 640, 360)]).expect("ordered");
    let demand = TrackDemand {
        layers: two,
        ..speaker("spk")
    };
    let now = allocator
        .allocate(base, 5_000 * KBPS, vec![demand])
        .expect("valid");
    assert_eq!(choices(now), [L(1)]);
    assert_eq!(now.usage_bps, 500 * KBPS);
}

#[test]
fn a_track_listed_twice_is_refused_and_changes_nothing() {
    let base = Instant::now();
    let mut allocator = Allocator::new(AllocatorConfig::default());
    allocator
        .allocate(base, 1_000 * KBPS, vec![audio("a")])
        .expect("valid");
    let twice = vec![audio("a"), speaker("b"), audio("b")];
    assert_eq!(
        allocator.allocate(base, 1_000 * KBPS, twice),
        Err(DemandError::DuplicateTrack { index: 2 })
    );
    assert_eq!(current(&allocator), [L(0)]);
}

#[test]
fn absurd_bitrates_do_not_overflow() {
    let huge = vec![
        layer(u64::MAX / KBPS - 1, 320, 180),
        layer(u64::MAX / KBPS, 640, 360),
    ];
    let track = |key| TrackDemand {
        layers: Layers::new(huge.clone()).expect("ordered"),
        ..camera(key, size(640, 360))
    };
    let base = Instant::now();
    let mut allocator = Allocator::new(AllocatorConfig::default());
    let now = allocator
        .allocate(base, u64::MAX, vec![track("x"), track("y")])
        .expect("valid");
    assert_eq!(choices(now), [L(0), BW]);
    allocator.handle_estimate(ms(base, 100), 0);
    assert_eq!(allocator.probe(ms(base, 10_000)), None);
    assert_eq!(allocator.current().usage_bps, 0);
}

#[test]
fn usage_never_exceeds_the_estimate() {
    let base = Instant::now();
    let mut allocator = Allocator::new(AllocatorConfig::default());
    allocator.allocate(base, 0, meeting()).expect("valid");
    let mut state = 7_u64;
    for step in 0..2_000_u64 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let now = ms(base, step * 100);
        if step % 3 == 0 {
            let estimate = (state >> 33) % (6_000 * KBPS);
            allocator.handle_estimate(now, estimate);
            assert!(allocator.current().usage_bps <= estimate);
        } else {
            allocator.probe(now);
        }
        assert!(allocator.current().usage_bps <= allocator.target().usage_bps);
    }
}
