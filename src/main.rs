//! The `vramguard` command line: runs programs under the guard, shows who holds what, puts the
//! guard into shells and virtualenvs, diagnoses the machine and tells the user's story on the
//! simulated card. Each subcommand lives in its own module under `src/cli/`.
#![deny(unsafe_code)]

mod cli;

fn main() {
    std::process::exit(cli::main());
}
