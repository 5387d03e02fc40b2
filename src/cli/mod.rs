//! The command line's grammar (clap) and the dispatch to one module per subcommand.
//!
//! Exit codes are part of the interface; they are listed in `--help` ([`EXIT_CODES`]) and in
//! `docs/usage.md`.

mod atomic_file;
mod cdi;
mod conda;
mod demo;
mod demo_load;
mod doctor;
mod driver;
mod env;
mod format;
mod glibc;
mod host_setup;
mod interpreter;
mod library;
mod manuals;
mod nvml_reader;
mod origin;
mod outside;
mod preload_check;
mod run;
mod slurm;
mod status;
mod systemd;
mod venv;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgGroup, Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// The exit codes, as `--help` prints them.
pub const EXIT_CODES: &str = "\
Exit codes:
  run     the command's own status (128+N when a signal N ended it);
          125 vramguard could not set up the guard (library not found),
          126 the command cannot be executed, 127 the command was not found,
          2 a VRAMGUARD_* setting it would get does not parse (not started)
  status  0 shown or written (also when no guarded process has run yet),
          1 the ledger cannot be read, no ledger fits in its directory, or --output
          cannot be written (--prometheus --watch writes vramguard_ledger_up 0 instead)
  env     0 printed, installed or removed; 1 the library, the virtualenv or the unit is not
          found, or a file cannot be written
  cdi     0 printed or written, 1 the library is not found or --output cannot be written
  doctor  0 every check passed, 1 a check warned or failed
  host-setup 0 set up (or already so) or printed, 1 not root, no such group, or the directory
          cannot be set up
  demo    0 every act showed what it should, 1 otherwise
  man     0 printed or written, 1 --output cannot be written (completions: 0 printed)
  any     2 the command line itself is wrong";

#[derive(Parser, Debug)]
#[command(
    name = "vramguard",
    version,
    about = "Keeps the GPU programs on one card from asking, together, for more VRAM than it has",
    long_about = "Keeps the GPU programs on one card from asking, together, for more VRAM than it \
                  has.\n\nEvery program that loads libvramguard.so (through `vramguard run`, a \
                  virtualenv hook, or a container entrypoint) shares one ledger per machine: an \
                  allocation that would push a card past its budget fails with a clean \
                  CUDA_ERROR_OUT_OF_MEMORY (policy `deny`) or waits for memory (policy `wait`).",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The guard's options, shared by `run` and `env`: each becomes a `VRAMGUARD_*` variable.
#[derive(Args, Debug, Default, Clone)]
pub struct GuardOptions {
    /// What an allocation that does not fit does: fail at once, or wait for memory
    /// [VRAMGUARD_POLICY]
    #[arg(long, value_enum)]
    pub policy: Option<PolicyArg>,
    /// How long a request may wait under `--policy wait` (`30s`, `10m`; `0` forever)
    /// [VRAMGUARD_WAIT_TIMEOUT]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub timeout: Option<String>,
    /// Reserve this much up front at first use of a card, waiting for it as a whole
    /// [VRAMGUARD_EXPECT]
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub expect: Option<String>,
    /// Cap on what the command may hold on each card, context included (`2GiB`, or `25%` of
    /// each card's budget) [VRAMGUARD_LIMIT]
    #[arg(long, value_name = "SIZE", value_parser = parse_amount_arg)]
    pub limit: Option<String>,
    /// Memory kept free on every card for the display and unguarded programs (`256MiB`, `5%`)
    /// [VRAMGUARD_RESERVE]
    #[arg(long, value_name = "SIZE", value_parser = parse_amount_arg)]
    pub reserve: Option<String>,
}

impl GuardOptions {
    /// The options as `VRAMGUARD_*` variables, in a fixed order.
    pub fn variables(&self) -> Vec<(&'static str, String)> {
        let mut vars = Vec::new();
        if let Some(policy) = self.policy {
            vars.push(("VRAMGUARD_POLICY", policy.as_str().to_string()));
        }
        let optional = [
            ("VRAMGUARD_WAIT_TIMEOUT", &self.timeout),
            ("VRAMGUARD_EXPECT", &self.expect),
            ("VRAMGUARD_LIMIT", &self.limit),
            ("VRAMGUARD_RESERVE", &self.reserve),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                vars.push((name, value.clone()));
            }
        }
        vars
    }
}

/// `--policy` values.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyArg {
    /// Fail an allocation that does not fit with CUDA_ERROR_OUT_OF_MEMORY at once
    Deny,
    /// Queue it until memory is freed or the timeout passes
    Wait,
}

impl PolicyArg {
    fn as_str(self) -> &'static str {
        match self {
            PolicyArg::Deny => "deny",
            PolicyArg::Wait => "wait",
        }
    }
}

