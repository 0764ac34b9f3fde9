//! The HTTP port of real `kv server` processes (`kv local up` gives each node one): `/healthz`
//! and `/readyz`; `/metrics` parsed by a strict Prometheus text-format parser, with the named
//! series moving under load (requests, latency, Raft commits, flushes, AP hints and their
//! replay, tombstones, bytes on disk); the HTTP/JSON API through a plain HTTP/1.1 client
//! (binary-safe keys and values, CAS, gRPC codes mapped to HTTP statuses as grpc-gateway maps
//! them); and the status page in headless Chromium: three nodes alive, then one down after it
//! is killed. Chromium missing: the browser checks print a skip line, or fail when
//! `KV_REQUIRE_BROWSER=1` (set by .ci/run, which installs it).

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a state the test waits for may take (generous: a loaded 2-core machine).
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(250);
/// The browser used for the status page (Debian's `chromium` package).
const CHROMIUM: &str = "/usr/bin/chromium";

// ---------- a plain HTTP/1.1 client ----------

struct HttpResponse {
    status: u16,
    content_type: String,
    body: String,
}

impl HttpResponse {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One request on its own connection (`Connection: close`), the whole answer read.
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, rest) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    HttpResponse {
        status,
        content_type: headers.get("content-type").cloned().unwrap_or_default(),
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size line");
        let n = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if n == 0 {
            return out;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
}

fn post(addr: &str, path: &str, body: Value) -> HttpResponse {
    http(addr, "POST", path, Some(&body.to_string()))
}

// ---------- a strict Prometheus text-format parser ----------

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|_| format!("bad value {v:?}")),
    }
}

