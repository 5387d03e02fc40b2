//! Gives the simulated management library the real one's soname and binds its internal calls to
//! itself (`-Bsymbolic`), like the simulated driver.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic");
}
