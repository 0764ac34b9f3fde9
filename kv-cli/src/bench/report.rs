//! The result of `kv bench`: one JSON document (the run's settings plus its measurements) and
//! its rendering for people. The text is made from the JSON, so both always agree.

use serde_json::{Map, Value};

/// The text report of a `kv bench` JSON document.
pub fn text(report: &Value) -> String {
    let mut out = String::new();
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let store = match report["target"].as_str() {
        Some("kv") => format!(
            "kv keyspace {} ({})",
            s(&report["keyspace"]),
            s(&report["mode"])
        ),
        other => other.unwrap_or("?").to_string(),
    };
    let pace = match report["rate"].as_f64() {
        Some(rate) => format!(
            "open loop at {rate} requests/s, up to {} in flight",
            u(&report["concurrency"])
        ),
        None => format!("closed loop, {} clients", u(&report["concurrency"])),
    };
    out.push_str(&format!(
        "kv bench: {store}, {pace}, {} connection set(s), mix {}\n",
        u(&report["connections"]),
        s(&report["mix_text"])
    ));
    let mut options = Vec::new();
    if let Some(c) = report["consistency"].as_str() {
        options.push(format!("consistency {c}"));
    }
    if report["stale"] == Value::Bool(true) {
        options.push("stale reads".into());
    }
    out.push_str(&format!(
        "          {} keys ({}), {}-byte values, seed {}{}{}\n",
        u(&report["keys"]),
        s(&report["distribution"]),
        u(&report["value_size"]),
        u(&report["seed"]),
        if options.is_empty() { "" } else { ", " },
        options.join(", ")
    ));
    if let Some(p) = report["preload"].as_object() {
        out.push_str(&format!(
            "preload:  {} keys in {:.1} s, {} errors\n",
            u(&p["keys"]),
            f(&p["elapsed_s"]),
            u(&p["errors"])
        ));
    }
    out.push_str(&format!(
        "measured: {} requests in {:.2} s after a {:.1} s warm-up: {:.1} answers/s, {} errors\n\n",
        u(&report["requests"]),
        f(&report["elapsed_s"]),
        f(&report["warmup_s"]),
        f(&report["throughput_ops_s"]),
        u(&report["errors"]["total"])
    ));
    out.push_str(&format!(
        "{:<8} {:>9} {:>10} {:>8} {:>8} {:>8} {:>9} {:>8}\n",
        "op", "answered", "answers/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    ));
    let row = |name: &str, o: &Value, lat: &Value| {
        let ms = |k: &str| match lat[k].as_f64() {
            Some(v) => format!("{v:.3}"),
            None => "-".into(),
        };
        format!(
            "{:<8} {:>9} {:>10.1} {:>8} {:>8} {:>8} {:>9} {:>8}\n",
            name,
            u(&o["answered"]),
            f(&o["throughput_ops_s"]),
            ms("p50"),
            ms("p90"),
            ms("p99"),
            ms("p99_9"),
            ms("max")
        )
    };
    let empty = Map::new();
    let ops = report["ops"].as_object().unwrap_or(&empty);
    for (name, o) in ops {
        out.push_str(&row(name, o, &o["latency_ms"]));
    }
    if ops.len() > 1 {
        out.push_str(&row("all", report, &report["latency_ms"]));
    }
    for (name, o) in ops {
        let (nf, cm) = (u(&o["not_found"]), u(&o["cas_mismatch"]));
        if nf > 0 {
            out.push_str(&format!("{name}: {nf} answered not found\n"));
        }
        if cm > 0 {
            out.push_str(&format!("{name}: {cm} found another value\n"));
        }
    }
    if let Some(h) = report["hops"].as_object() {
        out.push_str(&format!(
            "\nhops:     {} of {} answers ({:.1}%) came from another node than the one the client sent them to\n",
            u(&h["count"]),
            u(&h["of"]),
            f(&h["ratio"]) * 100.0
        ));
    }
    if let Some(nodes) = report["served_by"].as_object().filter(|n| !n.is_empty()) {
        let list: Vec<String> = nodes.iter().map(|(n, c)| format!("{n} {c}")).collect();
        out.push_str(&format!("served by {}\n", list.join(", ")));
    }
    if let Some(kinds) = report["errors"]["by_kind"]
        .as_object()
        .filter(|k| !k.is_empty())
    {
        out.push_str("errors:\n");
        for (kind, e) in kinds {
            out.push_str(&format!(
                "  {kind}: {} (e.g. {})\n",
                u(&e["count"]),
                s(&e["example"])
            ));
        }
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_text_report_shows_every_figure_of_the_json() {
        let report = json!({
            "target": "kv", "keyspace": "cp", "mode": "cp", "rate": null, "concurrency": 64,
            "connections": 1, "mix_text": "get=80,put=20", "keys": 10000,
            "distribution": "uniform", "value_size": 100, "seed": 9, "consistency": null,
            "stale": true, "warmup_s": 2.0, "preload": {"keys": 10000, "elapsed_s": 8.25, "errors": 0},
            "requests": 1001, "elapsed_s": 10.0, "throughput_ops_s": 100.0,
            "errors": {"total": 1, "by_kind": {"unavailable": {"count": 1, "example": "no quorum"}}},
            "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "p99_9": 4.0, "max": 5.0},
            "ops": {
                "get": {"answered": 800, "throughput_ops_s": 80.0, "not_found": 3, "cas_mismatch": 0,
                        "latency_ms": {"p50": 0.5, "p90": 1.5, "p99": 2.5, "p99_9": 3.5, "max": 4.5}},
                "put": {"answered": 200, "throughput_ops_s": 20.0, "not_found": 0, "cas_mismatch": 0,
                        "latency_ms": null}
            },
            "hops": {"count": 250, "of": 1000, "ratio": 0.25, "method": "m"},
            "served_by": {"n1": 600, "n2": 400}
        });
        let t = text(&report);
        for want in [
            "kv keyspace cp (cp), closed loop, 64 clients",
            "mix get=80,put=20",
            "10000 keys (uniform), 100-byte values, seed 9, stale reads",
            "preload:  10000 keys in 8.2 s, 0 errors",
            "1001 requests in 10.00 s after a 2.0 s warm-up: 100.0 answers/s, 1 errors",
            "get            800       80.0    0.500    1.500    2.500     3.500    4.500",
            "put            200       20.0        -",
            "all",
            "get: 3 answered not found",
            "250 of 1000 answers (25.0%)",
            "served by n1 600, n2 400",
            "unavailable: 1 (e.g. no quorum)",
        ] {
            assert!(t.contains(want), "missing {want:?} in:\n{t}");
        }
    }
}
