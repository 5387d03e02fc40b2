//! Reading a Kubernetes pod spec (as parsed JSON) in the manifest tests (`tests/cli_cdi.rs`,
//! `tests/deploy_kubernetes.rs`). Included with `#[path = "support/pod_spec.rs"] mod pod_spec;`.

use serde_json::Value;

/// The hostPath of the volume `name` of a pod spec.
pub fn host_path<'a>(pod: &'a Value, name: &str) -> &'a str {
    pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .and_then(|v| v["hostPath"]["path"].as_str())
        .unwrap_or_else(|| panic!("no hostPath volume {name}"))
}
