//! `vramguard cdi` prints a Container Device Interface spec that a JSON schema of the CDI spec file
//! (`tests/cdi-schema/`, written from the specification; validated with the project's Python
//! `jsonschema`) accepts, in YAML and in
//! JSON, with the edits that guard a container: the library mounted read-only where `LD_PRELOAD`
//! points, the host's ledger directory mounted where `VRAMGUARD_DIR` points. The Kubernetes
//! DaemonSet in `deploy/` parses as YAML, says what it must (hostPath ledger per node, the
//! library and the spec on the host), and its own `vramguard cdi` command line produces a valid
//! spec (the rest of the manifests: `tests/deploy_kubernetes.rs`).

#[path = "support/pod_spec.rs"]
mod pod_spec;
mod support;
#[path = "support/unloadable.rs"]
mod unloadable;
#[path = "support/venv.rs"]
mod venv_support;

use pod_spec::host_path;
use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use venv_support::*;

/// Validates each file (YAML or JSON) against the schema in `tests/cdi-schema` and prints it as one JSON line
/// per file; with `--yaml-only`, only parses every YAML document of each file.
const CHECKER: &str = r#"
import json, sys
import jsonschema, yaml
mode, schema_dir, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
schema = json.load(open("%s/cdi-spec.schema.json" % schema_dir))
jsonschema.Draft7Validator.check_schema(schema)
validator = jsonschema.Draft7Validator(schema)
for path in paths:
    with open(path) as f:
        documents = list(yaml.safe_load_all(f))
    if mode == "spec":
        (spec,) = documents
        validator.validate(spec)
        print(json.dumps(spec))
    else:
        print(json.dumps(documents))
"#;

/// Runs the checker; returns one JSON value per file, or the checker's error text.
fn check(mode: &str, files: &[&Path]) -> Result<Vec<Value>, String> {
    require_module("jsonschema");
    require_module("yaml");
    let mut command = Command::new(pytools_python());
    command
        .args(["-c", CHECKER, mode])
        .arg(support::repo().join("tests/cdi-schema"))
        .args(files);
    let output = support::run_with_deadline(command, DEADLINE);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("the checker prints JSON"))
        .collect())
}

/// `vramguard cdi ARGS`, which must succeed; returns stdout.
fn cdi(args: &[&str]) -> String {
    let mut command = Command::new(support::artifacts().cli);
    command.arg("cdi").args(args).env_remove("VRAMGUARD_DIR");
    let stdout = support::stdout_of_success(command, DEADLINE, &format!("vramguard cdi {args:?}"));
    String::from_utf8_lossy(&stdout).into_owned()
}

fn is_name(text: &str, extra: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    text.starts_with(alnum)
        && text.ends_with(alnum)
        && text.chars().all(|c| alnum(c) || extra.contains(c))
}

