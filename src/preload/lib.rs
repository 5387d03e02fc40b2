//! `libvramguard.so`: the preload library that keeps the GPU programs on one card from asking,
//! together, for more memory than the card has.
//!
//! Loaded with `LD_PRELOAD` into every GPU process, it intercepts the CUDA driver's allocation,
//! context and information entry points three ways: as exported symbols (programs linked with
//! `-lcuda`), through an interposed `dlsym` (programs that `dlopen` the driver), and through the
//! pointers `cuGetProcAddress` hands out (the CUDA runtime, hence PyTorch, CuPy, TensorFlow...).
//! Every allocation is admitted against the shared ledger (`vramguard_core::ledger`) first.
//! `docs/design.md` explains the whole design.
//!
//! - [`functions`]: the one list of guarded functions, and the exports and slots made from it.
//! - [`dlsym`]: the interposed `dlsym` (a naked tail-jump trampoline).
//! - [`procaddr`]: which guarded variant a `cuGetProcAddress` query names.
//! - [`symbols`]: the real `dlsym`, our handle on the driver, lock-free function slots.
//! - [`hooks`]: the body of each guarded function.
//! - [`guard`]: admission against the ledger and the driver, device identity.
//! - [`headroom`]: when an allocation asks the driver for its free memory.
//! - [`context_cost`]: what a context takes on the card, measured across its creation.
//! - [`current`]: the current context and its device, cached for all threads.
//! - [`tables`]: what this process holds (pointers, handles, arrays, contexts, pools).
//! - [`pointers`]: the map from device pointers to what they hold.
//! - [`layouts`]: the driver structures read, and array sizes.
//! - [`state`]: configuration, lazy attach, fork and exit.
//! - [`pid`]: this process's pid, cached in a page the kernel wipes in forked children.
//! - [`boundary`]: no panic crosses into the host program.
//! - [`log`]: stderr lines prefixed `vramguard: `.

mod boundary;
mod context_cost;
mod current;
mod dlsym;
mod functions;
mod guard;
mod headroom;
mod hooks;
mod layouts;
mod log;
mod pid;
mod pointers;
mod procaddr;
mod state;
mod symbols;
mod tables;
