/* Policy documents (policy/policy_doc.c) and the evaluator (policy/policy_eval.c) on
 * hostile text: what an admin (or an attacker with an admin token) can POST to
 * /v1/sys/policy.
 *
 * Properties:
 *   - refusal: KMS_ERR_INVALID (or KMS_ERR_NOMEM), no document, a non-empty reason, a
 *     location inside the text (line <= lines + 1, column <= the longest line + 1) and a
 *     NUL-terminated path;
 *   - acceptance: version >= 1, every rule has a name, and the compiled document is a
 *     pure function of the text: a second parse evaluates every request below the same
 *     way (allow, MFA, quorum, deciding rule, reason);
 *   - evaluation over a fixed spread of requests (every operation, anonymous, admin,
 *     service in and out of scope, with and without context, odd times and sources):
 *     never crashes, the reason is NUL-terminated, deny never comes with requirements,
 *     the deciding rule index is in range, and a document without rules denies. */
#include <string.h>

#include "kms/base/op.h"
#include "policy/policy_doc.h"
#include "policy/policy_eval.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

static void location_sane(const char *text, size_t len, const struct policy_doc_error *e)
{
	unsigned lines = 1, col = 0, maxcol = 0;

	for (size_t i = 0; i < len; i++) {
		if (text[i] == '\n') {
			lines++;
			col = 0;
		} else if (++col > maxcol) {
			maxcol = col;
		}
	}
	CHECK(e->line <= lines + 1);
	CHECK(e->column <= maxcol + 2);
	CHECK(memchr(e->path, '\0', sizeof(e->path)) != NULL);
	CHECK(memchr(e->reason, '\0', sizeof(e->reason)) != NULL);
	CHECK(e->reason[0] != '\0');
}

static void eval_all(const struct policy_doc *a, const struct policy_doc *b)
{
	static const char *const principals[] = {NULL, "admin", "svc-ehr", "svc-lab"};
	static const char *const roles[] = {NULL, "admin", "service", "service"};
	static const char *const tenants[] = {NULL, "cardiology", "oncology"};
	static const char *const keys[] = {NULL, "patient-records", "x"};
	static const struct policy_kv ctx[] = {{"purpose", "treatment"}, {"patient", "p-1"}};
	static const char *const srcs[] = {"127.0.0.1", "10.1.2.3", "2001:db8::1"};
	const int64_t scope[] = {7};
	size_t rules = policy_doc_rule_count(a);

	for (int op = 0; op < KMS_OP__COUNT + 1; op++)
		for (size_t p = 0; p < 4; p++)
			for (size_t t = 0; t < 3; t++) {
				struct policy_input in = {0};
				struct policy_verdict va, vb;

				in.principal = principals[p];
				in.role = roles[p];
				in.scope_ids = scope;
				in.n_scope_ids = p == 2 ? 1 : 0;
				in.op = (enum kms_op)op;
				in.tenant = tenants[t];
				in.tenant_id = t == 1 ? 7 : t == 2 ? -1 : 0;
				in.key = keys[(p + t) % 3];
				in.context = ctx;
				in.n_context = (p + (size_t)op) % 3;
				in.now = (int64_t)(op * 7919 + (int)p * 3600) % 200000 - 3600;
				in.mfa_at = p == 1 ? in.now - 30 : 0;
				(void)policy_addr_from_text(srcs[(size_t)op % 3], &in.source);
				policy_eval(a, &in, &va);
				policy_eval(b, &in, &vb);
				CHECK(memchr(va.reason, '\0', sizeof(va.reason)) != NULL);
				CHECK(va.allow == vb.allow && va.require_mfa == vb.require_mfa &&
				      va.require_quorum == vb.require_quorum && va.rule == vb.rule &&
				      strcmp(va.reason, vb.reason) == 0);
				CHECK(va.rule >= -1 && (va.rule < 0 || (size_t)va.rule < rules));
				if (!va.allow)
					CHECK(!va.require_mfa && va.require_quorum == 0);
				if (rules == 0)
					CHECK(!va.allow);
			}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct policy_doc *a = NULL, *b = NULL;
	struct policy_doc_error e;
	char *text;
	kms_err rc;

	if (size > 65536)
		return 0;
	text = fuzz_dup(data, size, 0);
	memset(&e, 0, sizeof(e));
	rc = policy_doc_parse(text, size, &a, &e);
	if (rc != KMS_OK) {
		CHECK(rc == KMS_ERR_INVALID || rc == KMS_ERR_NOMEM);
		CHECK(a == NULL);
		if (rc == KMS_ERR_INVALID)
			location_sane(text, size, &e);
	} else {
		CHECK(a != NULL && policy_doc_version(a) >= 1);
		for (size_t i = 0; i < policy_doc_rule_count(a); i++)
			CHECK(policy_doc_rule_name(a, i) != NULL);
		CHECK(policy_doc_parse(text, size, &b, NULL) == KMS_OK && b != NULL);
		eval_all(a, b);
	}
	policy_doc_free(a);
	policy_doc_free(b);
	free(text);
	return 0;
}
