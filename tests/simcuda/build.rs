//! Gives the simulated driver the real driver's soname and binds its internal calls to itself
//! (`-Bsymbolic`), so that a preloaded guard cannot hijack the simulator's own calls.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic");
}
