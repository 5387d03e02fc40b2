//! Generates the device plugin API (`proto/deviceplugin/v1beta1/api.proto`, vendored from
//! Kubernetes) for `src/device-plugin/api.rs`: the messages, both services' servers (the plugin
//! serves `DevicePlugin`; the tests' stand-in kubelet serves `Registration`) and both clients.
//! The proto is compiled by `protox`, in Rust, so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/deviceplugin/v1beta1/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
