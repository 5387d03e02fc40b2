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
        accepts: "size, or percentage of the card's budget (`37.5%`)",
        doc: "Optional cap on what this process may hold on each card, context included. A \
              percentage is of each card's budget (its capacity less VRAMGUARD_RESERVE), as the \
              Slurm TaskProlog of `vramguard env --slurm` sets it from the task's shards.",
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
    Setting {
        name: "VRAMGUARD_TEST_FAULT",
        default: "",
        accepts: "`panic-after-call` or `panic-after-call:NAME,NAME...` (driver function names)",
        doc: "For vramguard's own tests only, never for use: makes the guard's hook of every \
              guarded driver function (or of those named) panic right after the driver's call \
              returns, to show that the program still gets the driver's answer and that the \
              driver is never called twice.",
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
    /// `VRAMGUARD_LIMIT`: bytes, or a percentage of each card's budget ([`Config::limit_on`]).
    pub limit: Option<Amount>,
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
    /// `VRAMGUARD_TEST_FAULT=panic-after-call[:NAME,...]`: the functions whose hook panics after
    /// the driver's call (empty: all); `None` when unset (always, outside vramguard's tests).
    pub test_panic_after_call: Option<Vec<String>>,
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
            "{}={:?} is not valid ({}; it accepts {}): {}",
            self.var,
            self.value,
            self.reason,
            self.accepts,
            instead(self.var)
        )
    }
}

impl std::error::Error for SettingError {}

/// What applies when `var` does not parse, in words: its default, as the guard then behaves.
pub fn instead(var: &str) -> String {
    let words = match var {
        "VRAMGUARD_POLICY" => "allocations that do not fit fail at once (`deny`)",
        "VRAMGUARD_WAIT_TIMEOUT" => "a waiting request fails after 10 minutes (`10m`)",
        "VRAMGUARD_RESERVE" => "256 MiB is kept free on every card (`256MiB`)",
        "VRAMGUARD_LIMIT" => "no per-process limit; the card's budget still applies",
        "VRAMGUARD_EXPECT" => "no up-front reservation; each allocation is admitted on its own",
        "VRAMGUARD_CONTEXT_SIZE" => "a context is estimated at 300 MiB until one is measured",
        "VRAMGUARD_MANAGED" => "managed memory is charged like device memory (`count`)",
        "VRAMGUARD_LOG" => "errors and warnings are said (`warn`)",
        "VRAMGUARD_ON_ERROR" => {
            "when the guard cannot do its job it passes calls through unguarded after one \
             warning (`open`), it does not refuse them"
        }
        "VRAMGUARD_DISABLE" => "the guard stays on",
        "VRAMGUARD_TEST_FAULT" => "no fault is made",
        _ => {
            return format!(
                "using the default `{}`",
                setting(var).map_or("", |s| s.default)
            );
        }
    };
    words.to_string()
}

/// Names that start with `VRAMGUARD_` but are not settings of the guard: read by the command
/// line and the packaging, never by the library.
const NOT_SETTINGS: &[&str] = &[
    "VRAMGUARD_LIBRARY",
    "VRAMGUARD_PYTHON",
    "VRAMGUARD_DOCTOR_ROOT",
];

/// The setting `name` is a misspelling of, when `name` starts with `VRAMGUARD_`, is neither a
/// setting nor another name vramguard reads, and is at most two edits from a setting's name
/// (`VRAMGUARD_POLCY`: `VRAMGUARD_POLICY`). Other unknown names are left alone: tools of
/// their own may use the prefix.
pub fn misspelling_of(name: &str) -> Option<&'static str> {
    let rest = name.strip_prefix("VRAMGUARD_")?;
    if setting(name).is_some() || NOT_SETTINGS.contains(&name) {
        return None;
    }
    SETTINGS
        .iter()
        .map(|s| (edit_distance(rest, &s.name["VRAMGUARD_".len()..]), s.name))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name)
}

/// The message for a misspelt `name` ([`misspelling_of`]).
pub fn misspelling_message(name: &str, meant: &str) -> String {
    format!("{name} is not a vramguard setting and is ignored; did you mean {meant}?")
}

/// Levenshtein distance of two ASCII-case-insensitive names.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<u8> = a.bytes().map(|c| c.to_ascii_uppercase()).collect();
    let b: Vec<u8> = b.bytes().map(|c| c.to_ascii_uppercase()).collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

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

/// `VRAMGUARD_TEST_FAULT`: empty, `panic-after-call`, or `panic-after-call:NAME,NAME...`.
fn parse_test_fault(value: &str) -> Result<Option<Vec<String>>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let Some(rest) = value.strip_prefix("panic-after-call") else {
        return Err("not a fault this build can make".to_string());
    };
    match rest.strip_prefix(':') {
        None if rest.is_empty() => Ok(Some(Vec::new())),
        None => Err("not a fault this build can make".to_string()),
        Some(names) => Ok(Some(
            names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect(),
        )),
    }
}

