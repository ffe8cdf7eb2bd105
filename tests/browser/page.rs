//! The meeting page as a test sees it: joining through the form, reading
//! `window.relais`, and waiting for conditions with deadlines.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use super::webdriver::{Browser, ChromeDriver};

/// How often conditions are polled; the page refreshes its statistics every second.
const POLL: Duration = Duration::from_millis(250);

/// `window.relais`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub state: String,
    pub participant_id: Option<String>,
    pub participants: Vec<Person>,
    pub remote: Vec<Remote>,
    pub reconnects: u32,
    #[serde(default)]
    pub error: Option<String>,
    /// The dominant speaker the server announced.
    #[serde(default)]
    pub speaker: Option<String>,
    /// The tile sizes of received videos, as told to the server.
    #[serde(default)]
    pub sizes: Vec<Shown>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Shown {
    pub track_id: String,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Person {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Remote {
    pub track_id: String,
    pub participant_id: Option<String>,
    pub kind: String,
    pub frames_decoded: u64,
    pub frame_width: u64,
    pub packets_received: u64,
    /// Held back by last-N, as the server said.
    #[serde(default)]
    pub paused: bool,
}

/// A tile as drawn.
#[derive(Debug, Clone, Deserialize)]
pub struct Tile {
    pub participant: Option<String>,
    pub name: String,
    pub width: u64,
    /// Highlighted as the speaker.
    pub speaking: bool,
}

pub struct Page {
    pub browser: Browser,
    pub name: String,
}

impl Page {
    /// Opens `base/?room=ROOM` in a new browser and joins as `name` through the form.
    pub fn join(
        driver: &ChromeDriver,
        base: &str,
        room: &str,
        name: &str,
        size: (u32, u32),
    ) -> Page {
        Page::join_with(driver, base, room, name, size, &[])
    }

    /// As [`Page::join`], with more command-line flags for its browser.
    pub fn join_with(
        driver: &ChromeDriver,
        base: &str,
        room: &str,
        name: &str,
        size: (u32, u32),
        extra: &[String],
    ) -> Page {
        let browser = driver.open_with(name, size, extra);
        browser.navigate(&format!("{base}/?room={room}"));
        browser.type_into("#name", name);
        browser.click("#join");
        Page {
            browser,
            name: name.to_owned(),
        }
    }

    pub fn status(&self) -> Status {
        let value = self.browser.execute("return window.relais;", json!([]));
        serde_json::from_value(value)
            .unwrap_or_else(|e| panic!("[{}] window.relais is malformed: {e}", self.name))
    }

    pub fn tiles(&self) -> Vec<Tile> {
        let script = "return [...document.querySelectorAll('#stage .tile')].map((t) => ({
            participant: t.dataset.participant ?? null,
            name: t.querySelector('.name').textContent,
            width: t.querySelector('video').videoWidth,
            speaking: t.classList.contains('speaking'),
        }));";
        serde_json::from_value(self.browser.execute(script, json!([]))).expect("tiles")
    }

    /// The participant id once joined; panics at once if the page gave up joining.
    pub fn wait_joined(&self, within: Duration) -> String {
        wait(&[self], "joined", within, |s| {
            let s = &s[0];
            if let Some(error) = s.error.as_ref().filter(|_| s.state != "joined") {
                panic!("[{}] could not join: {error}", self.name);
            }
            (s.state == "joined")
                .then(|| s.participant_id.clone())
                .flatten()
        })
    }
}

/// Polls the pages' statuses until `done` returns a value, or panics at the deadline
/// with every page's last status and console.
pub fn wait<T>(
    pages: &[&Page],
    what: &str,
    within: Duration,
    mut done: impl FnMut(&[Status]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let statuses: Vec<Status> = pages.iter().map(|p| p.status()).collect();
        if let Some(found) = done(&statuses) {
            return found;
        }
        if Instant::now() >= deadline {
            let mut report = String::new();
            for (page, status) in pages.iter().zip(&statuses) {
                report += &format!("\n[{}] {status:#?}", page.name);
                for line in page.browser.console() {
                    report += &format!("\n[{} console] {line}", page.name);
                }
            }
            panic!("timed out after {within:?} waiting for {what}{report}");
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until every page receives video and audio from every other page and
/// both keep flowing: decoded frames and audio packets grow over `increases`
/// successive statistics refreshes (one a second). Participant ids are read
/// afresh on every poll, so a page that reconnected meanwhile counts as itself.
pub fn wait_media_flows(pages: &[&Page], increases: u32, within: Duration) {
    // (receiver, sender's participant id, kind) -> (last value, how often it grew)
    let mut progress: HashMap<(usize, String, &str), (u64, u32)> = HashMap::new();
    wait(
        pages,
        "media from everyone to everyone",
        within,
        |statuses| {
            let ids: Vec<Option<&String>> =
                statuses.iter().map(|s| s.participant_id.as_ref()).collect();
            let mut all = true;
            for (receiver, status) in statuses.iter().enumerate() {
                for (sender, id) in ids.iter().enumerate() {
                    let Some(id) = id.filter(|_| sender != receiver) else {
                        all &= sender == receiver;
                        continue;
                    };
                    for kind in ["video", "audio"] {
                        let value = received(status, id, kind);
                        let entry = progress
                            .entry((receiver, id.to_string(), kind))
                            .or_insert((value, 0));
                        if value > entry.0 {
                            *entry = (value, entry.1 + 1);
                        }
                        all &= value > 0 && entry.1 >= increases;
                    }
                }
            }
            all.then_some(())
        },
    );
}

/// Decoded frames (video) or packets (audio) a page received from participant `from`.
fn received(status: &Status, from: &str, kind: &str) -> u64 {
    status
        .remote
        .iter()
        .filter(|r| r.kind == kind && r.participant_id.as_deref() == Some(from))
        .map(|r| match kind {
            "video" => r.frames_decoded,
            _ => r.packets_received,
        })
        .max()
        .unwrap_or(0)
}
