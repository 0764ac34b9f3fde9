//! The kv node: ring, storage, CP engine (multi-Raft), AP engine (Dynamo), membership, peer
//! links, gRPC services and configuration. A library: no process spawning and no CLI (the `kv`
//! binary lives in kv-cli). Depends on kv-proto and kv-core, never on kv-client or jepsen.
//!
//! **Architecture invariant:** the modules form layers; each uses only modules listed before
//! it, so no module imports one that imports it back (`layering_tests` below checks every
//! `crate::` path against this list):
//! 1. `types`, `clock`, `metrics`: ids, keyspace definitions, versions, limits; the wall-clock
//!    seam; the process's event counters.
//! 2. `storage`: the `Engine` seam (sled, memory).
//! 3. `ring`, `faults`, `membership`: placement; injected faults; peers' liveness.
//! 4. `batch`, `peers`: the per-peer batcher (many callers' messages to one peer in few calls);
//!    the peer links (dialer, per-peer channels, faults, liveness), built before the
//!    node and handed to the transports and to the node.
//! 5. `ap`, `cp`: the engines, each behind its own transport seam.
//! 6. `repair`: the corruption fault on a stopped node's data and the scrub over both engines.
//! 7. `transport`: both engines' seams over gRPC and the peer links.
//! 8. `config`, `error`, `security`: node configuration; node errors and their one conversion
//!    to a status; tokens, roles, the request gate and TLS.
//! 9. `node`: owns the ring, storage, engines and peer links; the request paths.
//! 10. `service`: the gRPC services over the node.
//! 11. `server`: serving a listener, heartbeats.
//! 12. `http`: the HTTP port (metrics, health, status page, JSON API) over the node and the
//!     gRPC service.

pub mod ap;
pub mod batch;
pub mod clock;
pub mod config;
pub mod cp;
pub mod error;
pub mod faults;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod peers;
pub mod repair;
pub mod ring;
pub mod security;
pub mod server;
pub mod service;
pub mod storage;
pub mod transport;
pub mod types;

#[cfg(test)]
mod layering_tests {
    //! Keeps the layering written above true by reading the sources: a module may name (through
    //! `crate::` at the top level, `super::` inside `service/`) only modules before it.

    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    /// The crate's modules, lowest layer first (the order of the list above).
    const ORDER: &[&str] = &[
        "types",
        "clock",
        "metrics",
        "storage",
        "ring",
        "faults",
        "membership",
        "batch",
        "peers",
        "ap",
        "cp",
        "repair",
        "transport",
        "config",
        "error",
        "security",
        "node",
        "service",
        "server",
        "http",
    ];
    /// `service/`'s modules, lowest first (as its `//!` says).
    const SERVICE_ORDER: &[&str] = &[
        "convert", "forward", "status", "keyspace", "snapshot", "kv", "internal",
    ];

    fn src() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    /// The code of module `name` under `dir` (its file, or every file of its directory),
    /// comment lines left out.
    /// Test modules may reach any layer (e.g. to check the status a client would see).
    fn is_test_code(file: &Path) -> bool {
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        stem.ends_with("_tests") || stem == "tests" || stem == "testkit"
    }

    fn code_of(dir: &Path, name: &str) -> String {
        let mut files = vec![];
        let file = dir.join(format!("{name}.rs"));
        if file.exists() {
            files.push(file);
        }
        let mut dirs = vec![dir.join(name)];
        while let Some(d) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries {
                let p = e.expect("readable directory entry").path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") && !is_test_code(&p) {
                    files.push(p);
                }
            }
        }
        assert!(
            !files.is_empty(),
            "module {name} has no source under {dir:?}"
        );
        files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .expect("readable source")
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Module names that follow `prefix` ("crate::" or "super::") in `code`, also inside
    /// `prefix{a, b::c}` groups.
    fn named(code: &str, prefix: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (i, _) in code.match_indices(prefix) {
            let rest = &code[i + prefix.len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .collect(),
                None => vec![rest],
            };
            for n in names {
                let n: String = n
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !n.is_empty() {
                    out.insert(n);
                }
            }
        }
        out
    }

    /// Every use of a module at or after the user's own position, as "user -> used".
    fn violations(dir: &Path, order: &[&str], prefix: &str) -> Vec<String> {
        let mut out = vec![];
        for (i, user) in order.iter().enumerate() {
            for used in named(&code_of(dir, user), prefix) {
                if let Some(j) = order.iter().position(|m| *m == used) {
                    if j > i {
                        out.push(format!("{user} -> {used}"));
                    }
                }
            }
        }
        out
    }

    /// The modules `file` declares with `line_prefix` ("pub mod "), sorted.
    fn declared(file: &Path, line_prefix: &str) -> Vec<String> {
        let text = std::fs::read_to_string(file).expect("readable source");
        let mut out: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix(line_prefix))
            .map(|l| l.trim_end_matches(';').to_string())
            .collect();
        out.sort_unstable();
        out
    }

    fn sorted(names: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn every_module_has_a_place_in_the_order() {
        assert_eq!(declared(&src().join("lib.rs"), "pub mod "), sorted(ORDER));
        assert_eq!(
            declared(&src().join("service/mod.rs"), "mod "),
            sorted(SERVICE_ORDER)
        );
    }

    #[test]
    fn modules_use_only_lower_layers() {
        assert_eq!(violations(&src(), ORDER, "crate::"), Vec::<String>::new());
        let service = src().join("service");
        assert_eq!(
            violations(&service, SERVICE_ORDER, "super::"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_check_sees_an_upward_use() {
        let code = "use crate::node::Node;\nuse crate::{ring, types::NodeId};";
        assert_eq!(
            named(code, "crate::"),
            BTreeSet::from(["node".into(), "ring".into(), "types".into()])
        );
    }
}
