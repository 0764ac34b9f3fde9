//! The deployment files: the Kubernetes manifests in deploy/k8s/ validate against the
//! Kubernetes schemas (`kubernetes-validate`, strict, two Kubernetes versions) and a broken one
//! is refused; the manifests agree with each other and with the Dockerfile (ports, probes,
//! replicas, volumes, non-root); the entrypoint derives each pod's name and the peer list from
//! the pod ordinal. The image itself is not built here: base images cannot be pulled on these
//! machines (docs/operations.md).
//!
//! `kubernetes-validate` comes from PyPI (`.ci/run` installs it). Without it these tests print
//! a skip line, or fail when `KV_REQUIRE_TOOLS=1` (as `.ci/run` sets).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Oldest Kubernetes version the manifests are checked against (besides the tool's newest).
const OLDEST_KUBERNETES: &str = "1.30.0";
const MANIFESTS: [&str; 3] = ["statefulset.yaml", "services.yaml", "pdb.yaml"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn k8s(file: &str) -> PathBuf {
    root().join("deploy/k8s").join(file)
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// True when `kubernetes-validate` runs; otherwise a skip line, or a failure when the
/// environment requires the tools.
fn validator_present(test: &str) -> bool {
    if Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    assert!(
        std::env::var("KV_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "{test}: kubernetes-validate is not installed and KV_REQUIRE_TOOLS=1: pip install kubernetes-validate"
    );
    eprintln!(
        "SKIPPED {test}: kubernetes-validate not installed (pip install kubernetes-validate)"
    );
    false
}

fn validate(files: &[PathBuf], version: Option<&str>) -> Output {
    let mut cmd = Command::new("kubernetes-validate");
    cmd.arg("--strict");
    if let Some(v) = version {
        cmd.args(["--kubernetes-version", v]);
    }
    cmd.args(files)
        .output()
        .expect("running kubernetes-validate")
}

#[test]
fn the_manifests_validate_against_the_kubernetes_schemas_and_broken_ones_are_refused() {
    if !validator_present("manifests validate") {
        return;
    }
    let files: Vec<PathBuf> = MANIFESTS.iter().map(|f| k8s(f)).collect();
    for version in [Some(OLDEST_KUBERNETES), None] {
        let out = validate(&files, version);
        assert!(out.status.success(), "{version:?}: {}", text(&out));
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        // Every resource was checked, not skipped.
        for resource in [
            "statefulset/kv",
            "service/kv-peers",
            "service/kv",
            "poddisruptionbudget/kv",
        ] {
            assert!(
                said.contains(&format!("passed for resource {resource}")),
                "{said}"
            );
        }
    }

    let good = std::fs::read_to_string(k8s("statefulset.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (what, from, to, expect) in [
        (
            "a wrong type",
            "replicas: 5",
            "replicas: five",
            "not of type",
        ),
        (
            "a misspelt field",
            "timeoutSeconds: 2",
            "timeoutSecond: 2",
            "timeoutSecond",
        ),
        (
            "a container without its required name",
            "        - name: kv\n          image: kv:latest",
            "        - image: kv:latest",
            "'name' is a required property",
        ),
    ] {
        assert!(
            good.contains(from),
            "{what}: the manifest changed; update this test"
        );
        let broken = dir.path().join("broken.yaml");
        std::fs::write(&broken, good.replacen(from, to, 1)).unwrap();
        let out = validate(&[broken], None);
        assert!(!out.status.success(), "{what} was accepted: {}", text(&out));
        assert!(text(&out).contains(expect), "{what}: {}", text(&out));
    }
}

/// Every document of the manifests, as JSON (through PyYAML, which kubernetes-validate uses).
fn documents() -> Vec<Value> {
    let files: Vec<PathBuf> = MANIFESTS.iter().map(|f| k8s(f)).collect();
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\njson.dump([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f))], sys.stdout)",
        ])
        .args(&files)
        .output()
        .expect("running python3");
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((op.to_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends inside a continued line"
    );
    out
}

#[test]
fn the_manifests_agree_with_each_other_and_with_the_image() {
    if !validator_present("manifests agree") {
        return;
    }
    let docs = documents();
    let set = find(&docs, "StatefulSet", "kv");
    let spec = &set["spec"];
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], labels);
    let c = &pod["containers"][0];
    let env = |name: &str| -> String {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("no env {name}"))
            .to_string()
    };
    assert!(
        spec["replicas"] == 3 || spec["replicas"] == 5,
        "{}",
        spec["replicas"]
    );
    assert_eq!(env("KV_REPLICAS"), spec["replicas"].to_string());
    let port = |name: &str| -> u64 {
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    assert_eq!(port("client").to_string(), env("KV_CLIENT_PORT"));
    assert_eq!(port("peer").to_string(), env("KV_PEER_PORT"));
    assert_eq!(port("http").to_string(), env("KV_HTTP_PORT"));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");

    // Non-root, no privilege escalation, data on the claimed volume.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["securityContext"]["runAsUser"].as_u64().unwrap() > 0);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    let claim = &spec["volumeClaimTemplates"][0];
    assert_eq!(c["volumeMounts"][0]["name"], claim["metadata"]["name"]);
    assert_eq!(
        c["volumeMounts"][0]["mountPath"],
        env("KV_DATA_DIR").as_str()
    );

    // The headless Service names the pods; the client Service reaches named ports that exist.
    let peers = find(&docs, "Service", spec["serviceName"].as_str().unwrap());
    assert_eq!(peers["spec"]["clusterIP"], "None");
    assert_eq!(peers["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(
        env("KV_SERVICE"),
        peers["metadata"]["name"].as_str().unwrap()
    );
    let client = find(&docs, "Service", "kv");
    for svc in [peers, client] {
        assert_eq!(&svc["spec"]["selector"], labels);
        for p in svc["spec"]["ports"].as_array().unwrap() {
            port(p["targetPort"].as_str().unwrap());
        }
    }
    let pdb = find(&docs, "PodDisruptionBudget", "kv");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);

    // The image: multi-stage, the kv binary from the builder, the entrypoint the pods run,
    // a non-root user, and exactly the ports the pods declare.
    let image = dockerfile();
    let of = |op: &str| -> Vec<&str> {
        image
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    assert!(of("FROM").len() >= 2, "not multi-stage: {:?}", of("FROM"));
    assert!(of("FROM")[0].ends_with("AS builder"), "{:?}", of("FROM"));
    let copies = of("COPY");
    assert!(copies
        .iter()
        .any(|a| a.starts_with("--from=builder") && a.ends_with("/usr/local/bin/kv")));
    let command = c["command"][0].as_str().unwrap();
    let entry = copies
        .iter()
        .find(|a| a.ends_with(command))
        .unwrap_or_else(|| panic!("the image has no {command}: {copies:?}"));
    let source = entry.split_whitespace().next().unwrap();
    assert!(root().join(source).exists(), "{source}");
    let user = of("USER");
    let last_user = user.last().expect("no USER: the image would run as root");
    let uid: u64 = last_user.split(':').next().unwrap().parse().unwrap();
    assert_eq!(uid, pod["securityContext"]["runAsUser"].as_u64().unwrap());
    let mut exposed: Vec<u64> = of("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .map(|p| p.parse().unwrap())
        .collect();
    exposed.sort();
    assert_eq!(exposed, vec![port("client"), port("peer"), port("http")]);
    let ignored = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(ignored.lines().any(|l| l.trim() == "target/"), "{ignored}");
}

fn entrypoint(pod: &str, replicas: &str) -> Output {
    Command::new("sh")
        .arg(k8s("entrypoint.sh"))
        .arg("--max-value-bytes=2097152")
        .env("KV_ENTRYPOINT_PRINT", "1")
        .env("KV_REPLICAS", replicas)
        .env("KV_SERVICE", "kv-peers")
        .env("KV_NAMESPACE", "db")
        .env("POD_NAME", pod)
        .output()
        .expect("running sh")
}

fn flag(line: &str, name: &str) -> String {
    let mut words = line.split_whitespace();
    words
        .find(|w| *w == name)
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    words.next().unwrap().to_string()
}

#[test]
fn the_entrypoint_names_each_pod_by_its_ordinal_with_one_peer_list_for_all() {
    let first = String::from_utf8(entrypoint("kv-0", "5").stdout).unwrap();
    let last = String::from_utf8(entrypoint("kv-4", "5").stdout).unwrap();
    assert!(first.starts_with("kv server "), "{first}");
    assert_eq!(flag(&first, "--name"), "kv-0");
    assert_eq!(flag(&last, "--name"), "kv-4");
    let peers = flag(&first, "--peers");
    assert_eq!(peers, flag(&last, "--peers"));
    let entries: Vec<&str> = peers.split(',').collect();
    assert_eq!(entries.len(), 5);
    assert_eq!(
        entries[3],
        "kv-3=kv-3.kv-peers.db.svc.cluster.local:7001/kv-3.kv-peers.db.svc.cluster.local:7002"
    );
    assert_eq!(flag(&first, "--http-listen"), "0.0.0.0:8080");
    assert_eq!(flag(&first, "--data-dir"), "/var/lib/kv");
    assert!(
        first.trim_end().ends_with("--max-value-bytes=2097152"),
        "{first}"
    );

    // A pod outside the peer list, or a name without an ordinal: refused, saying why.
    for (pod, why) in [("kv-5", "KV_REPLICAS is 5"), ("kv", "ordinal")] {
        let out = entrypoint(pod, "5");
        assert_eq!(out.status.code(), Some(2), "{pod}: {}", text(&out));
        assert!(text(&out).contains(why), "{pod}: {}", text(&out));
    }
}
