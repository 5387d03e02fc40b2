//! The interposed `dlsym`: a naked tail-jump trampoline around a tiny decision function.
//!
//! The CUDA runtime does `dlsym(handle, "cuGetProcAddress_v2")` on its own `dlopen` handle, which
//! never sees preloaded symbols; answering that lookup with our wrapper is how the guard reaches
//! the runtime's allocations at all. Every other lookup must behave exactly as if we were not
//! there. glibc resolves `RTLD_NEXT` from the *return address* of the `dlsym` call, so a hook
//! that called the real `dlsym` and returned would make every `RTLD_NEXT` lookup look as if it
//! came from this library (a second interposer would then get its own symbol back and recurse).
//! The trampoline therefore saves the argument registers, asks [`dlsym_decision`], restores them,
//! and either returns our wrapper or *jumps* (not calls) into glibc's `dlsym`, which then sees the
//! original caller's return address.
//!
//! The decision path allocates nothing, takes no lock, uses no `Once`/lazy initialisation and
//! cannot panic: `dlsym` is called by the Rust standard library, the dynamic loader's users and
//! other libraries' constructors, possibly before our own constructor ran.

use std::ffi::{CStr, c_char, c_void};
use std::ptr;

use super::symbols;
use crate::exports::wrapper;
use crate::functions::Func;

/// Decides a `dlsym(handle, name)`: our wrapper, or null for "let the real dlsym answer".
///
/// `RTLD_NEXT` and `RTLD_DEFAULT` are never answered here: the preload order already makes them
/// find our exports first (or, for `RTLD_NEXT` from an earlier interposer, us), which is right.
/// For a real handle, a guarded name that the handle itself defines is answered with our wrapper
/// of that exact name (same ABI).
extern "C" fn dlsym_decision(handle: *mut c_void, name: *const c_char) -> *mut c_void {
    if handle == libc::RTLD_NEXT || handle == libc::RTLD_DEFAULT || name.is_null() {
        return ptr::null_mut();
    }
    if crate::config::is_disabled() {
        return ptr::null_mut();
    }
    // SAFETY: dlsym's contract: `name` is a NUL-terminated string. from_ptr only measures it.
    let name = unsafe { CStr::from_ptr(name) };
    let bytes = name.to_bytes();
    if !bytes.starts_with(b"cu") {
        return ptr::null_mut();
    }
    let Some(func) = Func::by_exact_name(bytes) else {
        return ptr::null_mut();
    };
    // Only a handle that defines the symbol gets an answer (others keep their dlerror).
    if symbols::lookup_in(handle, name).is_none() {
        return ptr::null_mut();
    }
    wrapper(func)
}

/// The exported `dlsym`. See the module documentation.
///
/// # Safety
/// Same contract as glibc's `dlsym`.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void {
    // On entry rsp is 8 mod 16 (return address pushed). Two pushes and 8 bytes of padding make it
    // 0 mod 16 for the calls; rdi and rsi are restored before either exit.
    core::arch::naked_asm!(
        "push rdi",
        "push rsi",
        "sub rsp, 8",
        "call {decide}",
        "test rax, rax",
        "jnz 2f",
        "call {real}",
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        "jmp rax",
        "2:",
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        "ret",
        decide = sym dlsym_decision,
        real = sym symbols::real_dlsym_address,
    )
}

/// The exported `dlsym`. See the module documentation.
///
/// # Safety
/// Same contract as glibc's `dlsym`.
#[cfg(target_arch = "aarch64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void {
    // Frame: x29/x30 (the caller's return address) and x0/x1 saved; the real dlsym is entered
    // with `br`, so x30 again holds the original caller's return address.
    core::arch::naked_asm!(
        "stp x29, x30, [sp, #-32]!",
        "mov x29, sp",
        "stp x0, x1, [sp, #16]",
        "bl {decide}",
        "cbnz x0, 2f",
        "bl {real}",
        "mov x16, x0",
        "ldp x0, x1, [sp, #16]",
        "ldp x29, x30, [sp], #32",
        "br x16",
        "2:",
        "ldp x29, x30, [sp], #32",
        "ret",
        decide = sym dlsym_decision,
        real = sym symbols::real_dlsym_address,
    )
}
