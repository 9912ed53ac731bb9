/* Unit tests of the request path that act as an admin without TOTP: the built-in policy
 * without require_mfa and require_quorum (every require_mfa, require_quorum and
 * mfa_max_age condition removed), written to a file for core_policy_init (the
 * integration harness does the same, tests/integration/conftest.py). */
#ifndef KMS_TESTS_COMMON_NOMFA_H
#define KMS_TESTS_COMMON_NOMFA_H

#include <stddef.h>

/* Writes dir/policy-nomfa.json and its path into path. Returns 0 or -1. */
int test_policy_nomfa_file(const char *dir, char *path, size_t cap);

#endif
