//! The `vramguard-device-plugin` command: parses its options, then serves and registers with
//! the kubelet until it is stopped (SIGTERM, SIGINT) or the kubelet refuses it; with
//! `--print-allocation`, prints what `Allocate` gives a container and exits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vramguard_core::container::CDI_KIND;
use vramguard_core::settings::Config;
use vramguard_core::units::parse_duration;
use vramguard_device_plugin::guard::{Guard, Mode, response_json};
use vramguard_device_plugin::health::Check;
use vramguard_device_plugin::kubelet::{Meeting, run};
use vramguard_device_plugin::service::{Plugin, health_channel, monitor};

/// A kubelet device plugin: advertises vramguard.dev/guard and puts the vramguard guard into
/// every container that asks for it (resources.limits: vramguard.dev/guard: 1).
#[derive(Parser, Debug)]
#[command(name = "vramguard-device-plugin", version)]
struct Args {
    /// env: the kubelet sets LD_PRELOAD and VRAMGUARD_DIR and mounts the library and the ledger
    /// directory (any kubelet, any runtime). cdi: the container gets the CDI device
    /// vramguard.dev/guard=all (kubelet 1.28+ with CDI devices, a runtime with CDI enabled and
    /// the spec of `vramguard cdi` on the node)
    #[arg(long, value_enum, default_value = "env")]
    mode: Mode,
    /// The node's libvramguard.so (a host path, seen at the same path by this plugin)
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/lib/vramguard/libvramguard.so"
    )]
    library: PathBuf,
    /// The node's ledger directory, mounted at the same path (default: VRAMGUARD_DIR, else
    /// /dev/shm/vramguard)
    #[arg(long, value_name = "DIR")]
    ledger_dir: Option<PathBuf>,
    /// The CDI spec naming the guard (checked in cdi mode)
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/run/cdi/vramguard.yaml"
    )]
    cdi_spec: PathBuf,
    /// How many units to advertise: one per container that asks for the guard, so at least the
    /// most such containers the node will run at once
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    units: u32,
    /// The resource name
    #[arg(long, default_value = CDI_KIND)]
    resource_name: String,
    /// The kubelet's device plugin directory, where the plugin's socket goes
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/lib/kubelet/device-plugins"
    )]
    device_plugin_dir: PathBuf,
    /// The kubelet's registration socket (default: kubelet.sock in --device-plugin-dir)
    #[arg(long, value_name = "PATH")]
    kubelet_socket: Option<PathBuf>,
    /// The name of the plugin's socket in --device-plugin-dir
    #[arg(long, default_value = "vramguard.sock")]
    socket_name: String,
    /// How often the kubelet's socket and the plugin's are looked at (a kubelet restart
    /// replaces both)
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration)]
    poll_interval: Duration,
    /// How often the library, the ledger directory and the CDI spec are checked
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    health_interval: Duration,
    /// Print the answer Allocate gives each container and the sockets, as JSON, and exit
    #[arg(long)]
    print_allocation: bool,
}

fn duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than 0".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let ledger_dir = args
        .ledger_dir
        .clone()
        .unwrap_or_else(|| Config::from_env().0.dir);
    for (what, path) in [
        ("--library", &args.library),
        ("the ledger directory", &ledger_dir),
    ] {
        if !path.is_absolute() {
            eprintln!(
                "vramguard-device-plugin: {what} {} must be an absolute path",
                path.display()
            );
            return ExitCode::from(2);
        }
    }
    if args.socket_name.contains('/') || args.socket_name.is_empty() {
        eprintln!(
            "vramguard-device-plugin: --socket-name must be a file name in --device-plugin-dir"
        );
        return ExitCode::from(2);
    }
    let guard = Guard {
        mode: args.mode,
        library: args.library.clone(),
        ledger_dir: ledger_dir.clone(),
    };
    let kubelet_socket = args
        .kubelet_socket
        .clone()
        .unwrap_or_else(|| args.device_plugin_dir.join("kubelet.sock"));
    if args.print_allocation {
        let answer = serde_json::json!({
            "resource": args.resource_name,
            "mode": args.mode.name(),
            "kubelet_socket": kubelet_socket,
            "socket": args.device_plugin_dir.join(&args.socket_name),
            "container": response_json(&guard.container_response()),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).expect("JSON prints")
        );
        return ExitCode::SUCCESS;
    }
    let check = Check {
        library: args.library.clone(),
        ledger_dir,
        cdi_spec: (args.mode == Mode::Cdi).then(|| args.cdi_spec.clone()),
    };
    let meeting = Meeting {
        kubelet_socket,
        dir: args.device_plugin_dir.clone(),
        socket_name: args.socket_name.clone(),
        resource_name: args.resource_name.clone(),
        poll: args.poll_interval,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("vramguard-device-plugin: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "vramguard-device-plugin: {} units of {} (mode {}), library {}, ledger {}",
        args.units,
        args.resource_name,
        args.mode.name(),
        guard.library.display(),
        guard.ledger_dir.display()
    );
    runtime.block_on(async {
        let (health_tx, health) = health_channel(&check);
        tokio::spawn(monitor(check.clone(), health_tx, args.health_interval));
        let units = args.units as usize;
        let serving = run(&meeting, |stop| Plugin {
            units,
            guard: guard.clone(),
            check: check.clone(),
            health: health.clone(),
            stop,
        });
        let socket = meeting.dir.join(&meeting.socket_name);
        let outcome = tokio::select! {
            outcome = serving => outcome,
            signal = terminated() => {
                eprintln!("vramguard-device-plugin: {signal}: stopping");
                // The socket is ours to remove: the kubelet then stops counting the units.
                let _ = std::fs::remove_file(&socket);
                Ok(())
            }
        };
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(stop) => {
                eprintln!("vramguard-device-plugin: {stop}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Resolves at SIGTERM or SIGINT, naming it.
async fn terminated() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without the handlers the default action (ending the process) applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
