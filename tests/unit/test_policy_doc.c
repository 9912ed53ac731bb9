/* The policy language: good documents compile (the built-in default, the hospital example
 * from docs/POLICY.md), bad ones are refused whole with the first error, its JSON path and
 * its line and column, from text, from a file and from a json_t. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "policy/policy_doc.h"
#include "policy/policy_eval.h"

/* The example of docs/POLICY.md, verbatim. */
static const char hospital[] =
	"{\n"
	"  \"version\": 12,\n"
	"  \"description\": \"St. Example hospital\",\n"
	"  \"rules\": [\n"
	"    {\"name\": \"health\", \"effect\": \"allow\", \"principals\": [\"*\"], \"operations\": [\"sys.health\"]},\n"
	"    {\"name\": \"own-token\", \"effect\": \"allow\", \"principals\": [\"role:*\"], \"operations\": [\"token.lookup_self\"]},\n"
	"\n"
	"    {\"name\": \"ehr-phi\", \"effect\": \"allow\",\n"
	"     \"description\": \"EHR service: PHI keys for treatment, payment and operations only\",\n"
	"     \"principals\": [\"ehr-*\"], \"tenants\": [\"@scope\"], \"keys\": [\"phi-*\"],\n"
	"     \"operations\": [\"datakey\", \"encrypt\", \"decrypt\", \"rewrap\", \"key.read\"],\n"
	"     \"conditions\": {\"context\": {\"purpose\": [\"treatment\", \"payment\", \"operations\"]},\n"
	"                    \"source_cidr\": [\"10.20.0.0/16\", \"fd20::/48\"]}},\n"
	"\n"
	"    {\"name\": \"lab-ingest\", \"effect\": \"allow\",\n"
	"     \"description\": \"lab pipeline encrypts results; it never decrypts\",\n"
	"     \"principals\": [\"lab-pipeline\"], \"tenants\": [\"@scope\"], \"keys\": [\"lab-*\"],\n"
	"     \"operations\": [\"datakey\", \"encrypt\"],\n"
	"     \"conditions\": {\"source_cidr\": [\"10.30.4.0/24\"]}},\n"
	"\n"
	"    {\"name\": \"analytics-deid\", \"effect\": \"allow\",\n"
	"     \"principals\": [\"analytics\"], \"tenants\": [\"research\"], \"keys\": [\"deid-*\"],\n"
	"     \"operations\": [\"decrypt\"],\n"
	"     \"conditions\": {\"context\": {\"deidentified\": [\"true\"], \"purpose\": [\"research\"]},\n"
	"                    \"time\": {\"start\": \"20:00\", \"end\": \"06:00\", \"overnight\": true}}},\n"
	"    {\"name\": \"analytics-never-phi\", \"effect\": \"deny\",\n"
	"     \"principals\": [\"analytics\"], \"keys\": [\"phi-*\", \"lab-*\"], \"operations\": [\"*\"]},\n"
	"\n"
	"    {\"name\": \"security-admin\", \"effect\": \"allow\",\n"
	"     \"principals\": [\"role:admin\"], \"operations\": [\"tenant.*\", \"principal.*\", \"token.*\", \"key.*\",\n"
	"                                                  \"approval.*\", \"breakglass.list\", \"breakglass.review\"],\n"
	"     \"require_mfa\": true},\n"
	"    {\"name\": \"rotate-phi-with-quorum\", \"effect\": \"allow\",\n"
	"     \"principals\": [\"role:admin\"], \"keys\": [\"phi-*\"], \"operations\": [\"key.rotate\"],\n"
	"     \"require_quorum\": 2},\n"
	"    {\"name\": \"admin-never-key-material\", \"effect\": \"deny\",\n"
	"     \"principals\": [\"role:admin\"], \"operations\": [\"datakey\", \"encrypt\", \"decrypt\", \"rewrap\"]},\n"
	"\n"
	"    {\"name\": \"break-glass\", \"effect\": \"allow\",\n"
	"     \"description\": \"on-call clinician lead may take a break-glass grant when the EHR is down\",\n"
	"     \"principals\": [\"oncall-breakglass\"], \"tenants\": [\"hosp-*\"], \"keys\": [\"phi-*\"],\n"
	"     \"operations\": [\"breakglass.activate\"],\n"
	"     \"conditions\": {\"mfa_max_age\": 300, \"source_cidr\": [\"10.20.99.0/24\"]},\n"
	"     \"require_mfa\": true}\n"
	"  ]\n"
	"}\n";