fn parse_optional_amount(value: &str) -> Result<Option<Amount>, String> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    units::parse_amount(value)
        .map(Some)
        .map_err(|e| e.to_string())
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
    /// The misspelt `VRAMGUARD_*` names of the process environment, each with the setting meant
    /// ([`misspelling_of`]).
    pub fn misspelt_in_env() -> Vec<(String, &'static str)> {
        std::env::vars_os()
            .filter_map(|(name, _)| {
                let name = name.to_str()?.to_string();
                let meant = misspelling_of(&name)?;
                Some((name, meant))
            })
            .collect()
    }

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
            limit: field!("VRAMGUARD_LIMIT", parse_optional_amount),
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
            test_panic_after_call: field!("VRAMGUARD_TEST_FAULT", parse_test_fault),
        };
        (config, errors)
    }

    /// The budget of a card of `capacity` bytes: capacity less the reserve, never below zero.
    pub fn budget_for(&self, capacity: u64) -> u64 {
        capacity.saturating_sub(self.reserve.of(capacity))
    }

    /// The per-process limit in bytes on a card whose budget is `budget` (a percentage is of
    /// the budget), or `None` without a limit.
    pub fn limit_on(&self, budget: u64) -> Option<u64> {
        self.limit.map(|limit| limit.of(budget))
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
        assert_eq!(config.limit, Some(Amount::Bytes(3 << 29)));
        assert_eq!(config.limit_on(1 << 30), Some(3 << 29));
        assert_eq!(config.expect, Some(3 << 30));
        assert!(config.disable);
        assert_eq!(config.log, LogLevel::Debug);
        assert_eq!(config.budget_for(4 << 30), (4u64 << 30) - (4u64 << 30) / 20);
    }

    #[test]
    fn a_percentage_limit_is_a_share_of_each_cards_budget() {
        let (config, errors) =
            config_from(&[("VRAMGUARD_LIMIT", "37.5%"), ("VRAMGUARD_RESERVE", "0")]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(config.limit, Some(Amount::Percent(37.5)));
        // 3 of 8 shares of a 4 GiB budget, and of a 1000-byte one (rounded down).
        assert_eq!(config.limit_on(4 << 30), Some(3 << 29));
        assert_eq!(config.limit_on(1000), Some(375));
        assert_eq!(
            config_from(&[("VRAMGUARD_LIMIT", "100%")]).0.limit_on(7),
            Some(7)
        );
        let (config, errors) = config_from(&[("VRAMGUARD_LIMIT", "101%")]);
        assert_eq!(config.limit, None);
        assert_eq!(errors.len(), 1);
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
    fn an_invalid_value_says_what_applies_instead_in_words() {
        let (_, errors) = config_from(&[
            ("VRAMGUARD_LIMIT", "banana"),
            ("VRAMGUARD_ON_ERROR", "clsoed"),
        ]);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text[0].starts_with("VRAMGUARD_LIMIT=\"banana\" is not valid")
                && text[0].ends_with(": no per-process limit; the card's budget still applies"),
            "{text:?}"
        );
        assert!(
            text[1].contains("passes calls through unguarded"),
            "{text:?}"
        );
        for entry in SETTINGS {
            assert!(!instead(entry.name).is_empty(), "{}", entry.name);
        }
    }

    #[test]
    fn misspelt_names_are_told_with_the_setting_meant() {
        assert_eq!(misspelling_of("VRAMGUARD_POLCY"), Some("VRAMGUARD_POLICY"));
        assert_eq!(
            misspelling_of("VRAMGUARD_on_eror"),
            Some("VRAMGUARD_ON_ERROR")
        );
        assert_eq!(misspelling_of("VRAMGUARD_LIMITS"), Some("VRAMGUARD_LIMIT"));
        assert_eq!(misspelling_of("VRAMGUARD_POLICY"), None);
        assert_eq!(misspelling_of("VRAMGUARD_LIBRARY"), None);
        assert_eq!(misspelling_of("VRAMGUARD_CLI_TEST_ACTOR"), None);
        assert_eq!(misspelling_of("CUDA_VISIBLE_DEVICES"), None);
    }

    #[test]
    fn reserve_larger_than_the_card_leaves_no_budget_without_wrapping() {
        let (config, _) = config_from(&[("VRAMGUARD_RESERVE", "8GiB")]);
        assert_eq!(config.budget_for(4 << 30), 0);
    }
}
