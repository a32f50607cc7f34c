//! The Kubernetes manifests in `k8s/` parse, use the API versions of their kinds, and agree
//! with the names `wasmedge-shimctl install` registers: the RuntimeClass's handler is the
//! runtime name, its nodeSelector is the node label, and the example workloads use it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use wasmedge_shimctl::install::{
    DEFAULT_RUNTIME_NAME, NODE_LABEL, NODE_LABEL_KEY, NODE_LABEL_VALUE,
};

fn k8s_dir() -> PathBuf {
    // The manifests belong to the workspace, one level up from this package.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s")
}

/// Every YAML document of one file, as JSON values.
fn docs(file: &str) -> Vec<Value> {
    let path = k8s_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_norway::Deserializer::from_str(&text)
        .map(|d| {
            let v = serde_norway::Value::deserialize(d)
                .unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
            serde_json::to_value(v).unwrap_or_else(|e| panic!("{file}: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The only document of `kind` in `file`.
fn one(file: &str, kind: &str) -> Value {
    let mut found: Vec<_> = docs(file)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "{file}: expected one {kind}");
    found.remove(0)
}

fn yaml_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_manifest_parses_with_the_api_version_of_its_kind() {
    let api: BTreeMap<&str, &str> = [
        ("RuntimeClass", "node.k8s.io/v1"),
        ("Deployment", "apps/v1"),
        ("DaemonSet", "apps/v1"),
        ("Job", "batch/v1"),
        ("Namespace", "v1"),
        ("ServiceAccount", "v1"),
        ("ClusterRole", "rbac.authorization.k8s.io/v1"),
        ("ClusterRoleBinding", "rbac.authorization.k8s.io/v1"),
    ]
    .into();
    let files = yaml_files();
    for expected in [
        "daemonset-installer.yaml",
        "deployment.yaml",
        "job.yaml",
        "runtimeclass.yaml",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "k8s/{expected} missing"
        );
    }
    for file in &files {
        let docs = docs(file);
        assert!(!docs.is_empty(), "{file}: no documents");
        for d in docs {
            let kind = d["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: no kind"));
            let want = api
                .get(kind)
                .unwrap_or_else(|| panic!("{file}: unexpected kind {kind}"));
            assert_eq!(d["apiVersion"], *want, "{file}: {kind}");
            assert!(
                d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty()),
                "{file}: {kind} without metadata.name"
            );
        }
    }
}

#[test]
fn runtimeclass_names_the_installed_runtime_and_selects_labelled_nodes() {
    let rc = one("runtimeclass.yaml", "RuntimeClass");
    assert_eq!(rc["handler"], DEFAULT_RUNTIME_NAME);
    assert_eq!(rc["metadata"]["name"], DEFAULT_RUNTIME_NAME);
    let selector = rc["scheduling"]["nodeSelector"].as_object().unwrap();
    assert_eq!(selector.len(), 1, "{selector:?}");
    // A string "true", not a YAML boolean: label values are strings.
    assert_eq!(
        selector[NODE_LABEL_KEY],
        Value::String(NODE_LABEL_VALUE.into())
    );
    assert_eq!(NODE_LABEL, (NODE_LABEL_KEY, NODE_LABEL_VALUE));
}

#[test]
fn example_workloads_use_the_runtimeclass() {
    let rc_name = one("runtimeclass.yaml", "RuntimeClass")["metadata"]["name"].clone();
    for (file, kind) in [("deployment.yaml", "Deployment"), ("job.yaml", "Job")] {
        let w = one(file, kind);
        let pod = &w["spec"]["template"]["spec"];
        assert_eq!(pod["runtimeClassName"], rc_name, "{file}");
        let containers = pod["containers"].as_array().unwrap();
        assert!(!containers.is_empty(), "{file}");
        for c in containers {
            assert!(
                c["image"].as_str().is_some(),
                "{file}: container without image"
            );
            assert!(
                c["resources"]["limits"]["memory"].as_str().is_some(),
                "{file}: container without a memory limit"
            );
        }
        let policy = &w["spec"]["template"]["metadata"]["annotations"]
            [wasmedge_aot_protocol::config::POLICY_ANNOTATION];
        if let Some(p) = policy.as_str() {
            p.parse::<wasmedge_aot_protocol::config::Policy>()
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
    let d = one("deployment.yaml", "Deployment");
    let labels = d["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    for (k, v) in d["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            labels.get(k),
            Some(v),
            "deployment selector {k} not on its pods"
        );
    }
    let j = one("job.yaml", "Job");
    let restart = &j["spec"]["template"]["spec"]["restartPolicy"];
    assert!(restart == "Never" || restart == "OnFailure", "{restart}");
}

#[test]
fn installer_daemonset_installs_restarts_and_labels_its_node() {
    let file = "daemonset-installer.yaml";
    let ds = one(file, "DaemonSet");
    let ns = ds["metadata"]["namespace"].clone();
    assert_eq!(one(file, "Namespace")["metadata"]["name"], ns);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    let labels = ds["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    for (k, v) in ds["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(labels.get(k), Some(v), "selector {k} not on its pods");
    }

    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    let env = c["env"].as_array().unwrap();
    let node_name = env.iter().find(|e| e["name"] == "NODE_NAME").unwrap();
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let script: String = c["command"]
        .as_array()
        .into_iter()
        .chain(c["args"].as_array())
        .flatten()
        .filter_map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        script.contains("wasmedge-shimctl install --restart"),
        "{script}"
    );
    assert!(
        script.contains(&format!(
            "kubectl label node \"$NODE_NAME\" {NODE_LABEL_KEY}={NODE_LABEL_VALUE}"
        )),
        "{script}"
    );

    // Host paths, each mounted where the script writes.
    let volumes: BTreeMap<&str, &str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap(),
                v["hostPath"]["path"].as_str().unwrap(),
            )
        })
        .collect();
    let mounts: BTreeMap<&str, &str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap(),
                m["name"].as_str().unwrap(),
            )
        })
        .collect();
    for host in [
        "/etc/containerd",
        "/usr/local/bin",
        "/var/lib/wasmedge-aot-shim",
    ] {
        let mount = format!("/host{host}");
        let volume = mounts
            .get(mount.as_str())
            .unwrap_or_else(|| panic!("no mount at {mount}"));
        assert_eq!(volumes.get(volume), Some(&host), "{mount}");
        assert!(script.contains(&mount), "script does not use {mount}");
    }

    // RBAC: the service account may patch nodes, and nothing else is granted.
    let sa = one(file, "ServiceAccount");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(sa["metadata"]["namespace"], ns);
    let role = one(file, "ClusterRole");
    let rules = role["rules"].as_array().unwrap();
    assert!(rules.iter().any(|r| {
        r["apiGroups"]
            .as_array()
            .unwrap()
            .contains(&Value::from(""))
            && r["resources"]
                .as_array()
                .unwrap()
                .contains(&Value::from("nodes"))
            && r["verbs"]
                .as_array()
                .unwrap()
                .contains(&Value::from("patch"))
    }));
    for r in rules {
        assert_eq!(r["resources"], serde_json::json!(["nodes"]), "{r}");
    }
    let binding = one(file, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let subject = &binding["subjects"][0];
    assert_eq!(subject["kind"], "ServiceAccount");
    assert_eq!(subject["name"], sa["metadata"]["name"]);
    assert_eq!(subject["namespace"], ns);
}

#[test]
fn the_labelling_doc_names_the_label() {
    let doc = std::fs::read_to_string(k8s_dir().join("node-label.md")).unwrap();
    assert!(doc.contains(&format!(
        "kubectl label node NODE {NODE_LABEL_KEY}={NODE_LABEL_VALUE}"
    )));
}

/// Every `--flag` the installer DaemonSet passes to `wasmedge-shimctl install` is one the
/// binary accepts.
#[test]
fn the_installer_script_uses_flags_shimctl_accepts() {
    let yaml = std::fs::read_to_string(k8s_dir().join("daemonset-installer.yaml")).unwrap();
    let start = yaml
        .find("wasmedge-shimctl install")
        .expect("install command");
    let command: String = yaml[start..]
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .scan(true, |more, l| {
            let keep = *more;
            *more = l.trim_end().ends_with('\\');
            keep.then(|| l.to_string())
        })
        .collect::<Vec<_>>()
        .join(" ");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_wasmedge-shimctl"))
        .args(["install", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: Vec<&str> = command
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .collect();
    assert!(flags.contains(&"--restart"), "{command}");
    for flag in flags {
        assert!(
            help.contains(flag),
            "{flag} is not a flag of `wasmedge-shimctl install`:\n{help}"
        );
    }
}
