//! The Kubernetes manifests in `deploy/kubernetes` against Kubernetes' own JSON schemas (the
//! package `kubernetes-validate`, which bundles them, strict: an unknown or misspelled field is
//! an error), for every Kubernetes release it has schemas of, and what they must say beyond the
//! schemas: the namespace's Pod Security label and the priority class of the DaemonSet, every
//! container hardened, the metrics container not root, the device plugin given the kubelet's
//! directory and the node's paths, its command line (run through the real binary) answering
//! `Allocate` with the library where the init container puts it and the node's ledger, the same
//! edits as the CDI spec of `vramguard cdi`, and the example pod asking for the resource and
//! passing Pod Security's baseline level (a check in this file of the baseline rules, which no
//! offline validator here implements).

#[path = "support/pod_spec.rs"]
mod pod_spec;
mod support;
#[path = "support/venv.rs"]
mod venv_support;

use pod_spec::host_path;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use venv_support::*;

/// Parses each file, validates every document against every bundled Kubernetes version (strict),
/// and prints one JSON object: the documents per file, the versions, and every failure.
const CHECKER: &str = r#"
import json, sys
import yaml
import kubernetes_validate
from kubernetes_validate.utils import all_versions
versions = sorted(set(all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))
files, failures = {}, []
for path in sys.argv[1:]:
    with open(path) as f:
        documents = [d for d in yaml.safe_load_all(f) if d is not None]
    files[path] = documents
    for document in documents:
        for version in versions:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except Exception as e:
                failures.append("%s: %s/%s against %s: %s" % (
                    path, document.get("kind"), (document.get("metadata") or {}).get("name"),
                    version, getattr(e, "message", e)))
print(json.dumps({"files": files, "versions": versions, "failures": failures}))
"#;

struct Checked {
    files: serde_json::Map<String, Value>,
    versions: Vec<String>,
    failures: Vec<String>,
}

fn validate(paths: &[PathBuf]) -> Checked {
    require_module("kubernetes_validate");
    let mut command = Command::new(pytools_python());
    command.args(["-c", CHECKER]).args(paths);
    let output = support::run_with_deadline(command, DEADLINE);
    assert!(
        output.status.success(),
        "the checker: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut answer: Value = serde_json::from_slice(&output.stdout).expect("the checker's JSON");
    Checked {
        files: answer["files"].as_object().unwrap().clone(),
        versions: serde_json::from_value(answer["versions"].take()).unwrap(),
        failures: serde_json::from_value(answer["failures"].take()).unwrap(),
    }
}

fn manifests_dir() -> PathBuf {
    support::repo().join("deploy/kubernetes")
}

/// Every manifest of `deploy/kubernetes`.
fn manifests() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
    paths
}

/// The documents of one manifest, validated.
fn documents(name: &str) -> Vec<Value> {
    let path = manifests_dir().join(name);
    let checked = validate(std::slice::from_ref(&path));
    assert!(checked.failures.is_empty(), "{:#?}", checked.failures);
    checked.files[path.to_str().unwrap()]
        .as_array()
        .unwrap()
        .clone()
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| pod[*k].as_array())
        .flatten()
        .collect()
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    containers(pod)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
        .unwrap_or_default()
}

/// Where the host path `path` is seen inside `container` of `pod`, through its hostPath mounts.
fn seen_at(pod: &Value, container: &Value, path: &str) -> Option<String> {
    container["volumeMounts"].as_array()?.iter().find_map(|m| {
        let host = pod["volumes"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == m["name"])?["hostPath"]["path"]
            .as_str()?;
        let rest = Path::new(path).strip_prefix(host).ok()?;
        Some(
            Path::new(m["mountPath"].as_str()?)
                .join(rest)
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string(),
        )
    })
}

