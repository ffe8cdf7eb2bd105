//! A small WebDriver client: chromedriver driving headless Chromium over plain HTTP/1.1.
//!
//! One [`ChromeDriver`] process serves every browser of a test; each [`Browser`] is a
//! WebDriver session with its own Chromium and a fresh profile directory. Dropping
//! the driver kills chromedriver and every process it started, so no browser
//! outlives its test, even when the test panics.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The real browser binary; `/usr/bin/chromium` is a wrapper script.
const CHROMIUM: &str = "/usr/lib/chromium/chromium";
const INSTALL_HINT: &str = "run scripts/install-browser.sh to install Debian's chromium and \
     chromium-driver";

/// The WebDriver name of an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running chromedriver and the profile directories of its browsers.
pub struct ChromeDriver {
    child: Child,
    port: u16,
    profiles: tempfile::TempDir,
    /// Browsers opened so far; numbers their profile directories.
    opened: std::sync::atomic::AtomicUsize,
}

impl ChromeDriver {
    /// Starts chromedriver on a free port; panics with an install hint if it is missing.
    pub fn start() -> ChromeDriver {
        let Some(chromedriver) = find_in_path("chromedriver") else {
            panic!("chromedriver is not installed: {INSTALL_HINT}");
        };
        if !Path::new(CHROMIUM).exists() {
            panic!("chromium is not installed ({CHROMIUM} is missing): {INSTALL_HINT}");
        }
        let port = free_port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = ChromeDriver {
            child,
            port,
            profiles: tempfile::tempdir().expect("temp dir for browser profiles"),
            opened: Default::default(),
        };
        driver.wait_ready();
        driver
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let ready = http(self.port, "GET", "/status", None, Duration::from_secs(2))
                .ok()
                .is_some_and(|(_, v)| v["value"]["ready"] == json!(true));
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("chromedriver did not become ready on port {}", self.port);
    }

    /// Opens a new headless browser with a fake camera and microphone, its window
    /// `size` pixels wide and high, and `extra` flags on Chromium's command line.
    pub fn open_with(&self, label: &str, size: (u32, u32), extra: &[String]) -> Browser {
        let n = self
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let profile = self.profiles.path().join(format!("profile-{n}"));
        let mut args = chromium_args(&profile, size);
        args.extend_from_slice(extra);
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let timeout = Duration::from_secs(60);
        let value = command(self.port, "POST", "/session", Some(&capabilities), timeout)
            .unwrap_or_else(|e| panic!("could not open a browser for {label}: {e}"));
        let session = value["sessionId"]
            .as_str()
            .expect("a new session has an id")
            .to_owned();
        Browser {
            port: self.port,
            session,
            label: label.to_owned(),
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // Children first: once chromedriver is gone they could no longer be found.
        let mut doomed = descendants(self.child.id());
        doomed.push(self.child.id());
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(doomed.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium_args(profile: &Path, (width, height): (u32, u32)) -> Vec<String> {
    let fixed = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--use-fake-ui-for-media-stream",
        // Ten frames a second keep four encoders and twelve decoders within two cores.
        "--use-fake-device-for-media-stream=fps=10",
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        // Several browsers share two cores: none may be throttled as if hidden.
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
    ];
    let mut args: Vec<String> = fixed.iter().map(|a| a.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.push(format!("--window-size={width},{height}"));
    args
}

/// One browser: a WebDriver session.
pub struct Browser {
    port: u16,
    session: String,
    pub label: String,
}

impl Browser {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        command(self.port, method, &path, body, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("[{}] {method} {path}: {e}", self.label))
    }

    pub fn navigate(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Runs `script` as a function body in the page and returns its result.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": args})),
        )
    }

    pub fn find(&self, css: &str) -> String {
        let found = self.call(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
        );
        found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("[{}] no element {css}", self.label))
            .to_owned()
    }

    pub fn click(&self, css: &str) {
        let element = self.find(css);
        self.call(
            "POST",
            &format!("/element/{element}/click"),
            Some(&json!({})),
        );
    }

    /// Replaces the text of an input, typing it as a person would.
    pub fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.call(
            "POST",
            &format!("/element/{element}/clear"),
            Some(&json!({})),
        );
        let keys = json!({ "text": text });
        self.call("POST", &format!("/element/{element}/value"), Some(&keys));
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        let encoded = self.call("GET", "/screenshot", None);
        decode_base64(encoded.as_str().expect("a screenshot is a base64 string"))
    }