static void test_good_documents(void **state)
{
	struct policy_doc *doc = NULL;
	struct policy_doc_error e;
	(void)state;

	assert_int_equal(policy_doc_default(&doc), KMS_OK);
	assert_int_equal(policy_doc_version(doc), 1);
	assert_int_equal(policy_doc_rule_count(doc), 12);
	assert_string_equal(policy_doc_rule_name(doc, 0), "health-is-public");
	assert_string_equal(policy_doc_rule_name(doc, 5), "admin-two-person");
	assert_string_equal(policy_doc_rule_name(doc, 6), "admin-management");
	assert_string_equal(policy_doc_rule_name(doc, 9), "auditor-own-mfa");
	assert_string_equal(policy_doc_rule_name(doc, 10), "auditor-session");
	assert_string_equal(policy_doc_rule_name(doc, 11), "auditor-read");
	assert_null(policy_doc_rule_name(doc, 12));
	/* the built-in asks for an MFA step-up on admin changes, one approval on a few of
	 * them, and a TOTP session for audit reads, and uses nothing else */
	assert_int_equal(policy_doc_uses(doc), POLICY_USES_REQUIRE_MFA | POLICY_USES_QUORUM | POLICY_USES_MFA_AGE);
	policy_doc_free(doc);

	assert_int_equal(policy_doc_parse(hospital, strlen(hospital), &doc, &e), KMS_OK);
	assert_int_equal(policy_doc_version(doc), 12);
	assert_int_equal(policy_doc_rule_count(doc), 10);
	assert_string_equal(policy_doc_rule_name(doc, 9), "break-glass");
	assert_int_equal(policy_doc_uses(doc), POLICY_USES_CONTEXT | POLICY_USES_TIME | POLICY_USES_SOURCE |
						       POLICY_USES_MFA_AGE | POLICY_USES_REQUIRE_MFA |
						       POLICY_USES_QUORUM | POLICY_USES_KEYS);

	/* a few answers from the example, as docs/POLICY.md describes them */
	static const int64_t scope[] = {3};
	struct policy_kv kv[] = {{"purpose", "treatment"}};
	struct policy_input in = {.principal = "ehr-epic", .role = "service", .scope_ids = scope,
				  .n_scope_ids = 1, .op = KMS_OP_DECRYPT, .tenant = "hosp-main", .tenant_id = 3,
				  .key = "phi-notes", .context = kv, .n_context = 1, .now = 1704103200};
	struct policy_verdict v;
	assert_int_equal(policy_addr_from_text("10.20.1.5", &in.source), 0);
	policy_eval(doc, &in, &v);
	assert_true(v.allow);
	assert_string_equal(v.reason, "policy v12 rules[2] \"ehr-phi\": allow");
	kv[0].value = "marketing";
	policy_eval(doc, &in, &v);
	assert_false(v.allow);
	kv[0].value = "treatment";
	in.principal = "oncall-breakglass";
	in.role = "service";
	in.mfa_at = in.now - 100;
	assert_int_equal(policy_addr_from_text("10.20.99.7", &in.source), 0);
	policy_eval(doc, &in, &v); /* no rule lets it decrypt: only a grant does */
	assert_false(v.allow);
	in.op = KMS_OP_BREAKGLASS_ACTIVATE;
	in.key = "phi-*"; /* the grant's key pattern */
	policy_eval(doc, &in, &v);
	assert_true(v.allow);
	assert_true(v.require_mfa);
	assert_int_equal(v.require_quorum, 0);
	in.key = "*"; /* wider than the rule's phi-* */
	policy_eval(doc, &in, &v);
	assert_false(v.allow);
	in.key = "phi-notes";
	in.op = KMS_OP_DECRYPT;
	in.principal = "alice";
	in.role = "admin";
	in.op = KMS_OP_KEY_ROTATE;
	policy_eval(doc, &in, &v);
	assert_true(v.allow);
	assert_true(v.require_mfa);
	assert_int_equal(v.require_quorum, 2);
	in.op = KMS_OP_APPROVAL_APPROVE; /* approving another admin's request: with a TOTP code */
	in.key = NULL;
	in.tenant = NULL;
	in.tenant_id = 0;
	policy_eval(doc, &in, &v);
	assert_true(v.allow);
	assert_true(v.require_mfa);
	assert_int_equal(v.require_quorum, 0);
	in.op = KMS_OP_BREAKGLASS_ACTIVATE; /* admins are not designated */
	in.tenant = "hosp-main";
	in.tenant_id = 3;
	in.key = "phi-*";
	policy_eval(doc, &in, &v);
	assert_false(v.allow);
	in.key = "phi-notes";
	in.op = KMS_OP_DECRYPT;
	policy_eval(doc, &in, &v);
	assert_false(v.allow);
	assert_non_null(strstr(v.reason, "admin-never-key-material"));
	policy_doc_free(doc);

	/* escapes in keys, strings with brackets, unicode: still located and compiled */
	static const char tricky[] = "{\"version\": 2, \"description\": \"[{\\\"]}\\u00e9\",\n"
				     " \"rules\": [{\"name\": \"x\", \"effect\": \"deny\", \"principals\": [\"*\"],\n"
				     "  \"operations\": [\"*\"], \"conditions\": {\"context\": {\"p\\u00e9\": [\"\\u2603\"]}}}]}";
	assert_int_equal(policy_doc_parse(tricky, strlen(tricky), &doc, &e), KMS_OK);
	policy_doc_free(doc);
}

