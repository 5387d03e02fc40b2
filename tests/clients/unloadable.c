/* A preload library the dynamic loader refuses: it asks libc.so.6 for the symbol version
 * GLIBC_2.99, which no glibc has ("version `GLIBC_2.99' not found"), the way a library built
 * against a newer glibc than the system's fails. Linked against a stub libc.so.6 that defines
 * that version (tests/clients/unloadable_stub.c); built by tests/support/unloadable.rs. */
extern int vramguard_test_future_symbol(void);

int vramguard_unloadable(void) { return vramguard_test_future_symbol(); }