    /// The page's console messages since the last call, best effort.
    pub fn console(&self) -> Vec<String> {
        let path = format!("/session/{}/se/log", self.session);
        let body = json!({"type": "browser"});
        let Ok(entries) = command(
            self.port,
            "POST",
            &path,
            Some(&body),
            Duration::from_secs(5),
        ) else {
            return Vec::new();
        };
        let entries = entries.as_array().cloned().unwrap_or_default();
        entries
            .iter()
            .filter_map(|e| {
                let at = e["timestamp"].as_u64().unwrap_or(0);
                e["message"]
                    .as_str()
                    .map(|m| format!("{}.{:03} {m}", at / 1000 % 1000, at % 1000))
            })
            .collect()
    }
}

/// Sends a WebDriver command and returns its `value`, or the error it reported.
fn command(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Value, String> {
    let (status, mut reply) = http(port, method, path, body, timeout)?;
    let value = reply["value"].take();
    if status == 200 {
        return Ok(value);
    }
    Err(format!(
        "HTTP {status}: {} {}",
        value["error"].as_str().unwrap_or("?"),
        value["message"].as_str().unwrap_or("")
    ))
}

/// One HTTP/1.1 exchange on a fresh connection.
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let raw = read_response(&mut stream).map_err(|e| format!("reading the reply: {e}"))?;
    parse_response(&raw)
}

/// Reads one response: chromedriver keeps the connection open even when asked to
/// close it, so the end is found from `Content-Length` (or the last chunk).
fn read_response(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(raw);
        }
        raw.extend_from_slice(&buf[..n]);
        if response_complete(&raw) {
            return Ok(raw);
        }
    }
}

fn response_complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    if let Some(length) = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        return body.len() >= length;
    }
    if header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

/// The value of header `name` in a lowercased response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim())
    })
}

fn parse_response(raw: &[u8]) -> Result<(u16, Value), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("a reply without a header end")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("a reply without a status")?;
    let body = &raw[split + 4..];
    let body = match header(&head, "transfer-encoding") {
        Some(v) if v.contains("chunked") => dechunk(body)?,
        _ => body.to_vec(),
    };
    if body.is_empty() {
        return Ok((status, Value::Null));
    }
    let value = serde_json::from_slice(&body).map_err(|e| format!("reply is not JSON: {e}"))?;
    Ok((status, value))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk without a size line")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|e| e.to_string())?;
        if size == 0 {
            return Ok(out);
        }
        let start = line_end + 2;
        let chunk = body
            .get(start..start + size)
            .ok_or("a chunk shorter than its size")?;
        out.extend_from_slice(chunk);
        body = body.get(start + size + 2..).unwrap_or_default();
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u32> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for group in digits.chunks(4) {
        let bits = group
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, d)| acc | d << (18 - 6 * i));
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    out
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("bound address").port()
}

/// Every process below `root`, read from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let fields = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        if let Some(ppid) = fields
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
        {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut index = 0;
    while index < found.len() {
        let parent = found[index];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        index += 1;
    }
    found.remove(0);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_known_values() {
        assert_eq!(decode_base64("aGVsbG8="), b"hello");
        assert_eq!(decode_base64("aGVsbG8h"), b"hello!");
        assert_eq!(decode_base64("aA=="), b"h");
    }

    #[test]
    fn chunked_bodies_are_joined() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        let (status, value) = parse_response(raw).unwrap();
        assert_eq!(status, 200);
        assert_eq!(value, json!({"a": 1}));
    }
}