/* Four lines of preamble with one good rule; the rule under test starts on line 5. */
#define R(body)                                                                              \
	"{\n"                                                                                \
	"  \"version\": 1,\n"                                                                \
	"  \"rules\": [\n"                                                                   \
	"    {\"name\": \"r0\", \"effect\": \"allow\", \"principals\": [\"*\"], \"operations\": [\"key.read\"]},\n" \
	body "\n  ]\n}\n"

/* the head of a rule r1, on line 5 */
#define H "    {\"name\": \"r1\", \"effect\": \"allow\",\n"
#define HD "    {\"name\": \"r1\", \"effect\": \"deny\",\n"
/* the rest of a plain rule, on line 6 */
#define P "     \"principals\": [\"*\"], \"operations\": [\"key.read\"],\n"

static const struct bad {
	const char *doc;
	unsigned line;
	const char *path;
	const char *reason;
} bad[] = {
	/* syntax, from jansson */
	{"{\n  \"version\": 1\n  \"rules\": []\n}\n", 3, "", "malformed JSON"},
	{"{\n  \"version\": 1,\n  \"version\": 2,\n  \"rules\": []\n}\n", 3, "", "duplicate object key"},
	{"{\n  \"version\": 1,\n  \"rules\": [\n", 4, "", "malformed JSON"},
	{"", 1, "", "malformed JSON"},
	/* the document */
	{"[1, 2]\n", 1, "", "must be a JSON object"},
	{"{\n  \"version\": 1,\n  \"rulez\": []\n}\n", 3, "rulez", "unknown field \"rulez\""},
	{"{\n  \"rules\": []\n}\n", 1, "", "missing \"version\""},
	{"{\n  \"version\": 0,\n  \"rules\": []\n}\n", 2, "version", "must be between 1 and"},
	{"{\n  \"version\": \"3\",\n  \"rules\": []\n}\n", 2, "version", "must be an integer"},
	{"{\n  \"version\": 1.5,\n  \"rules\": []\n}\n", 2, "version", "must be an integer"},
	{"{\n  \"version\": 1\n}\n", 1, "", "missing \"rules\""},
	{"{\n  \"version\": 1,\n  \"rules\": []\n}\n", 3, "rules", "non-empty array"},
	{"{\n  \"version\": 1,\n  \"description\": 5,\n  \"rules\": []\n}\n", 3, "description", "must be a string"},
	/* rules: shape and names */
	{R("    42"), 5, "rules[1]", "a rule must be an object"},
	{R(H P "     \"efect\": \"deny\"}"), 7, "rules[1].efect", "unknown field \"efect\""},
	{R("    {\"effect\": \"allow\",\n" P "     \"keys\": [\"a\"]}"), 5, "rules[1]", "missing \"name\""},
	{R("    {\"name\": \"has space\", \"effect\": \"allow\",\n" P "     \"keys\": [\"a\"]}"), 5, "rules[1].name",
	 "must be 1 to 64 letters"},
	{R("    {\"name\": \"r0\", \"effect\": \"allow\",\n" P "     \"keys\": [\"a\"]}"), 5, "rules[1].name",
	 "duplicate rule name \"r0\" (also rules[0])"},
	{R("    {\"name\": \"r1\",\n" P "     \"keys\": [\"a\"]}"), 5, "rules[1]", "missing \"effect\""},
	{R("    {\"name\": \"r1\", \"effect\": \"permit\",\n" P "     \"keys\": [\"a\"]}"), 5, "rules[1].effect",
	 "must be \"allow\" or \"deny\""},
	/* principals, tenants, keys */
	{R(H "     \"operations\": [\"key.read\"]}"), 5, "rules[1]", "missing \"principals\""},
	{R(H "     \"principals\": \"*\",\n     \"operations\": [\"key.read\"]}"), 6, "rules[1].principals",
	 "must be an array of strings"},
	{R(H "     \"principals\": [\"ehr-*\",\n                    \"group:doctors\"],\n     \"operations\": [\"key.read\"]}"),
	 7, "rules[1].principals[1]", "bad principal \"group:doctors\""},
	{R(H "     \"principals\": [\"role:ad min\"], \"operations\": [\"key.read\"]}"), 6, "rules[1].principals[0]",
	 "bad role pattern"},
	{R(H P "     \"tenants\": [\"hosp-**\"]}"), 7, "rules[1].tenants[0]", "\"**\" is not a pattern"},
	{R(H P "     \"tenants\": [\"@all\"]}"), 7, "rules[1].tenants[0]", "unknown tenant set \"@all\""},
	{R(H P "     \"keys\": [\"phi-1\",\n              \"phi[0-9]\"]}"), 8, "rules[1].keys[1]", "patterns use letters"},
	{R(H P "     \"keys\": [\"\"]}"), 7, "rules[1].keys[0]", "empty pattern"},
	{R(H P "     \"keys\": [\"a\", \"b\", \"a\"]}"), 7, "rules[1].keys[2]", "duplicate entry \"a\""},
	/* operations */
	{R(H "     \"principals\": [\"*\"]}"), 5, "rules[1]", "missing \"operations\""},
	{R(H "     \"principals\": [\"*\"],\n     \"operations\": [\"key.read\",\n                    \"key.obliterate\"]}"), 8,
	 "rules[1].operations[1]", "unknown operation \"key.obliterate\""},
	{R(H "     \"principals\": [\"*\"],\n     \"operations\": [\"key*\"]}"), 7, "rules[1].operations[0]",
	 "bad operation pattern \"key*\""},
	{R(H "     \"principals\": [\"*\"],\n     \"operations\": [\"vault.*\"]}"), 7, "rules[1].operations[0]",
	 "no operation matches \"vault.*\""},
	{R(H "     \"principals\": [\"*\"],\n     \"operations\": []}"), 7, "rules[1].operations", "must not be empty"},
	{R(H "     \"principals\": [\"*\"],\n     \"operations\": [\"none\"]}"), 7, "rules[1].operations[0]",
	 "unknown operation \"none\""},
	{R(H "     \"principals\": [\"*\"],\n     \"operations\": [7]}"), 7, "rules[1].operations[0]", "must be a string"},
	/* conditions */
	{R(H P "     \"conditions\": {\"ctx\": {}}}"), 7, "rules[1].conditions.ctx", "unknown field \"ctx\""},
	{R(H P "     \"conditions\": []}"), 7, "rules[1].conditions", "must be an object"},
	{R(H P "     \"conditions\": {\"context\": {}}}"), 7, "rules[1].conditions.context", "non-empty object"},
	{R(H P "     \"conditions\": {\"context\": {\n        \"purpose\": \"treatment\"}}}"), 8,
	 "rules[1].conditions.context.purpose", "must be an array of strings"},
	{R(H P "     \"conditions\": {\"context\": {\"purpose\": [\"treatment\",\n        \"\"]}}}"), 8,
	 "rules[1].conditions.context.purpose[1]", "empty context value"},
	{R(H P "     \"conditions\": {\"context\": {\"a.b\": [\"x\", \"x\"]}}}"), 7,
	 "rules[1].conditions.context[\"a.b\"][1]", "duplicate entry \"x\""},
	{R(H P "     \"conditions\": {\"context\": {\"p\\u00e9\": [\n  1]}}}"), 8,
	 "rules[1].conditions.context[\"p\xc3\xa9\"][0]", "must be a string"},
	{R(H P "     \"conditions\": {\"time\": {\"start\": \"25:00\", \"end\": \"26:00\"}}}"), 7,
	 "rules[1].conditions.time.start", "must be a time \"HH:MM\""},
	{R(H P "     \"conditions\": {\"time\": {\"start\": \"08:00\",\n                             \"end\": \"8:30\"}}}"), 8,
	 "rules[1].conditions.time.end", "must be a time \"HH:MM\""},
	{R(H P "     \"conditions\": {\n       \"time\": {\"start\": \"18:00\", \"end\": \"08:00\"}}}"), 8,
	 "rules[1].conditions.time", "inverted window: start 18:00 is after end 08:00"},
	{R(H P "     \"conditions\": {\"time\": {\"start\": \"08:00\", \"end\": \"18:00\", \"overnight\": true}}}"), 7,
	 "rules[1].conditions.time", "\"overnight\" is true but start 08:00 is before end 18:00"},
	{R(H P "     \"conditions\": {\"time\": {\"start\": \"08:00\", \"end\": \"08:00\"}}}"), 7,
	 "rules[1].conditions.time", "empty or all-day window"},
	{R(H P "     \"conditions\": {\"time\": {\"start\": \"08:00\"}}}"), 7, "rules[1].conditions.time", "missing \"end\""},
	{R(H P "     \"conditions\": {\"time\": {\"start\": \"08:00\", \"end\": \"18:00\",\n       \"weekdays\": [\"mon\", \"monday\"]}}}"),
	 8, "rules[1].conditions.time.weekdays[1]", "unknown weekday \"monday\""},
	{R(H P "     \"conditions\": {\"time\": {\"start\": \"08:00\", \"end\": \"18:00\", \"tz\": \"CET\"}}}"), 7,
	 "rules[1].conditions.time.tz", "unknown field \"tz\""},
	{R(H P "     \"conditions\": {\"source_cidr\": [\"10.0.0.0/8\",\n        \"10.0.0.0/33\"]}}"), 8,
	 "rules[1].conditions.source_cidr[1]", "bad CIDR \"10.0.0.0/33\": prefix longer than 32"},
	{R(H P "     \"conditions\": {\"source_cidr\": [\"10.1.2.3/8\"]}}"), 7, "rules[1].conditions.source_cidr[0]",
	 "host bits set"},
	{R(H P "     \"conditions\": {\"source_cidr\": [\"10.0.0\"]}}"), 7, "rules[1].conditions.source_cidr[0]",
	 "not an IPv4 or IPv6 address"},
	{R(H P "     \"conditions\": {\"source_cidr\": [\"2001:db8::/129\"]}}"), 7, "rules[1].conditions.source_cidr[0]",
	 "prefix longer than 128"},
	{R(H P "     \"conditions\": {\"source_cidr\": [\"2001:db8::1/64\"]}}"), 7, "rules[1].conditions.source_cidr[0]",
	 "host bits set"},
	{R(H P "     \"conditions\": {\"source_cidr\": [\"::ffff:10.0.0.0/104\"]}}"), 7,
	 "rules[1].conditions.source_cidr[0]", "write IPv4-mapped addresses as IPv4"},
	{R(H P "     \"conditions\": {\"source_cidr\": [\"10.0.0.0/08\"]}}"), 7, "rules[1].conditions.source_cidr[0]",
	 "bad prefix length"},
	{R(H P "     \"conditions\": {\"source_cidr\": [\"10.0.0.0/\"]}}"), 7, "rules[1].conditions.source_cidr[0]",
	 "bad prefix length"},
	{R(H P "     \"conditions\": {\"mfa_max_age\": 0}}"), 7, "rules[1].conditions.mfa_max_age", "must be between 1 and 86400"},
	{R(H P "     \"conditions\": {\"mfa_max_age\": 90000}}"), 7, "rules[1].conditions.mfa_max_age",
	 "must be between 1 and 86400"},
	/* outputs */
	{R(HD P "     \"require_mfa\": true}"), 7, "rules[1].require_mfa", "only an allow rule can require MFA"},
	{R(H P "     \"require_mfa\": \"yes\"}"), 7, "rules[1].require_mfa", "must be true or false"},
	{R(H P "     \"require_quorum\": 0}"), 7, "rules[1].require_quorum", "must be between 1 and 16"},
	{R(H P "     \"require_quorum\": 17}"), 7, "rules[1].require_quorum", "must be between 1 and 16"},
	{R(HD P "     \"require_quorum\": 2}"), 7, "rules[1].require_quorum", "only an allow rule can require a quorum"},
};