/// `--shell` values.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShellArg {
    /// POSIX sh, bash, zsh
    #[default]
    Sh,
    /// fish
    Fish,
}

fn parse_size_arg(text: &str) -> Result<String, String> {
    vramguard_core::units::parse_size(text)
        .map(|_| text.trim().to_string())
        .map_err(|e| e.to_string())
}

fn parse_amount_arg(text: &str) -> Result<String, String> {
    vramguard_core::units::parse_amount(text)
        .map(|_| text.trim().to_string())
        .map_err(|e| e.to_string())
}

fn parse_duration_arg(text: &str) -> Result<String, String> {
    vramguard_core::units::parse_duration(text)
        .map(|_| text.trim().to_string())
        .map_err(|e| e.to_string())
}

/// `--watch SECS`: a finite number of seconds above zero (`nan`, `inf`, `0` or a negative
/// number is a usage error, not a panic nor a silent choice).
fn parse_interval_arg(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => Ok(secs),
        Ok(_) => Err(format!(
            "{text:?} is not an interval: give a number of seconds above 0, e.g. 2 or 0.5"
        )),
        Err(_) => Err(format!(
            "{text:?} is not a number of seconds, e.g. 2 or 0.5"
        )),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a command with the guard preloaded; exits with the command's status
    #[command(
        after_help = "Example:\n  vramguard run --policy wait --expect 3GiB -- python extract.py"
    )]
    Run {
        #[command(flatten)]
        guard: GuardOptions,
        /// The command and its arguments (after `--`)
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<OsString>,
    },
    /// Show every card and every guarded process from the ledger (never touches the GPU)
    Status {
        /// Print one JSON object instead of tables
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// Print the Prometheus text format (for a node exporter's textfile collector)
        #[arg(long)]
        prometheus: bool,
        /// Redraw every SECS seconds (default 2) until interrupted
        #[arg(
            long,
            value_name = "SECS",
            num_args = 0..=1,
            default_missing_value = "2",
            value_parser = parse_interval_arg
        )]
        watch: Option<f64>,
        /// Write the report to FILE instead of stdout, atomically (a temporary file in the same
        /// directory, then a rename), e.g. for a node exporter's textfile collector; with
        /// --watch, rewritten every SECS seconds
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print the shell lines that put the guard in place, or install the guard into a virtualenv
    /// or a systemd service, or print a Slurm TaskProlog
    #[command(group(ArgGroup::new("installable").args(["venv", "systemd"])))]
    Env {
        /// The shell the lines are for
        #[arg(long, value_enum, default_value_t = ShellArg::Sh)]
        shell: ShellArg,
        /// Guard every interpreter of this virtualenv or conda environment (`--conda` is the
        /// same), however it is started (a start-up hook in its site-packages), and its activated
        /// shell; set other VRAMGUARD_* variables in your environment as usual
        #[arg(
            long,
            visible_alias = "conda",
            value_name = "PATH",
            conflicts_with_all = ["list", "markdown", "policy", "timeout", "expect", "limit", "reserve"]
        )]
        venv: Option<PathBuf>,
        /// Print the systemd drop-in that preloads the guard (and the options given) into the
        /// service UNIT (`ollama` means ollama.service)
        #[arg(long, value_name = "UNIT", conflicts_with_all = ["list", "markdown"])]
        systemd: Option<String>,
        /// With --systemd: write the drop-in to ROOT/etc/systemd/system/UNIT.d/vramguard.conf
        #[arg(long, requires = "systemd", conflicts_with = "remove")]
        install: bool,
        /// Undo --venv (hook and activate blocks) or --systemd --install completely
        #[arg(long, requires = "installable")]
        remove: bool,
        /// Print the Slurm TaskProlog that guards every task of a job and limits it to its
        /// share of the card (gres/shard shards over the GPU's; the whole card with gres/gpu)
        #[arg(
            long,
            conflicts_with_all = ["venv", "systemd", "list", "markdown", "limit", "shell"]
        )]
        slurm: bool,
        /// With --slurm: write the TaskProlog to FILE (mode 0755, atomically) instead of stdout
        #[arg(long, value_name = "FILE", requires = "slurm")]
        output: Option<PathBuf>,
        /// With --systemd: the file system root the drop-in is written under or removed from
        #[arg(long, value_name = "DIR", requires = "systemd", default_value = "/")]
        root: PathBuf,
        /// List every VRAMGUARD_* setting with its default
        #[arg(long, conflicts_with = "markdown")]
        list: bool,
        /// Print the settings section of docs/usage.md (it is generated from this output)
        #[arg(long)]
        markdown: bool,
        #[command(flatten)]
        guard: GuardOptions,
    },
    /// Print a Container Device Interface spec that guards containers started with
    /// `--device vramguard.dev/guard=all`
    #[command(
        after_help = "Example:\n  sudo vramguard cdi --output /etc/cdi/vramguard.yaml\n  docker run --device vramguard.dev/guard=all --gpus all IMAGE python train.py"
    )]
    Cdi(cdi::CdiArgs),
    /// Check that a preload library can be loaded here (exit 0) or say why not (exit 1)
    PreloadCheck {
        /// The library (default: the one `vramguard run` preloads)
        #[arg(value_name = "LIBRARY")]
        library: Option<PathBuf>,
        /// Write `LD_PRELOAD=...` (the library first, then $LD_PRELOAD) to FILE when it can be
        /// loaded, an empty FILE when not, and exit 0 either way (the systemd drop-in's start
        /// check, whose EnvironmentFile= reads FILE)
        #[arg(long, value_name = "FILE")]
        env_file: Option<PathBuf>,
    },
    /// Make the ledger directory root's, for one group only (shared machines), or print the
    /// tmpfiles.d entry that makes it at every boot
    #[command(
        name = "host-setup",
        after_help = "Example:\n  sudo vramguard host-setup --group video\n  sudo vramguard host-setup --tmpfiles --install"
    )]
    HostSetup(host_setup::HostSetupArgs),
    /// Check the library, the ledger directory, the driver and whether Python is guarded;
    /// explain "CUDA unknown error"
    Doctor,
    /// Tell the three-scripts-on-one-card story on a simulated 4 GiB card (no GPU needed)
    Demo,
    /// Print the shell completion script for SHELL (generated from this command line)
    #[command(
        after_help = "Example:\n  vramguard completions bash > ~/.local/share/bash-completion/completions/vramguard"
    )]
    Completions {
        /// The shell to complete in
        #[arg(value_enum)]
        shell: manuals::CompletionShell,
    },
    /// Print the man page vramguard(1), or write it and one page per subcommand into DIR
    Man {
        /// Write vramguard.1 and vramguard-SUBCOMMAND.1 into DIR (created if missing)
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
    },
    /// One "model load" of the demo: allocates CHUNKS x CHUNK through libcuda.so.1
    #[command(name = "__demo-load", hide = true)]
    DemoLoad(demo_load::LoadArgs),
    /// Doctor's child: opens the driver and reports what it sees
    #[command(name = "__probe-driver", hide = true)]
    ProbeDriver {
        /// The driver library to open
        driver: PathBuf,
    },
    /// Doctor's child: opens a shared library
    #[command(name = "__probe-library", hide = true)]
    ProbeLibrary {
        /// The library to open
        library: PathBuf,
    },
}

