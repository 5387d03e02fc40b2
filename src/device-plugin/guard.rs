//! What the plugin's `Allocate` gives a container that asked for the guard: in CDI mode the CDI
//! device `vramguard.dev/guard=all` (the spec `vramguard cdi` writes on the node, applied by the
//! container runtime); in env mode the same edits given by the kubelet itself: `LD_PRELOAD`
//! naming the library mounted read-only at `/opt/vramguard/libvramguard.so`, and the node's
//! ledger directory mounted at its own path with `VRAMGUARD_DIR` naming it.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::{Value, json};
use vramguard_core::container::{CONTAINER_LIBRARY, cdi_device_name};

use crate::api::{CdiDevice, ContainerAllocateResponse, Mount};

/// How the guard reaches the container.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The kubelet sets the environment and the mounts itself: any kubelet, any runtime
    Env,
    /// The CDI device name: needs a kubelet that passes CDI devices (1.28+ with the
    /// DevicePluginCDIDevices gate, on by default from 1.29) and a runtime with CDI enabled
    Cdi,
}

impl Mode {
    /// The mode's name as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Env => "env",
            Mode::Cdi => "cdi",
        }
    }
}

/// The guard of one node: how it reaches containers and the host paths it mounts.
#[derive(Debug, Clone)]
pub struct Guard {
    /// CDI device names or environment and mounts.
    pub mode: Mode,
    /// The node's `libvramguard.so` (a host path).
    pub library: PathBuf,
    /// The node's one ledger directory (a host path, mounted at the same path).
    pub ledger_dir: PathBuf,
}

impl Guard {
    /// The answer for one container.
    pub fn container_response(&self) -> ContainerAllocateResponse {
        match self.mode {
            Mode::Cdi => ContainerAllocateResponse {
                cdi_devices: vec![CdiDevice {
                    name: cdi_device_name(),
                }],
                ..Default::default()
            },
            Mode::Env => {
                let ledger = self.ledger_dir.to_string_lossy().into_owned();
                ContainerAllocateResponse {
                    envs: HashMap::from([
                        ("LD_PRELOAD".to_string(), CONTAINER_LIBRARY.to_string()),
                        ("VRAMGUARD_DIR".to_string(), ledger.clone()),
                    ]),
                    mounts: vec![
                        Mount {
                            container_path: CONTAINER_LIBRARY.to_string(),
                            host_path: self.library.to_string_lossy().into_owned(),
                            read_only: true,
                        },
                        Mount {
                            container_path: ledger.clone(),
                            host_path: ledger,
                            read_only: false,
                        },
                    ],
                    ..Default::default()
                }
            }
        }
    }
}

/// `response` as JSON (`--print-allocation`), with the proto's field names.
pub fn response_json(response: &ContainerAllocateResponse) -> Value {
    // serde_json's map is ordered by key: the output does not depend on the hash map's order.
    let sorted = |map: &HashMap<String, String>| -> serde_json::Map<String, Value> {
        map.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect()
    };
    json!({
        "envs": sorted(&response.envs),
        "mounts": response.mounts.iter().map(|m| json!({
            "container_path": m.container_path,
            "host_path": m.host_path,
            "read_only": m.read_only,
        })).collect::<Vec<_>>(),
        "devices": response.devices.iter().map(|d| json!({
            "container_path": d.container_path,
            "host_path": d.host_path,
            "permissions": d.permissions,
        })).collect::<Vec<_>>(),
        "annotations": sorted(&response.annotations),
        "cdi_devices": response.cdi_devices.iter().map(|d| json!({"name": d.name}))
            .collect::<Vec<_>>(),
    })
}
