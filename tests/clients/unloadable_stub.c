/* The stub libc.so.6 tests/clients/unloadable.c links against: it defines one symbol at the
 * version GLIBC_2.99 (tests/support/unloadable.rs gives it the version script), so the library
 * linked against it needs that version from the real libc.so.6 at run time. Never loaded. */
int vramguard_test_future_symbol(void) { return 0; }