/// `{a="x",b="y"}` (with `\\`, `\"`, `\n` escapes) → labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let (name, r) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !valid_name(name) || name.contains(':') {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &r[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parses a whole exposition strictly: every sample belongs to a family declared by `# TYPE`
/// before it, with the suffixes its type allows; the text ends with `# EOF`; histogram buckets
/// are cumulative and their `+Inf` bucket equals `_count`.
fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut eof = false;
    for (n, line) in text.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if eof {
            return Err(at("text after # EOF".into()));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !valid_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            match kind {
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "info",
                        "stateset",
                        "unknown",
                    ]
                    .contains(&t)
                    {
                        return Err(at(format!("unknown type {t:?}")));
                    }
                    if types.insert(name.to_string(), t.to_string()).is_some() {
                        return Err(at("family declared twice".into()));
                    }
                }
                "HELP" | "UNIT" => {}
                _ => return Err(at(format!("unknown comment kind {kind:?}"))),
            }
            continue;
        }
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.trim_start_matches(' ').split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<f64>().map_err(|_| at("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family = types
            .iter()
            .filter(|(f, _)| name.starts_with(f.as_str()))
            .max_by_key(|(f, _)| f.len())
            .ok_or_else(|| at(format!("sample of undeclared family {name}")))?;
        let suffix = &name[family.0.len()..];
        let allowed: &[&str] = match family.1.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "summary" => &["", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        if !allowed.contains(&suffix) {
            return Err(at(format!("{} sample with suffix {suffix:?}", family.1)));
        }
        if suffix == "_bucket" && !labels.contains_key("le") {
            return Err(at("bucket without le".into()));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    if !eof {
        return Err("no # EOF at the end".into());
    }
    check_histograms(&samples)?;
    Ok(samples)
}

/// A histogram series: its base name and labels (without `le`).
type Series = (String, BTreeMap<String, String>);

fn check_histograms(samples: &[Sample]) -> Result<(), String> {
    let mut buckets: BTreeMap<Series, Vec<(f64, f64)>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name.ends_with("_bucket")) {
        let mut labels = s.labels.clone();
        let le = parse_value(&labels.remove("le").unwrap_or_default())?;
        let base = s.name.trim_end_matches("_bucket").to_string();
        buckets
            .entry((base, labels))
            .or_default()
            .push((le, s.value));
    }
    for ((base, labels), mut bs) in buckets {
        bs.sort_by(|a, b| a.0.total_cmp(&b.0));
        if bs.windows(2).any(|w| w[1].1 < w[0].1) {
            return Err(format!("{base} {labels:?}: buckets not cumulative"));
        }
        let inf = bs.last().filter(|b| b.0.is_infinite()).map(|b| b.1);
        let count = samples
            .iter()
            .find(|s| s.name == format!("{base}_count") && s.labels == labels)
            .map(|s| s.value);
        if inf.is_none() || inf != count {
            return Err(format!(
                "{base} {labels:?}: +Inf bucket {inf:?} != _count {count:?}"
            ));
        }
    }
    Ok(())
}

/// The node's metrics, parsed (a parse failure fails the test, showing the text).
fn scrape(http_addr: &str) -> Vec<Sample> {
    let r = http(http_addr, "GET", "/metrics", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.content_type.starts_with("application/openmetrics-text"),
        "{}",
        r.content_type
    );
    parse_prometheus(&r.body).unwrap_or_else(|e| panic!("{e}\n{}", r.body))
}

/// Sum of the samples named `name` whose labels include every pair of `with`.
fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn sum_all(nodes: &[String], name: &str, with: &[(&str, &str)]) -> f64 {
    nodes.iter().map(|n| sum(&scrape(n), name, with)).sum()
}

#[test]
fn the_parser_refuses_what_prometheus_would() {
    let good = "# TYPE a counter\na_total 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n# EOF\n";
    assert_eq!(parse_prometheus(good).unwrap().len(), 5);
    for (bad, why) in [
        ("a_total 1\n# EOF\n", "undeclared"),
        ("# TYPE a counter\na 1\n# EOF\n", "suffix"),
        ("# TYPE a counter\na_total 1\n", "# EOF"),
        ("# TYPE a gauge\na{x=\"1} 1\n# EOF\n", "unterminated"),
        ("# TYPE a gauge\na{x=\"1\"} one\n# EOF\n", "bad value"),
        ("# TYPE a gauge\n1a 1\n# EOF\n", "name"),
        (
            "# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n# EOF\n",
            "cumulative",
        ),
        (
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n# EOF\n",
            "_count",
        ),
    ] {
        let err = parse_prometheus(bad).expect_err(bad);
        assert!(err.contains(why), "{bad:?}: {err}");
    }
}

// ---------- the status page in headless Chromium ----------

/// The page's DOM after its script ran (None: no browser here, and none is required).
fn dump_dom(url: &str, profile: &Path) -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var("KV_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "KV_REQUIRE_BROWSER=1 but {CHROMIUM} is missing: apt-get install -y chromium"
        );
        return None;
    }
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=3000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("polling chromium") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader
        .join()
        .expect("reader thread")
        .expect("reading chromium's output");
    assert!(status.success(), "chromium failed: {status}");
    Some(out)
}

/// Waits until the page served by `http_addr` shows every `(node, state)` of `want` in its
/// members list; returns false (after printing a skip line) when there is no browser.
fn page_shows(http_addr: &str, profile: &Path, want: &[(&str, &str)]) -> bool {
    let start = Instant::now();
    let url = format!("http://{http_addr}/");
    loop {
        let Some(dom) = dump_dom(&url, profile) else {
            println!("SKIP status page in a browser: {CHROMIUM} not found (apt-get install -y chromium; KV_REQUIRE_BROWSER=1 makes this a failure)");
            return false;
        };
        let missing: Vec<_> = want
            .iter()
            .filter(|(n, s)| !dom.contains(&format!("data-name=\"{n}\" data-state=\"{s}\"")))
            .collect();
        if missing.is_empty() {
            return true;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the status page never showed {missing:?}:\n{dom}"
        );
        std::thread::sleep(POLL);
    }
}

// ---------- the cluster ----------

