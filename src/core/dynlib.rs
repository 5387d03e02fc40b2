//! Opening a shared library at run time and finding its symbols (`dlopen`, `dlsym`, `dlerror`),
//! for the command line's driver probe and the management library client ([`crate::nvml`]).
//!
//! Handles are never closed: a library that started threads or registered callbacks must not be
//! unmapped under them, and every user keeps its library for the life of the process anyway.
//! The preload library does not use this module on its `dlsym` path (which must not allocate).
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_int, c_void};
use std::path::Path;
use std::ptr::NonNull;

/// An open library (never closed, see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Library {
    handle: NonNull<c_void>,
}

// SAFETY: a dlopen handle is a process-wide token that the loader accepts from any thread.
unsafe impl Send for Library {}
// SAFETY: as above; the loader serialises its own work.
unsafe impl Sync for Library {}

/// The last `dlerror()` message of this thread, or `"unknown error"`.
pub fn last_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl* call on
    // this thread; it is copied at once.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        return "unknown error".to_string();
    }
    // SAFETY: non-null and NUL-terminated (see above).
    unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned()
}

impl Library {
    /// `dlopen(path, flags)` (`libc::RTLD_NOW | libc::RTLD_LOCAL`...): a bare name is searched
    /// the way the loader searches (`LD_LIBRARY_PATH`, the cache), a path with a slash is used
    /// as it is. The error is the loader's message.
    pub fn open(path: &Path, flags: c_int) -> Result<Library, String> {
        let name = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| "the path contains a NUL byte".to_string())?;
        // SAFETY: `name` is a valid NUL-terminated string. Opening a library runs its
        // constructors: the caller chose to load this library.
        let handle = unsafe { libc::dlopen(name.as_ptr(), flags) };
        NonNull::new(handle)
            .map(|handle| Library { handle })
            .ok_or_else(last_error)
    }

    /// The address of `symbol`, if the library (or one it depends on) defines it.
    pub fn symbol(&self, symbol: &CStr) -> Option<NonNull<c_void>> {
        // SAFETY: `handle` came from a successful dlopen and is never closed; `symbol` is
        // NUL-terminated.
        NonNull::new(unsafe { libc::dlsym(self.handle.as_ptr(), symbol.as_ptr()) })
    }
}