static void check_bad(size_t i, const struct bad *b)
{
	struct policy_doc *doc = (struct policy_doc *)0x1;
	struct policy_doc_error e;
	kms_err rc = policy_doc_parse(b->doc, strlen(b->doc), &doc, &e);
	char want[32];

	if (rc != KMS_ERR_INVALID)
		fail_msg("bad document %zu accepted (rc %d)", i, (int)rc);
	assert_null(doc);
	if (e.line != b->line || strcmp(e.path, b->path) != 0 || strstr(e.reason, b->reason) == NULL)
		fail_msg("bad document %zu: expected line %u at \"%s\": \"%s\"; got line %u column %u at \"%s\": \"%s\"", i,
			 b->line, b->path, b->reason, e.line, e.column, e.path, e.reason);
	if (strstr(e.reason, "malformed JSON") == NULL)
		assert_true(e.column >= 1);
	snprintf(want, sizeof(want), "policy line %u column ", b->line);
	if (strncmp(kms_err_detail(rc), want, strlen(want)) != 0 || strstr(kms_err_detail(rc), b->reason) == NULL)
		fail_msg("bad document %zu: detail \"%s\"", i, kms_err_detail(rc));
}

static void test_bad_documents(void **state)
{
	(void)state;
	assert_true(sizeof(bad) / sizeof(bad[0]) >= 20);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		check_bad(i, &bad[i]);
	print_message("[          ] %zu bad documents refused with line and reason\n", sizeof(bad) / sizeof(bad[0]));
}

