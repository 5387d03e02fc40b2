//! The `VRAMGUARD_*` configuration, read once: by the constructor (children such as shells and
//! compilers inherit `LD_PRELOAD` and must pay for nothing else), or by a hook that runs before
//! it. It also sets the log level ([`crate::log`]) and the disabled flag the `dlsym` path reads
//! without a lock.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use vramguard_core::settings::{self, Config, LogLevel};

use crate::log;

const MODE_UNKNOWN: u8 = 0;
const MODE_ENABLED: u8 = 1;
const MODE_DISABLED: u8 = 2;

/// Whether `VRAMGUARD_DISABLE` is on; readable without locks (the `dlsym` path uses it).
static MODE: AtomicU8 = AtomicU8::new(MODE_UNKNOWN);
static CONFIG: OnceLock<(Config, Vec<String>)> = OnceLock::new();
static SETTING_ERRORS_REPORTED: AtomicBool = AtomicBool::new(false);
/// Whether `VRAMGUARD_TEST_FAULT` asks for a fault (read without a lock after every driver call).
static TEST_FAULT_ARMED: AtomicBool = AtomicBool::new(false);

#[ctor::ctor(unsafe)]
fn read_configuration_at_load() {
    let _ = config();
}

/// The configuration and the messages about invalid values, read once.
fn configuration() -> &'static (Config, Vec<String>) {
    CONFIG.get_or_init(|| {
        let (config, errors) = Config::from_env();
        log::set_level(config.log);
        MODE.store(
            if config.disable {
                MODE_DISABLED
            } else {
                MODE_ENABLED
            },
            Ordering::Release,
        );
        TEST_FAULT_ARMED.store(config.test_panic_after_call.is_some(), Ordering::Release);
        let mut messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        messages.extend(
            Config::misspelt_in_env()
                .iter()
                .map(|(name, meant)| settings::misspelling_message(name, meant)),
        );
        (config, messages)
    })
}

/// The configuration, read from the environment on first use.
pub fn config() -> &'static Config {
    &configuration().0
}

/// Says once, at the first CUDA call, which settings were invalid. Not in the constructor: the
/// shells and compilers that inherit `LD_PRELOAD` but never use CUDA stay silent.
pub fn report_setting_errors() {
    if SETTING_ERRORS_REPORTED.load(Ordering::Acquire)
        || SETTING_ERRORS_REPORTED.swap(true, Ordering::AcqRel)
    {
        return;
    }
    let (config, errors) = configuration();
    if config.log >= LogLevel::Warn {
        for error in errors {
            log::line(error);
        }
    }
}

/// True when `VRAMGUARD_DISABLE=1`: every hook passes straight through. False before the
/// configuration is read.
pub fn is_disabled() -> bool {
    MODE.load(Ordering::Acquire) == MODE_DISABLED
}

/// After the driver answered a call to `function`: panics when `VRAMGUARD_TEST_FAULT` asks for
/// a panic after that function's call (vramguard's own tests of [`crate::boundary`]); otherwise
/// one relaxed load.
#[inline]
pub fn test_fault_after_call(function: &str) {
    if !TEST_FAULT_ARMED.load(Ordering::Relaxed) {
        return;
    }
    if let Some(functions) = &config().test_panic_after_call
        && (functions.is_empty() || functions.iter().any(|f| f == function))
    {
        panic!("VRAMGUARD_TEST_FAULT: a panic after the driver's {function}");
    }
}
