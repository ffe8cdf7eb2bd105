//! The meeting page in real headless Chromium against a real node.
//!
//! Each test starts a node in dev mode (so the page fetches its own tokens),
//! one chromedriver, and one browser per participant with a fake camera and
//! microphone; everything is killed when the test ends. The tests run one at a
//! time: a few browsers already fill a two-core machine. They need Debian's
//! chromium and chromium-driver (`scripts/install-browser.sh`).

mod common;
#[path = "browser/page.rs"]
mod page;
#[path = "browser/webdriver.rs"]
mod webdriver;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::Node;
use page::{wait, wait_media_flows, Page};
use webdriver::ChromeDriver;

/// Defining `[auth]` after the generated `[auth.keys]` is valid TOML.
const DEV_MODE: &str = "[auth]\ndev_mode = true\n";

/// Statistics refreshes over which media must keep growing to count as flowing.
const FLOWING: u32 = 3;

/// Browser tests take turns.
fn serial() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts a node in dev mode that the browsers cannot starve of CPU.
///
/// Chromium raises some of its own threads above normal priority, and four of
/// them fill two cores; on a real deployment the node has a machine of its own.
fn start_node() -> Node {
    let node = Node::start_with(DEV_MODE);
    favour_nodes();
    node
}

/// Raises the priority of every relais node this test process started.
fn favour_nodes() {
    let ours = std::process::id();
    let relais = std::fs::canonicalize(env!("CARGO_BIN_EXE_relais")).ok();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let exe = std::fs::read_link(entry.path().join("exe")).ok();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if exe.is_some() && exe == relais && parent == Some(ours.to_string().as_str()) {
            let pid = entry.file_name().to_string_lossy().into_owned();
            let _ = std::process::Command::new("renice")
                .args(["-n", "-10", "-p", &pid])
                .stdout(std::process::Stdio::null())
                .status();
        }
    }
}

fn base_url(node: &Node) -> String {
    format!("http://{}", node.addr)
}

/// Ada and Grace in `room`, joined, with media flowing both ways; returns Ada's id.
fn meeting_of_two(room: &str) -> (Node, ChromeDriver, Vec<Page>, String) {
    let node = start_node();
    let driver = ChromeDriver::start();
    let pages = join_all(
        &driver,
        &base_url(&node),
        room,
        &["Ada Lovelace", "Grace Hopper"],
    );
    let ada_id = pages[0].wait_joined(secs(30));
    pages[1].wait_joined(secs(30));
    wait_media_flows(&[&pages[0], &pages[1]], FLOWING, secs(30));
    (node, driver, pages, ada_id)
}

/// Opens one browser per name, all at once, each joining `room` through the form.
/// The first gets a desktop-sized window for screenshots; the others smaller ones,
/// which cost less to paint.
fn join_all(driver: &ChromeDriver, base: &str, room: &str, names: &[&str]) -> Vec<Page> {
    join_all_with(driver, base, room, names, &[])
}

/// As [`join_all`], with more command-line flags for every browser.
fn join_all_with(
    driver: &ChromeDriver,
    base: &str,
    room: &str,
    names: &[&str],
    extra: &[String],
) -> Vec<Page> {
    std::thread::scope(|scope| {
        let opening: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let size = if i == 0 { (1280, 800) } else { (800, 600) };
                scope.spawn(move || Page::join_with(driver, base, room, name, size, extra))
            })
            .collect();
        opening
            .into_iter()
            .map(|page| page.join().expect("a browser opened"))
            .collect()
    })
}