/// The violations of Pod Security's baseline level by a pod spec (with its metadata), after the
/// Pod Security Standards: host namespaces, privileged containers, added capabilities beyond
/// the baseline's list, hostPath volumes, host ports, AppArmor, SELinux, /proc mount type,
/// seccomp and sysctls.
fn baseline_violations(metadata: &Value, pod: &Value) -> Vec<String> {
    const CAPABILITIES: [&str; 13] = [
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ];
    const SELINUX_TYPES: [&str; 5] = [
        "",
        "container_t",
        "container_init_t",
        "container_kvm_t",
        "container_engine_t",
    ];
    const SYSCTLS: [&str; 9] = [
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
    ];
    let mut found = Vec::new();
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod[key] == true {
            found.push(key.to_string());
        }
    }
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        if volume.get("hostPath").is_some() {
            found.push(format!("hostPath volume {}", volume["name"]));
        }
    }
    let contexts = std::iter::once(("pod".to_string(), &pod["securityContext"])).chain(
        containers(pod)
            .into_iter()
            .map(|c| (format!("container {}", c["name"]), &c["securityContext"])),
    );
    for (who, context) in contexts {
        if context["privileged"] == true {
            found.push(format!("{who}: privileged"));
        }
        if context["windowsOptions"]["hostProcess"] == true {
            found.push(format!("{who}: hostProcess"));
        }
        for cap in strings(&context["capabilities"]["add"]) {
            if !CAPABILITIES.contains(&cap) {
                found.push(format!("{who}: adds capability {cap}"));
            }
        }
        if let Some(mount) = context["procMount"].as_str()
            && mount != "Default"
        {
            found.push(format!("{who}: procMount {mount}"));
        }
        if context["seccompProfile"]["type"] == "Unconfined" {
            found.push(format!("{who}: seccomp Unconfined"));
        }
        if context["appArmorProfile"]["type"] == "Unconfined" {
            found.push(format!("{who}: AppArmor Unconfined"));
        }
        let selinux = &context["seLinuxOptions"];
        if !SELINUX_TYPES.contains(&selinux["type"].as_str().unwrap_or("")) {
            found.push(format!("{who}: SELinux type {}", selinux["type"]));
        }
        for key in ["user", "role"] {
            if selinux[key].as_str().is_some_and(|s| !s.is_empty()) {
                found.push(format!("{who}: SELinux {key}"));
            }
        }
    }
    for sysctl in pod["securityContext"]["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = sysctl["name"].as_str().unwrap_or("");
        if !SYSCTLS.contains(&name) {
            found.push(format!("sysctl {name}"));
        }
    }
    for c in containers(pod) {
        for port in c["ports"].as_array().into_iter().flatten() {
            if port["hostPort"].as_u64().is_some_and(|p| p != 0) {
                found.push(format!("container {}: hostPort", c["name"]));
            }
        }
    }
    for (key, value) in metadata["annotations"].as_object().into_iter().flatten() {
        if key.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && value != "runtime/default"
            && !value.as_str().unwrap_or("").starts_with("localhost/")
        {
            found.push(format!("annotation {key}: {value}"));
        }
    }
    found
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    let paths = manifests();
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["daemonset.yaml", "pod-guarded.yaml"]);
    let checked = validate(&paths);
    assert!(checked.failures.is_empty(), "{:#?}", checked.failures);
    assert!(
        checked.versions.len() >= 2 && checked.versions.iter().any(|v| v.starts_with("1.29.")),
        "{:?}",
        checked.versions
    );
    let count: usize = checked
        .files
        .values()
        .map(|d| d.as_array().unwrap().len())
        .sum();
    assert_eq!(count, 5, "{:?}", checked.files.keys());

    // The checker does refuse what the schemas forbid: a misspelled field, a wrong type.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers:\n    - name: x\n      \
         image: x\n      securityContext:\n        capabilties:\n          drop: [ALL]\n---\n\
         apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata:\n  name: y\nvalue: high\n",
    )
    .unwrap();
    let refused = validate(&[broken]).failures;
    assert!(
        refused.iter().any(|f| f.contains("capabilties")),
        "{refused:#?}"
    );
    assert!(
        refused.iter().any(|f| f.contains("PriorityClass")),
        "{refused:#?}"
    );
}

