/* TEMPORARY stand-in until the PostgreSQL backend (branch pg) lands: a single node. */
#include <stdlib.h>
#include <unistd.h>

#include "kms/store/store.h"

enum store_backend store_backend(const struct store *s) { (void)s; return STORE_SQLITE; }
kms_err store_set_node(struct store *s, const char *n) { (void)s; (void)n; return KMS_OK; }
kms_err store_changes_since(struct store *s, int64_t a, size_t m, struct store_change **o, size_t *n, bool *g)
{ (void)s; (void)a; (void)m; *o = NULL; *n = 0; *g = false; return KMS_OK; }
kms_err store_changes_head(struct store *s, int64_t *q) { (void)s; *q = 0; return KMS_OK; }
kms_err store_changes_prune(struct store *s, int64_t t) { (void)s; (void)t; return KMS_OK; }
kms_err store_watch_open(const char *p, struct store_watch **o) { (void)p; *o = NULL; return KMS_OK; }
void store_watch_close(struct store_watch *w) { (void)w; }
kms_err store_watch_wait(struct store_watch *w, int t, bool *n) { (void)w; usleep((useconds_t)t * 1000); *n = false; return KMS_OK; }
kms_err store_watch_lease(struct store_watch *w, const char *nm, bool *h) { (void)w; (void)nm; *h = true; return KMS_OK; }
