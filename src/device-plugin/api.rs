//! The kubelet's device plugin API, `v1beta1`, generated at build time (`build.rs`) from the
//! vendored `proto/deviceplugin/v1beta1/api.proto` (origin and licence: `proto/README.md`):
//! its messages, the `Registration` service the kubelet serves and the `DevicePlugin` service a
//! plugin serves, each with its server and its client. The plugin uses the `DevicePlugin` server
//! and the `Registration` client; the tests' stand-in kubelet the other two.
#![allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks
)]

tonic::include_proto!("v1beta1");

/// The API version a plugin registers with (`RegisterRequest.version`).
pub const VERSION: &str = "v1beta1";
/// `Device.health` of a unit the kubelet may hand out.
pub const HEALTHY: &str = "Healthy";
/// `Device.health` of a unit the kubelet must not hand out.
pub const UNHEALTHY: &str = "Unhealthy";
