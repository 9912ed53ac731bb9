#include "kms/http/routes.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

enum { M_GET = 1, M_POST = 2, M_LIST = 4 };

/* Segments: a literal, or ":t" tenant, ":k" key, ":n" principal name, ":v" variant,
 * ":r" key version.
 * Order matters: sys and auth routes come before the tenant routes that would
 * otherwise swallow them. */
static const struct route {
	unsigned method;
	const char *pattern;
	enum kms_op op;
} routes[] = {
	{M_GET, "/v1/sys/health", KMS_OP_HEALTH},
	{M_LIST, "/v1/sys/tenants", KMS_OP_TENANT_LIST},
	{M_POST, "/v1/sys/tenants/:n", KMS_OP_TENANT_CREATE},
	{M_GET, "/v1/sys/tenants/:n", KMS_OP_TENANT_READ},
	{M_POST, "/v1/sys/tenants/:n/config", KMS_OP_TENANT_CONFIG},
	{M_LIST, "/v1/sys/principals", KMS_OP_PRINCIPAL_LIST},
	{M_POST, "/v1/sys/principals/:n", KMS_OP_PRINCIPAL_CREATE},
	{M_GET, "/v1/sys/principals/:n", KMS_OP_PRINCIPAL_READ},
	{M_POST, "/v1/sys/principals/:n/tokens", KMS_OP_TOKEN_CREATE},
	{M_POST, "/v1/sys/principals/:n/certs", KMS_OP_PRINCIPAL_CERT_ADD},
	{M_GET | M_LIST, "/v1/sys/principals/:n/certs", KMS_OP_PRINCIPAL_CERT_LIST},
	{M_POST, "/v1/sys/principals/:n/certs/revoke", KMS_OP_PRINCIPAL_CERT_REVOKE},
	{M_POST, "/v1/sys/tokens/revoke", KMS_OP_TOKEN_REVOKE},
	{M_GET, "/v1/sys/policy", KMS_OP_POLICY_READ},
	{M_POST, "/v1/sys/policy", KMS_OP_POLICY_WRITE},
	{M_POST, "/v1/sys/audit/hash", KMS_OP_AUDIT_HASH},
	{M_POST, "/v1/sys/audit-hash/:n", KMS_OP_AUDIT_HASH}, /* Vault's path; :n is ignored */
	{M_GET, "/v1/sys/metrics", KMS_OP_METRICS},
	{M_GET | M_LIST, "/v1/sys/approvals", KMS_OP_APPROVAL_LIST},
	{M_GET, "/v1/sys/approvals/:n", KMS_OP_APPROVAL_READ},
	{M_POST, "/v1/sys/approvals/:n/approve", KMS_OP_APPROVAL_APPROVE},
	{M_POST, "/v1/sys/approvals/:n/deny", KMS_OP_APPROVAL_DENY},
	{M_POST, "/v1/sys/break-glass", KMS_OP_BREAKGLASS_ACTIVATE},
	{M_GET | M_LIST, "/v1/sys/break-glass", KMS_OP_BREAKGLASS_LIST},
	{M_POST, "/v1/sys/break-glass/:n/review", KMS_OP_BREAKGLASS_REVIEW},
	{M_GET, "/v1/sys/compliance", KMS_OP_COMPLIANCE},
	{M_POST, "/v1/sys/backup", KMS_OP_SYS_BACKUP},
	{M_GET, "/v1/auth/token/lookup-self", KMS_OP_TOKEN_LOOKUP_SELF},
	{M_POST, "/v1/sys/mfa/enroll", KMS_OP_MFA_ENROLL},
	{M_POST, "/v1/sys/mfa/confirm", KMS_OP_MFA_CONFIRM},
	{M_GET, "/v1/sys/mfa/status", KMS_OP_MFA_STATUS},
	{M_GET, "/v1/sys/mfa/status/:n", KMS_OP_MFA_STATUS},
	{M_POST, "/v1/sys/mfa/verify", KMS_OP_MFA_VERIFY},
	{M_POST, "/v1/sys/mfa/unlock/:n", KMS_OP_MFA_UNLOCK},
	{M_POST, "/v1/sys/mfa/reset/:n", KMS_OP_MFA_RESET},
	{M_POST, "/v1/auth/token/lookup-accessor", KMS_OP_TOKEN_LOOKUP_ACCESSOR},
	{M_LIST, "/v1/:t/keys", KMS_OP_KEY_LIST},
	{M_POST, "/v1/:t/keys/:k", KMS_OP_KEY_CREATE},
	{M_GET, "/v1/:t/keys/:k", KMS_OP_KEY_READ},
	{M_POST, "/v1/:t/keys/:k/rotate", KMS_OP_KEY_ROTATE},
	{M_POST, "/v1/:t/datakey/:v/:k", KMS_OP_DATAKEY},
	{M_POST, "/v1/:t/encrypt/:k", KMS_OP_ENCRYPT},
	{M_POST, "/v1/:t/decrypt/:k", KMS_OP_DECRYPT},
	{M_POST, "/v1/:t/rewrap/:k", KMS_OP_REWRAP},
	{M_POST, "/v1/:t/keys/:k/config", KMS_OP_KEY_CONFIG},
	{M_POST, "/v1/:t/keys/:k/revoke", KMS_OP_KEY_REVOKE},
	{M_POST, "/v1/:t/keys/:k/restore", KMS_OP_KEY_RESTORE},
	{M_POST, "/v1/:t/keys/:k/versions/:r/disable", KMS_OP_VERSION_DISABLE},
	{M_POST, "/v1/:t/keys/:k/versions/:r/enable", KMS_OP_VERSION_ENABLE},
	{M_GET, "/v1/:t/keys/:k/history", KMS_OP_KEY_HISTORY},
	{M_POST, "/v1/:t/keys/:k/versions/:r/schedule-destroy", KMS_OP_VERSION_SCHEDULE_DESTROY},
	{M_POST, "/v1/:t/keys/:k/versions/:r/cancel-destroy", KMS_OP_VERSION_CANCEL_DESTROY},
	{M_POST, "/v1/:t/keys/:k/legal-hold", KMS_OP_KEY_LEGAL_HOLD},
	{M_POST, "/v1/:t/keys/:k/trim", KMS_OP_KEY_TRIM},
	{M_GET, "/v1/:t/keys/:k/versions/:r/receipt", KMS_OP_VERSION_RECEIPT},
};

