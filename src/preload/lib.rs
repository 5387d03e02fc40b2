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
//! The modules follow a call's path, from the program to the driver:
//! - [`functions`]: the one list of guarded functions with their `cuGetProcAddress` cut-offs;
//!   everything below that names a function is generated from it.
//! - [`exports`]: the exported driver symbols, each a panic boundary ([`boundary`]) around its
//!   hook; what `dlsym` and `cuGetProcAddress` answers hand out.
//! - [`lookup`]: the interposed `dlsym`, the `cuGetProcAddress` answers, and the real functions.
//! - [`hooks`]: the body of each guarded function, one file per API family.
//! - [`admission`]: devices, admission against the ledger and the driver, claims, contexts'
//!   cost, messages.
//! - [`process`]: this process in the ledger: attachment, fork and exit, what it holds.
//! - [`driver`]: the helper driver calls the guard makes itself, the current context.
//! - [`config`], [`log`], [`pid`]: configuration read once, stderr lines, the cached pid.
//!
//! Lower layers never reach up: `log`, `pid`, `config` and `lookup::symbols` use nothing above
//! them, and symbol lookup returns its errors for the layers above to say. The one import circle
//! is the one the one-list design implies: the exports call the hooks, and the lookup hooks hand
//! out the exports.

mod admission;
mod boundary;
mod config;
mod driver;
mod exports;
mod functions;
mod hooks;
mod log;
mod lookup;
mod pid;
mod process;
