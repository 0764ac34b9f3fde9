//! No module of any workspace crate imports a module that imports it back (directly or through
//! others): read from the sources, with `crate::` and `super::` paths resolved to the longest
//! module they name, and a parent's `use child::…` counted as an import of the child. Test-only
//! modules (`*_tests.rs`, `tests.rs`, `testkit.rs`, anything after `#[cfg(test)]`) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates whose module graphs must be acyclic.
const CRATES: &[&str] = &[
    "kv-core",
    "kv-client",
    "kv-server",
    "kv-cli",
    "kv-testkit",
    "chaos",
    "jepsen",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Module path ("ap::engine", "" for the crate root) of a source file, or None for test code.
fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.last().unwrap().clone();
    if last.ends_with("_tests") || last == "tests" || last == "testkit" {
        return None;
    }
    if ["mod", "lib", "main"].contains(&last.as_str()) {
        parts.pop();
    }
    Some(parts)
}

/// Identifier paths following `prefix` in `text` ("crate::a::b::C" → ["a", "b", "C"]).
fn paths_after<'a>(text: &'a str, prefix: &'a str) -> impl Iterator<Item = Vec<String>> + 'a {
    text.match_indices(prefix).filter_map(move |(i, _)| {
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        let rest = &text[i + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let path: Vec<String> = rest[..end]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        (!path.is_empty()).then_some(path)
    })
}

fn code_only(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn cycles_in(crate_dir: &Path) -> Vec<Vec<String>> {
    let src = crate_dir.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .filter_map(|f| module_of(&src, f).map(|m| (m, f.clone())))
        .collect();
    let resolve = |mut path: Vec<String>| -> Option<Vec<String>> {
        while !path.is_empty() {
            if modules.contains_key(&path) {
                return Some(path);
            }
            path.pop();
        }
        None
    };
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, file) in &modules {
        let text = code_only(&std::fs::read_to_string(file).unwrap());
        let is_dir_module = ["mod.rs", "lib.rs", "main.rs"]
            .iter()
            .any(|n| file.ends_with(n));
        let parent: Vec<String> = module[..module.len().saturating_sub(1)].to_vec();
        let mut targets = Vec::new();
        targets.extend(paths_after(&text, "crate::").filter_map(&resolve));
        // `super::` is the parent module, for `a/mod.rs` and `a.rs` alike.
        targets.extend(
            paths_after(&text, "super::").filter_map(|p| resolve([parent.clone(), p].concat())),
        );
        if is_dir_module {
            for line in text.lines() {
                let line = line.trim_start().trim_start_matches("pub ");
                if let Some(rest) = line.strip_prefix("use ") {
                    let first: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !first.is_empty() && !["crate", "super", "self", "std"].contains(&&*first) {
                        if let Some(t) = resolve([module.clone(), vec![first]].concat()) {
                            targets.push(t);
                        }
                    }
                }
            }
        }
        let own = edges.entry(module.clone()).or_default();
        for t in targets {
            // Naming an ancestor's items is not a cycle unless the ancestor names us back,
            // which its own edges show.
            if &t != module && !module.starts_with(&t) {
                own.insert(t);
            }
        }
    }
    // Every cycle through each module, up to six modules long.
    let mut found = BTreeSet::new();
    fn walk(
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        start: &Vec<String>,
        path: &mut Vec<Vec<String>>,
        found: &mut BTreeSet<Vec<Vec<String>>>,
    ) {
        let last = path.last().unwrap().clone();
        for next in edges.get(&last).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.sort();
                found.insert(cycle);
            } else if !path.contains(next) && path.len() < 6 {
                path.push(next.clone());
                walk(edges, start, path, found);
                path.pop();
            }
        }
    }
    for m in modules.keys() {
        walk(&edges, m, &mut vec![m.clone()], &mut found);
    }
    found
        .into_iter()
        .map(|c| c.iter().map(|m| m.join("::")).collect())
        .collect()
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut all = Vec::new();
    for name in CRATES {
        for cycle in cycles_in(&root.join(name)) {
            all.push(format!("{name}: {}", cycle.join(" <-> ")));
        }
    }
    assert!(all.is_empty(), "module cycles:\n{}", all.join("\n"));
}

#[test]
fn the_checker_finds_a_cycle() {
    let dir = std::env::temp_dir().join(format!("kv-module-graph-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::B;\npub struct A;\n").unwrap();
    std::fs::write(src.join("b.rs"), "use crate::a::A;\npub struct B;\n").unwrap();
    let cycles = cycles_in(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(cycles, vec![vec!["a".to_string(), "b".to_string()]]);
}
