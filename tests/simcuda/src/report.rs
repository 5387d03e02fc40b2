//! What the card went through, for tests and people: devices (capacity, use, peak, refusals,
//! poison) and processes (alive or exited, memory and contexts per device, calls per entry point).

use std::sync::atomic::Ordering::Relaxed;

use serde_json::{Value, json};

use crate::config::{format_pci, format_uuid};
use crate::exports::Entry;
use crate::state::{self, CardState, REFUSAL_HISTORY, SLOT_EXITED, SLOT_LIVE};

/// Builds the report; dead processes' memory is returned to the card first.
pub fn report(card: &CardState) -> Value {
    card.settle();
    let layout = card.layout();
    let count = card.device_count();
    let devices: Vec<Value> = (0..count)
        .map(|index| {
            let device = &layout.devices[index];
            let refused = device.refused_total.load(Relaxed);
            let kept = refused.min(REFUSAL_HISTORY as u64);
            let refusals: Vec<Value> = (refused - kept..refused)
                .map(|n| {
                    let entry = &device.refusals[(n % REFUSAL_HISTORY as u64) as usize];
                    json!({"pid": entry.pid.load(Relaxed), "bytes": entry.bytes.load(Relaxed)})
                })
                .collect();
            json!({
                "index": index,
                "uuid": format_uuid(&state::read_uuid(device)),
                "name": state::read_name(device),
                "pci": format_pci((device.pci_domain.load(Relaxed), device.pci_bus.load(Relaxed), device.pci_device.load(Relaxed))),
                "capacity_bytes": device.capacity.load(Relaxed),
                "used_bytes": device.used.load(Relaxed),
                "peak_bytes": device.peak.load(Relaxed),
                "refused": refused,
                "refusals": refusals,
                "poisoned": device.poisoned.load(Relaxed) != 0,
            })
        })
        .collect();
    let mut processes = Vec::new();
    let mut order: Vec<usize> = (0..state::MAX_SLOTS)
        .filter(|&i| matches!(layout.slots[i].state.load(Relaxed), SLOT_LIVE | SLOT_EXITED))
        .collect();
    order.sort_by_key(|&i| layout.slots[i].taken_at.load(Relaxed));
    for index in order {
        let slot = &layout.slots[index];
        let per_device: Vec<Value> = (0..count)
            .filter(|&d| slot.used[d].load(Relaxed) > 0 || slot.contexts[d].load(Relaxed) > 0)
            .map(|d| {
                json!({
                    "uuid": format_uuid(&state::read_uuid(&layout.devices[d])),
                    "used_bytes": slot.used[d].load(Relaxed),
                    "contexts": slot.contexts[d].load(Relaxed),
                })
            })
            .collect();
        let calls: serde_json::Map<String, Value> = Entry::ALL
            .iter()
            .filter_map(|entry| {
                let n = slot.calls.get(*entry as usize)?.load(Relaxed);
                (n > 0).then(|| (entry.name().to_string(), json!(n)))
            })
            .collect();
        processes.push(json!({
            "pid": slot.pid.load(Relaxed),
            "alive": card.slot_alive(index),
            "devices": per_device,
            "calls": calls,
            "internal_calls": slot.calls[state::INTERNAL_CALLS_COUNTER].load(Relaxed),
        }));
    }
    json!({"state": card.path().display().to_string(), "context_cost_bytes": card.context_cost(), "devices": devices, "processes": processes})
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The report for people.
pub fn render(report: &Value) -> String {
    let mut out = format!(
        "simulated card {}\n",
        report["state"].as_str().unwrap_or("?")
    );
    for device in report["devices"].as_array().into_iter().flatten() {
        let number = |key: &str| device[key].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "device {} {} ({}, pci {}): {} used of {}, peak {}, {} refused{}\n",
            number("index"),
            device["name"].as_str().unwrap_or("?"),
            device["uuid"].as_str().unwrap_or("?"),
            device["pci"].as_str().unwrap_or("?"),
            mib(number("used_bytes")),
            mib(number("capacity_bytes")),
            mib(number("peak_bytes")),
            number("refused"),
            if device["poisoned"].as_bool() == Some(true) {
                ", POISONED (cuInit fails until `simcuda reset`)"
            } else {
                ""
            },
        ));
        for refusal in device["refusals"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  refused pid {} {}\n",
                refusal["pid"],
                mib(refusal["bytes"].as_u64().unwrap_or(0))
            ));
        }
    }
    for process in report["processes"].as_array().into_iter().flatten() {
        let alive = if process["alive"].as_bool() == Some(true) {
            "alive"
        } else {
            "exited"
        };
        out.push_str(&format!("process {} ({alive})\n", process["pid"]));
        for device in process["devices"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  {}: {} in use, {} context(s)\n",
                device["uuid"].as_str().unwrap_or("?"),
                mib(device["used_bytes"].as_u64().unwrap_or(0)),
                device["contexts"]
            ));
        }
        if let Some(calls) = process["calls"].as_object() {
            let list: Vec<String> = calls
                .iter()
                .map(|(name, n)| format!("{name}={n}"))
                .collect();
            out.push_str(&format!("  calls: {}\n", list.join(" ")));
        }
    }
    out
}