/// Parses the command line, runs the subcommand and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { guard, command } => run::run(&guard, &command),
        Command::Status {
            json,
            prometheus,
            watch,
            output,
        } => {
            let format = if json {
                status::Format::Json
            } else if prometheus {
                status::Format::Prometheus
            } else {
                status::Format::Human
            };
            status::status(format, watch, output.as_deref())
        }
        Command::Env {
            shell,
            venv,
            systemd,
            install,
            remove,
            slurm,
            output,
            root,
            list,
            markdown,
            guard,
        } => {
            if list {
                env::print_settings()
            } else if markdown {
                env::print_settings_markdown()
            } else if let Some(venv) = venv {
                if remove {
                    venv::remove(&venv)
                } else {
                    venv::install(&venv)
                }
            } else if slurm {
                slurm::slurm(output.as_deref(), &guard)
            } else if let Some(unit) = systemd {
                if remove {
                    systemd::remove(&unit, &root)
                } else if install {
                    systemd::install(&unit, &guard, &root)
                } else {
                    systemd::print(&unit, &guard)
                }
            } else {
                env::print_lines(shell, &guard)
            }
        }
        Command::Cdi(args) => cdi::cdi(&args),
        Command::PreloadCheck { library, env_file } => {
            preload_check::preload_check_command(library, env_file.as_deref())
        }
        Command::HostSetup(args) => host_setup::host_setup(&args),
        Command::Doctor => doctor::doctor(),
        Command::Demo => demo::demo(),
        Command::Completions { shell } => manuals::print_completions(shell, Cli::command()),
        Command::Man { output } => manuals::man(Cli::command(), output.as_deref()),
        Command::DemoLoad(args) => demo_load::load(&args),
        Command::ProbeDriver { driver } => doctor::probe_driver(&driver),
        Command::ProbeLibrary { library } => doctor::probe_library(&library),
    }
}