static void test_columns_and_detail(void **state)
{
	struct policy_doc *doc = NULL;
	struct policy_doc_error e;
	static const char d[] = "{\n  \"version\": 1,\n  \"rulez\": []\n}\n";
	static const char s[] = "{\"version\": 1, \"rules\": [{\"name\": \"a\", \"effect\": \"allow\", "
				"\"principals\": [\"*\"], \"operations\": [\"key.reed\"]}]}";
	(void)state;

	assert_int_equal(policy_doc_parse(d, strlen(d), &doc, &e), KMS_ERR_INVALID);
	assert_int_equal(e.line, 3);
	assert_int_equal(e.column, 3);
	assert_string_equal(kms_err_detail(KMS_ERR_INVALID),
			    "policy line 3 column 3 at rulez: unknown field \"rulez\"");
	assert_int_equal(policy_doc_parse(s, strlen(s), &doc, NULL), KMS_ERR_INVALID);
	assert_string_equal(kms_err_detail(KMS_ERR_INVALID),
			    "policy line 1 column 95 at rules[0].operations[0]: unknown operation \"key.reed\"");
	/* too large */
	char *big = malloc(POLICY_DOC_MAX_BYTES + 2);
	assert_non_null(big);
	memset(big, ' ', POLICY_DOC_MAX_BYTES + 1);
	big[POLICY_DOC_MAX_BYTES + 1] = '\0';
	assert_int_equal(policy_doc_parse(big, POLICY_DOC_MAX_BYTES + 1, &doc, &e), KMS_ERR_INVALID);
	assert_non_null(strstr(e.reason, "larger than"));
	free(big);
	assert_null(doc);
}

