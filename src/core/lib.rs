//! The core of vramguard, shared by the preload library (`libvramguard.so`) and the `vramguard`
//! command line. It holds only what the preload library needs (its dependencies are `libc` and
//! `cudarc`'s types); the command line's parsing and serialisation live in the `vramguard`
//! package.
//!
//! Nothing in this crate exports a C symbol: the hooks live only in the preload crate
//! (`src/preload`), so that the CLI and the test binaries, which link this crate, never intercept
//! their own `dlsym` lookups.
//!
//! - [`cuda`]: the driver ABI as the guard sees it (result codes as a newtype, handle types, and
//!   [`cuda::abi`], the `#[repr(C)]` mirrors of the structures callers pass by pointer).
//! - [`units`]: sizes (`512MiB`, `3.5GiB`, `5%`) and durations (`10m`), parsed and printed.
//! - [`settings`]: the one table of `VRAMGUARD_*` variables and the typed configuration.
//! - [`ledger`]: the shared-memory ledger every guarded process on the machine maps.
//! - [`nvml`]: a client of the NVIDIA management library (the card's used memory and each
//!   process's, without a CUDA context), loaded at run time.
//! - [`dynlib`]: opening a shared library at run time and finding its symbols.
//! - [`container`]: where the guard appears inside a container (CDI and the device plugin).
#![deny(unsafe_code)]

pub mod container;
pub mod cuda;
pub mod dynlib;
pub mod ledger;
pub mod nvml;
pub mod settings;
pub mod units;