#[test]
fn two_participants_see_and_hear_each_other() {
    let _turn = serial();
    let (_node, _driver, pages, ada_id) = meeting_of_two("pair");
    let grace = &pages[1];

    let seen = grace.status();
    let names: Vec<&str> = seen.participants.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["Ada Lovelace"]);
    let video = seen
        .remote
        .iter()
        .find(|r| r.kind == "video")
        .expect("video");
    assert!(
        video.track_id.starts_with("TR_") && video.frame_width > 0,
        "{video:?}"
    );
    assert_eq!(video.participant_id.as_deref(), Some(ada_id.as_str()));
    let tiles: Vec<String> = grace.tiles().into_iter().map(|t| t.name).collect();
    assert_eq!(tiles, ["Grace Hopper (you)", "Ada Lovelace"]);

    // The server is told the size of Ada's tile, to pick a layer by when she sends
    // several: two 16:9 tiles side by side in an 800-pixel window.
    let shown = wait(&[grace], "the tile size told", secs(10), |s| {
        let told = s[0].sizes.iter().find(|t| t.track_id == video.track_id);
        told.cloned()
    });
    assert!(
        (300..=400).contains(&shown.width) && shown.height.abs_diff(shown.width * 9 / 16) <= 2,
        "{shown:?}"
    );
}

#[test]
fn two_participants_on_different_nodes_see_each_other() {
    let _turn = serial();
    let etcd = common::etcd::Etcd::start();
    let nodes: Vec<Node> = ["n0", "n1"]
        .iter()
        .map(|id| Node::start_clustered(&etcd.endpoint(), id, "r", DEV_MODE))
        .collect();
    favour_nodes();
    for node in &nodes {
        node.wait_ready();
    }
    let driver = ChromeDriver::start();
    // Each page is served by, and signals to, a node of its own.
    let (ada, grace) = std::thread::scope(|scope| {
        let ada = scope.spawn(|| {
            Page::join(
                &driver,
                &base_url(&nodes[0]),
                "bridge",
                "Ada Lovelace",
                (1280, 800),
            )
        });
        let grace = scope.spawn(|| {
            Page::join(
                &driver,
                &base_url(&nodes[1]),
                "bridge",
                "Grace Hopper",
                (800, 600),
            )
        });
        (ada.join().expect("browser"), grace.join().expect("browser"))
    });
    let ada_id = ada.wait_joined(secs(30));
    let grace_id = grace.wait_joined(secs(30));
    wait_media_flows(&[&ada, &grace], FLOWING, secs(30));
    for (page, other, other_id) in [
        (&ada, "Grace Hopper", &grace_id),
        (&grace, "Ada Lovelace", &ada_id),
    ] {
        let seen = page.status();
        let names: Vec<&str> = seen.participants.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, [other]);
        let video = seen
            .remote
            .iter()
            .find(|r| r.kind == "video")
            .expect("video from the other node");
        assert!(video.frame_width > 0, "{video:?}");
        assert_eq!(video.participant_id.as_ref(), Some(other_id));
    }
    // Both nodes serve the meeting.
    let (_, detail) = nodes[1].admin("GET", "/admin/rooms/bridge");
    assert_eq!(common::serving_nodes(&detail), ["n0", "n1"]);
}

