//! `vramguard-device-plugin`: a kubelet device plugin (API `v1beta1`) that advertises the
//! resource `vramguard.dev/guard` on a node and puts the guard into every container that asks
//! for it (`resources.limits: {vramguard.dev/guard: 1}`), sharing the node's one ledger. This is
//! the way the kubelet supports putting something into a container: a Pod's annotations reach
//! only its sandbox, never its containers.
//!
//! - [`api`]: the API, generated from the vendored Kubernetes proto.
//! - [`guard`]: what a container gets (CDI device names, or the environment and mounts).
//! - [`health`]: whether the node can give the guard (library, ledger directory, CDI spec).
//! - [`service`]: the `DevicePlugin` service.
//! - [`kubelet`]: serving, registering, and registering again after a kubelet restart.
//! - [`unix`]: gRPC over unix sockets.
//!
//! Its gRPC stack lives only here: the preload library and the `vramguard` command line do not
//! link it.
#![deny(unsafe_code)]

pub mod api;
pub mod guard;
pub mod health;
pub mod kubelet;
pub mod service;
pub mod unix;