fn http_addrs(dir: &Path) -> Vec<String> {
    cluster(dir)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            n["http_addr"]
                .as_str()
                .expect("every node has an HTTP address")
                .to_string()
        })
        .collect()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        std::thread::sleep(POLL);
    }
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The HTTP/JSON API: binary-safe put/get/cas/delete, and errors as grpc-gateway maps them.
fn check_json_api(addr: &str) {
    let key = b64(&[0, 0xff, b'\n', b'k']);
    let value = b64(&[0xde, 0xad, 0, 0xbe, 0xef]);
    let put = post(
        addr,
        "/v1/kv/put",
        json!({"keyspace": "cp", "key": key, "value": value}),
    );
    assert_eq!(put.status, 200, "{}", put.body);
    let rev: u64 = put.json()["version"]["revision"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rev > 0);
    let got = post(addr, "/v1/kv/get", json!({"keyspace": "cp", "key": key})).json();
    assert_eq!(
        (got["found"].clone(), got["value"].clone()),
        (json!(true), json!(value))
    );
    // CAS on the revision just read swaps; the same expectation again does not.
    let cas = json!({"keyspace": "cp", "key": key, "expectedVersion": rev.to_string(), "newValue": b64(b"two")});
    let swapped = post(addr, "/v1/kv/cas", cas.clone()).json();
    assert_eq!(swapped["succeeded"], true, "{swapped}");
    let stale = post(addr, "/v1/kv/cas", cas).json();
    assert_eq!(
        (stale["succeeded"].clone(), stale["currentValue"].clone()),
        (json!(false), json!(b64(b"two")))
    );
    let del = post(addr, "/v1/kv/delete", json!({"keyspace": "cp", "key": key}));
    assert_eq!(del.status, 200, "{}", del.body);
    let gone = post(addr, "/v1/kv/get", json!({"keyspace": "cp", "key": key})).json();
    assert_eq!(gone["found"], false, "{gone}");
    // AP keyspaces: put/get with an explicit consistency; AP versions are HLC timestamps.
    let ap = post(
        addr,
        "/v1/kv/put",
        json!({"keyspace": "ap", "key": b64(b"a"), "value": b64(b"1"), "options": {"consistency": "ALL"}}),
    )
    .json();
    assert!(ap["version"]["hlc"]["physicalMs"].is_string(), "{ap}");
    // Errors: gRPC code and message in the body, the HTTP status grpc-gateway gives the code.
    for (path, body, status, code) in [
        (
            "/v1/kv/get",
            json!({"keyspace": "nope", "key": b64(b"a")}),
            404,
            "NOT_FOUND",
        ),
        (
            "/v1/kv/cas",
            json!({"keyspace": "ap", "key": b64(b"a"), "expectAbsent": true, "newValue": ""}),
            400,
            "FAILED_PRECONDITION",
        ),
        (
            "/v1/kv/get",
            json!({"keyspace": "cp", "key": "%%"}),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "/v1/kv/get",
            json!({"keyspace": "cp", "key": ""}),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "/v1/kv/put",
            json!({"keyspace": "cp", "key": b64(b"a")}),
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "/v1/kv/cas",
            json!({"keyspace": "cp", "key": b64(b"a"), "newValue": ""}),
            400,
            "INVALID_ARGUMENT",
        ),
    ] {
        let r = post(addr, path, body.clone());
        let err = r.json();
        assert_eq!(
            (r.status, err["status"].as_str()),
            (status, Some(code)),
            "{path} {body}: {err}"
        );
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{err}"
        );
    }
    // A body over the limit is refused before it is read whole, naming the limit.
    let huge = "x".repeat(2 * 1024 * 1024);
    let r = post(
        addr,
        "/v1/kv/put",
        json!({"keyspace": "cp", "key": b64(b"a"), "value": huge}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("limit"), "{}", r.body);
    // Nothing was written by the refused requests.
    let a = post(
        addr,
        "/v1/kv/get",
        json!({"keyspace": "cp", "key": b64(b"a")}),
    )
    .json();
    assert_eq!(a["found"], false, "{a}");
}

