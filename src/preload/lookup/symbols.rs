//! Finding real functions: the real `dlsym`, our own handle on the driver, and lock-free slots.
//! Failures are returned, never said: the layers above decide what the user is told.
//!
//! Everything here is resolved lazily and cached in an `AtomicPtr`: two threads racing to resolve
//! the same slot compute the same value, so no lock or `Once` is needed (the `dlsym` hook may run
//! before any constructor, on any thread).

use std::ffi::{CStr, c_char, c_void};
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, Ordering};

/// A function looked up by name on first use and cached.
pub struct Symbol {
    name: &'static str,
    address: AtomicPtr<c_void>,
}

impl Symbol {
    /// A slot for `name`, which must end with a NUL.
    pub const fn new(name: &'static str) -> Symbol {
        Symbol {
            name,
            address: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// The function a call is forwarded to: the next definition after this library (a second
    /// interposer loaded after us, or the driver when it is in the global scope), else the
    /// driver's symbol from our own handle.
    #[inline]
    pub fn resolve(&self) -> Option<*mut c_void> {
        let cached = self.address.load(Ordering::Acquire);
        if !cached.is_null() {
            return Some(cached);
        }
        self.resolve_first()
    }

    /// Uses `answered` (a driver's lookup answer of this function's ABI) when no definition of
    /// the name can be found. Cold: only the first lookup of a variant the driver does not export.
    pub fn adopt(&self, answered: *mut c_void) {
        if answered.is_null() || self.resolve().is_some() {
            return;
        }
        // A racing adopter stores a pointer of the same function: either one will do.
        let _ = self.address.compare_exchange(
            ptr::null_mut(),
            answered,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    #[cold]
    #[inline(never)]
    fn resolve_first(&self) -> Option<*mut c_void> {
        // Make sure the driver is loaded (and global) before asking for the next definition.
        let from_driver = driver_symbol(self.name).ok().flatten();
        let found = next_symbol(self.name).or(from_driver)?;
        self.address.store(found, Ordering::Release);
        Some(found)
    }
}

/// The address of the real `dlsym` (glibc's), resolved once with `dlvsym` and cached.
static REAL_DLSYM: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());

/// Stands in for `dlsym` if glibc's cannot be found: finds nothing.
extern "C" fn missing_dlsym(_handle: *mut c_void, _name: *const c_char) -> *mut c_void {
    ptr::null_mut()
}

/// The real `dlsym`. Never null (a function that finds nothing if glibc's is unreachable).
/// Called from the `dlsym` trampoline: no allocation, no lock.
pub extern "C" fn real_dlsym_address() -> *mut c_void {
    let cached = REAL_DLSYM.load(Ordering::Acquire);
    if !cached.is_null() {
        return cached;
    }
    let mut found = ptr::null_mut();
    for version in [c"GLIBC_2.34", c"GLIBC_2.2.5", c"GLIBC_2.17"] {
        // SAFETY: both strings are NUL-terminated literals; dlvsym is not interposed by us, so
        // RTLD_NEXT here names the definition after this library, glibc's own.
        found = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), version.as_ptr()) };
        if !found.is_null() {
            break;
        }
    }
    if found.is_null() {
        found = missing_dlsym as *const () as *mut c_void;
    }
    REAL_DLSYM.store(found, Ordering::Release);
    found
}

/// Calls the real `dlsym`.
fn call_real_dlsym(handle: *mut c_void, name: &CStr) -> Option<*mut c_void> {
    type Dlsym = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;
    // SAFETY: real_dlsym_address returns glibc's dlsym (or missing_dlsym), both of this signature.
    let dlsym: Dlsym = unsafe { std::mem::transmute::<*mut c_void, Dlsym>(real_dlsym_address()) };
    // SAFETY: `name` is a valid C string; `handle` is RTLD_NEXT or a handle from dlopen.
    let found = unsafe { dlsym(handle, name.as_ptr()) };
    (!found.is_null()).then_some(found)
}

/// `name` (NUL-terminated) as a C string; `None` for a malformed constant.
fn c_str(name: &'static str) -> Option<&'static CStr> {
    CStr::from_bytes_with_nul(name.as_bytes()).ok()
}

/// The definition of `name` that comes after this library in the lookup order.
pub fn next_symbol(name: &'static str) -> Option<*mut c_void> {
    call_real_dlsym(libc::RTLD_NEXT, c_str(name)?)
}

/// Looks `name` up in another library's handle with the real `dlsym`.
pub fn lookup_in(handle: *mut c_void, name: &CStr) -> Option<*mut c_void> {
    call_real_dlsym(handle, name)
}

static DRIVER_HANDLE: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
/// Why the driver could not be opened (set once, at the first failure).
static DRIVER_MISSING: OnceLock<String> = OnceLock::new();

/// Our own handle on the driver: `dlopen(VRAMGUARD_DRIVER or "libcuda.so.1", RTLD_NOW |
/// RTLD_GLOBAL)`, or why it cannot be opened (the path and the loader's reason; the first failure
/// is kept, and the caller says it).
pub fn driver_handle() -> Result<*mut c_void, &'static str> {
    let cached = DRIVER_HANDLE.load(Ordering::Acquire);
    if !cached.is_null() {
        return Ok(cached);
    }
    if let Some(reason) = DRIVER_MISSING.get() {
        return Err(reason);
    }
    open_driver()
}

#[cold]
#[inline(never)]
fn open_driver() -> Result<*mut c_void, &'static str> {
    let path = &crate::config::config().driver;
    let missing = |reason: String| {
        Err(DRIVER_MISSING
            .get_or_init(|| format!("`{}` ({reason})", path.display()))
            .as_str())
    };
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return missing("the path holds a NUL byte".into());
    };
    // SAFETY: c_path is a valid C string; dlopen has no other precondition.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        return missing(dlerror_text());
    }
    // A racing thread may have stored the same handle (dlopen counts references): harmless.
    DRIVER_HANDLE.store(handle, Ordering::Release);
    Ok(handle)
}

/// The driver's own symbol `name` (NUL-terminated) from our handle: `Ok(None)` when the driver
/// lacks it, `Err` when the driver cannot be opened ([`driver_handle`]).
pub fn driver_symbol(name: &'static str) -> Result<Option<*mut c_void>, &'static str> {
    let handle = driver_handle()?;
    Ok(c_str(name).and_then(|name| lookup_in(handle, name)))
}

/// glibc's text for the last `dl*` failure of this thread.
fn dlerror_text() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl* call.
    let text = unsafe { libc::dlerror() };
    if text.is_null() {
        return "unknown error".into();
    }
    // SAFETY: non-null, NUL-terminated, read immediately.
    unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_answer_is_adopted_only_for_a_name_nobody_defines() {
        extern "C" fn answer() {}
        let answered = answer as *const () as *mut c_void;
        // No library defines this name: the driver's answer becomes the slot's function.
        let missing = Symbol::new("cuVramguardTestNoSuchFunction\0");
        assert_eq!(missing.resolve(), None);
        missing.adopt(answered);
        assert_eq!(missing.resolve(), Some(answered));
        // A name that is defined keeps its definition.
        let defined = Symbol::new("getpid\0");
        let own = defined.resolve().expect("libc defines getpid");
        defined.adopt(answered);
        assert_eq!(defined.resolve(), Some(own));
        assert_ne!(own, answered);
    }
}
