//! The CUDA driver ABI as the guard handles it.
//!
//! `CUresult` is a `#[repr(transparent)]` newtype around `u32` with named constants, never an enum:
//! the driver (or a newer driver) may return codes we do not list, and receiving an unlisted value
//! in a Rust enum is undefined behaviour. Struct layouts of the driver API (allocation properties,
//! array descriptors, pool properties) come from `cudarc::driver::sys`, re-exported here as
//! [`sys`]; [`abi`] holds the `#[repr(C)]` mirrors of them that C callers' pointers are read as.

use std::fmt;

pub mod abi;

pub use cudarc::driver::sys;

/// A driver result code, as returned by every `cu*` function.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CuResult(pub u32);

impl CuResult {
    /// `CUDA_SUCCESS`
    pub const SUCCESS: Self = Self(0);
    /// `CUDA_ERROR_INVALID_VALUE`
    pub const INVALID_VALUE: Self = Self(1);
    /// `CUDA_ERROR_OUT_OF_MEMORY`
    pub const OUT_OF_MEMORY: Self = Self(2);
    /// `CUDA_ERROR_NOT_INITIALIZED`
    pub const NOT_INITIALIZED: Self = Self(3);
    /// `CUDA_ERROR_DEINITIALIZED`
    pub const DEINITIALIZED: Self = Self(4);
    /// `CUDA_ERROR_NO_DEVICE`
    pub const NO_DEVICE: Self = Self(100);
    /// `CUDA_ERROR_INVALID_DEVICE`
    pub const INVALID_DEVICE: Self = Self(101);
    /// `CUDA_ERROR_INVALID_CONTEXT`
    pub const INVALID_CONTEXT: Self = Self(201);
    /// `CUDA_ERROR_CONTEXT_ALREADY_CURRENT`
    pub const CONTEXT_ALREADY_CURRENT: Self = Self(202);
    /// `CUDA_ERROR_INVALID_HANDLE`
    pub const INVALID_HANDLE: Self = Self(400);
    /// `CUDA_ERROR_NOT_FOUND`
    pub const NOT_FOUND: Self = Self(500);
    /// `CUDA_ERROR_NOT_READY`
    pub const NOT_READY: Self = Self(600);
    /// `CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE`
    pub const PRIMARY_CONTEXT_ACTIVE: Self = Self(708);
    /// `CUDA_ERROR_CONTEXT_IS_DESTROYED`
    pub const CONTEXT_IS_DESTROYED: Self = Self(709);
    /// `CUDA_ERROR_NOT_SUPPORTED`
    pub const NOT_SUPPORTED: Self = Self(801);
    /// `CUDA_ERROR_UNKNOWN`
    pub const UNKNOWN: Self = Self(999);

    /// Every code this crate names, with its driver name and the driver's description.
    pub const KNOWN: &'static [(CuResult, &'static str, &'static str)] = &[
        (Self::SUCCESS, "CUDA_SUCCESS", "no error"),
        (
            Self::INVALID_VALUE,
            "CUDA_ERROR_INVALID_VALUE",
            "invalid argument",
        ),
        (
            Self::OUT_OF_MEMORY,
            "CUDA_ERROR_OUT_OF_MEMORY",
            "out of memory",
        ),
        (
            Self::NOT_INITIALIZED,
            "CUDA_ERROR_NOT_INITIALIZED",
            "initialization error",
        ),
        (
            Self::DEINITIALIZED,
            "CUDA_ERROR_DEINITIALIZED",
            "driver shutting down",
        ),
        (
            Self::NO_DEVICE,
            "CUDA_ERROR_NO_DEVICE",
            "no CUDA-capable device is detected",
        ),
        (
            Self::INVALID_DEVICE,
            "CUDA_ERROR_INVALID_DEVICE",
            "invalid device ordinal",
        ),
        (
            Self::INVALID_CONTEXT,
            "CUDA_ERROR_INVALID_CONTEXT",
            "invalid device context",
        ),
        (
            Self::CONTEXT_ALREADY_CURRENT,
            "CUDA_ERROR_CONTEXT_ALREADY_CURRENT",
            "context already current",
        ),
        (
            Self::INVALID_HANDLE,
            "CUDA_ERROR_INVALID_HANDLE",
            "invalid resource handle",
        ),
        (
            Self::NOT_FOUND,
            "CUDA_ERROR_NOT_FOUND",
            "named symbol not found",
        ),
        (Self::NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"),
        (
            Self::PRIMARY_CONTEXT_ACTIVE,
            "CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE",
            "primary context active",
        ),
        (
            Self::CONTEXT_IS_DESTROYED,
            "CUDA_ERROR_CONTEXT_IS_DESTROYED",
            "context is destroyed",
        ),
        (
            Self::NOT_SUPPORTED,
            "CUDA_ERROR_NOT_SUPPORTED",
            "operation not supported",
        ),
        (Self::UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"),
    ];

    /// True for `CUDA_SUCCESS`.
    pub fn is_success(self) -> bool {
        self == Self::SUCCESS
    }

    /// The driver's name for this code (`CUDA_ERROR_OUT_OF_MEMORY`), if this crate knows it.
    pub fn name(self) -> Option<&'static str> {
        Self::KNOWN
            .iter()
            .find(|(code, _, _)| *code == self)
            .map(|(_, name, _)| *name)
    }
}

impl fmt::Debug for CuResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}"),
            None => write!(f, "CUresult({})", self.0),
        }
    }
}

impl fmt::Display for CuResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// `CUdevice`: a device ordinal, as numbered in this process (after `CUDA_VISIBLE_DEVICES`).
pub type CuDevice = i32;
/// `CUdeviceptr`: a device address.
pub type CuDevicePtr = u64;
/// `CUmemGenericAllocationHandle`: a physical allocation of the virtual memory API.
pub type CuMemHandle = u64;

/// A device's UUID as the driver reports it (`CUuuid`), the ledger's key for a physical card.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CuUuid(pub [u8; 16]);

impl fmt::Display for CuUuid {
    /// Prints the form `nvidia-smi -L` and `CUDA_VISIBLE_DEVICES` use: `GPU-xxxxxxxx-xxxx-...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GPU-")?;
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CuUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl CuUuid {
    /// Parses `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (the `GPU-` prefix and dashes optional).
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("GPU-").unwrap_or(text).replace('-', "");
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_codes_are_values_not_undefined_behaviour() {
        let odd = CuResult(12345);
        assert_eq!(odd.name(), None);
        assert_eq!(format!("{odd}"), "CUresult(12345)");
        assert_eq!(
            CuResult::OUT_OF_MEMORY.name(),
            Some("CUDA_ERROR_OUT_OF_MEMORY")
        );
    }

    #[test]
    fn uuid_round_trips_through_its_printed_form() {
        let uuid = CuUuid([
            0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ]);
        let text = uuid.to_string();
        assert_eq!(text, "GPU-deadbeef-0102-0304-0506-0708090a0b0c");
        assert_eq!(CuUuid::parse(&text), Some(uuid));
        assert_eq!(CuUuid::parse("GPU-nothex"), None);
    }
}