#[test]
fn http_port_metrics_json_api_and_status_page() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _cleanup = Cleanup(dir);
    ok(&kv(dir, &["local", "up", "--base-port", "0"]));
    let nodes = http_addrs(dir);
    assert_eq!(nodes.len(), 3);
    let local = ok(&kv(dir, &["local", "status"]));
    assert!(
        local.contains("HTTP") && local.contains(&nodes[0]),
        "{local}"
    );
    for n in &nodes {
        let h = http(n, "GET", "/healthz", None);
        assert_eq!(h.status, 200);
        let r = http(n, "GET", "/readyz", None);
        assert_eq!((r.status, r.body.trim()), (200, "ready"));
    }
    let profile = tempfile::tempdir().unwrap();
    let browser = page_shows(
        &nodes[0],
        profile.path(),
        &[("n1", "alive"), ("n2", "alive"), ("n3", "alive")],
    );

    let before: Vec<Vec<Sample>> = nodes.iter().map(|n| scrape(n)).collect();
    let total = |name: &str, with: &[(&str, &str)]| -> f64 {
        before.iter().map(|s| sum(s, name, with)).sum()
    };
    let leaders = sum_all(&nodes, "kv_raft_leaders", &[]);
    assert!(
        leaders >= 33.0,
        "32 partitions + the metadata group have leaders: {leaders}"
    );
    for n in &nodes {
        assert!(sum(&scrape(n), "kv_storage_bytes_on_disk", &[]) > 0.0);
    }

    check_json_api(&nodes[0]);
    for i in 0..20 {
        let r = post(
            &nodes[i % 3],
            "/v1/kv/put",
            json!({"keyspace": "cp", "key": b64(format!("load{i}").as_bytes()), "value": b64(b"v")}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let after: Vec<Vec<Sample>> = nodes.iter().map(|n| scrape(n)).collect();
    let now = |name: &str, with: &[(&str, &str)]| -> f64 {
        after.iter().map(|s| sum(s, name, with)).sum()
    };
    for (name, with, at_least) in [
        (
            "kv_requests_total",
            &[
                ("op", "put"),
                ("keyspace", "cp"),
                ("mode", "cp"),
                ("code", "OK"),
            ][..],
            21.0,
        ),
        (
            "kv_requests_total",
            &[("op", "cas"), ("mode", "cp"), ("code", "OK")][..],
            2.0,
        ),
        (
            "kv_requests_total",
            &[
                ("op", "get"),
                ("keyspace", "unknown"),
                ("code", "NOT_FOUND"),
            ][..],
            1.0,
        ),
        (
            "kv_requests_total",
            &[
                ("op", "cas"),
                ("mode", "ap"),
                ("code", "FAILED_PRECONDITION"),
            ][..],
            1.0,
        ),
        (
            "kv_request_duration_seconds_count",
            &[("op", "put"), ("mode", "cp")][..],
            21.0,
        ),
        ("kv_raft_commit_duration_seconds_count", &[][..], 21.0),
        ("kv_storage_flushes_total", &[][..], 1.0),
        ("kv_storage_flush_duration_seconds_count", &[][..], 1.0),
    ] {
        let moved = now(name, with) - total(name, with);
        assert!(
            moved >= at_least,
            "{name}{with:?} moved by {moved}, expected ≥ {at_least}"
        );
    }

    // Each node's anti-entropy loop ran its first round at start-up.
    for (n, samples) in nodes.iter().zip(&after) {
        let rounds = sum(samples, "kv_ap_anti_entropy_rounds_total", &[]);
        assert!(rounds >= 1.0, "{n}: {rounds} anti-entropy rounds");
    }

    // The Grafana dashboard in the repository graphs only series a node exports.
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/kv-dashboard.json"),
    )
    .expect("deploy/grafana/kv-dashboard.json");
    let exported: std::collections::BTreeSet<&str> =
        after.iter().flatten().map(|s| s.name.as_str()).collect();
    let mut used = 0;
    for (i, _) in dashboard.match_indices("kv_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name == "kv_" {
            continue;
        }
        used += 1;
        assert!(
            exported.contains(name.as_str()),
            "the dashboard graphs {name}, which no node exports"
        );
    }
    assert!(used >= 20, "{used} series named in the dashboard");

    // A node killed: the others hold hints for it, the page shows it down; back, the hints
    // replay and drain.
    ok(&kv(dir, &["local", "kill", "n3"]));
    for i in 0..10 {
        let r = post(
            &nodes[0],
            "/v1/kv/put",
            json!({"keyspace": "ap", "key": b64(format!("hinted{i}").as_bytes()), "value": b64(b"v")}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let del = post(
        &nodes[0],
        "/v1/kv/delete",
        json!({"keyspace": "ap", "key": b64(b"hinted0")}),
    );
    assert_eq!(del.status, 200, "{}", del.body);
    let live = &nodes[..2];
    let pending = sum_all(live, "kv_ap_hints_pending", &[("peer", "n3")]);
    assert!(pending >= 10.0, "hints pending for n3: {pending}");
    assert!(sum_all(live, "kv_ap_tombstones_written_total", &[]) >= 1.0);
    wait_until("n1 sees n3 down in its metrics", || {
        sum(
            &scrape(&nodes[0]),
            "kv_peer_state",
            &[("peer", "n3"), ("state", "down")],
        ) == 1.0
    });
    if browser {
        page_shows(
            &nodes[0],
            profile.path(),
            &[("n1", "alive"), ("n2", "alive"), ("n3", "down")],
        );
    }
    ok(&kv(dir, &["local", "start", "n3"]));
    wait_until("the hints for n3 are replayed and drained", || {
        sum_all(live, "kv_ap_hints_pending", &[("peer", "n3")]) == 0.0
            && sum_all(live, "kv_ap_hint_replays_total", &[]) >= 10.0
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn json_logs_are_one_object_per_line_naming_the_node_and_the_request() {
    let tmp = tempfile::tempdir().unwrap();
    let (grpc, http_port) = (free_port(), free_port());
    let http_addr = format!("127.0.0.1:{http_port}");
    let log_path = tmp.path().join("n1.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut node = Command::new(kv_bin())
        .args(["server", "--name", "solo", "--log-format", "json"])
        .arg("--peers")
        .arg(format!("solo=127.0.0.1:{grpc}"))
        .arg("--http-listen")
        .arg(&http_addr)
        .env("RUST_LOG", "info,kv_server::service=debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting kv server");
    let result = std::panic::catch_unwind(|| {
        wait_until("the node is ready", || {
            TcpStream::connect(&http_addr).is_ok()
                && http(&http_addr, "GET", "/readyz", None).status == 200
        });
        let put = json!({"keyspace": "cp", "key": b64(b"k"), "value": b64(b"v"),
            "requestId": {"clientId": "255", "seq": "7"}});
        wait_until("a put succeeds", || {
            post(&http_addr, "/v1/kv/put", put.clone()).status == 200
        });
        wait_until("the request's line is written", || {
            std::fs::read_to_string(&log_path).is_ok_and(|t| t.contains("\"answered\""))
        });
    });
    let _ = node.kill();
    let _ = node.wait();
    let text = std::fs::read_to_string(&log_path).unwrap();
    if let Err(e) = result {
        eprintln!("{text}");
        std::panic::resume_unwind(e);
    }
    let lines: Vec<Value> = text
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object ({e}): {l}"))
        })
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["node"] == "solo" && l["level"].is_string() && l["timestamp"].is_string()),
        "{text}"
    );
    let answered = lines
        .iter()
        .find(|l| l["message"] == "answered" && l["op"] == "put" && l["code"] == "OK")
        .unwrap_or_else(|| panic!("no line for the put:\n{text}"));
    assert_eq!(answered["request_id"], "ff:7", "{answered}");
    assert!(answered["partition"].is_u64(), "{answered}");
    // No user values in logs.
    assert!(!text.contains(&b64(b"k")), "{text}");
}
