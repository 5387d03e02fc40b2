//! The `vramguard` command line (under construction).
fn main() {
    eprintln!("vramguard: the command line is not built yet");
    std::process::exit(2);
}