static void test_from_json(void **state)
{
	struct policy_doc *doc = NULL;
	struct policy_doc_error e;
	json_t *j;
	(void)state;

	j = json_loads(hospital, 0, NULL);
	assert_non_null(j);
	assert_int_equal(policy_doc_from_json(j, &doc, &e), KMS_OK);
	assert_int_equal(policy_doc_rule_count(doc), 10);
	policy_doc_free(doc);
	json_object_set_new(json_array_get(json_object_get(j, "rules"), 3), "effect", json_string("maybe"));
	assert_int_equal(policy_doc_from_json(j, &doc, &e), KMS_ERR_INVALID);
	assert_null(doc);
	assert_int_equal(e.line, 0);
	assert_string_equal(e.path, "rules[3].effect");
	assert_string_equal(kms_err_detail(KMS_ERR_INVALID), "policy at rules[3].effect: must be \"allow\" or \"deny\"");
	json_decref(j);
}

static void test_load_file(void **state)
{
	char path[] = "/tmp/kms-policy-XXXXXX";
	struct policy_doc *doc = NULL;
	struct policy_doc_error e;
	static const char text[] = "{\n"
				   "  \"version\": 4,\n"
				   "  \"rules\": [\n"
				   "    {\"name\": \"ok\", \"effect\": \"allow\", \"principals\": [\"role:admin\"],\n"
				   "     \"operations\": [\"key.*\"]},\n"
				   "    {\"name\": \"night\", \"effect\": \"allow\", \"principals\": [\"batch\"],\n"
				   "     \"operations\": [\"rewrap\"],\n"
				   "     \"conditions\": {\"time\": {\"start\": \"23:00\", \"end\": \"05:00\"}}}\n"
				   "  ]\n"
				   "}\n";
	int fd;
	(void)state;

	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	assert_int_equal(policy_doc_load_file(path, &doc, &e), KMS_ERR_INVALID);
	assert_null(doc);
	assert_int_equal(e.line, 8);
	assert_string_equal(e.path, "rules[1].conditions.time");
	assert_non_null(strstr(kms_err_detail(KMS_ERR_INVALID), "policy line 8 column "));
	assert_non_null(strstr(kms_err_detail(KMS_ERR_INVALID), "inverted window: start 23:00 is after end 05:00"));

	/* fixed: same file, now valid */
	fd = open(path, O_WRONLY | O_TRUNC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, hospital, strlen(hospital)), (ssize_t)strlen(hospital));
	close(fd);
	assert_int_equal(policy_doc_load_file(path, &doc, &e), KMS_OK);
	assert_int_equal(policy_doc_version(doc), 12);
	policy_doc_free(doc);
	unlink(path);
	assert_int_equal(policy_doc_load_file(path, &doc, &e), KMS_ERR_IO);
	assert_int_equal(policy_doc_load_file("/tmp", &doc, &e), KMS_ERR_IO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good_documents),
		cmocka_unit_test(test_bad_documents),
		cmocka_unit_test(test_columns_and_detail),
		cmocka_unit_test(test_from_json),
		cmocka_unit_test(test_load_file),
	};
	return cmocka_run_group_tests_name("policy_doc", tests, NULL, NULL);
}
