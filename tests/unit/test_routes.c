/* The route table: methods, parameters, reserved mounts, 404 vs 405. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "kms/http/routes.h"

static void expect(const char *method, int list, const char *path, enum route_result want,
		   enum kms_op op, const char *t, const char *k, const char *n, const char *v)
{
	struct route_match m;
	enum route_result r = route_match(method, list, path, &m);

	if (r != want)
		fail_msg("%s %s: result %d, want %d", method, path, r, want);
	if (r != ROUTE_OK)
		return;
	if (m.op != op)
		fail_msg("%s %s: op %s, want %s", method, path, kms_op_name(m.op), kms_op_name(op));
#define CHK(f, e)                                                                          \
	if ((e) == NULL ? m.f != NULL : (m.f == NULL || strcmp(m.f, (e)) != 0))            \
		fail_msg("%s %s: " #f " = %s, want %s", method, path, m.f ? m.f : "(null)", \
			 (e) ? (e) : "(null)");
	CHK(tenant, t);
	CHK(key, k);
	CHK(name, n);
	CHK(variant, v);
}

static void test_routes(void **state)
{
	(void)state;
	expect("GET", 0, "/v1/sys/health", ROUTE_OK, KMS_OP_HEALTH, NULL, NULL, NULL, NULL);
	/* approvals and break-glass */
	expect("GET", 0, "/v1/sys/approvals", ROUTE_OK, KMS_OP_APPROVAL_LIST, NULL, NULL, NULL, NULL);
	expect("LIST", 0, "/v1/sys/approvals", ROUTE_OK, KMS_OP_APPROVAL_LIST, NULL, NULL, NULL, NULL);
	expect("GET", 0, "/v1/sys/approvals/abc", ROUTE_OK, KMS_OP_APPROVAL_READ, NULL, NULL, "abc", NULL);
	expect("POST", 0, "/v1/sys/approvals/abc/approve", ROUTE_OK, KMS_OP_APPROVAL_APPROVE, NULL, NULL, "abc", NULL);
	expect("POST", 0, "/v1/sys/approvals/abc/deny", ROUTE_OK, KMS_OP_APPROVAL_DENY, NULL, NULL, "abc", NULL);
	expect("GET", 0, "/v1/sys/approvals/abc/approve", ROUTE_METHOD, 0, NULL, NULL, NULL, NULL);
	expect("POST", 0, "/v1/sys/break-glass", ROUTE_OK, KMS_OP_BREAKGLASS_ACTIVATE, NULL, NULL, NULL, NULL);
	expect("GET", 0, "/v1/sys/break-glass", ROUTE_OK, KMS_OP_BREAKGLASS_LIST, NULL, NULL, NULL, NULL);
	expect("POST", 0, "/v1/sys/break-glass/abc/review", ROUTE_OK, KMS_OP_BREAKGLASS_REVIEW, NULL, NULL, "abc",
	       NULL);
	expect("POST", 0, "/v1/sys/health", ROUTE_METHOD, 0, NULL, NULL, NULL, NULL);
	expect("POST", 0, "/v1/sys/tenants/demo", ROUTE_OK, KMS_OP_TENANT_CREATE, NULL, NULL, "demo", NULL);
	expect("PUT", 0, "/v1/sys/tenants/demo", ROUTE_OK, KMS_OP_TENANT_CREATE, NULL, NULL, "demo", NULL);
	expect("GET", 0, "/v1/sys/tenants/demo", ROUTE_OK, KMS_OP_TENANT_READ, NULL, NULL, "demo", NULL);
	expect("LIST", 0, "/v1/sys/tenants", ROUTE_OK, KMS_OP_TENANT_LIST, NULL, NULL, NULL, NULL);
	expect("GET", 1, "/v1/sys/tenants", ROUTE_OK, KMS_OP_TENANT_LIST, NULL, NULL, NULL, NULL);
	expect("GET", 0, "/v1/sys/tenants", ROUTE_METHOD, 0, NULL, NULL, NULL, NULL);
	expect("POST", 0, "/v1/sys/principals/svc/tokens", ROUTE_OK, KMS_OP_TOKEN_CREATE, NULL, NULL, "svc", NULL);
	expect("POST", 0, "/v1/sys/tokens/revoke", ROUTE_OK, KMS_OP_TOKEN_REVOKE, NULL, NULL, NULL, NULL);
	/* client certificate mappings */
	expect("POST", 0, "/v1/sys/principals/svc/certs", ROUTE_OK, KMS_OP_PRINCIPAL_CERT_ADD, NULL, NULL, "svc", NULL);
	expect("GET", 0, "/v1/sys/principals/svc/certs", ROUTE_OK, KMS_OP_PRINCIPAL_CERT_LIST, NULL, NULL, "svc", NULL);
	expect("LIST", 0, "/v1/sys/principals/svc/certs", ROUTE_OK, KMS_OP_PRINCIPAL_CERT_LIST, NULL, NULL, "svc", NULL);
	expect("GET", 1, "/v1/sys/principals/svc/certs", ROUTE_OK, KMS_OP_PRINCIPAL_CERT_LIST, NULL, NULL, "svc", NULL);
	expect("POST", 0, "/v1/sys/principals/svc/certs/revoke", ROUTE_OK, KMS_OP_PRINCIPAL_CERT_REVOKE, NULL, NULL, "svc",
	       NULL);
	expect("GET", 0, "/v1/sys/principals/svc/certs/revoke", ROUTE_METHOD, 0, NULL, NULL, NULL, NULL);
	expect("DELETE", 0, "/v1/sys/principals/svc/certs", ROUTE_METHOD, 0, NULL, NULL, NULL, NULL);
	expect("GET", 0, "/v1/auth/token/lookup-self", ROUTE_OK, KMS_OP_TOKEN_LOOKUP_SELF, NULL, NULL, NULL, NULL);
	expect("POST", 0, "/v1/demo/keys/k1", ROUTE_OK, KMS_OP_KEY_CREATE, "demo", "k1", NULL, NULL);
	expect("GET", 0, "/v1/demo/keys/k1", ROUTE_OK, KMS_OP_KEY_READ, "demo", "k1", NULL, NULL);
	expect("DELETE", 0, "/v1/demo/keys/k1", ROUTE_METHOD, 0, NULL, NULL, NULL, NULL);
	expect("LIST", 0, "/v1/demo/keys", ROUTE_OK, KMS_OP_KEY_LIST, "demo", NULL, NULL, NULL);
	expect("GET", 1, "/v1/demo/keys/", ROUTE_OK, KMS_OP_KEY_LIST, "demo", NULL, NULL, NULL);
	expect("POST", 0, "/v1/demo/keys/k1/rotate", ROUTE_OK, KMS_OP_KEY_ROTATE, "demo", "k1", NULL, NULL);
	expect("POST", 0, "/v1/demo/datakey/plaintext/k1", ROUTE_OK, KMS_OP_DATAKEY, "demo", "k1", NULL, "plaintext");
	expect("POST", 0, "/v1/demo/datakey/wrapped/k1", ROUTE_OK, KMS_OP_DATAKEY, "demo", "k1", NULL, "wrapped");
	expect("POST", 0, "/v1/demo/encrypt/k1", ROUTE_OK, KMS_OP_ENCRYPT, "demo", "k1", NULL, NULL);
	expect("POST", 0, "/v1/demo/decrypt/k1", ROUTE_OK, KMS_OP_DECRYPT, "demo", "k1", NULL, NULL);
	expect("POST", 0, "/v1/demo/rewrap/k1", ROUTE_OK, KMS_OP_REWRAP, "demo", "k1", NULL, NULL);
	expect("GET", 0, "/v1/demo/encrypt/k1", ROUTE_METHOD, 0, NULL, NULL, NULL, NULL);
	/* MFA */
	expect("POST", 0, "/v1/sys/mfa/enroll", ROUTE_OK, KMS_OP_MFA_ENROLL, NULL, NULL, NULL, NULL);
	expect("GET", 0, "/v1/sys/mfa/enroll", ROUTE_METHOD, 0, NULL, NULL, NULL, NULL);
	expect("POST", 0, "/v1/sys/mfa/confirm", ROUTE_OK, KMS_OP_MFA_CONFIRM, NULL, NULL, NULL, NULL);
	expect("GET", 0, "/v1/sys/mfa/status", ROUTE_OK, KMS_OP_MFA_STATUS, NULL, NULL, NULL, NULL);
	expect("GET", 0, "/v1/sys/mfa/status/bob", ROUTE_OK, KMS_OP_MFA_STATUS, NULL, NULL, "bob", NULL);
	expect("POST", 0, "/v1/sys/mfa/verify", ROUTE_OK, KMS_OP_MFA_VERIFY, NULL, NULL, NULL, NULL);
	expect("POST", 0, "/v1/sys/mfa/unlock/bob", ROUTE_OK, KMS_OP_MFA_UNLOCK, NULL, NULL, "bob", NULL);
	expect("GET", 0, "/v1/sys/mfa/unlock/bob", ROUTE_METHOD, 0, NULL, NULL, NULL, NULL);
	expect("POST", 0, "/v1/sys/mfa/unlock", ROUTE_NOT_FOUND, 0, NULL, NULL, NULL, NULL);
	expect("POST", 0, "/v1/sys/mfa/reset/bob", ROUTE_OK, KMS_OP_MFA_RESET, NULL, NULL, "bob", NULL);
	/* not found */
	expect("GET", 0, "/", ROUTE_NOT_FOUND, 0, NULL, NULL, NULL, NULL);
	expect("GET", 0, "", ROUTE_NOT_FOUND, 0, NULL, NULL, NULL, NULL);
	expect("GET", 0, "/v2/sys/health", ROUTE_NOT_FOUND, 0, NULL, NULL, NULL, NULL);
	expect("POST", 0, "/v1/demo/encrypt", ROUTE_NOT_FOUND, 0, NULL, NULL, NULL, NULL);
	expect("POST", 0, "/v1/demo//encrypt/k1", ROUTE_NOT_FOUND, 0, NULL, NULL, NULL, NULL);
	expect("POST", 0, "/v1/demo/encrypt/k1/extra", ROUTE_NOT_FOUND, 0, NULL, NULL, NULL, NULL);
	expect("POST", 0, "/v1/a/b/c/d/e/f/g/h/i/j", ROUTE_NOT_FOUND, 0, NULL, NULL, NULL, NULL);
	/* the reserved mounts are never tenants */
	expect("POST", 0, "/v1/sys/keys/k1", ROUTE_NOT_FOUND, 0, NULL, NULL, NULL, NULL);
	expect("POST", 0, "/v1/auth/encrypt/k1", ROUTE_NOT_FOUND, 0, NULL, NULL, NULL, NULL);
}

static void test_long_path(void **state)
{
	char p[ROUTE_PATH_MAX + 100];
	struct route_match m;
	(void)state;

	memset(p, 'a', sizeof(p) - 1);
	p[0] = '/';
	p[sizeof(p) - 1] = '\0';
	assert_int_equal(route_match("GET", 0, p, &m), ROUTE_NOT_FOUND);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_routes),
		cmocka_unit_test(test_long_path),
	};
	return cmocka_run_group_tests_name("routes", tests, NULL, NULL);
}