#define MAX_SEGS 8

static int split(char *p, char **segs)
{
	int n = 0;

	if (*p != '/')
		return -1;
	while (*p == '/') {
		*p++ = '\0';
		if (*p == '\0')
			break; /* one trailing slash is tolerated */
		if (n == MAX_SEGS)
			return -1;
		segs[n++] = p;
		while (*p && *p != '/')
			p++;
		if (*p == '/' && p[1] == '/')
			return -1;
	}
	return n;
}

/* Each pattern cut into segments once (routes_once): matching a request then compares
 * segment counts first, which rules out most routes without reading them. */
#define N_ROUTES (sizeof(routes) / sizeof(routes[0]))

static struct parsed_route {
	int n;
	const char *seg[MAX_SEGS];
	size_t len[MAX_SEGS];
} parsed[N_ROUTES];
static pthread_once_t routes_once = PTHREAD_ONCE_INIT;

static void parse_routes(void)
{
	for (size_t i = 0; i < N_ROUTES; i++) {
		const char *p = routes[i].pattern;
		struct parsed_route *r = &parsed[i];

		r->n = 0;
		while (*p == '/') {
			const char *e;

			p++;
			if (*p == '\0')
				break;
			for (e = p; *e != '\0' && *e != '/'; e++)
				;
			if (r->n == MAX_SEGS) { /* longer than any path split() accepts */
				r->n = -1;
				break;
			}
			r->seg[r->n] = p;
			r->len[r->n] = (size_t)(e - p);
			r->n++;
			p = e;
		}
	}
}

static int match_one(const struct parsed_route *r, char **segs, int n, struct route_match *m)
{
	if (r->n != n)
		return 0;
	for (int i = 0; i < n; i++) {
		if (r->seg[i][0] != ':') {
			if (strncmp(segs[i], r->seg[i], r->len[i]) != 0 || segs[i][r->len[i]] != '\0')
				return 0;
		} else if (segs[i][0] == '\0') {
			return 0;
		}
	}
	m->tenant = m->key = m->name = m->variant = m->version = NULL;
	for (int i = 0; i < n; i++) {
		if (r->seg[i][0] != ':')
			continue;
		switch (r->seg[i][1]) {
		case 't': m->tenant = segs[i]; break;
		case 'k': m->key = segs[i]; break;
		case 'n': m->name = segs[i]; break;
		case 'v': m->variant = segs[i]; break;
		case 'r': m->version = segs[i]; break;
		}
	}
	/* A tenant segment never names the reserved mounts. */
	if (m->tenant != NULL && (strcmp(m->tenant, "sys") == 0 || strcmp(m->tenant, "auth") == 0))
		return 0;
	return 1;
}

enum route_result route_match(const char *method, int is_list, const char *path, struct route_match *m)
{
	char *segs[MAX_SEGS];
	unsigned want;
	int n, path_known = 0;

	if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0)
		want = is_list ? M_LIST : M_GET;
	else if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0)
		want = M_POST;
	else if (strcmp(method, "LIST") == 0)
		want = M_LIST;
	else
		want = 0;
	if (strlen(path) >= sizeof(m->buf))
		return ROUTE_NOT_FOUND;
	/* split once: matching only reads the segments */
	memcpy(m->buf, path, strlen(path) + 1);
	n = split(m->buf, segs);
	if (n < 0)
		return ROUTE_NOT_FOUND;
	pthread_once(&routes_once, parse_routes);
	for (size_t i = 0; i < N_ROUTES; i++) {
		if (!match_one(&parsed[i], segs, n, m))
			continue;
		path_known = 1;
		if (routes[i].method & want) {
			m->op = routes[i].op;
			return ROUTE_OK;
		}
	}
	return path_known ? ROUTE_METHOD : ROUTE_NOT_FOUND;
}