/// What the specification asks beyond the schema, and what the guard needs: returns the
/// (library, ledger) host paths the spec mounts.
fn assert_guards_a_container(spec: &Value) -> (String, String) {
    let kind = spec["kind"].as_str().unwrap();
    let (vendor, class) = kind.split_once('/').unwrap();
    assert!(vendor.split('.').all(|label| is_name(label, "-")), "{kind}");
    assert!(is_name(class, "-_.") && class.len() <= 63, "{kind}");
    assert_eq!(kind, "vramguard.dev/guard");
    let device = &spec["devices"][0];
    assert_eq!(device["name"], "all");
    let edits = &device["containerEdits"];
    let env: Vec<(&str, &str)> = edits["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().split_once('=').expect("NAME=VALUE"))
        .collect();
    let var = |name: &str| {
        env.iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no {name} in {env:?}"))
            .1
    };
    let mounts = edits["mounts"].as_array().unwrap();
    for mount in mounts {
        for key in ["hostPath", "containerPath"] {
            assert!(mount[key].as_str().unwrap().starts_with('/'), "{mount}");
        }
    }
    let mount_at = |path: &str| {
        mounts
            .iter()
            .find(|m| m["containerPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}: {mounts:?}"))
    };
    let options = |mount: &Value| -> Vec<String> {
        mount["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap().to_string())
            .collect()
    };
    let library = mount_at(var("LD_PRELOAD"));
    assert!(options(library).contains(&"ro".to_string()), "{library}");
    assert!(options(library).contains(&"bind".to_string()), "{library}");
    let ledger = mount_at(var("VRAMGUARD_DIR"));
    assert!(options(ledger).contains(&"rw".to_string()), "{ledger}");
    assert_eq!(ledger["hostPath"], ledger["containerPath"]);
    (
        library["hostPath"].as_str().unwrap().to_string(),
        ledger["hostPath"].as_str().unwrap().to_string(),
    )
}

#[test]
fn the_spec_is_valid_cdi_in_yaml_and_json_and_guards_a_container() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("vramguard.yaml");
    // The library of this build needs this host's glibc (a plain cargo build): said so.
    let host_glibc = ["--oldest-glibc", "2.99"];
    fs::write(&yaml, cdi(&host_glibc)).unwrap();
    let json = dir.path().join("vramguard.json");
    // --output, with the format taken from the extension.
    let said = cdi(&[
        host_glibc[0],
        host_glibc[1],
        "--ledger-dir",
        "/run/vg ledger",
        "--output",
        json.to_str().unwrap(),
    ]);
    assert!(said.contains("wrote"), "{said}");
    let specs = check("spec", &[&yaml, &json]).unwrap_or_else(|e| panic!("invalid spec: {e}"));
    let (library, ledger) = assert_guards_a_container(&specs[0]);
    assert_eq!(
        Path::new(&library),
        support::artifacts().preload.canonicalize().unwrap()
    );
    assert_eq!(ledger, "/dev/shm/vramguard");
    assert!(
        fs::read_to_string(&json)
            .unwrap()
            .trim_start()
            .starts_with('{')
    );
    let (_, ledger) = assert_guards_a_container(&specs[1]);
    assert_eq!(ledger, "/run/vg ledger");

    // The checker does refuse what the schema forbids: a device without its edits.
    let broken = dir.path().join("broken.yaml");
    fs::write(
        &broken,
        "cdiVersion: \"0.3.0\"\nkind: \"vramguard.dev/guard\"\ndevices:\n  - name: \"all\"\n",
    )
    .unwrap();
    let refused = check("spec", &[&broken]).unwrap_err();
    assert!(refused.contains("containerEdits"), "{refused}");

    // A relative library path is refused: a runtime could not mount it.
    let mut command = Command::new(support::artifacts().cli);
    command.args(["cdi", "--library", "lib/libvramguard.so"]);
    let output = support::run_with_deadline(command, DEADLINE);
    assert_eq!(output.status.code(), Some(1));
}

/// The documents of a manifest, parsed.
fn manifest(name: &str) -> Vec<Value> {
    let path = support::repo().join("deploy/kubernetes").join(name);
    let parsed = check("yaml", &[&path]).unwrap_or_else(|e| panic!("{name} is not YAML: {e}"));
    let documents = parsed[0].as_array().unwrap().clone();
    for document in &documents {
        assert!(document["apiVersion"].is_string(), "{name}: {document}");
        assert!(document["kind"].is_string(), "{name}: {document}");
        assert!(
            document["metadata"]["name"].is_string(),
            "{name}: {document}"
        );
    }
    documents
}

#[test]
fn the_daemonset_installs_the_library_and_the_spec_and_keeps_a_ledger_per_node() {
    let documents = manifest("daemonset.yaml");
    let daemonset = documents
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let labels = &daemonset["spec"]["template"]["metadata"]["labels"];
    for (key, value) in daemonset["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&labels[key], value, "the selector does not match the pods");
    }
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(host_path(pod, "ledger"), "/dev/shm/vramguard");
    assert_eq!(host_path(pod, "library"), "/var/lib/vramguard");
    assert_eq!(host_path(pod, "cdi"), "/var/run/cdi");

    // The init container's `vramguard cdi` line, run here with its output moved into a temporary
    // directory, writes a valid spec naming the library where the init container puts it.
    let script = pod["initContainers"][0]["args"][0].as_str().unwrap();
    let line = script
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("vramguard cdi "))
        .expect("the init container runs vramguard cdi");
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = line
        .split_whitespace()
        .skip(2)
        .map(str::to_string)
        .collect();
    let output = args.iter().position(|a| a == "--output").unwrap() + 1;
    assert!(args[output].starts_with("/host/var/run/cdi/"), "{line}");
    let spec_file = dir.path().join("vramguard.yaml");
    args[output] = spec_file.display().to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cdi(&args);
    let spec = &check("spec", &[&spec_file]).unwrap_or_else(|e| panic!("{e}"))[0];
    let (library, ledger) = assert_guards_a_container(spec);
    assert_eq!(library, "/var/lib/vramguard/libvramguard.so");
    assert!(
        script.contains("/host/var/lib/vramguard/libvramguard.so"),
        "{script}"
    );
    assert_eq!(ledger, host_path(pod, "ledger"));

    // The metrics container writes the textfile collector's file through `status --output`.
    let metrics = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "metrics")
        .expect("a metrics container");
    let args: Vec<&str> = metrics["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.starts_with(&["status", "--prometheus"]), "{args:?}");
    assert!(args.contains(&"--output"), "{args:?}");
}

