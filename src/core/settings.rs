//! The one table of `VRAMGUARD_*` settings, and the typed configuration read from it.
//!
//! The preload library reads the environment once, in its constructor; the CLI turns its options
//! into these variables for the programs it runs; `docs/usage.md` and `vramguard env --help` are
//! printed from [`SETTINGS`]. An invalid value never stops the host program: the setting keeps its
//! default and the error, naming the variable, is reported once on stderr.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::units::{self, Amount};

/// One environment variable the guard reads.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The variable's name.
    pub name: &'static str,
    /// The value used when the variable is unset or invalid, as a user would write it.
    pub default: &'static str,
    /// The values it accepts.
    pub accepts: &'static str,
    /// What it does, in one or two sentences.
    pub doc: &'static str,
}

/// Every setting, in the order the docs list them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "VRAMGUARD_POLICY",
        default: "deny",
        accepts: "deny | wait",
        doc: "What happens to an allocation that does not fit: `deny` fails it at once with \
              CUDA_ERROR_OUT_OF_MEMORY; `wait` queues it (first come, first served) until memory \
              is freed or VRAMGUARD_WAIT_TIMEOUT passes. A request larger than the card's budget, or one \
              that would take the process past VRAMGUARD_LIMIT, fails at once under both.",
    },
    Setting {
        name: "VRAMGUARD_WAIT_TIMEOUT",
        default: "10m",
        accepts: "duration (`500ms`, `30s`, `10m`, `1h`); `0` waits forever",
        doc: "How long a request waits under the `wait` policy before it fails with \
              CUDA_ERROR_OUT_OF_MEMORY.",
    },
    Setting {
        name: "VRAMGUARD_RESERVE",
        default: "256MiB",
        accepts: "size (`512MiB`, `1GiB`) or percentage of the card (`5%`)",
        doc: "Memory kept free on every card for the display server and programs the guard does \
              not see. The budget of a card is its capacity less this reserve. Set `0` on a \
              headless server.",
    },
    Setting {
        name: "VRAMGUARD_LIMIT",
        default: "",
        accepts: "size",
        doc: "Optional cap on what this process may hold on each card, context included.",
    },
    Setting {
        name: "VRAMGUARD_EXPECT",
        default: "",
        accepts: "size",
        doc: "Optional up-front reservation: at its first use of a card the process reserves this \
              much (waiting its turn under `wait`), and its allocations draw on it first. Three \
              scripts started at once then run one after another instead of colliding.",
    },
    Setting {
        name: "VRAMGUARD_CONTEXT_SIZE",
        default: "300MiB",
        accepts: "size",
        doc: "The estimate of what a CUDA context (primary or created) takes on the card, \
              admitted before the context exists until a context has been measured on that card. \
              Once created, a context is charged what it was measured to take (see docs/design.md).",
    },
    Setting {
        name: "VRAMGUARD_MANAGED",
        default: "count",
        accepts: "count | ignore",
        doc: "How cuMemAllocManaged is accounted: `count` charges it to the card it is attached \
              to, like device memory (safe); `ignore` passes it through uncounted (it can be paged \
              out by the driver).",
    },
    Setting {
        name: "VRAMGUARD_DIR",
        default: "/dev/shm/vramguard",
        accepts: "directory path",
        doc: "Where the ledger lives. Every process that should share budgets (including \
              containers, through a mounted directory) must use the same directory.",
    },
    Setting {
        name: "VRAMGUARD_GROUP",
        default: "video",
        accepts: "group name or number",
        doc: "The group `vramguard host-setup` makes the ledger directory for (root's, mode 3770): \
              only its members can use the ledger, nobody else can read, write or put anything \
              in it. Read by `host-setup` only, not by the guard.",
    },
    Setting {
        name: "VRAMGUARD_LOG",
        default: "warn",
        accepts: "off | error | warn | info | debug",
        doc: "How much the guard says on stderr. It never writes to stdout.",
    },
    Setting {
        name: "VRAMGUARD_ON_ERROR",
        default: "open",
        accepts: "open | closed",
        doc: "What happens when the guard cannot do its job (ledger unusable, driver odd): `open` \
              passes calls through unguarded after one warning; `closed` refuses allocations with \
              CUDA_ERROR_OUT_OF_MEMORY.",
    },
    Setting {
        name: "VRAMGUARD_DISABLE",
        default: "0",
        accepts: "0 | 1",
        doc: "`1` makes the library a pure pass-through: no ledger, no accounting.",
    },
    Setting {
        name: "VRAMGUARD_DRIVER",
        default: "libcuda.so.1",
        accepts: "library name or path",
        doc: "The driver library the guard opens to find the real functions (for testing against \
              a simulated driver).",
    },
    Setting {
        name: "VRAMGUARD_NVML",
        default: "libnvidia-ml.so.1",
        accepts: "library name or path",
        doc: "The NVIDIA management library (NVML, as `nvidia-smi` uses) that `vramguard status` and \
              `doctor` read the card's used memory from, to show memory held outside the guard. \
              Without it they fall back to the figure guarded processes last learned from the driver.",
    },
];

