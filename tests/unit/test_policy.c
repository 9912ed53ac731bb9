/* policy_decide as a table, plus API token parsing and hashing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "policy/authn.h"
#include "policy/policy.h"

static const int64_t scope_a[] = {1};
static const int64_t scope_ab[] = {1, 2};

static const struct {
	enum policy_role role;
	const int64_t *scope;
	size_t n;
	enum kms_op op;
	int64_t tenant;
	int allow;
} cases[] = {
	/* health is public, even for nobody */
	{POLICY_ROLE_NONE, NULL, 0, KMS_OP_HEALTH, 0, 1},
	{POLICY_ROLE_NONE, NULL, 0, KMS_OP_DATAKEY, 1, 0},
	{POLICY_ROLE_NONE, NULL, 0, KMS_OP_TOKEN_LOOKUP_SELF, 0, 0},
	{POLICY_ROLE_NONE, NULL, 0, KMS_OP_NONE, 0, 0},
	/* admin: all management, never key material */
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_TENANT_CREATE, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_TENANT_LIST, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_PRINCIPAL_CREATE, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_TOKEN_CREATE, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_TOKEN_REVOKE, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_KEY_CREATE, 7, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_KEY_ROTATE, 7, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_KEY_READ, -1, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_TOKEN_LOOKUP_SELF, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_DATAKEY, 7, 0},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_ENCRYPT, 7, 0},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_DECRYPT, 7, 0},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_REWRAP, 7, 0},
	/* approvals and break-glass: admins vote, list and review; nobody breaks glass
	 * under the built-in rules (a policy file designates who may) */
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_APPROVAL_LIST, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_APPROVAL_APPROVE, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_APPROVAL_DENY, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_BREAKGLASS_LIST, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_BREAKGLASS_REVIEW, 0, 1},
	{POLICY_ROLE_ADMIN, NULL, 0, KMS_OP_BREAKGLASS_ACTIVATE, 7, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_BREAKGLASS_ACTIVATE, 1, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_APPROVAL_APPROVE, 0, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_BREAKGLASS_REVIEW, 0, 0},
	/* service: data plane and reads on its tenants only */
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_DATAKEY, 1, 1},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_ENCRYPT, 1, 1},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_DECRYPT, 1, 1},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_REWRAP, 1, 1},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_KEY_READ, 1, 1},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_KEY_LIST, 1, 1},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_DATAKEY, 2, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_DECRYPT, 2, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_DATAKEY, -1, 0}, /* tenant does not exist */
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_DATAKEY, 0, 0},
	{POLICY_ROLE_SERVICE, scope_ab, 2, KMS_OP_DATAKEY, 2, 1},
	{POLICY_ROLE_SERVICE, scope_ab, 2, KMS_OP_DECRYPT, 3, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_KEY_CREATE, 1, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_KEY_ROTATE, 1, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_TENANT_CREATE, 0, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_TENANT_LIST, 0, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_PRINCIPAL_CREATE, 0, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_TOKEN_CREATE, 0, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_TOKEN_REVOKE, 0, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, KMS_OP_TOKEN_LOOKUP_SELF, 0, 1},
	{POLICY_ROLE_SERVICE, NULL, 0, KMS_OP_DATAKEY, 1, 0},
	{POLICY_ROLE_SERVICE, scope_a, 1, (enum kms_op)999, 1, 0},
};

static void test_policy_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct policy_subject who = {cases[i].role, cases[i].scope, cases[i].n};
		struct policy_request req = {cases[i].op, cases[i].tenant};
		struct policy_decision d = policy_decide(&who, &req);
		if (d.allow != (cases[i].allow != 0))
			fail_msg("case %zu: op %s tenant %lld: expected %s, got %s (%s)", i,
				 kms_op_name(cases[i].op), (long long)cases[i].tenant,
				 cases[i].allow ? "allow" : "deny", d.allow ? "allow" : "deny", d.reason);
		assert_non_null(d.reason);
	}
	assert_false(policy_decide(NULL, NULL).allow);
}

static void test_roles(void **state)
{
	(void)state;
	assert_int_equal(policy_role_parse("admin"), POLICY_ROLE_ADMIN);
	assert_int_equal(policy_role_parse("service"), POLICY_ROLE_SERVICE);
	assert_int_equal(policy_role_parse("root"), POLICY_ROLE_NONE);
	assert_int_equal(policy_role_parse(NULL), POLICY_ROLE_NONE);
	assert_string_equal(policy_role_name(POLICY_ROLE_SERVICE), "service");
}

static void test_token_roundtrip(void **state)
{
	char tok[AUTHN_TOKEN_LEN + 1], tok2[AUTHN_TOKEN_LEN + 1], acc[AUTHN_ACCESSOR_LEN + 1],
		acc2[AUTHN_ACCESSOR_LEN + 1];
	uint8_t h1[AUTHN_HASH_LEN], h2[AUTHN_HASH_LEN];
	(void)state;

	assert_int_equal(authn_token_new(tok, acc), KMS_OK);
	assert_int_equal(strlen(tok), AUTHN_TOKEN_LEN);
	assert_memory_equal(tok, "kms.", 4);
	assert_int_equal(authn_token_parse(tok, strlen(tok), acc2), KMS_OK);
	assert_string_equal(acc, acc2);
	assert_int_equal(authn_token_new(tok2, acc2), KMS_OK);
	assert_string_not_equal(tok, tok2);
	authn_token_hash(tok, strlen(tok), h1);
	authn_token_hash(tok, strlen(tok), h2);
	assert_true(authn_hash_equal(h1, h2));
	authn_token_hash(tok2, strlen(tok2), h2);
	assert_false(authn_hash_equal(h1, h2));
}

static void test_token_parse_rejects(void **state)
{
	char tok[AUTHN_TOKEN_LEN + 1], acc[AUTHN_ACCESSOR_LEN + 1], bad[AUTHN_TOKEN_LEN + 2];
	(void)state;

	assert_int_equal(authn_token_new(tok, acc), KMS_OK);
	assert_int_equal(authn_token_parse("", 0, acc), KMS_ERR_UNAUTHENTICATED);
	assert_int_equal(authn_token_parse("hvs.abc", 7, acc), KMS_ERR_UNAUTHENTICATED);
	memcpy(bad, tok, sizeof(tok));
	bad[0] = 'x';
	assert_int_equal(authn_token_parse(bad, AUTHN_TOKEN_LEN, acc), KMS_ERR_UNAUTHENTICATED);
	memcpy(bad, tok, sizeof(tok));
	bad[AUTHN_TOKEN_LEN - 1] = 'G'; /* not lower hex */
	assert_int_equal(authn_token_parse(bad, AUTHN_TOKEN_LEN, acc), KMS_ERR_UNAUTHENTICATED);
	memcpy(bad, tok, sizeof(tok));
	bad[4 + AUTHN_ACCESSOR_LEN] = 'a';
	assert_int_equal(authn_token_parse(bad, AUTHN_TOKEN_LEN, acc), KMS_ERR_UNAUTHENTICATED);
	assert_int_equal(authn_token_parse(tok, AUTHN_TOKEN_LEN - 1, acc), KMS_ERR_UNAUTHENTICATED);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_policy_table),
		cmocka_unit_test(test_roles),
		cmocka_unit_test(test_token_roundtrip),
		cmocka_unit_test(test_token_parse_rejects),
	};
	return cmocka_run_group_tests_name("policy", tests, NULL, NULL);
}