#[test]
fn four_participants_then_one_leaves() {
    let _turn = serial();
    let node = start_node();
    let driver = ChromeDriver::start();

    let names = [
        "Ada Lovelace",
        "Grace Hopper",
        "Alan Turing",
        "Katherine Johnson",
    ];
    let pages = join_all(&driver, &base_url(&node), "four", &names);
    for page in &pages {
        page.wait_joined(secs(30));
    }
    let all: Vec<&Page> = pages.iter().collect();
    wait_media_flows(&all, FLOWING, secs(60));

    // Every tile shows its person's name and, once painted, their video.
    let watcher = &pages[0];
    let drawn = wait(&[watcher], "four painted tiles", secs(10), |_| {
        let tiles = watcher.tiles();
        (tiles.len() == 4 && tiles.iter().all(|t| t.width > 0)).then_some(tiles)
    });
    let mut shown: Vec<&str> = drawn
        .iter()
        .map(|t| t.name.trim_end_matches(" (you)"))
        .collect();
    shown.sort();
    let mut expected = names.to_vec();
    expected.sort();
    assert_eq!(shown, expected);
    save_artifact("meeting-4.png", &watcher.browser.screenshot());

    // Katherine leaves with the button: everyone else drops her tile promptly. Each
    // page notes when the tile went, so that polling does not add to the time.
    let leaver = pages[3].status().participant_id.expect("joined");
    let stayers: Vec<&Page> = pages[..3].iter().collect();
    for page in &stayers {
        page.browser
            .execute(NOTE_TILE_GONE, serde_json::json!([leaver]));
    }
    // The click happens inside the page, so WebDriver's own latency is not counted.
    let clicked = pages[3]
        .browser
        .execute(CLICK_LEAVE, serde_json::json!([]))
        .as_u64()
        .expect("click time");
    let gone_at = wait(&stayers, "the leaver's tile to go", secs(15), |_| {
        let at: Vec<Option<u64>> = stayers
            .iter()
            .map(|p| {
                p.browser
                    .execute("return window.tileGoneAt;", serde_json::json!([]))
            })
            .map(|v| v.as_u64())
            .collect();
        at.iter()
            .all(Option::is_some)
            .then(|| at.into_iter().flatten().collect::<Vec<_>>())
    });
    for (page, at) in stayers.iter().zip(gone_at) {
        let took = at.saturating_sub(clicked);
        assert!(
            took < 2000,
            "[{}] the tile went {took} ms after the click",
            page.name
        );
        let tiles = page.tiles();
        let others: Vec<_> = tiles
            .iter()
            .filter_map(|t| t.participant.as_ref())
            .collect();
        assert!(
            tiles.len() == 3 && !others.contains(&&leaver),
            "[{}] {tiles:?}",
            page.name
        );
    }
    assert_eq!(pages[3].status().state, "left");
}