/// The `VRAMGUARD_POLICY` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Fail a request that does not fit at once.
    Deny,
    /// Queue a request that does not fit until memory is freed or the timeout passes.
    Wait,
}

/// The `VRAMGUARD_LOG` levels, in increasing verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Nothing at all.
    Off,
    /// Only failures of the guard itself.
    Error,
    /// Also refusals, waits and configuration problems.
    Warn,
    /// Also attach and device registration.
    Info,
    /// Also every accounted call.
    Debug,
}

/// The `VRAMGUARD_ON_ERROR` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Pass calls through unguarded, after one warning.
    Open,
    /// Refuse allocations with `CUDA_ERROR_OUT_OF_MEMORY`.
    Closed,
}

/// The `VRAMGUARD_MANAGED` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagedPolicy {
    /// Charge managed memory like device memory.
    Count,
    /// Pass it through uncounted.
    Ignore,
}

/// The guard's configuration, as read from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `VRAMGUARD_POLICY`
    pub policy: Policy,
    /// `VRAMGUARD_WAIT_TIMEOUT`; `None` waits forever.
    pub wait_timeout: Option<Duration>,
    /// `VRAMGUARD_RESERVE`
    pub reserve: Amount,
    /// `VRAMGUARD_LIMIT`
    pub limit: Option<u64>,
    /// `VRAMGUARD_EXPECT`
    pub expect: Option<u64>,
    /// `VRAMGUARD_CONTEXT_SIZE`
    pub context_size: u64,
    /// `VRAMGUARD_MANAGED`
    pub managed: ManagedPolicy,
    /// `VRAMGUARD_DIR`
    pub dir: PathBuf,
    /// `VRAMGUARD_GROUP` (read by `vramguard host-setup` only)
    pub group: String,
    /// `VRAMGUARD_LOG`
    pub log: LogLevel,
    /// `VRAMGUARD_ON_ERROR`
    pub on_error: OnError,
    /// `VRAMGUARD_DISABLE`
    pub disable: bool,
    /// `VRAMGUARD_DRIVER`
    pub driver: PathBuf,
    /// `VRAMGUARD_NVML`
    pub nvml: PathBuf,
}

/// A variable whose value could not be used; its default was used instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// The variable, e.g. `VRAMGUARD_POLICY`.
    pub var: &'static str,
    /// The value found in the environment.
    pub value: String,
    /// What the variable accepts.
    pub accepts: &'static str,
    /// Why the value was refused.
    pub reason: String,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={:?} is not valid ({}); it accepts {}; using the default `{}`",
            self.var,
            self.value,
            self.reason,
            self.accepts,
            setting(self.var).map_or("", |s| s.default)
        )
    }
}

impl std::error::Error for SettingError {}

/// The table entry of a variable.
pub fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

