//! `simcuda`: creates, resets and reports the simulated card (same environment as the driver).
//!
//!     simcuda init            create or overwrite the card state from SIMCUDA_* variables
//!     simcuda reset           "reboot": clear poison, allocations, contexts, peaks, refusals
//!     simcuda report [--json] what the card and its processes did
#![deny(unsafe_code)]

use std::process::ExitCode;

use cuda::config::{self, CardSpec};
use cuda::report;
use cuda::state::CardState;

fn run(args: &[String]) -> Result<(), String> {
    let path = config::state_path();
    let spec = || CardSpec::from_env().map_err(|e| e.to_string());
    let open = || CardState::open(&path, CardSpec::from_env).map_err(|e| e.to_string());
    match args.first().map(String::as_str) {
        Some("init") => {
            let card = CardState::create(&path, spec()?).map_err(|e| e.to_string())?;
            println!(
                "simcuda: created {} with {} device(s)",
                card.path().display(),
                card.device_count()
            );
        }
        Some("reset") => {
            let card = open()?;
            card.reset();
            println!("simcuda: reset {}", card.path().display());
        }
        Some("report") => {
            let card = open()?;
            let value = report::report(&card);
            if args.iter().any(|a| a == "--json") {
                println!("{value}");
            } else {
                print!("{}", report::render(&value));
            }
        }
        _ => return Err("usage: simcuda init | reset | report [--json]".to_string()),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("simcuda: {message}");
            ExitCode::FAILURE
        }
    }
}
