//! Prometheus-side helpers for the metrics tests: `promtool`, a real `prometheus` process
//! scraping test nodes, and the queries of the Grafana dashboards.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Panels allowed to return no series on a healthy cluster, with the reason. Every counter
/// and histogram is exported at zero from the start, so a rate over them is a series of
/// zeros rather than nothing; only these panels filter their results.
const MAY_BE_EMPTY: &[(&str, &str)] = &[];

pub fn may_be_empty(title: &str) -> bool {
    MAY_BE_EMPTY.iter().any(|(t, _)| *t == title)
}

/// Runs `promtool` with `args` from the repository root; fails the test on a non-zero exit.
pub fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("promtool runs (scripts/setup.sh installs Debian's prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}: {text}");
    text
}

/// `promtool check metrics` on a scrape: no naming or help problems.
pub fn promtool_check_metrics(scrape: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/setup.sh installs Debian's prometheus)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(scrape.as_bytes()).expect("write scrape");
    drop(stdin);
    let output = child.wait_with_output().expect("promtool ends");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && text.trim().is_empty(),
        "promtool check metrics: {text}"
    );
}

/// Names of the samples in a scrape (histograms contribute `_bucket`, `_sum`, `_count`).
pub fn series_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// One query of one dashboard panel, with Grafana's variables substituted.
#[derive(Debug)]
pub struct PanelQuery {
    pub dashboard: String,
    pub title: String,
    pub query: String,
}

/// Every query of every panel of every dashboard in `dashboards/`.
pub fn dashboard_queries() -> Vec<PanelQuery> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut queries = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("dashboards/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "dashboards: {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read dashboard");
        let dashboard: Value = serde_json::from_str(&text).expect("dashboard is JSON");
        let name = dashboard["title"].as_str().unwrap_or("?").to_owned();
        collect_panels(&name, &dashboard["panels"], &mut queries);
    }
    queries
}

fn collect_panels(dashboard: &str, panels: &Value, out: &mut Vec<PanelQuery>) {
    for panel in panels.as_array().into_iter().flatten() {
        collect_panels(dashboard, &panel["panels"], out);
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            out.push(PanelQuery {
                dashboard: dashboard.to_owned(),
                title: title.clone(),
                query: substitute(expr),
            });
        }
    }
}

/// Replaces Grafana's variables the way Grafana would with every value selected.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("${job}", ".*")
        .replace("$job", ".*")
        .replace("${instance}", ".*")
        .replace("$instance", ".*")
        .replace("${region}", ".*")
        .replace("$region", ".*")
}

/// Fails unless every relais or process metric the query names is in the scrape.
pub fn assert_known_names(panel: &PanelQuery, names: &BTreeSet<String>) {
    let words = panel
        .query
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
    for word in words.filter(|w| w.starts_with("relais_") || w.starts_with("process_")) {
        assert!(
            names.contains(word),
            "{} / {} uses {word}, which no node exports",
            panel.dashboard,
            panel.title
        );
    }
}

/// A `prometheus` server in a temp dir, scraping the given targets every second.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    targets: usize,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{}']\n\
             scrape_configs:\n  - job_name: relais\n    static_configs:\n      \
             - targets: [{list}]\n",
            rules.display()
        );
        let path = dir.path().join("prometheus.yml");
        std::fs::write(&path, config).expect("write prometheus.yml");
        let addr = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("prometheus runs (scripts/setup.sh installs Debian's prometheus)");
        let prometheus = Prometheus {
            child,
            addr,
            targets: targets.len(),
            _dir: dir,
        };
        prometheus.await_ready(Duration::from_secs(30));
        prometheus
    }

    fn await_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while get(self.addr, "/-/ready").map(|(status, _)| status) != Some(200) {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every target is up and has been scraped at least `scrapes` times.
    pub fn await_samples(&self, scrapes: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let query = format!(
            "count(count_over_time(up{{job=\"relais\"}}[1m]) >= {scrapes}) \
             and count(up{{job=\"relais\"}} == 1) == {}",
            self.targets
        );
        while self.value(&query) != Some(self.targets as f64) {
            assert!(
                Instant::now() < deadline,
                "prometheus has not scraped the nodes"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs an instant query; fails the test if it does not parse. Returns the series count.
    pub fn query(&self, query: &str) -> usize {
        let data = self.data(query);
        match data["resultType"].as_str() {
            Some("scalar") | Some("string") => 1,
            _ => data["result"].as_array().map_or(0, Vec::len),
        }
    }

    /// How many alerting rules Prometheus has loaded and evaluated at least once.
    pub fn evaluated_alert_rules(&self) -> usize {
        let (_, body) = get(self.addr, "/api/v1/rules?type=alert").expect("prometheus answers");
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let groups = json["data"]["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .filter(|r| r["health"] == "ok")
            .count()
    }

    /// A query's result as JSON text, for failure messages.
    pub fn raw(&self, query: &str) -> String {
        self.data(query).to_string()
    }

    /// The value of a query that returns one series.
    pub fn value(&self, query: &str) -> Option<f64> {
        let data = self.data(query);
        let value = data["result"].get(0)?["value"].get(1)?.as_str()?;
        value.parse().ok()
    }

    fn data(&self, query: &str) -> Value {
        let path = format!("/api/v1/query?query={}", encode(query));
        let (status, body) = get(self.addr, &path).expect("prometheus answers");
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(
            status == 200 && json["status"] == "success",
            "query {query} failed: {status} {body}"
        );
        json["data"].clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now.
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

/// HTTP/1.0 GET, so that the body is never chunked; None if nothing listens.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
