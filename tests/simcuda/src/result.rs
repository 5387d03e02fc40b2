//! `CUresult` as the simulator returns it: a `#[repr(transparent)]` newtype over `u32` (never an
//! enum: callers may pass codes we do not list), with the driver's names and descriptions.

use std::ffi::CStr;

/// A driver result code.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CuResult(pub u32);

macro_rules! codes {
    ($( $constant:ident = $value:literal, $name:literal, $text:literal; )*) => {
        impl CuResult {
            $(
                #[doc = $name]
                pub const $constant: CuResult = CuResult($value);
            )*
            /// Every code the simulator knows: (code, name, description), NUL-terminated for C.
            pub const TABLE: &'static [(CuResult, &'static CStr, &'static CStr)] = &[
                $( (CuResult($value), match CStr::from_bytes_with_nul(concat!($name, "\0").as_bytes()) { Ok(s) => s, Err(_) => panic!() },
                    match CStr::from_bytes_with_nul(concat!($text, "\0").as_bytes()) { Ok(s) => s, Err(_) => panic!() }), )*
            ];
        }
    };
}

codes! {
    SUCCESS = 0, "CUDA_SUCCESS", "no error";
    INVALID_VALUE = 1, "CUDA_ERROR_INVALID_VALUE", "invalid argument";
    OUT_OF_MEMORY = 2, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory";
    NOT_INITIALIZED = 3, "CUDA_ERROR_NOT_INITIALIZED", "initialization error";
    DEINITIALIZED = 4, "CUDA_ERROR_DEINITIALIZED", "driver shutting down";
    NO_DEVICE = 100, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected";
    INVALID_DEVICE = 101, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal";
    INVALID_CONTEXT = 201, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context";
    CONTEXT_ALREADY_CURRENT = 202, "CUDA_ERROR_CONTEXT_ALREADY_CURRENT", "context already current";
    INVALID_HANDLE = 400, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle";
    NOT_FOUND = 500, "CUDA_ERROR_NOT_FOUND", "named symbol not found";
    NOT_READY = 600, "CUDA_ERROR_NOT_READY", "device not ready";
    PRIMARY_CONTEXT_ACTIVE = 708, "CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE", "primary context active";
    CONTEXT_IS_DESTROYED = 709, "CUDA_ERROR_CONTEXT_IS_DESTROYED", "context is destroyed";
    NOT_SUPPORTED = 801, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported";
    UNKNOWN = 999, "CUDA_ERROR_UNKNOWN", "unknown error";
}

impl CuResult {
    /// The driver's name and description of this code, if known.
    pub fn describe(self) -> Option<(&'static CStr, &'static CStr)> {
        Self::TABLE
            .iter()
            .find(|(code, _, _)| *code == self)
            .map(|(_, name, text)| (*name, *text))
    }
}

impl From<Result<(), CuResult>> for CuResult {
    fn from(outcome: Result<(), CuResult>) -> CuResult {
        outcome.err().unwrap_or(CuResult::SUCCESS)
    }
}
