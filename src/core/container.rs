//! Where the guard appears inside a container, the one list shared by everything that puts it
//! there: `vramguard cdi` (the Container Device Interface spec) and the kubelet device plugin
//! (`vramguard-device-plugin`, whose `Allocate` answer names the spec's device or gives the same
//! environment and mounts itself).

/// The CDI kind of the guard: vendor `vramguard.dev`, class `guard`. The device plugin's resource
/// has the same name.
pub const CDI_KIND: &str = "vramguard.dev/guard";
/// The one CDI device: the guard, for whatever GPUs the container gets by other means.
pub const CDI_DEVICE: &str = "all";
/// Where the library appears inside the container (`LD_PRELOAD` names it).
pub const CONTAINER_LIBRARY: &str = "/opt/vramguard/libvramguard.so";

/// The fully qualified CDI device name, `vramguard.dev/guard=all`.
pub fn cdi_device_name() -> String {
    format!("{CDI_KIND}={CDI_DEVICE}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_device_name_is_kind_equals_device() {
        assert_eq!(super::cdi_device_name(), "vramguard.dev/guard=all");
    }
}