#[test]
fn reconnects_after_the_node_cuts_signaling() {
    let _turn = serial();
    let (node, _driver, pages, ada_before) = meeting_of_two("cut");
    let (ada, grace) = (&pages[0], &pages[1]);
    let reconnects = ada.status().reconnects;

    // The node drops Ada's socket without a close frame, as a broken network would.
    let identity = identity_of(ada);
    let cut = format!("/dev/disconnect?room=cut&identity={identity}");
    let (status, body) = node.http("POST", &cut);
    assert_eq!((status, body.as_str()), (200, r#"{"disconnected":1}"#));

    // Ada comes back by herself as a new participant; Grace sees the new one only.
    wait(&[ada, grace], "Ada's rejoin", secs(30), |s| {
        let ada_now = s[0].participant_id.as_deref()?;
        let rejoined = s[0].state == "joined" && s[0].reconnects > reconnects;
        let seen: Vec<&str> = s[1].participants.iter().map(|p| p.id.as_str()).collect();
        (rejoined && ada_now != ada_before && seen == [ada_now]).then_some(())
    });
    wait_media_flows(&[ada, grace], FLOWING, secs(30));
}

/// The identity the page chose for itself.
fn identity_of(page: &Page) -> String {
    let script = "return sessionStorage.getItem('relais.identity');";
    let value = page.browser.execute(script, serde_json::json!([]));
    value
        .as_str()
        .expect("the page keeps its identity")
        .to_owned()
}

/// Notes in `window.tileGoneAt` when the tile of participant `arguments[0]` leaves the stage.
const NOTE_TILE_GONE: &str = "
    const stage = document.getElementById('stage');
    const selector = `.tile[data-participant=\"${arguments[0]}\"]`;
    window.tileGoneAt = null;
    const check = () => {
        if (!stage.querySelector(selector) && window.tileGoneAt === null) {
            window.tileGoneAt = Date.now();
        }
    };
    new MutationObserver(check).observe(stage, { childList: true });
    check();";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Writes a WAV file of a steady 440 Hz tone at `amplitude` (0.3 is about
/// -10 dBov, 0 is silence), for a fake microphone that speaks all the time or
/// never (Chromium loops the file).
fn tone_wav(dir: &std::path::Path, amplitude: f64) -> PathBuf {
    const RATE: u32 = 48_000;
    let samples: Vec<i16> = (0..RATE)
        .map(|n| {
            let phase = 2.0 * std::f64::consts::PI * 440.0 * f64::from(n) / f64::from(RATE);
            (phase.sin() * amplitude * f64::from(i16::MAX)) as i16
        })
        .collect();
    let data_len = (samples.len() * 2) as u32;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&RATE.to_le_bytes());
    wav.extend_from_slice(&(RATE * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        wav.extend_from_slice(&sample.to_le_bytes());
    }
    let path = dir.join(format!("tone-{amplitude}.wav"));
    std::fs::write(&path, wav).expect("write the tone");
    path
}

/// Waits until every page names `who` as the dominant speaker and highlights
/// that participant's tile.
fn wait_highlighted(pages: &[&Page], who: &str) {
    wait(pages, &format!("{who} highlighted"), secs(20), |statuses| {
        let named = statuses.iter().all(|s| s.speaker.as_deref() == Some(who));
        let lit = pages.iter().all(|page| {
            let tiles = page.tiles();
            let speaking: Vec<_> = tiles.iter().filter(|t| t.speaking).collect();
            // Every tile, one's own too, names its participant.
            speaking.len() == 1 && speaking[0].participant.as_deref() == Some(who)
        });
        (named && lit).then_some(())
    });
}

#[test]
fn the_speaker_highlight_follows_whoever_talks() {
    let _turn = serial();
    let node = start_node();
    let driver = ChromeDriver::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let tone = tone_wav(dir.path(), 0.3);
    let flags = [format!(
        "--use-file-for-fake-audio-capture={}",
        tone.display()
    )];
    let names = ["Ada Lovelace", "Grace Hopper"];
    let pages = join_all_with(&driver, &base_url(&node), "talk", &names, &flags);
    let ada = pages[0].wait_joined(secs(30));
    let grace = pages[1].wait_joined(secs(30));
    let both = [&pages[0], &pages[1]];
    wait_media_flows(&both, FLOWING, secs(30));

    // Grace mutes: only Ada's microphone carries sound.
    pages[1].browser.click("#toggle-mic");
    wait_highlighted(&both, &ada);

    // Ada mutes and Grace speaks again.
    pages[0].browser.click("#toggle-mic");
    pages[1].browser.click("#toggle-mic");
    wait_highlighted(&both, &grace);
}

/// Whose video a page decoded more frames of between two of its statuses.
fn decoding(before: &page::Status, after: &page::Status) -> BTreeSet<String> {
    let video = after.remote.iter().filter(|r| r.kind == "video");
    video
        .filter(|r| {
            let earlier = before.remote.iter().find(|b| b.track_id == r.track_id);
            r.frames_decoded > earlier.map_or(0, |b| b.frames_decoded)
        })
        .filter_map(|r| r.participant_id.clone())
        .collect()
}

/// Whose video each page decodes over a few seconds.
fn decoding_over_a_while(pages: &[&Page]) -> Vec<BTreeSet<String>> {
    let before: Vec<page::Status> = pages.iter().map(|p| p.status()).collect();
    // A window to count frames in, three of the pages' statistics refreshes.
    std::thread::sleep(secs(3));
    let after = pages.iter().map(|p| p.status());
    before
        .iter()
        .zip(after)
        .map(|(b, a)| decoding(b, &a))
        .collect()
}

#[test]
fn six_participants_with_last_n_two_see_two_cameras_and_a_pinned_one() {
    let _turn = serial();
    let node = Node::start_with(&format!("{DEV_MODE}[room]\nlast_n = 2\nlast_n_above = 5\n"));
    favour_nodes();
    let driver = ChromeDriver::start();
    // Silent microphones: nobody speaks, so the first two cameras stay forwarded.
    let dir = tempfile::tempdir().expect("temp dir");
    let silence = tone_wav(dir.path(), 0.0);
    let flags = [format!(
        "--use-file-for-fake-audio-capture={}",
        silence.display()
    )];
    let names = ["Ada", "Grace", "Alan", "Katherine", "Edsger", "Barbara"];
    let pages = join_all_with(&driver, &base_url(&node), "six", &names, &flags);
    let ids: Vec<String> = pages.iter().map(|p| p.wait_joined(secs(30))).collect();
    let all: Vec<&Page> = pages.iter().collect();
    // Every page receives the same two cameras but its own, and has been told the
    // others are paused (a camera held back since a page subscribed to it is not even
    // negotiated there).
    wait(&all, "last-N on every page", secs(60), |statuses| {
        let running = |s: &page::Status| -> BTreeSet<String> {
            let videos = s.remote.iter().filter(|r| r.kind == "video" && !r.paused);
            videos.filter_map(|r| r.participant_id.clone()).collect()
        };
        let each: Vec<BTreeSet<String>> = statuses.iter().map(running).collect();
        let union: BTreeSet<String> = each.iter().flatten().cloned().collect();
        let settled = each.iter().zip(&ids).all(|(got, own)| {
            let mut expected = union.clone();
            expected.remove(own);
            *got == expected
        });
        (union.len() == 2 && settled).then_some(())
    });

    // The first two cameras are everyone's; each page decodes those not its own.
    let seen = decoding_over_a_while(&all);
    let forwarded: BTreeSet<String> = seen.iter().flatten().cloned().collect();
    assert_eq!(forwarded.len(), 2, "two cameras in all: {seen:?}");
    for ((page, id), decoded) in pages.iter().zip(&ids).zip(&seen) {
        let expected: BTreeSet<String> = forwarded.iter().filter(|f| *f != id).cloned().collect();
        assert_eq!(
            decoded, &expected,
            "[{}] decodes the forwarded cameras",
            page.name
        );
    }

    // A page outside the two pins a third participant's tile: it gets that camera too.
    let viewer = ids
        .iter()
        .position(|id| !forwarded.contains(id))
        .expect("a viewer");
    let pinned = ids
        .iter()
        .enumerate()
        .find(|(i, id)| *i != viewer && !forwarded.contains(*id))
        .map(|(_, id)| id.clone())
        .expect("a third participant");
    let page = &pages[viewer];
    page.browser
        .click(&format!("#stage .tile[data-participant=\"{pinned}\"]"));
    wait(&[page], "the pinned camera resumed", secs(20), |s| {
        let video = s[0]
            .remote
            .iter()
            .find(|r| r.kind == "video" && r.participant_id.as_deref() == Some(pinned.as_str()));
        video.filter(|r| !r.paused).map(|_| ())
    });
    let seen = decoding_over_a_while(&[page]);
    let mut expected = forwarded.clone();
    expected.insert(pinned);
    assert_eq!(
        seen[0], expected,
        "[{}] the two and the pinned one",
        page.name
    );
}

/// Writes a file under `target/artifacts/`.
/// Makes the page believe it went to the background (or came back), as a switch of
/// tabs or a minimised window does.
fn set_out_of_sight(page: &Page, hidden: bool) {
    const SCRIPT: &str = "const hidden = arguments[0];
        Object.defineProperty(document, 'hidden', { value: hidden, configurable: true });
        Object.defineProperty(document, 'visibilityState',
            { value: hidden ? 'hidden' : 'visible', configurable: true });
        document.dispatchEvent(new Event('visibilitychange'));";
    page.browser.execute(SCRIPT, serde_json::json!([hidden]));
}

/// Whether the page shows the video it receives from `who` as paused by the server.
fn video_paused(status: &page::Status, who: &str) -> Option<bool> {
    let video = status
        .remote
        .iter()
        .find(|r| r.kind == "video" && r.participant_id.as_deref() == Some(who));
    video.map(|r| r.paused)
}

#[test]
fn a_page_out_of_sight_receives_no_video_until_it_is_seen_again() {
    let _turn = serial();
    let (_node, _driver, pages, ada_id) = meeting_of_two("away");
    let grace = &pages[1];

    set_out_of_sight(grace, true);
    wait(&[grace], "ada's camera paused", secs(20), |s| {
        (video_paused(&s[0], &ada_id) == Some(true)).then_some(())
    });
    // The statistics lag by up to a refresh: frames decoded before the pause show
    // in the first window. Then none.
    let deadline = std::time::Instant::now() + secs(15);
    while !decoding_over_a_while(&[grace])[0].is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "video still decoded out of sight"
        );
    }
    // Audio keeps coming: the meeting is still heard.
    wait_audio_flows(grace);

    set_out_of_sight(grace, false);
    wait(&[grace], "ada's camera resumed", secs(20), |s| {
        (video_paused(&s[0], &ada_id) == Some(false)).then_some(())
    });
    let seen = decoding_over_a_while(&[grace]);
    assert_eq!(seen[0], BTreeSet::from([ada_id]), "video again");
}

