/* Unit tests against PostgreSQL: when the environment has KMS_TEST_PG_URI (a server
 * the test may wipe, e.g. one from scripts/pgtmp.sh), the store tests run a second
 * time on it. Each test starts from an empty public schema. */
#ifndef KMS_TESTS_COMMON_PGTEST_H
#define KMS_TESTS_COMMON_PGTEST_H

#include <stdbool.h>

/* The URI, or NULL when the PostgreSQL runs are not wanted. */
const char *pgtest_uri(void);
/* Drops and recreates the public schema. 0, or -1 with a message on stderr. */
int pgtest_reset(void);
/* The store a test opens: on PostgreSQL (on_pg) the URI, after emptying its schema
 * (pgtest_reset); otherwise dir/kmsd.db. 0, or -1 with a message on stderr. */
int pgtest_store_path(bool on_pg, const char *dir, char *out, unsigned long cap);
/* Runs one SQL script on a connection of its own; 0 or -1 (message on stderr). */
int pgtest_exec(const char *sql);
/* Runs a query returning one value into out (text). 0 or -1. */
int pgtest_query(const char *sql, char *out, unsigned long cap);

#endif
