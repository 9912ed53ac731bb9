/* route_match on hostile method and path strings.
 *
 * Input: one flags byte (bit 0: ?list=true), then "<method> <path>" (the method is
 * everything before the first space; no space: the whole rest is the path and the
 * method comes from bits 1-3 of the flags).
 *
 * Properties:
 *   - the result is one of the three values; on ROUTE_OK the op is a real operation
 *     and every parameter is non-empty, lies inside m->buf, holds no '/', appears in
 *     the path as a whole segment, and a tenant never names a reserved mount;
 *   - whether a path is known does not depend on the method (NOT_FOUND for one method
 *     is NOT_FOUND for all); HEAD is GET and PUT is POST;
 *   - one trailing slash is tolerated: "<path>/" gives the same answer and parameters;
 *   - the same call twice gives the same answer (no state). */
#include <string.h>

#include "kms/http/routes.h"
#include "tests/fuzz/fuzz.h"

static const char *const methods[] = {"GET", "POST", "PUT", "LIST", "HEAD", "DELETE", "PATCH", ""};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

static void check_param(const struct route_match *m, const char *path, const char *p)
{
	size_t n;
	const char *at;

	if (p == NULL)
		return;
	CHECK(p >= m->buf && p < m->buf + sizeof(m->buf));
	n = strlen(p);
	CHECK(n > 0 && p + n < m->buf + sizeof(m->buf));
	CHECK(strchr(p, '/') == NULL);
	/* a whole segment of the original path: "/" p followed by "/" or the end */
	for (at = strstr(path, p); at != NULL; at = strstr(at + 1, p))
		if (at > path && at[-1] == '/' && (at[n] == '\0' || at[n] == '/'))
			break;
	CHECK(at != NULL);
}

static void same_match(const struct route_match *a, const struct route_match *b)
{
	CHECK(a->op == b->op);
#define SAME(f) CHECK((a->f == NULL) == (b->f == NULL) && (a->f == NULL || strcmp(a->f, b->f) == 0))
	SAME(tenant);
	SAME(key);
	SAME(name);
	SAME(variant);
	SAME(version);
#undef SAME
}

static enum route_result one(const char *method, int list, const char *path, struct route_match *m)
{
	enum route_result r = route_match(method, list, path, m);

	CHECK(r == ROUTE_OK || r == ROUTE_NOT_FOUND || r == ROUTE_METHOD);
	if (r == ROUTE_OK) {
		CHECK(m->op > KMS_OP_NONE && m->op < KMS_OP__COUNT);
		check_param(m, path, m->tenant);
		check_param(m, path, m->key);
		check_param(m, path, m->name);
		check_param(m, path, m->variant);
		check_param(m, path, m->version);
		if (m->tenant != NULL)
			CHECK(strcmp(m->tenant, "sys") != 0 && strcmp(m->tenant, "auth") != 0);
	}
	return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct route_match *m, *m2;
	enum route_result r, r2;
	char *in, *method, *path, *slash;
	const char *sp;
	int list;
	size_t plen;

	if (size < 1 || size > 4096)
		return 0;
	list = data[0] & 1;
	in = fuzz_dup(data + 1, size - 1, 1);
	sp = memchr(in, ' ', size - 1);
	if (sp != NULL) {
		method = in;
		method[sp - in] = '\0';
		path = method + (sp - in) + 1;
	} else {
		method = (char *)methods[(data[0] >> 1) & 7];
		path = in;
	}
	/* heap, so that ASan sees the buffers' edges */
	m = malloc(sizeof(*m));
	m2 = malloc(sizeof(*m2));
	CHECK(m != NULL && m2 != NULL);

	r = one(method, list, path, m);
	r2 = one(method, list, path, m2);
	CHECK(r == r2);
	if (r == ROUTE_OK)
		same_match(m, m2);

	/* Known paths do not depend on the method. */
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
		r2 = one(methods[i], list, path, m2);
		CHECK((r == ROUTE_NOT_FOUND) == (r2 == ROUTE_NOT_FOUND));
	}
	/* HEAD is GET, PUT is POST. */
	if (strcmp(method, "GET") == 0 || strcmp(method, "POST") == 0) {
		r2 = one(method[0] == 'G' ? "HEAD" : "PUT", list, path, m2);
		CHECK(r == r2);
		if (r == ROUTE_OK)
			same_match(m, m2);
	}

	/* One trailing slash is tolerated. */
	plen = strlen(path);
	if (plen > 0 && path[plen - 1] != '/' && plen + 1 < ROUTE_PATH_MAX) {
		slash = malloc(plen + 2);
		CHECK(slash != NULL);
		memcpy(slash, path, plen);
		slash[plen] = '/';
		slash[plen + 1] = '\0';
		r2 = one(method, list, slash, m2);
		CHECK(r == r2);
		if (r == ROUTE_OK)
			same_match(m, m2);
		free(slash);
	}
	free(m);
	free(m2);
	free(in);
	return 0;
}
