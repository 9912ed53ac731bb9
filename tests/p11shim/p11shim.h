/* p11shim: a PKCS#11 module for tests that forwards every call to a real module and
 * fails chosen calls on command.
 *
 *   KMS_SHIM_TARGET   the real module (default /usr/lib/softhsm/libsofthsm2.so)
 *   KMS_SHIM_CONTROL  the control file; unset or absent: plain forwarding
 *
 * Control file, one rule per line ('#' starts a comment):
 *
 *   <function> <N> <CKR_NAME | number> [once | persist] [close]
 *
 *   C_Encrypt 3 CKR_DEVICE_ERROR once       the 3rd C_Encrypt fails, later ones work
 *   C_GenerateKey 1 CKR_DEVICE_MEMORY persist   every C_GenerateKey from the 1st fails
 *   C_Sign 2 CKR_SESSION_CLOSED once close  ... and the session really is closed
 *
 * N counts the calls of that function since the file was last (re)loaded, from 1. The
 * file is checked on every call and reloaded when it changes (inode, size, mtime or
 * ctime), and a reload resets every counter: writing the file again starts over, and
 * removing it stops all faults. Writers that may rewrite the file within one clock tick
 * should write a new file and rename it over the old one (a new inode), or set its mtime
 * explicitly. Lines that do not parse are reported on stderr and ignored.
 *
 * An injected fault behaves the way the PKCS#11 spec says a failure does: the real
 * function is not called, except that a single-part or final call that fails (C_Encrypt,
 * C_Decrypt, C_Sign, C_Digest, C_Verify, C_*Final, C_SignRecover, C_VerifyRecover) ends
 * the session's active operation, which the shim does by finishing it in the real
 * module into a scratch buffer that is wiped and discarded. `close` also closes the
 * session in the real module before answering, as a token that lost it would.
 *
 * Thread safety: every function may be called from any thread; the counters and rules
 * are behind one mutex, released before the real module is called.
 *
 * For tests in the same process (dlopen the shim, dlsym these): */
#ifndef KMS_TESTS_P11SHIM_H
#define KMS_TESTS_P11SHIM_H

/* Calls of function fn ("C_Encrypt") since the control file was last loaded; checks
 * the file first, like a PKCS#11 call would. 0 for an unknown name. */
unsigned long p11shim_calls(const char *fn);
typedef unsigned long (*p11shim_calls_fn)(const char *fn);

/* Faults injected into fn since the shim was loaded (never reset); fn NULL: all. */
unsigned long p11shim_injected(const char *fn);
typedef unsigned long (*p11shim_injected_fn)(const char *fn);

#endif