#[test]
fn the_daemonset_has_its_namespace_priority_and_hardening() {
    let documents = documents("daemonset.yaml");
    let daemonset = of_kind(&documents, "DaemonSet");
    let namespace = of_kind(&documents, "Namespace");
    assert_eq!(
        daemonset["metadata"]["namespace"],
        namespace["metadata"]["name"]
    );
    let pod = &daemonset["spec"]["template"]["spec"];

    // Pod Security: privileged, and needed: the pod's hostPath volumes are refused by baseline.
    let labels = &namespace["metadata"]["labels"];
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "privileged");
    let violations = baseline_violations(&daemonset["spec"]["template"]["metadata"], pod);
    assert!(
        !violations.is_empty() && violations.iter().all(|v| v.starts_with("hostPath volume")),
        "{violations:?}"
    );

    // Its own priority class, not a system one.
    let class = of_kind(&documents, "PriorityClass");
    assert_eq!(pod["priorityClassName"], class["metadata"]["name"]);
    assert!(
        !class["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("system-")
    );
    let value = class["value"].as_i64().unwrap();
    assert!(value > 0 && value <= 1_000_000_000, "{value}");
    assert_eq!(class["globalDefault"], false);

    // Hardening of every container.
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    for c in containers(pod) {
        let context = &c["securityContext"];
        let name = &c["name"];
        assert_eq!(context["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(context["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(strings(&context["capabilities"]["drop"]), ["ALL"], "{name}");
        assert_ne!(context["privileged"], true, "{name}");
        assert!(
            context["seccompProfile"].is_null(),
            "{name} keeps the pod's RuntimeDefault"
        );
        let added = strings(&context["capabilities"]["add"]);
        if c["name"] == "install" {
            assert_eq!(added, ["CHOWN"]);
        } else {
            assert!(added.is_empty(), "{name}: {added:?}");
        }
    }

    // The metrics container is not root, and the init container hands it its directory.
    let metrics = container(pod, "metrics");
    assert_eq!(metrics["securityContext"]["runAsNonRoot"], true);
    let uid = metrics["securityContext"]["runAsUser"].as_u64().unwrap();
    let gid = metrics["securityContext"]["runAsGroup"].as_u64().unwrap();
    assert_ne!(uid, 0);
    let textfile = metrics["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "textfile")
        .unwrap();
    let output = strings(&metrics["args"]);
    let file = output[output.iter().position(|a| *a == "--output").unwrap() + 1];
    assert_eq!(
        Path::new(file).parent().unwrap(),
        Path::new(textfile["mountPath"].as_str().unwrap())
    );
    let install = container(pod, "install");
    let script = install["args"][0].as_str().unwrap();
    let metrics_dir = seen_at(pod, install, host_path(pod, "textfile"))
        .expect("the init container sees the metrics directory");
    assert!(
        script.contains(&format!("chown {uid}:{gid} {metrics_dir}\n")),
        "{script}"
    );
}

/// The device plugin's answer to `Allocate` for `args`, and where it meets the kubelet
/// (`--print-allocation` of the real binary).
fn plugin_answer(args: &[&str]) -> Value {
    let binary = support::release_dir().join("vramguard-device-plugin");
    assert!(
        binary.is_file(),
        "{} is missing: cargo build --release --workspace",
        binary.display()
    );
    let mut command = Command::new(binary);
    command
        .args(args)
        .arg("--print-allocation")
        .env_remove("VRAMGUARD_DIR");
    let stdout = support::stdout_of_success(command, DEADLINE, &format!("{args:?}"));
    serde_json::from_slice(&stdout).unwrap()
}

/// The spec `vramguard cdi` writes for a library and a ledger directory.
fn cdi_spec(library: &str, ledger: &str) -> Value {
    let mut command = Command::new(support::artifacts().cli);
    command.args([
        "cdi",
        "--library",
        library,
        "--ledger-dir",
        ledger,
        "--format",
        "json",
    ]);
    let stdout = support::stdout_of_success(command, DEADLINE, "vramguard cdi");
    serde_json::from_slice(&stdout).unwrap()
}

#[test]
fn the_device_plugin_container_gives_the_node_library_and_ledger() {
    let documents = documents("daemonset.yaml");
    let pod = &of_kind(&documents, "DaemonSet")["spec"]["template"]["spec"];
    let plugin = container(pod, "device-plugin");
    let args = strings(&plugin["args"]);
    let answer = plugin_answer(&args);
    assert_eq!(answer["resource"], "vramguard.dev/guard");
    assert_eq!(answer["mode"], "env");

    // The kubelet's directory, seen by the plugin where the kubelet has it.
    let socket = answer["socket"].as_str().unwrap();
    let kubelet = answer["kubelet_socket"].as_str().unwrap();
    for path in [socket, kubelet] {
        assert_eq!(
            seen_at(pod, plugin, path).as_deref(),
            Some(path),
            "{path} is not the node's in the plugin's container"
        );
        assert!(
            path.starts_with("/var/lib/kubelet/device-plugins/"),
            "{path}"
        );
    }

    // The library where the init container puts it, the node's ledger.
    let container_answer = &answer["container"];
    let envs = &container_answer["envs"];
    let mounts = container_answer["mounts"].as_array().unwrap();
    let mount_at = |path: &Value| {
        mounts
            .iter()
            .find(|m| &m["container_path"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))
    };
    let library = mount_at(&envs["LD_PRELOAD"]);
    assert_eq!(library["read_only"], true);
    let library_host = library["host_path"].as_str().unwrap();
    let install = container(pod, "install");
    let script = install["args"][0].as_str().unwrap();
    let installed = seen_at(pod, install, library_host).expect("the init container sees it");
    assert!(
        script.contains(&format!(" {installed}\n")),
        "the init container does not install {installed}: {script}"
    );
    let ledger = mount_at(&envs["VRAMGUARD_DIR"]);
    assert_eq!(ledger["read_only"], false);
    let ledger_host = ledger["host_path"].as_str().unwrap();
    assert_eq!(ledger_host, host_path(pod, "ledger"));
    assert_eq!(ledger["container_path"], ledger["host_path"]);

    // What its health check looks at is the node's, at the same path.
    let spec_path = args[args.iter().position(|a| *a == "--cdi-spec").unwrap() + 1];
    for path in [library_host, ledger_host, spec_path] {
        assert_eq!(seen_at(pod, plugin, path).as_deref(), Some(path), "{path}");
    }
    assert!(
        script.contains(&format!(
            "--output {}\n",
            seen_at(pod, install, spec_path).unwrap()
        )),
        "the init container does not write {spec_path}: {script}"
    );

    // The same edits as the CDI spec for the same paths; cdi mode names that spec's device.
    let spec = cdi_spec(library_host, ledger_host);
    let device = &spec["devices"][0];
    let edits = &device["containerEdits"];
    let spec_env = strings(&edits["env"]);
    for (name, value) in envs.as_object().unwrap() {
        let line = format!("{name}={}", value.as_str().unwrap());
        assert!(
            spec_env.contains(&line.as_str()),
            "{line} not in {spec_env:?}"
        );
    }
    for mount in mounts {
        let same = edits["mounts"].as_array().unwrap().iter().find(|m| {
            m["hostPath"] == mount["host_path"] && m["containerPath"] == mount["container_path"]
        });
        let same = same.unwrap_or_else(|| panic!("{mount} is not in the CDI spec"));
        let read_only = strings(&same["options"]).contains(&"ro");
        assert_eq!(mount["read_only"], read_only, "{mount} vs {same}");
    }
    let mut cdi_args: Vec<&str> = args.clone();
    let mode = cdi_args.iter().position(|a| *a == "--mode").unwrap() + 1;
    cdi_args[mode] = "cdi";
    let cdi = plugin_answer(&cdi_args);
    let names: Vec<&str> = cdi["container"]["cdi_devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    let expected = format!(
        "{}={}",
        spec["kind"].as_str().unwrap(),
        device["name"].as_str().unwrap()
    );
    assert_eq!(names, [expected.as_str()]);
    assert!(cdi["container"]["envs"].as_object().unwrap().is_empty());
}

#[test]
fn the_example_pod_asks_for_the_guard_and_passes_baseline() {
    let documents = documents("pod-guarded.yaml");
    let pod = of_kind(&documents, "Pod");
    let namespace = of_kind(&documents, "Namespace");
    assert_eq!(pod["metadata"]["namespace"], namespace["metadata"]["name"]);
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "baseline"
    );
    let violations = baseline_violations(&pod["metadata"], &pod["spec"]);
    assert!(violations.is_empty(), "{violations:?}");
    for c in containers(&pod["spec"]) {
        let limit = &c["resources"]["limits"]["vramguard.dev/guard"];
        assert!(limit == 1 || limit == "1", "{}: {limit}", c["name"]);
        // The guard comes from the device plugin, not from the pod.
        for env in c["env"].as_array().into_iter().flatten() {
            assert!(
                env["name"] != "LD_PRELOAD" && env["name"] != "VRAMGUARD_DIR",
                "{env}"
            );
        }
    }
    // No manifest asks for the guard through a Pod annotation (it never reaches a container).
    for path in manifests() {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("cdi.k8s.io/"), "{}", path.display());
    }
}