/// Waits until the page has received more audio packets than it had.
fn wait_audio_flows(page: &Page) {
    let audio = |s: &page::Status| -> u64 {
        let received = s.remote.iter().filter(|r| r.kind == "audio");
        received.map(|r| r.packets_received).sum()
    };
    let before = audio(&page.status());
    wait(&[page], "audio flowing", secs(20), |s| {
        (audio(&s[0]) > before).then_some(())
    });
}

fn save_artifact(name: &str, bytes: &[u8]) {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = target.parent().expect("target dir").join("artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    std::fs::write(dir.join(name), bytes).expect("write artifact");
}

/// Clicks the leave button and returns the page's clock at that moment.
const CLICK_LEAVE: &str =
    "const at = Date.now(); document.querySelector('#leave').click(); return at;";

/// The width of the frames decoded of `sender`'s camera; 0 before any.
fn width_from(status: &page::Status, sender: &str) -> u64 {
    let video = status
        .remote
        .iter()
        .find(|r| r.kind == "video" && r.participant_id.as_deref() == Some(sender));
    video.map_or(0, |r| r.frame_width)
}

/// The width of the frames `page` decodes of `sender`'s camera, once that width has held
/// over a few statistics refreshes.
fn settled_width(page: &Page, sender: &str) -> u64 {
    let mut last = (0, 0);
    wait(&[page], "a settled frame width", secs(40), |s| {
        let width = width_from(&s[0], sender);
        last = if width > 0 && width == last.0 {
            (width, last.1 + 1)
        } else {
            (width, 0)
        };
        (last.1 >= 3).then_some(width)
    })
}

#[test]
fn a_camera_in_layers_reaches_a_small_tile_small_and_a_large_tile_large() {
    let _turn = serial();
    // Layers follow tile sizes here; what the browsers estimate of their downlinks,
    // which falls when three browsers share two cores, is tested on its own
    // (tests/simulcast.rs).
    let node = Node::start_with_media("bandwidth_adaptation = false", DEV_MODE);
    favour_nodes();
    let driver = ChromeDriver::start();
    let base = base_url(&node);
    // Ada's camera captures 1280x720, which the page sends in three layers, 320, 640
    // and 1280 wide. Grace's window makes her tiles smaller than 320x180, Hedy's about
    // as large as 1280x720.
    let pages: Vec<Page> = std::thread::scope(|scope| {
        let sizes = [
            ("Ada", (800, 600)),
            ("Grace", (480, 400)),
            ("Hedy", (2560, 1600)),
        ];
        let opening: Vec<_> = sizes
            .into_iter()
            .map(|(name, size)| {
                let base = base.as_str();
                let driver = &driver;
                scope.spawn(move || Page::join(driver, base, "layers", name, size))
            })
            .collect();
        opening
            .into_iter()
            .map(|p| p.join().expect("a browser opened"))
            .collect()
    });
    let ada = pages[0].wait_joined(secs(30));
    for page in &pages[1..] {
        page.wait_joined(secs(30));
    }
    // Every page publishes and subscribes to the others: each connection has been
    // renegotiated after its camera's layers first arrived, and media still flows.
    let all: Vec<&Page> = pages.iter().collect();
    wait_media_flows(&all, FLOWING, secs(60));

    // The browser starts the high layer once its estimate of its uplink allows.
    wait(
        &[&pages[2]],
        "the high layer at the large tile",
        secs(60),
        |s| {
            let width = width_from(&s[0], &ada);
            (width == 1280).then_some(())
        },
    );
    let small = settled_width(&pages[1], &ada);
    assert_eq!(small, 320, "Grace's small tile decodes the low layer");
}
