//! The simulated card, as every simulated library sees it: the machine's devices and each
//! process's memory on them, in a card-state file shared by all processes ([`state`]), and the
//! `SIMCUDA_*` configuration ([`config`]).
//!
//! The simulated driver (`tests/simcuda`, `libcuda.so.1`) takes and gives back memory in it; the
//! simulated management library (`tests/simnvml`, `libnvidia-ml.so.1`) reports it. This crate
//! exports no C symbols, so either library can link it without exporting the other's entry points.
#![deny(unsafe_code)]

pub mod config;
pub mod state;