fn parse_keyword<T: Copy>(value: &str, choices: &[(&str, T)]) -> Result<T, String> {
    let wanted = value.trim().to_ascii_lowercase();
    choices
        .iter()
        .find(|(word, _)| *word == wanted)
        .map(|(_, v)| *v)
        .ok_or_else(|| "not one of the accepted words".to_string())
}

fn parse_flag(value: &str) -> Result<bool, String> {
    parse_keyword(
        value,
        &[
            ("1", true),
            ("true", true),
            ("yes", true),
            ("on", true),
            ("0", false),
            ("false", false),
            ("no", false),
            ("off", false),
            ("", false),
        ],
    )
}

fn parse_timeout(value: &str) -> Result<Option<Duration>, String> {
    let duration = units::parse_duration(value).map_err(|e| e.to_string())?;
    Ok(if duration.is_zero() {
        None
    } else {
        Some(duration)
    })
}

/// A path (of a directory or a library): anything but empty.
fn parse_path(value: &str) -> Result<PathBuf, String> {
    if value.trim().is_empty() {
        Err("empty path".to_string())
    } else {
        Ok(PathBuf::from(value))
    }
}

/// A group: a name as `groupadd` accepts it, or a number.
fn parse_group(value: &str) -> Result<String, String> {
    let name = value.trim();
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
    if first_ok && rest_ok {
        Ok(name.to_string())
    } else {
        Err("not a group name or number".to_string())
    }
}

fn parse_optional_size(value: &str) -> Result<Option<u64>, String> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    units::parse_size(value)
        .map(Some)
        .map_err(|e| e.to_string())
}

