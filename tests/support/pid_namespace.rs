//! Running a program as pid 1 of a new pid namespace, as in a container: the `unshare`
//! arguments for the liveness tests across pid namespaces. Shared by `support` (`mod.rs`) and
//! the ledger tests' `ledger_support`, which are included by different tests.
//!
//! A pid namespace needs `CAP_SYS_ADMIN`: as root `unshare` makes it directly; any other user
//! first makes a user namespace that maps them to root inside (`--map-root-user`), so the tests
//! run whoever runs them.

/// `unshare` arguments that run the program after them (and `--`) in a new pid namespace,
/// killed with `unshare` (`--kill-child`).
pub fn unshare_pid_args() -> Vec<&'static str> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut args = if root {
        Vec::new()
    } else {
        vec!["--user", "--map-root-user"]
    };
    args.extend(["--pid", "--fork", "--kill-child"]);
    args
}