#[test]
fn a_library_newer_than_the_images_glibc_is_refused() {
    let newer = unloadable::unloadable_library(&support::target_dir(), &support::repo());
    let mut command = Command::new(support::artifacts().cli);
    command.arg("cdi").arg("--library").arg(&newer);
    let output = support::run_with_deadline(command, DEADLINE);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("needs glibc 2.99") && said.contains("2.28"),
        "{said}"
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("cdiVersion"));
    // Told that every image has that glibc, it writes the spec.
    let spec = cdi(&[
        "--library",
        newer.to_str().unwrap(),
        "--oldest-glibc",
        "2.99",
    ]);
    assert!(spec.contains(newer.to_str().unwrap()), "{spec}");
}

#[test]
fn with_a_preload_list_the_image_s_ld_preload_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("vramguard.ld.so.preload");
    let spec_file = dir.path().join("vramguard.yaml");
    cdi(&[
        "--oldest-glibc",
        "2.99",
        "--preload-list",
        list.to_str().unwrap(),
        "--output",
        spec_file.to_str().unwrap(),
    ]);
    assert_eq!(
        fs::read_to_string(&list).unwrap(),
        "/opt/vramguard/libvramguard.so\n"
    );
    let spec = &check("spec", &[&spec_file]).unwrap_or_else(|e| panic!("invalid spec: {e}"))[0];
    let edits = &spec["devices"][0]["containerEdits"];
    let env: Vec<&str> = edits["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(env.iter().all(|e| !e.starts_with("LD_PRELOAD=")), "{env:?}");
    assert!(env.contains(&"VRAMGUARD_DIR=/dev/shm/vramguard"), "{env:?}");
    let mounts = edits["mounts"].as_array().unwrap();
    let preload = mounts
        .iter()
        .find(|m| m["containerPath"] == "/etc/ld.so.preload")
        .expect("the list is mounted at /etc/ld.so.preload");
    assert_eq!(preload["hostPath"].as_str(), list.to_str());
    assert!(
        preload["options"]
            .as_array()
            .unwrap()
            .contains(&Value::from("ro"))
    );
    assert!(
        mounts
            .iter()
            .any(|m| m["containerPath"] == "/opt/vramguard/libvramguard.so")
    );
}