impl Default for Config {
    fn default() -> Self {
        Config::from_lookup(|_| None).0
    }
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> (Config, Vec<SettingError>) {
        Config::from_lookup(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads the configuration through `lookup` (the environment, or a test's table). Every
    /// invalid value keeps its default and is returned as an error.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> (Config, Vec<SettingError>) {
        let mut errors = Vec::new();
        let read = |var: &'static str| -> String {
            lookup(var).unwrap_or_else(|| setting(var).map_or("", |s| s.default).to_string())
        };
        macro_rules! field {
            ($var:literal, $parse:expr) => {{
                let value = read($var);
                match $parse(value.as_str()) {
                    Ok(v) => v,
                    Err(reason) => {
                        let entry = setting($var).expect("every field is in the table");
                        errors.push(SettingError {
                            var: $var,
                            value: value.clone(),
                            accepts: entry.accepts,
                            reason,
                        });
                        $parse(entry.default).expect("every default parses")
                    }
                }
            }};
        }
        let config = Config {
            policy: field!("VRAMGUARD_POLICY", |v| parse_keyword(
                v,
                &[("deny", Policy::Deny), ("wait", Policy::Wait)]
            )),
            wait_timeout: field!("VRAMGUARD_WAIT_TIMEOUT", parse_timeout),
            reserve: field!("VRAMGUARD_RESERVE", |v: &str| units::parse_amount(v)
                .map_err(|e| e.to_string())),
            limit: field!("VRAMGUARD_LIMIT", parse_optional_size),
            expect: field!("VRAMGUARD_EXPECT", parse_optional_size),
            context_size: field!("VRAMGUARD_CONTEXT_SIZE", |v: &str| units::parse_size(v)
                .map_err(|e| e.to_string())),
            managed: field!("VRAMGUARD_MANAGED", |v| parse_keyword(
                v,
                &[
                    ("count", ManagedPolicy::Count),
                    ("ignore", ManagedPolicy::Ignore)
                ]
            )),
            dir: field!("VRAMGUARD_DIR", parse_path),
            group: field!("VRAMGUARD_GROUP", parse_group),
            log: field!("VRAMGUARD_LOG", |v| parse_keyword(
                v,
                &[
                    ("off", LogLevel::Off),
                    ("error", LogLevel::Error),
                    ("warn", LogLevel::Warn),
                    ("info", LogLevel::Info),
                    ("debug", LogLevel::Debug)
                ]
            )),
            on_error: field!("VRAMGUARD_ON_ERROR", |v| parse_keyword(
                v,
                &[("open", OnError::Open), ("closed", OnError::Closed)]
            )),
            disable: field!("VRAMGUARD_DISABLE", parse_flag),
            driver: field!("VRAMGUARD_DRIVER", parse_path),
            nvml: field!("VRAMGUARD_NVML", parse_path),
        };
        (config, errors)
    }

    /// The budget of a card of `capacity` bytes: capacity less the reserve, never below zero.
    pub fn budget_for(&self, capacity: u64) -> u64 {
        capacity.saturating_sub(self.reserve.of(capacity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config_from(pairs: &[(&str, &str)]) -> (Config, Vec<SettingError>) {
        let table: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| table.get(name).cloned())
    }

    #[test]
    fn defaults_match_the_table() {
        let (config, errors) = config_from(&[]);
        assert!(errors.is_empty());
        assert_eq!(config.policy, Policy::Deny);
        assert_eq!(config.wait_timeout, Some(Duration::from_secs(600)));
        assert_eq!(config.reserve, Amount::Bytes(256 << 20));
        assert_eq!(config.limit, None);
        assert_eq!(config.context_size, 300 << 20);
        assert_eq!(config.dir, PathBuf::from("/dev/shm/vramguard"));
        assert_eq!(config.on_error, OnError::Open);
        assert!(!config.disable);
        assert_eq!(config.driver, PathBuf::from("libcuda.so.1"));
        assert_eq!(config.nvml, PathBuf::from("libnvidia-ml.so.1"));
    }

    #[test]
    fn every_table_entry_is_read_and_every_default_parses() {
        // A garbage value for each variable either parses (free-form paths) or is reported with
        // that variable's name; none makes reading panic.
        for entry in SETTINGS {
            let (_, errors) = config_from(&[(entry.name, "\u{1}garbage")]);
            assert!(errors.iter().all(|e| e.var == entry.name), "{errors:?}");
            let free_form = ["_DIR", "_DRIVER", "_NVML"];
            if !free_form.iter().any(|suffix| entry.name.ends_with(suffix)) {
                assert_eq!(errors.len(), 1, "{} accepted garbage", entry.name);
                assert!(errors[0].to_string().contains(entry.name));
            }
        }
    }

    #[test]
    fn values_are_read() {
        let (config, errors) = config_from(&[
            ("VRAMGUARD_POLICY", "WAIT"),
            ("VRAMGUARD_WAIT_TIMEOUT", "0"),
            ("VRAMGUARD_RESERVE", "5%"),
            ("VRAMGUARD_LIMIT", "1.5GiB"),
            ("VRAMGUARD_EXPECT", "3GiB"),
            ("VRAMGUARD_DISABLE", "1"),
            ("VRAMGUARD_LOG", "debug"),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(config.policy, Policy::Wait);
        assert_eq!(config.wait_timeout, None);
        assert_eq!(config.limit, Some(3 << 29));
        assert_eq!(config.expect, Some(3 << 30));
        assert!(config.disable);
        assert_eq!(config.log, LogLevel::Debug);
        assert_eq!(config.budget_for(4 << 30), (4u64 << 30) - (4u64 << 30) / 20);
    }

    #[test]
    fn invalid_values_keep_the_default_and_name_the_variable() {
        let (config, errors) =
            config_from(&[("VRAMGUARD_POLICY", "maybe"), ("VRAMGUARD_RESERVE", "lots")]);
        assert_eq!(config.policy, Policy::Deny);
        assert_eq!(config.reserve, Amount::Bytes(256 << 20));
        assert_eq!(errors.len(), 2);
        let text = errors[0].to_string();
        assert!(
            text.contains("VRAMGUARD_POLICY")
                && text.contains("maybe")
                && text.contains("deny | wait"),
            "{text}"
        );
    }

    #[test]
    fn reserve_larger_than_the_card_leaves_no_budget_without_wrapping() {
        let (config, _) = config_from(&[("VRAMGUARD_RESERVE", "8GiB")]);
        assert_eq!(config.budget_for(4 << 30), 0);
    }
}
