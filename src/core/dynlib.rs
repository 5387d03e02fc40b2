//! Opening a shared library at run time and finding its symbols, for the command line's driver
//! probe and the management library client ([`crate::nvml`]): a thin layer over `libloading`
//! that keeps two rules of vramguard's.
//!
//! - Handles are never closed: a library that started threads or registered callbacks must not
//!   be unmapped under them, and every user keeps its library for the life of the process anyway.
//! - A failure to open is the loader's own message (`dlerror`), as `doctor` and `status` show it.
//!
//! The preload library does not use this module on its `dlsym` path (which must not allocate).
#![allow(unsafe_code)]

use std::ffi::{CStr, c_int, c_void};
use std::mem::ManuallyDrop;
use std::path::Path;
use std::ptr::NonNull;

use libloading::os::unix;

/// An open library (never closed, see the module docs).
#[derive(Debug)]
pub struct Library {
    library: ManuallyDrop<unix::Library>,
}

impl Library {
    /// `dlopen(path, flags)` (`libc::RTLD_NOW | libc::RTLD_LOCAL`...): a bare name is searched
    /// the way the loader searches (`LD_LIBRARY_PATH`, the cache), a path with a slash is used
    /// as it is. The error is the loader's message.
    pub fn open(path: &Path, flags: c_int) -> Result<Library, String> {
        // SAFETY: opening a library runs its constructors: the caller chose to load this
        // library. It is never closed, so its destructors never run under its users.
        let library = unsafe { unix::Library::open(Some(path), flags) }.map_err(loader_message)?;
        Ok(Library {
            library: ManuallyDrop::new(library),
        })
    }

    /// The address of `symbol`, if the library (or one it depends on) defines it.
    pub fn symbol(&self, symbol: &CStr) -> Option<NonNull<c_void>> {
        // SAFETY: the symbol is read as an untyped address, which is what it is; the callers
        // give it its type.
        let address = unsafe { self.library.get::<*mut c_void>(symbol) }.ok()?;
        NonNull::new(address.into_raw())
    }
}

/// What a failed `dlopen` tells the user.
fn loader_message(error: libloading::Error) -> String {
    match error {
        libloading::Error::DlOpen { source } => source.to_string(),
        libloading::Error::InteriorZeroElements => "the path contains a NUL byte".to_string(),
        _ => "unknown error".to_string(),
    }
}
